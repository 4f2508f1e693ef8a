//! Director elections in Kubernetes mode: the VRRP speakers this node runs
//! for the VIPs it directs with other nodes. The operator sets each
//! VirtualService's election (virtual router id, members, priorities);
//! this module runs one speaker per virtual router this node is a member
//! of, with the VIPs of all its VirtualServices, and reports per object
//! whether this node holds the VIP. Speakers elect on their own: no API
//! server is needed once they run.
//!
//! Without Kubernetes, `serve --peer` computes the elections itself
//! ([`standalone`]) from the manifests every director serves alike.
//!
//! [`wanted`] is pure; [`Elections`] starts, restarts and stops speakers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use tunlb_api::plan::ObjectKey;
use tunlb_api::{DirectorState, ElectionConflict, ElectionStatus, VirtualServiceSpec};

use crate::link::Links;
use crate::metrics::{AgentMetrics, RouterLabels};
use crate::vrrp::announce::Announce;
use crate::vrrp::machine::State;
use crate::vrrp::socket::Destinations;
use crate::vrrp::speaker::{Conflict, Speaker, SpeakerConfig};
use crate::vrrp::thread::{SpeakerThread, ThreadError};

/// Another director, named on the command line (`serve --peer
/// NAME=ADDRESS`), or this node as the peers name it: a name and its
/// addresses (one per family at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

impl tunlb_api::election::Candidate for Peer {
    fn name(&self) -> &str {
        &self.name
    }

    fn address(&self, ipv4: bool) -> Option<IpAddr> {
        self.addresses.iter().copied().find(|a| a.is_ipv4() == ipv4)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error(
        "--peer {0:?}: expected NAME=ADDRESS (the other director's node name and the address its adverts come from)"
    )]
    Syntax(String),
    #[error("--peer {given:?}: {name} already has an {family} address")]
    SecondAddress {
        given: String,
        name: String,
        family: &'static str,
    },
}

/// Reads `--peer NAME=ADDRESS` values; a peer given twice (IPv4 and IPv6)
/// is one peer with both addresses.
pub fn parse_peers(values: &[String]) -> Result<Vec<Peer>, PeerError> {
    let mut peers: Vec<Peer> = Vec::new();
    for v in values {
        let (name, address) = v
            .split_once('=')
            .filter(|(n, _)| !n.is_empty())
            .and_then(|(n, a)| Some((n, a.parse::<IpAddr>().ok()?)))
            .ok_or_else(|| PeerError::Syntax(v.clone()))?;
        match peers.iter_mut().find(|p| p.name == name) {
            Some(p) if p.addresses.iter().any(|a| a.is_ipv4() == address.is_ipv4()) => {
                return Err(PeerError::SecondAddress {
                    given: v.clone(),
                    name: name.to_string(),
                    family: if address.is_ipv4() { "IPv4" } else { "IPv6" },
                });
            }
            Some(p) => p.addresses.push(address),
            None => peers.push(Peer {
                name: name.to_string(),
                addresses: vec![address],
            }),
        }
    }
    Ok(peers)
}

/// This node's addresses for an election with `peers`: per family, its
/// address on the subnet of a peer's address of that family.
pub fn own_addresses(name: &str, addresses: &[crate::link::Address], peers: &[Peer]) -> Peer {
    let on_subnet = |a: &crate::link::Address, peer: &IpAddr| {
        ipnet::IpNet::new(a.address, a.prefix_len)
            .is_ok_and(|net| net.contains(peer) && a.address != *peer)
    };
    let mut own: Vec<IpAddr> = Vec::new();
    for peer in peers.iter().flat_map(|p| &p.addresses) {
        if own.iter().any(|o| o.is_ipv4() == peer.is_ipv4()) {
            continue;
        }
        if let Some(a) = addresses
            .iter()
            .filter(|a| !a.is_tunlb_labelled())
            .find(|a| on_subnet(a, peer))
        {
            own.push(a.address);
        }
    }
    Peer {
        name: name.to_string(),
        addresses: own,
    }
}

