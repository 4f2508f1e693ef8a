use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tunlb_agent::dataplane::Dataplane;
use tunlb_agent::standalone::{self, NodeArgs, Outcome};
use tunlb_api::DEFAULT_DIRECTOR_LABEL;

/// tunlb node agent: IPVS tunnel services on directors; tunl0 VIPs, ARP/rp_filter
/// sysctls and port-mapping DNAT on backends.
#[derive(Parser)]
#[command(
    name = "tunlb-agent",
    version,
    after_help = "Environment: TUNLB_KERNEL_TIMEOUT_SECONDS (default 30) bounds each rtnetlink call, \
                  IPVS request, write batch or dump, and nft run; a call that takes longer fails \
                  with an error naming it, and its socket is replaced (nft is killed)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply VirtualService manifests to this host (no Kubernetes needed).
    Apply {
        #[command(flatten)]
        node: NodeFlags,
        /// Files or directories of VirtualService YAML.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove the VirtualServices named in the manifests, and exactly what they added.
    Delete {
        #[command(flatten)]
        node: NodeFlags,
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Standalone and long-running: apply the manifests, then again every
    /// --resync-seconds and whenever a health verdict changes, with real
    /// servers' weights following health probes through the tunnel. Stops
    /// on SIGTERM, leaving the kernel as programmed.
    Serve {
        #[command(flatten)]
        node: NodeFlags,
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// A pass at least this often (drift repair, drains, edited manifests).
        #[arg(long, default_value = "10")]
        resync_seconds: u64,
        /// Another director of these manifests, NAME=ADDRESS (its node name
        /// and the address its VRRP adverts come from; repeat for each, and
        /// once per family). Directors then elect, by VRRP, which one holds
        /// each VIP, as in Kubernetes mode; every director serves the same
        /// manifests and names the others.
        #[arg(long = "peer")]
        peers: Vec<String>,
        #[command(flatten)]
        probes: ProbeFlags,
    },
    /// Print this host's IPVS table (ipvsadm -Ln layout, plus each tunnel's encapsulation), VIP addresses, GUE ports, sysctls and DNAT table.
    Show,
    /// Kubernetes mode: watch VirtualServices and this Node, program the kernel, report status.
    Run(RunFlags),
    /// A VRRP version 3 (RFC 5798) speaker: elects one master among the
    /// directors on a segment (tunlb agents or keepalived), which alone holds
    /// the VIPs on the interface. On SIGTERM a master advertises priority 0
    /// (a backup takes over after its skew time) and removes the VIPs.
    Vrrp(VrrpFlags),
}

#[derive(Args)]
struct VrrpFlags {
    /// The interface that carries adverts and the VIPs.
    #[arg(long)]
    interface: String,
    /// Virtual router ID, 1-255, the same on every director of the VIPs.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..))]
    vrid: u8,
    /// 1-254; 255 claims ownership of the VIPs (master at once).
    #[arg(long, default_value = "100", value_parser = clap::value_parser!(u8).range(1..))]
    priority: u8,
    /// Advertisement interval in milliseconds, a multiple of 10 (the wire
    /// unit is the centisecond), at most 40950.
    #[arg(long = "advert-ms", default_value = "1000", value_parser = parse_advert_ms)]
    advert_cs: u16,
    /// Unicast peers (repeat); without any, adverts go to the VRRP multicast group.
    #[arg(long = "peer")]
    peers: Vec<IpAddr>,
    /// A virtual address (host prefix: /32 or /128, or none); repeat for more.
    #[arg(long = "vip", required = true, value_parser = parse_vip)]
    vips: Vec<IpAddr>,
    /// Source address of adverts (default: the interface's first address of
    /// the VIPs' family; link-local for IPv6 multicast).
    #[arg(long)]
    source: Option<IpAddr>,
    /// Do not take over from a lower-priority master that is alive.
    #[arg(long)]
    no_preempt: bool,
    /// Gratuitous ARPs / unsolicited neighbour advertisements per VIP on takeover.
    #[arg(long, default_value = "5")]
    garp_count: u32,
    /// Spacing between them.
    #[arg(long, default_value = "0")]
    garp_interval_ms: u64,
    /// Seconds after a takeover to send them again (0: never).
    #[arg(long, default_value = "5")]
    garp_repeat_after_s: u64,
}

/// Milliseconds on the command line, centiseconds on the wire.
fn parse_advert_ms(s: &str) -> Result<u16, String> {
    let ms: u32 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if ms == 0
        || !ms.is_multiple_of(10)
        || ms / 10 > u32::from(tunlb_agent::vrrp::packet::MAX_INTERVAL_CS)
    {
        return Err(format!(
            "{ms} ms: the interval must be a multiple of 10 ms from 10 to 40950"
        ));
    }
    u16::try_from(ms / 10).map_err(|e| e.to_string())
}

fn parse_vip(s: &str) -> Result<IpAddr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let host = if ip.is_ipv4() { "32" } else { "128" };
    match prefix {
        None => Ok(ip),
        Some(p) if p == host => Ok(ip),
        Some(p) => Err(format!("{s}: VIPs are host addresses (/{host}), not /{p}")),
    }
}

