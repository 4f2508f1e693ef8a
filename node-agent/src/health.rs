//! Health probes through the tunnel, and the weights that follow them.
//!
//! A director probes every destination of the services it directs: a TCP
//! connection (and for http a GET) to VIP:port from the node's own address,
//! carrying the firewall mark whose IPVS service tunnels it to exactly that
//! real server (see `dataplane::probe`). A pass therefore proves the tunnel,
//! the VIP and sysctls on the backend, its port mapping and the
//! application. Verdicts live in a [`Book`]; a sync pass [`gate`]s its plan
//! with them before programming, so an unhealthy server gets weight 0
//! (connections it has continue) and comes back after `rise` passes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use tunlb_api::health::{ProbeKind, ValidHealthCheck};
use tunlb_api::plan::{IpvsKey, IpvsService, NodePlan, ObjectKey};
use tunlb_api::{HealthState, NodeRole, ProbedServer};

use crate::dataplane::probe::ProbeRoutes;

/// Probes in flight at once, whatever the number of servers.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// How long verdicts stay quiet before a pass reports them: their weights
/// are set at once, and a pass meanwhile would delay the next ones.
pub const VERDICT_QUIET: Duration = Duration::from_secs(1);

/// One checked destination: a service and one of its real servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeKey {
    pub service: IpvsKey,
    pub server: IpAddr,
}

/// How to probe one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub check: ValidHealthCheck,
    /// The mark whose IPVS service tunnels to the server; `None` when the
    /// node has no such service (the reason is in `blocked`).
    pub mark: Option<u32>,
    pub source: Option<IpAddr>,
    /// Why this destination cannot be probed from here, if it cannot.
    pub blocked: Option<String>,
}

/// A verdict and what led to it.
#[derive(Debug, Clone)]
struct Record {
    target: Target,
    state: HealthState,
    since: SystemTime,
    passes: u32,
    fails: u32,
    message: String,
    /// Present when probing began: unknown still means "as programmed".
    incumbent: bool,
    next: Instant,
    in_flight: bool,
}

/// Every verdict of this node.
#[derive(Debug, Default)]
pub struct Book {
    records: BTreeMap<ProbeKey, Record>,
    /// The records not in flight, by when they are due: finding the next
    /// probes costs a lookup, not a scan of every record, however many
    /// probes complete each second.
    due: BTreeSet<(Instant, ProbeKey)>,
    /// Targets have been set once: a destination the book does not know
    /// is new from now on.
    started: bool,
}

/// How a destination's weight is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Planned weight.
    Pass,
    /// Weight 0 until probes pass.
    Hold,
    /// Weight 0: probes fail.
    Out,
}

impl Book {
    /// Sets when `key` is probed next (when it is in flight, the time is
    /// taken up once its probe completes).
    fn schedule(&mut self, key: ProbeKey, at: Instant) {
        let Some(r) = self.records.get_mut(&key) else {
            return;
        };
        if !r.in_flight {
            self.due.remove(&(r.next, key));
            self.due.insert((at, key));
        }
        r.next = at;
    }

    /// Takes the next due probe, if any is due at `now`, and marks it in flight.
    fn take_due(&mut self, now: Instant) -> Option<(ProbeKey, Target)> {
        let (at, key) = *self.due.first()?;
        if at > now {
            return None;
        }
        self.due.pop_first();
        let r = self.records.get_mut(&key)?;
        r.in_flight = true;
        r.next = now + r.target.check.interval;
        Some((key, r.target.clone()))
    }

    /// Counts a completed probe and puts its record back in line; true when
    /// the verdict changed.
    fn complete(&mut self, key: &ProbeKey, result: Result<Duration, Failure>) -> bool {
        let Some(r) = self.records.get_mut(key) else {
            return false;
        };
        let changed = record(key, r, result);
        self.due.insert((r.next, *key));
        changed
    }

