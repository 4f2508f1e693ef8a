//! Desired IPVS services vs. what the kernel holds -> the minimal list of
//! netlink operations. Pure, so it is unit-tested without a kernel.
//!
//! Rules: an unchanged service costs nothing; a weight change is one SET_DEST;
//! a removed real server is set to weight 0 (no new connections) and deleted
//! once its connections end or its drain time is up; a service tunlb does not
//! own is never edited or deleted.

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
    /// Removed destinations left at weight 0 for now.
    pub draining: Vec<Draining>,
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

pub(crate) fn tunnel_type(k: TunnelKind) -> TunnelType {
    match k {
        TunnelKind::Ipip => TunnelType::Ipip,
        TunnelKind::Gue => TunnelType::Gue,
        TunnelKind::Gre => TunnelType::Gre,
    }
}

pub(crate) fn desired_dest(addr: IpAddr, port: u16, d: &IpvsDest) -> Destination {
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

/// A destination, by its service and address.
pub type DestKey = (IpvsKey, IpAddr, u16);

/// When a destination's drain began and how long it may last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainStart {
    /// Unix seconds.
    pub since: u64,
    pub timeout: u32,
}

/// What the diff needs to know about draining.
pub struct DrainClock<'a> {
    /// Unix seconds.
    pub now: u64,
    /// Drains under way.
    pub started: &'a BTreeMap<DestKey, DrainStart>,
    /// Drain time for the destinations of an owned service that is no
    /// longer wanted (its VirtualService is gone, so the plan cannot say).
    pub stale_timeout: &'a dyn Fn(&IpvsKey) -> u32,
}

/// A destination kept at weight 0 while its connections end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draining {
    pub dest: DestKey,
    pub start: DrainStart,
    pub active: u32,
    pub inactive: u32,
    /// The VirtualService that still wants the service, if any.
    pub owner: Option<ObjectKey>,
}

enum Fate {
    /// Goes now (set to weight 0 first when it is not).
    Delete,
    /// Stays at weight 0 for now.
    Drain(DrainStart),
}

/// A removed destination goes once it has no connections left or its drain
/// time is up; until then it stays at weight 0, so its connections keep
/// their server whatever `expire_nodest_conn` says.
fn fate(key: &DestKey, have: &DestinationEntry, timeout: u32, clock: &DrainClock<'_>) -> Fate {
    let start = clock.started.get(key).copied().unwrap_or(DrainStart {
        since: clock.now,
        timeout,
    });
    let conns = u64::from(have.active_conns) + u64::from(have.inactive_conns);
    if start.timeout == 0
        || conns == 0
        || clock.now >= start.since.saturating_add(u64::from(start.timeout))
    {
        Fate::Delete
    } else {
        Fate::Drain(start)
    }
}

fn zeroed(d: &Destination) -> Destination {
    let mut z = *d;
    z.weight = 0;
    z
}

