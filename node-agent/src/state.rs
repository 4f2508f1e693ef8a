//! What this agent owns, persisted so that a restart (or a later `delete`)
//! knows which kernel objects are tunlb's. Anything not recorded here is
//! someone else's and is never changed or removed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tunlb_api::Protocol;
use tunlb_api::VirtualService;
use tunlb_api::plan::IpvsKey;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("read state {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state {path} is corrupt: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("write state {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An IPVS virtual service key in serialisable form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnedService {
    pub protocol: Protocol,
    pub vip: IpAddr,
    pub port: u16,
}

impl From<IpvsKey> for OwnedService {
    fn from(k: IpvsKey) -> Self {
        OwnedService {
            protocol: k.protocol,
            vip: k.vip,
            port: k.port,
        }
    }
}

impl From<OwnedService> for IpvsKey {
    fn from(k: OwnedService) -> Self {
        IpvsKey {
            protocol: k.protocol,
            vip: k.vip,
            port: k.port,
        }
    }
}

/// An address tunlb added.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnedAddress {
    pub interface: String,
    pub address: IpAddr,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedState {
    #[serde(default)]
    pub ipvs_services: BTreeSet<OwnedService>,
    #[serde(default)]
    pub addresses: BTreeSet<OwnedAddress>,
    /// Values sysctls had before tunlb changed them.
    #[serde(default)]
    pub sysctl_originals: BTreeMap<String, String>,
    /// Standalone mode: the VirtualServices applied so far, by namespace/name.
    #[serde(default)]
    pub objects: BTreeMap<String, VirtualService>,
}

pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

impl OwnedState {
    pub fn load(dir: &Path) -> Result<OwnedState, StateError> {
        let path = state_file(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OwnedState::default()),
            Err(source) => Err(StateError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes atomically (temp file + rename) so a crash never leaves half a file.
    /// Compact JSON, streamed: with thousands of standalone objects the
    /// pretty form was three times larger and was built in memory first.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = state_file(dir);
        let err = |source| StateError::Write {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(".state.json.tmp");
        let file = std::fs::File::create(&tmp).map_err(err)?;
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, file);
        serde_json::to_writer(&mut w, self).map_err(|e| err(std::io::Error::other(e)))?;
        w.write_all(b"\n").map_err(err)?;
        w.flush().map_err(err)?;
        drop(w);
        std::fs::rename(&tmp, &path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_disk() {
        let dir = std::env::temp_dir().join(format!("tunlb-state-{}", std::process::id()));
        let mut s = OwnedState::default();
        s.ipvs_services.insert(OwnedService {
            protocol: Protocol::Tcp,
            vip: "192.168.56.185".parse().unwrap_or_else(|_| unreachable!()),
            port: 80,
        });
        s.sysctl_originals
            .insert("net.ipv4.conf.all.rp_filter".into(), "1".into());
        s.save(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(OwnedState::load(&dir).unwrap_or_else(|e| panic!("{e}")), s);
        std::fs::write(state_file(&dir), "{oops").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            OwnedState::load(&dir)
                .unwrap_err()
                .to_string()
                .contains("is corrupt")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_file_is_empty_state() {
        let dir = std::env::temp_dir().join("tunlb-state-does-not-exist");
        assert_eq!(OwnedState::load(&dir).ok(), Some(OwnedState::default()));
    }
}
