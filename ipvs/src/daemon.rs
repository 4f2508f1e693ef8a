//! The kernel's connection-synchronisation daemons (`ipvsadm --start-daemon`).
//!
//! A master daemon multicasts the connections this node's IPVS schedules; a
//! backup daemon on another director adds what it receives to its own
//! connection table, so that director forwards those connections to the
//! same real servers once it takes over the VIP. A node runs at most one
//! daemon of each state, and may run both.

use std::fmt;
use std::net::IpAddr;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable, parse_string, parse_u8,
    parse_u16, parse_u32,
};

use crate::constants::*;
use crate::error::Error;
use crate::message::{CmdAttr, IpvsCmd, IpvsMessage};
use crate::nla::{put_string, put_u16, put_u32};

/// Which way a daemon syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyncState {
    Master,
    Backup,
}

impl SyncState {
    pub fn to_u32(self) -> u32 {
        match self {
            SyncState::Master => IP_VS_STATE_MASTER,
            SyncState::Backup => IP_VS_STATE_BACKUP,
        }
    }

    pub fn from_u32(v: u32) -> Option<SyncState> {
        match v {
            IP_VS_STATE_MASTER => Some(SyncState::Master),
            IP_VS_STATE_BACKUP => Some(SyncState::Backup),
            _ => None,
        }
    }
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncState::Master => "master",
            SyncState::Backup => "backup",
        })
    }
}

/// One sync daemon. The optional fields are sent only when set; the kernel
/// fills in its defaults (maxlen from the interface MTU, group 224.0.0.81,
/// port 8848, TTL 1) and reports them back in [`crate::Client::daemons`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyncDaemon {
    pub state: SyncState,
    /// The interface the sync messages leave and arrive on.
    pub interface: String,
    /// Sync ID: a backup accepts only messages carrying its own (0-255;
    /// the kernel keeps the low 8 bits).
    pub sync_id: u32,
    /// Most bytes of sync payload per datagram.
    pub max_len: Option<u16>,
    /// Multicast group (IPv4 or IPv6).
    pub group: Option<IpAddr>,
    /// Base UDP port (the kernel uses one per sync thread from here).
    pub port: Option<u16>,
    /// Multicast TTL.
    pub ttl: Option<u8>,
}

impl SyncDaemon {
    pub fn new(state: SyncState, interface: impl Into<String>, sync_id: u32) -> SyncDaemon {
        SyncDaemon {
            state,
            interface: interface.into(),
            sync_id,
            max_len: None,
            group: None,
            port: None,
            ttl: None,
        }
    }

    /// The attributes of a NEW_DAEMON request. The interface name is checked
    /// here: the kernel would refuse a name that does not fit with EINVAL.
    pub fn to_attrs(&self) -> Result<Vec<DaemonAttr>, Error> {
        if self.interface.is_empty()
            || self.interface.len() >= IP_VS_IFNAME_MAXLEN
            || self.interface.contains('\0')
        {
            return Err(Error::Invalid(format!(
                "sync daemon interface {:?}: 1 to {} bytes, no NUL",
                self.interface,
                IP_VS_IFNAME_MAXLEN - 1
            )));
        }
        if let Some(g) = self.group
            && !g.is_multicast()
        {
            return Err(Error::Invalid(format!(
                "sync daemon group {g}: not a multicast address"
            )));
        }
        let mut attrs = vec![
            DaemonAttr::State(self.state.to_u32()),
            DaemonAttr::Interface(self.interface.clone()),
            DaemonAttr::SyncId(self.sync_id),
        ];
        if let Some(v) = self.max_len {
            attrs.push(DaemonAttr::MaxLen(v));
        }
        match self.group {
            Some(IpAddr::V4(g)) => attrs.push(DaemonAttr::Group(g.octets())),
            Some(IpAddr::V6(g)) => attrs.push(DaemonAttr::Group6(g.octets())),
            None => {}
        }
        if let Some(v) = self.port {
            attrs.push(DaemonAttr::Port(v));
        }
        if let Some(v) = self.ttl {
            attrs.push(DaemonAttr::Ttl(v));
        }
        Ok(attrs)
    }

    pub(crate) fn new_message(&self) -> Result<IpvsMessage, Error> {
        Ok(IpvsMessage::new(
            IpvsCmd::NewDaemon,
            vec![CmdAttr::Daemon(self.to_attrs()?)],
        ))
    }

    /// A DEL_DAEMON request names only the state: one daemon of each runs.
    pub(crate) fn del_message(state: SyncState) -> IpvsMessage {
        IpvsMessage::new(
            IpvsCmd::DelDaemon,
            vec![CmdAttr::Daemon(vec![DaemonAttr::State(state.to_u32())])],
        )
    }

    /// A GET_DAEMON reply entry.
    pub fn from_attrs(attrs: &[DaemonAttr]) -> Result<SyncDaemon, Error> {
        let mut state = None;
        let mut interface = None;
        let mut sync_id = None;
        let mut d = SyncDaemon::new(SyncState::Master, "", 0);
        for a in attrs {
            match a {
                DaemonAttr::State(v) => state = SyncState::from_u32(*v),
                DaemonAttr::Interface(v) => interface = Some(v.clone()),
                DaemonAttr::SyncId(v) => sync_id = Some(*v),
                DaemonAttr::MaxLen(v) => d.max_len = Some(*v),
                DaemonAttr::Group(v) => d.group = Some(IpAddr::from(*v)),
                DaemonAttr::Group6(v) => d.group = Some(IpAddr::from(*v)),
                DaemonAttr::Port(v) => d.port = Some(*v),
                DaemonAttr::Ttl(v) => d.ttl = Some(*v),
                DaemonAttr::Other(_) => {}
            }
        }
        let missing = |what: &str| Error::Decode(format!("sync daemon without {what}"));
        d.state = state.ok_or_else(|| missing("a known state"))?;
        d.interface = interface.ok_or_else(|| missing("an interface"))?;
        d.sync_id = sync_id.ok_or_else(|| missing("a sync id"))?;
        Ok(d)
    }

