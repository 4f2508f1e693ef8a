//! The operator's caches, filled from watchers: only what deciding reads
//! (NodeInfo, ServiceInfo, SliceInfo, VipPools, namespaces' labels, the
//! VirtualService index), keyed for
//! the lookups a reconcile makes, so that a reconcile costs O(what it
//! touches) instead of O(cluster).
//!
//! Each cache follows a reflector's re-list semantics: a (re-)list is built
//! aside and swapped in whole when it completes, so readers never see half a
//! list.

use std::collections::{BTreeMap, HashMap, HashSet, btree_map, hash_map};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use tokio::sync::watch;
use tunlb_api::plan::{IpvsKey, ipvs_keys};
use tunlb_api::{Protocol, VipPool, VirtualService, validate};

use crate::conditions::ACCEPTED;
use crate::decide::created;
use crate::observed::{self, Observed};
use crate::resolve::{NodeInfo, ServiceInfo, SliceInfo, slice_service_name};

/// A Service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// One kind's cache.
pub trait Cache: Default + Send + Sync + 'static {
    type Obj;
    /// What a change touches, to find the VirtualServices it affects.
    type Touch;
    /// Adds or replaces `obj`; `None` when nothing the operator reads changed.
    fn put(&mut self, obj: &Self::Obj) -> Option<Self::Touch>;
    fn remove(&mut self, obj: &Self::Obj) -> Option<Self::Touch>;
}

/// A cache shared between its writer and the reconciles.
pub struct Shared<C>(Arc<RwLock<C>>);

impl<C> Clone for Shared<C> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<C: Default> Default for Shared<C> {
    fn default() -> Self {
        Shared(Arc::default())
    }
}

impl<C> Shared<C> {
    /// Never held across an await. A writer that panicked left a consistent
    /// cache (every update is a single insert or remove), so poison is ignored.
    pub fn read(&self) -> RwLockReadGuard<'_, C> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, C> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a watcher event did to a cache.
#[derive(Debug, PartialEq, Eq)]
pub enum Update<T> {
    Nothing,
    Touched(T),
    /// A re-list after the first replaced the cache: anything may have changed.
    Relisted,
}

/// Applies watcher events to a shared cache.
pub struct Mirror<C> {
    shared: Shared<C>,
    relisting: Option<C>,
    synced: watch::Sender<bool>,
}

impl<C: Cache> Mirror<C> {
    pub fn new(shared: Shared<C>) -> (Mirror<C>, watch::Receiver<bool>) {
        let (synced, rx) = watch::channel(false);
        let mirror = Mirror {
            shared,
            relisting: None,
            synced,
        };
        (mirror, rx)
    }

    pub fn apply(&mut self, ev: &watcher::Event<C::Obj>) -> Update<C::Touch> {
        match ev {
            watcher::Event::Init => {
                self.relisting = Some(C::default());
                Update::Nothing
            }
            watcher::Event::InitApply(obj) => {
                self.relisting.get_or_insert_with(C::default).put(obj);
                Update::Nothing
            }
            watcher::Event::InitDone => {
                *self.shared.write() = self.relisting.take().unwrap_or_default();
                let first = !*self.synced.borrow();
                self.synced.send_replace(true);
                if first {
                    Update::Nothing
                } else {
                    Update::Relisted
                }
            }
            watcher::Event::Apply(obj) => self.touched(self.shared.write().put(obj)),
            watcher::Event::Delete(obj) => self.touched(self.shared.write().remove(obj)),
        }
    }

    fn touched(&self, t: Option<C::Touch>) -> Update<C::Touch> {
        // Before the first list completes, every VirtualService is judged anyway.
        match t {
            Some(t) if *self.synced.borrow() => Update::Touched(t),
            _ => Update::Nothing,
        }
    }
}

/// Nodes, as deciding sees them. A change of anything else (status
/// heartbeats, images, conditions) touches nothing.
#[derive(Default)]
pub struct Nodes {
    by_name: BTreeMap<String, NodeInfo>,
    /// The list handed to reconciles, rebuilt after a change.
    list: Option<Arc<Vec<NodeInfo>>>,
}

impl Cache for Nodes {
    type Obj = Node;
    type Touch = ();

    fn put(&mut self, node: &Node) -> Option<()> {
        let info = NodeInfo::from_node(node)?;
        if self.by_name.get(&info.name) == Some(&info) {
            return None;
        }
        self.by_name.insert(info.name.clone(), info);
        self.list = None;
        Some(())
    }

