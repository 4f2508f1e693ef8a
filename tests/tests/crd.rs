//! The VirtualService CRD against a real kube-apiserver (tests/controlplane):
//! installation, printer columns, defaults, admission errors, server-side
//! apply and the status subresource's list-map ownership.
//! Ignored by a plain `cargo test`; run with `-- --include-ignored`.
//!
//! All tests share one control plane (started on first use, stopped when the
//! test binary exits); each works in its own namespace.

// clippy's allow-unwrap-in-tests covers #[test] fns, not this file's helpers
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use tunlb_api::{API_VERSION, GROUP, KIND, VirtualService, VirtualServiceSpec};
use tunlb_tests::controlplane::ControlPlane;
use tunlb_tests::workspace_root;

fn cp() -> &'static ControlPlane {
    match ControlPlane::shared() {
        Ok(cp) => cp,
        Err(e) => panic!("{e:#}"),
    }
}

/// A fresh namespace for one test (namespaces are never deleted here).
fn namespace(name: &str) -> String {
    cp().create_namespace(name).unwrap();
    name.to_string()
}

async fn typed(ns: &str) -> Api<VirtualService> {
    Api::namespaced(cp().client().await.unwrap(), ns)
}

/// An untyped API, for objects the Rust type cannot express (bad enums...).
async fn untyped(ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<VirtualService>(&());
    Api::namespaced_with(cp().client().await.unwrap(), ns, &ar)
}

fn manifest(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": spec,
    })
}

fn dynamic(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(manifest(name, spec)).unwrap()
}

/// A minimal valid spec with `overrides` merged over its top-level keys.
fn spec_with(overrides: Value) -> Value {
    let mut spec = json!({
        "vip": "192.0.2.10",
        "ports": [{"port": 80}],
        "backends": {"static": [{"address": "198.51.100.1"}, {"address": "198.51.100.2"}]},
    });
    if let (Some(base), Value::Object(extra)) = (spec.as_object_mut(), overrides) {
        base.extend(extra);
    }
    spec
}

