//! End to end: a real kube-apiserver on the host, the operator on the host,
//! and node agents in the QEMU lab, each running with the Helm chart's own
//! ServiceAccount and RBAC. The guest scenarios (tests/lab/scenarios/e2e*.sh)
//! drive kubectl and check traffic.

use tunlb_tests::cluster_lab::run_in_cluster_lab;

fn assert_cluster_scenario(name: &str) {
    let (run, operator_log) = match run_in_cluster_lab(name, 600) {
        Ok(r) => r,
        Err(e) => panic!("cluster lab did not start: {e:#}"),
    };
    println!("{}\n--- operator log (tail)\n{operator_log}", run.output);
    assert!(
        run.passed > 0,
        "scenario {name} reported no passing assertion"
    );
    assert_eq!(run.failed, 0, "{} assertions of {name} failed", run.failed);
    assert_eq!(run.exit_code, Some(0));
}

#[test]
#[ignore = "needs the QEMU lab and the test control plane: run tests/run.sh"]
fn seed_scenario_through_kubectl() {
    assert_cluster_scenario("e2e");
}

#[test]
#[ignore = "needs the QEMU lab and the test control plane: run tests/run.sh"]
fn faults_unprogrammable_object_api_outage_and_legacy_object() {
    assert_cluster_scenario("e2e-faults");
}
