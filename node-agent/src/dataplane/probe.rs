//! The kernel side of health probes: one IPVS firewall-mark service per
//! checked real server (and encapsulation), holding that server as its only
//! tunnel destination. A probe socket carrying the mark connects to VIP:port;
//! IPVS matches mark services before address services, so the probe leaves
//! encapsulated to exactly that server, the way a client's packets do, and
//! the server answers from the VIP straight back to the director.
//!
//! The answer's source is the VIP, which a director holds itself: Linux
//! drops it as a martian unless `accept_local` is on for the interface it
//! arrives on, and strict `rp_filter` drops it even then (loose mode keeps
//! it). [`reply_interfaces`] finds those interfaces; the sysctl step sets
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use tracing::info;
use tunlb_api::NodeRole;
use tunlb_api::plan::NodePlan;
use tunlb_api::validate::ValidTunnel;
use tunlb_ipvs::{AddressFamily, Client, Destination, ForwardMethod, Service, ServiceKey};

use super::SyncReport;
use super::ipvs_diff::tunnel_type;
use crate::state::{Journal, OwnedProbeService, OwnedState};

/// The first firewall mark probes use, unless told otherwise.
pub const DEFAULT_MARK_BASE: u32 = 0x7e00_0000;
/// How many marks probes may use from the base on: one per real server and
/// encapsulation.
pub const MARK_COUNT: u32 = 0x1_0000;

/// A real server as a probe reaches it.
pub type ProbePath = (IpAddr, ValidTunnel);

/// Where probes of each path go out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProbeRoutes {
    /// The mark whose IPVS service carries probes to the path's server.
    pub marks: BTreeMap<ProbePath, u32>,
    /// The node's own address towards each server: probes are bound to it,
    /// since the kernel would otherwise pick the VIP (a local address) and
    /// the server would answer itself.
    pub sources: BTreeMap<IpAddr, IpAddr>,
    /// Servers with no route from this node, with the reason.
    pub unroutable: BTreeMap<IpAddr, String>,
}

/// The paths the plan's checked destinations need (directors only).
pub fn wanted(plan: &NodePlan) -> BTreeSet<ProbePath> {
    plan.ipvs
        .values()
        .filter(|s| s.health.is_some())
        .filter(|s| {
            plan.objects
                .get(&s.owner)
                .is_some_and(|o| o.roles.contains(&NodeRole::Director))
        })
        .flat_map(|s| s.destinations.iter().map(|((a, _), d)| (*a, d.tunnel)))
        .collect()
}

