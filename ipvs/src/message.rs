//! The IPVS generic netlink payload: command plus top-level attributes.
//!
//! Exposed for debugging and tests; [`crate::Client`] is the intended API.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable, ParseableParametrized, parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use crate::constants::*;
use crate::daemon::{DaemonAttr, attrs_len};
use crate::destination::DestAttr;
use crate::nla::{parse_lenient, put_u32};
use crate::service::ServiceAttr;

/// `IPVS_CMD_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpvsCmd {
    NewService,
    SetService,
    DelService,
    GetService,
    NewDest,
    SetDest,
    DelDest,
    GetDest,
    NewDaemon,
    DelDaemon,
    GetDaemon,
    SetConfig,
    GetConfig,
    SetInfo,
    GetInfo,
    Zero,
    Flush,
    Other(u8),
}

impl From<IpvsCmd> for u8 {
    fn from(cmd: IpvsCmd) -> u8 {
        match cmd {
            IpvsCmd::NewService => IPVS_CMD_NEW_SERVICE,
            IpvsCmd::SetService => IPVS_CMD_SET_SERVICE,
            IpvsCmd::DelService => IPVS_CMD_DEL_SERVICE,
            IpvsCmd::GetService => IPVS_CMD_GET_SERVICE,
            IpvsCmd::NewDest => IPVS_CMD_NEW_DEST,
            IpvsCmd::SetDest => IPVS_CMD_SET_DEST,
            IpvsCmd::DelDest => IPVS_CMD_DEL_DEST,
            IpvsCmd::GetDest => IPVS_CMD_GET_DEST,
            IpvsCmd::NewDaemon => IPVS_CMD_NEW_DAEMON,
            IpvsCmd::DelDaemon => IPVS_CMD_DEL_DAEMON,
            IpvsCmd::GetDaemon => IPVS_CMD_GET_DAEMON,
            IpvsCmd::SetConfig => IPVS_CMD_SET_CONFIG,
            IpvsCmd::GetConfig => IPVS_CMD_GET_CONFIG,
            IpvsCmd::SetInfo => IPVS_CMD_SET_INFO,
            IpvsCmd::GetInfo => IPVS_CMD_GET_INFO,
            IpvsCmd::Zero => IPVS_CMD_ZERO,
            IpvsCmd::Flush => IPVS_CMD_FLUSH,
            IpvsCmd::Other(n) => n,
        }
    }
}

impl From<u8> for IpvsCmd {
    fn from(n: u8) -> IpvsCmd {
        match n {
            IPVS_CMD_NEW_SERVICE => IpvsCmd::NewService,
            IPVS_CMD_SET_SERVICE => IpvsCmd::SetService,
            IPVS_CMD_DEL_SERVICE => IpvsCmd::DelService,
            IPVS_CMD_GET_SERVICE => IpvsCmd::GetService,
            IPVS_CMD_NEW_DEST => IpvsCmd::NewDest,
            IPVS_CMD_SET_DEST => IpvsCmd::SetDest,
            IPVS_CMD_DEL_DEST => IpvsCmd::DelDest,
            IPVS_CMD_GET_DEST => IpvsCmd::GetDest,
            IPVS_CMD_NEW_DAEMON => IpvsCmd::NewDaemon,
            IPVS_CMD_DEL_DAEMON => IpvsCmd::DelDaemon,
            IPVS_CMD_GET_DAEMON => IpvsCmd::GetDaemon,
            IPVS_CMD_SET_CONFIG => IpvsCmd::SetConfig,
            IPVS_CMD_GET_CONFIG => IpvsCmd::GetConfig,
            IPVS_CMD_SET_INFO => IpvsCmd::SetInfo,
            IPVS_CMD_GET_INFO => IpvsCmd::GetInfo,
            IPVS_CMD_ZERO => IpvsCmd::Zero,
            IPVS_CMD_FLUSH => IpvsCmd::Flush,
            n => IpvsCmd::Other(n),
        }
    }
}

/// Top-level attributes. Nests are emitted without `NLA_F_NESTED`, like the
/// kernel's own replies (`nla_nest_start_noflag`); IPVS parses its requests
/// with the non-strict validator, which accepts either form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdAttr {
    Service(Vec<ServiceAttr>),
    Dest(Vec<DestAttr>),
    Daemon(Vec<DaemonAttr>),
    TimeoutTcp(u32),
    TimeoutTcpFin(u32),
    TimeoutUdp(u32),
    /// `IPVS_INFO_ATTR_VERSION`, only in SET_INFO (GET_INFO reply) messages.
    InfoVersion(u32),
    /// `IPVS_INFO_ATTR_CONN_TAB_SIZE`, only in SET_INFO messages.
    InfoConnTabSize(u32),
    Other(DefaultNla),
}

impl From<DefaultNla> for CmdAttr {
    fn from(nla: DefaultNla) -> Self {
        CmdAttr::Other(nla)
    }
}