    fn gate(&self, key: &ProbeKey) -> Gate {
        match self.records.get(key) {
            None if self.started => Gate::Hold,
            None => Gate::Pass,
            Some(r) => match r.state {
                HealthState::Healthy => Gate::Pass,
                HealthState::Unhealthy => Gate::Out,
                HealthState::Unknown if r.incumbent => Gate::Pass,
                HealthState::Unknown => Gate::Hold,
            },
        }
    }
}

/// Sets the weight of every checked destination that is unhealthy, or new
/// and not yet passed, to 0. When that would leave a service with no
/// server that has weight, its unhealthy servers keep their weight (fail
/// open: a server that may answer beats none); returns the VirtualServices
/// where that happened.
pub fn gate(plan: &mut NodePlan, book: &Book) -> BTreeSet<ObjectKey> {
    let mut fail_open = BTreeSet::new();
    let NodePlan { ipvs, objects, .. } = plan;
    for svc in ipvs.values_mut() {
        let directed = || {
            objects
                .get(&svc.owner)
                .is_some_and(|o| o.roles.contains(&NodeRole::Director))
        };
        if svc.health.is_none() || !directed() {
            continue;
        }
        if gate_service(svc, book) {
            fail_open.insert(svc.owner.clone());
        }
    }
    fail_open
}

/// [`gate`] for one checked service; true when it fails open.
fn gate_service(svc: &mut IpvsService, book: &Book) -> bool {
    let key = svc.key;
    let gates: BTreeMap<IpAddr, Gate> = svc
        .destinations
        .keys()
        .map(|(a, _)| {
            let k = ProbeKey {
                service: key,
                server: *a,
            };
            (*a, book.gate(&k))
        })
        .collect();
    let serving = svc
        .destinations
        .iter()
        .any(|((a, _), d)| d.weight > 0 && gates.get(a) == Some(&Gate::Pass));
    let any_out = svc
        .destinations
        .iter()
        .any(|((a, _), d)| d.weight > 0 && gates.get(a) == Some(&Gate::Out));
    let open = !serving && any_out;
    for ((a, _), d) in svc.destinations.iter_mut() {
        match gates.get(a) {
            Some(Gate::Hold) => d.weight = 0,
            Some(Gate::Out) if !open => d.weight = 0,
            _ => {}
        }
    }
    open
}

/// Undoes [`gate`]: the weights of `checked` (taken before gating) again.
pub fn ungate(plan: &mut NodePlan, checked: &BTreeMap<IpvsKey, IpvsService>) {
    for (k, planned) in checked {
        if let Some(svc) = plan.ipvs.get_mut(k) {
            // Gating changes weights only, so both list the same servers.
            for (d, p) in svc
                .destinations
                .values_mut()
                .zip(planned.destinations.values())
            {
                d.weight = p.weight;
            }
        }
    }
}

/// The checked services of `plan` this node directs and `owned` says it
/// programs, with their planned (ungated) weights: what a change of verdict
/// re-weighs between passes.
pub fn checked(
    plan: &NodePlan,
    owned: impl Fn(&IpvsKey) -> bool,
) -> BTreeMap<IpvsKey, IpvsService> {
    plan.ipvs
        .iter()
        .filter(|(k, s)| {
            s.health.is_some()
                && owned(k)
                && plan
                    .objects
                    .get(&s.owner)
                    .is_some_and(|o| o.roles.contains(&NodeRole::Director))
        })
        .map(|(k, s)| (*k, s.clone()))
        .collect()
}

/// The services of `changed` verdicts, gated anew: the weights to set now,
/// ahead of the next full pass.
pub fn regate(
    checked: &BTreeMap<IpvsKey, IpvsService>,
    book: &Book,
    changed: &BTreeSet<ProbeKey>,
) -> Vec<IpvsService> {
    let services: BTreeSet<IpvsKey> = changed.iter().map(|k| k.service).collect();
    services
        .iter()
        .filter_map(|k| checked.get(k))
        .map(|s| {
            let mut s = s.clone();
            gate_service(&mut s, book);
            s
        })
        .collect()
}

