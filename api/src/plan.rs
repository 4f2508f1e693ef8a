//! VirtualServices + resolved real servers + this node's identity -> what the
//! node's kernel must hold. Pure: the agent diffs the result against the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::health::ValidHealthCheck;
use crate::selector::selector_matches;
use crate::types::{NodeRole, Protocol, RealServer, TunnelKind, VirtualServiceSpec};
use crate::validate::{ValidService, ValidTunnel, validate};

/// Namespace/name of a VirtualService (or a file-derived name). Shared
/// strings: a plan refers to each object from several places, and at 10,000
/// objects copies of the names cost megabytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One VirtualService as the planner sees it. Callers pass inputs oldest first:
/// on a VIP:port:protocol clash the earlier one wins.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub key: ObjectKey,
    pub generation: Option<i64>,
    pub spec: &'a VirtualServiceSpec,
    /// Resolved real servers (the operator's status.realServers). `None` means
    /// "take them from spec.backends.static", as the standalone agent does.
    pub real_servers: Option<&'a [RealServer]>,
}

/// Who this node is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    pub name: String,
    /// The node's own addresses: a real server with one of them is this node, and
    /// a VIP equal to one of them is refused.
    pub addresses: BTreeSet<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// The running kernel's (major, minor), when known: directors refuse
    /// encapsulations their IPVS cannot do instead of degrading them.
    pub kernel: Option<(u32, u32)>,
}

/// (major, minor) of a kernel release string such as `6.1.0-57-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The first kernel whose IPVS can encapsulate with `kind`: older ones
/// ignore the tunnel type and send IPIP, which a GUE or GRE backend drops.
pub fn ipvs_tunnel_min_kernel(kind: TunnelKind) -> (u32, u32) {
    match kind {
        TunnelKind::Ipip => (0, 0),
        TunnelKind::Gue => (5, 2),
        TunnelKind::Gre => (5, 3),
    }
}

/// Identifies one IPVS virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpvsKey {
    pub protocol: Protocol,
    pub vip: IpAddr,
    pub port: u16,
}

impl fmt::Display for IpvsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vip {
            IpAddr::V4(a) => write!(f, "{} {a}:{}", self.protocol, self.port),
            IpAddr::V6(a) => write!(f, "{} [{a}]:{}", self.protocol, self.port),
        }
    }
}

/// A tunnel destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpvsDest {
    pub weight: u32,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
    pub tunnel: ValidTunnel,
}

/// A desired IPVS virtual service and its destinations (keyed by RIP and port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpvsService {
    pub key: IpvsKey,
    pub scheduler: String,
    pub flags: u32,
    pub timeout: u32,
    /// IPv4: the netmask as a host-order u32; IPv6: the prefix length.
    pub netmask: u32,
    pub destinations: BTreeMap<(IpAddr, u16), IpvsDest>,
    pub owner: ObjectKey,
    /// Seconds a removed destination may keep its connections.
    pub drain_timeout: u32,
    /// How directors check this service's destinations; `None`: not checked.
    pub health: Option<ValidHealthCheck>,
}

/// A VIP a director holds on one of its interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipBinding {
    pub address: IpAddr,
    pub interface: String,
}

/// Port mapping on a backend: traffic for VIP:port is DNATed to `targets`,
/// spread evenly. A target without address keeps the VIP and changes only the port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DnatRule {
    pub vip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub targets: Vec<(Option<IpAddr>, u16)>,
}

/// TCP MSS clamp on SYN-ACKs leaving a backend from VIP:port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MssRule {
    pub vip: IpAddr,
    pub port: u16,
    pub mss: u16,
}

/// A kernel tunnel device tunlb relies on. Each is the per-namespace
/// fallback device its module creates on load: it receives every packet of
/// its encapsulation that no more specific tunnel claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TunnelDevice {
    /// ipip: receives IPv4-in-IPv4 (also what a GUE port decapsulates to),
    /// and holds IPv4 VIPs.
    Tunl0,
    /// ip_gre: receives GRE over IPv4.
    Gre0,
    /// ip6_tunnel: receives IPv6-in-IPv6 (also what an IPv6 GUE port
    /// decapsulates to), and holds IPv6 VIPs.
    Ip6tnl0,
    /// ip6_gre: receives GRE over IPv6.
    Ip6gre0,
}

impl TunnelDevice {
    pub const ALL: [TunnelDevice; 4] = [
        TunnelDevice::Tunl0,
        TunnelDevice::Gre0,
        TunnelDevice::Ip6tnl0,
        TunnelDevice::Ip6gre0,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TunnelDevice::Tunl0 => "tunl0",
            TunnelDevice::Gre0 => "gre0",
            TunnelDevice::Ip6tnl0 => "ip6tnl0",
            TunnelDevice::Ip6gre0 => "ip6gre0",
        }
    }

    /// The rtnetlink link kind; creating a link of this kind loads the module.
    pub fn kind(self) -> &'static str {
        match self {
            TunnelDevice::Tunl0 => "ipip",
            TunnelDevice::Gre0 => "gre",
            TunnelDevice::Ip6tnl0 => "ip6tnl",
            TunnelDevice::Ip6gre0 => "ip6gre",
        }
    }

    /// The kernel module that provides it.
    pub fn module(self) -> &'static str {
        match self {
            TunnelDevice::Tunl0 => "ipip",
            TunnelDevice::Gre0 => "ip_gre",
            TunnelDevice::Ip6tnl0 => "ip6_tunnel",
            TunnelDevice::Ip6gre0 => "ip6_gre",
        }
    }

    pub fn from_name(name: &str) -> Option<TunnelDevice> {
        TunnelDevice::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The device that holds VIPs of this family on backends.
    pub fn vip_holder(vip: IpAddr) -> TunnelDevice {
        match vip {
            IpAddr::V4(_) => TunnelDevice::Tunl0,
            IpAddr::V6(_) => TunnelDevice::Ip6tnl0,
        }
    }
}

