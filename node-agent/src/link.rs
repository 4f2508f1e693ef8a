//! Interfaces and addresses over rtnetlink: the tunnel modules' fallback
//! devices (tunl0, gre0, ip6tnl0, ip6gre0) and the /32 (or /128) VIP
//! addresses tunlb adds to them or to another interface.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, CacheInfo};
use netlink_packet_route::link::GreIOFlags;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkMessage};
use netlink_sys::AsyncSocket as _;
use rtnetlink::{Handle, LinkGre, LinkGre6, LinkMessageBuilder, LinkUnspec};
use tokio::task::JoinHandle;
use tunlb_api::plan::TunnelDevice;

/// Suffix of the address label tunlb gives its VIPs, so `ip addr` shows who added them.
const LABEL_SUFFIX: &str = ":tlb";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("interface {0} does not exist on this node")]
    MissingInterface(String),
    #[error(
        "{device} is missing and could not be created ({reason}): kernel module {module} is not available (modprobe {module})"
    )]
    ModuleMissing {
        device: String,
        module: &'static str,
        reason: String,
    },
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("rtnetlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("{op}: no answer from the kernel within {after:?}; outcome unknown")]
    Timeout { op: String, after: Duration },
    #[error("{op}: the rtnetlink connection closed; outcome unknown")]
    Closed { op: String },
}

impl LinkError {
    fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        LinkError::Netlink {
            op: op.into(),
            source,
        }
    }

    /// The connection failed rather than the kernel answering (see
    /// [`is_transport`]); the next call uses a new one.
    pub fn is_transport(&self) -> bool {
        match self {
            LinkError::Socket(_) | LinkError::Timeout { .. } | LinkError::Closed { .. } => true,
            LinkError::Netlink { source, .. } => is_transport(source),
            LinkError::MissingInterface(_) | LinkError::ModuleMissing { .. } => false,
        }
    }
}

/// The kernel errno of a netlink error reply, if that is what it was.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Whether `e` is the connection failing (rtnetlink's `RequestFailed`: the
/// request could not reach the connection task) rather than an answer: an
/// errno from the kernel (EEXIST, ENODEV, ...) or a reply that does not
/// parse, which a new connection would get the same.
pub fn is_transport(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::RequestFailed)
}

/// One address as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub interface: String,
    pub index: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
    pub label: Option<String>,
    message: AddressMessage,
}

impl Address {
    /// An address as a diff sees it, without a kernel message behind it.
    #[cfg(test)]
    pub fn for_test(index: u32, interface: &str, address: IpAddr) -> Address {
        let prefix_len = if address.is_ipv4() { 32 } else { 128 };
        let mut message = AddressMessage::default();
        message.header.index = index;
        message.header.prefix_len = prefix_len;
        Address {
            interface: interface.into(),
            index,
            address,
            prefix_len,
            label: None,
            message,
        }
    }

    pub fn is_tunlb_labelled(&self) -> bool {
        self.label
            .as_deref()
            .is_some_and(|l| l.ends_with(LABEL_SUFFIX))
    }
}

/// A handle around one rtnetlink connection, replaced by a new one after
/// a transport failure (a closed connection, a timeout) so the next call
/// works again. Clones share the connection.
#[derive(Clone)]
pub struct Links {
    conn: Arc<Mutex<Option<Conn>>>,
    writes: Arc<AtomicU64>,
    reopens: Arc<AtomicU64>,
    /// How long each call may take, a dump included.
    timeout: Duration,
}

#[derive(Clone)]
struct Conn {
    handle: Handle,
    /// The connection task. It ends only when its socket fails (handles
    /// keep it alive otherwise), and pending requests then end without an
    /// answer, which rtnetlink reports as success or an empty list.
    task: Arc<JoinHandle<()>>,
}

impl Conn {
    fn open() -> Result<Conn, LinkError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok(Conn {
            handle,
            task: Arc::new(tokio::spawn(conn)),
        })
    }
}

impl Links {
    /// Opens an rtnetlink connection in the current network namespace, with
    /// the agent's kernel timeout (see [`crate::timeouts`]).
    pub fn connect() -> Result<Links, LinkError> {
        Links::connect_with(crate::timeouts::kernel())
    }