/// The targets of a plan's checked, directed destinations.
pub fn targets(plan: &NodePlan, routes: &ProbeRoutes) -> BTreeMap<ProbeKey, Target> {
    let mut out = BTreeMap::new();
    for (key, svc) in &plan.ipvs {
        let Some(check) = &svc.health else { continue };
        let directed = plan
            .objects
            .get(&svc.owner)
            .is_some_and(|o| o.roles.contains(&NodeRole::Director));
        if !directed {
            continue;
        }
        for ((server, _), d) in &svc.destinations {
            let mark = routes.marks.get(&(*server, d.tunnel)).copied();
            let source = routes.sources.get(server).copied();
            let blocked = match (routes.unroutable.get(server), mark) {
                (Some(why), _) => Some(why.clone()),
                (None, None) => Some(format!(
                    "no IPVS mark service tunnels probes to {server} (see the node's errors)"
                )),
                (None, Some(_)) => None,
            };
            out.insert(
                ProbeKey {
                    service: *key,
                    server: *server,
                },
                Target {
                    check: check.clone(),
                    mark,
                    source,
                    blocked,
                },
            );
        }
    }
    out
}

/// The verdicts of one object's `services`, as its status entry lists them.
pub fn probed(book: &Book, services: &[(&IpvsKey, &IpvsService)]) -> Vec<ProbedServer> {
    let mut out = Vec::new();
    for (key, svc) in services {
        for (server, _) in svc.destinations.keys() {
            let k = ProbeKey {
                service: **key,
                server: *server,
            };
            if let Some(r) = book.records.get(&k) {
                out.push(ProbedServer {
                    address: server.to_string(),
                    port: i32::from(key.port),
                    state: r.state,
                    since: Some(rfc3339(r.since)),
                    message: match r.state {
                        HealthState::Unhealthy => r.message.clone(),
                        _ => String::new(),
                    },
                });
            }
        }
    }
    out
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub vip: String,
    pub port: String,
    pub protocol: String,
    pub real_server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub vip: String,
    pub port: String,
    pub protocol: String,
    pub real_server: String,
    pub reason: String,
}

/// Per real server: up, probe latency, failures by reason.
pub struct ProbeMetrics {
    up: Family<ServerLabels, Gauge>,
    latency: Family<ServerLabels, Histogram, fn() -> Histogram>,
    /// Each destination's histogram in `latency`: a passed probe, the
    /// common case, is observed without formatting its labels.
    latency_of: Mutex<HashMap<ProbeKey, Histogram>>,
    failures: Family<FailureLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 13))
}

