//! A Kubernetes cluster made of real parts: kube-apiserver + etcd on the
//! host, the operator on the host, and nodes in the QEMU lab (network
//! namespaces running `tunlb-agent run`). Operator and agents use the Helm
//! chart's ServiceAccounts and RBAC, so their permissions are the shipped ones.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::controlplane::{ControlPlane, Process, resume_process, stop_process};
use crate::{LabOptions, LabRun, run_scenario_with, workspace_root};

/// Kills the operator when dropped.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP endpoint on the host's loopback through which a guest scenario
/// stops and resumes the control plane's processes, at the moment it chooses:
/// `POST /stop/NAME` and `POST /resume/NAME` (NAME: kube-apiserver or etcd,
/// stopped and started again; or operator, frozen with SIGSTOP and thawed
/// with SIGCONT, its connections kept), answered 200 once done. The guest reaches it at 10.0.2.2 (QEMU user
/// networking), its URL in /kube/control-plane-url. Stops serving when dropped.
struct FaultControl {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultControl {
    /// Serves for the control plane in `dir`; returns it and its port.
    fn start(dir: PathBuf, operator: u32) -> anyhow::Result<(FaultControl, u16)> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the fault control")?;
        let port = listener.local_addr()?.port();
        // Polled, so that a drop ends the thread without a connection.
        listener.set_nonblocking(true)?;
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => serve_fault(conn, &dir, operator),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    Err(e) => eprintln!("cluster-lab: fault control: {e}"),
                }
            }
        });
        Ok((
            FaultControl {
                done,
                thread: Some(thread),
            },
            port,
        ))
    }
}

impl Drop for FaultControl {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a fault request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    ControlPlane(Process),
    Operator,
}

/// What `POST /ACTION/NAME` asks for.
fn fault_request(line: &str) -> Option<(&str, Target)> {
    let mut words = line.split_whitespace();
    let (method, path) = (words.next()?, words.next()?);
    if method != "POST" {
        return None;
    }
    let (action, name) = path.strip_prefix('/')?.split_once('/')?;
    let target = match name {
        "operator" => Target::Operator,
        _ => Target::ControlPlane(Process::from_name(name)?),
    };
    matches!(action, "stop" | "resume").then_some((action, target))
}

/// SIGSTOP or SIGCONT to the operator.
fn signal_operator(pid: u32, action: &str) -> anyhow::Result<()> {
    let signal = if action == "stop" { "-STOP" } else { "-CONT" };
    run(Command::new("kill").args([signal, &pid.to_string()])).map(|_| ())
}

/// Answers one request of the fault control.
fn serve_fault(mut conn: TcpStream, dir: &Path, operator: u32) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let line = head.lines().next().unwrap_or_default();
    let (status, body) = match fault_request(line) {
        None => (
            "400 Bad Request",
            format!("want POST /stop|resume/kube-apiserver|etcd|operator, got {line:?}\n"),
        ),
        Some((action, target)) => {
            let started = Instant::now();
            let (result, name) = match target {
                Target::Operator => (signal_operator(operator, action), "operator"),
                Target::ControlPlane(process) => (
                    match action {
                        "stop" => stop_process(dir, process),
                        _ => resume_process(dir, process),
                    },
                    process.name(),
                ),
            };
            let took = started.elapsed();
            eprintln!("cluster-lab: {action} {name}: {result:?} in {took:.1?}");
            match result {
                Ok(()) => ("200 OK", format!("{action} {name}: done in {took:.1?}\n")),
                Err(e) => ("500 Internal Server Error", format!("{e:#}\n")),
            }
        }
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes());
}

/// The lab's Nodes: name, InternalIPs (IPv4, IPv6: dual stack), director
/// label (the others are labelled as static backends, as the seed's pool asks).
pub const NODES: &[(&str, &str, &str, bool)] = &[
    ("director", "192.168.56.181", "fd00:56::2", true),
    ("rs1", "192.168.56.183", "fd00:56::3", false),
    ("rs2", "192.168.56.184", "fd00:56::4", false),
];

/// A second director, for the scenarios about director elections.
pub const SECOND_DIRECTOR: (&str, &str, &str, bool) =
    ("director2", "192.168.56.182", "fd00:56::5", true);

fn binary(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default))
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `n` lines of a file.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a cluster lab run adds to the defaults.
#[derive(Debug, Default, Clone)]
pub struct ClusterLabOptions {
    pub timeout_s: u32,
    /// A manifest created (in `default`) before the guest boots; the guest
    /// starts once the operator has judged every object in it.
    pub populate: Option<PathBuf>,
    /// CIDRs for the lab's VipPool besides 192.168.56.0/24 and fd00:56::/64.
    pub vip_cidrs: Vec<String>,
    /// No lab VipPool: the scenario brings its own, as a user would.
    pub no_lab_pool: bool,
    /// Also the Node [`SECOND_DIRECTOR`] and its agent's kubeconfig.
    pub second_director: bool,
    /// (host directory, guest path)
    pub extra_dirs: Vec<(PathBuf, String)>,
    /// More programs for the guest's /usr/local/bin.
    pub extra_bins: Vec<PathBuf>,
    /// Host programs copied with their libraries, at the same paths.
    pub host_bins: Vec<PathBuf>,
}

