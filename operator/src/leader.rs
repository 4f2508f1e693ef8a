//! Lease-based leader election (coordination.k8s.io/v1 `Lease`) and the fence
//! that keeps a replica that no longer leads from writing.
//!
//! Several operator replicas may run; only the one holding the Lease writes.
//! Every Lease write is a `replace` carrying the `resourceVersion` we last
//! observed, so two replicas racing for the same Lease cannot both win: the
//! loser gets a 409 Conflict from the API server.
//!
//! Expiry is judged from the candidate's own observation, as client-go does: a
//! candidate takes over a Lease held by someone else only once it has seen the
//! same record (resourceVersion, holder, renewTime) unchanged for the record's
//! `leaseDurationSeconds`, measured on its own monotonic clock from when it
//! first read that record. The wall-clock times in the Lease are written for
//! people and tools; no decision reads them, so replicas' clocks may disagree.
//!
//! Fencing: a leader's term ends `renew_deadline` after the *start* of its last
//! successful renewal (or acquisition). A candidate reads that record after it
//! landed, which is after the renewal started, and waits a full lease duration
//! from then; the renew deadline is shorter than the lease duration, so the
//! old term is over before the new one begins, with `renew_every` to spare for
//! clock-rate drift and requests on the wire. Every API write the operator makes
//! goes through [`Leadership::fence`]: refused outside the term, and dropped
//! (the request cancelled) the moment the term ends while it is in flight.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, info, warn};

/// How to elect a leader.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease object.
    pub namespace: String,
    /// Name of the Lease object.
    pub name: String,
    /// This replica's identity (e.g. the pod name); must be unique among live replicas.
    pub identity: String,
    /// How long a Lease stays valid after its last renewal (written as `leaseDurationSeconds`,
    /// whole seconds, at least 1).
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// How often a non-leader checks whether it can take over, and how soon the leader
    /// retries a failed renewal.
    pub retry_every: Duration,
    /// Test aid: added to the wall clock for the times this replica writes into the
    /// Lease (`acquireTime`, `renewTime`). Zero in the operator. Tests set it to show
    /// that a replica whose clock is off cannot take over a live Lease, as no
    /// decision reads those times.
    pub clock_offset: SignedDuration,
}

impl LeaseConfig {
    /// A config with the default timings (15 s lease, renew every 5 s, retry every 2 s).
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
            clock_offset: SignedDuration::ZERO,
        }
    }

    /// The leader's term ends this long after its last successful renewal
    /// started. It is shorter than the lease so that we stop acting before
    /// anyone else may take over.
    pub fn renew_deadline(&self) -> Duration {
        if self.renew_every < self.lease_duration {
            self.lease_duration - self.renew_every
        } else {
            self.lease_duration / 2
        }
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// The wall-clock time written into the Lease.
    fn wall_now(&self) -> Timestamp {
        // Timestamp::now needs jiff's "std" feature, which k8s-openapi does not promise.
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let now = Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH);
        now.saturating_add(self.clock_offset).unwrap_or(now)
    }
}

/// What a candidate should do about a Lease it has just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds a live lease: take it over.
    Acquire,
    /// The lease names us as holder: renew it.
    Renew,
    /// Someone else holds a lease that, unless it changes, we may take over in `expires_in`.
    Wait {
        /// Time until we have seen the other holder's record unchanged for its duration.
        expires_in: Duration,
    },
}

/// Decides what `identity` should do about a Lease with `spec`, whose record it
/// has seen unchanged for `unchanged_for` (on its own monotonic clock).
///
/// `default_duration` applies when the Lease carries no `leaseDurationSeconds`.
/// The times in the Lease are not read: they come from the holder's wall clock.
pub fn decide(
    spec: Option<&LeaseSpec>,
    identity: &str,
    default_duration: Duration,
    unchanged_for: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let duration = match spec.lease_duration_seconds {
        Some(secs) => Duration::from_secs(u64::try_from(secs).unwrap_or(0)),
        None => default_duration,
    };
    match duration.checked_sub(unchanged_for) {
        Some(left) if !left.is_zero() => Decision::Wait { expires_in: left },
        _ => Decision::Acquire,
    }
}

/// The Lease record as a candidate last read it, and when it first read it.
#[derive(Debug)]
struct Observed {
    resource_version: Option<String>,
    spec: Option<LeaseSpec>,
    since: Instant,
}

