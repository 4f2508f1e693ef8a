//! The async IPVS client.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use tokio::sync::{Mutex, MutexGuard};

use crate::destination::{Destination, DestinationEntry};
use crate::dump_socket::DumpTransport;
use crate::error::Error;
use crate::info::{Info, Timeouts};
use crate::message::{CmdAttr, IpvsCmd, IpvsMessage};
use crate::op::Op;
use crate::pipeline::{match_acks, starts_new_batch};
use crate::service::{Service, ServiceEntry, ServiceKey};
use crate::transport::{self, IpvsPacket, ProtoTransport, SocketOptions, Transport};

const EBUSY: i32 = nix::errno::Errno::EBUSY as i32;
const ESRCH: i32 = nix::errno::Errno::ESRCH as i32;

/// A dump socket whose previous dump was abandoned mid-way (caller dropped
/// the future) can still be finishing it; the kernel then answers EBUSY.
const DUMP_BUSY_RETRIES: u32 = 5;

/// Tuning knobs; [`Config::default`] suits a node agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most write requests per datagram in [`Client::apply`]; the client
    /// waits for all of a batch's acks before sending the next batch.
    pub window: usize,
    /// Byte budget per write datagram (the kernel rejects a datagram larger
    /// than the socket send buffer, ~208 KiB by default).
    pub max_batch_bytes: usize,
    /// Number of dump sockets. A netlink socket runs one dump at a time
    /// (a second one gets EBUSY), so this bounds concurrent dumps.
    pub dump_sockets: usize,
    /// Receive buffer of the write socket, see `SO_RCVBUFFORCE`.
    pub recv_buffer: usize,
    /// How long to wait for the complete answer to one request or batch.
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            window: 256,
            max_batch_bytes: 64 * 1024,
            dump_sockets: 4,
            recv_buffer: 8 << 20,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Handle to the kernel's IPVS table. Cheap to clone; all clones share the
/// sockets, which close when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    family_id: u16,
    /// Writes and single-message queries (never dumps, so never EBUSY).
    control: Box<dyn Transport>,
    dumpers: Vec<DumpSlot>,
    next_dumper: AtomicUsize,
    writes: AtomicU64,
    config: Config,
}

