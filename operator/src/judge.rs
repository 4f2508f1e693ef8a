//! Admission-like judgements the API server cannot make: is the VIP free of
//! node addresses and the Service range, does a VipPool holding it admit all
//! of the VirtualService, does the VIP belong to another namespace, does it
//! clash with an older VirtualService, and have the nodes programmed it. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use tunlb_api::plan::{IpvsKey, ObjectKey};
use tunlb_api::pool::{self, PoolNode, Refusal, Subject, VipPool};
use tunlb_api::selector::selector_matches;
use tunlb_api::validate::ValidService;
use tunlb_api::{NodeRole, NodeStatus, RealServer, VirtualServiceSpec};

use crate::resolve::NodeInfo;

/// A refusal with a machine reason and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub reason: &'static str,
    pub message: String,
}

impl From<Refusal> for Verdict {
    fn from(r: Refusal) -> Self {
        Verdict {
            reason: r.reason,
            message: r.message,
        }
    }
}

/// Whether the VIP is an address of its own: no node's, and outside the
/// cluster's Service range. (Which VIPs may be taken at all is the pools'.)
pub fn vip_allowed(
    vip: IpAddr,
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
    Ok(())
}

/// The nodes `spec.directors.nodeSelector` selects now (by default those
/// labelled `tunlb.io/director: "true"`).
pub fn director_nodes<'n>(
    spec: &VirtualServiceSpec,
    nodes: &'n [NodeInfo],
) -> Result<Vec<&'n NodeInfo>, String> {
    let selector = spec.directors.selector();
    let mut out = Vec::new();
    for n in nodes {
        if selector_matches(&selector, &n.labels)
            .map_err(|e| format!("spec.directors.nodeSelector: {e}"))?
        {
            out.push(n);
        }
    }
    Ok(out)
}

/// The pool that admits all of a VirtualService as the cluster resolves it
/// now: its namespace, the nodes its selector makes directors and their
/// interface, its static backends (cluster nodes by InternalIP, the rest
/// outside) and its port mappings. A Service's endpoints are the tenant's
/// own pods, not static backends, and are not checked here.
pub fn admit<'p>(
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    spec: &VirtualServiceSpec,
    valid: &ValidService,
    pools: &'p [VipPool],
    nodes: &[NodeInfo],
) -> Result<&'p VipPool, Verdict> {
    // A selector that does not parse selects no director (expected_nodes says why).
    let directors = director_nodes(spec, nodes)
        .unwrap_or_default()
        .into_iter()
        .map(pool_node)
        .collect();
    let mut backend_nodes = Vec::new();
    let mut external_backends = Vec::new();
    for b in valid.static_backends.iter().flatten() {
        match nodes.iter().find(|n| n.internal_ips.contains(&b.address)) {
            Some(n) => backend_nodes.push((b.address, pool_node(n))),
            None => external_backends.push(b.address),
        }
    }
    let subject = Subject {
        namespace,
        namespace_labels,
        service: valid,
        directors,
        backend_nodes,
        external_backends,
        port_mappings: true,
    };
    pool::admit(pools, &subject).map_err(Verdict::from)
}

fn pool_node(n: &NodeInfo) -> PoolNode<'_> {
    PoolNode {
        name: n.name.as_str(),
        labels: &n.labels,
    }
}

/// Whether some pool holding `vip` admits `namespace` at all: if none does,
/// none of its VirtualServices on `vip` can hold it, and they need not be
/// looked at one by one.
pub fn namespace_may_hold(
    pools: &[VipPool],
    vip: IpAddr,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    pools
        .iter()
        .any(|p| p.holds(vip) && p.admits_namespace(namespace, labels).is_ok())
}

/// Age ordering: creation time in seconds, then namespace/name. Shown as
/// the object's namespace/name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age {
    pub created: i64,
    pub key: ObjectKey,
}

impl std::fmt::Display for Age {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.key.fmt(f)
    }
}

/// A VirtualService that is valid, VIP-allowed and admitted by a pool, as
/// others' verdicts see it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub age: Age,
    pub vip: IpAddr,
    pub keys: BTreeSet<IpvsKey>,
    /// The pool that admits it.
    pub pool: String,
}

impl Peer {
    pub fn key(&self) -> &ObjectKey {
        &self.age.key
    }

    pub fn namespace(&self) -> &str {
        &self.age.key.namespace
    }
}

/// The oldest of `holders`: the VirtualService whose namespace a VIP
/// belongs to when its pool does not share it across namespaces.
pub fn oldest<'a>(holders: impl IntoIterator<Item = &'a Peer>) -> Option<&'a Peer> {
    holders.into_iter().min_by(|a, b| a.age.cmp(&b.age))
}

