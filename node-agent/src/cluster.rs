//! Kubernetes mode (`tunlb-agent run`): watch VirtualServices, this node's
//! Node object, the VipPools and the Namespaces' labels, program the kernel
//! with what the pools admit, and report this node's entry in each
//! VirtualService's `status.nodes` by server-side apply.
//!
//! Bursts of changes are coalesced, and a pass reads only the IPVS
//! services whose wanted state changed; a periodic resync repairs drift,
//! reading IPVS services in turns (see `dataplane::ipvs::Reach`). If the
//! API server is unreachable the last known state stays programmed: nothing
//! is ever flushed, and shutdown leaves the kernel as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};
use tunlb_api::plan::{IpvsKey, IpvsService, NodeIdentity, ObjectKey};
use tunlb_api::{
    ElectionStatus, NodeStatus, RealServer, VipPool, VirtualService, VirtualServiceSpec,
};

use crate::admission::{Object, Refused};
use crate::dataplane::Dataplane;
use crate::metrics::AgentMetrics;
use crate::standalone::{object_key, store_key};
use crate::state::{AcceptedObject, Journal, OwnedState, StateLock};
use crate::wake::Relevant;

/// How often a pass looks at draining real servers.
const DRAIN_POLL: Duration = Duration::from_secs(2);

/// Status writes in flight at once.
const STATUS_WRITES_IN_FLIGHT: usize = 8;

/// Settings for `run`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub state_dir: PathBuf,
    pub resync: Duration,
    pub debounce: Duration,
    /// The running kernel's (major, minor), read once at start.
    pub kernel: Option<(u32, u32)>,
    /// Health probes in flight at once.
    pub max_probes_in_flight: usize,
    /// The first firewall mark of the probe services.
    pub probe_mark_base: u32,
    /// IPVS connection-sync daemons while this node directs.
    pub ipvs_sync: Option<crate::dataplane::sync_daemon::Settings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Links(#[from] crate::link::LinkError),
    #[error(transparent)]
    Thread(#[from] crate::vrrp::thread::ThreadError),
}

/// A VirtualService as this node will program it: the spec and real servers
/// of the newest generation the operator accepted.
#[derive(Debug, Clone, PartialEq)]
struct Accepted {
    generation: i64,
    spec: VirtualServiceSpec,
    real_servers: Vec<RealServer>,
    /// The director election, without its active director (which the
    /// agents' own reports set).
    election: Option<ElectionStatus>,
    /// Creation order for conflict resolution.
    age: (i64, ObjectKey),
}

fn is_true(vs: &VirtualService, type_: &str) -> bool {
    vs.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    })
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The field manager of this node's status entry.
pub fn field_manager(node: &str) -> String {
    // Field managers are limited to 128 characters.
    let mut m = format!("tunlb-agent/{node}");
    m.truncate(128);
    m
}

/// What the reconcile loop remembers between passes.
#[derive(Default)]
struct Memory {
    accepted: BTreeMap<ObjectKey, Accepted>,
    /// Keys whose accepted generation changed since it was last put into the state.
    unsaved: BTreeSet<ObjectKey>,
    /// The last entry reported per object, to write only changes.
    reported: BTreeMap<ObjectKey, NodeStatus>,
    /// Fingerprint of the state last saved, so a quiet pass writes no file.
    saved: Option<u64>,
    /// The objects the last pass refused, so each refusal is logged once.
    refused: BTreeMap<ObjectKey, Refused>,
    /// Objects that cannot be read, with their generation and why.
    invalid: BTreeMap<ObjectKey, (Option<i64>, String)>,
    /// Keys whose accepted object changed since the plan last took them in.
    replan: BTreeSet<ObjectKey>,
    /// The objects whose entries carry more than their plan (errors,
    /// drains, elections, refusals, ...) as of the last pass: a pass that
    /// computes only some entries computes these, as they may have moved.
    sticky: BTreeSet<ObjectKey>,
    /// The last pass's node-level problems, which every entry carries.
    node_errors: Option<Vec<String>>,
    /// Entries whose write failed, for the next pass.
    retry: BTreeSet<ObjectKey>,
}

impl Memory {
    /// Starts from the generations accepted before a restart: until the
    /// operator judges an object's newest edit, its last accepted one is
    /// what this node programs.
    fn restore(state: &OwnedState) -> Memory {
        let mut memory = Memory::default();
        for (skey, stored) in &state.accepted {
            let key = object_key(skey);
            let parsed = serde_json::from_str::<VirtualServiceSpec>(stored.spec.get())
                .and_then(|spec| {
                    serde_json::from_str::<Vec<RealServer>>(stored.real_servers.get())
                        .map(|rs| (spec, rs))
                })
                .and_then(|(spec, rs)| {
                    stored
                        .election
                        .as_ref()
                        .map(|e| serde_json::from_str::<ElectionStatus>(e.get()))
                        .transpose()
                        .map(|e| (spec, rs, e))
                });
            match parsed {
                Ok((spec, real_servers, election)) => {
                    memory.accepted.insert(
                        key.clone(),
                        Accepted {
                            generation: stored.generation,
                            spec,
                            real_servers,
                            election,
                            age: (stored.created, key),
                        },
                    );
                }
                Err(e) => {
                    warn!(object = %key, error = %e, "stored accepted generation cannot be read; waiting for the operator's");
                    memory.unsaved.insert(key);
                }
            }
        }
        memory
    }

    /// Puts the accepted generations that changed into `state`.
    fn persist(&mut self, state: &mut OwnedState) {
        for key in std::mem::take(&mut self.unsaved) {
            let skey = store_key(&key);
            let Some(a) = self.accepted.get(&key) else {
                state.accepted.remove(&skey);
                continue;
            };
            let stored = serde_json::value::to_raw_value(&a.spec)
                .and_then(|spec| {
                    serde_json::value::to_raw_value(&a.real_servers).map(|rs| (spec, rs))
                })
                .and_then(|(spec, rs)| {
                    a.election
                        .as_ref()
                        .map(serde_json::value::to_raw_value)
                        .transpose()
                        .map(|e| (spec, rs, e))
                });
            match stored {
                Ok((spec, real_servers, election)) => {
                    state.accepted.insert(
                        skey,
                        AcceptedObject {
                            generation: a.generation,
                            created: a.age.0,
                            spec,
                            real_servers,
                            election,
                        },
                    );
                }
                Err(e) => {
                    // A restart before the next acceptance programs nothing of it.
                    warn!(object = %key, error = %e, "cannot store the accepted generation");
                    state.accepted.remove(&skey);
                }
            }
        }
    }

