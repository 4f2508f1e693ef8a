//! What this agent owns, persisted so that a restart (or a later `delete`)
//! knows which kernel objects are tunlb's. Anything not recorded here is
//! someone else's and is never changed or removed.
//!
//! Crash safety rests on three rules: what a pass is about to create is
//! recorded durably before the kernel is written ([`Journal`]), so the record
//! is always a superset of what tunlb made; an unreadable record is moved
//! aside and ownership is rebuilt from the kernel instead of stopping the
//! agent ([`OwnedState::load`]); and one process at a time writes a state
//! directory ([`StateLock`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::{info, warn};
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
    #[error("lock state directory {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state directory {dir} is in use by another tunlb-agent ({holder}); \
         only one agent or command may program from it at a time"
    )]
    Busy { dir: String, holder: String },
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

/// A destination being drained.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DrainRecord {
    pub service: OwnedService,
    pub address: IpAddr,
    pub port: u16,
    /// Unix seconds.
    pub since: u64,
    pub timeout: u32,
}

/// An owned service's drain time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceDrain {
    pub service: OwnedService,
    pub timeout: u32,
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
    /// Tunnel devices tunlb brought up (they were down or absent), so it
    /// takes them down again once nothing needs them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub links_up: BTreeSet<String>,
    /// Devices tunlb created (checksummed GRE receivers), deleted once
    /// nothing needs them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub links_created: BTreeSet<String>,
    /// GUE receive ports tunlb added.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub fou_ports: BTreeSet<OwnedFouPort>,
    /// IPVS firewall-mark services tunlb made for health probes.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub probe_services: BTreeSet<OwnedProbeService>,
    /// Removed destinations kept at weight 0 while their connections end,
    /// so a restart neither deletes them early nor restarts their clock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<DrainRecord>,
    /// Drain times of owned services that differ from the default, so the
    /// servers of a deleted VirtualService drain for its own time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drain_timeouts: Vec<ServiceDrain>,
    /// IPVS connection-sync daemons tunlb started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_daemons: Vec<crate::dataplane::sync_daemon::OwnedDaemon>,
    /// Standalone mode: the VirtualServices applied so far, by namespace/name.
    #[serde(default)]
    pub objects: BTreeMap<String, StoredObject>,
    /// Kubernetes mode: the last generation the operator accepted, by
    /// namespace/name, so a restart keeps programming it while a newer edit
    /// waits for the operator's judgement.
    #[serde(default)]
    pub accepted: BTreeMap<String, AcceptedObject>,
    /// The record was missing or unreadable: the next sync takes ownership
    /// of what is provably tunlb's (see `sync`). Never stored.
    #[serde(skip)]
    pub rebuild: bool,
}

/// A health-probe mark service: its mark and its one destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnedProbeService {
    pub mark: u32,
    pub address: IpAddr,
    pub kind: tunlb_api::TunnelKind,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub flags: u16,
}

impl OwnedProbeService {
    pub fn new(mark: u32, (address, t): crate::dataplane::probe::ProbePath) -> Self {
        OwnedProbeService {
            mark,
            address,
            kind: t.kind,
            port: t.port,
            flags: t.flags,
        }
    }

    pub fn path(&self) -> crate::dataplane::probe::ProbePath {
        (
            self.address,
            tunlb_api::validate::ValidTunnel {
                kind: self.kind,
                port: self.port,
                flags: self.flags,
            },
        )
    }
}

/// A GUE receive port tunlb added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnedFouPort {
    pub port: u16,
    #[serde(default)]
    pub ipv6: bool,
}

/// A generation the operator accepted, as Kubernetes mode programs it. The
/// spec and real servers stay JSON text, parsed once on start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedObject {
    pub generation: i64,
    /// Creation time (Unix seconds): the older object wins a VIP:port clash.
    pub created: i64,
    pub spec: Box<RawValue>,
    pub real_servers: Box<RawValue>,
    /// The director election the operator set, so that a restart without
    /// the API server still elects rather than holding the VIP alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election: Option<Box<RawValue>>,
}