/// Standalone: the elections of the objects this node (`me`) directs,
/// with `peers` directing them too. Every director serves the same
/// manifests and names the others, so each computes the same members,
/// priorities and virtual router ids (objects in key order, as the
/// operator's registry assigns them). Why an object gets none is returned
/// by object.
pub fn standalone<'a>(
    me: &Peer,
    peers: &[Peer],
    directed: impl IntoIterator<Item = (&'a ObjectKey, &'a VirtualServiceSpec)>,
) -> (
    BTreeMap<ObjectKey, ElectionStatus>,
    BTreeMap<ObjectKey, String>,
) {
    let mut candidates: Vec<&Peer> = vec![me];
    candidates.extend(peers);
    let mut registry = tunlb_api::election::Registry::default();
    let mut elections = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut directed: Vec<_> = directed.into_iter().collect();
    directed.sort_by(|a, b| a.0.cmp(b.0));
    for (key, spec) in directed {
        let Ok(vip) = spec.vip.parse::<IpAddr>() else {
            continue;
        };
        let assigned = tunlb_api::election::wanted(vip, spec, &candidates)
            .and_then(|g| g.map(|g| registry.assign(key, vip, g, None)).transpose());
        match assigned {
            Ok(Some(e)) => {
                elections.insert(key.clone(), e);
            }
            Ok(None) => {}
            Err(e) => {
                errors.insert(key.clone(), format!("election: {e}"));
            }
        }
    }
    (elections, errors)
}

/// A virtual router: VRRP ids are per address family.
pub type RouterKey = (bool, u8);

/// What this node runs for one virtual router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub vip_interface: String,
    /// This node's address in the election: adverts come from it, on the
    /// interface that holds it.
    pub source: IpAddr,
    pub peers: Vec<IpAddr>,
    pub priority: u8,
    pub interval_cs: u16,
    pub preempt: bool,
    pub announce: Announce,
    /// Adverts to the VRRP group instead of to each peer.
    pub multicast: bool,
    pub vips: BTreeSet<IpAddr>,
    pub objects: BTreeSet<ObjectKey>,
}

/// One VirtualService this node directs, as `wanted` reads it.
pub struct Directed<'a> {
    pub key: &'a ObjectKey,
    pub spec: &'a VirtualServiceSpec,
    pub election: &'a ElectionStatus,
}

/// Routers with an object whose programming failed on this node step back
/// (priority 1), so a backup that carries traffic holds their VIPs.
pub fn step_back(routers: &mut BTreeMap<RouterKey, Router>, failed: impl Fn(&ObjectKey) -> bool) {
    for r in routers.values_mut() {
        if r.objects.iter().any(&failed) {
            r.priority = 1;
        }
    }
}