    fn accept(&mut self, key: ObjectKey, accepted: Accepted) {
        if self.accepted.get(&key) != Some(&accepted) {
            self.unsaved.insert(key.clone());
            self.replan.insert(key.clone());
            self.accepted.insert(key, accepted);
        }
    }

    fn forget(&mut self, key: &ObjectKey) {
        if self.accepted.remove(key).is_some() {
            self.unsaved.insert(key.clone());
            self.replan.insert(key.clone());
        }
    }

    /// Brings `planned` up to date with the accepted objects; `replan`:
    /// those changed since the last update, or `None` for any.
    fn plan(
        &self,
        planned: &mut crate::admission::Incremental,
        node: &NodeIdentity,
        pools: &[VipPool],
        namespaces: &BTreeMap<&str, &BTreeMap<String, String>>,
        replan: Option<&BTreeSet<ObjectKey>>,
    ) -> crate::admission::Planned {
        fn object<'a>((key, a): (&'a ObjectKey, &'a Accepted)) -> Object<'a> {
            Object {
                key,
                generation: a.generation,
                spec: &a.spec,
                real_servers: &a.real_servers,
                age: &a.age,
            }
        }
        planned.update(
            node,
            pools,
            namespaces,
            replan,
            || {
                let mut ordered: Vec<Object<'_>> = self.accepted.iter().map(object).collect();
                ordered.sort_by(|a, b| a.age.cmp(b.age));
                ordered
            },
            |k| self.accepted.get_key_value(k).map(object),
        )
    }

    /// Refreshes `accepted` and `invalid` from every object in the store.
    fn refresh(&mut self, objects: &[Arc<DeserializeGuard<VirtualService>>]) {
        let mut present = BTreeSet::new();
        for guard in objects {
            let key = match &guard.0 {
                Ok(vs) => key_of(&vs.metadata),
                Err(bad) => key_of(&bad.metadata),
            };
            self.refresh_one(&key, Some(guard));
            present.insert(key);
        }
        let gone: Vec<ObjectKey> = self
            .accepted
            .keys()
            .chain(self.invalid.keys())
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.refresh_one(&k, None);
        }
    }

    /// Refreshes the objects `keys` names from the store.
    fn refresh_some(
        &mut self,
        store: &Store<DeserializeGuard<VirtualService>>,
        keys: &BTreeSet<ObjectKey>,
    ) {
        for key in keys {
            let at = reflector::ObjectRef::new(&key.name).within(&key.namespace);
            let guard = store.get(&at);
            self.refresh_one(key, guard.as_deref());
        }
    }

    /// Takes in what the store holds of `key` now (`None`: nothing).
    fn refresh_one(&mut self, key: &ObjectKey, guard: Option<&DeserializeGuard<VirtualService>>) {
        let vs = match guard.map(|g| &g.0) {
            None => {
                self.invalid.remove(key);
                self.forget(key);
                return;
            }
            Some(Err(bad)) => {
                self.invalid.insert(
                    key.clone(),
                    (
                        bad.metadata.generation,
                        format!("cannot read this VirtualService: {}", bad.error),
                    ),
                );
                return;
            }
            Some(Ok(vs)) => vs,
        };
        self.invalid.remove(key);
        if vs.metadata.deletion_timestamp.is_some() {
            // Being deleted: stop programming it, so the finalizer can complete.
            self.forget(key);
            return;
        }
        let status = vs.status.as_ref();
        let judged = status.and_then(|s| s.observed_generation) == vs.metadata.generation;
        if judged && is_true(vs, "Accepted") {
            let creation = vs
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(i64::MAX);
            let generation = vs.metadata.generation.unwrap_or(0);
            let real_servers = status.map(|s| s.real_servers.as_slice()).unwrap_or(&[]);
            let election = status
                .and_then(|s| s.election.as_ref())
                .map(ElectionStatus::without_active);
            // Compared in place: a pass over 10,000 unchanged objects
            // copies none of them.
            let same = self.accepted.get(key).is_some_and(|a| {
                a.generation == generation
                    && a.age.0 == creation
                    && a.real_servers == real_servers
                    && a.election == election
                    && a.spec == vs.spec
            });
            if !same {
                self.accept(
                    key.clone(),
                    Accepted {
                        generation,
                        spec: vs.spec.clone(),
                        real_servers: real_servers.to_vec(),
                        election,
                        age: (creation, key.clone()),
                    },
                );
            }
        } else if judged {
            // The operator refused the current generation: program nothing of it.
            self.forget(key);
        }
        // Not judged yet: keep programming the last accepted generation.
    }
}