    /// Whether `running` (as the kernel reports it, defaults filled in) is
    /// this daemon: every field this one sets agrees.
    pub fn matches(&self, running: &SyncDaemon) -> bool {
        fn set_and_equal<T: PartialEq>(want: &Option<T>, have: &Option<T>) -> bool {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        }
        self.state == running.state
            && self.interface == running.interface
            && (self.sync_id & 0xff) == (running.sync_id & 0xff)
            && set_and_equal(&self.max_len, &running.max_len)
            && set_and_equal(&self.group, &running.group)
            && set_and_equal(&self.port, &running.port)
            && set_and_equal(&self.ttl, &running.ttl)
    }
}

/// "master sync daemon on eth0, sync id 7".
impl fmt::Display for SyncDaemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sync daemon on {}, sync id {}",
            self.state, self.interface, self.sync_id
        )?;
        if let Some(v) = self.max_len {
            write!(f, ", maxlen {v}")?;
        }
        if let Some(v) = self.group {
            write!(f, ", group {v}")?;
        }
        if let Some(v) = self.port {
            write!(f, ", port {v}")?;
        }
        if let Some(v) = self.ttl {
            write!(f, ", ttl {v}")?;
        }
        Ok(())
    }
}

/// Attributes nested in `IPVS_CMD_ATTR_DAEMON`. Integers are native endian
/// (the port too: the kernel converts it itself); the groups are addresses
/// in network order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonAttr {
    State(u32),
    Interface(String),
    SyncId(u32),
    MaxLen(u16),
    Group([u8; 4]),
    Group6([u8; 16]),
    Port(u16),
    Ttl(u8),
    Other(DefaultNla),
}

impl From<DefaultNla> for DaemonAttr {
    fn from(nla: DefaultNla) -> Self {
        DaemonAttr::Other(nla)
    }
}

impl Nla for DaemonAttr {
    fn value_len(&self) -> usize {
        match self {
            DaemonAttr::State(_) | DaemonAttr::SyncId(_) | DaemonAttr::Group(_) => 4,
            DaemonAttr::Interface(s) => s.len() + 1,
            DaemonAttr::MaxLen(_) | DaemonAttr::Port(_) => 2,
            DaemonAttr::Group6(_) => 16,
            DaemonAttr::Ttl(_) => 1,
            DaemonAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DaemonAttr::State(_) => IPVS_DAEMON_ATTR_STATE,
            DaemonAttr::Interface(_) => IPVS_DAEMON_ATTR_MCAST_IFN,
            DaemonAttr::SyncId(_) => IPVS_DAEMON_ATTR_SYNC_ID,
            DaemonAttr::MaxLen(_) => IPVS_DAEMON_ATTR_SYNC_MAXLEN,
            DaemonAttr::Group(_) => IPVS_DAEMON_ATTR_MCAST_GROUP,
            DaemonAttr::Group6(_) => IPVS_DAEMON_ATTR_MCAST_GROUP6,
            DaemonAttr::Port(_) => IPVS_DAEMON_ATTR_MCAST_PORT,
            DaemonAttr::Ttl(_) => IPVS_DAEMON_ATTR_MCAST_TTL,
            DaemonAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            DaemonAttr::State(v) | DaemonAttr::SyncId(v) => put_u32(buffer, *v),
            DaemonAttr::Interface(s) => put_string(buffer, s),
            DaemonAttr::MaxLen(v) | DaemonAttr::Port(v) => put_u16(buffer, *v),
            DaemonAttr::Group(a) => buffer[..4].copy_from_slice(a),
            DaemonAttr::Group6(a) => buffer[..16].copy_from_slice(a),
            DaemonAttr::Ttl(v) => buffer[0] = *v,
            DaemonAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for DaemonAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        let fixed = |n: usize| -> Result<&[u8], DecodeError> {
            payload
                .get(..n)
                .filter(|_| payload.len() == n)
                .ok_or_else(|| DecodeError::from(format!("{} bytes, {n} expected", payload.len())))
        };
        Ok(match buf.kind() {
            IPVS_DAEMON_ATTR_STATE => DaemonAttr::State(parse_u32(payload)?),
            IPVS_DAEMON_ATTR_MCAST_IFN => DaemonAttr::Interface(parse_string(payload)?),
            IPVS_DAEMON_ATTR_SYNC_ID => DaemonAttr::SyncId(parse_u32(payload)?),
            IPVS_DAEMON_ATTR_SYNC_MAXLEN => DaemonAttr::MaxLen(parse_u16(payload)?),
            IPVS_DAEMON_ATTR_MCAST_GROUP => {
                let mut a = [0u8; 4];
                a.copy_from_slice(fixed(4)?);
                DaemonAttr::Group(a)
            }
            IPVS_DAEMON_ATTR_MCAST_GROUP6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(fixed(16)?);
                DaemonAttr::Group6(a)
            }
            IPVS_DAEMON_ATTR_MCAST_PORT => DaemonAttr::Port(parse_u16(payload)?),
            IPVS_DAEMON_ATTR_MCAST_TTL => DaemonAttr::Ttl(parse_u8(payload)?),
            _ => DaemonAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// The attribute list's wire size, for [`CmdAttr`]'s nest.
pub(crate) fn attrs_len(attrs: &[DaemonAttr]) -> usize {
    attrs.buffer_len()
}
