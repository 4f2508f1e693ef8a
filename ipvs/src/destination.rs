//! Real servers ("destinations"): the typed model and its
//! `IPVS_DEST_ATTR_*` encoding.

use std::net::IpAddr;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable, parse_u8, parse_u16,
    parse_u16_be, parse_u32,
};

use crate::constants::*;
use crate::error::Error;
use crate::nla::{inet_addr_bytes, parse_inet_addr, parse_lenient, put_u16, put_u16_be, put_u32};
use crate::service::{AddressFamily, missing};
use crate::stats::{Stats, StatsAttr};

/// Forwarding method (`IP_VS_CONN_F_*` & `IP_VS_CONN_F_FWD_MASK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardMethod {
    Masq,
    Local,
    Tunnel,
    DirectRoute,
    Bypass,
}

impl ForwardMethod {
    pub fn number(self) -> u32 {
        match self {
            ForwardMethod::Masq => 0,
            ForwardMethod::Local => 1,
            ForwardMethod::Tunnel => 2,
            ForwardMethod::DirectRoute => 3,
            ForwardMethod::Bypass => 4,
        }
    }

    pub fn from_number(n: u32) -> Option<ForwardMethod> {
        match n & IP_VS_CONN_F_FWD_MASK {
            0 => Some(ForwardMethod::Masq),
            1 => Some(ForwardMethod::Local),
            2 => Some(ForwardMethod::Tunnel),
            3 => Some(ForwardMethod::DirectRoute),
            4 => Some(ForwardMethod::Bypass),
            _ => None,
        }
    }
}

/// Encapsulation of a tunnel-mode destination (`IP_VS_CONN_F_TUNNEL_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TunnelType {
    #[default]
    Ipip,
    Gue,
    Gre,
}

impl TunnelType {
    pub fn number(self) -> u8 {
        match self {
            TunnelType::Ipip => 0,
            TunnelType::Gue => 1,
            TunnelType::Gre => 2,
        }
    }

    pub fn from_number(n: u8) -> Option<TunnelType> {
        match n {
            0 => Some(TunnelType::Ipip),
            1 => Some(TunnelType::Gue),
            2 => Some(TunnelType::Gre),
            _ => None,
        }
    }
}

/// A real server as configured (what NEW/SET_DEST send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
    pub forward: ForwardMethod,
    pub weight: u32,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
    /// Only sent for [`ForwardMethod::Tunnel`].
    pub tunnel_type: TunnelType,
    /// UDP port for GUE; only sent for [`ForwardMethod::Tunnel`].
    pub tunnel_port: u16,
    /// `IP_VS_TUNNEL_ENCAP_FLAG_*`; only sent for [`ForwardMethod::Tunnel`].
    pub tunnel_flags: u16,
}

impl Destination {
    /// An IP-in-IP tunnel destination with no thresholds.
    pub fn tunnel(addr: IpAddr, port: u16, weight: u32) -> Destination {
        Destination {
            addr,
            port,
            forward: ForwardMethod::Tunnel,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
            tunnel_type: TunnelType::Ipip,
            tunnel_port: 0,
            tunnel_flags: 0,
        }
    }

    /// Full attribute set for NEW/SET_DEST, in modern ipvsadm's order.
    pub(crate) fn to_attrs(self) -> Vec<DestAttr> {
        let mut attrs = key_attrs(&self.addr, self.port);
        attrs.push(DestAttr::FwdMethod(self.forward.number()));
        attrs.push(DestAttr::Weight(self.weight));
        if self.forward == ForwardMethod::Tunnel {
            attrs.push(DestAttr::TunType(self.tunnel_type.number()));
            attrs.push(DestAttr::TunPort(self.tunnel_port));
            attrs.push(DestAttr::TunFlags(self.tunnel_flags));
        }
        attrs.push(DestAttr::UThresh(self.upper_threshold));
        attrs.push(DestAttr::LThresh(self.lower_threshold));
        attrs
    }
}

/// Identifying attributes (enough for DEL_DEST). ADDR_FAMILY is always sent:
/// without it the kernel assumes the service's family, which breaks IPv6
/// real servers behind an IPv4 tunnel service.
pub(crate) fn key_attrs(addr: &IpAddr, port: u16) -> Vec<DestAttr> {
    vec![
        DestAttr::AddrFamily(AddressFamily::of(addr).number()),
        DestAttr::Addr(inet_addr_bytes(addr)),
        DestAttr::Port(port),
    ]
}

