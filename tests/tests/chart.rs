//! The Helm chart (charts/tunlb): lint, rendering (kinds, pod specs, exact RBAC
//! rules), the CRD copy, and a real `helm install` into the test control plane
//! (tests/controlplane) with RBAC checked by `kubectl auth can-i`.
//! Ignored by a plain `cargo test`; run with `-- --include-ignored`.

// clippy's allow-unwrap-in-tests covers #[test] fns, not this file's helpers
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use k8s_openapi::serde::Deserialize;
use serde_json::Value;
use tunlb_tests::controlplane::ControlPlane;
use tunlb_tests::workspace_root;

const NS: &str = "tunlb-system";

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/tunlb")
}

/// The directory holding helm/kubectl: build.sh (instant when cached) prints
/// `export PATH=DIR:$PATH` last.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = workspace_root().join("tests/controlplane/build.sh");
        let out = Command::new(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(out.status.success(), "build.sh failed:\n{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("export PATH="))
            .and_then(|p| p.split(':').next())
            .unwrap_or_else(|| panic!("build.sh printed no PATH line:\n{stdout}"));
        PathBuf::from(dir)
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `helm ARGS` with the given environment (a control plane's KUBECONFIG...).
fn helm<I, S>(env: Option<&ControlPlane>, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin_dir().join("helm"));
    // Keep helm's own config/cache out of $HOME.
    let home = std::env::temp_dir().join(format!("tunlb-chart-helm-{}", std::process::id()));
    cmd.env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null());
    if let Some(cp) = env {
        cmd.envs(cp.env());
    }
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("running helm: {e}"))
}

fn helm_ok<I, S>(env: Option<&ControlPlane>, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let out = helm(env, &args);
    assert!(
        out.status.success(),
        "helm {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template tunlb charts/tunlb -n tunlb-system EXTRA...`, parsed.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec!["template", "tunlb", chart.to_str().unwrap(), "-n", NS];
    args.extend_from_slice(extra);
    let yaml = helm_ok(None, &args);
    serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    k.sort();
    k
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:?}", kinds(docs)))
}

/// A role's rules flattened to "group/resource verb" (plus " @name" when the
/// rule is limited by resourceNames), so rule sets compare exactly.
fn flat_rules(role: &Value) -> BTreeSet<String> {
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let names = strs(&rule["resourceNames"]);
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    let base = format!("{g}/{r} {v}");
                    if names.is_empty() {
                        out.insert(base);
                    } else {
                        for n in &names {
                            out.insert(format!("{base} @{n}"));
                        }
                    }
                }
            }
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

fn operator_rules() -> BTreeSet<String> {
    set(&[
        "tunlb.io/virtualservices get",
        "tunlb.io/virtualservices list",
        "tunlb.io/virtualservices watch",
        "tunlb.io/virtualservices patch",
        "tunlb.io/virtualservices/status patch",
        "/services list",
        "/services watch",
        "/nodes list",
        "/nodes watch",
        "discovery.k8s.io/endpointslices list",
        "discovery.k8s.io/endpointslices watch",
        "events.k8s.io/events create",
        "tunlb.io/vippools list",
        "tunlb.io/vippools watch",
        "tunlb.io/vippools/status patch",
        "/namespaces list",
        "/namespaces watch",
    ])
}

fn agent_rules() -> BTreeSet<String> {
    set(&[
        "tunlb.io/virtualservices list",
        "tunlb.io/virtualservices watch",
        "tunlb.io/virtualservices/status patch",
        "/nodes list",
        "/nodes watch",
        "tunlb.io/vippools list",
        "tunlb.io/vippools watch",
        "/namespaces list",
        "/namespaces watch",
    ])
}

#[test]
#[ignore = "needs the test control plane: run tests/run.sh"]
fn chart_lints() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    helm_ok(None, ["lint", chart]);
    helm_ok(None, ["lint", "--strict", chart]);
    helm_ok(
        None,
        [
            "lint",
            "--strict",
            chart,
            "--set",
            "pools.web.cidrs={192.168.56.0/24}",
        ],
    );
    // The schema catches typos, bad CIDRs and pools without any.
    for bad in [
        "pool.web.cidrs={192.168.56.0/24}",
        "pools.web.cidrs={banana}",
        "pools.web.namespaces={default}",
        "pools.Web_1.cidrs={192.168.56.0/24}",
        "operator.replicas=two",
    ] {
        let out = helm(None, ["template", "t", chart, "--set", bad]);
        assert!(!out.status.success(), "--set {bad} was accepted");
        assert!(text(&out).contains("schema"), "{bad}: {}", text(&out));
    }
}

