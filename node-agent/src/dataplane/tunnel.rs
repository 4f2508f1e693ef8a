//! The tunnel devices backends decapsulate on and VIPs sit on: the fallback
//! devices of the ipip, ip_gre, ip6_tunnel and ip6_gre modules (tunl0, gre0,
//! ip6tnl0, ip6gre0). A fallback device receives only while it is up. tunlb
//! makes a needed one appear (creating a link of its kind loads the module)
//! and brings it up, recording that it did; it never deletes one (it goes
//! only with its module), and takes one it brought up down again once
//! nothing needs it and no one else's address sits on it.
//!
//! Checksummed GRE is the exception: fallback devices drop it, so each local
//! address that receives it gets a GRE device of tunlb's own (named from
//! the address, created and deleted by tunlb only).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tunlb_api::NodeRole;
use tunlb_api::TunnelKind;
use tunlb_api::plan::{NodePlan, ObjectPlan, TunnelDevice, VipBinding, backend_receivers};
use tunlb_api::validate::TUNNEL_FLAG_CSUM;

use super::SyncReport;
use super::sysctl::{self, SysctlError};
use crate::link::{Address, LinkError, LinkInfo, Links};
use crate::state::{Journal, OwnedState, StateError};

/// Why a tunnel device could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error("cannot record the change before making it: {0}")]
    Record(#[from] StateError),
}

/// What one needed device needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Create,
    SetUp(u32),
}

pub fn diff(found: Option<&LinkInfo>) -> Change {
    match found {
        None => Change::Create,
        Some(l) if !l.up => Change::SetUp(l.index),
        Some(_) => Change::None,
    }
}

/// What to do with a device tunlb brought up that nothing needs any more.
#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// Take it down: it is up and carries no address but link-local ones.
    SetDown(u32),
    /// Only forget the record: it is gone or down already, or someone
    /// else's address sits on it (they use it now).
    Forget,
}

pub fn release_diff(found: Option<&LinkInfo>, addresses: &[Address]) -> Release {
    match found {
        Some(l) if l.up => {
            let used = addresses.iter().any(|a| {
                a.index == l.index
                    && !matches!(a.address, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local())
            });
            if used {
                Release::Forget
            } else {
                Release::SetDown(l.index)
            }
        }
        _ => Release::Forget,
    }
}

/// Whether `o` relies on `device`: it receives or holds its VIP there.
pub fn needs(plan: &NodePlan, o: &ObjectPlan, device: TunnelDevice) -> bool {
    let (Some(vip), Some(tunnel)) = (o.vip, o.tunnel) else {
        return false;
    };
    (o.roles.contains(&NodeRole::Backend) && backend_receivers(vip, &tunnel).0.contains(&device))
        || (o.roles.contains(&NodeRole::Director)
            && plan.director_vips.contains(&VipBinding {
                address: vip,
                interface: device.name().to_string(),
            }))
}

/// The name of tunlb's checksummed-GRE device for `local`: derived from
/// the address, so a restart finds it again, and within IFNAMSIZ.
pub fn gre_csum_name(local: IpAddr) -> String {
    match local {
        IpAddr::V4(a) => format!("tlbgre{:08x}", u32::from(a)),
        IpAddr::V6(a) => {
            // FNV-1a over the 16 bytes: 8 hex digits fit "tlbgre6" + 8 = 15.
            let h = a.octets().iter().fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
            });
            format!("tlbgre6{h:08x}")
        }
    }
}

fn needs_gre_csum(o: &ObjectPlan) -> bool {
    o.roles.contains(&NodeRole::Backend)
        && o.tunnel
            .is_some_and(|t| t.kind == TunnelKind::Gre && t.flags & TUNNEL_FLAG_CSUM != 0)
}

async fn make_gre_csum(
    links: &Links,
    local: IpAddr,
    state: &mut OwnedState,
    journal: &Journal<'_>,
) -> Result<u64, DeviceError> {
    let name = gre_csum_name(local);
    let mut found = links.find(&name).await?;
    let mut writes = 0;
    if found.is_none() {
        if state.links_created.insert(name.clone())
            && let Err(e) = journal.record(state)
        {
            state.links_created.remove(&name);
            return Err(e.into());
        }
        links.add_gre_csum(&name, local).await?;
        found = links.find(&name).await?;
    }
    let Some(link) = found else {
        return Err(LinkError::MissingInterface(name).into());
    };
    if local.is_ipv4() {
        // Decapsulated packets carry the client's source: reverse-path
        // filtering must be off on the device they arrive on. The device is
        // tunlb's own, so its value needs no record.
        let key = format!("net.ipv4.conf.{name}.rp_filter");
        if sysctl::read(&key).ok().as_deref() != Some("0") {
            sysctl::write(&key, "0")?;
            writes += 1;
        }
    }
    if !link.up {
        links.set_up(link.index, &name).await?;
    }
    Ok(writes)
}

