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
use std::sync::Arc;

use tunlb_api::plan::{IpvsKey, NodeIdentity, NodePlan, ObjectKey, PlanInput, Planner, ipvs_keys};
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
    let kept = whole(node, pools, namespaces, objects, Planner::new);
    Verified {
        plan: kept.planner.finish(),
        refused: kept.refused,
    }
}

/// What a whole plan leaves for the next: the planner and refusals, and
/// who is on which VIP.
struct Kept {
    planner: Planner,
    refused: BTreeMap<ObjectKey, Refused>,
    /// The VIP of every object whose spec is valid, refused ones too.
    vips: BTreeMap<ObjectKey, IpAddr>,
    /// Per VIP, how many of those objects each namespace has on it.
    on_vip: BTreeMap<IpAddr, BTreeMap<Arc<str>, u32>>,
    /// The IPVS keys refused objects ask for, which the planner no longer
    /// counts: an edit that frees or takes one may end a refusal.
    refused_keys: BTreeMap<ObjectKey, Vec<IpvsKey>>,
    refused_wanted: BTreeMap<IpvsKey, u32>,
}

fn inputs_of<'o>(objects: &[Object<'o>]) -> Vec<PlanInput<'o>> {
    objects.iter().map(input_of).collect()
}

fn input_of<'o>(o: &Object<'o>) -> PlanInput<'o> {
    PlanInput {
        key: o.key.clone(),
        generation: Some(o.generation),
        spec: o.spec,
        real_servers: Some(o.real_servers),
    }
}

