//! Minimal `nlctrl` payload for resolving the IPVS family id.
//!
//! netlink-packet-generic's `GenlCtrl` rejects attributes it does not know,
//! and netlink-proto drops undecodable replies, so a newer kernel adding a
//! ctrl attribute would hang the lookup. This type only decodes what it needs.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable, ParseableParametrized,
    parse_string, parse_u16,
};
use netlink_packet_generic::constants::{
    CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_CMD_GETFAMILY, GENL_ID_CTRL,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use crate::nla::{parse_lenient, put_string, put_u16};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CtrlAttr {
    FamilyId(u16),
    FamilyName(String),
    Other(DefaultNla),
}

impl From<DefaultNla> for CtrlAttr {
    fn from(nla: DefaultNla) -> Self {
        CtrlAttr::Other(nla)
    }
}

impl Nla for CtrlAttr {
    fn value_len(&self) -> usize {
        match self {
            CtrlAttr::FamilyId(_) => 2,
            CtrlAttr::FamilyName(s) => s.len() + 1,
            CtrlAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            CtrlAttr::FamilyId(_) => CTRL_ATTR_FAMILY_ID,
            CtrlAttr::FamilyName(_) => CTRL_ATTR_FAMILY_NAME,
            CtrlAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            CtrlAttr::FamilyId(v) => put_u16(buffer, *v),
            CtrlAttr::FamilyName(s) => put_string(buffer, s),
            CtrlAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for CtrlAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            CTRL_ATTR_FAMILY_ID => CtrlAttr::FamilyId(parse_u16(payload)?),
            CTRL_ATTR_FAMILY_NAME => CtrlAttr::FamilyName(parse_string(payload)?),
            _ => CtrlAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CtrlMessage {
    pub cmd: u8,
    pub attrs: Vec<CtrlAttr>,
}

impl CtrlMessage {
    pub fn get_family(name: &str) -> CtrlMessage {
        CtrlMessage {
            cmd: CTRL_CMD_GETFAMILY,
            attrs: vec![CtrlAttr::FamilyName(name.to_string())],
        }
    }

    pub fn family_id(&self) -> Option<u16> {
        self.attrs.iter().find_map(|a| match a {
            CtrlAttr::FamilyId(id) => Some(*id),
            _ => None,
        })
    }
}

impl GenlFamily for CtrlMessage {
    fn family_name() -> &'static str {
        "nlctrl"
    }

    fn family_id(&self) -> u16 {
        GENL_ID_CTRL
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        2
    }
}

impl Emitable for CtrlMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for CtrlMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(CtrlMessage {
            cmd: header.cmd,
            attrs: parse_lenient(buf, "nlctrl", |n| CtrlAttr::parse(n)),
        })
    }
}