/// A real server as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationEntry {
    pub dest: Destination,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persistent_conns: u32,
    pub stats: Stats,
}

impl DestinationEntry {
    /// `service_family` is used when the kernel predates ADDR_FAMILY (< 3.18).
    pub(crate) fn from_attrs(
        attrs: &[DestAttr],
        service_family: AddressFamily,
    ) -> Result<DestinationEntry, Error> {
        let mut addr = None;
        let mut port = None;
        let mut fwd = None;
        let mut weight = None;
        let mut family = None;
        let mut e = DestinationEntry {
            dest: Destination::tunnel(IpAddr::from([0, 0, 0, 0]), 0, 0),
            active_conns: 0,
            inactive_conns: 0,
            persistent_conns: 0,
            stats: Stats::default(),
        };
        let mut tun_type = 0;
        let mut stats = None;
        let mut stats64 = None;
        for attr in attrs {
            match attr {
                DestAttr::Addr(v) => addr = Some(*v),
                DestAttr::Port(v) => port = Some(*v),
                DestAttr::FwdMethod(v) => fwd = Some(*v),
                DestAttr::Weight(v) => weight = Some(*v),
                DestAttr::UThresh(v) => e.dest.upper_threshold = *v,
                DestAttr::LThresh(v) => e.dest.lower_threshold = *v,
                DestAttr::ActiveConns(v) => e.active_conns = *v,
                DestAttr::InactConns(v) => e.inactive_conns = *v,
                DestAttr::PersistConns(v) => e.persistent_conns = *v,
                DestAttr::Stats(v) => stats = Some(v.as_slice()),
                DestAttr::AddrFamily(v) => family = Some(*v),
                DestAttr::Stats64(v) => stats64 = Some(v.as_slice()),
                DestAttr::TunType(v) => tun_type = *v,
                DestAttr::TunPort(v) => e.dest.tunnel_port = *v,
                DestAttr::TunFlags(v) => e.dest.tunnel_flags = *v,
                DestAttr::Other(_) => {}
            }
        }
        let family = match family {
            Some(af) => AddressFamily::from_number(af).ok_or_else(|| {
                Error::Decode(format!("destination has unsupported address family {af}"))
            })?,
            None => service_family,
        };
        let addr = addr.ok_or_else(|| missing("destination", "IPVS_DEST_ATTR_ADDR"))?;
        e.dest.addr = family.addr_from_union(&addr);
        e.dest.port = port.ok_or_else(|| missing("destination", "IPVS_DEST_ATTR_PORT"))?;
        let fwd = fwd.ok_or_else(|| missing("destination", "IPVS_DEST_ATTR_FWD_METHOD"))?;
        e.dest.forward = ForwardMethod::from_number(fwd)
            .ok_or_else(|| Error::Decode(format!("unknown forwarding method {fwd}")))?;
        e.dest.weight = weight.ok_or_else(|| missing("destination", "IPVS_DEST_ATTR_WEIGHT"))?;
        e.dest.tunnel_type = TunnelType::from_number(tun_type)
            .ok_or_else(|| Error::Decode(format!("unknown tunnel type {tun_type}")))?;
        e.stats = Stats::pick(stats64, stats);
        Ok(e)
    }
}

/// Attributes nested in `IPVS_CMD_ATTR_DEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestAttr {
    /// `union nf_inet_addr`, always emitted as 16 bytes.
    Addr([u8; 16]),
    /// Host order here, big-endian on the wire.
    Port(u16),
    FwdMethod(u32),
    Weight(u32),
    UThresh(u32),
    LThresh(u32),
    ActiveConns(u32),
    InactConns(u32),
    PersistConns(u32),
    Stats(Vec<StatsAttr>),
    AddrFamily(u16),
    Stats64(Vec<StatsAttr>),
    TunType(u8),
    /// Host order here, big-endian on the wire.
    TunPort(u16),
    /// Native endian on the wire (unlike TUN_PORT).
    TunFlags(u16),
    Other(DefaultNla),
}

