//! The deciding part of a reconcile: VirtualService + a view of the cluster
//! -> the status the operator owns. No I/O, so it is unit-tested directly.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use tunlb_api::plan::{ObjectKey, ipvs_keys};
use tunlb_api::{
    DirectorState, ElectionConflict, ElectionStatus, HealthState, NodeStatus, RealServer, VipPool,
    VirtualService, VirtualServiceStatus, validate,
};

use crate::conditions::{
    self, ACCEPTED, ALL_UNHEALTHY, CONFLICT, ELECTION_CONFLICT, READY, RECONCILING, RESOLVED,
    STALLED, VIP_ALLOWED, Want,
};
use crate::health::{self, Aggregate};
use crate::judge::{self, Age, Peer, Readiness};
use crate::resolve::{self, NodeInfo, ServiceInfo, SliceInfo};
use tunlb_api::election::ElectionError;

/// Operator settings that shape judgements.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub service_cidrs: Vec<ipnet::IpNet>,
}

/// What the reconcile read from its caches.
pub struct View<'a> {
    pub nodes: &'a [NodeInfo],
    pub pools: &'a [VipPool],
    /// The labels of the VirtualService's namespace (none when it is not known).
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub service: Option<&'a ServiceInfo>,
    pub slices: Vec<&'a SliceInfo>,
    /// Other VirtualServices on its VIP that are valid, VIP-allowed and
    /// admitted by a pool (see [`peer`]): those occupying one of its IPVS
    /// services, and the oldest of each namespace on the VIP (whose
    /// namespace the VIP belongs to).
    pub peers: &'a [Peer],
    /// The director election its directors run (see `election`), or why
    /// none can be formed.
    pub election: Result<Option<ElectionStatus>, ElectionError>,
}

/// The status fields the operator owns (server-side apply, manager
/// tunlb-operator). A field left `None` is not written, and so no longer
/// owned: the API server removes what the operator wrote there before.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub conditions: Vec<Condition>,
    /// `None` only for an object that cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_servers: Option<Vec<RealServer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_server_count: Option<i32>,
    /// Healthy (or unchecked) real servers out of all, e.g. "2/3".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election: Option<ElectionStatus>,
}

impl OperatorStatus {
    /// The real servers written (none when not written).
    pub fn servers(&self) -> &[RealServer] {
        self.real_servers.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub status: OperatorStatus,
    /// Conditions whose status changed: each becomes an Event.
    pub transitions: Vec<Want>,
    /// Real servers whose health changed: each becomes an Event.
    pub health: Vec<health::Transition>,
    pub accepted: bool,
}

pub fn object_key(vs: &VirtualService) -> ObjectKey {
    ObjectKey::new(
        vs.metadata.namespace.clone().unwrap_or_default(),
        vs.metadata.name.clone().unwrap_or_default(),
    )
}

/// Age ordering for conflicts and VIP ownership: creation time, then
/// namespace/name.
pub fn age(vs: &VirtualService) -> Age {
    Age {
        created: created(vs),
        key: object_key(vs),
    }
}

/// The creation time in seconds; unset (never so in a cluster) is youngest.
pub fn created(vs: &VirtualService) -> i64 {
    vs.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX)
}

/// Builds a Peer when the object is valid, its VIP allowed and a pool
/// admits it: the checks `decide` makes, so that an object refused never
/// blocks another. `namespace_labels`: those of its own namespace.
pub fn peer(
    vs: &VirtualService,
    policy: &Policy,
    pools: &[VipPool],
    namespace_labels: &BTreeMap<String, String>,
    nodes: &[NodeInfo],
) -> Option<Peer> {
    let valid = validate(&vs.spec).ok()?;
    judge::vip_allowed(valid.vip, &policy.service_cidrs, nodes).ok()?;
    let namespace = vs.metadata.namespace.as_deref().unwrap_or_default();
    let pool = judge::admit(namespace, namespace_labels, &vs.spec, &valid, pools, nodes).ok()?;
    Some(Peer {
        age: age(vs),
        vip: valid.vip,
        keys: ipvs_keys(&valid).into_iter().collect(),
        pool: pool.metadata.name.clone().unwrap_or_default(),
    })
}

/// Takes real servers on cluster nodes out (weight 0) until their node's
/// agent has programmed them (see [`judge::admitted`]); returns the nodes
/// still waiting. Only the weight changes: the server stays in the list, so
/// its node still plans it as a backend, programs it and reports.
fn admit(
    servers: &mut [RealServer],
    reports: &[NodeStatus],
    generation: Option<i64>,
) -> BTreeSet<String> {
    let mut waiting = BTreeSet::new();
    for rs in servers {
        let Some(node) = &rs.node_name else {
            continue;
        };
        if !judge::admitted(node, reports, generation) {
            rs.weight = 0;
            waiting.insert(node.clone());
        }
    }
    waiting
}

/// The director whose agent reports holding the VIP at `generation`; of
/// several, the one that took it last (the others may be cut off, unable to
/// report that they let go).
fn active_director(reports: &[NodeStatus], generation: Option<i64>) -> Option<String> {
    reports
        .iter()
        .filter(|r| r.director_state == Some(DirectorState::Active))
        .filter(|r| r.observed_generation == generation)
        .max_by_key(|r| {
            r.director_since
                .as_deref()
                .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
        })
        .map(|r| r.node_name.clone())
}

/// The ElectionConflict condition: what directors hear that contradicts
/// the election (a speaker outside it using its id, or a second master).
fn election_conflict(reports: &[NodeStatus]) -> Want {
    let seen: Vec<(&str, &ElectionConflict)> = reports
        .iter()
        .filter_map(|r| Some((r.node_name.as_str(), r.election_conflict.as_ref()?)))
        .collect();
    let Some((_, first)) = seen.first() else {
        return Want::new(
            ELECTION_CONFLICT,
            false,
            "NoConflict",
            "no director reports another speaker on its virtual router id or a second master",
        );
    };
    let message = seen
        .iter()
        .map(|(node, c)| format!("director {node}: {}", c.message))
        .collect::<Vec<_>>()
        .join("; ");
    Want::new(ELECTION_CONFLICT, true, first.reason.clone(), message)
}