/// How often a pass reads every VirtualService in the store again rather
/// than those its watch events named (a safety net, like kube-proxy's
/// periodic full sync).
const WHOLE_PASS_EVERY: Duration = Duration::from_secs(3600);

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<AgentMetrics>,
    probe_metrics: Arc<crate::health::ProbeMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ClusterError> {
    let _lock = StateLock::acquire(&settings.state_dir)?;
    let mut dp = Dataplane::new()?;
    dp.probe_mark_base = settings.probe_mark_base;
    dp.probing = true;
    dp.ipvs_sync = settings.ipvs_sync.clone();
    let mut state = OwnedState::load(&settings.state_dir)?;
    let mut memory = Memory::restore(&state);
    info!(node = %settings.node_name, owned_services = state.ipvs_services.len(), owned_addresses = state.addresses.len(), "agent starting; kernel state is kept as found");

    let wake = Arc::new(Notify::new());
    let prober = crate::health::Prober::start(settings.max_probes_in_flight, Some(probe_metrics));
    let vs_api: Api<DeserializeGuard<VirtualService>> = Api::all(client.clone());
    let (vs_store, vs_writer) = reflector::store();
    let vs_wake = wake.clone();
    let node_name = settings.node_name.clone();
    let strip_for = settings.node_name.clone();
    let mut relevant = Relevant::new(move |g| crate::wake::virtual_service(&node_name, g));
    let changed = Arc::new(std::sync::Mutex::new(crate::wake::Changed::default()));
    let vs_changed = changed.clone();
    tokio::spawn(
        watcher(vs_api, watcher::Config::default())
            .backoff(tunlb_api::watch::backoff())
            .modify(move |g| crate::wake::strip(&strip_for, g))
            .reflect(vs_writer)
            .for_each(move |ev| {
                match &ev {
                    Ok(ev) if !relevant.wakes(ev) => {}
                    Ok(ev) => {
                        // The store holds the change already: a pass that
                        // takes the key reads it.
                        if let Ok(mut c) = vs_changed.lock() {
                            c.note(ev);
                        }
                        vs_wake.notify_one()
                    }
                    Err(e) => warn!(error = %e, "VirtualService watch failed; keeping the last known state"),
                }
                async {}
            }),
    );
    let node_api: Api<Node> = Api::all(client.clone());
    let (node_store, node_writer) = reflector::store();
    let node_wake = wake.clone();
    let mut node_relevant = Relevant::new(crate::wake::node);
    tokio::spawn(
        watcher(
            node_api,
            watcher::Config::default().fields(&format!("metadata.name={}", settings.node_name)),
        )
        .backoff(tunlb_api::watch::backoff())
        .reflect(node_writer)
        .for_each(move |ev| {
            match &ev {
                Ok(ev) if !node_relevant.wakes(ev) => {}
                Ok(_) => node_wake.notify_one(),
                Err(e) => warn!(error = %e, "Node watch failed; keeping the last known labels"),
            }
            async {}
        }),
    );

    // What the pools admit decides what is programmed: read-only, and a
    // pool that cannot be read admits nothing.
    let pool_api: Api<DeserializeGuard<VipPool>> = Api::all(client.clone());
    let (pool_store, pool_writer) = reflector::store();
    let pool_wake = wake.clone();
    let mut pool_relevant = Relevant::new(crate::wake::pool);
    tokio::spawn(
        watcher(pool_api, watcher::Config::default())
            .backoff(tunlb_api::watch::backoff())
            .modify(crate::wake::strip_pool)
            .reflect(pool_writer)
            .for_each(move |ev| {
                match &ev {
                    Ok(ev) if !pool_relevant.wakes(ev) => {}
                    Ok(_) => pool_wake.notify_one(),
                    Err(e) => {
                        warn!(error = %e, "VipPool watch failed; keeping the last known pools")
                    }
                }
                async {}
            }),
    );
    // Pools select namespaces by their labels: only those are kept.
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let (ns_store, ns_writer) = reflector::store();
    let ns_wake = wake.clone();
    let mut ns_relevant = Relevant::new(crate::wake::namespace);
    tokio::spawn(
        watcher(ns_api, watcher::Config::default())
            .backoff(tunlb_api::watch::backoff())
            .modify(crate::wake::strip_namespace)
            .reflect(ns_writer)
            .for_each(move |ev| {
                match &ev {
                    Ok(ev) if !ns_relevant.wakes(ev) => {}
                    Ok(_) => ns_wake.notify_one(),
                    Err(e) => {
                        warn!(error = %e, "Namespace watch failed; keeping the last known labels")
                    }
                }
                async {}
            }),
    );
    let watched = Watched {
        virtual_services: vs_store,
        changed,
        node: node_store,
        pools: pool_store,
        namespaces: ns_store,
    };

    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    // Until every initial list is in, an empty store would read as "delete
    // everything" (an empty pool list as "refuse everything"): wait,
    // touching nothing, however long the API server is away.
    info!("waiting for the initial VirtualService, Node, VipPool and Namespace lists");
    tokio::select! {
        _ = async {
            let _ = watched.virtual_services.wait_until_ready().await;
            let _ = watched.node.wait_until_ready().await;
            let _ = watched.pools.wait_until_ready().await;
            let _ = watched.namespaces.wait_until_ready().await;
        } => {}
        _ = stop_rx.changed() => return Ok(()),
    }
    info!("caches synced; programming");

    let mut elections =
        crate::election::Elections::new(dp.links().clone(), wake.clone(), metrics.clone())?;
    let mut last_pass = Instant::now() - settings.resync;
    // Each resync reads the services that may differ from the plan and the
    // next share of all of them (see `ipvs::Reach`); other passes read only
    // the former.
    let mut last_rotation = Instant::now();
    let mut planned = crate::admission::Incremental::default();
    let mut last_whole = Instant::now();
    let mut draining = false;
    let mut checked = BTreeMap::new();
    // When verdicts changed since the last pass: the pass that writes them
    // to the status waits for a quiet spell, since a pass under way would
    // hold up the next verdict's weights.
    let mut verdicts_at: Option<Instant> = None;
    // The objects whose health verdicts changed since the last pass, whose
    // status entries that pass writes.
    let mut verdicts: BTreeSet<ObjectKey> = BTreeSet::new();
    loop {
        // While servers drain, passes come often enough to delete each soon
        // after its connections end.
        let every = if draining {
            settings.resync.min(DRAIN_POLL)
        } else {
            settings.resync
        };
        let mut until = every.saturating_sub(last_pass.elapsed());
        if let Some(t) = verdicts_at {
            until = until
                .min((t + crate::health::VERDICT_QUIET).saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            _ = wake.notified() => {
                // Coalesce a burst of events into one pass.
                tokio::time::sleep(settings.debounce).await;
            }
            _ = prober.changed() => {
                // The kernel's weights now; a later pass writes the status
                // and finds nothing more for the kernel.
                let changes = prober.take_changes();
                let services = crate::health::regate(&checked, &prober.book(), &changes);
                verdicts.extend(
                    changes
                        .iter()
                        .filter_map(|k| checked.get(&k.service))
                        .map(|s| s.owner.clone()),
                );
                match dp.reweigh(&services).await {
                    Ok(n) => debug!(writes = n, "health verdicts applied"),
                    Err(e) => warn!(error = %e, "cannot apply health verdicts; the next pass does"),
                }
                verdicts_at = Some(Instant::now());
                continue;
            }
            _ = tokio::time::sleep(until) => {}
            _ = stop_rx.changed() => {
                // Masters hand their VIPs over at once (priority 0).
                elections.shutdown().await;
                info!("shutting down; kernel state stays as programmed");
                return Ok(());
            }
        }
        last_pass = Instant::now();
        verdicts_at = None;
        let reach = if last_rotation.elapsed() >= settings.resync {
            last_rotation = Instant::now();
            crate::dataplane::ipvs::Reach::ChangedAndNext
        } else {
            crate::dataplane::ipvs::Reach::Changed
        };
        // Passes take in only the objects whose watch events changed them;
        // now and then one reads every object again.
        let whole = last_whole.elapsed() >= WHOLE_PASS_EVERY;
        if whole {
            last_whole = Instant::now();
        }
        (draining, checked) = pass(
            &client,
            &settings,
            &mut dp,
            &mut state,
            &mut memory,
            &mut planned,
            &watched,
            &metrics,
            &prober,
            &mut elections,
            reach,
            whole,
            std::mem::take(&mut verdicts),
        )
        .await;
    }
}

/// The caches a pass reads.
struct Watched {
    virtual_services: Store<DeserializeGuard<VirtualService>>,
    /// The VirtualServices changed since the last pass.
    changed: Arc<std::sync::Mutex<crate::wake::Changed>>,
    /// This node's Node object only.
    node: Store<Node>,
    pools: Store<DeserializeGuard<VipPool>>,
    /// Names and labels only.
    namespaces: Store<Namespace>,
}

#[allow(clippy::too_many_arguments)]
async fn pass(
    client: &Client,
    settings: &Settings,
    dp: &mut Dataplane,
    state: &mut OwnedState,
    memory: &mut Memory,
    planned: &mut crate::admission::Incremental,
    watched: &Watched,
    metrics: &AgentMetrics,
    prober: &crate::health::Prober,
    elections: &mut crate::election::Elections,
    reach: crate::dataplane::ipvs::Reach,
    whole: bool,
    verdicts: BTreeSet<ObjectKey>,
) -> (bool, BTreeMap<IpvsKey, IpvsService>) {
    let started = Instant::now();
    let changed = match watched.changed.lock() {
        Ok(mut c) => c.take().filter(|_| !whole),
        Err(_) => None,
    };
    match &changed {
        Some(keys) => memory.refresh_some(&watched.virtual_services, keys),
        None => memory.refresh(&watched.virtual_services.state()),
    }
    let replan = std::mem::take(&mut memory.replan);

    let node = watched
        .node
        .state()
        .into_iter()
        .find(|n| n.name_any() == settings.node_name);
    let mut identity = NodeIdentity {
        name: settings.node_name.clone(),
        kernel: settings.kernel,
        ..Default::default()
    };
    if let Some(n) = &node {
        identity.labels = n.metadata.labels.clone().unwrap_or_default();
        identity.addresses.extend(
            n.status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse::<std::net::IpAddr>().ok()),
        );
    }
    match dp.node_addresses(state).await {
        Ok(a) => identity.addresses.extend(a),
        Err(e) => warn!(error = %e, "cannot read node addresses"),
    }

    let pools: Vec<VipPool> = watched
        .pools
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .collect();
    let namespaces = watched.namespaces.state();
    let labels: BTreeMap<&str, &BTreeMap<String, String>> = namespaces
        .iter()
        .filter_map(|ns| Some((ns.metadata.name.as_deref()?, ns.metadata.labels.as_ref()?)))
        .collect();
    let how = memory.plan(
        planned,
        &identity,
        &pools,
        &labels,
        changed.is_some().then_some(&replan),
    );
    let refused = planned.refused().cloned().unwrap_or_default();
    log_refusals(&memory.refused, &refused);
    metrics.set_pool_refused(refused.len());
    let Some(plan) = planned.plan_mut() else {
        return (false, BTreeMap::new());
    };
    // Gated weights last for this pass only: the kept plan holds the planned ones.
    let mut checked = crate::health::checked(plan, |_| true);
    let fail_open = crate::health::gate(plan, &prober.book());
    let plan: &tunlb_api::NodePlan = plan;
    memory.persist(state);
    // The VIPs of elected objects belong to their speakers, whatever the
    // pass's outcome.
    let directed = memory
        .accepted
        .iter()
        .filter(|(k, _)| {
            plan.objects
                .get(*k)
                .is_some_and(|o| o.roles.contains(&tunlb_api::NodeRole::Director))
        })
        .filter_map(|(k, a)| {
            Some(crate::election::Directed {
                key: k,
                spec: &a.spec,
                election: a.election.as_ref()?,
            })
        });
    let (mut routers, mut election_errors) = crate::election::wanted(&settings.node_name, directed);
    dp.elected = elections.elected(&routers);
    let journal = Journal::new(&settings.state_dir);
    let report = dp.sync_within(plan, state, &journal, reach).await;
    crate::election::step_back(&mut routers, |k| report.errors.contains_key(k));
    elections.apply(routers).await;
    election_errors.extend(elections.errors().clone());
    let elected = crate::status::Elected {
        states: elections.states(),
        errors: election_errors,
        conflicts: elections.conflicts(),
    };
    prober.update(crate::health::targets(plan, &report.probe_routes));
    let fingerprint = state.fingerprint();
    if journal.recorded() || memory.saved != Some(fingerprint) {
        match state.save(&settings.state_dir) {
            Ok(()) => memory.saved = Some(fingerprint),
            Err(e) => warn!(error = %e, "cannot save ownership state"),
        }
    }
    metrics.record_sync(
        started.elapsed(),
        report.writes.total(),
        report.node_failed(),
    );
    for e in &report.node_errors {
        warn!(error = %e, "node-level problem");
    }
    debug!(writes = ?report.writes, objects = plan.objects.len(), "kernel in line");

    // Entries of the objects this pass may have changed; all of them after
    // a whole plan or a change of node-level problems.
    let sticky: BTreeSet<ObjectKey> = report
        .errors
        .keys()
        .chain(report.draining.keys())
        .chain(elected.states.keys())
        .chain(elected.errors.keys())
        .chain(elected.conflicts.keys())
        .chain(&fail_open)
        .chain(refused.keys())
        .chain(memory.invalid.keys())
        .cloned()
        .collect();
    let scope = match &changed {
        Some(keys)
            if how != crate::admission::Planned::Whole
                && memory.node_errors.as_ref() == Some(&report.node_errors) =>
        {
            let mut scope = std::mem::take(&mut memory.retry);
            scope.extend(keys.iter().cloned());
            scope.extend(replan);
            scope.extend(verdicts);
            scope.extend(std::mem::take(&mut memory.sticky));
            scope.extend(sticky.iter().cloned());
            Some(scope)
        }
        _ => None,
    };
    memory.sticky = sticky;
    memory.node_errors = Some(report.node_errors.clone());
    let mut want = crate::status::entries(
        &settings.node_name,
        plan,
        &report,
        memory.invalid.clone(),
        Some((&prober.book(), &fail_open)),
        &elected,
        scope.as_ref(),
    );
    crate::status::add_refused(&settings.node_name, &mut want, &refused);
    memory.refused = refused;
    // A pass that reports on a few objects looks up only those.
    let objects: Vec<Arc<DeserializeGuard<VirtualService>>> = match &scope {
        None => watched.virtual_services.state(),
        Some(keys) => keys
            .iter()
            .filter_map(|k| {
                let at = reflector::ObjectRef::new(&k.name).within(&k.namespace);
                watched.virtual_services.get(&at)
            })
            .collect(),
    };
    report_status(
        client,
        &settings.node_name,
        memory,
        want,
        &objects,
        scope.as_ref(),
    )
    .await;
    metrics.refresh_ipvs(dp, plan).await;
    if let Some(plan) = planned.plan_mut() {
        crate::health::ungate(plan, &checked);
    }
    debug!(planned = ?how, took_ms = started.elapsed().as_millis() as u64, "pass done");
    checked.retain(|k, _| state.ipvs_services.contains(&(*k).into()));
    (report.drains_pending, checked)
}