impl From<DefaultNla> for DestAttr {
    fn from(nla: DefaultNla) -> Self {
        DestAttr::Other(nla)
    }
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(_) => 16,
            DestAttr::Port(_)
            | DestAttr::AddrFamily(_)
            | DestAttr::TunPort(_)
            | DestAttr::TunFlags(_) => 2,
            DestAttr::TunType(_) => 1,
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UThresh(_)
            | DestAttr::LThresh(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactConns(_)
            | DestAttr::PersistConns(_) => 4,
            DestAttr::Stats(a) | DestAttr::Stats64(a) => a.as_slice().buffer_len(),
            DestAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => IPVS_DEST_ATTR_ADDR,
            DestAttr::Port(_) => IPVS_DEST_ATTR_PORT,
            DestAttr::FwdMethod(_) => IPVS_DEST_ATTR_FWD_METHOD,
            DestAttr::Weight(_) => IPVS_DEST_ATTR_WEIGHT,
            DestAttr::UThresh(_) => IPVS_DEST_ATTR_U_THRESH,
            DestAttr::LThresh(_) => IPVS_DEST_ATTR_L_THRESH,
            DestAttr::ActiveConns(_) => IPVS_DEST_ATTR_ACTIVE_CONNS,
            DestAttr::InactConns(_) => IPVS_DEST_ATTR_INACT_CONNS,
            DestAttr::PersistConns(_) => IPVS_DEST_ATTR_PERSIST_CONNS,
            DestAttr::Stats(_) => IPVS_DEST_ATTR_STATS,
            DestAttr::AddrFamily(_) => IPVS_DEST_ATTR_ADDR_FAMILY,
            DestAttr::Stats64(_) => IPVS_DEST_ATTR_STATS64,
            DestAttr::TunType(_) => IPVS_DEST_ATTR_TUN_TYPE,
            DestAttr::TunPort(_) => IPVS_DEST_ATTR_TUN_PORT,
            DestAttr::TunFlags(_) => IPVS_DEST_ATTR_TUN_FLAGS,
            DestAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            DestAttr::Addr(raw) => buffer[..16].copy_from_slice(raw),
            DestAttr::Port(v) | DestAttr::TunPort(v) => put_u16_be(buffer, *v),
            DestAttr::AddrFamily(v) | DestAttr::TunFlags(v) => put_u16(buffer, *v),
            DestAttr::TunType(v) => buffer[0] = *v,
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UThresh(v)
            | DestAttr::LThresh(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactConns(v)
            | DestAttr::PersistConns(v) => put_u32(buffer, *v),
            DestAttr::Stats(a) | DestAttr::Stats64(a) => a.as_slice().emit(buffer),
            DestAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for DestAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            IPVS_DEST_ATTR_ADDR => DestAttr::Addr(parse_inet_addr(payload)?),
            IPVS_DEST_ATTR_PORT => DestAttr::Port(parse_u16_be(payload)?),
            IPVS_DEST_ATTR_FWD_METHOD => DestAttr::FwdMethod(parse_u32(payload)?),
            IPVS_DEST_ATTR_WEIGHT => DestAttr::Weight(parse_u32(payload)?),
            IPVS_DEST_ATTR_U_THRESH => DestAttr::UThresh(parse_u32(payload)?),
            IPVS_DEST_ATTR_L_THRESH => DestAttr::LThresh(parse_u32(payload)?),
            IPVS_DEST_ATTR_ACTIVE_CONNS => DestAttr::ActiveConns(parse_u32(payload)?),
            IPVS_DEST_ATTR_INACT_CONNS => DestAttr::InactConns(parse_u32(payload)?),
            IPVS_DEST_ATTR_PERSIST_CONNS => DestAttr::PersistConns(parse_u32(payload)?),
            IPVS_DEST_ATTR_STATS => {
                DestAttr::Stats(parse_lenient(payload, "stats", |n| StatsAttr::parse(n)))
            }
            IPVS_DEST_ATTR_ADDR_FAMILY => DestAttr::AddrFamily(parse_u16(payload)?),
            IPVS_DEST_ATTR_STATS64 => {
                DestAttr::Stats64(parse_lenient(payload, "stats64", |n| StatsAttr::parse(n)))
            }
            IPVS_DEST_ATTR_TUN_TYPE => DestAttr::TunType(parse_u8(payload)?),
            IPVS_DEST_ATTR_TUN_PORT => DestAttr::TunPort(parse_u16_be(payload)?),
            IPVS_DEST_ATTR_TUN_FLAGS => DestAttr::TunFlags(parse_u16(payload)?),
            _ => DestAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}
