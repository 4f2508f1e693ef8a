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

/// How much of the kernel's IPVS table a pass reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every service: one dump of the table, and the destinations of every
    /// owned service.
    All,
    /// The services whose wanted state differs from what a pass last found
    /// in the kernel, and those with problems, draining destinations or no
    /// longer wanted.
    Changed,
    /// [`Reach::Changed`], and the next [`ROTATION_ROUNDS`]th of all
    /// services in key order: every service is read once in that many such
    /// passes, which repairs what others change in the kernel.
    ChangedAndNext,
}

/// Passes with [`Reach::ChangedAndNext`] that read every service once.
pub const ROTATION_ROUNDS: usize = 10;

/// Tables up to this many services are read whole by every rotating pass.
const ROTATION_MIN: usize = 64;

/// A pass reads the whole table (one dump) instead of one service at a
/// time when it would read more than this share (1/N) of the services.
const DUMP_ABOVE_SHARE: usize = 8;

/// What passes found, per IPVS service: lets a pass read only the services
/// that may differ from the plan.
#[derive(Debug, Default)]
pub struct Memo {
    /// Each wanted service's fingerprint (of its [`IpvsService`]) when a pass
    /// last found the kernel holding it as wanted.
    settled: BTreeMap<IpvsKey, u64>,
    /// The problems each service's last check found, by the object they
    /// concern: passes that do not check it report them again.
    problems: BTreeMap<IpvsKey, Vec<(ObjectKey, String)>>,
    /// The last service the rotating check read.
    cursor: Option<IpvsKey>,
}

fn fingerprint(s: &IpvsService) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

impl Memo {
    /// The services a pass with `reach` reads; `None`: all of them.
    fn select(
        &mut self,
        reach: Reach,
        wanted: &BTreeMap<IpvsKey, IpvsService>,
        owned: &BTreeSet<OwnedService>,
        draining: &[DrainRecord],
    ) -> Option<BTreeSet<IpvsKey>> {
        if reach == Reach::All {
            return None;
        }
        let mut keys: BTreeSet<IpvsKey> = wanted
            .iter()
            .filter(|(k, s)| self.settled.get(*k) != Some(&fingerprint(s)))
            .map(|(k, _)| *k)
            .collect();
        let unwanted: Vec<IpvsKey> = owned
            .iter()
            .map(|k| IpvsKey::from(*k))
            .filter(|k| !wanted.contains_key(k))
            .collect();
        keys.extend(&unwanted);
        keys.extend(self.problems.keys().copied());
        keys.extend(draining.iter().map(|r| IpvsKey::from(r.service)));
        let total = wanted.len() + unwanted.len();
        // Every service in key order, built only by the passes that rotate.
        if reach == Reach::ChangedAndNext && total > 0 {
            let every: BTreeSet<IpvsKey> = wanted.keys().copied().chain(unwanted).collect();
            let share = every.len().div_ceil(ROTATION_ROUNDS).max(ROTATION_MIN);
            use std::ops::Bound::{Excluded, Unbounded};
            let after = match self.cursor {
                Some(c) => every.range((Excluded(c), Unbounded)),
                None => every.range(..),
            };
            let next: Vec<IpvsKey> = after
                .chain(every.iter())
                .take(share.min(every.len()))
                .copied()
                .collect();
            self.cursor = next.last().copied();
            keys.extend(next);
        }
        if keys.len() * DUMP_ABOVE_SHARE > total {
            return None;
        }
        Some(keys)
    }

    /// Records what a pass that read `read` (`None`: every service) found:
    /// the wanted services it read without problems are settled.
    fn record(
        &mut self,
        read: Option<&BTreeSet<IpvsKey>>,
        wanted: &BTreeMap<IpvsKey, IpvsService>,
        found: BTreeMap<IpvsKey, Vec<(ObjectKey, String)>>,
        unread: &BTreeSet<IpvsKey>,
    ) {
        let settles = |k: &IpvsKey| !found.contains_key(k) && !unread.contains(k);
        match read {
            None => {
                self.settled = wanted
                    .iter()
                    .filter(|(k, _)| settles(k))
                    .map(|(k, s)| (*k, fingerprint(s)))
                    .collect();
                self.problems = found;
            }
            Some(keys) => {
                self.settled.retain(|k, _| wanted.contains_key(k));
                self.problems.retain(|k, _| !keys.contains(k));
                for k in keys {
                    self.settled.remove(k);
                    if let Some(s) = wanted.get(k)
                        && settles(k)
                    {
                        self.settled.insert(*k, fingerprint(s));
                    }
                }
                self.problems.extend(found);
            }
        }
    }

    /// Forgets everything: the next pass reads every service.
    fn clear(&mut self) {
        self.settled.clear();
        self.problems.clear();
    }