impl ProbeMetrics {
    pub fn new(registry: &mut Registry) -> ProbeMetrics {
        let m = ProbeMetrics {
            up: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            latency_of: Mutex::default(),
            failures: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("tunlb_agent");
        r.register(
            "real_server_up",
            "1 when this director's probes through the tunnel find the real server healthy, 0 when unhealthy (absent while unknown)",
            m.up.clone(),
        );
        r.register(
            "probe_duration_seconds",
            "Duration of passed health probes through the tunnel",
            m.latency.clone(),
        );
        r.register(
            "probe_failures",
            "Failed health probes, by reason (timeout, refused, reset, unreachable, status, unprobeable, other)",
            m.failures.clone(),
        );
        m
    }

    fn labels(key: &ProbeKey) -> ServerLabels {
        ServerLabels {
            vip: key.service.vip.to_string(),
            port: key.service.port.to_string(),
            protocol: key.service.protocol.to_string(),
            real_server: key.server.to_string(),
        }
    }

    fn observe(&self, key: &ProbeKey, result: &Result<Duration, Failure>) {
        match result {
            Ok(took) => self
                .latency_of
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(*key)
                .or_insert_with(|| self.latency.get_or_create(&Self::labels(key)).clone())
                .observe(took.as_secs_f64()),
            Err(f) => {
                let l = Self::labels(key);
                self.failures
                    .get_or_create(&FailureLabels {
                        vip: l.vip,
                        port: l.port,
                        protocol: l.protocol,
                        real_server: l.real_server,
                        reason: f.reason.as_str().to_string(),
                    })
                    .inc();
            }
        }
    }

    fn set_state(&self, key: &ProbeKey, state: HealthState) {
        let l = Self::labels(key);
        match state {
            HealthState::Healthy => {
                self.up.get_or_create(&l).set(1);
            }
            HealthState::Unhealthy => {
                self.up.get_or_create(&l).set(0);
            }
            HealthState::Unknown => {
                self.up.remove(&l);
            }
        }
    }

    fn forget(&self, key: &ProbeKey) {
        self.latency_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        let l = Self::labels(key);
        self.up.remove(&l);
        self.latency.remove(&l);
        for reason in [
            Reason::Timeout,
            Reason::Refused,
            Reason::Reset,
            Reason::Unreachable,
            Reason::Status,
            Reason::Unprobeable,
            Reason::Other,
        ] {
            self.failures.remove(&FailureLabels {
                vip: l.vip.clone(),
                port: l.port.clone(),
                protocol: l.protocol.clone(),
                real_server: l.real_server.clone(),
                reason: reason.as_str().to_string(),
            });
        }
    }
}

/// The running prober: a task that probes every target on its interval,
/// a bounded number at a time, and tells [`Prober::changed`] on every
/// change of verdict.
#[derive(Clone)]
pub struct Prober {
    book: Arc<Mutex<Book>>,
    targets: watch::Sender<BTreeMap<ProbeKey, Target>>,
    changes: Arc<Changes>,
}

/// Verdicts that changed since the agent last looked.
#[derive(Default)]
struct Changes {
    keys: Mutex<BTreeSet<ProbeKey>>,
    notify: Notify,
}

impl Prober {
    pub fn start(max_in_flight: usize, metrics: Option<Arc<ProbeMetrics>>) -> Prober {
        let book = Arc::new(Mutex::new(Book::default()));
        let (tx, rx) = watch::channel(BTreeMap::new());
        let changes = Arc::new(Changes::default());
        tokio::spawn(run(
            book.clone(),
            rx,
            changes.clone(),
            max_in_flight.max(1),
            metrics,
        ));
        Prober {
            book,
            targets: tx,
            changes,
        }
    }

    /// Resolves when a verdict has changed since the last [`take_changes`](Self::take_changes).
    pub async fn changed(&self) {
        self.changes.notify.notified().await;
    }

