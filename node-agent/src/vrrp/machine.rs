//! The RFC 5798 §6.4 state machine of one virtual router, as pure code:
//! events in, actions out, time passed in by the caller (a monotonic
//! `Duration` since any fixed origin). It never sleeps or reads a clock, so
//! every timing rule is tested by feeding it instants.

use std::net::IpAddr;
use std::time::Duration;

/// A centisecond, the unit of VRRPv3 intervals.
const CENTISECOND: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Initialize,
    Backup,
    Master,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Initialize => "Initialize",
            State::Backup => "Backup",
            State::Master => "Master",
        })
    }
}

/// Why a transition happened, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Priority 255: the address owner starts as Master.
    Owner,
    Startup,
    /// No advertisement for Master_Down_Interval.
    MasterDown,
    /// A master with a higher priority (or an equal one and a higher
    /// primary address) advertised.
    Preempted {
        by: IpAddr,
        priority: u8,
    },
    Shutdown,
    /// The interface lost its carrier or went down.
    InterfaceDown,
    /// The interface works again.
    InterfaceUp,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Owner => f.write_str("priority 255: address owner"),
            Reason::Startup => f.write_str("startup"),
            Reason::MasterDown => f.write_str("no advertisement within Master_Down_Interval"),
            Reason::Preempted { by, priority } => {
                write!(f, "advertisement from {by} with priority {priority}")
            }
            Reason::Shutdown => f.write_str("shutdown"),
            Reason::InterfaceDown => f.write_str("interface down"),
            Reason::InterfaceUp => f.write_str("interface up"),
        }
    }
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority (0 = "I am leaving").
    SendAdvert { priority: u8 },
    /// Add the virtual addresses and announce them (gratuitous ARP,
    /// unsolicited neighbour advertisements).
    TakeAddresses,
    /// Announce the virtual addresses again (they stay where they are).
    AnnounceAddresses,
    /// Remove the virtual addresses.
    ReleaseAddresses,
    /// The state changed; for the log.
    Transition {
        from: State,
        to: State,
        reason: Reason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("priority 0 is reserved for a master that leaves (use 1-255)")]
    ZeroPriority,
    #[error("advertisement interval must be 1-4095 centiseconds, not {0}")]
    Interval(u16),
}

/// The settings of one virtual router on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// 1-255; 255 means this node owns the addresses.
    pub priority: u8,
    /// Advertisement_Interval, centiseconds.
    pub interval_cs: u16,
    /// Whether a higher-priority backup takes over from a lower-priority master.
    pub preempt: bool,
    /// This node's primary address, the tie breaker between equal priorities.
    pub primary: IpAddr,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.priority == 0 {
            return Err(ConfigError::ZeroPriority);
        }
        if self.interval_cs == 0 || self.interval_cs > crate::vrrp::packet::MAX_INTERVAL_CS {
            return Err(ConfigError::Interval(self.interval_cs));
        }
        Ok(())
    }
}

/// One virtual router's state.
#[derive(Debug, Clone)]
pub struct Machine {
    config: Config,
    state: State,
    /// Master_Adver_Interval: learnt from the master while Backup.
    master_interval_cs: u16,
    /// Adver_Timer (Master) or Master_Down_Timer (Backup) expiry.
    deadline: Option<Duration>,
}

fn centis(cs: u16) -> Duration {
    CENTISECOND * u32::from(cs)
}

impl Machine {
    pub fn new(config: Config) -> Result<Machine, ConfigError> {
        config.validate()?;
        Ok(Machine {
            master_interval_cs: config.interval_cs,
            config,
            state: State::Initialize,
            deadline: None,
        })
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The advertised priority.
    pub fn priority(&self) -> u8 {
        self.config.priority
    }

    /// When `timer` must be called next (None in Initialize).
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// Master_Adver_Interval as currently known.
    pub fn master_interval(&self) -> Duration {
        centis(self.master_interval_cs)
    }

    /// Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256.
    pub fn skew(&self) -> Duration {
        self.master_interval() * (256 - u32::from(self.config.priority)) / 256
    }

    /// Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        self.master_interval() * 3 + self.skew()
    }

