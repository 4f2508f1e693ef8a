//! The agent's /metrics, /healthz and /livez: sync durations, errors and
//! writes, IPVS statistics per VirtualService and real server, and whether
//! sync passes run and succeed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::Mutex;
use tunlb_api::plan::NodePlan;

use crate::dataplane::Dataplane;
use crate::dataplane::ipvs_diff::service_key;

/// One VRRP virtual router.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouterLabels {
    pub vrid: String,
    /// ipv4 or ipv6: ids are per family.
    pub family: String,
}

/// The VRRP families, one series per virtual router.
#[derive(Default)]
struct VrrpFamilies {
    master: Family<RouterLabels, Gauge>,
    transitions: Family<RouterLabels, Counter>,
    sent: Family<RouterLabels, Counter>,
    received: Family<RouterLabels, Counter>,
    other_masters: Family<RouterLabels, Counter>,
    takeover: Family<RouterLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    split_brain: Family<RouterLabels, Gauge>,
    vrid_clash: Family<RouterLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestLabels {
    pub namespace: String,
    pub name: String,
    pub vip: String,
    pub port: String,
    pub protocol: String,
    pub real_server: String,
}

/// How often IPVS statistics are re-read (each read dumps every owned service).
const STATS_EVERY: Duration = Duration::from_secs(15);

pub struct AgentMetrics {
    sync_duration: Histogram,
    sync_errors: Counter,
    writes: Counter,
    connections: Family<DestLabels, Gauge>,
    active: Family<DestLabels, Gauge>,
    inactive: Family<DestLabels, Gauge>,
    packets_in: Family<DestLabels, Gauge>,
    packets_out: Family<DestLabels, Gauge>,
    bytes_in: Family<DestLabels, Gauge>,
    bytes_out: Family<DestLabels, Gauge>,
    /// Destinations left out of the statistics (see `max_destinations`).
    stats_omitted: Gauge,
    /// Per-destination series cost memory and scrape time on every node:
    /// 100,000 destinations x 7 series took the agent to ~470 MB.
    max_destinations: usize,
    last_pass_unix: AtomicU64,
    /// When the last pass that changed the kernel finished writing: what a change's
    /// time to the kernel is read from without watching the kernel.
    last_change: Gauge<f64, AtomicU64>,
    /// Passes that failed in a row, up to the last one (0 after a good one).
    consecutive_failed: AtomicU32,
    consecutive_failed_gauge: Gauge,
    /// Accepted VirtualServices this node refuses to program (see `admission`).
    pool_refused: Gauge,
    vrrp: VrrpFamilies,
    last_stats: Mutex<Option<Instant>>,
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl AgentMetrics {
    pub fn new(registry: &mut Registry, max_destinations: usize) -> AgentMetrics {
        let m = AgentMetrics {
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            sync_errors: Counter::default(),
            writes: Counter::default(),
            connections: Family::default(),
            active: Family::default(),
            inactive: Family::default(),
            packets_in: Family::default(),
            packets_out: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            stats_omitted: Gauge::default(),
            max_destinations,
            last_pass_unix: AtomicU64::new(0),
            last_change: Gauge::default(),
            consecutive_failed: AtomicU32::new(0),
            consecutive_failed_gauge: Gauge::default(),
            pool_refused: Gauge::default(),
            vrrp: VrrpFamilies::default(),
            last_stats: Mutex::new(None),
        };
        let r = registry.sub_registry_with_prefix("tunlb_agent");
        r.register(
            "sync_duration_seconds",
            "Duration of one sync pass",
            m.sync_duration.clone(),
        );
        r.register(
            "last_change_timestamp_seconds",
            "When the last sync pass that wrote to the kernel finished writing (Unix time)",
            m.last_change.clone(),
        );
        r.register(
            "sync_errors",
            "Sync passes that failed on the node itself (not an object's refusal)",
            m.sync_errors.clone(),
        );
        r.register(
            "consecutive_failed_passes",
            "Sync passes that reported an error in a row, up to the last one (0 after a pass without errors)",
            m.consecutive_failed_gauge.clone(),
        );
        r.register(
            "pool_refused_objects",
            "Accepted VirtualServices this node does not program because no VipPool admits what it would program for them",
            m.pool_refused.clone(),
        );
        r.register(
            "vrrp_master",
            "1 while this node is the VRRP master of the virtual router (holds its VIPs), else 0",
            m.vrrp.master.clone(),
        );
        r.register(
            "vrrp_transitions",
            "VRRP state changes of the virtual router",
            m.vrrp.transitions.clone(),
        );
        r.register(
            "vrrp_adverts_sent",
            "VRRP advertisements sent (one per peer)",
            m.vrrp.sent.clone(),
        );
        r.register(
            "vrrp_adverts_received",
            "Valid VRRP advertisements received from peers",
            m.vrrp.received.clone(),
        );
        r.register(
            "vrrp_other_masters",
            "Advertisements from another master heard while master (resolved by priority unless it lasts: see vrrp_split_brain)",
            m.vrrp.other_masters.clone(),
        );
        r.register(
            "vrrp_last_takeover_seconds",
            "From the last advertisement heard from a peer to becoming master, at the last takeover",
            m.vrrp.takeover.clone(),
        );
        r.register(
            "vrrp_split_brain",
            "1 while another member keeps advertising as master while this node is master (both hold the VIPs), else 0",
            m.vrrp.split_brain.clone(),
        );
        r.register(
            "vrrp_id_clash",
            "1 while a speaker that is not a member advertises this virtual router id (its adverts are ignored), else 0",
            m.vrrp.vrid_clash.clone(),
        );
        r.register(
            "kernel_writes",
            "Kernel write operations made",
            m.writes.clone(),
        );
        r.register(
            "ipvs_connections",
            "Connections scheduled to the real server since it was added",
            m.connections.clone(),
        );
        r.register(
            "ipvs_active_connections",
            "Established connections to the real server",
            m.active.clone(),
        );
        r.register(
            "ipvs_inactive_connections",
            "Other connections to the real server",
            m.inactive.clone(),
        );
        r.register(
            "ipvs_packets_in",
            "Packets from clients forwarded to the real server",
            m.packets_in.clone(),
        );
        r.register(
            "ipvs_packets_out",
            "Packets from the real server (0 in tunnel mode: replies bypass the director)",
            m.packets_out.clone(),
        );
        r.register(
            "ipvs_bytes_in",
            "Bytes from clients forwarded to the real server",
            m.bytes_in.clone(),
        );
        r.register(
            "ipvs_bytes_out",
            "Bytes from the real server",
            m.bytes_out.clone(),
        );
        r.register(
            "ipvs_stats_omitted",
            "IPVS destinations whose statistics are not exported (over --ipvs-stats-max-destinations)",
            m.stats_omitted.clone(),
        );
        m
    }

    pub fn record_sync(&self, took: Duration, writes: u64, failed: bool) {
        self.sync_duration.observe(took.as_secs_f64());
        self.writes.inc_by(writes);
        let in_a_row = if failed {
            self.sync_errors.inc();
            self.consecutive_failed.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_failed.store(0, Ordering::Relaxed);
            0
        };
        self.consecutive_failed_gauge.set(i64::from(in_a_row));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_pass_unix.store(now.as_secs(), Ordering::Relaxed);
        if writes > 0 {
            self.last_change.set(now.as_secs_f64());
        }
    }

    /// How many accepted VirtualServices the last pass refused to program.
    /// The series one virtual router's speaker updates.
    pub fn vrrp(&self, labels: &RouterLabels) -> crate::vrrp::speaker::SpeakerStats {
        crate::vrrp::speaker::SpeakerStats {
            master: self.vrrp.master.get_or_create(labels).clone(),
            transitions: self.vrrp.transitions.get_or_create(labels).clone(),
            sent: self.vrrp.sent.get_or_create(labels).clone(),
            received: self.vrrp.received.get_or_create(labels).clone(),
            other_masters: self.vrrp.other_masters.get_or_create(labels).clone(),
            takeover_seconds: self.vrrp.takeover.get_or_create(labels).clone(),
            split_brain: self.vrrp.split_brain.get_or_create(labels).clone(),
            vrid_clash: self.vrrp.vrid_clash.get_or_create(labels).clone(),
        }
    }

    /// Drops a stopped virtual router's series.
    pub fn forget_vrrp(&self, labels: &RouterLabels) {
        self.vrrp.master.remove(labels);
        self.vrrp.transitions.remove(labels);
        self.vrrp.sent.remove(labels);
        self.vrrp.received.remove(labels);
        self.vrrp.other_masters.remove(labels);
        self.vrrp.takeover.remove(labels);
        self.vrrp.split_brain.remove(labels);
        self.vrrp.vrid_clash.remove(labels);
    }

    pub fn set_pool_refused(&self, objects: usize) {
        self.pool_refused
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    /// Seconds since the last sync pass finished (None before the first).
    pub fn since_last_pass(&self) -> Option<u64> {
        let last = self.last_pass_unix.load(Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok()?;
        (last != 0).then(|| now.saturating_sub(last))
    }

    /// Sync passes that failed in a row, up to the last one.
    pub fn consecutive_failed_passes(&self) -> u32 {
        self.consecutive_failed.load(Ordering::Relaxed)
    }

    /// Re-reads IPVS statistics for the services this node directs.
    pub async fn refresh_ipvs(&self, dp: &mut Dataplane, plan: &NodePlan) {
        {
            let mut last = self.last_stats.lock().await;
            if last.is_some_and(|t| t.elapsed() < STATS_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        for f in [
            &self.connections,
            &self.active,
            &self.inactive,
            &self.packets_in,
            &self.packets_out,
            &self.bytes_in,
            &self.bytes_out,
        ] {
            f.clear();
        }
        let destinations: usize = plan.ipvs.values().map(|s| s.destinations.len()).sum();
        if destinations > self.max_destinations {
            if self.stats_omitted.set(destinations as i64) == 0 {
                tracing::warn!(
                    destinations,
                    max = self.max_destinations,
                    "too many IPVS destinations for per-real-server statistics; raise --ipvs-stats-max-destinations to export them"
                );
            }
            return;
        }
        self.stats_omitted.set(0);
        if plan.ipvs.is_empty() {
            return;
        }
        let Ok(client) = dp.ipvs().await else { return };
        let keys: Vec<_> = plan.ipvs.keys().map(service_key).collect();
        let dumps = client.destinations_many(&keys).await;
        for (svc, res) in plan.ipvs.values().zip(dumps) {
            let Ok(dests) = res else { continue };
            for d in dests {
                let labels = DestLabels {
                    namespace: svc.owner.namespace.to_string(),
                    name: svc.owner.name.to_string(),
                    vip: svc.key.vip.to_string(),
                    port: svc.key.port.to_string(),
                    protocol: svc.key.protocol.to_string(),
                    real_server: d.dest.addr.to_string(),
                };
                self.connections
                    .get_or_create(&labels)
                    .set(gauge(d.stats.conns));
                self.active
                    .get_or_create(&labels)
                    .set(i64::from(d.active_conns));
                self.inactive
                    .get_or_create(&labels)
                    .set(i64::from(d.inactive_conns));
                self.packets_in
                    .get_or_create(&labels)
                    .set(gauge(d.stats.inpkts));
                self.packets_out
                    .get_or_create(&labels)
                    .set(gauge(d.stats.outpkts));
                self.bytes_in
                    .get_or_create(&labels)
                    .set(gauge(d.stats.inbytes));
                self.bytes_out
                    .get_or_create(&labels)
                    .set(gauge(d.stats.outbytes));
            }
        }
    }
}

/// When the agent reports itself unhealthy.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    /// No sync pass finished for this long: the loop is stuck. /livez and
    /// /healthz both fail.
    pub stale_after: Duration,
    /// This many sync passes in a row reported errors: /healthz fails until
    /// a pass succeeds.
    pub failed_passes: u32,
}

/// Why the agent is unhealthy, or `None` when it is healthy. `age` is the
/// seconds since the last pass finished (`None` before the first: starting
/// up is not stuck); `failed` the passes that failed in a row. With
/// `failed_passes` unset (`None`, as for /livez) only the age counts.
pub fn unhealthy(
    age: Option<u64>,
    failed: u32,
    stale_after: Duration,
    failed_passes: Option<u32>,
) -> Option<String> {
    if let Some(age) = age
        && age > stale_after.as_secs()
    {
        return Some(format!(
            "last sync {age}s ago (more than {}s)",
            stale_after.as_secs()
        ));
    }
    match failed_passes {
        Some(limit) if failed >= limit.max(1) => Some(format!(
            "the last {failed} sync passes failed (unhealthy after {limit}); their errors are in the agent's log and in status.nodes"
        )),
        _ => None,
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    metrics: Arc<AgentMetrics>,
    policy: HealthPolicy,
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    let mut body = String::new();
    match encode(&mut body, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}

fn answer(reason: Option<String>) -> (StatusCode, String) {
    match reason {
        Some(r) => (StatusCode::SERVICE_UNAVAILABLE, format!("{r}\n")),
        None => (StatusCode::OK, "ok\n".into()),
    }
}

/// Passes run and succeed: the readiness check.
async fn healthz(State(s): State<AppState>) -> (StatusCode, String) {
    answer(unhealthy(
        s.metrics.since_last_pass(),
        s.metrics.consecutive_failed_passes(),
        s.policy.stale_after,
        Some(s.policy.failed_passes),
    ))
}

/// Passes run, whatever their outcome: the liveness check. A restart does
/// not fix what failing passes report (an object the kernel refuses, a
/// missing interface, a broken `nft`), and sockets are reopened without one.
async fn livez(State(s): State<AppState>) -> (StatusCode, String) {
    answer(unhealthy(
        s.metrics.since_last_pass(),
        0,
        s.policy.stale_after,
        None,
    ))
}

/// The /metrics, /healthz and /livez routes.
pub fn router(registry: Arc<Registry>, metrics: Arc<AgentMetrics>, policy: HealthPolicy) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(AppState {
            registry,
            metrics,
            policy,
        })
}

/// Serves /metrics, /healthz and /livez until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    metrics: Arc<AgentMetrics>,
    policy: HealthPolicy,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, registry, metrics, policy, shutdown).await
}

/// [`serve`] on a listener that is already bound.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    metrics: Arc<AgentMetrics>,
    policy: HealthPolicy,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, metrics, policy))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const STALE: Duration = Duration::from_secs(90);

