//! VRRP version 3 advertisements (RFC 5798 §5): encoding, decoding and
//! validation, for IPv4 and IPv6. No I/O.
//!
//! The checksum covers a pseudo-header of the IP packet's own source and
//! destination (§5.2.8), so a unicast advert is summed over the peer's
//! address, not the multicast group: keepalived (since 1.3.7) computes it the
//! same way for unicast peers, and interop depends on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP.
pub const PROTOCOL: u8 = 112;
/// Advertisements leave with this TTL / hop limit, and any other value on
/// receipt means the packet crossed a router (§5.1.1.3).
pub const TTL: u8 = 255;
/// The IPv4 multicast group for VRRP.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group for VRRP.
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

const VERSION: u8 = 3;
const TYPE_ADVERTISEMENT: u8 = 1;
const HEADER_LEN: usize = 8;
/// Max Adver Int is a 12-bit field of centiseconds.
pub const MAX_INTERVAL_CS: u16 = 0x0fff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("VRRP packet of {0} bytes is shorter than its 8-byte header")]
    TooShort(usize),
    #[error("VRRP version {0} (only version 3 is spoken)")]
    Version(u8),
    #[error("VRRP packet type {0} (only 1, advertisement, exists)")]
    Type(u8),
    #[error("VRRP packet says {count} addresses but carries {bytes} bytes of them")]
    Count { count: u8, bytes: usize },
    #[error("VRRP checksum {found:#06x}, expected {expected:#06x}")]
    Checksum { found: u16, expected: u16 },
    #[error("VRRP advertisement interval of 0 centiseconds")]
    ZeroInterval,
    #[error("advertisement interval of {0} centiseconds does not fit 12 bits")]
    IntervalTooLong(u16),
    #[error("{0} addresses do not fit one advertisement (at most 255)")]
    TooManyAddresses(usize),
    #[error("address {address} is not of the advertisement's family ({family})")]
    Family {
        address: IpAddr,
        family: &'static str,
    },
    #[error("VRRP packet arrived with TTL/hop limit {0}, not 255: it crossed a router")]
    HopLimit(u8),
    #[error("IP header: {0}")]
    IpHeader(&'static str),
    #[error("IP protocol {0} is not VRRP (112)")]
    Protocol(u8),
}

/// What an advertisement says, family-independent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub vrid: u8,
    pub priority: u8,
    /// Max Adver Int, centiseconds (12 bits, not 0).
    pub interval_cs: u16,
    /// The virtual addresses; all of one family, the packet's own.
    pub addresses: Vec<IpAddr>,
}

/// One advertisement as received, with the IP header facts it is judged by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub hop_limit: u8,
    pub advert: Advert,
}