impl PartialEq for AcceptedObject {
    fn eq(&self, other: &Self) -> bool {
        self.generation == other.generation
            && self.created == other.created
            && self.spec.get() == other.spec.get()
            && self.real_servers.get() == other.real_servers.get()
            && self.election.as_ref().map(|e| e.get()) == other.election.as_ref().map(|e| e.get())
    }
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
    /// Reads the record. A missing file is a fresh start; an empty,
    /// truncated or garbled one is moved aside (`state.json.corrupt-<unix
    /// time>`) with a warning. In both cases ownership is rebuilt from the
    /// kernel on the next sync, so a damaged record never stops the agent.
    /// Only an I/O failure (say, permissions) is an error.
    pub fn load(dir: &Path) -> Result<OwnedState, StateError> {
        let path = state_file(dir);
        match read_json::<OwnedState>(&path) {
            Ok(s) => Ok(s),
            Err(StateError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                info!(path = %path.display(), "no state file: ownership is rebuilt from the kernel");
                Ok(OwnedState::rebuilt())
            }
            Err(StateError::Parse { source, .. }) => {
                let aside = corrupt_name(&path, unix_now());
                match std::fs::rename(&path, &aside) {
                    Ok(()) => warn!(
                        path = %path.display(),
                        error = %source,
                        moved_to = %aside.display(),
                        "state file is unreadable: moved aside, ownership is rebuilt from the kernel"
                    ),
                    Err(e) => warn!(
                        path = %path.display(),
                        error = %source,
                        rename_error = %e,
                        "state file is unreadable and cannot be moved aside: it is overwritten, ownership is rebuilt from the kernel"
                    ),
                }
                Ok(OwnedState::rebuilt())
            }
            Err(e) => Err(e),
        }
    }

    fn rebuilt() -> OwnedState {
        OwnedState {
            rebuild: true,
            ..OwnedState::default()
        }
    }

    /// Writes durably: temp file, fsync, rename, fsync of the directory, so
    /// a crash or power loss leaves either the old record or the new one.
    /// Compact JSON, streamed: with thousands of standalone objects the
    /// pretty form was three times larger and was built in memory first.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        write_durable(dir, |w| {
            serde_json::to_writer(w, self).map_err(std::io::Error::other)
        })
    }

    /// Like [`save`](Self::save), but the standalone objects come from the
    /// file they are parked in, copied as text, never parsed.
    fn save_parked(&self, dir: &Path, parked: &Pending) -> Result<(), StateError> {
        write_durable(dir, |w| {
            let mut head = serde_json::to_vec(&Head {
                ipvs_services: &self.ipvs_services,
                addresses: &self.addresses,
                sysctl_originals: &self.sysctl_originals,
                links_up: &self.links_up,
                links_created: &self.links_created,
                fou_ports: &self.fou_ports,
                probe_services: &self.probe_services,
                draining: &self.draining,
                drain_timeouts: &self.drain_timeouts,
                accepted: &self.accepted,
            })
            .map_err(std::io::Error::other)?;
            // Head is an object with fields; reopen it for one more.
            head.pop();
            w.write_all(&head)?;
            w.write_all(b",\"objects\":")?;
            let mut objects = std::fs::File::open(&parked.path)?;
            std::io::copy(&mut objects, w)?;
            w.write_all(b"}")
        })
    }

    /// A digest of what [`save`](Self::save) would write, so a pass that
    /// changed nothing writes nothing.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::Hasher as _;
        struct HashWriter(std::collections::hash_map::DefaultHasher);
        impl std::io::Write for HashWriter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.write(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut h = HashWriter(Default::default());
        // Writing into a hasher cannot fail; a failure would only mean one extra save.
        let _ = serde_json::to_writer(&mut h, self);
        h.0.finish()
    }
}

/// Everything in state.json but the standalone objects: every other field
/// of [`OwnedState`] (`journal_with_parked_objects_keeps_them` checks that
/// none is lost).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Head<'a> {
    ipvs_services: &'a BTreeSet<OwnedService>,
    addresses: &'a BTreeSet<OwnedAddress>,
    sysctl_originals: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    links_up: &'a BTreeSet<String>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    links_created: &'a BTreeSet<String>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    fou_ports: &'a BTreeSet<OwnedFouPort>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    probe_services: &'a BTreeSet<OwnedProbeService>,
    #[serde(skip_serializing_if = "<[DrainRecord]>::is_empty")]
    draining: &'a [DrainRecord],
    #[serde(skip_serializing_if = "<[ServiceDrain]>::is_empty")]
    drain_timeouts: &'a [ServiceDrain],
    accepted: &'a BTreeMap<String, AcceptedObject>,
}

