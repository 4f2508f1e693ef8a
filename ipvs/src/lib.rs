//! Async client for the Linux IPVS (LVS) generic netlink interface
//! (family "IPVS", version 1), as used by the tunlb node agent to program
//! tunnel-mode (IP-in-IP) virtual services.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tunlb_ipvs::Error> {
//! use tunlb_ipvs::{Client, Destination, Op, Protocol, Service, ServiceKey};
//! let ipvs = Client::connect().await?;
//! let key = ServiceKey::Addr {
//!     protocol: Protocol::Tcp,
//!     addr: "192.168.56.185".parse().expect("literal"),
//!     port: 80,
//! };
//! let ops = [
//!     Op::NewService(Service::new(key, "wrr")),
//!     Op::NewDest(key, Destination::tunnel("192.168.56.183".parse().expect("literal"), 80, 1)),
//! ];
//! for result in ipvs.apply(&ops).await {
//!     result?;
//! }
//! # Ok(()) }
//! ```
//!
//! Wire layout follows `include/uapi/linux/ip_vs.h`; integers are native
//! endian except ports (big-endian) and the IPv4 netmask (a network-order
//! mask). Unknown attributes decode into `Other` variants.

mod client;
pub mod constants;
mod ctrl;
mod daemon;
mod destination;
mod dump_socket;
mod error;
pub mod fou;
mod info;
pub mod message;
mod nla;
mod op;
mod pipeline;
mod service;
mod stats;
mod transport;

pub use client::{Client, Config};
pub use constants::{
    IP_VS_SVC_F_HASHED, IP_VS_SVC_F_ONEPACKET, IP_VS_SVC_F_PERSISTENT, IP_VS_SVC_F_SCHED1,
    IP_VS_SVC_F_SCHED2, IP_VS_SVC_F_SCHED3, IP_VS_TUNNEL_ENCAP_FLAG_CSUM,
    IP_VS_TUNNEL_ENCAP_FLAG_NOCSUM, IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM,
};
pub use daemon::{DaemonAttr, SyncDaemon, SyncState};
pub use destination::{DestAttr, Destination, DestinationEntry, ForwardMethod, TunnelType};
pub use error::Error;
pub use info::{Info, Timeouts};
pub use op::Op;
pub use service::{AddressFamily, Protocol, Service, ServiceAttr, ServiceEntry, ServiceKey};
pub use stats::{Stats, StatsAttr};

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