struct DumpSlot {
    transport: Box<dyn Transport>,
    busy: Mutex<()>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("family_id", &self.inner.family_id)
            .field("writes", &self.writes())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Client {
    /// Connect with [`Config::default`]. Must run inside a tokio runtime.
    pub async fn connect() -> Result<Client, Error> {
        Client::connect_with(Config::default()).await
    }

    /// Resolve the "IPVS" family and open the write and dump sockets.
    pub async fn connect_with(config: Config) -> Result<Client, Error> {
        let family_id = transport::resolve_family(config.timeout).await?;
        let control = ProtoTransport::open(SocketOptions {
            forward_ack: true,
            forward_done: true,
            recv_buffer: config.recv_buffer,
        })?;
        let mut dumpers: Vec<Box<dyn Transport>> = Vec::new();
        for _ in 0..config.dump_sockets.max(1) {
            // Read only as fast as entries are decoded (see dump_socket).
            dumpers.push(Box::new(DumpTransport::open()?));
        }
        tracing::debug!(family_id, dump_sockets = dumpers.len(), "connected to IPVS");
        Ok(Client::from_transports(
            family_id,
            Box::new(control),
            dumpers,
            config,
        ))
    }

    pub(crate) fn from_transports(
        family_id: u16,
        control: Box<dyn Transport>,
        dumpers: Vec<Box<dyn Transport>>,
        config: Config,
    ) -> Client {
        Client {
            inner: Arc::new(Inner {
                family_id,
                control,
                dumpers: dumpers
                    .into_iter()
                    .map(|transport| DumpSlot {
                        transport,
                        busy: Mutex::new(()),
                    })
                    .collect(),
                next_dumper: AtomicUsize::new(0),
                writes: AtomicU64::new(0),
                config,
            }),
        }
    }

    /// The generic netlink family id the kernel assigned to IPVS.
    pub fn family_id(&self) -> u16 {
        self.inner.family_id
    }

    /// Write requests (NEW/SET/DEL of anything, set timeouts) sent since
    /// connect, counting each op of a batch.
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    pub async fn info(&self) -> Result<Info, Error> {
        let op = "get IPVS info";
        let replies = self
            .call(
                IpvsMessage::new(IpvsCmd::GetInfo, vec![]),
                NLM_F_REQUEST,
                op,
            )
            .await?;
        replies
            .iter()
            .find_map(Info::from_message)
            .ok_or_else(|| Error::Decode(format!("{op}: reply lacks IPVS_INFO_ATTR_VERSION")))
    }

    /// All services, from one multi-part dump.
    pub async fn services(&self) -> Result<Vec<ServiceEntry>, Error> {
        let op = "list services";
        self.dump(IpvsMessage::new(IpvsCmd::GetService, vec![]), op, |m| {
            m.service_attrs()
                .ok_or_else(|| Error::Decode(format!("{op}: reply without a service")))
                .and_then(ServiceEntry::from_attrs)
                .map(Some)
        })
        .await
    }

    /// The services `keep` accepts, without statistics: a caller that needs
    /// a few of many services never holds all of them.
    pub async fn services_where(
        &self,
        keep: impl Fn(&ServiceKey) -> bool,
    ) -> Result<Vec<Service>, Error> {
        let op = "list services";
        self.dump(IpvsMessage::new(IpvsCmd::GetService, vec![]), op, |m| {
            let entry = m
                .service_attrs()
                .ok_or_else(|| Error::Decode(format!("{op}: reply without a service")))
                .and_then(ServiceEntry::from_attrs)?;
            Ok(keep(&entry.service.key).then_some(entry.service))
        })
        .await
    }

    /// One service, or `None` if the kernel has no such service.
    pub async fn service(&self, key: &ServiceKey) -> Result<Option<ServiceEntry>, Error> {
        let op = format!("get service {key}");
        let msg = IpvsMessage::new(IpvsCmd::GetService, vec![CmdAttr::Service(key.to_attrs())]);
        let replies = match self.call(msg, NLM_F_REQUEST, &op).await {
            Err(e) if e.errno() == Some(ESRCH) => return Ok(None),
            other => other?,
        };
        let attrs = replies
            .iter()
            .find_map(IpvsMessage::service_attrs)
            .ok_or_else(|| Error::Decode(format!("{op}: reply without a service")))?;
        ServiceEntry::from_attrs(attrs).map(Some)
    }

    /// Destinations of one service. The kernel answers an empty list (not
    /// an error) when the service does not exist.
    pub async fn destinations(&self, key: &ServiceKey) -> Result<Vec<DestinationEntry>, Error> {
        let op = format!("list destinations of {key}");
        let msg = IpvsMessage::new(IpvsCmd::GetDest, vec![CmdAttr::Service(key.to_attrs())]);
        self.dump(msg, &op, |m| {
            m.dest_attrs()
                .ok_or_else(|| Error::Decode(format!("{op}: reply without a destination")))
                .and_then(|attrs| DestinationEntry::from_attrs(attrs, key.family()))
                .map(Some)
        })
        .await
    }

    /// Destinations of many services, dumped concurrently over the dump
    /// sockets; results in the order of `keys`.
    pub async fn destinations_many(
        &self,
        keys: &[ServiceKey],
    ) -> Vec<Result<Vec<DestinationEntry>, Error>> {
        futures::stream::iter(keys)
            .map(|key| self.destinations(key))
            .buffered(self.inner.dumpers.len().max(1))
            .collect()
            .await
    }

    /// Send all ops pipelined: up to `Config::window` requests per datagram,
    /// each acked individually and matched back by sequence number. The
    /// kernel runs them in slice order and a failure does not stop the rest
    /// (so a NewDest after a failed NewService fails on its own). Results
    /// are in input order.
    pub async fn apply(&self, ops: &[Op]) -> Vec<Result<(), Error>> {
        // Packets are encoded one batch at a time, so memory stays bounded by
        // the window however many ops there are (cuts as `plan_batches`).
        let config = &self.inner.config;
        let mut results = Vec::with_capacity(ops.len());
        let mut batch: Vec<IpvsPacket> = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, op) in ops.iter().enumerate() {
            let packet = self.packet(op.to_message(), NLM_F_REQUEST | NLM_F_ACK);
            let size = packet.header.length as usize;
            if starts_new_batch(
                i - start,
                bytes,
                size,
                config.window,
                config.max_batch_bytes,
            ) {
                let full = std::mem::take(&mut batch);
                results.extend(self.apply_batch(&ops[start..i], full).await);
                start = i;
                bytes = 0;
            }
            bytes += size;
            batch.push(packet);
        }
        if !batch.is_empty() {
            results.extend(self.apply_batch(&ops[start..], batch).await);
        }
        results
    }

    pub async fn new_service(&self, service: &Service) -> Result<(), Error> {
        self.apply_one(Op::NewService(service.clone())).await
    }