/// The virtual routers `node` takes part in, and why some object's
/// election cannot run here.
pub fn wanted<'a>(
    node: &str,
    directed: impl IntoIterator<Item = Directed<'a>>,
) -> (BTreeMap<RouterKey, Router>, BTreeMap<ObjectKey, String>) {
    let mut routers: BTreeMap<RouterKey, Router> = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for d in directed {
        let e = d.election;
        let Ok(vip) = d.spec.vip.parse::<IpAddr>() else {
            continue;
        };
        let Some(me) = e.directors.iter().find(|m| m.node_name == node) else {
            continue;
        };
        if e.directors.len() < 2 {
            continue;
        }
        let Ok(source) = me.address.parse::<IpAddr>() else {
            errors.insert(
                d.key.clone(),
                format!(
                    "election: this node's address {:?} does not parse",
                    me.address
                ),
            );
            continue;
        };
        let peers: Vec<IpAddr> = e
            .directors
            .iter()
            .filter(|m| m.node_name != node)
            .filter_map(|m| m.address.parse().ok())
            .collect();
        let router = Router {
            vip_interface: d.spec.directors.vip_interface(vip.is_ipv6()).to_string(),
            source,
            peers,
            priority: me.priority,
            interval_cs: (e.advert_interval_ms / 10).clamp(1, 4095) as u16,
            preempt: e.preempt,
            announce: Announce {
                count: e.announce_count,
                interval: Duration::from_millis(u64::from(e.announce_interval_ms)),
            },
            multicast: e.multicast,
            vips: BTreeSet::from([vip]),
            objects: BTreeSet::from([d.key.clone()]),
        };
        let key = (vip.is_ipv4(), e.virtual_router_id);
        match routers.get_mut(&key) {
            None => {
                routers.insert(key, router);
            }
            Some(r) => {
                let same = r.vip_interface == router.vip_interface
                    && r.source == router.source
                    && r.peers == router.peers
                    && r.interval_cs == router.interval_cs
                    && r.preempt == router.preempt
                    && r.multicast == router.multicast;
                if same {
                    r.vips.extend(router.vips);
                    r.objects.extend(router.objects);
                } else {
                    errors.insert(
                        d.key.clone(),
                        format!(
                            "election: virtual router {} already runs here with other members or settings",
                            e.virtual_router_id
                        ),
                    );
                }
            }
        }
    }
    // The operator splits bigger groups; a router over the limit here could
    // not send a single advert.
    routers.retain(|(ipv4, vrid), r| {
        let max = tunlb_api::max_router_vips(*ipv4);
        if r.vips.len() <= max {
            return true;
        }
        for key in &r.objects {
            errors.insert(
                key.clone(),
                format!(
                    "election: virtual router {vrid} would carry {} VIPs, more than the {max} one advert holds",
                    r.vips.len()
                ),
            );
        }
        false
    });
    (routers, errors)
}

impl Router {
    /// Whether `other` differs only in its VIPs and objects, which a
    /// running speaker takes without an election.
    fn same_election(&self, other: &Router) -> bool {
        self.vip_interface == other.vip_interface
            && self.source == other.source
            && self.peers == other.peers
            && self.priority == other.priority
            && self.interval_cs == other.interval_cs
            && self.preempt == other.preempt
            && self.announce == other.announce
            && self.multicast == other.multicast
    }
}

struct Running {
    router: Router,
    vips: watch::Sender<Vec<IpAddr>>,
    stop: Option<oneshot::Sender<()>>,
    state: watch::Receiver<State>,
    conflict: watch::Receiver<Option<Conflict>>,
    /// When the state last changed.
    since: Arc<std::sync::Mutex<SystemTime>>,
    task: JoinHandle<()>,
}

/// The speakers this node runs, on a thread of their own.
pub struct Elections {
    links: Links,
    thread: SpeakerThread,
    metrics: Arc<AgentMetrics>,
    /// Notified on every transition, so a pass reports it.
    wake: Arc<Notify>,
    running: BTreeMap<RouterKey, Running>,
    /// Why a router could not start, by its objects.
    failed: BTreeMap<ObjectKey, String>,
}

impl Elections {
    pub fn new(
        links: Links,
        wake: Arc<Notify>,
        metrics: Arc<AgentMetrics>,
    ) -> Result<Elections, ThreadError> {
        Ok(Elections {
            links,
            thread: SpeakerThread::start()?,
            metrics,
            wake,
            running: BTreeMap::new(),
            failed: BTreeMap::new(),
        })
    }

