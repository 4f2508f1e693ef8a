//! The VirtualService controller: watches VirtualServices, Nodes, Services
//! and EndpointSlices, maps each change to the VirtualServices it affects,
//! and writes the operator-owned part of the status by server-side apply.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use tunlb_api::VirtualService;

use crate::conditions::{self, Want};
use crate::decide::{self, OperatorStatus, Policy, View};
use crate::resolve::{NodeInfo, slice_service_name};
use crate::telemetry::Metrics;

/// Reconciles in flight at once. Unbounded, a start with 10,000 VirtualServices
/// opened thousands of API connections at once (504s from the API server, lost
/// leadership); each reconcile is a few API round trips, so a few dozen keep
/// the API server busy without flooding it.
pub const MAX_CONCURRENT_RECONCILES: u16 = 32;

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
}

impl Error {
    /// Short label for the errors metric.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => format!("api_{}", s.code),
            Error::Kube(_) => "kube".into(),
            Error::MissingKey => "missing_key".into(),
        }
    }
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub policy: Policy,
    pub finalizer_timeout: Duration,
    pub resync: Duration,
    pub nodes: Store<Node>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub virtual_services: Store<VirtualService>,
    pub leader: watch::Receiver<bool>,
    /// Re-queues VirtualServices whose judgement depends on another one.
    pub retrigger: mpsc::UnboundedSender<ObjectRef<VirtualService>>,
}

fn node_infos(store: &Store<Node>) -> Vec<NodeInfo> {
    store
        .state()
        .iter()
        .filter_map(|n| NodeInfo::from_node(n))
        .collect()
}

/// The VIP as `validate` parses it (so equal addresses compare equal however written).
fn parse_vip(vip: &str) -> Option<std::net::IpAddr> {
    vip.trim().parse().ok()
}

/// Node changes matter only through labels and InternalIPs; status heartbeats
/// must not cause work.
fn node_fingerprint(node: &Node) -> Option<u64> {
    let mut h = DefaultHasher::new();
    node.metadata.labels.hash(&mut h);
    if let Some(info) = NodeInfo::from_node(node) {
        info.internal_ips.hash(&mut h);
    }
    Some(h.finish())
}

async fn patch_status(
    api: &Api<VirtualService>,
    name: &str,
    status: &OperatorStatus,
) -> Result<(), Error> {
    let body = json!({
        "apiVersion": "tunlb.io/v1alpha1",
        "kind": "VirtualService",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

async fn publish(ctx: &Context, vs: &VirtualService, transitions: &[Want]) {
    let reference = vs.object_ref(&());
    for t in transitions {
        // "Good" means True for most conditions, False for Conflict/Stalled/Reconciling.
        let bad_when_true = matches!(t.type_, conditions::CONFLICT | conditions::STALLED);
        let good = t.status != bad_when_true;
        // Reconciling/Stalled restate Ready for kstatus tools; one event per change is enough.
        if t.type_ == conditions::RECONCILING || t.type_ == conditions::STALLED {
            continue;
        }
        let event = Event {
            type_: if good {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: t.reason.clone(),
            note: Some(format!(
                "{} is {}: {}",
                t.type_,
                if t.status { "True" } else { "False" },
                t.message
            )),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, "could not publish event");
        }
    }
}

/// Others that share this VIP: their conflict verdicts may change with ours.
fn retrigger_same_vip(ctx: &Context, vs: &VirtualService) {
    for other in ctx.virtual_services.state() {
        if other.spec.vip == vs.spec.vip && other.metadata.uid != vs.metadata.uid {
            let _ = ctx.retrigger.send(ObjectRef::from_obj(other.as_ref()));
        }
    }
}

/// Writes the finalizer list with the object's resourceVersion as a
/// precondition, so a concurrent change to the list fails (and is retried)
/// instead of being overwritten.
async fn set_finalizers(
    api: &Api<VirtualService>,
    vs: &VirtualService,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let body = json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": vs.resource_version() }
    });
    api.patch(
        &vs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&body),
    )
    .await?;
    Ok(())
}

async fn add_finalizer(api: &Api<VirtualService>, vs: &VirtualService) -> Result<(), Error> {
    let mut list = vs.finalizers().to_vec();
    list.push(FINALIZER.to_string());
    set_finalizers(api, vs, list).await
}

async fn remove_finalizer(api: &Api<VirtualService>, vs: &VirtualService) -> Result<(), Error> {
    let list: Vec<String> = vs
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(api, vs, list).await
}