/// Logs the refusals that are new or changed since the last pass, and the
/// objects admitted again.
fn log_refusals(before: &BTreeMap<ObjectKey, Refused>, now: &BTreeMap<ObjectKey, Refused>) {
    for (key, r) in now {
        if before.get(key) != Some(r) {
            warn!(
                object = %key,
                reason = %r.refusal.reason,
                message = %r.message(),
                "no VipPool admits what this node would program for this VirtualService; it is not programmed here"
            );
        }
    }
    for key in before.keys().filter(|k| !now.contains_key(*k)) {
        info!(object = %key, "VirtualService no longer refused by this node's VipPool check");
    }
}

/// Writes changed entries, and withdraws entries for objects this node no
/// longer has a role in.
async fn report_status(
    client: &Client,
    node: &str,
    memory: &mut Memory,
    want: BTreeMap<ObjectKey, NodeStatus>,
    objects: &[Arc<DeserializeGuard<VirtualService>>],
    scope: Option<&BTreeSet<ObjectKey>>,
) {
    let writes = entry_writes(node, memory, want, objects, scope);
    if writes.is_empty() {
        return;
    }
    let (count, started) = (writes.len(), Instant::now());
    // Each write is one round trip: a few in flight, so a first pass over
    // thousands of objects is not a long queue of them.
    let results: Vec<(ObjectKey, Option<NodeStatus>, Result<(), kube::Error>)> =
        futures::stream::iter(writes)
            .map(|(key, desired)| {
                let client = client.clone();
                async move {
                    let result = match &desired {
                        Some(entry) => write_entry(client, &key, node, entry).await.map(|_| ()),
                        None => withdraw_entry(client, &key, node).await,
                    };
                    (key, desired, result)
                }
            })
            .buffer_unordered(STATUS_WRITES_IN_FLIGHT)
            .collect()
            .await;
    let failed = results.iter().filter(|(_, _, r)| r.is_err()).count();
    info!(
        entries = count,
        failed,
        took_ms = started.elapsed().as_millis() as u64,
        "status entries written"
    );
    for (key, desired, result) in results {
        match result {
            Ok(()) => {
                match desired {
                    Some(d) => memory.reported.insert(key, d),
                    None => memory.reported.remove(&key),
                };
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                memory.reported.remove(&key);
            }
            Err(e) => {
                warn!(object = %key, error = %e, "cannot report status; will retry");
                memory.retry.insert(key);
            }
        }
    }
}

