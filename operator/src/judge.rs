//! Admission-like judgements the API server cannot make: is the VIP in an
//! allowed pool, is it free of node addresses and the Service range, does it
//! clash with an older VirtualService, and have the nodes programmed it. Pure.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use tunlb_api::plan::{IpvsKey, ObjectKey};
use tunlb_api::selector::selector_matches;
use tunlb_api::{DEFAULT_DIRECTOR_LABEL, NodeRole, NodeStatus, RealServer, VirtualServiceSpec};

use crate::resolve::NodeInfo;

/// A refusal with a machine reason and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub reason: &'static str,
    pub message: String,
}

/// Whether the VIP may be used.
pub fn vip_allowed(
    vip: IpAddr,
    pools: &[IpNet],
    service_cidrs: &[IpNet],
    nodes: &[NodeInfo],
) -> Result<(), Verdict> {
    if let Some(n) = nodes.iter().find(|n| n.internal_ips.contains(&vip)) {
        return Err(Verdict {
            reason: "NodeAddress",
            message: format!(
                "VIP {vip} is the InternalIP of node {}; a VIP must be an address of its own",
                n.name
            ),
        });
    }
    if let Some(c) = service_cidrs.iter().find(|c| c.contains(&vip)) {
        return Err(Verdict {
            reason: "ServiceRange",
            message: format!(
                "VIP {vip} lies in the cluster's Service range {c}, where kube-proxy owns addresses"
            ),
        });
    }
    if pools.is_empty() {
        return Err(Verdict {
            reason: "NoPoolConfigured",
            message: "no VIP pool is configured, so every VIP is refused: start the operator with --vip-cidr CIDR (Helm value vipCIDRs)".into(),
        });
    }
    if pools.iter().any(|p| p.contains(&vip)) {
        return Ok(());
    }
    let list: Vec<String> = pools.iter().map(ToString::to_string).collect();
    Err(Verdict {
        reason: "OutsidePool",
        message: format!(
            "VIP {vip} is outside the allowed pools ({}); use a VIP inside them or extend --vip-cidr",
            list.join(", ")
        ),
    })
}

/// Another VirtualService as seen for conflict checks.
#[derive(Debug, Clone)]
pub struct Peer {
    pub key: ObjectKey,
    /// (creationTimestamp in seconds, key): the smaller is older.
    pub age: (i64, ObjectKey),
    pub keys: BTreeSet<IpvsKey>,
}

/// The older peer this object clashes with, if any. Only peers that are
/// themselves valid and allowed are passed in, so an invalid old object never
/// blocks a good new one.
pub fn conflict(me: &Peer, peers: &[Peer]) -> Option<Verdict> {
    let mut older: Vec<&Peer> = peers
        .iter()
        .filter(|p| p.key != me.key && p.age < me.age)
        .filter(|p| !p.keys.is_disjoint(&me.keys))
        .collect();
    older.sort_by(|a, b| a.age.cmp(&b.age));
    let winner = older.first()?;
    let clash: Vec<String> = winner
        .keys
        .intersection(&me.keys)
        .map(ToString::to_string)
        .collect();
    Some(Verdict {
        reason: "PortInUse",
        message: format!(
            "{} already served by {}, which is older; only the older VirtualService is programmed",
            clash.join(", "),
            winner.key
        ),
    })
}

/// Nodes that must report before the service is Ready: directors matching
/// the selector, and nodes named by real servers.
pub fn expected_nodes(
    spec: &VirtualServiceSpec,
    real_servers: &[RealServer],
    nodes: &[NodeInfo],
) -> Result<BTreeSet<String>, String> {
    let selector = spec
        .directors
        .node_selector
        .clone()
        .unwrap_or_else(|| LabelSelector {
            match_labels: Some([(DEFAULT_DIRECTOR_LABEL.to_string(), "true".to_string())].into()),
            match_expressions: None,
        });
    let mut out = BTreeSet::new();
    for n in nodes {
        if selector_matches(&selector, &n.labels)
            .map_err(|e| format!("spec.directors.nodeSelector: {e}"))?
        {
            out.insert(n.name.clone());
        }
    }
    if out.is_empty() {
        return Err(
            "no node matches spec.directors.nodeSelector, so nothing can program the VIP".into(),
        );
    }
    out.extend(real_servers.iter().filter_map(|r| r.node_name.clone()));
    Ok(out)
}

/// Readiness from the agents' reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready { nodes: usize },
    Failing(Vec<(String, String)>),
    Pending(Vec<String>),
}

pub fn readiness(
    expected: &BTreeSet<String>,
    reports: &[NodeStatus],
    generation: i64,
) -> Readiness {
    let mut failing = Vec::new();
    let mut pending = Vec::new();
    for node in expected {
        match reports.iter().find(|r| &r.node_name == node) {
            Some(r) if r.observed_generation == Some(generation) && r.programmed => {}
            Some(r) if r.observed_generation == Some(generation) => {
                failing.push((node.clone(), r.message.clone()));
            }
            _ => pending.push(node.clone()),
        }
    }
    if !failing.is_empty() {
        Readiness::Failing(failing)
    } else if !pending.is_empty() {
        Readiness::Pending(pending)
    } else {
        Readiness::Ready {
            nodes: expected.len(),
        }
    }
}

