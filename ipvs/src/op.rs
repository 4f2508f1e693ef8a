//! Write operations and their request messages.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::destination::{Destination, key_attrs};
use crate::message::{CmdAttr, IpvsCmd, IpvsMessage};
use crate::service::{Service, ServiceKey};

/// One write to the kernel's IPVS table. `Client::apply` sends a slice of
/// these pipelined; the kernel executes them in slice order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    NewService(Service),
    SetService(Service),
    DelService(ServiceKey),
    NewDest(ServiceKey, Destination),
    SetDest(ServiceKey, Destination),
    DelDest(ServiceKey, IpAddr, u16),
}

impl Op {
    /// The request payload. Destination commands carry only the service key:
    /// the kernel parses the full service only for NEW/SET_SERVICE.
    pub fn to_message(&self) -> IpvsMessage {
        let (cmd, attrs) = match self {
            Op::NewService(s) => (IpvsCmd::NewService, vec![CmdAttr::Service(s.to_attrs())]),
            Op::SetService(s) => (IpvsCmd::SetService, vec![CmdAttr::Service(s.to_attrs())]),
            Op::DelService(k) => (IpvsCmd::DelService, vec![CmdAttr::Service(k.to_attrs())]),
            Op::NewDest(k, d) => (
                IpvsCmd::NewDest,
                vec![CmdAttr::Service(k.to_attrs()), CmdAttr::Dest(d.to_attrs())],
            ),
            Op::SetDest(k, d) => (
                IpvsCmd::SetDest,
                vec![CmdAttr::Service(k.to_attrs()), CmdAttr::Dest(d.to_attrs())],
            ),
            Op::DelDest(k, addr, port) => (
                IpvsCmd::DelDest,
                vec![
                    CmdAttr::Service(k.to_attrs()),
                    CmdAttr::Dest(key_attrs(addr, *port)),
                ],
            ),
        };
        IpvsMessage::new(cmd, attrs)
    }
}

/// Human-readable, used as the `op` of errors, e.g.
/// "add destination 10.0.0.1:80 to TCP 192.168.56.185:80".
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dest = |addr: IpAddr, port: u16| SocketAddr::new(addr, port);
        match self {
            Op::NewService(s) => write!(f, "add service {}", s.key),
            Op::SetService(s) => write!(f, "update service {}", s.key),
            Op::DelService(k) => write!(f, "delete service {k}"),
            Op::NewDest(k, d) => write!(f, "add destination {} to {k}", dest(d.addr, d.port)),
            Op::SetDest(k, d) => write!(f, "update destination {} in {k}", dest(d.addr, d.port)),
            Op::DelDest(k, addr, port) => {
                write!(f, "delete destination {} from {k}", dest(*addr, *port))
            }
        }
    }
}
