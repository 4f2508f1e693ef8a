//! The agent's /metrics and /healthz: sync durations, errors and writes, and
//! IPVS statistics per VirtualService and real server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
            last_stats: Mutex::new(None),
        };
        let r = registry.sub_registry_with_prefix("tunlb_agent");
        r.register(
            "sync_duration_seconds",
            "Duration of one sync pass",
            m.sync_duration.clone(),
        );
        r.register(
            "sync_errors",
            "Sync passes that reported an error",
            m.sync_errors.clone(),
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
        if failed {
            self.sync_errors.inc();
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.last_pass_unix.store(now, Ordering::Relaxed);
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

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    metrics: Arc<AgentMetrics>,
    /// Unhealthy when no pass finished for this long.
    stale_after: u64,
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

async fn healthz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.metrics.since_last_pass() {
        Some(age) if age > s.stale_after => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("last sync {age}s ago\n"),
        ),
        _ => (StatusCode::OK, "ok\n".into()),
    }
}

/// Serves /metrics and /healthz until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    metrics: Arc<AgentMetrics>,
    stale_after: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(AppState {
            registry,
            metrics,
            stale_after: stale_after.as_secs(),
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
