//! Brings the kernel in line with a `NodePlan`: tunl0 and sysctls, VIP
//! addresses, IPVS services and the DNAT table. Each step reads the kernel
//! once, diffs, and writes only the difference; failures are attributed to the
//! VirtualServices they concern so the others still get programmed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tracing::{debug, info, warn};
use tunlb_api::NodeRole;
use tunlb_api::plan::{IpvsKey, IpvsService, NodePlan, ObjectKey};
use tunlb_ipvs::{Op, Service, ServiceKey};

use crate::ipvs_diff::{self, Current, ipvs_key};
use crate::link::{LinkError, LinkInfo, Links, TUNL0};
use crate::state::{Journal, OwnedAddress, OwnedService, OwnedState};
use crate::{nat, sysctl};

/// Kernel writes made by one sync, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Writes {
    pub ipvs: u64,
    pub links: u64,
    pub sysctls: u64,
    pub nft: u64,
}

impl Writes {
    pub fn total(&self) -> u64 {
        self.ipvs + self.links + self.sysctls + self.nft
    }
}

#[derive(Debug, Default)]
pub struct SyncReport {
    pub writes: Writes,
    /// Problems per VirtualService.
    pub errors: BTreeMap<ObjectKey, Vec<String>>,
    /// Problems not tied to one object.
    pub node_errors: Vec<String>,
}

impl SyncReport {
    fn object_error(&mut self, key: &ObjectKey, msg: impl Into<String>) {
        self.errors.entry(key.clone()).or_default().push(msg.into());
    }

    /// Attributes an error to every object of `plan` for which `pred` holds.
    fn error_for(
        &mut self,
        plan: &NodePlan,
        pred: impl Fn(&tunlb_api::plan::ObjectPlan) -> bool,
        msg: &str,
    ) {
        let keys: Vec<ObjectKey> = plan
            .objects
            .iter()
            .filter(|(_, o)| o.error.is_none() && pred(o))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            self.node_errors.push(msg.to_string());
        }
        for k in keys {
            self.object_error(&k, msg);
        }
    }
}

/// The kernel side of one node.
pub struct Dataplane {
    links: Links,
    ipvs: Option<tunlb_ipvs::Client>,
}