/// The object as the API server stores it (raw JSON, so client-side serde
/// defaults cannot hide a missing server-side default).
fn get_json(ns: &str, what: &str) -> Value {
    let out = cp()
        .kubectl_ok(["-n", ns, "get", what, "-o", "json"])
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

/// Retries `f` until it returns Some, for things the apiserver publishes lazily.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
#[ignore = "needs the test control plane: run tests/run.sh"]
fn crd_is_established_explained_and_listed_with_columns() {
    let cp = cp();
    // install_crds ran when the shared control plane started; it is idempotent
    cp.install_crds().unwrap();
    for cond in ["Established", "NamesAccepted"] {
        let status = cp
            .kubectl_ok([
                "get",
                "crd",
                "virtualservices.tunlb.io",
                "-o",
                &format!("jsonpath={{.status.conditions[?(@.type==\"{cond}\")].status}}"),
            ])
            .unwrap();
        assert_eq!(status, "True", "condition {cond}");
    }

    // kubectl explain reads the published OpenAPI v3, which lags Established a little
    let explain = eventually("kubectl explain", Duration::from_secs(30), || {
        let out = cp.kubectl(["explain", "virtualservice.spec.tunnel"]).ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    println!("{explain}");
    for want in [
        "GROUP:      tunlb.io",
        "KIND:       VirtualService",
        "VERSION:    v1alpha1",
        "enum: ipip, gue, gre",
        "How the director encapsulates packets for the real servers.",
        "UDP destination port for GUE encapsulation.",
        "ipip (default; ip6ip6 for an IPv6 VIP), gue (needs `port`; directors",
        "need Linux 5.2+, backends the fou module and the UDP port open",
        "1500-byte path: IPv4 ipip 1440 (20 bytes of outer header), gue 1428",
        "mssClamp",
    ] {
        assert!(explain.contains(want), "explain lacks {want:?}");
    }
    let explain = cp
        .kubectl_ok(["explain", "virtualservice.spec.backends.static.weight"])
        .unwrap();
    assert!(explain.contains("Scheduling weight, 0-65535"), "{explain}");

    let ns = namespace("columns");
    let web = workspace_root().join("examples/seed/01-web.yaml");
    cp.kubectl_ok(["-n", &ns, "apply", "-f", &web.to_string_lossy()])
        .unwrap();
    // what an operator would report, so that BACKENDS and READY have values
    let status = json!({
        "apiVersion": API_VERSION, "kind": KIND,
        "status": {
            "realServerCount": 2,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Programmed",
                            "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}],
        },
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        typed(&ns)
            .await
            .patch_status(
                "web",
                &PatchParams::apply("operator"),
                &Patch::Apply(&status),
            )
            .await
            .unwrap();
    });

    // short name and category
    for resource in ["tvs", "virtualservices.tunlb.io", "tunlb"] {
        let table = cp.kubectl_ok(["-n", &ns, "get", resource]).unwrap();
        println!("kubectl get {resource}:\n{table}");
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let want_header = [
            "NAME",
            "VIP",
            "PORTS",
            "SCHEDULER",
            "BACKENDS",
            "HEALTHY",
            "READY",
            "ACTIVE",
            "AGE",
        ];
        assert_eq!(header, want_header, "kubectl get {resource}");
        // HEALTHY is empty until the operator has a verdict, so the row
        // has one word fewer. The category lists VipPools too, so kubectl
        // names each row with its kind there.
        let name = if resource == "tunlb" {
            "virtualservice.tunlb.io/web"
        } else {
            "web"
        };
        assert_eq!(
            row[..6],
            [name, "192.168.56.185", "80", "wrr", "2", "True"],
            "kubectl get {resource}"
        );
    }

    // several ports, no status yet: BACKENDS and READY are blank, SCHEDULER defaulted.
    // The apiserver's table convertor prints only the first result of a
    // printer column's JSONPath, so PORTS shows "80", not "80,443".
    let two = r#"
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: two}
spec:
  vip: 192.0.2.20
  ports: [{port: 80}, {port: 443}]
  backends: {static: [{address: 198.51.100.1}]}
"#;
    let out = cp
        .kubectl_stdin(["-n", &ns, "apply", "-f", "-"], two)
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = cp
        .kubectl_ok(["-n", &ns, "get", "tvs", "two", "--no-headers"])
        .unwrap();
    let row: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(row.len(), 5, "{table}");
    assert_eq!(row[..4], ["two", "192.0.2.20", "80", "wlc"], "{table}");
}

#[test]
#[ignore = "needs the test control plane: run tests/run.sh"]
fn seed_examples_apply_and_server_side_defaults_appear() {
    let cp = cp();
    let ns = namespace("seed");
    let seed = workspace_root().join("examples/seed");
    let out = cp
        .kubectl_ok(["-n", &ns, "apply", "-f", &seed.to_string_lossy()])
        .unwrap();
    println!("{out}");
    for name in ["web", "mapped", "eth-vip"] {
        assert!(
            out.contains(&format!("virtualservice.tunlb.io/{name} created")),
            "{out}"
        );
        let obj = get_json(&ns, &format!("tvs/{name}"));
        let spec = &obj["spec"];
        assert_eq!(spec["tunnel"], json!({"type": "ipip", "checksum": "none"}));
        for port in spec["ports"].as_array().unwrap() {
            assert_eq!(port["protocol"], "TCP", "{name}");
        }
        for rs in spec["backends"]["static"].as_array().unwrap() {
            assert!(rs["weight"].as_i64().unwrap() >= 1, "{name}");
        }
    }
    let mapped = get_json(&ns, "tvs/mapped");
    // 02-mapped gives no weights: the schema default is 1
    assert_eq!(
        mapped["spec"]["backends"]["static"],
        json!([{"address": "192.168.56.183", "weight": 1},
               {"address": "192.168.56.184", "weight": 1}])
    );
    assert_eq!(mapped["spec"]["directors"], json!({}));
    assert_eq!(
        get_json(&ns, "tvs/eth-vip")["spec"]["directors"],
        json!({"interface": "eth0"})
    );

    // no scheduler, protocol or tunnel given: wlc, TCP, ipip
    let minimal = r#"
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata:
  name: minimal
spec:
  vip: 2001:db8::10
  ports:
  - port: 53
  - port: 53
    protocol: UDP
  backends:
    service:
      name: dns
"#;
    let out = cp
        .kubectl_stdin(["-n", &ns, "apply", "-f", "-"], minimal)
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = get_json(&ns, "tvs/minimal")["spec"].clone();
    assert_eq!(spec["scheduler"], "wlc");
    assert_eq!(spec["ports"][0]["protocol"], "TCP");
    assert_eq!(spec["ports"][1]["protocol"], "UDP");
    assert_eq!(spec["tunnel"]["type"], "ipip");
    assert_eq!(spec["tunnel"]["checksum"], "none");
    assert!(spec.get("onePacket").is_none());
    assert!(spec.get("persistence").is_none());

    // the typed client reads them back, and the agent-side validator agrees
    let rt = tokio::runtime::Runtime::new().unwrap();
    let list = rt.block_on(async { typed(&ns).await.list(&ListParams::default()).await.unwrap() });
    assert_eq!(list.items.len(), 4);
    for vs in &list.items {
        if let Err(e) = tunlb_api::validate(&vs.spec) {
            panic!("{:?} admitted but fails validate(): {e}", vs.metadata.name);
        }
    }
    let minimal = list
        .items
        .iter()
        .find(|v| v.metadata.name.as_deref() == Some("minimal"))
        .unwrap();
    assert_eq!(minimal.spec.scheduler, tunlb_api::Scheduler::Wlc);
    assert_eq!(minimal.spec.tunnel.kind, tunlb_api::TunnelKind::Ipip);
}

/// One input the API server must refuse.
struct Bad {
    case: &'static str,
    spec: Value,
    /// The cause's field path, as the API server reports it.
    field: &'static str,
    /// Phrases the cause's message must contain.
    phrases: &'static [&'static str],
}

fn bad_inputs() -> Vec<Bad> {
    let b = |case, spec, field, phrases| Bad {
        case,
        spec,
        field,
        phrases,
    };
    vec![
        b(
            "invalid IP",
            spec_with(json!({"vip": "192.0.2.300"})),
            "spec.vip",
            &["must be an IPv4 or IPv6 address"],
        ),
        b(
            "hostname VIP",
            spec_with(json!({"vip": "vip.example.com"})),
            "spec.vip",
            &["must be an IPv4 or IPv6 address"],
        ),
        b(
            "loopback VIP",
            spec_with(json!({"vip": "127.0.0.1"})),
            "spec.vip",
            &["must be a unicast address", "loopback"],
        ),
        b(
            "IPv6 loopback VIP",
            spec_with(json!({"vip": "::1", "backends": {"static": [{"address": "2001:db8::1"}]}})),
            "spec.vip",
            &["must be a unicast address"],
        ),
        b(
            "multicast VIP",
            spec_with(json!({"vip": "239.1.1.1"})),
            "spec.vip",
            &["must be a unicast address"],
        ),
        b(
            "port 0",
            spec_with(json!({"ports": [{"port": 0}]})),
            "spec.ports[0].port",
            &["should be greater than or equal to 1"],
        ),
        b(
            "port 70000",
            spec_with(json!({"ports": [{"port": 70000}]})),
            "spec.ports[0].port",
            &["should be less than or equal to 65535"],
        ),
        b(
            "targetPort 0",
            spec_with(json!({"ports": [{"port": 80, "targetPort": 0}]})),
            "spec.ports[0].targetPort",
            &["should be greater than or equal to 1"],
        ),
        b(
            "no ports",
            spec_with(json!({"ports": []})),
            "spec.ports",
            &["should have at least 1 items"],
        ),
        b(
            "unknown protocol",
            spec_with(json!({"ports": [{"port": 80, "protocol": "ICMP"}]})),
            "spec.ports[0].protocol",
            &["Unsupported value", "\"TCP\"", "\"UDP\"", "\"SCTP\""],
        ),
        b(
            "lowercase protocol",
            spec_with(json!({"ports": [{"port": 80, "protocol": "tcp"}]})),
            "spec.ports[0].protocol",
            &["Unsupported value"],
        ),
        b(
            "unknown scheduler",
            spec_with(json!({"scheduler": "fastest"})),
            "spec.scheduler",
            &[
                "Unsupported value: \"fastest\"",
                "supported values",
                "\"rr\"",
                "\"wlc\"",
                "\"mh\"",
                "\"twos\"",
            ],
        ),
        b(
            "negative weight",
            spec_with(json!({"backends": {"static": [{"address": "198.51.100.1", "weight": -1}]}})),
            "spec.backends.static[0].weight",
            &["should be greater than or equal to 0"],
        ),
        b(
            "oversized weight",
            spec_with(
                json!({"backends": {"static": [{"address": "198.51.100.1", "weight": 65536}]}}),
            ),
            "spec.backends.static[0].weight",
            &["should be less than or equal to 65535"],
        ),
        b(
            "both backend kinds",
            spec_with(json!({"backends": {
                "static": [{"address": "198.51.100.1"}],
                "service": {"name": "web"},
            }})),
            "spec.backends",
            &["set exactly one of static or service"],
        ),
        b(
            "neither backend kind",
            spec_with(json!({"backends": {}})),
            "spec.backends",
            &["set exactly one of static or service"],
        ),
        b(
            "no backends",
            json!({"vip": "192.0.2.10", "ports": [{"port": 80}]}),
            "spec.backends",
            &["Required value"],
        ),
        b(
            "empty static list",
            spec_with(json!({"backends": {"static": []}})),
            "spec.backends.static",
            &["should have at least 1 items"],
        ),
        b(
            "invalid real server address",
            spec_with(json!({"backends": {"static": [{"address": "rs1"}]}})),
            "spec.backends.static[0].address",
            &["must be an IPv4 or IPv6 address"],
        ),
        b(
            "bad Service name",
            spec_with(json!({"backends": {"service": {"name": "Web_1"}}})),
            "spec.backends.service.name",
            &["should match"],
        ),
        b(
            "gue without port",
            spec_with(json!({"tunnel": {"type": "gue"}})),
            "spec.tunnel.port",
            &["gue encapsulation needs a UDP port"],
        ),
        b(
            "port on ipip",
            spec_with(json!({"tunnel": {"type": "ipip", "port": 5555}})),
            "spec.tunnel.port",
            &["only gue uses a port"],
        ),
        b(
            "csum on ipip",
            spec_with(json!({"tunnel": {"checksum": "csum"}})),
            "spec.tunnel.checksum",
            &["ipip has no checksum option"],
        ),
        b(
            "remcsum on gre",
            spec_with(json!({"tunnel": {"type": "gre", "checksum": "remcsum"}})),
            "spec.tunnel.checksum",
            &["remcsum is only available with gue"],
        ),
        b(
            "tunl0 for an IPv6 VIP",
            spec_with(
                json!({"vip": "2001:db8::10", "backends": {"static": [{"address": "2001:db8::3"}]}, "directors": {"interface": "tunl0"}}),
            ),
            "spec.directors.interface",
            &["tunl0 holds IPv4 VIPs and ip6tnl0 IPv6 VIPs"],
        ),
        b(
            "ip6tnl0 for an IPv4 VIP",
            spec_with(json!({"directors": {"interface": "ip6tnl0"}})),
            "spec.directors.interface",
            &["tunl0 holds IPv4 VIPs and ip6tnl0 IPv6 VIPs"],
        ),
        b(
            "unknown tunnel type",
            spec_with(json!({"tunnel": {"type": "vxlan"}})),
            "spec.tunnel.type",
            &["Unsupported value", "\"ipip\"", "\"gue\"", "\"gre\""],
        ),
        b(
            "tiny MSS clamp",
            spec_with(json!({"tunnel": {"mssClamp": 100}})),
            "spec.tunnel.mssClamp",
            &["should be greater than or equal to 536"],
        ),
        b(
            "zero persistence timeout",
            spec_with(json!({"persistence": {"timeoutSeconds": 0}})),
            "spec.persistence.timeoutSeconds",
            &["should be greater than or equal to 1"],
        ),
        b(
            "IPv4 prefix length 33",
            spec_with(json!({"persistence": {"timeoutSeconds": 60, "prefixLength": 33}})),
            "spec.persistence.prefixLength",
            &["prefixLength must be 0-32 for an IPv4 VIP"],
        ),
        b(
            "duplicate ports",
            spec_with(json!({"ports": [{"port": 80}, {"port": 80, "protocol": "TCP"}]})),
            "spec.ports[1]",
            &["Duplicate value"],
        ),
        b(
            "duplicate port names",
            spec_with(json!({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]})),
            "spec.ports",
            &["duplicate port name"],
        ),
        b(
            "duplicate real servers",
            spec_with(json!({"backends": {"static": [
                {"address": "198.51.100.1"}, {"address": "198.51.100.1", "weight": 2},
            ]}})),
            "spec.backends.static[1]",
            &["Duplicate value"],
        ),
        b(
            "real server is the VIP",
            spec_with(json!({"backends": {"static": [{"address": "192.0.2.10"}]}})),
            "spec.backends.static",
            &["a real server cannot be the VIP itself"],
        ),
        b(
            "real server of the other family",
            spec_with(json!({"backends": {"static": [{"address": "2001:db8::1"}]}})),
            "spec.backends.static",
            &["real server addresses must be of the VIP's address family"],
        ),
        b(
            "lowerThreshold above upperThreshold",
            spec_with(json!({"backends": {"static": [
                {"address": "198.51.100.1", "upperThreshold": 10, "lowerThreshold": 20},
            ]}})),
            "spec.backends.static[0].lowerThreshold",
            &["lowerThreshold must not exceed upperThreshold"],
        ),
        b(
            "sh flag on rr",
            spec_with(json!({"scheduler": "rr", "schedulerFlags": ["sh-port"]})),
            "spec.schedulerFlags",
            &["schedulerFlags must belong to the scheduler"],
        ),
        b(
            "mh flag on sh",
            spec_with(json!({"scheduler": "sh", "schedulerFlags": ["mh-fallback"]})),
            "spec.schedulerFlags",
            &["schedulerFlags must belong to the scheduler"],
        ),
        b(
            "sh flag on the default scheduler",
            spec_with(json!({"schedulerFlags": ["sh-fallback"]})),
            "spec.schedulerFlags",
            &["schedulerFlags must belong to the scheduler"],
        ),
        b(
            "onePacket without UDP",
            spec_with(
                json!({"onePacket": true, "ports": [{"port": 53}, {"port": 5353, "protocol": "SCTP"}]}),
            ),
            "spec.onePacket",
            &["one-packet scheduling applies to UDP and this service has no UDP port"],
        ),
        b(
            "interface with a slash",
            spec_with(json!({"directors": {"interface": "eth0/1"}})),
            "spec.directors.interface",
            &["should match"],
        ),
        b(
            "interface name too long",
            spec_with(json!({"directors": {"interface": "a-very-long-name0"}})),
            "spec.directors.interface",
            &["should match"],
        ),
        b(
            "health check timeout not below the interval",
            spec_with(json!({"healthCheck": {"intervalSeconds": 3, "timeoutSeconds": 3}})),
            "spec.healthCheck.timeoutSeconds",
            &["timeoutSeconds must be less than intervalSeconds"],
        ),
        b(
            "health check timeout not below the default interval",
            spec_with(json!({"healthCheck": {"timeoutSeconds": 2}})),
            "spec.healthCheck.timeoutSeconds",
            &["less than intervalSeconds (default 2)"],
        ),
        b(
            "rise 0",
            spec_with(json!({"healthCheck": {"rise": 0}})),
            "spec.healthCheck.rise",
            &["should be greater than or equal to 1"],
        ),
        b(
            "fall 0",
            spec_with(json!({"ports": [{"port": 80, "healthCheck": {"fall": 0}}]})),
            "spec.ports[0].healthCheck.fall",
            &["should be greater than or equal to 1"],
        ),
        b(
            "http path without a leading slash",
            spec_with(json!({"healthCheck": {"type": "http", "path": "healthz"}})),
            "spec.healthCheck.path",
            &["must start with '/'"],
        ),
        b(
            "http options on a tcp check",
            spec_with(json!({"healthCheck": {"type": "tcp", "path": "/healthz"}})),
            "spec.healthCheck.type",
            &["apply to http checks only"],
        ),
        b(
            "http check of a UDP port",
            spec_with(json!({"ports": [{"port": 53, "protocol": "UDP",
                                         "healthCheck": {"type": "http", "path": "/"}}]})),
            "spec.ports[0].healthCheck.port",
            &["needs healthCheck.port, a TCP port on the real servers"],
        ),
        b(
            "spec-wide check of a UDP port",
            spec_with(
                json!({"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}],
                             "healthCheck": {"type": "http"}}),
            ),
            "spec.healthCheck.port",
            &["needs healthCheck.port"],
        ),
        b(
            "status code out of range",
            spec_with(json!({"healthCheck": {"type": "http", "expectedStatuses": [200, 700]}})),
            "spec.healthCheck.expectedStatuses",
            &["status codes are 100-599"],
        ),
    ]
}

