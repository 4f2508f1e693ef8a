//! VRRP version 3 (RFC 5798): one active director per VIP, elected between
//! agents (and keepalived) without the API server.
//!
//! - [`packet`]: advertisement wire format and validation (pure).
//! - [`machine`]: the state machine (pure, time passed in).
//! - [`socket`]: the raw IP protocol 112 socket (unicast peers or multicast).
//! - [`announce`]: gratuitous ARP and unsolicited neighbour advertisements.
//! - [`speaker`]: one virtual router on one interface, driving the rest with
//!   tokio and owning its VIP addresses while Master.
//! - [`thread`]: the thread the agent's speakers run on.

pub mod announce;
pub mod machine;
pub mod packet;
pub mod socket;
pub mod speaker;
pub mod thread;
