//! The VirtualService controller: watches VirtualServices, Nodes, Services,
//! EndpointSlices, VipPools and Namespaces, maps each change to the
//! VirtualServices it affects, and writes the operator-owned part of the
//! status by server-side apply; and keeps each VipPool's `status.used`.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tracing::{debug, info, warn};
use tunlb_api::{ElectionStatus, HealthState, VipPool, VipPoolStatus, VirtualService, validate};

use crate::cache::{
    self, Cache, Mirror, Namespaces, Nodes, Pools, ServiceKey, Services, Shared, Slices, Update,
    VirtualServices, VsName, keys_and_vip,
};
use crate::conditions;
use crate::decide::{self, Policy, View};
use crate::events::{self, Kind, Note, Publisher, Reporter};
use crate::judge::{self, Peer};
use crate::leader::{Fenced, Leadership};
use crate::observed::{self, Observed};
use crate::queue::{Next, Queue};
use crate::telemetry::Metrics;
use tunlb_api::election;

/// Reconciles in flight at once. Unbounded, a start with 10,000 VirtualServices
/// opened thousands of API connections at once (504s from the API server, lost
/// leadership); each reconcile is a few API round trips, so a few dozen keep
/// the API server busy without flooding it.
pub const MAX_CONCURRENT_RECONCILES: usize = 32;

/// How long shutdown waits for reconciles in flight.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Events being published at once, off the reconciles (see `publish_later`).
const EVENTS_IN_FLIGHT: usize = 8;

/// VipPools' usage is counted this long after a change, so that a burst of
/// changes (a start, a pool edit that re-judges everything) is counted once.
const USAGE_SETTLE: Duration = Duration::from_secs(1);
/// And at least this often, which also retries a failed write.
const USAGE_RECOUNT: Duration = Duration::from_secs(60);
/// Under a stream of changes (10,000 objects accepted during a start),
/// counts at most this often: each walks every accepted VirtualService.
const USAGE_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Finalizer held until every node has removed its programming.
pub const FINALIZER: &str = "tunlb.io/cleanup";
/// Field manager for the operator's status fields.
pub const MANAGER: &str = "tunlb-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no namespace or name")]
    MissingKey,
    /// A write was refused, or cut short, because this replica no longer leads.
    #[error("not the leader: write not sent")]
    NotLeading,
}

impl From<Fenced<kube::Error>> for Error {
    fn from(e: Fenced<kube::Error>) -> Self {
        match e {
            Fenced::NotLeading => Error::NotLeading,
            Fenced::Write(e) => Error::Kube(e),
        }
    }
}

impl Error {
    /// Short label for the errors metric.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => format!("api_{}", s.code),
            Error::Kube(_) => "kube".into(),
            Error::MissingKey => "missing_key".into(),
            Error::NotLeading => "not_leading".into(),
        }
    }
}

/// Each real server's health as this replica last wrote it, per object.
/// The cache can lag a status write by a watch event: a reconcile in that
/// gap would compare with the health from before the write and publish the
/// same transitions again. Cleared when this replica becomes leader, since
/// another replica may have written meanwhile.
#[derive(Default)]
pub struct WrittenHealth(Mutex<HashMap<VsName, Vec<(String, HealthState)>>>);

impl WrittenHealth {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<VsName, Vec<(String, HealthState)>>> {
        // The map holds plain values: one a panicking holder left is still whole.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, name: &VsName) -> Option<Vec<(String, HealthState)>> {
        self.map().get(name).cloned()
    }

    pub fn set(&self, name: VsName, health: Vec<(String, HealthState)>) {
        self.map().insert(name, health);
    }

    pub fn forget(&self, name: &VsName) {
        self.map().remove(name);
    }

    pub fn clear(&self) {
        self.map().clear();
    }
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub events: Publisher,
    pub event_slots: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    pub policy: Policy,
    pub finalizer_timeout: Duration,
    pub resync: Duration,
    pub nodes: Shared<Nodes>,
    pub services: Shared<Services>,
    pub slices: Shared<Slices>,
    pub pools: Shared<Pools>,
    pub namespaces: Shared<Namespaces>,
    /// The VirtualServices themselves, indexed by VIP and Service.
    pub index: Shared<VirtualServices>,
    /// Every write goes through its fence.
    pub leader: Leadership,
    /// True once every cache has its initial list.
    pub synced: watch::Receiver<bool>,
    /// Queues VirtualServices for a reconcile.
    pub queue: Arc<Queue>,
    pub written_health: Arc<WrittenHealth>,
    /// Wakes the VipPool usage count (see `maintain_pool_usage`).
    pub usage: Arc<Notify>,
    /// Virtual router ids of the director elections.
    pub elections: Mutex<election::Registry>,
}