/// Whether `me`, admitted by `pool`, is refused its VIP because the VIP
/// belongs to another namespace: that of `oldest`, the oldest admitted
/// VirtualService on the VIP (see [`oldest`]).
pub fn vip_taken(pool: &VipPool, me: &Peer, oldest: Option<&Peer>) -> Option<Verdict> {
    let owner = oldest
        .filter(|o| o.age.key != me.age.key && o.vip == me.vip)
        .map(|o| (&o.age, o.namespace(), o.vip));
    pool::vip_owner(pool, me.vip, me.namespace(), &me.age, owner).map(Verdict::from)
}

/// Whether `peer` holds its VIP: admitted by its pool, which is still
/// there, and not refused it for another namespace's (see [`vip_taken`]).
pub fn holds_vip(peer: &Peer, pools: &[VipPool], oldest: Option<&Peer>) -> bool {
    pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(peer.pool.as_str()))
        .is_some_and(|pool| vip_taken(pool, peer, oldest).is_none())
}

/// The older peer this object clashes with, if any. Only peers that hold
/// their VIP are passed in, so a refused old object never blocks a good new one.
pub fn conflict<'a>(me: &Peer, peers: impl IntoIterator<Item = &'a Peer>) -> Option<Verdict> {
    let mut older: Vec<&Peer> = peers
        .into_iter()
        .filter(|p| p.key() != me.key() && p.age < me.age)
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
            winner.key()
        ),
    })
}

/// Pools with their CIDRs parsed once, for asking which hold each of many
/// VIPs (a usage count asks for every VIP in use): `VipPool::holds` parses
/// them on each call. Read as `holds` reads them: an entry that does not
/// parse holds nothing.
pub struct Holders<'p> {
    pools: Vec<(&'p VipPool, Vec<IpNet>)>,
}

