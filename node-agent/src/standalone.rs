//! Standalone mode: `apply` and `delete` VirtualService files on a host with
//! no Kubernetes, kubectl-style. Applied objects are kept in the state dir so
//! that each run plans the node's whole desired state, and `delete` removes
//! exactly what its objects added.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::value::RawValue;
use tracing::{debug, info, warn};
use tunlb_api::manifest::object_keys;
use tunlb_api::plan::{
    IpvsKey, IpvsService, NodeIdentity, NodePlan, ObjectKey, PlanInput, Planner,
};
use tunlb_api::{NodeRole, VirtualService, VirtualServiceSpec};

use crate::dataplane::{Dataplane, SyncReport, Writes};
use crate::health::Prober;
use crate::load::{expand, visit};
use crate::state::{Journal, OwnedState, Pending, StateError, StateLock, StoredMeta, StoredObject};

/// How this host identifies itself without a Node object.
#[derive(Debug, Clone, Default)]
pub struct NodeArgs {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// Leave draining real servers at weight 0 instead of waiting for them;
    /// the next apply or delete carries on with them.
    pub no_wait: bool,
}

/// How often a waiting command looks at draining real servers.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Repeats passes while removed real servers drain, so that the command
/// ends with the kernel as planned.
async fn finish_drains(
    dp: &mut Dataplane,
    plan: &NodePlan,
    state: &mut OwnedState,
    journal: &Journal<'_>,
    args: &NodeArgs,
    report: &mut SyncReport,
) {
    if args.no_wait || !report.drains_pending {
        return;
    }
    let longest = state.draining.iter().map(|d| d.timeout).max().unwrap_or(0);
    warn!(
        servers = state.draining.len(),
        "waiting up to {longest} s for removed real servers to drain (until their connections end); --no-wait leaves them at weight 0"
    );
    while report.drains_pending {
        tokio::time::sleep(DRAIN_POLL).await;
        let again = dp.sync(plan, state, journal).await;
        report.merge(again);
    }
}

/// Lines for the servers a command leaves draining.
fn drain_lines(report: &SyncReport, out: &mut Outcome) {
    for (k, servers) in &report.draining {
        out.lines.push(format!(
            "virtualservice {k}: {} draining at weight 0; the next apply or delete removes them once idle",
            servers.join(", ")
        ));
    }
}

/// What a command did, for printing.
#[derive(Debug, Default)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub errors: Vec<String>,
    pub writes: Writes,
    /// The checked services this run programmed, with planned weights.
    pub checked: BTreeMap<IpvsKey, IpvsService>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("read node addresses: {0}")]
    Links(#[from] crate::link::LinkError),
    #[error(transparent)]
    Thread(#[from] crate::vrrp::thread::ThreadError),
}

fn key_of(vs: &VirtualService) -> ObjectKey {
    ObjectKey::new(
        vs.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        vs.metadata.name.clone().unwrap_or_default(),
    )
}

pub(crate) fn store_key(k: &ObjectKey) -> String {
    k.to_string()
}

/// The inverse of [`store_key`] (a namespace never contains '/').
pub(crate) fn object_key(store_key: &str) -> ObjectKey {
    match store_key.split_once('/') {
        Some((ns, name)) => ObjectKey::new(ns, name),
        None => ObjectKey::new("default", store_key),
    }
}

/// Plans the stored objects oldest first (the older one wins a VIP:port
/// clash, as in the cluster), parsing one spec at a time.
fn plan_store<'a>(
    store: impl Iterator<Item = (&'a String, &'a StoredObject)>,
    node: &NodeIdentity,
) -> NodePlan {
    let mut order: Vec<(u64, &String, &StoredObject)> =
        store.map(|(k, o)| (o.seq(), k, o)).collect();
    order.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut planner = Planner::new(node);
    for (_, k, o) in order {
        let key = object_key(k);
        match serde_json::from_str::<VirtualServiceSpec>(o.spec.get()) {
            Ok(spec) => planner.add(&PlanInput {
                key,
                generation: o.metadata.generation,
                spec: &spec,
                real_servers: None,
            }),
            Err(e) => planner.reject(
                key,
                o.metadata.generation,
                format!("stored spec cannot be read ({e}); apply its manifest again"),
            ),
        }
    }
    planner.finish()
}