fn plan_with(
    node: &NodeIdentity,
    inputs: &[PlanInput<'_>],
    new: fn(&NodeIdentity) -> Planner,
) -> Planner {
    let mut planner = new(node);
    for input in inputs {
        planner.add(input);
    }
    planner
}

/// [`verify`], keeping what [`Incremental`] patches.
fn whole(
    node: &NodeIdentity,
    pools: &[VipPool],
    namespaces: &BTreeMap<&str, &BTreeMap<String, String>>,
    objects: &[Object<'_>],
    new: fn(&NodeIdentity) -> Planner,
) -> Kept {
    let mut inputs = inputs_of(objects);
    let mut planner = plan_with(node, &inputs, new);
    let mut oldest: BTreeMap<IpAddr, BTreeMap<&str, Age<'_>>> = BTreeMap::new();
    let mut vips = BTreeMap::new();
    let mut on_vip: BTreeMap<IpAddr, BTreeMap<Arc<str>, u32>> = BTreeMap::new();
    for o in objects {
        if let Some(vip) = planner.plan().objects.get(o.key).and_then(|p| p.vip) {
            let age = oldest
                .entry(vip)
                .or_default()
                .entry(&o.key.namespace)
                .or_insert(Age(o.age));
            *age = (*age).min(Age(o.age));
            vips.insert(o.key.clone(), vip);
            *on_vip
                .entry(vip)
                .or_default()
                .entry(o.key.namespace.clone())
                .or_default() += 1;
        }
    }
    let checker = Checker {
        node,
        pools,
        namespaces,
        on_vip: oldest,
    };
    let mut checked: BTreeSet<&ObjectKey> = BTreeSet::new();
    let mut refused = BTreeMap::new();
    loop {
        let mut more = false;
        for o in objects {
            let Some(op) = planner.plan().objects.get(o.key) else {
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
            let mut kept = Kept {
                planner,
                refused,
                vips,
                on_vip,
                refused_keys: BTreeMap::new(),
                refused_wanted: BTreeMap::new(),
            };
            for o in objects {
                if kept.refused.contains_key(o.key) {
                    let keys = validate(o.spec).map(|v| ipvs_keys(&v)).unwrap_or_default();
                    kept.count_refused(o.key, keys);
                }
            }
            return kept;
        }
        inputs.retain(|i| !refused.contains_key(&i.key));
        planner = plan_with(node, &inputs, new);
    }
}

/// What the plan depends on besides the objects.
#[derive(PartialEq)]
struct Context {
    node: NodeIdentity,
    pools: Vec<(Option<String>, tunlb_api::VipPoolSpec)>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Context {
    fn of(
        node: &NodeIdentity,
        pools: &[VipPool],
        namespaces: &BTreeMap<&str, &BTreeMap<String, String>>,
    ) -> Context {
        Context {
            node: node.clone(),
            // A pool's status (its usage count) changes with every
            // acceptance and decides nothing here.
            pools: pools
                .iter()
                .map(|p| (p.metadata.name.clone(), p.spec.clone()))
                .collect(),
            namespaces: namespaces
                .iter()
                .map(|(n, l)| (n.to_string(), (*l).clone()))
                .collect(),
        }
    }

    fn same(
        &self,
        node: &NodeIdentity,
        pools: &[VipPool],
        namespaces: &BTreeMap<&str, &BTreeMap<String, String>>,
    ) -> bool {
        self.node == *node
            && self.pools.len() == pools.len()
            && self
                .pools
                .iter()
                .zip(pools)
                .all(|((name, spec), p)| *name == p.metadata.name && *spec == p.spec)
            && self.namespaces.len() == namespaces.len()
            && self
                .namespaces
                .iter()
                .zip(namespaces)
                .all(|((n, l), (m, k))| n == m && l == *k)
    }
}

/// How [`Incremental::update`] made its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    /// Every object planned and checked anew.
    Whole,
    /// Only the changed objects, this many.
    Patched(usize),
}

/// [`verify`]'s result kept between passes and patched per changed object,
/// so a pass after one edit among 10,000 objects plans one object.
///
/// A change is patched in when its effect stays within the object: nothing
/// else changed (node, pools, namespace labels), no other object asks for
/// an IPVS key it asks or asked for (a VIP:port clash moves the winner), it
/// receives no GRE as a backend (checksummed and plain GRE exclude each
/// other per address), and no other namespace has objects on its VIPs
/// (VIP ownership). Otherwise everything is planned anew, which yields the
/// same as [`verify`] by construction; `patched_plans_equal_whole_plans`
/// checks the patched path against it.
#[derive(Default)]
pub struct Incremental {
    kept: Option<(Context, Kept)>,
}

impl Incremental {
    /// Brings the plan up to date. `changed`: the objects that changed
    /// since the last update, or `None` for any; `objects` lists all of them
    /// oldest first, `find` one of them (`None`: gone or not accepted).
    pub fn update<'o>(
        &mut self,
        node: &NodeIdentity,
        pools: &[VipPool],
        namespaces: &BTreeMap<&str, &BTreeMap<String, String>>,
        changed: Option<&BTreeSet<ObjectKey>>,
        objects: impl FnOnce() -> Vec<Object<'o>>,
        find: impl Fn(&ObjectKey) -> Option<Object<'o>>,
    ) -> Planned {
        if let (Some(changed), Some((context, kept))) = (changed, self.kept.as_mut())
            && context.same(node, pools, namespaces)
        {
            let checker = Checker {
                node,
                pools,
                namespaces,
                on_vip: BTreeMap::new(),
            };
            if changed
                .iter()
                .all(|k| kept.patch(k, find(k).as_ref(), &checker))
            {
                return Planned::Patched(changed.len());
            }
        }
        let kept = whole(node, pools, namespaces, &objects(), Planner::tracking);
        self.kept = Some((Context::of(node, pools, namespaces), kept));
        Planned::Whole
    }

    /// The plan of the admitted objects (empty before the first update).
    pub fn plan(&self) -> Option<&NodePlan> {
        self.kept.as_ref().map(|(_, k)| k.planner.plan())
    }

    /// The plan, for changes undone before the next update (health gating).
    pub fn plan_mut(&mut self) -> Option<&mut NodePlan> {
        self.kept.as_mut().map(|(_, k)| k.planner.plan_mut())
    }

    pub fn refused(&self) -> Option<&BTreeMap<ObjectKey, Refused>> {
        self.kept.as_ref().map(|(_, k)| &k.refused)
    }
}

impl Kept {
    fn count_refused(&mut self, key: &ObjectKey, keys: Vec<IpvsKey>) {
        for k in &keys {
            *self.refused_wanted.entry(*k).or_default() += 1;
        }
        self.refused_keys.insert(key.clone(), keys);
    }

    fn uncount_refused(&mut self, key: &ObjectKey) {
        for k in self.refused_keys.remove(key).unwrap_or_default() {
            if let Some(n) = self.refused_wanted.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.refused_wanted.remove(&k);
                }
            }
        }
    }

    /// How many objects, refused ones too, ask for `k`.
    fn wanted(&self, k: &IpvsKey) -> u32 {
        self.planner.wanted(k) + self.refused_wanted.get(k).copied().unwrap_or(0)
    }

    /// Replaces `key`'s part of the plan with `now`'s (`None`: takes it
    /// out); false when the change reaches beyond the object, and the
    /// caller plans everything anew.
    fn patch(&mut self, key: &ObjectKey, now: Option<&Object<'_>>, checker: &Checker<'_>) -> bool {
        let old = self.planner.contribution(key);
        if old.is_some_and(|c| !c.gre_csum.is_empty() || !c.gre_plain.is_empty()) {
            return false;
        }
        let old_keys = match old {
            Some(c) => c.keys.clone(),
            None => self.refused_keys.get(key).cloned().unwrap_or_default(),
        };
        if old_keys.iter().any(|k| self.wanted(k) > 1) {
            return false;
        }
        let valid = now.and_then(|o| validate(o.spec).ok());
        let new_keys = valid.as_ref().map(ipvs_keys).unwrap_or_default();
        if new_keys
            .iter()
            .any(|k| self.wanted(k) > u32::from(old_keys.contains(k)))
        {
            return false;
        }
        let old_vip = self.vips.get(key).copied();
        let new_vip = valid.as_ref().map(|v| v.vip);
        let shared = |vip: &IpAddr| {
            self.on_vip
                .get(vip)
                .is_some_and(|m| m.keys().any(|ns| *ns != key.namespace))
        };
        if old_vip.iter().chain(&new_vip).any(shared) {
            return false;
        }

        if let Some(vip) = old_vip {
            self.vips.remove(key);
            if let Some(m) = self.on_vip.get_mut(&vip) {
                if let Some(n) = m.get_mut(&key.namespace) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        m.remove(&key.namespace);
                    }
                }
                if m.is_empty() {
                    self.on_vip.remove(&vip);
                }
            }
        }
        self.planner.remove(key);
        self.refused.remove(key);
        self.uncount_refused(key);
        let Some(o) = now else {
            return true;
        };
        if let Some(vip) = new_vip {
            self.vips.insert(key.clone(), vip);
            *self
                .on_vip
                .entry(vip)
                .or_default()
                .entry(key.namespace.clone())
                .or_default() += 1;
        }
        self.planner.add(&input_of(o));
        if self
            .planner
            .contribution(key)
            .is_some_and(|c| !c.gre_csum.is_empty() || !c.gre_plain.is_empty())
        {
            return false;
        }
        let Some(op) = self.planner.plan().objects.get(key) else {
            return true;
        };
        if op.roles.is_empty() {
            return true;
        }
        if let Err(refusal) = checker.check(o, &op.roles) {
            let refused = Refused {
                generation: op.generation,
                roles: op.roles.clone(),
                refusal,
            };
            self.refused.insert(key.clone(), refused);
            self.planner.remove(key);
            self.count_refused(key, new_keys);
        }
        true
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
            assert_eq!(v.plan, tunlb_api::plan_node(&inputs, &n), "{}", n.name);
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

    /// A small deterministic generator (xorshift), so a failure replays.
    struct Dice(u64);

    impl Dice {
        fn roll(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.roll(from.len())]
        }
    }

    /// A random object of a small world, so clashes, shared VIPs, GRE,
    /// port mappings and refusals all come up.
    fn random_case(d: &mut Dice, key: &ObjectKey, created: i64) -> Case {
        let vip = d.pick(&[
            "192.168.56.185",
            "192.168.56.185",
            "192.168.56.186",
            "192.168.56.181",
            "10.9.9.9",
            "not-an-address",
        ]);
        let port = d.pick(&["80", "81", "82", "8080", "8081"]);
        let target = d.pick(&["", "", ", targetPort: 8001", ", targetPort: 9500"]);
        let second = d.pick(&["", "", ", {port: 443}"]);
        let tunnel = d.pick(&[
            "",
            "",
            "",
            "tunnel: {type: gre}\n",
            "tunnel: {type: gre, checksum: csum}\n",
            "tunnel: {type: gue, port: 6080}\n",
        ]);
        let directors = d.pick(&["", "", "", "directors: {interface: eth0}\n"]);
        let weight = 1 + d.roll(3);
        let yaml = format!(
            "vip: {vip}\nports: [{{port: {port}{target}}}{second}]\n{tunnel}{directors}\
             backends: {{static: [{{address: 192.168.56.183, weight: {weight}}}]}}\n"
        );
        let servers = match d.roll(3) {
            0 => seed_servers(),
            1 => vec![rs("198.51.100.7", None)],
            _ => vec![rs("203.0.113.9", None), rs("192.168.56.183", Some("rs1"))],
        };
        case(&key.namespace, &key.name, created, &yaml, servers)
    }

    /// Patched plans are the plans [`verify`] makes of the same objects,
    /// edit after edit, on a director and on a backend, with VIPs shared
    /// across namespaces or not.
    #[test]
    fn patched_plans_equal_whole_plans() {
        let tenant = BTreeMap::from([("tenant".to_string(), "web".to_string())]);
        let namespaces = BTreeMap::from([("team-web", &tenant)]);
        let mut shared = lab();
        shared.spec.share_across_namespaces = true;
        let keys: Vec<ObjectKey> = ["default", "team-web", "team-x"]
            .iter()
            .flat_map(|ns| ["a", "b", "c", "d"].map(|n| ObjectKey::new(*ns, n)))
            .collect();
        let mut patched = 0;
        for (seed, n, pools) in [
            (7, director(), vec![lab()]),
            (11, rs1(), vec![lab()]),
            (13, director(), vec![shared.clone()]),
            (17, rs1(), vec![shared]),
        ] {
            let mut d = Dice(seed);
            let mut world: BTreeMap<ObjectKey, Case> = BTreeMap::new();
            let mut clock = 0;
            let mut inc = Incremental::default();
            for step in 0..1000 {
                let mut changed = BTreeSet::new();
                for _ in 0..=d.roll(2) {
                    let key = keys[d.roll(keys.len())].clone();
                    if d.roll(4) == 0 {
                        world.remove(&key);
                    } else {
                        clock += 1;
                        let created = world.get(&key).map_or(clock, |c| c.age.0);
                        world.insert(key.clone(), random_case(&mut d, &key, created));
                    }
                    changed.insert(key);
                }
                let mut cases: Vec<&Case> = world.values().collect();
                cases.sort_by(|a, b| a.age.cmp(&b.age));
                fn object(c: &Case) -> Object<'_> {
                    Object {
                        key: &c.key,
                        generation: 3,
                        spec: &c.spec,
                        real_servers: &c.real_servers,
                        age: &c.age,
                    }
                }
                let objects: Vec<Object<'_>> = cases.iter().map(|c| object(c)).collect();
                let how = inc.update(
                    &n,
                    &pools,
                    &namespaces,
                    (step > 0).then_some(&changed),
                    || objects.clone(),
                    |k| world.get(k).map(object),
                );
                if matches!(how, Planned::Patched(_)) {
                    patched += 1;
                }
                let want = verify(&n, &pools, &namespaces, &objects);
                let got = inc.plan().unwrap_or_else(|| panic!("no plan"));
                let at = format!("seed {seed} step {step} ({how:?}), changed {changed:?}");
                assert_eq!(got.objects, want.plan.objects, "{at}");
                assert_eq!(got.ipvs, want.plan.ipvs, "{at}");
                assert_eq!(got, &want.plan, "{at}");
                assert_eq!(
                    inc.refused(),
                    Some(&want.refused),
                    "seed {seed} step {step}"
                );
            }
        }
        // Most edits of this small world reach other objects; enough do not.
        assert!(patched > 500, "patched {patched} of 4000");
    }
}
