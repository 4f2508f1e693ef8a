//! tunlb node agent: programs a node's kernel from VirtualServices.

pub mod cluster;
pub mod ipvs_diff;
pub mod link;
pub mod load;
pub mod memory;
pub mod metrics;
pub mod nat;
pub mod show;
pub mod standalone;
pub mod state;
pub mod sync;
pub mod sysctl;
pub mod wake;