/// The resync interval drawn from [3/4, 1] x `resync`: objects judged in one
/// burst (a start, a new leader) would otherwise resync in one burst forever.
fn jittered(resync: Duration) -> Duration {
    let r = RandomState::new().hash_one(Instant::now());
    let quarter = resync / 4;
    let spread = quarter.as_millis().max(1) as u64;
    resync - quarter + Duration::from_millis(r % spread)
}

/// The one writer of the status fields the operator owns (a
/// VirtualService's, a VipPool's `used`): a forced server-side apply as
/// MANAGER, through the leadership fence.
async fn write_status<K>(
    api: &Api<K>,
    fence: &Leadership,
    name: &str,
    status: &impl Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(MANAGER).force();
    fence
        .fence(api.patch_status(name, &params, &Patch::Apply(&body)))
        .await?;
    Ok(())
}

async fn publish(ctx: &Context, regarding: &ObjectReference, notes: &[Note]) {
    for note in notes {
        log_unpublished(ctx.events.publish(regarding, note).await, note);
    }
}

fn log_unpublished(result: Result<(), Fenced<kube::Error>>, note: &Note) {
    match result {
        Ok(()) => {}
        Err(Fenced::NotLeading) => {
            debug!(reason = %note.reason, "event not published: no longer leading")
        }
        Err(Fenced::Write(e)) => {
            warn!(error = %e, reason = %note.reason, "could not publish event")
        }
    }
}

/// Publishes on a task of its own, so that a reconcile's slot is free once
/// the status is written (an Event is one more API round trip). Beyond
/// EVENTS_IN_FLIGHT the reconcile waits, so Events cannot pile up.
async fn publish_later(ctx: &Context, regarding: ObjectReference, notes: Vec<Note>) {
    let Ok(permit) = ctx.event_slots.clone().acquire_owned().await else {
        return;
    };
    let events = ctx.events.clone();
    tokio::spawn(async move {
        for note in &notes {
            log_unpublished(events.publish(&regarding, note).await, note);
        }
        drop(permit);
    });
}

/// Others that share an IPVS service or, across namespaces, the VIP with
/// it: their conflict and VIP verdicts may change with ours.
fn retrigger_sharing(ctx: &Context, vs: &VirtualService) {
    let Some(me) = VsName::of(vs) else {
        return;
    };
    let (keys, vip) = keys_and_vip(vs);
    let others = ctx.index.read().related(&keys, vip, &me);
    ctx.queue.trigger_all(others);
}

/// Writes the finalizer list with the object's resourceVersion as a
/// precondition, so a concurrent change to the list fails (and is retried)
/// instead of being overwritten.
async fn set_finalizers(
    api: &Api<VirtualService>,
    fence: &Leadership,
    vs: &VirtualService,
    finalizers: Vec<String>,
) -> Result<VirtualService, Error> {
    let body = json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": vs.resource_version() }
    });
    let name = vs.name_any();
    let params = PatchParams::default();
    let patched = fence
        .fence(api.patch(&name, &params, &Patch::Merge(&body)))
        .await?;
    Ok(patched)
}

/// Returns the object as written.
async fn add_finalizer(
    api: &Api<VirtualService>,
    fence: &Leadership,
    vs: &VirtualService,
) -> Result<VirtualService, Error> {
    let mut list = vs.finalizers().to_vec();
    list.push(FINALIZER.to_string());
    set_finalizers(api, fence, vs, list).await
}

async fn remove_finalizer(
    api: &Api<VirtualService>,
    fence: &Leadership,
    vs: &VirtualService,
) -> Result<(), Error> {
    let list: Vec<String> = vs
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(api, fence, vs, list).await?;
    Ok(())
}

