//! An in-memory stand-in for the kernel's IPVS genl handlers, used to test
//! the client without `ip_vs`. Every request and reply goes through real
//! serialization and parsing, and replies mimic the kernel's layout
//! (STATS + STATS64 nests, HASHED flag, unknown attributes).
#![allow(clippy::expect_used)]

use std::io;
use std::num::NonZeroI32;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream;
use futures::{FutureExt, StreamExt};
use netlink_packet_core::{
    DefaultNla, DoneMessage, ErrorMessage, NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART as NLM_F_MULTI,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;

use crate::constants::IP_VS_SVC_F_HASHED;
use crate::daemon::{DaemonAttr, SyncDaemon};
use crate::destination::{DestAttr, Destination, DestinationEntry};
use crate::error::Error;
use crate::info::Timeouts;
use crate::message::{CmdAttr, IpvsCmd, IpvsMessage};
use crate::service::{AddressFamily, Service, ServiceAttr, ServiceEntry, ServiceKey};
use crate::stats::Stats;
use crate::transport::{Connector, IpvsPacket, Replies, Sockets, Transport};

pub(crate) const FAMILY_ID: u16 = 0x23;
const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EBUSY: i32 = 16;
const EINVAL: i32 = 22;

#[derive(Default)]
pub(crate) struct State {
    next_seq: u32,
    pub services: Vec<(Service, Vec<Destination>)>,
    pub timeouts: Timeouts,
    /// Running sync daemons, as the kernel reports them (defaults filled in).
    pub daemons: Vec<SyncDaemon>,
    /// Messages per datagram, in send order.
    pub batches: Vec<usize>,
    /// Deliver acks of a batch in reverse order (order must not matter).
    pub reverse_acks: bool,
    /// Drop the ack of the message with this sequence number and never
    /// close the stream, like an ack lost to a receive-buffer overrun.
    pub lose_ack_of_seq: Option<u32>,
    /// Answer this many dumps with EBUSY first.
    pub busy_dumps: usize,
    /// Connections opened (the client's first connect included).
    pub opens: usize,
    /// Sockets of the connections opened before this many opens are
    /// closed, as after a socket error: nothing can be sent on them.
    pub closed_below: usize,
    /// The next this many sends take effect, but their reply streams fail
    /// before the first reply, as when the socket breaks after sending.
    pub break_after_send: usize,
    /// Refuse this many opens, as when sockets cannot be created.
    pub refuse_opens: usize,
    /// Give each open its own family id, as when ip_vs is unloaded and
    /// loaded again in between.
    pub new_family_per_open: bool,
}

#[derive(Clone, Default)]
pub(crate) struct FakeKernel(pub Arc<Mutex<State>>);

impl FakeKernel {
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.0.lock().expect("fake kernel lock");
        f(&mut state)
    }

    /// Closes every socket opened so far.
    pub fn close_sockets(&self) {
        self.with(|s| s.closed_below = s.opens);
    }

    /// Opens sockets like `KernelConnector`: a control socket and
    /// `dump_sockets` dump sockets, all answered by this kernel.
    pub fn connector(&self, dump_sockets: usize) -> FakeConnector {
        FakeConnector {
            kernel: self.clone(),
            dump_sockets,
        }
    }
}

pub(crate) struct FakeConnector {
    kernel: FakeKernel,
    dump_sockets: usize,
}

impl Connector for FakeConnector {
    fn open(&self) -> BoxFuture<'static, Result<Sockets, Error>> {
        let opened = self.kernel.with(|s| {
            if s.refuse_opens > 0 {
                s.refuse_opens -= 1;
                return Err(Error::Connection(io::Error::from(
                    io::ErrorKind::PermissionDenied,
                )));
            }
            s.opens += 1;
            let generation = s.opens - 1;
            let family_id = if s.new_family_per_open {
                FAMILY_ID + u16::try_from(generation).expect("few opens")
            } else {
                FAMILY_ID
            };
            Ok((generation, family_id))
        });
        let socket = |generation, family_id| -> Box<dyn Transport> {
            Box::new(FakeSocket {
                kernel: self.kernel.clone(),
                generation,
                family_id,
            })
        };
        let sockets = opened.map(|(generation, family_id)| Sockets {
            family_id,
            control: socket(generation, family_id),
            dumpers: (0..self.dump_sockets.max(1))
                .map(|_| socket(generation, family_id))
                .collect(),
        });
        futures::future::ready(sockets).boxed()
    }
}

/// One socket of one connection to the fake kernel.
struct FakeSocket {
    kernel: FakeKernel,
    /// Which open made it (see `State::closed_below`).
    generation: usize,
    family_id: u16,
}