impl<'p> Holders<'p> {
    pub fn new(pools: &'p [VipPool]) -> Holders<'p> {
        let pools = pools
            .iter()
            .map(|p| {
                let nets = p
                    .spec
                    .cidrs
                    .iter()
                    .filter_map(|c| c.trim().parse().ok())
                    .collect();
                (p, nets)
            })
            .collect();
        Holders { pools }
    }

    /// The pools holding `vip`.
    pub fn of(&self, vip: IpAddr) -> impl Iterator<Item = &'p VipPool> + '_ {
        self.pools
            .iter()
            .filter(move |(_, nets)| nets.iter().any(|n| n.contains(&vip)))
            .map(|(p, _)| *p)
    }
}

/// Each pool's `status.used`: the distinct VIPs of accepted VirtualServices
/// it admits. `accepted`: (VIP, admitting pool) of each, those on one VIP
/// one after another (as the index lists them), so that a VIP is told from
/// the last one counted without a set of all VIPs. Every pool is listed,
/// unused ones with 0.
pub fn pool_usage<'a>(
    pools: &[VipPool],
    accepted: impl IntoIterator<Item = (IpAddr, &'a str)>,
) -> BTreeMap<String, i32> {
    // Per pool: the VIP counted last, and how many.
    let mut counted: BTreeMap<&str, (IpAddr, usize)> = BTreeMap::new();
    for (vip, pool) in accepted {
        match counted.get_mut(pool) {
            Some((last, _)) if *last == vip => {}
            Some((last, n)) => {
                *last = vip;
                *n += 1;
            }
            None => {
                counted.insert(pool, (vip, 1));
            }
        }
    }
    pools
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .map(|name| {
            let used = counted.get(name).map_or(0, |(_, n)| *n);
            (name.to_string(), i32::try_from(used).unwrap_or(i32::MAX))
        })
        .collect()
}

/// Nodes that must report before the service is Ready: directors matching
/// the selector, and nodes named by real servers.
pub fn expected_nodes(
    spec: &VirtualServiceSpec,
    real_servers: &[RealServer],
    nodes: &[NodeInfo],
) -> Result<BTreeSet<String>, String> {
    let mut out: BTreeSet<String> = director_nodes(spec, nodes)?
        .into_iter()
        .map(|n| n.name.clone())
        .collect();
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
            labels.insert(
                tunlb_api::DEFAULT_DIRECTOR_LABEL.to_string(),
                "true".to_string(),
            );
        }
        NodeInfo {
            name: name.into(),
            internal_ips: vec![ip(addr)],
            labels,
        }
    }

    #[test]
    fn a_vip_must_be_an_address_of_its_own() {
        let nodes = [node("n1", "192.168.56.181", true)];
        let svc = [net("10.96.0.0/12")];
        assert_eq!(vip_allowed(ip("192.168.56.185"), &svc, &nodes), Ok(()));
        let v = vip_allowed(ip("192.168.56.181"), &svc, &nodes).unwrap_err();
        assert_eq!(v.reason, "NodeAddress");
        assert_eq!(
            v.message,
            "VIP 192.168.56.181 is the InternalIP of node n1; a VIP must be an address of its own"
        );
        assert_eq!(
            vip_allowed(ip("10.96.0.10"), &svc, &nodes)
                .unwrap_err()
                .reason,
            "ServiceRange"
        );
    }

    fn pool(name: &str, yaml: &str) -> VipPool {
        VipPool::new(name, serde_yaml::from_str(yaml).unwrap())
    }

    fn spec(yaml: &str) -> VirtualServiceSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// `admit` for `yaml` in namespace `ns` (no labels), on nodes ds
    /// (director, .181), cp (control plane, .182) and rs1 (.183).
    fn admit_in(ns: &str, yaml: &str, pools: &[VipPool]) -> Result<String, Verdict> {
        let nodes = [
            node("ds", "192.168.56.181", true),
            NodeInfo {
                labels: [(
                    "node-role.kubernetes.io/control-plane".to_string(),
                    String::new(),
                )]
                .into(),
                ..node("cp", "192.168.56.182", false)
            },
            node("rs1", "192.168.56.183", false),
        ];
        let spec = spec(yaml);
        let valid = tunlb_api::validate(&spec).unwrap();
        admit(ns, &BTreeMap::new(), &spec, &valid, pools, &nodes)
            .map(|p| p.metadata.name.clone().unwrap_or_default())
    }

    const SEED: &str =
        "vip: 192.168.56.185\nports: [{port: 80}]\nbackends: {static: [{address: 203.0.113.7}]}\n";
    const TEAM_A: &str =
        "cidrs: [192.168.56.0/24]\nnamespaces: [team-a]\nbackends: {cidrs: [203.0.113.0/24]}\n";

    #[test]
    fn a_pool_admits_the_whole_object_as_the_cluster_resolves_it() {
        let pools = [pool("a", TEAM_A)];
        assert_eq!(admit_in("team-a", SEED, &pools), Ok("a".into()));

        let r = admit_in("team-b", SEED, &pools).unwrap_err();
        assert_eq!(r.reason, "NamespaceNotAllowed");
        assert!(
            r.message.starts_with("VipPool a: namespace team-b"),
            "{}",
            r.message
        );

        let r = admit_in("team-a", SEED, &[]).unwrap_err();
        assert_eq!(r.reason, "NoPool");
        let r = admit_in(
            "team-a",
            &SEED.replace("192.168.56.185", "192.168.57.5"),
            &pools,
        )
        .unwrap_err();
        assert_eq!(
            (r.reason, r.message.as_str()),
            ("NoPool", "VIP 192.168.57.5 is in no VipPool's spec.cidrs")
        );

        // directors: the nodes the selector matches now
        let everyone = format!("{SEED}directors: {{nodeSelector: {{}}}}\n");
        let r = admit_in("team-a", &everyone, &pools).unwrap_err();
        assert_eq!(r.reason, "DirectorNotAllowed");
        assert!(
            r.message.contains("node cp may not direct"),
            "{}",
            r.message
        );
        let eth0 = format!("{SEED}directors: {{interface: eth0}}\n");
        let r = admit_in("team-a", &eth0, &pools).unwrap_err();
        assert_eq!(r.reason, "InterfaceNotAllowed");

        // a static backend that is a node's InternalIP is that node
        let on_node = SEED.replace("203.0.113.7", "192.168.56.183");
        let r = admit_in("team-a", &on_node, &pools).unwrap_err();
        assert_eq!(r.reason, "BackendNotAllowed");
        assert!(
            r.message.contains("192.168.56.183 is node rs1"),
            "{}",
            r.message
        );
        let outside = SEED.replace("203.0.113.7", "198.51.100.1");
        let r = admit_in("team-a", &outside, &pools).unwrap_err();
        assert!(
            r.message.contains("outside spec.backends.cidrs"),
            "{}",
            r.message
        );

        let mapped = SEED.replace("{port: 80}", "{port: 80, targetPort: 10250}");
        let r = admit_in("team-a", &mapped, &pools).unwrap_err();
        assert_eq!(r.reason, "TargetPortNotAllowed");
        assert!(r.message.contains("spec.targetPorts"), "{}", r.message);

        // a Service's endpoints are the tenant's own pods: not static backends
        let svc = "vip: 192.168.56.185\nports: [{port: 80}]\nbackends: {service: {name: web}}\n";
        assert_eq!(admit_in("team-a", svc, &pools), Ok("a".into()));
    }

    #[test]
    fn a_namespace_no_pool_admits_cannot_hold_the_vip() {
        let pools = [pool("a", TEAM_A)];
        let none = BTreeMap::new();
        assert!(namespace_may_hold(
            &pools,
            ip("192.168.56.9"),
            "team-a",
            &none
        ));
        assert!(!namespace_may_hold(
            &pools,
            ip("192.168.56.9"),
            "team-b",
            &none
        ));
        assert!(!namespace_may_hold(&pools, ip("10.0.0.1"), "team-a", &none));
    }

    fn peer_in(ns: &str, name: &str, age: i64, ports: &[u16], pool: &str) -> Peer {
        Peer {
            age: Age {
                created: age,
                key: ObjectKey::new(ns, name),
            },
            vip: ip("192.168.56.185"),
            keys: ports
                .iter()
                .map(|p| IpvsKey {
                    protocol: Protocol::Tcp,
                    vip: ip("192.168.56.185"),
                    port: *p,
                })
                .collect(),
            pool: pool.into(),
        }
    }

    fn peer(name: &str, age: i64, ports: &[u16]) -> Peer {
        peer_in("default", name, age, ports, "p")
    }

    #[test]
    fn a_vip_belongs_to_the_namespace_of_its_oldest_holder() {
        let closed = pool(
            "closed",
            "cidrs: [192.168.56.0/24]\nnamespaceSelector: {}\n",
        );
        let shared = pool(
            "shared",
            "cidrs: [192.168.56.0/24]\nnamespaceSelector: {}\nshareAcrossNamespaces: true\n",
        );
        let pools = [closed.clone(), shared.clone()];
        let a1 = peer_in("team-a", "a1", 1, &[80], "closed");
        let b2 = peer_in("team-b", "b2", 2, &[8080], "closed");
        let a3 = peer_in("team-a", "a3", 3, &[443], "closed");
        let all = [a1.clone(), b2.clone(), a3.clone()];
        let owner = oldest(&all);
        assert_eq!(owner.unwrap().key(), a1.key());
        assert_eq!(vip_taken(&closed, &a1, owner), None);
        assert_eq!(vip_taken(&closed, &a3, owner), None, "team-a's own VIP");
        let v = vip_taken(&closed, &b2, owner).unwrap();
        assert_eq!(v.reason, "VipInUse");
        assert_eq!(
            v.message,
            "VipPool closed: VIP 192.168.56.185 belongs to namespace team-a (team-a/a1), and spec.shareAcrossNamespaces is off"
        );
        assert!(!holds_vip(&b2, &pools, owner));
        assert!(holds_vip(&a3, &pools, owner));
        // a pool that shares lets b2 in
        assert_eq!(vip_taken(&shared, &b2, owner), None);
        // once a1 is gone, the VIP is team-b's: a3 is refused, not b2
        let rest = [b2.clone(), a3.clone()];
        let owner = oldest(&rest);
        assert_eq!(vip_taken(&closed, &b2, owner), None);
        assert_eq!(vip_taken(&closed, &a3, owner).unwrap().reason, "VipInUse");
        // a peer whose pool is gone holds nothing
        assert!(!holds_vip(&b2, &[], owner));
    }

    #[test]
    fn holders_read_cidrs_as_the_pools_do() {
        let pools = [
            pool("a", "cidrs: [' 192.168.56.0/24 ', not-a-cidr]\n"),
            pool("b", "cidrs: [192.168.56.128/25, 'fd00:56::/64']\n"),
        ];
        let holders = Holders::new(&pools);
        for vip in ["192.168.56.1", "192.168.56.200", "10.0.0.1", "fd00:56::1"] {
            let by_holders: Vec<&str> = holders
                .of(ip(vip))
                .filter_map(|p| p.metadata.name.as_deref())
                .collect();
            let by_pools: Vec<&str> = pools
                .iter()
                .filter(|p| p.holds(ip(vip)))
                .filter_map(|p| p.metadata.name.as_deref())
                .collect();
            assert_eq!(by_holders, by_pools, "{vip}");
        }
        assert_eq!(holders.of(ip("192.168.56.200")).count(), 2);
    }

    #[test]
    fn usage_counts_distinct_vips_per_pool() {
        let pools = [pool("a", TEAM_A), pool("b", TEAM_A)];
        let used = pool_usage(
            &pools,
            [
                (ip("192.168.56.1"), "a"),
                (ip("192.168.56.1"), "a"),
                (ip("192.168.56.2"), "a"),
                (ip("192.168.56.3"), "gone"),
            ],
        );
        assert_eq!(used, [("a".to_string(), 2), ("b".to_string(), 0)].into());
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
            director_state: None,
            director_since: None,
            election_conflict: None,
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
            director_state: None,
            director_since: None,
            election_conflict: None,
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