async fn identity(
    dp: &Dataplane,
    state: &OwnedState,
    args: &NodeArgs,
) -> Result<NodeIdentity, CommandError> {
    let mut addresses = dp.node_addresses(state).await?;
    addresses.extend(args.addresses.iter().copied());
    Ok(NodeIdentity {
        name: args.name.clone(),
        addresses,
        labels: args.labels.clone(),
        kernel: crate::dataplane::kernel_version(),
    })
}

fn roles_text(roles: &BTreeSet<NodeRole>) -> String {
    if roles.is_empty() {
        return "no role on this node".into();
    }
    let r: Vec<&str> = roles
        .iter()
        .map(|r| match r {
            NodeRole::Director => "director",
            NodeRole::Backend => "backend",
        })
        .collect();
    r.join("+")
}

/// Merges sync errors into per-object error lists.
fn collect_errors(plan: &NodePlan, report: &SyncReport) -> BTreeMap<ObjectKey, Vec<String>> {
    let mut errs: BTreeMap<ObjectKey, Vec<String>> = report.errors.clone();
    for (k, o) in &plan.objects {
        if let Some(e) = &o.error {
            errs.entry(k.clone()).or_default().insert(0, e.clone());
        }
    }
    errs
}

/// `tunlb-agent apply -f ...`
pub async fn apply(
    dp: &mut Dataplane,
    state_dir: &Path,
    args: &NodeArgs,
    paths: &[PathBuf],
) -> Result<Outcome, CommandError> {
    apply_checked(dp, state_dir, args, paths, None, None).await
}

/// `serve --peer`: the directors this node elects with, and its speakers.
pub struct Peering {
    pub peers: Vec<crate::election::Peer>,
    pub elections: crate::election::Elections,
}

type Routers = BTreeMap<crate::election::RouterKey, crate::election::Router>;

impl Peering {
    /// The virtual routers this node runs for `plan`'s directed objects
    /// (their specs in `stored`), and why some object's election cannot
    /// run. The elected VIPs are handed to the speakers in `dp`.
    async fn plan(
        &self,
        dp: &mut Dataplane,
        name: &str,
        plan: &NodePlan,
        stored: &BTreeMap<String, StoredObject>,
    ) -> Result<(Routers, BTreeMap<ObjectKey, String>), CommandError> {
        let specs: Vec<(ObjectKey, VirtualServiceSpec)> = plan
            .objects
            .iter()
            .filter(|(_, o)| o.roles.contains(&NodeRole::Director))
            .filter_map(|(k, _)| {
                let spec = serde_json::from_str(stored.get(&store_key(k))?.spec.get()).ok()?;
                Some((k.clone(), spec))
            })
            .collect();
        let (_, addresses) = dp.links().interfaces_and_addresses().await?;
        let me = crate::election::own_addresses(name, &addresses, &self.peers);
        let (elections, mut errors) =
            crate::election::standalone(&me, &self.peers, specs.iter().map(|(k, s)| (k, s)));
        let directed = specs.iter().filter_map(|(key, spec)| {
            Some(crate::election::Directed {
                key,
                spec,
                election: elections.get(key)?,
            })
        });
        let (routers, more) = crate::election::wanted(name, directed);
        errors.extend(more);
        dp.elected = self.elections.elected(&routers);
        Ok((routers, errors))
    }

