//! End to end: a real kube-apiserver on the host, the operator on the host,
//! and node agents in the QEMU lab, each running with the Helm chart's own
//! ServiceAccount and RBAC. The guest scenario (tests/lab/scenarios/e2e.sh)
//! drives kubectl and checks traffic.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tunlb_tests::controlplane::ControlPlane;
use tunlb_tests::{LabOptions, run_scenario_with, workspace_root};

/// Kills the operator when the test ends, however it ends.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default))
}

fn tool(cp: &ControlPlane, name: &str) -> Command {
    let mut c = Command::new(name);
    c.env("PATH", &cp.env()["PATH"])
        .env("KUBECONFIG", cp.kubeconfig_path());
    c
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const NODES: &[(&str, &str, bool)] = &[
    ("director", "192.168.56.181", true),
    ("rs1", "192.168.56.183", false),
    ("rs2", "192.168.56.184", false),
];

#[test]
#[ignore = "needs the QEMU lab and the test control plane: run tests/run.sh"]
fn seed_scenario_through_kubectl() {
    let cp = ControlPlane::start().expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    cp.create_namespace("tunlb-system").expect("namespace");
    let root = workspace_root();

    // The chart's ServiceAccounts and RBAC, exactly as Helm would install them.
    let rbac = sh(tool(&cp, "helm").args([
        "template",
        "tunlb",
        root.join("charts/tunlb").to_str().unwrap_or_default(),
        "-n",
        "tunlb-system",
        "--show-only",
        "templates/serviceaccounts.yaml",
        "--show-only",
        "templates/agent-rbac.yaml",
        "--show-only",
        "templates/operator-rbac.yaml",
    ]));
    cp.kubectl_stdin(["apply", "-f", "-"], &rbac)
        .expect("RBAC applies");

    for (name, ip, director) in NODES {
        let labels = if *director {
            "{\"tunlb.io/director\": \"true\"}"
        } else {
            "{}"
        };
        let node =
            format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {labels}}}\n");
        cp.kubectl_stdin(["apply", "-f", "-"], &node).expect("node");
        cp.kubectl_ok([
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!("{{\"status\":{{\"addresses\":[{{\"type\":\"InternalIP\",\"address\":\"{ip}\"}}]}}}}"),
        ])
        .expect("node address");
    }

    // Token kubeconfigs for the chart's ServiceAccounts (RBAC proven, not assumed).
    let token = |sa: &str| {
        sh(
            Command::new(root.join("tests/controlplane/token.sh")).args([
                cp.dir().to_str().unwrap_or_default(),
                "tunlb-system",
                sa,
            ]),
        );
        cp.dir().join(format!("sa-tunlb-system-{sa}"))
    };
    let operator_kc = token("tunlb-operator").with_extension("kubeconfig");
    let agent_base = token("tunlb-agent");
    let kube_dir = cp.dir().join("guest-kube");
    std::fs::create_dir_all(&kube_dir).expect("dir");
    std::fs::copy(
        PathBuf::from(format!("{}-guest.kubeconfig", agent_base.display())),
        kube_dir.join("agent.kubeconfig"),
    )
    .expect("agent kubeconfig");
    std::fs::copy(
        cp.dir().join("admin-guest.kubeconfig"),
        kube_dir.join("admin.kubeconfig"),
    )
    .expect("admin kubeconfig");

    let log = std::fs::File::create(cp.dir().join("operator.log")).expect("log file");
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
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .expect("operator starts");
    let _operator = Operator(child);

    let kubectl =
        PathBuf::from(&cp.env()["PATH"].split(':').next().unwrap_or_default()).join("kubectl");
    let run = run_scenario_with(
        "e2e",
        &LabOptions {
            timeout_s: 600,
            net: true,
            mem_mb: 2048,
            extra_bins: vec![kubectl],
            extra_dirs: vec![(kube_dir, "/kube".into())],
        },
    );
    println!("{}", run.output);
    println!(
        "--- operator log (tail)\n{}",
        std::fs::read_to_string(cp.dir().join("operator.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        run.passed > 0,
        "the e2e scenario reported no passing assertion"
    );
    assert_eq!(run.failed, 0, "{} e2e assertions failed", run.failed);
    assert_eq!(run.exit_code, Some(0));
}
