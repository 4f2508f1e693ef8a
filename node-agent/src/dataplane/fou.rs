//! GUE receive ports on backends (what `ip fou add port N gue` does): the
//! kernel decapsulates UDP to that port and hands the inner packet to
//! tunl0 or ip6tnl0, which deliver it to the VIP. Only ports tunlb added
//! are ever deleted; a GUE port someone else added is used as it is.

use std::collections::BTreeSet;

use tunlb_api::NodeRole;
use tunlb_api::plan::{FouPort, NodePlan, ObjectPlan, backend_receivers};
use tunlb_ipvs::fou::{FouClient, FouEntry};

use super::SyncReport;
use crate::state::{Journal, OwnedFouPort, OwnedState};

/// What to do to the kernel's FOU ports.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub add: Vec<FouPort>,
    pub remove: Vec<OwnedFouPort>,
    /// Owned but gone from the kernel: only the record goes.
    pub forget: Vec<OwnedFouPort>,
    /// Wanted, but the port is someone else's direct (non-GUE) FOU port.
    pub taken: Vec<FouPort>,
}

fn owned(p: FouPort) -> OwnedFouPort {
    OwnedFouPort {
        port: p.port,
        ipv6: p.ipv6,
    }
}

pub fn diff(
    wanted: &BTreeSet<FouPort>,
    kernel: &[FouEntry],
    mine: &BTreeSet<OwnedFouPort>,
) -> Changes {
    let find = |port: u16, ipv6: bool| kernel.iter().find(|e| e.port == port && e.ipv6 == ipv6);
    let mut out = Changes::default();
    for &w in wanted {
        match find(w.port, w.ipv6) {
            None => out.add.push(w),
            Some(e) if !e.gue => out.taken.push(w),
            Some(_) => {}
        }
    }
    for &o in mine {
        if wanted.contains(&FouPort {
            port: o.port,
            ipv6: o.ipv6,
        }) {
            continue;
        }
        match find(o.port, o.ipv6) {
            Some(_) => out.remove.push(o),
            None => out.forget.push(o),
        }
    }
    out
}

fn needs(o: &ObjectPlan, port: FouPort) -> bool {
    match (o.vip, o.tunnel) {
        (Some(vip), Some(t)) => {
            o.roles.contains(&NodeRole::Backend) && backend_receivers(vip, &t).1 == Some(port)
        }
        _ => false,
    }
}

/// Brings the GUE ports in line with the plan. `client` connects on first
/// use. Returns false when the ports could not be read or changed.
pub async fn sync<F>(
    client: F,
    plan: &NodePlan,
    state: &mut OwnedState,
    journal: &Journal<'_>,
    report: &mut SyncReport,
) -> bool
where
    F: std::future::Future<Output = Result<FouClient, tunlb_ipvs::Error>>,
{
    if plan.fou_ports.is_empty() && state.fou_ports.is_empty() {
        return true;
    }
    let fail_all = |report: &mut SyncReport, msg: &str| {
        for &p in &plan.fou_ports {
            report.error_for(plan, |o| needs(o, p), &format!("{p}: {msg}"));
        }
        if plan.fou_ports.is_empty() {
            report.node_errors.push(msg.to_string());
        }
    };
    let client = match client.await {
        Ok(c) => c,
        Err(tunlb_ipvs::Error::FamilyNotFound) => {
            fail_all(
                report,
                "kernel module fou is not loaded (modprobe fou; the kernel does not load it on demand): GUE cannot be received",
            );
            return false;
        }
        Err(e) => {
            fail_all(report, &e.to_string());
            return false;
        }
    };
    let kernel = match client.list().await {
        Ok(k) => k,
        Err(e) => {
            fail_all(report, &e.to_string());
            return false;
        }
    };
    let changes = diff(&plan.fou_ports, &kernel, &state.fou_ports);
    let mut ok = true;
    for p in changes.taken {
        report.error_for(
            plan,
            |o| needs(o, p),
            &format!(
                "{p}: UDP port {} already carries a direct (non-GUE) FOU port that tunlb did not add",
                p.port
            ),
        );
    }
    if !changes.add.is_empty() {
        let before = state.fou_ports.clone();
        state
            .fou_ports
            .extend(changes.add.iter().copied().map(owned));
        if let Err(e) = journal.record(state) {
            state.fou_ports = before;
            fail_all(
                report,
                &format!("cannot record the change before making it: {e}"),
            );
            return false;
        }
    }
    for p in changes.add {
        report.writes.links += 1;
        if let Err(e) = client.add_gue(p.port, p.ipv6).await {
            ok = false;
            state.fou_ports.remove(&owned(p));
            report.error_for(plan, |o| needs(o, p), &e.to_string());
        }
    }
    for o in changes.remove {
        report.writes.links += 1;
        match client.del(o.port, o.ipv6).await {
            Ok(()) => {
                state.fou_ports.remove(&o);
            }
            Err(e) if e.errno() == Some(libc::ENOENT) => {
                state.fou_ports.remove(&o);
            }
            Err(e) => {
                ok = false;
                report.node_errors.push(e.to_string());
            }
        }
    }
    for o in changes.forget {
        state.fou_ports.remove(&o);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(p: u16, ipv6: bool) -> FouPort {
        FouPort { port: p, ipv6 }
    }

    fn entry(p: u16, ipv6: bool, gue: bool) -> FouEntry {
        FouEntry { port: p, ipv6, gue }
    }

    #[test]
    fn adds_uses_removes_only_its_own() {
        let wanted = BTreeSet::from([port(6080, false), port(6080, true), port(7000, false)]);
        let kernel = [
            entry(6080, false, true),  // someone's GUE port: used as it is
            entry(7000, false, false), // a direct FOU port: taken
            entry(5555, false, true),  // not ours: untouched
            entry(9000, false, true),  // ours, no longer wanted
        ];
        let mine = BTreeSet::from([
            OwnedFouPort {
                port: 9000,
                ipv6: false,
            },
            OwnedFouPort {
                port: 9001,
                ipv6: true,
            },
        ]);
        let c = diff(&wanted, &kernel, &mine);
        assert_eq!(c.add, vec![port(6080, true)]);
        assert_eq!(c.taken, vec![port(7000, false)]);
        assert_eq!(
            c.remove,
            vec![OwnedFouPort {
                port: 9000,
                ipv6: false
            }]
        );
        assert_eq!(
            c.forget,
            vec![OwnedFouPort {
                port: 9001,
                ipv6: true
            }]
        );
    }
}