#[derive(Args)]
struct RunFlags {
    /// This node's name (the DaemonSet sets it from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    #[arg(long, env = "TUNLB_STATE_DIR", default_value = "/var/lib/tunlb")]
    state_dir: PathBuf,
    /// A pass at least this often, repairing drift: addresses, tunnels,
    /// sysctls and port mapping are re-read every time, IPVS services in
    /// turns (a tenth of them each time, every one within 10 resyncs;
    /// tables up to 64 services whole). Passes on changes read only the
    /// services that changed.
    #[arg(long, env = "TUNLB_RESYNC_SECONDS", default_value = "30")]
    resync_seconds: u64,
    /// Wait this long after a change so that bursts are applied together.
    #[arg(long, default_value = "100")]
    debounce_ms: u64,
    /// /metrics and /healthz.
    #[arg(long, env = "TUNLB_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: std::net::SocketAddr,
    /// Per-real-server IPVS statistics are exported while the node has at
    /// most this many IPVS destinations (7 series each); above it, none
    /// are, and tunlb_agent_ipvs_stats_omitted says how many were left out.
    #[arg(
        long,
        env = "TUNLB_IPVS_STATS_MAX_DESTINATIONS",
        default_value = "2000"
    )]
    ipvs_stats_max_destinations: usize,
    /// /healthz answers 503 once this many sync passes in a row reported
    /// errors, and 200 again after one without; /livez looks only at
    /// whether passes still finish.
    #[arg(
        long,
        env = "TUNLB_UNHEALTHY_AFTER_FAILED_PASSES",
        default_value = "3",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    unhealthy_after_failed_passes: u32,
    #[command(flatten)]
    probes: ProbeFlags,
    #[command(flatten)]
    sync: SyncFlags,
}

#[derive(Args, Clone, Copy)]
struct ProbeFlags {
    /// Health probes in flight at once, however many real servers there are.
    #[arg(long, env = "TUNLB_MAX_PROBES_IN_FLIGHT", default_value_t = tunlb_agent::health::DEFAULT_MAX_IN_FLIGHT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_probes_in_flight: usize,
    /// The first firewall mark of the IPVS services that carry health
    /// probes (one mark per checked real server, up to 65536 from here).
    /// Pick a range no other mark user on the node (kube-proxy, a CNI) uses.
    #[arg(long, env = "TUNLB_PROBE_MARK_BASE", default_value = "0x7e000000", value_parser = parse_mark)]
    probe_mark_base: u32,
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is not a mark: {e}"))?;
    if v == 0
        || v.checked_add(tunlb_agent::dataplane::probe::MARK_COUNT)
            .is_none()
    {
        return Err(format!(
            "{s}: the base must be at least 1 and leave room for {} marks",
            tunlb_agent::dataplane::probe::MARK_COUNT
        ));
    }
    Ok(v)
}

#[derive(Args)]
struct NodeFlags {
    /// This node's name (defaults to the hostname).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Extra addresses that identify this host as a real server (its interface
    /// addresses are found automatically).
    #[arg(long = "address")]
    addresses: Vec<IpAddr>,
    /// Node labels, matched against spec.directors.nodeSelector (KEY=VALUE).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Shorthand for --label tunlb.io/director=true.
    #[arg(long)]
    director: bool,
    /// Where the agent records what it owns.
    #[arg(long, env = "TUNLB_STATE_DIR", default_value = "/var/lib/tunlb")]
    state_dir: PathBuf,
    /// Do not wait for removed real servers to drain (spec.drainTimeoutSeconds):
    /// leave them at weight 0; the next apply or delete removes them once idle.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    sync: SyncFlags,
}