/// The others that bear on `vs`'s verdict (see `View::peers`): those on
/// its IPVS services, which it may clash with, and the oldest holder of
/// each namespace on its VIP, whose namespace the VIP belongs to. It costs
/// what `vs` touches, not every VirtualService on the VIP.
fn peers_of(
    vs: &VirtualService,
    ctx: &Context,
    pools: &[VipPool],
    namespaces: &Namespaces,
    nodes: &[crate::resolve::NodeInfo],
) -> Vec<Peer> {
    let Some(me) = VsName::of(vs) else {
        return Vec::new();
    };
    let as_peer = |o: &VirtualService| {
        // Agents stop programming a VirtualService once it is being deleted.
        if o.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let labels = namespaces.labels(o.metadata.namespace.as_deref().unwrap_or_default());
        decide::peer(o, &ctx.policy, pools, labels, nodes)
    };
    let (keys, vip) = keys_and_vip(vs);
    let index = ctx.index.read();
    let mut peers: Vec<Peer> = index
        .sharing(&keys, &me)
        .iter()
        .filter_map(|r| index.object(r))
        .filter_map(|o| as_peer(&o))
        .collect();
    // Most VIPs have one VirtualService: then there is no owner to look for.
    let Some(vip) = vip.filter(|v| index.others_on_vip(*v, &me)) else {
        return peers;
    };
    for (ns, names) in index.on_vip(vip) {
        if !judge::namespace_may_hold(pools, vip, ns, namespaces.labels(ns)) {
            continue;
        }
        let oldest = names
            .filter(|n| **n != me)
            .filter_map(|n| index.object(n))
            .find_map(|o| as_peer(&o));
        if let Some(p) = oldest
            && !peers.iter().any(|q| q.key() == p.key())
        {
            peers.push(p);
        }
    }
    peers
}

/// The decision for `vs` from the caches (no I/O). It costs what `vs`
/// touches: the others on its VIP, its Service and that Service's slices.
fn decide_from_caches(
    vs: &VirtualService,
    observed: &Observed,
    health_before: &[(String, HealthState)],
    ctx: &Context,
    ns: &str,
) -> decide::Decision {
    let nodes = ctx.nodes.infos();
    let pools = ctx.pools.list();
    let namespaces = ctx.namespaces.read();
    let peers = peers_of(vs, ctx, &pools, &namespaces, &nodes);
    let service_key = vs
        .spec
        .backends
        .service
        .as_ref()
        .map(|s| ServiceKey::new(ns, &s.name));
    let service = service_key
        .as_ref()
        .and_then(|k| ctx.services.read().get(k));
    let slices = service_key
        .as_ref()
        .map(|k| ctx.slices.read().for_service(k))
        .unwrap_or_default();
    let view = View {
        nodes: &nodes,
        pools: &pools,
        namespace_labels: namespaces.labels(ns),
        service: service.as_deref(),
        slices: slices.iter().map(AsRef::as_ref).collect(),
        peers: &peers,
        election: elect(vs, &nodes, &ctx.elections),
    };
    let now = Time(Timestamp::now());
    decide::decide(
        vs,
        &observed.conditions(),
        health_before,
        &view,
        &ctx.policy,
        &now,
    )
}

/// The election `vs`'s directors run, with its virtual router id from
/// `registry`. An object that does not validate or whose selector does not
/// parse has none (its conditions say why).
fn elect(
    vs: &VirtualService,
    nodes: &[crate::resolve::NodeInfo],
    registry: &Mutex<election::Registry>,
) -> Result<Option<ElectionStatus>, election::ElectionError> {
    let key = decide::object_key(vs);
    let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
    let group = match (validate(&vs.spec), judge::director_nodes(&vs.spec, nodes)) {
        (Ok(valid), Ok(directors)) => {
            election::wanted(valid.vip, &vs.spec, &directors)?.map(|g| (valid.vip, g))
        }
        _ => None,
    };
    let Some((vip, group)) = group else {
        registry.forget(&key);
        return Ok(None);
    };
    let prior = vs
        .status
        .as_ref()
        .and_then(|s| s.election.as_ref())
        .map(|e| e.virtual_router_id);
    registry.assign(&key, vip, group, prior).map(Some)
}