/// The entries to write (`Some`) or withdraw (`None`): those whose wanted
/// entry differs from the stored one or from the last one reported. With
/// a `scope`, only the objects it names, which `want` and `objects` cover.
fn entry_writes(
    node: &str,
    memory: &mut Memory,
    want: BTreeMap<ObjectKey, NodeStatus>,
    objects: &[Arc<DeserializeGuard<VirtualService>>],
    scope: Option<&BTreeSet<ObjectKey>>,
) -> Vec<(ObjectKey, Option<NodeStatus>)> {
    let exists: BTreeMap<ObjectKey, Option<&NodeStatus>> = objects
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .map(|vs| {
            let entry = vs
                .status
                .as_ref()
                .and_then(|s| s.nodes.iter().find(|n| n.node_name == node));
            (key_of(&vs.metadata), entry)
        })
        .collect();
    let mut targets: BTreeSet<ObjectKey> = want.keys().cloned().collect();
    match scope {
        Some(keys) => targets.extend(keys.iter().cloned()),
        None => {
            targets.extend(memory.reported.keys().cloned());
            // Entries left from an earlier run of this agent also get withdrawn.
            targets.extend(
                exists
                    .iter()
                    .filter(|(_, e)| e.is_some())
                    .map(|(k, _)| k.clone()),
            );
        }
    }
    let mut writes = Vec::new();
    for key in targets {
        let stored = exists.get(&key).copied().flatten();
        let desired = want.get(&key);
        if desired == stored && memory.reported.get(&key) == desired {
            continue;
        }
        if desired.is_none() && stored.is_none() {
            memory.reported.remove(&key);
            continue;
        }
        writes.push((key, desired.cloned()));
    }
    writes
}

/// Removal patches tried before a withdrawal waits for the next pass.
const WITHDRAW_ATTEMPTS: usize = 3;