    /// Starts the routers that are new, stops the others. A router whose
    /// VIPs changed takes them as it runs; one whose members, priority or
    /// settings changed restarts: it leaves as a master does (priority 0,
    /// VIPs released) and starts again.
    pub async fn apply(&mut self, want: BTreeMap<RouterKey, Router>) {
        let stale: Vec<RouterKey> = self
            .running
            .iter()
            .filter(|(k, r)| {
                r.task.is_finished() || !want.get(k).is_some_and(|w| w.same_election(&r.router))
            })
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            if let Some(r) = self.running.remove(&k) {
                stop(r).await;
                self.metrics.forget_vrrp(&labels(k));
            }
        }
        self.failed.clear();
        for (key, router) in want {
            if let Some(r) = self.running.get_mut(&key) {
                if r.router != router {
                    r.vips.send_replace(router.vips.iter().copied().collect());
                    r.router = router;
                }
                continue;
            }
            match self.start(key, router.clone()).await {
                Ok(r) => {
                    self.running.insert(key, r);
                }
                Err(e) => {
                    warn!(vrid = key.1, error = %e, "cannot start the VRRP speaker");
                    for o in &router.objects {
                        self.failed.insert(
                            o.clone(),
                            format!("election (virtual router {}): {e}", key.1),
                        );
                    }
                }
            }
        }
    }

    async fn start(&self, key: RouterKey, router: Router) -> Result<Running, String> {
        let interface = self
            .interface_of(router.source)
            .await?
            .ok_or_else(|| format!("no interface holds this node's address {}", router.source))?;
        let config = SpeakerConfig {
            interface,
            vip_interface: Some(router.vip_interface.clone()),
            vrid: key.1,
            priority: router.priority,
            interval_cs: router.interval_cs,
            preempt: router.preempt,
            destinations: if router.multicast {
                Destinations::Multicast
            } else {
                Destinations::Unicast(router.peers.clone())
            },
            members: Some(router.peers.clone()),
            vips: router.vips.iter().copied().collect(),
            source: Some(router.source),
            announce: router.announce,
            announce_again_after: Some(crate::vrrp::speaker::ANNOUNCE_AGAIN_AFTER),
        };
        // Opened on the thread, so its sockets are that runtime's.
        let links = self.thread.links();
        let speaker = self
            .thread
            .spawn(async move { Speaker::new(config, links).await })
            .await
            .map_err(|e| format!("VRRP thread: {e}"))?
            .map_err(|e| e.to_string())?
            .with_stats(self.metrics.vrrp(&labels(key)));
        let mut state = speaker.subscribe();
        let conflict = speaker.conflicts();
        let vips = speaker.vips();
        let (tx, rx) = oneshot::channel::<()>();
        let task = self.thread.spawn(async move {
            if let Err(e) = speaker
                .run(async {
                    let _ = rx.await;
                })
                .await
            {
                warn!(vrid = key.1, error = %e, "VRRP speaker ended with an error");
            }
        });
        // Each transition is timed and wakes a pass, which reports it.
        let wake = self.wake.clone();
        let since = Arc::new(std::sync::Mutex::new(SystemTime::now()));
        let stamp = since.clone();
        let mut follow = state.clone();
        let mut conflicts = conflict.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = follow.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        *stamp.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();
                    }
                    changed = conflicts.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
                wake.notify_one();
            }
        });
        state.mark_changed();
        info!(vrid = key.1, vips = ?router.vips, priority = router.priority, peers = ?router.peers, "VRRP speaker started");
        Ok(Running {
            router,
            vips,
            stop: Some(tx),
            state,
            conflict,
            since,
            task,
        })
    }

    async fn interface_of(&self, address: IpAddr) -> Result<Option<String>, String> {
        let ifaces = self.links.interfaces().await.map_err(|e| e.to_string())?;
        let addrs = self
            .links
            .addresses(&ifaces)
            .await
            .map_err(|e| e.to_string())?;
        Ok(addrs
            .into_iter()
            .find(|a| a.address == address)
            .map(|a| a.interface))
    }

    /// The VIP bindings the speakers own (held or not).
    pub fn elected(&self, want: &BTreeMap<RouterKey, Router>) -> BTreeSet<(String, IpAddr)> {
        want.values()
            .flat_map(|r| r.vips.iter().map(|v| (r.vip_interface.clone(), *v)))
            .collect()
    }

    /// Per object: whether this node holds its VIP now, and since when
    /// (RFC 3339).
    pub fn states(&self) -> BTreeMap<ObjectKey, (DirectorState, String)> {
        let mut out = BTreeMap::new();
        for r in self.running.values() {
            let state = match *r.state.borrow() {
                State::Master => DirectorState::Active,
                State::Backup | State::Initialize => DirectorState::Standby,
            };
            let since = millis_rfc3339(*r.since.lock().unwrap_or_else(|p| p.into_inner()));
            for o in &r.router.objects {
                out.insert(o.clone(), (state, since.clone()));
            }
        }
        out
    }

    /// Per object: what on the segment contradicts its election now.
    pub fn conflicts(&self) -> BTreeMap<ObjectKey, ElectionConflict> {
        let mut out = BTreeMap::new();
        for r in self.running.values() {
            let Some(c) = r.conflict.borrow().clone() else {
                continue;
            };
            let conflict = ElectionConflict {
                reason: c.reason().to_string(),
                message: c.to_string(),
            };
            for o in &r.router.objects {
                out.insert(o.clone(), conflict.clone());
            }
        }
        out
    }

    /// Why an object's election does not run here.
    pub fn errors(&self) -> &BTreeMap<ObjectKey, String> {
        &self.failed
    }

    /// Stops every speaker: each master hands over at once (priority 0)
    /// and removes its VIPs.
    pub async fn shutdown(&mut self) {
        for (_, r) in std::mem::take(&mut self.running) {
            stop(r).await;
        }
    }
}

