//! A real etcd + kube-apiserver for tests (tests/controlplane/README.md).
//!
//! [`ControlPlane::start`] runs `build.sh` (instant when the binaries are cached)
//! and `start.sh` in a fresh temporary directory; dropping the value runs
//! `stop.sh` and removes the directory. A small reaper process also runs
//! `stop.sh` when the test process exits, so the servers do not outlive a
//! test binary that aborts, is killed, or keeps its control plane in a
//! `static` (statics are never dropped): see [`ControlPlane::shared`].
//!
//! Set `TUNLB_KEEP_CONTROLPLANE=1` to keep the directory (logs, etcd data) after
//! teardown; it is also kept when the owning thread is panicking.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::workspace_root;

/// A running etcd + kube-apiserver pair, owned by this value.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    env: BTreeMap<String, String>,
    reaper: Option<Child>,
}

fn scripts_dir() -> PathBuf {
    workspace_root().join("tests/controlplane")
}

fn keep_dir() -> bool {
    std::env::var_os("TUNLB_KEEP_CONTROLPLANE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A new, empty directory under the system temp dir.
fn fresh_dir() -> anyhow::Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..100 {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tunlb-cp-{}-{nanos:08x}-{seq}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("could not create a fresh control-plane directory")
}

/// Parses the `export K=V` lines of DIR/env; `$PATH` in a value expands to ours.
fn parse_env(text: &str) -> BTreeMap<String, String> {
    let outer_path = std::env::var("PATH").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim().trim_matches('"');
            (k.trim().to_string(), v.replace("$PATH", &outer_path))
        })
        .collect()
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_script(name: &str, args: &[&OsStr]) -> anyhow::Result<Output> {
    let script = scripts_dir().join(name);
    let out = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            output_text(&out)
        );
    }
    Ok(out)
}

/// One process of the control plane, stopped and resumed on its own to test
/// what clients do while it is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    ApiServer,
    Etcd,
}

