//! Desired IPVS services vs. what the kernel holds -> the minimal list of
//! netlink operations. Pure, so it is unit-tested without a kernel.
//!
//! Rules: an unchanged service costs nothing; a weight change is one SET_DEST;
//! a removed real server is first set to weight 0 (no new connections) and then
//! deleted (established connections keep their entry until they end); a
//! service tunlb does not own is never edited or deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tunlb_api::Protocol;
use tunlb_api::TunnelKind;
use tunlb_api::plan::{IpvsDest, IpvsKey, IpvsService, ObjectKey};
use tunlb_ipvs::{
    Destination, DestinationEntry, ForwardMethod, Op, Service, ServiceKey, TunnelType,
};

/// Flags the kernel sets by itself and reports back; never part of a comparison.
const KERNEL_ONLY_FLAGS: u32 = 0x0002;

/// A service as dumped from the kernel, with its destinations.
#[derive(Debug, Clone)]
pub struct Current {
    pub service: Service,
    pub destinations: Vec<DestinationEntry>,
}

/// One operation and the object it is done for (for error attribution).
#[derive(Debug, Clone)]
pub struct PlannedOp {
    pub op: Op,
    pub owner: Option<ObjectKey>,
    pub key: IpvsKey,
}

#[derive(Debug, Default)]
pub struct Diff {
    pub ops: Vec<PlannedOp>,
    /// Desired services that already exist in the kernel and are not tunlb's.
    pub foreign: Vec<(IpvsKey, ObjectKey)>,
}

pub fn protocol_to_ipvs(p: Protocol) -> tunlb_ipvs::Protocol {
    match p {
        Protocol::Tcp => tunlb_ipvs::Protocol::Tcp,
        Protocol::Udp => tunlb_ipvs::Protocol::Udp,
        Protocol::Sctp => tunlb_ipvs::Protocol::Sctp,
    }
}

/// `None` for protocols a VirtualService cannot express (never ours).
pub fn protocol_from_ipvs(p: tunlb_ipvs::Protocol) -> Option<Protocol> {
    match p {
        tunlb_ipvs::Protocol::Tcp => Some(Protocol::Tcp),
        tunlb_ipvs::Protocol::Udp => Some(Protocol::Udp),
        tunlb_ipvs::Protocol::Sctp => Some(Protocol::Sctp),
        tunlb_ipvs::Protocol::Other(_) => None,
    }
}

pub fn service_key(k: &IpvsKey) -> ServiceKey {
    ServiceKey::Addr {
        protocol: protocol_to_ipvs(k.protocol),
        addr: k.vip,
        port: k.port,
    }
}

/// The planner's key for a kernel service; `None` for fwmark services (not ours).
pub fn ipvs_key(k: &ServiceKey) -> Option<IpvsKey> {
    match k {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => Some(IpvsKey {
            protocol: protocol_from_ipvs(*protocol)?,
            vip: *addr,
            port: *port,
        }),
        ServiceKey::FwMark { .. } => None,
    }
}

fn desired_service(s: &IpvsService) -> Service {
    Service {
        key: service_key(&s.key),
        scheduler: s.scheduler.clone(),
        flags: s.flags,
        timeout: s.timeout,
        netmask: s.netmask,
        pe_name: None,
    }
}

fn tunnel_type(k: TunnelKind) -> TunnelType {
    match k {
        TunnelKind::Ipip => TunnelType::Ipip,
        TunnelKind::Gue => TunnelType::Gue,
        TunnelKind::Gre => TunnelType::Gre,
    }
}

fn desired_dest(addr: IpAddr, port: u16, d: &IpvsDest) -> Destination {
    Destination {
        addr,
        port,
        forward: ForwardMethod::Tunnel,
        weight: d.weight,
        upper_threshold: d.upper_threshold,
        lower_threshold: d.lower_threshold,
        tunnel_type: tunnel_type(d.tunnel.kind),
        tunnel_port: d.tunnel.port,
        tunnel_flags: d.tunnel.flags,
    }
}

fn service_differs(want: &Service, have: &Service) -> bool {
    want.scheduler != have.scheduler
        || want.flags & !KERNEL_ONLY_FLAGS != have.flags & !KERNEL_ONLY_FLAGS
        || want.timeout != have.timeout
        || want.netmask != have.netmask
        || want.pe_name != have.pe_name
}

