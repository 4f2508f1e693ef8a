//! What this node reports in each VirtualService's `status.nodes`: pure, so
//! the rules are unit-tested. An entry says `programmed` only when the
//! kernel holds everything the observed generation asks of this node.

use std::collections::{BTreeMap, BTreeSet};

use tunlb_api::plan::{IpvsKey, IpvsService, NodePlan, ObjectKey, ObjectPlan};
use tunlb_api::{DirectorState, ElectionConflict, NodeRole, NodeStatus};

use crate::admission::Refused;
use crate::dataplane::SyncReport;
use crate::health::Book;

/// What this node's director elections say, by object.
#[derive(Debug, Default)]
pub struct Elected {
    /// Whether this node holds the VIP (active) or waits (standby), and
    /// since when (RFC 3339).
    pub states: BTreeMap<ObjectKey, (DirectorState, String)>,
    /// Why an election cannot run here: a failure.
    pub errors: BTreeMap<ObjectKey, String>,
    /// What contradicts a running election; it still carries traffic.
    pub conflicts: BTreeMap<ObjectKey, ElectionConflict>,
}

/// This node's entries: one for every object it has a role in, and one for
/// every object it cannot read (`invalid`: generation and reason).
pub fn entries(
    node: &str,
    plan: &NodePlan,
    report: &SyncReport,
    invalid: BTreeMap<ObjectKey, (Option<i64>, String)>,
    health: Option<(&Book, &BTreeSet<ObjectKey>)>,
    elected: &Elected,
    scope: Option<&BTreeSet<ObjectKey>>,
) -> BTreeMap<ObjectKey, NodeStatus> {
    let in_scope = |k: &ObjectKey| scope.is_none_or(|s| s.contains(k));
    let mut want = BTreeMap::new();
    // Each object's IPVS services, found once: looking them up per object
    // would read every service once per object.
    let mut services_of: BTreeMap<&ObjectKey, Vec<(&IpvsKey, &IpvsService)>> = BTreeMap::new();
    if health.is_some() {
        for (k, s) in plan.ipvs.iter().filter(|(_, s)| in_scope(&s.owner)) {
            services_of.entry(&s.owner).or_default().push((k, s));
        }
    }
    let objects: Box<dyn Iterator<Item = (&ObjectKey, &ObjectPlan)>> = match scope {
        None => Box::new(plan.objects.iter()),
        Some(keys) => Box::new(keys.iter().filter_map(|k| plan.objects.get_key_value(k))),
    };
    for (key, op) in objects {
        if op.roles.is_empty() {
            continue;
        }
        let mut msgs: Vec<String> = op.error.iter().cloned().collect();
        msgs.extend(report.errors.get(key).cloned().unwrap_or_default());
        msgs.extend(elected.errors.get(key).cloned());
        // A node-level failure may concern any object: none is claimed.
        msgs.extend(report.node_errors.iter().cloned());
        want.insert(
            key.clone(),
            NodeStatus {
                node_name: node.to_string(),
                roles: op.roles.iter().copied().collect::<Vec<NodeRole>>(),
                observed_generation: op.generation,
                programmed: msgs.is_empty(),
                message: msgs.join("; "),
                draining: report.draining.get(key).cloned().unwrap_or_default(),
                health: health
                    .filter(|_| op.roles.contains(&NodeRole::Director))
                    .map(|(book, _)| {
                        let services = services_of.get(key).map(Vec::as_slice).unwrap_or(&[]);
                        crate::health::probed(book, services)
                    })
                    .unwrap_or_default(),
                fail_open: health.is_some_and(|(_, open)| open.contains(key)),
                director_state: elected.states.get(key).map(|(s, _)| *s),
                director_since: elected.states.get(key).map(|(_, t)| t.clone()),
                election_conflict: elected.conflicts.get(key).cloned(),
            },
        );
    }
    for (key, (generation, msg)) in invalid.into_iter().filter(|(k, _)| in_scope(k)) {
        want.insert(
            key,
            NodeStatus {
                node_name: node.to_string(),
                roles: Vec::new(),
                observed_generation: generation,
                programmed: false,
                message: msg,
                draining: Vec::new(),
                health: Vec::new(),
                fail_open: false,
                director_state: None,
                director_since: None,
                election_conflict: None,
            },
        );
    }
    want
}

