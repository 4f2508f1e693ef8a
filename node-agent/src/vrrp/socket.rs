//! The raw IP protocol 112 sockets of one virtual router on one interface.
//!
//! Two sockets per router: one bound to the primary address to send (so the
//! source address, which the checksum covers, is known), and one unbound to
//! receive - a raw IPv4 socket bound to an address only receives packets
//! addressed to it, which would miss the multicast group. Both are bound to
//! the interface, so adverts never leave or arrive through another one.
//!
//! Every raw socket of a protocol gets a copy of every packet of it, so a
//! director running several routers would wake each of them for every
//! advert on the segment. A socket filter in the kernel passes the receive
//! socket only adverts for its own VRID, and the send socket nothing.

use std::io;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, setsockopt, sockopt};
use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::packet::{self, GROUP_V4, GROUP_V6, PacketError, Received, TTL};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{op} on {interface} (raw sockets need CAP_NET_RAW): {source}")]
    Setup {
        op: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("send VRRP advertisement to {to}: {source}")]
    Send {
        to: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("receive VRRP advertisement: {0}")]
    Receive(#[source] io::Error),
}

/// Where adverts go: the peers' unicast addresses, or the VRRP group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destinations {
    Unicast(Vec<IpAddr>),
    Multicast,
}

/// The sockets are held as tokio `UdpSocket`s: tokio's readiness for a
/// datagram socket is the same for a raw one, and this wraps them without
/// unsafe code (AsyncFd's constructors are unsafe now).
pub struct VrrpSocket {
    send: UdpSocket,
    recv: UdpSocket,
    source: IpAddr,
    ifindex: u32,
    interface: String,
}

fn setup<T>(op: &'static str, interface: &str, r: io::Result<T>) -> Result<T, SocketError> {
    r.map_err(|source| SocketError::Setup {
        op,
        interface: interface.to_string(),
        source,
    })
}

/// A unicast router joins the VRRP group too, only to hear multicast
/// speakers that use its id (a clash it reports); failing that is not fatal.
fn joined(multicast: bool, join: Result<(), SocketError>) -> Result<(), SocketError> {
    match join {
        Err(e) if !multicast => {
            tracing::debug!(error = %e, "multicast adverts of other speakers will not be heard");
            Ok(())
        }
        other => other,
    }
}

