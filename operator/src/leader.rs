//! Lease-based leader election (coordination.k8s.io/v1 `Lease`).
//!
//! Several operator replicas may run; only the one holding the Lease reconciles.
//! Every write is a `replace` carrying the `resourceVersion` we last observed, so
//! two replicas racing for the same Lease cannot both win: the loser gets a
//! 409 Conflict from the API server.
//!
//! Expiry is judged from the Lease's `renewTime` + `leaseDurationSeconds` against
//! the local wall clock, so replicas' clocks must agree to well within
//! `lease_duration - renew_every` (NTP is plenty).

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
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
        }
    }

    /// The leader steps down if it has not renewed successfully for this long. It is
    /// shorter than the lease so that we stop acting before anyone else may take over.
    fn renew_deadline(&self) -> Duration {
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
}

/// What a candidate should do about a Lease it has just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds a live lease: take it over.
    Acquire,
    /// The lease names us as holder: renew it.
    Renew,
    /// Someone else holds a live lease that expires in `expires_in`.
    Wait {
        /// Time until the other holder's lease runs out, if it is not renewed.
        expires_in: Duration,
    },
}

/// Decides what `identity` should do about a Lease with `spec`, at wall-clock `now`.
///
/// `default_duration` applies when the Lease carries no `leaseDurationSeconds`.
/// A holder with neither `renewTime` nor `acquireTime` counts as expired: there is
/// no evidence it is alive.
pub fn decide(
    spec: Option<&LeaseSpec>,
    identity: &str,
    default_duration: Duration,
    now: Timestamp,
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
    let Some(last) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return Decision::Acquire;
    };
    let duration = match spec.lease_duration_seconds {
        Some(secs) => SignedDuration::from_secs(i64::from(secs.max(0))),
        None => SignedDuration::try_from(default_duration).unwrap_or(SignedDuration::MAX),
    };
    let expiry = last.0.saturating_add(duration).unwrap_or(Timestamp::MAX);
    if expiry <= now {
        return Decision::Acquire;
    }
    Decision::Wait {
        expires_in: Duration::try_from(expiry.duration_since(now)).unwrap_or_default(),
    }
}

/// Starts electing in the background.
///
/// The returned receiver reads `true` while this replica leads; it flips to `false`
/// as soon as leadership is lost or given up. Once `shutdown` completes, a leading
/// replica sends `false` and then releases the Lease so another can take over at
/// once; the task ends after that (the release is bounded by `lease_duration`).
pub fn spawn(
    client: kube::Client,
    cfg: LeaseConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let handle = tokio::spawn(run(api, cfg, tx, shutdown));
    (rx, handle)
}