/// The decision for `vs` from the caches (no I/O).
fn decide_from_caches(vs: &VirtualService, ctx: &Context, ns: &str) -> decide::Decision {
    let nodes = node_infos(&ctx.nodes);
    let all_vs = ctx.virtual_services.state();
    // Only a VirtualService on the same VIP can clash (IPVS keys include it):
    // comparing the parsed VIP first keeps `decide::peer` (a full validation)
    // off the other N-1 objects, which made each reconcile O(N) validations.
    let my_vip = parse_vip(&vs.spec.vip);
    let peers: Vec<_> = all_vs
        .iter()
        .filter(|o| my_vip.is_some() && parse_vip(&o.spec.vip) == my_vip)
        .filter(|o| o.metadata.uid != vs.metadata.uid)
        // Agents stop programming a VirtualService once it is being deleted.
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .filter_map(|o| decide::peer(o, &ctx.policy, &nodes))
        .collect();
    let service_name = vs.spec.backends.service.as_ref().map(|s| s.name.clone());
    let service = service_name
        .as_ref()
        .and_then(|n| ctx.services.get(&ObjectRef::new(n).within(ns)));
    // Snapshot the slice cache only when a Service is referenced.
    let slices = match &service_name {
        Some(_) => ctx.slices.state(),
        None => Vec::new(),
    };
    let my_slices: Vec<&EndpointSlice> = match &service_name {
        Some(svc) => slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && slice_service_name(s) == Some(svc.as_str())
            })
            .map(|s| s.as_ref())
            .collect(),
        None => Vec::new(),
    };
    let view = View {
        nodes: &nodes,
        service: service.as_deref(),
        slices: my_slices,
        peers: &peers,
    };
    let now = Time(Timestamp::now());
    decide::decide(vs, &view, &ctx.policy, &now)
}

pub async fn reconcile(vs: Arc<VirtualService>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !*ctx.leader.borrow() {
        // Followers keep their caches warm; a new leader reconciles everything.
        return Ok(Action::await_change());
    }
    let _timer = ctx.metrics.reconcile_started();
    let ns = vs.namespace().ok_or(Error::MissingKey)?;
    let name = vs.metadata.name.clone().ok_or(Error::MissingKey)?;
    let api: Api<VirtualService> = Api::namespaced(ctx.client.clone(), &ns);

    if vs.metadata.deletion_timestamp.is_some() {
        return cleanup(&api, &vs, &ctx).await;
    }
    if !vs.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(&api, &vs).await?;
        // The patch produces a new event; judge the object then.
        return Ok(Action::await_change());
    }

    // Decided in a plain function so that the cache snapshots (O(objects) each)
    // are dropped before the API calls below: with many reconciles waiting on
    // the API server at once, holding them made memory grow with N x in-flight.
    let decision = decide_from_caches(&vs, &ctx, &ns);

    let spec_changed =
        vs.status.as_ref().and_then(|s| s.observed_generation) != vs.metadata.generation;
    if !decide::unchanged(&vs, &decision.status) {
        patch_status(&api, &name, &decision.status).await?;
        debug!(%ns, %name, accepted = decision.accepted, "status written");
    }
    publish(&ctx, &vs, &decision.transitions).await;
    if spec_changed {
        retrigger_same_vip(&ctx, &vs);
    }
    Ok(Action::requeue(ctx.resync))
}

async fn cleanup(
    api: &Api<VirtualService>,
    vs: &VirtualService,
    ctx: &Context,
) -> Result<Action, Error> {
    if !vs.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    // It no longer blocks younger VirtualServices on its VIP: re-judge them now,
    // while the store holds it with its deletionTimestamp. (Waiting for it to be
    // gone races with the watch: a re-judgement that still sees it finds the
    // conflict and nothing triggers another.)
    retrigger_same_vip(ctx, vs);
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
        let msg = format!(
            "waiting for nodes to remove their programming: {}",
            remaining.join(", ")
        );
        let status = vs.status.clone().unwrap_or_default();
        let existing = status.conditions.as_slice();
        let wants = [
            Want::new(conditions::READY, false, "Terminating", msg.clone()),
            Want::new(conditions::RECONCILING, true, "Terminating", msg.clone()),
            Want::new(conditions::STALLED, false, "Terminating", ""),
        ];
        let (merged, transitions) = conditions::merge(
            existing,
            &wants,
            vs.metadata.generation,
            &Time(Timestamp::now()),
        );
        if !transitions.is_empty()
            || conditions::get(existing, conditions::READY).map(|c| &c.message) != Some(&msg)
        {
            // An apply that omits a field this manager owns removes it: restate
            // the rest of the status (realServers, Accepted...) as it was.
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
            let mut body = json!({
                "apiVersion": "tunlb.io/v1alpha1",
                "kind": "VirtualService",
                "status": {
                    "conditions": conds,
                    "realServers": status.real_servers,
                },
            });
            if let Some(g) = status.observed_generation {
                body["status"]["observedGeneration"] = json!(g);
            }
            if let Some(n) = status.real_server_count {
                body["status"]["realServerCount"] = json!(n);
            }
            api.patch_status(
                &vs.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        }
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    if timed_out && !remaining.is_empty() {
        let event = Event {
            type_: EventType::Warning,
            reason: "CleanupTimedOut".into(),
            note: Some(format!(
                "nodes {} did not report removal within {}s; releasing the finalizer",
                remaining.join(", "),
                ctx.finalizer_timeout.as_secs()
            )),
            action: "Cleanup".into(),
            secondary: None,
        };
        let _ = ctx.recorder.publish(&event, &vs.object_ref(&())).await;
        warn!(name = %vs.name_any(), nodes = ?remaining, "cleanup timed out");
    }
    remove_finalizer(api, vs).await?;
    info!(name = %vs.name_any(), "released");
    retrigger_same_vip(ctx, vs);
    Ok(Action::await_change())
}

pub fn error_policy(_vs: Arc<VirtualService>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(error = %err, "reconcile failed");
    ctx.metrics.reconcile_failed(&err.metric_label());
    Action::requeue(Duration::from_secs(15))
}

/// Ticks once each time this replica becomes leader.
fn on_leadership(rx: watch::Receiver<bool>) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold((rx, false), |(mut rx, mut was)| async move {
        loop {
            if rx.changed().await.is_err() {
                return None;
            }
            let now = *rx.borrow();
            let fire = now && !was;
            was = now;
            if fire {
                return Some(((), (rx, was)));
            }
        }
    })
}

