//! tunlb node agent: programs a node's kernel from VirtualServices.

pub mod admission;
pub mod cluster;
pub mod dataplane;
pub mod election;
pub mod health;
pub mod link;
pub mod load;
pub mod memory;
pub mod metrics;
pub mod modules;
pub mod show;
pub mod standalone;
pub mod state;
pub mod status;
pub mod timeouts;
pub mod vrrp;
pub mod wake;