async fn bring_up(
    links: &Links,
    device: TunnelDevice,
    state: &mut OwnedState,
    journal: &Journal<'_>,
) -> Result<(), DeviceError> {
    let name = device.name();
    let mut found = links.find(name).await?;
    if diff(found.as_ref()) == Change::None {
        return Ok(());
    }
    // Recorded before the change: a kill in between leaves a record of a
    // device that may still be down, which release only forgets.
    if state.links_up.insert(name.to_string())
        && let Err(e) = journal.record(state)
    {
        state.links_up.remove(name);
        return Err(e.into());
    }
    if diff(found.as_ref()) == Change::Create {
        links.add_tunnel_device(device).await?;
        found = links.find(name).await?;
    }
    match diff(found.as_ref()) {
        Change::SetUp(index) => Ok(links.set_up(index, name).await?),
        Change::None => Ok(()),
        Change::Create => Err(LinkError::ModuleMissing {
            device: name.to_string(),
            module: device.module(),
            reason: "it did not appear".into(),
        }
        .into()),
    }
}

/// Makes every tunnel device the plan needs exist and be up. Objects that
/// need a device that could not be are told why. Returns false when one
/// could not.
pub async fn sync(
    links: &Links,
    plan: &NodePlan,
    state: &mut OwnedState,
    journal: &Journal<'_>,
    report: &mut SyncReport,
) -> bool {
    let mut ok = true;
    for &device in &plan.tunnel_devices {
        if let Err(e) = bring_up(links, device, state, journal).await {
            ok = false;
            report.error_for(plan, |o| needs(plan, o, device), &e.to_string());
        }
    }
    for &local in &plan.gre_csum {
        match make_gre_csum(links, local, state, journal).await {
            Ok(n) => report.writes.sysctls += n,
            Err(e) => {
                ok = false;
                report.error_for(plan, needs_gre_csum, &e.to_string());
            }
        }
    }
    ok
}

/// Deletes the devices tunlb created and takes down the ones it brought up
/// that the plan no longer needs. Runs after the addresses step, so tunlb's
/// own VIPs are gone by then.
pub async fn release(
    links: &Links,
    plan: &NodePlan,
    state: &mut OwnedState,
    report: &mut SyncReport,
) {
    let unneeded: BTreeSet<String> = state
        .links_up
        .iter()
        .filter(|n| !TunnelDevice::from_name(n).is_some_and(|d| plan.tunnel_devices.contains(&d)))
        .cloned()
        .collect();
    let wanted_created: BTreeSet<String> =
        plan.gre_csum.iter().map(|a| gre_csum_name(*a)).collect();
    let uncreate: Vec<String> = state
        .links_created
        .difference(&wanted_created)
        .cloned()
        .collect();
    if unneeded.is_empty() && uncreate.is_empty() {
        return;
    }
    let (ifaces, addrs) = match links.interfaces_and_addresses().await {
        Ok(r) => r,
        Err(e) => {
            report.node_errors.push(e.to_string());
            return;
        }
    };
    let by_name: BTreeMap<&str, &LinkInfo> =
        ifaces.values().map(|l| (l.name.as_str(), l)).collect();
    for name in uncreate {
        if let Some(l) = by_name.get(name.as_str())
            && let Err(e) = links.delete_link(l.index, &name).await
        {
            report.node_errors.push(e.to_string());
            continue;
        }
        state.links_created.remove(&name);
    }
    for name in unneeded {
        match release_diff(by_name.get(name.as_str()).copied(), &addrs) {
            Release::SetDown(index) => {
                if let Err(e) = links.set_down(index, &name).await {
                    report.node_errors.push(e.to_string());
                    continue;
                }
            }
            Release::Forget => {}
        }
        state.links_up.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn dev(up: bool) -> LinkInfo {
        LinkInfo {
            index: 7,
            name: "gre0".into(),
            up,
            carrier: up,
            mtu: Some(1476),
        }
    }

    fn addr(index: u32, a: &str) -> Address {
        let ip: IpAddr = a.parse().unwrap_or_else(|e| panic!("{a}: {e}"));
        Address::for_test(index, "gre0", ip)
    }

    #[test]
    fn gre_csum_device_names_fit_and_differ() {
        let a = gre_csum_name("192.168.56.183".parse().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(a, "tlbgrec0a838b7");
        let b = gre_csum_name("fd00:56::3".parse().unwrap_or_else(|e| panic!("{e}")));
        let c = gre_csum_name("fd00:56::4".parse().unwrap_or_else(|e| panic!("{e}")));
        assert!(b.len() <= 15 && b.starts_with("tlbgre6"), "{b}");
        assert_ne!(b, c);
    }

    #[test]
    fn creates_brings_up_or_leaves_alone() {
        assert_eq!(diff(None), Change::Create);
        assert_eq!(diff(Some(&dev(false))), Change::SetUp(7));
        assert_eq!(diff(Some(&dev(true))), Change::None);
    }

    #[test]
    fn releases_only_an_unused_device() {
        assert_eq!(release_diff(Some(&dev(true)), &[]), Release::SetDown(7));
        assert_eq!(
            release_diff(Some(&dev(true)), &[addr(7, "fe80::1")]),
            Release::SetDown(7),
            "a link-local address is the kernel's own"
        );
        assert_eq!(
            release_diff(Some(&dev(true)), &[addr(7, "10.7.7.7")]),
            Release::Forget,
            "someone else's address: they use it now"
        );
        assert_eq!(
            release_diff(Some(&dev(true)), &[addr(8, "10.7.7.7")]),
            Release::SetDown(7)
        );
        assert_eq!(release_diff(Some(&dev(false)), &[]), Release::Forget);
        assert_eq!(release_diff(None, &[]), Release::Forget);
    }
}
