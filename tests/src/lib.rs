//! Harness for tests that need a real kernel: boots the QEMU lab
//! (tests/lab/run.sh) with the agent binary, the example manifests and the
//! guest scenarios, and reports what the guest's assertions said.

pub mod cluster_lab;
pub mod controlplane;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The agent binary to put in the guest: `TUNLB_AGENT_BIN`, else the release build.
pub fn agent_binary() -> PathBuf {
    std::env::var_os("TUNLB_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/tunlb-agent"))
}

/// The agent image to run in the guest instead of a bare binary:
/// `TUNLB_AGENT_IMAGE`, a directory made by `tests/images/unpack.sh` from the
/// agent's OCI archive. The guest then runs the image's entrypoint chrooted
/// into its root filesystem (tests/lab/image/tunlb-agent), so a program or
/// library missing from the image fails the scenario.
pub fn agent_image() -> Option<PathBuf> {
    std::env::var_os("TUNLB_AGENT_IMAGE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// What one guest run reported.
#[derive(Debug)]
pub struct LabRun {
    pub exit_code: Option<i32>,
    pub output: String,
    pub passed: u32,
    pub failed: u32,
}

impl LabRun {
    /// The guest's failed assertions and timed-out waits, one a line: the
    /// panic message carries them, since a long run's output is often read
    /// only from its end.
    pub fn failures(&self) -> String {
        self.output
            .lines()
            .filter(|l| l.starts_with("not ok - ") || l.starts_with("timed out after "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Panics unless the guest ran `name` to its end with at least
    /// `min_passed` passing assertions and none failing.
    pub fn assert_passed(&self, name: &str, min_passed: u32) {
        assert!(
            self.failed == 0 && self.exit_code == Some(0) && self.passed >= min_passed.max(1),
            "scenario {name}: {} passed (at least {} expected), {} failed, exit {:?}:\n{}",
            self.passed,
            min_passed.max(1),
            self.failed,
            self.exit_code,
            self.failures()
        );
    }
}

/// Parses the guest's closing `N passed, M failed` line.
pub fn parse_summary(output: &str) -> Option<(u32, u32)> {
    output.lines().rev().find_map(|l| {
        let (p, f) = l.trim().split_once(" passed, ")?;
        let f = f.strip_suffix(" failed")?;
        Some((p.trim().parse().ok()?, f.trim().parse().ok()?))
    })
}

/// Extra settings for one guest run.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub timeout_s: u32,
    /// QEMU user networking: the guest reaches the host's loopback at 10.0.2.2.
    pub net: bool,
    pub mem_mb: u32,
    pub extra_bins: Vec<PathBuf>,
    /// Host programs copied to the same path in the guest, with their
    /// libraries, as a cached image layer (run.sh --host-bin).
    pub host_bins: Vec<PathBuf>,
    /// (host directory, guest path)
    pub extra_dirs: Vec<(PathBuf, String)>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            timeout_s: 300,
            net: false,
            mem_mb: 1024,
            extra_bins: Vec::new(),
            host_bins: Vec::new(),
            extra_dirs: Vec::new(),
        }
    }
}

/// Boots the lab and runs `/scenarios/<name>.sh` in it.
pub fn run_scenario(name: &str, extra_bins: &[PathBuf], timeout_s: u32) -> LabRun {
    run_scenario_with(
        name,
        &LabOptions {
            timeout_s,
            extra_bins: extra_bins.to_vec(),
            ..LabOptions::default()
        },
    )
}

/// Boots the lab with `opts` and runs `/scenarios/<name>.sh` in it.
pub fn run_scenario_with(name: &str, opts: &LabOptions) -> LabRun {
    let root = workspace_root();
    let image = agent_image();
    let agent = match &image {
        Some(dir) => {
            assert!(
                dir.join("rootfs").is_dir(),
                "TUNLB_AGENT_IMAGE={}: no rootfs/ there (tests/images/unpack.sh makes it)",
                dir.display()
            );
            root.join("tests/lab/image/tunlb-agent")
        }
        None => agent_binary(),
    };
    assert!(
        agent.is_file(),
        "{} not found: build it first (cargo build --release -p tunlb-agent) or set TUNLB_AGENT_BIN",
        agent.display()
    );
    let mut cmd = Command::new(root.join("tests/lab/run.sh"));
    cmd.arg("--timeout").arg(opts.timeout_s.to_string());
    cmd.arg("--mem").arg(opts.mem_mb.to_string());
    if opts.net {
        cmd.arg("--net");
    }
    for b in &opts.host_bins {
        cmd.arg("--host-bin").arg(b);
    }
    cmd.arg("--bin").arg(&agent);
    for b in &opts.extra_bins {
        cmd.arg("--bin").arg(b);
    }
    let mut dirs: Vec<(PathBuf, String)> = [
        ("examples", "/examples"),
        ("tests/lab/guest", "/lab"),
        ("tests/lab/scenarios", "/scenarios"),
    ]
    .iter()
    .map(|(s, d)| (root.join(s), d.to_string()))
    .collect();
    if let Some(dir) = image {
        dirs.push((dir, "/image/agent".to_string()));
    }
    dirs.extend(opts.extra_dirs.iter().cloned());
    for (src, dest) in dirs {
        cmd.arg("--dir").arg(format!("{}:{dest}", src.display()));
    }
    cmd.args(["--", "sh", &format!("/scenarios/{name}.sh")]);
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run tests/lab/run.sh: {e}"),
    };
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (passed, failed) = parse_summary(&output).unwrap_or((0, 0));
    LabRun {
        exit_code: out.status.code(),
        output,
        passed,
        failed,
    }
}

/// Runs a scenario and fails the calling test unless every guest assertion passed.
pub fn assert_scenario(name: &str) {
    let run = run_scenario(name, &[], 300);
    println!("{}", run.output);
    run.assert_passed(name, 1);
}

#[cfg(test)]
mod tests {
    use super::{LabRun, parse_summary};

    #[test]
    fn summary_line() {
        assert_eq!(
            parse_summary("ok - a\n3 passed, 1 failed\nLAB-EXIT 1"),
            Some((3, 1))
        );
        assert_eq!(parse_summary("nothing"), None);
    }

    #[test]
    fn failures_are_named() {
        let run = LabRun {
            exit_code: Some(1),
            output: "ok - a\ntimed out after 30s: weight 3\nnot ok - b (expected '0', got '1')\n"
                .into(),
            passed: 1,
            failed: 1,
        };
        assert_eq!(
            run.failures(),
            "timed out after 30s: weight 3\nnot ok - b (expected '0', got '1')"
        );
        let panic = std::panic::catch_unwind(|| run.assert_passed("x", 1)).unwrap_err();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("not ok - b"), "{message}");
    }
}
