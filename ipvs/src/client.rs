//! The async IPVS client.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use tokio::sync::{Mutex, MutexGuard};

use crate::daemon::{SyncDaemon, SyncState};
use crate::destination::{Destination, DestinationEntry};
use crate::error::Error;
use crate::info::{Info, Timeouts};
use crate::message::{CmdAttr, IpvsCmd, IpvsMessage};
use crate::op::Op;
use crate::pipeline::{match_acks, starts_new_batch};
use crate::service::{Service, ServiceEntry, ServiceKey};
use crate::transport::{self, Connector, IpvsPacket, KernelConnector, Sockets, Transport};

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
    /// How long to wait for the complete answer to one request, one write
    /// batch (up to `window` requests) or one whole dump, and for resolving
    /// the family when (re)connecting. The default of 30 s is several times
    /// what the largest of them takes in the lab's emulated (TCG) guest: a
    /// dump of 10,000 services there takes about 3.5 s, a batch of 256
    /// writes well under one.
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
///
/// A transport failure (see [`Error::is_transport`]) closes the sockets it
/// happened on; the next call opens new ones, so one broken socket costs the
/// calls that were using it and nothing after. Kernel refusals (EEXIST,
/// ESRCH, ...) leave the sockets alone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Box<dyn Connector>,
    /// The sockets in use; `None` after a transport failure, until the next
    /// call opens new ones.
    current: std::sync::Mutex<Option<Arc<Conn>>>,
    /// One open at a time: concurrent calls after a failure share it.
    opening: Mutex<()>,
    /// The family id of the last open, for `family_id()`.
    family_id: AtomicU16,
    next_dumper: AtomicUsize,
    writes: AtomicU64,
    reopens: AtomicU64,
    config: Config,
}

/// One open connection: what [`Sockets`] holds, ready for concurrent use.
struct Conn {
    family_id: u16,
    control: Box<dyn Transport>,
    dumpers: Vec<DumpSlot>,
}

struct DumpSlot {
    transport: Box<dyn Transport>,
    busy: Mutex<()>,
}

impl From<Sockets> for Conn {
    fn from(s: Sockets) -> Conn {
        Conn {
            family_id: s.family_id,
            control: s.control,
            dumpers: s
                .dumpers
                .into_iter()
                .map(|transport| DumpSlot {
                    transport,
                    busy: Mutex::new(()),
                })
                .collect(),
        }
    }
}

