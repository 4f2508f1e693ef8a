//! Brings the kernel in line with a `NodePlan`. One module owns each kind of
//! kernel object, with a pure diff and the step that applies it:
//!
//! - [`tunnel`]: the tunnel devices backends decapsulate on (tunl0, gre0,
//!   ip6tnl0, ip6gre0) and VIPs sit on;
//! - [`fou`]: GUE receive ports;
//! - [`sysctl`]: the ARP and rp_filter sysctls of backends;
//! - [`nft`]: the DNAT and MSS table for port mapping;
//! - [`ipvs`] (diff in [`ipvs_diff`]): IPVS services and destinations;
//! - [`sync_daemon`]: the IPVS connection-sync daemons of directors;
//! - [`address`]: VIP addresses on tunl0 and on directors' interfaces.
//!
//! [`Dataplane::sync`] runs them in that order. Backends get their sysctls
//! and DNAT before their VIP, and a director's VIP follows its IPVS services,
//! so no node answers for a VIP it cannot serve. Failures are attributed to
//! the VirtualServices they concern so the others still get programmed.

pub mod address;
pub mod fou;
pub mod ipvs;
pub mod ipvs_diff;
pub mod nft;
pub mod probe;
pub mod sync_daemon;
pub mod sysctl;
pub mod tunnel;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tracing::debug;
use tunlb_api::NodeRole;
use tunlb_api::plan::{IpvsService, NodePlan, ObjectKey, ObjectPlan, TunnelDevice};

use crate::link::{LinkError, Links};
use crate::state::{Journal, OwnedAddress, OwnedState};

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
    /// Removed real servers kept at weight 0, as address:port, by the
    /// VirtualService whose service they are still in.
    pub draining: BTreeMap<ObjectKey, Vec<String>>,
    /// Some destination drains (of a wanted or a deleted service): a later
    /// pass sees whether it is done.
    pub drains_pending: bool,
    /// A step failed as a whole (the kernel or a tool could not be reached
    /// or read), as opposed to the kernel refusing one object.
    pub fault: bool,
    /// How this node's health probes reach each checked real server.
    pub probe_routes: probe::ProbeRoutes,
    /// The IPVS sync daemons tunlb runs on this node.
    pub sync_daemons: Vec<tunlb_ipvs::SyncDaemon>,
}

impl SyncReport {
    pub fn object_error(&mut self, key: &ObjectKey, msg: impl Into<String>) {
        self.errors.entry(key.clone()).or_default().push(msg.into());
    }

