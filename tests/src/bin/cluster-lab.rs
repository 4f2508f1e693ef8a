//! Runs one scenario in the cluster lab and prints what happened:
//! `cargo run -p tunlb-tests --bin cluster-lab -- demo`.

use std::process::ExitCode;

fn main() -> anyhow::Result<ExitCode> {
    let scenario = std::env::args().nth(1).unwrap_or_else(|| "demo".into());
    let (run, operator_log) = tunlb_tests::cluster_lab::run_in_cluster_lab(&scenario, 600)?;
    println!("{}", run.output);
    if run.exit_code != Some(0) {
        eprintln!("--- operator log (tail)\n{operator_log}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
