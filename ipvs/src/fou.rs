//! Foo-over-UDP receive ports over the `fou` generic netlink family
//! (include/uapi/linux/fou.h): what `ip fou add port N gue` does. A GUE port
//! decapsulates UDP datagrams to that port and hands the inner packet to the
//! protocol the GUE header names (IPIP or IPv6-in-IPv6).

use std::io;
use std::time::Duration;

use futures::StreamExt;
use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload, Nla, NlaBuffer, Parseable, ParseableParametrized,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_proto::ConnectionHandle;
use netlink_proto::sys::SocketAddr;
use netlink_proto::sys::protocols::NETLINK_GENERIC;

use crate::error::Error;
use crate::nla::{parse_lenient, put_u16_be};
use crate::transport::{packet, resolve_family};

const FOU_GENL_NAME: &str = "fou";
const FOU_GENL_VERSION: u8 = 1;
const FOU_CMD_ADD: u8 = 1;
const FOU_CMD_DEL: u8 = 2;
const FOU_CMD_GET: u8 = 3;
const FOU_ATTR_PORT: u16 = 1;
const FOU_ATTR_AF: u16 = 2;
const FOU_ATTR_TYPE: u16 = 4;
const FOU_ENCAP_GUE: u8 = 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// One attribute of a `fou` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FouAttr {
    Port(u16),
    /// AF_INET or AF_INET6.
    Af(u8),
    /// FOU_ENCAP_DIRECT (1) or FOU_ENCAP_GUE (2).
    Type(u8),
    Other(DefaultNla),
}

impl From<DefaultNla> for FouAttr {
    fn from(nla: DefaultNla) -> Self {
        FouAttr::Other(nla)
    }
}

impl Nla for FouAttr {
    fn value_len(&self) -> usize {
        match self {
            FouAttr::Port(_) => 2,
            FouAttr::Af(_) | FouAttr::Type(_) => 1,
            FouAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            FouAttr::Port(_) => FOU_ATTR_PORT,
            FouAttr::Af(_) => FOU_ATTR_AF,
            FouAttr::Type(_) => FOU_ATTR_TYPE,
            FouAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            FouAttr::Port(p) => put_u16_be(buffer, *p),
            FouAttr::Af(v) | FouAttr::Type(v) => buffer[0] = *v,
            FouAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for FouAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        let byte = || {
            payload
                .first()
                .copied()
                .ok_or_else(|| DecodeError::from("empty u8 attribute"))
        };
        Ok(match buf.kind() {
            FOU_ATTR_PORT if payload.len() >= 2 => {
                FouAttr::Port(u16::from_be_bytes([payload[0], payload[1]]))
            }
            FOU_ATTR_AF => FouAttr::Af(byte()?),
            FOU_ATTR_TYPE => FouAttr::Type(byte()?),
            _ => FouAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// A `fou` generic netlink message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FouMessage {
    pub cmd: u8,
    pub attrs: Vec<FouAttr>,
}

impl GenlFamily for FouMessage {
    fn family_name() -> &'static str {
        FOU_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        FOU_GENL_VERSION
    }
}

impl Emitable for FouMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for FouMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(FouMessage {
            cmd: header.cmd,
            attrs: parse_lenient(buf, "fou", |n| FouAttr::parse(n)),
        })
    }
}

/// A FOU receive port as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FouEntry {
    pub port: u16,
    pub ipv6: bool,
    /// GUE (as opposed to direct FOU encapsulation).
    pub gue: bool,
}

impl FouEntry {
    fn from_message(msg: &FouMessage) -> Option<FouEntry> {
        let mut port = None;
        let mut ipv6 = false;
        let mut gue = false;
        for a in &msg.attrs {
            match a {
                FouAttr::Port(p) => port = Some(*p),
                FouAttr::Af(af) => ipv6 = *af == AF_INET6,
                FouAttr::Type(t) => gue = *t == FOU_ENCAP_GUE,
                FouAttr::Other(_) => {}
            }
        }
        Some(FouEntry {
            port: port?,
            ipv6,
            gue,
        })
    }
}