    fn remove(&mut self, node: &Node) -> Option<()> {
        self.by_name.remove(node.metadata.name.as_deref()?)?;
        self.list = None;
        Some(())
    }
}

impl Shared<Nodes> {
    /// All nodes; built once per change rather than per reconcile.
    pub fn infos(&self) -> Arc<Vec<NodeInfo>> {
        if let Some(list) = &self.read().list {
            return list.clone();
        }
        let mut nodes = self.write();
        let list = Arc::new(nodes.by_name.values().cloned().collect::<Vec<_>>());
        nodes.list = Some(list.clone());
        list
    }
}

/// Namespaces' labels, which pools select namespaces by.
#[derive(Default)]
pub struct Namespaces {
    labels: HashMap<String, BTreeMap<String, String>>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl Cache for Namespaces {
    type Obj = Namespace;
    type Touch = ();

    fn put(&mut self, ns: &Namespace) -> Option<()> {
        let name = ns.metadata.name.as_deref()?;
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        if self.labels.get(name) == Some(&labels) {
            return None;
        }
        self.labels.insert(name.to_string(), labels);
        Some(())
    }

    fn remove(&mut self, ns: &Namespace) -> Option<()> {
        self.labels.remove(ns.metadata.name.as_deref()?).map(|_| ())
    }
}

impl Namespaces {
    /// The labels of namespace `name`; none when it is not known.
    pub fn labels(&self, name: &str) -> &BTreeMap<String, String> {
        self.labels.get(name).unwrap_or(&NO_LABELS)
    }
}

/// VipPools, with their status (whose `used` the operator keeps).
#[derive(Default)]
pub struct Pools {
    by_name: BTreeMap<String, VipPool>,
    /// The list handed to reconciles, rebuilt after a change.
    list: Option<Arc<Vec<VipPool>>>,
}

impl Cache for Pools {
    type Obj = VipPool;
    /// Whether what pools admit may have changed (a spec, a pool added or
    /// removed), or only a status.
    type Touch = bool;

    fn put(&mut self, pool: &VipPool) -> Option<bool> {
        let name = pool.metadata.name.as_deref()?;
        let admits_changed = match self.by_name.get(name) {
            Some(old) if old.spec == pool.spec && old.status == pool.status => return None,
            Some(old) => old.spec != pool.spec,
            None => true,
        };
        self.by_name.insert(name.to_string(), pool.clone());
        self.list = None;
        Some(admits_changed)
    }

    fn remove(&mut self, pool: &VipPool) -> Option<bool> {
        self.by_name.remove(pool.metadata.name.as_deref()?)?;
        self.list = None;
        Some(true)
    }
}

impl Shared<Pools> {
    /// All pools; built once per change rather than per reconcile.
    pub fn list(&self) -> Arc<Vec<VipPool>> {
        if let Some(list) = &self.read().list {
            return list.clone();
        }
        let mut pools = self.write();
        let list = Arc::new(pools.by_name.values().cloned().collect::<Vec<_>>());
        pools.list = Some(list.clone());
        list
    }
}

fn service_key_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        meta.namespace.as_deref()?,
        meta.name.as_deref()?,
    ))
}

/// Services: their ports.
#[derive(Default)]
pub struct Services {
    by_key: HashMap<ServiceKey, Arc<ServiceInfo>>,
}

impl Cache for Services {
    type Obj = Service;
    type Touch = ServiceKey;

    fn put(&mut self, svc: &Service) -> Option<ServiceKey> {
        let key = service_key_of(&svc.metadata)?;
        let info = ServiceInfo::from_service(svc);
        if self.by_key.get(&key).map(AsRef::as_ref) == Some(&info) {
            return None;
        }
        self.by_key.insert(key.clone(), Arc::new(info));
        Some(key)
    }

    fn remove(&mut self, svc: &Service) -> Option<ServiceKey> {
        let key = service_key_of(&svc.metadata)?;
        self.by_key.remove(&key).map(|_| key)
    }
}

impl Services {
    pub fn get(&self, key: &ServiceKey) -> Option<Arc<ServiceInfo>> {
        self.by_key.get(key).cloned()
    }
}

/// A slice's name and what resolution reads of it.
type NamedSlice = (Box<str>, Arc<SliceInfo>);

/// EndpointSlices, grouped by the Service they belong to.
#[derive(Default)]
pub struct Slices {
    /// "namespace/name" of each slice -> its Service.
    owner: HashMap<Box<str>, Arc<ServiceKey>>,
    by_service: HashMap<Arc<ServiceKey>, Vec<NamedSlice>>,
    /// Node names, shared by every endpoint on the node.
    node_names: HashSet<Arc<str>>,
}

impl Slices {
    /// The slices of one Service.
    pub fn for_service(&self, key: &ServiceKey) -> Vec<Arc<SliceInfo>> {
        self.by_service
            .get(key)
            .map(|l| l.iter().map(|(_, info)| info.clone()).collect())
            .unwrap_or_default()
    }

    fn unlink(&mut self, service: &ServiceKey, slice_name: &str) {
        if let Some(list) = self.by_service.get_mut(service) {
            list.retain(|(n, _)| &**n != slice_name);
            if list.is_empty() {
                self.by_service.remove(service);
            }
        }
    }

