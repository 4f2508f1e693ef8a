//! Prometheus metrics and health endpoints.
//!
//! `GET /metrics` serves OpenMetrics text, `GET /healthz` answers while the process
//! runs (liveness), and `GET /readyz` answers 200 once the controller's caches are
//! synced, whether or not this replica leads (readiness).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

/// Content type of the OpenMetrics text exposition format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Errors from the telemetry server.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The listen address could not be bound.
    #[error("binding telemetry server to {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("serving telemetry: {0}")]
    Serve(#[source] std::io::Error),
}

/// Labels of `tunlb_operator_reconcile_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// A short, low-cardinality error kind (not the error message).
    pub reason: String,
}

/// The operator's metrics. Cheap to clone; clones update the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    leader: Gauge,
}

impl Metrics {
    /// Registers the metrics in `registry`. Names carry the `tunlb_operator_` prefix
    /// themselves, so pass a registry without a prefix of its own.
    pub fn new(registry: &mut Registry) -> Self {
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        // 1 ms .. ~16 s in powers of two: reconciles are mostly API round trips.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let leader = Gauge::default();
        registry.register(
            "tunlb_operator_reconciles",
            "Reconciliations started",
            reconciles.clone(),
        );
        registry.register(
            "tunlb_operator_reconcile_errors",
            "Reconciliations that failed, by reason",
            failures.clone(),
        );
        registry.register_with_unit(
            "tunlb_operator_reconcile_duration",
            "Time taken by a reconciliation",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "tunlb_operator_leader",
            "1 while this replica holds the leader lease, else 0",
            leader.clone(),
        );
        Self {
            reconciles,
            failures,
            duration,
            leader,
        }
    }

    /// Counts a reconciliation and times it until the timer is finished or dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            histogram: Some(self.duration.clone()),
            start: Instant::now(),
        }
    }

    /// Counts a failed reconciliation. Keep `reason` to a small fixed set (e.g. an
    /// error variant name) so that the series stay few.
    pub fn reconcile_failed(&self, reason: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records whether this replica currently leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}

/// Times one reconciliation; records the elapsed seconds once, on [`finish`] or drop.
///
/// [`finish`]: ReconcileTimer::finish
#[derive(Debug)]
#[must_use = "the duration is recorded when the timer is dropped"]
pub struct ReconcileTimer {
    histogram: Option<Histogram>,
    start: Instant,
}

impl ReconcileTimer {
    /// Records the duration now and returns it.
    pub fn finish(mut self) -> Duration {
        self.record()
    }

    fn record(&mut self) -> Duration {
        let elapsed = self.start.elapsed();
        if let Some(histogram) = self.histogram.take() {
            histogram.observe(elapsed.as_secs_f64());
        }
        elapsed
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.record();
    }
}

/// Readiness flag shared between the controller and the health endpoint.
#[derive(Clone, Debug, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// A flag that starts out not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the process ready (caches synced) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` currently answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Health,
}

/// The telemetry routes, for embedding or testing.
pub fn router(registry: Arc<Registry>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health })
}

/// Binds `addr` and serves the telemetry routes until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TelemetryError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    serve_on(listener, registry, health, shutdown).await
}

/// Serves the telemetry routes on an already bound listener until `shutdown` completes.
pub async fn serve_on(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TelemetryError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics and health endpoints");
    }
    axum::serve(listener, router(registry, health))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(TelemetryError::Serve)
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    match encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.health.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn encoded(registry: &Registry) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, registry)?;
        Ok(out)
    }

    #[test]
    fn encodes_reconciles_errors_and_durations() -> TestResult {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let timer = metrics.reconcile_started();
        let took = timer.finish();
        assert!(took < Duration::from_secs(1));
        {
            let _timer = metrics.reconcile_started();
            metrics.reconcile_failed("vip_conflict");
        }
        metrics.reconcile_failed("vip_conflict");
        metrics.set_leader(true);

        let text = encoded(&registry)?;
        assert!(
            text.contains("# TYPE tunlb_operator_reconciles counter"),
            "{text}"
        );
        assert!(
            text.contains("\ntunlb_operator_reconciles_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("\ntunlb_operator_reconcile_errors_total{reason=\"vip_conflict\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tunlb_operator_reconcile_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT tunlb_operator_reconcile_duration_seconds seconds"),
            "{text}"
        );
        // Both timers recorded exactly once: finish() must not record again on drop.
        assert!(
            text.contains("\ntunlb_operator_reconcile_duration_seconds_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("tunlb_operator_reconcile_duration_seconds_bucket{le=\"0.001\"}"),
            "{text}"
        );
        assert!(text.contains("\ntunlb_operator_leader 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        Ok(())
    }

    /// Minimal HTTP/1.1 GET; returns (status, headers+body as text).
    async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), std::io::Error> {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, response))
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() -> TestResult {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        drop(metrics.reconcile_started());
        let health = Health::new();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_on(
            listener,
            Arc::new(registry),
            health.clone(),
            async move {
                let _ = stopped.await;
            },
        ));

        let (status, body) = get(addr, "/healthz").await?;
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with("ok\n"), "{body}");

        let (status, body) = get(addr, "/readyz").await?;
        assert_eq!(status, 503, "{body}");
        health.set_ready(true);
        let (status, body) = get(addr, "/readyz").await?;
        assert_eq!(status, 200, "{body}");

        let (status, body) = get(addr, "/metrics").await?;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.to_ascii_lowercase()
                .contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
            "{body}"
        );
        assert!(
            body.contains("\ntunlb_operator_reconciles_total 1\n"),
            "{body}"
        );

        let (status, _) = get(addr, "/nope").await?;
        assert_eq!(status, 404);

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server).await???;
        Ok(())
    }
}