fn family_name(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn same_family(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// One's-complement sum of 16-bit big-endian words, folded, not inverted.
fn sum16(mut acc: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum (§5.2.8): IPv4 src, dst, zero, protocol, length;
/// IPv6 src, dst, 32-bit length, three zero bytes, next header.
fn pseudo_sum(source: IpAddr, destination: IpAddr, len: usize) -> u32 {
    let mut acc = 0u32;
    match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum16(acc, &s.octets());
            acc = sum16(acc, &d.octets());
            acc += u32::from(PROTOCOL);
            acc += len as u32;
        }
        _ => {
            acc = sum16(acc, &ip_bytes(source));
            acc = sum16(acc, &ip_bytes(destination));
            acc += (len as u32) >> 16;
            acc += (len as u32) & 0xffff;
            acc += u32::from(PROTOCOL);
        }
    }
    acc
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The checksum of `vrrp` (with its checksum field as given) between `source`
/// and `destination`: 0 when a received packet's checksum is right.
fn checksum(source: IpAddr, destination: IpAddr, vrrp: &[u8]) -> u16 {
    !fold(sum16(pseudo_sum(source, destination, vrrp.len()), vrrp))
}

impl Advert {
    /// The VRRP part of the packet (what follows the IP header), checksummed
    /// for an IP packet from `source` to `destination`.
    pub fn encode(&self, source: IpAddr, destination: IpAddr) -> Result<Vec<u8>, PacketError> {
        if !same_family(&source, &destination) {
            return Err(PacketError::Family {
                address: destination,
                family: family_name(&source),
            });
        }
        if self.interval_cs == 0 {
            return Err(PacketError::ZeroInterval);
        }
        if self.interval_cs > MAX_INTERVAL_CS {
            return Err(PacketError::IntervalTooLong(self.interval_cs));
        }
        let count = u8::try_from(self.addresses.len())
            .map_err(|_| PacketError::TooManyAddresses(self.addresses.len()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + self.addresses.len() * 16);
        out.push((VERSION << 4) | TYPE_ADVERTISEMENT);
        out.push(self.vrid);
        out.push(self.priority);
        out.push(count);
        out.extend_from_slice(&self.interval_cs.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        for a in &self.addresses {
            if !same_family(a, &source) {
                return Err(PacketError::Family {
                    address: *a,
                    family: family_name(&source),
                });
            }
            out.extend_from_slice(&ip_bytes(*a));
        }
        let sum = checksum(source, destination, &out);
        out[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }

    /// Parses and validates the VRRP part of a packet that went from `source`
    /// to `destination` (the addresses are needed for the checksum).
    pub fn decode(vrrp: &[u8], source: IpAddr, destination: IpAddr) -> Result<Advert, PacketError> {
        if vrrp.len() < HEADER_LEN {
            return Err(PacketError::TooShort(vrrp.len()));
        }
        let version = vrrp[0] >> 4;
        if version != VERSION {
            return Err(PacketError::Version(version));
        }
        let kind = vrrp[0] & 0x0f;
        if kind != TYPE_ADVERTISEMENT {
            return Err(PacketError::Type(kind));
        }
        let count = vrrp[3];
        let width = if source.is_ipv4() { 4 } else { 16 };
        let body = &vrrp[HEADER_LEN..];
        // Trailing bytes are tolerated (keepalived pads nothing, but a v2-style
        // authentication tail would land there); too few are not.
        if body.len() < usize::from(count) * width {
            return Err(PacketError::Count {
                count,
                bytes: body.len(),
            });
        }
        let expected = checksum(source, destination, vrrp);
        if expected != 0 {
            let found = u16::from_be_bytes([vrrp[6], vrrp[7]]);
            let mut zeroed = vrrp.to_vec();
            zeroed[6] = 0;
            zeroed[7] = 0;
            return Err(PacketError::Checksum {
                found,
                expected: checksum(source, destination, &zeroed),
            });
        }
        let interval_cs = u16::from_be_bytes([vrrp[4], vrrp[5]]) & MAX_INTERVAL_CS;
        if interval_cs == 0 {
            return Err(PacketError::ZeroInterval);
        }
        let addresses = body
            .chunks_exact(width)
            .take(usize::from(count))
            .map(|c| match <[u8; 4]>::try_from(c) {
                Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
                Err(_) => {
                    let mut v6 = [0u8; 16];
                    v6.copy_from_slice(c);
                    IpAddr::V6(Ipv6Addr::from(v6))
                }
            })
            .collect();
        Ok(Advert {
            vrid: vrrp[1],
            priority: vrrp[2],
            interval_cs,
            addresses,
        })
    }
}

/// Parses an IPv4 datagram as a raw IPv4 socket delivers it (IP header
/// included) and the advertisement in it.
pub fn decode_ipv4(datagram: &[u8]) -> Result<Received, PacketError> {
    if datagram.len() < 20 {
        return Err(PacketError::IpHeader("shorter than 20 bytes"));
    }
    if datagram[0] >> 4 != 4 {
        return Err(PacketError::IpHeader("version is not 4"));
    }
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    if ihl < 20 || datagram.len() < ihl {
        return Err(PacketError::IpHeader("bad header length"));
    }
    let protocol = datagram[9];
    if protocol != PROTOCOL {
        return Err(PacketError::Protocol(protocol));
    }
    // The kernel rewrites tot_len on receipt; trust the buffer length but
    // cut it at tot_len when smaller (Ethernet padding).
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let end = if total >= ihl && total <= datagram.len() {
        total
    } else {
        datagram.len()
    };
    let src = Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]);
    let dst = Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]);
    let received = |advert| Received {
        source: IpAddr::V4(src),
        destination: IpAddr::V4(dst),
        hop_limit: datagram[8],
        advert,
    };
    let advert = Advert::decode(&datagram[ihl..end], src.into(), dst.into())?;
    Ok(received(advert))
}

impl Received {
    /// §7.1: the TTL / hop limit must be 255.
    pub fn check_hop_limit(&self) -> Result<(), PacketError> {
        if self.hop_limit == TTL {
            Ok(())
        } else {
            Err(PacketError::HopLimit(self.hop_limit))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A multicast advert as keepalived sends it for `vrrp_version 3`,
    /// `virtual_router_id 51`, `priority 100`, `advert_int 1`, one virtual
    /// address 192.168.56.185, from 192.168.56.181. The checksum was computed
    /// separately (a few lines of Python) from RFC 5798 §5.2.8 (pseudo-header 192.168.56.181 ->
    /// 224.0.0.18, protocol 112, length 12), independently of this code.
    const KNOWN_V4: [u8; 12] = [
        0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0x97, 0x18, 192, 168, 56, 185,
    ];

    #[test]
    fn known_ipv4_multicast_advert() {
        let a = Advert {
            vrid: 51,
            priority: 100,
            interval_cs: 100,
            addresses: vec![v4("192.168.56.185")],
        };
        let bytes = a
            .encode(v4("192.168.56.181"), IpAddr::V4(GROUP_V4))
            .unwrap();
        assert_eq!(bytes, KNOWN_V4);
        assert_eq!(
            Advert::decode(&KNOWN_V4, v4("192.168.56.181"), IpAddr::V4(GROUP_V4)).unwrap(),
            a
        );
    }

    #[test]
    fn unicast_checksum_covers_the_peer_address() {
        let a = Advert {
            vrid: 51,
            priority: 100,
            interval_cs: 10,
            addresses: vec![v4("192.168.56.185")],
        };
        let src = v4("192.168.56.181");
        let peer = v4("192.168.56.182");
        let bytes = a.encode(src, peer).unwrap();
        assert_eq!(Advert::decode(&bytes, src, peer).unwrap(), a);
        // Summed over the group instead (keepalived's pre-1.3.7 unicast
        // checksum) it is wrong for a unicast packet.
        let group = a.encode(src, IpAddr::V4(GROUP_V4)).unwrap();
        assert!(matches!(
            Advert::decode(&group, src, peer),
            Err(PacketError::Checksum { .. })
        ));
    }

    #[test]
    fn ipv6_round_trip_and_checksum() {
        let src: IpAddr = "fe80::1".parse().unwrap();
        let a = Advert {
            vrid: 7,
            priority: 200,
            interval_cs: 10,
            addresses: vec![
                "2001:db8::185".parse().unwrap(),
                "2001:db8::186".parse().unwrap(),
            ],
        };
        let bytes = a.encode(src, IpAddr::V6(GROUP_V6)).unwrap();
        assert_eq!(bytes.len(), 8 + 32);
        assert_eq!(
            Advert::decode(&bytes, src, IpAddr::V6(GROUP_V6)).unwrap(),
            a
        );
        let mut bad = bytes.clone();
        bad[2] = 201;
        assert!(matches!(
            Advert::decode(&bad, src, IpAddr::V6(GROUP_V6)),
            Err(PacketError::Checksum { .. })
        ));
    }

    #[test]
    fn validation_errors_are_typed() {
        let src = v4("10.0.0.1");
        let dst = v4("10.0.0.2");
        assert_eq!(
            Advert::decode(&[0x31; 4], src, dst),
            Err(PacketError::TooShort(4))
        );
        let good = Advert {
            vrid: 1,
            priority: 1,
            interval_cs: 1,
            addresses: vec![v4("10.0.0.9")],
        }
        .encode(src, dst)
        .unwrap();
        let mut v2 = good.clone();
        v2[0] = 0x21;
        assert_eq!(Advert::decode(&v2, src, dst), Err(PacketError::Version(2)));
        let mut t = good.clone();
        t[0] = 0x32;
        assert_eq!(Advert::decode(&t, src, dst), Err(PacketError::Type(2)));
        let mut c = good.clone();
        c[3] = 2;
        assert_eq!(
            Advert::decode(&c, src, dst),
            Err(PacketError::Count { count: 2, bytes: 4 })
        );
        let zero = Advert {
            vrid: 1,
            priority: 1,
            interval_cs: 0,
            addresses: vec![],
        };
        assert_eq!(zero.encode(src, dst), Err(PacketError::ZeroInterval));
        let long = Advert {
            interval_cs: 4096,
            ..zero.clone()
        };
        assert_eq!(
            long.encode(src, dst),
            Err(PacketError::IntervalTooLong(4096))
        );
        let mixed = Advert {
            interval_cs: 1,
            addresses: vec!["::1".parse().unwrap()],
            ..zero
        };
        assert!(matches!(
            mixed.encode(src, dst),
            Err(PacketError::Family { .. })
        ));
    }

    #[test]
    fn reserved_bits_of_the_interval_are_ignored() {
        let src = v4("10.0.0.1");
        let dst = v4("10.0.0.2");
        let mut bytes = Advert {
            vrid: 1,
            priority: 1,
            interval_cs: 10,
            addresses: vec![],
        }
        .encode(src, dst)
        .unwrap();
        // Set a reserved bit and fix up the checksum by re-summing.
        bytes[4] |= 0xf0;
        bytes[6] = 0;
        bytes[7] = 0;
        let sum = checksum(src, dst, &bytes);
        bytes[6..8].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(Advert::decode(&bytes, src, dst).unwrap().interval_cs, 10);
    }

    #[test]
    fn ipv4_datagram_with_header() {
        let src = v4("192.168.56.181");
        let dst = IpAddr::V4(GROUP_V4);
        let mut d = vec![
            0x45, 0xc0, 0, 32, 0, 1, 0, 0, 255, PROTOCOL, 0, 0, 192, 168, 56, 181, 224, 0, 0, 18,
        ];
        d.extend_from_slice(&KNOWN_V4);
        let r = decode_ipv4(&d).unwrap();
        assert_eq!(r.source, src);
        assert_eq!(r.destination, dst);
        assert!(r.check_hop_limit().is_ok());
        assert_eq!(r.advert.vrid, 51);
        d[8] = 254;
        assert_eq!(
            decode_ipv4(&d).unwrap().check_hop_limit(),
            Err(PacketError::HopLimit(254))
        );
        d[9] = 6;
        assert_eq!(decode_ipv4(&d), Err(PacketError::Protocol(6)));
        assert!(decode_ipv4(&d[..10]).is_err());
    }
}