    pub async fn set_service(&self, service: &Service) -> Result<(), Error> {
        self.apply_one(Op::SetService(service.clone())).await
    }

    pub async fn del_service(&self, key: &ServiceKey) -> Result<(), Error> {
        self.apply_one(Op::DelService(*key)).await
    }

    pub async fn new_dest(&self, key: &ServiceKey, dest: &Destination) -> Result<(), Error> {
        self.apply_one(Op::NewDest(*key, *dest)).await
    }

    pub async fn set_dest(&self, key: &ServiceKey, dest: &Destination) -> Result<(), Error> {
        self.apply_one(Op::SetDest(*key, *dest)).await
    }

    pub async fn del_dest(&self, key: &ServiceKey, addr: IpAddr, port: u16) -> Result<(), Error> {
        self.apply_one(Op::DelDest(*key, addr, port)).await
    }

    pub async fn timeouts(&self) -> Result<Timeouts, Error> {
        let replies = self
            .call(
                IpvsMessage::new(IpvsCmd::GetConfig, vec![]),
                NLM_F_REQUEST,
                "get timeouts",
            )
            .await?;
        Ok(replies
            .first()
            .map(Timeouts::from_message)
            .unwrap_or_default())
    }

    /// Set connection timeouts; a 0 field leaves that timeout unchanged.
    pub async fn set_timeouts(&self, timeouts: &Timeouts) -> Result<(), Error> {
        let result = self
            .call(
                timeouts.to_message(),
                NLM_F_REQUEST | NLM_F_ACK,
                "set timeouts",
            )
            .await;
        // A connection error means the request never left.
        if !matches!(result, Err(Error::Connection(_))) {
            self.inner.writes.fetch_add(1, Ordering::Relaxed);
        }
        result.map(drop)
    }

    async fn apply_one(&self, op: Op) -> Result<(), Error> {
        let description = op.to_string();
        self.apply(std::slice::from_ref(&op))
            .await
            .pop()
            .unwrap_or_else(|| {
                Err(Error::Unacknowledged {
                    op: description,
                    reason: "no result".to_string(),
                })
            })
    }

    async fn apply_batch(&self, ops: &[Op], batch: Vec<IpvsPacket>) -> Vec<Result<(), Error>> {
        tracing::debug!(requests = ops.len(), "sending IPVS write batch");
        let (replies, complete) = match self.exchange(&*self.inner.control, batch).await {
            Ok(r) => {
                self.inner
                    .writes
                    .fetch_add(ops.len() as u64, Ordering::Relaxed);
                r
            }
            Err(e) => {
                // Nothing was sent: the ops definitely did not happen.
                let reason = e.to_string();
                return ops
                    .iter()
                    .map(|op| {
                        Err(Error::Connection(io::Error::other(format!(
                            "{op}: {reason}"
                        ))))
                    })
                    .collect();
            }
        };
        let mut acks = Vec::with_capacity(ops.len());
        for reply in replies {
            match reply.payload {
                NetlinkPayload::Error(e) => acks.push((reply.header.sequence_number, e.raw_code())),
                other => tracing::warn!(reply = ?other, "unexpected reply to an IPVS write"),
            }
        }
        match match_acks(ops.len(), &acks, complete) {
            Ok(codes) => ops
                .iter()
                .zip(codes)
                .map(|(op, code)| match code {
                    0 => Ok(()),
                    code => Err(Error::kernel(op.to_string(), code)),
                })
                .collect(),
            Err(reason) => {
                tracing::warn!(%reason, requests = ops.len(), "IPVS write batch not fully acknowledged");
                let after = self.inner.config.timeout;
                ops.iter()
                    .map(|op| {
                        Err(match complete {
                            false => Error::Timeout {
                                op: op.to_string(),
                                after,
                            },
                            true => Error::Unacknowledged {
                                op: op.to_string(),
                                reason: reason.clone(),
                            },
                        })
                    })
                    .collect()
            }
        }
    }

