//! What a reconcile needs of the status the operator last wrote: a digest to
//! tell whether a new status differs, each condition's status and
//! lastTransitionTime for `conditions::merge`, and each real server's health
//! state for its health Events.
//!
//! The cache keeps this in place of the written conditions and realServers,
//! which are most of a VirtualService's size (7 conditions with messages):
//! at 10,000 objects that was about 15 MB.

use std::hash::Hasher;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use tunlb_api::{ElectionStatus, HealthState, RealServer, VirtualService, VirtualServiceStatus};

use crate::conditions::OWNED;
use crate::decide::OperatorStatus;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub digest: u64,
    /// Which of OWNED were written (bit i for OWNED[i]), and which of those True.
    written: u16,
    true_: u16,
    /// The lastTransitionTime of each written one, in OWNED order, in
    /// seconds: the precision a Time is written with. Nine seconds take
    /// 72 bytes where nine conditions with a Time each took 216.
    since: Box<[i64]>,
    /// (address, state) of each real server written with a health.
    health: Box<[(Box<str>, HealthState)]>,
}

impl Observed {
    pub fn of(status: Option<&VirtualServiceStatus>) -> Observed {
        let Some(s) = status else {
            return Observed {
                digest: digest_of(None, [].iter(), &[], None, None, None),
                written: 0,
                true_: 0,
                since: Box::new([]),
                health: Box::new([]),
            };
        };
        // The first of each type, as `conditions::merge` finds it.
        let mut by_type: [Option<(bool, i64)>; OWNED.len()] = [None; OWNED.len()];
        for c in &s.conditions {
            if let Some(i) = OWNED.iter().position(|t| *t == c.type_)
                && by_type[i].is_none()
            {
                by_type[i] = Some((c.status == "True", c.last_transition_time.0.as_second()));
            }
        }
        let (mut written, mut true_) = (0u16, 0u16);
        for (i, c) in by_type.iter().enumerate() {
            if let Some((status, _)) = c {
                written |= 1 << i;
                if *status {
                    true_ |= 1 << i;
                }
            }
        }
        let since = by_type.iter().flatten().map(|(_, t)| *t).collect();
        let health = s
            .real_servers
            .iter()
            .filter_map(|r| Some((r.address.as_str().into(), r.health.as_ref()?.state)))
            .collect();
        Observed {
            digest: digest_of(
                s.observed_generation,
                s.conditions.iter(),
                &s.real_servers,
                s.real_server_count,
                s.healthy.as_deref(),
                s.election.as_ref(),
            ),
            written,
            true_,
            since,
            health,
        }
    }

    /// The conditions as `conditions::merge` reads them (type, status and
    /// lastTransitionTime; no reason or message).
    pub fn conditions(&self) -> Vec<Condition> {
        OWNED
            .iter()
            .enumerate()
            .filter(|(i, _)| self.written & (1 << i) != 0)
            .zip(self.since.iter())
            .map(|((i, type_), since)| Condition {
                type_: type_.to_string(),
                status: if self.true_ & (1 << i) != 0 {
                    "True"
                } else {
                    "False"
                }
                .to_string(),
                // Every stored second came from a Timestamp, so it converts back.
                last_transition_time: Time(Timestamp::from_second(*since).unwrap_or_default()),
                message: String::new(),
                reason: String::new(),
                observed_generation: None,
            })
            .collect()
    }

    /// Each real server's health state as written, by address.
    pub fn health(&self) -> Vec<(String, HealthState)> {
        self.health
            .iter()
            .map(|(a, s)| (a.to_string(), *s))
            .collect()
    }

    fn bit(type_: &str) -> u16 {
        OWNED.iter().position(|t| *t == type_).map_or(0, |i| 1 << i)
    }

    pub fn has(&self, type_: &str) -> bool {
        self.written & Observed::bit(type_) != 0
    }

    /// Whether condition `type_` was written True.
    pub fn is_true(&self, type_: &str) -> bool {
        self.true_ & Observed::bit(type_) != 0
    }
}

/// The digest `Observed` compares with: equal when writing `status` would change nothing.
pub fn digest(status: &OperatorStatus) -> u64 {
    digest_of(
        status.observed_generation,
        status.conditions.iter(),
        status.servers(),
        status.real_server_count,
        status.healthy.as_deref(),
        status.election.as_ref(),
    )
}