fn dest_differs(want: &Destination, have: &Destination) -> bool {
    want.forward != have.forward
        || want.weight != have.weight
        || want.upper_threshold != have.upper_threshold
        || want.lower_threshold != have.lower_threshold
        || (want.forward == ForwardMethod::Tunnel
            && (want.tunnel_type != have.tunnel_type
                || want.tunnel_port != have.tunnel_port
                || want.tunnel_flags != have.tunnel_flags))
}

/// Whether a service found in the kernel, with no record of who made it, is
/// exactly what the plan asks for and so may be taken over: same scheduler,
/// flags, timeout and netmask, and only tunnel destinations the plan has.
/// Weights may differ (a kill between a create and a weight edit leaves
/// them so); the next diff sets them.
pub fn adoptable(want: &IpvsService, have: &Current) -> bool {
    !service_differs(&desired_service(want), &have.service)
        && have.destinations.iter().all(|d| {
            d.dest.forward == ForwardMethod::Tunnel
                && want
                    .destinations
                    .get(&(d.dest.addr, d.dest.port))
                    .is_some_and(|w| {
                        let w = desired_dest(d.dest.addr, d.dest.port, w);
                        w.tunnel_type == d.dest.tunnel_type
                            && w.tunnel_port == d.dest.tunnel_port
                            && w.tunnel_flags == d.dest.tunnel_flags
                    })
        })
}

