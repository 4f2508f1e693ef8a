//! The ARP and reverse-path sysctls a real server needs for LVS-TUN.
//!
//! arp_ignore=1 / arp_announce=2 keep the node from answering or announcing ARP
//! for the VIP it holds on tunl0 (the director owns the VIP on the wire).
//! rp_filter must be off on tunl0 (and gre0 for GRE): decapsulated packets
//! arrive there with the client's source address. The kernel uses
//! max(conf.all, conf.<dev>), so both are set. IPv6 has neither an
//! arp_ignore counterpart (neighbour discovery answers only for addresses
//! on the interface asked, and the VIP sits on ip6tnl0) nor rp_filter.
//! Values are per network namespace (/proc/sys/net is namespaced).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use tunlb_api::plan::TunnelDevice;

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("write {value} to {path}: {source}")]
    Write {
        path: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where sysctls live: in a container the host's /proc/sys/net is mounted
/// elsewhere (TUNLB_PROC_SYS).
fn root() -> PathBuf {
    std::env::var_os("TUNLB_PROC_SYS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/sys"))
}

/// A sysctl by its dotted name, e.g. `net.ipv4.conf.all.rp_filter`.
fn in_root(root: &std::path::Path, name: &str) -> PathBuf {
    root.join(name.replace('.', "/"))
}

/// The settings a backend with IPv4 VIPs needs, as (name, value), given
/// the tunnel devices it receives on.
pub fn backend_settings(devices: &BTreeSet<TunnelDevice>) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for dev in ["all", TunnelDevice::Tunl0.name()] {
        v.push((format!("net.ipv4.conf.{dev}.arp_ignore"), "1".to_string()));
        v.push((format!("net.ipv4.conf.{dev}.arp_announce"), "2".to_string()));
        v.push((format!("net.ipv4.conf.{dev}.rp_filter"), "0".to_string()));
    }
    if devices.contains(&TunnelDevice::Gre0) {
        let dev = TunnelDevice::Gre0.name();
        v.push((format!("net.ipv4.conf.{dev}.rp_filter"), "0".to_string()));
    }
    v
}

/// What a director needs of IPVS once it holds services:
/// `expire_nodest_conn`, so that a packet of a connection whose real
/// server was removed ends that entry and a new connection is scheduled
/// afresh. Without it, a client that reuses its source port within the
/// entry's timeout (up to 2 minutes in FIN_WAIT, which a tunnel's one-way
/// view leaves a closed connection in) is sent to the removed server and
/// times out.
pub fn director_settings() -> Vec<(String, String)> {
    vec![(EXPIRE_NODEST_CONN.to_string(), "1".to_string())]
}

const EXPIRE_NODEST_CONN: &str = "net.ipv4.vs.expire_nodest_conn";

/// What a director that probes through the tunnel needs on each interface
/// the servers' answers arrive on (see `probe`): `accept_local`, since the
/// answers come from the VIP it holds, and loose `rp_filter` where the
/// effective value (max of all and the interface) is strict, which drops
/// them even then. An rp_filter tunlb already loosened stays in the list.
pub fn probe_settings(
    interfaces: &BTreeSet<String>,
    originals: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let all = read("net.ipv4.conf.all.rp_filter").unwrap_or_default();
    for i in interfaces {
        v.push((format!("net.ipv4.conf.{i}.accept_local"), "1".to_string()));
        let name = format!("net.ipv4.conf.{i}.rp_filter");
        let own = read(&name).unwrap_or_default();
        if originals.contains_key(&name) || all == "1" || own == "1" {
            v.push((name, LOOSE.to_string()));
        }
    }
    v
}

/// Loose reverse-path filtering.
const LOOSE: &str = "2";

/// Every setting tunlb may have made, with the value it set: what a
/// restore covers. Probe settings are per interface, so they are known
/// from the record of originals.
pub fn every_setting(originals: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut v = backend_settings(&TunnelDevice::ALL.into_iter().collect());
    v.extend(director_settings());
    for name in originals.keys() {
        if v.iter().any(|(n, _)| n == name) {
            continue;
        }
        if name.ends_with(".accept_local") {
            v.push((name.clone(), "1".to_string()));
        } else if name.ends_with(".rp_filter") {
            v.push((name.clone(), LOOSE.to_string()));
        }
    }
    v
}

pub fn read(name: &str) -> Result<String, SysctlError> {
    read_in(&root(), name)
}

fn read_in(root: &std::path::Path, name: &str) -> Result<String, SysctlError> {
    let path = in_root(root, name);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| SysctlError::Read {
            path: path.display().to_string(),
            source,
        })
}

pub fn write(name: &str, value: &str) -> Result<(), SysctlError> {
    write_in(&root(), name, value)
}

fn write_in(root: &std::path::Path, name: &str, value: &str) -> Result<(), SysctlError> {
    let path = in_root(root, name);
    std::fs::write(&path, value).map_err(|source| SysctlError::Write {
        path: path.display().to_string(),
        value: value.to_string(),
        source,
    })
}

/// The writes that bring `current` to `wanted`, recording in `originals`
/// the value each sysctl had before tunlb first changed it (so delete can
/// restore it).
pub fn diff(
    wanted: &[(String, String)],
    current: &BTreeMap<String, String>,
    originals: &mut BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut writes = Vec::new();
    for (name, value) in wanted {
        let Some(now) = current.get(name) else {
            continue;
        };
        if now == value {
            continue;
        }
        originals.entry(name.clone()).or_insert_with(|| now.clone());
        writes.push((name.clone(), value.clone()));
    }
    writes
}

