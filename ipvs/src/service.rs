//! Virtual services: the typed model and its `IPVS_SVC_ATTR_*` encoding.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable, parse_string, parse_u16,
    parse_u16_be, parse_u32,
};

use crate::constants::*;
use crate::error::Error;
use crate::nla::{
    inet_addr_bytes, ipv4_from_union, ipv6_from_union, parse_inet_addr, parse_lenient, put_string,
    put_u16, put_u16_be, put_u32,
};
use crate::stats::{Stats, StatsAttr};

/// Transport protocol of an address-based virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// Any other IP protocol number the kernel reports; kept so a dump never
    /// fails because of a service someone else created.
    Other(u16),
}

impl Protocol {
    pub fn number(self) -> u16 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Sctp => IPPROTO_SCTP,
            Protocol::Other(n) => n,
        }
    }

    pub fn from_number(n: u16) -> Protocol {
        match n {
            IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            IPPROTO_SCTP => Protocol::Sctp,
            n => Protocol::Other(n),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::Other(n) => write!(f, "proto {n}"),
        }
    }
}

/// Address family of a service or destination (`AF_INET` / `AF_INET6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressFamily {
    Inet,
    Inet6,
}

impl AddressFamily {
    pub fn of(addr: &IpAddr) -> AddressFamily {
        match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        }
    }

    pub fn number(self) -> u16 {
        match self {
            AddressFamily::Inet => AF_INET,
            AddressFamily::Inet6 => AF_INET6,
        }
    }

    pub fn from_number(n: u16) -> Option<AddressFamily> {
        match n {
            AF_INET => Some(AddressFamily::Inet),
            AF_INET6 => Some(AddressFamily::Inet6),
            _ => None,
        }
    }

    pub(crate) fn addr_from_union(self, raw: &[u8; 16]) -> IpAddr {
        match self {
            AddressFamily::Inet => ipv4_from_union(raw),
            AddressFamily::Inet6 => ipv6_from_union(raw),
        }
    }

    /// The netmask ipvsadm uses when none is given: /32 or /128.
    pub fn full_netmask(self) -> u32 {
        match self {
            AddressFamily::Inet => 0xffff_ffff,
            AddressFamily::Inet6 => 128,
        }
    }
}

/// What identifies a virtual service in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKey {
    Addr {
        protocol: Protocol,
        addr: IpAddr,
        port: u16,
    },
    FwMark {
        family: AddressFamily,
        mark: u32,
    },
}

impl ServiceKey {
    pub fn family(&self) -> AddressFamily {
        match self {
            ServiceKey::Addr { addr, .. } => AddressFamily::of(addr),
            ServiceKey::FwMark { family, .. } => *family,
        }
    }

    /// Only the identifying attributes: what DEL/GET and destination
    /// commands need (the kernel parses the rest only for NEW/SET_SERVICE).
    pub(crate) fn to_attrs(self) -> Vec<ServiceAttr> {
        match self {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => vec![
                ServiceAttr::Af(AddressFamily::of(&addr).number()),
                ServiceAttr::Protocol(protocol.number()),
                ServiceAttr::Addr(inet_addr_bytes(&addr)),
                ServiceAttr::Port(port),
            ],
            ServiceKey::FwMark { family, mark } => {
                vec![ServiceAttr::Af(family.number()), ServiceAttr::FwMark(mark)]
            }
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => write!(f, "{protocol} {}", SocketAddr::new(*addr, *port)),
            ServiceKey::FwMark { family, mark } => match family {
                AddressFamily::Inet => write!(f, "FWM {mark}"),
                AddressFamily::Inet6 => write!(f, "FWM {mark} IPv6"),
            },
        }
    }
}