    /// Opens an rtnetlink connection whose calls each get `timeout`.
    pub fn connect_with(timeout: Duration) -> Result<Links, LinkError> {
        Ok(Links {
            conn: Arc::new(Mutex::new(Some(Conn::open()?))),
            writes: Default::default(),
            reopens: Default::default(),
            timeout,
        })
    }

    /// Number of write requests sent so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// How many times the connection was opened again after a transport failure.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }

    fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    fn slot(&self) -> MutexGuard<'_, Option<Conn>> {
        // Nothing is left half-done under this lock: a poisoned one is usable.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection to use: the current one unless its task ended.
    fn current(&self) -> Result<Conn, LinkError> {
        let mut slot = self.slot();
        if let Some(c) = slot.as_ref().filter(|c| !c.task.is_finished()) {
            return Ok(c.clone());
        }
        let conn = Conn::open()?;
        let reopens = self.reopens.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(reopens, "rtnetlink connection reopened");
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets `conn` after a transport failure on it, unless another call
    /// already replaced it.
    fn drop_conn(&self, conn: &Conn, error: &LinkError) {
        let mut slot = self.slot();
        if slot
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.task, &conn.task))
        {
            *slot = None;
            tracing::warn!(%error, "rtnetlink connection failed; reopening on the next call");
        }
    }

    /// Runs one call (a request or a whole dump) on the current connection
    /// within the timeout. The outer error is the connection failing, after
    /// which the next call gets a new one; the inner result is the kernel's
    /// answer, errno refusals included, for the caller to judge.
    async fn call<T, F>(
        &self,
        op: &str,
        f: impl FnOnce(Handle) -> F,
    ) -> Result<Result<T, rtnetlink::Error>, LinkError>
    where
        F: Future<Output = Result<T, rtnetlink::Error>>,
    {
        let conn = self.current()?;
        let answer = tokio::time::timeout(self.timeout, f(conn.handle.clone())).await;
        let failure = match answer {
            Err(_) => LinkError::Timeout {
                op: op.to_string(),
                after: self.timeout,
            },
            Ok(Err(e)) if is_transport(&e) => LinkError::netlink(op, e),
            // An answer that arrives as the task ends may be cut short.
            Ok(_) if conn.task.is_finished() => LinkError::Closed { op: op.to_string() },
            Ok(answer) => return Ok(answer),
        };
        self.drop_conn(&conn, &failure);
        Err(failure)
    }

    /// Stops the connection task, as a failed socket does.
    #[cfg(test)]
    fn break_connection(&self) {
        if let Some(c) = self.slot().as_ref() {
            c.task.abort();
        }
    }

    /// Interface names by index.
    pub async fn interfaces(&self) -> Result<BTreeMap<u32, LinkInfo>, LinkError> {
        const OP: &str = "list interfaces";
        let msgs = self
            .call(OP, |h| async move {
                h.link().get().execute().try_collect::<Vec<_>>().await
            })
            .await?
            .map_err(|e| LinkError::netlink(OP, e))?;
        Ok(msgs
            .iter()
            .map(|msg| (msg.header.index, LinkInfo::from_message(msg)))
            .collect())
    }

    /// The interfaces and every address on them, read together.
    pub async fn interfaces_and_addresses(
        &self,
    ) -> Result<(BTreeMap<u32, LinkInfo>, Vec<Address>), LinkError> {
        let ifaces = self.interfaces().await?;
        let addrs = self.addresses(&ifaces).await?;
        Ok((ifaces, addrs))
    }

    /// Every address on every interface.
    pub async fn addresses(
        &self,
        interfaces: &BTreeMap<u32, LinkInfo>,
    ) -> Result<Vec<Address>, LinkError> {
        const OP: &str = "list addresses";
        let msgs = self
            .call(OP, |h| async move {
                h.address().get().execute().try_collect::<Vec<_>>().await
            })
            .await?
            .map_err(|e| LinkError::netlink(OP, e))?;
        let mut out = Vec::new();
        for msg in msgs {
            let mut address = None;
            let mut local = None;
            let mut label = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Address(a) => address = Some(*a),
                    AddressAttribute::Local(a) => local = Some(*a),
                    AddressAttribute::Label(l) => label = Some(l.clone()),
                    _ => {}
                }
            }
            // For IPv4 IFA_LOCAL is the interface's own address; IFA_ADDRESS can be the peer.
            let Some(addr) = local.or(address) else {
                continue;
            };
            out.push(Address {
                interface: interfaces
                    .get(&msg.header.index)
                    .map(|l| l.name.clone())
                    .unwrap_or_default(),
                index: msg.header.index,
                address: addr,
                prefix_len: msg.header.prefix_len,
                label,
                message: msg,
            });
        }
        Ok(out)
    }

    /// Makes a tunnel module's fallback device appear. Creating a link of its
    /// kind and name makes the kernel load the module, whose per-namespace
    /// fallback device has that name (so EEXIST is fine).
    pub async fn add_tunnel_device(&self, device: TunnelDevice) -> Result<(), LinkError> {
        let name = device.name();
        let op = format!("create {name}");
        let kind = match device {
            TunnelDevice::Tunl0 => InfoKind::IpIp,
            TunnelDevice::Gre0 => InfoKind::GreTun,
            TunnelDevice::Ip6tnl0 => InfoKind::Ip6Tnl,
            TunnelDevice::Ip6gre0 => InfoKind::GreTun6,
        };
        self.count_write();
        let res = self
            .call(&op, |h| async move {
                let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(kind)
                    .name(name)
                    .build();
                h.link().add(msg).execute().await
            })
            .await?;
        match res {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(refused(op, name, device.module(), e)),
        }
    }

    /// Brings an interface up.
    pub async fn set_up(&self, index: u32, name: &str) -> Result<(), LinkError> {
        self.set_state(index, name, true).await
    }

    /// Takes an interface down.
    pub async fn set_down(&self, index: u32, name: &str) -> Result<(), LinkError> {
        self.set_state(index, name, false).await
    }

    async fn set_state(&self, index: u32, name: &str, up: bool) -> Result<(), LinkError> {
        let op = format!("set {name} {}", if up { "up" } else { "down" });
        self.count_write();
        self.call(&op, |h| async move {
            let msg = LinkUnspec::new_with_index(index);
            let msg = if up { msg.up() } else { msg.down() };
            h.link().set(msg.build()).execute().await
        })
        .await?
        .map_err(|e| LinkError::netlink(op, e))
    }

    /// Creates a GRE device that receives checksummed GRE addressed to
    /// `local` (GRE over IPv4 or IPv6, by the address's family).
    pub async fn add_gre_csum(&self, name: &str, local: IpAddr) -> Result<(), LinkError> {
        let op = format!("create {name} (GRE with checksums to {local})");
        let owned = name.to_string();
        self.count_write();
        let res = self
            .call(&op, |h| async move {
                let msg = match local {
                    IpAddr::V4(a) => LinkGre::new(&owned)
                        .local(a)
                        .iflags(GreIOFlags::Checksum)
                        .build(),
                    IpAddr::V6(a) => LinkGre6::new(&owned)
                        .local(a)
                        .iflags(GreIOFlags::Checksum)
                        .build(),
                };
                h.link().add(msg).execute().await
            })
            .await?;
        let module = if local.is_ipv4() { "ip_gre" } else { "ip6_gre" };
        res.map_err(|e| refused(op, name, module, e))
    }

    /// Deletes an interface.
    pub async fn delete_link(&self, index: u32, name: &str) -> Result<(), LinkError> {
        let op = format!("delete {name}");
        self.count_write();
        let res = self
            .call(&op, |h| async move { h.link().del(index).execute().await })
            .await?;
        match res {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(LinkError::netlink(op, e)),
        }
    }

    pub async fn find(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        let op = format!("look up {name}");
        let owned = name.to_string();
        let found = self
            .call(&op, |h| async move {
                h.link().get().match_name(owned).execute().try_next().await
            })
            .await?;
        match found {
            Ok(Some(msg)) => Ok(Some(LinkInfo::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(LinkError::netlink(op, e)),
        }
    }

    /// Adds a host address (/32 or /128) labelled as tunlb's when the label
    /// fits. An IPv6 VIP skips duplicate address detection (it is shared by
    /// design: directors and backends all hold it) and is deprecated
    /// (preferred lifetime 0): it still receives, but source address
    /// selection, which prefers the longest matching prefix, would otherwise
    /// pick the /128 VIP as the source of the node's own packets - among
    /// them the director's tunnel packets, which a backend holding the same
    /// VIP drops as coming from itself.
    pub async fn add_host_address(
        &self,
        link: &LinkInfo,
        address: IpAddr,
    ) -> Result<(), LinkError> {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        let op = format!("add {address}/{prefix} to {}", link.name);
        let label = format!("{}{LABEL_SUFFIX}", link.name);
        // Labels exist for IPv4 only and must fit IFNAMSIZ.
        let label = (address.is_ipv4() && label.len() < 16).then_some(label);
        let index = link.index;
        self.count_write();
        let added = self
            .call(&op, |h| async move {
                let mut req = h.address().add(index, address, prefix);
                let attrs = &mut req.message_mut().attributes;
                if let Some(label) = label {
                    attrs.push(AddressAttribute::Label(label));
                }
                if address.is_ipv6() {
                    attrs.push(AddressAttribute::Flags(AddressFlags::Nodad));
                    let mut lifetimes = CacheInfo::default();
                    lifetimes.ifa_preferred = 0;
                    lifetimes.ifa_valid = u32::MAX;
                    attrs.push(AddressAttribute::CacheInfo(lifetimes));
                }
                req.execute().await
            })
            .await?;
        match added {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(LinkError::netlink(op, e)),
        }
    }

    pub async fn delete_address(&self, addr: &Address) -> Result<(), LinkError> {
        let op = format!(
            "delete {}/{} from {}",
            addr.address, addr.prefix_len, addr.interface
        );
        let message = addr.message.clone();
        self.count_write();
        let deleted = self
            .call(
                &op,
                |h| async move { h.address().del(message).execute().await },
            )
            .await?;
        match deleted {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(LinkError::netlink(op, e)),
        }
    }
}

/// A device the kernel refused to create: named as a missing module when
/// that module is neither loaded nor built in, else the kernel's answer.
fn refused(op: String, device: &str, module: &'static str, e: rtnetlink::Error) -> LinkError {
    if crate::modules::Roots::from_env()
        .presence(module)
        .is_available()
    {
        LinkError::netlink(op, e)
    } else {
        LinkError::ModuleMissing {
            device: device.to_string(),
            module,
            reason: e.to_string(),
        }
    }
}

/// What we need to know about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub up: bool,
    /// The link has a carrier (IFF_LOWER_UP): a cable, or a veth whose
    /// peer is up.
    pub carrier: bool,
    pub mtu: Option<u32>,
}

