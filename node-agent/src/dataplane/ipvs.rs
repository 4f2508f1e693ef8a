//! IPVS virtual services and their destinations: reads what the kernel
//! holds, adopts what is provably tunlb's, runs the pure diff
//! ([`super::ipvs_diff`]) in slices and applies it, keeping ownership and
//! drains recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tracing::{debug, info, warn};
use tunlb_api::NodeRole;
use tunlb_api::plan::{IpvsKey, IpvsService, NodePlan, ObjectKey};
use tunlb_api::validate::DEFAULT_DRAIN_SECONDS;
use tunlb_ipvs::{Client, Op, Service, ServiceKey};

use super::SyncReport;
use super::ipvs_diff::{self, Current, DestKey, DrainClock, DrainStart, Draining, ipvs_key};
use crate::state::{DrainRecord, Journal, OwnedService, OwnedState, ServiceDrain};

/// Services per slice of the sync.
const CHUNK: usize = 256;

/// What the IPVS step leaves behind, for the steps after it.
#[derive(Debug, Default)]
pub struct Outcome {
    /// VIPs that at least one service tunlb owns serves, as the kernel holds
    /// them after this step; `None` when the kernel could not be read.
    pub served: Option<BTreeSet<IpAddr>>,
    /// The kernel's services were read (so a rebuild of ownership is done).
    pub read: bool,
}

