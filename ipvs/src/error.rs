//! Error type of the crate.

use std::io;
use std::time::Duration;

/// `EEXIST`, `ENOENT`, `ESRCH` as the kernel reports them (positive).
const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
const ESRCH: i32 = nix::errno::Errno::ESRCH as i32;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// The kernel has no "IPVS" generic netlink family.
    #[error("IPVS generic netlink family not found: load the ip_vs kernel module")]
    FamilyNotFound,

    /// The kernel rejected a request. `errno` is positive (e.g. 17 = EEXIST).
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        errno: i32,
        #[source]
        source: io::Error,
    },

    /// A reply could not be turned into the typed model.
    #[error("failed to decode IPVS reply: {0}")]
    Decode(String),

    /// Opening or using the netlink socket failed.
    #[error("netlink connection: {0}")]
    Connection(#[source] io::Error),

    /// No complete answer within the configured timeout. The request may or
    /// may not have been applied: re-read the kernel state.
    #[error("{op}: no answer from the kernel within {after:?}; outcome unknown")]
    Timeout { op: String, after: Duration },

    /// The request was sent but its acknowledgement could not be matched
    /// (connection closed, or acks lost to a receive-buffer overrun). The
    /// outcome is unknown: re-read the kernel state.
    #[error("{op}: outcome unknown: {reason}")]
    Unacknowledged { op: String, reason: String },

    /// A request the kernel would refuse, caught before sending it.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn kernel(op: impl Into<String>, code: i32) -> Error {
        // Netlink carries negative errnos; keep the positive one.
        let errno = code.checked_abs().unwrap_or(i32::MAX);
        Error::Kernel {
            op: op.into(),
            errno,
            source: io::Error::from_raw_os_error(errno),
        }
    }

    /// The kernel errno behind this error, if any (positive).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Connection(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// The socket failed rather than the kernel answering: it could not be
    /// opened or used, closed, lost replies, or gave no complete answer in
    /// time. The request may be fine; the [`Client`](crate::Client) opens
    /// new sockets for the next call. Every errno the kernel answers with
    /// (EEXIST, ESRCH, ...) is a refusal instead, as are replies that do not
    /// decode and a missing IPVS family: new sockets would get the same.
    pub fn is_transport(&self) -> bool {
        match self {
            Error::Connection(_) | Error::Timeout { .. } | Error::Unacknowledged { .. } => true,
            Error::FamilyNotFound | Error::Kernel { .. } | Error::Decode(_) | Error::Invalid(_) => {
                false
            }
        }
    }

    /// The object already exists (EEXIST), e.g. NEW_SERVICE on an existing service.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(EEXIST)
    }

    /// The service or destination does not exist (ESRCH for services,
    /// ENOENT for destinations).
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(ESRCH) | Some(ENOENT))
    }
}