/// A FOU receive port in GUE mode: UDP on `port` over IPv4 or IPv6 is
/// decapsulated and handed to the protocol the GUE header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FouPort {
    pub port: u16,
    pub ipv6: bool,
}

impl FouPort {
    /// The kernel module that provides it (for both families: receiving
    /// needs only fou, fou6 adds IPv6 tunnels' transmit side).
    pub fn module(self) -> &'static str {
        "fou"
    }
}

impl fmt::Display for FouPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = if self.ipv6 { "IPv6" } else { "IPv4" };
        write!(f, "GUE port {} ({family})", self.port)
    }
}

/// What a backend needs to receive `tunnel` for `vip`: the devices that
/// decapsulate and hold the VIP, and the GUE port if there is one.
pub fn backend_receivers(
    vip: IpAddr,
    tunnel: &ValidTunnel,
) -> (Vec<TunnelDevice>, Option<FouPort>) {
    let holder = TunnelDevice::vip_holder(vip);
    let ipv6 = vip.is_ipv6();
    match tunnel.kind {
        TunnelKind::Ipip => (vec![holder], None),
        TunnelKind::Gue => (
            vec![holder],
            Some(FouPort {
                port: tunnel.port,
                ipv6,
            }),
        ),
        TunnelKind::Gre if tunnel.flags & crate::validate::TUNNEL_FLAG_CSUM != 0 => {
            (vec![holder], None)
        }
        TunnelKind::Gre => {
            let gre = if ipv6 {
                TunnelDevice::Ip6gre0
            } else {
                TunnelDevice::Gre0
            };
            (vec![holder, gre], None)
        }
    }
}

/// What planning concluded for one object on this node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectPlan {
    pub generation: Option<i64>,
    pub roles: BTreeSet<NodeRole>,
    /// The VIP, once the object validated.
    pub vip: Option<IpAddr>,
    /// The encapsulation, once the object validated.
    pub tunnel: Option<ValidTunnel>,
    /// Why this object is not (fully) programmed here.
    pub error: Option<String>,
}

/// Everything this node must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodePlan {
    pub ipvs: BTreeMap<IpvsKey, IpvsService>,
    pub director_vips: BTreeSet<VipBinding>,
    /// VIPs backends hold for decapsulated traffic, on their family's
    /// [`TunnelDevice::vip_holder`].
    pub backend_vips: BTreeSet<IpAddr>,
    /// Tunnel devices that must be up: backends' receivers and VIP holders,
    /// and directors' VIP interfaces when they are tunnel devices.
    pub tunnel_devices: BTreeSet<TunnelDevice>,
    /// GUE ports backends receive on.
    pub fou_ports: BTreeSet<FouPort>,
    /// This node's addresses that receive checksummed GRE. The fallback
    /// devices drop checksummed packets, so each needs a GRE device of its
    /// own (local address, checksums expected), which then takes all GRE to
    /// that address: one address receives GRE with checksums or without.
    pub gre_csum: BTreeSet<IpAddr>,
    /// This node's addresses that receive GRE without checksums (on the
    /// fallback device); kept to refuse a checksummed claim on the same one.
    pub gre_plain: BTreeSet<IpAddr>,
    pub dnat: Vec<DnatRule>,
    pub mss: Vec<MssRule>,
    pub objects: BTreeMap<ObjectKey, ObjectPlan>,
}

impl NodePlan {
    /// Backend sysctls (arp_ignore/arp_announce/rp_filter) are needed while any
    /// IPv4 VIP sits on tunl0. A director's VIP on tunl0 must stay
    /// ARP-visible, so only backends need them. IPv6 has no counterpart:
    /// neighbour discovery answers only for addresses on the interface asked.
    pub fn needs_backend_sysctls(&self) -> bool {
        self.backend_vips.iter().any(IpAddr::is_ipv4)
    }

    /// Kernel modules this plan relies on (schedulers, tunnel drivers).
    pub fn required_modules(&self) -> BTreeSet<String> {
        let mut m = BTreeSet::new();
        if !self.ipvs.is_empty() {
            m.insert("ip_vs".to_string());
        }
        for s in self.ipvs.values() {
            m.insert(format!("ip_vs_{}", s.scheduler));
        }
        for d in &self.tunnel_devices {
            m.insert(d.module().to_string());
        }
        for p in &self.fou_ports {
            m.insert(p.module().to_string());
        }
        m
    }
}

/// The director selector in effect.
fn director_selector(spec: &VirtualServiceSpec) -> LabelSelector {
    spec.directors.selector()
}

/// The IPVS virtual services a valid spec occupies, in the order of spec.ports.
pub fn ipvs_keys(valid: &ValidService) -> Vec<IpvsKey> {
    valid
        .ports
        .iter()
        .map(|p| IpvsKey {
            protocol: p.protocol,
            vip: valid.vip,
            port: p.port,
        })
        .collect()
}

/// Real servers from the static list, as the operator would resolve them
/// (without node matching).
pub fn static_real_servers(spec: &VirtualServiceSpec) -> Vec<RealServer> {
    spec.backends
        .static_servers
        .iter()
        .flatten()
        .map(|s| RealServer {
            address: s.address.clone(),
            weight: s.weight,
            node_name: None,
            ready: true,
            upper_threshold: s.upper_threshold,
            lower_threshold: s.lower_threshold,
            endpoints: Vec::new(),
            health: None,
        })
        .collect()
}

fn ipv4_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