    fn intern(&mut self, mut info: SliceInfo) -> SliceInfo {
        for ep in &mut info.endpoints {
            match self.node_names.get(&ep.node_name) {
                Some(shared) => ep.node_name = shared.clone(),
                None => {
                    self.node_names.insert(ep.node_name.clone());
                }
            }
        }
        info
    }
}

/// What a slice change touches: its Service, and the one it belonged to
/// before when its service-name label changed.
pub type SliceTouch = Vec<ServiceKey>;

impl Cache for Slices {
    type Obj = EndpointSlice;
    type Touch = SliceTouch;

    fn put(&mut self, slice: &EndpointSlice) -> Option<SliceTouch> {
        let ns = slice.metadata.namespace.as_deref()?;
        let name = slice.metadata.name.as_deref()?;
        let Some(service) = slice_service_name(slice).map(|s| ServiceKey::new(ns, s)) else {
            // Not (or no longer) a Service's slice.
            return self.remove(slice);
        };
        let info = SliceInfo::from_slice(slice);
        let full: Box<str> = format!("{ns}/{name}").into();
        let mut touched = Vec::new();
        if let Some(old) = self.owner.get(&full).cloned() {
            if *old == service {
                let same = self.by_service.get(&*old).and_then(|l| {
                    l.iter()
                        .find(|(n, _)| &**n == name)
                        .map(|(_, i)| **i == info)
                });
                if same == Some(true) {
                    return None;
                }
            } else {
                touched.push((*old).clone());
            }
            self.unlink(&old, name);
        }
        let info = Arc::new(self.intern(info));
        let key = match self.by_service.get_key_value(&service) {
            Some((k, _)) => k.clone(),
            None => Arc::new(service.clone()),
        };
        self.owner.insert(full, key.clone());
        self.by_service
            .entry(key)
            .or_insert_with(|| Vec::with_capacity(1))
            .push((name.into(), info));
        touched.push(service);
        Some(touched)
    }

    fn remove(&mut self, slice: &EndpointSlice) -> Option<SliceTouch> {
        let ns = slice.metadata.namespace.as_deref()?;
        let name = slice.metadata.name.as_deref()?;
        let service = self.owner.remove(format!("{ns}/{name}").as_str())?;
        self.unlink(&service, name);
        Some(vec![(*service).clone()])
    }
}

/// A VirtualService's "namespace/name": the index's key, shared between its
/// maps, and what the reconcile queue holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VsName(Arc<str>);

impl VsName {
    pub fn new(namespace: &str, name: &str) -> VsName {
        VsName(format!("{namespace}/{name}").into())
    }

    pub fn of(vs: &VirtualService) -> Option<VsName> {
        Some(VsName::new(
            vs.metadata.namespace.as_deref()?,
            vs.metadata.name.as_deref()?,
        ))
    }

    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map(|(ns, _)| ns).unwrap_or_default()
    }
}

impl std::fmt::Display for VsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A VirtualService's entry in the index.
struct Entry {
    /// Its IPVS services, all on its VIP; none when its spec is invalid.
    keys: Box<[IpvsKey]>,
    /// The object as JSON, without field managers, annotations, conditions
    /// or realServers: about 500 bytes where the decoded object took 1.5 KB.
    object: Box<str>,
    /// The Service it takes backends from, in its own namespace.
    service: Option<Box<str>>,
    observed: Observed,
    /// Creation time in seconds: where it stands among those whose
    /// namespace its VIP may belong to.
    created: i64,
}

impl Entry {
    fn vip(&self) -> Option<IpAddr> {
        self.keys.first().map(|k| k.vip)
    }
}

/// An IPVS service as the index orders it: by VIP first, so that all
/// VirtualServices on a VIP are one range of the map that finds conflicts,
/// and no map by VIP is needed beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct VipKey {
    vip: IpAddr,
    /// Protocol and port; `None` only in the bound that starts a VIP's range.
    service: Option<(Protocol, u16)>,
}

impl VipKey {
    fn of(key: &IpvsKey) -> VipKey {
        VipKey {
            vip: key.vip,
            service: Some((key.protocol, key.port)),
        }
    }

    fn first_on(vip: IpAddr) -> VipKey {
        VipKey { vip, service: None }
    }
}

/// The VirtualServices at one key of the index. Most keys have one, held
/// in place: a vector of one costs an allocation per key.
#[derive(Debug)]
enum Names {
    One(VsName),
    Many(Vec<VsName>),
}

impl Names {
    fn as_slice(&self) -> &[VsName] {
        match self {
            Names::One(name) => std::slice::from_ref(name),
            Names::Many(names) => names,
        }
    }

    fn push(&mut self, name: VsName) {
        match self {
            Names::Many(names) => names.push(name),
            Names::One(first) => {
                let first = first.clone();
                *self = Names::Many(vec![first, name]);
            }
        }
    }

