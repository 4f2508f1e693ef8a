//! VIP addresses: on tunl0 (IPv4) or ip6tnl0 (IPv6) for backends, on the
//! VIP interface for directors. Only addresses tunlb added are ever removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tracing::{info, warn};
use tunlb_api::plan::{NodePlan, ObjectPlan, TunnelDevice};

use super::SyncReport;
use crate::link::{Address, LinkError, LinkInfo, Links};
use crate::state::{Journal, OwnedAddress, OwnedState};

/// An address on an interface, by interface name.
pub type Binding = (String, IpAddr);

/// What to do to the kernel's addresses.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub add: Vec<(LinkInfo, IpAddr)>,
    /// Owned addresses no longer wanted that the kernel holds.
    pub remove: Vec<Address>,
    /// Owned addresses no longer wanted that the kernel no longer holds:
    /// only the record goes.
    pub forget: Vec<OwnedAddress>,
    /// Wanted on an interface the node does not have.
    pub missing_interface: Vec<Binding>,
}

/// Compares the wanted addresses with the kernel's; removes only what
/// `owned` says tunlb added.
pub fn diff(
    wanted: &BTreeSet<Binding>,
    links: &BTreeMap<u32, LinkInfo>,
    in_kernel: &[Address],
    owned: &BTreeSet<OwnedAddress>,
) -> Changes {
    let by_name: BTreeMap<&str, &LinkInfo> = links.values().map(|l| (l.name.as_str(), l)).collect();
    let mut out = Changes::default();
    for (iface, address) in wanted {
        let Some(link) = by_name.get(iface.as_str()) else {
            out.missing_interface.push((iface.clone(), *address));
            continue;
        };
        let present = in_kernel
            .iter()
            .any(|a| a.index == link.index && a.address == *address);
        if !present {
            out.add.push(((*link).clone(), *address));
        }
    }
    for o in owned {
        if wanted.contains(&(o.interface.clone(), o.address)) {
            continue;
        }
        match in_kernel
            .iter()
            .find(|a| a.interface == o.interface && a.address == o.address)
        {
            Some(a) => out.remove.push(a.clone()),
            None => out.forget.push(o.clone()),
        }
    }
    out
}

/// Addresses that carry tunlb's label: only tunlb adds them, so they are
/// tunlb's even when no record says so.
pub fn adoptable(addrs: &[Address]) -> Vec<OwnedAddress> {
    addrs
        .iter()
        .filter(|a| a.is_tunlb_labelled())
        .map(|a| OwnedAddress {
            interface: a.interface.clone(),
            address: a.address,
        })
        .collect()
}

/// The addresses this node holds after this pass. Backends hold their VIPs
/// on their family's tunnel device. A director holds a VIP only while a service tunlb owns serves
/// it (`served`), so it never answers ARP for a VIP it cannot balance; an
/// owned address of a deleted VirtualService stays while its service
/// drains. When the IPVS services could not be read (`served` is `None`),
/// the addresses of VIPs tunlb has services for (`service_vips`) stay as
/// they are and none is added. A backend VIP whose port mapping is not
/// written (`mapped` false for it) is not added either: a VIP without its
/// DNAT would refuse the mapped ports. Returns the bindings and, for
/// each VIP the plan asks for but that is not held, why.
pub fn wanted(
    plan: &NodePlan,
    elected: &BTreeSet<Binding>,
    owned: &BTreeSet<OwnedAddress>,
    in_kernel: &[Address],
    served: Option<&BTreeSet<IpAddr>>,
    service_vips: &BTreeSet<IpAddr>,
    mapped: impl Fn(&IpAddr) -> bool,
) -> (BTreeSet<Binding>, Vec<(IpAddr, String)>) {
    let held = |iface: &str, address: IpAddr| {
        in_kernel
            .iter()
            .any(|a| a.interface == iface && a.address == address)
    };
    let mut want: BTreeSet<Binding> = plan
        .backend_vips
        .iter()
        .filter(|a| mapped(a) || held(TunnelDevice::vip_holder(**a).name(), **a))
        .map(|a| (TunnelDevice::vip_holder(*a).name().to_string(), *a))
        .collect();
    let mut withheld = Vec::new();
    let planned: BTreeSet<IpAddr> = plan.director_vips.iter().map(|b| b.address).collect();
    match served {
        Some(served) => {
            for b in &plan.director_vips {
                if elected.contains(&(b.interface.clone(), b.address)) {
                    continue;
                }
                if served.contains(&b.address) {
                    want.insert((b.interface.clone(), b.address));
                } else {
                    withheld.push((
                        b.address,
                        format!(
                            "VIP {} is not held on {}: none of its IPVS services is programmed",
                            b.address, b.interface
                        ),
                    ));
                }
            }
            want.extend(
                owned
                    .iter()
                    .filter(|o| !planned.contains(&o.address) && served.contains(&o.address))
                    .map(|o| (o.interface.clone(), o.address)),
            );
        }
        None => want.extend(
            owned
                .iter()
                .filter(|o| service_vips.contains(&o.address))
                .filter(|o| held(&o.interface, o.address))
                .map(|o| (o.interface.clone(), o.address)),
        ),
    }
    (want, withheld)
}

