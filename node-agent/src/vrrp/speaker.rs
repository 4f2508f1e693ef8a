//! One VRRP virtual router (an interface and a VRID with its set of
//! VIPs) driven by tokio: the pure [`Machine`] decides, this module does the
//! I/O - adverts through [`VrrpSocket`], the VIP addresses through
//! rtnetlink while Master (only the ones it added), announcements after a
//! takeover - and logs every transition.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::announce::{Announce, AnnounceError, Announcer};
use super::machine::{Action, Config as MachineConfig, ConfigError, Machine, State};
use super::packet::{Advert, PacketError};
use super::socket::{Destinations, SocketError, VrrpSocket};
use crate::link::{LinkError, LinkInfo, LinkWatch, Links};

/// keepalived repeats its gratuitous ARPs this long after a takeover
/// (garp_master_delay), for switches that were still learning the first time.
pub const ANNOUNCE_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// The interface's state comes from the kernel's link notifications; it is
/// also read this often, in case a notification was lost (a full socket
/// buffer drops them), and as often as [`LINK_POLL`] when no subscription
/// could be opened.
const LINK_CHECK: Duration = Duration::from_secs(2);
const LINK_POLL: Duration = Duration::from_millis(100);

/// A clash is reported until its speaker has been silent this long, or
/// three of its advert intervals if longer.
const CLASH_HOLD: Duration = Duration::from_secs(3);

/// Something on the segment that contradicts this virtual router. Neither
/// moves the election: a clashing speaker's adverts are ignored, and a split
/// brain is left to priorities as the RFC says; both are reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// A speaker that is not a member advertises this VRID.
    VridClash {
        vrid: u8,
        from: IpAddr,
        addresses: Vec<IpAddr>,
    },
    /// A member keeps advertising as master while this node is master, for
    /// longer than Master_Down_Interval: both hold the VIPs.
    SplitBrain { vrid: u8, with: IpAddr },
}