/// The message that adds (`FOU_CMD_ADD`) or deletes a GUE port.
pub fn gue_message(add: bool, port: u16, ipv6: bool) -> FouMessage {
    let mut attrs = vec![
        FouAttr::Port(port),
        FouAttr::Af(if ipv6 { AF_INET6 } else { AF_INET }),
    ];
    if add {
        attrs.push(FouAttr::Type(FOU_ENCAP_GUE));
    }
    FouMessage {
        cmd: if add { FOU_CMD_ADD } else { FOU_CMD_DEL },
        attrs,
    }
}

type FouPacket = NetlinkMessage<GenlMessage<FouMessage>>;

/// A connection to the kernel's `fou` family.
#[derive(Clone)]
pub struct FouClient {
    handle: ConnectionHandle<GenlMessage<FouMessage>>,
    family_id: u16,
    timeout: Duration,
}

impl FouClient {
    /// Connects; [`Error::FamilyNotFound`] means the `fou` module is not
    /// loaded and could not be.
    pub async fn connect(timeout: Duration) -> Result<FouClient, Error> {
        let family_id = resolve_family(FOU_GENL_NAME, timeout).await?;
        let (conn, handle, _) =
            netlink_proto::new_connection::<GenlMessage<FouMessage>>(NETLINK_GENERIC)
                .map_err(Error::Connection)?;
        tokio::spawn(conn);
        Ok(FouClient {
            handle,
            family_id,
            timeout,
        })
    }

    async fn request(
        &self,
        op: String,
        msg: FouMessage,
        flags: u16,
    ) -> Result<Vec<FouMessage>, Error> {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(self.family_id);
        let req: FouPacket = packet(genl, flags);
        let mut replies = self
            .handle
            .clone()
            .request(req, SocketAddr::new(0, 0))
            .map_err(|e| Error::Connection(io::Error::other(e.to_string())))?;
        let read = async {
            let mut out = Vec::new();
            while let Some(reply) = replies.next().await {
                match reply.payload {
                    NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            return Err(Error::kernel(&op, code.get()));
                        }
                    }
                    _ => {}
                }
            }
            Ok(out)
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| Error::Timeout {
                op: op.clone(),
                after: self.timeout,
            })?
    }

    /// Every FOU port of the network namespace.
    pub async fn list(&self) -> Result<Vec<FouEntry>, Error> {
        let msg = FouMessage {
            cmd: FOU_CMD_GET,
            attrs: Vec::new(),
        };
        let replies = self
            .request("list FOU ports".into(), msg, NLM_F_REQUEST | NLM_F_DUMP)
            .await?;
        Ok(replies.iter().filter_map(FouEntry::from_message).collect())
    }

    /// Adds a GUE receive port.
    pub async fn add_gue(&self, port: u16, ipv6: bool) -> Result<(), Error> {
        let op = format!("add GUE port {port}{}", if ipv6 { " (IPv6)" } else { "" });
        self.request(op, gue_message(true, port, ipv6), NLM_F_REQUEST | NLM_F_ACK)
            .await
            .map(|_| ())
    }

    /// Deletes a FOU port.
    pub async fn del(&self, port: u16, ipv6: bool) -> Result<(), Error> {
        let op = format!(
            "delete GUE port {port}{}",
            if ipv6 { " (IPv6)" } else { "" }
        );
        self.request(
            op,
            gue_message(false, port, ipv6),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_message_bytes() {
        let msg = gue_message(true, 6080, false);
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        // PORT (len 6, type 1, be16 6080, pad), AF (len 5, type 2, AF_INET, pad),
        // TYPE (len 5, type 4, GUE, pad).
        assert_eq!(
            buf,
            [
                6, 0, 1, 0, 0x17, 0xc0, 0, 0, //
                5, 0, 2, 0, 2, 0, 0, 0, //
                5, 0, 4, 0, 2, 0, 0, 0
            ]
        );
        let header = GenlHeader {
            cmd: FOU_CMD_GET,
            version: 1,
        };
        let back = FouMessage::parse_with_param(&buf, header).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            FouEntry::from_message(&back),
            Some(FouEntry {
                port: 6080,
                ipv6: false,
                gue: true
            })
        );
        let del = gue_message(false, 6080, true);
        assert_eq!(del.cmd, FOU_CMD_DEL);
        assert_eq!(del.attrs, vec![FouAttr::Port(6080), FouAttr::Af(AF_INET6)]);
    }
}