/// Computes the operations that turn `current` into `desired`, touching only
/// services in `owned` (plus new ones).
pub fn diff(
    desired: &BTreeMap<IpvsKey, IpvsService>,
    current: &BTreeMap<IpvsKey, Current>,
    owned: &BTreeSet<IpvsKey>,
    clock: &DrainClock<'_>,
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
        let have_dests: BTreeMap<(IpAddr, u16), &DestinationEntry> = have
            .destinations
            .iter()
            .map(|d| ((d.dest.addr, d.dest.port), d))
            .collect();
        for ((addr, port), d) in &want.destinations {
            let want_dest = desired_dest(*addr, *port, d);
            match have_dests.get(&(*addr, *port)) {
                None => push(&mut out, Op::NewDest(service_key(key), want_dest)),
                Some(h) if dest_differs(&want_dest, &h.dest) => {
                    push(&mut out, Op::SetDest(service_key(key), want_dest))
                }
                Some(_) => {}
            }
        }
        for ((addr, port), h) in &have_dests {
            if want.destinations.contains_key(&(*addr, *port)) {
                continue;
            }
            let dest_key = (*key, *addr, *port);
            let fate = fate(&dest_key, h, want.drain_timeout, clock);
            if h.dest.weight != 0 {
                push(&mut out, Op::SetDest(service_key(key), zeroed(&h.dest)));
            }
            match fate {
                Fate::Delete => push(&mut out, Op::DelDest(service_key(key), *addr, *port)),
                Fate::Drain(start) => out.draining.push(Draining {
                    dest: dest_key,
                    start,
                    active: h.active_conns,
                    inactive: h.inactive_conns,
                    owner: owner.clone(),
                }),
            }
        }
    }
    for key in owned {
        if desired.contains_key(key) {
            continue;
        }
        let Some(have) = current.get(key) else {
            continue;
        };
        let timeout = (clock.stale_timeout)(key);
        let push = |out: &mut Diff, op: Op| {
            out.ops.push(PlannedOp {
                op,
                owner: None,
                key: *key,
            })
        };
        let fates: Vec<(&DestinationEntry, Fate)> = have
            .destinations
            .iter()
            .map(|h| {
                (
                    h,
                    fate(&(*key, h.dest.addr, h.dest.port), h, timeout, clock),
                )
            })
            .collect();
        let all_done = fates.iter().all(|(_, f)| matches!(f, Fate::Delete));
        // Zeroed first so nothing new is scheduled while the rest is in flight.
        for (h, _) in &fates {
            if h.dest.weight != 0 {
                push(&mut out, Op::SetDest(service_key(key), zeroed(&h.dest)));
            }
        }
        if all_done {
            push(&mut out, Op::DelService(service_key(key)));
            continue;
        }
        for (h, fate) in fates {
            match fate {
                Fate::Delete => push(
                    &mut out,
                    Op::DelDest(service_key(key), h.dest.addr, h.dest.port),
                ),
                Fate::Drain(start) => out.draining.push(Draining {
                    dest: (*key, h.dest.addr, h.dest.port),
                    start,
                    active: h.active_conns,
                    inactive: h.inactive_conns,
                    owner: None,
                }),
            }
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
            health: None,
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
            drain_timeout: 30,
        }
    }

    const NOW: u64 = 1_000_000;

    /// The diff with no drain under way and 30 s drains everywhere.
    fn run(
        desired: &BTreeMap<IpvsKey, IpvsService>,
        current: &BTreeMap<IpvsKey, Current>,
        owned: &BTreeSet<IpvsKey>,
    ) -> Diff {
        run_at(desired, current, owned, NOW, &BTreeMap::new())
    }

    fn run_at(
        desired: &BTreeMap<IpvsKey, IpvsService>,
        current: &BTreeMap<IpvsKey, Current>,
        owned: &BTreeSet<IpvsKey>,
        now: u64,
        started: &BTreeMap<DestKey, DrainStart>,
    ) -> Diff {
        let clock = DrainClock {
            now,
            started,
            stale_timeout: &|_| 30,
        };
        diff(desired, current, owned, &clock)
    }

    /// `c` with `active`/`inactive` connections on the destination at `addr`.
    fn with_conns(mut c: Current, addr: &str, active: u32, inactive: u32) -> Current {
        for d in &mut c.destinations {
            if d.dest.addr == ip(addr) {
                d.active_conns = active;
                d.inactive_conns = inactive;
            }
        }
        c
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
        let d = run(&desired, &BTreeMap::new(), &BTreeSet::new());
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
        assert!(run(&desired, &current, &owned).ops.is_empty());
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
            names(&run(&desired, &current, &owned)),
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
            names(&run(&desired, &current, &owned)),
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
        let d = run(&desired, &current, &BTreeSet::new());
        assert!(d.ops.is_empty());
        assert_eq!(d.foreign.len(), 1);
        // And nothing we do not own is deleted when we want nothing.
        assert!(
            run(&BTreeMap::new(), &current, &BTreeSet::new())
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
            names(&run(&BTreeMap::new(), &current, &owned)),
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
            names(&run(&desired, &current, &owned)),
            vec!["set-service", "set-dest 192.168.56.183:80 w1"]
        );
    }

    #[test]
    fn removed_server_with_connections_stays_at_weight_zero() {
        let before = want(
            "192.168.56.185",
            &[("192.168.56.183", 1), ("192.168.56.184", 1)],
        );
        let after = want("192.168.56.185", &[("192.168.56.183", 1)]);
        let busy = with_conns(as_current(&before), "192.168.56.184", 1, 3);
        let current = BTreeMap::from([(before.key, busy.clone())]);
        let owned = BTreeSet::from([before.key]);
        let desired = BTreeMap::from([(after.key, after.clone())]);
        let d = run(&desired, &current, &owned);
        assert_eq!(names(&d), vec!["set-dest 192.168.56.184:80 w0"]);
        let dest = (before.key, ip("192.168.56.184"), 80);
        assert_eq!(
            d.draining,
            vec![Draining {
                dest,
                start: DrainStart {
                    since: NOW,
                    timeout: 30
                },
                active: 1,
                inactive: 3,
                owner: Some(after.owner.clone()),
            }]
        );

        // Next pass, already at weight 0 and still busy: nothing to do.
        let mut zero = busy;
        for e in &mut zero.destinations {
            if e.dest.addr == ip("192.168.56.184") {
                e.dest.weight = 0;
            }
        }
        let current = BTreeMap::from([(before.key, zero.clone())]);
        let started = BTreeMap::from([(dest, d.draining[0].start)]);
        let d = run_at(&desired, &current, &owned, NOW + 29, &started);
        assert!(d.ops.is_empty(), "{:?}", names(&d));
        assert_eq!(d.draining.len(), 1);

        // Its time is up: deleted, connections or not.
        let d = run_at(&desired, &current, &owned, NOW + 30, &started);
        assert_eq!(names(&d), vec!["del-dest 192.168.56.184:80"]);
        assert!(d.draining.is_empty());

        // Or its connections ended first.
        let idle = with_conns(zero, "192.168.56.184", 0, 0);
        let current = BTreeMap::from([(before.key, idle)]);
        let d = run_at(&desired, &current, &owned, NOW + 5, &started);
        assert_eq!(names(&d), vec!["del-dest 192.168.56.184:80"]);
    }

    #[test]
    fn zero_drain_time_deletes_at_once() {
        let before = want(
            "192.168.56.185",
            &[("192.168.56.183", 1), ("192.168.56.184", 1)],
        );
        let mut after = want("192.168.56.185", &[("192.168.56.183", 1)]);
        after.drain_timeout = 0;
        let busy = with_conns(as_current(&before), "192.168.56.184", 4, 0);
        let current = BTreeMap::from([(before.key, busy)]);
        let owned = BTreeSet::from([before.key]);
        let desired = BTreeMap::from([(after.key, after)]);
        assert_eq!(
            names(&run(&desired, &current, &owned)),
            vec![
                "set-dest 192.168.56.184:80 w0",
                "del-dest 192.168.56.184:80"
            ]
        );
    }

    #[test]
    fn a_drain_ends_when_the_server_is_wanted_again() {
        let w = want("192.168.56.185", &[("192.168.56.183", 1)]);
        let mut zero = as_current(&w);
        zero.destinations[0].dest.weight = 0;
        let current = BTreeMap::from([(w.key, with_conns(zero, "192.168.56.183", 2, 0))]);
        let owned = BTreeSet::from([w.key]);
        let started = BTreeMap::from([(
            (w.key, ip("192.168.56.183"), 80),
            DrainStart {
                since: NOW - 10,
                timeout: 30,
            },
        )]);
        let desired = BTreeMap::from([(w.key, w)]);
        let d = run_at(&desired, &current, &owned, NOW, &started);
        assert_eq!(names(&d), vec!["set-dest 192.168.56.183:80 w1"]);
        assert!(d.draining.is_empty());
    }

    #[test]
    fn deleted_service_waits_for_its_busy_servers() {
        let w = want(
            "192.168.56.185",
            &[("192.168.56.183", 1), ("192.168.56.184", 1)],
        );
        let busy = with_conns(as_current(&w), "192.168.56.183", 1, 0);
        let current = BTreeMap::from([(w.key, busy.clone())]);
        let owned = BTreeSet::from([w.key]);
        let d = run(&BTreeMap::new(), &current, &owned);
        assert_eq!(
            names(&d),
            vec![
                "set-dest 192.168.56.183:80 w0",
                "set-dest 192.168.56.184:80 w0",
                "del-dest 192.168.56.184:80"
            ]
        );
        assert_eq!(d.draining.len(), 1);
        assert_eq!(d.draining[0].owner, None);
        // Once the last one is idle the service goes in one operation.
        let idle = with_conns(busy, "192.168.56.183", 0, 0);
        let current = BTreeMap::from([(w.key, idle)]);
        assert_eq!(
            names(&run(&BTreeMap::new(), &current, &owned)),
            vec![
                "set-dest 192.168.56.183:80 w0",
                "set-dest 192.168.56.184:80 w0",
                "del-service"
            ]
        );
    }
}
