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
use crate::link::{LinkError, LinkInfo, Links};

/// keepalived repeats its gratuitous ARPs this long after a takeover
/// (garp_master_delay), for switches that were still learning the first time.
pub const ANNOUNCE_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// How often the interface's state is read: a lost carrier releases the
/// VIPs within this (keepalived follows netlink events instead).
const LINK_CHECK: Duration = Duration::from_millis(100);

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
}

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
        })
    }

    /// Follows the state (for a caller that runs other work by role).
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.state_tx.subscribe()
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
        let mut link_check = tokio::time::interval(LINK_CHECK);
        link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .machine
                .deadline()
                .map(|d| self.origin + d)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(deadline) => {
                    let actions = self.machine.timer(self.now());
                    self.execute(actions).await;
                }
                got = self.socket.recv() => self.received(got).await,
                Ok(()) = self.vips_rx.changed() => {
                    let vips = self.vips_rx.borrow_and_update().clone();
                    self.set_vips(vips).await;
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
                    if now_carrier != carrier {
                        carrier = now_carrier;
                        let actions = if carrier {
                            self.machine.interface_up(self.now())
                        } else {
                            self.machine.interface_down()
                        };
                        self.execute(actions).await;
                    }
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
        if let Destinations::Unicast(peers) = &self.config.destinations
            && !peers.contains(&r.source)
        {
            tracing::debug!(from = %r.source, "VRRP advert from a non-peer dropped");
            return;
        }
        if r.advert.priority != 0 {
            let theirs: BTreeSet<_> = r.advert.addresses.iter().collect();
            let ours: BTreeSet<_> = self.config.vips.iter().collect();
            if theirs != ours {
                tracing::debug!(from = %r.source, addresses = ?r.advert.addresses, "peer advertises other virtual addresses");
            }
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

    async fn send_advert(&mut self, priority: u8) {
        let advert = Advert {
            vrid: self.config.vrid,
            priority,
            interval_cs: self.config.interval_cs,
            addresses: self.config.vips.clone(),
        };
        let mut failed = None;
        for to in self.socket.targets(&self.config.destinations) {
            let sent = match advert.encode(self.socket.source(), to) {
                Ok(bytes) => self
                    .socket
                    .send(&bytes, to)
                    .await
                    .map_err(SpeakerError::from),
                Err(e) => Err(e.into()),
            };
            match sent {
                Ok(()) => {
                    self.stats.sent.inc();
                }
                Err(e) => failed = Some(e),
            }
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