/// Brings the kernel's IPVS services in line with `plan`.
pub async fn sync(
    client: impl std::future::Future<Output = Result<Client, tunlb_ipvs::Error>>,
    plan: &NodePlan,
    state: &mut OwnedState,
    journal: &Journal<'_>,
    report: &mut SyncReport,
    now: u64,
) -> Outcome {
    if plan.ipvs.is_empty() && state.ipvs_services.is_empty() {
        // Nothing wanted: nothing could be adopted either.
        state.draining.clear();
        state.drain_timeouts.clear();
        return Outcome {
            served: Some(BTreeSet::new()),
            read: true,
        };
    }
    let is_director = |o: &tunlb_api::plan::ObjectPlan| o.roles.contains(&NodeRole::Director);
    // Connecting resolves the family, which loads ip_vs: only when needed.
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            report.error_for(plan, is_director, &format!("IPVS: {e}"));
            // Without IPVS nothing is served: no VIP may be held for it.
            return Outcome {
                served: Some(BTreeSet::new()),
                read: false,
            };
        }
    };
    let started = std::time::Instant::now();
    // Only the services this node wants or owns are kept from the dump.
    let wanted = |k: &ServiceKey| {
        ipvs_key(k)
            .is_some_and(|k| plan.ipvs.contains_key(&k) || state.ipvs_services.contains(&k.into()))
    };
    let dump = match client.services_where(wanted).await {
        Ok(d) => d,
        Err(e) => {
            report.node_errors.push(format!("list IPVS services: {e}"));
            return Outcome::default();
        }
    };
    // A sorted list, not a map: at 10,000 services the map's nodes cost
    // megabytes; each slice below builds the small map the diff needs.
    let mut current = dump;
    current.retain(|s| ipvs_key(&s.key).is_some());
    current.sort_unstable_by_key(|s| ipvs_key(&s.key));
    let exists = |k: &IpvsKey| {
        current
            .binary_search_by_key(&Some(*k), |s| ipvs_key(&s.key))
            .is_ok()
    };
    // Services we own that someone removed by hand, and intents of an
    // earlier run that never reached the kernel, are simply forgotten.
    state.ipvs_services.retain(|k| exists(&IpvsKey::from(*k)));
    if state.rebuild {
        adopt(&client, plan, state, &current, report).await;
    }
    let owned: BTreeSet<IpvsKey> = state.ipvs_services.iter().map(|k| (*k).into()).collect();
    record_drain_times(plan, state);
    debug!(
        ms = started.elapsed().as_millis(),
        memory = %crate::memory::summary(),
        services = current.len(),
        "IPVS services dumped"
    );

    // Desired services that exist and are not ours: refused, never edited.
    for (key, want) in &plan.ipvs {
        if exists(key) && !owned.contains(key) {
            report.object_error(
                &want.owner,
                format!("IPVS service {key} already exists and was not created by tunlb; it is left untouched"),
            );
        }
    }

    // Every service this pass will create is recorded as owned, in one
    // durable write, before the first is created.
    let intents: Vec<IpvsKey> = plan.ipvs.keys().filter(|k| !exists(k)).copied().collect();
    let mut plan_ipvs = std::borrow::Cow::Borrowed(&plan.ipvs);
    if !intents.is_empty() {
        state
            .ipvs_services
            .extend(intents.iter().map(|k| OwnedService::from(*k)));
        if let Err(e) = journal.record(state) {
            let msg = format!("cannot record ownership before creating IPVS services: {e}");
            let mut kept = plan.ipvs.clone();
            for k in &intents {
                state.ipvs_services.remove(&(*k).into());
                if let Some(want) = kept.remove(k) {
                    report.object_error(&want.owner, msg.clone());
                }
            }
            plan_ipvs = std::borrow::Cow::Owned(kept);
        }
    }

    let drains: BTreeMap<DestKey, DrainStart> = state
        .draining
        .iter()
        .map(|r| {
            (
                (r.service.into(), r.address, r.port),
                DrainStart {
                    since: r.since,
                    timeout: r.timeout,
                },
            )
        })
        .collect();
    let stale_times: BTreeMap<OwnedService, u32> = state
        .drain_timeouts
        .iter()
        .map(|d| (d.service, d.timeout))
        .collect();
    let stale_timeout = |k: &IpvsKey| {
        stale_times
            .get(&OwnedService::from(*k))
            .copied()
            .unwrap_or(DEFAULT_DRAIN_SECONDS)
    };
    let clock = DrainClock {
        now,
        started: &drains,
        stale_timeout: &stale_timeout,
    };
    let mut slices = Slices {
        client: &client,
        plan,
        services: &current,
        clock: &clock,
        refused: BTreeSet::new(),
        draining: Vec::new(),
        unread: BTreeSet::new(),
        dumps: 0,
        ops: 0,
    };

    // The diff is pure per service, so it runs on slices of the desired
    // services (in key order), then on the owned ones no longer wanted:
    // the same ops in the same order as one diff of everything, while
    // destination dumps and pending ops stay bounded by the slice size.
    let desired: Vec<(&IpvsKey, &IpvsService)> = plan_ipvs.iter().collect();
    for slice in desired.chunks(CHUNK) {
        let chunk: BTreeMap<IpvsKey, IpvsService> =
            slice.iter().map(|(k, v)| (**k, (*v).clone())).collect();
        let chunk_owned: BTreeSet<IpvsKey> = chunk
            .keys()
            .filter(|k| owned.contains(*k))
            .copied()
            .collect();
        slices.run(state, report, &chunk, &chunk_owned).await;
    }
    let stale: Vec<IpvsKey> = owned
        .iter()
        .filter(|k| !plan.ipvs.contains_key(*k))
        .copied()
        .collect();
    for slice in stale.chunks(CHUNK) {
        let chunk_owned: BTreeSet<IpvsKey> = slice.iter().copied().collect();
        slices
            .run(state, report, &BTreeMap::new(), &chunk_owned)
            .await;
    }
    debug!(
        ms = started.elapsed().as_millis(),
        memory = %crate::memory::summary(),
        dest_dumps = slices.dumps,
        ops = slices.ops,
        "IPVS synced"
    );

    // Drains of services whose destinations could not be read are kept as
    // they were; all others are what this pass found.
    let unread = std::mem::take(&mut slices.unread);
    let mut draining: Vec<DrainRecord> = state
        .draining
        .iter()
        .filter(|r| unread.contains(&IpvsKey::from(r.service)))
        .cloned()
        .collect();
    for d in &slices.draining {
        if !state.ipvs_services.contains(&d.dest.0.into()) {
            continue;
        }
        report.drain(d);
        draining.push(DrainRecord {
            service: d.dest.0.into(),
            address: d.dest.1,
            port: d.dest.2,
            since: d.start.since,
            timeout: d.start.timeout,
        });
    }
    draining.sort();
    draining.dedup();
    state.draining = draining;
    state
        .drain_timeouts
        .retain(|d| state.ipvs_services.contains(&d.service));
    Outcome {
        served: Some(state.ipvs_services.iter().map(|k| k.vip).collect()),
        read: true,
    }
}

