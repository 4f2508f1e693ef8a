//! Which watch events can change what this node programs or reports.
//!
//! Every status write is an event on its VirtualService: the operator's
//! conditions, and each node's own `status.nodes` entry. Without this filter
//! each of them woke a full pass on every node (an IPVS dump of every owned
//! service), so N nodes reporting cost N x N passes.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hasher};

use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::watcher;
use serde::Serialize;
use tunlb_api::plan::ObjectKey;
use tunlb_api::{
    ElectionStatus, NodeStatus, RealServer, VipPool, VirtualService, VirtualServiceSpec,
};

/// What a pass reads of a VirtualService (see `cluster::Memory::refresh` and
/// `report_status`).
#[derive(Serialize)]
struct VsInputs<'a> {
    generation: Option<i64>,
    deleting: bool,
    created: Option<i64>,
    observed_generation: Option<i64>,
    accepted: bool,
    real_servers: &'a [RealServer],
    spec: &'a VirtualServiceSpec,
    own_entry: Option<&'a NodeStatus>,
    /// Without its active director, which the agents' reports move.
    election: Option<ElectionStatus>,
    /// Why it cannot be read, when it cannot.
    unreadable: Option<String>,
}

fn hash_of(inputs: &impl Serialize) -> u64 {
    let mut h = DefaultHasher::new();
    // These types always serialise; a failure would only cost a wake-up.
    h.write(&serde_json::to_vec(inputs).unwrap_or_default());
    h.finish()
}

/// The fingerprint of what `node`'s pass reads of `guard`.
pub fn virtual_service(node: &str, guard: &DeserializeGuard<VirtualService>) -> u64 {
    match &guard.0 {
        Ok(vs) => {
            let status = vs.status.as_ref();
            hash_of(&VsInputs {
                generation: vs.metadata.generation,
                deleting: vs.metadata.deletion_timestamp.is_some(),
                created: vs
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second()),
                observed_generation: status.and_then(|s| s.observed_generation),
                accepted: status.is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Accepted" && c.status == "True")
                }),
                real_servers: status
                    .map(|s| s.real_servers.as_slice())
                    .unwrap_or_default(),
                spec: &vs.spec,
                own_entry: status.and_then(|s| s.nodes.iter().find(|n| n.node_name == node)),
                election: status
                    .and_then(|s| s.election.as_ref())
                    .map(|e| ElectionStatus {
                        active_director: None,
                        ..e.clone()
                    }),
                unreadable: None,
            })
        }
        Err(bad) => hash_of(&(bad.metadata.generation, bad.error.to_string())),
    }
}

/// The fingerprint of what a pass reads of its Node: labels and addresses,
/// not heartbeats or conditions.
pub fn node(node: &Node) -> u64 {
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    hash_of(&(&node.metadata.labels, addresses))
}

/// The fingerprint of what a pass reads of a VipPool: its spec (the
/// operator's `status.used` counts change with every acceptance).
pub fn pool(guard: &DeserializeGuard<VipPool>) -> u64 {
    match &guard.0 {
        Ok(p) => hash_of(&p.spec),
        Err(bad) => hash_of(&bad.error.to_string()),
    }
}

/// Drops from a cached VipPool what no pass reads.
pub fn strip_pool(guard: &mut DeserializeGuard<VipPool>) {
    match &mut guard.0 {
        Ok(p) => {
            p.metadata.managed_fields = None;
            p.metadata.annotations = None;
        }
        Err(bad) => {
            bad.metadata.managed_fields = None;
            bad.metadata.annotations = None;
        }
    }
}

/// The fingerprint of what a pass reads of a Namespace: its labels.
pub fn namespace(ns: &Namespace) -> u64 {
    hash_of(&ns.metadata.labels)
}

