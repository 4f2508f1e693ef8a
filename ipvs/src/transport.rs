//! Netlink sockets: opening and tuning them, and the small `Transport`
//! seam that lets the client logic run against a fake kernel in tests.

use std::fmt::Debug;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_generic::GenlMessage;
use netlink_proto::ConnectionHandle;
use netlink_proto::sys::protocols::NETLINK_GENERIC;
use netlink_proto::sys::{AsyncSocket, SocketAddr};
use netlink_sys::Socket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::constants::IPVS_GENL_NAME;
use crate::ctrl::CtrlMessage;
use crate::dump_socket::DumpTransport;
use crate::error::Error;
use crate::message::IpvsMessage;

pub(crate) type IpvsPacket = NetlinkMessage<GenlMessage<IpvsMessage>>;

/// The replies to one send. An `Err` item means the socket failed after the
/// request left (a receive error, the connection closed): the answers that
/// did not arrive never will, and the stream ends there.
pub(crate) type Replies = BoxStream<'static, Result<IpvsPacket, Error>>;

/// Sends a batch of messages as one datagram and yields every reply to any
/// of them; the stream ends once each message is fully answered (ack, error,
/// or end of dump). Like `netlink_proto::ConnectionHandle::request_batch`,
/// plus the transport failures that stream hides. `Err` from `send` itself
/// means nothing was sent.
pub(crate) trait Transport: Send + Sync + 'static {
    fn send(&self, msgs: Vec<IpvsPacket>) -> Result<Replies, Error>;
}

/// The sockets of one connection to the kernel's IPVS family.
pub(crate) struct Sockets {
    pub family_id: u16,
    /// Writes and single-message queries (never dumps, so never EBUSY).
    pub control: Box<dyn Transport>,
    pub dumpers: Vec<Box<dyn Transport>>,
}

/// Opens [`Sockets`]: at connect, and again after a transport failure.
pub(crate) trait Connector: Send + Sync + 'static {
    fn open(&self) -> BoxFuture<'static, Result<Sockets, Error>>;
}

/// Opens the kernel's sockets, tuned as `Client` needs them.
pub(crate) struct KernelConnector {
    pub timeout: Duration,
    pub recv_buffer: usize,
    pub dump_sockets: usize,
}

impl Connector for KernelConnector {
    fn open(&self) -> BoxFuture<'static, Result<Sockets, Error>> {
        let (timeout, recv_buffer, dump_sockets) =
            (self.timeout, self.recv_buffer, self.dump_sockets);
        async move {
            // Resolved on every open: a reloaded ip_vs module gets a new id.
            let family_id = resolve_family(IPVS_GENL_NAME, timeout).await?;
            let control = ProtoTransport::open(SocketOptions {
                forward_ack: true,
                forward_done: true,
                recv_buffer,
            })?;
            let mut dumpers: Vec<Box<dyn Transport>> = Vec::new();
            for _ in 0..dump_sockets.max(1) {
                // Read only as fast as entries are decoded (see dump_socket).
                dumpers.push(Box::new(DumpTransport::open()?));
            }
            Ok(Sockets {
                family_id,
                control: Box::new(control),
                dumpers,
            })
        }
        .boxed()
    }
}

/// What to tune on a freshly opened socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketOptions {
    /// Deliver positive acks to the request stream (needed to count them).
    pub forward_ack: bool,
    /// Deliver NLMSG_DONE to the request stream (to see a dump's error code).
    pub forward_done: bool,
    /// Receive buffer in bytes; 0 keeps the default.
    pub recv_buffer: usize,
}

pub(crate) struct ProtoTransport {
    handle: ConnectionHandle<GenlMessage<IpvsMessage>>,
    /// netlink-proto's connection task. It ends only when its socket fails
    /// (the handle above keeps it alive otherwise), and then ends every
    /// pending reply stream early without saying why.
    task: Arc<JoinHandle<()>>,
    // Dropping this stops the task that drains unsolicited messages, which
    // lets the connection task finish once the handle is gone too.
    _stop_drain: oneshot::Sender<()>,
}

impl ProtoTransport {
    /// Must run inside a tokio runtime: spawns the connection task.
    pub fn open(opts: SocketOptions) -> Result<ProtoTransport, Error> {
        let (mut conn, handle, unsolicited) =
            netlink_proto::new_connection::<GenlMessage<IpvsMessage>>(NETLINK_GENERIC)
                .map_err(Error::Connection)?;
        conn.set_forward_ack(opts.forward_ack);
        conn.set_forward_done(opts.forward_done);
        let socket = conn.socket_mut().socket_mut();
        if opts.recv_buffer > 0 {
            set_recv_buffer(socket, opts.recv_buffer);
        }
        // Error acks then carry only the request header, not the whole
        // request: keeps a burst of failures small in the receive buffer.
        if let Err(e) = socket.set_cap_ack(true) {
            tracing::debug!(error = %e, "NETLINK_CAP_ACK not supported");
        }
        let task = Arc::new(tokio::spawn(conn));
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(drain_unsolicited(unsolicited, stopped));
        Ok(ProtoTransport {
            handle,
            task,
            _stop_drain: stop,
        })
    }

    /// Stops the connection task, as a failed socket does.
    #[cfg(test)]
    pub fn close(&self) {
        self.task.abort();
    }
}

fn connection_closed() -> Error {
    Error::Connection(io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the netlink connection closed",
    ))
}

