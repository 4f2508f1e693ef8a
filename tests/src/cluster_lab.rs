//! A Kubernetes cluster made of real parts: kube-apiserver + etcd on the
//! host, the operator on the host, and nodes in the QEMU lab (network
//! namespaces running `tunlb-agent run`). Operator and agents use the Helm
//! chart's ServiceAccounts and RBAC, so their permissions are the shipped ones.

use std::path::PathBuf;
use std::process::{Child, Command};

use anyhow::{Context as _, bail};

use crate::controlplane::ControlPlane;
use crate::{LabOptions, LabRun, run_scenario_with, workspace_root};

/// Kills the operator when dropped.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lab's Nodes: name, InternalIP, director label.
pub const NODES: &[(&str, &str, bool)] = &[
    ("director", "192.168.56.181", true),
    ("rs1", "192.168.56.183", false),
    ("rs2", "192.168.56.184", false),
];

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

/// Starts the control plane and the operator, then runs `/scenarios/<scenario>.sh`
/// in the lab with /kube/admin.kubeconfig and /kube/agent.kubeconfig.
pub fn run_in_cluster_lab(scenario: &str, timeout_s: u32) -> anyhow::Result<(LabRun, String)> {
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
        ]);
    let rbac = run(&mut helm)?;
    cp.kubectl_stdin(["apply", "-f", "-"], &rbac)?;

    for (name, ip, director) in NODES {
        let labels = if *director {
            "{\"tunlb.io/director\": \"true\"}"
        } else {
            "{}"
        };
        let node =
            format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {labels}}}\n");
        cp.kubectl_stdin(["apply", "-f", "-"], &node)?;
        let patch = format!(
            "{{\"status\":{{\"addresses\":[{{\"type\":\"InternalIP\",\"address\":\"{ip}\"}}]}}}}"
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
    let token = |sa: &str| -> anyhow::Result<PathBuf> {
        run(Command::new(root.join("tests/controlplane/token.sh"))
            .arg(&dir)
            .args(["tunlb-system", sa]))?;
        Ok(dir.join(format!("sa-tunlb-system-{sa}")))
    };
    let operator_kc = token("tunlb-operator")?.with_extension("kubeconfig");
    let agent_base = token("tunlb-agent")?;
    let kube_dir = dir.join("guest-kube");
    std::fs::create_dir_all(&kube_dir)?;
    std::fs::copy(
        format!("{}-guest.kubeconfig", agent_base.display()),
        kube_dir.join("agent.kubeconfig"),
    )?;
    std::fs::copy(
        dir.join("admin-guest.kubeconfig"),
        kube_dir.join("admin.kubeconfig"),
    )?;

    let log_path = dir.join("operator.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(binary(
        "TUNLB_OPERATOR_BIN",
        "target/release/tunlb-operator",
    ))
    .args([
        "--vip-cidr",
        "192.168.56.0/24",
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

    let bin_dir = cp.env()["PATH"]
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let lab = run_scenario_with(
        scenario,
        &LabOptions {
            timeout_s,
            net: true,
            mem_mb: 2048,
            extra_bins: vec![PathBuf::from(bin_dir).join("kubectl")],
            extra_dirs: vec![(kube_dir, "/kube".into())],
        },
    );
    Ok((lab, tail(&log_path, 20)))
}
