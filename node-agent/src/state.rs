//! What this agent owns, persisted so that a restart (or a later `delete`)
//! knows which kernel objects are tunlb's. Anything not recorded here is
//! someone else's and is never changed or removed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tunlb_api::Protocol;
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
    pub objects: BTreeMap<String, StoredObject>,
}

/// A VirtualService applied in standalone mode. The spec stays the JSON text
/// tunlb wrote and is parsed only while planning, one object at a time: with
/// 10,000 objects the text is a third of the parsed form. The shape is a
/// subset of a VirtualService's, so older files holding whole objects load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredObject {
    #[serde(default)]
    pub metadata: StoredMeta,
    pub spec: Box<RawValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMeta {
    /// Bumped when the spec changes, as the API server does.
    #[serde(default)]
    pub generation: Option<i64>,
    /// Order of first apply (a number): the older object wins a VIP:port clash.
    #[serde(default)]
    pub resource_version: Option<String>,
}

impl StoredObject {
    /// Order of first apply; objects without one sort last.
    pub fn seq(&self) -> u64 {
        self.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    }
}

impl PartialEq for StoredObject {
    fn eq(&self, other: &Self) -> bool {
        self.metadata == other.metadata && self.spec.get() == other.spec.get()
    }
}

pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

impl OwnedState {
    pub fn load(dir: &Path) -> Result<OwnedState, StateError> {
        match read_json(&state_file(dir)) {
            Err(StateError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(OwnedState::default())
            }
            other => other,
        }
    }

    /// Writes atomically (temp file + rename) so a crash never leaves half a file.
    /// Compact JSON, streamed: with thousands of standalone objects the
    /// pretty form was three times larger and was built in memory first.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = state_file(dir);
        let tmp = dir.join(".state.json.tmp");
        write_json(&tmp, self, &path)?;
        std::fs::rename(&tmp, &path).map_err(|source| StateError::Write {
            path: path.display().to_string(),
            source,
        })
    }
}

/// Streams `value` as compact JSON into `file` (creating its directory);
/// errors name `named`. Streamed: at 10,000 objects the text is megabytes.
fn write_json<T: Serialize + ?Sized>(
    file: &Path,
    value: &T,
    named: &Path,
) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: named.display().to_string(),
        source,
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let out = std::fs::File::create(file).map_err(err)?;
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
    serde_json::to_writer(&mut w, value).map_err(|e| err(std::io::Error::other(e)))?;
    w.write_all(b"\n").map_err(err)?;
    w.flush().map_err(err)
}

/// Streams JSON from `file`: the text is never held next to what it decodes to.
fn read_json<T: serde::de::DeserializeOwned>(file: &Path) -> Result<T, StateError> {
    let path = file.display().to_string();
    let input = std::fs::File::open(file).map_err(|source| StateError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_reader(std::io::BufReader::with_capacity(64 * 1024, input))
        .map_err(|source| StateError::Parse { path, source })
}

/// The stored objects of an `apply` in progress, parked in the state dir
/// while the kernel is programmed. Never read except by the run that wrote
/// it: state.json stays the record of what is applied.
pub struct Pending {
    path: PathBuf,
}

impl Pending {
    pub fn write(
        dir: &Path,
        objects: &BTreeMap<String, StoredObject>,
    ) -> Result<Pending, StateError> {
        let path = dir.join(".objects.pending.json");
        write_json(&path, objects, &path)?;
        Ok(Pending { path })
    }

    pub fn read(&self) -> Result<BTreeMap<String, StoredObject>, StateError> {
        read_json(&self.path)
    }

    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
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
        let spec = RawValue::from_string(r#"{"vip":"192.168.56.185"}"#.into());
        s.objects.insert(
            "default/web".into(),
            StoredObject {
                metadata: StoredMeta {
                    generation: Some(2),
                    resource_version: Some("7".into()),
                },
                spec: spec.unwrap_or_else(|e| panic!("{e}")),
            },
        );
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

    /// Files written when whole objects were stored still load.
    #[test]
    fn reads_whole_stored_objects() {
        let dir = std::env::temp_dir().join(format!("tunlb-state-old-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let old = r#"{"objects":{"default/web":{"apiVersion":"tunlb.io/v1alpha1","kind":"VirtualService","metadata":{"name":"web","namespace":"default","generation":3,"resourceVersion":"12"},"spec":{"vip":"192.168.56.185"}}}}"#;
        std::fs::write(state_file(&dir), old).unwrap_or_else(|e| panic!("{e}"));
        let s = OwnedState::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        let o = &s.objects["default/web"];
        assert_eq!((o.seq(), o.metadata.generation), (12, Some(3)));
        assert_eq!(o.spec.get(), r#"{"vip":"192.168.56.185"}"#);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_file_is_empty_state() {
        let dir = std::env::temp_dir().join("tunlb-state-does-not-exist");
        assert_eq!(OwnedState::load(&dir).ok(), Some(OwnedState::default()));
    }
}