    #[test]
    fn health_follows_failed_passes_in_a_row_and_the_last_pass_age() {
        // Starting up (no pass yet) and good passes.
        assert_eq!(unhealthy(None, 0, STALE, Some(3)), None);
        assert_eq!(unhealthy(Some(5), 0, STALE, Some(3)), None);
        // Failures below the limit are tolerated; at the limit they are not.
        assert_eq!(unhealthy(Some(5), 2, STALE, Some(3)), None);
        let r = unhealthy(Some(5), 3, STALE, Some(3)).unwrap_or_default();
        assert!(
            r.starts_with("the last 3 sync passes failed (unhealthy after 3)"),
            "{r}"
        );
        assert!(unhealthy(Some(5), 7, STALE, Some(3)).is_some());
        assert!(unhealthy(Some(5), 1, STALE, Some(1)).is_some());
        // A limit of 0 means the first failure, like 1.
        assert!(unhealthy(Some(5), 1, STALE, Some(0)).is_some());
        assert_eq!(unhealthy(Some(5), 0, STALE, Some(0)), None);
        // A stuck loop is unhealthy whatever the passes said, also for liveness.
        assert_eq!(
            unhealthy(Some(91), 0, STALE, Some(3)).as_deref(),
            Some("last sync 91s ago (more than 90s)")
        );
        assert!(unhealthy(Some(91), 0, STALE, None).is_some());
        assert_eq!(unhealthy(Some(90), 0, STALE, None), None);
        // Liveness ignores failed passes.
        assert_eq!(unhealthy(Some(5), 100, STALE, None), None);
    }