    /// Removes `name`; false when none is left.
    fn remove(&mut self, name: &VsName) -> bool {
        match self {
            Names::One(only) => only != name,
            Names::Many(names) => {
                names.retain(|n| n != name);
                if let [only] = names.as_slice() {
                    *self = Names::One(only.clone());
                }
                !self.as_slice().is_empty()
            }
        }
    }
}

/// VirtualServices by the IPVS services they occupy and by the Service they
/// take backends from (which ones may conflict, which ones share a VIP, and
/// which ones a Service or slice change affects), and the status each was
/// last seen with.
#[derive(Default)]
pub struct VirtualServices {
    entries: HashMap<VsName, Entry>,
    /// Keyed by VIP, protocol and port, not by VIP alone: thousands of
    /// VirtualServices on one VIP (a port each) must not all be each other's
    /// peers. Ordered by VIP, so a VIP's range says whose namespace it may
    /// belong to.
    by_key: BTreeMap<VipKey, Names>,
    by_service: HashMap<ServiceKey, Names>,
    /// Bumped whenever what the VipPools' usage counts changes: an accepted
    /// VirtualService comes, goes, moves, or its acceptance flips. Status
    /// writes that change neither (most of them) leave it.
    usage_changes: u64,
}

/// The IPVS services `vs` occupies; none when its spec is invalid.
pub fn ipvs_keys_of(vs: &VirtualService) -> Box<[IpvsKey]> {
    keys_and_vip(vs).0
}

/// The IPVS services `vs` occupies and its VIP; none when its spec is invalid.
pub fn keys_and_vip(vs: &VirtualService) -> (Box<[IpvsKey]>, Option<IpAddr>) {
    match validate(&vs.spec) {
        Ok(valid) => (ipvs_keys(&valid).into(), Some(valid.vip)),
        Err(_) => (Box::default(), None),
    }
}

impl VirtualServices {
    /// See the field: compared before and after an event.
    pub fn usage_changes(&self) -> u64 {
        self.usage_changes
    }

    /// The others that occupy any of `keys`: those `name` may conflict with.
    pub fn sharing(&self, keys: &[IpvsKey], name: &VsName) -> Vec<VsName> {
        let mut names: Vec<VsName> = keys
            .iter()
            .filter_map(|k| self.by_key.get(&VipKey::of(k)))
            .flat_map(Names::as_slice)
            .filter(|n| *n != name)
            .cloned()
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Every VirtualService on `vip`, once per IPVS service it occupies there.
    fn at_vip(&self, vip: IpAddr) -> impl Iterator<Item = &VsName> {
        self.by_key
            .range(VipKey::first_on(vip)..)
            .take_while(move |(k, _)| k.vip == vip)
            .flat_map(|(_, names)| names.as_slice())
    }

    /// The others whose verdicts may change with `name`'s (at `keys` and
    /// `vip`): those sharing an IPVS service with it and, when another
    /// namespace uses the VIP, every other one on the VIP, since whose
    /// namespace it belongs to may change.
    pub fn related(&self, keys: &[IpvsKey], vip: Option<IpAddr>, name: &VsName) -> Vec<VsName> {
        let mut names = self.sharing(keys, name);
        if let Some(vip) = vip
            && self.at_vip(vip).any(|n| n.namespace() != name.namespace())
        {
            names.extend(self.at_vip(vip).filter(|n| *n != name).cloned());
            names.sort_unstable();
            names.dedup();
        }
        names
    }

    /// Whether any VirtualService other than `name` is on `vip`.
    pub fn others_on_vip(&self, vip: IpAddr, name: &VsName) -> bool {
        self.at_vip(vip).any(|n| n != name)
    }

    /// Each namespace's VirtualServices on `vip`, oldest first (creation
    /// time, then name).
    pub fn on_vip(
        &self,
        vip: IpAddr,
    ) -> impl Iterator<Item = (&str, impl Iterator<Item = &VsName>)> {
        let mut aged: Vec<(i64, &VsName)> = self
            .at_vip(vip)
            .map(|n| (self.entries.get(n).map_or(i64::MAX, |e| e.created), n))
            .collect();
        aged.sort_unstable();
        aged.dedup();
        let mut by_namespace: BTreeMap<&str, Vec<&VsName>> = BTreeMap::new();
        for (_, n) in aged {
            by_namespace.entry(n.namespace()).or_default().push(n);
        }
        by_namespace
            .into_iter()
            .map(|(ns, names)| (ns, names.into_iter()))
    }

    /// Each VirtualService last seen Accepted, with its VIP, once per IPVS
    /// service it occupies; those on one VIP come one after another.
    pub fn accepted(&self) -> impl Iterator<Item = (&VsName, IpAddr)> {
        self.by_key
            .iter()
            .flat_map(|(k, names)| names.as_slice().iter().map(move |n| (n, k.vip)))
            .filter(|(n, _)| {
                self.entries
                    .get(*n)
                    .is_some_and(|e| e.observed.is_true(ACCEPTED))
            })
    }

    pub fn using_service(&self, key: &ServiceKey) -> Vec<VsName> {
        self.by_service
            .get(key)
            .map(|names| names.as_slice().to_vec())
            .unwrap_or_default()
    }

    /// Every VirtualService in the index.
    pub fn names(&self) -> Vec<VsName> {
        self.entries.keys().cloned().collect()
    }

    /// The object as last seen (see `Entry::object` for what it lacks).
    pub fn object(&self, name: &VsName) -> Option<VirtualService> {
        let entry = self.entries.get(name)?;
        match serde_json::from_str(&entry.object) {
            Ok(vs) => Some(vs),
            // It was written by `put` from the same type.
            Err(e) => {
                tracing::warn!(%name, error = %e, "cached VirtualService does not read back");
                None
            }
        }
    }

    /// The status `name` was last seen with.
    pub fn observed(&self, name: &VsName) -> Option<Observed> {
        self.entries.get(name).map(|e| e.observed.clone())
    }

    fn forget(&mut self, name: &VsName) -> Option<Entry> {
        let old = self.entries.remove(name)?;
        for key in &old.keys {
            let key = VipKey::of(key);
            if let Some(names) = self.by_key.get_mut(&key)
                && !names.remove(name)
            {
                self.by_key.remove(&key);
            }
        }
        if let Some(svc) = &old.service {
            let key = ServiceKey::new(name.namespace(), svc);
            if let Some(names) = self.by_service.get_mut(&key)
                && !names.remove(name)
            {
                self.by_service.remove(&key);
            }
        }
        Some(old)
    }
}

impl Cache for VirtualServices {
    type Obj = VirtualService;
    /// The others whose verdicts may change: those related to it (see
    /// [`VirtualServices::related`]) before or after. (Its own change
    /// triggers its own reconcile.)
    type Touch = Vec<VsName>;

