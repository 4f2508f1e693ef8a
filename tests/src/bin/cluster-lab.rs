//! Runs one scenario in the cluster lab and prints what happened:
//! `cargo run -p tunlb-tests --bin cluster-lab -- demo`.
//!
//! usage: cluster-lab [SCENARIO] [--timeout SECONDS] [--populate MANIFEST]
//!        [--vip-cidr CIDR]... [--no-lab-pool] [--second-director]
//!        [--dir HOST_DIR:GUEST_PATH]... [--bin PATH]... [--host-bin PATH]...

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use tunlb_tests::cluster_lab::{ClusterLabOptions, run_in_cluster_lab_with};

fn main() -> anyhow::Result<ExitCode> {
    let mut scenario = "demo".to_string();
    let mut opts = ClusterLabOptions {
        timeout_s: 600,
        ..Default::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--timeout" => opts.timeout_s = value()?.parse().context("--timeout")?,
            "--populate" => opts.populate = Some(PathBuf::from(value()?)),
            "--vip-cidr" => opts.vip_cidrs.push(value()?),
            "--no-lab-pool" => opts.no_lab_pool = true,
            "--second-director" => opts.second_director = true,
            "--host-bin" => opts.host_bins.push(PathBuf::from(value()?)),
            "--bin" => opts.extra_bins.push(PathBuf::from(value()?)),
            "--dir" => {
                let v = value()?;
                let (host, guest) = v
                    .split_once(':')
                    .with_context(|| format!("--dir {v}: want HOST_DIR:GUEST_PATH"))?;
                opts.extra_dirs.push((host.into(), guest.into()));
            }
            s if s.starts_with("--") => bail!("unknown flag {s}"),
            s => scenario = s.to_string(),
        }
    }
    let (run, operator_log) = run_in_cluster_lab_with(&scenario, &opts)?;
    println!("{}", run.output);
    if run.exit_code != Some(0) {
        eprintln!("--- operator log (tail)\n{operator_log}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