    /// Runs `routers` (those with an object the kernel refused step back)
    /// and reports each elected object's state.
    async fn run(
        &mut self,
        mut routers: Routers,
        mut errors: BTreeMap<ObjectKey, String>,
        report: &SyncReport,
        out: &mut Outcome,
    ) {
        crate::election::step_back(&mut routers, |k| report.errors.contains_key(k));
        self.elections.apply(routers).await;
        errors.extend(self.elections.errors().clone());
        for (k, e) in &errors {
            out.errors.push(format!("VirtualService {k}: {e}"));
        }
        for (k, c) in self.elections.conflicts() {
            out.errors
                .push(format!("VirtualService {k}: {}: {}", c.reason, c.message));
        }
        for (k, (state, _)) in self.elections.states() {
            let state = match state {
                tunlb_api::DirectorState::Active => "active: holds the VIP",
                tunlb_api::DirectorState::Standby => "standby",
            };
            out.lines
                .push(format!("virtualservice {k}: director {state}"));
        }
    }
}

/// Health gating of a plan before it is programmed, when a prober runs:
/// lines for the services that fail open.
fn gated(plan: &mut NodePlan, prober: Option<&Prober>) -> BTreeSet<ObjectKey> {
    match prober {
        Some(p) => crate::health::gate(plan, &p.book()),
        None => BTreeSet::new(),
    }
}