    fn put(&mut self, vs: &VirtualService) -> Option<Vec<VsName>> {
        let name = VsName::of(vs)?;
        let object = match serde_json::to_string(&observed::stripped(vs)) {
            Ok(json) => json.into_boxed_str(),
            // A decoded object always encodes; skipping it beats a panic.
            Err(e) => {
                tracing::warn!(%name, error = %e, "cannot cache VirtualService");
                return None;
            }
        };
        let entry = Entry {
            object,
            keys: ipvs_keys_of(vs),
            created: created(vs),
            service: vs
                .spec
                .backends
                .service
                .as_ref()
                .map(|s| s.name.as_str().into()),
            observed: Observed::of(vs.status.as_ref()),
        };
        let accepted = entry.observed.is_true(ACCEPTED);
        if let Some(old) = self.entries.get_mut(&name)
            && old.keys == entry.keys
            && old.service == entry.service
        {
            if old.observed.is_true(ACCEPTED) != accepted {
                self.usage_changes += 1;
            }
            old.observed = entry.observed;
            old.object = entry.object;
            return None;
        }
        let old = self.forget(&name);
        if accepted || old.as_ref().is_some_and(|o| o.observed.is_true(ACCEPTED)) {
            self.usage_changes += 1;
        }
        let mut touched = old
            .map(|old| self.related(&old.keys, old.vip(), &name))
            .unwrap_or_default();
        touched.extend(self.related(&entry.keys, entry.vip(), &name));
        touched.sort_unstable();
        touched.dedup();
        for key in &entry.keys {
            match self.by_key.entry(VipKey::of(key)) {
                btree_map::Entry::Vacant(e) => {
                    e.insert(Names::One(name.clone()));
                }
                btree_map::Entry::Occupied(mut e) => e.get_mut().push(name.clone()),
            }
        }
        if let Some(svc) = &entry.service {
            match self
                .by_service
                .entry(ServiceKey::new(name.namespace(), svc))
            {
                hash_map::Entry::Vacant(e) => {
                    e.insert(Names::One(name.clone()));
                }
                hash_map::Entry::Occupied(mut e) => e.get_mut().push(name.clone()),
            }
        }
        self.entries.insert(name, entry);
        (!touched.is_empty()).then_some(touched)
    }

