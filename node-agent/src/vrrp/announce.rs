//! Telling the segment that the virtual addresses moved: gratuitous ARP
//! (IPv4, through an AF_PACKET socket) and unsolicited neighbour
//! advertisements (IPv6, ICMPv6 with the Override flag), so that the
//! client's and router's caches point at the new master's MAC at once
//! instead of after their entries time out.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{LinkAddr, MsgFlags};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How many announcements a takeover sends per address, and how far apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    pub count: u32,
    pub interval: Duration,
}

impl Default for Announce {
    /// keepalived's default: 5 per address on becoming master.
    fn default() -> Self {
        Announce {
            count: 5,
            interval: Duration::from_millis(0),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("{op} on {interface}: {source}")]
    Io {
        op: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("{interface} has no 6-byte hardware address")]
    NoMac { interface: String },
}

fn io_err(op: &'static str, interface: &str) -> impl FnOnce(io::Error) -> AnnounceError {
    let interface = interface.to_string();
    move |source| AnnounceError::Io {
        op,
        interface,
        source,
    }
}

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;

/// The interface's link-layer address as the kernel reports it (the
/// AF_PACKET entry of getifaddrs): its MAC, and a destination for sending
/// whole frames out of it.
fn link_address(interface: &str) -> Result<LinkAddr, AnnounceError> {
    let addrs =
        nix::ifaddrs::getifaddrs().map_err(|e| io_err("list interfaces", interface)(e.into()))?;
    addrs
        .filter(|a| a.interface_name == interface)
        .find_map(|a| a.address.and_then(|s| s.as_link_addr().copied()))
        .filter(|l| l.halen() == 6)
        .ok_or_else(|| AnnounceError::NoMac {
            interface: interface.to_string(),
        })
}

/// A gratuitous ARP request for `ip` from `mac`, broadcast: sender and
/// target protocol address are both the VIP (RFC 5227 §3 "ARP Announcement").
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.push(6);
    f.push(4);
    f.extend_from_slice(&1u16.to_be_bytes()); // request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f
}

/// An ICMPv6 neighbour advertisement for `target` with the Override flag
/// and the target link-layer address option (RFC 4861 §4.4, §7.2.6). The
/// checksum is left 0: the kernel fills it for ICMPv6 raw sockets.
pub fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.push(136); // neighbour advertisement
    p.push(0);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&[0x20, 0, 0, 0]); // Override
    p.extend_from_slice(&target.octets());
    p.push(2); // target link-layer address
    p.push(1); // 8 bytes
    p.extend_from_slice(&mac);
    p
}

/// One interface's announcer.
pub struct Announcer {
    interface: String,
    ifindex: u32,
    mac: [u8; 6],
    link: LinkAddr,
    /// AF_PACKET, protocol 0: sends whole frames, receives nothing.
    packet: Option<Socket>,
    icmp6: Option<Socket>,
}

impl Announcer {
    pub fn new(
        interface: &str,
        ifindex: u32,
        v4: bool,
        v6: bool,
    ) -> Result<Announcer, AnnounceError> {
        let link = link_address(interface)?;
        let mac = link.addr().ok_or_else(|| AnnounceError::NoMac {
            interface: interface.to_string(),
        })?;
        let packet = if v4 {
            Some(
                Socket::new(Domain::PACKET, Type::RAW, None)
                    .map_err(io_err("open an AF_PACKET socket", interface))?,
            )
        } else {
            None
        };
        let icmp6 = if v6 {
            let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
                .map_err(io_err("open an ICMPv6 socket", interface))?;
            s.bind_device(Some(interface.as_bytes()))
                .map_err(io_err("bind the ICMPv6 socket", interface))?;
            // Receivers drop neighbour discovery with any other hop limit.
            s.set_multicast_hops_v6(255)
                .map_err(io_err("set hop limit 255", interface))?;
            s.set_multicast_if_v6(ifindex)
                .map_err(io_err("set multicast interface", interface))?;
            Some(s)
        } else {
            None
        };
        Ok(Announcer {
            interface: interface.to_string(),
            ifindex,
            mac,
            link,
            packet,
            icmp6,
        })
    }

    /// Sends one announcement for `ip`.
    pub fn announce(&self, ip: IpAddr) -> Result<(), AnnounceError> {
        match ip {
            IpAddr::V4(v4) => {
                let Some(s) = &self.packet else { return Ok(()) };
                // A raw packet socket sends the frame as is out of the
                // interface the address names; the kernel reads the protocol
                // from the frame's own Ethernet header.
                nix::sys::socket::sendto(
                    s.as_raw_fd(),
                    &garp_frame(self.mac, v4),
                    &self.link,
                    MsgFlags::empty(),
                )
                .map_err(|e| io_err("send gratuitous ARP", &self.interface)(e.into()))?;
            }
            IpAddr::V6(v6) => {
                let Some(s) = &self.icmp6 else { return Ok(()) };
                let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
                let to = SockAddr::from(SocketAddrV6::new(all_nodes, 0, 0, self.ifindex));
                s.send_to(&unsolicited_na(self.mac, v6), &to)
                    .map_err(io_err(
                        "send unsolicited neighbour advertisement",
                        &self.interface,
                    ))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_is_an_arp_announcement() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let f = garp_frame(mac, Ipv4Addr::new(192, 168, 56, 185));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[192, 168, 56, 185]);
        assert_eq!(&f[38..42], &[192, 168, 56, 185]);
    }

    #[test]
    fn na_overrides_and_carries_the_mac() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let p = unsolicited_na(mac, "2001:db8::185".parse().unwrap());
        assert_eq!(p.len(), 32);
        assert_eq!(p[0], 136);
        assert_eq!(p[4], 0x20);
        assert_eq!(&p[24..26], &[2, 1]);
        assert_eq!(&p[26..32], &mac);
    }
}