/// [`apply`], with weights gated by `prober`'s verdicts and the prober
/// told what to probe afterwards.
async fn apply_checked(
    dp: &mut Dataplane,
    state_dir: &Path,
    args: &NodeArgs,
    paths: &[PathBuf],
    prober: Option<&Prober>,
    peering: Option<&mut Peering>,
) -> Result<Outcome, CommandError> {
    let started = Instant::now();
    let _lock = StateLock::acquire(state_dir)?;
    let mut out = Outcome::default();
    let mut state = OwnedState::load(state_dir)?;
    debug!(
        ms = started.elapsed().as_millis(),
        memory = %crate::memory::summary(),
        objects = state.objects.len(),
        "state loaded"
    );
    let node = identity(dp, &state, args).await?;

    // Each parsed object is reduced to its spec's JSON at once and compared
    // with the stored one, so neither a second copy of the store nor all
    // parsed objects are ever held (10,000 objects stay a few MB).
    let mut candidate = std::mem::take(&mut state.objects);
    let mut next_seq = candidate
        .values()
        .map(StoredObject::seq)
        .filter(|s| *s != u64::MAX)
        .max()
        .unwrap_or(0)
        + 1;
    let mut named: BTreeMap<String, Run> = BTreeMap::new();
    let load_errors = visit(paths, |source, vs| {
        let key = key_of(&vs);
        let skey = store_key(&key);
        if named.contains_key(&skey) {
            out.errors.push(format!(
                "{source}: VirtualService {key} appears more than once; the first is used"
            ));
            return;
        }
        let spec = match serde_json::value::to_raw_value(&vs.spec) {
            Ok(spec) => spec,
            Err(e) => {
                out.errors
                    .push(format!("{source}: VirtualService {key}: spec: {e}"));
                return;
            }
        };
        drop(vs);
        let run = record(&mut candidate, skey.clone(), spec, source, &mut next_seq);
        named.insert(skey, run);
    });
    out.errors.extend(load_errors);
    debug!(
        ms = started.elapsed().as_millis(),
        memory = %crate::memory::summary(),
        objects = named.len(),
        "manifests parsed"
    );

    // Objects this node cannot plan are rejected whole, keeping any previous version.
    let mut rejected: BTreeMap<ObjectKey, (Arc<str>, Vec<String>)> = BTreeMap::new();
    let mut plan = plan_store(candidate.iter(), &node);
    for _ in 0..2 {
        let bad: Vec<(ObjectKey, Arc<str>)> = named_in_run(&named)
            .filter(|(k, _)| !rejected.contains_key(k))
            .filter(|(k, _)| plan.objects.get(k).is_some_and(|o| o.error.is_some()))
            .collect();
        if bad.is_empty() {
            break;
        }
        for (k, source) in bad {
            let msg = plan
                .objects
                .get(&k)
                .and_then(|o| o.error.clone())
                .unwrap_or_default();
            rejected.insert(k.clone(), (source, vec![msg]));
            revert(&mut candidate, &mut named, &k);
        }
        // Dropped first: two plans of 10,000 services at once double the peak.
        drop(plan);
        plan = plan_store(candidate.iter(), &node);
    }
    debug!(
        ms = started.elapsed().as_millis(),
        memory = %crate::memory::summary(),
        "planned"
    );

    let elected = match peering.as_deref() {
        Some(p) => Some(p.plan(dp, &args.name, &plan, &candidate).await?),
        None => None,
    };

    // The stored objects wait on disk while the kernel is programmed: only
    // saving them, or re-planning after a refusal, needs them again, and at
    // 10,000 objects they would add ~7 MB to the sync's peak.
    let pending = Pending::write(state_dir, &candidate)?;
    drop(candidate);
    let journal = Journal::parked(state_dir, &pending);
    let mut checked = crate::health::checked(&plan, |_| true);
    let mut fail_open = gated(&mut plan, prober);
    let mut report = dp.sync(&plan, &mut state, &journal).await;
    debug!(
        ms = started.elapsed().as_millis(),
        memory = %crate::memory::summary(),
        "synced"
    );
    let failed: Vec<(ObjectKey, Arc<str>)> = named_in_run(&named)
        .filter(|(k, _)| report.errors.contains_key(k))
        .collect();
    let mut candidate = None;
    if !failed.is_empty() {
        // The kernel refused part of an object: take the whole object back out.
        let mut objects = pending.read()?;
        for (k, source) in failed {
            let errors = report.errors.get(&k).cloned().unwrap_or_default();
            rejected
                .entry(k.clone())
                .or_insert_with(|| (source, Vec::new()))
                .1
                .extend(errors);
            revert(&mut objects, &mut named, &k);
        }
        drop(plan);
        plan = plan_store(objects.iter(), &node);
        checked = crate::health::checked(&plan, |_| true);
        fail_open = gated(&mut plan, prober);
        let again = dp.sync(&plan, &mut state, &journal).await;
        report.merge(again);
        candidate = Some(objects);
    }
    finish_drains(dp, &plan, &mut state, &journal, args, &mut report).await;
    if let (Some(p), Some((routers, errors))) = (peering, elected) {
        p.run(routers, errors, &report, &mut out).await;
    }
    drain_lines(&report, &mut out);
    for d in &report.sync_daemons {
        out.lines.push(format!("ipvs: {d}: running"));
    }
    if let Some(p) = prober {
        p.update(crate::health::targets(&plan, &report.probe_routes));
        checked.retain(|k, _| state.ipvs_services.contains(&(*k).into()));
        out.checked = checked;
    }
    for k in &fail_open {
        out.lines.push(format!(
            "virtualservice {k}: every checked real server of a service is unhealthy; sending to them anyway (fail open)"
        ));
    }

    for (k, _) in named_in_run(&named).filter(|(k, _)| !rejected.contains_key(k)) {
        let roles = plan
            .objects
            .get(&k)
            .map(|o| roles_text(&o.roles))
            .unwrap_or_default();
        out.lines
            .push(format!("virtualservice {k} applied ({roles})"));
    }
    for (k, (source, errs)) in &rejected {
        for e in errs {
            out.errors
                .push(format!("{source}: VirtualService {k}: {e}"));
        }
    }
    let is_named = |k: &ObjectKey| rejected.contains_key(k) || named.contains_key(&store_key(k));
    report_remaining(&plan, &report, is_named, &mut out);
    out.writes = report.writes;
    drop(plan);
    drop(named);
    state.objects = match candidate {
        Some(objects) => objects,
        None => pending.read()?,
    };
    state.save(state_dir)?;
    pending.remove();
    debug!(
        ms = started.elapsed().as_millis(),
        memory = %crate::memory::summary(),
        "state saved"
    );
    Ok(out)
}