/// The AllRealServersUnhealthy condition.
fn all_unhealthy(agg: &Aggregate, key: &ObjectKey) -> Want {
    if !agg.fail_open.is_empty() {
        let who = agg.fail_open.join(", ");
        let (noun, verb) = if agg.fail_open.len() == 1 {
            ("director", "keeps")
        } else {
            ("directors", "keep")
        };
        return Want::new(
            ALL_UNHEALTHY,
            true,
            "FailOpen",
            format!(
                "no checked real server of {key} is healthy on {noun} {who}, which {verb} sending to them all (fail open); {} real servers healthy",
                agg.summary()
            ),
        );
    }
    if agg.all_unhealthy() {
        return Want::new(
            ALL_UNHEALTHY,
            true,
            "AllUnhealthy",
            format!("all {} real servers of {key} are unhealthy", agg.total),
        );
    }
    Want::new(
        ALL_UNHEALTHY,
        false,
        "HealthyServers",
        format!("{} real servers healthy", agg.summary()),
    )
}

/// `existing`: the conditions as last written (their status and
/// lastTransitionTime are carried over when unchanged); `health_before`: each
/// real server's health state as last written, by address.
pub fn decide(
    vs: &VirtualService,
    existing: &[Condition],
    health_before: &[(String, HealthState)],
    view: &View<'_>,
    policy: &Policy,
    now: &Time,
) -> Decision {
    let generation = vs.metadata.generation;
    let reports = vs
        .status
        .as_ref()
        .map(|s| s.nodes.as_slice())
        .unwrap_or_default();
    let mut wants = Vec::new();
    let mut real_servers = Vec::new();
    let mut block: Option<(String, String)> = None;
    // VIP ports with a health check: the ports directors report verdicts for.
    let mut checked = BTreeSet::new();

    match validate(&vs.spec) {
        Err(e) => {
            // Admission normally stops these; objects stored under an older schema can still get here.
            let msg = e.to_string();
            wants.push(Want::new(RESOLVED, false, "Invalid", msg.clone()));
            block = Some(("Invalid".into(), msg));
        }
        Ok(valid) => {
            checked = valid
                .ports
                .iter()
                .zip(&valid.health)
                .filter(|(_, h)| h.is_some())
                .map(|(p, _)| i32::from(p.port))
                .collect();
            let namespace = vs.metadata.namespace.as_deref().unwrap_or_default();
            let admitted = judge::vip_allowed(valid.vip, &policy.service_cidrs, view.nodes)
                .and_then(|()| {
                    judge::admit(
                        namespace,
                        view.namespace_labels,
                        &vs.spec,
                        &valid,
                        view.pools,
                        view.nodes,
                    )
                });
            let me = Peer {
                age: age(vs),
                vip: valid.vip,
                keys: ipvs_keys(&valid).into_iter().collect(),
                pool: admitted
                    .as_ref()
                    .ok()
                    .and_then(|p| p.metadata.name.clone())
                    .unwrap_or_default(),
            };
            // The VIP belongs to the namespace of its oldest admitted VirtualService.
            let oldest = judge::oldest(view.peers.iter().chain(admitted.is_ok().then_some(&me)));
            let allowed = admitted.and_then(|pool| match judge::vip_taken(pool, &me, oldest) {
                Some(v) => Err(v),
                None => Ok(pool),
            });
            match allowed {
                Ok(pool) => wants.push(Want::new(
                    VIP_ALLOWED,
                    true,
                    "InPool",
                    format!(
                        "VIP {} is in VipPool {}",
                        valid.vip,
                        pool.metadata.name.as_deref().unwrap_or_default()
                    ),
                )),
                Err(v) => {
                    wants.push(Want::new(VIP_ALLOWED, false, v.reason, v.message.clone()));
                    block = Some((v.reason.into(), v.message));
                }
            }
            // Only peers that hold their VIP themselves occupy its ports.
            let holding = view
                .peers
                .iter()
                .filter(|p| judge::holds_vip(p, view.pools, oldest));
            match judge::conflict(&me, holding) {
                None => wants.push(Want::new(
                    CONFLICT,
                    false,
                    "NoConflict",
                    "no older VirtualService uses these VIP ports",
                )),
                Some(v) => {
                    wants.push(Want::new(CONFLICT, true, v.reason, v.message.clone()));
                    block.get_or_insert((v.reason.into(), v.message));
                }
            }
            let resolved = match &valid.service_name {
                None => Ok(resolve::resolve_static(&valid, view.nodes)),
                Some(_) => resolve::resolve_service(
                    &vs.spec,
                    &valid,
                    vs.metadata.namespace.as_deref().unwrap_or_default(),
                    view.service,
                    &view.slices,
                    view.nodes,
                ),
            };
            match resolved {
                Ok(rs) => {
                    let on_nodes = rs.iter().filter(|r| r.node_name.is_some()).count();
                    wants.push(Want::new(
                        RESOLVED,
                        true,
                        "Resolved",
                        format!("{} real servers ({on_nodes} on cluster nodes)", rs.len()),
                    ));
                    real_servers = rs;
                }
                Err(u) => {
                    wants.push(Want::new(RESOLVED, false, u.reason, u.message.clone()));
                    block.get_or_insert((u.reason.into(), u.message));
                }
            }
            if let Err(e) = &view.election {
                block.get_or_insert((e.reason().into(), e.to_string()));
            }
        }
    }
    let election = match (&block, &view.election) {
        (None, Ok(Some(e))) => Some(ElectionStatus {
            active_director: active_director(reports, generation),
            ..e.clone()
        }),
        _ => None,
    };
    if election.is_some() {
        wants.push(election_conflict(reports));
    }

    let waiting = admit(&mut real_servers, reports, generation);
    let agg = health::aggregate(&checked, &real_servers, reports);
    for (rs, h) in real_servers.iter_mut().zip(&agg.servers) {
        rs.health = h.clone();
    }
    let health = health::transitions(health_before, &real_servers);

    let accepted = block.is_none();
    match &block {
        Some((reason, msg)) => {
            wants.push(Want::new(ACCEPTED, false, reason.clone(), msg.clone()));
            wants.push(Want::new(READY, false, reason.clone(), msg.clone()));
            wants.push(Want::new(
                RECONCILING,
                false,
                reason.clone(),
                "waiting for the VirtualService or the cluster to change",
            ));
            wants.push(Want::new(STALLED, true, reason.clone(), msg.clone()));
        }
        None => {
            wants.push(Want::new(
                ACCEPTED,
                true,
                "Accepted",
                "nodes may program this VirtualService",
            ));
            let (ready, reason, msg) = match judge::expected_nodes(
                &vs.spec,
                &real_servers,
                view.nodes,
            ) {
                Err(m) => (false, "NoDirector".to_string(), m),
                Ok(expected) => {
                    match judge::readiness(&expected, reports, generation.unwrap_or(0)) {
                        // Reported programmed, but not as a backend: the
                        // real server stays out until it is.
                        Readiness::Ready { .. } if !waiting.is_empty() => (
                            false,
                            "Pending".into(),
                            format!(
                                "waiting for nodes to program their real servers: {}",
                                waiting.iter().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        ),
                        Readiness::Ready { nodes } => (
                            true,
                            "Programmed".into(),
                            format!(
                                "{nodes} nodes programmed generation {}; {} real servers healthy",
                                generation.unwrap_or(0),
                                agg.summary()
                            ),
                        ),
                        Readiness::Pending(p) => (
                            false,
                            "Pending".into(),
                            format!("waiting for nodes: {}", p.join(", ")),
                        ),
                        Readiness::Failing(f) => {
                            let parts: Vec<String> =
                                f.iter().map(|(n, m)| format!("node {n}: {m}")).collect();
                            (false, "ProgramFailed".into(), parts.join("; "))
                        }
                    }
                }
            };
            let pending = reason == "Pending";
            let stalled = !ready && !pending;
            wants.push(Want::new(READY, ready, reason.clone(), msg.clone()));
            wants.push(Want::new(
                RECONCILING,
                pending,
                reason.clone(),
                if pending { msg.clone() } else { String::new() },
            ));
            wants.push(Want::new(
                STALLED,
                stalled,
                reason,
                if stalled { msg } else { String::new() },
            ));
        }
    }

    wants.push(all_unhealthy(&agg, &object_key(vs)));

    let (conditions, transitions) = conditions::merge(existing, &wants, generation, now);
    Decision {
        status: OperatorStatus {
            observed_generation: generation,
            conditions,
            real_server_count: Some(real_servers.len() as i32),
            real_servers: Some(real_servers),
            healthy: Some(agg.summary()),
            election,
        },
        transitions,
        health,
        accepted,
    }
}

/// The status of a VirtualService being deleted while the nodes in
/// `remaining` still report programming it: not Ready, and Reconciling until
/// they have removed it. `written` is the status as stored: the rest of it
/// (realServers, Accepted...) is restated as it was, since an apply that
/// omits a field this manager owns removes it. `None` when `written` says
/// all this already.
pub fn terminating(
    written: &VirtualServiceStatus,
    remaining: &[String],
    generation: Option<i64>,
    now: &Time,
) -> Option<OperatorStatus> {
    let msg = format!(
        "waiting for nodes to remove their programming: {}",
        remaining.join(", ")
    );
    let existing = written.conditions.as_slice();
    let wants = [
        Want::new(READY, false, "Terminating", msg.clone()),
        Want::new(RECONCILING, true, "Terminating", msg.clone()),
        Want::new(STALLED, false, "Terminating", ""),
    ];
    let (merged, transitions) = conditions::merge(existing, &wants, generation, now);
    if transitions.is_empty() && conditions::get(existing, READY).map(|c| &c.message) == Some(&msg)
    {
        return None;
    }
    let mut conds: Vec<Condition> = existing
        .iter()
        .map(|c| {
            merged
                .iter()
                .find(|m| m.type_ == c.type_)
                .unwrap_or(c)
                .clone()
        })
        .collect();
    for m in merged {
        if !conds.iter().any(|c| c.type_ == m.type_) {
            conds.push(m);
        }
    }
    Some(OperatorStatus {
        observed_generation: written.observed_generation,
        conditions: conds,
        real_servers: Some(written.real_servers.clone()),
        real_server_count: written.real_server_count,
        healthy: written.healthy.clone(),
        election: written.election.clone(),
    })
}

/// What is said of a VirtualService that cannot be read, in its conditions
/// and its Event.
pub fn unreadable_message(error: &impl std::fmt::Display) -> String {
    format!("cannot read this VirtualService: {error}")
}

/// The status of a VirtualService that cannot be read: not resolved,
/// accepted or ready, and stalled until it is fixed. Nothing is known of its
/// real servers, so none are written.
pub fn unreadable(
    error: &impl std::fmt::Display,
    generation: Option<i64>,
    now: &Time,
) -> OperatorStatus {
    let msg = unreadable_message(error);
    let wants = [
        Want::new(RESOLVED, false, "Unreadable", msg.clone()),
        Want::new(ACCEPTED, false, "Unreadable", msg.clone()),
        Want::new(READY, false, "Unreadable", msg.clone()),
        Want::new(
            RECONCILING,
            false,
            "Unreadable",
            "waiting for the VirtualService to be fixed",
        ),
        Want::new(STALLED, true, "Unreadable", msg),
    ];
    let (conditions, _) = conditions::merge(&[], &wants, generation, now);
    OperatorStatus {
        observed_generation: generation,
        conditions,
        real_servers: None,
        real_server_count: None,
        healthy: None,
        election: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::{Observed, digest};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::jiff::Timestamp;
    use std::sync::LazyLock;
    use tunlb_api::{NodeRole, NodeStatus, ProbedServer};

    fn vs(yaml: &str) -> VirtualService {
        serde_yaml::from_str(yaml).unwrap()
    }
    fn report(name: &str, generation: i64, programmed: bool, roles: &[NodeRole]) -> NodeStatus {
        NodeStatus {
            health: vec![],
            fail_open: false,
            node_name: name.into(),
            roles: roles.to_vec(),
            observed_generation: Some(generation),
            programmed,
            message: if programmed {
                String::new()
            } else {
                "tunnel device missing".into()
            },
            draining: vec![],
            director_state: None,
            director_since: None,
            election_conflict: None,
        }
    }
    fn probe(address: &str, state: HealthState, message: &str) -> ProbedServer {
        ProbedServer {
            address: address.into(),
            port: 80,
            state,
            since: Some("2026-01-01T00:00:10Z".into()),
            message: message.into(),
        }
    }
    fn with_nodes(mut obj: VirtualService, nodes: Vec<NodeStatus>) -> VirtualService {
        obj.status = Some(tunlb_api::VirtualServiceStatus {
            nodes,
            ..Default::default()
        });
        obj
    }
    fn weights(d: &Decision) -> Vec<(&str, i32)> {
        d.status
            .servers()
            .iter()
            .map(|r| (r.address.as_str(), r.weight))
            .collect()
    }
    fn now() -> Time {
        Time(Timestamp::from_second(1_000).unwrap())
    }
    fn nodes() -> Vec<NodeInfo> {
        vec![
            NodeInfo {
                name: "ds".into(),
                internal_ips: vec!["192.168.56.181".parse().unwrap()],
                labels: [("tunlb.io/director".to_string(), "true".to_string())].into(),
            },
            NodeInfo {
                name: "rs1".into(),
                internal_ips: vec!["192.168.56.183".parse().unwrap()],
                labels: Default::default(),
            },
        ]
    }
    fn policy() -> Policy {
        Policy {
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        }
    }
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    fn pool(name: &str, yaml: &str) -> VipPool {
        VipPool::new(name, serde_yaml::from_str(yaml).unwrap())
    }
    /// A pool that admits everything the tests use (as tests/controlplane/open-pool.yaml).
    fn open() -> &'static [VipPool] {
        static OPEN: LazyLock<Vec<VipPool>> = LazyLock::new(|| {
            vec![pool(
                "open",
                "cidrs: [192.168.56.0/24]\nnamespaceSelector: {}\ndirectors: {nodeSelector: {}}\nbackends: {nodeSelector: {}, cidrs: [0.0.0.0/0]}\ntargetPorts: [{from: 1, to: 65535}]\n",
            )]
        });
        &OPEN
    }
    const WEB: &str = r#"
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: web, namespace: default, generation: 3, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  vip: 192.168.56.185
  ports: [{port: 80}]
  scheduler: wrr
  backends: {static: [{address: 192.168.56.183}, {address: 10.20.0.5, weight: 2}]}
"#;

    fn cond<'a>(d: &'a Decision, t: &str) -> &'a Condition {
        conditions::get(&d.status.conditions, t).unwrap()
    }

    #[test]
    fn static_backends_resolve_with_node_names_and_wait_for_nodes() {
        let n = nodes();
        let view = View {
            nodes: &n,
            pools: open(),
            namespace_labels: &NO_LABELS,
            service: None,
            slices: vec![],
            peers: &[],
            election: Ok(None),
        };
        let d = decide(&vs(WEB), &[], &[], &view, &policy(), &now());
        assert!(d.accepted);
        assert_eq!(d.status.observed_generation, Some(3));
        assert_eq!(d.status.servers()[0].node_name.as_deref(), Some("rs1"));
        assert_eq!(d.status.servers()[1].node_name, None);
        assert_eq!(cond(&d, RESOLVED).status, "True");
        let ready = cond(&d, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Pending")
        );
        assert_eq!(ready.message, "waiting for nodes: ds, rs1");
        assert_eq!(cond(&d, RECONCILING).status, "True");
        assert_eq!(cond(&d, STALLED).status, "False");
    }

    #[test]
    fn ready_when_every_node_programmed_this_generation() {
        let n = nodes();
        let mut obj = vs(WEB);
        obj.status = Some(tunlb_api::VirtualServiceStatus {
            nodes: vec![
                report("ds", 3, true, &[NodeRole::Director]),
                report("rs1", 3, true, &[NodeRole::Backend]),
            ],
            ..Default::default()
        });
        let view = View {
            nodes: &n,
            pools: open(),
            namespace_labels: &NO_LABELS,
            service: None,
            slices: vec![],
            peers: &[],
            election: Ok(None),
        };
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        assert_eq!(cond(&d, READY).status, "True");
        assert_eq!(cond(&d, RECONCILING).status, "False");
        // no director reports probes yet: the checked servers are Unknown
        assert_eq!(
            cond(&d, READY).message,
            "2 nodes programmed generation 3; 0/2 real servers healthy"
        );
    }

    fn view_with<'a>(n: &'a [NodeInfo], pools: &'a [VipPool], peers: &'a [Peer]) -> View<'a> {
        View {
            nodes: n,
            pools,
            namespace_labels: &NO_LABELS,
            service: None,
            slices: vec![],
            peers,
            election: Ok(None),
        }
    }

    /// VipAllowed, Accepted and Stalled as (status, reason).
    fn verdict(d: &Decision) -> [(String, String); 3] {
        [VIP_ALLOWED, ACCEPTED, STALLED].map(|t| {
            let c = cond(d, t);
            (c.status.clone(), c.reason.clone())
        })
    }

    fn refused(reason: &str) -> [(String, String); 3] {
        [
            ("False".into(), reason.into()),
            ("False".into(), reason.into()),
            ("True".into(), reason.into()),
        ]
    }

    #[test]
    fn a_vip_in_no_pool_is_refused_and_the_pool_that_admits_it_is_named() {
        let n = nodes();
        let d = decide(
            &vs(WEB),
            &[],
            &[],
            &view_with(&n, open(), &[]),
            &policy(),
            &now(),
        );
        assert!(d.accepted);
        let c = cond(&d, VIP_ALLOWED);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "InPool"));
        assert_eq!(c.message, "VIP 192.168.56.185 is in VipPool open");

        // the pool is deleted: refused, with the rule that refused
        let d2 = decide(
            &vs(WEB),
            &d.status.conditions,
            &[],
            &view_with(&n, &[], &[]),
            &policy(),
            &now(),
        );
        assert!(!d2.accepted);
        assert_eq!(verdict(&d2), refused("NoPool"));
        assert_eq!(
            cond(&d2, ACCEPTED).message,
            "VIP 192.168.56.185 is in no VipPool: none exists; a cluster admin creates one (kind VipPool) holding it"
        );
        assert_eq!(cond(&d2, READY).reason, "NoPool");
        let changed: Vec<&str> = d2.transitions.iter().map(|w| w.type_).collect();
        assert!(
            changed.contains(&VIP_ALLOWED) && changed.contains(&ACCEPTED),
            "{changed:?}"
        );

        // node addresses and the Service range come first, pool or not
        let on_node = vs(&WEB.replace("vip: 192.168.56.185", "vip: 192.168.56.181"));
        let d = decide(
            &on_node,
            &[],
            &[],
            &view_with(&n, open(), &[]),
            &policy(),
            &now(),
        );
        assert_eq!(verdict(&d), refused("NodeAddress"));
    }

    #[test]
    fn each_pool_rule_refuses_with_its_reason() {
        let n = nodes();
        let judge = |obj: &VirtualService, yaml: &str| {
            let pools = [pool("team", yaml)];
            let d = decide(
                obj,
                &[],
                &[],
                &view_with(&n, &pools, &[]),
                &policy(),
                &now(),
            );
            (verdict(&d), cond(&d, VIP_ALLOWED).message.clone())
        };
        let team_b = "cidrs: [192.168.56.0/24]\nnamespaces: [team-b]\n";
        let (v, msg) = judge(&vs(WEB), team_b);
        assert_eq!(v, refused("NamespaceNotAllowed"));
        assert!(msg.starts_with("VipPool team: namespace default"), "{msg}");

        // rs1 (192.168.56.183) is a node: the pool admits no node as a backend
        let default =
            "cidrs: [192.168.56.0/24]\nnamespaces: [default]\nbackends: {cidrs: [10.0.0.0/8]}\n";
        let (v, msg) = judge(&vs(WEB), default);
        assert_eq!(v, refused("BackendNotAllowed"));
        assert!(
            msg.contains("static backend 192.168.56.183 is node rs1"),
            "{msg}"
        );
        let without_rs1 = WEB.replace("{address: 192.168.56.183}, ", "");
        assert_eq!(judge(&vs(&without_rs1), default).0[0].1, "InPool");

        let eth0 = vs(&without_rs1.replace(
            "scheduler: wrr",
            "scheduler: wrr\n  directors: {interface: eth0}",
        ));
        assert_eq!(judge(&eth0, default).0, refused("InterfaceNotAllowed"));

        let mapped = vs(&without_rs1.replace("{port: 80}", "{port: 80, targetPort: 10250}"));
        let (v, msg) = judge(&mapped, default);
        assert_eq!(v, refused("TargetPortNotAllowed"));
        assert!(msg.contains("may not map to 10250"), "{msg}");

        let cp_director = vs(&without_rs1.replace(
            "scheduler: wrr",
            "scheduler: wrr\n  directors: {nodeSelector: {matchExpressions: [{key: tunlb.io/director, operator: DoesNotExist}]}}",
        ));
        let (v, msg) = judge(&cp_director, default);
        assert_eq!(v, refused("DirectorNotAllowed"));
        assert!(msg.contains("node rs1 may not direct"), "{msg}");
    }

    fn in_namespace(ns: &str, name: &str, year: u32, port: u16) -> VirtualService {
        vs(&WEB
            .replace(
                "name: web, namespace: default",
                &format!("name: {name}, namespace: {ns}"),
            )
            .replace("2026-01-01", &format!("{year}-01-01"))
            .replace("{port: 80}", &format!("{{port: {port}}}")))
    }

    #[test]
    fn a_vip_belongs_to_its_oldest_namespace_and_a_refused_peer_blocks_nothing() {
        let n = nodes();
        let closed = [pool(
            "closed",
            "cidrs: [192.168.56.0/24]\nnamespaceSelector: {}\nbackends: {nodeSelector: {}, cidrs: [10.0.0.0/8]}\n",
        )];
        let as_peer = |o: &VirtualService| peer(o, &policy(), &closed, &NO_LABELS, &n).unwrap();
        // team-b's, older, on another port of the VIP
        let theirs = in_namespace("team-b", "theirs", 2024, 8080);
        let peers = [as_peer(&theirs)];
        let d = decide(
            &vs(WEB),
            &[],
            &[],
            &view_with(&n, &closed, &peers),
            &policy(),
            &now(),
        );
        assert_eq!(verdict(&d), refused("VipInUse"));
        assert_eq!(
            cond(&d, VIP_ALLOWED).message,
            "VipPool closed: VIP 192.168.56.185 belongs to namespace team-b (team-b/theirs), and spec.shareAcrossNamespaces is off"
        );
        assert!(!d.accepted);
        // the younger one is refused, not the older
        let d = decide(
            &theirs,
            &[],
            &[],
            &view_with(&n, &closed, &[as_peer(&vs(WEB))]),
            &policy(),
            &now(),
        );
        assert!(d.accepted, "{:?}", verdict(&d));
        // a pool that shares the VIP admits both
        let shared = [pool(
            "shared",
            "cidrs: [192.168.56.0/24]\nnamespaceSelector: {}\nshareAcrossNamespaces: true\nbackends: {nodeSelector: {}, cidrs: [10.0.0.0/8]}\n",
        )];
        let peers = [peer(&theirs, &policy(), &shared, &NO_LABELS, &n).unwrap()];
        let d = decide(
            &vs(WEB),
            &[],
            &[],
            &view_with(&n, &shared, &peers),
            &policy(),
            &now(),
        );
        assert!(d.accepted, "{:?}", verdict(&d));

        // default's own, oldest, holds the VIP: team-b's on port 80 is refused
        // it, and so does not block web on port 80 either
        let ours = in_namespace("default", "ours", 2023, 443);
        let on_80 = in_namespace("team-b", "on-80", 2024, 80);
        let peers = [as_peer(&ours), as_peer(&on_80)];
        let d = decide(
            &vs(WEB),
            &[],
            &[],
            &view_with(&n, &closed, &peers),
            &policy(),
            &now(),
        );
        assert!(d.accepted, "{:?}", verdict(&d));
        assert_eq!(cond(&d, CONFLICT).reason, "NoConflict");
        // without ours, team-b's holds the VIP and port 80
        let peers = [as_peer(&on_80)];
        let d = decide(
            &vs(WEB),
            &[],
            &[],
            &view_with(&n, &closed, &peers),
            &policy(),
            &now(),
        );
        assert_eq!(verdict(&d), refused("VipInUse"));
        assert_eq!(cond(&d, CONFLICT).reason, "PortInUse");
    }

    #[test]
    fn conflict_with_older_peer() {
        let n = nodes();
        let older = vs(&WEB
            .replace("name: web", "name: old")
            .replace("2026-01-01", "2025-01-01"));
        let peers = vec![peer(&older, &policy(), open(), &NO_LABELS, &n).unwrap()];
        let view = View {
            nodes: &n,
            pools: open(),
            namespace_labels: &NO_LABELS,
            service: None,
            slices: vec![],
            peers: &peers,
            election: Ok(None),
        };
        let d = decide(&vs(WEB), &[], &[], &view, &policy(), &now());
        let c = cond(&d, CONFLICT);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "PortInUse")
        );
        assert!(c.message.contains("default/old"));
        assert!(!d.accepted);
    }

    #[test]
    fn missing_service_is_reported_and_recovers() {
        let n = nodes();
        let obj = vs(&WEB.replace(
            "backends: {static: [{address: 192.168.56.183}, {address: 10.20.0.5, weight: 2}]}",
            "backends: {service: {name: web}}",
        ));
        let view = View {
            nodes: &n,
            pools: open(),
            namespace_labels: &NO_LABELS,
            service: None,
            slices: vec![],
            peers: &[],
            election: Ok(None),
        };
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        let c = cond(&d, RESOLVED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ServiceNotFound")
        );

        let svc: Service = serde_yaml::from_str("metadata: {name: web, namespace: default}\nspec: {ports: [{name: http, port: 80, targetPort: 8080}]}").unwrap();
        let slice: EndpointSlice = serde_yaml::from_str(
            r#"
metadata: {name: web-abc, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.5], nodeName: rs1, conditions: {ready: true}}
- {addresses: [10.244.1.6], nodeName: rs1}
- {addresses: [10.244.1.7], nodeName: rs1, conditions: {ready: false}}
"#,
        )
        .unwrap();
        let (svc, slice) = (
            ServiceInfo::from_service(&svc),
            SliceInfo::from_slice(&slice),
        );
        let view = View {
            nodes: &n,
            pools: open(),
            namespace_labels: &NO_LABELS,
            service: Some(&svc),
            slices: vec![&slice],
            peers: &[],
            election: Ok(None),
        };
        let d2 = decide(&obj, &[], &[], &view, &policy(), &now());
        assert!(d2.accepted);
        let rs = d2.status.servers();
        assert_eq!(rs.len(), 1);
        // rs1 has not programmed it yet
        assert_eq!(
            (
                rs[0].address.as_str(),
                rs[0].weight,
                rs[0].node_name.as_deref()
            ),
            ("192.168.56.183", 0, Some("rs1"))
        );
        let obj = with_nodes(obj, vec![report("rs1", 3, true, &[NodeRole::Backend])]);
        let d2 = decide(&obj, &[], &[], &view, &policy(), &now());
        let rs = d2.status.servers();
        assert_eq!(
            (rs[0].weight, rs[0].ready),
            (2, true),
            "weighted by its 2 ready endpoints"
        );
        assert_eq!(
            rs[0]
                .endpoints
                .iter()
                .map(|e| (e.address.as_str(), e.ports[0]))
                .collect::<Vec<_>>(),
            vec![("10.244.1.5", 8080), ("10.244.1.6", 8080)]
        );
    }

    #[test]
    fn service_without_the_port_is_named() {
        let n = nodes();
        let obj = vs(&WEB.replace(
            "backends: {static: [{address: 192.168.56.183}, {address: 10.20.0.5, weight: 2}]}",
            "backends: {service: {name: web}}",
        ));
        let svc: Service = serde_yaml::from_str(
            "metadata: {name: web, namespace: default}\nspec: {ports: [{name: https, port: 443}]}",
        )
        .unwrap();
        let svc = ServiceInfo::from_service(&svc);
        let view = View {
            nodes: &n,
            pools: open(),
            namespace_labels: &NO_LABELS,
            service: Some(&svc),
            slices: vec![],
            peers: &[],
            election: Ok(None),
        };
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        assert_eq!(cond(&d, RESOLVED).reason, "PortNotFound");
        assert!(
            cond(&d, RESOLVED)
                .message
                .starts_with("spec.ports[0]: Service default/web has no port 80/TCP")
        );
    }

    #[test]
    fn a_second_judgement_without_change_writes_nothing() {
        let n = nodes();
        let view = View {
            nodes: &n,
            pools: open(),
            namespace_labels: &NO_LABELS,
            service: None,
            slices: vec![],
            peers: &[],
            election: Ok(None),
        };
        let obj = vs(WEB);
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        let none = Observed::of(None);
        assert_ne!(none.digest, digest(&d.status));
        let written = tunlb_api::VirtualServiceStatus {
            healthy: d.status.healthy.clone(),
            observed_generation: d.status.observed_generation,
            conditions: d.status.conditions.clone(),
            real_servers: d.status.servers().to_vec(),
            real_server_count: d.status.real_server_count,
            nodes: vec![],
            election: None,
        };
        let seen = Observed::of(Some(&written));
        let d2 = decide(
            &obj,
            &seen.conditions(),
            &seen.health(),
            &view,
            &policy(),
            &Time(Timestamp::from_second(5_000).unwrap()),
        );
        assert!(d2.transitions.is_empty());
        assert_eq!(seen.digest, digest(&d2.status));
    }

    fn static_view(n: &[NodeInfo]) -> View<'_> {
        View {
            nodes: n,
            pools: open(),
            namespace_labels: &NO_LABELS,
            service: None,
            slices: vec![],
            peers: &[],
            election: Ok(None),
        }
    }

    #[test]
    fn a_server_on_a_node_is_admitted_once_its_node_programmed_it() {
        let n = nodes();
        let view = static_view(&n);
        // no report: rs1 waits at weight 0; the server outside the cluster is not gated
        let d = decide(&vs(WEB), &[], &[], &view, &policy(), &now());
        assert_eq!(weights(&d), [("192.168.56.183", 0), ("10.20.0.5", 2)]);
        assert!(d.status.servers()[0].ready, "only the weight says it");

        // programmed, but as a director only: its backend part is not there yet
        let obj = with_nodes(
            vs(WEB),
            vec![
                report("ds", 3, true, &[NodeRole::Director]),
                report("rs1", 3, true, &[NodeRole::Director]),
            ],
        );
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        assert_eq!(weights(&d)[0], ("192.168.56.183", 0));
        let ready = cond(&d, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Pending")
        );
        assert_eq!(
            ready.message,
            "waiting for nodes to program their real servers: rs1"
        );

        // programmed as a backend at this generation: in
        let obj = with_nodes(
            vs(WEB),
            vec![
                report("ds", 3, true, &[NodeRole::Director]),
                report("rs1", 3, true, &[NodeRole::Backend]),
            ],
        );
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        assert_eq!(weights(&d), [("192.168.56.183", 1), ("10.20.0.5", 2)]);

        // it fails: out again until it recovers
        let obj = with_nodes(
            vs(WEB),
            vec![
                report("ds", 3, true, &[NodeRole::Director]),
                report("rs1", 3, false, &[NodeRole::Backend]),
            ],
        );
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        assert_eq!(weights(&d), [("192.168.56.183", 0), ("10.20.0.5", 2)]);
        assert_eq!(cond(&d, READY).reason, "ProgramFailed");

        // a spec edit (generation 4) keeps the programmed backend in while its
        // agent catches up, but not one that failed
        let edited = vs(&WEB.replace("generation: 3", "generation: 4"));
        let obj = with_nodes(
            edited.clone(),
            vec![report("rs1", 3, true, &[NodeRole::Backend])],
        );
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        assert_eq!(weights(&d)[0], ("192.168.56.183", 1));
        let obj = with_nodes(edited, vec![report("rs1", 4, false, &[NodeRole::Backend])]);
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        assert_eq!(weights(&d)[0], ("192.168.56.183", 0));
    }

    /// A real server kept at weight 0 is still planned as a backend on its
    /// node: otherwise its node would never program it, never report it
    /// programmed, and it would never be admitted.
    #[test]
    fn a_server_at_weight_0_is_still_planned_on_its_node() {
        let n = nodes();
        let view = static_view(&n);
        let obj = vs(&WEB.replace(
            "ports: [{port: 80}]",
            "ports: [{port: 80, targetPort: 8080}]",
        ));
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        assert_eq!(weights(&d)[0], ("192.168.56.183", 0));

        let input = tunlb_api::PlanInput {
            key: object_key(&obj),
            generation: obj.metadata.generation,
            spec: &obj.spec,
            real_servers: d.status.real_servers.as_deref(),
        };
        let rs1 = tunlb_api::NodeIdentity {
            name: "rs1".into(),
            addresses: ["192.168.56.183".parse().unwrap()].into(),
            ..Default::default()
        };
        let plan = tunlb_api::plan_node(std::slice::from_ref(&input), &rs1);
        let op = &plan.objects[&object_key(&obj)];
        assert_eq!(op.error, None);
        assert!(op.roles.contains(&NodeRole::Backend));
        assert!(
            plan.backend_vips
                .contains(&"192.168.56.185".parse().unwrap())
        );
        assert!(plan.needs_backend_sysctls());
        assert_eq!(plan.dnat.len(), 1, "{plan:?}");
        assert_eq!(plan.dnat[0].targets, [(None, 8080)]);

        // and the director holds it at weight 0
        let ds = tunlb_api::NodeIdentity {
            name: "ds".into(),
            addresses: ["192.168.56.181".parse().unwrap()].into(),
            labels: [("tunlb.io/director".to_string(), "true".to_string())].into(),
            ..Default::default()
        };
        let plan = tunlb_api::plan_node(&[input], &ds);
        let dests: Vec<(String, u32)> = plan
            .ipvs
            .values()
            .flat_map(|s| s.destinations.iter())
            .map(|((a, _), d)| (a.to_string(), d.weight))
            .collect();
        assert_eq!(
            dests,
            [
                ("10.20.0.5".to_string(), 2),
                ("192.168.56.183".to_string(), 0)
            ]
        );
    }

    #[test]
    fn health_is_summed_up_and_fail_open_is_a_condition() {
        let n = nodes();
        let view = static_view(&n);
        let mut ds = report("ds", 3, true, &[NodeRole::Director]);
        ds.health = vec![
            probe("192.168.56.183", HealthState::Healthy, ""),
            probe(
                "10.20.0.5",
                HealthState::Unhealthy,
                "connect: connection refused",
            ),
        ];
        let rs1 = report("rs1", 3, true, &[NodeRole::Backend]);
        let obj = with_nodes(vs(WEB), vec![ds.clone(), rs1.clone()]);
        let before = [
            ("192.168.56.183".to_string(), HealthState::Unknown),
            ("10.20.0.5".to_string(), HealthState::Healthy),
        ];
        let d = decide(&obj, &[], &before, &view, &policy(), &now());
        assert_eq!(d.status.healthy.as_deref().unwrap(), "1/2");
        let h = |i: usize| d.status.servers()[i].health.clone().unwrap();
        assert_eq!(h(0).state, HealthState::Healthy);
        assert_eq!(
            (h(1).state, h(1).message.as_str(), h(1).since.as_deref()),
            (
                HealthState::Unhealthy,
                "connect: connection refused",
                Some("2026-01-01T00:00:10Z")
            )
        );
        assert_eq!(
            cond(&d, READY).message,
            "2 nodes programmed generation 3; 1/2 real servers healthy"
        );
        let c = cond(&d, ALL_UNHEALTHY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("False", "HealthyServers", "1/2 real servers healthy")
        );
        let t: Vec<(&str, HealthState)> = d
            .health
            .iter()
            .map(|t| (t.address.as_str(), t.to))
            .collect();
        assert_eq!(
            t,
            [
                ("192.168.56.183", HealthState::Healthy),
                ("10.20.0.5", HealthState::Unhealthy)
            ]
        );

        // every server fails and the director fails open: Ready keeps saying
        // what is programmed, the new condition says the rest
        ds.health[0] = probe("192.168.56.183", HealthState::Unhealthy, "timed out");
        ds.fail_open = true;
        let obj = with_nodes(vs(WEB), vec![ds, rs1]);
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        assert_eq!(d.status.healthy.as_deref().unwrap(), "0/2");
        assert_eq!(cond(&d, READY).status, "True");
        let c = cond(&d, ALL_UNHEALTHY);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "FailOpen"));
        assert_eq!(
            c.message,
            "no checked real server of default/web is healthy on director ds, which keeps sending to them all (fail open); 0/2 real servers healthy"
        );
    }

    #[test]
    fn unchecked_servers_have_no_health_and_count_as_healthy() {
        let n = nodes();
        let view = static_view(&n);
        let obj = vs(&WEB.replace(
            "scheduler: wrr",
            "scheduler: wrr\n  healthCheck: {type: none}",
        ));
        let d = decide(&obj, &[], &[], &view, &policy(), &now());
        assert!(d.status.servers().iter().all(|r| r.health.is_none()));
        assert_eq!(d.status.healthy.as_deref().unwrap(), "2/2");
        assert_eq!(cond(&d, ALL_UNHEALTHY).status, "False");
    }

    fn status_of(d: &Decision) -> VirtualServiceStatus {
        VirtualServiceStatus {
            healthy: d.status.healthy.clone(),
            observed_generation: d.status.observed_generation,
            conditions: d.status.conditions.clone(),
            real_servers: d.status.servers().to_vec(),
            real_server_count: d.status.real_server_count,
            nodes: vec![],
            election: None,
        }
    }

    #[test]
    fn terminating_waits_for_nodes_and_restates_the_rest() {
        let n = nodes();
        let programmed = with_nodes(
            vs(WEB),
            vec![
                report("ds", 3, true, &[NodeRole::Director]),
                report("rs1", 3, true, &[NodeRole::Backend]),
            ],
        );
        let judged = decide(&programmed, &[], &[], &static_view(&n), &policy(), &now());
        assert_eq!(cond(&judged, READY).status, "True");
        let written = status_of(&judged);
        let later = Time(Timestamp::from_second(2_000).unwrap());

        let s = terminating(&written, &["ds".into(), "rs1".into()], Some(3), &later)
            .expect("a first write");
        let c = |t: &str| conditions::get(&s.conditions, t).unwrap().clone();
        let msg = "waiting for nodes to remove their programming: ds, rs1";
        assert_eq!(
            (c(READY).status.as_str(), c(READY).reason.as_str()),
            ("False", "Terminating")
        );
        assert_eq!(c(READY).message, msg);
        assert_eq!(
            (
                c(RECONCILING).status.as_str(),
                c(RECONCILING).message.as_str()
            ),
            ("True", msg)
        );
        assert_eq!(
            (c(STALLED).status.as_str(), c(STALLED).reason.as_str()),
            ("False", "Terminating")
        );
        // the rest as judged, in the same order
        assert_eq!(c(ACCEPTED), *cond(&judged, ACCEPTED));
        let types = |cs: &[Condition]| cs.iter().map(|c| c.type_.clone()).collect::<Vec<_>>();
        assert_eq!(types(&s.conditions), types(&judged.status.conditions));
        assert_eq!(s.servers(), judged.status.servers());
        assert_eq!(
            (s.real_server_count, &s.healthy),
            (Some(2), &judged.status.healthy)
        );

        // written once: nothing more until the list of nodes changes
        let mut stored = written.clone();
        stored.conditions = s.conditions.clone();
        assert_eq!(
            terminating(&stored, &["ds".into(), "rs1".into()], Some(3), &now()),
            None
        );
        let s2 = terminating(&stored, &["rs1".into()], Some(3), &now()).expect("a new message");
        let ready = conditions::get(&s2.conditions, READY).unwrap();
        assert_eq!(
            ready.message,
            "waiting for nodes to remove their programming: rs1"
        );
        assert_eq!(ready.last_transition_time, later, "False since deleted");
    }

    #[test]
    fn an_unreadable_object_is_stalled_and_has_no_real_servers() {
        let s = unreadable(&"spec.ports: invalid type", Some(4), &now());
        let got: Vec<(&str, &str, &str)> = s
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (RESOLVED, "False", "Unreadable"),
                (ACCEPTED, "False", "Unreadable"),
                (READY, "False", "Unreadable"),
                (RECONCILING, "False", "Unreadable"),
                (STALLED, "True", "Unreadable"),
            ]
        );
        assert_eq!(
            s.conditions[0].message,
            "cannot read this VirtualService: spec.ports: invalid type"
        );
        let json = serde_json::to_value(&s).unwrap();
        let mut fields: Vec<&String> = json.as_object().unwrap().keys().collect();
        fields.sort();
        assert_eq!(fields, ["conditions", "observedGeneration"]);
    }

    #[test]
    fn a_conflict_a_director_hears_is_a_condition_naming_it() {
        let mut d1 = report("d1", 2, true, &[NodeRole::Director]);
        let d2 = report("d2", 2, true, &[NodeRole::Director]);
        let quiet = election_conflict(&[d1.clone(), d2.clone()]);
        assert!(!quiet.status);
        assert_eq!(quiet.reason, "NoConflict");
        d1.election_conflict = Some(ElectionConflict {
            reason: "VirtualRouterIdClash".into(),
            message: "192.168.56.190, not a member of virtual router 255, advertises the same id"
                .into(),
        });
        let w = election_conflict(&[d1, d2]);
        assert!(w.status);
        assert_eq!(w.type_, ELECTION_CONFLICT);
        assert_eq!(w.reason, "VirtualRouterIdClash");
        assert!(
            w.message
                .starts_with("director d1: 192.168.56.190, not a member"),
            "{}",
            w.message
        );
    }

    #[test]
    fn of_two_active_directors_the_later_one_holds_the_vip() {
        let entry = |node: &str, state: DirectorState, since: &str| NodeStatus {
            node_name: node.into(),
            roles: vec![tunlb_api::NodeRole::Director],
            observed_generation: Some(2),
            programmed: true,
            message: String::new(),
            draining: vec![],
            health: vec![],
            fail_open: false,
            director_state: Some(state),
            director_since: Some(since.into()),
            election_conflict: None,
        };
        // d1 was cut off while active and cannot report that it let go.
        let reports = [
            entry("d1", DirectorState::Active, "2026-12-02T07:00:01.900Z"),
            entry("d2", DirectorState::Active, "2026-12-02T07:00:02.400Z"),
            entry("d3", DirectorState::Standby, "2026-12-02T07:00:03Z"),
        ];
        assert_eq!(active_director(&reports, Some(2)).as_deref(), Some("d2"));
        // Reports of an older generation do not count.
        assert_eq!(active_director(&reports, Some(3)), None);
        assert_eq!(
            active_director(&reports[..1], Some(2)).as_deref(),
            Some("d1")
        );
    }
}