    #[test]
    fn failed_passes_are_counted_until_a_good_one() {
        let mut registry = Registry::default();
        let m = AgentMetrics::new(&mut registry, 10);
        let gauge = |registry: &Registry| {
            let mut text = String::new();
            encode(&mut text, registry).unwrap_or_else(|e| panic!("{e}"));
            text.lines()
                .find_map(|l| l.strip_prefix("tunlb_agent_consecutive_failed_passes "))
                .map(str::to_string)
        };
        assert_eq!(gauge(&registry).as_deref(), Some("0"));
        for _ in 0..2 {
            m.record_sync(Duration::from_millis(1), 0, true);
        }
        assert_eq!(m.consecutive_failed_passes(), 2);
        assert_eq!(gauge(&registry).as_deref(), Some("2"));
        m.record_sync(Duration::from_millis(1), 1, false);
        assert_eq!(m.consecutive_failed_passes(), 0);
        assert_eq!(gauge(&registry).as_deref(), Some("0"));
    }

    /// Minimal HTTP/1.1 GET; returns (status, response text).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, response)
    }

    #[tokio::test]
    async fn healthz_fails_after_failed_passes_and_recovers_after_a_good_one() {
        let mut registry = Registry::default();
        let metrics = Arc::new(AgentMetrics::new(&mut registry, 10));
        let policy = HealthPolicy {
            stale_after: STALE,
            failed_passes: 3,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_on(
            listener,
            Arc::new(registry),
            metrics.clone(),
            policy,
            async move {
                let _ = stopped.await;
            },
        ));

        let (status, body) = get(addr, "/healthz").await;
        assert_eq!(status, 200, "before the first pass: {body}");
        for _ in 0..2 {
            metrics.record_sync(Duration::from_millis(1), 0, true);
        }
        let (status, body) = get(addr, "/healthz").await;
        assert_eq!(status, 200, "two failed passes: {body}");
        metrics.record_sync(Duration::from_millis(1), 0, true);
        let (status, body) = get(addr, "/healthz").await;
        assert_eq!(status, 503, "three failed passes: {body}");
        assert!(body.contains("the last 3 sync passes failed"), "{body}");
        let (status, body) = get(addr, "/livez").await;
        assert_eq!(status, 200, "liveness ignores failed passes: {body}");
        let (_, body) = get(addr, "/metrics").await;
        assert!(
            body.contains("\ntunlb_agent_consecutive_failed_passes 3\n"),
            "{body}"
        );

        metrics.record_sync(Duration::from_millis(1), 0, false);
        let (status, body) = get(addr, "/healthz").await;
        assert_eq!(status, 200, "after a good pass: {body}");
        assert!(body.ends_with("ok\n"), "{body}");

        let _ = stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("server did not stop cleanly: {other:?}"),
        }
    }
}