/// The writes that put back what tunlb changed, unless someone changed it
/// since (then the newer value is theirs and stays). Every restored or
/// abandoned record leaves `originals`.
pub fn restore_diff(
    wanted: &[(String, String)],
    current: &BTreeMap<String, String>,
    originals: &mut BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut writes = Vec::new();
    for (name, value) in wanted {
        let Some(original) = originals.remove(name) else {
            continue;
        };
        // tunl0's entry disappears with the ipip module; nothing to restore then.
        let Some(now) = current.get(name) else {
            continue;
        };
        if now == value && *now != original {
            writes.push((name.clone(), original));
        }
    }
    writes
}

fn read_all(
    root: &std::path::Path,
    wanted: &[(String, String)],
) -> Result<BTreeMap<String, String>, SysctlError> {
    wanted
        .iter()
        .map(|(name, _)| Ok((name.clone(), read_in(root, name)?)))
        .collect()
}

/// Applies `wanted`; see [`diff`]. `record` runs before the first write
/// whenever `originals` gained an entry, so the values to restore are
/// durable before they are overwritten. Returns writes made.
pub fn apply<E: std::error::Error + 'static>(
    wanted: &[(String, String)],
    originals: &mut BTreeMap<String, String>,
    record: impl FnOnce(&BTreeMap<String, String>) -> Result<(), E>,
) -> Result<usize, ApplyError<E>> {
    apply_in(&root(), wanted, originals, record)
}

fn apply_in<E: std::error::Error + 'static>(
    root: &std::path::Path,
    wanted: &[(String, String)],
    originals: &mut BTreeMap<String, String>,
    record: impl FnOnce(&BTreeMap<String, String>) -> Result<(), E>,
) -> Result<usize, ApplyError<E>> {
    let current = read_all(root, wanted).map_err(ApplyError::Sysctl)?;
    let known = originals.len();
    let writes = diff(wanted, &current, originals);
    if originals.len() != known {
        record(originals).map_err(ApplyError::Record)?;
    }
    for (name, value) in &writes {
        write_in(root, name, value).map_err(ApplyError::Sysctl)?;
    }
    Ok(writes.len())
}

/// Why [`apply`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Sysctl(SysctlError),
    #[error("cannot record the sysctls' original values before changing them: {0}")]
    Record(#[source] E),
}

/// Restores what tunlb changed; see [`restore_diff`]. Returns writes made.
pub fn restore(
    wanted: &[(String, String)],
    originals: &mut BTreeMap<String, String>,
) -> Result<usize, SysctlError> {
    // Readable ones only: a missing entry has nothing to restore.
    let current: BTreeMap<String, String> = wanted
        .iter()
        .filter_map(|(name, _)| read(name).ok().map(|v| (name.clone(), v)))
        .collect();
    let writes = restore_diff(wanted, &current, originals);
    for (name, value) in &writes {
        write(name, value)?;
    }
    Ok(writes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
            .collect()
    }

    fn map(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs(items).into_iter().collect()
    }

    #[test]
    fn writes_only_differences_and_remembers_the_first_value() {
        let wanted = pairs(&[("a", "1"), ("b", "2")]);
        let mut originals = map(&[("a", "5")]);
        let writes = diff(&wanted, &map(&[("a", "0"), ("b", "2")]), &mut originals);
        assert_eq!(writes, pairs(&[("a", "1")]));
        // "a" was first changed from 5 by an earlier run: that value is kept.
        assert_eq!(originals, map(&[("a", "5")]));
        let mut none = BTreeMap::new();
        assert_eq!(
            diff(&wanted, &map(&[("a", "0"), ("b", "0")]), &mut none),
            pairs(&[("a", "1"), ("b", "2")])
        );
        assert_eq!(none, map(&[("a", "0"), ("b", "0")]));
    }

    #[test]
    fn restore_leaves_values_someone_changed_since() {
        let wanted = pairs(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let mut originals = map(&[("a", "0"), ("b", "0"), ("c", "0")]);
        // "b" was changed by someone else after tunlb; "c" is gone.
        let writes = restore_diff(&wanted, &map(&[("a", "1"), ("b", "9")]), &mut originals);
        assert_eq!(writes, pairs(&[("a", "0")]));
        assert!(originals.is_empty());
    }

    #[test]
    fn originals_are_recorded_before_the_first_write() {
        let root = std::env::temp_dir().join(format!("tunlb-sysctl-{}", std::process::id()));
        let file = root.join("net/ipv4/conf/all/rp_filter");
        std::fs::create_dir_all(file.parent().unwrap_or(&root)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&file, "1\n").unwrap_or_else(|e| panic!("{e}"));
        let wanted = pairs(&[("net.ipv4.conf.all.rp_filter", "0")]);
        let read_file = || std::fs::read_to_string(&file).unwrap_or_default();

        let mut originals = BTreeMap::new();
        let mut seen = None;
        let n = apply_in(&root, &wanted, &mut originals, |o| {
            seen = Some((read_file(), o.clone()));
            Ok::<(), std::io::Error>(())
        });
        assert_eq!(n.ok(), Some(1));
        let (before, recorded) = seen.unwrap_or_default();
        assert_eq!(before.trim(), "1", "recorded before the write");
        assert_eq!(recorded, map(&[("net.ipv4.conf.all.rp_filter", "1")]));
        assert_eq!(read_file().trim(), "0");

        // A record that fails leaves the sysctl as it was.
        std::fs::write(&file, "1\n").unwrap_or_else(|e| panic!("{e}"));
        let mut originals = BTreeMap::new();
        let res = apply_in(&root, &wanted, &mut originals, |_| {
            Err(std::io::Error::other("disk full"))
        });
        assert!(matches!(res, Err(ApplyError::Record(_))));
        assert_eq!(read_file().trim(), "1");
        let _ = std::fs::remove_dir_all(&root);
    }
}