/// Remembers the drain time of every planned service that does not use the
/// default, for when its VirtualService is gone.
fn record_drain_times(plan: &NodePlan, state: &mut OwnedState) {
    let mut times: BTreeMap<OwnedService, u32> = state
        .drain_timeouts
        .iter()
        .filter(|d| !plan.ipvs.contains_key(&d.service.into()))
        .map(|d| (d.service, d.timeout))
        .collect();
    for (k, s) in &plan.ipvs {
        if s.drain_timeout != DEFAULT_DRAIN_SECONDS {
            times.insert((*k).into(), s.drain_timeout);
        }
    }
    state.drain_timeouts = times
        .into_iter()
        .map(|(service, timeout)| ServiceDrain { service, timeout })
        .collect();
}

/// Takes ownership of the services in the kernel that are exactly what
/// this node's plan asks for (see [`ipvs_diff::adoptable`]); anything else
/// stays foreign.
async fn adopt(
    client: &Client,
    plan: &NodePlan,
    state: &mut OwnedState,
    services: &[Service],
    report: &mut SyncReport,
) {
    let candidates: Vec<&Service> = services
        .iter()
        .filter(|s| {
            ipvs_key(&s.key).is_some_and(|k| {
                plan.ipvs.contains_key(&k) && !state.ipvs_services.contains(&k.into())
            })
        })
        .collect();
    let mut adopted = 0;
    for slice in candidates.chunks(CHUNK) {
        let keys: Vec<ServiceKey> = slice.iter().map(|s| s.key).collect();
        let dests = client.destinations_many(&keys).await;
        for (service, res) in slice.iter().zip(dests) {
            let Some(key) = ipvs_key(&service.key) else {
                continue;
            };
            let Some(want) = plan.ipvs.get(&key) else {
                continue;
            };
            let destinations = match res {
                Ok(d) => d,
                Err(e) => {
                    report
                        .node_errors
                        .push(format!("list destinations of {key}: {e}"));
                    continue;
                }
            };
            let have = Current {
                service: (*service).clone(),
                destinations,
            };
            if ipvs_diff::adoptable(want, &have) {
                info!(service = %key, object = %want.owner, "adopted IPVS service: it matches this node's plan");
                state.ipvs_services.insert(key.into());
                adopted += 1;
            }
        }
    }
    if adopted > 0 {
        warn!(
            services = adopted,
            "ownership rebuilt: adopted IPVS services that exactly match this node's plan"
        );
    }
}

/// One pass over slices of services: what they share.
struct Slices<'a> {
    client: &'a Client,
    plan: &'a NodePlan,
    /// The kernel's services, sorted by key.
    services: &'a [Service],
    clock: &'a DrainClock<'a>,
    /// Services whose creation the kernel refused in this pass.
    refused: BTreeSet<IpvsKey>,
    draining: Vec<Draining>,
    /// Services whose destinations could not be read.
    unread: BTreeSet<IpvsKey>,
    dumps: usize,
    ops: usize,
}