/// The node's source address towards `server`, as the kernel's routing
/// picks it: connecting a UDP socket routes without sending anything.
pub fn source_for(server: IpAddr) -> Result<IpAddr, String> {
    let any: SocketAddr = match server {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(any).map_err(|e| format!("no socket to route with: {e}"))?;
    sock.connect((server, 9))
        .map_err(|e| format!("no route to {server}: {e}"))?;
    sock.local_addr()
        .map(|a| a.ip())
        .map_err(|e| format!("no source address towards {server}: {e}"))
}

/// The sources of every server of `paths`.
pub fn sources(
    paths: &BTreeSet<ProbePath>,
) -> (BTreeMap<IpAddr, IpAddr>, BTreeMap<IpAddr, String>) {
    let servers: BTreeSet<IpAddr> = paths.iter().map(|(a, _)| *a).collect();
    let mut ok = BTreeMap::new();
    let mut bad = BTreeMap::new();
    for s in servers {
        match source_for(s) {
            Ok(src) => {
                ok.insert(s, src);
            }
            Err(e) => {
                bad.insert(s, e);
            }
        }
    }
    (ok, bad)
}

/// The interfaces holding IPv4 `sources`: answers from the VIP arrive there.
pub fn reply_interfaces(
    sources: &BTreeMap<IpAddr, IpAddr>,
    addresses: &[crate::link::Address],
) -> BTreeSet<String> {
    sources
        .values()
        .filter(|s| s.is_ipv4())
        .filter_map(|s| addresses.iter().find(|a| a.address == *s))
        .map(|a| a.interface.clone())
        .collect()
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn key(p: &OwnedProbeService) -> ServiceKey {
    ServiceKey::FwMark {
        family: family(p.address),
        mark: p.mark,
    }
}

/// Brings the probe services in line with `wanted`: creates missing ones
/// (recorded as owned first), deletes owned ones no longer wanted, never
/// touches a mark service tunlb did not create. Returns the mark of every
/// path that has its service.
pub async fn sync(
    client: Option<&Client>,
    wanted: &BTreeSet<ProbePath>,
    mark_base: u32,
    state: &mut OwnedState,
    journal: &Journal<'_>,
    report: &mut SyncReport,
) -> BTreeMap<ProbePath, u32> {
    let mut marks = BTreeMap::new();
    if wanted.is_empty() && state.probe_services.is_empty() {
        return marks;
    }
    let Some(client) = client else {
        return marks;
    };
    let existing: BTreeSet<(AddressFamily, u32)> = match client
        .services_where(|k| matches!(k, ServiceKey::FwMark { .. }))
        .await
    {
        Ok(d) => d
            .iter()
            .filter_map(|s| match s.key {
                ServiceKey::FwMark { family, mark } => Some((family, mark)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            report
                .node_errors
                .push(format!("health probes: list IPVS mark services: {e}"));
            return marks;
        }
    };
    // Removed by hand: forgotten, and made again below if still wanted.
    state
        .probe_services
        .retain(|p| existing.contains(&(family(p.address), p.mark)));

    let stale: Vec<OwnedProbeService> = state
        .probe_services
        .iter()
        .filter(|p| !wanted.contains(&p.path()))
        .cloned()
        .collect();
    for p in stale {
        match client.del_service(&key(&p)).await {
            Ok(()) => {
                info!(mark = p.mark, server = %p.address, "removed health probe service");
                state.probe_services.remove(&p);
            }
            Err(e) => report.node_errors.push(format!(
                "health probes: delete IPVS mark service {} (to {}): {e}",
                p.mark, p.address
            )),
        }
    }

    let have: BTreeMap<ProbePath, u32> = state
        .probe_services
        .iter()
        .map(|p| (p.path(), p.mark))
        .collect();
    let mut taken: BTreeSet<u32> = existing.iter().map(|(_, m)| *m).collect();
    taken.extend(have.values());
    let mut next = mark_base;
    let mut new = Vec::new();
    for path in wanted.iter().filter(|p| !have.contains_key(*p)) {
        while taken.contains(&next) && next - mark_base < MARK_COUNT {
            next += 1;
        }
        if next - mark_base >= MARK_COUNT {
            report.node_errors.push(format!(
                "health probes: all {MARK_COUNT} marks from {mark_base:#x} are taken; {} is not probed",
                path.0
            ));
            break;
        }
        taken.insert(next);
        new.push(OwnedProbeService::new(next, *path));
    }
    if !new.is_empty() {
        state.probe_services.extend(new.iter().cloned());
        if let Err(e) = journal.record(state) {
            for p in &new {
                state.probe_services.remove(p);
            }
            report.node_errors.push(format!(
                "health probes: cannot record ownership before creating mark services: {e}"
            ));
            new.clear();
        }
    }
    for p in new {
        let k = key(&p);
        let mut dest = Destination::tunnel(p.address, 0, 1);
        dest.forward = ForwardMethod::Tunnel;
        dest.tunnel_type = tunnel_type(p.kind);
        dest.tunnel_port = p.port;
        dest.tunnel_flags = p.flags;
        let res = match client.new_service(&Service::new(k, "rr")).await {
            Ok(()) => client.new_dest(&k, &dest).await.map_err(|e| (true, e)),
            Err(e) => Err((false, e)),
        };
        if let Err((made, e)) = res {
            report.node_errors.push(format!(
                "health probes: create IPVS mark service {} (to {}): {e}",
                p.mark, p.address
            ));
            // A half-made service stays recorded until it is gone, so a
            // later pass deletes it.
            if !made || client.del_service(&k).await.is_ok() {
                state.probe_services.remove(&p);
            }
            continue;
        }
        info!(mark = p.mark, server = %p.address, "added health probe service");
    }
    for p in &state.probe_services {
        if wanted.contains(&p.path()) {
            marks.insert(p.path(), p.mark);
        }
    }
    marks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_picks_a_source_without_sending() {
        let src = source_for("127.0.0.1".parse().expect("literal")).expect("loopback routes");
        assert!(src.is_loopback());
    }
}