    fn transition(&mut self, to: State, reason: Reason, out: &mut Vec<Action>) {
        out.push(Action::Transition {
            from: self.state,
            to,
            reason,
        });
        self.state = to;
    }

    fn become_master(&mut self, now: Duration, reason: Reason, out: &mut Vec<Action>) {
        // The addresses and their first announcement come before the
        // advert (RFC 5798 lists the advert first): a master that yields on
        // hearing it releases the VIPs at once, and clients still sending
        // to it until they learn the new holder would lose those packets.
        out.push(Action::TakeAddresses);
        out.push(Action::SendAdvert {
            priority: self.config.priority,
        });
        self.deadline = Some(now + centis(self.config.interval_cs));
        self.transition(State::Master, reason, out);
    }

    fn become_backup(&mut self, now: Duration, reason: Reason, out: &mut Vec<Action>) {
        self.deadline = Some(now + self.master_down_interval());
        self.transition(State::Backup, reason, out);
    }

    /// The Startup event (§6.4.1).
    pub fn startup(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state != State::Initialize {
            return out;
        }
        if self.config.priority == 255 {
            self.become_master(now, Reason::Owner, &mut out);
        } else {
            self.master_interval_cs = self.config.interval_cs;
            self.become_backup(now, Reason::Startup, &mut out);
        }
        out
    }

    /// The Shutdown event: a master says priority 0 so that a backup takes
    /// over after its Skew_Time instead of Master_Down_Interval.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::Initialize => return out,
            State::Master => {
                out.push(Action::SendAdvert { priority: 0 });
                out.push(Action::ReleaseAddresses);
            }
            State::Backup => {}
        }
        self.deadline = None;
        self.transition(State::Initialize, Reason::Shutdown, &mut out);
        out
    }

    /// The interface went down (no carrier): as keepalived's FAULT state, the
    /// router stops (Initialize) and a master gives up its addresses, so a
    /// node cut off the segment does not keep a VIP it cannot serve. No
    /// advert is sent: it could not leave.
    pub fn interface_down(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::Initialize => return out,
            State::Master => out.push(Action::ReleaseAddresses),
            State::Backup => {}
        }
        self.deadline = None;
        self.transition(State::Initialize, Reason::InterfaceDown, &mut out);
        out
    }

    /// The interface works again: start over (as Backup, or Master for the
    /// address owner), like at startup.
    pub fn interface_up(&mut self, now: Duration) -> Vec<Action> {
        let mut out = self.startup(now);
        for a in &mut out {
            if let Action::Transition { reason, .. } = a
                && *reason == Reason::Startup
            {
                *reason = Reason::InterfaceUp;
            }
        }
        out
    }

    /// Call at (or after) `deadline()`. Early calls do nothing.
    pub fn timer(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(deadline) = self.deadline else {
            return out;
        };
        if now < deadline {
            return out;
        }
        match self.state {
            State::Initialize => {}
            State::Backup => self.become_master(now, Reason::MasterDown, &mut out),
            State::Master => {
                out.push(Action::SendAdvert {
                    priority: self.config.priority,
                });
                self.deadline = Some(now + centis(self.config.interval_cs));
            }
        }
        out
    }

    /// An advertisement for this virtual router that passed validation, from
    /// `source` (the sender's primary address), our own excluded.
    pub fn advert(
        &mut self,
        now: Duration,
        source: IpAddr,
        priority: u8,
        interval_cs: u16,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::Initialize => {}
            State::Backup => {
                if priority == 0 {
                    // The master is leaving: take over after Skew_Time only.
                    self.deadline = Some(now + self.skew());
                } else if !self.config.preempt || priority >= self.config.priority {
                    if interval_cs != 0 {
                        self.master_interval_cs = interval_cs;
                    }
                    self.deadline = Some(now + self.master_down_interval());
                }
                // Else a lower-priority master while we preempt: ignoring it
                // lets Master_Down_Timer fire and us take over.
            }
            State::Master => {
                if priority == 0 {
                    // Another master left: re-assert at once.
                    out.push(Action::SendAdvert {
                        priority: self.config.priority,
                    });
                    self.deadline = Some(now + centis(self.config.interval_cs));
                } else if priority > self.config.priority
                    || (priority == self.config.priority && ip_greater(source, self.config.primary))
                {
                    if interval_cs != 0 {
                        self.master_interval_cs = interval_cs;
                    }
                    out.push(Action::ReleaseAddresses);
                    self.become_backup(
                        now,
                        Reason::Preempted {
                            by: source,
                            priority,
                        },
                        &mut out,
                    );
                } else {
                    // Another router believes it is master (a healed
                    // partition): the RFC discards its advert, but, as
                    // keepalived does, we advertise at once so that it yields
                    // now, and announce the addresses again, since its
                    // gratuitous ARPs pointed the segment at itself.
                    out.push(Action::SendAdvert {
                        priority: self.config.priority,
                    });
                    out.push(Action::AnnounceAddresses);
                    self.deadline = Some(now + centis(self.config.interval_cs));
                }
            }
        }
        out
    }
}