/// Creates the object and returns the API server's refusal (422 Invalid).
async fn refusal(api: &Api<DynamicObject>, name: &str, spec: &Value) -> kube::core::Status {
    match api
        .create(&PostParams::default(), &dynamic(name, spec.clone()))
        .await
    {
        Ok(_) => panic!("{name}: admitted {spec}"),
        Err(kube::Error::Api(status)) => *status,
        Err(e) => panic!("{name}: {e}"),
    }
}

#[tokio::test]
#[ignore = "needs the test control plane: run tests/run.sh"]
async fn bad_input_is_refused_at_admission_naming_the_field() {
    let ns = namespace("bad");
    let api = untyped(&ns).await;
    let mut failures = Vec::new();
    for (i, bad) in bad_inputs().iter().enumerate() {
        let name = format!("bad-{i}");
        let status = refusal(&api, &name, &bad.spec).await;
        println!("{}: {}", bad.case, status.message);
        let causes = status
            .details
            .as_ref()
            .map(|d| d.causes.clone())
            .unwrap_or_default();
        let hit = causes
            .iter()
            .any(|c| c.field == bad.field && bad.phrases.iter().all(|p| c.message.contains(p)));
        let in_message = status.message.contains(&format!("{}: ", bad.field))
            && bad.phrases.iter().all(|p| status.message.contains(p));
        if status.code != 422 || status.reason != "Invalid" || !hit || !in_message {
            failures.push(format!(
                "{}: want {} {:?}, got {} {}: {}",
                bad.case, bad.field, bad.phrases, status.code, status.reason, status.message
            ));
        }
        // the agent-side validator must refuse what admission refuses (when serde
        // can express it at all: unknown enum values do not deserialize)
        if let Ok(spec) = serde_json::from_value::<VirtualServiceSpec>(bad.spec.clone())
            && tunlb_api::validate(&spec).is_ok()
        {
            failures.push(format!(
                "{}: admission refuses it but tunlb_api::validate accepts it",
                bad.case
            ));
        }
    }
    // nothing was stored
    let left = api.list(&ListParams::default()).await.unwrap();
    assert!(left.items.is_empty(), "stored: {:?}", left.items);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // an update is checked like a create
    api.create(
        &PostParams::default(),
        &dynamic("good", spec_with(json!({}))),
    )
    .await
    .unwrap();
    let patch = json!({"spec": {"vip": "127.0.0.2"}});
    match api
        .patch("good", &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message.contains("spec.vip: ") && s.message.contains("unicast"),
                "{}",
                s.message
            );
        }
        other => panic!("update to a loopback VIP: {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the test control plane: run tests/run.sh"]
