//! End to end: a real kube-apiserver on the host, the operator on the host,
//! and node agents in the QEMU lab, each running with the Helm chart's own
//! ServiceAccount and RBAC. The guest scenarios (tests/lab/scenarios/e2e*.sh)
//! drive kubectl and check traffic.

use std::path::PathBuf;

use tunlb_tests::cluster_lab::{ClusterLabOptions, run_in_cluster_lab_with};

fn assert_cluster_scenario_with(name: &str, opts: &ClusterLabOptions) {
    let (run, operator_log) = match run_in_cluster_lab_with(name, opts) {
        Ok(r) => r,
        Err(e) => panic!("cluster lab did not start: {e:#}"),
    };
    println!("{}\n--- operator log (tail)\n{operator_log}", run.output);
    run.assert_passed(name, 1);
}

fn assert_cluster_scenario(name: &str) {
    assert_cluster_scenario_with(
        name,
        &ClusterLabOptions {
            timeout_s: 900,
            ..Default::default()
        },
    );
}

#[test]
#[ignore = "needs the QEMU lab and the test control plane: run tests/run.sh"]
fn seed_scenario_through_kubectl() {
    assert_cluster_scenario("e2e");
}

#[test]
#[ignore = "needs the QEMU lab and the test control plane: run tests/run.sh"]
fn tenants_cannot_reach_past_their_vip_pools() {
    assert_cluster_scenario("e2e-tenants");
}

#[test]
#[ignore = "needs the QEMU lab and the test control plane: run tests/run.sh"]
fn faults_unprogrammable_object_api_outage_and_legacy_object() {
    assert_cluster_scenario("e2e-faults");
}

#[test]
#[ignore = "needs the QEMU lab and the test control plane: run tests/run.sh"]
fn two_directors_elect_one_holder_and_fail_over_without_the_api_server() {
    assert_cluster_scenario_with(
        "e2e-ha",
        &ClusterLabOptions {
            timeout_s: 900,
            second_director: true,
            extra_bins: vec![
                env!("CARGO_BIN_EXE_probe-loop").into(),
                env!("CARGO_BIN_EXE_tcp-hold").into(),
            ],
            host_bins: vec!["/usr/sbin/keepalived".into()],
            ..Default::default()
        },
    );
}

#[test]
#[ignore = "needs the QEMU lab and the test control plane: run tests/run.sh"]
fn service_endpoints_several_per_node_churn_and_a_missing_nft_module() {
    assert_cluster_scenario("e2e-endpoints");
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The seed of the chaos schedule: `TUNLB_CHAOS_SEED`, else one from the clock.
fn chaos_seed() -> u32 {
    if let Some(seed) = std::env::var("TUNLB_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return seed;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Nanoseconds and the pid: two runs started together still differ.
    now.subsec_nanos() ^ now.as_secs() as u32 ^ std::process::id().rotate_left(16)
}

#[test]
#[ignore = "needs the QEMU lab and the test control plane: run tests/run.sh"]
fn chaos_churn_and_agent_kills_converge_to_the_plan() {
    let seed = chaos_seed();
    println!("chaos seed {seed}: TUNLB_CHAOS_SEED={seed} replays this schedule");
    let dir = TempDir(std::env::temp_dir().join(format!("tunlb-chaos-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap_or_else(|e| panic!("{}: {e}", dir.0.display()));
    std::fs::write(dir.0.join("seed"), format!("{seed}\n"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.0.display()));
    assert_cluster_scenario_with(
        "e2e-chaos",
        &ClusterLabOptions {
            timeout_s: 900,
            // The churned VirtualServices take their VIPs from here.
            vip_cidrs: vec!["10.77.0.0/16".into()],
            extra_dirs: vec![(dir.0.clone(), "/chaos".into())],
            ..Default::default()
        },
    );
}
