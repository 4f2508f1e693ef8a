//! Semantic validation of a `VirtualServiceSpec`, producing a normalised form
//! with parsed addresses and kernel-sized integers. Every message names the
//! field and the reason. The CRD schema enforces most of these at admission;
//! this module is the same rule set for files and for objects admitted under
//! an older schema.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use crate::health::{self, ValidHealthCheck};
use crate::types::{
    DEFAULT_VIP_INTERFACE, DEFAULT_VIP_INTERFACE_V6, Protocol, Scheduler, SchedulerFlag,
    TunnelChecksum, TunnelKind, VirtualServiceSpec,
};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.ports[1].port`.
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// All problems of one object, printed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldErrors(pub Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

pub const MAX_WEIGHT: i32 = 65535;
pub const MIN_MSS: i32 = 536;
pub const MAX_MSS: i32 = 9000;
/// IPVS persistence timeouts are u32 seconds; a year is already absurd.
pub const MAX_PERSISTENCE_SECONDS: i64 = 31_536_000;
const MAX_THRESHOLD: i64 = i32::MAX as i64;
/// Drain time for removed real servers when the spec gives none.
pub const DEFAULT_DRAIN_SECONDS: u32 = 30;
/// A day: longer drains are better done by setting the weight to 0.
pub const MAX_DRAIN_SECONDS: i32 = 86_400;

/// A validated port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValidPort {
    pub port: u16,
    pub target_port: u16,
    pub protocol: Protocol,
}

/// A validated static real server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidBackend {
    pub address: IpAddr,
    pub weight: u32,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
}

/// The encapsulation as the kernel wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValidTunnel {
    pub kind: TunnelKind,
    /// GUE UDP port; 0 otherwise.
    pub port: u16,
    /// IP_VS_TUNNEL_ENCAP_FLAG_* bits.
    pub flags: u16,
}

pub const TUNNEL_FLAG_CSUM: u16 = 1;
pub const TUNNEL_FLAG_REMCSUM: u16 = 2;

impl ValidTunnel {
    /// Bytes the encapsulation adds to each packet for a VIP of this family:
    /// the outer IP header (20 or 40), plus UDP (8) and the GUE header (4,
    /// and 8 more for remcsum's private flags and option) for gue, or the
    /// GRE header (4, and 4 more with a checksum) for gre.
    pub fn overhead(&self, ipv6: bool) -> u16 {
        let outer = if ipv6 { 40 } else { 20 };
        outer
            + match self.kind {
                TunnelKind::Ipip => 0,
                TunnelKind::Gue if self.flags & TUNNEL_FLAG_REMCSUM != 0 => 8 + 4 + 8,
                TunnelKind::Gue => 8 + 4,
                TunnelKind::Gre if self.flags & TUNNEL_FLAG_CSUM != 0 => 4 + 4,
                TunnelKind::Gre => 4,
            }
    }

    /// The largest TCP MSS whose segments still fit a path MTU of `mtu`
    /// once encapsulated: the MTU less the tunnel's overhead and the inner
    /// IP and TCP headers (40 for IPv4, 60 for IPv6).
    pub fn mss_for_mtu(&self, ipv6: bool, mtu: u16) -> u16 {
        let inner = if ipv6 { 60 } else { 40 };
        mtu.saturating_sub(self.overhead(ipv6) + inner)
    }
}

/// Kernel IP_VS_SVC_F_* bits.
pub const SVC_F_PERSISTENT: u32 = 0x01;
pub const SVC_F_ONEPACKET: u32 = 0x04;

/// A spec that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidService {
    pub vip: IpAddr,
    pub ports: Vec<ValidPort>,
    pub scheduler: Scheduler,
    /// IP_VS_SVC_F_* bits: persistence, one-packet and scheduler flags.
    pub flags: u32,
    /// Persistence timeout in seconds (0 without persistence).
    pub timeout: u32,
    /// Persistence granularity as a prefix length.
    pub prefix_length: u8,
    pub tunnel: ValidTunnel,
    pub mss_clamp: Option<u16>,
    pub director_interface: String,
    /// `Some` for static backends; `None` when a Service supplies them.
    pub static_backends: Option<Vec<ValidBackend>>,
    pub service_name: Option<String>,
    /// Seconds a removed real server may keep its connections.
    pub drain_timeout: u32,
    /// The effective health check of each of `ports` (same order), `None`
    /// where the port is not checked.
    pub health: Vec<Option<ValidHealthCheck>>,
}

fn port_in_range(v: i32) -> Option<u16> {
    u16::try_from(v).ok().filter(|p| *p != 0)
}

/// Parses an IP address for `field`, rejecting ones that can never be a VIP or RIP.
pub fn parse_unicast(field: &str, text: &str, errs: &mut Vec<FieldError>) -> Option<IpAddr> {
    let Ok(ip) = text.trim().parse::<IpAddr>() else {
        errs.push(FieldError::new(
            field,
            format!("{text:?} is not an IPv4 or IPv6 address"),
        ));
        return None;
    };
    let bad = if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_link_local())
        || matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
    {
        Some("a link-local address")
    } else {
        None
    };
    if let Some(what) = bad {
        errs.push(FieldError::new(
            field,
            format!("{ip} is {what}, not a unicast address"),
        ));
        return None;
    }
    Some(ip)
}

/// Kernel interface names: 1-15 bytes, no '/', ':' or whitespace.
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// RFC 1035 label, as Kubernetes requires of Service names.
fn valid_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// Validates a spec. Returns every problem found, not just the first.
pub fn validate(spec: &VirtualServiceSpec) -> Result<ValidService, FieldErrors> {
    let mut errs = Vec::new();
    let vip = parse_unicast("spec.vip", &spec.vip, &mut errs);

    let (ports, health) = validate_ports(spec, &mut errs);

    let mut flags = 0u32;
    for (i, flag) in spec.scheduler_flags.iter().enumerate() {
        if flag.scheduler() != spec.scheduler {
            errs.push(FieldError::new(
                format!("spec.schedulerFlags[{i}]"),
                format!(
                    "{} applies to the {} scheduler, not {}",
                    flag_name(*flag),
                    flag.scheduler().name(),
                    spec.scheduler.name()
                ),
            ));
        }
        flags |= flag.bit();
    }

    let max_prefix: u8 = if matches!(vip, Some(IpAddr::V6(_))) {
        128
    } else {
        32
    };
    let mut timeout = 0u32;
    let mut prefix_length: u8 = max_prefix;
    if let Some(p) = &spec.persistence {
        if !(1..=MAX_PERSISTENCE_SECONDS).contains(&p.timeout_seconds) {
            errs.push(FieldError::new(
                "spec.persistence.timeoutSeconds",
                format!(
                    "{} is out of range 1-{MAX_PERSISTENCE_SECONDS}",
                    p.timeout_seconds
                ),
            ));
        } else {
            timeout = p.timeout_seconds as u32;
            flags |= SVC_F_PERSISTENT;
        }
        if let Some(len) = p.prefix_length {
            match u8::try_from(len) {
                Ok(l) if l <= max_prefix => prefix_length = l,
                _ => errs.push(FieldError::new(
                    "spec.persistence.prefixLength",
                    format!("{len} is out of range 0-{max_prefix}"),
                )),
            }
        }
    }

    if spec.one_packet {
        if ports.iter().all(|p| p.protocol != Protocol::Udp) {
            errs.push(FieldError::new(
                "spec.onePacket",
                "one-packet scheduling applies to UDP and this service has no UDP port",
            ));
        }
        flags |= SVC_F_ONEPACKET;
    }

    let tunnel = validate_tunnel(spec, &mut errs);
    let mss_clamp = spec.tunnel.mss_clamp.and_then(|m| {
        if (MIN_MSS..=MAX_MSS).contains(&m) {
            Some(m as u16)
        } else {
            errs.push(FieldError::new(
                "spec.tunnel.mssClamp",
                format!("{m} is out of range {MIN_MSS}-{MAX_MSS}"),
            ));
            None
        }
    });

    let ipv6 = vip.is_some_and(|v| v.is_ipv6());
    let director_interface = spec.directors.vip_interface(ipv6).to_string();
    if !valid_interface_name(&director_interface) {
        errs.push(FieldError::new(
            "spec.directors.interface",
            format!("{director_interface:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"),
        ));
    } else if let Some(vip) = vip {
        let other = if ipv6 {
            DEFAULT_VIP_INTERFACE
        } else {
            DEFAULT_VIP_INTERFACE_V6
        };
        if director_interface == other {
            errs.push(FieldError::new(
                "spec.directors.interface",
                format!("{other} cannot hold {vip}: tunl0 holds IPv4 VIPs and ip6tnl0 IPv6 VIPs; choose the one of the VIP's family, or an ordinary interface"),
            ));
        }
    }

    let (static_backends, service_name) = validate_backends(spec, vip, &mut errs);

    let drain_timeout = match spec.drain_timeout_seconds {
        None => DEFAULT_DRAIN_SECONDS,
        Some(s) if (0..=MAX_DRAIN_SECONDS).contains(&s) => s as u32,
        Some(s) => {
            errs.push(FieldError::new(
                "spec.drainTimeoutSeconds",
                format!("{s} is out of range 0-{MAX_DRAIN_SECONDS}"),
            ));
            0
        }
    };

    match vip {
        Some(vip) if errs.is_empty() => Ok(ValidService {
            vip,
            ports,
            scheduler: spec.scheduler,
            flags,
            timeout,
            prefix_length,
            tunnel,
            mss_clamp,
            director_interface,
            static_backends,
            service_name,
            drain_timeout,
            health,
        }),
        _ => Err(FieldErrors(errs)),
    }
}

fn flag_name(flag: SchedulerFlag) -> &'static str {
    match flag {
        SchedulerFlag::ShFallback => "sh-fallback",
        SchedulerFlag::ShPort => "sh-port",
        SchedulerFlag::MhFallback => "mh-fallback",
        SchedulerFlag::MhPort => "mh-port",
    }
}

type PortsAndChecks = (Vec<ValidPort>, Vec<Option<ValidHealthCheck>>);

fn validate_ports(spec: &VirtualServiceSpec, errs: &mut Vec<FieldError>) -> PortsAndChecks {
    if spec.ports.is_empty() {
        errs.push(FieldError::new(
            "spec.ports",
            "at least one port is required",
        ));
    }
    let mut out = Vec::new();
    let mut checks = Vec::new();
    let mut check_errs = Vec::new();
    let mut seen = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let port = port_in_range(p.port);
        if port.is_none() {
            errs.push(FieldError::new(
                format!("spec.ports[{i}].port"),
                format!("{} is out of range 1-65535", p.port),
            ));
        }
        let target = port_in_range(p.effective_target_port());
        if target.is_none() && p.target_port.is_some() {
            errs.push(FieldError::new(
                format!("spec.ports[{i}].targetPort"),
                format!("{} is out of range 1-65535", p.effective_target_port()),
            ));
        }
        if let Some(name) = &p.name
            && !names.insert(name.clone())
        {
            errs.push(FieldError::new(
                format!("spec.ports[{i}].name"),
                format!("duplicate port name {name:?}"),
            ));
        }
        if let (Some(port), Some(target_port)) = (port, target) {
            if !seen.insert((port, p.protocol)) {
                errs.push(FieldError::new(
                    format!("spec.ports[{i}]"),
                    format!("duplicate port {port}/{}", p.protocol),
                ));
                continue;
            }
            out.push(ValidPort {
                port,
                target_port,
                protocol: p.protocol,
            });
            checks.push(health::effective(spec, i, p, &mut check_errs));
        }
    }
    // spec.healthCheck is judged once per port it applies to: say each
    // problem once.
    for e in check_errs {
        if !errs.contains(&e) {
            errs.push(e);
        }
    }
    (out, checks)
}

fn validate_tunnel(spec: &VirtualServiceSpec, errs: &mut Vec<FieldError>) -> ValidTunnel {
    let t = &spec.tunnel;
    let mut port = 0u16;
    match (t.kind, t.port) {
        (TunnelKind::Gue, None) => errs.push(FieldError::new(
            "spec.tunnel.port",
            "gue encapsulation needs a UDP port",
        )),
        (TunnelKind::Gue, Some(p)) => match port_in_range(p) {
            Some(p) => port = p,
            None => errs.push(FieldError::new(
                "spec.tunnel.port",
                format!("{p} is out of range 1-65535"),
            )),
        },
        (kind, Some(_)) => errs.push(FieldError::new(
            "spec.tunnel.port",
            format!("only gue uses a port, not {}", tunnel_name(kind)),
        )),
        (_, None) => {}
    }
    let flags = match (t.kind, t.checksum) {
        (_, TunnelChecksum::None) => 0,
        (TunnelKind::Ipip, c) => {
            errs.push(FieldError::new(
                "spec.tunnel.checksum",
                format!(
                    "ipip has no checksum option ({} needs gue or gre)",
                    checksum_name(c)
                ),
            ));
            0
        }
        (TunnelKind::Gre, TunnelChecksum::Remcsum) => {
            errs.push(FieldError::new(
                "spec.tunnel.checksum",
                "remcsum is only available with gue",
            ));
            0
        }
        (_, TunnelChecksum::Csum) => TUNNEL_FLAG_CSUM,
        (_, TunnelChecksum::Remcsum) => TUNNEL_FLAG_REMCSUM,
    };
    ValidTunnel {
        kind: t.kind,
        port,
        flags,
    }
}

pub fn tunnel_name(kind: TunnelKind) -> &'static str {
    match kind {
        TunnelKind::Ipip => "ipip",
        TunnelKind::Gue => "gue",
        TunnelKind::Gre => "gre",
    }
}

fn checksum_name(c: TunnelChecksum) -> &'static str {
    match c {
        TunnelChecksum::None => "none",
        TunnelChecksum::Csum => "csum",
        TunnelChecksum::Remcsum => "remcsum",
    }
}

type BackendResult = (Option<Vec<ValidBackend>>, Option<String>);

fn validate_backends(
    spec: &VirtualServiceSpec,
    vip: Option<IpAddr>,
    errs: &mut Vec<FieldError>,
) -> BackendResult {
    let b = &spec.backends;
    match (&b.static_servers, &b.service) {
        (Some(_), Some(_)) => {
            errs.push(FieldError::new(
                "spec.backends",
                "set exactly one of static or service, not both",
            ));
            (None, None)
        }
        (None, None) => {
            errs.push(FieldError::new(
                "spec.backends",
                "set exactly one of static or service",
            ));
            (None, None)
        }
        (None, Some(svc)) => {
            if !valid_dns_label(&svc.name) {
                errs.push(FieldError::new(
                    "spec.backends.service.name",
                    format!(
                        "{:?} is not a valid Service name (RFC 1035 label)",
                        svc.name
                    ),
                ));
            }
            (None, Some(svc.name.clone()))
        }
        (Some(list), None) => {
            if list.is_empty() {
                errs.push(FieldError::new(
                    "spec.backends.static",
                    "at least one real server is required",
                ));
            }
            let mut seen = BTreeSet::new();
            let mut out = Vec::new();
            for (i, s) in list.iter().enumerate() {
                let field = format!("spec.backends.static[{i}]");
                let addr = parse_unicast(&format!("{field}.address"), &s.address, errs);
                if let (Some(a), Some(v)) = (addr, vip) {
                    if a.is_ipv4() != v.is_ipv4() {
                        errs.push(FieldError::new(
                            format!("{field}.address"),
                            format!("{a} and the VIP {v} are of different address families"),
                        ));
                    }
                    if a == v {
                        errs.push(FieldError::new(
                            format!("{field}.address"),
                            "a real server cannot be the VIP itself",
                        ));
                    }
                }
                if let Some(a) = addr
                    && !seen.insert(a)
                {
                    errs.push(FieldError::new(
                        format!("{field}.address"),
                        format!("duplicate real server {a}"),
                    ));
                }
                if !(0..=MAX_WEIGHT).contains(&s.weight) {
                    errs.push(FieldError::new(
                        format!("{field}.weight"),
                        format!("{} is out of range 0-{MAX_WEIGHT}", s.weight),
                    ));
                }
                let upper = threshold(&format!("{field}.upperThreshold"), s.upper_threshold, errs);
                let lower = threshold(&format!("{field}.lowerThreshold"), s.lower_threshold, errs);
                if upper != 0 && lower > upper {
                    errs.push(FieldError::new(
                        format!("{field}.lowerThreshold"),
                        format!("{lower} is above upperThreshold {upper}"),
                    ));
                }
                if let Some(address) = addr {
                    out.push(ValidBackend {
                        address,
                        weight: s.weight.clamp(0, MAX_WEIGHT) as u32,
                        upper_threshold: upper,
                        lower_threshold: lower,
                    });
                }
            }
            (Some(out), None)
        }
    }
}

fn threshold(field: &str, v: Option<i64>, errs: &mut Vec<FieldError>) -> u32 {
    match v {
        None => 0,
        Some(v) if (0..=MAX_THRESHOLD).contains(&v) => v as u32,
        Some(v) => {
            errs.push(FieldError::new(
                field,
                format!("{v} is out of range 0-{MAX_THRESHOLD}"),
            ));
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;

    fn seed() -> VirtualServiceSpec {
        serde_yaml::from_str(
            r#"
vip: 192.168.56.185
ports: [{port: 80}]
scheduler: wrr
backends:
  static:
  - {address: 192.168.56.183, weight: 1}
  - {address: 192.168.56.184, weight: 1}
"#,
        )
        .unwrap_or_else(|e| panic!("seed spec: {e}"))
    }

    fn errors(spec: &VirtualServiceSpec) -> Vec<String> {
        match validate(spec) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn seed_is_valid_and_normalised() {
        let v = validate(&seed()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.vip.to_string(), "192.168.56.185");
        assert_eq!(v.ports[0].target_port, 80);
        assert_eq!(v.scheduler, Scheduler::Wrr);
        assert_eq!(v.flags, 0);
        assert_eq!(v.director_interface, "tunl0");
        assert_eq!(v.static_backends.map(|b| b.len()), Some(2));
    }

    #[test]
    fn bad_vip_is_named() {
        let mut s = seed();
        s.vip = "192.168.56.300".into();
        assert_eq!(
            errors(&s),
            vec!["spec.vip: \"192.168.56.300\" is not an IPv4 or IPv6 address"]
        );
        s.vip = "224.0.0.1".into();
        assert!(errors(&s)[0].contains("multicast"));
    }

    #[test]
    fn port_ranges() {
        let mut s = seed();
        s.ports[0].port = 0;
        s.ports.push(ServicePort {
            health_check: None,
            name: None,
            port: 8080,
            target_port: Some(70000),
            protocol: Protocol::Tcp,
        });
        let e = errors(&s);
        assert!(e.contains(&"spec.ports[0].port: 0 is out of range 1-65535".to_string()));
        assert!(e.contains(&"spec.ports[1].targetPort: 70000 is out of range 1-65535".to_string()));
    }

    #[test]
    fn duplicate_ports() {
        let mut s = seed();
        s.ports.push(s.ports[0].clone());
        assert_eq!(errors(&s), vec!["spec.ports[1]: duplicate port 80/TCP"]);
        s.ports[1].protocol = Protocol::Udp;
        assert!(errors(&s).is_empty());
    }

    #[test]
    fn weights_and_thresholds() {
        let mut s = seed();
        if let Some(list) = s.backends.static_servers.as_mut() {
            list[0].weight = -1;
            list[1].weight = 70000;
            list[1].upper_threshold = Some(10);
            list[1].lower_threshold = Some(20);
        }
        let e = errors(&s);
        assert!(e.contains(&"spec.backends.static[0].weight: -1 is out of range 0-65535".into()));
        assert!(
            e.contains(&"spec.backends.static[1].weight: 70000 is out of range 0-65535".into())
        );
        assert!(e.contains(
            &"spec.backends.static[1].lowerThreshold: 20 is above upperThreshold 10".into()
        ));
    }

    #[test]
    fn exactly_one_backend_kind() {
        let mut s = seed();
        s.backends.service = Some(ServiceBackend { name: "web".into() });
        assert_eq!(
            errors(&s),
            vec!["spec.backends: set exactly one of static or service, not both"]
        );
        s.backends = Backends::default();
        assert_eq!(
            errors(&s),
            vec!["spec.backends: set exactly one of static or service"]
        );
    }

    #[test]
    fn tunnel_rules() {
        let mut s = seed();
        s.tunnel.kind = TunnelKind::Gue;
        assert_eq!(
            errors(&s),
            vec!["spec.tunnel.port: gue encapsulation needs a UDP port"]
        );
        s.tunnel.port = Some(6080);
        s.tunnel.checksum = TunnelChecksum::Remcsum;
        let v = validate(&s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.tunnel.port, 6080);
        assert_eq!(v.tunnel.flags, TUNNEL_FLAG_REMCSUM);
        s.tunnel.kind = TunnelKind::Ipip;
        let e = errors(&s);
        assert!(
            e.iter()
                .any(|m| m.starts_with("spec.tunnel.port: only gue"))
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("spec.tunnel.checksum: ipip has no checksum"))
        );
    }

    #[test]
    fn persistence_and_flags() {
        let mut s = seed();
        s.persistence = Some(Persistence {
            timeout_seconds: 0,
            prefix_length: Some(33),
        });
        let e = errors(&s);
        assert!(e.contains(&format!(
            "spec.persistence.timeoutSeconds: 0 is out of range 1-{MAX_PERSISTENCE_SECONDS}"
        )));
        assert!(e.contains(&"spec.persistence.prefixLength: 33 is out of range 0-32".to_string()));
        s.persistence = Some(Persistence {
            timeout_seconds: 300,
            prefix_length: Some(24),
        });
        s.scheduler = Scheduler::Sh;
        s.scheduler_flags = vec![SchedulerFlag::ShPort];
        let v = validate(&s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.flags, SVC_F_PERSISTENT | 0x10);
        assert_eq!((v.timeout, v.prefix_length), (300, 24));
        s.scheduler = Scheduler::Wrr;
        assert_eq!(
            errors(&s),
            vec!["spec.schedulerFlags[0]: sh-port applies to the sh scheduler, not wrr"]
        );
    }

    #[test]
    fn one_packet_needs_udp() {
        let mut s = seed();
        s.one_packet = true;
        assert!(errors(&s)[0].starts_with("spec.onePacket"));
        s.ports[0].protocol = Protocol::Udp;
        assert_eq!(validate(&s).map(|v| v.flags).ok(), Some(SVC_F_ONEPACKET));
    }

    #[test]
    fn family_mismatch_and_interface() {
        let mut s = seed();
        if let Some(list) = s.backends.static_servers.as_mut() {
            list[0].address = "2001:db8::1".into();
        }
        s.directors.interface = Some("eth0:1".into());
        let e = errors(&s);
        assert!(e.iter().any(|m| m.contains("different address families")));
        assert!(e.iter().any(|m| m.starts_with("spec.directors.interface")));
    }
}
