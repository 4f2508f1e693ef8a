//! Director elections. When two or more nodes direct a VirtualService, their
//! agents elect the one that holds the VIP by VRRP version 3; the operator
//! (or, without Kubernetes, each agent serving the same manifests with its
//! peers named) says who takes part, with what priority, and under which
//! virtual router id. VIPs with the same directors, master and settings share one virtual
//! router (so a few ids serve many VIPs); the master of each VIP is picked
//! by a hash of the VIP and the node names, so different VIPs get different
//! masters, unless the user prefers a node.
//!
//! [`wanted`] is pure; [`Registry`] keeps the ids unique per address family
//! and stable: a group keeps the id it was given (or, after a restart, the
//! one its objects' status shows) for as long as any object is in it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::{ElectionMember, ElectionStatus, ObjectKey, VirtualServiceSpec, max_router_vips};

/// A node that may direct a VIP, as an election sees it.
pub trait Candidate {
    fn name(&self) -> &str;
    /// Its address of the family (`ipv4` or not) adverts come from.
    fn address(&self, ipv4: bool) -> Option<IpAddr>;
}

/// The master's priority; backups get [`BACKUP_PRIORITY`] and below, in
/// hash order. 255 is reserved (the address owner) and 0 means "leaving".
pub const MASTER_PRIORITY: u8 = 200;
pub const BACKUP_PRIORITY: u8 = 150;

/// What one VirtualService's directors elect with; equal keys share one
/// virtual router.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Group {
    pub ipv4: bool,
    pub members: Vec<(String, IpAddr, u8)>,
    pub advert_interval_ms: u32,
    pub preempt: bool,
    pub announce_count: u32,
    pub announce_interval_ms: u32,
    pub multicast: bool,
    /// Set by the user; otherwise assigned.
    pub requested_id: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    #[error(
        "spec.directors.election.preferredNode: node {0} is not one of this VirtualService's directors ({1})"
    )]
    PreferredNotDirector(String, String),
    #[error(
        "director {node} has no {family} address to send VRRP adverts from (in Kubernetes: an InternalIP; standalone: one on the subnet of a --peer address)"
    )]
    NoAddress { node: String, family: &'static str },
    #[error(
        "spec.directors.election.virtualRouterId: {id} is already used by VirtualService {by}, whose directors or election settings differ"
    )]
    IdInUse { id: u8, by: String },
    #[error(
        "no VRRP virtual router id is free: all 255 {family} ids are used by other director elections; set spec.directors.election.virtualRouterId on VirtualServices that can share one"
    )]
    NoIdFree { family: &'static str },
    #[error(
        "VirtualService {by} on the same VIP elects among other directors or with other settings; VirtualServices sharing a VIP must share its election"
    )]
    VipElectsElsewhere { by: String },
    #[error(
        "spec.directors.election.virtualRouterId: virtual router {id} carries {cap} VIPs already, the most one advert holds; give further VIPs another virtualRouterId or none"
    )]
    RouterFull { id: u8, cap: usize },
}

impl ElectionError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ElectionError::PreferredNotDirector(..) => "PreferredNodeNotDirector",
            ElectionError::NoAddress { .. } => "DirectorWithoutAddress",
            ElectionError::IdInUse { .. } => "VirtualRouterIdInUse",
            ElectionError::NoIdFree { .. } => "NoVirtualRouterIdFree",
            ElectionError::VipElectsElsewhere { .. } => "ElectionMismatch",
            ElectionError::RouterFull { .. } => "VirtualRouterFull",
        }
    }
}