/// Entries for the objects this node refuses to program (see
/// [`crate::admission`]): not programmed, with the roles it would have had
/// and why. They replace any entry `want` has for them.
pub fn add_refused(
    node: &str,
    want: &mut BTreeMap<ObjectKey, NodeStatus>,
    refused: &BTreeMap<ObjectKey, Refused>,
) {
    for (key, r) in refused {
        want.insert(
            key.clone(),
            NodeStatus {
                node_name: node.to_string(),
                roles: r.roles.iter().copied().collect(),
                observed_generation: r.generation,
                programmed: false,
                message: r.message(),
                draining: Vec::new(),
                health: Vec::new(),
                fail_open: false,
                director_state: None,
                director_since: None,
                election_conflict: None,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use tunlb_api::plan::ObjectPlan;

    fn plan() -> NodePlan {
        let obj = |roles: &[NodeRole], error: Option<&str>| ObjectPlan {
            generation: Some(4),
            roles: roles.iter().copied().collect::<BTreeSet<_>>(),
            vip: None,
            tunnel: None,
            error: error.map(String::from),
        };
        NodePlan {
            objects: BTreeMap::from([
                (ObjectKey::new("a", "ok"), obj(&[NodeRole::Director], None)),
                (
                    ObjectKey::new("a", "bad"),
                    obj(&[NodeRole::Backend], Some("no route")),
                ),
                (ObjectKey::new("a", "elsewhere"), obj(&[], None)),
            ]),
            ..NodePlan::default()
        }
    }

    /// The entries of `plan()` on node n1, without health or elections.
    fn plain(
        report: &SyncReport,
        invalid: BTreeMap<ObjectKey, (Option<i64>, String)>,
    ) -> BTreeMap<ObjectKey, NodeStatus> {
        entries(
            "n1",
            &plan(),
            report,
            invalid,
            None,
            &Elected::default(),
            None,
        )
    }

    #[test]
    fn an_elected_director_says_its_state_and_conflict_and_an_election_error_is_a_failure() {
        let ok = ObjectKey::new("a", "ok");
        let directing = BTreeMap::from([(
            ok.clone(),
            (
                DirectorState::Standby,
                "2026-12-02T07:00:00.000Z".to_string(),
            ),
        )]);
        let with = |elected: Elected| {
            entries(
                "n1",
                &plan(),
                &SyncReport::default(),
                BTreeMap::new(),
                None,
                &elected,
                None,
            )
        };
        let conflict = ElectionConflict {
            reason: "SplitBrain".into(),
            message: "split brain".into(),
        };
        let e = with(Elected {
            states: directing,
            conflicts: BTreeMap::from([(ok.clone(), conflict.clone())]),
            ..Elected::default()
        });
        assert_eq!(e[&ok].director_state, Some(DirectorState::Standby));
        assert_eq!(
            e[&ok].director_since.as_deref(),
            Some("2026-12-02T07:00:00.000Z")
        );
        assert!(e[&ok].programmed, "a conflict is no failure");
        assert_eq!(e[&ok].election_conflict, Some(conflict));
        let errors = BTreeMap::from([(ok.clone(), "election: no interface".to_string())]);
        let e = with(Elected {
            errors,
            ..Elected::default()
        });
        assert!(!e[&ok].programmed);
        assert_eq!(e[&ok].message, "election: no interface");
    }

    #[test]
    fn programmed_only_without_any_problem() {
        let report = SyncReport::default();
        let e = plain(&report, BTreeMap::new());
        assert_eq!(e.len(), 2, "no entry where the node has no role");
        let ok = &e[&ObjectKey::new("a", "ok")];
        assert!(ok.programmed && ok.message.is_empty());
        assert_eq!(ok.observed_generation, Some(4));
        assert_eq!(ok.roles, vec![NodeRole::Director]);
        let bad = &e[&ObjectKey::new("a", "bad")];
        assert!(!bad.programmed);
        assert_eq!(bad.message, "no route");
    }

    #[test]
    fn kernel_and_node_errors_and_drains_are_reported() {
        let mut report = SyncReport::default();
        report.object_error(&ObjectKey::new("a", "ok"), "scheduler missing");
        report.node_errors.push("nft timed out".into());
        report
            .draining
            .insert(ObjectKey::new("a", "ok"), vec!["10.0.0.3:80".into()]);
        let e = plain(&report, BTreeMap::new());
        let ok = &e[&ObjectKey::new("a", "ok")];
        assert!(!ok.programmed);
        assert_eq!(ok.message, "scheduler missing; nft timed out");
        assert_eq!(ok.draining, vec!["10.0.0.3:80".to_string()]);
        assert_eq!(
            e[&ObjectKey::new("a", "bad")].message,
            "no route; nft timed out"
        );
    }

    #[test]
    fn a_draining_server_alone_does_not_unprogram() {
        let mut report = SyncReport::default();
        report
            .draining
            .insert(ObjectKey::new("a", "ok"), vec!["[2001:db8::3]:80".into()]);
        let e = plain(&report, BTreeMap::new());
        assert!(e[&ObjectKey::new("a", "ok")].programmed);
    }

    #[test]
    fn refused_objects_get_an_entry_that_says_why() {
        let key = ObjectKey::new("a", "forged");
        let refused = BTreeMap::from([(
            key.clone(),
            Refused {
                generation: Some(7),
                roles: BTreeSet::from([NodeRole::Director]),
                refusal: tunlb_api::pool::Refusal {
                    reason: "InterfaceNotAllowed",
                    message: "VipPool lab: directors may hold its VIPs on tunl0 only".into(),
                },
            },
        )]);
        let mut e = plain(&SyncReport::default(), BTreeMap::new());
        add_refused("n1", &mut e, &refused);
        let f = &e[&key];
        assert!(!f.programmed);
        assert_eq!(f.roles, vec![NodeRole::Director]);
        assert_eq!(f.observed_generation, Some(7));
        assert_eq!(
            f.message,
            "refused by this node: VipPool lab: directors may hold its VIPs on tunl0 only"
        );
        assert!(e[&ObjectKey::new("a", "ok")].programmed, "others untouched");
    }

    #[test]
    fn unreadable_objects_get_an_entry_that_says_why() {
        let invalid = BTreeMap::from([(
            ObjectKey::new("a", "broken"),
            (Some(2), "spec.vip: must be an IP".to_string()),
        )]);
        let e = plain(&SyncReport::default(), invalid);
        let b = &e[&ObjectKey::new("a", "broken")];
        assert!(!b.programmed && b.roles.is_empty());
        assert_eq!(b.observed_generation, Some(2));
        assert_eq!(b.message, "spec.vip: must be an IP");
    }
}
