use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ipnet::IpNet;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tunlb_operator::controller::{self, Settings};
use tunlb_operator::decide::Policy;
use tunlb_operator::leader::{self, LeaseConfig};
use tunlb_operator::telemetry::{self, Health, Metrics};

/// tunlb operator: resolves VirtualService backends, judges VIPs against the
/// cluster's VipPools and conflicts, and reports status.
#[derive(Parser)]
#[command(name = "tunlb-operator", version)]
struct Args {
    /// The cluster's Service CIDRs: VIPs inside them are refused.
    #[arg(
        long = "service-cidr",
        env = "TUNLB_SERVICE_CIDRS",
        value_delimiter = ','
    )]
    service_cidrs: Vec<IpNet>,
    /// Metrics and health endpoints.
    #[arg(long, env = "TUNLB_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tunlb-system")]
    lease_namespace: String,
    #[arg(long, default_value = "tunlb-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (defaults to the pod name / hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long deletion waits for nodes to report their programming removed.
    #[arg(long, default_value = "300", value_name = "SECONDS")]
    finalizer_timeout: u64,
    /// Periodic re-check of every VirtualService, a safety net: every input is
    /// watched. Each object's interval is drawn from [3/4, 1] of this, so
    /// objects judged together do not resync together.
    #[arg(long, default_value = "3600", value_name = "SECONDS")]
    resync: u64,
    /// Log as JSON lines.
    #[arg(long, env = "TUNLB_LOG_JSON")]
    log_json: bool,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TUNLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // Colour codes only for a terminal: not in files or `kubectl logs`.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

/// Resolves when SIGTERM or Ctrl-C arrives.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

// One thread: the operator waits on the API server, not on CPU (10,000
// objects converge in ~9 CPU-seconds), and a single malloc arena keeps its
// memory ~2 MB lower at that scale.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);
    let client = kube::Client::try_default()
        .await
        .context("connect to the Kubernetes API")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "tunlb-operator".into())
    });

    // One shutdown broadcast, fanned out to every task.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let registry = Arc::new(registry);
    let health = Health::new();

    let telemetry_task = tokio::spawn(telemetry::serve(
        args.metrics_addr,
        registry,
        health.clone(),
        stopped(),
    ));
    // The Lease is released only once the reconciles in flight are done, so
    // that the next leader never writes alongside them.
    let (release_tx, mut release_rx) = watch::channel(false);
    let (leading, lease_task) = leader::spawn(
        client.clone(),
        LeaseConfig::new(&args.lease_namespace, &args.lease_name, &identity),
        async move {
            let _ = release_rx.wait_for(|r| *r).await;
        },
    );
    {
        let metrics = metrics.clone();
        let mut l = leading.clone();
        tokio::spawn(async move {
            while l.changed().await.is_ok() {
                metrics.set_leader(l.is_leading());
            }
        });
    }

    let settings = Settings {
        policy: Policy {
            service_cidrs: args.service_cidrs,
        },
        finalizer_timeout: Duration::from_secs(args.finalizer_timeout),
        resync: Duration::from_secs(args.resync),
        identity,
    };
    let ready_health = health.clone();
    let controller_task = tokio::spawn(controller::run(
        client,
        settings,
        metrics,
        leading,
        move |ok| ready_health.set_ready(ok),
        stopped(),
    ));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = controller_task.await;
    let _ = release_tx.send(true);
    let _ = lease_task.await;
    if let Ok(Err(e)) = telemetry_task.await {
        tracing::warn!(error = %e, "telemetry server");
    }
    Ok(())
}