impl Dataplane {
    pub fn new() -> Result<Dataplane, LinkError> {
        Ok(Dataplane {
            links: Links::connect()?,
            ipvs: None,
        })
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    /// Connects to IPVS on first use (resolving the family loads ip_vs).
    pub async fn ipvs(&mut self) -> Result<tunlb_ipvs::Client, tunlb_ipvs::Error> {
        if let Some(c) = &self.ipvs {
            return Ok(c.clone());
        }
        let c = tunlb_ipvs::Client::connect().await?;
        self.ipvs = Some(c.clone());
        Ok(c)
    }

    /// The node's own addresses: everything except VIPs on tunl0 and
    /// addresses tunlb added (recorded, or labelled as tunlb's while
    /// ownership is being rebuilt).
    pub async fn node_addresses(&self, state: &OwnedState) -> Result<BTreeSet<IpAddr>, LinkError> {
        let ifaces = self.links.interfaces().await?;
        let addrs = self.links.addresses(&ifaces).await?;
        Ok(addrs
            .into_iter()
            .filter(|a| a.interface != TUNL0)
            .filter(|a| !a.is_tunlb_labelled())
            .filter(|a| {
                !state.addresses.contains(&OwnedAddress {
                    interface: a.interface.clone(),
                    address: a.address,
                })
            })
            .map(|a| a.address)
            .collect())
    }

    /// Applies `plan`, updating `state` with what tunlb now owns. What a
    /// step is about to create is made durable through `journal` first.
    pub async fn sync(
        &mut self,
        plan: &NodePlan,
        state: &mut OwnedState,
        journal: &Journal<'_>,
    ) -> SyncReport {
        let mut report = SyncReport::default();
        let links_before = self.links.writes();
        let ipvs_before = self.ipvs.as_ref().map(|c| c.writes()).unwrap_or(0);

        let addresses_read = self.sync_links(plan, state, journal, &mut report).await;
        let services_read = self.sync_ipvs(plan, state, journal, &mut report).await;
        if addresses_read && services_read {
            // Only a completed look at the kernel ends a rebuild: until then
            // each pass tries again.
            state.rebuild = false;
        }
        match nat::apply(&plan.dnat, &plan.mss).await {
            Ok(n) => report.writes.nft = n as u64,
            Err(e) => report.error_for(
                plan,
                |o| o.roles.contains(&NodeRole::Backend),
                &format!("port mapping: {e}"),
            ),
        }
        if !plan.needs_backend_sysctls() && !state.sysctl_originals.is_empty() {
            match sysctl::restore(&sysctl::backend_settings(), &mut state.sysctl_originals) {
                Ok(n) => report.writes.sysctls += n as u64,
                Err(e) => report.node_errors.push(e.to_string()),
            }
        }

        report.writes.links = self.links.writes() - links_before;
        report.writes.ipvs = self.ipvs.as_ref().map(|c| c.writes()).unwrap_or(0) - ipvs_before;
        debug!(writes = ?report.writes, "sync done");
        report
    }

    /// Returns whether the kernel's addresses were read (a rebuild of
    /// ownership took place if one was due).
    async fn sync_links(
        &mut self,
        plan: &NodePlan,
        state: &mut OwnedState,
        journal: &Journal<'_>,
        report: &mut SyncReport,
    ) -> bool {
        if plan.needs_tunl0()
            && let Err(e) = self.links.ensure_tunl0().await
        {
            report.error_for(plan, |_| true, &e.to_string());
            return false;
        }
        if plan.needs_backend_sysctls() {
            match sysctl::apply(&sysctl::backend_settings(), &mut state.sysctl_originals) {
                Ok(n) => report.writes.sysctls += n as u64,
                Err(e) => report.error_for(
                    plan,
                    |o| o.roles.contains(&NodeRole::Backend),
                    &e.to_string(),
                ),
            }
        }

        let ifaces = match self.links.interfaces().await {
            Ok(i) => i,
            Err(e) => {
                report.node_errors.push(e.to_string());
                return false;
            }
        };
        let addrs = match self.links.addresses(&ifaces).await {
            Ok(a) => a,
            Err(e) => {
                report.node_errors.push(e.to_string());
                return false;
            }
        };
        if state.rebuild {
            let mut adopted = 0;
            for a in adoptable_addresses(&addrs) {
                if state.addresses.insert(a.clone()) {
                    info!(vip = %a.address, interface = %a.interface, "adopted VIP address: it carries tunlb's label");
                    adopted += 1;
                }
            }
            if adopted > 0 {
                warn!(
                    addresses = adopted,
                    "ownership rebuilt: adopted addresses carrying tunlb's label"
                );
            }
        }
        let by_name: BTreeMap<&str, &LinkInfo> =
            ifaces.values().map(|l| (l.name.as_str(), l)).collect();

        let mut desired: BTreeSet<(String, IpAddr)> = plan
            .backend_vips
            .iter()
            .map(|a| (TUNL0.to_string(), *a))
            .collect();
        desired.extend(
            plan.director_vips
                .iter()
                .map(|b| (b.interface.clone(), b.address)),
        );

        // Which addresses to add is decided first, so that they are recorded
        // as owned, durably, before the first one is written.
        let mut to_add: Vec<(&LinkInfo, IpAddr)> = Vec::new();
        for (iface, vip) in &desired {
            let owners = |o: &tunlb_api::plan::ObjectPlan| o.vip == Some(*vip);
            let Some(link) = by_name.get(iface.as_str()) else {
                report.error_for(
                    plan,
                    owners,
                    &LinkError::MissingInterface(iface.clone()).to_string(),
                );
                continue;
            };
            let present = addrs
                .iter()
                .any(|a| a.index == link.index && a.address == *vip);
            if !present {
                to_add.push((link, *vip));
            }
            if iface != TUNL0 && !link.up {
                warn!(interface = %iface, "VIP interface is down");
            }
        }
        let intents: Vec<OwnedAddress> = to_add
            .iter()
            .map(|(link, vip)| OwnedAddress {
                interface: link.name.clone(),
                address: *vip,
            })
            .filter(|o| !state.addresses.contains(o))
            .collect();
        if !intents.is_empty() {
            state.addresses.extend(intents.iter().cloned());
            if let Err(e) = journal.record(state) {
                // Nothing is created that could not be recorded as ours.
                for o in &intents {
                    state.addresses.remove(o);
                }
                let msg = format!("cannot record ownership before adding addresses: {e}");
                let vips: BTreeSet<IpAddr> = to_add.iter().map(|(_, v)| *v).collect();
                report.error_for(plan, |o| o.vip.is_some_and(|v| vips.contains(&v)), &msg);
                to_add.clear();
            }
        }
        for (link, vip) in to_add {
            let owners = |o: &tunlb_api::plan::ObjectPlan| o.vip == Some(vip);
            match self.links.add_host_address(link, vip).await {
                Ok(()) => info!(%vip, interface = %link.name, "added VIP"),
                Err(e) => {
                    state.addresses.remove(&OwnedAddress {
                        interface: link.name.clone(),
                        address: vip,
                    });
                    report.error_for(plan, owners, &e.to_string());
                }
            }
        }

        let stale: Vec<OwnedAddress> = state
            .addresses
            .iter()
            .filter(|o| !desired.contains(&(o.interface.clone(), o.address)))
            .cloned()
            .collect();
        for owned in stale {
            let found = addrs
                .iter()
                .find(|a| a.interface == owned.interface && a.address == owned.address);
            if let Some(a) = found {
                if let Err(e) = self.links.delete_address(a).await {
                    report.node_errors.push(e.to_string());
                    continue;
                }
                info!(vip = %owned.address, interface = %owned.interface, "removed VIP");
            }
            state.addresses.remove(&owned);
        }
        true
    }

    /// Returns whether the kernel's services were read (a rebuild of
    /// ownership took place if one was due).
    async fn sync_ipvs(
        &mut self,
        plan: &NodePlan,
        state: &mut OwnedState,
        journal: &Journal<'_>,
        report: &mut SyncReport,
    ) -> bool {
        if plan.ipvs.is_empty() && state.ipvs_services.is_empty() {
            // Nothing wanted: nothing could be adopted either.
            return true;
        }
        let is_director = |o: &tunlb_api::plan::ObjectPlan| o.roles.contains(&NodeRole::Director);
        let client = match self.ipvs().await {
            Ok(c) => c,
            Err(e) => {
                report.error_for(plan, is_director, &format!("IPVS: {e}"));
                return false;
            }
        };
        let started = std::time::Instant::now();
        // Only the services this node wants or owns are kept from the dump.
        let wanted = |k: &ServiceKey| {
            ipvs_key(k).is_some_and(|k| {
                plan.ipvs.contains_key(&k) || state.ipvs_services.contains(&k.into())
            })
        };
        let dump = match client.services_where(wanted).await {
            Ok(d) => d,
            Err(e) => {
                report.node_errors.push(format!("list IPVS services: {e}"));
                return false;
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
            self.adopt_services(&client, plan, state, &current, report)
                .await;
        }
        let owned: BTreeSet<IpvsKey> = state.ipvs_services.iter().map(|k| (*k).into()).collect();
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

        // The diff is pure per service, so it runs on slices of the desired
        // services (in key order), then on the owned ones no longer wanted:
        // the same ops in the same order as one diff of everything, while
        // destination dumps and pending ops stay bounded by the slice size.
        let mut refused: BTreeSet<IpvsKey> = BTreeSet::new();
        let mut stats = ChunkStats::default();
        let desired: Vec<(&IpvsKey, &IpvsService)> = plan_ipvs.iter().collect();
        for slice in desired.chunks(IPVS_CHUNK) {
            let chunk: BTreeMap<IpvsKey, IpvsService> =
                slice.iter().map(|(k, v)| (**k, (*v).clone())).collect();
            let chunk_owned: BTreeSet<IpvsKey> = chunk
                .keys()
                .filter(|k| owned.contains(*k))
                .copied()
                .collect();
            self.sync_ipvs_chunk(
                &client,
                plan,
                state,
                report,
                (&chunk, &chunk_owned),
                &current,
                &mut refused,
                &mut stats,
            )
            .await;
        }
        let stale: Vec<IpvsKey> = owned
            .iter()
            .filter(|k| !plan.ipvs.contains_key(*k))
            .copied()
            .collect();
        for slice in stale.chunks(IPVS_CHUNK) {
            let chunk_owned: BTreeSet<IpvsKey> = slice.iter().copied().collect();
            self.sync_ipvs_chunk(
                &client,
                plan,
                state,
                report,
                (&BTreeMap::new(), &chunk_owned),
                &current,
                &mut refused,
                &mut stats,
            )
            .await;
        }
        debug!(
            ms = started.elapsed().as_millis(),
            memory = %crate::memory::summary(),
            dest_dumps = stats.dumps,
            ops = stats.ops,
            "IPVS synced"
        );
        true
    }

    /// Takes ownership of the services in the kernel that are exactly what
    /// this node's plan asks for (see [`ipvs_diff::adoptable`]); anything
    /// else stays foreign.
    async fn adopt_services(
        &self,
        client: &tunlb_ipvs::Client,
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
        for slice in candidates.chunks(IPVS_CHUNK) {
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

    /// Dumps the destinations of the owned services among `desired` and
    /// `owned`, diffs them and applies the result.
    #[allow(clippy::too_many_arguments)]
    async fn sync_ipvs_chunk(
        &self,
        client: &tunlb_ipvs::Client,
        plan: &NodePlan,
        state: &mut OwnedState,
        report: &mut SyncReport,
        (desired, owned): (&BTreeMap<IpvsKey, IpvsService>, &BTreeSet<IpvsKey>),
        services: &[Service],
        refused: &mut BTreeSet<IpvsKey>,
        stats: &mut ChunkStats,
    ) {
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
                let destinations = Vec::new();
                Some((
                    *k,
                    Current {
                        service,
                        destinations,
                    },
                ))
            })
            .collect();
        let need_dests: Vec<ServiceKey> = owned
            .iter()
            .filter_map(|k| current.get(k))
            .map(|c| c.service.key)
            .collect();
        let dests = client.destinations_many(&need_dests).await;
        stats.dumps += need_dests.len();
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
                Err(e) => report
                    .node_errors
                    .push(format!("list destinations of {key}: {e}")),
            }
        }

        let diff = ipvs_diff::diff(desired, &current, owned);
        // Done with this slice's destinations.
        drop(current);
        if diff.ops.is_empty() {
            return;
        }
        stats.ops += diff.ops.len();
        let (ops, targets): (Vec<Op>, Vec<(Option<ObjectKey>, IpvsKey)>) = diff
            .ops
            .into_iter()
            .map(|p| (p.op, (p.owner, p.key)))
            .unzip();
        let results = client.apply(&ops).await;
        // After a refused NEW_SERVICE its destinations fail with ESRCH: that is noise.
        for ((op, (owner, key)), res) in ops.iter().zip(targets).zip(results) {
            if let Err(e) = &res
                && refused.contains(&key)
                && e.errno() == Some(libc::ESRCH)
            {
                continue;
            }
            if res.is_err() && matches!(op, Op::NewService(_)) {
                refused.insert(key);
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
                    let msg = explain(op, &e, plan.ipvs.get(&key).map(|s| s.scheduler.as_str()));
                    match &owner {
                        Some(owner) => report.object_error(owner, msg),
                        None => report.node_errors.push(msg),
                    }
                }
            }
        }
    }
}

/// Services per slice of the IPVS sync.
const IPVS_CHUNK: usize = 256;

#[derive(Default)]
struct ChunkStats {
    dumps: usize,
    ops: usize,
}

/// Addresses that carry tunlb's label: only tunlb adds them, so they are
/// tunlb's even when no record says so.
pub fn adoptable_addresses(addrs: &[crate::link::Address]) -> Vec<OwnedAddress> {
    addrs
        .iter()
        .filter(|a| a.is_tunlb_labelled())
        .map(|a| OwnedAddress {
            interface: a.interface.clone(),
            address: a.address,
        })
        .collect()
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