struct Resolved {
    address: IpAddr,
    dest: IpvsDest,
    is_self: bool,
    endpoints: Vec<(IpAddr, Vec<u16>)>,
}

fn resolve_real_servers(
    valid: &ValidService,
    servers: &[RealServer],
    node: &NodeIdentity,
) -> Result<Vec<Resolved>, String> {
    let mut out = Vec::new();
    for (i, rs) in servers.iter().enumerate() {
        let field = format!("status.realServers[{i}]");
        let address: IpAddr = rs
            .address
            .parse()
            .map_err(|_| format!("{field}.address: {:?} is not an IP address", rs.address))?;
        let weight = u32::try_from(rs.weight)
            .map_err(|_| format!("{field}.weight: {} is negative", rs.weight))?;
        let is_self = rs.node_name.as_deref() == Some(node.name.as_str())
            || node.addresses.contains(&address);
        let mut endpoints = Vec::new();
        for (j, ep) in rs.endpoints.iter().enumerate() {
            let ip: IpAddr = ep.address.parse().map_err(|_| {
                format!(
                    "{field}.endpoints[{j}].address: {:?} is not an IP address",
                    ep.address
                )
            })?;
            let ports = ep
                .ports
                .iter()
                .map(|p| u16::try_from(*p).ok().filter(|p| *p != 0))
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| format!("{field}.endpoints[{j}].ports: out of range 1-65535"))?;
            endpoints.push((ip, ports));
        }
        out.push(Resolved {
            address,
            // Not-ready servers drain: existing connections stay, new ones go elsewhere.
            dest: IpvsDest {
                weight: if rs.ready { weight } else { 0 },
                upper_threshold: rs
                    .upper_threshold
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0),
                lower_threshold: rs
                    .lower_threshold
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0),
                tunnel: valid.tunnel,
            },
            is_self,
            endpoints,
        });
    }
    Ok(out)
}

/// Computes this node's plan. Invalid or conflicting objects are reported in
/// `objects` with an error and contribute nothing; the rest are unaffected.
pub fn plan_node(inputs: &[PlanInput<'_>], node: &NodeIdentity) -> NodePlan {
    let mut planner = Planner::new(node);
    for input in inputs {
        planner.add(input);
    }
    planner.finish()
}

/// [`plan_node`] one object at a time, oldest first, so a caller can hand
/// over specs it materialises one by one instead of all at once.
///
/// A tracking planner ([`Planner::tracking`]) also remembers what each
/// object added, so it can take an object out again ([`Planner::remove`])
/// and a caller can patch a plan per changed object instead of planning
/// every object anew.
pub struct Planner {
    node: NodeIdentity,
    plan: NodePlan,
    claimed: BTreeMap<IpvsKey, ObjectKey>,
    tracked: Option<Tracked>,
}

/// What one object added to the node's plan, beyond its `objects` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contribution {
    /// The IPVS keys its spec asks for (valid specs only), whether it won
    /// them or lost them to an older object.
    pub keys: Vec<IpvsKey>,
    director_vip: Option<VipBinding>,
    backend_vip: Option<IpAddr>,
    tunnel_devices: Vec<TunnelDevice>,
    fou_ports: Vec<FouPort>,
    /// Its backend addresses receiving GRE with checksums, and without.
    pub gre_csum: Vec<IpAddr>,
    pub gre_plain: Vec<IpAddr>,
    dnat: Vec<DnatRule>,
    mss: Vec<MssRule>,
}

/// How many objects ask for each key and hold each node-wide item, so
/// taking one object out keeps what others still need.
#[derive(Default)]
struct Tracked {
    of: BTreeMap<ObjectKey, Contribution>,
    wanted: BTreeMap<IpvsKey, u32>,
    director_vips: BTreeMap<VipBinding, u32>,
    backend_vips: BTreeMap<IpAddr, u32>,
    tunnel_devices: BTreeMap<TunnelDevice, u32>,
    fou_ports: BTreeMap<FouPort, u32>,
    gre_csum: BTreeMap<IpAddr, u32>,
    gre_plain: BTreeMap<IpAddr, u32>,
    dnat: BTreeMap<DnatRule, u32>,
    mss: BTreeMap<MssRule, u32>,
}

/// Counts one more holder of `item`; true for the first.
fn count_up<T: Ord + Clone>(counts: &mut BTreeMap<T, u32>, item: &T) -> bool {
    match counts.get_mut(item) {
        Some(n) => {
            *n += 1;
            false
        }
        None => {
            counts.insert(item.clone(), 1);
            true
        }
    }
}

/// Counts one holder of `item` less; true when none is left.
fn count_down<T: Ord>(counts: &mut BTreeMap<T, u32>, item: &T) -> bool {
    match counts.get_mut(item) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            counts.remove(item);
            true
        }
        None => false,
    }
}

/// Counts each of `items` in; those held for the first time join `set`.
fn take_in<'i, T: Ord + Copy + 'i>(
    counts: &mut BTreeMap<T, u32>,
    set: &mut BTreeSet<T>,
    items: impl IntoIterator<Item = &'i T>,
) {
    for item in items {
        if count_up(counts, item) {
            set.insert(*item);
        }
    }
}

/// Counts each of `items` out; those no longer held leave `set`.
fn let_go<'i, T: Ord + 'i>(
    counts: &mut BTreeMap<T, u32>,
    set: &mut BTreeSet<T>,
    items: impl IntoIterator<Item = &'i T>,
) {
    for item in items {
        if count_down(counts, item) {
            set.remove(item);
        }
    }
}

/// Inserts into a sorted, duplicate-free vector.
fn sorted_insert<T: Ord>(v: &mut Vec<T>, item: T) {
    if let Err(at) = v.binary_search(&item) {
        v.insert(at, item);
    }
}

