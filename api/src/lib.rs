//! tunlb API: the `VirtualService` resource, its validation, manifest loading
//! and the pure per-node plan. No I/O lives here.

pub mod election;
pub mod health;
pub mod manifest;
pub mod plan;
pub mod pool;
pub mod selector;
pub mod types;
pub mod validate;
pub mod watch;

pub use plan::{NodeIdentity, NodePlan, ObjectKey, PlanInput, Planner, plan_node};
pub use pool::{VipPool, VipPoolSpec, VipPoolStatus};
pub use types::*;
pub use validate::{FieldError, FieldErrors, ValidService, validate};