    /// The destinations whose verdict changed since the last call.
    pub fn take_changes(&self) -> BTreeSet<ProbeKey> {
        std::mem::take(&mut *self.changes.keys.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn book(&self) -> MutexGuard<'_, Book> {
        // A panic while holding the lock leaves verdicts that are still
        // meaningful: keep using them.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets what to probe.
    pub fn update(&self, targets: BTreeMap<ProbeKey, Target>) {
        self.targets.send_if_modified(|t| {
            if *t == targets {
                false
            } else {
                *t = targets;
                true
            }
        });
    }
}

async fn run(
    book: Arc<Mutex<Book>>,
    mut targets: watch::Receiver<BTreeMap<ProbeKey, Target>>,
    changes: Arc<Changes>,
    max_in_flight: usize,
    metrics: Option<Arc<ProbeMetrics>>,
) {
    let mut running: JoinSet<(ProbeKey, Result<Duration, Failure>)> = JoinSet::new();
    loop {
        let next = {
            let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            while running.len() < max_in_flight {
                let Some((key, target)) = b.take_due(now) else {
                    break;
                };
                running.spawn(async move { (key, probe(key, &target).await) });
            }
            if running.len() < max_in_flight {
                b.due.first().map(|(at, _)| *at)
            } else {
                // Full: the next completion wakes the loop.
                None
            }
        };
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(done) = running.join_next() => {
                let Ok((key, result)) = done else { continue };
                if let Some(m) = &metrics {
                    m.observe(&key, &result);
                }
                let changed = {
                    let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
                    let changed = b.complete(&key, result);
                    if let (true, Some(m), Some(r)) = (changed, &metrics, b.records.get(&key)) {
                        m.set_state(&key, r.state);
                    }
                    changed
                };
                if changed {
                    changes.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
                    changes.notify.notify_one();
                }
            }
            _ = sleep => {}
            res = targets.changed() => {
                if res.is_err() {
                    return;
                }
                let want = targets.borrow_and_update().clone();
                let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(m) = &metrics {
                    for gone in b.records.keys().filter(|k| !want.contains_key(*k)) {
                        m.forget(gone);
                    }
                }
                reconcile(&mut b, want);
            }
        }
    }
}

/// Takes in a new target set: new targets are probed at once (targets of
/// the first set, spread over their interval), changed ones keep their
/// verdict, gone ones are forgotten.
fn reconcile(b: &mut Book, want: BTreeMap<ProbeKey, Target>) {
    let first = !b.started;
    b.started = true;
    let now = Instant::now();
    let Book { records, due, .. } = b;
    records.retain(|k, r| {
        let keep = want.contains_key(k);
        if !keep {
            due.remove(&(r.next, *k));
        }
        keep
    });
    for (i, (key, target)) in want.into_iter().enumerate() {
        match b.records.get_mut(&key) {
            Some(r) => {
                let changed = r.target != target;
                r.target = target;
                if changed {
                    b.schedule(key, now);
                }
            }
            None => {
                let next = if first {
                    // Spread the first round so probes never march in step.
                    let spread = target.check.interval.as_millis() as u64;
                    now + Duration::from_millis((i as u64 * 37) % spread.max(1))
                } else {
                    now
                };
                b.records.insert(
                    key,
                    Record {
                        target,
                        state: HealthState::Unknown,
                        since: SystemTime::now(),
                        passes: 0,
                        fails: 0,
                        message: String::new(),
                        incumbent: first,
                        next,
                        in_flight: false,
                    },
                );
                b.due.insert((next, key));
            }
        }
    }
}

/// Counts one probe; true when the verdict changed.
fn record(key: &ProbeKey, r: &mut Record, result: Result<Duration, Failure>) -> bool {
    r.in_flight = false;
    let before = r.state;
    match result {
        Ok(took) => {
            r.passes = r.passes.saturating_add(1);
            r.fails = 0;
            if before == HealthState::Unknown || r.passes >= r.target.check.rise {
                r.state = HealthState::Healthy;
            }
            if r.state != HealthState::Unhealthy {
                r.message.clear();
            }
            debug!(service = %key.service, server = %key.server, ms = took.as_millis(), "probe passed");
        }
        Err(f) => {
            r.fails = r.fails.saturating_add(1);
            r.passes = 0;
            if r.fails >= r.target.check.fall {
                r.state = HealthState::Unhealthy;
            }
            // An unhealthy server keeps the words of the failure that made
            // it so: later ones are often worded differently (a timeout,
            // then a refusal), and each new wording would be another
            // status write, at every pass, for every service on it.
            if before != HealthState::Unhealthy {
                r.message = f.message;
            }
            debug!(service = %key.service, server = %key.server, error = %r.message, "probe failed");
        }
    }
    if r.state == before {
        return false;
    }
    r.since = SystemTime::now();
    match r.state {
        HealthState::Unhealthy => warn!(
            service = %key.service, server = %key.server, error = %r.message,
            "real server unhealthy: weight 0"
        ),
        _ => {
            info!(service = %key.service, server = %key.server, state = r.state.as_str(), "real server healthy")
        }
    }
    true
}

/// One probe: Ok with its duration, or what failed, in words.
async fn probe(key: ProbeKey, t: &Target) -> Result<Duration, Failure> {
    let started = Instant::now();
    let vip = key.service.vip;
    let port = t.check.port;
    let dest = SocketAddr::new(vip, port);
    // Words for a failure only: most probes pass.
    let via = || format!("{dest} through the tunnel to {}", key.server);
    if let Some(why) = &t.blocked {
        return Err(Failure::new(
            Reason::Unprobeable,
            format!("cannot probe {}: {why}", via()),
        ));
    }
    let (Some(mark), Some(source)) = (t.mark, t.source) else {
        return Err(Failure::new(
            Reason::Unprobeable,
            format!("cannot probe {}: no mark or source address", via()),
        ));
    };
    let timeout = t.check.timeout;
    let secs = timeout.as_secs();
    let work = async {
        let other = |m: String| Failure::new(Reason::Other, m);
        let sock = match vip {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| other(format!("socket: {e}")))?;
        let raw = socket2::SockRef::from(&sock);
        raw.set_mark(mark)
            .map_err(|e| other(format!("set mark {mark:#x} (needs CAP_NET_ADMIN): {e}")))?;
        // A probe ends with a reset, not a FIN: no TIME_WAIT socket is left
        // behind (at 500 probes/s those would hold every ephemeral port of
        // the source address within a minute), and the exchange is four
        // packets instead of seven.
        raw.set_linger(Some(Duration::ZERO))
            .map_err(|e| other(format!("set SO_LINGER: {e}")))?;
        sock.bind(SocketAddr::new(source, 0))
            .map_err(|e| other(format!("bind {source}: {e}")))?;
        let mut stream = sock.connect(dest).await.map_err(|e| {
            let reason = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => Reason::Refused,
                std::io::ErrorKind::ConnectionReset => Reason::Reset,
                std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                    Reason::Unreachable
                }
                _ => Reason::Other,
            };
            Failure::new(reason, format!("connect: {e}"))
        })?;
        if let ProbeKind::Http {
            path,
            host,
            expected,
        } = &t.check.kind
        {
            let host = host.clone().unwrap_or_else(|| dest.to_string());
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tunlb-health\r\nConnection: close\r\n\r\n"
            );
            stream
                .write_all(req.as_bytes())
                .await
                .map_err(|e| other(format!("send GET {path}: {e}")))?;
            let mut buf = [0u8; 64];
            let mut got = 0;
            while got < 12 {
                let n = stream
                    .read(&mut buf[got..])
                    .await
                    .map_err(|e| other(format!("read the answer to GET {path}: {e}")))?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            let status = status_code(&buf[..got]).ok_or_else(|| {
                Failure::new(
                    Reason::Status,
                    format!("GET {path}: no HTTP status line in the answer"),
                )
            })?;
            if !ValidHealthCheck::status_passes(expected, status) {
                let want = if expected.is_empty() {
                    "2xx or 3xx".to_string()
                } else {
                    expected
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(Failure::new(
                    Reason::Status,
                    format!("GET {path}: status {status} (expected {want})"),
                ));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(f)) => Err(Failure::new(f.reason, format!("{}: {}", via(), f.message))),
        Err(_) => Err(Failure::new(
            Reason::Timeout,
            format!("{}: timed out after {secs} s", via()),
        )),
    }
}

/// Why a probe failed, as metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Timeout,
    Refused,
    Reset,
    Unreachable,
    Status,
    Unprobeable,
    Other,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Refused => "refused",
            Reason::Reset => "reset",
            Reason::Unreachable => "unreachable",
            Reason::Status => "status",
            Reason::Unprobeable => "unprobeable",
            Reason::Other => "other",
        }
    }
}