/// Removes this node's entry from `key`'s `status.nodes`.
///
/// First a server-side apply by this node's field manager that names no
/// entry: that drops every field the manager owns, and with them the entry,
/// whatever the other agents and the operator write meanwhile (the list is
/// keyed by node name, not position). If another manager also set fields in
/// this node's entry, those keep it alive (or the remains lack a required
/// field and the apply is refused); then a JSON patch removes the entry at
/// the index read from the object just returned by the API server, after a
/// test that the entry there is this node's. A test that fails because the
/// list moved in between is retried with a freshly read object.
pub async fn withdraw_entry(
    client: Client,
    key: &ObjectKey,
    node: &str,
) -> Result<(), kube::Error> {
    // Untyped, so an object the agent cannot parse still shows its entries.
    let resource = ApiResource::erase::<VirtualService>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client, &key.namespace, &resource);
    let manager = field_manager(node);
    let body = json!({
        "apiVersion": tunlb_api::API_VERSION,
        "kind": tunlb_api::KIND,
        "status": { "nodes": [] },
    });
    let mut fresh = match api
        .patch_status(
            &key.name,
            &PatchParams::apply(&manager),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(object) => object,
        Err(kube::Error::Api(e)) if e.code == 422 => match read_fresh(&api, &key.name).await? {
            Some(object) => object,
            None => return Ok(()),
        },
        Err(e) => return Err(e),
    };
    let params = PatchParams {
        field_manager: Some(manager),
        ..PatchParams::default()
    };
    let mut attempt = 1;
    while let Some(at) = entry_index(&fresh.data, node) {
        debug!(object = %key, at, "another field manager keeps this node's entry; removing it");
        match api
            .patch_status(
                &key.name,
                &params,
                &Patch::<()>::Json(removal(at, node).map_err(kube::Error::SerdeError)?),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 422 && attempt < WITHDRAW_ATTEMPTS => {
                attempt += 1;
                match read_fresh(&api, &key.name).await? {
                    Some(object) => fresh = object,
                    None => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The object as stored now (None: it is gone), read by a list of that one
/// name: the agent may list and watch VirtualServices, not get them.
async fn read_fresh(
    api: &Api<DynamicObject>,
    name: &str,
) -> Result<Option<DynamicObject>, kube::Error> {
    let params = ListParams::default().fields(&format!("metadata.name={name}"));
    Ok(api.list(&params).await?.items.into_iter().next())
}

/// Where `node`'s entry is in the `status.nodes` of an object's data.
fn entry_index(data: &serde_json::Value, node: &str) -> Option<usize> {
    data.pointer("/status/nodes")?
        .as_array()?
        .iter()
        .position(|n| n.get("nodeName").and_then(|v| v.as_str()) == Some(node))
}

/// A JSON patch that removes `status.nodes[at]` if that entry is `node`'s,
/// and fails otherwise.
fn removal(at: usize, node: &str) -> Result<json_patch::Patch, serde_json::Error> {
    serde_json::from_value(json!([
        { "op": "test", "path": format!("/status/nodes/{at}/nodeName"), "value": node },
        { "op": "remove", "path": format!("/status/nodes/{at}") },
    ]))
}

/// `entry` with every field present, empty ones too, so this node's field
/// manager owns all of them: a value another manager put in a field the
/// agent would otherwise leave out cannot outlive the agent's next write.
fn every_field(entry: &NodeStatus) -> serde_json::Value {
    let mut v = json!({
        "nodeName": entry.node_name,
        "roles": entry.roles,
        "programmed": entry.programmed,
        "message": entry.message,
        "draining": entry.draining,
        "health": entry.health,
        "failOpen": entry.fail_open,
    });
    if let Some(generation) = entry.observed_generation {
        v["observedGeneration"] = generation.into();
    }
    if let Some(state) = entry.director_state {
        v["directorState"] = json!(state);
    }
    if let Some(since) = &entry.director_since {
        v["directorSince"] = json!(since);
    }
    if let Some(conflict) = &entry.election_conflict {
        v["electionConflict"] = json!(conflict);
    }
    v
}

/// How a status entry was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryWrite {
    /// Applied: the fields were this node's manager's, or nobody's.
    Applied,
    /// Another field manager held some of them: the API server's conflict
    /// message, which names that manager and the fields. The entry was then
    /// taken back.
    TookOver(String),
}

/// Writes this node's entry in `key`'s `status.nodes` by server-side apply
/// as this node's field manager, without forcing: the apply names only this
/// entry, so it can conflict only where another manager set fields inside
/// this node's entry (a `kubectl edit` of the status, a tool writing with its
/// own manager name). The entry is this node's report and nobody else's, so
/// the agent then takes those fields back with a forced apply of the same
/// entry, after logging whose they were; the chart's admission policy keeps
/// every other part of the object out of an agent's reach whatever it sends.
pub async fn write_entry(
    client: Client,
    key: &ObjectKey,
    node: &str,
    entry: &NodeStatus,
) -> Result<EntryWrite, kube::Error> {
    // The guard type keeps a patch of an object we cannot parse from failing on the reply.
    let api: Api<DeserializeGuard<VirtualService>> = Api::namespaced(client, &key.namespace);
    let body = json!({
        "apiVersion": tunlb_api::API_VERSION,
        "kind": tunlb_api::KIND,
        "status": { "nodes": [every_field(entry)] },
    });
    let params = PatchParams::apply(&field_manager(node));
    match api
        .patch_status(&key.name, &params, &Patch::Apply(&body))
        .await
    {
        Ok(_) => Ok(EntryWrite::Applied),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            warn!(
                object = %key,
                conflict = %e.message,
                "another field manager wrote this node's status entry; taking the entry back"
            );
            api.patch_status(&key.name, &params.force(), &Patch::Apply(&body))
                .await?;
            Ok(EntryWrite::TookOver(e.message))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(yaml: &str) -> Arc<DeserializeGuard<VirtualService>> {
        Arc::new(DeserializeGuard(Ok(
            serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
        )))
    }

    /// `generation` of web, judged by the operator at `observed` (Accepted)
    /// with weight `weight`.
    fn web(generation: i64, observed: i64, weight: u32) -> Arc<DeserializeGuard<VirtualService>> {
        vs(&format!(
            "apiVersion: tunlb.io/v1alpha1\nkind: VirtualService\n\
             metadata: {{name: web, namespace: ns, generation: {generation}, creationTimestamp: '2026-01-01T00:00:00Z'}}\n\
             spec: {{vip: 10.0.0.1, ports: [{{port: 80}}], backends: {{static: [{{address: 10.1.1.1, weight: {weight}}}]}}}}\n\
             status:\n  observedGeneration: {observed}\n  conditions:\n  - {{type: Accepted, status: 'True', reason: Ok, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}}\n"
        ))
    }

    fn weight(m: &Memory) -> Option<(i64, Option<i32>)> {
        let a = m.accepted.get(&ObjectKey::new("ns", "web"))?;
        let w = a
            .spec
            .backends
            .static_servers
            .as_ref()
            .and_then(|s| s.first())
            .map(|b| b.weight);
        Some((a.generation, w))
    }

    /// A restarted agent programs the last accepted generation while the
    /// newest edit waits for the operator, and forgets it once refused or gone.
    #[test]
    fn accepted_generation_survives_a_restart() {
        let mut before = Memory::default();
        before.refresh(&[web(1, 1, 3)]);
        let mut state = OwnedState::default();
        before.persist(&mut state);
        assert!(state.accepted.contains_key("ns/web"));

        // A restart: only the state is left; generation 2 is not judged yet.
        let mut after = Memory::restore(&state);
        assert_eq!(weight(&after), Some((1, Some(3))));
        after.refresh(&[web(2, 1, 9)]);
        assert_eq!(weight(&after), Some((1, Some(3))), "unjudged edit waits");
        after.persist(&mut state);
        assert!(state.accepted.contains_key("ns/web"));

        // Accepted: the new generation replaces it, in memory and in the state.
        after.refresh(&[web(2, 2, 9)]);
        assert_eq!(weight(&after), Some((2, Some(9))));
        after.persist(&mut state);
        assert_eq!(state.accepted.get("ns/web").map(|a| a.generation), Some(2));

        // Gone from the API: forgotten in the state too.
        after.refresh(&[]);
        after.persist(&mut state);
        assert!(state.accepted.is_empty());
    }

    /// A pass that takes in only named objects sees edits, removals and
    /// unreadable objects as a whole refresh would, and marks them for
    /// planning.
    #[test]
    fn named_objects_are_taken_in_from_the_store() {
        let (reader, mut writer) = reflector::store::<DeserializeGuard<VirtualService>>();
        let web_key = ObjectKey::new("ns", "web");
        writer.apply_watcher_event(&watcher::Event::Apply((*web(1, 1, 3)).clone()));
        let mut m = Memory::default();
        m.refresh_some(&reader, &[web_key.clone()].into());
        assert_eq!(weight(&m), Some((1, Some(3))));
        assert_eq!(std::mem::take(&mut m.replan), [web_key.clone()].into());
        // Unchanged: nothing to plan.
        m.refresh_some(&reader, &[web_key.clone()].into());
        assert!(m.replan.is_empty());
        writer.apply_watcher_event(&watcher::Event::Apply((*web(2, 2, 7)).clone()));
        m.refresh_some(&reader, &[web_key.clone()].into());
        assert_eq!(weight(&m), Some((2, Some(7))));
        assert_eq!(std::mem::take(&mut m.replan), [web_key.clone()].into());
        writer.apply_watcher_event(&watcher::Event::Delete((*web(2, 2, 7)).clone()));
        m.refresh_some(&reader, &[web_key.clone()].into());
        assert_eq!(weight(&m), None);
        assert_eq!(std::mem::take(&mut m.replan), [web_key].into());
    }

    #[test]
    fn unreadable_stored_generation_is_dropped() {
        let mut state = OwnedState::default();
        state.accepted.insert(
            "ns/web".into(),
            AcceptedObject {
                generation: 1,
                created: 0,
                spec: serde_json::value::RawValue::from_string(r#"{"vip":1}"#.into())
                    .unwrap_or_else(|e| panic!("{e}")),
                real_servers: serde_json::value::RawValue::from_string("[]".into())
                    .unwrap_or_else(|e| panic!("{e}")),
                election: None,
            },
        );
        let mut m = Memory::restore(&state);
        assert!(m.accepted.is_empty());
        m.persist(&mut state);
        assert!(state.accepted.is_empty());
    }

    /// A withdrawal finds this node's entry by name in whatever order the
    /// list has, and removes only the entry it tested.
    #[test]
    fn a_withdrawal_removes_only_this_nodes_entry() {
        let mut data = json!({"status": {"nodes": [
            {"nodeName": "rs2", "programmed": true},
            {"nodeName": "rs1", "programmed": true},
        ]}});
        assert_eq!(entry_index(&data, "rs1"), Some(1));
        assert_eq!(entry_index(&data, "rs3"), None);
        assert_eq!(entry_index(&json!({}), "rs1"), None);
        assert_eq!(entry_index(&json!({"status": {}}), "rs1"), None);

        let before = data.clone();
        let stale = removal(0, "rs1").unwrap_or_else(|e| panic!("{e}"));
        assert!(json_patch::patch(&mut data, &stale).is_err());
        assert_eq!(data, before, "a stale index removed an entry");
        let Some(at) = entry_index(&data, "rs1") else {
            panic!("no entry");
        };
        let patch = removal(at, "rs1").unwrap_or_else(|e| panic!("{e}"));
        json_patch::patch(&mut data, &patch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            data,
            json!({"status": {"nodes": [{"nodeName": "rs2", "programmed": true}]}})
        );
        assert_eq!(entry_index(&data, "rs1"), None);
    }

    /// The status write names every field of an entry.
    #[test]
    fn an_entry_write_names_every_field() {
        let full = NodeStatus {
            node_name: "n1".into(),
            roles: vec![tunlb_api::NodeRole::Director],
            observed_generation: Some(3),
            programmed: true,
            message: "m".into(),
            draining: vec!["10.0.0.1:80".into()],
            health: vec![tunlb_api::ProbedServer {
                address: "10.0.0.1".into(),
                port: 80,
                state: tunlb_api::HealthState::Healthy,
                since: None,
                message: String::new(),
            }],
            fail_open: true,
            director_state: Some(tunlb_api::DirectorState::Active),
            director_since: Some("2026-12-02T07:00:00Z".into()),
            election_conflict: Some(tunlb_api::ElectionConflict {
                reason: "SplitBrain".into(),
                message: "m".into(),
            }),
        };
        let keys = |v: serde_json::Value| -> Vec<String> {
            v.as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        let serde = serde_json::to_value(&full).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys(every_field(&full)), keys(serde));
        let empty = NodeStatus {
            roles: Vec::new(),
            message: String::new(),
            draining: Vec::new(),
            health: Vec::new(),
            fail_open: false,
            ..full
        };
        assert_eq!(every_field(&empty)["message"], "");
        assert_eq!(every_field(&empty)["failOpen"], false);
    }

    /// A pass that changes nothing leaves nothing unsaved.
    #[test]
    fn unchanged_acceptance_is_not_rewritten() {
        let mut m = Memory::default();
        m.refresh(&[web(1, 1, 3)]);
        let mut state = OwnedState::default();
        m.persist(&mut state);
        m.refresh(&[web(1, 1, 3)]);
        assert!(m.unsaved.is_empty());
    }

    /// The pure parts of a quiet pass at the benchmark's size, timed phase
    /// by phase (`cargo test --profile ci -p tunlb-agent pass_phases -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn pass_phases_at_scale() {
        let n: usize = std::env::var("PASS_OBJECTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        let node = "director";
        let reals: Vec<serde_json::Value> = (1..=10)
            .map(|j| json!({"address": format!("10.1.0.{j}"), "weight": 1}))
            .collect();
        let mut objects: Vec<VirtualService> = (1..=n)
            .map(|i| {
                let port = 10_000 + i;
                serde_json::from_value(json!({
                    "apiVersion": "tunlb.io/v1alpha1", "kind": "VirtualService",
                    "metadata": {"name": format!("p{port}"), "namespace": "default", "generation": 1,
                                 "creationTimestamp": "2026-01-01T00:00:00Z"},
                    "spec": {"vip": "10.2.0.1", "ports": [{"name": "p", "port": port}],
                             "scheduler": "wrr", "healthCheck": {"type": "none"},
                             "backends": {"static": reals}},
                    "status": {"observedGeneration": 1, "realServers": reals,
                               "conditions": [{"type": "Accepted", "status": "True", "reason": "Ok",
                                               "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
                }))
                .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        let identity = NodeIdentity {
            name: node.into(),
            addresses: ["10.0.2.15".parse().unwrap_or_else(|e| panic!("{e}"))].into(),
            labels: [("tunlb.io/director".to_string(), "true".to_string())].into(),
            kernel: None,
        };
        let guards = |objects: &[VirtualService]| -> Vec<Arc<DeserializeGuard<VirtualService>>> {
            objects
                .iter()
                .map(|vs| Arc::new(DeserializeGuard(Ok(vs.clone()))))
                .collect()
        };
        let pools: Vec<VipPool> = vec![
            serde_json::from_value(json!({
                "apiVersion": "tunlb.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lab"},
                "spec": {"cidrs": ["10.2.0.0/16"], "namespaces": ["default"],
                         "directors": {"nodeSelector": {}, "interfaces": ["tunl0"]},
                         "backends": {"nodeSelector": {}, "cidrs": ["0.0.0.0/0"]},
                         "targetPorts": [{"from": 1, "to": 65535}]}
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        ];
        let mut memory = Memory::default();
        let mut state = OwnedState::default();
        let report = crate::dataplane::SyncReport::default();
        let book = crate::health::Book::default();
        let elected = crate::status::Elected::default();
        let mut planned = crate::admission::Incremental::default();
        let edited = ObjectKey::new("default", format!("p{}", 10_000 + n / 2));
        for round in 0..4 {
            // Round 3 edits one weight, as `kubectl patch` would.
            if round == 3 {
                let vs = &mut objects[n / 2 - 1];
                vs.metadata.generation = Some(2);
                if let Some(s) = vs.status.as_mut() {
                    s.real_servers[0].weight = 2;
                    s.observed_generation = Some(2);
                }
            }
            let guarded = guards(&objects);
            let mut t = Instant::now();
            let mut lap = |what: &str| {
                if round > 0 {
                    eprintln!(
                        "round {round} {what}: {:.1} ms",
                        t.elapsed().as_secs_f64() * 1e3
                    );
                }
                t = Instant::now();
            };
            let changed: Option<BTreeSet<ObjectKey>> = match round {
                0 => None,
                3 => Some([edited.clone()].into()),
                _ => Some(BTreeSet::new()),
            };
            let store = {
                let (reader, mut writer) = reflector::store::<DeserializeGuard<VirtualService>>();
                writer.apply_watcher_event(&watcher::Event::Init);
                for g in &guarded {
                    writer.apply_watcher_event(&watcher::Event::InitApply((**g).clone()));
                }
                writer.apply_watcher_event(&watcher::Event::InitDone);
                reader
            };
            lap("(store)");
            match &changed {
                Some(keys) => memory.refresh_some(&store, keys),
                None => memory.refresh(&guarded),
            }
            lap("refresh");
            let replan = std::mem::take(&mut memory.replan);
            let scope: Option<BTreeSet<ObjectKey>> = changed
                .as_ref()
                .map(|keys| keys.iter().chain(&replan).cloned().collect());
            let how = memory.plan(
                &mut planned,
                &identity,
                &pools,
                &BTreeMap::new(),
                changed.is_some().then_some(&replan),
            );
            lap(&format!("plan {how:?}"));
            let Some(plan) = planned.plan_mut() else {
                panic!("no plan")
            };
            let checked = crate::health::checked(plan, |_| true);
            let fail_open = crate::health::gate(plan, &book);
            crate::health::ungate(plan, &checked);
            lap("checked+gate");
            memory.persist(&mut state);
            lap("persist");
            state.ipvs_services = plan.ipvs.keys().map(|k| (*k).into()).collect();
            let _ = state.fingerprint();
            lap("fingerprint");
            let want = crate::status::entries(
                node,
                plan,
                &report,
                memory.invalid.clone(),
                Some((&book, &fail_open)),
                &elected,
                scope.as_ref(),
            );
            lap("entries");
            let scoped: Vec<Arc<DeserializeGuard<VirtualService>>> = match &scope {
                None => guarded.clone(),
                Some(keys) => keys
                    .iter()
                    .filter_map(|k| {
                        store.get(&reflector::ObjectRef::new(&k.name).within(&k.namespace))
                    })
                    .collect(),
            };
            let writes = entry_writes(node, &mut memory, want, &scoped, scope.as_ref());
            lap("entry_writes");
            if round == 3 {
                assert_eq!(writes.len(), 1, "the edited object's entry: {writes:?}");
            }
            assert_eq!(plan.ipvs.len(), n);
            // As the API server would hold them after the writes.
            let at: BTreeMap<ObjectKey, usize> = objects
                .iter()
                .enumerate()
                .map(|(i, v)| (key_of(&v.metadata), i))
                .collect();
            for (key, entry) in writes {
                let Some(entry) = entry else { continue };
                memory.reported.insert(key.clone(), entry.clone());
                if let Some(s) = at.get(&key).and_then(|i| objects[*i].status.as_mut()) {
                    s.nodes = vec![entry];
                }
            }
        }
    }
}
