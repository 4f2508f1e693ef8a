//! Standalone mode: `apply` and `delete` VirtualService files on a host with
//! no Kubernetes, kubectl-style. Applied objects are kept in the state dir so
//! that each run plans the node's whole desired state, and `delete` removes
//! exactly what its objects added.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::debug;
use tunlb_api::manifest::object_keys;
use tunlb_api::plan::{NodeIdentity, NodePlan, ObjectKey, PlanInput, plan_node};
use tunlb_api::{NodeRole, VirtualService};

use crate::load::{expand, load};
use crate::state::{OwnedState, StateError};
use crate::sync::{Dataplane, SyncReport, Writes};

/// How this host identifies itself without a Node object.
#[derive(Debug, Clone, Default)]
pub struct NodeArgs {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
}

/// What a command did, for printing.
#[derive(Debug, Default)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub errors: Vec<String>,
    pub writes: Writes,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("read node addresses: {0}")]
    Links(#[from] crate::link::LinkError),
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

fn store_key(k: &ObjectKey) -> String {
    k.to_string()
}

/// Creation order, so the older object wins a VIP:port clash (as in the cluster).
fn seq(vs: &VirtualService) -> u64 {
    vs.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

fn plan_store(store: &BTreeMap<String, VirtualService>, node: &NodeIdentity) -> NodePlan {
    let mut objs: Vec<&VirtualService> = store.values().collect();
    objs.sort_by_key(|vs| (seq(vs), key_of(vs)));
    let inputs: Vec<PlanInput<'_>> = objs
        .iter()
        .map(|vs| PlanInput {
            key: key_of(vs),
            generation: vs.metadata.generation,
            spec: &vs.spec,
            real_servers: None,
        })
        .collect();
    plan_node(&inputs, node)
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
    let started = Instant::now();
    let mut out = Outcome::default();
    let mut state = OwnedState::load(state_dir)?;
    debug!(
        ms = started.elapsed().as_millis(),
        objects = state.objects.len(),
        "state loaded"
    );
    let (loaded, load_errors) = load(paths);
    debug!(
        ms = started.elapsed().as_millis(),
        objects = loaded.len(),
        "manifests parsed"
    );
    out.errors.extend(load_errors);
    let node = identity(dp, &state, args).await?;

    // The stored objects are moved, never cloned (at 10,000 objects a copy
    // costs tens of MB): those this run does not name go straight into
    // `candidate`; `previous` keeps the named ones only while they differ
    // from their new version, which is all `revert` needs.
    let mut previous = std::mem::take(&mut state.objects);
    let mut next_seq = previous
        .values()
        .map(seq)
        .filter(|s| *s != u64::MAX)
        .max()
        .unwrap_or(0)
        + 1;
    let named: BTreeSet<String> = loaded
        .iter()
        .map(|l| store_key(&key_of(&l.object)))
        .collect();
    let (kept, others): (BTreeMap<_, _>, BTreeMap<_, _>) =
        previous.into_iter().partition(|(k, _)| named.contains(k));
    previous = kept;
    drop(named);
    let mut candidate: BTreeMap<String, VirtualService> = others;
    let mut unchanged: BTreeSet<String> = BTreeSet::new();
    let mut sources: BTreeMap<ObjectKey, String> = BTreeMap::new();
    for item in loaded {
        let key = key_of(&item.object);
        if sources.contains_key(&key) {
            out.errors.push(format!(
                "{}: VirtualService {key} appears more than once; the first is used",
                item.source
            ));
            continue;
        }
        sources.insert(key.clone(), item.source);
        let mut vs = item.object;
        vs.status = None;
        let skey = store_key(&key);
        let old = previous.get(&skey);
        vs.metadata.resource_version = Some(match old {
            Some(o) => seq(o).to_string(),
            None => {
                next_seq += 1;
                (next_seq - 1).to_string()
            }
        });
        let old_gen = old.and_then(|o| o.metadata.generation).unwrap_or(0);
        vs.metadata.generation = Some(match old {
            Some(o) if o.spec == vs.spec => old_gen,
            _ => old_gen + 1,
        });
        if old == Some(&vs) {
            // Reverting it would put back an identical object.
            previous.remove(&skey);
            unchanged.insert(skey.clone());
        }
        candidate.insert(skey, vs);
    }
    let previous = Previous {
        changed: previous,
        unchanged,
    };

    // Objects this node cannot plan are rejected whole, keeping any previous version.
    let mut rejected: BTreeMap<ObjectKey, Vec<String>> = BTreeMap::new();
    let mut plan = plan_store(&candidate, &node);
    for _ in 0..2 {
        let bad: Vec<ObjectKey> = sources
            .keys()
            .filter(|k| !rejected.contains_key(*k))
            .filter(|k| plan.objects.get(*k).is_some_and(|o| o.error.is_some()))
            .cloned()
            .collect();
        if bad.is_empty() {
            break;
        }
        for k in bad {
            let msg = plan
                .objects
                .get(&k)
                .and_then(|o| o.error.clone())
                .unwrap_or_default();
            rejected.insert(k.clone(), vec![msg]);
            revert(&mut candidate, &previous, &k);
        }
        plan = plan_store(&candidate, &node);
    }
    debug!(ms = started.elapsed().as_millis(), "planned");

    let mut report = dp.sync(&plan, &mut state).await;
    debug!(ms = started.elapsed().as_millis(), "synced");
    let failed: Vec<ObjectKey> = sources
        .keys()
        .filter(|k| report.errors.contains_key(*k))
        .cloned()
        .collect();
    if !failed.is_empty() {
        // The kernel refused part of an object: take the whole object back out.
        for k in &failed {
            rejected
                .entry(k.clone())
                .or_default()
                .extend(report.errors.get(k).cloned().unwrap_or_default());
            revert(&mut candidate, &previous, k);
        }
        plan = plan_store(&candidate, &node);
        let again = dp.sync(&plan, &mut state).await;
        report.writes.ipvs += again.writes.ipvs;
        report.writes.links += again.writes.links;
        report.writes.sysctls += again.writes.sysctls;
        report.writes.nft += again.writes.nft;
        report.node_errors.extend(again.node_errors);
        report.errors = again.errors;
    }

    for (k, source) in &sources {
        match rejected.get(k) {
            Some(errs) => {
                for e in errs {
                    out.errors
                        .push(format!("{source}: VirtualService {k}: {e}"));
                }
            }
            None => {
                let roles = plan
                    .objects
                    .get(k)
                    .map(|o| roles_text(&o.roles))
                    .unwrap_or_default();
                out.lines
                    .push(format!("virtualservice {k} applied ({roles})"));
            }
        }
    }
    report_remaining(&plan, &report, &sources, &mut out);
    out.writes = report.writes;
    state.objects = candidate;
    state.save(state_dir)?;
    debug!(ms = started.elapsed().as_millis(), "state saved");
    Ok(out)
}

/// The stored versions of the objects named in this run.
struct Previous {
    /// Named objects whose stored version differs from the new one.
    changed: BTreeMap<String, VirtualService>,
    /// Named objects whose new version equals the stored one (not kept twice).
    unchanged: BTreeSet<String>,
}

/// Puts back the stored version of `k` (or removes `k` if it had none).
fn revert(candidate: &mut BTreeMap<String, VirtualService>, previous: &Previous, k: &ObjectKey) {
    let key = store_key(k);
    if previous.unchanged.contains(&key) {
        return;
    }
    match previous.changed.get(&key) {
        Some(old) => candidate.insert(key, old.clone()),
        None => candidate.remove(&key),
    };
}

/// Errors of objects applied earlier (not named in this run) and of the node.
fn report_remaining(
    plan: &NodePlan,
    report: &SyncReport,
    named: &BTreeMap<ObjectKey, String>,
    out: &mut Outcome,
) {
    for (k, errs) in collect_errors(plan, report) {
        if named.contains_key(&k) {
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
    let plan = plan_store(&state.objects, &node);
    let report = dp.sync(&plan, &mut state).await;
    report_remaining(&plan, &report, &BTreeMap::new(), &mut out);
    out.writes = report.writes;
    state.save(state_dir)?;
    Ok(out)
}