impl Nla for CmdAttr {
    fn value_len(&self) -> usize {
        match self {
            CmdAttr::Service(a) => a.as_slice().buffer_len(),
            CmdAttr::Dest(a) => a.as_slice().buffer_len(),
            CmdAttr::Daemon(a) => attrs_len(a),
            CmdAttr::TimeoutTcp(_)
            | CmdAttr::TimeoutTcpFin(_)
            | CmdAttr::TimeoutUdp(_)
            | CmdAttr::InfoVersion(_)
            | CmdAttr::InfoConnTabSize(_) => 4,
            CmdAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            CmdAttr::Service(_) => IPVS_CMD_ATTR_SERVICE,
            CmdAttr::Dest(_) => IPVS_CMD_ATTR_DEST,
            CmdAttr::Daemon(_) => IPVS_CMD_ATTR_DAEMON,
            CmdAttr::TimeoutTcp(_) => IPVS_CMD_ATTR_TIMEOUT_TCP,
            CmdAttr::TimeoutTcpFin(_) => IPVS_CMD_ATTR_TIMEOUT_TCP_FIN,
            CmdAttr::TimeoutUdp(_) => IPVS_CMD_ATTR_TIMEOUT_UDP,
            CmdAttr::InfoVersion(_) => IPVS_INFO_ATTR_VERSION,
            CmdAttr::InfoConnTabSize(_) => IPVS_INFO_ATTR_CONN_TAB_SIZE,
            CmdAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            CmdAttr::Service(a) => a.as_slice().emit(buffer),
            CmdAttr::Dest(a) => a.as_slice().emit(buffer),
            CmdAttr::Daemon(a) => a.as_slice().emit(buffer),
            CmdAttr::TimeoutTcp(v)
            | CmdAttr::TimeoutTcpFin(v)
            | CmdAttr::TimeoutUdp(v)
            | CmdAttr::InfoVersion(v)
            | CmdAttr::InfoConnTabSize(v) => put_u32(buffer, *v),
            CmdAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl CmdAttr {
    fn parse_for(buf: &NlaBuffer<&[u8]>, cmd: IpvsCmd) -> Result<CmdAttr, DecodeError> {
        let payload = buf.value();
        Ok(match (cmd, buf.kind()) {
            (IpvsCmd::SetInfo, IPVS_INFO_ATTR_VERSION) => CmdAttr::InfoVersion(parse_u32(payload)?),
            (IpvsCmd::SetInfo, IPVS_INFO_ATTR_CONN_TAB_SIZE) => {
                CmdAttr::InfoConnTabSize(parse_u32(payload)?)
            }
            (IpvsCmd::SetInfo, _) => CmdAttr::Other(DefaultNla::parse(buf)?),
            (_, IPVS_CMD_ATTR_SERVICE) => {
                CmdAttr::Service(parse_lenient(payload, "service", |n| ServiceAttr::parse(n)))
            }
            (_, IPVS_CMD_ATTR_DEST) => CmdAttr::Dest(parse_lenient(payload, "destination", |n| {
                DestAttr::parse(n)
            })),
            (_, IPVS_CMD_ATTR_DAEMON) => {
                CmdAttr::Daemon(parse_lenient(payload, "sync daemon", |n| {
                    DaemonAttr::parse(n)
                }))
            }
            (_, IPVS_CMD_ATTR_TIMEOUT_TCP) => CmdAttr::TimeoutTcp(parse_u32(payload)?),
            (_, IPVS_CMD_ATTR_TIMEOUT_TCP_FIN) => CmdAttr::TimeoutTcpFin(parse_u32(payload)?),
            (_, IPVS_CMD_ATTR_TIMEOUT_UDP) => CmdAttr::TimeoutUdp(parse_u32(payload)?),
            _ => CmdAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// One IPVS generic netlink message (after the genl header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: IpvsCmd,
    pub attrs: Vec<CmdAttr>,
}

impl IpvsMessage {
    pub fn new(cmd: IpvsCmd, attrs: Vec<CmdAttr>) -> IpvsMessage {
        IpvsMessage { cmd, attrs }
    }

    pub(crate) fn service_attrs(&self) -> Option<&[ServiceAttr]> {
        self.attrs.iter().find_map(|a| match a {
            CmdAttr::Service(s) => Some(s.as_slice()),
            _ => None,
        })
    }

    pub(crate) fn daemon_attrs(&self) -> Option<&[DaemonAttr]> {
        self.attrs.iter().find_map(|a| match a {
            CmdAttr::Daemon(d) => Some(d.as_slice()),
            _ => None,
        })
    }

    pub(crate) fn dest_attrs(&self) -> Option<&[DestAttr]> {
        self.attrs.iter().find_map(|a| match a {
            CmdAttr::Dest(d) => Some(d.as_slice()),
            _ => None,
        })
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.into()
    }

    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    /// Never fails: unknown or malformed attributes become `Other`, because
    /// netlink-proto drops undecodable messages and the request would hang.
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let cmd = IpvsCmd::from(header.cmd);
        Ok(IpvsMessage {
            cmd,
            attrs: parse_lenient(buf, "IPVS", |n| CmdAttr::parse_for(n, cmd)),
        })
    }
}
