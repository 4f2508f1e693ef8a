//! Interfaces and addresses over rtnetlink: tunl0 (the IPIP fallback device)
//! and the /32 (or /128) VIP addresses tunlb adds to it or to another interface.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkIpIp, LinkUnspec};

/// The IPIP fallback device, created per network namespace by the ipip module.
pub const TUNL0: &str = "tunl0";
/// Suffix of the address label tunlb gives its VIPs, so `ip addr` shows who added them.
const LABEL_SUFFIX: &str = ":tlb";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("interface {0} does not exist on this node")]
    MissingInterface(String),
    #[error(
        "tunl0 is missing and could not be created ({0}): load the ipip kernel module (modprobe ipip)"
    )]
    IpipMissing(String),
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("rtnetlink socket: {0}")]
    Socket(#[from] std::io::Error),
}

impl LinkError {
    fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        LinkError::Netlink {
            op: op.into(),
            source,
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

/// A thin handle around one rtnetlink connection.
#[derive(Clone)]
pub struct Links {
    handle: Handle,
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Links {
    /// Opens an rtnetlink connection in the current network namespace.
    pub fn connect() -> Result<Links, LinkError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Links {
            handle,
            writes: Default::default(),
        })
    }

    /// Number of write requests sent so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_write(&self) {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Interface names by index.
    pub async fn interfaces(&self) -> Result<BTreeMap<u32, LinkInfo>, LinkError> {
        let mut out = BTreeMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(|e| LinkError::netlink("list interfaces", e))?
        {
            let info = LinkInfo::from_message(&msg);
            out.insert(msg.header.index, info);
        }
        Ok(out)
    }

    /// Every address on every interface.
    pub async fn addresses(
        &self,
        interfaces: &BTreeMap<u32, LinkInfo>,
    ) -> Result<Vec<Address>, LinkError> {
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(|e| LinkError::netlink("list addresses", e))?
        {
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

    /// Creates an ipip link. Creating one named tunl0 makes the kernel load
    /// ipip, whose per-namespace fallback device is tunl0 (so EEXIST is fine).
    pub async fn add_ipip(&self, name: &str) -> Result<(), LinkError> {
        self.count_write();
        let res = self
            .handle
            .link()
            .add(LinkIpIp::new(name).build())
            .execute()
            .await;
        match res {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(LinkError::IpipMissing(e.to_string())),
        }
    }

    /// Brings an interface up.
    pub async fn set_up(&self, index: u32, name: &str) -> Result<(), LinkError> {
        self.count_write();
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| LinkError::netlink(format!("set {name} up"), e))
    }

    pub async fn find(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        let mut req = self.handle.link().get().match_name(name).execute();
        match req.try_next().await {
            Ok(Some(msg)) => Ok(Some(LinkInfo::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(LinkError::netlink(format!("look up {name}"), e)),
        }
    }

    /// Adds a host address (/32 or /128) labelled as tunlb's when the label fits.
    pub async fn add_host_address(
        &self,
        link: &LinkInfo,
        address: IpAddr,
    ) -> Result<(), LinkError> {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        let mut req = self.handle.address().add(link.index, address, prefix);
        let label = format!("{}{LABEL_SUFFIX}", link.name);
        // Labels exist for IPv4 only and must fit IFNAMSIZ.
        if address.is_ipv4() && label.len() < 16 {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Label(label));
        }
        self.count_write();
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(LinkError::netlink(
                format!("add {address}/{prefix} to {}", link.name),
                e,
            )),
        }
    }

    pub async fn delete_address(&self, addr: &Address) -> Result<(), LinkError> {
        self.count_write();
        match self
            .handle
            .address()
            .del(addr.message.clone())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(LinkError::netlink(
                format!(
                    "delete {}/{} from {}",
                    addr.address, addr.prefix_len, addr.interface
                ),
                e,
            )),
        }
    }
}

/// What we need to know about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mtu: Option<u32>,
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
            mtu,
        }
    }
}