fn sorted_remove<T: Ord>(v: &mut Vec<T>, item: &T) {
    if let Ok(at) = v.binary_search(item) {
        v.remove(at);
    }
}

impl Planner {
    pub fn new(node: &NodeIdentity) -> Self {
        Planner {
            node: node.clone(),
            plan: NodePlan::default(),
            claimed: BTreeMap::new(),
            tracked: None,
        }
    }

    /// A planner that can also take objects out (see [`Planner::remove`]).
    pub fn tracking(node: &NodeIdentity) -> Self {
        Planner {
            tracked: Some(Tracked::default()),
            ..Planner::new(node)
        }
    }

    pub fn node(&self) -> &NodeIdentity {
        &self.node
    }

    /// Plans one object; it loses any VIP:port clash with an object added earlier.
    pub fn add(&mut self, input: &PlanInput<'_>) {
        let mut report = ObjectPlan {
            generation: input.generation,
            ..ObjectPlan::default()
        };
        let mut added = Contribution::default();
        let result = plan_object(
            input,
            &self.node,
            &mut self.claimed,
            &mut report,
            &mut self.plan,
            &mut added,
        );
        if let Err(e) = result {
            report.error = Some(e);
        }
        self.plan.objects.insert(input.key.clone(), report);
        self.merge(&input.key, added);
    }

    /// Puts an object's node-wide items into the plan.
    fn merge(&mut self, key: &ObjectKey, added: Contribution) {
        let plan = &mut self.plan;
        let Some(t) = self.tracked.as_mut() else {
            plan.director_vips.extend(added.director_vip);
            plan.backend_vips.extend(added.backend_vip);
            plan.tunnel_devices.extend(added.tunnel_devices);
            plan.fou_ports.extend(added.fou_ports);
            plan.gre_csum.extend(added.gre_csum);
            plan.gre_plain.extend(added.gre_plain);
            plan.dnat.extend(added.dnat);
            plan.mss.extend(added.mss);
            return;
        };
        for k in &added.keys {
            count_up(&mut t.wanted, k);
        }
        if let Some(v) = &added.director_vip
            && count_up(&mut t.director_vips, v)
        {
            plan.director_vips.insert(v.clone());
        }
        take_in(
            &mut t.backend_vips,
            &mut plan.backend_vips,
            &added.backend_vip,
        );
        take_in(
            &mut t.tunnel_devices,
            &mut plan.tunnel_devices,
            &added.tunnel_devices,
        );
        take_in(&mut t.fou_ports, &mut plan.fou_ports, &added.fou_ports);
        take_in(&mut t.gre_csum, &mut plan.gre_csum, &added.gre_csum);
        take_in(&mut t.gre_plain, &mut plan.gre_plain, &added.gre_plain);
        for r in &added.dnat {
            if count_up(&mut t.dnat, r) {
                sorted_insert(&mut plan.dnat, r.clone());
            }
        }
        for r in &added.mss {
            if count_up(&mut t.mss, r) {
                sorted_insert(&mut plan.mss, *r);
            }
        }
        t.of.insert(key.clone(), added);
    }

    /// Takes an object out of a tracking planner: its entry, its IPVS
    /// services and claims, and the node-wide items no other object holds.
    /// An object that lost a VIP:port clash to it does not win it by this:
    /// the caller plans anew when another object asks for its keys
    /// ([`Planner::wanted`]). Without tracking only the entry goes.
    pub fn remove(&mut self, key: &ObjectKey) {
        self.plan.objects.remove(key);
        let plan = &mut self.plan;
        let Some(t) = self.tracked.as_mut() else {
            return;
        };
        let Some(gone) = t.of.remove(key) else {
            return;
        };
        for k in &gone.keys {
            count_down(&mut t.wanted, k);
            if plan.ipvs.get(k).is_some_and(|s| &s.owner == key) {
                plan.ipvs.remove(k);
            }
            if self.claimed.get(k) == Some(key) {
                self.claimed.remove(k);
            }
        }
        if let Some(v) = &gone.director_vip
            && count_down(&mut t.director_vips, v)
        {
            plan.director_vips.remove(v);
        }
        let_go(
            &mut t.backend_vips,
            &mut plan.backend_vips,
            &gone.backend_vip,
        );
        let_go(
            &mut t.tunnel_devices,
            &mut plan.tunnel_devices,
            &gone.tunnel_devices,
        );
        let_go(&mut t.fou_ports, &mut plan.fou_ports, &gone.fou_ports);
        let_go(&mut t.gre_csum, &mut plan.gre_csum, &gone.gre_csum);
        let_go(&mut t.gre_plain, &mut plan.gre_plain, &gone.gre_plain);
        for r in &gone.dnat {
            if count_down(&mut t.dnat, r) {
                sorted_remove(&mut plan.dnat, r);
            }
        }
        for r in &gone.mss {
            if count_down(&mut t.mss, r) {
                sorted_remove(&mut plan.mss, r);
            }
        }
    }

    /// How many planned objects ask for `key` (tracking planners only).
    pub fn wanted(&self, key: &IpvsKey) -> u32 {
        self.tracked
            .as_ref()
            .and_then(|t| t.wanted.get(key).copied())
            .unwrap_or(0)
    }

    /// What `key` added to the plan (tracking planners only).
    pub fn contribution(&self, key: &ObjectKey) -> Option<&Contribution> {
        self.tracked.as_ref()?.of.get(key)
    }

    /// Records an object that cannot be planned at all (e.g. its spec is unreadable).
    pub fn reject(&mut self, key: ObjectKey, generation: Option<i64>, error: String) {
        let report = ObjectPlan {
            generation,
            error: Some(error),
            ..ObjectPlan::default()
        };
        self.plan.objects.insert(key, report);
    }