/// RFC 3339 with milliseconds: two directors' takeovers are often within
/// one second of each other.
fn millis_rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(0))
        .map(|t| format!("{t:.3}"))
        .unwrap_or_default()
}

fn labels((ipv4, vrid): RouterKey) -> RouterLabels {
    RouterLabels {
        vrid: vrid.to_string(),
        family: if ipv4 { "ipv4" } else { "ipv6" }.into(),
    }
}

async fn stop(mut r: Running) {
    if let Some(tx) = r.stop.take() {
        let _ = tx.send(());
    }
    if tokio::time::timeout(Duration::from_secs(5), &mut r.task)
        .await
        .is_err()
    {
        warn!("VRRP speaker did not stop within 5 s; aborted");
        r.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunlb_api::ElectionMember;

    fn spec(vip: &str) -> VirtualServiceSpec {
        serde_yaml::from_str(&format!(
            "vip: {vip}\nports: [{{port: 80}}]\nbackends: {{static: [{{address: 10.1.0.1}}]}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn peers_parse_by_name_with_one_address_per_family() {
        let peers = parse_peers(&[
            "d2=10.9.0.2".into(),
            "d3=10.9.0.3".into(),
            "d2=fd00::2".into(),
        ])
        .unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(
            peers[0].addresses,
            vec![
                "10.9.0.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        for bad in ["d2", "=10.9.0.2", "d2=10.9.0", "d2:10.9.0.2"] {
            assert!(
                matches!(parse_peers(&[bad.into()]), Err(PeerError::Syntax(_))),
                "{bad}"
            );
        }
        let err = parse_peers(&["d2=10.9.0.2".into(), "d2=10.9.0.4".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--peer \"d2=10.9.0.4\": d2 already has an IPv4 address"
        );
    }

    #[test]
    fn own_address_is_the_one_on_a_peers_subnet() {
        let mut lan = crate::link::Address::for_test(2, "eth0", "192.168.56.181".parse().unwrap());
        lan.prefix_len = 24;
        let mut other = crate::link::Address::for_test(3, "eth1", "10.0.0.5".parse().unwrap());
        other.prefix_len = 8;
        let peers = parse_peers(&["d2=192.168.56.182".into()]).unwrap();
        let me = own_addresses("d1", &[other, lan], &peers);
        assert_eq!(
            me.addresses,
            vec!["192.168.56.181".parse::<IpAddr>().unwrap()]
        );
        let far = parse_peers(&["d2=172.16.0.2".into()]).unwrap();
        assert!(own_addresses("d1", &[], &far).addresses.is_empty());
    }

    #[test]
    fn standalone_directors_compute_the_same_elections() {
        let d1 = Peer {
            name: "d1".into(),
            addresses: vec!["10.9.0.1".parse().unwrap()],
        };
        let d2 = Peer {
            name: "d2".into(),
            addresses: vec!["10.9.0.2".parse().unwrap()],
        };
        let objects: Vec<(ObjectKey, VirtualServiceSpec)> = (1..=40)
            .map(|i| {
                (
                    ObjectKey::new("default", format!("vs{i}")),
                    spec(&format!("10.50.0.{i}")),
                )
            })
            .collect();
        let on =
            |me: &Peer, peers: &[Peer]| standalone(me, peers, objects.iter().map(|(k, s)| (k, s)));
        let (from_d1, e1) = on(&d1, std::slice::from_ref(&d2));
        let (from_d2, e2) = on(&d2, std::slice::from_ref(&d1));
        assert!(e1.is_empty() && e2.is_empty());
        assert_eq!(from_d1.len(), 40);
        assert_eq!(from_d1, from_d2);
        // Masters are spread over both, and each master's VIPs share one id.
        let mut ids: BTreeMap<String, BTreeSet<u8>> = BTreeMap::new();
        for e in from_d1.values() {
            ids.entry(e.directors[0].node_name.clone())
                .or_default()
                .insert(e.virtual_router_id);
        }
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.values().all(|s| s.len() == 1), "{ids:?}");
        // Each runs its routers from them.
        let directed = from_d1.iter().map(|(key, election)| Directed {
            key,
            spec: &objects.iter().find(|(k, _)| k == key).unwrap().1,
            election,
        });
        let (routers, errors) = wanted("d1", directed);
        assert!(errors.is_empty());
        assert_eq!(routers.len(), 2);
        assert_eq!(routers.values().map(|r| r.vips.len()).sum::<usize>(), 40);
    }

    #[test]
    fn a_peer_without_an_address_of_the_vips_family_is_named() {
        let me = Peer {
            name: "d1".into(),
            addresses: vec!["10.9.0.1".parse().unwrap()],
        };
        let peer = Peer {
            name: "d2".into(),
            addresses: vec!["fd00::2".parse().unwrap()],
        };
        let key = ObjectKey::new("default", "web");
        let s = spec("10.50.0.1");
        let (elections, errors) = standalone(&me, &[peer], [(&key, &s)]);
        assert!(elections.is_empty());
        assert_eq!(
            errors.get(&key).map(String::as_str),
            Some(
                "election: director d2 has no IPv4 address to send VRRP adverts from (in Kubernetes: an InternalIP; standalone: one on the subnet of a --peer address)"
            )
        );
    }

    fn election(id: u8, members: &[(&str, &str, u8)]) -> ElectionStatus {
        ElectionStatus {
            virtual_router_id: id,
            advert_interval_ms: 200,
            preempt: true,
            announce_count: 5,
            announce_interval_ms: 0,
            multicast: false,
            directors: members
                .iter()
                .map(|(n, a, p)| ElectionMember {
                    node_name: n.to_string(),
                    address: a.to_string(),
                    priority: *p,
                })
                .collect(),
            active_director: None,
        }
    }

    #[test]
    fn a_router_with_more_vips_than_an_advert_holds_is_refused_by_name() {
        let e = election(9, &[("d1", "10.9.0.1", 200), ("d2", "10.9.0.2", 150)]);
        let n = tunlb_api::MAX_ROUTER_VIPS_V4 + 1;
        let keys: Vec<ObjectKey> = (0..n)
            .map(|i| ObjectKey::new("ns", format!("o{i}").as_str()))
            .collect();
        let specs: Vec<VirtualServiceSpec> = (0..n)
            .map(|i| spec(&std::net::Ipv4Addr::from(0x0a00_0000 + i as u32).to_string()))
            .collect();
        let (routers, errors) = wanted(
            "d1",
            keys.iter().zip(&specs).map(|(key, spec)| Directed {
                key,
                spec,
                election: &e,
            }),
        );
        assert!(routers.is_empty());
        assert_eq!(errors.len(), n);
        assert!(
            errors[&keys[0]].contains("virtual router 9 would carry 256 VIPs, more than the 255"),
            "{errors:?}"
        );
    }

    #[test]
    fn one_router_per_id_with_the_vips_of_all_its_objects() {
        let e = election(9, &[("d1", "10.9.0.1", 200), ("d2", "10.9.0.2", 150)]);
        let (a, b) = (ObjectKey::new("ns", "a"), ObjectKey::new("ns", "b"));
        let (sa, sb) = (spec("10.0.0.1"), spec("10.0.0.2"));
        let (routers, errors) = wanted(
            "d2",
            [
                Directed {
                    key: &a,
                    spec: &sa,
                    election: &e,
                },
                Directed {
                    key: &b,
                    spec: &sb,
                    election: &e,
                },
            ],
        );
        assert!(errors.is_empty());
        let r = &routers[&(true, 9)];
        assert_eq!(r.priority, 150);
        assert_eq!(r.peers, vec!["10.9.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.source, "10.9.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(r.vips.len(), 2);
        assert_eq!(r.vip_interface, "tunl0");
        assert_eq!(r.interval_cs, 20);
    }

    #[test]
    fn a_failed_object_steps_its_router_back_and_non_members_run_nothing() {
        let e = election(9, &[("d1", "10.9.0.1", 200), ("d2", "10.9.0.2", 150)]);
        let a = ObjectKey::new("ns", "a");
        let sa = spec("10.0.0.1");
        let (mut routers, _) = wanted(
            "d1",
            [Directed {
                key: &a,
                spec: &sa,
                election: &e,
            }],
        );
        assert_eq!(routers[&(true, 9)].priority, 200);
        step_back(&mut routers, |k| *k == ObjectKey::new("ns", "other"));
        assert_eq!(
            routers[&(true, 9)].priority,
            200,
            "only its own objects count"
        );
        step_back(&mut routers, |k| *k == a);
        assert_eq!(routers[&(true, 9)].priority, 1);
        let (routers, _) = wanted(
            "rs1",
            [Directed {
                key: &a,
                spec: &sa,
                election: &e,
            }],
        );
        assert!(routers.is_empty());
        let alone = election(9, &[("d1", "10.9.0.1", 200)]);
        let (routers, _) = wanted(
            "d1",
            [Directed {
                key: &a,
                spec: &sa,
                election: &alone,
            }],
        );
        assert!(routers.is_empty());
    }

    #[test]
    fn one_id_with_other_members_is_named() {
        let e1 = election(9, &[("d1", "10.9.0.1", 200), ("d2", "10.9.0.2", 150)]);
        let e2 = election(9, &[("d1", "10.9.0.1", 200), ("d3", "10.9.0.3", 150)]);
        let (a, b) = (ObjectKey::new("ns", "a"), ObjectKey::new("ns", "b"));
        let (sa, sb) = (spec("10.0.0.1"), spec("10.0.0.2"));
        let (routers, errors) = wanted(
            "d1",
            [
                Directed {
                    key: &a,
                    spec: &sa,
                    election: &e1,
                },
                Directed {
                    key: &b,
                    spec: &sb,
                    election: &e2,
                },
            ],
        );
        assert_eq!(routers[&(true, 9)].vips.len(), 1);
        assert!(errors[&b].contains("virtual router 9"), "{errors:?}");
    }

    #[test]
    fn transition_times_keep_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(millis_rfc3339(t), "1970-01-01T00:00:01.500Z");
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(2);
        assert_eq!(millis_rfc3339(whole), "1970-01-01T00:00:02.000Z");
    }
}