impl Transport for ProtoTransport {
    fn send(&self, msgs: Vec<IpvsPacket>) -> Result<Replies, Error> {
        if self.task.is_finished() {
            return Err(connection_closed());
        }
        let replies = self
            .handle
            .request_batch(msgs, SocketAddr::new(0, 0))
            .map_err(|e| Error::Connection(io::Error::other(e.to_string())))?;
        // A stream that ends because the task ended was cut short: say so,
        // rather than let missing answers look like an empty reply. (A task
        // that fails just after a complete answer costs a needless reopen.)
        let task = self.task.clone();
        let closed = futures::stream::once(async move { task.is_finished() })
            .filter_map(|finished| async move { finished.then(|| Err(connection_closed())) });
        Ok(replies.map(Ok).chain(closed).boxed())
    }
}

/// Big enough that a whole window of acks (each ack skb costs ~1 KiB of
/// truesize) can queue while the kernel processes one datagram: a full
/// buffer makes the kernel drop acks. SO_RCVBUFFORCE needs CAP_NET_ADMIN
/// (which IPVS writes need anyway) and bypasses net.core.rmem_max;
/// SO_RCVBUF is the capped fallback.
fn set_recv_buffer(socket: &Socket, bytes: usize) {
    match nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::RcvBufForce, &bytes) {
        Ok(()) => {}
        Err(force_err) => {
            let size = i32::try_from(bytes).unwrap_or(i32::MAX);
            match socket.set_rx_buf_sz(size) {
                Ok(()) => tracing::debug!(
                    error = %force_err,
                    "SO_RCVBUFFORCE refused; receive buffer capped by net.core.rmem_max"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot enlarge netlink receive buffer"),
            }
        }
    }
}

async fn drain_unsolicited<T: Debug>(
    mut rx: UnboundedReceiver<(NetlinkMessage<T>, SocketAddr)>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            msg = rx.next() => match msg {
                None => return,
                Some((msg, _)) => match msg.payload {
                    NetlinkPayload::Overrun(_) => tracing::warn!(
                        "netlink receive buffer overrun: kernel replies were lost; \
                         affected requests will time out"
                    ),
                    other => tracing::debug!(message = ?other, "ignoring unsolicited netlink message"),
                },
            },
        }
    }
}

/// Resolve the IPVS family id over a short-lived nlctrl connection.
/// The id of generic netlink family `name`; `FamilyNotFound` when the
/// kernel has none (its module is not loaded and could not be).
pub(crate) async fn resolve_family(name: &str, timeout: Duration) -> Result<u16, Error> {
    let op = format!("resolve generic netlink family {name}");
    let (conn, handle, _unsolicited) =
        netlink_proto::new_connection::<GenlMessage<CtrlMessage>>(NETLINK_GENERIC)
            .map_err(Error::Connection)?;
    tokio::spawn(conn);
    let req = packet(
        GenlMessage::from_payload(CtrlMessage::get_family(name)),
        NLM_F_REQUEST | NLM_F_ACK,
    );
    let mut replies = handle
        .request(req, SocketAddr::new(0, 0))
        .map_err(|e| Error::Connection(io::Error::other(e.to_string())))?;
    let read = async {
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(genl) => {
                    if let Some(id) = genl.payload.family_id() {
                        return Ok(id);
                    }
                }
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) if code.get().abs() == nix::errno::Errno::ENOENT as i32 => {
                        return Err(Error::FamilyNotFound);
                    }
                    Some(code) => return Err(Error::kernel(&op, code.get())),
                    None => {}
                },
                _ => {}
            }
        }
        Err(Error::Decode(format!("{op}: reply carried no family id")))
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Error::Timeout {
            op: op.clone(),
            after: timeout,
        })?
}

/// Wrap a payload in a netlink header with the given flags. The sequence
/// number is assigned by netlink-proto when the message is sent.
pub(crate) fn packet<T>(payload: T, flags: u16) -> NetlinkMessage<T>
where
    T: NetlinkSerializable,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_info() -> IpvsPacket {
        packet(
            GenlMessage::from_payload(IpvsMessage::new(crate::message::IpvsCmd::GetInfo, vec![])),
            NLM_F_REQUEST,
        )
    }

    /// netlink-proto ends the reply streams of a failed connection as if
    /// they were complete: the transport must say the answers are missing,
    /// and refuse later sends. Needs only a generic netlink socket, which
    /// any process may open.
    #[tokio::test]
    async fn a_closed_connection_task_is_a_transport_error() {
        let transport = ProtoTransport::open(SocketOptions {
            forward_ack: true,
            forward_done: true,
            recv_buffer: 0,
        })
        .unwrap_or_else(|e| panic!("open a generic netlink socket: {e}"));
        let pending = transport
            .send(vec![get_info()])
            .unwrap_or_else(|e| panic!("send: {e}"));
        // The connection task has not run yet: the request is still queued.
        transport.close();
        let replies: Vec<_> = tokio::time::timeout(Duration::from_secs(5), pending.collect())
            .await
            .unwrap_or_else(|_| panic!("the reply stream did not end"));
        match replies.as_slice() {
            [Err(e)] => assert!(e.is_transport(), "{e}"),
            other => panic!("expected one transport error, got {other:?}"),
        }
        match transport.send(vec![get_info()]) {
            Err(e) => assert!(e.is_transport(), "{e}"),
            Ok(_) => panic!("a send on a closed connection was accepted"),
        }
    }
}