    /// Reports every recorded problem under the object it concerns.
    fn report(&self, report: &mut SyncReport) {
        for (owner, msg) in self.problems.values().flatten() {
            report.object_error(owner, msg.clone());
        }
    }
}

/// Brings the kernel's IPVS services in line with `plan`, reading the
/// services `reach` asks for.
#[allow(clippy::too_many_arguments)]
pub async fn sync(
    client: impl std::future::Future<Output = Result<Client, tunlb_ipvs::Error>>,
    plan: &NodePlan,
    state: &mut OwnedState,
    memo: &mut Memo,
    reach: Reach,
    journal: &Journal<'_>,
    report: &mut SyncReport,
    now: u64,
) -> Outcome {
    if plan.ipvs.is_empty() && state.ipvs_services.is_empty() {
        // Nothing wanted: nothing could be adopted either.
        state.draining.clear();
        state.drain_timeouts.clear();
        memo.clear();
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
            memo.clear();
            // Without IPVS nothing is served: no VIP may be held for it.
            return Outcome {
                served: Some(BTreeSet::new()),
                read: false,
            };
        }
    };
    let started = std::time::Instant::now();
    // Rebuilding ownership looks at every service.
    let reach = if state.rebuild { Reach::All } else { reach };
    let selected = memo.select(reach, &plan.ipvs, &state.ipvs_services, &state.draining);
    let in_reach = |k: &IpvsKey| selected.as_ref().is_none_or(|s| s.contains(k));
    let read = match &selected {
        // Only the services this node wants or owns are kept from the dump.
        None => {
            let wanted = |k: &ServiceKey| {
                ipvs_key(k).is_some_and(|k| {
                    plan.ipvs.contains_key(&k) || state.ipvs_services.contains(&k.into())
                })
            };
            client.services_where(wanted).await
        }
        Some(keys) => read_services(&client, keys).await,
    };
    let mut current = match read {
        Ok(d) => d,
        Err(e) => {
            report.node_errors.push(format!("list IPVS services: {e}"));
            memo.clear();
            return Outcome::default();
        }
    };
    // A sorted list, not a map: at 10,000 services the map's nodes cost
    // megabytes; each slice below builds the small map the diff needs.
    current.retain(|s| ipvs_key(&s.key).is_some());
    current.sort_unstable_by_key(|s| ipvs_key(&s.key));
    let exists = |k: &IpvsKey| {
        current
            .binary_search_by_key(&Some(*k), |s| ipvs_key(&s.key))
            .is_ok()
    };
    // Services we own that someone removed by hand, and intents of an
    // earlier run that never reached the kernel, are simply forgotten.
    state
        .ipvs_services
        .retain(|k| !in_reach(&IpvsKey::from(*k)) || exists(&IpvsKey::from(*k)));
    if state.rebuild {
        adopt(&client, plan, state, &current, report).await;
    }
    let owned: BTreeSet<IpvsKey> = state
        .ipvs_services
        .iter()
        .map(|k| IpvsKey::from(*k))
        .filter(|k| in_reach(k))
        .collect();
    record_drain_times(plan, state);
    debug!(
        ms = started.elapsed().as_millis(),
        memory = %crate::memory::summary(),
        services = current.len(),
        whole_table = selected.is_none(),
        "IPVS services read"
    );

    // The problems this pass finds, by service.
    let mut found: BTreeMap<IpvsKey, Vec<(ObjectKey, String)>> = BTreeMap::new();
    // Desired services that exist and are not ours: refused, never edited.
    for (key, want) in plan.ipvs.iter().filter(|(k, _)| in_reach(k)) {
        if exists(key) && !owned.contains(key) {
            found.entry(*key).or_default().push((
                want.owner.clone(),
                format!("IPVS service {key} already exists and was not created by tunlb; it is left untouched"),
            ));
        }
    }

    // Every service this pass will create is recorded as owned, in one
    // durable write, before the first is created.
    let intents: Vec<IpvsKey> = plan
        .ipvs
        .keys()
        .filter(|k| in_reach(k) && !exists(k))
        .copied()
        .collect();
    let mut plan_ipvs: BTreeMap<&IpvsKey, &IpvsService> =
        plan.ipvs.iter().filter(|(k, _)| in_reach(k)).collect();
    if !intents.is_empty() {
        state
            .ipvs_services
            .extend(intents.iter().map(|k| OwnedService::from(*k)));
        if let Err(e) = journal.record(state) {
            let msg = format!("cannot record ownership before creating IPVS services: {e}");
            for k in &intents {
                state.ipvs_services.remove(&(*k).into());
                if let Some(want) = plan_ipvs.remove(k) {
                    found
                        .entry(*k)
                        .or_default()
                        .push((want.owner.clone(), msg.clone()));
                }
            }
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
        found: &mut found,
        dumps: 0,
        ops: 0,
    };

    // The diff is pure per service, so it runs on slices of the desired
    // services (in key order), then on the owned ones no longer wanted:
    // the same ops in the same order as one diff of everything, while
    // destination dumps and pending ops stay bounded by the slice size.
    let desired: Vec<(&&IpvsKey, &&IpvsService)> = plan_ipvs.iter().collect();
    for slice in desired.chunks(CHUNK) {
        let chunk: BTreeMap<IpvsKey, IpvsService> =
            slice.iter().map(|(k, v)| (***k, (**v).clone())).collect();
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

    // Drains of services this pass did not read, or whose destinations it
    // could not read, are kept as they were; all others are what it found.
    let unread = std::mem::take(&mut slices.unread);
    let found_draining = std::mem::take(&mut slices.draining);
    let mut draining: Vec<DrainRecord> = state
        .draining
        .iter()
        .filter(|r| {
            let k = IpvsKey::from(r.service);
            !in_reach(&k) || unread.contains(&k)
        })
        .cloned()
        .collect();
    for d in &found_draining {
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
    memo.record(selected.as_ref(), &plan.ipvs, found, &unread);
    memo.report(report);
    Outcome {
        served: Some(state.ipvs_services.iter().map(|k| k.vip).collect()),
        read: true,
    }
}

/// The services among `keys` the kernel holds, without statistics, each
/// read on its own: a pass that needs a few of many services does not
/// read the others.
async fn read_services(
    client: &Client,
    keys: &BTreeSet<IpvsKey>,
) -> Result<Vec<Service>, tunlb_ipvs::Error> {
    use futures::StreamExt;
    let replies: Vec<_> = futures::stream::iter(keys.iter().map(ipvs_diff::service_key))
        .map(|k| async move { client.service(&k).await })
        .buffered(READS_IN_FLIGHT)
        .collect()
        .await;
    let mut services = Vec::new();
    for r in replies {
        if let Some(entry) = r? {
            services.push(entry.service);
        }
    }
    Ok(services)
}

/// Requests for single services in flight at once.
const READS_IN_FLIGHT: usize = 8;

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
    /// The problems found, by service.
    found: &'a mut BTreeMap<IpvsKey, Vec<(ObjectKey, String)>>,
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
                    match owner {
                        Some(owner) => self.found.entry(key).or_default().push((owner, msg)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tunlb_api::plan::IpvsDest;
    use tunlb_api::validate::ValidTunnel;
    use tunlb_api::{Protocol, TunnelKind};

    fn key(port: u16) -> IpvsKey {
        IpvsKey {
            protocol: Protocol::Tcp,
            vip: IpAddr::from([192, 168, 56, 185]),
            port,
        }
    }

    fn service(port: u16, weight: u32) -> IpvsService {
        let dest = IpvsDest {
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
            tunnel: ValidTunnel {
                kind: TunnelKind::Ipip,
                port: 0,
                flags: 0,
            },
        };
        IpvsService {
            key: key(port),
            scheduler: "wrr".into(),
            flags: 0,
            timeout: 0,
            netmask: 0xffff_ffff,
            destinations: [((IpAddr::from([10, 1, 0, 1]), 8080), dest)].into(),
            owner: ObjectKey::new("default", format!("web-{port}")),
            drain_timeout: DEFAULT_DRAIN_SECONDS,
            health: None,
        }
    }

    fn table(n: u16) -> BTreeMap<IpvsKey, IpvsService> {
        (1..=n).map(|p| (key(p), service(p, 1))).collect()
    }

    fn owned(wanted: &BTreeMap<IpvsKey, IpvsService>) -> BTreeSet<OwnedService> {
        wanted.keys().map(|k| OwnedService::from(*k)).collect()
    }

    /// A memo after a pass that read everything and found it as wanted.
    fn settled(wanted: &BTreeMap<IpvsKey, IpvsService>) -> Memo {
        let mut memo = Memo::default();
        memo.record(None, wanted, BTreeMap::new(), &BTreeSet::new());
        memo
    }

    #[test]
    fn a_pass_reads_only_the_services_that_changed() {
        let mut wanted = table(100);
        let mut memo = settled(&wanted);
        let none = memo.select(Reach::Changed, &wanted, &owned(&wanted), &[]);
        assert_eq!(none, Some(BTreeSet::new()));
        wanted.insert(key(7), service(7, 5));
        let one = memo.select(Reach::Changed, &wanted, &owned(&wanted), &[]);
        assert_eq!(one, Some([key(7)].into()));
        // Read and found as wanted: settled again.
        memo.record(one.as_ref(), &wanted, BTreeMap::new(), &BTreeSet::new());
        let after = memo.select(Reach::Changed, &wanted, &owned(&wanted), &[]);
        assert_eq!(after, Some(BTreeSet::new()));
        // Every pass reads everything when asked to.
        assert_eq!(memo.select(Reach::All, &wanted, &owned(&wanted), &[]), None);
    }

    #[test]
    fn a_memo_that_knows_nothing_reads_the_whole_table() {
        let wanted = table(100);
        let mut memo = Memo::default();
        assert_eq!(
            memo.select(Reach::Changed, &wanted, &owned(&wanted), &[]),
            None
        );
    }

    #[test]
    fn unwanted_draining_and_unread_services_are_read_again() {
        let wanted = table(100);
        let mut memo = settled(&wanted);
        let mut mine = owned(&wanted);
        // Owned and no longer wanted: read until deleted.
        mine.insert(OwnedService::from(key(500)));
        let drain = DrainRecord {
            service: key(3).into(),
            address: IpAddr::from([10, 1, 0, 2]),
            port: 8080,
            since: 0,
            timeout: 30,
        };
        let read = memo.select(Reach::Changed, &wanted, &mine, &[drain]);
        assert_eq!(read, Some([key(3), key(500)].into()));
        // A service whose destinations could not be read is not settled.
        let changed: BTreeMap<IpvsKey, IpvsService> = wanted
            .iter()
            .map(|(k, s)| {
                (
                    *k,
                    if k.port == 9 {
                        service(9, 2)
                    } else {
                        s.clone()
                    },
                )
            })
            .collect();
        let read = memo.select(Reach::Changed, &changed, &owned(&changed), &[]);
        memo.record(read.as_ref(), &changed, BTreeMap::new(), &[key(9)].into());
        let again = memo.select(Reach::Changed, &changed, &owned(&changed), &[]);
        assert_eq!(again, Some([key(9)].into()));
    }

    #[test]
    fn problems_are_reported_by_passes_that_do_not_read_their_service() {
        let wanted = table(100);
        let mut memo = settled(&wanted);
        let owner = ObjectKey::new("default", "web-4");
        let found = BTreeMap::from([(key(4), vec![(owner.clone(), "refused".to_string())])]);
        memo.record(Some(&[key(4)].into()), &wanted, found, &BTreeSet::new());
        // Not settled: read again by the next pass, and reported meanwhile.
        let read = memo.select(Reach::Changed, &wanted, &owned(&wanted), &[]);
        assert_eq!(read, Some([key(4)].into()));
        let mut report = SyncReport::default();
        memo.report(&mut report);
        assert_eq!(
            report.errors.get(&owner),
            Some(&vec!["refused".to_string()])
        );
        // Another service's pass keeps it.
        memo.record(
            Some(&[key(5)].into()),
            &wanted,
            BTreeMap::new(),
            &BTreeSet::new(),
        );
        let mut report = SyncReport::default();
        memo.report(&mut report);
        assert!(report.errors.contains_key(&owner));
        // Its own pass, finding nothing wrong, clears it.
        memo.record(
            Some(&[key(4)].into()),
            &wanted,
            BTreeMap::new(),
            &BTreeSet::new(),
        );
        let mut report = SyncReport::default();
        memo.report(&mut report);
        assert!(report.errors.is_empty());
    }

    #[test]
    fn a_service_wanted_again_is_read_again() {
        let wanted = table(100);
        let mut memo = settled(&wanted);
        let mut fewer = wanted.clone();
        fewer.remove(&key(8));
        // The pass that deletes it reads it (owned, no longer wanted).
        let read = memo.select(Reach::Changed, &fewer, &owned(&wanted), &[]);
        assert_eq!(read, Some([key(8)].into()));
        memo.record(read.as_ref(), &fewer, BTreeMap::new(), &BTreeSet::new());
        // Wanted again as before: the kernel no longer holds it.
        let read = memo.select(Reach::Changed, &wanted, &owned(&fewer), &[]);
        assert_eq!(read, Some([key(8)].into()));
    }

    #[test]
    fn rotating_passes_read_every_service_within_the_rounds() {
        let wanted = table(1000);
        let mut memo = settled(&wanted);
        let mut seen = BTreeSet::new();
        for _ in 0..ROTATION_ROUNDS {
            let read = memo
                .select(Reach::ChangedAndNext, &wanted, &owned(&wanted), &[])
                .unwrap_or_default();
            assert_eq!(read.len(), 1000 / ROTATION_ROUNDS);
            assert!(read.is_disjoint(&seen), "a round reads what another read");
            seen.extend(read);
        }
        assert_eq!(seen.len(), 1000);
        // The next round starts over.
        let read = memo.select(Reach::ChangedAndNext, &wanted, &owned(&wanted), &[]);
        assert_eq!(read.and_then(|r| r.first().copied()), Some(key(1)));
        // A small table is read whole by every rotating pass.
        let small = table(20);
        let mut memo = settled(&small);
        assert_eq!(
            memo.select(Reach::ChangedAndNext, &small, &owned(&small), &[]),
            None
        );
    }
}