    pub fn plan(&self) -> &NodePlan {
        &self.plan
    }

    /// The plan, for changes its caller undoes before the next
    /// [`Planner::add`] or [`Planner::remove`] (health gating of weights).
    pub fn plan_mut(&mut self) -> &mut NodePlan {
        &mut self.plan
    }

    pub fn finish(self) -> NodePlan {
        let mut plan = self.plan;
        plan.dnat.sort();
        plan.dnat.dedup();
        plan.mss.sort();
        plan.mss.dedup();
        plan
    }
}

fn plan_object(
    input: &PlanInput<'_>,
    node: &NodeIdentity,
    claimed: &mut BTreeMap<IpvsKey, ObjectKey>,
    report: &mut ObjectPlan,
    plan: &mut NodePlan,
    added: &mut Contribution,
) -> Result<(), String> {
    let valid = validate(input.spec).map_err(|e| e.to_string())?;
    report.vip = Some(valid.vip);
    report.tunnel = Some(valid.tunnel);

    // Conflicts are judged on every node identically, so all agree on the winner.
    let keys = ipvs_keys(&valid);
    added.keys.clone_from(&keys);
    for (i, k) in keys.iter().enumerate() {
        let owner = claimed
            .get(k)
            .or_else(|| plan.ipvs.get(k).map(|s| &s.owner));
        if let Some(owner) = owner
            && owner != &input.key
        {
            return Err(format!(
                "spec.ports[{i}]: {k} is already served by {owner}, which is older"
            ));
        }
    }
    let result = plan_claimed(input, node, &valid, &keys, report, plan, added);
    // A director's keys are claimed by its IPVS entries. Other outcomes
    // (backend only, no role here, an error below) claim them here, so a
    // younger object loses the clash on every node alike; at 10,000
    // services a second map of every key would cost a megabyte.
    let programmed = keys
        .first()
        .and_then(|k| plan.ipvs.get(k))
        .is_some_and(|s| s.owner == input.key);
    if !programmed {
        for k in &keys {
            claimed.insert(*k, input.key.clone());
        }
    }
    result
}