    /// Attributes an error to every object of `plan` for which `pred` holds.
    pub fn error_for(&mut self, plan: &NodePlan, pred: impl Fn(&ObjectPlan) -> bool, msg: &str) {
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

    fn drain(&mut self, d: &ipvs_diff::Draining) {
        self.drains_pending = true;
        if let Some(owner) = &d.owner {
            let (_, addr, port) = d.dest;
            let text = match addr {
                IpAddr::V4(a) => format!("{a}:{port}"),
                IpAddr::V6(a) => format!("[{a}]:{port}"),
            };
            self.draining.entry(owner.clone()).or_default().push(text);
        }
    }

    /// Whether the node itself failed this pass: what /healthz counts. An
    /// object the kernel refuses is reported in its status instead, since
    /// no restart or reschedule of the agent would fix it.
    pub fn node_failed(&self) -> bool {
        self.fault || !self.node_errors.is_empty()
    }

    /// Adds a later pass's findings to this one's.
    pub fn merge(&mut self, later: SyncReport) {
        self.writes.ipvs += later.writes.ipvs;
        self.writes.links += later.writes.links;
        self.writes.sysctls += later.writes.sysctls;
        self.writes.nft += later.writes.nft;
        self.node_errors.extend(later.node_errors);
        self.errors = later.errors;
        self.draining = later.draining;
        self.drains_pending = later.drains_pending;
        self.probe_routes = later.probe_routes;
        self.sync_daemons = later.sync_daemons;
        self.fault |= later.fault;
    }
}

/// The kernel side of one node.
pub struct Dataplane {
    links: Links,
    ipvs: Option<tunlb_ipvs::Client>,
    fou: Option<tunlb_ipvs::fou::FouClient>,
    /// The first firewall mark health probes use.
    pub probe_mark_base: u32,
    /// A prober runs (long-running modes): checked destinations get their
    /// probe services. One-shot commands keep none.
    pub probing: bool,
    /// The port-mapping rules last written: what a mapping keeps while its
    /// new rules cannot be written.
    nat_written: Option<nft::Written>,
    /// Connection sync between directors: while this node directs, it runs
    /// a master and a backup IPVS sync daemon with these settings.
    pub ipvs_sync: Option<sync_daemon::Settings>,
    /// Director VIPs (interface, address) a director election holds: their
    /// speaker adds and removes them, so the address sync leaves them be.
    pub elected: BTreeSet<(String, IpAddr)>,
    /// What passes found per IPVS service, for passes that read only some.
    ipvs_memo: ipvs::Memo,
}

/// Applies `settings`, the values to restore made durable before they are
/// overwritten (a kill between the two would lose them).
fn apply_sysctls(
    settings: &[(String, String)],
    state: &mut OwnedState,
    journal: &Journal<'_>,
) -> Result<usize, sysctl::ApplyError<crate::state::StateError>> {
    let mut originals = std::mem::take(&mut state.sysctl_originals);
    let res = sysctl::apply(settings, &mut originals, |o| {
        state.sysctl_originals = o.clone();
        journal.record(state)
    });
    state.sysctl_originals = originals;
    res
}

impl Dataplane {
    pub fn new() -> Result<Dataplane, LinkError> {
        Ok(Dataplane {
            links: Links::connect()?,
            ipvs: None,
            fou: None,
            probe_mark_base: probe::DEFAULT_MARK_BASE,
            probing: false,
            nat_written: None,
            ipvs_sync: None,
            elected: BTreeSet::new(),
            ipvs_memo: ipvs::Memo::default(),
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
        let c = tunlb_ipvs::Client::connect_with(crate::timeouts::ipvs_config()).await?;
        self.ipvs = Some(c.clone());
        Ok(c)
    }

    /// Sets the weights of `services`' destinations that the kernel holds
    /// with another weight, and nothing else: a change of health verdict
    /// reaches the kernel without a full pass (which follows and finds
    /// nothing more to do). The services are ones a pass programmed.
    /// Returns the writes made.
    pub async fn reweigh(&mut self, services: &[IpvsService]) -> Result<u64, tunlb_ipvs::Error> {
        let client = self.ipvs().await?;
        let mut ops = Vec::new();
        for svc in services {
            let key = ipvs_diff::service_key(&svc.key);
            for have in client.destinations(&key).await? {
                let at = (have.dest.addr, have.dest.port);
                if let Some(want) = svc.destinations.get(&at)
                    && want.weight != have.dest.weight
                {
                    ops.push(tunlb_ipvs::Op::SetDest(
                        key,
                        ipvs_diff::desired_dest(at.0, at.1, want),
                    ));
                }
            }
        }
        let mut writes = 0;
        for res in client.apply(&ops).await {
            res?;
            writes += 1;
        }
        Ok(writes)
    }

    /// Connects to the `fou` family on first use (resolving it loads fou).
    async fn fou(&mut self) -> Result<tunlb_ipvs::fou::FouClient, tunlb_ipvs::Error> {
        if let Some(c) = &self.fou {
            return Ok(c.clone());
        }
        let c = tunlb_ipvs::fou::FouClient::connect(crate::timeouts::kernel()).await?;
        self.fou = Some(c.clone());
        Ok(c)
    }

    /// The node's own addresses: everything except VIPs on tunnel devices and
    /// addresses tunlb added (recorded, or labelled as tunlb's while
    /// ownership is being rebuilt).
    pub async fn node_addresses(&self, state: &OwnedState) -> Result<BTreeSet<IpAddr>, LinkError> {
        let (_, addrs) = self.links.interfaces_and_addresses().await?;
        Ok(addrs
            .into_iter()
            .filter(|a| TunnelDevice::from_name(&a.interface).is_none())
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
        self.sync_within(plan, state, journal, ipvs::Reach::All)
            .await
    }

    /// [`Dataplane::sync`], reading the IPVS services `reach` asks for; the
    /// other steps read all their (few) kernel objects every time.
    pub async fn sync_within(
        &mut self,
        plan: &NodePlan,
        state: &mut OwnedState,
        journal: &Journal<'_>,
        reach: ipvs::Reach,
    ) -> SyncReport {
        let mut report = SyncReport::default();
        let links_before = self.links.writes();
        let ipvs_before = self.ipvs.as_ref().map(|c| c.writes()).unwrap_or(0);
        let is_backend = |o: &ObjectPlan| o.roles.contains(&NodeRole::Backend);

        if !tunnel::sync(&self.links, plan, state, journal, &mut report).await {
            report.fault = true;
        }
        let fou = self.fou();
        if !fou::sync(fou, plan, state, journal, &mut report).await {
            report.fault = true;
        }
        let mut settings = if plan.needs_backend_sysctls() {
            sysctl::backend_settings(&plan.tunnel_devices)
        } else {
            Vec::new()
        };
        let probe_paths = if self.probing {
            probe::wanted(plan)
        } else {
            BTreeSet::new()
        };
        let (sources, unroutable) = probe::sources(&probe_paths);
        if sources.values().any(IpAddr::is_ipv4) {
            match self.links.interfaces_and_addresses().await {
                Ok((_, addrs)) => settings.extend(sysctl::probe_settings(
                    &probe::reply_interfaces(&sources, &addrs),
                    &state.sysctl_originals,
                )),
                Err(e) => report
                    .node_errors
                    .push(format!("health probes: read interface addresses: {e}")),
            }
        }
        if !settings.is_empty() {
            match apply_sysctls(&settings, state, journal) {
                Ok(n) => report.writes.sysctls += n as u64,
                Err(e) => {
                    report.fault = true;
                    report.error_for(plan, is_backend, &e.to_string());
                }
            }
        }
        let (written, refused) =
            match nft::apply(&plan.dnat, &plan.mss, self.nat_written.as_ref()).await {
                Ok(applied) => {
                    report.writes.nft = applied.writes as u64;
                    for (vip, why) in &applied.refused {
                        report.error_for(
                            plan,
                            |o| is_backend(o) && o.vip == Some(*vip),
                            &format!("port mapping: {why}"),
                        );
                    }
                    self.nat_written = Some(applied.written);
                    (true, applied.refused)
                }
                Err(e) => {
                    report.fault = true;
                    report.error_for(plan, is_backend, &format!("port mapping: {e}"));
                    (false, BTreeMap::new())
                }
            };
        let mapped = |vip: &IpAddr| written && !refused.contains_key(vip);
        let mut memo = std::mem::take(&mut self.ipvs_memo);
        let outcome = ipvs::sync(
            self.ipvs(),
            plan,
            state,
            &mut memo,
            reach,
            journal,
            &mut report,
            unix_now(),
        )
        .await;
        self.ipvs_memo = memo;
        // After the services: IPVS's sysctls exist once its module is in.
        if !plan.ipvs.is_empty() && outcome.read {
            let director = sysctl::director_settings();
            match apply_sysctls(&director, state, journal) {
                Ok(n) => report.writes.sysctls += n as u64,
                Err(e) => report.node_errors.push(format!("IPVS settings: {e}")),
            }
            settings.extend(director);
        }
        // After the services too: a backup daemon's connections find their
        // real servers among them.
        let wanted_daemons = match &self.ipvs_sync {
            Some(s) if !plan.ipvs.is_empty() => s.daemons(),
            _ => Vec::new(),
        };
        report.sync_daemons =
            sync_daemon::sync(self.ipvs(), &wanted_daemons, state, journal, &mut report).await;
        let probe_client = if probe_paths.is_empty() && state.probe_services.is_empty() {
            None
        } else {
            match self.ipvs().await {
                Ok(c) => Some(c),
                Err(e) => {
                    report.node_errors.push(format!("health probes: IPVS: {e}"));
                    None
                }
            }
        };
        let marks = probe::sync(
            probe_client.as_ref(),
            &probe_paths,
            self.probe_mark_base,
            state,
            journal,
            &mut report,
        )
        .await;
        report.probe_routes = probe::ProbeRoutes {
            marks,
            sources,
            unroutable,
        };
        let addresses_read = address::sync(
            &self.links,
            plan,
            &self.elected,
            outcome.served.as_ref(),
            &mapped,
            state,
            journal,
            &mut report,
        )
        .await;
        let ipvs_needed = !plan.ipvs.is_empty() || !state.ipvs_services.is_empty();
        if !addresses_read || (ipvs_needed && !outcome.read) {
            report.fault = true;
        }
        if addresses_read && outcome.read {
            // Only a completed look at the kernel ends a rebuild: until then
            // each pass tries again.
            state.rebuild = false;
        }
        let stale: Vec<(String, String)> = sysctl::every_setting(&state.sysctl_originals)
            .into_iter()
            .filter(|(name, _)| !settings.iter().any(|(n, _)| n == name))
            .collect();
        if stale
            .iter()
            .any(|(name, _)| state.sysctl_originals.contains_key(name))
        {
            match sysctl::restore(&stale, &mut state.sysctl_originals) {
                Ok(n) => report.writes.sysctls += n as u64,
                Err(e) => report.node_errors.push(e.to_string()),
            }
        }
        tunnel::release(&self.links, plan, state, &mut report).await;

        report.writes.links += self.links.writes() - links_before;
        report.writes.ipvs = self.ipvs.as_ref().map(|c| c.writes()).unwrap_or(0) - ipvs_before;
        debug!(writes = ?report.writes, "sync done");
        report
    }
}

/// The running kernel's release (what `uname -r` prints), from
/// kernel.osrelease.
pub fn kernel_release() -> Option<String> {
    sysctl::read("kernel.osrelease")
        .ok()
        .filter(|r| !r.is_empty())
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> Option<(u32, u32)> {
    tunlb_api::plan::kernel_version(&kernel_release()?)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_node_faults_fail_the_node() {
        let mut r = SyncReport::default();
        r.object_error(&ObjectKey::new("a", "b"), "scheduler missing");
        assert!(!r.node_failed(), "an object's refusal is its own status");
        r.node_errors.push("list destinations: timed out".into());
        assert!(r.node_failed());
        let mut r = SyncReport {
            fault: true,
            ..SyncReport::default()
        };
        assert!(r.node_failed());
        r.merge(SyncReport::default());
        assert!(
            r.node_failed(),
            "a later pass does not hide an earlier fault"
        );
    }
}