async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    tx: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let renew_deadline = cfg.renew_deadline();
    // While leading: the Lease as we last wrote it, and when we must step down unless
    // renewed by then. The deadline is measured from *before* the write, as the
    // renewTime we wrote is that early.
    let mut held: Option<(Lease, Instant)> = None;
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
                match timeout(remaining, renew(&api, lease.clone())).await {
                    Ok(Ok(renewed)) => {
                        debug!(lease = %cfg.name, "renewed lease");
                        held = Some((renewed, started + renew_deadline));
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
                match timeout(renew_deadline, try_acquire(&api, &cfg)).await {
                    Ok(Ok(Some(lease))) => {
                        info!(
                            lease = %cfg.name, identity = %cfg.identity,
                            "acquired lease; now leading"
                        );
                        tx.send_replace(true);
                        held = Some((lease, started + renew_deadline));
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
        tx.send_replace(false);
        match timeout(cfg.lease_duration, release(&api, lease)).await {
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

fn step_down(tx: &watch::Sender<bool>, cfg: &LeaseConfig, why: &str) {
    tx.send_replace(false);
    warn!(lease = %cfg.name, identity = %cfg.identity, reason = why, "lost leadership");
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict())
}

fn now() -> Timestamp {
    // Timestamp::now needs jiff's "std" feature, which k8s-openapi does not promise.
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// One attempt to become leader. `Ok(Some)` is the Lease as we wrote it; `Ok(None)`
/// means someone else holds it or beat us to it.
async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<Option<Lease>, kube::Error> {
    let now = now();
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
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

    match decide(lease.spec.as_ref(), &cfg.identity, cfg.lease_duration, now) {
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
async fn renew(api: &Api<Lease>, mut lease: Lease) -> Result<Lease, kube::Error> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    lease.spec.get_or_insert_with(LeaseSpec::default).renew_time = Some(MicroTime(now()));
    api.replace(&name, &PostParams::default(), &lease).await
}

/// Gives the Lease up: an empty holder lets others acquire at once; the 1 s duration
/// makes it expire at once for electors that only look at expiry (as client-go does).
async fn release(api: &Api<Lease>, mut lease: Lease) -> Result<(), kube::Error> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(now()));
    spec.lease_duration_seconds = Some(1);
    api.replace(&name, &PostParams::default(), &lease).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Duration = Duration::from_secs(15);

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn spec(holder: Option<&str>, renew: Option<i64>, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: renew.map(|s| MicroTime(ts(s))),
            lease_duration_seconds: duration,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn no_spec_or_no_holder_is_acquired() {
        let now = ts(1_000);
        assert_eq!(decide(None, "me", DEFAULT, now), Decision::Acquire);
        let s = spec(None, Some(999), Some(15));
        assert_eq!(decide(Some(&s), "me", DEFAULT, now), Decision::Acquire);
        let s = spec(Some(""), Some(999), Some(15));
        assert_eq!(decide(Some(&s), "me", DEFAULT, now), Decision::Acquire);
    }

    #[test]
    fn own_lease_is_renewed_even_if_expired() {
        let s = spec(Some("me"), Some(1_000), Some(15));
        assert_eq!(decide(Some(&s), "me", DEFAULT, ts(1_001)), Decision::Renew);
        assert_eq!(decide(Some(&s), "me", DEFAULT, ts(5_000)), Decision::Renew);
    }

    #[test]
    fn live_foreign_lease_is_waited_for() {
        let s = spec(Some("other"), Some(1_000), Some(15));
        assert_eq!(
            decide(Some(&s), "me", DEFAULT, ts(1_010)),
            Decision::Wait {
                expires_in: Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn expired_foreign_lease_is_acquired() {
        let s = spec(Some("other"), Some(1_000), Some(15));
        // Exactly at expiry counts as expired.
        assert_eq!(
            decide(Some(&s), "me", DEFAULT, ts(1_015)),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&s), "me", DEFAULT, ts(2_000)),
            Decision::Acquire
        );
    }

    #[test]
    fn missing_duration_uses_default() {
        let s = spec(Some("other"), Some(1_000), None);
        assert!(matches!(
            decide(Some(&s), "me", DEFAULT, ts(1_014)),
            Decision::Wait { .. }
        ));
        assert_eq!(
            decide(Some(&s), "me", DEFAULT, ts(1_015)),
            Decision::Acquire
        );
    }

    #[test]
    fn falls_back_to_acquire_time_then_treats_as_expired() {
        let mut s = spec(Some("other"), None, Some(15));
        assert_eq!(
            decide(Some(&s), "me", DEFAULT, ts(1_000)),
            Decision::Acquire
        );
        s.acquire_time = Some(MicroTime(ts(995)));
        assert!(matches!(
            decide(Some(&s), "me", DEFAULT, ts(1_000)),
            Decision::Wait { .. }
        ));
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

    /// Two electors against a real API server:
    /// `tests/controlplane/start.sh /tmp/lt-cp && . /tmp/lt-cp/env &&
    ///  cargo test -p tunlb-operator --lib leader -- --ignored --nocapture`
    #[tokio::test]
    #[ignore = "needs a kube-apiserver via KUBECONFIG"]
    async fn two_electors_against_apiserver() -> Result<(), Box<dyn std::error::Error>> {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let client = kube::Client::try_default().await?;
        let name = format!(
            "lt-{}",
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis()
        );
        let cfg = |id: &str| LeaseConfig {
            lease_duration: Duration::from_secs(3),
            renew_every: Duration::from_millis(1_000),
            retry_every: Duration::from_millis(300),
            ..LeaseConfig::new("default", name.clone(), id)
        };
        let (stop_a, a_stopped) = tokio::sync::oneshot::channel::<()>();
        let (mut a, a_task) = spawn(client.clone(), cfg("a"), async move {
            let _ = a_stopped.await;
        });
        timeout(Duration::from_secs(5), a.wait_for(|l| *l)).await??;

        let (stop_b, b_stopped) = tokio::sync::oneshot::channel::<()>();
        let (mut b, b_task) = spawn(client.clone(), cfg("b"), async move {
            let _ = b_stopped.await;
        });
        // b must not lead while a renews, well past a's lease duration.
        sleep(Duration::from_secs(5)).await;
        assert!(*a.borrow());
        assert!(!*b.borrow());

        // a releases on shutdown; b takes over well before the lease would expire.
        let t0 = Instant::now();
        let _ = stop_a.send(());
        a_task.await?;
        assert!(!*a.borrow());
        timeout(Duration::from_secs(2), b.wait_for(|l| *l)).await??;
        assert!(t0.elapsed() < Duration::from_secs(2));
        let api: Api<Lease> = Api::namespaced(client.clone(), "default");
        let spec = api.get(&name).await?.spec.unwrap_or_default();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(1));

        // b dies without releasing; c takes over only after the lease expires.
        b_task.abort();
        let _ = b_task.await;
        drop(stop_b);
        let t1 = Instant::now();
        let (stop_c, c_stopped) = tokio::sync::oneshot::channel::<()>();
        let (mut c, c_task) = spawn(client.clone(), cfg("c"), async move {
            let _ = c_stopped.await;
        });
        timeout(Duration::from_secs(6), c.wait_for(|l| *l)).await??;
        assert!(t1.elapsed() >= Duration::from_secs(1));
        assert_eq!(
            api.get(&name)
                .await?
                .spec
                .unwrap_or_default()
                .lease_transitions,
            Some(2)
        );

        // Someone else writes the lease (stealing it): c's next renewal conflicts and
        // c steps down, then waits for the thief's lease.
        let mut stolen = api.get(&name).await?;
        if let Some(spec) = stolen.spec.as_mut() {
            spec.holder_identity = Some("thief".to_owned());
            spec.renew_time = Some(MicroTime(now()));
            spec.lease_duration_seconds = Some(30);
        }
        api.replace(&name, &PostParams::default(), &stolen).await?;
        timeout(Duration::from_secs(3), c.wait_for(|l| !*l)).await??;
        sleep(Duration::from_secs(1)).await;
        assert!(!*c.borrow());

        // Shutting down a non-leader leaves the lease alone.
        let _ = stop_c.send(());
        c_task.await?;
        let spec = api.get(&name).await?.spec.unwrap_or_default();
        assert_eq!(spec.holder_identity.as_deref(), Some("thief"));
        api.delete(&name, &Default::default()).await?;
        Ok(())
    }
}