fn stats_for(seed: u64) -> Stats {
    Stats {
        conns: seed,
        // Above u32::MAX: only STATS64 can carry it.
        inpkts: (1 << 32) + seed,
        outpkts: 7,
        inbytes: 1 << 40,
        outbytes: 99,
        cps: 1,
        inpps: 2,
        outpps: 3,
        inbps: 4,
        outbps: 5,
    }
}

fn unknown_attr() -> DefaultNla {
    DefaultNla::new(99, vec![0xde, 0xad, 0xbe, 0xef])
}

/// What `ip_vs_genl_fill_service` writes.
fn kernel_service_attrs(s: &Service) -> Vec<ServiceAttr> {
    let mut attrs = Vec::new();
    for attr in s.to_attrs() {
        attrs.push(match attr {
            ServiceAttr::Flags { flags, .. } => ServiceAttr::Flags {
                flags: flags | IP_VS_SVC_F_HASHED,
                mask: u32::MAX,
            },
            other => other,
        });
    }
    let stats = stats_for(s.timeout.into());
    attrs.push(ServiceAttr::Stats(stats.to_attrs32()));
    attrs.push(ServiceAttr::Other(unknown_attr()));
    attrs.push(ServiceAttr::Stats64(stats.to_attrs64()));
    attrs
}

/// What `ip_vs_genl_fill_dest` writes (TUN_* always, in its order).
fn kernel_dest_attrs(d: &Destination) -> Vec<DestAttr> {
    let stats = stats_for(d.weight.into());
    let raw = crate::nla::inet_addr_bytes(&d.addr);
    vec![
        DestAttr::Addr(raw),
        DestAttr::Port(d.port),
        DestAttr::FwdMethod(d.forward.number()),
        DestAttr::Weight(d.weight),
        DestAttr::TunType(d.tunnel_type.number()),
        DestAttr::TunPort(d.tunnel_port),
        DestAttr::TunFlags(d.tunnel_flags),
        DestAttr::UThresh(d.upper_threshold),
        DestAttr::LThresh(d.lower_threshold),
        DestAttr::ActiveConns(3),
        DestAttr::InactConns(4),
        DestAttr::PersistConns(0),
        DestAttr::AddrFamily(AddressFamily::of(&d.addr).number()),
        DestAttr::Stats(stats.to_attrs32()),
        DestAttr::Other(unknown_attr()),
        DestAttr::Stats64(stats.to_attrs64()),
    ]
}

fn key_of(msg: &IpvsMessage) -> Option<ServiceKey> {
    ServiceEntry::from_attrs(msg.service_attrs()?)
        .ok()
        .map(|e| e.service.key)
}

fn dest_key_of(msg: &IpvsMessage, family: AddressFamily) -> Option<(std::net::IpAddr, u16)> {
    let mut raw = None;
    let mut port = None;
    let mut af = family;
    for attr in msg.dest_attrs()? {
        match attr {
            DestAttr::Addr(a) => raw = Some(*a),
            DestAttr::Port(p) => port = Some(*p),
            DestAttr::AddrFamily(f) => af = AddressFamily::from_number(*f)?,
            _ => {}
        }
    }
    Some((af.addr_from_union(&raw?), port?))
}

enum Reply {
    Ack(i32),
    Messages(Vec<IpvsMessage>),
    Dump(Vec<IpvsMessage>),
}

impl State {
    fn find(&mut self, key: &ServiceKey) -> Option<&mut (Service, Vec<Destination>)> {
        self.services.iter_mut().find(|(s, _)| s.key == *key)
    }