/// Whether a real server on node `node` may take new connections: its
/// node's agent reports the VirtualService programmed with the backend role
/// (the VIP on its tunnel device, the sysctls, the port mapping), so that
/// what the directors send it arrives. A node that has not reported that yet,
/// or reports a failure, is kept at weight 0.
///
/// The report must be at `generation`, or at an older one the node
/// programmed before a spec edit: the agents program an edit only after the
/// operator has judged it, so requiring the current generation would take
/// every cluster node out on each edit until its agent catches up, and a
/// service whose real servers are all on nodes would refuse connections
/// meanwhile. A failure at the new generation still takes the node out.
pub fn admitted(node: &str, reports: &[NodeStatus], generation: Option<i64>) -> bool {
    reports.iter().any(|r| {
        r.node_name == node
            && r.programmed
            && r.roles.contains(&NodeRole::Backend)
            && r.observed_generation
                .is_some_and(|g| generation.is_none_or(|current| g <= current))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunlb_api::Protocol;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn node(name: &str, addr: &str, director: bool) -> NodeInfo {
        let mut labels = std::collections::BTreeMap::new();
        if director {
            labels.insert(DEFAULT_DIRECTOR_LABEL.to_string(), "true".to_string());
        }
        NodeInfo {
            name: name.into(),
            internal_ips: vec![ip(addr)],
            labels,
        }
    }

    #[test]
    fn pools() {
        let nodes = [node("n1", "192.168.56.181", true)];
        let pools = [net("192.168.56.0/24")];
        let svc = [net("10.96.0.0/12")];
        assert_eq!(
            vip_allowed(ip("192.168.56.185"), &pools, &svc, &nodes),
            Ok(())
        );
        assert_eq!(
            vip_allowed(ip("192.168.57.1"), &pools, &svc, &nodes)
                .unwrap_err()
                .reason,
            "OutsidePool"
        );
        assert_eq!(
            vip_allowed(ip("192.168.56.181"), &pools, &svc, &nodes)
                .unwrap_err()
                .reason,
            "NodeAddress"
        );
        assert_eq!(
            vip_allowed(ip("10.96.0.10"), &[net("10.0.0.0/8")], &svc, &nodes)
                .unwrap_err()
                .reason,
            "ServiceRange"
        );
        let none = vip_allowed(ip("192.168.56.185"), &[], &svc, &nodes).unwrap_err();
        assert_eq!(none.reason, "NoPoolConfigured");
        assert!(none.message.contains("--vip-cidr"));
    }

    fn peer(name: &str, age: i64, ports: &[u16]) -> Peer {
        let key = ObjectKey::new("default", name);
        Peer {
            key: key.clone(),
            age: (age, key),
            keys: ports
                .iter()
                .map(|p| IpvsKey {
                    protocol: Protocol::Tcp,
                    vip: ip("192.168.56.185"),
                    port: *p,
                })
                .collect(),
        }
    }

    #[test]
    fn older_wins() {
        let a = peer("a", 1, &[80]);
        let b = peer("b", 2, &[80, 443]);
        let c = peer("c", 3, &[8080]);
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(conflict(&a, &all), None);
        let v = conflict(&b, &all).unwrap();
        assert_eq!(v.reason, "PortInUse");
        assert!(
            v.message
                .contains("TCP 192.168.56.185:80 already served by default/a"),
            "{}",
            v.message
        );
        assert_eq!(conflict(&c, &all), None);
        // Once a is gone, b is free.
        assert_eq!(conflict(&b, &[b.clone(), c]), None);
    }

    #[test]
    fn admission_needs_the_backend_role_programmed() {
        let rep = |g: i64, ok: bool, roles: &[NodeRole]| NodeStatus {
            health: vec![],
            fail_open: false,
            node_name: "r".into(),
            roles: roles.to_vec(),
            observed_generation: Some(g),
            programmed: ok,
            message: String::new(),
            draining: vec![],
        };
        let backend = [NodeRole::Backend];
        assert!(!admitted("r", &[], Some(2)), "no report yet");
        assert!(admitted("r", &[rep(2, true, &backend)], Some(2)));
        assert!(
            !admitted("r", &[rep(2, false, &backend)], Some(2)),
            "a failing node is out"
        );
        assert!(
            !admitted("r", &[rep(2, true, &[NodeRole::Director])], Some(2)),
            "programmed as a director only: its backend part is not there yet"
        );
        assert!(
            admitted("r", &[rep(1, true, &backend)], Some(2)),
            "a spec edit keeps a programmed backend in"
        );
        assert!(
            !admitted("r", &[rep(1, false, &backend)], Some(2)),
            "a node that failed stays out until it programs"
        );
        assert!(!admitted("other", &[rep(2, true, &backend)], Some(2)));
    }

    #[test]
    fn readiness_from_reports() {
        let expected: BTreeSet<String> = ["d".to_string(), "r".to_string()].into();
        let rep = |n: &str, g: i64, ok: bool, m: &str| NodeStatus {
            health: vec![],
            fail_open: false,
            node_name: n.into(),
            roles: vec![],
            observed_generation: Some(g),
            programmed: ok,
            message: m.into(),
            draining: vec![],
        };
        assert_eq!(
            readiness(&expected, &[rep("d", 2, true, "")], 2),
            Readiness::Pending(vec!["r".into()])
        );
        assert_eq!(
            readiness(
                &expected,
                &[rep("d", 2, true, ""), rep("r", 1, true, "")],
                2
            ),
            Readiness::Pending(vec!["r".into()])
        );
        assert_eq!(
            readiness(
                &expected,
                &[rep("d", 2, true, ""), rep("r", 2, false, "ipip missing")],
                2
            ),
            Readiness::Failing(vec![("r".into(), "ipip missing".into())])
        );
        assert_eq!(
            readiness(
                &expected,
                &[rep("d", 2, true, ""), rep("r", 2, true, "")],
                2
            ),
            Readiness::Ready { nodes: 2 }
        );
    }
}