/// What this run did to an object it names.
struct Run {
    /// The file that names it.
    source: Arc<str>,
    /// Its stored version, when this run changed it.
    before: Option<Box<StoredObject>>,
    /// This run added it.
    added: bool,
}

/// Objects named in this run, with their file.
fn named_in_run(named: &BTreeMap<String, Run>) -> impl Iterator<Item = (ObjectKey, Arc<str>)> + '_ {
    named.iter().map(|(k, r)| (object_key(k), r.source.clone()))
}

/// Puts `spec` into `candidate` under `key`: a new object gets the next
/// sequence number; a changed one keeps its number and bumps its
/// generation; an unchanged one is left as it is.
fn record(
    candidate: &mut BTreeMap<String, StoredObject>,
    key: String,
    spec: Box<RawValue>,
    source: &Arc<str>,
    next_seq: &mut u64,
) -> Run {
    let mut run = Run {
        source: source.clone(),
        before: None,
        added: false,
    };
    match candidate.get_mut(&key) {
        Some(stored) if stored.spec.get() == spec.get() => {}
        Some(stored) => {
            let metadata = StoredMeta {
                generation: Some(stored.metadata.generation.unwrap_or(0) + 1),
                resource_version: stored.metadata.resource_version.clone(),
            };
            let old = std::mem::replace(stored, StoredObject { metadata, spec });
            run.before = Some(Box::new(old));
        }
        None => {
            let metadata = StoredMeta {
                generation: Some(1),
                resource_version: Some(next_seq.to_string()),
            };
            *next_seq += 1;
            candidate.insert(key, StoredObject { metadata, spec });
            run.added = true;
        }
    }
    run
}

/// Puts back the stored version of `k` (removes `k` if this run added it;
/// an unchanged object stays as it is).
fn revert(
    candidate: &mut BTreeMap<String, StoredObject>,
    named: &mut BTreeMap<String, Run>,
    k: &ObjectKey,
) {
    let key = store_key(k);
    let Some(run) = named.get_mut(&key) else {
        return;
    };
    if run.added {
        candidate.remove(&key);
    } else if let Some(old) = run.before.take() {
        candidate.insert(key, *old);
    }
}

/// Errors of objects applied earlier (not named in this run) and of the node.
fn report_remaining(
    plan: &NodePlan,
    report: &SyncReport,
    is_named: impl Fn(&ObjectKey) -> bool,
    out: &mut Outcome,
) {
    for (k, errs) in collect_errors(plan, report) {
        if is_named(&k) {
            continue;
        }
        for e in errs {
            out.errors
                .push(format!("VirtualService {k} (applied earlier): {e}"));
        }
    }
    out.errors
        .extend(report.node_errors.iter().map(|e| format!("node: {e}")));
}

