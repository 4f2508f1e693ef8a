//! Real-kernel tests: each boots the QEMU lab and runs one guest scenario.
//! Ignored by a plain `cargo test`; `tests/run.sh` runs them.

use tunlb_tests::assert_scenario;

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn lab_itself_reproduces_the_manual_seed() {
    let run = tunlb_tests::run_scenario("../lab/seed-manual", &[], 300);
    println!("{}", run.output);
    run.assert_passed("../lab/seed-manual", 1);
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn seed_weights_edit_noop_and_delete() {
    assert_scenario("seed");
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn port_mapping_through_backend_dnat() {
    assert_scenario("mapping");
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn health_probes_through_the_tunnel_set_weights() {
    assert_scenario("health");
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn vip_on_ordinary_director_interface() {
    assert_scenario("eth-vip");
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn a_missing_nft_module_is_named_and_nothing_is_half_applied() {
    assert_scenario("missing-module");
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn foreign_kernel_state_is_never_touched() {
    assert_scenario("ownership");
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn bad_input_is_named_and_never_half_applied() {
    assert_scenario("bad-input");
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn pinned_kernel_and_the_agent_image() {
    let root = tunlb_tests::workspace_root();
    let run = tunlb_tests::run_scenario_with(
        "release",
        &tunlb_tests::LabOptions {
            extra_dirs: vec![(root.join("tests/controlplane"), "/versions".into())],
            ..tunlb_tests::LabOptions::default()
        },
    );
    println!("{}", run.output);
    let image_checks = if tunlb_tests::agent_image().is_some() {
        6
    } else {
        1
    };
    run.assert_passed("release", image_checks);
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn sigkill_and_damaged_state_leave_nothing_foreign() {
    // A thousand VirtualServices applied, edited and deleted several times
    // under TCG: more than the usual five minutes.
    let run = tunlb_tests::run_scenario("crash", &[], 900);
    println!("{}", run.output);
    run.assert_passed("crash", 1);
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn removed_servers_drain_and_vips_follow_their_services() {
    // Two 30-second drains run to their end under TCG.
    let run = tunlb_tests::run_scenario("drain", &[], 600);
    println!("{}", run.output);
    run.assert_passed("drain", 1);
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn hung_nft_times_out_is_killed_and_the_next_run_repairs() {
    // From the agent image when TUNLB_AGENT_IMAGE is set (a copy of it with
    // a hanging nft), else from the bare binary (a hanging nft first in PATH).
    let run = tunlb_tests::run_scenario("self-repair", &[], 300);
    println!("{}", run.output);
    // Every check ran.
    run.assert_passed("self-repair", 13);
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn every_tunnel_type_and_family_carries_traffic() {
    let udp_echo = std::path::PathBuf::from(env!("CARGO_BIN_EXE_udp-echo"));
    let run = tunlb_tests::run_scenario("tunnels", &[udp_echo], 600);
    println!("{}", run.output);
    run.assert_passed("tunnels", 1);
}

#[test]
#[ignore = "boots the QEMU lab: run tests/run.sh"]
fn vrrp_elects_one_director_fails_over_and_interoperates_with_keepalived() {
    let run = tunlb_tests::run_scenario_with(
        "vrrp",
        &tunlb_tests::LabOptions {
            timeout_s: 600,
            host_bins: vec!["/usr/sbin/keepalived".into()],
            extra_bins: vec![env!("CARGO_BIN_EXE_tcp-hold").into()],
            ..tunlb_tests::LabOptions::default()
        },
    );
    println!("{}", run.output);
    // Every part ran to the end.
    run.assert_passed("vrrp", 57);
}