/// Starts the control plane and the operator, then runs `/scenarios/<scenario>.sh`
/// in the lab with /kube/admin.kubeconfig and /kube/agent-NODE.kubeconfig
/// (one per node, its token bound to that Node).
pub fn run_in_cluster_lab(scenario: &str, timeout_s: u32) -> anyhow::Result<(LabRun, String)> {
    run_in_cluster_lab_with(
        scenario,
        &ClusterLabOptions {
            timeout_s,
            ..Default::default()
        },
    )
}

/// How many VirtualServices the operator has judged (Accepted set either way).
fn judged(cp: &ControlPlane) -> anyhow::Result<usize> {
    let out = cp.kubectl_ok([
        "get",
        "tvs",
        "-n",
        "default",
        "-o",
        "jsonpath={.items[*].status.conditions[?(@.type==\"Accepted\")].status}",
    ])?;
    Ok(out.split_whitespace().count())
}

/// Creates the objects of `manifest` and waits until the operator has judged them all.
fn populate(cp: &ControlPlane, manifest: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(manifest)?;
    let want = text
        .lines()
        .filter(|l| *l == "kind: VirtualService")
        .count();
    let started = std::time::Instant::now();
    let out = cp
        .kubectl_command()
        .args(["create", "-n", "default", "-f"])
        .arg(manifest)
        .output()?;
    if !out.status.success() {
        bail!(
            "creating {}: {}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "cluster-lab: created {want} VirtualServices in {:.1?}",
        started.elapsed()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let n = judged(cp)?;
        if n >= want {
            eprintln!(
                "cluster-lab: the operator judged all {n} after {:.1?}",
                started.elapsed()
            );
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the operator judged {n} of {want} VirtualServices in 600 s");
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

/// The lab's VipPool: the `default` namespace (where the scenarios create
/// their VirtualServices) may take VIPs from `cidrs`, direct them from any
/// lab node on the interfaces the scenarios name, use any node or address as
/// a static backend and map any port. Scenarios about the pool rules
/// themselves create stricter pools for other namespaces.
fn lab_pool(cidrs: &[String]) -> String {
    format!(
        "apiVersion: tunlb.io/v1alpha1\nkind: VipPool\nmetadata: {{name: lab}}\nspec:\n  \
         cidrs: [{}]\n  namespaces: [default]\n  \
         directors: {{nodeSelector: {{}}, interfaces: [tunl0, ip6tnl0, eth0, eth9]}}\n  \
         backends: {{nodeSelector: {{}}, cidrs: [0.0.0.0/0, '::/0']}}\n  \
         targetPorts: [{{from: 1, to: 65535}}]\n",
        cidrs.join(", ")
    )
}

/// `kubectl apply -f -` of `manifest`, failing with kubectl's words.
fn apply_checked(cp: &ControlPlane, manifest: &str) -> anyhow::Result<()> {
    let out = cp.kubectl_stdin(["apply", "-f", "-"], manifest)?;
    if !out.status.success() {
        bail!(
            "kubectl apply: {}\n{manifest}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `run_in_cluster_lab` with more to set up.
pub fn run_in_cluster_lab_with(
    scenario: &str,
    opts: &ClusterLabOptions,
) -> anyhow::Result<(LabRun, String)> {
    let cp = ControlPlane::start()?;
    cp.install_crds()?;
    cp.create_namespace("tunlb-system")?;
    let root = workspace_root();
    let chart = root.join("charts/tunlb");

    let mut helm = Command::new("helm");
    helm.env("PATH", &cp.env()["PATH"])
        .args(["template", "tunlb"])
        .arg(&chart)
        .args([
            "-n",
            "tunlb-system",
            "--show-only",
            "templates/serviceaccounts.yaml",
            "--show-only",
            "templates/agent-rbac.yaml",
            "--show-only",
            "templates/operator-rbac.yaml",
            "--show-only",
            "templates/agent-status-policy.yaml",
        ]);
    let rbac = run(&mut helm)?;
    cp.kubectl_stdin(["apply", "-f", "-"], &rbac)?;

    let nodes: Vec<(&str, &str, &str, bool)> = NODES
        .iter()
        .copied()
        .chain(opts.second_director.then_some(SECOND_DIRECTOR))
        .collect();
    for (name, ip, ip6, director) in &nodes {
        let labels = if *director {
            "{\"tunlb.io/director\": \"true\"}"
        } else {
            "{\"tunlb.io/backend\": \"true\"}"
        };
        let node =
            format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {labels}}}\n");
        cp.kubectl_stdin(["apply", "-f", "-"], &node)?;
        let patch = format!(
            "{{\"status\":{{\"addresses\":[{{\"type\":\"InternalIP\",\"address\":\"{ip}\"}},{{\"type\":\"InternalIP\",\"address\":\"{ip6}\"}}]}}}}"
        );
        cp.kubectl_ok([
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])?;
    }

    let dir = cp.dir().to_path_buf();
    // Each agent's token is bound to its Node, as the kubelet's projected
    // token is bound to the agent's Pod: the chart's admission policy lets it
    // write only that node's status entry.
    let token = |sa: &str, node: Option<&str>| -> anyhow::Result<PathBuf> {
        let mut cmd = Command::new(root.join("tests/controlplane/token.sh"));
        cmd.arg(&dir).args(["tunlb-system", sa]);
        if let Some(node) = node {
            cmd.args(["24h", node]);
        }
        let path = run(&mut cmd)?;
        Ok(PathBuf::from(path.trim()))
    };
    let operator_kc = token("tunlb-operator", None)?;
    let kube_dir = dir.join("guest-kube");
    std::fs::create_dir_all(&kube_dir)?;
    for (node, ..) in &nodes {
        let host_kc = token("tunlb-agent", Some(node))?;
        std::fs::copy(
            host_kc.with_file_name(format!(
                "{}-guest.kubeconfig",
                host_kc
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
            )),
            kube_dir.join(format!("agent-{node}.kubeconfig")),
        )?;
    }
    std::fs::copy(
        dir.join("admin-guest.kubeconfig"),
        kube_dir.join("admin.kubeconfig"),
    )?;
    let log_path = dir.join("operator.log");
    let log = std::fs::File::create(&log_path)?;
    let mut vip_cidrs = vec!["192.168.56.0/24".to_string(), "fd00:56::/64".to_string()];
    vip_cidrs.extend(opts.vip_cidrs.iter().cloned());
    if !opts.no_lab_pool {
        apply_checked(&cp, &lab_pool(&vip_cidrs))?;
    }
    let child = Command::new(binary(
        "TUNLB_OPERATOR_BIN",
        "target/release/tunlb-operator",
    ))
    .args([
        "--service-cidr",
        "10.96.0.0/12",
        "--lease-namespace",
        "tunlb-system",
        "--metrics-addr",
        "127.0.0.1:0",
        "--finalizer-timeout",
        "60",
    ])
    .env("KUBECONFIG", &operator_kc)
    .env("TUNLB_LOG", "info,kube=warn")
    .stdout(log.try_clone()?)
    .stderr(log)
    .spawn()
    .context("starting the operator")?;
    let _operator = Operator(child);
    let (_faults, faults_port) = FaultControl::start(dir.clone(), _operator.0.id())?;
    std::fs::write(
        kube_dir.join("control-plane-url"),
        format!("http://10.0.2.2:{faults_port}\n"),
    )?;
    if let Some(manifest) = &opts.populate {
        populate(&cp, manifest)?;
    }

    let bin_dir = cp.env()["PATH"]
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let lab = run_scenario_with(
        scenario,
        &LabOptions {
            timeout_s: opts.timeout_s,
            net: true,
            mem_mb: 2048,
            extra_bins: std::iter::once(PathBuf::from(bin_dir).join("kubectl"))
                .chain(opts.extra_bins.iter().cloned())
                .collect(),
            extra_dirs: std::iter::once((kube_dir, "/kube".into()))
                .chain(opts.extra_dirs.iter().cloned())
                .collect(),
            host_bins: opts.host_bins.clone(),
        },
    );
    Ok((lab, tail(&log_path, 20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_requests_name_an_action_and_a_process() {
        assert_eq!(
            fault_request("POST /stop/kube-apiserver HTTP/1.1"),
            Some(("stop", Target::ControlPlane(Process::ApiServer)))
        );
        assert_eq!(
            fault_request("POST /resume/etcd HTTP/1.1"),
            Some(("resume", Target::ControlPlane(Process::Etcd)))
        );
        assert_eq!(
            fault_request("POST /stop/operator HTTP/1.1"),
            Some(("stop", Target::Operator))
        );
        assert_eq!(fault_request("GET /stop/etcd HTTP/1.1"), None);
        assert_eq!(fault_request("POST /kill/etcd HTTP/1.1"), None);
        assert_eq!(fault_request("POST /stop/kubelet HTTP/1.1"), None);
        assert_eq!(fault_request(""), None);
    }
}