pub async fn reconcile(vs: Arc<VirtualService>, ctx: Arc<Context>) -> Result<Next, Error> {
    if !ctx.leader.is_leading() {
        // Followers keep their caches warm; a new leader reconciles everything.
        return Ok(Next::AwaitChange);
    }
    // Judged before the other caches are complete, a VirtualService would see
    // its Service or its peers as missing and get a wrong status, then a fix.
    if ctx.synced.clone().wait_for(|s| *s).await.is_err() {
        return Ok(Next::AwaitChange);
    }
    let _timer = ctx.metrics.reconcile_started();
    let ns = vs.namespace().ok_or(Error::MissingKey)?;
    let name = vs.metadata.name.clone().ok_or(Error::MissingKey)?;
    let api: Api<VirtualService> = Api::namespaced(ctx.client.clone(), &ns);

    if vs.metadata.deletion_timestamp.is_some() {
        return cleanup(&api, &vs, &ctx).await;
    }
    let (vs, observed) = if vs.finalizers().iter().any(|f| f == FINALIZER) {
        // The cached object has no conditions or realServers (see observed.rs).
        let observed = VsName::of(&vs).and_then(|n| ctx.index.read().observed(&n));
        (vs, observed.unwrap_or_else(|| Observed::of(None)))
    } else {
        // Judged right away with the object as written, rather than on the
        // watch event the patch causes: one queue wait less for a new object.
        let written = add_finalizer(&api, &ctx.leader, &vs).await?;
        let observed = Observed::of(written.status.as_ref());
        (Arc::new(written), observed)
    };

    let vs_name = VsName::of(&vs).ok_or(Error::MissingKey)?;
    let health_before = ctx
        .written_health
        .get(&vs_name)
        .unwrap_or_else(|| observed.health());
    let decision = decide_from_caches(&vs, &observed, &health_before, &ctx, &ns);
    if decision.status.election.is_none() {
        // Refused, or fewer than two directors: it holds no virtual router id.
        ctx.elections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(&decide::object_key(&vs));
    }

    let spec_changed =
        vs.status.as_ref().and_then(|s| s.observed_generation) != vs.metadata.generation;
    let first_verdict = !observed.has(conditions::ACCEPTED);
    if observed::digest(&decision.status) != observed.digest {
        write_status(&api, &ctx.leader, &name, &decision.status).await?;
        debug!(%ns, %name, accepted = decision.accepted, "status written");
    }
    let written: Vec<(String, HealthState)> = decision
        .status
        .servers()
        .iter()
        .filter_map(|r| Some((r.address.clone(), r.health.as_ref()?.state)))
        .collect();
    ctx.written_health.set(vs_name, written);
    let mut notes = events::for_transitions(&decision.transitions, first_verdict);
    notes.extend(events::for_health(&decision.health));
    let active = |s: Option<&tunlb_api::VirtualServiceStatus>| {
        s.and_then(|s| s.election.as_ref())
            .and_then(|e| e.active_director.clone())
    };
    let before = active(vs.status.as_ref());
    let after = decision
        .status
        .election
        .as_ref()
        .and_then(|e| e.active_director.clone());
    if decision.status.election.is_some() {
        notes.extend(events::for_active_director(
            before.as_deref(),
            after.as_deref(),
        ));
    }
    if !notes.is_empty() {
        publish_later(&ctx, vs.object_ref(&()), notes).await;
    }
    if spec_changed {
        retrigger_sharing(&ctx, &vs);
    }
    Ok(Next::Requeue(jittered(ctx.resync)))
}

async fn cleanup(
    api: &Api<VirtualService>,
    vs: &VirtualService,
    ctx: &Context,
) -> Result<Next, Error> {
    if !vs.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Next::AwaitChange);
    }
    // It no longer blocks younger VirtualServices on its VIP: re-judge them now,
    // while the store holds it with its deletionTimestamp. (Waiting for it to be
    // gone races with the watch: a re-judgement that still sees it finds the
    // conflict and nothing triggers another.)
    retrigger_sharing(ctx, vs);
    ctx.elections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .forget(&decide::object_key(vs));
    let remaining: Vec<String> = vs
        .status
        .as_ref()
        .map(|s| s.nodes.iter().map(|n| n.node_name.clone()).collect())
        .unwrap_or_default();
    let waited = vs
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| Timestamp::now().duration_since(t.0).as_secs())
        .unwrap_or(0);
    let timed_out = waited >= ctx.finalizer_timeout.as_secs() as i64;
    if !remaining.is_empty() && !timed_out {
        // The cache has no conditions or realServers (see observed.rs), which
        // this write restates: read them. Deletions are rare.
        let written = api.get(&vs.name_any()).await?.status.unwrap_or_default();
        let now = Time(Timestamp::now());
        if let Some(status) =
            decide::terminating(&written, &remaining, vs.metadata.generation, &now)
        {
            write_status(api, &ctx.leader, &vs.name_any(), &status).await?;
        }
        return Ok(Next::Requeue(Duration::from_secs(5)));
    }
    if timed_out && !remaining.is_empty() {
        let note = Note {
            kind: Kind::Warning,
            reason: "CleanupTimedOut".into(),
            note: format!(
                "nodes {} did not report removal within {}s; releasing the finalizer",
                remaining.join(", "),
                ctx.finalizer_timeout.as_secs()
            ),
            action: "Cleanup",
        };
        publish(ctx, &vs.object_ref(&()), &[note]).await;
        warn!(name = %vs.name_any(), nodes = ?remaining, "cleanup timed out");
    }
    remove_finalizer(api, &ctx.leader, vs).await?;
    if let Some(name) = VsName::of(vs) {
        ctx.written_health.forget(&name);
    }
    info!(name = %vs.name_any(), "released");
    retrigger_sharing(ctx, vs);
    Ok(Next::AwaitChange)
}