/// The RFC compares primary addresses as unsigned integers in network order.
fn ip_greater(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => u32::from(a) > u32::from(b),
        (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a) > u128::from(b),
        // Mixed families never meet in one virtual router.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn machine(priority: u8, preempt: bool) -> Machine {
        Machine::new(Config {
            priority,
            interval_cs: 10,
            preempt,
            primary: ip("10.0.0.1"),
        })
        .unwrap()
    }

    fn transitions(actions: &[Action]) -> Vec<(State, State)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Transition { from, to, .. } => Some((*from, *to)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn config_is_validated() {
        let mut c = machine(100, true).config.clone();
        c.priority = 0;
        assert_eq!(
            Machine::new(c.clone()).unwrap_err(),
            ConfigError::ZeroPriority
        );
        c.priority = 1;
        c.interval_cs = 0;
        assert_eq!(
            Machine::new(c.clone()).unwrap_err(),
            ConfigError::Interval(0)
        );
        c.interval_cs = 4096;
        assert_eq!(Machine::new(c).unwrap_err(), ConfigError::Interval(4096));
    }

    #[test]
    fn skew_and_master_down_interval_follow_the_rfc() {
        // 100 ms adverts, priority 100: skew = 156/256 * 100 ms = 60.9375 ms.
        let m = machine(100, true);
        assert_eq!(
            m.skew(),
            Duration::from_micros(60_937) + Duration::from_nanos(500)
        );
        assert_eq!(m.master_down_interval(), ms(300) + m.skew());
        // Priority 254 waits least among backups.
        let m = machine(254, true);
        assert_eq!(
            m.skew(),
            Duration::from_micros(781) + Duration::from_nanos(250)
        );
    }

    #[test]
    fn backup_becomes_master_after_master_down_interval() {
        let mut m = machine(100, true);
        let a = m.startup(ms(0));
        assert_eq!(transitions(&a), vec![(State::Initialize, State::Backup)]);
        assert!(!a.contains(&Action::TakeAddresses));
        let down = m.master_down_interval();
        assert_eq!(m.deadline(), Some(down));
        assert!(m.timer(down - ms(1)).is_empty());
        let a = m.timer(down);
        assert_eq!(
            a,
            vec![
                Action::TakeAddresses,
                Action::SendAdvert { priority: 100 },
                Action::Transition {
                    from: State::Backup,
                    to: State::Master,
                    reason: Reason::MasterDown
                }
            ]
        );
        // Then an advert every interval.
        assert_eq!(m.deadline(), Some(down + ms(100)));
        assert_eq!(
            m.timer(down + ms(100)),
            vec![Action::SendAdvert { priority: 100 }]
        );
        assert_eq!(m.deadline(), Some(down + ms(200)));
    }

    #[test]
    fn adverts_keep_a_backup_down_and_teach_it_the_interval() {
        let mut m = machine(100, true);
        m.startup(ms(0));
        // The master advertises every 50 cs; the backup adopts that.
        assert!(m.advert(ms(200), ip("10.0.0.2"), 150, 50).is_empty());
        assert_eq!(m.master_interval(), ms(500));
        assert_eq!(m.deadline(), Some(ms(200) + ms(1500) + m.skew()));
        assert_eq!(m.skew(), ms(500) * 156 / 256);
        // Its own adverts as master still use its configured interval.
        let d = m.deadline().unwrap();
        m.timer(d);
        assert_eq!(m.deadline(), Some(d + ms(100)));
    }

    #[test]
    fn priority_zero_makes_the_backup_take_over_after_skew() {
        let mut m = machine(100, true);
        m.startup(ms(0));
        m.advert(ms(50), ip("10.0.0.2"), 200, 10);
        assert!(m.advert(ms(100), ip("10.0.0.2"), 0, 10).is_empty());
        assert_eq!(m.deadline(), Some(ms(100) + m.skew()));
        let a = m.timer(ms(100) + m.skew());
        assert_eq!(transitions(&a), vec![(State::Backup, State::Master)]);
    }

    #[test]
    fn preemption_on_ignores_lower_masters_and_takes_over() {
        let mut m = machine(200, true);
        m.startup(ms(0));
        // A lower-priority master's adverts do not reset the timer.
        let d0 = m.deadline();
        m.advert(ms(100), ip("10.0.0.2"), 100, 10);
        assert_eq!(m.deadline(), d0);
        let a = m.timer(d0.unwrap());
        assert_eq!(transitions(&a), vec![(State::Backup, State::Master)]);
    }

    #[test]
    fn preemption_off_follows_any_master() {
        let mut m = machine(200, false);
        m.startup(ms(0));
        m.advert(ms(100), ip("10.0.0.2"), 100, 10);
        assert_eq!(m.deadline(), Some(ms(100) + m.master_down_interval()));
        assert_eq!(m.state(), State::Backup);
    }

    #[test]
    fn master_yields_to_higher_priority_and_keeps_lower() {
        let mut m = machine(100, false);
        m.startup(ms(0));
        m.timer(m.deadline().unwrap());
        assert_eq!(m.state(), State::Master);
        // Lower: we stay, re-assert at once and re-announce the addresses.
        assert_eq!(
            m.advert(ms(400), ip("10.0.0.2"), 50, 10),
            vec![
                Action::SendAdvert { priority: 100 },
                Action::AnnounceAddresses
            ]
        );
        assert_eq!(m.deadline(), Some(ms(500)));
        assert_eq!(m.state(), State::Master);
        // Higher: release and back off, preemption setting aside.
        let a = m.advert(ms(500), ip("10.0.0.2"), 150, 20);
        assert_eq!(a[0], Action::ReleaseAddresses);
        assert_eq!(transitions(&a), vec![(State::Master, State::Backup)]);
        assert_eq!(m.master_interval(), ms(200));
        assert_eq!(m.deadline(), Some(ms(500) + m.master_down_interval()));
    }

    #[test]
    fn equal_priority_tie_break_by_primary_address() {
        let mut m = machine(100, true);
        m.startup(ms(0));
        m.timer(m.deadline().unwrap());
        // 10.0.0.0 < 10.0.0.1: we stay.
        let a = m.advert(ms(400), ip("10.0.0.0"), 100, 10);
        assert!(transitions(&a).is_empty());
        assert_eq!(m.state(), State::Master);
        // 10.0.0.2 > 10.0.0.1: we yield.
        let a = m.advert(ms(500), ip("10.0.0.2"), 100, 10);
        assert_eq!(transitions(&a), vec![(State::Master, State::Backup)]);
        assert!(ip_greater(ip("fe80::2"), ip("fe80::1")));
        assert!(!ip_greater(ip("10.0.0.9"), ip("fe80::1")));
    }

    #[test]
    fn master_answers_a_leaving_master_at_once() {
        let mut m = machine(100, true);
        m.startup(ms(0));
        m.timer(m.deadline().unwrap());
        let a = m.advert(ms(400), ip("10.0.0.2"), 0, 10);
        assert_eq!(a, vec![Action::SendAdvert { priority: 100 }]);
        assert_eq!(m.deadline(), Some(ms(500)));
    }

    #[test]
    fn owner_starts_as_master() {
        let mut m = machine(255, true);
        assert_eq!(m.skew(), Duration::from_micros(390_625) / 1000);
        let a = m.startup(ms(0));
        assert_eq!(
            a,
            vec![
                Action::TakeAddresses,
                Action::SendAdvert { priority: 255 },
                Action::Transition {
                    from: State::Initialize,
                    to: State::Master,
                    reason: Reason::Owner
                }
            ]
        );
        // Nobody outranks the owner; an equal one with a higher address
        // would, which a correct configuration never has.
        let a = m.advert(ms(10), ip("10.0.0.0"), 254, 10);
        assert!(transitions(&a).is_empty());
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn shutdown_sends_priority_zero_only_as_master() {
        let mut m = machine(100, true);
        m.startup(ms(0));
        let a = m.shutdown();
        assert_eq!(transitions(&a), vec![(State::Backup, State::Initialize)]);
        assert!(!a.iter().any(|x| matches!(x, Action::SendAdvert { .. })));
        assert_eq!(m.deadline(), None);

        let mut m = machine(100, true);
        m.startup(ms(0));
        m.timer(m.deadline().unwrap());
        let a = m.shutdown();
        assert_eq!(a[0], Action::SendAdvert { priority: 0 });
        assert_eq!(a[1], Action::ReleaseAddresses);
        assert_eq!(m.state(), State::Initialize);
        assert!(m.shutdown().is_empty());
        assert!(m.timer(ms(10_000)).is_empty());
        assert!(m.advert(ms(10_000), ip("10.0.0.2"), 1, 1).is_empty());
    }

    #[test]
    fn interface_down_releases_and_up_starts_over() {
        let mut m = machine(100, true);
        m.startup(ms(0));
        m.timer(m.deadline().unwrap());
        let a = m.interface_down();
        assert_eq!(a[0], Action::ReleaseAddresses);
        assert!(!a.iter().any(|x| matches!(x, Action::SendAdvert { .. })));
        assert_eq!(m.state(), State::Initialize);
        assert_eq!(m.deadline(), None);
        assert!(m.interface_down().is_empty());
        let a = m.interface_up(ms(1000));
        assert_eq!(
            a,
            vec![Action::Transition {
                from: State::Initialize,
                to: State::Backup,
                reason: Reason::InterfaceUp
            }]
        );
        assert_eq!(m.deadline(), Some(ms(1000) + m.master_down_interval()));
        // A backup that loses its link just stops.
        let a = m.interface_down();
        assert_eq!(transitions(&a), vec![(State::Backup, State::Initialize)]);
        assert!(!a.contains(&Action::ReleaseAddresses));
    }

    #[test]
    fn two_machines_elect_one_master_and_fail_over() {
        // Feed two machines each other's adverts on a 10 ms grid.
        let mut a = machine(150, true);
        let mut b = Machine::new(Config {
            primary: ip("10.0.0.2"),
            ..machine(100, true).config.clone()
        })
        .unwrap();
        let (ia, ib) = (ip("10.0.0.1"), ip("10.0.0.2"));
        a.startup(ms(0));
        b.startup(ms(0));
        let mut a_alive = true;
        let mut b_master_at = None;
        for t in (0..3000).step_by(10) {
            let now = ms(t);
            if t == 1000 {
                a_alive = false; // link cut: a's adverts stop reaching b
            }
            let from_a = if a_alive { a.timer(now) } else { Vec::new() };
            let from_b = b.timer(now);
            for act in from_a {
                if let Action::SendAdvert { priority } = act {
                    b.advert(now, ia, priority, 10);
                }
            }
            for act in from_b {
                if let Action::SendAdvert { priority } = act
                    && a_alive
                {
                    a.advert(now, ib, priority, 10);
                }
                if act == Action::TakeAddresses && b_master_at.is_none() {
                    b_master_at = Some(t);
                }
            }
            if (500..1000).contains(&t) {
                assert_eq!(a.state(), State::Master, "at {t}");
                assert_eq!(b.state(), State::Backup, "at {t}");
            }
        }
        // a's last advert was at most 100 ms before the cut; b takes over
        // within Master_Down_Interval (300 + 60.9 ms) of that advert.
        let at = b_master_at.unwrap();
        assert!((1000..=1000 + 370).contains(&at), "took over at {at}");
    }
}