/// Brings the node's VIP addresses in line with `plan`, leaving the
/// `elected` ones to their director election. Returns whether the
/// kernel's addresses were read (a rebuild of ownership took place if one
/// was due).
#[allow(clippy::too_many_arguments)]
pub async fn sync(
    links: &Links,
    plan: &NodePlan,
    elected: &BTreeSet<Binding>,
    served: Option<&BTreeSet<IpAddr>>,
    mapped: &dyn Fn(&IpAddr) -> bool,
    state: &mut OwnedState,
    journal: &Journal<'_>,
    report: &mut SyncReport,
) -> bool {
    let (ifaces, addrs) = match links.interfaces_and_addresses().await {
        Ok(r) => r,
        Err(e) => {
            report.node_errors.push(e.to_string());
            return false;
        }
    };
    if state.rebuild {
        let mut adopted = 0;
        for a in adoptable(&addrs) {
            if state.addresses.insert(a.clone()) {
                info!(vip = %a.address, interface = %a.interface, "adopted VIP address: it carries tunlb's label");
                adopted += 1;
            }
        }
        if adopted > 0 {
            warn!(
                addresses = adopted,
                "ownership rebuilt: adopted addresses carrying tunlb's label"
            );
        }
    }
    // An elected VIP changes hands: its speaker adopts the labelled
    // address (or removes it on a standby), so only the record goes here.
    state
        .addresses
        .retain(|o| !elected.contains(&(o.interface.clone(), o.address)));
    let service_vips: BTreeSet<IpAddr> = state.ipvs_services.iter().map(|k| k.vip).collect();
    let (want, withheld) = wanted(
        plan,
        elected,
        &state.addresses,
        &addrs,
        served,
        &service_vips,
        mapped,
    );
    for (vip, why) in withheld {
        report.error_for(plan, owns(vip), &why);
    }
    for b in &plan.director_vips {
        if let Some(l) = ifaces.values().find(|l| l.name == b.interface)
            && !l.up
        {
            warn!(interface = %b.interface, "VIP interface is down");
        }
    }
    let changes = diff(&want, &ifaces, &addrs, &state.addresses);
    for (iface, vip) in &changes.missing_interface {
        report.error_for(
            plan,
            owns(*vip),
            &LinkError::MissingInterface(iface.clone()).to_string(),
        );
    }

    // What is added is recorded as owned, durably, before the first write.
    let mut add = changes.add;
    let intents: Vec<OwnedAddress> = add
        .iter()
        .map(|(link, vip)| OwnedAddress {
            interface: link.name.clone(),
            address: *vip,
        })
        .filter(|o| !state.addresses.contains(o))
        .collect();
    if !intents.is_empty() {
        state.addresses.extend(intents.iter().cloned());
        if let Err(e) = journal.record(state) {
            for o in &intents {
                state.addresses.remove(o);
            }
            let msg = format!("cannot record ownership before adding addresses: {e}");
            let vips: BTreeSet<IpAddr> = add.iter().map(|(_, v)| *v).collect();
            report.error_for(plan, |o| o.vip.is_some_and(|v| vips.contains(&v)), &msg);
            add.clear();
        }
    }
    for (link, vip) in add {
        match links.add_host_address(&link, vip).await {
            Ok(()) => info!(%vip, interface = %link.name, "added VIP"),
            Err(e) => {
                state.addresses.remove(&OwnedAddress {
                    interface: link.name.clone(),
                    address: vip,
                });
                report.error_for(plan, owns(vip), &e.to_string());
            }
        }
    }
    for a in changes.remove {
        if let Err(e) = links.delete_address(&a).await {
            report.node_errors.push(e.to_string());
            continue;
        }
        info!(vip = %a.address, interface = %a.interface, "removed VIP");
        state.addresses.remove(&OwnedAddress {
            interface: a.interface.clone(),
            address: a.address,
        });
    }
    for o in changes.forget {
        state.addresses.remove(&o);
    }
    true
}