/// Keeps of a cached Namespace only its name and labels, which pools
/// select namespaces by.
pub fn strip_namespace(ns: &mut Namespace) {
    let metadata = std::mem::take(&mut ns.metadata);
    *ns = Namespace {
        metadata: ObjectMeta {
            name: metadata.name,
            labels: metadata.labels,
            resource_version: metadata.resource_version,
            uid: metadata.uid,
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
}

/// Drops from a cached VirtualService what no pass of `node` reads: field
/// managers, annotations, the operator's other conditions and the other
/// nodes' entries (with many nodes, most of the object).
pub fn strip(node: &str, guard: &mut DeserializeGuard<VirtualService>) {
    match &mut guard.0 {
        Ok(vs) => {
            vs.metadata.managed_fields = None;
            vs.metadata.annotations = None;
            if let Some(s) = vs.status.as_mut() {
                s.conditions.retain(|c| c.type_ == "Accepted");
                s.nodes.retain(|n| n.node_name == node);
            }
        }
        Err(bad) => {
            bad.metadata.managed_fields = None;
            bad.metadata.annotations = None;
        }
    }
}

/// The objects whose pass inputs changed since a pass last took them, as
/// the watch events that wake passes tell.
#[derive(Debug, Default)]
pub struct Changed {
    /// A (re-)list: any object may have changed.
    all: bool,
    keys: BTreeSet<ObjectKey>,
}

impl Changed {
    /// Notes what a waking event `ev` changed.
    pub fn note<K: kube::Resource>(&mut self, ev: &watcher::Event<K>) {
        match ev {
            watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => {
                self.keys.insert(ObjectKey::new(
                    obj.namespace().unwrap_or_default(),
                    obj.name_any(),
                ));
            }
            watcher::Event::InitDone => self.all = true,
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    /// What changed since the last take: `None` for anything.
    pub fn take(&mut self) -> Option<BTreeSet<ObjectKey>> {
        let keys = std::mem::take(&mut self.keys);
        (!std::mem::take(&mut self.all)).then_some(keys)
    }
}

/// Remembers each object's fingerprint and tells which events change one.
pub struct Relevant<K> {
    fingerprint: Box<dyn Fn(&K) -> u64 + Send>,
    seen: HashMap<String, u64>,
    relisting: Option<HashMap<String, u64>>,
}

impl<K: kube::Resource> Relevant<K> {
    pub fn new(fingerprint: impl Fn(&K) -> u64 + Send + 'static) -> Relevant<K> {
        Relevant {
            fingerprint: Box::new(fingerprint),
            seen: HashMap::new(),
            relisting: None,
        }
    }

    fn key(obj: &K) -> String {
        format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
    }

    /// Whether `ev` may change what a pass does.
    pub fn wakes(&mut self, ev: &watcher::Event<K>) -> bool {
        match ev {
            watcher::Event::Apply(obj) => {
                let fp = (self.fingerprint)(obj);
                self.seen.insert(Self::key(obj), fp) != Some(fp)
            }
            watcher::Event::Delete(obj) => {
                self.seen.remove(&Self::key(obj));
                true
            }
            watcher::Event::Init => {
                self.relisting = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                let fp = (self.fingerprint)(obj);
                self.relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(Self::key(obj), fp);
                false
            }
            // A (re-)list may have changed anything.
            watcher::Event::InitDone => {
                self.seen = self.relisting.take().unwrap_or_default();
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use tunlb_api::NodeRole;

    fn vs(yaml: &str) -> DeserializeGuard<VirtualService> {
        DeserializeGuard(Ok(serde_yaml::from_str(yaml).unwrap()))
    }

    const BASE: &str = "apiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata: {name: web, namespace: ns, generation: 1}\nspec: {vip: 10.0.0.1, ports: [{port: 80}], backends: {static: [{address: 10.1.1.1}]}}\n";

    fn entry(node: &str, programmed: bool) -> NodeStatus {
        NodeStatus {
            node_name: node.into(),
            roles: vec![NodeRole::Director],
            observed_generation: Some(1),
            programmed,
            message: String::new(),
            draining: vec![],
            health: vec![],
            fail_open: false,
            director_state: None,
            director_since: None,
            election_conflict: None,
        }
    }

    #[test]
    fn only_what_a_pass_reads_wakes_it() {
        let mut r = Relevant::new(|g| virtual_service("n1", g));
        let mut a = vs(BASE);
        assert!(!r.wakes(&watcher::Event::Init));
        assert!(!r.wakes(&watcher::Event::InitApply(a.clone())));
        assert!(r.wakes(&watcher::Event::InitDone));
        assert!(!r.wakes(&watcher::Event::Apply(a.clone())), "same object");

        let with_status =
            |a: &mut DeserializeGuard<VirtualService>,
             f: &dyn Fn(&mut tunlb_api::VirtualServiceStatus)| {
                if let Ok(vs) = a.0.as_mut() {
                    f(vs.status.get_or_insert_with(Default::default));
                }
            };
        // Another node's entry and a condition message: nothing to do here.
        with_status(&mut a, &|s| s.nodes.push(entry("n2", true)));
        assert!(!r.wakes(&watcher::Event::Apply(a.clone())));
        with_status(&mut a, &|s| s.nodes[0].programmed = false);
        assert!(!r.wakes(&watcher::Event::Apply(a.clone())));
        // This node's own entry (someone removed or changed it): repair it.
        with_status(&mut a, &|s| s.nodes.push(entry("n1", true)));
        assert!(r.wakes(&watcher::Event::Apply(a.clone())));
        // Real servers and the spec are read.
        with_status(&mut a, &|s| {
            s.real_servers.push(
                serde_json::from_str::<RealServer>(r#"{"address": "10.1.1.1", "weight": 1}"#)
                    .unwrap(),
            )
        });
        assert!(r.wakes(&watcher::Event::Apply(a.clone())));
        if let Ok(v) = a.0.as_mut() {
            v.spec.vip = "10.0.0.2".into();
        }
        assert!(r.wakes(&watcher::Event::Apply(a.clone())));
        assert!(!r.wakes(&watcher::Event::Apply(a.clone())));
        assert!(r.wakes(&watcher::Event::Delete(a)));
    }

    #[test]
    fn the_cached_copy_keeps_what_a_pass_reads() {
        let mut g = vs(BASE);
        if let Ok(v) = g.0.as_mut() {
            v.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
            let s = v.status.get_or_insert_with(Default::default);
            s.nodes = vec![entry("n2", true), entry("n1", false)];
            s.conditions = ["Accepted", "Ready", "Resolved"]
                .iter()
                .map(|t| Condition {
                    type_: t.to_string(),
                    status: "True".into(),
                    reason: "R".into(),
                    message: "m".into(),
                    observed_generation: Some(1),
                    last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                })
                .collect();
        }
        let before = virtual_service("n1", &g);
        strip("n1", &mut g);
        assert_eq!(
            virtual_service("n1", &g),
            before,
            "nothing read was dropped"
        );
        let v = g.0.as_ref().unwrap();
        let s = v.status.as_ref().unwrap();
        assert_eq!(s.nodes, vec![entry("n1", false)]);
        assert_eq!(s.conditions.len(), 1);
        assert!(v.metadata.annotations.is_none());
    }

    #[test]
    fn namespaces_wake_on_labels_and_keep_only_them() {
        let mut r = Relevant::new(namespace);
        let mut ns: Namespace = serde_yaml::from_str(
            "metadata: {name: team-a, labels: {tenant: web}, annotations: {a: b}, finalizers: [x]}\nspec: {finalizers: [kubernetes]}\nstatus: {phase: Active}",
        )
        .unwrap();
        assert!(r.wakes(&watcher::Event::Apply(ns.clone())), "first sight");
        let before = namespace(&ns);
        strip_namespace(&mut ns);
        assert_eq!(namespace(&ns), before);
        assert_eq!(ns.metadata.name.as_deref(), Some("team-a"));
        assert!(ns.metadata.annotations.is_none() && ns.metadata.finalizers.is_none());
        assert!(ns.spec.is_none() && ns.status.is_none());
        assert!(!r.wakes(&watcher::Event::Apply(ns.clone())));
        ns.metadata.labels = None;
        assert!(r.wakes(&watcher::Event::Apply(ns)));
    }

    #[test]
    fn pool_usage_counts_do_not_wake() {
        let mut r = Relevant::new(pool);
        let mut p: DeserializeGuard<VipPool> = DeserializeGuard(Ok(serde_yaml::from_str(
            "apiVersion: tunlb.io/v1alpha1\nkind: VipPool\nmetadata: {name: lab}\nspec: {cidrs: [192.168.56.0/24]}\n",
        )
        .unwrap()));
        assert!(r.wakes(&watcher::Event::Apply(p.clone())), "first sight");
        if let Ok(v) = p.0.as_mut() {
            v.status = Some(tunlb_api::VipPoolStatus { used: Some(3) });
        }
        assert!(!r.wakes(&watcher::Event::Apply(p.clone())));
        if let Ok(v) = p.0.as_mut() {
            v.spec.namespaces.push("team-a".into());
        }
        assert!(r.wakes(&watcher::Event::Apply(p.clone())));
        assert!(r.wakes(&watcher::Event::Delete(p)));
    }

    #[test]
    fn node_heartbeats_do_not_wake() {
        let mut r = Relevant::new(node);
        let n: Node = serde_yaml::from_str(
            "metadata: {name: n1, labels: {a: b}}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}], conditions: [{type: Ready, status: 'True', lastHeartbeatTime: '2026-01-01T00:00:00Z'}]}",
        )
        .unwrap();
        assert!(r.wakes(&watcher::Event::Apply(n.clone())), "first sight");
        let mut beat = n.clone();
        beat.metadata.resource_version = Some("9".into());
        if let Some(c) = beat.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].last_heartbeat_time = None;
        }
        assert!(!r.wakes(&watcher::Event::Apply(beat)));
        let mut relabelled = n;
        relabelled.metadata.labels = None;
        assert!(r.wakes(&watcher::Event::Apply(relabelled)));
    }

    /// Events name what changed; a re-list stands for everything, once.
    #[test]
    fn changes_are_taken_once() {
        let mut c = Changed::default();
        assert_eq!(c.take(), Some(BTreeSet::new()));
        let a = vs(BASE);
        c.note(&watcher::Event::Apply(a.clone()));
        c.note(&watcher::Event::Delete(a.clone()));
        c.note(&watcher::Event::InitApply(a));
        assert_eq!(c.take(), Some([ObjectKey::new("ns", "web")].into()));
        assert_eq!(c.take(), Some(BTreeSet::new()));
        c.note(&watcher::Event::<DeserializeGuard<VirtualService>>::InitDone);
        assert_eq!(c.take(), None);
        assert_eq!(c.take(), Some(BTreeSet::new()));
    }
}