/// FNV-1a over the VIP and a node name, then MurmurHash3's 64-bit
/// finaliser (node names often differ only in their last byte, which FNV
/// alone spreads poorly): a hash that stays the same across builds and
/// platforms, which a master placement must.
fn placement(vip: IpAddr, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vip.to_string().bytes().chain([0]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The election `spec`'s directors (`directors`, as selected now) run for
/// `vip`; `None` with fewer than two.
pub fn wanted<C: Candidate>(
    vip: IpAddr,
    spec: &VirtualServiceSpec,
    directors: &[&C],
) -> Result<Option<Group>, ElectionError> {
    let settings = spec.directors.election.clone().unwrap_or_default();
    if directors.len() < 2 {
        if let Some(p) = &settings.preferred_node
            && !directors.iter().any(|d| d.name() == p)
        {
            return Err(ElectionError::PreferredNotDirector(
                p.clone(),
                names(directors),
            ));
        }
        return Ok(None);
    }
    let ipv4 = vip.is_ipv4();
    let mut ranked: Vec<(&str, IpAddr, u64)> = Vec::with_capacity(directors.len());
    for d in directors {
        let address = d.address(ipv4).ok_or_else(|| ElectionError::NoAddress {
            node: d.name().to_string(),
            family: if ipv4 { "IPv4" } else { "IPv6" },
        })?;
        ranked.push((d.name(), address, placement(vip, d.name())));
    }
    ranked.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    if let Some(p) = &settings.preferred_node {
        let Some(at) = ranked.iter().position(|(d, _, _)| d == p) else {
            return Err(ElectionError::PreferredNotDirector(
                p.clone(),
                names(directors),
            ));
        };
        let preferred = ranked.remove(at);
        ranked.insert(0, preferred);
    }
    let members = ranked
        .iter()
        .enumerate()
        .map(|(i, (d, address, _))| {
            let priority = match i {
                0 => MASTER_PRIORITY,
                // At most 150 backups: more directors than that share the lowest.
                i => BACKUP_PRIORITY.saturating_sub((i - 1).min(149) as u8),
            };
            (d.to_string(), *address, priority)
        })
        .collect();
    Ok(Some(Group {
        ipv4,
        members,
        advert_interval_ms: settings.advert_interval_ms(),
        preempt: settings.preempt(),
        announce_count: settings.announce_count(),
        announce_interval_ms: settings.announce_interval_ms.unwrap_or(0),
        multicast: settings.multicast.unwrap_or(false),
        requested_id: settings.virtual_router_id,
    }))
}

fn names<C: Candidate>(directors: &[&C]) -> String {
    if directors.is_empty() {
        return "none selected".into();
    }
    directors
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One virtual router of a group.
#[derive(Default)]
struct Router {
    objects: BTreeSet<ObjectKey>,
    /// Its VIPs, each with the number of objects on it.
    vips: BTreeMap<IpAddr, usize>,
}

struct Membership {
    group: Group,
    vip: IpAddr,
    id: u8,
}

/// Virtual router ids in use, by group, and which objects are in each.
#[derive(Default)]
pub struct Registry {
    /// Each group's virtual routers by id.
    groups: BTreeMap<Group, BTreeMap<u8, Router>>,
    objects: BTreeMap<ObjectKey, Membership>,
    /// The group and virtual router of each VIP.
    vips: BTreeMap<IpAddr, (Group, u8)>,
}

impl Registry {
    /// Puts `key` (with its VIP) in `group` and returns the election its
    /// agents run. `prior`: the id its status shows, kept when still free.
    pub fn assign(
        &mut self,
        key: &ObjectKey,
        vip: IpAddr,
        group: Group,
        prior: Option<u8>,
    ) -> Result<ElectionStatus, ElectionError> {
        if let Some(m) = self.objects.get(key)
            && (m.group != group || m.vip != vip)
        {
            self.forget(key);
        }
        let id = match self.vips.get(&vip) {
            Some((other, _)) if *other != group => {
                let by = self
                    .objects
                    .iter()
                    .find(|(k, m)| m.vip == vip && *k != key)
                    .map(|(k, _)| k.to_string())
                    .unwrap_or_default();
                return Err(ElectionError::VipElectsElsewhere { by });
            }
            Some((_, id)) => *id,
            None => self.router_with_room(&group, prior)?,
        };
        let router = self
            .groups
            .entry(group.clone())
            .or_default()
            .entry(id)
            .or_default();
        if router.objects.insert(key.clone()) {
            *router.vips.entry(vip).or_insert(0) += 1;
        }
        self.vips.insert(vip, (group.clone(), id));
        self.objects.insert(
            key.clone(),
            Membership {
                group: group.clone(),
                vip,
                id,
            },
        );
        Ok(ElectionStatus {
            virtual_router_id: id,
            advert_interval_ms: group.advert_interval_ms,
            preempt: group.preempt,
            announce_count: group.announce_count,
            announce_interval_ms: group.announce_interval_ms,
            multicast: group.multicast,
            directors: group
                .members
                .iter()
                .map(|(n, a, p)| ElectionMember {
                    node_name: n.clone(),
                    address: a.to_string(),
                    priority: *p,
                })
                .collect(),
            active_director: None,
        })
    }

    /// Takes `key` out of its group; a virtual router left empty frees its id.
    pub fn forget(&mut self, key: &ObjectKey) {
        let Some(m) = self.objects.remove(key) else {
            return;
        };
        let Some(routers) = self.groups.get_mut(&m.group) else {
            return;
        };
        if let Some(r) = routers.get_mut(&m.id) {
            r.objects.remove(key);
            if let Some(n) = r.vips.get_mut(&m.vip) {
                *n -= 1;
                if *n == 0 {
                    r.vips.remove(&m.vip);
                    self.vips.remove(&m.vip);
                }
            }
            if r.objects.is_empty() {
                routers.remove(&m.id);
            }
        }
        if routers.is_empty() {
            self.groups.remove(&m.group);
        }
    }

    /// The id of a virtual router of `group` that has room for one more
    /// VIP: the prior one, else the first with room, else a new one.
    fn router_with_room(&self, group: &Group, prior: Option<u8>) -> Result<u8, ElectionError> {
        let cap = max_router_vips(group.ipv4);
        if let Some(routers) = self.groups.get(group) {
            let roomy = |id: &u8| routers.get(id).is_some_and(|r| r.vips.len() < cap);
            if let Some(id) = prior.filter(roomy) {
                return Ok(id);
            }
            if let Some((id, _)) = routers.iter().find(|(_, r)| r.vips.len() < cap) {
                return Ok(*id);
            }
            if let Some(id) = group.requested_id {
                return Err(ElectionError::RouterFull { id, cap });
            }
        }
        self.free_id(group, prior)
    }

    fn free_id(&self, group: &Group, prior: Option<u8>) -> Result<u8, ElectionError> {
        let used: BTreeMap<u8, &Router> = self
            .groups
            .iter()
            .filter(|(g, _)| g.ipv4 == group.ipv4)
            .flat_map(|(_, routers)| routers.iter().map(|(id, r)| (*id, r)))
            .collect();
        let requested: BTreeSet<u8> = self
            .groups
            .keys()
            .filter(|g| g.ipv4 == group.ipv4)
            .filter_map(|g| g.requested_id)
            .collect();
        if let Some(id) = group.requested_id {
            return match used.get(&id) {
                None => Ok(id),
                Some(r) => Err(ElectionError::IdInUse {
                    id,
                    by: r
                        .objects
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                }),
            };
        }
        if let Some(id) = prior.filter(|id| *id != 0 && !used.contains_key(id)) {
            return Ok(id);
        }
        // Assigned ids count down from 255, so that ids users pick (often
        // small, as in keepalived's examples) rarely meet them.
        (1..=255u8)
            .rev()
            .find(|id| !used.contains_key(id) && !requested.contains(id))
            .ok_or(ElectionError::NoIdFree {
                family: if group.ipv4 { "IPv4" } else { "IPv6" },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Election;

    struct Node {
        name: String,
        ip: IpAddr,
    }

    impl Candidate for Node {
        fn name(&self) -> &str {
            &self.name
        }
        fn address(&self, ipv4: bool) -> Option<IpAddr> {
            (self.ip.is_ipv4() == ipv4).then_some(self.ip)
        }
    }

    fn node(name: &str, ip: &str) -> Node {
        Node {
            name: name.into(),
            ip: ip.parse().unwrap(),
        }
    }

    fn spec(election: Option<Election>) -> VirtualServiceSpec {
        let mut s: VirtualServiceSpec = serde_yaml::from_str(
            "vip: 10.0.0.1\nports: [{port: 80}]\nbackends: {static: [{address: 10.1.0.1}]}\n",
        )
        .unwrap();
        s.directors.election = election;
        s
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn key(n: &str) -> ObjectKey {
        ObjectKey::new("default", n)
    }

    #[test]
    fn one_director_elects_nothing() {
        let d = node("d1", "10.9.0.1");
        assert_eq!(wanted(ip("10.0.0.1"), &spec(None), &[&d]), Ok(None));
    }

    #[test]
    fn masters_spread_over_directors_and_the_order_is_stable() {
        let (d1, d2) = (node("d1", "10.9.0.1"), node("d2", "10.9.0.2"));
        let mut masters = BTreeMap::new();
        for i in 1..=200 {
            let vip = ip(&format!("10.0.{}.{}", i / 100, i % 100 + 1));
            let g = wanted(vip, &spec(None), &[&d1, &d2]).unwrap().unwrap();
            // The order of the candidates does not matter.
            assert_eq!(
                Some(g.clone()),
                wanted(vip, &spec(None), &[&d2, &d1]).unwrap()
            );
            assert_eq!(g.members[0].2, MASTER_PRIORITY);
            assert_eq!(g.members[1].2, BACKUP_PRIORITY);
            *masters.entry(g.members[0].0.clone()).or_insert(0) += 1;
        }
        assert_eq!(
            masters.len(),
            2,
            "both directors are masters of some VIPs: {masters:?}"
        );
        assert!(masters.values().all(|n| *n >= 80), "{masters:?}");
        // The seed's VIPs, on the lab's two directors: both are masters.
        let (a, b) = (
            node("director", "192.168.56.181"),
            node("director2", "192.168.56.182"),
        );
        let seed: BTreeSet<String> = ["192.168.56.185", "192.168.56.187"]
            .iter()
            .map(|v| {
                wanted(ip(v), &spec(None), &[&a, &b])
                    .unwrap()
                    .unwrap()
                    .members[0]
                    .0
                    .clone()
            })
            .collect();
        assert_eq!(seed.len(), 2, "{seed:?}");
    }

    #[test]
    fn a_preferred_node_is_master_and_must_be_a_director() {
        let (d1, d2) = (node("d1", "10.9.0.1"), node("d2", "10.9.0.2"));
        for preferred in ["d1", "d2"] {
            let e = Election {
                preferred_node: Some(preferred.into()),
                ..Default::default()
            };
            for i in 1..=5 {
                let g = wanted(
                    ip(&format!("10.0.0.{i}")),
                    &spec(Some(e.clone())),
                    &[&d1, &d2],
                )
                .unwrap()
                .unwrap();
                assert_eq!(g.members[0].0, preferred);
            }
        }
        let e = Election {
            preferred_node: Some("rs1".into()),
            ..Default::default()
        };
        let err = wanted(ip("10.0.0.1"), &spec(Some(e)), &[&d1, &d2]).unwrap_err();
        assert_eq!(err.reason(), "PreferredNodeNotDirector");
        assert!(err.to_string().contains("node rs1 is not one of"), "{err}");
        assert!(err.to_string().contains("(d1, d2)"), "{err}");
    }

    #[test]
    fn a_director_without_an_address_of_the_family_is_named() {
        let (d1, d2) = (node("d1", "10.9.0.1"), node("d2", "10.9.0.2"));
        let mut s = spec(None);
        s.vip = "2001:db8::1".into();
        let err = wanted(ip("2001:db8::1"), &s, &[&d1, &d2]).unwrap_err();
        assert!(
            err.to_string()
                .contains("director d1 has no IPv6 address to send VRRP adverts from"),
            "{err}"
        );
    }

    #[test]
    fn groups_share_ids_which_stay_unique_stable_and_are_freed() {
        let (d1, d2) = (node("d1", "10.9.0.1"), node("d2", "10.9.0.2"));
        let mut r = Registry::default();
        let mut by_master: BTreeMap<String, u8> = BTreeMap::new();
        for i in 1..=20 {
            let vip = ip(&format!("10.0.0.{i}"));
            let g = wanted(vip, &spec(None), &[&d1, &d2]).unwrap().unwrap();
            let master = g.members[0].0.clone();
            let e = r.assign(&key(&format!("vs{i}")), vip, g, None).unwrap();
            let id = *by_master.entry(master).or_insert(e.virtual_router_id);
            assert_eq!(e.virtual_router_id, id, "one id per master");
        }
        let ids: BTreeSet<u8> = by_master.values().copied().collect();
        assert_eq!(ids.len(), 2, "{by_master:?}");
        // Re-assigning an object changes nothing.
        let vip = ip("10.0.0.1");
        let g = wanted(vip, &spec(None), &[&d1, &d2]).unwrap().unwrap();
        let again = r.assign(&key("vs1"), vip, g.clone(), None).unwrap();
        assert!(ids.contains(&again.virtual_router_id));
        // After a restart, the id in the status is kept.
        let mut fresh = Registry::default();
        assert_eq!(
            fresh
                .assign(&key("vs1"), vip, g.clone(), Some(7))
                .unwrap()
                .virtual_router_id,
            7
        );
        // Forgetting every object of a group frees its id.
        let mut one = Registry::default();
        let first = one
            .assign(&key("a"), vip, g.clone(), None)
            .unwrap()
            .virtual_router_id;
        one.forget(&key("a"));
        let mut other = g.clone();
        other.advert_interval_ms = 100;
        assert_eq!(
            one.assign(&key("b"), ip("10.0.0.2"), other, None)
                .unwrap()
                .virtual_router_id,
            first
        );
    }

    #[test]
    fn a_group_too_big_for_one_advert_runs_more_routers_and_keeps_each_vip_on_its_own() {
        let (d1, d2) = (node("d1", "10.9.0.1"), node("d2", "fd00::1"));
        let (d3, d4) = (node("d3", "10.9.0.3"), node("d4", "fd00::2"));
        let mut r = Registry::default();
        // The same members for every VIP: a preferred master.
        let preferred = spec(Some(Election {
            preferred_node: Some("d1".into()),
            ..Default::default()
        }));
        let mut ids: BTreeMap<u8, usize> = BTreeMap::new();
        let mut of: BTreeMap<IpAddr, u8> = BTreeMap::new();
        for i in 0..600u32 {
            let vip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let g = wanted(vip, &preferred, &[&d1, &d3]).unwrap().unwrap();
            let id = r
                .assign(&key(&format!("vs{i}")), vip, g, None)
                .unwrap()
                .virtual_router_id;
            *ids.entry(id).or_default() += 1;
            of.insert(vip, id);
        }
        let mut sizes: Vec<usize> = ids.values().copied().collect();
        sizes.sort_unstable();
        assert_eq!(
            sizes,
            vec![
                600 - 2 * crate::MAX_ROUTER_VIPS_V4,
                crate::MAX_ROUTER_VIPS_V4,
                crate::MAX_ROUTER_VIPS_V4
            ],
            "{ids:?}"
        );
        // A second object on a VIP joins that VIP's router, full or not.
        let vip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000));
        let g = wanted(vip, &preferred, &[&d1, &d3]).unwrap().unwrap();
        let again = r.assign(&key("second"), vip, g.clone(), None).unwrap();
        assert_eq!(again.virtual_router_id, of[&vip]);
        // A VIP leaving makes room, and a VIP whose status names that
        // router (after a restart) goes back to it.
        r.forget(&key("vs1"));
        let full = of[&IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0001))];
        let new = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_1000));
        let g = wanted(new, &preferred, &[&d1, &d3]).unwrap().unwrap();
        assert_eq!(
            r.assign(&key("new"), new, g, Some(full))
                .unwrap()
                .virtual_router_id,
            full
        );
        // A requested id holds at most one advert's worth.
        let fixed = spec(Some(Election {
            preferred_node: Some("d1".into()),
            virtual_router_id: Some(9),
            ..Default::default()
        }));
        let mut r = Registry::default();
        for i in 0..crate::MAX_ROUTER_VIPS_V4 as u32 {
            let vip = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            let g = wanted(vip, &fixed, &[&d1, &d3]).unwrap().unwrap();
            r.assign(&key(&format!("f{i}")), vip, g, None).unwrap();
        }
        let vip = ip("11.1.0.0");
        let g = wanted(vip, &fixed, &[&d1, &d3]).unwrap().unwrap();
        let err = r.assign(&key("over"), vip, g, None).unwrap_err();
        assert_eq!(err.reason(), "VirtualRouterFull");
        assert!(
            err.to_string()
                .contains("virtualRouterId: virtual router 9 carries 255"),
            "{err}"
        );
        // IPv6 adverts hold fewer.
        let mut r = Registry::default();
        let mut v6: BTreeSet<u8> = BTreeSet::new();
        for i in 0..(crate::MAX_ROUTER_VIPS_V6 as u16 + 1) {
            let vip = IpAddr::V6(std::net::Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, i + 1));
            let g = wanted(vip, &preferred_v6(), &[&d2, &d4]).unwrap().unwrap();
            v6.insert(
                r.assign(&key(&format!("s{i}")), vip, g, None)
                    .unwrap()
                    .virtual_router_id,
            );
        }
        assert_eq!(v6.len(), 2, "{v6:?}");
    }

    fn preferred_v6() -> VirtualServiceSpec {
        spec(Some(Election {
            preferred_node: Some("d2".into()),
            ..Default::default()
        }))
    }

    #[test]
    fn requested_ids_clash_by_name_and_vips_share_one_election() {
        let (d1, d2, d3) = (
            node("d1", "10.9.0.1"),
            node("d2", "10.9.0.2"),
            node("d3", "10.9.0.3"),
        );
        let fixed = |id| {
            spec(Some(Election {
                virtual_router_id: Some(id),
                ..Default::default()
            }))
        };
        let mut r = Registry::default();
        let vip = ip("10.0.0.1");
        let a = wanted(vip, &fixed(51), &[&d1, &d2]).unwrap().unwrap();
        assert_eq!(
            r.assign(&key("a"), vip, a.clone(), None)
                .unwrap()
                .virtual_router_id,
            51
        );
        // Another VIP, other directors, the same id: refused, naming the holder.
        let vip2 = ip("10.0.0.2");
        let b = wanted(vip2, &fixed(51), &[&d2, &d3]).unwrap().unwrap();
        let err = r.assign(&key("b"), vip2, b, None).unwrap_err();
        assert_eq!(err.reason(), "VirtualRouterIdInUse");
        assert!(err.to_string().contains("default/a"), "{err}");
        // A second VirtualService on the VIP with the same election joins it...
        assert_eq!(
            r.assign(&key("a2"), vip, a, None)
                .unwrap()
                .virtual_router_id,
            51
        );
        // ... one with other directors is refused.
        let c = wanted(vip, &fixed(51), &[&d1, &d3]).unwrap().unwrap();
        let err = r.assign(&key("c"), vip, c, None).unwrap_err();
        assert_eq!(err.reason(), "ElectionMismatch");
        // Assigned ids avoid requested ones.
        let d = wanted(vip2, &spec(None), &[&d2, &d3]).unwrap().unwrap();
        let id = r
            .assign(&key("d"), vip2, d, Some(51))
            .unwrap()
            .virtual_router_id;
        assert_ne!(id, 51);
    }

    #[test]
    fn ids_run_out_with_a_named_reason() {
        let mut r = Registry::default();
        let nodes: Vec<Node> = (0..2)
            .map(|i| node(&format!("d{i}"), &format!("10.9.0.{i}")))
            .collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        for i in 0..255u32 {
            let vip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let mut g = wanted(vip, &spec(None), &refs).unwrap().unwrap();
            g.advert_interval_ms = 10 * (i + 1);
            r.assign(&key(&format!("vs{i}")), vip, g, None).unwrap();
        }
        let vip = ip("10.1.0.0");
        let mut g = wanted(vip, &spec(None), &refs).unwrap().unwrap();
        g.advert_interval_ms = 40950;
        let err = r.assign(&key("last"), vip, g, None).unwrap_err();
        assert_eq!(err.reason(), "NoVirtualRouterIdFree");
    }
}