    /// One non-dump request on the control socket.
    async fn call(
        &self,
        msg: IpvsMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<IpvsMessage>, Error> {
        let packet = self.packet(msg, flags);
        let (replies, complete) = self.exchange(&*self.inner.control, vec![packet]).await?;
        self.finish(op, replies, complete)
    }

    /// One dump on a free dump socket, retried on EBUSY.
    /// Runs a dump, decoding each reply as it arrives (`None`: not wanted):
    /// a dump of 10,000 services never holds 10,000 decoded messages.
    async fn dump<T>(
        &self,
        msg: IpvsMessage,
        op: &str,
        decode: impl Fn(&IpvsMessage) -> Result<Option<T>, Error>,
    ) -> Result<Vec<T>, Error> {
        let mut attempt = 0;
        loop {
            let result = {
                let (slot, _busy) = self.acquire_dumper().await;
                let packet = self.packet(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP);
                self.dump_on(&*slot.transport, packet, op, &decode).await
            };
            match result {
                Err(e) if e.errno() == Some(EBUSY) && attempt < DUMP_BUSY_RETRIES => {
                    attempt += 1;
                    tracing::debug!(op, attempt, "dump socket busy, retrying");
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    async fn dump_on<T>(
        &self,
        transport: &dyn Transport,
        packet: IpvsPacket,
        op: &str,
        decode: &impl Fn(&IpvsMessage) -> Result<Option<T>, Error>,
    ) -> Result<Vec<T>, Error> {
        let mut stream = transport.send(vec![packet])?;
        let mut out = Vec::new();
        let mut failed = None;
        let collect = async {
            // Read to the end even after an error, as the socket is reused.
            while let Some(reply) = stream.next().await {
                if failed.is_some() {
                    continue;
                }
                match reply_payload(op, reply).and_then(|m| m.as_ref().map(&decode).transpose()) {
                    Ok(Some(Some(entry))) => out.push(entry),
                    Ok(_) => {}
                    Err(e) => failed = Some(e),
                }
            }
        };
        let complete = tokio::time::timeout(self.inner.config.timeout, collect)
            .await
            .is_ok();
        if let Some(e) = failed {
            return Err(e);
        }
        if !complete {
            return Err(Error::Timeout {
                op: op.to_string(),
                after: self.inner.config.timeout,
            });
        }
        Ok(out)
    }

    /// Prefer an idle dump socket; otherwise queue on one round-robin.
    async fn acquire_dumper(&self) -> (&DumpSlot, MutexGuard<'_, ()>) {
        let slots = &self.inner.dumpers;
        let start = self.inner.next_dumper.fetch_add(1, Ordering::Relaxed) % slots.len();
        for i in 0..slots.len() {
            let slot = &slots[(start + i) % slots.len()];
            if let Ok(guard) = slot.busy.try_lock() {
                return (slot, guard);
            }
        }
        let slot = &slots[start];
        (slot, slot.busy.lock().await)
    }

    fn packet(&self, msg: IpvsMessage, flags: u16) -> IpvsPacket {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(self.inner.family_id);
        transport::packet(genl, flags)
    }

    /// Send and collect every reply; `complete` is false if the timeout hit
    /// before netlink-proto closed the reply stream.
    async fn exchange(
        &self,
        transport: &dyn Transport,
        packets: Vec<IpvsPacket>,
    ) -> Result<(Vec<IpvsPacket>, bool), Error> {
        let mut stream = transport.send(packets)?;
        let mut replies = Vec::new();
        let collect = async {
            while let Some(reply) = stream.next().await {
                replies.push(reply);
            }
        };
        let complete = tokio::time::timeout(self.inner.config.timeout, collect)
            .await
            .is_ok();
        Ok((replies, complete))
    }

    /// Turn the replies to one request into payloads or the first error.
    fn finish(
        &self,
        op: &str,
        replies: Vec<IpvsPacket>,
        complete: bool,
    ) -> Result<Vec<IpvsMessage>, Error> {
        let mut out = Vec::new();
        for reply in replies {
            if let Some(m) = reply_payload(op, reply)? {
                out.push(m);
            }
        }
        if !complete {
            return Err(Error::Timeout {
                op: op.to_string(),
                after: self.inner.config.timeout,
            });
        }
        Ok(out)
    }
}

/// A reply's message, nothing for acks and the end of a dump, or the error it carries.
fn reply_payload(op: &str, reply: IpvsPacket) -> Result<Option<IpvsMessage>, Error> {
    match reply.payload {
        NetlinkPayload::InnerMessage(genl) => Ok(Some(genl.payload)),
        NetlinkPayload::Error(e) => match e.code {
            Some(code) => Err(Error::kernel(op, code.get())),
            None => Ok(None),
        },
        NetlinkPayload::Done(done) if done.code < 0 => Err(Error::kernel(op, done.code)),
        NetlinkPayload::Overrun(_) => Err(Error::Unacknowledged {
            op: op.to_string(),
            reason: "netlink receive buffer overrun".to_string(),
        }),
        _ => Ok(None),
    }
}