/// A virtual service as configured (what NEW/SET_SERVICE send).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    pub key: ServiceKey,
    /// Scheduler name, e.g. "wrr" (at most 15 bytes).
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` bits. `IP_VS_SVC_F_HASHED` is kernel-internal: it is
    /// never sent and is stripped from decoded services so that a decoded
    /// service compares equal to the one that was configured.
    pub flags: u32,
    /// Persistence timeout in seconds.
    pub timeout: u32,
    /// Persistence netmask. IPv4: the mask as a host-order value
    /// (0xffff_ff00 for /24). IPv6: the prefix length (1..=128); the kernel
    /// rejects 0 for IPv6 services even when they are not persistent.
    pub netmask: u32,
    /// Persistence engine, e.g. "sip".
    pub pe_name: Option<String>,
}

impl Service {
    /// A non-persistent service with ipvsadm's defaults (full netmask).
    pub fn new(key: ServiceKey, scheduler: impl Into<String>) -> Service {
        Service {
            netmask: key.family().full_netmask(),
            key,
            scheduler: scheduler.into(),
            flags: 0,
            timeout: 0,
            pe_name: None,
        }
    }

    /// The full attribute set NEW/SET_SERVICE require, in ipvsadm's order.
    pub(crate) fn to_attrs(&self) -> Vec<ServiceAttr> {
        let mut attrs = self.key.to_attrs();
        attrs.push(ServiceAttr::SchedName(self.scheduler.clone()));
        if let Some(pe) = &self.pe_name {
            attrs.push(ServiceAttr::PeName(pe.clone()));
        }
        attrs.push(ServiceAttr::Flags {
            flags: self.flags & !IP_VS_SVC_F_HASHED,
            // All bits: the kernel then takes `flags` verbatim, like ipvsadm.
            mask: u32::MAX,
        });
        attrs.push(ServiceAttr::Timeout(self.timeout));
        attrs.push(ServiceAttr::Netmask(encode_netmask(
            self.key.family(),
            self.netmask,
        )));
        attrs
    }
}

/// The kernel reads the netmask with `nla_get_be32` and never byte-swaps it:
/// for IPv4 it is a network-order mask, for IPv6 the raw value is compared
/// to 1..=128 as a native integer (`(__force __u32) u->netmask`).
fn encode_netmask(family: AddressFamily, netmask: u32) -> [u8; 4] {
    match family {
        AddressFamily::Inet => netmask.to_be_bytes(),
        AddressFamily::Inet6 => netmask.to_ne_bytes(),
    }
}

fn decode_netmask(family: AddressFamily, raw: [u8; 4]) -> u32 {
    match family {
        AddressFamily::Inet => u32::from_be_bytes(raw),
        AddressFamily::Inet6 => u32::from_ne_bytes(raw),
    }
}

/// A service as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub service: Service,
    pub stats: Stats,
}

impl ServiceEntry {
    pub(crate) fn from_attrs(attrs: &[ServiceAttr]) -> Result<ServiceEntry, Error> {
        let mut af = None;
        let mut protocol = None;
        let mut addr = None;
        let mut port = None;
        let mut fwmark = None;
        let mut scheduler = None;
        let mut flags = 0;
        let mut timeout = 0;
        let mut netmask = None;
        let mut pe_name = None;
        let mut stats = None;
        let mut stats64 = None;
        for attr in attrs {
            match attr {
                ServiceAttr::Af(v) => af = Some(*v),
                ServiceAttr::Protocol(v) => protocol = Some(*v),
                ServiceAttr::Addr(v) => addr = Some(*v),
                ServiceAttr::Port(v) => port = Some(*v),
                ServiceAttr::FwMark(v) => fwmark = Some(*v),
                ServiceAttr::SchedName(v) => scheduler = Some(v.clone()),
                ServiceAttr::Flags { flags: f, mask } => flags = f & mask,
                ServiceAttr::Timeout(v) => timeout = *v,
                ServiceAttr::Netmask(v) => netmask = Some(*v),
                ServiceAttr::PeName(v) => pe_name = Some(v.clone()),
                ServiceAttr::Stats(v) => stats = Some(v.as_slice()),
                ServiceAttr::Stats64(v) => stats64 = Some(v.as_slice()),
                ServiceAttr::Other(_) => {}
            }
        }
        let af = af.ok_or_else(|| missing("service", "IPVS_SVC_ATTR_AF"))?;
        let family = AddressFamily::from_number(af)
            .ok_or_else(|| Error::Decode(format!("service has unsupported address family {af}")))?;
        // The kernel only reports FWMARK for fwmark services (mark != 0).
        let key = match (fwmark, protocol, addr, port) {
            (Some(mark), ..) if mark != 0 => ServiceKey::FwMark { family, mark },
            (_, Some(protocol), Some(addr), Some(port)) => ServiceKey::Addr {
                protocol: Protocol::from_number(protocol),
                addr: family.addr_from_union(&addr),
                port,
            },
            _ => {
                return Err(missing(
                    "service",
                    "IPVS_SVC_ATTR_FWMARK or PROTOCOL/ADDR/PORT",
                ));
            }
        };
        let service = Service {
            key,
            scheduler: scheduler.unwrap_or_default(),
            flags: flags & !IP_VS_SVC_F_HASHED,
            timeout,
            netmask: netmask
                .map(|raw| decode_netmask(family, raw))
                .unwrap_or_else(|| family.full_netmask()),
            pe_name,
        };
        Ok(ServiceEntry {
            service,
            stats: Stats::pick(stats64, stats),
        })
    }
}

pub(crate) fn missing(what: &str, attr: &str) -> Error {
    Error::Decode(format!("{what} reply lacks a valid {attr}"))
}

/// Attributes nested in `IPVS_CMD_ATTR_SERVICE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAttr {
    Af(u16),
    Protocol(u16),
    /// `union nf_inet_addr`, always emitted as 16 bytes.
    Addr([u8; 16]),
    /// Host order here, big-endian on the wire.
    Port(u16),
    FwMark(u32),
    SchedName(String),
    /// `struct ip_vs_flags { u32 flags; u32 mask; }`
    Flags {
        flags: u32,
        mask: u32,
    },
    Timeout(u32),
    /// Raw wire bytes; meaning depends on the family (see [`Service::netmask`]).
    Netmask([u8; 4]),
    Stats(Vec<StatsAttr>),
    PeName(String),
    Stats64(Vec<StatsAttr>),
    Other(DefaultNla),
}