    fn handle(&mut self, msg: &IpvsMessage, flags: u16) -> Reply {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        match msg.cmd {
            IpvsCmd::NewService | IpvsCmd::SetService => {
                let Some(attrs) = msg.service_attrs() else {
                    return Reply::Ack(-EINVAL);
                };
                let Ok(entry) = ServiceEntry::from_attrs(attrs) else {
                    return Reply::Ack(-EINVAL);
                };
                let svc = entry.service;
                match (msg.cmd, self.find(&svc.key)) {
                    (IpvsCmd::NewService, Some(_)) => Reply::Ack(-EEXIST),
                    (IpvsCmd::NewService, None) => {
                        self.services.push((svc, Vec::new()));
                        Reply::Ack(0)
                    }
                    (_, Some(existing)) => {
                        existing.0 = svc;
                        Reply::Ack(0)
                    }
                    (_, None) => Reply::Ack(-ESRCH),
                }
            }
            IpvsCmd::DelService => match key_of(msg) {
                Some(key) => {
                    let before = self.services.len();
                    self.services.retain(|(s, _)| s.key != key);
                    Reply::Ack(if self.services.len() < before {
                        0
                    } else {
                        -ESRCH
                    })
                }
                None => Reply::Ack(-EINVAL),
            },
            IpvsCmd::NewDest | IpvsCmd::SetDest | IpvsCmd::DelDest => {
                let Some(key) = key_of(msg) else {
                    return Reply::Ack(-EINVAL);
                };
                let cmd = msg.cmd;
                let full = msg
                    .dest_attrs()
                    .and_then(|a| DestinationEntry::from_attrs(a, key.family()).ok());
                let target = dest_key_of(msg, key.family());
                let Some((_, dests)) = self.find(&key) else {
                    return Reply::Ack(-ESRCH);
                };
                let Some((addr, port)) = target else {
                    return Reply::Ack(-EINVAL);
                };
                let pos = dests.iter().position(|d| d.addr == addr && d.port == port);
                Reply::Ack(match (cmd, pos, full) {
                    (IpvsCmd::DelDest, Some(i), _) => {
                        dests.remove(i);
                        0
                    }
                    (IpvsCmd::DelDest, None, _) => -ENOENT,
                    (IpvsCmd::NewDest, Some(_), _) => -EEXIST,
                    (IpvsCmd::NewDest, None, Some(e)) => {
                        dests.push(e.dest);
                        0
                    }
                    (IpvsCmd::SetDest, Some(i), Some(e)) => {
                        dests[i] = e.dest;
                        0
                    }
                    (IpvsCmd::SetDest, None, _) => -ENOENT,
                    _ => -EINVAL,
                })
            }
            IpvsCmd::GetService if dump => Reply::Dump(
                self.services
                    .iter()
                    .map(|(s, _)| {
                        IpvsMessage::new(
                            IpvsCmd::NewService,
                            vec![CmdAttr::Service(kernel_service_attrs(s))],
                        )
                    })
                    .collect(),
            ),
            IpvsCmd::GetService => {
                let found = key_of(msg).and_then(|k| self.find(&k).map(|(s, _)| s.clone()));
                match found {
                    Some(s) => Reply::Messages(vec![IpvsMessage::new(
                        IpvsCmd::NewService,
                        vec![CmdAttr::Service(kernel_service_attrs(&s))],
                    )]),
                    None => Reply::Ack(-ESRCH),
                }
            }
            IpvsCmd::GetDest if dump => {
                // Like the kernel: an unknown service is an empty dump.
                let dests = key_of(msg)
                    .and_then(|k| self.find(&k).map(|(_, d)| d.clone()))
                    .unwrap_or_default();
                Reply::Dump(
                    dests
                        .iter()
                        .map(|d| {
                            IpvsMessage::new(
                                IpvsCmd::NewDest,
                                vec![CmdAttr::Dest(kernel_dest_attrs(d))],
                            )
                        })
                        .collect(),
                )
            }
            IpvsCmd::GetInfo => Reply::Messages(vec![IpvsMessage::new(
                IpvsCmd::SetInfo,
                vec![
                    CmdAttr::InfoVersion(0x010201),
                    CmdAttr::InfoConnTabSize(4096),
                ],
            )]),
            IpvsCmd::GetConfig => Reply::Messages(vec![IpvsMessage::new(
                IpvsCmd::SetConfig,
                vec![
                    CmdAttr::TimeoutTcp(self.timeouts.tcp),
                    CmdAttr::TimeoutTcpFin(self.timeouts.tcp_fin),
                    CmdAttr::TimeoutUdp(self.timeouts.udp),
                ],
            )]),
            IpvsCmd::SetConfig => {
                let t = Timeouts::from_message(msg);
                for (new, cur) in [
                    (t.tcp, &mut self.timeouts.tcp),
                    (t.tcp_fin, &mut self.timeouts.tcp_fin),
                    (t.udp, &mut self.timeouts.udp),
                ] {
                    if new != 0 {
                        *cur = new;
                    }
                }
                Reply::Ack(0)
            }
            IpvsCmd::NewDaemon | IpvsCmd::DelDaemon => {
                let attrs = msg
                    .attrs
                    .iter()
                    .find_map(|a| match a {
                        CmdAttr::Daemon(d) => Some(d.as_slice()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let state = attrs.iter().find_map(|a| match a {
                    DaemonAttr::State(v) => crate::daemon::SyncState::from_u32(*v),
                    _ => None,
                });
                let Some(state) = state else {
                    return Reply::Ack(-EINVAL);
                };
                let at = self.daemons.iter().position(|d| d.state == state);
                match (msg.cmd, at) {
                    (IpvsCmd::DelDaemon, Some(i)) => {
                        self.daemons.remove(i);
                        Reply::Ack(0)
                    }
                    (IpvsCmd::DelDaemon, None) => Reply::Ack(-ESRCH),
                    (_, Some(_)) => Reply::Ack(-EEXIST),
                    (_, None) => match SyncDaemon::from_attrs(attrs) {
                        Ok(mut d) => {
                            d.max_len.get_or_insert(1472);
                            d.group.get_or_insert([224, 0, 0, 81].into());
                            d.port.get_or_insert(8848);
                            d.ttl.get_or_insert(1);
                            self.daemons.push(d);
                            Reply::Ack(0)
                        }
                        Err(_) => Reply::Ack(-EINVAL),
                    },
                }
            }
            IpvsCmd::GetDaemon if dump => Reply::Dump(
                self.daemons
                    .iter()
                    .filter_map(|d| d.to_attrs().ok())
                    .map(|a| IpvsMessage::new(IpvsCmd::NewDaemon, vec![CmdAttr::Daemon(a)]))
                    .collect(),
            ),
            _ => Reply::Ack(-EINVAL),
        }
    }
}

fn wire_roundtrip(packet: &IpvsPacket) -> IpvsPacket {
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    NetlinkMessage::deserialize(&buf).expect("fake kernel: packet does not parse back")
}

fn reply(seq: u32, flags: u16, payload: NetlinkPayload<GenlMessage<IpvsMessage>>) -> IpvsPacket {
    let mut header = NetlinkHeader::default();
    header.sequence_number = seq;
    header.port_number = 4242;
    header.flags = flags;
    let mut msg = NetlinkMessage::new(header, payload);
    msg.finalize();
    wire_roundtrip(&msg)
}

fn error_payload(code: i32) -> NetlinkPayload<GenlMessage<IpvsMessage>> {
    let mut e = ErrorMessage::default();
    e.code = NonZeroI32::new(code);
    NetlinkPayload::Error(e)
}

fn inner(msg: IpvsMessage) -> NetlinkPayload<GenlMessage<IpvsMessage>> {
    let mut genl = GenlMessage::from_payload(msg);
    genl.set_resolved_family_id(FAMILY_ID);
    NetlinkPayload::InnerMessage(genl)
}

impl Transport for FakeSocket {
    fn send(&self, msgs: Vec<IpvsPacket>) -> Result<Replies, Error> {
        let mut state = self.kernel.0.lock().expect("fake kernel lock");
        if self.generation < state.closed_below {
            return Err(Error::Connection(io::Error::from(
                io::ErrorKind::ConnectionAborted,
            )));
        }
        state.batches.push(msgs.len());
        let mut acks = Vec::new();
        let mut others = Vec::new();
        let mut stall = false;
        for mut msg in msgs {
            // netlink-proto numbers every message of a batch consecutively.
            state.next_seq += 1;
            let seq = state.next_seq;
            msg.header.sequence_number = seq;
            let msg = wire_roundtrip(&msg);
            assert_eq!(msg.header.message_type, self.family_id, "wrong family id");
            let NetlinkPayload::InnerMessage(genl) = msg.payload else {
                panic!("fake kernel: not a genl message");
            };
            let flags = msg.header.flags;
            let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
            if dump && state.busy_dumps > 0 {
                state.busy_dumps -= 1;
                others.push(reply(seq, 0, error_payload(-EBUSY)));
                continue;
            }
            match state.handle(&genl.payload, flags) {
                Reply::Ack(code) if code != 0 || flags & NLM_F_ACK != 0 => {
                    if state.lose_ack_of_seq == Some(seq) {
                        stall = true;
                    } else {
                        acks.push(reply(seq, 0, error_payload(code)));
                    }
                }
                Reply::Ack(_) => {}
                Reply::Messages(m) => others.extend(m.into_iter().map(|m| reply(seq, 0, inner(m)))),
                Reply::Dump(m) => {
                    others.extend(m.into_iter().map(|m| reply(seq, NLM_F_MULTI, inner(m))));
                    others.push(reply(
                        seq,
                        NLM_F_MULTI,
                        NetlinkPayload::Done(DoneMessage::default()),
                    ));
                }
            }
        }
        if state.reverse_acks {
            acks.reverse();
        }
        others.extend(acks);
        if state.break_after_send > 0 {
            state.break_after_send -= 1;
            let broken = Error::Connection(io::Error::from(io::ErrorKind::ConnectionReset));
            return Ok(stream::iter([Err(broken)]).boxed());
        }
        let replies = stream::iter(others.into_iter().map(Ok));
        Ok(if stall {
            replies.chain(stream::pending()).boxed()
        } else {
            replies.boxed()
        })
    }
}