pub fn error_policy(name: &VsName, err: &Error, ctx: &Context) -> Next {
    if matches!(err, Error::NotLeading) {
        // Not a failure: a new term re-judges every object.
        debug!(%name, "reconcile stopped: no longer leading");
        return Next::AwaitChange;
    }
    warn!(%name, error = %err, "reconcile failed");
    ctx.metrics.reconcile_failed(&err.metric_label());
    Next::Requeue(Duration::from_secs(15))
}

/// Reconciles the object cached under `name`, if it is still there.
async fn reconcile_cached(name: VsName, ctx: Arc<Context>) -> Next {
    let Some(vs) = ctx.index.read().object(&name) else {
        debug!(%name, "gone before its reconcile");
        ctx.written_health.forget(&name);
        return Next::AwaitChange;
    };
    match reconcile(Arc::new(vs), ctx.clone()).await {
        Ok(next) => next,
        Err(e) => error_policy(&name, &e, &ctx),
    }
}

/// Ticks once each time this replica becomes leader.
fn on_leadership(rx: Leadership) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold((rx, false), |(mut rx, mut was)| async move {
        loop {
            if rx.changed().await.is_err() {
                return None;
            }
            let now = rx.is_leading();
            let fire = now && !was;
            was = now;
            if fire {
                return Some(((), (rx, was)));
            }
        }
    })
}

/// Passes readable VirtualServices on; sends unreadable ones to be reported.
fn keep_readable(
    ev: watcher::Event<DeserializeGuard<VirtualService>>,
    invalid: &mpsc::UnboundedSender<InvalidObject>,
) -> Option<watcher::Event<VirtualService>> {
    let pass = |g: DeserializeGuard<VirtualService>| match g.0 {
        Ok(vs) => Some(vs),
        Err(bad) => {
            let _ = invalid.send(bad);
            None
        }
    };
    match ev {
        watcher::Event::Apply(g) => pass(g).map(watcher::Event::Apply),
        watcher::Event::InitApply(g) => pass(g).map(watcher::Event::InitApply),
        watcher::Event::Delete(g) => g.0.ok().map(watcher::Event::Delete),
        watcher::Event::Init => Some(watcher::Event::Init),
        watcher::Event::InitDone => Some(watcher::Event::InitDone),
    }
}

/// Writes conditions that say why an unreadable VirtualService is not programmed.
async fn report_unreadable(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<InvalidObject>,
    leader: Leadership,
    events: Publisher,
) {
    while let Some(bad) = rx.recv().await {
        let (Some(ns), Some(name)) = (bad.metadata.namespace.clone(), bad.metadata.name.clone())
        else {
            continue;
        };
        let (ns, name): (String, String) = (ns, name);
        warn!(%ns, %name, error = %bad.error, "VirtualService cannot be read");
        if !leader.is_leading() {
            continue;
        }
        let status =
            decide::unreadable(&bad.error, bad.metadata.generation, &Time(Timestamp::now()));
        let api: Api<DeserializeGuard<VirtualService>> = Api::namespaced(client.clone(), &ns);
        let status_written = write_status(&api, &leader, &name, &status).await;
        // The API server refuses status writes to an object that fails the
        // current schema, so an Event is the one place left to say why.
        let reference = ObjectReference {
            api_version: Some(tunlb_api::API_VERSION.into()),
            kind: Some(tunlb_api::KIND.into()),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: bad.metadata.uid.clone(),
            ..Default::default()
        };
        let note = Note {
            kind: Kind::Warning,
            reason: "Unreadable".into(),
            note: decide::unreadable_message(&bad.error),
            action: "Reconcile",
        };
        match events.publish(&reference, &note).await {
            Ok(()) | Err(Fenced::NotLeading) => {}
            Err(Fenced::Write(e)) => {
                warn!(%ns, %name, error = %e, "cannot record an event for an unreadable VirtualService")
            }
        }
        if let Err(e) = status_written {
            debug!(%ns, %name, error = %e, "status of an unreadable VirtualService not written");
        }
    }
}