impl Process {
    /// The name start.sh gives its files (DIR/NAME.pid, .log, .cmdline).
    pub fn name(self) -> &'static str {
        match self {
            Process::ApiServer => "kube-apiserver",
            Process::Etcd => "etcd",
        }
    }

    pub fn from_name(name: &str) -> Option<Process> {
        [Process::ApiServer, Process::Etcd]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// Stops `process` of the control plane in `dir` (SIGTERM, as a node's
/// service manager does); its data and certificates stay.
pub fn stop_process(dir: &Path, process: Process) -> anyhow::Result<()> {
    run_script("stop.sh", &[dir.as_os_str(), OsStr::new(process.name())]).map(|_| ())
}

/// Starts `process` again as start.sh first ran it (same ports, data and
/// certificates); returns once it answers its health check.
pub fn resume_process(dir: &Path, process: Process) -> anyhow::Result<()> {
    run_script("resume.sh", &[dir.as_os_str(), OsStr::new(process.name())]).map(|_| ())
}

impl ControlPlane {
    /// Builds (when needed) and starts a control plane in a fresh temp directory.
    pub fn start() -> anyhow::Result<ControlPlane> {
        run_script("build.sh", &[])?;
        let dir = fresh_dir()?;
        if let Err(e) = run_script("start.sh", &[dir.as_os_str()]) {
            // start.sh kills what it started on failure; the directory holds the logs
            return Err(e.context(format!("control plane state in {}", dir.display())));
        }
        let mut cp = ControlPlane {
            env: BTreeMap::new(),
            reaper: None,
            dir,
        };
        // from here on, Drop runs stop.sh whatever happens
        let env_file = cp.dir.join("env");
        let text = std::fs::read_to_string(&env_file)
            .with_context(|| format!("reading {}", env_file.display()))?;
        cp.env = parse_env(&text);
        for key in ["KUBECONFIG", "TUNLB_APISERVER_URL", "PATH"] {
            if !cp.env.contains_key(key) {
                bail!("{} does not set {key}", env_file.display());
            }
        }
        cp.reaper = Some(cp.spawn_reaper()?);
        Ok(cp)
    }

    /// One control plane (with the CRDs installed) for the whole test binary.
    ///
    /// Never dropped: the reaper stops it when the process exits. Tests sharing
    /// it should each work in their own namespace.
    pub fn shared() -> anyhow::Result<&'static ControlPlane> {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        let cp = SHARED.get_or_init(|| {
            let start = || -> anyhow::Result<ControlPlane> {
                let cp = ControlPlane::start()?;
                cp.install_crds()?;
                Ok(cp)
            };
            start().map_err(|e| format!("{e:#}"))
        });
        match cp {
            Ok(cp) => Ok(cp),
            Err(e) => bail!("shared control plane failed to start: {e}"),
        }
    }

    /// Waits (in its own process group, so Ctrl-C does not reach it) for this
    /// process to exit, then stops the servers and removes the directory.
    fn spawn_reaper(&self) -> anyhow::Result<Child> {
        let script = r#"
            while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
            "$2" "$3" >/dev/null 2>&1
            [ -n "$4" ] || rm -rf -- "$3"
        "#;
        let keep = if keep_dir() { "keep" } else { "" };
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("tunlb-cp-reaper")
            .arg(std::process::id().to_string())
            .arg(scripts_dir().join("stop.sh"))
            .arg(&self.dir)
            .arg(keep)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("spawning the control-plane reaper")
    }

    /// The state directory (pki/, etcd/, logs, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What DIR/env exports (`PATH` already expanded).
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// DIR/admin.kubeconfig (system:masters).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.env
            .get("KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.join("admin.kubeconfig"))
    }

    /// `https://127.0.0.1:PORT`.
    pub fn apiserver_url(&self) -> &str {
        self.env
            .get("TUNLB_APISERVER_URL")
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// A kube client with the admin certificate.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig_path()).await
    }

    /// A kube client that authenticates as ServiceAccount NS/SA (created if
    /// missing) with a token only, so RBAC applies.
    pub async fn token_client(&self, ns: &str, sa: &str) -> anyhow::Result<kube::Client> {
        let out = run_script(
            "token.sh",
            &[self.dir.as_os_str(), OsStr::new(ns), OsStr::new(sa)],
        )?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        client_from_kubeconfig(Path::new(&path)).await
    }

    /// A `kubectl` command with this control plane's environment (KUBECONFIG, PATH...).
    pub fn kubectl_command(&self) -> Command {
        let bin = self
            .env
            .get("PATH")
            .and_then(|p| p.split(':').next())
            .map(|d| Path::new(d).join("kubectl"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("kubectl"));
        let mut cmd = Command::new(bin);
        cmd.envs(&self.env).stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl and returns its output, whatever the exit status.
    pub fn kubectl<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_command()
            .args(args)
            .output()
            .context("running kubectl")
    }

    /// Runs kubectl with `input` on stdin (e.g. `apply -f -`).
    pub fn kubectl_stdin<I, S>(&self, args: I, input: &str) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = self
            .kubectl_command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .context("writing kubectl's stdin")?;
        }
        child.wait_with_output().context("waiting for kubectl")
    }

    /// Runs kubectl, fails unless it exits 0, and returns its stdout.
    pub fn kubectl_ok<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.kubectl(&args)?;
        if !out.status.success() {
            let shown: Vec<_> = args
                .iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect();
            bail!(
                "kubectl {} failed ({}):\n{}",
                shown.join(" "),
                out.status,
                output_text(&out)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f crds/`, then waits for every CRD there to be Established.
    pub fn install_crds(&self) -> anyhow::Result<()> {
        let crds = workspace_root().join("crds");
        let crds = crds.as_os_str();
        self.kubectl_ok([OsStr::new("apply"), OsStr::new("-f"), crds])?;
        self.kubectl_ok([
            OsStr::new("wait"),
            OsStr::new("--for=condition=Established"),
            OsStr::new("--timeout=60s"),
            OsStr::new("-f"),
            crds,
        ])?;
        Ok(())
    }

    /// Creates namespace `name` (no error if it exists). Namespaces are never
    /// really deleted here (no kube-controller-manager), so use fresh names.
    pub fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        let out = self.kubectl(["create", "namespace", name])?;
        let text = output_text(&out);
        if !out.status.success() && !text.contains("AlreadyExists") {
            bail!("kubectl create namespace {name} failed:\n{text}");
        }
        Ok(())
    }

    /// Stops the servers now (Drop does this too). The directory stays.
    pub fn stop(&self) -> anyhow::Result<()> {
        run_script("stop.sh", &[self.dir.as_os_str()]).map(|_| ())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("controlplane: {e:#}");
        }
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
        if keep_dir() || std::thread::panicking() {
            eprintln!("controlplane: state kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A kube client from a kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("loading {}", path.display()))?;
    kube::Client::try_from(config).context("building the kube client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_parses_and_expands_path() {
        let env = parse_env(
            "# source this file: . /tmp/x/env\nexport KUBECONFIG=/tmp/x/admin.kubeconfig\nexport PATH=/bin/dir:$PATH\nexport TUNLB_APISERVER_URL=https://127.0.0.1:1234\n",
        );
        assert_eq!(env["KUBECONFIG"], "/tmp/x/admin.kubeconfig");
        assert_eq!(env["TUNLB_APISERVER_URL"], "https://127.0.0.1:1234");
        assert!(env["PATH"].starts_with("/bin/dir:"));
        assert!(!env["PATH"].contains("$PATH"));
    }
}
