//! Netlink sockets: opening and tuning them, and the small `Transport`
//! seam that lets the client logic run against a fake kernel in tests.

use std::fmt::Debug;
use std::io;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use futures::stream::BoxStream;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_generic::GenlMessage;
use netlink_proto::ConnectionHandle;
use netlink_proto::sys::protocols::NETLINK_GENERIC;
use netlink_proto::sys::{AsyncSocket, SocketAddr};
use netlink_sys::Socket;
use tokio::sync::oneshot;

use crate::constants::IPVS_GENL_NAME;
use crate::ctrl::CtrlMessage;
use crate::error::Error;
use crate::message::IpvsMessage;

pub(crate) type IpvsPacket = NetlinkMessage<GenlMessage<IpvsMessage>>;

/// Sends a batch of messages as one datagram and yields every reply to any
/// of them; the stream ends once each message is fully answered (ack, error,
/// or end of dump). Exactly `netlink_proto::ConnectionHandle::request_batch`.
pub(crate) trait Transport: Send + Sync + 'static {
    fn send(&self, msgs: Vec<IpvsPacket>) -> Result<BoxStream<'static, IpvsPacket>, Error>;
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
        tokio::spawn(conn);
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(drain_unsolicited(unsolicited, stopped));
        Ok(ProtoTransport {
            handle,
            _stop_drain: stop,
        })
    }
}

impl Transport for ProtoTransport {
    fn send(&self, msgs: Vec<IpvsPacket>) -> Result<BoxStream<'static, IpvsPacket>, Error> {
        self.handle
            .request_batch(msgs, SocketAddr::new(0, 0))
            .map(|s| s.boxed())
            .map_err(|e| Error::Connection(io::Error::other(e.to_string())))
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
pub(crate) async fn resolve_family(timeout: Duration) -> Result<u16, Error> {
    const OP: &str = "resolve generic netlink family IPVS";
    let (conn, handle, _unsolicited) =
        netlink_proto::new_connection::<GenlMessage<CtrlMessage>>(NETLINK_GENERIC)
            .map_err(Error::Connection)?;
    tokio::spawn(conn);
    let req = packet(
        GenlMessage::from_payload(CtrlMessage::get_family(IPVS_GENL_NAME)),
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
                    Some(code) => return Err(Error::kernel(OP, code.get())),
                    None => {}
                },
                _ => {}
            }
        }
        Err(Error::Decode(format!("{OP}: reply carried no family id")))
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Error::Timeout {
            op: OP.to_string(),
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