/// Where an unreadable record is moved.
fn corrupt_name(path: &Path, unix: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{unix}"));
    PathBuf::from(name)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes state.json in `dir` through `body`, durably (see [`OwnedState::save`]).
fn write_durable(
    dir: &Path,
    body: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), StateError> {
    let path = state_file(dir);
    let err = |source| StateError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(".state.json.tmp");
    let out = std::fs::File::create(&tmp).map_err(err)?;
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
    body(&mut w).map_err(err)?;
    w.write_all(b"\n").map_err(err)?;
    let out = w.into_inner().map_err(|e| err(e.into_error()))?;
    out.sync_all().map_err(err)?;
    drop(out);
    std::fs::rename(&tmp, &path).map_err(err)?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// Streams `value` as compact JSON into `file` (creating its directory);
/// errors name `named`. Streamed: at 10,000 objects the text is megabytes.
/// Not synced: only the run that writes it reads it.
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

/// Records, before a batch of kernel writes, what the batch is about to
/// create: one durable write of state.json per batch, so after a kill at any
/// moment the next run owns everything this one may have made. Entries whose
/// creation failed are dropped from the state by the caller and leave the
/// file at the next save; entries with no kernel object are forgotten then.
pub struct Journal<'a> {
    dir: &'a Path,
    parked: Option<&'a Pending>,
    recorded: std::cell::Cell<bool>,
}

impl<'a> Journal<'a> {
    /// State whose standalone objects (if any) are in memory.
    pub fn new(dir: &'a Path) -> Journal<'a> {
        Journal {
            dir,
            parked: None,
            recorded: Default::default(),
        }
    }

    /// State whose standalone objects are parked on disk while the kernel is programmed.
    pub fn parked(dir: &'a Path, objects: &'a Pending) -> Journal<'a> {
        Journal {
            dir,
            parked: Some(objects),
            recorded: Default::default(),
        }
    }

    /// Makes `state`, already holding the intents, durable.
    pub fn record(&self, state: &OwnedState) -> Result<(), StateError> {
        let started = std::time::Instant::now();
        match self.parked {
            Some(p) => state.save_parked(self.dir, p)?,
            None => state.save(self.dir)?,
        }
        self.recorded.set(true);
        tracing::debug!(
            took_ms = started.elapsed().as_millis(),
            "ownership intent recorded durably"
        );
        Ok(())
    }

    /// Whether anything was recorded, so the file no longer matches the last save.
    pub fn recorded(&self) -> bool {
        self.recorded.get()
    }
}

/// The lock file in a state directory.
pub const LOCK_FILE: &str = "agent.lock";

/// An exclusive lock on a state directory, held until dropped: two agents,
/// or the CLI next to the DaemonSet, would each delete what the other just
/// recorded. The lock file names its holder (pid and command line).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock without waiting; fails with [`StateError::Busy`]
    /// naming the holder when another process has it.
    pub fn acquire(dir: &Path) -> Result<StateLock, StateError> {
        let path = dir.join(LOCK_FILE);
        let err = |source| StateError::Lock {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = std::io::Read::read_to_string(&mut file, &mut holder);
                let holder = holder.trim();
                return Err(StateError::Busy {
                    dir: dir.display().to_string(),
                    holder: if holder.is_empty() {
                        "holder unknown".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
        let me = format!("pid {}: {}\n", std::process::id(), command_line());
        file.set_len(0).map_err(err)?;
        std::io::Seek::rewind(&mut file).map_err(err)?;
        file.write_all(me.as_bytes()).map_err(err)?;
        Ok(StateLock { _file: file })
    }
}

/// This process's command line, for the lock file.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
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
    fn missing_file_is_empty_state_rebuilt_from_the_kernel() {
        let dir = std::env::temp_dir().join("tunlb-state-does-not-exist");
        let s = OwnedState::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s,
            OwnedState {
                rebuild: true,
                ..OwnedState::default()
            }
        );
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tunlb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    fn service(port: u16) -> OwnedService {
        OwnedService {
            protocol: Protocol::Tcp,
            vip: "192.168.56.185".parse().unwrap_or_else(|_| unreachable!()),
            port,
        }
    }

    fn aside(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("state.json.corrupt-"))
            .collect();
        v.sort();
        v
    }

    /// Empty, truncated and garbled files never fail a load: each is moved
    /// aside, and ownership is to be rebuilt.
    #[test]
    fn unreadable_files_are_moved_aside() {
        let mut good = OwnedState::default();
        good.ipvs_services.insert(service(80));
        let text = serde_json::to_string(&good).unwrap_or_else(|e| panic!("{e}"));
        let truncated = text[..text.len() / 2].to_string();
        for (case, content) in [
            ("empty", String::new()),
            ("truncated", truncated),
            ("garbage", "\u{0}\u{7f}not json at all".to_string()),
            ("wrong-shape", r#"{"ipvsServices":"nope"}"#.to_string()),
        ] {
            let dir = scratch(&format!("corrupt-{case}"));
            std::fs::write(state_file(&dir), &content).unwrap_or_else(|e| panic!("{e}"));
            let s = OwnedState::load(&dir).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!(s.rebuild, "{case}");
            assert!(s.ipvs_services.is_empty(), "{case}");
            assert!(!state_file(&dir).exists(), "{case}: still in place");
            let moved = aside(&dir);
            assert_eq!(moved.len(), 1, "{case}: {moved:?}");
            let kept = std::fs::read_to_string(dir.join(&moved[0])).unwrap_or_default();
            assert_eq!(kept, content, "{case}: moved file keeps the bytes");
            let _ = std::fs::remove_dir_all(&dir);
        }
        let dir = scratch("corrupt-none");
        good.save(&dir).unwrap_or_else(|e| panic!("{e}"));
        let s = OwnedState::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.rebuild);
        assert!(aside(&dir).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_name_appends_the_time() {
        assert_eq!(
            corrupt_name(Path::new("/var/lib/tunlb/state.json"), 1700000000),
            PathBuf::from("/var/lib/tunlb/state.json.corrupt-1700000000")
        );
    }

    /// A journal entry written while the objects are parked holds both the
    /// intents and the parked objects, so a kill mid-apply loses neither.
    #[test]
    fn journal_with_parked_objects_keeps_them() {
        let dir = scratch("journal");
        let mut objects = BTreeMap::new();
        objects.insert(
            "default/web".to_string(),
            StoredObject {
                metadata: StoredMeta {
                    generation: Some(1),
                    resource_version: Some("1".into()),
                },
                spec: RawValue::from_string(r#"{"vip":"192.168.56.185"}"#.into())
                    .unwrap_or_else(|e| panic!("{e}")),
            },
        );
        let pending = Pending::write(&dir, &objects).unwrap_or_else(|e| panic!("{e}"));
        let mut s = OwnedState::default();
        s.ipvs_services.insert(service(80));
        s.addresses.insert(OwnedAddress {
            interface: "tunl0".into(),
            address: "192.168.56.185".parse().unwrap_or_else(|_| unreachable!()),
        });
        s.sysctl_originals
            .insert("net.ipv4.conf.all.rp_filter".into(), "1".into());
        s.links_up.insert("gre0".into());
        s.links_created.insert("tlbgrec0a838b7".into());
        s.fou_ports.insert(OwnedFouPort {
            port: 6080,
            ipv6: true,
        });
        let mut full = s.clone();
        full.objects = objects.clone();
        let journal = Journal::parked(&dir, &pending);
        assert!(!journal.recorded());
        journal.record(&s).unwrap_or_else(|e| panic!("{e}"));
        assert!(journal.recorded());
        let back = OwnedState::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(!back.rebuild);
        assert_eq!(back, full, "every field survives a journal entry");
        // Nothing is left behind but the record and the parked objects.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec![".objects.pending.json", "state.json"]);
        pending.remove();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn accepted_generations_round_trip() {
        let dir = scratch("accepted");
        let mut s = OwnedState::default();
        s.accepted.insert(
            "default/web".into(),
            AcceptedObject {
                generation: 4,
                created: 1700000000,
                spec: RawValue::from_string(r#"{"vip":"192.168.56.185"}"#.into())
                    .unwrap_or_else(|e| panic!("{e}")),
                real_servers: RawValue::from_string("[]".into()).unwrap_or_else(|e| panic!("{e}")),
                election: Some(
                    RawValue::from_string(r#"{"virtualRouterId":7}"#.into())
                        .unwrap_or_else(|e| panic!("{e}")),
                ),
            },
        );
        s.save(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(OwnedState::load(&dir).unwrap_or_else(|e| panic!("{e}")), s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fingerprint_follows_content() {
        let mut s = OwnedState::default();
        let empty = s.fingerprint();
        assert_eq!(empty, OwnedState::default().fingerprint());
        s.ipvs_services.insert(service(80));
        assert_ne!(s.fingerprint(), empty);
        // The rebuild flag is not stored, so it does not count.
        let before = s.fingerprint();
        s.rebuild = true;
        assert_eq!(s.fingerprint(), before);
    }

    /// A second holder is refused and told who holds the lock; once the
    /// first lets go, the lock can be taken again.
    #[test]
    fn second_lock_names_the_holder() {
        let dir = scratch("lock");
        let first = StateLock::acquire(&dir).unwrap_or_else(|e| panic!("{e}"));
        let err = StateLock::acquire(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StateError::Busy { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        drop(first);
        let again = StateLock::acquire(&dir);
        assert!(again.is_ok(), "{again:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