fn owns(vip: IpAddr) -> impl Fn(&ObjectPlan) -> bool {
    move |o| o.vip == Some(vip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUNL0: &str = "tunl0";
    use tunlb_api::plan::VipBinding;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    fn link(index: u32, name: &str) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            up: true,
            carrier: true,
            mtu: Some(1500),
        }
    }

    fn links() -> BTreeMap<u32, LinkInfo> {
        BTreeMap::from([(2, link(2, "eth0")), (3, link(3, TUNL0))])
    }

    fn owned(items: &[(&str, &str)]) -> BTreeSet<OwnedAddress> {
        items
            .iter()
            .map(|(i, a)| OwnedAddress {
                interface: (*i).into(),
                address: ip(a),
            })
            .collect()
    }

    fn binding(i: &str, a: &str) -> Binding {
        (i.into(), ip(a))
    }

    fn in_kernel(items: &[(&str, &str)]) -> Vec<Address> {
        items
            .iter()
            .map(|(i, a)| Address::for_test(if *i == "eth0" { 2 } else { 3 }, i, ip(a)))
            .collect()
    }

    #[test]
    fn adds_what_is_missing_and_removes_only_what_is_owned() {
        let want = BTreeSet::from([binding(TUNL0, "10.0.0.1"), binding("eth0", "10.0.0.2")]);
        let kernel = in_kernel(&[
            ("eth0", "10.0.0.2"),
            ("eth0", "192.168.1.5"),
            (TUNL0, "10.0.0.9"),
        ]);
        let mine = owned(&[
            ("eth0", "10.0.0.2"),
            (TUNL0, "10.0.0.9"),
            (TUNL0, "10.0.0.7"),
        ]);
        let c = diff(&want, &links(), &kernel, &mine);
        assert_eq!(c.add, vec![(link(3, TUNL0), ip("10.0.0.1"))]);
        assert_eq!(
            c.remove.iter().map(|a| a.address).collect::<Vec<_>>(),
            vec![ip("10.0.0.9")]
        );
        assert_eq!(
            c.forget,
            owned(&[(TUNL0, "10.0.0.7")])
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert!(c.missing_interface.is_empty());
    }

    #[test]
    fn unchanged_is_no_change_and_a_missing_interface_is_named() {
        let want = BTreeSet::from([binding("eth0", "10.0.0.2"), binding("bond0", "10.0.0.3")]);
        let kernel = in_kernel(&[("eth0", "10.0.0.2")]);
        let c = diff(&want, &links(), &kernel, &owned(&[("eth0", "10.0.0.2")]));
        assert!(c.add.is_empty() && c.remove.is_empty() && c.forget.is_empty());
        assert_eq!(c.missing_interface, vec![binding("bond0", "10.0.0.3")]);
    }

    fn director_plan(vips: &[&str]) -> NodePlan {
        NodePlan {
            director_vips: vips
                .iter()
                .map(|v| VipBinding {
                    address: ip(v),
                    interface: "eth0".into(),
                })
                .collect(),
            backend_vips: BTreeSet::from([ip("10.9.9.9")]),
            ..NodePlan::default()
        }
    }

    #[test]
    fn a_director_holds_only_served_vips() {
        let plan = director_plan(&["10.0.0.1", "10.0.0.2"]);
        let served = BTreeSet::from([ip("10.0.0.1")]);
        let (want, withheld) = wanted(
            &plan,
            &BTreeSet::new(),
            &BTreeSet::new(),
            &[],
            Some(&served),
            &served,
            |_| true,
        );
        assert_eq!(
            want,
            BTreeSet::from([binding("eth0", "10.0.0.1"), binding(TUNL0, "10.9.9.9")])
        );
        assert_eq!(withheld.len(), 1);
        assert_eq!(withheld[0].0, ip("10.0.0.2"));
        assert!(
            withheld[0].1.contains("none of its IPVS services"),
            "{}",
            withheld[0].1
        );
    }

    #[test]
    fn a_draining_deleted_service_keeps_its_vip() {
        let plan = director_plan(&["10.0.0.7"]);
        let mine = owned(&[
            (TUNL0, "10.0.0.5"),
            ("eth0", "10.0.0.6"),
            ("eth1", "10.0.0.7"),
        ]);
        let served = BTreeSet::from([ip("10.0.0.5"), ip("10.0.0.7")]);
        let (want, _) = wanted(
            &plan,
            &BTreeSet::new(),
            &mine,
            &[],
            Some(&served),
            &served,
            |_| true,
        );
        assert!(want.contains(&binding(TUNL0, "10.0.0.5")));
        assert!(!want.contains(&binding("eth0", "10.0.0.6")));
        // A planned VIP that moved interface is held only where planned.
        assert!(want.contains(&binding("eth0", "10.0.0.7")));
        assert!(!want.contains(&binding("eth1", "10.0.0.7")));
    }

    #[test]
    fn unknown_services_freeze_director_vips() {
        let plan = director_plan(&["10.0.0.1", "10.0.0.2"]);
        let mine = owned(&[
            ("eth0", "10.0.0.1"),
            ("eth0", "10.0.0.3"),
            ("eth0", "10.0.0.4"),
        ]);
        let kernel = in_kernel(&[
            ("eth0", "10.0.0.1"),
            ("eth0", "10.0.0.3"),
            ("eth0", "10.0.0.4"),
        ]);
        // 10.0.0.4 has no service of ours: it is not a director VIP of ours.
        let service_vips = BTreeSet::from([ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")]);
        let (want, withheld) = wanted(
            &plan,
            &BTreeSet::new(),
            &mine,
            &kernel,
            None,
            &service_vips,
            |_| true,
        );
        // Held ones stay, nothing new is added, nothing is reported withheld.
        assert_eq!(
            want,
            BTreeSet::from([
                binding("eth0", "10.0.0.1"),
                binding("eth0", "10.0.0.3"),
                binding(TUNL0, "10.9.9.9")
            ])
        );
        assert!(withheld.is_empty());
    }

    #[test]
    fn no_new_backend_vip_without_its_port_mapping() {
        let mut plan = director_plan(&[]);
        plan.backend_vips.insert(ip("10.9.9.8"));
        let kernel = in_kernel(&[(TUNL0, "10.9.9.9")]);
        let mine = owned(&[(TUNL0, "10.9.9.9")]);
        let none = BTreeSet::new();
        let want_when_mapped = |mapped: bool| {
            wanted(
                &plan,
                &BTreeSet::new(),
                &mine,
                &kernel,
                Some(&none),
                &none,
                |_| mapped,
            )
            .0
        };
        // The one already held stays; the new one waits for its DNAT.
        assert_eq!(
            want_when_mapped(false),
            BTreeSet::from([binding(TUNL0, "10.9.9.9")])
        );
        assert_eq!(want_when_mapped(true).len(), 2);
    }
}