/// A copy of `vs` without what `Observed` stands for, to cache.
pub fn stripped(vs: &VirtualService) -> VirtualService {
    let mut copy = VirtualService::new("", vs.spec.clone());
    copy.metadata = vs.metadata.clone();
    copy.status = vs.status.as_ref().map(|s| VirtualServiceStatus {
        healthy: None,
        observed_generation: s.observed_generation,
        conditions: Vec::new(),
        real_servers: Vec::new(),
        real_server_count: s.real_server_count,
        nodes: s.nodes.clone(),
        // Small, and the next judgement keeps its virtual router id.
        election: s.election.clone(),
    });
    copy
}

/// Feeds serialised JSON into a hasher, so nothing is allocated.
struct HashWriter<'a>(&'a mut std::collections::hash_map::DefaultHasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Serialize)]
struct Canonical<'a> {
    observed_generation: Option<i64>,
    conditions: Vec<&'a Condition>,
    real_servers: &'a [RealServer],
    real_server_count: Option<i32>,
    healthy: Option<&'a str>,
    election: Option<&'a ElectionStatus>,
}

fn digest_of<'a>(
    observed_generation: Option<i64>,
    conditions: impl Iterator<Item = &'a Condition>,
    real_servers: &'a [RealServer],
    real_server_count: Option<i32>,
    healthy: Option<&'a str>,
    election: Option<&'a ElectionStatus>,
) -> u64 {
    // Only the operator's conditions, in a fixed order: others are not ours to compare.
    let mut owned: Vec<(usize, &Condition)> = conditions
        .filter_map(|c| Some((OWNED.iter().position(|t| *t == c.type_)?, c)))
        .collect();
    owned.sort_by_key(|(i, _)| *i);
    let canonical = Canonical {
        observed_generation,
        conditions: owned.into_iter().map(|(_, c)| c).collect(),
        real_servers,
        real_server_count,
        healthy,
        election,
    };
    // DefaultHasher::new() has fixed keys: digests compare within a process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // Writing to a hasher cannot fail, and these types always serialise.
    let _ = serde_json::to_writer(HashWriter(&mut h), &canonical);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::{ACCEPTED, READY, RESOLVED};

    fn cond(t: &str, status: &str, msg: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: status.into(),
            reason: "R".into(),
            message: msg.into(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::from_second(100).unwrap()),
        }
    }

    #[test]
    fn digest_matches_the_written_status_in_any_order() {
        let status = OperatorStatus {
            observed_generation: Some(1),
            conditions: vec![cond(READY, "False", "waiting"), cond(ACCEPTED, "True", "")],
            real_servers: Some(vec![]),
            real_server_count: Some(0),
            healthy: Some("0/0".into()),
            election: None,
        };
        let written = VirtualServiceStatus {
            healthy: Some("0/0".into()),
            observed_generation: Some(1),
            // another writer's condition type is not compared
            conditions: vec![
                cond(ACCEPTED, "True", ""),
                cond("Other", "True", ""),
                cond(READY, "False", "waiting"),
            ],
            real_servers: vec![],
            real_server_count: Some(0),
            nodes: vec![],
            election: None,
        };
        let seen = Observed::of(Some(&written));
        assert_eq!(seen.digest, digest(&status));
        assert!(seen.has(ACCEPTED) && !seen.has(RESOLVED));
        let conds = seen.conditions();
        assert_eq!(conds.len(), 2);
        assert_eq!(
            (conds[0].type_.as_str(), conds[0].status.as_str()),
            (ACCEPTED, "True")
        );

        let mut changed = written.clone();
        changed.conditions[2].message = "waiting for n1".into();
        assert_ne!(Observed::of(Some(&changed)).digest, digest(&status));
        let mut changed = written.clone();
        changed.healthy = Some("1/1".into());
        assert_ne!(Observed::of(Some(&changed)).digest, digest(&status));
        assert_ne!(Observed::of(None).digest, digest(&status));
    }

    /// A condition type left out of OWNED would not be compared, so its
    /// change alone would never be written.
    #[test]
    fn every_condition_type_the_operator_writes_is_compared() {
        for t in OWNED {
            let with = |status: &str| OperatorStatus {
                observed_generation: Some(1),
                conditions: vec![cond(t, status, "")],
                real_servers: None,
                real_server_count: None,
                healthy: None,
                election: None,
            };
            assert_ne!(digest(&with("True")), digest(&with("False")), "{t}");
        }
    }
}
