//! The ARP and reverse-path sysctls a real server needs for LVS-TUN.
//!
//! arp_ignore=1 / arp_announce=2 keep the node from answering or announcing ARP
//! for the VIP it holds on tunl0 (the director owns the VIP on the wire).
//! rp_filter must be off on tunl0: decapsulated packets arrive there with the
//! client's source address. The kernel uses max(conf.all, conf.<dev>), so both
//! are set. Values are per network namespace (/proc/sys/net is namespaced).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::link::TUNL0;

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

/// A sysctl by its dotted name, e.g. `net.ipv4.conf.all.rp_filter`.
pub fn path_of(name: &str) -> PathBuf {
    // In a container the host's /proc/sys/net is mounted elsewhere (TUNLB_PROC_SYS).
    let root = std::env::var_os("TUNLB_PROC_SYS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/sys"));
    root.join(name.replace('.', "/"))
}

/// The settings a backend needs, as (name, value).
pub fn backend_settings() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for dev in ["all", TUNL0] {
        v.push((format!("net.ipv4.conf.{dev}.arp_ignore"), "1".to_string()));
        v.push((format!("net.ipv4.conf.{dev}.arp_announce"), "2".to_string()));
        v.push((format!("net.ipv4.conf.{dev}.rp_filter"), "0".to_string()));
    }
    v
}

pub fn read(name: &str) -> Result<String, SysctlError> {
    let path = path_of(name);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| SysctlError::Read {
            path: path.display().to_string(),
            source,
        })
}

pub fn write(name: &str, value: &str) -> Result<(), SysctlError> {
    let path = path_of(name);
    std::fs::write(&path, value).map_err(|source| SysctlError::Write {
        path: path.display().to_string(),
        value: value.to_string(),
        source,
    })
}

/// Applies `wanted`, recording the value each sysctl had before tunlb first
/// changed it in `originals` (so delete can restore it). Returns writes made.
pub fn apply(
    wanted: &[(String, String)],
    originals: &mut BTreeMap<String, String>,
) -> Result<usize, SysctlError> {
    let mut writes = 0;
    for (name, value) in wanted {
        let current = read(name)?;
        if &current == value {
            continue;
        }
        originals.entry(name.clone()).or_insert(current);
        write(name, value)?;
        writes += 1;
    }
    Ok(writes)
}

/// Restores what tunlb changed, unless someone has changed it since (then the
/// newer value is theirs and stays). Returns writes made.
pub fn restore(
    wanted: &[(String, String)],
    originals: &mut BTreeMap<String, String>,
) -> Result<usize, SysctlError> {
    let mut writes = 0;
    for (name, value) in wanted {
        let Some(original) = originals.remove(name) else {
            continue;
        };
        // tunl0's entry disappears with the ipip module; nothing to restore then.
        let Ok(current) = read(name) else { continue };
        if &current == value && current != original {
            write(name, &original)?;
            writes += 1;
        }
    }
    Ok(writes)
}