    fn remove(&mut self, vs: &VirtualService) -> Option<Vec<VsName>> {
        let name = VsName::of(vs)?;
        let old = self.forget(&name)?;
        if old.observed.is_true(ACCEPTED) {
            self.usage_changes += 1;
        }
        let touched = self.related(&old.keys, old.vip(), &name);
        (!touched.is_empty()).then_some(touched)
    }
}

/// Drops what the operator never reads before an object is cached or
/// passed on: field managers and annotations (kubectl's
/// last-applied-configuration repeats the whole object).
pub fn strip_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, svc: &str, ip: &str) -> EndpointSlice {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: ns, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [{ip}], nodeName: n1}}]"
        ))
        .unwrap()
    }

    fn vs(name: &str, vip: &str, svc: Option<&str>) -> VirtualService {
        vs_on(name, vip, 80, svc)
    }

    fn vs_on(name: &str, vip: &str, port: u16, svc: Option<&str>) -> VirtualService {
        let backends = match svc {
            Some(s) => format!("{{service: {{name: {s}}}}}"),
            None => "{static: [{address: 10.1.1.1}]}".into(),
        };
        serde_yaml::from_str(&format!(
            "apiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{vip: '{vip}', ports: [{{port: {port}}}], backends: {backends}}}"
        ))
        .unwrap()
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_reported_after_the_first() {
        let shared = Shared::<Slices>::default();
        let (mut m, synced) = Mirror::new(shared.clone());
        let web = ServiceKey::new("ns", "web");
        assert_eq!(m.apply(&watcher::Event::Init), Update::Nothing);
        m.apply(&watcher::Event::InitApply(slice("a", "web", "10.0.0.1")));
        assert!(shared.read().for_service(&web).is_empty(), "half a list");
        assert!(!*synced.borrow());
        assert_eq!(m.apply(&watcher::Event::InitDone), Update::Nothing);
        assert!(*synced.borrow());
        assert_eq!(shared.read().for_service(&web).len(), 1);

        m.apply(&watcher::Event::Init);
        m.apply(&watcher::Event::InitApply(slice("b", "web", "10.0.0.2")));
        assert_eq!(m.apply(&watcher::Event::InitDone), Update::Relisted);
        let now = shared.read().for_service(&web);
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].endpoints[0].address.to_string(), "10.0.0.2");
    }

    #[test]
    fn slices_touch_their_service_only_when_something_read_changed() {
        let shared = Shared::<Slices>::default();
        let (mut m, _) = Mirror::new(shared.clone());
        m.apply(&watcher::Event::Init);
        m.apply(&watcher::Event::InitDone);
        let web = ServiceKey::new("ns", "web");
        let a = slice("a", "web", "10.0.0.1");
        assert_eq!(
            m.apply(&watcher::Event::Apply(a.clone())),
            Update::Touched(vec![web.clone()])
        );
        let mut relabelled = a.clone();
        relabelled.metadata.resource_version = Some("2".into());
        assert_eq!(m.apply(&watcher::Event::Apply(relabelled)), Update::Nothing);
        // moved to another Service: both are touched
        let moved = slice("a", "api", "10.0.0.1");
        assert_eq!(
            m.apply(&watcher::Event::Apply(moved.clone())),
            Update::Touched(vec![web.clone(), ServiceKey::new("ns", "api")])
        );
        assert!(shared.read().for_service(&web).is_empty());
        assert_eq!(
            m.apply(&watcher::Event::Delete(moved)),
            Update::Touched(vec![ServiceKey::new("ns", "api")])
        );
        assert!(shared.read().owner.is_empty());
        assert!(shared.read().by_service.is_empty());
    }

    #[test]
    fn node_heartbeats_touch_nothing() {
        let shared = Shared::<Nodes>::default();
        let (mut m, _) = Mirror::new(shared.clone());
        m.apply(&watcher::Event::Init);
        m.apply(&watcher::Event::InitDone);
        let a: Node = serde_yaml::from_str(
            "metadata: {name: n1, labels: {a: b}}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}], conditions: [{type: Ready, status: 'True', lastHeartbeatTime: '2026-01-01T00:00:00Z'}]}",
        )
        .unwrap();
        assert_eq!(
            m.apply(&watcher::Event::Apply(a.clone())),
            Update::Touched(())
        );
        assert_eq!(shared.infos().len(), 1);
        let mut b = a.clone();
        if let Some(c) = b.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].last_heartbeat_time = None;
        }
        assert_eq!(m.apply(&watcher::Event::Apply(b)), Update::Nothing);
        let mut c = a.clone();
        c.metadata.labels = Some([("tunlb.io/director".to_string(), "true".to_string())].into());
        assert_eq!(
            m.apply(&watcher::Event::Apply(c.clone())),
            Update::Touched(())
        );
        assert_eq!(shared.infos()[0].labels.len(), 1);
        assert_eq!(m.apply(&watcher::Event::Delete(c)), Update::Touched(()));
        assert!(shared.infos().is_empty());
    }

    #[test]
    fn the_index_follows_ipvs_service_and_service_changes() {
        let shared = Shared::<VirtualServices>::default();
        let (mut m, _) = Mirror::new(shared.clone());
        let name = |n: &str| VsName::new("ns", n);
        let keys = |v: &VirtualService| ipvs_keys_of(v);
        m.apply(&watcher::Event::Init);
        m.apply(&watcher::Event::InitApply(vs("a", "10.0.0.1", Some("web"))));
        m.apply(&watcher::Event::InitApply(vs("b", "10.0.0.1", None)));
        // Same VIP, another port: not a peer.
        m.apply(&watcher::Event::InitApply(vs_on("c", "10.0.0.1", 81, None)));
        m.apply(&watcher::Event::InitDone);
        let web = ServiceKey::new("ns", "web");
        let a80 = vs("a", "10.0.0.1", Some("web"));
        assert_eq!(
            shared.read().sharing(&keys(&a80), &name("a")),
            vec![name("b")]
        );
        let c81 = vs_on("c", "10.0.0.1", 81, None);
        assert!(shared.read().sharing(&keys(&c81), &name("c")).is_empty());
        assert_eq!(shared.read().using_service(&web).len(), 1);

        // a moves away: b, which it shared port 80 with, is touched.
        assert_eq!(
            m.apply(&watcher::Event::Apply(vs("a", "10.0.0.2", None))),
            Update::Touched(vec![name("b")])
        );
        assert!(shared.read().using_service(&web).is_empty());
        // c moves onto port 80: b again.
        assert_eq!(
            m.apply(&watcher::Event::Apply(vs("c", "10.0.0.1", None))),
            Update::Touched(vec![name("b")])
        );
        // Only the status changed: nothing touched.
        assert_eq!(
            m.apply(&watcher::Event::Apply(vs("c", "10.0.0.1", None))),
            Update::Nothing
        );
        // b goes: c is touched.
        assert_eq!(
            m.apply(&watcher::Event::Delete(vs("b", "10.0.0.1", None))),
            Update::Touched(vec![name("c")])
        );
        assert_eq!(shared.read().entries.len(), 2);
        let a = VsName::new("ns", "a");
        assert!(shared.read().observed(&a).is_some());
        let cached = shared.read().object(&a).unwrap();
        assert_eq!(cached.spec.vip, "10.0.0.2");
        let mut names = shared.read().names();
        names.sort();
        assert_eq!(names, vec![a, name("c")]);
    }

    fn in_ns(ns: &str, name: &str, port: u16, created: &str) -> VirtualService {
        let mut v = vs_on(name, "10.0.0.1", port, None);
        v.metadata.namespace = Some(ns.into());
        v.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            created.parse().unwrap(),
        ));
        v
    }

    #[test]
    fn a_vip_used_across_namespaces_relates_all_on_it() {
        let shared = Shared::<VirtualServices>::default();
        let (mut m, _) = Mirror::new(shared.clone());
        m.apply(&watcher::Event::Init);
        m.apply(&watcher::Event::InitApply(in_ns(
            "a",
            "old",
            80,
            "2024-01-01T00:00:00Z",
        )));
        m.apply(&watcher::Event::InitApply(in_ns(
            "a",
            "new",
            81,
            "2025-01-01T00:00:00Z",
        )));
        m.apply(&watcher::Event::InitDone);
        // one namespace on the VIP: only those on the same port are related
        assert_eq!(
            m.apply(&watcher::Event::Apply(in_ns(
                "a",
                "third",
                82,
                "2026-01-01T00:00:00Z"
            ))),
            Update::Nothing
        );
        // another namespace arrives: everyone on the VIP may change
        let b = in_ns("b", "x", 90, "2023-01-01T00:00:00Z");
        assert_eq!(
            m.apply(&watcher::Event::Apply(b.clone())),
            Update::Touched(vec![
                VsName::new("a", "new"),
                VsName::new("a", "old"),
                VsName::new("a", "third")
            ])
        );
        let index = shared.read();
        let by_ns: Vec<(String, Vec<String>)> = index
            .on_vip("10.0.0.1".parse().unwrap())
            .map(|(ns, names)| (ns.to_string(), names.map(ToString::to_string).collect()))
            .collect();
        assert_eq!(
            by_ns,
            [
                (
                    "a".to_string(),
                    vec!["a/old".to_string(), "a/new".into(), "a/third".into()]
                ),
                ("b".to_string(), vec!["b/x".to_string()]),
            ]
        );
        let x = VsName::new("b", "x");
        assert!(index.others_on_vip("10.0.0.1".parse().unwrap(), &x));
        assert!(!index.others_on_vip("10.0.0.9".parse().unwrap(), &x));
        drop(index);
        // it goes: again everyone
        assert_eq!(
            m.apply(&watcher::Event::Delete(b)),
            Update::Touched(vec![
                VsName::new("a", "new"),
                VsName::new("a", "old"),
                VsName::new("a", "third")
            ])
        );
        assert!(
            shared
                .read()
                .on_vip("10.0.0.1".parse().unwrap())
                .all(|(ns, _)| ns == "a")
        );
    }

    #[test]
    fn only_accepted_ones_count_as_used() {
        let shared = Shared::<VirtualServices>::default();
        let (mut m, _) = Mirror::new(shared.clone());
        m.apply(&watcher::Event::Init);
        m.apply(&watcher::Event::InitDone);
        let mut ok = vs("ok", "10.0.0.1", None);
        ok.status = Some(serde_yaml::from_str(
            "conditions: [{type: Accepted, status: 'True', reason: Accepted, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}]",
        ).unwrap());
        let mut refused = vs("refused", "10.0.0.2", None);
        refused.status = Some(serde_yaml::from_str(
            "conditions: [{type: Accepted, status: 'False', reason: NoPool, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}]",
        ).unwrap());
        m.apply(&watcher::Event::Apply(ok));
        m.apply(&watcher::Event::Apply(refused));
        m.apply(&watcher::Event::Apply(vs("new", "10.0.0.3", None)));
        let index = shared.read();
        let used: Vec<(String, IpAddr)> = index
            .accepted()
            .map(|(n, vip)| (n.to_string(), vip))
            .collect();
        assert_eq!(used, [("ns/ok".to_string(), "10.0.0.1".parse().unwrap())]);
    }

    #[test]
    fn usage_changes_only_with_what_the_usage_counts() {
        let shared = Shared::<VirtualServices>::default();
        let (mut m, _) = Mirror::new(shared.clone());
        m.apply(&watcher::Event::Init);
        m.apply(&watcher::Event::InitDone);
        let changes = || shared.read().usage_changes();
        let with = |vip: &str, conditions: &str| {
            let mut v = vs("web", vip, None);
            v.status = Some(serde_yaml::from_str(&format!("conditions: [{conditions}]")).unwrap());
            v
        };
        let accepted = "{type: Accepted, status: 'True', reason: Accepted, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}";
        let ready = "{type: Ready, status: 'False', reason: Pending, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}";
        let refused = "{type: Accepted, status: 'False', reason: NoPool, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}";
        m.apply(&watcher::Event::Apply(vs("web", "10.0.0.1", None)));
        assert_eq!(changes(), 0, "a new object not accepted yet counts nothing");
        m.apply(&watcher::Event::Apply(with("10.0.0.1", accepted)));
        assert_eq!(changes(), 1, "accepted");
        m.apply(&watcher::Event::Apply(with(
            "10.0.0.1",
            &format!("{accepted}, {ready}"),
        )));
        assert_eq!(changes(), 1, "another condition changes nothing counted");
        m.apply(&watcher::Event::Apply(with("10.0.0.2", accepted)));
        assert_eq!(changes(), 2, "an accepted one moved to another VIP");
        m.apply(&watcher::Event::Apply(with("10.0.0.2", refused)));
        assert_eq!(changes(), 3, "no longer accepted");
        m.apply(&watcher::Event::Apply(with("10.0.0.2", accepted)));
        m.apply(&watcher::Event::Delete(with("10.0.0.2", accepted)));
        assert_eq!(changes(), 5, "accepted again, then deleted");
    }

    #[test]
    fn namespaces_and_pools_touch_only_on_what_judgements_read() {
        let namespaces = Shared::<Namespaces>::default();
        let (mut m, _) = Mirror::new(namespaces.clone());
        m.apply(&watcher::Event::Init);
        m.apply(&watcher::Event::InitDone);
        let mut ns: Namespace = serde_yaml::from_str("metadata: {name: team-a}").unwrap();
        assert_eq!(
            m.apply(&watcher::Event::Apply(ns.clone())),
            Update::Touched(())
        );
        assert!(namespaces.read().labels("team-a").is_empty());
        ns.metadata.resource_version = Some("2".into());
        assert_eq!(m.apply(&watcher::Event::Apply(ns.clone())), Update::Nothing);
        ns.metadata.labels = Some([("tier".to_string(), "web".to_string())].into());
        assert_eq!(
            m.apply(&watcher::Event::Apply(ns.clone())),
            Update::Touched(())
        );
        assert_eq!(namespaces.read().labels("team-a")["tier"], "web");
        assert_eq!(m.apply(&watcher::Event::Delete(ns)), Update::Touched(()));
        assert!(namespaces.read().labels("team-a").is_empty());

        let pools = Shared::<Pools>::default();
        let (mut m, _) = Mirror::new(pools.clone());
        m.apply(&watcher::Event::Init);
        m.apply(&watcher::Event::InitDone);
        let mut p: VipPool =
            serde_yaml::from_str("metadata: {name: p}\nspec: {cidrs: [10.0.0.0/8]}").unwrap();
        assert_eq!(
            m.apply(&watcher::Event::Apply(p.clone())),
            Update::Touched(true)
        );
        p.status = Some(tunlb_api::VipPoolStatus { used: Some(3) });
        assert_eq!(
            m.apply(&watcher::Event::Apply(p.clone())),
            Update::Touched(false)
        );
        assert_eq!(pools.list()[0].status.as_ref().unwrap().used, Some(3));
        assert_eq!(m.apply(&watcher::Event::Apply(p.clone())), Update::Nothing);
        p.spec.namespaces = vec!["team-a".into()];
        assert_eq!(
            m.apply(&watcher::Event::Apply(p.clone())),
            Update::Touched(true)
        );
        assert_eq!(m.apply(&watcher::Event::Delete(p)), Update::Touched(true));
        assert!(pools.list().is_empty());
    }
}
