//! Global IPVS state: version info and connection timeouts.

use crate::message::{CmdAttr, IpvsCmd, IpvsMessage};

/// GET_INFO reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// `IP_VS_VERSION_CODE` split into (major, minor, patch), e.g. (1, 2, 1).
    pub version: (u8, u8, u8),
    /// Size of the connection hash table.
    pub conn_tab_size: u32,
}

impl Info {
    pub(crate) fn from_message(msg: &IpvsMessage) -> Option<Info> {
        let mut version = None;
        let mut size = None;
        for attr in &msg.attrs {
            match attr {
                CmdAttr::InfoVersion(v) => version = Some(*v),
                CmdAttr::InfoConnTabSize(v) => size = Some(*v),
                _ => {}
            }
        }
        let v = version?;
        Some(Info {
            version: ((v >> 16) as u8, (v >> 8) as u8, v as u8),
            conn_tab_size: size.unwrap_or(0),
        })
    }
}

/// Connection timeouts in seconds (`ipvsadm --set tcp tcpfin udp`).
/// On write, 0 leaves that timeout unchanged (kernel semantics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

impl Timeouts {
    /// Attributes missing from the reply (protocol not compiled in) read as 0.
    pub(crate) fn from_message(msg: &IpvsMessage) -> Timeouts {
        let mut t = Timeouts::default();
        for attr in &msg.attrs {
            match attr {
                CmdAttr::TimeoutTcp(v) => t.tcp = *v,
                CmdAttr::TimeoutTcpFin(v) => t.tcp_fin = *v,
                CmdAttr::TimeoutUdp(v) => t.udp = *v,
                _ => {}
            }
        }
        t
    }

    pub(crate) fn to_message(self) -> IpvsMessage {
        IpvsMessage::new(
            IpvsCmd::SetConfig,
            vec![
                CmdAttr::TimeoutTcp(self.tcp),
                CmdAttr::TimeoutTcpFin(self.tcp_fin),
                CmdAttr::TimeoutUdp(self.udp),
            ],
        )
    }
}