/// Each VipPool's `status.used` from the caches: the distinct VIPs of the
/// VirtualServices last seen Accepted that it admits. Where one pool holds
/// a VIP, an accepted VirtualService on it is that pool's; only where pools
/// overlap is the object read and judged again to find which one admits it.
/// The index lists a VIP's VirtualServices together, so the pools holding
/// it are found once per VIP (with CIDRs parsed once per count) and nothing
/// is kept per VIP.
fn pool_usage(ctx: &Context, pools: &[VipPool]) -> BTreeMap<String, i32> {
    let nodes = ctx.nodes.infos();
    let namespaces = ctx.namespaces.read();
    let index = ctx.index.read();
    fn name_of(p: &VipPool) -> &str {
        p.metadata.name.as_deref().unwrap_or_default()
    }
    let holders = judge::Holders::new(pools);
    let mut holding: (Option<IpAddr>, Vec<&VipPool>) = (None, Vec::new());
    let accepted = index.accepted().filter_map(|(name, vip)| {
        if holding.0 != Some(vip) {
            holding.0 = Some(vip);
            holding.1.clear();
            holding.1.extend(holders.of(vip));
        }
        match holding.1.as_slice() {
            [] => None,
            [only] => Some((vip, name_of(only))),
            _ => {
                let vs = index.object(name)?;
                let valid = validate(&vs.spec).ok()?;
                let ns = name.namespace();
                judge::admit(ns, namespaces.labels(ns), &vs.spec, &valid, pools, &nodes)
                    .ok()
                    .map(|p| (vip, name_of(p)))
            }
        }
    });
    judge::pool_usage(pools, accepted)
}

/// Keeps each VipPool's `status.used` (see `pool_usage`): counted a moment
/// after anything it depends on changes, and written by the leader where
/// it differs from what the pool says.
async fn maintain_pool_usage(ctx: Arc<Context>) {
    let api: Api<VipPool> = Api::all(ctx.client.clone());
    let mut last = Instant::now();
    loop {
        let _ = tokio::time::timeout(USAGE_RECOUNT, ctx.usage.notified()).await;
        tokio::time::sleep(USAGE_SETTLE.max(USAGE_MIN_INTERVAL.saturating_sub(last.elapsed())))
            .await;
        last = Instant::now();
        if !ctx.leader.is_leading() || !*ctx.synced.borrow() {
            continue;
        }
        let pools = ctx.pools.list();
        let used = pool_usage(&ctx, &pools);
        for pool in pools.iter() {
            let Some(name) = pool.metadata.name.as_deref() else {
                continue;
            };
            let want = used.get(name).copied().unwrap_or(0);
            if pool.status.as_ref().and_then(|s| s.used) == Some(want) {
                continue;
            }
            let status = VipPoolStatus { used: Some(want) };
            match write_status(&api, &ctx.leader, name, &status).await {
                Ok(()) => debug!(pool = name, used = want, "pool usage written"),
                Err(Error::NotLeading) => break,
                // Retried at the next count.
                Err(e) => warn!(pool = name, error = %e, "cannot write pool usage"),
            }
        }
    }
}

/// Settings for `run`.
pub struct Settings {
    pub policy: Policy,
    pub finalizer_timeout: Duration,
    pub resync: Duration,
    pub identity: String,
}

/// Feeds one kind's watcher into its cache, so lists and watches progress
/// on their own task whatever the reconcile backlog, and reports each change.
async fn follow<C: Cache>(
    kind: &'static str,
    events: impl Stream<Item = Result<watcher::Event<C::Obj>, watcher::Error>>,
    mut mirror: Mirror<C>,
    mut on_update: impl FnMut(Update<C::Touch>),
) {
    let mut events = std::pin::pin!(events);
    let mut listing = Instant::now();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(ev) => {
                log_list_progress(kind, &ev, &mut listing);
                on_update(mirror.apply(&ev));
            }
            Err(e) => warn!(kind, error = %e, "watch failed; retrying"),
        }
    }
}