#[test]
#[ignore = "needs the test control plane: run tests/run.sh"]
fn renders_defaults() {
    let docs = render(&[]);
    assert_eq!(
        kinds(&docs),
        vec![
            "ClusterRole/tunlb-agent",
            "ClusterRole/tunlb-operator",
            "ClusterRoleBinding/tunlb-agent",
            "ClusterRoleBinding/tunlb-operator",
            "DaemonSet/tunlb-agent",
            "Deployment/tunlb-operator",
            "PodDisruptionBudget/tunlb-operator",
            "Role/tunlb-operator-leader-election",
            "RoleBinding/tunlb-operator-leader-election",
            "ServiceAccount/tunlb-agent",
            "ServiceAccount/tunlb-operator",
            "ValidatingAdmissionPolicy/tunlb-agent-status",
            "ValidatingAdmissionPolicyBinding/tunlb-agent-status",
        ]
    );
    for d in &docs {
        let labels = &d["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "tunlb", "{d}");
        assert_eq!(labels["app.kubernetes.io/instance"], "tunlb", "{d}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{d}");
        let cluster_scoped = [
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ];
        if !cluster_scoped.iter().any(|k| d["kind"] == *k) {
            assert_eq!(d["metadata"]["namespace"], NS, "{d}");
        }
    }

    // Operator Deployment.
    let deploy = find(&docs, "Deployment", "tunlb-operator");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "tunlb-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let op = container(deploy, "operator");
    assert_eq!(op["image"], "ghcr.io/tunlb/tunlb-operator:0.1.0");
    assert_eq!(op["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(op["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        op["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(op["securityContext"]["capabilities"]["add"].is_null());
    assert_eq!(op["ports"][0]["name"], "metrics");
    assert_eq!(op["ports"][0]["containerPort"], 8080);
    assert_eq!(op["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(op["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        env_value(op, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_value(op, "POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    // No pools by default; VIP ranges live in VipPools, not in the operator's settings.
    assert!(docs.iter().all(|d| d["kind"] != "VipPool"));
    assert!(env_value(op, "TUNLB_VIP_CIDRS").is_none());
    assert_eq!(
        env_value(op, "TUNLB_SERVICE_CIDRS").unwrap()["value"],
        "10.96.0.0/12"
    );
    assert_eq!(
        env_value(op, "TUNLB_METRICS_ADDR").unwrap()["value"],
        "0.0.0.0:8080"
    );
    assert_eq!(env_value(op, "TUNLB_LOG").unwrap()["value"], "info");
    let pdb = find(&docs, "PodDisruptionBudget", "tunlb-operator");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    // Agent DaemonSet.
    let ds = find(&docs, "DaemonSet", "tunlb-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["serviceAccountName"], "tunlb-agent");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    assert!(pod["initContainers"].is_null());
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let agent = container(ds, "agent");
    // No connection sync unless an interface is given.
    assert!(env_value(agent, "TUNLB_IPVS_SYNC_INTERFACE").is_none());
    assert_eq!(agent["image"], "ghcr.io/tunlb/tunlb-agent:0.1.0");
    assert_eq!(agent["args"], serde_json::json!(["run"]));
    let sc = &agent["securityContext"];
    assert!(sc["privileged"].is_null() || sc["privileged"] == false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(
        env_value(agent, "NODE_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env_value(agent, "TUNLB_STATE_DIR").unwrap()["value"],
        "/var/lib/tunlb"
    );
    assert_eq!(
        env_value(agent, "TUNLB_METRICS_ADDR").unwrap()["value"],
        "0.0.0.0:9090"
    );
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        env_value(agent, "TUNLB_UNHEALTHY_AFTER_FAILED_PASSES").unwrap()["value"],
        "3"
    );
    assert_eq!(agent["ports"][0]["containerPort"], 9090);
    // The state dir and /proc/sys/net are hostPaths, mounted read-write.
    let volumes = pod["volumes"].as_array().unwrap();
    let host_path = |name: &str| -> String {
        let v = volumes.iter().find(|v| v["name"] == name).unwrap();
        v["hostPath"]["path"].as_str().unwrap().to_string()
    };
    assert_eq!(host_path("state"), "/var/lib/tunlb");
    assert_eq!(host_path("proc-sys-net"), "/proc/sys/net");
    for m in agent["volumeMounts"].as_array().unwrap() {
        assert!(m["readOnly"].is_null() || m["readOnly"] == false);
        // runc refuses volume mounts inside /proc.
        assert!(
            !m["mountPath"].as_str().unwrap().starts_with("/proc"),
            "{m}"
        );
    }

    // RBAC: exactly these rules.
    assert_eq!(
        flat_rules(find(&docs, "ClusterRole", "tunlb-operator")),
        operator_rules()
    );
    let agent_role = flat_rules(find(&docs, "ClusterRole", "tunlb-agent"));
    assert_eq!(agent_role, agent_rules());
    for forbidden in [
        "tunlb.io/virtualservices create",
        "tunlb.io/virtualservices delete",
        "tunlb.io/virtualservices update",
        "tunlb.io/virtualservices patch",
        "tunlb.io/virtualservices/status update",
    ] {
        assert!(!agent_role.contains(forbidden), "agent has {forbidden}");
    }
    for forbidden in [
        "tunlb.io/virtualservices update",
        "tunlb.io/virtualservices/status update",
    ] {
        assert!(
            !operator_rules().contains(forbidden),
            "operator has {forbidden}"
        );
    }
    for role in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in flat_rules(role) {
            assert!(!rule.contains('*'), "wildcard in {rule}");
            assert!(!rule.contains("secrets"), "secrets access: {rule}");
        }
    }
    assert_eq!(
        flat_rules(find(&docs, "Role", "tunlb-operator-leader-election")),
        set(&[
            "coordination.k8s.io/leases create",
            "coordination.k8s.io/leases get @tunlb-operator",
            "coordination.k8s.io/leases update @tunlb-operator",
        ])
    );
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        for d in docs.iter().filter(|d| d["kind"] == binding) {
            let subject = &d["subjects"][0];
            assert_eq!(subject["kind"], "ServiceAccount");
            assert_eq!(subject["namespace"], NS);
            assert_eq!(
                subject["name"],
                d["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .trim_end_matches("-leader-election")
            );
        }
    }
}

#[test]
#[ignore = "needs the test control plane: run tests/run.sh"]
fn renders_with_values() {
    let docs = render(&[
        "--set",
        "pools.web.cidrs={192.168.56.0/24,10.10.0.0/16}",
        "--set",
        "pools.web.namespaces={default,team-a}",
        "--set",
        "operator.replicas=1",
        "--set",
        "logJson=true",
        "--set",
        "logLevel=debug",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "agent.loadModules.enabled=true",
        "--set",
        "agent.image.tag=dev",
        "--set",
        "agent.ipvsSync.interface=eth1",
        "--set",
        "agent.ipvsSync.syncId=42",
        "--set",
        "agent.ipvsSync.maxLen=1400",
    ]);
    let deploy = find(&docs, "Deployment", "tunlb-operator");
    assert_eq!(deploy["spec"]["replicas"], 1);
    // One replica: no PodDisruptionBudget (it would block every drain).
    assert!(docs.iter().all(|d| d["kind"] != "PodDisruptionBudget"));
    let op = container(deploy, "operator");
    let pool = find(&docs, "VipPool", "web");
    assert_eq!(pool["apiVersion"], "tunlb.io/v1alpha1");
    assert!(pool["metadata"]["namespace"].is_null(), "{pool}");
    assert_eq!(
        pool["spec"],
        serde_json::json!({"cidrs": ["192.168.56.0/24", "10.10.0.0/16"], "namespaces": ["default", "team-a"]})
    );
    assert_eq!(env_value(op, "TUNLB_LOG").unwrap()["value"], "debug");
    assert!(
        op["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--log-json")
    );

    let ds = find(&docs, "DaemonSet", "tunlb-agent");
    let agent = container(ds, "agent");
    assert_eq!(agent["image"], "ghcr.io/tunlb/tunlb-agent:dev");
    assert_eq!(env_value(agent, "TUNLB_LOG_JSON").unwrap()["value"], "true");
    // Connection sync: the interface and sync ID always, the rest when set.
    for (name, value) in [
        ("TUNLB_IPVS_SYNC_INTERFACE", Some("eth1")),
        ("TUNLB_IPVS_SYNC_ID", Some("42")),
        ("TUNLB_IPVS_SYNC_MAXLEN", Some("1400")),
        ("TUNLB_IPVS_SYNC_GROUP", None),
        ("TUNLB_IPVS_SYNC_PORT", None),
    ] {
        assert_eq!(
            env_value(agent, name).map(|e| e["value"].clone()),
            value.map(serde_json::Value::from),
            "{name}"
        );
    }
    // SYS_MODULE only in the init container that runs modprobe.
    assert_eq!(
        agent["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );
    let init = &ds["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["name"], "load-modules");
    assert_eq!(init["command"], serde_json::json!(["modprobe", "-a"]));
    assert!(
        init["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "ip_vs")
    );
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        serde_json::json!(["SYS_MODULE"])
    );
    assert_eq!(init["volumeMounts"][0]["mountPath"], "/lib/modules");
    assert_eq!(init["volumeMounts"][0]["readOnly"], true);

    let k = kinds(&docs);
    for want in [
        "Service/tunlb-operator-metrics",
        "Service/tunlb-agent-metrics",
        "ServiceMonitor/tunlb-operator",
        "ServiceMonitor/tunlb-agent",
    ] {
        assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
    }
    let sm = find(&docs, "ServiceMonitor", "tunlb-agent");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "agent"
    );
}

#[test]
#[ignore = "needs the test control plane: run tests/run.sh"]
fn chart_crd_is_the_generated_crd() {
    let root = workspace_root();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("crds")).unwrap() {
        let name = entry.unwrap().file_name();
        let generated = std::fs::read(root.join("crds").join(&name)).unwrap();
        let in_chart =
            std::fs::read(root.join("charts/tunlb/crds").join(&name)).unwrap_or_default();
        assert!(
            generated == in_chart,
            "charts/tunlb/crds/{name:?} differs from crds/: run `cargo run -p tunlb-operator --bin crdgen`"
        );
        names.push(name);
    }
    // and nothing else hides in the chart's crds/ (Helm would install it too)
    let mut entries: Vec<_> = std::fs::read_dir(root.join("charts/tunlb/crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    entries.sort();
    names.sort();
    assert_eq!(entries, names);
    assert!(names.iter().any(|n| n == OsStr::new("vippool.yaml")));
}

/// `kubectl auth can-i VERB RESOURCE[/NAME] [--subresource=SUB] --as=<NS/sa>`
/// in namespace `ns` (all namespaces when None), as a bool.
fn can_i(cp: &ControlPlane, sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let (resource, sub) = match resource.split_once(" sub=") {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let mut args = vec![
        "auth".to_string(),
        "can-i".into(),
        verb.into(),
        resource.into(),
        format!("--as=system:serviceaccount:{NS}:{sa}"),
    ];
    if let Some(sub) = sub {
        args.push(format!("--subresource={sub}"));
    }
    match ns {
        Some(ns) => args.push(format!("--namespace={ns}")),
        None => args.push("--all-namespaces".into()),
    }
    let out = cp.kubectl(&args).unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl {}: {}", args.join(" "), text(&out)),
    }
}

#[test]
#[ignore = "needs the test control plane: run tests/run.sh"]
fn installs_into_a_real_apiserver() {
    // Our own control plane, without the CRDs: helm installs them from crds/.
    let cp = ControlPlane::start().unwrap();
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    // No controllers or nodes run here, so nothing becomes available: no --wait.
    helm_ok(
        Some(&cp),
        [
            "install",
            "tunlb",
            chart,
            "-n",
            NS,
            "--create-namespace",
            "--set",
            "pools.web.cidrs={192.168.56.0/24}",
            "--set",
            "pools.web.namespaces={default}",
        ],
    );
    let status = helm_ok(Some(&cp), ["status", "tunlb", "-n", NS]);
    assert!(status.contains("STATUS: deployed"), "{status}");

    cp.kubectl_ok(["get", "crd", "virtualservices.tunlb.io"])
        .unwrap();
    wait_for_crd(&cp);
    let ns_objects = [
        "deployment/tunlb-operator",
        "daemonset/tunlb-agent",
        "serviceaccount/tunlb-operator",
        "serviceaccount/tunlb-agent",
        "role/tunlb-operator-leader-election",
        "rolebinding/tunlb-operator-leader-election",
        "poddisruptionbudget/tunlb-operator",
    ];
    let cluster_objects = [
        "clusterrole/tunlb-operator",
        "clusterrole/tunlb-agent",
        "clusterrolebinding/tunlb-operator",
        "clusterrolebinding/tunlb-agent",
        "validatingadmissionpolicy/tunlb-agent-status",
        "validatingadmissionpolicybinding/tunlb-agent-status",
    ];
    for obj in ns_objects {
        cp.kubectl_ok(["get", "-n", NS, obj]).unwrap();
    }
    for obj in cluster_objects {
        cp.kubectl_ok(["get", obj]).unwrap();
    }
    // The server accepted the pod templates as rendered.
    let vip = cp
        .kubectl_ok([
            "get",
            "-n",
            NS,
            "deployment/tunlb-operator",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .unwrap();
    assert_eq!(vip, "2");
    // The pool the values asked for, as the API server stored it.
    let pool = cp
        .kubectl_ok([
            "get",
            "vippool",
            "web",
            "-o",
            "jsonpath={.spec.cidrs} {.spec.namespaces}",
        ])
        .unwrap();
    assert_eq!(pool, r#"["192.168.56.0/24"] ["default"]"#);
    let host_net = cp
        .kubectl_ok([
            "get",
            "-n",
            NS,
            "daemonset/tunlb-agent",
            "-o",
            "jsonpath={.spec.template.spec.hostNetwork}",
        ])
        .unwrap();
    assert_eq!(host_net, "true");
    // The installed CRD serves VirtualServices (short name tvs).
    let example = workspace_root().join("examples/seed/01-web.yaml");
    cp.create_namespace("chart-demo").unwrap();
    cp.kubectl_ok(["apply", "-n", "chart-demo", "-f", example.to_str().unwrap()])
        .unwrap();
    let listed = cp
        .kubectl_ok(["get", "tvs", "-n", "chart-demo", "-o", "name"])
        .unwrap();
    assert!(listed.contains("virtualservice.tunlb.io/"), "{listed}");

    // RBAC, as the ServiceAccounts themselves.
    let agent = "tunlb-agent";
    assert!(!can_i(
        &cp,
        agent,
        "patch",
        "virtualservices.tunlb.io",
        None
    ));
    assert!(can_i(
        &cp,
        agent,
        "patch",
        "virtualservices.tunlb.io sub=status",
        None
    ));
    assert!(!can_i(
        &cp,
        agent,
        "update",
        "virtualservices.tunlb.io sub=status",
        None
    ));
    assert!(can_i(&cp, agent, "watch", "virtualservices.tunlb.io", None));
    assert!(can_i(&cp, agent, "list", "nodes", None));
    assert!(!can_i(&cp, agent, "update", "nodes", None));
    // The pools it checks every VirtualService against, read-only.
    assert!(can_i(&cp, agent, "watch", "vippools.tunlb.io", None));
    assert!(can_i(&cp, agent, "watch", "namespaces", None));
    assert!(!can_i(&cp, agent, "patch", "vippools.tunlb.io", None));
    assert!(!can_i(
        &cp,
        agent,
        "patch",
        "vippools.tunlb.io sub=status",
        None
    ));
    assert!(!can_i(
        &cp,
        agent,
        "delete",
        "virtualservices.tunlb.io",
        Some("chart-demo")
    ));
    assert!(!can_i(
        &cp,
        agent,
        "create",
        "virtualservices.tunlb.io",
        Some("chart-demo")
    ));
    assert!(!can_i(&cp, agent, "get", "secrets", Some(NS)));
    assert!(!can_i(&cp, agent, "get", "secrets", None));
    assert!(!can_i(
        &cp,
        agent,
        "list",
        "endpointslices.discovery.k8s.io",
        None
    ));

    let op = "tunlb-operator";
    assert!(can_i(
        &cp,
        op,
        "patch",
        "virtualservices.tunlb.io sub=status",
        None
    ));
    assert!(can_i(&cp, op, "patch", "virtualservices.tunlb.io", None));
    assert!(!can_i(
        &cp,
        op,
        "update",
        "virtualservices.tunlb.io",
        Some("chart-demo")
    ));
    assert!(!can_i(
        &cp,
        op,
        "create",
        "virtualservices.tunlb.io",
        Some("chart-demo")
    ));
    assert!(!can_i(
        &cp,
        op,
        "delete",
        "virtualservices.tunlb.io",
        Some("chart-demo")
    ));
    assert!(can_i(
        &cp,
        op,
        "create",
        "events.events.k8s.io",
        Some("chart-demo")
    ));
    assert!(!can_i(&cp, op, "create", "events", Some("chart-demo")));
    assert!(can_i(
        &cp,
        op,
        "list",
        "endpointslices.discovery.k8s.io",
        None
    ));
    assert!(can_i(&cp, op, "watch", "services", None));
    assert!(can_i(
        &cp,
        op,
        "create",
        "leases.coordination.k8s.io",
        Some(NS)
    ));
    assert!(can_i(
        &cp,
        op,
        "update",
        "leases.coordination.k8s.io/tunlb-operator",
        Some(NS)
    ));
    assert!(can_i(
        &cp,
        op,
        "get",
        "leases.coordination.k8s.io/tunlb-operator",
        Some(NS)
    ));
    assert!(!can_i(
        &cp,
        op,
        "update",
        "leases.coordination.k8s.io/kube-scheduler",
        Some(NS)
    ));
    assert!(!can_i(
        &cp,
        op,
        "update",
        "leases.coordination.k8s.io/tunlb-operator",
        Some("default")
    ));
    assert!(!can_i(
        &cp,
        op,
        "delete",
        "leases.coordination.k8s.io/tunlb-operator",
        Some(NS)
    ));
    assert!(!can_i(&cp, op, "get", "secrets", Some(NS)));
    assert!(!can_i(&cp, op, "get", "secrets", None));
    assert!(!can_i(&cp, op, "patch", "nodes", None));
    // Pools: read, and only their status written; never the spec.
    assert!(can_i(&cp, op, "watch", "vippools.tunlb.io", None));
    assert!(can_i(
        &cp,
        op,
        "patch",
        "vippools.tunlb.io sub=status",
        None
    ));
    assert!(!can_i(&cp, op, "patch", "vippools.tunlb.io", None));
    assert!(!can_i(&cp, op, "create", "vippools.tunlb.io", None));
    assert!(can_i(&cp, op, "list", "namespaces", None));

    // And with a real token (authentication, not impersonation): the operator's
    // SA can take its Lease exactly as the leader election does.
    let lease = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"tunlb-operator"},"spec":{"holderIdentity":"chart-test"}}"#;
    let token = Command::new(workspace_root().join("tests/controlplane/token.sh"))
        .args([cp.dir().as_os_str(), OsStr::new(NS), OsStr::new(op)])
        .envs(cp.env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(token.status.success(), "token.sh: {}", text(&token));
    let sa_kubeconfig = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let as_sa = |args: &[&str], input: Option<&str>| kubectl_as(&cp, &sa_kubeconfig, args, input);
    let out = as_sa(&["create", "-n", NS, "-f", "-"], Some(lease));
    assert!(out.status.success(), "create lease: {}", text(&out));
    let out = as_sa(
        &["get", "-n", NS, "lease/tunlb-operator", "-o", "json"],
        None,
    );
    assert!(out.status.success(), "get lease: {}", text(&out));
    let out = as_sa(
        &["replace", "-n", NS, "-f", "-"],
        Some(&String::from_utf8_lossy(&out.stdout)),
    );
    assert!(out.status.success(), "replace lease: {}", text(&out));
    let out = as_sa(&["get", "-n", NS, "secrets"], None);
    assert!(!out.status.success(), "operator listed secrets");
    assert!(text(&out).contains("forbidden"), "{}", text(&out));

    // Uninstall removes everything the release made, but (Helm's rule for crds/)
    // keeps the CRD and with it the users' VirtualServices.
    helm_ok(Some(&cp), ["uninstall", "tunlb", "-n", NS]);
    for obj in ns_objects {
        let out = cp.kubectl(["get", "-n", NS, obj]).unwrap();
        assert!(!out.status.success(), "{obj} survived uninstall");
        assert!(text(&out).contains("NotFound"), "{obj}: {}", text(&out));
    }
    for obj in cluster_objects {
        let out = cp.kubectl(["get", obj]).unwrap();
        assert!(!out.status.success(), "{obj} survived uninstall");
        assert!(text(&out).contains("NotFound"), "{obj}: {}", text(&out));
    }
    let releases = helm_ok(Some(&cp), ["list", "-a", "-n", NS, "-q"]);
    assert_eq!(releases.trim(), "");
    cp.kubectl_ok(["get", "crd", "virtualservices.tunlb.io"])
        .unwrap();

    // The optional variants are valid for the API server too (a server-side dry
    // run of a fresh create; no ServiceMonitor CRD here, so only the Services).
    let variant = helm_ok(
        Some(&cp),
        [
            "template",
            "tunlb",
            chart,
            "-n",
            NS,
            "--set",
            "agent.loadModules.enabled=true",
            "--set",
            "agent.privileged=true",
            "--set",
            "metrics.service.enabled=true",
            "--set",
            "agent.metricsHost=::",
        ],
    );
    let out = cp
        .kubectl_stdin(
            ["create", "--dry-run=server", "-n", NS, "-f", "-"],
            &variant,
        )
        .unwrap();
    assert!(out.status.success(), "server dry run: {}", text(&out));
    assert!(
        text(&out).contains("service/tunlb-agent-metrics"),
        "{}",
        text(&out)
    );
}

/// A directory made by tests/images/unpack.sh, named by `var`.
fn unpacked_image(var: &str) -> PathBuf {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: tests/run.sh builds and unpacks the images"));
    assert!(
        dir.join("rootfs").is_dir(),
        "{var}={}: no rootfs/ (tests/images/unpack.sh makes it)",
        dir.display()
    );
    dir
}

fn image_config(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["config"].clone()
}

/// The reference an OCI archive carries (its index's ref.name annotation).
fn archive_reference(archive: &Path) -> String {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("index.json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar {}: {}",
        archive.display(),
        text(&out)
    );
    let index: Value = serde_json::from_slice(&out.stdout).unwrap();
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
#[ignore = "needs the images from scripts/build-images.sh: run tests/run.sh"]
fn images_are_what_the_chart_pulls() {
    let docs = render(&[]);
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    let app_version = chart["appVersion"].as_str().unwrap();
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "the chart's appVersion is the workspace version"
    );
    let archives = std::env::var_os("TUNLB_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/images"));
    let operator = find(&docs, "Deployment", "tunlb-operator");
    let agent = find(&docs, "DaemonSet", "tunlb-agent");
    for (name, workload, container_name, var) in [
        (
            "tunlb-operator",
            operator,
            "operator",
            "TUNLB_OPERATOR_IMAGE",
        ),
        ("tunlb-agent", agent, "agent", "TUNLB_AGENT_IMAGE"),
    ] {
        let archive = archives.join(format!("{name}-{app_version}.oci.tar"));
        assert!(archive.is_file(), "{} is missing", archive.display());
        assert_eq!(
            archive_reference(&archive),
            container(workload, container_name)["image"]
                .as_str()
                .unwrap(),
            "{name}: the chart's default image is the one build-images.sh names"
        );
        let config = image_config(&unpacked_image(var));
        assert_eq!(
            config["Entrypoint"],
            serde_json::json!([format!("/usr/local/bin/{name}")]),
            "{name} entrypoint"
        );
        let labels = &config["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], app_version);
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://github.com/tunlb/tunlb"
        );
        let revision = labels["org.opencontainers.image.revision"]
            .as_str()
            .unwrap_or_default();
        assert!(
            revision.len() >= 40 && revision[..40].chars().all(|c| c.is_ascii_hexdigit()),
            "{name}: revision label is a commit: {revision:?}"
        );
    }

    // The operator runs as the chart's non-root user; the agent as root (NET_ADMIN).
    let op = image_config(&unpacked_image("TUNLB_OPERATOR_IMAGE"));
    let pod_user = &operator["spec"]["template"]["spec"]["securityContext"]["runAsUser"];
    assert_eq!(op["User"], format!("{pod_user}:{pod_user}"));
    assert_eq!(
        image_config(&unpacked_image("TUNLB_AGENT_IMAGE"))["User"],
        "0:0"
    );

    // Everything the agent's containers run is in the agent image.
    let agent_root = unpacked_image("TUNLB_AGENT_IMAGE").join("rootfs");
    let init = &agent["spec"]["template"]["spec"]["initContainers"][0];
    let mut programs = vec!["usr/sbin/nft".to_string()];
    if let Some(cmd) = init["command"][0].as_str() {
        programs.push(format!("usr/sbin/{cmd}"));
    }
    for p in programs {
        let path = agent_root.join(&p);
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.is_file()),
            "the agent image lacks /{p}"
        );
    }
}

#[test]
#[ignore = "needs the test control plane: run tests/run.sh"]
fn helm_package_carries_the_crds() {
    let out = std::env::temp_dir().join(format!("tunlb-chart-package-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let printed = helm_ok(
        None,
        [
            "package",
            chart_dir().to_str().unwrap(),
            "-d",
            out.to_str().unwrap(),
        ],
    );
    let archive = out.join(format!("tunlb-{}.tgz", env!("CARGO_PKG_VERSION")));
    assert!(
        archive.is_file(),
        "helm package wrote no {}: {printed}",
        archive.display()
    );
    let list = Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&list.stdout);
    for want in [
        "tunlb/crds/virtualservice.yaml",
        "tunlb/crds/vippool.yaml",
        "tunlb/templates/agent-daemonset.yaml",
        "tunlb/templates/NOTES.txt",
        "tunlb/values.schema.json",
    ] {
        assert!(
            names.lines().any(|l| l == want),
            "{want} not in the package:\n{names}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// `kubectl ARGS` (stdin `input`) with the credentials of `kubeconfig`.
fn kubectl_as(cp: &ControlPlane, kubeconfig: &str, args: &[&str], input: Option<&str>) -> Output {
    let mut cmd = cp.kubectl_command();
    cmd.env("KUBECONFIG", kubeconfig).args(args);
    let Some(input) = input else {
        return cmd.output().unwrap();
    };
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Waits until the API server serves the VirtualService CRD helm installed.
fn wait_for_crd(cp: &ControlPlane) {
    cp.kubectl_ok([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/virtualservices.tunlb.io",
    ])
    .unwrap();
}

/// A token for the agent's ServiceAccount, bound to Node `node` (None: unbound),
/// as a kubeconfig path.
fn agent_token(cp: &ControlPlane, node: Option<&str>) -> String {
    let mut cmd = Command::new(workspace_root().join("tests/controlplane/token.sh"));
    cmd.args([
        cp.dir().as_os_str(),
        OsStr::new(NS),
        OsStr::new("tunlb-agent"),
    ]);
    if let Some(node) = node {
        cmd.args(["1h", node]);
    }
    let out = cmd.envs(cp.env()).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "token.sh: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A server-side apply of `status.nodes` = `nodes` (JSON) to chart-demo/web.
fn nodes_apply(nodes: &str) -> String {
    format!(
        r#"{{"apiVersion":"tunlb.io/v1alpha1","kind":"VirtualService","metadata":{{"name":"web","namespace":"chart-demo"}},"status":{{"nodes":{nodes}}}}}"#
    )
}

/// The chart's ValidatingAdmissionPolicy, in a real API server: an agent's
/// token, bound to its Node, may change that node's entry in status.nodes
/// and nothing else; a token bound to no node may change nothing.
#[test]
#[ignore = "needs the test control plane: run tests/run.sh"]
fn agent_token_writes_only_its_own_node_entry() {
    let cp = ControlPlane::start().unwrap();
    let chart = chart_dir();
    helm_ok(
        Some(&cp),
        [
            "install",
            "tunlb",
            chart.to_str().unwrap(),
            "-n",
            NS,
            "--create-namespace",
        ],
    );
    wait_for_crd(&cp);
    for node in ["rs1", "rs2"] {
        let obj = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{{\"name\":\"{node}\"}}}}"
        );
        let out = cp.kubectl_stdin(["create", "-f", "-"], &obj).unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    cp.create_namespace("chart-demo").unwrap();
    let example = workspace_root().join("examples/seed/01-web.yaml");
    cp.kubectl_ok(["apply", "-n", "chart-demo", "-f", example.to_str().unwrap()])
        .unwrap();
    // What the operator and rs2's agent would have written.
    let operator_status = r#"{"apiVersion":"tunlb.io/v1alpha1","kind":"VirtualService","metadata":{"name":"web","namespace":"chart-demo"},"status":{"observedGeneration":1,"conditions":[{"type":"Accepted","status":"True","reason":"Ok","message":"","lastTransitionTime":"2026-01-01T00:00:00Z"}],"realServers":[{"address":"192.168.56.183","weight":1,"nodeName":"rs1"},{"address":"192.168.56.184","weight":1,"nodeName":"rs2"}]}}"#;
    let admin_apply = |manager: &str, body: &str| {
        let out = cp
            .kubectl_stdin(
                [
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--subresource=status",
                    &format!("--field-manager={manager}"),
                    "-f",
                    "-",
                ],
                body,
            )
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    };
    admin_apply("tunlb-operator", operator_status);
    admin_apply(
        "tunlb-agent/rs2",
        &nodes_apply(r#"[{"nodeName":"rs2","programmed":true,"observedGeneration":1}]"#),
    );
    let status = || {
        cp.kubectl_ok(["get", "tvs", "web", "-n", "chart-demo", "-o", "json"])
            .map(|s| serde_json::from_str::<Value>(&s).unwrap())
            .unwrap()
    };
    let before = status();

    // The tokens: who the API server says they are.
    let rs1 = agent_token(&cp, Some("rs1"));
    let unbound = agent_token(&cp, None);
    let whoami = |kc: &str| -> Value {
        let out = kubectl_as(&cp, kc, &["auth", "whoami", "-o", "json"], None);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let extra = |v: &Value| {
        v["status"]["userInfo"]["extra"]["authentication.kubernetes.io/node-name"].clone()
    };
    assert_eq!(extra(&whoami(&rs1)), serde_json::json!(["rs1"]));
    assert!(extra(&whoami(&unbound)).is_null());

    // Its own entry: allowed.
    let apply_as = |kc: &str, body: &str| {
        kubectl_as(
            &cp,
            kc,
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--subresource=status",
                "--field-manager=tunlb-agent/rs1",
                "-f",
                "-",
            ],
            Some(body),
        )
    };
    let own = nodes_apply(r#"[{"nodeName":"rs1","programmed":true,"observedGeneration":1}]"#);
    let out = apply_as(&rs1, &own);
    assert!(out.status.success(), "own entry refused: {}", text(&out));
    let after = status();
    assert_eq!(
        after["status"]["nodes"],
        serde_json::json!([
            {"nodeName": "rs2", "programmed": true, "observedGeneration": 1},
            {"nodeName": "rs1", "programmed": true, "observedGeneration": 1},
        ])
    );

    // Everything else: denied, each with the policy's reason. Forcing only
    // settles field ownership; the policy judges the result.
    // kubectl patch reads the object first, which the agent may not: the
    // merge patches go through a client with rs1's token.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(tunlb_tests::controlplane::client_from_kubeconfig(
            Path::new(&rs1),
        ))
        .unwrap();
    let merge_status = |patch: &str| -> Result<(), String> {
        let api: kube::Api<tunlb_api::VirtualService> =
            kube::Api::namespaced(client.clone(), "chart-demo");
        let patch: Value = serde_json::from_str(patch).unwrap();
        rt.block_on(api.patch_status(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        ))
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let outcome = |out: Output| -> Result<(), String> {
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out))
        }
    };
    let denied = |what: &str, out: Result<(), String>, reason: &str| {
        let Err(t) = out else {
            panic!("{what} was allowed");
        };
        assert!(
            t.contains("ValidatingAdmissionPolicy 'tunlb-agent-status'") && t.contains(reason),
            "{what}: {t}"
        );
    };
    denied(
        "conditions",
        merge_status(
            r#"{"status":{"conditions":[{"type":"Accepted","status":"True","reason":"Forged","message":"","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#,
        ),
        "tunlb agent: only the operator may change status.conditions;",
    );
    denied(
        "realServers",
        merge_status(r#"{"status":{"realServers":[{"address":"10.9.9.9","weight":100}]}}"#),
        "tunlb agent: only the operator may change status.realServers;",
    );
    denied(
        "observedGeneration",
        merge_status(r#"{"status":{"observedGeneration":7}}"#),
        "tunlb agent: only the operator may change status.observedGeneration;",
    );
    // Every status field but nodes, not a list of them: one set where there
    // was none, one removed.
    denied(
        "healthy",
        merge_status(r#"{"status":{"healthy":"9/9"}}"#),
        "tunlb agent: only the operator may change status.healthy;",
    );
    denied(
        "conditions removed",
        merge_status(r#"{"status":{"conditions":null}}"#),
        "tunlb agent: only the operator may change status.conditions;",
    );
    let others = "tunlb agent: the agent of node rs1 may change only its own entry, status.nodes[nodeName=rs1]";
    denied(
        "rs2's entry",
        outcome(apply_as(
            &rs1,
            &nodes_apply(
                r#"[{"nodeName":"rs1","programmed":true,"observedGeneration":1},{"nodeName":"rs2","programmed":false}]"#,
            ),
        )),
        others,
    );
    denied(
        "a new entry for another node",
        outcome(apply_as(
            &rs1,
            &nodes_apply(
                r#"[{"nodeName":"rs1","programmed":true,"observedGeneration":1},{"nodeName":"rs3","programmed":true}]"#,
            ),
        )),
        others,
    );
    // The whole list, rs2's entry dropped (a JSON merge patch replaces lists).
    denied(
        "rs2's entry removed",
        merge_status(r#"{"status":{"nodes":[{"nodeName":"rs1","programmed":true}]}}"#),
        others,
    );
    // A token bound to no node: even its "own" entry.
    denied(
        "an unbound token",
        outcome(apply_as(&unbound, &own)),
        "tunlb agent: the token names no node (user extra authentication.kubernetes.io/node-name)",
    );
    // spec: RBAC refuses the object itself; on /status the API server keeps the spec.
    let api: kube::Api<tunlb_api::VirtualService> =
        kube::Api::namespaced(client.clone(), "chart-demo");
    let spec_patch = serde_json::json!({"spec": {"vip": "192.168.56.99"}});
    let out = rt.block_on(api.patch(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&spec_patch),
    ));
    match out {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{}", e.message),
        other => panic!("the agent patched the spec: {other:?}"),
    }
    merge_status(r#"{"spec":{"vip":"192.168.56.99"}}"#).unwrap();
    let now = status();
    assert_eq!(now["spec"], before["spec"]);
    assert_eq!(
        now["status"], after["status"],
        "a denied write changed the status"
    );

    // The agent's own write path: no force unless another manager wrote into
    // this node's entry, and then it says whose fields it took back.
    let key = tunlb_api::plan::ObjectKey::new("chart-demo", "web");
    let entry = |message: &str| tunlb_api::NodeStatus {
        node_name: "rs1".into(),
        roles: vec![tunlb_api::NodeRole::Backend],
        observed_generation: Some(1),
        programmed: true,
        message: message.into(),
        draining: Vec::new(),
        health: Vec::new(),
        fail_open: false,
        director_state: None,
        director_since: None,
        election_conflict: None,
    };
    let write = |e: &tunlb_api::NodeStatus| {
        rt.block_on(tunlb_agent::cluster::write_entry(
            client.clone(),
            &key,
            "rs1",
            e,
        ))
        .unwrap()
    };
    use tunlb_agent::cluster::EntryWrite;
    assert_eq!(write(&entry("")), EntryWrite::Applied);
    admin_apply(
        "someone-else",
        &nodes_apply(r#"[{"nodeName":"rs1","programmed":false,"message":"forged"}]"#),
    );
    match write(&entry("")) {
        EntryWrite::TookOver(msg) => assert!(msg.contains("someone-else"), "{msg}"),
        other => panic!("a foreign entry was overwritten silently: {other:?}"),
    }
    let rs1_entry = |v: &Value| {
        v["status"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["nodeName"] == "rs1")
            .cloned()
    };
    let got = rs1_entry(&status()).unwrap();
    // Every field is the agent's again, the ones it leaves empty too.
    assert_eq!(
        (got["programmed"].clone(), got["message"].clone()),
        (Value::Bool(true), Value::from(""))
    );
    assert_eq!(write(&entry("nft timed out")), EntryWrite::Applied);
    // Withdrawn: the entry goes, although "someone-else" still shares its
    // key, and rs2's stays.
    let withdraw = || {
        rt.block_on(tunlb_agent::cluster::withdraw_entry(
            client.clone(),
            &key,
            "rs1",
        ))
        .unwrap()
    };
    let rs2_only =
        serde_json::json!([{"nodeName": "rs2", "programmed": true, "observedGeneration": 1}]);
    withdraw();
    assert_eq!(status()["status"]["nodes"], rs2_only);
    // An entry only the agent wrote goes too, wherever it is in the list;
    // with nothing left to withdraw, a withdrawal changes nothing.
    assert_eq!(write(&entry("")), EntryWrite::Applied);
    admin_apply(
        "tunlb-agent/rs3",
        &nodes_apply(r#"[{"nodeName":"rs3","programmed":true}]"#),
    );
    withdraw();
    let now = status();
    assert!(rs1_entry(&now).is_none(), "{now}");
    withdraw();
    assert_eq!(status()["status"], now["status"]);
    admin_apply("tunlb-agent/rs3", &nodes_apply("[]"));
    assert_eq!(status()["status"]["nodes"], rs2_only);

    // Cost: the policy compares every other node's entry. An object with 200
    // entries, each with a director's health list, stays writable.
    let many: Vec<Value> = (0..200)
        .map(|i| {
            let health: Vec<Value> = (0..8)
                .map(|j| serde_json::json!({"address": format!("10.0.{i}.{j}"), "port": 80, "state": "Healthy", "since": "2026-01-01T00:00:00Z"}))
                .collect();
            serde_json::json!({"nodeName": format!("node-{i:03}"), "roles": ["director", "backend"], "programmed": true, "observedGeneration": 1, "health": health})
        })
        .collect();
    admin_apply(
        "tunlb-agent/others",
        &nodes_apply(&Value::Array(many).to_string()),
    );
    let started = std::time::Instant::now();
    assert_eq!(write(&entry("")), EntryWrite::Applied);
    let took = started.elapsed();
    eprintln!("own entry next to 200 others written in {took:?}");
    assert_eq!(status()["status"]["nodes"].as_array().unwrap().len(), 202);
    denied(
        "rs2's entry among 200",
        outcome(apply_as(
            &rs1,
            &nodes_apply(
                r#"[{"nodeName":"rs1","programmed":true},{"nodeName":"rs2","programmed":false}]"#,
            ),
        )),
        others,
    );
}
