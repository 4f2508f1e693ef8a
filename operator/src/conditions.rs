//! Condition bookkeeping: lastTransitionTime only moves when the status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED: &str = "Resolved";
pub const VIP_ALLOWED: &str = "VipAllowed";
pub const CONFLICT: &str = "Conflict";
/// Directors in an election: True while one hears another speaker use its
/// virtual router id, or a second master (split brain).
pub const ELECTION_CONFLICT: &str = "ElectionConflict";
pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
/// True when every real server is unhealthy, or a director sends to
/// servers it finds unhealthy because no healthy one is left (fail open).
pub const ALL_UNHEALTHY: &str = "AllRealServersUnhealthy";

/// Every condition type the operator writes. The cached status keeps them
/// by index and the status digest compares only these, so a type missing
/// here would never be rewritten on its own change.
pub const OWNED: [&str; 9] = [
    ACCEPTED,
    RESOLVED,
    VIP_ALLOWED,
    CONFLICT,
    READY,
    RECONCILING,
    STALLED,
    ALL_UNHEALTHY,
    ELECTION_CONFLICT,
];

/// A condition the operator wants, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Want {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Want {
        Want {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// Builds the condition list; returns it and the conditions whose status changed.
pub fn merge(
    existing: &[Condition],
    wants: &[Want],
    generation: Option<i64>,
    now: &Time,
) -> (Vec<Condition>, Vec<Want>) {
    let mut out = Vec::new();
    let mut changed = Vec::new();
    for w in wants {
        let prev = existing.iter().find(|c| c.type_ == w.type_);
        let status = status_str(w.status).to_string();
        let transitioned = prev.is_none_or(|p| p.status != status);
        if transitioned {
            changed.push(w.clone());
        }
        out.push(Condition {
            type_: w.type_.to_string(),
            status,
            reason: w.reason.clone(),
            message: w.message.clone(),
            observed_generation: generation,
            last_transition_time: match prev {
                Some(p) if !transitioned => p.last_transition_time.clone(),
                _ => now.clone(),
            },
        });
    }
    (out, changed)
}

/// Looks a condition up by type.
pub fn get<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    /// A condition type declared in this file and left out of OWNED fails here.
    #[test]
    fn every_declared_condition_type_is_owned() {
        let declared: Vec<&str> = include_str!("conditions.rs")
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \""))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(declared.len(), OWNED.len(), "{declared:?}");
        for t in declared {
            assert!(OWNED.contains(&t), "{t} is not in OWNED");
        }
    }

    #[test]
    fn transition_time_is_stable_until_status_changes() {
        let (c1, ch1) = merge(
            &[],
            &[Want::new(READY, false, "Pending", "waiting")],
            Some(1),
            &t(100),
        );
        assert_eq!(ch1.len(), 1);
        let (c2, ch2) = merge(
            &c1,
            &[Want::new(READY, false, "Pending", "waiting for rs1")],
            Some(2),
            &t(200),
        );
        assert!(ch2.is_empty());
        assert_eq!(c2[0].last_transition_time, t(100));
        assert_eq!(c2[0].observed_generation, Some(2));
        let (c3, ch3) = merge(
            &c2,
            &[Want::new(READY, true, "Programmed", "")],
            Some(2),
            &t(300),
        );
        assert_eq!(ch3.len(), 1);
        assert_eq!(c3[0].last_transition_time, t(300));
    }
}