impl Observed {
    /// Records a read of `lease` at `now`; returns how long the record has been
    /// seen unchanged. Any change (a renewal, a new holder) restarts the count.
    fn update(slot: &mut Option<Observed>, lease: &Lease, now: Instant) -> Duration {
        let same = slot.as_ref().is_some_and(|o| {
            o.resource_version == lease.metadata.resource_version && o.spec == lease.spec
        });
        if !same {
            *slot = Some(Observed {
                resource_version: lease.metadata.resource_version.clone(),
                spec: lease.spec.clone(),
                since: now,
            });
        }
        slot.as_ref()
            .map(|o| now.saturating_duration_since(o.since))
            .unwrap_or_default()
    }
}

/// A write refused or cut short by the fence, or the write's own error.
#[derive(Debug, thiserror::Error)]
pub enum Fenced<E> {
    /// This replica does not lead (or its term ended while the write was in flight,
    /// and the request was cancelled).
    #[error("not the leader: write not sent")]
    NotLeading,
    #[error(transparent)]
    Write(E),
}

/// This replica's standing as leader, shared with everything that writes.
///
/// It carries the end of the current term (on the monotonic clock), or none
/// while this replica does not lead. Each renewal moves the end further.
#[derive(Clone, Debug)]
pub struct Leadership {
    term: watch::Receiver<Option<Instant>>,
}

impl Leadership {
    /// True while this replica leads and its term has not run out.
    pub fn is_leading(&self) -> bool {
        term_open(*self.term.borrow())
    }

    /// Resolves on the next change: a new term, a renewal, or the end of leadership.
    /// Fails once the elector is gone.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.term.changed().await
    }

    /// Runs the API write `write` only while this replica leads.
    ///
    /// The check is made in the same poll that first polls `write`, so a write
    /// is never sent outside the term; while it is in flight, it is dropped (its
    /// request cancelled) as soon as the term ends, by step-down or by the
    /// renew deadline passing.
    pub async fn fence<T, E>(
        &self,
        write: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Fenced<E>> {
        let mut term = self.term.clone();
        if !term_open(*term.borrow_and_update()) {
            return Err(Fenced::NotLeading);
        }
        let ended = async move {
            loop {
                let Some(end) = *term.borrow_and_update() else {
                    return;
                };
                tokio::select! {
                    () = sleep_until(end) => return,
                    changed = term.changed() => if changed.is_err() { return },
                }
            }
        };
        tokio::select! {
            // The end of the term wins a tie: a write not yet sent is not sent.
            biased;
            () = ended => Err(Fenced::NotLeading),
            result = write => result.map_err(Fenced::Write),
        }
    }
}

fn term_open(end: Option<Instant>) -> bool {
    end.is_some_and(|end| Instant::now() < end)
}

