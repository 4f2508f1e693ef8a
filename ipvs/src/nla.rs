//! Small helpers shared by the attribute enums: lenient attribute-list
//! parsing and fixed-width value emission.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{DecodeError, DefaultNla, NlaBuffer, NlasIterator, Parseable};

/// Parse a list of attributes without ever failing.
///
/// netlink-proto silently drops any message whose payload fails to decode,
/// which would leave the matching request waiting forever. So a malformed
/// known attribute is kept raw (as `Other`) and the semantic layer later
/// reports it as missing, and a truncated list just ends early.
pub(crate) fn parse_lenient<A, F>(buf: &[u8], what: &str, parse: F) -> Vec<A>
where
    A: From<DefaultNla>,
    F: Fn(&NlaBuffer<&[u8]>) -> Result<A, DecodeError>,
{
    let mut out = Vec::new();
    for nla in NlasIterator::new(buf) {
        let nla = match nla {
            Ok(nla) => nla,
            Err(e) => {
                tracing::warn!(error = %e, "truncated {what} attribute list");
                break;
            }
        };
        match parse(&nla) {
            Ok(attr) => out.push(attr),
            Err(e) => {
                tracing::warn!(kind = nla.kind(), error = %e, "malformed {what} attribute kept raw");
                if let Ok(raw) = DefaultNla::parse(&nla) {
                    out.push(A::from(raw));
                }
            }
        }
    }
    out
}

pub(crate) fn put_u16(buf: &mut [u8], v: u16) {
    buf[..2].copy_from_slice(&v.to_ne_bytes());
}

pub(crate) fn put_u16_be(buf: &mut [u8], v: u16) {
    buf[..2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(buf: &mut [u8], v: u32) {
    buf[..4].copy_from_slice(&v.to_ne_bytes());
}

pub(crate) fn put_u64(buf: &mut [u8], v: u64) {
    buf[..8].copy_from_slice(&v.to_ne_bytes());
}

/// NUL-terminated string, as `nla_put_string` writes it.
pub(crate) fn put_string(buf: &mut [u8], s: &str) {
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf[s.len()] = 0;
}

/// `union nf_inet_addr`: IPv4 in the first 4 bytes, the rest zero. The kernel
/// accepts 4..=16 bytes (`nla_memcpy` into a zeroed union); ipvsadm and the
/// kernel's own replies always use the full 16.
pub(crate) fn inet_addr_bytes(addr: &IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
    out
}

/// Parse an address attribute payload (up to 16 bytes) into the union form.
pub(crate) fn parse_inet_addr(payload: &[u8]) -> Result<[u8; 16], DecodeError> {
    if payload.len() > 16 {
        return Err(DecodeError::from(format!(
            "address attribute is {} bytes, at most 16 expected",
            payload.len()
        )));
    }
    let mut out = [0u8; 16];
    out[..payload.len()].copy_from_slice(payload);
    Ok(out)
}

pub(crate) fn ipv4_from_union(raw: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
}

pub(crate) fn ipv6_from_union(raw: &[u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(*raw))
}