// Classic BPF opcodes (linux/filter.h), as the u16 a filter line holds.
const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const LD_B_IND: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_IND) as u16;
const LDX_B_MSH: u16 = (libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// A filter passing only VRRP packets whose VRID (the advert's second byte)
/// is `vrid`. An IPv4 raw socket's filter sees the packet from the IP
/// header (its length taken from IHL), an IPv6 one from the payload.
fn vrid_filter(ipv4: bool, vrid: u8) -> Vec<SockFilter> {
    let mut prog = if ipv4 {
        vec![
            SockFilter::new(LDX_B_MSH, 0, 0, 0),
            SockFilter::new(LD_B_IND, 0, 0, 1),
        ]
    } else {
        vec![SockFilter::new(LD_B_ABS, 0, 0, 1)]
    };
    prog.extend([
        SockFilter::new(JEQ_K, 0, 1, u32::from(vrid)),
        SockFilter::new(RET_K, 0, 0, u32::MAX),
        SockFilter::new(RET_K, 0, 0, 0),
    ]);
    prog
}

impl VrrpSocket {
    /// Opens the sockets on `interface` (index `ifindex`) for router
    /// `vrid`, sending from `source`, and joins the VRRP group (needed when
    /// `multicast`).
    pub fn open(
        interface: &str,
        ifindex: u32,
        vrid: u8,
        source: IpAddr,
        multicast: bool,
    ) -> Result<VrrpSocket, SocketError> {
        let domain = if source.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let proto = Some(Protocol::from(i32::from(packet::PROTOCOL)));
        let make = |role: &'static str| -> Result<Socket, SocketError> {
            let s = setup(role, interface, Socket::new(domain, Type::RAW, proto))?;
            setup(
                "bind to the interface",
                interface,
                s.bind_device(Some(interface.as_bytes())),
            )?;
            setup("set non-blocking", interface, s.set_nonblocking(true))?;
            Ok(s)
        };
        let send = make("open the VRRP send socket")?;
        let recv = make("open the VRRP receive socket")?;
        match source {
            IpAddr::V4(src) => {
                setup("set TTL 255", interface, send.set_ttl_v4(u32::from(TTL)))?;
                setup(
                    "set multicast TTL 255",
                    interface,
                    send.set_multicast_ttl_v4(u32::from(TTL)),
                )?;
                setup(
                    "set multicast interface",
                    interface,
                    send.set_multicast_if_v4(&src),
                )?;
                setup(
                    "disable multicast loop",
                    interface,
                    send.set_multicast_loop_v4(false),
                )?;
                // Internetwork control, as routers mark their protocols.
                setup("set TOS", interface, send.set_tos_v4(0xc0))?;
                setup(
                    "bind the source address",
                    interface,
                    send.bind(&SockAddr::from(SocketAddr::new(source, 0))),
                )?;
                joined(
                    multicast,
                    setup(
                        "join 224.0.0.18",
                        interface,
                        recv.join_multicast_v4_n(
                            &GROUP_V4,
                            &socket2::InterfaceIndexOrAddress::Index(ifindex),
                        ),
                    ),
                )?;
            }
            IpAddr::V6(src) => {
                setup(
                    "set hop limit 255",
                    interface,
                    send.set_unicast_hops_v6(u32::from(TTL)),
                )?;
                setup(
                    "set multicast hop limit 255",
                    interface,
                    send.set_multicast_hops_v6(u32::from(TTL)),
                )?;
                setup(
                    "set multicast interface",
                    interface,
                    send.set_multicast_if_v6(ifindex),
                )?;
                setup(
                    "disable multicast loop",
                    interface,
                    send.set_multicast_loop_v6(false),
                )?;
                let scope = if is_link_local(&src) { ifindex } else { 0 };
                setup(
                    "bind the source address",
                    interface,
                    send.bind(&SockAddr::from(SocketAddrV6::new(src, 0, 0, scope))),
                )?;
                // The hop limit and destination of each received packet come
                // as ancillary data: an IPv6 raw socket gets no IP header.
                setup(
                    "ask for hop limits",
                    interface,
                    setsockopt(&recv, sockopt::Ipv6RecvHopLimit, &true).map_err(io::Error::from),
                )?;
                setup(
                    "ask for packet info",
                    interface,
                    setsockopt(&recv, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from),
                )?;
                joined(
                    multicast,
                    setup(
                        "join ff02::12",
                        interface,
                        recv.join_multicast_v6(&GROUP_V6, ifindex),
                    ),
                )?;
            }
        }
        setup(
            "filter the receive socket by VRID",
            interface,
            recv.attach_filter(&vrid_filter(source.is_ipv4(), vrid)),
        )?;
        // Nobody reads the send socket.
        setup(
            "filter everything from the send socket",
            interface,
            send.attach_filter(&[SockFilter::new(RET_K, 0, 0, 0)]),
        )?;
        Ok(VrrpSocket {
            send: setup(
                "register with tokio",
                interface,
                UdpSocket::from_std(std::net::UdpSocket::from(send)),
            )?,
            recv: setup(
                "register with tokio",
                interface,
                UdpSocket::from_std(std::net::UdpSocket::from(recv)),
            )?,
            source,
            ifindex,
            interface: interface.to_string(),
        })
    }

    pub fn source(&self) -> IpAddr {
        self.source
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The addresses `d` means for this socket's family.
    pub fn targets(&self, d: &Destinations) -> Vec<IpAddr> {
        match d {
            Destinations::Unicast(peers) => peers.clone(),
            Destinations::Multicast if self.source.is_ipv4() => vec![IpAddr::V4(GROUP_V4)],
            Destinations::Multicast => vec![IpAddr::V6(GROUP_V6)],
        }
    }

    /// Sends one already encoded advertisement to `to`.
    pub async fn send(&self, bytes: &[u8], to: IpAddr) -> Result<(), SocketError> {
        let addr = match to {
            IpAddr::V4(_) => SocketAddr::new(to, 0),
            IpAddr::V6(v6) => {
                let scope = if is_link_local(&v6) || v6.is_multicast() {
                    self.ifindex
                } else {
                    0
                };
                SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, scope))
            }
        };
        self.send
            .send_to(bytes, addr)
            .await
            .map(|_| ())
            .map_err(|source| SocketError::Send { to, source })
    }

    /// Waits for the next VRRP packet. The outer error is the socket's; the
    /// inner one says why the packet is invalid (the caller logs and drops it).
    pub async fn recv(&self) -> Result<Result<Received, PacketError>, SocketError> {
        let mut buf = [0u8; 2048];
        if self.source.is_ipv4() {
            // A raw IPv4 socket delivers the IP header too.
            let n = self
                .recv
                .recv(&mut buf)
                .await
                .map_err(SocketError::Receive)?;
            return Ok(packet::decode_ipv4(buf.get(..n).unwrap_or_default()));
        }
        loop {
            self.recv.readable().await.map_err(SocketError::Receive)?;
            match self.recv.try_io(Interest::READABLE, || {
                recv_v6(self.recv.as_raw_fd(), &mut buf)
            }) {
                Ok(r) => return Ok(r),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(SocketError::Receive(e)),
            }
        }
    }
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// recvmsg on an IPv6 raw socket: the payload, the sender from the address,
/// the destination and hop limit from the ancillary data.
fn recv_v6(fd: RawFd, buf: &mut [u8]) -> io::Result<Result<Received, PacketError>> {
    let mut control = nix::cmsg_space!(libc::in6_pktinfo, libc::c_int);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut control), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let n = msg.bytes;
    let mut hop_limit = 0u8;
    let mut destination = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        match c {
            ControlMessageOwned::Ipv6HopLimit(h) => hop_limit = u8::try_from(h).unwrap_or(0),
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                destination = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
            }
            _ => {}
        }
    }
    let Some(from) = msg.address else {
        return Ok(Err(PacketError::IpHeader("no IPv6 source address")));
    };
    let Some(destination) = destination else {
        return Ok(Err(PacketError::IpHeader("no IPv6 packet info")));
    };
    let source = IpAddr::V6(from.ip());
    let destination = IpAddr::V6(destination);
    let payload = iov[0].get(..n).unwrap_or_default();
    Ok(
        packet::Advert::decode(payload, source, destination).map(|advert| Received {
            source,
            destination,
            hop_limit,
            advert,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrrp::packet::Advert;

    fn advert(vrid: u8, vip: IpAddr) -> Advert {
        Advert {
            vrid,
            priority: 100,
            interval_cs: 100,
            addresses: vec![vip],
        }
    }

    /// On loopback: adverts for another VRID never reach the receive
    /// socket, so the first one read is the one for its own VRID.
    async fn only_its_vrid_is_received(source: IpAddr, vip: IpAddr) {
        let lo = nix::net::if_::if_nametoindex("lo").unwrap();
        let ours = match VrrpSocket::open("lo", lo, 7, source, false) {
            Ok(s) => s,
            Err(SocketError::Setup { source: e, .. })
                if e.kind() == io::ErrorKind::PermissionDenied =>
            {
                eprintln!("skipped: raw sockets need CAP_NET_RAW");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        for vrid in [8, 9, 7] {
            let bytes = advert(vrid, vip).encode(source, source).unwrap();
            ours.send(&bytes, source).await.unwrap();
        }
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), ours.recv())
            .await
            .expect("an advert within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(got.advert.vrid, 7);
        assert_eq!(got.advert.addresses, vec![vip]);
    }

    #[tokio::test]
    async fn ipv4_socket_receives_only_its_vrid() {
        only_its_vrid_is_received("127.0.0.1".parse().unwrap(), "10.9.0.1".parse().unwrap()).await;
    }

    #[tokio::test]
    async fn ipv6_socket_receives_only_its_vrid() {
        only_its_vrid_is_received("::1".parse().unwrap(), "fd00:9::1".parse().unwrap()).await;
    }
}