/// Starts electing in the background.
///
/// The returned [`Leadership`] leads while this replica holds the Lease; its
/// term ends as soon as leadership is lost or given up, or when a renewal is
/// overdue. Once `shutdown` completes, a leading replica ends its term and then
/// releases the Lease so another can take over at once; the task ends after
/// that (the release is bounded by `lease_duration`).
pub fn spawn(
    client: kube::Client,
    cfg: LeaseConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (Leadership, JoinHandle<()>) {
    let (tx, term) = watch::channel(None);
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let handle = tokio::spawn(run(api, cfg, tx, shutdown));
    (Leadership { term }, handle)
}

async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    tx: watch::Sender<Option<Instant>>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let renew_deadline = cfg.renew_deadline();
    // While leading: the Lease as we last wrote it, and the end of our term.
    // The term is measured from *before* the write, as the record another
    // candidate starts counting from landed after that.
    let mut held: Option<(Lease, Instant)> = None;
    // While not leading: the record we last read, and since when.
    let mut observed: Option<Observed> = None;
    info!(
        lease = %cfg.name, namespace = %cfg.namespace, identity = %cfg.identity,
        "starting leader election"
    );

    loop {
        let next = match held.take() {
            Some((lease, deadline)) => {
                let started = Instant::now();
                let remaining = deadline.saturating_duration_since(started);
                // An in-flight renewal is not cancelled on shutdown: if it landed, we need
                // its resourceVersion to release the lease.
                match timeout(remaining, renew(&api, &cfg, lease.clone())).await {
                    Ok(Ok(renewed)) => {
                        debug!(lease = %cfg.name, "renewed lease");
                        let end = started + renew_deadline;
                        tx.send_replace(Some(end));
                        held = Some((renewed, end));
                        cfg.renew_every
                    }
                    Ok(Err(e)) if is_conflict(&e) => {
                        step_down(&tx, &cfg, "lease was modified by someone else");
                        cfg.retry_every
                    }
                    Ok(Err(e)) => {
                        warn!(lease = %cfg.name, error = %e, "failed to renew lease");
                        held = Some((lease, deadline));
                        cfg.retry_every
                    }
                    Err(_) => {
                        step_down(&tx, &cfg, "could not renew lease in time");
                        cfg.retry_every
                    }
                }
            }
            None => {
                let started = Instant::now();
                match timeout(renew_deadline, try_acquire(&api, &cfg, &mut observed)).await {
                    Ok(Ok(Some(lease))) => {
                        info!(
                            lease = %cfg.name, identity = %cfg.identity,
                            "acquired lease; now leading"
                        );
                        let end = started + renew_deadline;
                        tx.send_replace(Some(end));
                        held = Some((lease, end));
                        observed = None;
                        cfg.renew_every
                    }
                    Ok(Ok(None)) => cfg.retry_every,
                    Ok(Err(e)) => {
                        warn!(lease = %cfg.name, error = %e, "failed to check or acquire lease");
                        cfg.retry_every
                    }
                    Err(_) => {
                        warn!(lease = %cfg.name, "timed out checking or acquiring lease");
                        cfg.retry_every
                    }
                }
            }
        };
        // Never sleep past the renewal deadline, so a step-down is noticed on time.
        let next = match &held {
            Some((_, deadline)) => next.min(deadline.saturating_duration_since(Instant::now())),
            None => next,
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = sleep(next) => {}
        }
        if let Some((_, deadline)) = &held
            && Instant::now() >= *deadline
        {
            held = None;
            step_down(&tx, &cfg, "could not renew lease in time");
        }
    }

    if let Some((lease, _)) = held {
        // Stop acting as leader before anyone else can take over.
        tx.send_replace(None);
        match timeout(cfg.lease_duration, release(&api, &cfg, lease)).await {
            Ok(Ok(())) => info!(lease = %cfg.name, "released lease on shutdown"),
            Ok(Err(e)) => warn!(
                lease = %cfg.name, error = %e,
                "failed to release lease on shutdown; it will expire"
            ),
            Err(_) => warn!(
                lease = %cfg.name,
                "timed out releasing lease on shutdown; it will expire"
            ),
        }
    }
    info!(lease = %cfg.name, "leader election stopped");
}

fn step_down(tx: &watch::Sender<Option<Instant>>, cfg: &LeaseConfig, why: &str) {
    tx.send_replace(None);
    warn!(lease = %cfg.name, identity = %cfg.identity, reason = why, "lost leadership");
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict())
}

/// One attempt to become leader. `Ok(Some)` is the Lease as we wrote it; `Ok(None)`
/// means someone else holds it or beat us to it.
async fn try_acquire(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<Option<Lease>, kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let now = cfg.wall_now();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_duration_seconds: Some(cfg.lease_duration_seconds()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(created) => Ok(Some(created)),
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                debug!(lease = %cfg.name, "another replica created the lease first");
                Ok(None)
            }
            Err(e) => Err(e),
        };
    };
    let unchanged_for = Observed::update(observed, &lease, Instant::now());

    match decide(
        lease.spec.as_ref(),
        &cfg.identity,
        cfg.lease_duration,
        unchanged_for,
    ) {
        Decision::Wait { expires_in } => {
            let holder = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref());
            debug!(
                lease = %cfg.name, holder = holder.unwrap_or(""),
                expires_in_ms = expires_in.as_millis(), "lease held by another replica"
            );
            Ok(None)
        }
        Decision::Acquire | Decision::Renew => {
            let now = cfg.wall_now();
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let was_ours = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
            if !was_ours {
                spec.lease_transitions =
                    Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
                spec.acquire_time = Some(MicroTime(now));
            } else if spec.acquire_time.is_none() {
                spec.acquire_time = Some(MicroTime(now));
            }
            spec.holder_identity = Some(cfg.identity.clone());
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(cfg.lease_duration_seconds());
            // `lease` still carries the resourceVersion we read: a concurrent taker
            // makes this a 409.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(replaced) => Ok(Some(replaced)),
                Err(kube::Error::Api(s)) if s.is_conflict() => {
                    debug!(lease = %cfg.name, "lost the race to take over the lease");
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Renews the Lease as we last wrote it; any change by someone else is a 409.
async fn renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    mut lease: Lease,
) -> Result<Lease, kube::Error> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    lease.spec.get_or_insert_with(LeaseSpec::default).renew_time = Some(MicroTime(cfg.wall_now()));
    api.replace(&name, &PostParams::default(), &lease).await
}