/// How the reply stream of one exchange ended.
enum Ending {
    /// Every request was answered.
    Complete,
    /// The timeout hit first.
    TimedOut,
    /// The socket failed after the requests left.
    Broken(Error),
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("family_id", &self.family_id())
            .field("writes", &self.writes())
            .field("reopens", &self.reopens())
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
        let connector = KernelConnector {
            timeout: config.timeout,
            recv_buffer: config.recv_buffer,
            dump_sockets: config.dump_sockets,
        };
        Client::with_connector(Box::new(connector), config).await
    }

    /// Opens the first sockets now, so that a kernel without IPVS is
    /// reported by `connect` rather than by the first call.
    pub(crate) async fn with_connector(
        connector: Box<dyn Connector>,
        config: Config,
    ) -> Result<Client, Error> {
        let sockets = connector.open().await?;
        let family_id = sockets.family_id;
        tracing::debug!(
            family_id,
            dump_sockets = sockets.dumpers.len(),
            "connected to IPVS"
        );
        Ok(Client {
            inner: Arc::new(Inner {
                connector,
                current: std::sync::Mutex::new(Some(Arc::new(Conn::from(sockets)))),
                opening: Mutex::new(()),
                family_id: AtomicU16::new(family_id),
                next_dumper: AtomicUsize::new(0),
                writes: AtomicU64::new(0),
                reopens: AtomicU64::new(0),
                config,
            }),
        })
    }

    /// The generic netlink family id the kernel assigned to IPVS.
    pub fn family_id(&self) -> u16 {
        self.inner.family_id.load(Ordering::Relaxed)
    }

    /// How many times the sockets were opened again after a transport failure.
    pub fn reopens(&self) -> u64 {
        self.inner.reopens.load(Ordering::Relaxed)
    }

    /// The sockets to use, opening new ones if a transport failure closed
    /// the last.
    async fn conn(&self) -> Result<Arc<Conn>, Error> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _opening = self.inner.opening.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let conn = Arc::new(Conn::from(self.inner.connector.open().await?));
        self.inner
            .family_id
            .store(conn.family_id, Ordering::Relaxed);
        let reopens = self.inner.reopens.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(reopens, "IPVS netlink sockets reopened");
        *self.slot() = Some(conn.clone());
        Ok(conn)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Conn>>> {
        // Nothing can be left half-done under this lock: a poisoned one is usable.
        self.inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current(&self) -> Option<Arc<Conn>> {
        self.slot().clone()
    }

    /// Closes `conn` after a transport failure on it; the next call opens
    /// new sockets. Sockets opened since by another call are kept.
    fn drop_conn(&self, conn: &Arc<Conn>, error: &Error) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
            tracing::warn!(%error, "IPVS netlink transport failed; reopening on the next call");
        }
    }

    /// Closes `conn` if `result` is a transport failure.
    fn check<T>(&self, conn: &Arc<Conn>, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result
            && e.is_transport()
        {
            self.drop_conn(conn, e);
        }
        result
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
            .buffered(self.inner.config.dump_sockets.max(1))
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
            let packet = packet(self.family_id(), op.to_message(), NLM_F_REQUEST | NLM_F_ACK);
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
        // A connection error means the request never left (one after it
        // left is reported as Unacknowledged).
        if !matches!(result, Err(Error::Connection(_))) {
            self.inner.writes.fetch_add(1, Ordering::Relaxed);
        }
        result.map(drop)
    }

    /// The sync daemons running in this network namespace (at most one
    /// master and one backup), with the kernel's defaults filled in.
    pub async fn daemons(&self) -> Result<Vec<SyncDaemon>, Error> {
        let op = "list sync daemons";
        self.dump(IpvsMessage::new(IpvsCmd::GetDaemon, vec![]), op, |m| {
            m.daemon_attrs()
                .ok_or_else(|| Error::Decode(format!("{op}: reply without a daemon")))
                .and_then(SyncDaemon::from_attrs)
                .map(Some)
        })
        .await
    }

    /// Starts a sync daemon. The kernel answers EEXIST when one of that
    /// state already runs, and EINVAL while any service has destinations of
    /// another address family than its own (the sync protocol cannot carry
    /// them).
    pub async fn new_daemon(&self, daemon: &SyncDaemon) -> Result<(), Error> {
        let op = format!("start {daemon}");
        let msg = daemon.new_message()?;
        self.write(msg, &op).await
    }

    /// Stops the sync daemon of `state`; ESRCH when none runs.
    pub async fn del_daemon(&self, state: SyncState) -> Result<(), Error> {
        let op = format!("stop the {state} sync daemon");
        self.write(SyncDaemon::del_message(state), &op).await
    }

    /// One acknowledged write on the control socket, counted in `writes`.
    async fn write(&self, msg: IpvsMessage, op: &str) -> Result<(), Error> {
        let result = self.call(msg, NLM_F_REQUEST | NLM_F_ACK, op).await;
        // A connection error means the request never left (one after it
        // left is reported as Unacknowledged).
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

    async fn apply_batch(&self, ops: &[Op], mut batch: Vec<IpvsPacket>) -> Vec<Result<(), Error>> {
        tracing::debug!(requests = ops.len(), "sending IPVS write batch");
        let conn = match self.conn().await {
            Ok(c) => c,
            Err(e) => return not_sent(ops, &e),
        };
        for packet in &mut batch {
            retarget(packet, conn.family_id);
        }
        let (replies, ending) = match self.exchange(&*conn.control, batch).await {
            Ok(r) => r,
            Err(e) => {
                if e.is_transport() {
                    self.drop_conn(&conn, &e);
                }
                return not_sent(ops, &e);
            }
        };
        self.inner
            .writes
            .fetch_add(ops.len() as u64, Ordering::Relaxed);
        let mut acks = Vec::with_capacity(ops.len());
        for reply in replies {
            match reply.payload {
                NetlinkPayload::Error(e) => acks.push((reply.header.sequence_number, e.raw_code())),
                other => tracing::warn!(reply = ?other, "unexpected reply to an IPVS write"),
            }
        }
        let complete = !matches!(ending, Ending::TimedOut);
        let results: Vec<Result<(), Error>> = match match_acks(ops.len(), &acks, complete) {
            // Every ack arrived: the outcome is known even if the socket
            // failed afterwards.
            Ok(codes) => ops
                .iter()
                .zip(codes)
                .map(|(op, code)| match code {
                    0 => Ok(()),
                    code => Err(Error::kernel(op.to_string(), code)),
                })
                .collect(),
            Err(reason) => {
                let reason = match &ending {
                    Ending::Broken(e) => format!("{reason}: {e}"),
                    _ => reason,
                };
                tracing::warn!(%reason, requests = ops.len(), "IPVS write batch not fully acknowledged");
                let after = self.inner.config.timeout;
                ops.iter()
                    .map(|op| {
                        Err(match ending {
                            Ending::TimedOut => Error::Timeout {
                                op: op.to_string(),
                                after,
                            },
                            _ => Error::Unacknowledged {
                                op: op.to_string(),
                                reason: reason.clone(),
                            },
                        })
                    })
                    .collect()
            }
        };
        // Missing acks (a timeout, a closed connection, an overrun) leave the
        // socket in doubt; so does a failure after the last ack.
        let failure = results
            .iter()
            .find_map(|r| r.as_ref().err().filter(|e| e.is_transport()));
        match (failure, &ending) {
            (Some(e), _) | (None, Ending::Broken(e)) => self.drop_conn(&conn, e),
            (None, _) => {}
        }
        results
    }

    /// One non-dump request on the control socket.
    async fn call(
        &self,
        msg: IpvsMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<IpvsMessage>, Error> {
        let conn = self.conn().await?;
        let packet = packet(conn.family_id, msg, flags);
        let result = match self.exchange(&*conn.control, vec![packet]).await {
            Ok((replies, ending)) => self.finish(op, replies, ending),
            Err(e) => Err(e),
        };
        self.check(&conn, result)
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
                let conn = self.conn().await?;
                let result = {
                    let (slot, _busy) = self.acquire_dumper(&conn).await;
                    let packet = packet(conn.family_id, msg.clone(), NLM_F_REQUEST | NLM_F_DUMP);
                    self.dump_on(&*slot.transport, packet, op, &decode).await
                };
                self.check(&conn, result)
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
                let reply = match reply {
                    Ok(r) => r,
                    Err(e) => {
                        // The socket failed: its error wins over the kernel's.
                        failed = Some(e);
                        break;
                    }
                };
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
    async fn acquire_dumper<'c>(&self, conn: &'c Conn) -> (&'c DumpSlot, MutexGuard<'c, ()>) {
        let slots = &conn.dumpers;
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

    /// Send and collect every reply, and how the stream ended. `Err` means
    /// nothing was sent.
    async fn exchange(
        &self,
        transport: &dyn Transport,
        packets: Vec<IpvsPacket>,
    ) -> Result<(Vec<IpvsPacket>, Ending), Error> {
        let mut stream = transport.send(packets)?;
        let mut replies = Vec::new();
        let collect = async {
            while let Some(reply) = stream.next().await {
                match reply {
                    Ok(r) => replies.push(r),
                    Err(e) => return Ending::Broken(e),
                }
            }
            Ending::Complete
        };
        let ending = tokio::time::timeout(self.inner.config.timeout, collect)
            .await
            .unwrap_or(Ending::TimedOut);
        Ok((replies, ending))
    }

    /// Turn the replies to one request into payloads or the first error.
    fn finish(
        &self,
        op: &str,
        replies: Vec<IpvsPacket>,
        ending: Ending,
    ) -> Result<Vec<IpvsMessage>, Error> {
        let mut out = Vec::new();
        for reply in replies {
            if let Some(m) = reply_payload(op, reply)? {
                out.push(m);
            }
        }
        match ending {
            Ending::Complete => Ok(out),
            Ending::TimedOut => Err(Error::Timeout {
                op: op.to_string(),
                after: self.inner.config.timeout,
            }),
            Ending::Broken(e) => Err(Error::Unacknowledged {
                op: op.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

/// The results of a batch that was never sent: the ops definitely did not happen.
fn not_sent(ops: &[Op], e: &Error) -> Vec<Result<(), Error>> {
    let reason = e.to_string();
    ops.iter()
        .map(|op| {
            Err(Error::Connection(io::Error::other(format!(
                "{op}: {reason}"
            ))))
        })
        .collect()
}

fn packet(family_id: u16, msg: IpvsMessage, flags: u16) -> IpvsPacket {
    let mut genl = GenlMessage::from_payload(msg);
    genl.set_resolved_family_id(family_id);
    transport::packet(genl, flags)
}

/// Addresses `packet` to `family_id` (encoded before a reopen changed it).
fn retarget(packet: &mut IpvsPacket, family_id: u16) {
    if let NetlinkPayload::InnerMessage(genl) = &mut packet.payload
        && genl.family_id() != family_id
    {
        genl.set_resolved_family_id(family_id);
        packet.finalize();
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
