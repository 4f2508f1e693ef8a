//! The agent's own check of accepted VirtualServices against the VipPools.
//!
//! The operator's `Accepted` is a status condition, and a status can be
//! written by others than the operator. So before programming an object
//! this node checks what it would program for it itself — the VIP, this
//! node as a director and the interface it would hold the VIP on, this node
//! as a static backend, the port mappings it would DNAT, the outside
//! addresses it would tunnel to — with the same rule the operator applies
//! ([`tunlb_api::pool`]). An object no pool admits is left out of the plan,
//! so the normal diff withdraws whatever of it the kernel holds. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use tunlb_api::plan::{NodeIdentity, NodePlan, ObjectKey, PlanInput, plan_node};
use tunlb_api::pool::{PoolNode, Refusal, Subject, VipPool, admit, vip_owner};
use tunlb_api::{NodeRole, RealServer, ValidService, VirtualServiceSpec, validate};

/// The start of the status message of an object this node refuses.
pub const REFUSED_PREFIX: &str = "refused by this node: ";

/// Labels of a namespace the agent has not seen: it is admitted only by name.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// An accepted VirtualService, as this node would program it.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    pub key: &'a ObjectKey,
    pub generation: i64,
    pub spec: &'a VirtualServiceSpec,
    pub real_servers: &'a [RealServer],
    /// Creation order: (creation seconds, key).
    pub age: &'a (i64, ObjectKey),
}

/// Why this node does not program an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub generation: Option<i64>,
    /// The roles this node would have had.
    pub roles: BTreeSet<NodeRole>,
    pub refusal: Refusal,
}

impl Refused {
    /// The message of this node's status entry.
    pub fn message(&self) -> String {
        format!("{REFUSED_PREFIX}{}", self.refusal.message)
    }
}

/// The plan of the admitted objects, and the objects refused.
#[derive(Debug, Clone)]
pub struct Verified {
    pub plan: NodePlan,
    pub refused: BTreeMap<ObjectKey, Refused>,
}

/// An object's age as VIP ownership orders it; shown as its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Age<'a>(&'a (i64, ObjectKey));

impl fmt::Display for Age<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.1.fmt(f)
    }
}

/// Whether real server `rs` is this node, as the planner decides it.
fn is_self(rs: &RealServer, address: IpAddr, node: &NodeIdentity) -> bool {
    rs.node_name.as_deref() == Some(node.name.as_str()) || node.addresses.contains(&address)
}

/// What of `service` this node, with `roles`, would program, for the pool
/// rules. A director tunnels to every real server: those outside the
/// cluster (no node name) are checked as outside backends. (A Service's
/// real servers are always cluster nodes, so one without a node name can
/// only be forged.) A backend is checked as a cluster node only when the
/// backends are static: a Service's real servers are the namespace's own
/// pods. A backend DNATs, so it checks the port mappings.
pub fn subject<'a>(
    node: &'a NodeIdentity,
    namespace: &'a str,
    namespace_labels: &'a BTreeMap<String, String>,
    service: &'a ValidService,
    real_servers: &[RealServer],
    roles: &BTreeSet<NodeRole>,
) -> Subject<'a> {
    let me = PoolNode {
        name: &node.name,
        labels: &node.labels,
    };
    let director = roles.contains(&NodeRole::Director);
    let backend = roles.contains(&NodeRole::Backend);
    let mut subject = Subject {
        namespace,
        namespace_labels,
        service,
        directors: if director { vec![me] } else { Vec::new() },
        backend_nodes: Vec::new(),
        external_backends: Vec::new(),
        port_mappings: backend,
    };
    for rs in real_servers {
        // An address that does not parse fails the plan: nothing of it is programmed.
        let Ok(address) = rs.address.parse::<IpAddr>() else {
            continue;
        };
        if is_self(rs, address, node) {
            if backend && service.static_backends.is_some() {
                subject.backend_nodes.push((address, me));
            }
        } else if director && rs.node_name.is_none() {
            subject.external_backends.push(address);
        }
    }
    subject
}

struct Checker<'a> {
    node: &'a NodeIdentity,
    pools: &'a [VipPool],
    namespaces: &'a BTreeMap<&'a str, &'a BTreeMap<String, String>>,
    /// Per VIP: the oldest accepted object of each namespace on it, which
    /// is all VIP ownership needs (10,000 objects on one VIP would
    /// otherwise make it quadratic).
    on_vip: BTreeMap<IpAddr, BTreeMap<&'a str, Age<'a>>>,
}