/// `tunlb-agent delete -f ...`
pub async fn delete(
    dp: &mut Dataplane,
    state_dir: &Path,
    args: &NodeArgs,
    paths: &[PathBuf],
) -> Result<Outcome, CommandError> {
    let _lock = StateLock::acquire(state_dir)?;
    let mut out = Outcome::default();
    let mut state = OwnedState::load(state_dir)?;
    let node = identity(dp, &state, args).await?;
    let mut keys = Vec::new();
    match expand(paths) {
        Ok(files) => {
            for f in files {
                match std::fs::read_to_string(&f)
                    .map_err(|e| e.to_string())
                    .and_then(|t| object_keys(&t))
                {
                    Ok(k) => keys.extend(k),
                    Err(e) => out.errors.push(format!("{}: {e}", f.display())),
                }
            }
        }
        Err(e) => out.errors.push(e),
    }
    for (ns, name) in keys {
        let k = ObjectKey::new(ns, name);
        if state.objects.remove(&store_key(&k)).is_some() {
            out.lines.push(format!("virtualservice {k} deleted"));
        } else {
            out.lines.push(format!("virtualservice {k} not found"));
        }
    }
    let plan = plan_store(state.objects.iter(), &node);
    let journal = Journal::new(state_dir);
    let mut report = dp.sync(&plan, &mut state, &journal).await;
    finish_drains(dp, &plan, &mut state, &journal, args, &mut report).await;
    drain_lines(&report, &mut out);
    if report.drains_pending && report.draining.is_empty() {
        out.lines.push(format!(
            "{} real servers of deleted VirtualServices draining at weight 0; the next apply or delete removes them once idle",
            state.draining.len()
        ));
    }
    report_remaining(&plan, &report, |_| false, &mut out);
    out.writes = report.writes;
    state.save(state_dir)?;
    Ok(out)
}

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// A pass at least this often: drift repair, drains, manifests re-read.
    pub resync: std::time::Duration,
    pub max_probes_in_flight: usize,
    /// The other directors, elected with by VRRP; none: no election.
    pub peers: Vec<crate::election::Peer>,
}

/// `tunlb-agent serve -f ...`: applies the manifests, then keeps doing so
/// every resync and whenever a health verdict changes, with weights
/// following the health probes, until `stop` resolves. Lines are printed
/// when they differ from the previous pass's.
pub async fn serve(
    dp: &mut Dataplane,
    state_dir: &Path,
    args: &NodeArgs,
    paths: &[PathBuf],
    settings: &ServeSettings,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), CommandError> {
    let prober = Prober::start(settings.max_probes_in_flight, None);
    let mut args = args.clone();
    // Drains finish in later passes; a pass never waits for them.
    args.no_wait = true;
    // Each transition wakes a pass, which prints it.
    let transition = Arc::new(tokio::sync::Notify::new());
    let mut peering = match settings.peers.is_empty() {
        true => None,
        false => Some(Peering {
            peers: settings.peers.clone(),
            elections: crate::election::Elections::new(
                dp.links().clone(),
                transition.clone(),
                Arc::new(crate::metrics::AgentMetrics::new(
                    &mut prometheus_client::registry::Registry::default(),
                    0,
                )),
            )?,
        }),
    };
    tokio::pin!(stop);
    let mut last: Option<(Vec<String>, Vec<String>)> = None;
    loop {
        let out =
            apply_checked(dp, state_dir, &args, paths, Some(&prober), peering.as_mut()).await?;
        let shown = (out.lines.clone(), out.errors.clone());
        if last.as_ref() != Some(&shown) {
            for l in &out.lines {
                println!("{l}");
            }
            for e in &out.errors {
                eprintln!("error: {e}");
            }
            last = Some(shown);
        }
        let resync_at = tokio::time::Instant::now() + settings.resync;
        // After verdicts, the pass (lines, fail open) waits for a quiet spell:
        // a pass under way would hold up the next verdict's weights.
        let mut pass_at = resync_at;
        loop {
            tokio::select! {
                _ = prober.changed() => {
                    let services =
                        crate::health::regate(&out.checked, &prober.book(), &prober.take_changes());
                    let _lock = StateLock::acquire(state_dir)?;
                    match dp.reweigh(&services).await {
                        Ok(n) => debug!(writes = n, "health verdicts applied"),
                        Err(e) => warn!(error = %e, "cannot apply health verdicts; the pass does"),
                    }
                    pass_at = resync_at.min(tokio::time::Instant::now() + crate::health::VERDICT_QUIET);
                }
                _ = tokio::time::sleep_until(pass_at) => break,
                _ = transition.notified() => break,
                _ = &mut stop => {
                    if let Some(p) = peering.as_mut() {
                        // Masters hand their VIPs over at once (priority 0).
                        p.elections.shutdown().await;
                    }
                    info!("stopping; kernel state stays as programmed");
                    return Ok(());
                }
            }
        }
    }
}