/// A failed probe: why, and what happened in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    fn new(reason: Reason, message: String) -> Failure {
        Failure { reason, message }
    }
}

/// The status code of an HTTP/1.x status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head).ok()?;
    let mut words = text.split_whitespace();
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunlb_api::plan::{IpvsDest, IpvsService, ObjectPlan};
    use tunlb_api::validate::ValidTunnel;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn check() -> ValidHealthCheck {
        ValidHealthCheck {
            kind: ProbeKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
            port: 80,
        }
    }

    fn plan(servers: &[(&str, u32)]) -> (NodePlan, IpvsKey) {
        let owner = ObjectKey::new("default", "web");
        let key = IpvsKey {
            protocol: tunlb_api::Protocol::Tcp,
            vip: ip("192.0.2.1"),
            port: 80,
        };
        let mut p = NodePlan::default();
        let mut o = ObjectPlan::default();
        o.roles.insert(NodeRole::Director);
        p.objects.insert(owner.clone(), o);
        p.ipvs.insert(
            key,
            IpvsService {
                key,
                scheduler: "rr".into(),
                flags: 0,
                timeout: 0,
                netmask: u32::MAX,
                destinations: servers
                    .iter()
                    .map(|(a, w)| {
                        (
                            (ip(a), 80),
                            IpvsDest {
                                weight: *w,
                                upper_threshold: 0,
                                lower_threshold: 0,
                                tunnel: ValidTunnel {
                                    kind: tunlb_api::TunnelKind::Ipip,
                                    port: 0,
                                    flags: 0,
                                },
                            },
                        )
                    })
                    .collect(),
                owner,
                drain_timeout: 30,
                health: Some(check()),
            },
        );
        (p, key)
    }

    fn weights(p: &NodePlan, key: &IpvsKey) -> Vec<u32> {
        p.ipvs[key]
            .destinations
            .values()
            .map(|d| d.weight)
            .collect()
    }

    fn book_with(key: IpvsKey, states: &[(&str, HealthState, bool)]) -> Book {
        let mut b = Book {
            started: true,
            ..Book::default()
        };
        for (a, s, incumbent) in states {
            b.records.insert(
                ProbeKey {
                    service: key,
                    server: ip(a),
                },
                Record {
                    target: Target {
                        check: check(),
                        mark: Some(1),
                        source: None,
                        blocked: None,
                    },
                    state: *s,
                    since: SystemTime::now(),
                    passes: 0,
                    fails: 0,
                    message: String::new(),
                    incumbent: *incumbent,
                    next: Instant::now(),
                    in_flight: false,
                },
            );
        }
        b
    }

    #[test]
    fn unhealthy_and_new_servers_get_weight_0_incumbents_keep_theirs() {
        let (mut p, key) = plan(&[
            ("10.0.0.1", 2),
            ("10.0.0.2", 1),
            ("10.0.0.3", 1),
            ("10.0.0.4", 1),
        ]);
        let b = book_with(
            key,
            &[
                ("10.0.0.1", HealthState::Healthy, true),
                ("10.0.0.2", HealthState::Unhealthy, true),
                ("10.0.0.3", HealthState::Unknown, true),
                ("10.0.0.4", HealthState::Unknown, false),
            ],
        );
        assert!(gate(&mut p, &b).is_empty());
        assert_eq!(weights(&p, &key), vec![2, 0, 1, 0]);
    }

    #[test]
    fn a_server_the_book_has_not_seen_waits_once_probing_has_begun() {
        let (mut p, key) = plan(&[("10.0.0.1", 1), ("10.0.0.9", 1)]);
        let b = book_with(key, &[("10.0.0.1", HealthState::Healthy, true)]);
        gate(&mut p, &b);
        assert_eq!(weights(&p, &key), vec![1, 0]);
        let (mut p, key) = plan(&[("10.0.0.1", 1)]);
        gate(&mut p, &Book::default());
        assert_eq!(
            weights(&p, &key),
            vec![1],
            "before the first targets, nothing is held"
        );
    }

    #[test]
    fn all_unhealthy_fails_open_and_says_so() {
        let (mut p, key) = plan(&[("10.0.0.1", 1), ("10.0.0.2", 3)]);
        let b = book_with(
            key,
            &[
                ("10.0.0.1", HealthState::Unhealthy, true),
                ("10.0.0.2", HealthState::Unhealthy, true),
            ],
        );
        let open = gate(&mut p, &b);
        assert_eq!(open.len(), 1);
        assert_eq!(weights(&p, &key), vec![1, 3]);
    }

    #[test]
    fn a_changed_verdict_regates_its_service_from_planned_weights() {
        let (p, key) = plan(&[("10.0.0.1", 2), ("10.0.0.2", 3)]);
        let all = checked(&p, |_| true);
        let b = book_with(
            key,
            &[
                ("10.0.0.1", HealthState::Unhealthy, true),
                ("10.0.0.2", HealthState::Healthy, true),
            ],
        );
        let changed: BTreeSet<ProbeKey> = [ProbeKey {
            service: key,
            server: ip("10.0.0.1"),
        }]
        .into();
        let out = regate(&all, &b, &changed);
        assert_eq!(out.len(), 1);
        let w: Vec<u32> = out[0].destinations.values().map(|d| d.weight).collect();
        assert_eq!(w, vec![0, 3]);
        assert!(
            regate(&checked(&p, |_| false), &b, &changed).is_empty(),
            "services no pass programmed are left alone"
        );
    }

    #[test]
    fn verdicts_need_fall_failures_and_rise_passes() {
        let key = ProbeKey {
            service: plan(&[]).1,
            server: ip("10.0.0.1"),
        };
        let mut b = book_with(key.service, &[("10.0.0.1", HealthState::Unknown, false)]);
        let r = b.records.get_mut(&key).expect("record");
        assert!(record(&key, r, Ok(Duration::ZERO)), "first pass decides");
        assert_eq!(r.state, HealthState::Healthy);
        let refused = || Err(Failure::new(Reason::Refused, "refused".into()));
        assert!(!record(&key, r, refused()));
        assert!(record(&key, r, refused()), "second failure: out");
        assert_eq!(r.state, HealthState::Unhealthy);
        assert_eq!(r.message, "refused");
        let timeout = || Err(Failure::new(Reason::Timeout, "timed out after 1 s".into()));
        assert!(!record(&key, r, timeout()));
        assert_eq!(
            r.message, "refused",
            "an unhealthy server keeps the failure that made it so"
        );
        assert!(!record(&key, r, Ok(Duration::ZERO)));
        assert_eq!(r.message, "refused", "still unhealthy after one pass");
        assert!(record(&key, r, Ok(Duration::ZERO)), "second pass: back");
        assert_eq!(r.state, HealthState::Healthy);
        assert_eq!(r.message, "");
    }

    #[test]
    fn probes_are_taken_in_due_order_and_come_back_an_interval_later() {
        let (_, service) = plan(&[]);
        let key = |a: &str| ProbeKey {
            service,
            server: ip(a),
        };
        let target = Target {
            check: check(),
            mark: Some(1),
            source: None,
            blocked: None,
        };
        let mut b = Book::default();
        reconcile(
            &mut b,
            [
                (key("10.0.0.1"), target.clone()),
                (key("10.0.0.2"), target.clone()),
            ]
            .into(),
        );
        let now = Instant::now() + check().interval;
        let (first, _) = b.take_due(now).expect("due");
        let (second, _) = b.take_due(now).expect("due");
        assert_ne!(first, second);
        assert!(b.take_due(now).is_none(), "both are in flight");
        assert!(b.complete(&first, Ok(Duration::ZERO)));
        assert!(b.take_due(now).is_none(), "due again one interval later");
        assert_eq!(
            b.take_due(now + check().interval).map(|(k, _)| k),
            Some(first)
        );
        reconcile(&mut b, [(key("10.0.0.2"), target)].into());
        assert!(!b.complete(&first, Ok(Duration::ZERO)), "forgotten target");
        assert!(b.due.is_empty(), "10.0.0.2 is still in flight");
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 500"), Some(500));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH"), None);
    }
}