fn log_list_progress<K>(kind: &str, ev: &watcher::Event<K>, started: &mut Instant) {
    match ev {
        watcher::Event::Init => *started = Instant::now(),
        watcher::Event::InitDone => {
            info!(
                kind,
                took_ms = started.elapsed().as_millis() as u64,
                "list complete"
            )
        }
        _ => {}
    }
}

/// The VirtualService watcher: fills the index (which holds the objects)
/// and queues each applied object.
async fn follow_virtual_services(
    events: impl Stream<Item = Result<watcher::Event<VirtualService>, watcher::Error>>,
    mut mirror: Mirror<VirtualServices>,
    index: Shared<VirtualServices>,
    queue: Arc<Queue>,
    usage: Arc<Notify>,
) {
    let mut events = std::pin::pin!(events);
    let mut listing = Instant::now();
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                warn!(kind = "VirtualService", error = %e, "watch failed; retrying");
                continue;
            }
        };
        log_list_progress("VirtualService", &ev, &mut listing);
        let usage_before = index.read().usage_changes();
        if let Update::Touched(others) = mirror.apply(&ev) {
            queue.trigger_all(others);
        }
        // Acceptance is read back from the statuses written; a complete
        // list replaces the index (and its count of changes).
        if matches!(ev, watcher::Event::InitDone) || index.read().usage_changes() != usage_before {
            usage.notify_one();
        }
        match &ev {
            // A list is in the index once complete: then all of it is judged.
            watcher::Event::InitDone => queue.trigger_all(index.read().names()),
            watcher::Event::Apply(vs) => queue.trigger_all(VsName::of(vs)),
            watcher::Event::Delete(vs) => {
                if let Some(name) = VsName::of(vs) {
                    queue.forget(&name);
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    leader: Leadership,
    ready: impl Fn(bool) + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Streaming lists: the initial list arrives as watch events, one object at
    // a time, instead of pages of 500 held (JSON and decoded) at once.
    let wc = watcher::Config::default().streaming_lists();
    let queue = Arc::new(Queue::default());
    let index = Shared::<VirtualServices>::default();
    let judge_all = {
        let (queue, index) = (queue.clone(), index.clone());
        move || queue.trigger_all(index.read().names())
    };
    let usage = Arc::new(Notify::new());

    // Deletions must trigger too: a deleted EndpointSlice, Service or Node
    // changes the real servers.
    let nodes = Shared::<Nodes>::default();
    let (mirror, nodes_synced) = Mirror::new(nodes.clone());
    let node_events =
        watcher(Api::<Node>::all(client.clone()), wc.clone()).backoff(tunlb_api::watch::backoff());
    let all = judge_all.clone();
    tokio::spawn(follow("Node", node_events, mirror, move |u| {
        // Node labels pick directors and InternalIPs match static backends:
        // any VirtualService may change.
        if u != Update::Nothing {
            all();
        }
    }));

    let services = Shared::<Services>::default();
    let (mirror, services_synced) = Mirror::new(services.clone());
    let svc_events = watcher(Api::<Service>::all(client.clone()), wc.clone())
        .backoff(tunlb_api::watch::backoff());
    let (all, to_one, users) = (judge_all.clone(), queue.clone(), index.clone());
    tokio::spawn(follow("Service", svc_events, mirror, move |u| match u {
        Update::Nothing => {}
        Update::Touched(key) => {
            let affected = users.read().using_service(&key);
            to_one.trigger_all(affected);
        }
        Update::Relisted => all(),
    }));

    let slices = Shared::<Slices>::default();
    let (mirror, slices_synced) = Mirror::new(slices.clone());
    let slice_events = watcher(Api::<EndpointSlice>::all(client.clone()), wc.clone())
        .backoff(tunlb_api::watch::backoff());
    let (all, to_one, users) = (judge_all.clone(), queue.clone(), index.clone());
    tokio::spawn(follow(
        "EndpointSlice",
        slice_events,
        mirror,
        move |u| match u {
            Update::Nothing => {}
            Update::Touched(keys) => {
                let users = users.read();
                for key in &keys {
                    to_one.trigger_all(users.using_service(key));
                }
            }
            Update::Relisted => all(),
        },
    ));

    // A pool's spec decides what it admits; every VirtualService may change.
    // Its status (`used`, written here) changes no verdict.
    let pools = Shared::<Pools>::default();
    let (mirror, pools_synced) = Mirror::new(pools.clone());
    let pool_events = watcher(Api::<VipPool>::all(client.clone()), wc.clone())
        .backoff(tunlb_api::watch::backoff())
        .modify(|p| cache::strip_meta(&mut p.metadata));
    let (all, recount) = (judge_all.clone(), usage.clone());
    tokio::spawn(follow("VipPool", pool_events, mirror, move |u| {
        match u {
            Update::Nothing => return,
            Update::Touched(false) => {}
            Update::Touched(true) | Update::Relisted => all(),
        }
        recount.notify_one();
    }));

    // Pools select namespaces by their labels: only those are kept.
    let namespaces = Shared::<Namespaces>::default();
    let (mirror, namespaces_synced) = Mirror::new(namespaces.clone());
    let ns_events = watcher(Api::<Namespace>::all(client.clone()), wc.clone())
        .backoff(tunlb_api::watch::backoff())
        .modify(|ns| {
            cache::strip_meta(&mut ns.metadata);
            ns.spec = None;
            ns.status = None;
        });
    let (all, recount) = (judge_all.clone(), usage.clone());
    tokio::spawn(follow("Namespace", ns_events, mirror, move |u| {
        if u != Update::Nothing {
            all();
            recount.notify_one();
        }
    }));

    // One object that no longer parses (stored under an older schema, edited
    // in etcd) must not stall the watch for all others: it is reported instead.
    let (invalid_tx, invalid_rx) = mpsc::unbounded_channel();
    let publisher = Publisher::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: settings.identity.clone(),
        },
        leader.clone(),
    );
    tokio::spawn(report_unreadable(
        client.clone(),
        invalid_rx,
        leader.clone(),
        publisher.clone(),
    ));
    let (mirror, vs_synced) = Mirror::new(index.clone());
    let guarded: Api<DeserializeGuard<VirtualService>> = Api::all(client.clone());
    let vs_events = watcher(guarded, wc)
        .backoff(tunlb_api::watch::backoff())
        .try_filter_map(move |ev| futures::future::ready(Ok(keep_readable(ev, &invalid_tx))))
        .modify(|vs| cache::strip_meta(&mut vs.metadata));
    tokio::spawn(follow_virtual_services(
        vs_events,
        mirror,
        index.clone(),
        queue.clone(),
        usage.clone(),
    ));

    // A new leader judges everything, from what the cluster holds.
    let written_health = Arc::new(WrittenHealth::default());
    let leadership = on_leadership(leader.clone());
    let (all, recount) = (judge_all.clone(), usage.clone());
    let forget_written = written_health.clone();
    tokio::spawn(async move {
        let mut leadership = std::pin::pin!(leadership);
        while leadership.next().await.is_some() {
            forget_written.clear();
            all();
            recount.notify_one();
        }
    });

    // Ready (and reconciling) once every cache has its initial list.
    let (synced_tx, synced) = watch::channel(false);
    tokio::spawn(async move {
        let mut ok = true;
        // Judged before the pools and namespaces are in, every VirtualService
        // would be refused for a moment.
        for mut rx in [
            nodes_synced,
            services_synced,
            slices_synced,
            pools_synced,
            namespaces_synced,
            vs_synced,
        ] {
            ok &= rx.wait_for(|s| *s).await.is_ok();
        }
        if ok {
            info!("caches synced");
        }
        synced_tx.send_replace(ok);
        ready(ok);
        // Held so that reconciles waiting for the caches never see it closed.
        synced_tx.closed().await;
    });

    let ctx = Arc::new(Context {
        client,
        events: publisher,
        event_slots: Arc::new(Semaphore::new(EVENTS_IN_FLIGHT)),
        metrics,
        policy: settings.policy,
        finalizer_timeout: settings.finalizer_timeout,
        resync: settings.resync,
        nodes,
        services,
        slices,
        pools,
        namespaces,
        index,
        leader,
        synced,
        queue: queue.clone(),
        written_health,
        usage,
        elections: Mutex::default(),
    });
    tokio::spawn(maintain_pool_usage(ctx.clone()));
    queue
        .run(
            MAX_CONCURRENT_RECONCILES,
            SHUTDOWN_DRAIN,
            |name| reconcile_cached(name, ctx.clone()),
            shutdown,
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_is_jittered_within_the_last_quarter() {
        let resync = Duration::from_secs(3600);
        let drawn: Vec<Duration> = (0..64).map(|_| jittered(resync)).collect();
        assert!(drawn.iter().all(|d| *d >= resync * 3 / 4 && *d <= resync));
        assert!(drawn.iter().any(|d| *d != drawn[0]), "{drawn:?}");
    }
}