impl Conflict {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Conflict::VridClash { .. } => "VirtualRouterIdClash",
            Conflict::SplitBrain { .. } => "SplitBrain",
        }
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conflict::VridClash {
                vrid,
                from,
                addresses,
            } => {
                let list: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{from}, not a member of virtual router {vrid}, advertises the same id for [{}]; its adverts are ignored (give this election another virtualRouterId, or that speaker another id)",
                    list.join(", ")
                )
            }
            Conflict::SplitBrain { vrid, with } => write!(
                f,
                "split brain in virtual router {vrid}: {with} keeps advertising as master while this node is master, so both hold the VIPs (it does not hear this node's adverts)"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// Where adverts and announcements go.
    pub interface: String,
    /// Where the VIPs are added while Master; default: `interface`.
    pub vip_interface: Option<String>,
    pub vrid: u8,
    pub priority: u8,
    /// Advertisement interval, centiseconds.
    pub interval_cs: u16,
    pub preempt: bool,
    pub destinations: Destinations,
    /// The only speakers whose adverts are followed; default: the unicast
    /// peers, or (multicast) any speaker naming the same addresses.
    pub members: Option<Vec<IpAddr>>,
    /// The virtual addresses, all of one family.
    pub vips: Vec<IpAddr>,
    /// The source of adverts and the tie breaker; default: the interface's
    /// first address of the VIPs' family (link-local for IPv6 multicast).
    pub source: Option<IpAddr>,
    pub announce: Announce,
    /// A second burst of announcements this long after a takeover.
    pub announce_again_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("VRID must be 1-255, not 0")]
    Vrid,
    #[error("no virtual address given")]
    NoVips,
    #[error("virtual addresses and peers must all be IPv4 or all IPv6: {0}")]
    MixedFamilies(IpAddr),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error(
        "interface {interface} has no {family} address to send adverts from (give one with --source)"
    )]
    NoSource {
        interface: String,
        family: &'static str,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Announce(#[from] AnnounceError),
    #[error("advertisement: {0}")]
    Packet(#[from] PacketError),
}

/// What a speaker counts, for the agent's metrics (clones share values).
#[derive(Clone, Default, Debug)]
pub struct SpeakerStats {
    pub master: prometheus_client::metrics::gauge::Gauge,
    pub transitions: prometheus_client::metrics::counter::Counter,
    pub sent: prometheus_client::metrics::counter::Counter,
    pub received: prometheus_client::metrics::counter::Counter,
    pub other_masters: prometheus_client::metrics::counter::Counter,
    pub takeover_seconds:
        prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    pub split_brain: prometheus_client::metrics::gauge::Gauge,
    pub vrid_clash: prometheus_client::metrics::gauge::Gauge,
}

/// An advert encoded for each of its destinations.
type Encoded = Vec<(IpAddr, Vec<u8>)>;

/// A running virtual router.
pub struct Speaker {
    config: SpeakerConfig,
    machine: Machine,
    socket: VrrpSocket,
    links: Links,
    link: LinkInfo,
    /// The interface holding the VIPs while Master.
    vip_link: LinkInfo,
    announcer: std::sync::Arc<Announcer>,
    /// VIPs this speaker added and so may remove.
    owned: BTreeSet<IpAddr>,
    announcing: Option<JoinHandle<()>>,
    origin: Instant,
    state_tx: watch::Sender<State>,
    /// A new set of VIPs, applied without an election.
    vips_tx: watch::Sender<Vec<IpAddr>>,
    vips_rx: watch::Receiver<Vec<IpAddr>>,
    /// Whether the last advert send failed, so a dead link logs once.
    send_failing: bool,
    stats: SpeakerStats,
    /// When the last advert from another router arrived.
    last_heard: Option<Instant>,
    conflict_tx: watch::Sender<Option<Conflict>>,
    /// The last clashing advert: when, how long it counts, what it said.
    clash: Option<(Instant, Duration, Conflict)>,
    /// Another master heard while master: since when, last heard, who.
    other_master: Option<(Instant, Instant, IpAddr)>,
    /// The last adverts sent, with their priority, by destination.
    encoded: Option<(u8, Encoded)>,
}

impl SpeakerConfig {
    fn validate(&self) -> Result<(), SpeakerError> {
        if self.vrid == 0 {
            return Err(SpeakerError::Vrid);
        }
        let Some(first) = self.vips.first() else {
            return Err(SpeakerError::NoVips);
        };
        let peers = match &self.destinations {
            Destinations::Unicast(p) => p.as_slice(),
            Destinations::Multicast => &[],
        };
        for a in self.vips.iter().chain(peers).chain(self.source.iter()) {
            if a.is_ipv4() != first.is_ipv4() {
                return Err(SpeakerError::MixedFamilies(*a));
            }
        }
        Ok(())
    }

    fn is_v4(&self) -> bool {
        self.vips.first().is_some_and(IpAddr::is_ipv4)
    }
}

fn is_link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

impl Speaker {
    /// Checks the configuration, finds the interface and its source address,
    /// and opens the sockets. Nothing is sent or changed yet.
    pub async fn new(config: SpeakerConfig, links: Links) -> Result<Speaker, SpeakerError> {
        config.validate()?;
        let link = links
            .find(&config.interface)
            .await?
            .ok_or_else(|| SpeakerError::NoInterface(config.interface.clone()))?;
        let vip_link = match &config.vip_interface {
            None => link.clone(),
            Some(name) => links
                .find(name)
                .await?
                .ok_or_else(|| SpeakerError::NoInterface(name.clone()))?,
        };
        let v4 = config.is_v4();
        let source = match config.source {
            Some(s) => s,
            None => {
                let ifaces = links.interfaces().await?;
                let addrs = links.addresses(&ifaces).await?;
                let want_link_local = !v4 && matches!(config.destinations, Destinations::Multicast);
                addrs
                    .iter()
                    .filter(|a| a.index == link.index && a.address.is_ipv4() == v4)
                    .filter(|a| !config.vips.contains(&a.address) && !a.is_tunlb_labelled())
                    .map(|a| a.address)
                    .find(|a| v4 || is_link_local(a) == want_link_local)
                    .ok_or_else(|| SpeakerError::NoSource {
                        interface: config.interface.clone(),
                        family: if v4 { "IPv4" } else { "IPv6" },
                    })?
            }
        };
        let machine = Machine::new(MachineConfig {
            priority: config.priority,
            interval_cs: config.interval_cs,
            preempt: config.preempt,
            primary: source,
        })?;
        let socket = VrrpSocket::open(
            &config.interface,
            link.index,
            config.vrid,
            source,
            matches!(config.destinations, Destinations::Multicast),
        )?;
        let announcer = Announcer::new(&config.interface, link.index, v4, !v4)?;
        let (state_tx, _) = watch::channel(State::Initialize);
        let (vips_tx, vips_rx) = watch::channel(config.vips.clone());
        Ok(Speaker {
            config,
            machine,
            socket,
            links,
            link,
            vip_link,
            announcer: std::sync::Arc::new(announcer),
            owned: BTreeSet::new(),
            announcing: None,
            origin: Instant::now(),
            state_tx,
            vips_tx,
            vips_rx,
            stats: SpeakerStats::default(),
            last_heard: None,
            send_failing: false,
            conflict_tx: watch::channel(None).0,
            clash: None,
            other_master: None,
            encoded: None,
        })
    }

    /// Follows the state (for a caller that runs other work by role).
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.state_tx.subscribe()
    }

    /// Follows what on the segment contradicts this router (None: nothing).
    pub fn conflicts(&self) -> watch::Receiver<Option<Conflict>> {
        self.conflict_tx.subscribe()
    }

    /// Counts into `stats` from now on.
    pub fn with_stats(mut self, stats: SpeakerStats) -> Speaker {
        self.stats = stats;
        self
    }

    /// Changes the VIPs of a running speaker: a master adds the new ones
    /// and removes the dropped ones, and nothing is elected again.
    pub fn vips(&self) -> watch::Sender<Vec<IpAddr>> {
        self.vips_tx.clone()
    }

    async fn set_vips(&mut self, vips: Vec<IpAddr>) {
        if vips.is_empty() || vips == self.config.vips {
            return;
        }
        let dropped: BTreeSet<IpAddr> = self
            .owned
            .iter()
            .filter(|v| !vips.contains(v))
            .copied()
            .collect();
        self.config.vips = vips;
        self.encoded = None;
        if !dropped.is_empty() {
            let kept: BTreeSet<IpAddr> = self.owned.difference(&dropped).copied().collect();
            self.owned = dropped;
            if let Err(e) = self.release().await {
                tracing::error!(error = %e, "remove VIPs dropped from the virtual router");
            }
            self.owned = kept;
        }
        tracing::info!(vrid = self.config.vrid, vips = ?self.config.vips, "virtual router's VIPs changed");
        if self.machine.state() == State::Master {
            self.take().await;
            self.send_advert(self.machine.priority()).await;
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Runs until `stop` resolves, then leaves as a master does (priority 0,
    /// VIPs released). Errors only from a failed release.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<(), SpeakerError> {
        tracing::info!(
            interface = %self.config.interface,
            vrid = self.config.vrid,
            priority = self.config.priority,
            advert_ms = u32::from(self.config.interval_cs) * 10,
            source = %self.socket.source(),
            vips = ?self.config.vips,
            preempt = self.config.preempt,
            "VRRP speaker starting"
        );
        tokio::pin!(stop);
        let mut carrier = self.link.up && self.link.carrier;
        let actions = if carrier {
            self.machine.startup(self.now())
        } else {
            tracing::warn!(interface = %self.config.interface, "interface down: waiting for it");
            Vec::new()
        };
        self.execute(actions).await;
        self.adopt_leftovers().await;
        let mut watch = match LinkWatch::open(self.link.index) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, interface = %self.config.interface, "no link notifications: the interface is polled");
                None
            }
        };
        let mut link_check = tokio::time::interval(if watch.is_some() {
            LINK_CHECK
        } else {
            LINK_POLL
        });
        link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Conflicts end by silence: checked once a second.
        let mut conflict_check = tokio::time::interval(Duration::from_secs(1));
        conflict_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .machine
                .deadline()
                .map(|d| self.origin + d)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            // In this order: an advert that arrived while this task was
            // late comes before the timer it would have reset, so a backup
            // that wakes late never takes over from a live master.
            let link_state = async {
                match watch.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut stop => break,
                got = self.socket.recv() => self.received(got).await,
                Ok(()) = self.vips_rx.changed() => {
                    let vips = self.vips_rx.borrow_and_update().clone();
                    self.set_vips(vips).await;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let actions = self.machine.timer(self.now());
                    self.execute(actions).await;
                }
                _ = conflict_check.tick() => self.expire_conflicts(),
                state = link_state => {
                    match state {
                        Some(now_carrier) => self.carrier_changed(&mut carrier, now_carrier).await,
                        None => {
                            tracing::warn!(interface = %self.config.interface, "link notifications ended: the interface is polled");
                            watch = None;
                            link_check = tokio::time::interval(LINK_POLL);
                        }
                    }
                }
                _ = link_check.tick() => {
                    let now_carrier = match self.links.find(&self.config.interface).await {
                        Ok(Some(l)) => l.up && l.carrier,
                        Ok(None) => false,
                        Err(e) => {
                            tracing::debug!(error = %e, "check the interface");
                            carrier
                        }
                    };
                    self.carrier_changed(&mut carrier, now_carrier).await;
                }
            }
        }
        let actions = self.machine.shutdown();
        let release_failed = self.execute(actions).await;
        // A backup owns nothing, but a release that failed above is retried.
        self.release().await?;
        if release_failed {
            tracing::info!("VIPs released on the second attempt");
        }
        Ok(())
    }

    async fn carrier_changed(&mut self, carrier: &mut bool, now_carrier: bool) {
        if now_carrier == *carrier {
            return;
        }
        *carrier = now_carrier;
        let actions = if now_carrier {
            self.machine.interface_up(self.now())
        } else {
            self.machine.interface_down()
        };
        self.execute(actions).await;
    }

    async fn received(
        &mut self,
        got: Result<Result<super::packet::Received, PacketError>, SocketError>,
    ) {
        let r = match got {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "invalid VRRP packet dropped");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "VRRP receive");
                // A failing socket must not spin the loop.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        };
        if r.source == self.socket.source() || r.advert.vrid != self.config.vrid {
            return;
        }
        if let Err(e) = r.check_hop_limit() {
            tracing::warn!(from = %r.source, error = %e, "VRRP advert dropped");
            return;
        }
        // Peers list the addresses in the same order: compared as sets only
        // when they do not (keepalived keeps its configuration's order).
        let same_addresses = r.advert.addresses == self.config.vips || {
            let theirs: BTreeSet<_> = r.advert.addresses.iter().collect();
            theirs == self.config.vips.iter().collect()
        };
        // With a list of peers, anyone else using the id clashes; without
        // one (multicast), a speaker naming other addresses does: it is
        // another router that picked the same id, and following it would
        // move these VIPs with its election.
        let foreign = match (&self.config.members, &self.config.destinations) {
            (Some(peers), _) | (None, Destinations::Unicast(peers)) => !peers.contains(&r.source),
            (None, Destinations::Multicast) => r.advert.priority != 0 && !same_addresses,
        };
        if foreign {
            self.clashed(&r);
            return;
        }
        if r.advert.priority != 0 && !same_addresses {
            tracing::debug!(from = %r.source, addresses = ?r.advert.addresses, "peer advertises other virtual addresses");
        }
        tracing::trace!(from = %r.source, priority = r.advert.priority, interval_cs = r.advert.interval_cs, "advert");
        self.stats.received.inc();
        self.last_heard = Some(Instant::now());
        if self.machine.state() == State::Master && r.advert.priority != 0 {
            self.stats.other_masters.inc();
        }
        let actions = self.machine.advert(
            self.now(),
            r.source,
            r.advert.priority,
            r.advert.interval_cs,
        );
        self.execute(actions).await;
        if self.machine.state() == State::Master && r.advert.priority != 0 {
            self.other_master_heard(r.source);
        }
    }

    fn clashed(&mut self, r: &super::packet::Received) {
        let conflict = Conflict::VridClash {
            vrid: self.config.vrid,
            from: r.source,
            addresses: r.advert.addresses.clone(),
        };
        let hold = CLASH_HOLD.max(Duration::from_millis(u64::from(r.advert.interval_cs) * 30));
        let new = self.clash.as_ref().is_none_or(|(_, _, c)| *c != conflict);
        if new {
            tracing::warn!(from = %r.source, vrid = self.config.vrid, addresses = ?r.advert.addresses, "VRRP advert for this id from a speaker that is not a member: ignored, reported as a clash");
        }
        self.clash = Some((Instant::now(), hold, conflict));
        self.publish_conflict();
    }

    /// A master that stays master on hearing another one (its priority is
    /// higher) expects the other to yield; one that keeps advertising past
    /// Master_Down_Interval does not hear this node.
    fn other_master_heard(&mut self, from: IpAddr) {
        let now = Instant::now();
        let since = match self.other_master {
            Some((since, _, who)) if who == from => since,
            _ => now,
        };
        self.other_master = Some((since, now, from));
        if now - since >= self.machine.master_down_interval() {
            self.publish_conflict();
        }
    }

    fn expire_conflicts(&mut self) {
        let now = Instant::now();
        if self
            .clash
            .as_ref()
            .is_some_and(|(last, hold, _)| now - *last > *hold)
        {
            tracing::info!(
                vrid = self.config.vrid,
                "the clashing VRRP speaker went quiet"
            );
            self.clash = None;
        }
        let down = self.machine.master_down_interval();
        if self
            .other_master
            .is_some_and(|(_, last, _)| self.machine.state() != State::Master || now - last > down)
        {
            self.other_master = None;
        }
        self.publish_conflict();
    }

    /// The current conflict (a split brain before a clash) to subscribers
    /// and the metrics, when it changed.
    fn publish_conflict(&mut self) {
        let down = self.machine.master_down_interval();
        let split = self
            .other_master
            .filter(|(since, last, _)| *last - *since >= down)
            .map(|(_, _, with)| Conflict::SplitBrain {
                vrid: self.config.vrid,
                with,
            });
        let clash = self.clash.as_ref().map(|(_, _, c)| c.clone());
        self.stats.split_brain.set(i64::from(split.is_some()));
        self.stats.vrid_clash.set(i64::from(clash.is_some()));
        let current = split.or(clash);
        self.conflict_tx.send_if_modified(|c| {
            if *c == current {
                return false;
            }
            match &current {
                Some(Conflict::SplitBrain { with, .. }) => {
                    tracing::warn!(vrid = self.config.vrid, %with, "split brain: another master keeps advertising")
                }
                None if c.is_some() => tracing::info!(vrid = self.config.vrid, "VRRP conflict over"),
                _ => {}
            }
            *c = current.clone();
            true
        });
    }

    /// Does what the machine asked; true if a release failed.
    async fn execute(&mut self, actions: Vec<Action>) -> bool {
        let mut release_failed = false;
        for a in actions {
            match a {
                Action::SendAdvert { priority } => self.send_advert(priority).await,
                Action::TakeAddresses => self.take().await,
                Action::AnnounceAddresses => {
                    // At most one burst at a time, so a peer that keeps
                    // claiming mastership cannot make us flood the segment.
                    if self.announcing.as_ref().is_none_or(JoinHandle::is_finished) {
                        tracing::info!("another master on the segment: VIPs announced again");
                        self.announce();
                    }
                }
                Action::ReleaseAddresses => {
                    if let Err(e) = self.release().await {
                        tracing::error!(error = %e, "release VIPs");
                        release_failed = true;
                    }
                }
                Action::Transition { from, to, reason } => {
                    tracing::info!(
                        interface = %self.config.interface,
                        vrid = self.config.vrid,
                        %from,
                        %to,
                        %reason,
                        master_down_ms = self.machine.master_down_interval().as_secs_f64() * 1000.0,
                        "VRRP transition"
                    );
                    let _ = self.state_tx.send(to);
                    self.stats.transitions.inc();
                    self.stats.master.set(i64::from(to == State::Master));
                    if to == State::Master
                        && let Some(heard) = self.last_heard
                    {
                        self.stats
                            .takeover_seconds
                            .set(heard.elapsed().as_secs_f64());
                    }
                }
            }
        }
        release_failed
    }

    /// The advert for `priority`, encoded for each destination.
    fn encode(&self, priority: u8) -> Result<Encoded, SpeakerError> {
        let advert = Advert {
            vrid: self.config.vrid,
            priority,
            interval_cs: self.config.interval_cs,
            addresses: self.config.vips.clone(),
        };
        self.socket
            .targets(&self.config.destinations)
            .into_iter()
            .map(|to| Ok((to, advert.encode(self.socket.source(), to)?)))
            .collect()
    }

    async fn send_advert(&mut self, priority: u8) {
        // The same bytes go out every interval until the VIPs or the
        // priority change (an advert holds up to 255 addresses).
        let adverts = match self.encoded.take() {
            Some((p, adverts)) if p == priority => Ok(adverts),
            _ => self.encode(priority),
        };
        let mut failed = None;
        match adverts {
            Ok(adverts) => {
                for (to, bytes) in &adverts {
                    match self.socket.send(bytes, *to).await {
                        Ok(()) => {
                            self.stats.sent.inc();
                        }
                        Err(e) => failed = Some(SpeakerError::from(e)),
                    }
                }
                self.encoded = Some((priority, adverts));
            }
            Err(e) => failed = Some(e),
        }
        match (failed, self.send_failing) {
            (Some(e), false) => {
                tracing::warn!(error = %e, "VRRP advert not sent (further failures are logged at debug)");
                self.send_failing = true;
            }
            (Some(e), true) => tracing::debug!(error = %e, "VRRP advert not sent"),
            (None, true) => {
                tracing::info!("VRRP adverts sent again");
                self.send_failing = false;
            }
            (None, false) => {}
        }
    }

    /// Takes over the VIPs carrying tunlb's label that are already on the
    /// VIP interface (left by an agent that was killed, or handed over by
    /// the node's address owner when the VIP became elected): only tunlb
    /// adds labelled addresses. A speaker that did not start as Master
    /// removes them at once, so a backup never answers for a VIP.
    async fn adopt_leftovers(&mut self) {
        match self.present().await {
            Ok(present) => {
                for vip in &self.config.vips {
                    if present.get(vip) == Some(&true) && self.owned.insert(*vip) {
                        tracing::info!(%vip, interface = %self.vip_link.name, "VIP carrying tunlb's label adopted");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "list addresses to adopt labelled VIPs"),
        }
        if self.machine.state() != State::Master
            && !self.owned.is_empty()
            && let Err(e) = self.release().await
        {
            tracing::error!(error = %e, "release VIPs held before the start");
        }
    }

    /// Adds the VIPs this node lacks (those already present without tunlb's
    /// label belong to someone else and stay theirs), then announces all of
    /// them.
    async fn take(&mut self) {
        let present = match self.present().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "list addresses before taking the VIPs");
                BTreeMap::new()
            }
        };
        for vip in self.config.vips.clone() {
            if self.owned.contains(&vip) {
                continue;
            }
            match present.get(&vip) {
                Some(true) => {
                    self.owned.insert(vip);
                    tracing::info!(%vip, interface = %self.vip_link.name, "VIP carrying tunlb's label adopted");
                    continue;
                }
                Some(false) => {
                    tracing::info!(%vip, interface = %self.vip_link.name, "VIP already on the interface and not ours: left as it is");
                    continue;
                }
                None => {}
            }
            match self.links.add_host_address(&self.vip_link, vip).await {
                Ok(()) => {
                    self.owned.insert(vip);
                    tracing::info!(%vip, interface = %self.vip_link.name, "VIP added");
                }
                Err(e) => tracing::error!(%vip, error = %e, "add VIP"),
            }
        }
        self.announce();
    }

    /// Announces the VIPs once now, then starts the rest of the burst (and
    /// its repeat), replacing one in progress. The first round goes out
    /// before the advert that makes a yielding master release them.
    fn announce(&mut self) {
        if let Some(t) = self.announcing.take() {
            t.abort();
        }
        let mut plan = self.config.announce;
        if plan.count > 0 {
            for vip in &self.config.vips {
                if let Err(e) = self.announcer.announce(*vip) {
                    tracing::warn!(%vip, error = %e, "announce VIP");
                }
            }
            plan.count -= 1;
        }
        let announcer = self.announcer.clone();
        let vips = self.config.vips.clone();
        let full = self.config.announce;
        let again = self.config.announce_again_after;
        self.announcing = Some(tokio::spawn(async move {
            if plan.count > 0 {
                tokio::time::sleep(plan.interval).await;
                burst(&announcer, &vips, plan).await;
            }
            if let Some(after) = again {
                tokio::time::sleep(after).await;
                burst(&announcer, &vips, full).await;
            }
        }));
    }

    /// The addresses on the VIP interface, each with whether it carries
    /// tunlb's label.
    async fn present(&self) -> Result<BTreeMap<IpAddr, bool>, LinkError> {
        let ifaces = self.links.interfaces().await?;
        Ok(self
            .links
            .addresses(&ifaces)
            .await?
            .into_iter()
            .filter(|a| a.index == self.vip_link.index)
            .map(|a| (a.address, a.is_tunlb_labelled()))
            .collect())
    }

    /// Removes the VIPs this speaker added.
    async fn release(&mut self) -> Result<(), LinkError> {
        if let Some(t) = self.announcing.take() {
            t.abort();
        }
        if self.owned.is_empty() {
            return Ok(());
        }
        let ifaces = self.links.interfaces().await?;
        let addrs = self.links.addresses(&ifaces).await?;
        for a in addrs
            .iter()
            .filter(|a| a.index == self.vip_link.index && self.owned.contains(&a.address))
        {
            self.links.delete_address(a).await?;
            tracing::info!(vip = %a.address, interface = %self.vip_link.name, "VIP removed");
        }
        self.owned.clear();
        Ok(())
    }
}

async fn burst(announcer: &Announcer, vips: &[IpAddr], plan: Announce) {
    for i in 0..plan.count {
        if i > 0 && !plan.interval.is_zero() {
            tokio::time::sleep(plan.interval).await;
        }
        for vip in vips {
            if let Err(e) = announcer.announce(*vip) {
                tracing::warn!(%vip, error = %e, "announce VIP");
            }
        }
    }
    tracing::debug!(count = plan.count, "VIPs announced");
}