impl From<DefaultNla> for ServiceAttr {
    fn from(nla: DefaultNla) -> Self {
        ServiceAttr::Other(nla)
    }
}

impl Nla for ServiceAttr {
    fn value_len(&self) -> usize {
        match self {
            ServiceAttr::Af(_) | ServiceAttr::Protocol(_) | ServiceAttr::Port(_) => 2,
            ServiceAttr::Addr(_) => 16,
            ServiceAttr::FwMark(_) | ServiceAttr::Timeout(_) | ServiceAttr::Netmask(_) => 4,
            ServiceAttr::SchedName(s) | ServiceAttr::PeName(s) => s.len() + 1,
            ServiceAttr::Flags { .. } => 8,
            ServiceAttr::Stats(a) | ServiceAttr::Stats64(a) => a.as_slice().buffer_len(),
            ServiceAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            ServiceAttr::Af(_) => IPVS_SVC_ATTR_AF,
            ServiceAttr::Protocol(_) => IPVS_SVC_ATTR_PROTOCOL,
            ServiceAttr::Addr(_) => IPVS_SVC_ATTR_ADDR,
            ServiceAttr::Port(_) => IPVS_SVC_ATTR_PORT,
            ServiceAttr::FwMark(_) => IPVS_SVC_ATTR_FWMARK,
            ServiceAttr::SchedName(_) => IPVS_SVC_ATTR_SCHED_NAME,
            ServiceAttr::Flags { .. } => IPVS_SVC_ATTR_FLAGS,
            ServiceAttr::Timeout(_) => IPVS_SVC_ATTR_TIMEOUT,
            ServiceAttr::Netmask(_) => IPVS_SVC_ATTR_NETMASK,
            ServiceAttr::Stats(_) => IPVS_SVC_ATTR_STATS,
            ServiceAttr::PeName(_) => IPVS_SVC_ATTR_PE_NAME,
            ServiceAttr::Stats64(_) => IPVS_SVC_ATTR_STATS64,
            ServiceAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            ServiceAttr::Af(v) | ServiceAttr::Protocol(v) => put_u16(buffer, *v),
            ServiceAttr::Port(v) => put_u16_be(buffer, *v),
            ServiceAttr::Addr(raw) => buffer[..16].copy_from_slice(raw),
            ServiceAttr::FwMark(v) | ServiceAttr::Timeout(v) => put_u32(buffer, *v),
            ServiceAttr::Netmask(raw) => buffer[..4].copy_from_slice(raw),
            ServiceAttr::SchedName(s) | ServiceAttr::PeName(s) => put_string(buffer, s),
            ServiceAttr::Flags { flags, mask } => {
                put_u32(buffer, *flags);
                put_u32(&mut buffer[4..], *mask);
            }
            ServiceAttr::Stats(a) | ServiceAttr::Stats64(a) => a.as_slice().emit(buffer),
            ServiceAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for ServiceAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            IPVS_SVC_ATTR_AF => ServiceAttr::Af(parse_u16(payload)?),
            IPVS_SVC_ATTR_PROTOCOL => ServiceAttr::Protocol(parse_u16(payload)?),
            IPVS_SVC_ATTR_ADDR => ServiceAttr::Addr(parse_inet_addr(payload)?),
            IPVS_SVC_ATTR_PORT => ServiceAttr::Port(parse_u16_be(payload)?),
            IPVS_SVC_ATTR_FWMARK => ServiceAttr::FwMark(parse_u32(payload)?),
            IPVS_SVC_ATTR_SCHED_NAME => ServiceAttr::SchedName(parse_string(payload)?),
            IPVS_SVC_ATTR_FLAGS => {
                if payload.len() < 8 {
                    return Err(DecodeError::from(
                        "IPVS_SVC_ATTR_FLAGS shorter than 8 bytes",
                    ));
                }
                ServiceAttr::Flags {
                    flags: parse_u32(&payload[..4])?,
                    mask: parse_u32(&payload[4..8])?,
                }
            }
            IPVS_SVC_ATTR_TIMEOUT => ServiceAttr::Timeout(parse_u32(payload)?),
            IPVS_SVC_ATTR_NETMASK => {
                let raw: [u8; 4] = payload
                    .try_into()
                    .map_err(|_| DecodeError::invalid_number(4, payload.len()))?;
                ServiceAttr::Netmask(raw)
            }
            IPVS_SVC_ATTR_STATS => {
                ServiceAttr::Stats(parse_lenient(payload, "stats", |n| StatsAttr::parse(n)))
            }
            IPVS_SVC_ATTR_PE_NAME => ServiceAttr::PeName(parse_string(payload)?),
            IPVS_SVC_ATTR_STATS64 => {
                ServiceAttr::Stats64(parse_lenient(payload, "stats64", |n| StatsAttr::parse(n)))
            }
            _ => ServiceAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}