/// Waits until `store` has its initial list; false if its writer went away first.
///
/// `Store::wait_until_ready` alone can hang: kube-runtime's `DelayedInit` keeps a
/// single waker, and the Controller waits on the VirtualService store as well, so
/// of two concurrent waiters only the one that polled last is woken. Polling again
/// now and then picks the value up whichever waiter was woken.
async fn store_synced<K>(store: &Store<K>) -> bool
where
    K: 'static + Clone + kube::runtime::reflector::Lookup,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(res) =
            tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await
        {
            return res.is_ok();
        }
    }
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
    leader: watch::Receiver<bool>,
    recorder: Recorder,
) {
    while let Some(bad) = rx.recv().await {
        let (Some(ns), Some(name)) = (bad.metadata.namespace.clone(), bad.metadata.name.clone())
        else {
            continue;
        };
        let (ns, name): (String, String) = (ns, name);
        warn!(%ns, %name, error = %bad.error, "VirtualService cannot be read");
        if !*leader.borrow() {
            continue;
        }
        let msg = format!("cannot read this VirtualService: {}", bad.error);
        let now = Time(Timestamp::now());
        let wants = [
            Want::new(conditions::RESOLVED, false, "Unreadable", msg.clone()),
            Want::new(conditions::ACCEPTED, false, "Unreadable", msg.clone()),
            Want::new(conditions::READY, false, "Unreadable", msg.clone()),
            Want::new(
                conditions::RECONCILING,
                false,
                "Unreadable",
                "waiting for the VirtualService to be fixed",
            ),
            Want::new(conditions::STALLED, true, "Unreadable", msg),
        ];
        let (conds, _) = conditions::merge(&[], &wants, bad.metadata.generation, &now);
        let body = json!({
            "apiVersion": "tunlb.io/v1alpha1",
            "kind": "VirtualService",
            "status": { "observedGeneration": bad.metadata.generation, "conditions": conds },
        });
        let api: Api<DeserializeGuard<VirtualService>> = Api::namespaced(client.clone(), &ns);
        let status_written = api
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await;
        // The API server refuses status writes to an object that fails the
        // current schema, so an Event is the one place left to say why.
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("tunlb.io/v1alpha1".into()),
            kind: Some("VirtualService".into()),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: bad.metadata.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "Unreadable".into(),
            note: Some(format!("cannot read this VirtualService: {}", bad.error)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(%ns, %name, error = %e, "cannot record an event for an unreadable VirtualService");
        }
        if let Err(e) = status_written {
            debug!(%ns, %name, error = %e, "status of an unreadable VirtualService not written");
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

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    leader: watch::Receiver<bool>,
    ready: impl Fn(bool) + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let wc = watcher::Config::default();

    // Deletions must trigger too (touched, not applied, objects): a deleted
    // EndpointSlice, Service or Node changes the real servers.
    let (nodes, node_writer) = reflector::store::<Node>();
    let node_present = nodes.clone();
    let node_stream = watcher(Api::<Node>::all(client.clone()), wc.clone())
        .default_backoff()
        .modify(|n| n.managed_fields_mut().clear())
        .reflect(node_writer)
        .touched_objects()
        // A deleted Node has left the store by now, which changes its fingerprint.
        .predicate_filter(
            move |n: &Node| {
                let present = node_present.get(&ObjectRef::from_obj(n)).is_some();
                node_fingerprint(n).map(|h| h ^ u64::from(present))
            },
            Default::default(),
        );
    let (services, svc_writer) = reflector::store::<Service>();
    let svc_stream = watcher(Api::<Service>::all(client.clone()), wc.clone())
        .default_backoff()
        .modify(|s| s.managed_fields_mut().clear())
        .reflect(svc_writer)
        .touched_objects();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let slice_stream = watcher(Api::<EndpointSlice>::all(client.clone()), wc.clone())
        .default_backoff()
        .modify(|s| s.managed_fields_mut().clear())
        .reflect(slice_writer)
        .touched_objects();

    // Our own VirtualService reflector, so that managedFields (several kB per
    // object once the status has conditions) stay out of the cache, as for the
    // other kinds.
    let (vs_store, vs_writer) = reflector::store::<VirtualService>();
    // One object that no longer parses (stored under an older schema, edited
    // in etcd) must not stall the watch for all others: it is reported instead.
    let (invalid_tx, invalid_rx) = mpsc::unbounded_channel();
    tokio::spawn(report_unreadable(
        client.clone(),
        invalid_rx,
        leader.clone(),
        Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(settings.identity.clone()),
            },
        ),
    ));
    let guarded: Api<DeserializeGuard<VirtualService>> = Api::all(client.clone());
    let vs_stream = watcher(guarded, wc)
        .default_backoff()
        .try_filter_map(move |ev| futures::future::ready(Ok(keep_readable(ev, &invalid_tx))))
        .modify(|vs| vs.managed_fields_mut().clear())
        .reflect(vs_writer)
        .applied_objects();
    let controller = Controller::for_stream(vs_stream, vs_store.clone())
        .with_config(ControllerConfig::default().concurrency(MAX_CONCURRENT_RECONCILES));
    let (retrigger, retrigger_rx) = mpsc::unbounded_channel();
    let retrigger_stream = futures::stream::unfold(retrigger_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });

    let for_slices = vs_store.clone();
    let for_services = vs_store.clone();
    let for_nodes = vs_store.clone();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client,
        recorder,
        metrics,
        policy: settings.policy,
        finalizer_timeout: settings.finalizer_timeout,
        resync: settings.resync,
        nodes: nodes.clone(),
        services: services.clone(),
        slices: slices.clone(),
        virtual_services: vs_store.clone(),
        leader: leader.clone(),
        retrigger,
    });

    // Ready once every cache has its initial list.
    let caches = (
        nodes.clone(),
        services.clone(),
        slices.clone(),
        vs_store.clone(),
    );
    tokio::spawn(async move {
        let (n, s, e, v) = caches;
        let synced = store_synced(&n).await
            && store_synced(&s).await
            && store_synced(&e).await
            && store_synced(&v).await;
        ready(synced);
    });

    controller
        .watches_stream(slice_stream, move |slice: EndpointSlice| {
            let ns = slice.metadata.namespace.clone();
            let svc = slice_service_name(&slice).map(str::to_string);
            for_slices
                .state()
                .into_iter()
                .filter(move |vs| {
                    vs.metadata.namespace == ns
                        && vs.spec.backends.service.as_ref().map(|s| Some(&s.name))
                            == Some(svc.as_ref())
                })
                .map(|vs| ObjectRef::from_obj(vs.as_ref()))
        })
        .watches_stream(svc_stream, move |svc: Service| {
            let ns = svc.metadata.namespace.clone();
            let name = svc.metadata.name.clone();
            for_services
                .state()
                .into_iter()
                .filter(move |vs| {
                    vs.metadata.namespace == ns
                        && vs.spec.backends.service.as_ref().map(|s| &s.name) == name.as_ref()
                })
                .map(|vs| ObjectRef::from_obj(vs.as_ref()))
        })
        .watches_stream(node_stream, move |_node: Node| {
            // Node labels pick directors and InternalIPs match static backends: any VirtualService may change.
            for_nodes
                .state()
                .into_iter()
                .map(|vs| ObjectRef::from_obj(vs.as_ref()))
        })
        .reconcile_on(retrigger_stream)
        .reconcile_all_on(on_leadership(leader))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_fingerprint_ignores_heartbeats() {
        let a: Node = serde_yaml::from_str(
            "metadata: {name: n1, labels: {a: b}}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}], conditions: [{type: Ready, status: 'True', lastHeartbeatTime: '2026-01-01T00:00:00Z'}]}",
        )
        .unwrap();
        let mut b = a.clone();
        if let Some(c) = b.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].last_heartbeat_time = None;
        }
        assert_eq!(node_fingerprint(&a), node_fingerprint(&b));
        let mut c = a.clone();
        c.metadata.labels = Some([("tunlb.io/director".to_string(), "true".to_string())].into());
        assert_ne!(node_fingerprint(&a), node_fingerprint(&c));
    }
}