/// Gives the Lease up: an empty holder lets others acquire at once (client-go
/// does the same); the 1 s duration bounds the wait of an elector that goes by
/// the duration alone.
async fn release(api: &Api<Lease>, cfg: &LeaseConfig, mut lease: Lease) -> Result<(), kube::Error> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(cfg.wall_now()));
    spec.lease_duration_seconds = Some(1);
    api.replace(&name, &PostParams::default(), &lease).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const DEFAULT: Duration = Duration::from_secs(15);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn spec(holder: Option<&str>, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: duration,
            ..LeaseSpec::default()
        }
    }

    fn lease(rv: &str, holder: &str, renew_micros: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(rv.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                renew_time: Timestamp::from_microsecond(renew_micros)
                    .ok()
                    .map(MicroTime),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn no_spec_or_no_holder_is_acquired() {
        assert_eq!(decide(None, "me", DEFAULT, secs(0)), Decision::Acquire);
        let s = spec(None, Some(15));
        assert_eq!(decide(Some(&s), "me", DEFAULT, secs(0)), Decision::Acquire);
        let s = spec(Some(""), Some(15));
        assert_eq!(decide(Some(&s), "me", DEFAULT, secs(0)), Decision::Acquire);
    }

    #[test]
    fn own_lease_is_renewed_whatever_its_age() {
        let s = spec(Some("me"), Some(15));
        assert_eq!(decide(Some(&s), "me", DEFAULT, secs(0)), Decision::Renew);
        assert_eq!(decide(Some(&s), "me", DEFAULT, secs(500)), Decision::Renew);
    }

    #[test]
    fn foreign_lease_is_waited_for_until_seen_unchanged_for_its_duration() {
        let s = spec(Some("other"), Some(15));
        assert_eq!(
            decide(Some(&s), "me", DEFAULT, secs(0)),
            Decision::Wait {
                expires_in: secs(15)
            }
        );
        assert_eq!(
            decide(Some(&s), "me", DEFAULT, secs(10)),
            Decision::Wait {
                expires_in: secs(5)
            }
        );
        // Exactly the duration counts as expired.
        assert_eq!(decide(Some(&s), "me", DEFAULT, secs(15)), Decision::Acquire);
        assert_eq!(
            decide(Some(&s), "me", DEFAULT, secs(900)),
            Decision::Acquire
        );
    }

    #[test]
    fn missing_duration_uses_default() {
        let s = spec(Some("other"), None);
        assert!(matches!(
            decide(Some(&s), "me", DEFAULT, secs(14)),
            Decision::Wait { .. }
        ));
        assert_eq!(decide(Some(&s), "me", DEFAULT, secs(15)), Decision::Acquire);
    }

    #[test]
    fn the_times_in_the_lease_are_not_read() {
        // A renewTime far in the past (or the future) changes nothing: only
        // how long this candidate has seen the record counts.
        let mut s = spec(Some("other"), Some(15));
        s.renew_time = Timestamp::from_second(0).ok().map(MicroTime);
        assert!(matches!(
            decide(Some(&s), "me", DEFAULT, secs(1)),
            Decision::Wait { .. }
        ));
        s.renew_time = Timestamp::from_second(4_000_000_000).ok().map(MicroTime);
        assert_eq!(decide(Some(&s), "me", DEFAULT, secs(15)), Decision::Acquire);
    }

    #[test]
    fn any_change_to_the_record_restarts_the_observation() {
        let t0 = Instant::now();
        let mut slot = None;
        let a = lease("1", "other", 1_000);
        assert_eq!(Observed::update(&mut slot, &a, t0), secs(0));
        assert_eq!(Observed::update(&mut slot, &a, t0 + secs(7)), secs(7));
        // A renewal: new resourceVersion and renewTime.
        let b = lease("2", "other", 2_000);
        assert_eq!(Observed::update(&mut slot, &b, t0 + secs(8)), secs(0));
        assert_eq!(Observed::update(&mut slot, &b, t0 + secs(20)), secs(12));
        // Same resourceVersion, other holder (a recreated object): a change too.
        let c = lease("2", "third", 2_000);
        assert_eq!(Observed::update(&mut slot, &c, t0 + secs(21)), secs(0));
    }

    #[test]
    fn renew_deadline_is_before_expiry() {
        let cfg = LeaseConfig::new("ns", "lease", "me");
        assert_eq!(cfg.renew_deadline(), Duration::from_secs(10));
        assert_eq!(cfg.lease_duration_seconds(), 15);
        let odd = LeaseConfig {
            renew_every: Duration::from_secs(20),
            ..cfg
        };
        assert_eq!(odd.renew_deadline(), Duration::from_millis(7_500));
    }

    #[test]
    fn clock_offset_shifts_only_the_written_times() {
        let mut cfg = LeaseConfig::new("ns", "lease", "me");
        let base = cfg.wall_now();
        cfg.clock_offset = SignedDuration::from_secs(6);
        let ahead = cfg.wall_now().duration_since(base);
        assert!(ahead >= SignedDuration::from_secs(6), "{ahead:?}");
        assert!(ahead < SignedDuration::from_secs(7), "{ahead:?}");
    }

    fn leadership(end: Option<Instant>) -> (watch::Sender<Option<Instant>>, Leadership) {
        let (tx, term) = watch::channel(end);
        (tx, Leadership { term })
    }

    /// A write that records whether it was ever polled, and takes `takes`.
    fn write(polled: &Arc<AtomicBool>, takes: Duration) -> impl Future<Output = Result<(), ()>> {
        let polled = polled.clone();
        async move {
            polled.store(true, Ordering::SeqCst);
            sleep(takes).await;
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fence_refuses_a_write_outside_the_term() {
        let polled = Arc::new(AtomicBool::new(false));
        let (_tx, l) = leadership(None);
        assert!(!l.is_leading());
        let r = l.fence(write(&polled, secs(0))).await;
        assert!(matches!(r, Err(Fenced::NotLeading)));
        assert!(
            !polled.load(Ordering::SeqCst),
            "a refused write is not sent"
        );

        // A term that ended without a step-down (renewal overdue) counts as over.
        let (_tx, l) = leadership(Some(Instant::now()));
        assert!(!l.is_leading());
        let r = l.fence(write(&polled, secs(0))).await;
        assert!(matches!(r, Err(Fenced::NotLeading)));
        assert!(!polled.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn fence_cuts_a_write_short_at_the_end_of_the_term() {
        let polled = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let (_tx, l) = leadership(Some(t0 + secs(10)));
        assert!(l.is_leading());
        let r = l.fence(write(&polled, secs(30))).await;
        assert!(matches!(r, Err(Fenced::NotLeading)));
        assert!(polled.load(Ordering::SeqCst));
        assert_eq!(Instant::now() - t0, secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn fence_cuts_a_write_short_on_step_down() {
        let polled = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let (tx, l) = leadership(Some(t0 + secs(10)));
        let stepped_down = async {
            sleep(secs(2)).await;
            tx.send_replace(None);
        };
        let (r, ()) = tokio::join!(l.fence(write(&polled, secs(30))), stepped_down);
        assert!(matches!(r, Err(Fenced::NotLeading)));
        assert_eq!(Instant::now() - t0, secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn fence_lets_a_write_finish_across_a_renewal() {
        let polled = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let (tx, l) = leadership(Some(t0 + secs(10)));
        let renewed = async {
            sleep(secs(5)).await;
            tx.send_replace(Some(t0 + secs(15)));
        };
        let (r, ()) = tokio::join!(l.fence(write(&polled, secs(12))), renewed);
        assert!(matches!(r, Ok(())), "{r:?}");
        assert_eq!(Instant::now() - t0, secs(12));
    }
}