/// IPVS connection sync between directors. Standalone, like --director,
/// give them to every apply and delete: a run without them stops the
/// daemons tunlb started. In Kubernetes mode the chart's agent.ipvsSync
/// sets them.
#[derive(Args)]
struct SyncFlags {
    /// While this node directs, run the kernel's master and backup IPVS
    /// sync daemons on this interface, so that established connections
    /// survive a move of the VIP to another director running them too.
    #[arg(long, env = "TUNLB_IPVS_SYNC_INTERFACE")]
    ipvs_sync_interface: Option<String>,
    /// Sync ID, 0-255: the same on the directors of one VIP, different from
    /// other director groups sharing the segment.
    #[arg(long, env = "TUNLB_IPVS_SYNC_ID", default_value = "0")]
    ipvs_sync_id: u8,
    /// Most bytes of sync payload per datagram (kernel default: from the MTU).
    #[arg(long, env = "TUNLB_IPVS_SYNC_MAXLEN", requires = "ipvs_sync_interface")]
    ipvs_sync_maxlen: Option<u16>,
    /// Multicast group (kernel default 224.0.0.81).
    #[arg(long, env = "TUNLB_IPVS_SYNC_GROUP", requires = "ipvs_sync_interface", value_parser = parse_multicast)]
    ipvs_sync_group: Option<IpAddr>,
    /// Base UDP port (kernel default 8848).
    #[arg(long, env = "TUNLB_IPVS_SYNC_PORT", requires = "ipvs_sync_interface")]
    ipvs_sync_port: Option<u16>,
    /// Multicast TTL (kernel default 1).
    #[arg(long, env = "TUNLB_IPVS_SYNC_TTL", requires = "ipvs_sync_interface")]
    ipvs_sync_ttl: Option<u8>,
}

fn parse_multicast(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if ip.is_multicast() {
        Ok(ip)
    } else {
        Err(format!("{ip} is not a multicast address"))
    }
}

impl SyncFlags {
    fn settings(&self) -> Option<tunlb_agent::dataplane::sync_daemon::Settings> {
        Some(tunlb_agent::dataplane::sync_daemon::Settings {
            interface: self.ipvs_sync_interface.clone()?,
            sync_id: self.ipvs_sync_id,
            max_len: self.ipvs_sync_maxlen,
            group: self.ipvs_sync_group,
            port: self.ipvs_sync_port,
            ttl: self.ipvs_sync_ttl,
        })
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

impl NodeFlags {
    fn node_args(&self) -> NodeArgs {
        let mut labels: BTreeMap<String, String> = self.labels.iter().cloned().collect();
        if self.director {
            labels.insert(DEFAULT_DIRECTOR_LABEL.into(), "true".into());
        }
        let name = self.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        });
        NodeArgs {
            name,
            addresses: self.addresses.clone(),
            labels,
            no_wait: self.no_wait,
        }
    }
}

fn print(outcome: &Outcome) -> ExitCode {
    for l in &outcome.lines {
        println!("{l}");
    }
    for e in &outcome.errors {
        eprintln!("error: {e}");
    }
    let w = outcome.writes;
    println!(
        "kernel writes: ipvs={} links={} sysctls={} nft={}",
        w.ipvs, w.links, w.sysctls, w.nft
    );
    if outcome.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    } else {
        let _ = ctrl_c.await;
    }
}