/// The kernel's notifications about one interface (RTMGRP_LINK), so a
/// change of its state is seen when it happens rather than by polling, as
/// keepalived follows them.
pub struct LinkWatch {
    index: u32,
    messages: futures::channel::mpsc::UnboundedReceiver<(
        netlink_packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>,
        netlink_sys::SocketAddr,
    )>,
    connection: JoinHandle<()>,
}

impl LinkWatch {
    /// Subscribes to the link notifications of the interface `index`.
    pub fn open(index: u32) -> Result<LinkWatch, LinkError> {
        let (mut connection, _, messages) = rtnetlink::new_connection()?;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&netlink_sys::SocketAddr::new(
                0,
                rtnetlink::constants::RTMGRP_LINK,
            ))?;
        Ok(LinkWatch {
            index,
            messages,
            connection: tokio::spawn(connection),
        })
    }

    /// The interface's next state: whether it is up with a carrier (false
    /// once it is deleted). None when the subscription ended.
    pub async fn next(&mut self) -> Option<bool> {
        use futures::StreamExt;
        use netlink_packet_core::NetlinkPayload;
        use netlink_packet_route::RouteNetlinkMessage;
        while let Some((msg, _)) = self.messages.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
                    if l.header.index == self.index =>
                {
                    let info = LinkInfo::from_message(&l);
                    return Some(info.up && info.carrier);
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l))
                    if l.header.index == self.index =>
                {
                    return Some(false);
                }
                _ => {}
            }
        }
        None
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl LinkInfo {
    fn from_message(msg: &LinkMessage) -> LinkInfo {
        let mut name = String::new();
        let mut mtu = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Mtu(m) => mtu = Some(*m),
                _ => {}
            }
        }
        LinkInfo {
            index: msg.header.index,
            name,
            up: msg.header.flags.contains(LinkFlags::Up),
            carrier: msg.header.flags.contains(LinkFlags::LowerUp),
            mtu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::ErrorMessage;

    #[test]
    fn only_a_failed_connection_is_a_transport_error() {
        assert!(is_transport(&rtnetlink::Error::RequestFailed));
        let mut refusal = ErrorMessage::default();
        refusal.code = std::num::NonZeroI32::new(-libc::EEXIST);
        let refusal = rtnetlink::Error::NetlinkError(refusal);
        assert_eq!(errno(&refusal), Some(libc::EEXIST));
        assert!(!is_transport(&refusal));
        assert!(!is_transport(&rtnetlink::Error::InvalidNla("x".into())));
        let timeout = LinkError::Timeout {
            op: "list addresses".into(),
            after: Duration::from_secs(3),
        };
        assert!(timeout.is_transport());
        assert_eq!(
            timeout.to_string(),
            "list addresses: no answer from the kernel within 3s; outcome unknown"
        );
        assert!(!LinkError::netlink("add", refusal).is_transport());
        assert!(!LinkError::MissingInterface("eth9".into()).is_transport());
    }

    // The tests below use a real rtnetlink socket in the test's own network
    // namespace and only read (lo always exists), so they need no privileges.

    fn links(timeout: Duration) -> Links {
        Links::connect_with(timeout).unwrap_or_else(|e| panic!("rtnetlink: {e}"))
    }

    async fn has_lo(links: &Links) -> Result<bool, LinkError> {
        Ok(links.interfaces().await?.values().any(|l| l.name == "lo"))
    }

    #[tokio::test]
    async fn a_closed_connection_is_reopened_for_the_next_call() {
        let links = links(Duration::from_secs(10));
        assert!(has_lo(&links).await.unwrap_or_else(|e| panic!("{e}")));
        links.break_connection();
        // The task ends on its next poll; the call after that must not fail.
        tokio::task::yield_now().await;
        let clone = links.clone();
        assert!(has_lo(&clone).await.unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(links.reopens(), 1);
    }

    #[tokio::test]
    async fn a_timeout_names_the_call_and_replaces_the_connection() {
        let links = links(Duration::from_millis(200));
        let stuck = links
            .call("list addresses", |_| {
                std::future::pending::<Result<(), rtnetlink::Error>>()
            })
            .await;
        let Err(e) = stuck else {
            panic!("a call that never answers returned");
        };
        assert_eq!(
            e.to_string(),
            "list addresses: no answer from the kernel within 200ms; outcome unknown"
        );
        assert!(has_lo(&links).await.unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(links.reopens(), 1);
    }

    /// rtnetlink ends a dump cut short by a closing connection as if it were
    /// complete: such an answer must not be taken for the kernel's.
    #[tokio::test]
    async fn an_answer_cut_short_by_a_closing_connection_is_not_trusted() {
        let links = links(Duration::from_secs(10));
        let breaker = links.clone();
        let cut = links
            .call("list addresses", |_| async move {
                breaker.break_connection();
                tokio::task::yield_now().await;
                Ok::<Vec<u32>, rtnetlink::Error>(Vec::new())
            })
            .await;
        match cut {
            Err(e @ LinkError::Closed { .. }) => assert_eq!(
                e.to_string(),
                "list addresses: the rtnetlink connection closed; outcome unknown"
            ),
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(has_lo(&links).await.unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(links.reopens(), 1);
    }

    #[tokio::test]
    async fn kernel_refusals_keep_the_connection() {
        let links = links(Duration::from_secs(10));
        assert_eq!(links.find("tlb-none0").await.ok(), Some(None));
        // No such interface index: refused (ENODEV, or EPERM unprivileged).
        let e = links
            .set_up(u32::MAX - 7, "tlb-none0")
            .await
            .err()
            .unwrap_or_else(|| panic!("set up a missing interface"));
        assert!(!e.is_transport(), "{e}");
        assert!(has_lo(&links).await.unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(links.reopens(), 0);
    }
}