impl Slices<'_> {
    /// Dumps the destinations of the owned services among `desired` and
    /// `owned`, diffs them and applies the result.
    async fn run(
        &mut self,
        state: &mut OwnedState,
        report: &mut SyncReport,
        desired: &BTreeMap<IpvsKey, IpvsService>,
        owned: &BTreeSet<IpvsKey>,
    ) {
        let services = self.services;
        let find = |k: &IpvsKey| {
            services
                .binary_search_by_key(&Some(*k), |s| ipvs_key(&s.key))
                .ok()
                .map(|i| &services[i])
        };
        let mut current: BTreeMap<IpvsKey, Current> = desired
            .keys()
            .chain(owned)
            .filter_map(|k| {
                let service = find(k)?.clone();
                Some((
                    *k,
                    Current {
                        service,
                        destinations: Vec::new(),
                    },
                ))
            })
            .collect();
        let need_dests: Vec<ServiceKey> = owned
            .iter()
            .filter_map(|k| current.get(k))
            .map(|c| c.service.key)
            .collect();
        let dests = self.client.destinations_many(&need_dests).await;
        self.dumps += need_dests.len();
        let mut unread_here = BTreeSet::new();
        for (svc_key, res) in need_dests.iter().zip(dests) {
            let Some(key) = ipvs_key(svc_key) else {
                continue;
            };
            match res {
                Ok(d) => {
                    if let Some(c) = current.get_mut(&key) {
                        c.destinations = d;
                    }
                }
                Err(e) => {
                    report
                        .node_errors
                        .push(format!("list destinations of {key}: {e}"));
                    unread_here.insert(key);
                }
            }
        }
        // A service whose destinations are unknown is left alone this pass:
        // an empty list would read as "create them all" or "drain none".
        current.retain(|k, _| !unread_here.contains(k));
        let owned_read: BTreeSet<IpvsKey> = owned
            .iter()
            .filter(|k| !unread_here.contains(*k))
            .copied()
            .collect();
        let desired_read: BTreeMap<IpvsKey, IpvsService> = desired
            .iter()
            .filter(|(k, _)| !unread_here.contains(*k))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        self.unread.extend(unread_here);

        let diff = ipvs_diff::diff(&desired_read, &current, &owned_read, self.clock);
        // Done with this slice's destinations.
        drop(current);
        self.draining.extend(diff.draining);
        if diff.ops.is_empty() {
            return;
        }
        self.ops += diff.ops.len();
        let (ops, targets): (Vec<Op>, Vec<(Option<ObjectKey>, IpvsKey)>) = diff
            .ops
            .into_iter()
            .map(|p| (p.op, (p.owner, p.key)))
            .unzip();
        let results = self.client.apply(&ops).await;
        // After a refused NEW_SERVICE its destinations fail with ESRCH: that is noise.
        for ((op, (owner, key)), res) in ops.iter().zip(targets).zip(results) {
            if let Err(e) = &res
                && self.refused.contains(&key)
                && e.errno() == Some(libc::ESRCH)
            {
                continue;
            }
            if res.is_err() && matches!(op, Op::NewService(_)) {
                self.refused.insert(key);
            }
            match (op, res) {
                (Op::DelService(_), Ok(())) => {
                    state.ipvs_services.remove(&key.into());
                }
                (_, Ok(())) => {}
                (op, Err(e)) => {
                    if matches!(op, Op::NewService(_)) {
                        // Recorded as an intent; the kernel did not create it.
                        state.ipvs_services.remove(&key.into());
                    }
                    let scheduler = self.plan.ipvs.get(&key).map(|s| s.scheduler.as_str());
                    let msg = explain(op, &e, scheduler);
                    match &owner {
                        Some(owner) => report.object_error(owner, msg),
                        None => report.node_errors.push(msg),
                    }
                }
            }
        }
    }
}

/// Turns a kernel refusal into a message that says what to do about it.
fn explain(op: &Op, e: &tunlb_ipvs::Error, scheduler: Option<&str>) -> String {
    match (op, e.errno()) {
        (Op::NewService(_) | Op::SetService(_), Some(libc::ENOENT)) => format!(
            "{e}: scheduler {0:?} is not available in this kernel (module ip_vs_{0} missing)",
            scheduler.unwrap_or("?")
        ),
        (Op::NewDest(..) | Op::SetDest(..), Some(libc::EINVAL)) => {
            format!("{e}: the kernel accepts only unicast real servers it has a route to")
        }
        (Op::NewDest(..) | Op::SetDest(..), Some(libc::EAFNOSUPPORT)) => {
            format!(
                "{e}: tunnel type not supported by this kernel (gue needs 5.2+, gre 5.3+, and the fou/ip_gre modules)"
            )
        }
        _ => e.to_string(),
    }
}