/// The rest of [`plan_object`], once the object's IPVS keys are its own.
fn plan_claimed(
    input: &PlanInput<'_>,
    node: &NodeIdentity,
    valid: &ValidService,
    keys: &[IpvsKey],
    report: &mut ObjectPlan,
    plan: &mut NodePlan,
    added: &mut Contribution,
) -> Result<(), String> {
    let owned_servers;
    let servers = match input.real_servers {
        Some(s) => s,
        None => {
            owned_servers = static_real_servers(input.spec);
            &owned_servers
        }
    };
    let resolved = resolve_real_servers(valid, servers, node)?;

    let is_director = selector_matches(&director_selector(input.spec), &node.labels)
        .map_err(|e| format!("spec.directors.nodeSelector: {e}"))?;
    let is_backend = resolved.iter().any(|r| r.is_self);
    if is_director {
        report.roles.insert(NodeRole::Director);
    }
    if is_backend {
        report.roles.insert(NodeRole::Backend);
    }
    if report.roles.is_empty() {
        return Ok(());
    }
    if node.addresses.contains(&valid.vip) {
        return Err(format!(
            "spec.vip: {} is already an address of node {}; a VIP must be an address of its own",
            valid.vip, node.name
        ));
    }
    let gre_csum = valid.tunnel.kind == TunnelKind::Gre
        && valid.tunnel.flags & crate::validate::TUNNEL_FLAG_CSUM != 0;
    let gre_locals: Vec<IpAddr> = if is_backend && valid.tunnel.kind == TunnelKind::Gre {
        resolved
            .iter()
            .filter(|r| r.is_self)
            .map(|r| r.address)
            .collect()
    } else {
        Vec::new()
    };
    for a in &gre_locals {
        let taken = if gre_csum {
            plan.gre_plain.contains(a)
        } else {
            plan.gre_csum.contains(a)
        };
        if taken {
            let (this, other) = if gre_csum {
                ("with", "without")
            } else {
                ("without", "with")
            };
            return Err(format!(
                "spec.tunnel.checksum: backend {} ({a}) already receives GRE {other} checksums for an older VirtualService; one address receives GRE {this} or {other} checksums, not both",
                node.name
            ));
        }
    }

    if is_director {
        let need = ipvs_tunnel_min_kernel(valid.tunnel.kind);
        if let Some(have) = node.kernel
            && have < need
        {
            return Err(format!(
                "spec.tunnel.type: {} encapsulation needs IPVS from Linux {}.{} or later; director {} runs {}.{}",
                crate::validate::tunnel_name(valid.tunnel.kind),
                need.0,
                need.1,
                node.name,
                have.0,
                have.1
            ));
        }
        let netmask = match valid.vip {
            IpAddr::V4(_) => ipv4_mask(valid.prefix_length),
            IpAddr::V6(_) => u32::from(valid.prefix_length),
        };
        for ((port, key), health) in valid.ports.iter().zip(keys).zip(&valid.health) {
            // Tunnel mode never rewrites ports, so the destination port is the
            // service port (as ipvsadm records it); backends map it if needed.
            let destinations = resolved
                .iter()
                .map(|r| ((r.address, port.port), r.dest))
                .collect();
            plan.ipvs.insert(
                *key,
                IpvsService {
                    key: *key,
                    scheduler: valid.scheduler.name().to_string(),
                    flags: valid.flags,
                    timeout: valid.timeout,
                    netmask,
                    destinations,
                    owner: input.key.clone(),
                    drain_timeout: valid.drain_timeout,
                    health: health.clone(),
                },
            );
        }
        added
            .tunnel_devices
            .extend(TunnelDevice::from_name(&valid.director_interface));
        added.director_vip = Some(VipBinding {
            address: valid.vip,
            interface: valid.director_interface.clone(),
        });
    }

    if is_backend {
        added.backend_vip = Some(valid.vip);
        let (devices, fou) = backend_receivers(valid.vip, &valid.tunnel);
        added.tunnel_devices.extend(devices);
        added.fou_ports.extend(fou);
        if gre_csum {
            added.gre_csum = gre_locals;
        } else {
            added.gre_plain = gre_locals;
        }
        let me: Vec<&Resolved> = resolved.iter().filter(|r| r.is_self).collect();
        for (idx, port) in valid.ports.iter().enumerate() {
            let endpoint_targets: Vec<(Option<IpAddr>, u16)> = me
                .iter()
                .flat_map(|r| r.endpoints.iter())
                .filter_map(|(ip, ports)| ports.get(idx).map(|p| (Some(*ip), *p)))
                .collect();
            let targets = if !endpoint_targets.is_empty() {
                endpoint_targets
            } else if port.target_port != port.port {
                vec![(None, port.target_port)]
            } else {
                Vec::new()
            };
            if !targets.is_empty() {
                added.dnat.push(DnatRule {
                    vip: valid.vip,
                    protocol: port.protocol,
                    port: port.port,
                    targets,
                });
            }
            if let Some(mss) = valid.mss_clamp
                && port.protocol == Protocol::Tcp
            {
                added.mss.push(MssRule {
                    vip: valid.vip,
                    port: port.target_port,
                    mss,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LocalEndpoint;

    fn spec(yaml: &str) -> VirtualServiceSpec {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    const SEED: &str = r#"
vip: 192.168.56.185
ports: [{port: 80}]
scheduler: wrr
backends:
  static:
  - {address: 192.168.56.183, weight: 1}
  - {address: 192.168.56.184, weight: 2}
"#;

    fn director() -> NodeIdentity {
        NodeIdentity {
            name: "ds".into(),
            addresses: ["192.168.56.181".parse().unwrap_or_else(|_| unreachable!())].into(),
            labels: [("tunlb.io/director".to_string(), "true".to_string())].into(),
            kernel: None,
        }
    }

    fn rs1() -> NodeIdentity {
        NodeIdentity {
            name: "rs1".into(),
            addresses: ["192.168.56.183".parse().unwrap_or_else(|_| unreachable!())].into(),
            labels: BTreeMap::new(),
            kernel: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("bad ip {s}"))
    }

    fn input<'a>(name: &str, spec: &'a VirtualServiceSpec) -> PlanInput<'a> {
        PlanInput {
            key: ObjectKey::new("default", name),
            generation: Some(1),
            spec,
            real_servers: None,
        }
    }

    #[test]
    fn director_gets_ipvs_and_vip() {
        let s = spec(SEED);
        let p = plan_node(&[input("web", &s)], &director());
        assert_eq!(p.ipvs.len(), 1);
        let svc = p.ipvs.values().next().unwrap_or_else(|| unreachable!());
        assert_eq!(svc.scheduler, "wrr");
        assert_eq!(svc.netmask, 0xffff_ffff);
        let weights: Vec<(String, u32)> = svc
            .destinations
            .iter()
            .map(|((a, port), d)| (format!("{a}:{port}"), d.weight))
            .collect();
        assert_eq!(
            weights,
            vec![
                ("192.168.56.183:80".to_string(), 1),
                ("192.168.56.184:80".to_string(), 2)
            ]
        );
        assert!(p.director_vips.contains(&VipBinding {
            address: ip("192.168.56.185"),
            interface: "tunl0".into()
        }));
        assert!(p.backend_vips.is_empty());
        assert!(
            p.objects[&ObjectKey::new("default", "web")]
                .roles
                .contains(&NodeRole::Director)
        );
    }

    #[test]
    fn backend_gets_vip_and_port_mapping() {
        let s = spec(
            r#"
vip: 192.168.56.186
ports: [{port: 8099, targetPort: 80}]
tunnel: {mssClamp: 1440}
backends: {static: [{address: 192.168.56.183}, {address: 192.168.56.184}]}
"#,
        );
        let p = plan_node(&[input("mapped", &s)], &rs1());
        assert!(p.ipvs.is_empty());
        assert_eq!(p.backend_vips, [ip("192.168.56.186")].into());
        assert_eq!(
            p.dnat,
            vec![DnatRule {
                vip: ip("192.168.56.186"),
                protocol: Protocol::Tcp,
                port: 8099,
                targets: vec![(None, 80)]
            }]
        );
        assert_eq!(
            p.mss,
            vec![MssRule {
                vip: ip("192.168.56.186"),
                port: 80,
                mss: 1440
            }]
        );
        assert!(p.needs_backend_sysctls());
    }

    #[test]
    fn unrelated_node_gets_nothing() {
        let s = spec(SEED);
        let other = NodeIdentity {
            name: "x".into(),
            addresses: [ip("10.0.0.9")].into(),
            labels: BTreeMap::new(),
            kernel: None,
        };
        let p = plan_node(&[input("web", &s)], &other);
        assert_eq!(p.ipvs.len() + p.backend_vips.len() + p.dnat.len(), 0);
        assert!(
            p.objects[&ObjectKey::new("default", "web")]
                .roles
                .is_empty()
        );
    }

    #[test]
    fn older_object_wins_a_clash_and_others_survive() {
        let a = spec(SEED);
        let b = spec(SEED);
        let c = spec(&SEED.replace(".185", ".186"));
        let p = plan_node(
            &[input("a", &a), input("b", &b), input("c", &c)],
            &director(),
        );
        assert_eq!(p.ipvs.len(), 2);
        let err = p.objects[&ObjectKey::new("default", "b")]
            .error
            .clone()
            .unwrap_or_default();
        assert_eq!(
            err,
            "spec.ports[0]: TCP 192.168.56.185:80 is already served by default/a, which is older"
        );
        assert!(p.objects[&ObjectKey::new("default", "c")].error.is_none());
    }

    /// The older object wins even where it has no IPVS entry (a backend, or
    /// a node outside its directors), so every node agrees on the winner.
    #[test]
    fn older_object_wins_where_it_is_not_programmed() {
        let a = spec(&format!(
            "{SEED}directors: {{nodeSelector: {{matchLabels: {{pool: b}}}}}}\n"
        ));
        let b = spec(SEED);
        let p = plan_node(&[input("a", &a), input("b", &b)], &director());
        assert!(p.ipvs.is_empty(), "{:?}", p.ipvs);
        let err = p.objects[&ObjectKey::new("default", "b")].error.clone();
        assert!(err.is_some_and(|e| e.contains("already served by default/a")));
        let p = plan_node(&[input("a", &a), input("b", &b)], &rs1());
        assert!(p.objects[&ObjectKey::new("default", "a")].error.is_none());
        assert!(p.objects[&ObjectKey::new("default", "b")].error.is_some());
        assert_eq!(p.backend_vips.len(), 1);
    }

    #[test]
    fn invalid_object_is_skipped_with_reason() {
        let bad = spec(&SEED.replace("port: 80", "port: 0"));
        let good = spec(&SEED.replace(".185", ".186"));
        let p = plan_node(&[input("bad", &bad), input("good", &good)], &director());
        assert_eq!(p.ipvs.len(), 1);
        assert_eq!(
            p.objects[&ObjectKey::new("default", "bad")]
                .error
                .as_deref(),
            Some("spec.ports[0].port: 0 is out of range 1-65535")
        );
    }

    #[test]
    fn vip_equal_to_node_address_is_refused() {
        let s = spec(&SEED.replace("192.168.56.185", "192.168.56.181"));
        let p = plan_node(&[input("web", &s)], &director());
        assert!(p.ipvs.is_empty());
        assert!(
            p.objects[&ObjectKey::new("default", "web")]
                .error
                .as_deref()
                .unwrap_or_default()
                .starts_with("spec.vip: 192.168.56.181 is already an address of node ds")
        );
    }

    #[test]
    fn director_on_ordinary_interface_and_selector() {
        let s = spec(
            r#"
vip: 192.168.56.187
ports: [{port: 80}]
directors:
  interface: eth0
  nodeSelector: {matchLabels: {role: lb}}
backends: {static: [{address: 192.168.56.183}]}
"#,
        );
        let mut d = director();
        assert!(plan_node(&[input("w", &s)], &d).ipvs.is_empty());
        d.labels.insert("role".into(), "lb".into());
        let p = plan_node(&[input("w", &s)], &d);
        assert_eq!(
            p.director_vips.iter().next().map(|v| v.interface.as_str()),
            Some("eth0")
        );
        assert!(!p.needs_backend_sysctls());
    }

    #[test]
    fn service_backend_endpoints_become_dnat_targets_and_unready_drains() {
        let s = spec(
            r#"
vip: 192.168.56.190
ports: [{port: 80, targetPort: 8080}]
backends: {service: {name: web}}
"#,
        );
        let servers = vec![
            RealServer {
                health: None,
                address: "192.168.56.183".into(),
                weight: 2,
                node_name: Some("rs1".into()),
                ready: true,
                upper_threshold: None,
                lower_threshold: None,
                endpoints: vec![
                    LocalEndpoint {
                        address: "10.244.1.5".into(),
                        ports: vec![8080],
                    },
                    LocalEndpoint {
                        address: "10.244.1.6".into(),
                        ports: vec![8080],
                    },
                ],
            },
            RealServer {
                health: None,
                address: "192.168.56.184".into(),
                weight: 1,
                node_name: Some("rs2".into()),
                ready: false,
                upper_threshold: None,
                lower_threshold: None,
                endpoints: vec![],
            },
        ];
        let inp = PlanInput {
            real_servers: Some(&servers),
            ..input("svc", &s)
        };
        let p = plan_node(std::slice::from_ref(&inp), &rs1());
        assert_eq!(
            p.dnat[0].targets,
            vec![
                (Some(ip("10.244.1.5")), 8080),
                (Some(ip("10.244.1.6")), 8080)
            ]
        );
        let d = plan_node(&[inp], &director());
        let weights: Vec<u32> = d
            .ipvs
            .values()
            .flat_map(|s| s.destinations.values().map(|d| d.weight))
            .collect();
        assert_eq!(weights, vec![2, 0]);
    }

    #[test]
    fn modules_named() {
        let s = spec(SEED);
        let p = plan_node(&[input("web", &s)], &director());
        assert_eq!(
            p.required_modules().into_iter().collect::<Vec<_>>(),
            vec!["ip_vs", "ip_vs_wrr", "ipip"]
        );
    }

    const V6: &str = r#"
vip: "fd00:56::185"
ports: [{port: 80}]
tunnel: {type: gre}
backends:
  static:
  - {address: "fd00:56::3"}
  - {address: "fd00:56::4"}
"#;

    fn rs1_v6() -> NodeIdentity {
        NodeIdentity {
            name: "rs1".into(),
            addresses: [ip("fd00:56::3")].into(),
            ..NodeIdentity::default()
        }
    }

    #[test]
    fn receivers_follow_tunnel_type_and_family() {
        let gue = SEED.replace(
            "scheduler: wrr",
            "scheduler: wrr\ntunnel: {type: gue, port: 6080}",
        );
        let s = spec(&gue);
        let p = plan_node(&[input("web", &s)], &rs1());
        assert_eq!(
            p.tunnel_devices,
            BTreeSet::from([TunnelDevice::Tunl0]),
            "GUE decapsulates to tunl0"
        );
        assert_eq!(
            p.fou_ports,
            BTreeSet::from([FouPort {
                port: 6080,
                ipv6: false
            }])
        );
        assert!(p.needs_backend_sysctls());
        assert_eq!(
            p.required_modules().into_iter().collect::<Vec<_>>(),
            vec!["fou", "ipip"]
        );

        let s = spec(V6);
        let p = plan_node(&[input("web6", &s)], &rs1_v6());
        assert_eq!(p.backend_vips, BTreeSet::from([ip("fd00:56::185")]));
        assert_eq!(
            p.tunnel_devices,
            BTreeSet::from([TunnelDevice::Ip6tnl0, TunnelDevice::Ip6gre0])
        );
        assert!(p.fou_ports.is_empty());
        assert!(
            !p.needs_backend_sysctls(),
            "IPv6 has no arp_ignore or rp_filter to set"
        );

        // A director holds an IPv6 VIP on ip6tnl0 unless told otherwise.
        let mut d = director();
        d.addresses = [ip("fd00:56::2")].into();
        let p = plan_node(&[input("web6", &s)], &d);
        assert!(p.director_vips.contains(&VipBinding {
            address: ip("fd00:56::185"),
            interface: "ip6tnl0".into()
        }));
        assert_eq!(p.tunnel_devices, BTreeSet::from([TunnelDevice::Ip6tnl0]));
    }

    #[test]
    fn director_refuses_an_encapsulation_its_kernel_lacks() {
        assert_eq!(kernel_version("6.1.0-57-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.10.0"), Some((5, 10)));
        assert_eq!(kernel_version("garbage"), None);
        let gre = SEED.replace("scheduler: wrr", "scheduler: wrr\ntunnel: {type: gre}");
        let s = spec(&gre);
        let mut d = director();
        d.kernel = Some((5, 2));
        let p = plan_node(&[input("web", &s)], &d);
        assert!(p.ipvs.is_empty(), "nothing programmed");
        let err = p.objects[&ObjectKey::new("default", "web")]
            .error
            .clone()
            .unwrap_or_default();
        assert_eq!(
            err,
            "spec.tunnel.type: gre encapsulation needs IPVS from Linux 5.3 or later; director ds runs 5.2"
        );
        d.kernel = Some((5, 3));
        assert_eq!(plan_node(&[input("web", &s)], &d).ipvs.len(), 1);
    }

    #[test]
    fn mss_arithmetic_per_encapsulation() {
        use crate::validate::{TUNNEL_FLAG_CSUM, TUNNEL_FLAG_REMCSUM};
        let t = |kind, flags| ValidTunnel {
            kind,
            port: 6080,
            flags,
        };
        let cases = [
            (t(TunnelKind::Ipip, 0), false, 1440),
            (t(TunnelKind::Gue, 0), false, 1428),
            (t(TunnelKind::Gue, TUNNEL_FLAG_CSUM), false, 1428),
            (t(TunnelKind::Gue, TUNNEL_FLAG_REMCSUM), false, 1420),
            (t(TunnelKind::Gre, 0), false, 1436),
            (t(TunnelKind::Gre, TUNNEL_FLAG_CSUM), false, 1432),
            (t(TunnelKind::Gre, TUNNEL_FLAG_CSUM), true, 1392),
            (t(TunnelKind::Ipip, 0), true, 1400),
            (t(TunnelKind::Gue, 0), true, 1388),
            (t(TunnelKind::Gre, 0), true, 1396),
        ];
        for (tunnel, ipv6, mss) in cases {
            assert_eq!(
                tunnel.mss_for_mtu(ipv6, 1500),
                mss,
                "{tunnel:?} ipv6={ipv6}"
            );
        }
    }

    #[test]
    fn tunnel_device_of_the_wrong_family_is_refused() {
        let bad = V6.replace("tunnel: {type: gre}", "directors: {interface: tunl0}");
        let e = validate(&spec(&bad))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("spec.directors.interface: tunl0 cannot hold fd00:56::185"),
            "{e}"
        );
    }

    #[test]
    fn an_address_receives_gre_with_checksums_or_without() {
        let plain = SEED.replace("scheduler: wrr", "scheduler: wrr\ntunnel: {type: gre}");
        let csum = SEED
            .replace(
                "scheduler: wrr",
                "scheduler: wrr\ntunnel: {type: gre, checksum: csum}",
            )
            .replace("192.168.56.185", "192.168.56.199");
        let (plain, csum) = (spec(&plain), spec(&csum));
        let p = plan_node(&[input("csum", &csum)], &rs1());
        assert_eq!(p.gre_csum, BTreeSet::from([ip("192.168.56.183")]));
        assert_eq!(
            p.tunnel_devices,
            BTreeSet::from([TunnelDevice::Tunl0]),
            "checksummed GRE needs no fallback device"
        );
        let p = plan_node(&[input("plain", &plain), input("csum", &csum)], &rs1());
        assert_eq!(p.gre_plain, BTreeSet::from([ip("192.168.56.183")]));
        assert!(p.gre_csum.is_empty());
        let err = p.objects[&ObjectKey::new("default", "csum")]
            .error
            .clone()
            .unwrap_or_default();
        assert!(
            err.starts_with("spec.tunnel.checksum: backend rs1 (192.168.56.183) already receives GRE without checksums"),
            "{err}"
        );
        assert_eq!(p.backend_vips, BTreeSet::from([ip("192.168.56.185")]));
    }
}