impl Checker<'_> {
    fn check(&self, object: &Object<'_>, roles: &BTreeSet<NodeRole>) -> Result<(), Refusal> {
        // An invalid spec is refused by the plan itself and programs nothing.
        let Ok(service) = validate(object.spec) else {
            return Ok(());
        };
        let namespace: &str = &object.key.namespace;
        let labels = self
            .namespaces
            .get(namespace)
            .copied()
            .unwrap_or(&NO_LABELS);
        let subject = subject(
            self.node,
            namespace,
            labels,
            &service,
            object.real_servers,
            roles,
        );
        let pool = admit(self.pools, &subject)?;
        let others = self
            .on_vip
            .get(&service.vip)
            .into_iter()
            .flatten()
            .map(|(ns, age)| (age, *ns, service.vip));
        match vip_owner(pool, service.vip, namespace, &Age(object.age), others) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }
}

/// Plans `objects` (oldest first) for `node`, leaving out each object no
/// pool admits for what this node would program of it. VIP ownership is
/// judged among all of `objects`. `namespaces`: the labels of each known
/// namespace.
///
/// Only objects with a role here are checked. One plan when nothing is
/// refused; otherwise the plan is made again without the refused objects,
/// and an object that gains a role by that (it lost a VIP:port clash to a
/// refused one) is checked in turn.
pub fn verify(
    node: &NodeIdentity,
    pools: &[VipPool],
    namespaces: &BTreeMap<&str, &BTreeMap<String, String>>,
    objects: &[Object<'_>],
) -> Verified {
    let mut inputs: Vec<PlanInput<'_>> = objects
        .iter()
        .map(|o| PlanInput {
            key: o.key.clone(),
            generation: Some(o.generation),
            spec: o.spec,
            real_servers: Some(o.real_servers),
        })
        .collect();
    let mut plan = plan_node(&inputs, node);
    let mut on_vip: BTreeMap<IpAddr, BTreeMap<&str, Age<'_>>> = BTreeMap::new();
    for o in objects {
        if let Some(vip) = plan.objects.get(o.key).and_then(|p| p.vip) {
            let oldest = on_vip
                .entry(vip)
                .or_default()
                .entry(&o.key.namespace)
                .or_insert(Age(o.age));
            *oldest = (*oldest).min(Age(o.age));
        }
    }
    let checker = Checker {
        node,
        pools,
        namespaces,
        on_vip,
    };
    let mut checked: BTreeSet<&ObjectKey> = BTreeSet::new();
    let mut refused = BTreeMap::new();
    loop {
        let mut more = false;
        for o in objects {
            let Some(op) = plan.objects.get(o.key) else {
                continue;
            };
            if op.roles.is_empty() || refused.contains_key(o.key) || !checked.insert(o.key) {
                continue;
            }
            if let Err(refusal) = checker.check(o, &op.roles) {
                refused.insert(
                    o.key.clone(),
                    Refused {
                        generation: op.generation,
                        roles: op.roles.clone(),
                        refusal,
                    },
                );
                more = true;
            }
        }
        if !more {
            return Verified { plan, refused };
        }
        inputs.retain(|i| !refused.contains_key(&i.key));
        plan = plan_node(&inputs, node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunlb_api::VipPoolSpec;

    fn pool(name: &str, yaml: &str) -> VipPool {
        let spec: VipPoolSpec = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        VipPool::new(name, spec)
    }

    /// The lab's pool: the seed's VIPs for namespace default, directors
    /// labelled as such on tunl0, backends labelled as such, web ports.
    fn lab() -> VipPool {
        pool(
            "lab",
            "cidrs: [192.168.56.0/24]\n\
             namespaces: [default]\n\
             namespaceSelector: {matchLabels: {tenant: web}}\n\
             backends:\n  nodeSelector: {matchLabels: {tunlb.io/backend: 'true'}}\n  cidrs: [198.51.100.0/24]\n\
             targetPorts: [{from: 8000, to: 8999}]\n",
        )
    }

    fn spec(yaml: &str) -> VirtualServiceSpec {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rs(address: &str, node: Option<&str>) -> RealServer {
        RealServer {
            address: address.into(),
            weight: 1,
            node_name: node.map(String::from),
            ready: true,
            upper_threshold: None,
            lower_threshold: None,
            endpoints: Vec::new(),
            health: None,
        }
    }

    fn node(name: &str, address: &str, labels: &[(&str, &str)]) -> NodeIdentity {
        NodeIdentity {
            name: name.into(),
            addresses: [address.parse().unwrap_or_else(|e| panic!("{e}"))].into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kernel: None,
        }
    }

    fn director() -> NodeIdentity {
        node("ds", "192.168.56.181", &[("tunlb.io/director", "true")])
    }

    fn rs1() -> NodeIdentity {
        node("rs1", "192.168.56.183", &[("tunlb.io/backend", "true")])
    }

    /// The seed: VIP .185:80 to rs1 and rs2, both cluster nodes.
    const SEED: &str = "vip: 192.168.56.185\nports: [{port: 80}]\nbackends: {static: [{address: 192.168.56.183}, {address: 192.168.56.184}]}\n";

    fn seed_servers() -> Vec<RealServer> {
        vec![
            rs("192.168.56.183", Some("rs1")),
            rs("192.168.56.184", Some("rs2")),
        ]
    }

    #[derive(Clone)]
    struct Case {
        key: ObjectKey,
        spec: VirtualServiceSpec,
        real_servers: Vec<RealServer>,
        age: (i64, ObjectKey),
    }

    fn case(ns: &str, name: &str, created: i64, spec_yaml: &str, servers: Vec<RealServer>) -> Case {
        let key = ObjectKey::new(ns, name);
        Case {
            key: key.clone(),
            spec: spec(spec_yaml),
            real_servers: servers,
            age: (created, key),
        }
    }

    fn run(node: &NodeIdentity, pools: &[VipPool], cases: &[Case]) -> Verified {
        let tenant = BTreeMap::from([("tenant".to_string(), "web".to_string())]);
        let namespaces = BTreeMap::from([("team-web", &tenant)]);
        let objects: Vec<Object<'_>> = cases
            .iter()
            .map(|c| Object {
                key: &c.key,
                generation: 3,
                spec: &c.spec,
                real_servers: &c.real_servers,
                age: &c.age,
            })
            .collect();
        verify(node, pools, &namespaces, &objects)
    }

    /// The one refused object's refusal; its plan is gone.
    fn refused_alone(v: &Verified, key: &ObjectKey) -> Refused {
        assert_eq!(v.refused.len(), 1, "{:?}", v.refused);
        assert!(!v.plan.objects.contains_key(key), "refused but planned");
        v.refused[key].clone()
    }

    #[test]
    fn an_admitted_object_is_planned_as_usual() {
        let c = case("default", "web", 1, SEED, seed_servers());
        for n in [director(), rs1()] {
            let v = run(&n, &[lab()], std::slice::from_ref(&c));
            assert!(v.refused.is_empty(), "{}: {:?}", n.name, v.refused);
            let inputs = [PlanInput {
                key: c.key.clone(),
                generation: Some(3),
                spec: &c.spec,
                real_servers: Some(&c.real_servers),
            }];
            assert_eq!(v.plan, plan_node(&inputs, &n), "{}", n.name);
            assert!(!v.plan.objects[&c.key].roles.is_empty());
        }
        // A namespace admitted by its labels.
        let c = case("team-web", "web", 1, SEED, seed_servers());
        assert!(run(&director(), &[lab()], &[c]).refused.is_empty());
    }

    #[test]
    fn a_director_the_pool_does_not_select_is_refused() {
        // A control-plane node that a forged selector makes a director.
        let cp = node(
            "cp",
            "192.168.56.180",
            &[("node-role.kubernetes.io/control-plane", "")],
        );
        let c = case(
            "default",
            "grab",
            1,
            &format!(
                "{SEED}directors: {{nodeSelector: {{matchLabels: {{node-role.kubernetes.io/control-plane: ''}}}}}}\n"
            ),
            seed_servers(),
        );
        let v = run(&cp, &[lab()], std::slice::from_ref(&c));
        let r = refused_alone(&v, &c.key);
        assert_eq!(r.refusal.reason, "DirectorNotAllowed");
        assert_eq!(r.roles, BTreeSet::from([NodeRole::Director]));
        assert_eq!(r.generation, Some(3));
        assert_eq!(
            r.message(),
            "refused by this node: VipPool lab: node cp may not direct its VIPs (spec.directors.nodeSelector)"
        );
        assert!(v.plan.ipvs.is_empty() && v.plan.director_vips.is_empty());
    }

    #[test]
    fn a_director_interface_outside_the_pool_is_refused() {
        let c = case(
            "default",
            "arp",
            1,
            &format!("{SEED}directors: {{interface: eth0}}\n"),
            seed_servers(),
        );
        let v = run(&director(), &[lab()], std::slice::from_ref(&c));
        let r = refused_alone(&v, &c.key);
        assert_eq!(r.refusal.reason, "InterfaceNotAllowed");
        assert!(
            r.message()
                .ends_with("directors may hold its VIPs on tunl0, ip6tnl0 only (spec.directors.interfaces), not on eth0"),
            "{}",
            r.message()
        );
        assert!(v.plan.director_vips.is_empty());
        // A backend holds the VIP on its tunnel device whatever the
        // directors' interface: the interface is the directors' concern.
        assert!(run(&rs1(), &[lab()], &[c]).refused.is_empty());
    }

    #[test]
    fn a_backend_node_mapping_to_a_port_outside_the_pool_is_refused() {
        let kubelet = "vip: 192.168.56.185\nports: [{port: 8080, targetPort: 10250}]\nbackends: {static: [{address: 192.168.56.183}]}\n";
        let c = case(
            "default",
            "kubelet",
            1,
            kubelet,
            vec![rs("192.168.56.183", Some("rs1"))],
        );
        let v = run(&rs1(), &[lab()], std::slice::from_ref(&c));
        let r = refused_alone(&v, &c.key);
        assert_eq!(r.refusal.reason, "TargetPortNotAllowed");
        assert_eq!(r.roles, BTreeSet::from([NodeRole::Backend]));
        assert_eq!(
            r.message(),
            "refused by this node: VipPool lab: port 8080/TCP may not map to 10250 (spec.targetPorts: 8000-8999)"
        );
        assert!(v.plan.dnat.is_empty() && v.plan.backend_vips.is_empty());
        // The director does not DNAT: the mapping is not its to judge.
        assert!(run(&director(), &[lab()], &[c]).refused.is_empty());
    }

    #[test]
    fn a_backend_node_the_pool_does_not_select_is_refused() {
        let plain = node("rs1", "192.168.56.183", &[]);
        let c = case("default", "web", 1, SEED, seed_servers());
        let r = refused_alone(&run(&plain, &[lab()], std::slice::from_ref(&c)), &c.key);
        assert_eq!(r.refusal.reason, "BackendNotAllowed");
        assert!(
            r.message()
                .ends_with("static backend 192.168.56.183 is node rs1, which spec.backends.nodeSelector does not admit"),
            "{}",
            r.message()
        );
        // Found by its address too, when a forged status names no node.
        let c = case("default", "web", 1, SEED, vec![rs("192.168.56.183", None)]);
        let r = refused_alone(&run(&plain, &[lab()], std::slice::from_ref(&c)), &c.key);
        assert_eq!(r.refusal.reason, "BackendNotAllowed");
    }

    #[test]
    fn service_backends_are_not_static_backend_nodes() {
        let svc = "vip: 192.168.56.185\nports: [{port: 80}]\nbackends: {service: {name: web}}\n";
        let plain = node("rs1", "192.168.56.183", &[]);
        let c = case(
            "default",
            "web",
            1,
            svc,
            vec![rs("192.168.56.183", Some("rs1"))],
        );
        assert!(run(&plain, &[lab()], &[c]).refused.is_empty());
    }

    #[test]
    fn an_outside_backend_beyond_the_pools_cidrs_is_refused() {
        let spec = "vip: 192.168.56.185\nports: [{port: 80}]\nbackends: {static: [{address: 198.51.100.7}, {address: 203.0.113.9}]}\n";
        let c = case(
            "default",
            "out",
            1,
            spec,
            vec![rs("198.51.100.7", None), rs("203.0.113.9", None)],
        );
        let v = run(&director(), &[lab()], std::slice::from_ref(&c));
        let r = refused_alone(&v, &c.key);
        assert_eq!(r.refusal.reason, "BackendNotAllowed");
        assert!(
            r.message()
                .ends_with("static backend 203.0.113.9 is outside spec.backends.cidrs"),
            "{}",
            r.message()
        );
        assert!(v.plan.ipvs.is_empty());
        // The same with only the address the pool allows.
        let c = case("default", "out", 1, spec, vec![rs("198.51.100.7", None)]);
        assert!(run(&director(), &[lab()], &[c]).refused.is_empty());
    }

    #[test]
    fn a_namespace_outside_the_pool_is_refused() {
        let c = case("team-a", "web", 1, SEED, seed_servers());
        for n in [director(), rs1()] {
            let r = refused_alone(&run(&n, &[lab()], std::slice::from_ref(&c)), &c.key);
            assert_eq!(r.refusal.reason, "NamespaceNotAllowed", "{}", n.name);
            assert_eq!(
                r.message(),
                "refused by this node: VipPool lab: namespace team-a is neither listed in spec.namespaces nor selected by spec.namespaceSelector"
            );
        }
    }

    #[test]
    fn a_vip_in_no_pool_is_refused() {
        let c = case(
            "default",
            "web",
            1,
            "vip: 10.9.9.9\nports: [{port: 80}]\nbackends: {static: [{address: 192.168.56.183}]}\n",
            vec![rs("192.168.56.183", Some("rs1"))],
        );
        let r = refused_alone(
            &run(&director(), &[lab()], std::slice::from_ref(&c)),
            &c.key,
        );
        assert_eq!(r.refusal.reason, "NoPool");
        assert_eq!(
            r.message(),
            "refused by this node: VIP 10.9.9.9 is in no VipPool's spec.cidrs"
        );
        // No pool at all: nothing is admitted.
        let r = refused_alone(&run(&rs1(), &[], std::slice::from_ref(&c)), &c.key);
        assert_eq!(r.refusal.reason, "NoPool");
        assert!(r.message().contains("none exists"), "{}", r.message());
    }

    #[test]
    fn a_vip_of_an_older_namespace_is_refused_unless_shared() {
        let older = case("team-web", "web", 1, SEED, seed_servers());
        let other_port = SEED.replace("port: 80", "port: 8080");
        let younger = case("default", "side", 2, &other_port, seed_servers());
        let v = run(&director(), &[lab()], &[older.clone(), younger.clone()]);
        let r = refused_alone(&v, &younger.key);
        assert_eq!(r.refusal.reason, "VipInUse");
        assert!(
            r.message()
                .ends_with("VIP 192.168.56.185 belongs to namespace team-web (team-web/web), and spec.shareAcrossNamespaces is off"),
            "{}",
            r.message()
        );
        assert!(v.plan.objects.contains_key(&older.key));
        let mut shared = lab();
        shared.spec.share_across_namespaces = true;
        assert!(
            run(&director(), &[shared], &[older, younger])
                .refused
                .is_empty()
        );
    }

    /// An object that lost a VIP:port clash to a refused older one gains
    /// its roles once that one is left out, and is checked in turn.
    #[test]
    fn a_clash_winner_refused_hands_over_to_a_checked_object() {
        let forged = case(
            "default",
            "forged",
            1,
            &format!("{SEED}directors: {{interface: eth0}}\n"),
            seed_servers(),
        );
        let eth0_too = case(
            "default",
            "second",
            2,
            &format!("{SEED}directors: {{interface: eth0}}\n"),
            seed_servers(),
        );
        let v = run(&director(), &[lab()], &[forged.clone(), eth0_too.clone()]);
        assert_eq!(v.refused.len(), 2, "{:?}", v.refused);
        assert!(v.plan.director_vips.is_empty());

        let fine = case("default", "second", 2, SEED, seed_servers());
        let v = run(&director(), &[lab()], &[forged, fine.clone()]);
        assert_eq!(
            v.refused.keys().collect::<Vec<_>>(),
            vec![&ObjectKey::new("default", "forged")]
        );
        assert!(v.plan.objects[&fine.key].error.is_none());
        assert!(
            v.plan.objects[&fine.key]
                .roles
                .contains(&NodeRole::Director)
        );
        assert_eq!(
            v.plan.ipvs.values().next().map(|s| &s.owner),
            Some(&fine.key)
        );
    }

    /// Nothing is checked where this node has no role.
    #[test]
    fn objects_without_a_role_here_are_not_judged() {
        let elsewhere = node("n9", "192.168.56.199", &[]);
        let c = case("team-a", "web", 1, SEED, seed_servers());
        let v = run(&elsewhere, &[], &[c]);
        assert!(v.refused.is_empty());
    }
}