async fn run_cluster(flags: RunFlags) -> anyhow::Result<()> {
    let RunFlags {
        node,
        state_dir,
        resync_seconds,
        debounce_ms,
        metrics_addr,
        ipvs_stats_max_destinations,
        unhealthy_after_failed_passes,
        probes,
        sync,
    } = flags;
    use std::sync::Arc;
    use std::time::Duration;
    let client = kube::Client::try_default()
        .await
        .context("connect to the Kubernetes API")?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(tunlb_agent::metrics::AgentMetrics::new(
        &mut registry,
        ipvs_stats_max_destinations,
    ));
    let probe_metrics = Arc::new(tunlb_agent::health::ProbeMetrics::new(&mut registry));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let resync = Duration::from_secs(resync_seconds.max(1));
    let http = tokio::spawn(tunlb_agent::metrics::serve(
        metrics_addr,
        Arc::new(registry),
        metrics.clone(),
        tunlb_agent::metrics::HealthPolicy {
            stale_after: resync * 3,
            failed_passes: unhealthy_after_failed_passes,
        },
        stopped(),
    ));
    let settings = tunlb_agent::cluster::Settings {
        node_name: node,
        state_dir,
        resync,
        debounce: Duration::from_millis(debounce_ms),
        kernel: tunlb_agent::dataplane::kernel_version(),
        max_probes_in_flight: probes.max_probes_in_flight,
        probe_mark_base: probes.probe_mark_base,
        ipvs_sync: sync.settings(),
    };
    let agent = tunlb_agent::cluster::run(client, settings, metrics, probe_metrics, stopped());
    tokio::pin!(agent);
    tokio::select! {
        res = &mut agent => res?,
        _ = shutdown_signal() => {
            let _ = stop_tx.send(true);
            agent.await?;
        }
    }
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = http.await {
        tracing::warn!(error = %e, "metrics server");
    }
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TUNLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal as _;
    // Colour codes only for a terminal: not in files or `kubectl logs`.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> anyhow::Result<ExitCode> {
    init_tracing();
    let cli = Cli::parse();
    // Checked here so that a typo stops the agent instead of silently
    // meaning the default.
    if let Ok(value) = std::env::var(tunlb_agent::timeouts::ENV) {
        tunlb_agent::timeouts::parse(&value).map_err(anyhow::Error::msg)?;
    }
    // A one-shot command is one sequence of kernel round trips: one thread
    // does it as fast, and one malloc arena keeps its peak memory lower.
    let mut runtime = match cli.command {
        Command::Run(_) | Command::Serve { .. } => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(command(cli))
}

async fn command(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut dp = Dataplane::new().context("open rtnetlink")?;
    let code = match cli.command {
        Command::Apply { node, files } => {
            dp.ipvs_sync = node.sync.settings();
            print(&standalone::apply(&mut dp, &node.state_dir, &node.node_args(), &files).await?)
        }
        Command::Delete { node, files } => {
            dp.ipvs_sync = node.sync.settings();
            print(&standalone::delete(&mut dp, &node.state_dir, &node.node_args(), &files).await?)
        }
        Command::Serve {
            node,
            files,
            resync_seconds,
            peers,
            probes,
        } => {
            dp.probe_mark_base = probes.probe_mark_base;
            dp.probing = true;
            dp.ipvs_sync = node.sync.settings();
            let settings = standalone::ServeSettings {
                resync: std::time::Duration::from_secs(resync_seconds.max(1)),
                max_probes_in_flight: probes.max_probes_in_flight,
                peers: tunlb_agent::election::parse_peers(&peers)?,
            };
            standalone::serve(
                &mut dp,
                &node.state_dir,
                &node.node_args(),
                &files,
                &settings,
                shutdown_signal(),
            )
            .await?;
            ExitCode::SUCCESS
        }
        Command::Show => {
            print!("{}", tunlb_agent::show::render(dp.links()).await);
            ExitCode::SUCCESS
        }
        Command::Run(flags) => {
            drop(dp);
            run_cluster(flags).await?;
            ExitCode::SUCCESS
        }
        Command::Vrrp(f) => {
            use tunlb_agent::vrrp::{announce::Announce, socket::Destinations, speaker};
            let config = speaker::SpeakerConfig {
                interface: f.interface,
                vip_interface: None,
                vrid: f.vrid,
                priority: f.priority,
                interval_cs: f.advert_cs,
                preempt: !f.no_preempt,
                destinations: if f.peers.is_empty() {
                    Destinations::Multicast
                } else {
                    Destinations::Unicast(f.peers)
                },
                members: None,
                vips: f.vips,
                source: f.source,
                announce: Announce {
                    count: f.garp_count,
                    interval: std::time::Duration::from_millis(f.garp_interval_ms),
                },
                announce_again_after: (f.garp_repeat_after_s > 0)
                    .then(|| std::time::Duration::from_secs(f.garp_repeat_after_s)),
            };
            let speaker = speaker::Speaker::new(config, dp.links().clone()).await?;
            speaker.run(shutdown_signal()).await?;
            ExitCode::SUCCESS
        }
    };
    Ok(code)
}