async fn edge_cases_that_are_valid_are_admitted() {
    let ns = namespace("good");
    let api = untyped(&ns).await;
    let good = [
        spec_with(json!({"tunnel": {"type": "gue", "port": 5555, "checksum": "remcsum"}})),
        spec_with(json!({"tunnel": {"type": "gre", "checksum": "csum", "mssClamp": 1440}})),
        spec_with(json!({"scheduler": "sh", "schedulerFlags": ["sh-fallback", "sh-port"]})),
        spec_with(json!({"scheduler": "mh", "schedulerFlags": ["mh-port"]})),
        spec_with(json!({"onePacket": true, "ports": [{"port": 53, "protocol": "UDP"}]})),
        spec_with(json!({"ports": [{"port": 53}, {"port": 53, "protocol": "UDP"}]})),
        spec_with(json!({"ports": [{"port": 1}, {"port": 65535, "targetPort": 65535}]})),
        spec_with(json!({"persistence": {"timeoutSeconds": 1, "prefixLength": 24}})),
        spec_with(json!({"backends": {"static": [
            {"address": "198.51.100.1", "weight": 0},
            {"address": "198.51.100.2", "weight": 65535, "upperThreshold": 0, "lowerThreshold": 5},
            {"address": "198.51.100.3", "upperThreshold": 100, "lowerThreshold": 100},
        ]}})),
        json!({"vip": "2001:db8::10", "ports": [{"port": 443}],
               "persistence": {"timeoutSeconds": 300, "prefixLength": 64},
               "backends": {"static": [{"address": "2001:db8::1"}]}}),
        spec_with(json!({"backends": {"service": {"name": "web-1"}}})),
        spec_with(json!({"directors": {"interface": "eth0.100",
                                       "nodeSelector": {"matchLabels": {"role": "lb"}}}})),
        spec_with(
            json!({"healthCheck": {"type": "http", "path": "/healthz?full=1",
                                         "host": "web.example:8080", "expectedStatuses": [200, 204],
                                         "intervalSeconds": 5, "timeoutSeconds": 4, "rise": 1, "fall": 3}}),
        ),
        spec_with(json!({"healthCheck": {"type": "none"},
                         "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]})),
        spec_with(
            json!({"ports": [{"port": 53, "protocol": "UDP", "healthCheck": {"port": 8080}},
                                   {"port": 80, "healthCheck": {"type": "none"}}]}),
        ),
        spec_with(json!({"ports": [{"port": 53, "protocol": "UDP"}, {"port": 80}]})),
    ];
    for (i, spec) in good.iter().enumerate() {
        let name = format!("good-{i}");
        if let Err(e) = api
            .create(&PostParams::default(), &dynamic(&name, spec.clone()))
            .await
        {
            panic!("{spec} refused: {e}");
        }
        let parsed: VirtualServiceSpec = serde_json::from_value(spec.clone()).unwrap();
        if let Err(e) = tunlb_api::validate(&parsed) {
            panic!("{spec}: admitted, but tunlb_api::validate refuses it: {e}");
        }
    }
}

#[tokio::test]
#[ignore = "needs the test control plane: run tests/run.sh"]
async fn server_side_reapply_is_a_no_op() {
    let cp = cp();
    let ns = namespace("ssa");
    let web = workspace_root().join("examples/seed/01-web.yaml");
    let web = web.to_string_lossy();
    let apply = ["-n", &ns, "apply", "--server-side", "-f", &web];
    cp.kubectl_ok(apply).unwrap();
    let first = get_json(&ns, "tvs/web");
    assert_eq!(first["metadata"]["generation"], 1);
    let out = cp.kubectl_ok(apply).unwrap();
    println!("{out}");
    let second = get_json(&ns, "tvs/web");
    assert_eq!(second["metadata"]["generation"], 1);
    assert_eq!(
        second["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"],
        "re-applying the same manifest wrote the object"
    );
    assert_eq!(second, first);
    let diff = cp
        .kubectl(["-n", &ns, "diff", "--server-side", "-f", &web])
        .unwrap();
    assert!(
        diff.status.success() && diff.stdout.is_empty(),
        "kubectl diff: {}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );

    // the same from Rust with the typed object, which serializes every default
    let api = typed(&ns).await;
    let text =
        std::fs::read_to_string(workspace_root().join("examples/seed/02-mapped.yaml")).unwrap();
    let vs: VirtualService = serde_yaml::from_str(&text).unwrap();
    let pp = PatchParams::apply("tunlb-test").force();
    let a = api.patch("mapped", &pp, &Patch::Apply(&vs)).await.unwrap();
    let b = api.patch("mapped", &pp, &Patch::Apply(&vs)).await.unwrap();
    assert_eq!(a.metadata.generation, Some(1));
    assert_eq!(b.metadata.generation, Some(1));
    assert_eq!(a.metadata.resource_version, b.metadata.resource_version);
    // kubectl applying the manifest, which leaves the defaults out, as the
    // same manager: ownership of the defaulted fields moves, values do not
    let mapped = workspace_root().join("examples/seed/02-mapped.yaml");
    cp.kubectl_ok([
        "-n",
        &ns,
        "apply",
        "--server-side",
        "--field-manager=tunlb-test",
        "-f",
        &mapped.to_string_lossy(),
    ])
    .unwrap();
    let c = api.get("mapped").await.unwrap();
    assert_eq!(c.metadata.generation, Some(1));
    assert_eq!(c.spec, b.spec);

    // a real change does bump the generation (so the checks above mean something)
    let mut changed = vs.clone();
    if let Some(rs) = changed.spec.backends.static_servers.as_mut() {
        rs[0].weight = 5;
    }
    let d = api
        .patch("mapped", &pp, &Patch::Apply(&changed))
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(2));
}

fn status_apply(status: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": KIND, "status": status})
}

fn node(name: &str) -> Value {
    json!({"nodeName": name, "programmed": true, "roles": ["director"], "observedGeneration": 1})
}

fn condition(kind: &str, status: &str) -> Value {
    json!({"type": kind, "status": status, "reason": "Test", "message": "",
           "lastTransitionTime": "2025-01-01T00:00:00Z"})
}

fn node_names(vs: &VirtualService) -> Vec<String> {
    let mut names: Vec<String> = vs
        .status
        .iter()
        .flat_map(|s| s.nodes.iter().map(|n| n.node_name.clone()))
        .collect();
    names.sort();
    names
}

/// The status fields `manager` owns, as the API server's managedFields say.
fn owned_status_fields(vs: &VirtualService, manager: &str) -> String {
    vs.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .map(|m| {
            assert_eq!(m.subresource.as_deref(), Some("status"), "{manager}");
            assert_eq!(m.operation.as_deref(), Some("Apply"), "{manager}");
            m.fields_v1
                .as_ref()
                .map(|f| f.0.to_string())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the test control plane: run tests/run.sh"]
async fn status_nodes_and_conditions_are_list_maps_owned_per_manager() {
    let ns = namespace("status");
    let api = typed(&ns).await;
    let spec: VirtualServiceSpec = serde_json::from_value(spec_with(json!({}))).unwrap();
    api.create(&PostParams::default(), &VirtualService::new("st", spec))
        .await
        .unwrap();

    let agent_a = PatchParams::apply("agent-a");
    let agent_b = PatchParams::apply("agent-b");
    let a = status_apply(json!({"nodes": [node("a")]}));
    let b = status_apply(json!({"nodes": [node("b")]}));
    api.patch_status("st", &agent_a, &Patch::Apply(&a))
        .await
        .unwrap();
    api.patch_status("st", &agent_b, &Patch::Apply(&b))
        .await
        .unwrap();
    let vs = api.get("st").await.unwrap();
    assert_eq!(node_names(&vs), ["a", "b"]);
    assert_eq!(
        vs.metadata.generation,
        Some(1),
        "status writes bump the generation"
    );
    let owned_a = owned_status_fields(&vs, "agent-a");
    let owned_b = owned_status_fields(&vs, "agent-b");
    println!("agent-a owns {owned_a}\nagent-b owns {owned_b}");
    assert!(owned_a.contains(r#"k:{\"nodeName\":\"a\"}"#), "{owned_a}");
    assert!(!owned_a.contains(r#"\"nodeName\":\"b\""#), "{owned_a}");
    assert!(owned_b.contains(r#"k:{\"nodeName\":\"b\"}"#), "{owned_b}");
    assert!(!owned_b.contains(r#"\"nodeName\":\"a\""#), "{owned_b}");

    // an agent re-applying its own entry changes only that entry
    let mut a2 = node("a");
    a2["programmed"] = json!(false);
    a2["message"] = json!("ip_vs_wrr missing");
    api.patch_status(
        "st",
        &agent_a,
        &Patch::Apply(&status_apply(json!({"nodes": [a2]}))),
    )
    .await
    .unwrap();
    let vs = api.get("st").await.unwrap();
    let nodes = &vs.status.as_ref().unwrap().nodes;
    let (na, nb) = (
        nodes.iter().find(|n| n.node_name == "a").unwrap(),
        nodes.iter().find(|n| n.node_name == "b").unwrap(),
    );
    assert!(!na.programmed && na.message == "ip_vs_wrr missing");
    assert!(nb.programmed && nb.message.is_empty());

    // agent-a writing a different value into node b's entry conflicts with
    // agent-b (identical values would just make it a co-owner)
    let mut b_wrong = node("b");
    b_wrong["programmed"] = json!(false);
    match api
        .patch_status(
            "st",
            &agent_a,
            &Patch::Apply(&status_apply(json!({"nodes": [node("a"), b_wrong]}))),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{}", s.message),
        other => panic!("agent-a took over node b's entry: {other:?}"),
    }

    // applying an empty list drops only the applier's own entry
    api.patch_status(
        "st",
        &agent_a,
        &Patch::Apply(&status_apply(json!({"nodes": []}))),
    )
    .await
    .unwrap();
    let vs = api.get("st").await.unwrap();
    assert_eq!(node_names(&vs), ["b"]);

    // conditions are keyed by type: two managers, two conditions
    let operator = PatchParams::apply("operator");
    let resolver = PatchParams::apply("resolver");
    api.patch_status(
        "st",
        &operator,
        &Patch::Apply(&status_apply(
            json!({"conditions": [condition("Ready", "True")], "realServerCount": 2}),
        )),
    )
    .await
    .unwrap();
    api.patch_status(
        "st",
        &resolver,
        &Patch::Apply(&status_apply(
            json!({"conditions": [condition("Resolved", "True")]}),
        )),
    )
    .await
    .unwrap();
    api.patch_status(
        "st",
        &operator,
        &Patch::Apply(&status_apply(
            json!({"conditions": [condition("Ready", "False")], "realServerCount": 2}),
        )),
    )
    .await
    .unwrap();
    let vs = api.get("st").await.unwrap();
    let status = vs.status.as_ref().unwrap();
    let mut conds: Vec<(String, String)> = status
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    conds.sort();
    assert_eq!(
        conds,
        [
            ("Ready".to_string(), "False".to_string()),
            ("Resolved".to_string(), "True".to_string())
        ]
    );
    assert_eq!(status.real_server_count, Some(2));
    assert_eq!(node_names(&vs), ["b"], "condition writes touched nodes");
    // a duplicate key in one list-map is refused
    let dup = status_apply(
        json!({"conditions": [condition("Ready", "True"), condition("Ready", "False")]}),
    );
    assert!(
        api.patch_status("st", &operator, &Patch::Apply(&dup))
            .await
            .is_err()
    );

    // status writes cannot change the spec, spec writes cannot change the status
    let sneaky = json!({"apiVersion": API_VERSION, "kind": KIND,
                        "spec": {"vip": "192.0.2.99"}, "status": {"nodes": [node("c")]}});
    api.patch_status("st", &PatchParams::apply("agent-c"), &Patch::Apply(&sneaky))
        .await
        .unwrap();
    let vs = api.get("st").await.unwrap();
    assert_eq!(vs.spec.vip, "192.0.2.10");
    assert_eq!(node_names(&vs), ["b", "c"]);
    api.patch(
        "st",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"nodes": null}})),
    )
    .await
    .unwrap();
    assert_eq!(node_names(&api.get("st").await.unwrap()), ["b", "c"]);
}

#[tokio::test]
#[ignore = "needs the test control plane: run tests/run.sh"]
async fn service_account_token_is_subject_to_rbac() {
    let cp = cp();
    let ns = namespace("rbac");
    let admin = cp.client().await.unwrap();
    Api::<VirtualService>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &VirtualService::new("vs", serde_json::from_value(spec_with(json!({}))).unwrap()),
        )
        .await
        .unwrap();
    let agent = cp.token_client(&ns, "agent").await.unwrap();
    let as_agent: Api<VirtualService> = Api::namespaced(agent, &ns);
    match as_agent.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{}", s.message),
        other => panic!("listed without RBAC: {other:?}"),
    }

    // what a node agent needs: read the services, write status only
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "rules": [
            {"apiGroups": [GROUP], "resources": ["virtualservices"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [GROUP], "resources": ["virtualservices/status"], "verbs": ["patch"]},
        ],
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some("agent".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "agent".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "agent".into(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        match as_agent.list(&ListParams::default()).await {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                println!("waiting for RBAC: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("still forbidden: {e}"),
        }
    };
    assert_eq!(listed.items.len(), 1);
    as_agent
        .patch_status(
            "vs",
            &PatchParams::apply("agent-n1"),
            &Patch::Apply(&status_apply(json!({"nodes": [node("n1")]}))),
        )
        .await
        .unwrap();
    match as_agent
        .patch(
            "vs",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"scheduler": "rr"}})),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{}", s.message),
        other => panic!("agent patched the spec: {other:?}"),
    }
    let whoami = cp.apiserver_url();
    assert!(whoami.starts_with("https://127.0.0.1:"), "{whoami}");
}

/// Gone, or a zombie waiting for its reaper (PID 1 in a container may not reap).
fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[tokio::test]
#[ignore = "needs the test control plane: run tests/run.sh"]
async fn a_dropped_control_plane_stops_its_servers() {
    let cp = ControlPlane::start().unwrap();
    let dir = cp.dir().to_path_buf();
    assert!(cp.apiserver_url().starts_with("https://127.0.0.1:"));
    assert_eq!(cp.env()["TUNLB_APISERVER_URL"], cp.apiserver_url());
    assert_eq!(cp.kubeconfig_path(), dir.join("admin.kubeconfig"));
    assert_eq!(cp.kubectl_ok(["get", "--raw", "/readyz"]).unwrap(), "ok");
    let version = cp
        .client()
        .await
        .unwrap()
        .apiserver_version()
        .await
        .unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "36")
    );
    let pids: Vec<String> = ["kube-apiserver", "etcd"]
        .iter()
        .map(|p| {
            std::fs::read_to_string(dir.join(format!("{p}.pid")))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert!(pids.iter().all(|p| !process_gone(p)));
    drop(cp);
    for pid in &pids {
        assert!(process_gone(pid), "pid {pid} survived Drop");
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// VipPools: cluster-scoped, listed with their columns, and bad CIDRs or
/// port ranges are refused at admission naming the field.
#[tokio::test]
#[ignore = "needs the test control plane: run tests/run.sh"]
async fn vip_pools_are_cluster_scoped_and_refuse_bad_ranges() {
    let client = cp().client().await.unwrap();
    let ar = ApiResource::erase::<tunlb_api::VipPool>(&());
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let pool = |name: &str, spec: Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": API_VERSION, "kind": "VipPool",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap()
    };
    for (name, spec, want) in [
        (
            "bad-cidr",
            json!({"cidrs": ["192.168.56.0/24", "banana"]}),
            "spec.cidrs: Invalid value: every entry must be a CIDR",
        ),
        (
            "bad-backend-cidr",
            json!({"cidrs": ["10.0.0.0/8"], "backends": {"cidrs": ["10.1.2.3"]}}),
            "spec.backends.cidrs: Invalid value: every entry must be a CIDR",
        ),
        (
            "no-cidrs",
            json!({"cidrs": []}),
            "spec.cidrs in body should have at least 1 items",
        ),
        (
            "bad-range",
            json!({"cidrs": ["10.0.0.0/8"], "targetPorts": [{"from": 9000, "to": 8000}]}),
            "spec.targetPorts[0].to: Invalid value: to must not be below from",
        ),
        (
            "bad-interface",
            json!({"cidrs": ["10.0.0.0/8"], "directors": {"interfaces": ["eth0/1"]}}),
            "spec.directors.interfaces[0]: Invalid value: \"eth0/1\"",
        ),
    ] {
        let err = api
            .create(&PostParams::default(), &pool(name, spec))
            .await
            .expect_err(name);
        assert!(err.to_string().contains(want), "{name}: {err}");
    }
    api.create(
        &PostParams::default(),
        &pool(
            "crd-good",
            json!({"cidrs": ["192.168.90.0/24", "fd00:90::/64"], "namespaces": ["team-a"],
                   "targetPorts": [{"from": 8080, "to": 8089}]}),
        ),
    )
    .await
    .unwrap();
    let table = cp().kubectl_ok(["get", "vippools", "crd-good"]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "CIDRS", "NAMESPACES", "USED", "AGE"],
        "{table}"
    );
    assert!(table.contains("192.168.90.0/24"), "{table}");
    // Cluster-scoped: a namespaced URL does not serve it.
    let out = cp()
        .kubectl([
            "get",
            "--raw",
            "/apis/tunlb.io/v1alpha1/namespaces/default/vippools",
        ])
        .unwrap();
    assert!(!out.status.success());
}