/// Computes the operations that turn `current` into `desired`, touching only
/// services in `owned` (plus new ones).
pub fn diff(
    desired: &BTreeMap<IpvsKey, IpvsService>,
    current: &BTreeMap<IpvsKey, Current>,
    owned: &BTreeSet<IpvsKey>,
) -> Diff {
    let mut out = Diff::default();
    for (key, want) in desired {
        let owner = Some(want.owner.clone());
        let push = |out: &mut Diff, op: Op| {
            out.ops.push(PlannedOp {
                op,
                owner: owner.clone(),
                key: *key,
            })
        };
        let want_svc = desired_service(want);
        let Some(have) = current.get(key) else {
            push(&mut out, Op::NewService(want_svc));
            for ((addr, port), d) in &want.destinations {
                push(
                    &mut out,
                    Op::NewDest(service_key(key), desired_dest(*addr, *port, d)),
                );
            }
            continue;
        };
        if !owned.contains(key) {
            out.foreign.push((*key, want.owner.clone()));
            continue;
        }
        if service_differs(&want_svc, &have.service) {
            push(&mut out, Op::SetService(want_svc));
        }
        let have_dests: BTreeMap<(IpAddr, u16), &Destination> = have
            .destinations
            .iter()
            .map(|d| ((d.dest.addr, d.dest.port), &d.dest))
            .collect();
        for ((addr, port), d) in &want.destinations {
            let want_dest = desired_dest(*addr, *port, d);
            match have_dests.get(&(*addr, *port)) {
                None => push(&mut out, Op::NewDest(service_key(key), want_dest)),
                Some(h) if dest_differs(&want_dest, h) => {
                    push(&mut out, Op::SetDest(service_key(key), want_dest))
                }
                Some(_) => {}
            }
        }
        for (addr_port, h) in &have_dests {
            if want.destinations.contains_key(addr_port) {
                continue;
            }
            if h.weight != 0 {
                let mut drained = **h;
                drained.weight = 0;
                push(&mut out, Op::SetDest(service_key(key), drained));
            }
            push(
                &mut out,
                Op::DelDest(service_key(key), addr_port.0, addr_port.1),
            );
        }
    }
    for key in owned {
        if desired.contains_key(key) {
            continue;
        }
        if let Some(have) = current.get(key) {
            // Drain first so nothing new is scheduled while the delete is in flight.
            for d in &have.destinations {
                if d.dest.weight != 0 {
                    let mut drained = d.dest;
                    drained.weight = 0;
                    out.ops.push(PlannedOp {
                        op: Op::SetDest(service_key(key), drained),
                        owner: None,
                        key: *key,
                    });
                }
            }
            out.ops.push(PlannedOp {
                op: Op::DelService(service_key(key)),
                owner: None,
                key: *key,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunlb_api::validate::ValidTunnel;
    use tunlb_ipvs::Stats;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    fn key(vip: &str, port: u16) -> IpvsKey {
        IpvsKey {
            protocol: Protocol::Tcp,
            vip: ip(vip),
            port,
        }
    }

    fn ipip() -> ValidTunnel {
        ValidTunnel {
            kind: TunnelKind::Ipip,
            port: 0,
            flags: 0,
        }
    }

    fn want(vip: &str, dests: &[(&str, u32)]) -> IpvsService {
        IpvsService {
            key: key(vip, 80),
            scheduler: "wrr".into(),
            flags: 0,
            timeout: 0,
            netmask: 0xffff_ffff,
            destinations: dests
                .iter()
                .map(|(a, w)| {
                    (
                        (ip(a), 80),
                        IpvsDest {
                            weight: *w,
                            upper_threshold: 0,
                            lower_threshold: 0,
                            tunnel: ipip(),
                        },
                    )
                })
                .collect(),
            owner: ObjectKey::new("default", "web"),
        }
    }

    /// What the kernel would report after applying `w` (HASHED flag set, as it does).
    fn as_current(w: &IpvsService) -> Current {
        let mut service = desired_service(w);
        service.flags |= KERNEL_ONLY_FLAGS;
        Current {
            service,
            destinations: w
                .destinations
                .iter()
                .map(|((a, p), d)| DestinationEntry {
                    dest: desired_dest(*a, *p, d),
                    active_conns: 0,
                    inactive_conns: 0,
                    persistent_conns: 0,
                    stats: Stats::default(),
                })
                .collect(),
        }
    }

    fn names(d: &Diff) -> Vec<String> {
        d.ops
            .iter()
            .map(|o| match &o.op {
                Op::NewService(_) => "new-service".to_string(),
                Op::SetService(_) => "set-service".to_string(),
                Op::DelService(_) => "del-service".to_string(),
                Op::NewDest(_, d) => format!("new-dest {}:{} w{}", d.addr, d.port, d.weight),
                Op::SetDest(_, d) => format!("set-dest {}:{} w{}", d.addr, d.port, d.weight),
                Op::DelDest(_, a, p) => format!("del-dest {a}:{p}"),
            })
            .collect()
    }

    #[test]
    fn cold_start_creates_everything() {
        let w = want(
            "192.168.56.185",
            &[("192.168.56.183", 1), ("192.168.56.184", 1)],
        );
        let desired = BTreeMap::from([(w.key, w)]);
        let d = diff(&desired, &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(
            names(&d),
            vec![
                "new-service",
                "new-dest 192.168.56.183:80 w1",
                "new-dest 192.168.56.184:80 w1"
            ]
        );
    }

    #[test]
    fn unchanged_is_zero_ops() {
        let w = want("192.168.56.185", &[("192.168.56.183", 1)]);
        let current = BTreeMap::from([(w.key, as_current(&w))]);
        let owned = BTreeSet::from([w.key]);
        let desired = BTreeMap::from([(w.key, w)]);
        assert!(diff(&desired, &current, &owned).ops.is_empty());
    }

    #[test]
    fn weight_change_is_one_set_dest() {
        let before = want(
            "192.168.56.185",
            &[("192.168.56.183", 1), ("192.168.56.184", 1)],
        );
        let after = want(
            "192.168.56.185",
            &[("192.168.56.183", 2), ("192.168.56.184", 1)],
        );
        let current = BTreeMap::from([(before.key, as_current(&before))]);
        let owned = BTreeSet::from([before.key]);
        let desired = BTreeMap::from([(after.key, after)]);
        assert_eq!(
            names(&diff(&desired, &current, &owned)),
            vec!["set-dest 192.168.56.183:80 w2"]
        );
    }

    #[test]
    fn removed_server_drains_then_deletes() {
        let before = want(
            "192.168.56.185",
            &[("192.168.56.183", 1), ("192.168.56.184", 1)],
        );
        let after = want("192.168.56.185", &[("192.168.56.183", 1)]);
        let current = BTreeMap::from([(before.key, as_current(&before))]);
        let owned = BTreeSet::from([before.key]);
        let desired = BTreeMap::from([(after.key, after)]);
        assert_eq!(
            names(&diff(&desired, &current, &owned)),
            vec![
                "set-dest 192.168.56.184:80 w0",
                "del-dest 192.168.56.184:80"
            ]
        );
    }

    #[test]
    fn foreign_services_are_never_touched() {
        let theirs = want("192.168.56.185", &[("192.168.56.183", 1)]);
        let other = want("10.1.1.1", &[("10.1.1.2", 5)]);
        let current = BTreeMap::from([
            (theirs.key, as_current(&theirs)),
            (other.key, as_current(&other)),
        ]);
        // We want a different weight on a service someone else created: refused, not edited.
        let mut mine = theirs.clone();
        if let Some(d) = mine.destinations.values_mut().next() {
            d.weight = 3;
        }
        let desired = BTreeMap::from([(mine.key, mine)]);
        let d = diff(&desired, &current, &BTreeSet::new());
        assert!(d.ops.is_empty());
        assert_eq!(d.foreign.len(), 1);
        // And nothing we do not own is deleted when we want nothing.
        assert!(
            diff(&BTreeMap::new(), &current, &BTreeSet::new())
                .ops
                .is_empty()
        );
    }

    #[test]
    fn owned_service_no_longer_wanted_is_drained_and_deleted() {
        let w = want("192.168.56.185", &[("192.168.56.183", 1)]);
        let current = BTreeMap::from([(w.key, as_current(&w))]);
        let owned = BTreeSet::from([w.key, key("192.168.56.199", 80)]);
        assert_eq!(
            names(&diff(&BTreeMap::new(), &current, &owned)),
            vec!["set-dest 192.168.56.183:80 w0", "del-service"]
        );
    }

    #[test]
    fn exact_match_is_adoptable_whatever_the_weights() {
        let w = want(
            "192.168.56.185",
            &[("192.168.56.183", 1), ("192.168.56.184", 1)],
        );
        assert!(adoptable(&w, &as_current(&w)));
        // A kill between creating the service and its destinations.
        let mut partial = as_current(&w);
        partial.destinations.truncate(1);
        assert!(adoptable(&w, &partial));
        let mut reweighted = as_current(&w);
        reweighted.destinations[0].dest.weight = 7;
        assert!(adoptable(&w, &reweighted));
    }

    #[test]
    fn anything_else_is_not_adoptable() {
        let w = want("192.168.56.185", &[("192.168.56.183", 1)]);
        let mut other_scheduler = as_current(&w);
        other_scheduler.service.scheduler = "rr".into();
        assert!(!adoptable(&w, &other_scheduler));
        let mut other_flags = as_current(&w);
        other_flags.service.flags |= 0x0001;
        assert!(!adoptable(&w, &other_flags));
        let mut extra_dest = as_current(&w);
        extra_dest
            .destinations
            .extend(as_current(&want("192.168.56.185", &[("192.168.56.99", 1)])).destinations);
        assert!(!adoptable(&w, &extra_dest));
        let mut routed = as_current(&w);
        routed.destinations[0].dest.forward = ForwardMethod::DirectRoute;
        assert!(!adoptable(&w, &routed));
        let mut gue = as_current(&w);
        gue.destinations[0].dest.tunnel_type = TunnelType::Gue;
        assert!(!adoptable(&w, &gue));
    }

    #[test]
    fn scheduler_and_tunnel_changes_are_edits() {
        let before = want("192.168.56.185", &[("192.168.56.183", 1)]);
        let mut after = before.clone();
        after.scheduler = "rr".into();
        if let Some(d) = after.destinations.values_mut().next() {
            d.tunnel = ValidTunnel {
                kind: TunnelKind::Gue,
                port: 6080,
                flags: 1,
            };
        }
        let current = BTreeMap::from([(before.key, as_current(&before))]);
        let owned = BTreeSet::from([before.key]);
        let desired = BTreeMap::from([(after.key, after)]);
        assert_eq!(
            names(&diff(&desired, &current, &owned)),
            vec!["set-service", "set-dest 192.168.56.183:80 w1"]
        );
    }
}
