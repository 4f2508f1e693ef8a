//! A netlink socket for dumps that reads only as fast as its replies are
//! consumed. The kernel builds a dump one datagram per `recvmsg`, so reading
//! lazily keeps a dump of 10,000 services at one datagram in memory; a
//! connection task that reads eagerly (netlink-proto's) decodes the whole
//! dump into its channel before the first entry is used.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;

use futures::StreamExt;
use netlink_packet_core::{NLM_F_MULTIPART, NetlinkBuffer, NetlinkPayload};
use netlink_proto::sys::protocols::NETLINK_GENERIC;
use netlink_proto::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use tokio::sync::Mutex;

use crate::error::Error;
use crate::transport::{IpvsPacket, Replies, Transport};

struct Shared {
    socket: TokioSocket,
    seq: u32,
    /// Requests of an earlier stream that was dropped before their answers
    /// were read; their replies would still queue on this socket.
    unfinished: bool,
}

pub(crate) struct DumpTransport {
    shared: Arc<Mutex<Shared>>,
}

fn open_socket() -> io::Result<TokioSocket> {
    let mut socket = TokioSocket::new(NETLINK_GENERIC)?;
    socket.socket_mut().bind_auto()?;
    Ok(socket)
}

impl DumpTransport {
    pub fn open() -> Result<DumpTransport, Error> {
        Ok(DumpTransport {
            shared: Arc::new(Mutex::new(Shared {
                socket: open_socket().map_err(Error::Connection)?,
                seq: 0,
                unfinished: false,
            })),
        })
    }
}

/// A reply that ends the request it answers: an error or ack, the end of a
/// dump, or a single (non-multipart) answer.
fn ends_request(msg: &IpvsPacket) -> bool {
    match msg.payload {
        NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => true,
        _ => msg.header.flags & NLM_F_MULTIPART == 0,
    }
}

/// A failure of the socket itself, never an answer of the kernel's IPVS
/// code: the client reopens its sockets after one.
fn failure(what: &str, e: io::Error) -> Error {
    Error::Connection(io::Error::new(
        e.kind(),
        format!("dump socket: {what}: {e}"),
    ))
}

struct Reading {
    guard: tokio::sync::OwnedMutexGuard<Shared>,
    pending: BTreeSet<u32>,
    datagram: Vec<u8>,
    offset: usize,
}

impl Reading {
    /// The next reply to one of `pending`, reading a datagram when needed.
    async fn next(&mut self) -> Option<Result<IpvsPacket, Error>> {
        while !self.pending.is_empty() {
            if self.offset >= self.datagram.len() {
                match self.guard.socket.recv_from_full().await {
                    Ok((datagram, _)) => {
                        self.datagram = datagram;
                        self.offset = 0;
                        continue;
                    }
                    Err(e) => {
                        self.pending.clear();
                        self.guard.unfinished = true;
                        // ENOBUFS included: the dump lost replies.
                        return Some(Err(failure("receive", e)));
                    }
                }
            }
            let rest = &self.datagram[self.offset..];
            let len = match NetlinkBuffer::new_checked(rest) {
                Ok(b) => b.length() as usize,
                Err(_) => {
                    self.offset = self.datagram.len();
                    continue;
                }
            };
            let end = len.min(rest.len());
            let parsed = IpvsPacket::deserialize(&rest[..end]);
            // Messages are 4-byte aligned within a datagram.
            self.offset += end.div_ceil(4) * 4;
            let Ok(msg) = parsed else { continue };
            if !self.pending.contains(&msg.header.sequence_number) {
                continue; // a late reply to an abandoned request
            }
            if ends_request(&msg) {
                self.pending.remove(&msg.header.sequence_number);
            }
            if self.pending.is_empty() {
                self.guard.unfinished = false;
            }
            return Some(Ok(msg));
        }
        None
    }
}

impl Transport for DumpTransport {
    fn send(&self, msgs: Vec<IpvsPacket>) -> Result<Replies, Error> {
        let shared = self.shared.clone();
        let start = async move {
            let mut guard = shared.lock_owned().await;
            if guard.unfinished {
                // Closing the socket is what makes the kernel drop the rest
                // of an abandoned dump (a new dump would fail with EBUSY).
                match open_socket() {
                    Ok(s) => {
                        guard.socket = s;
                        guard.unfinished = false;
                    }
                    Err(e) => return Err(failure("reopen", e)),
                }
            }
            let mut pending = BTreeSet::new();
            let mut buf = Vec::new();
            for mut msg in msgs {
                guard.seq = guard.seq.wrapping_add(1);
                msg.header.sequence_number = guard.seq;
                msg.finalize();
                let at = buf.len();
                buf.resize(at + msg.buffer_len(), 0);
                msg.serialize(&mut buf[at..]);
                pending.insert(guard.seq);
            }
            guard.unfinished = true;
            if let Err(e) = guard.socket.send_to(&buf, &SocketAddr::new(0, 0)).await {
                return Err(failure("send", e));
            }
            Ok(Reading {
                guard,
                pending,
                datagram: Vec::new(),
                offset: 0,
            })
        };
        let stream =
            futures::stream::once(start).flat_map(|started| match started {
                Ok(reading) => futures::stream::unfold(reading, |mut r| async move {
                    r.next().await.map(|m| (m, r))
                })
                .boxed(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            });
        Ok(stream.boxed())
    }
}
