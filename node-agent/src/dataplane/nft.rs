//! Port-mapping DNAT and the optional MSS clamp, in nftables tables that only
//! tunlb uses (`ip tunlb`, `ip6 tunlb`). Each change replaces our table in one
//! atomic `nft -f` transaction; rules in any other table are never touched.
//! The table comment carries a hash of its content so an unchanged plan costs
//! one read and no write. When nft fails and a kernel module the table needs
//! is not there (and the kernel could not load it on demand), the error names
//! that module rather than nft's bare errno.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tunlb_api::Protocol;
use tunlb_api::plan::{DnatRule, MssRule};

use crate::modules::{Presence, Roots};

pub const TABLE: &str = "tunlb";

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("cannot run nft ({0}): install nftables")]
    Spawn(#[source] std::io::Error),
    #[error("nft -f failed: {0}")]
    Apply(String),
    /// nft failed and modules the table needs are not there; `nft` holds
    /// what nft said (logged, not shown: the module is the useful part).
    #[error("{}", missing.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    MissingModules {
        missing: Vec<NeededModule>,
        nft: String,
    },
    /// The program neither finished nor failed in time; it was killed.
    #[error("`{command}` did not finish within {after:?}; killed it")]
    Timeout { command: String, after: Duration },
    #[error("`{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
    fn of(addr: &IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::Ip
        } else {
            Family::Ip6
        }
    }
}

fn proto_kw(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn fmt_target(addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The rules of `family`.
fn of_family<T>(rules: &[T], family: Family, vip: impl Fn(&T) -> &IpAddr) -> Vec<&T> {
    rules
        .iter()
        .filter(|r| Family::of(vip(r)) == family)
        .collect()
}

/// Whether a rule spreads its connections over several targets (a numgen
/// map) rather than DNATing them all to one.
fn spreads(rule: &DnatRule) -> bool {
    rule.targets.len() != 1
}

/// A kernel module a table needs, and what for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeededModule {
    pub module: &'static str,
    pub purpose: String,
}

impl std::fmt::Display for NeededModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kernel module {} is not available (needed {})",
            self.module, self.purpose
        )
    }
}

/// "a, b and c", or the first three "and N more".
fn listing(items: &[String]) -> String {
    const SHOWN: usize = 3;
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [first @ .., last] if items.len() <= SHOWN => format!("{} and {last}", first.join(", ")),
        _ => format!(
            "{} and {} more",
            items[..SHOWN].join(", "),
            items.len() - SHOWN
        ),
    }
}

/// The kernel modules the table of `family` uses (kernel 5.1 and later,
/// where one `nft_chain_nat` serves both families), in the order nft meets
/// them; empty when the table is. Matches, payloads, sets and maps, the
/// TCP option extension header and filter chains are in `nf_tables` itself.
pub fn needed_modules(family: Family, dnat: &[DnatRule], mss: &[MssRule]) -> Vec<NeededModule> {
    let dnat = of_family(dnat, family, |r| &r.vip);
    let mss = of_family(mss, family, |r| &r.vip);
    let mut out = Vec::new();
    if dnat.is_empty() && mss.is_empty() {
        return out;
    }
    out.push(NeededModule {
        module: "nf_tables",
        purpose: format!("for tunlb's nftables table {} {TABLE}", family.name()),
    });
    if !dnat.is_empty() {
        let ports: Vec<String> = dnat.iter().map(|r| fmt_target(&r.vip, r.port)).collect();
        out.push(NeededModule {
            module: "nft_chain_nat",
            purpose: format!("for the NAT chain that maps {}", listing(&ports)),
        });
        out.push(NeededModule {
            module: "nft_nat",
            purpose: format!("to DNAT {}", listing(&ports)),
        });
        let spread: Vec<String> = dnat
            .iter()
            .filter(|r| spreads(r))
            .map(|r| fmt_target(&r.vip, r.port))
            .collect();
        if !spread.is_empty() {
            out.push(NeededModule {
                module: "nft_numgen",
                purpose: format!(
                    "to spread {} over several local endpoints",
                    listing(&spread)
                ),
            });
        }
    }
    if !mss.is_empty() {
        let mut vips: Vec<String> = mss.iter().map(|r| r.vip.to_string()).collect();
        vips.dedup();
        out.push(NeededModule {
            module: "nft_ct",
            purpose: format!("to clamp the TCP MSS of {}", listing(&vips)),
        });
    }
    out
}

/// The error for an nft run that failed with `stderr`: the modules of
/// `needed` that are not there, judged by `presence` after the run (the
/// kernel loads what it can on demand, so only what is still absent can
/// be the cause), or nft's own words when every module is there. Without
/// `nf_tables` none of its extensions can load: only it is named then.
fn failure(
    stderr: String,
    needed: &[NeededModule],
    presence: impl Fn(&str) -> Presence,
) -> NatError {
    let mut missing: Vec<NeededModule> = needed
        .iter()
        .filter(|n| !presence(n.module).is_available())
        .cloned()
        .collect();
    if missing.is_empty() {
        return NatError::Apply(stderr);
    }
    if let Some(core) = missing.iter().position(|n| n.module == "nf_tables") {
        missing = vec![missing.swap_remove(core)];
    }
    NatError::MissingModules {
        missing,
        nft: stderr,
    }
}

/// Renders the body of one family's table; `None` when it would be empty.
pub fn render_table(family: Family, dnat: &[DnatRule], mss: &[MssRule]) -> Option<String> {
    let dnat = of_family(dnat, family, |r| &r.vip);
    let mss = of_family(mss, family, |r| &r.vip);
    if dnat.is_empty() && mss.is_empty() {
        return None;
    }
    let fam = family.name();
    let mut body = String::new();
    if !dnat.is_empty() {
        body.push_str(
            "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n",
        );
        for r in &dnat {
            let m = format!(
                "{fam} daddr {} {} dport {}",
                r.vip,
                proto_kw(r.protocol),
                r.port
            );
            let action = match r.targets.as_slice() {
                [(None, port)] => format!("dnat to :{port}"),
                [(Some(a), port)] => format!("dnat to {}", fmt_target(a, *port)),
                many => {
                    // Spread new connections evenly over the node-local endpoints.
                    let mut map = String::new();
                    for (i, (a, port)) in many.iter().enumerate() {
                        let a = a.unwrap_or(r.vip);
                        let _ = write!(map, "{}{i} : {a} . {port}", if i == 0 { "" } else { ", " });
                    }
                    format!(
                        "dnat {fam} addr . port to numgen inc mod {} map {{ {map} }}",
                        many.len()
                    )
                }
            };
            let _ = writeln!(body, "    {m} {action}");
        }
        body.push_str("  }\n");
    }
    if !mss.is_empty() {
        body.push_str(
            "  chain mss {\n    type filter hook postrouting priority mangle; policy accept;\n",
        );
        for r in &mss {
            let _ = writeln!(
                body,
                "    ct original {fam} daddr {} tcp flags & (syn | ack) == syn | ack tcp option maxseg size > {} tcp option maxseg size set {}",
                r.vip, r.mss, r.mss
            );
        }
        body.push_str("  }\n");
    }
    Some(body)
}

/// FNV-1a: stable across builds, unlike std's hasher.
fn content_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn comment_for(body: &str) -> String {
    format!("tunlb {}", content_hash(body))
}

/// What a finished program left behind.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `program args` with `input` on its stdin, within `timeout`. On
/// timeout the program is killed (and reaped), so a hung `nft` costs one
/// pass its port mappings, not every later pass.
async fn run(
    program: &str,
    args: &[&str],
    input: &[u8],
    timeout: Duration,
) -> Result<Finished, NatError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Also when this future is dropped mid-way (the agent shutting down).
        .kill_on_drop(true)
        .spawn()
        .map_err(NatError::Spawn)?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let io = |source| NatError::Io {
        command: command.clone(),
        source,
    };
    let finished = tokio::time::timeout(timeout, async {
        // Writing, reading and waiting together: a program that does not
        // read its input, or fills a pipe, cannot block the others.
        let feed = async {
            if let Some(mut stdin) = stdin {
                stdin.write_all(input).await?;
            }
            // Closing stdin (the drop) ends `nft -f -`'s input.
            Ok::<(), std::io::Error>(())
        };
        let (fed, stdout, stderr, status) =
            tokio::join!(feed, read_all(stdout), read_all(stderr), child.wait());
        let status = status.map_err(io)?;
        // A program that exits without reading all of its input breaks
        // the pipe; its status and stderr say more than EPIPE.
        if status.success() {
            fed.map_err(io)?;
        }
        Ok(Finished {
            status,
            stdout: stdout.map_err(io)?,
            stderr: stderr.map_err(io)?,
        })
    })
    .await;
    match finished {
        Ok(result) => result,
        Err(_) => {
            if let Err(e) = child.kill().await {
                tracing::warn!(%command, error = %e, "cannot kill a timed-out program");
            }
            Err(NatError::Timeout {
                command,
                after: timeout,
            })
        }
    }
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut out).await?;
    }
    Ok(out)
}

/// Our table of `family` as `nft list` prints it; `None` when it does not exist.
async fn list_table(family: Family) -> Result<Option<String>, NatError> {
    let out = run(
        "nft",
        &["list", "table", family.name(), TABLE],
        &[],
        crate::timeouts::kernel(),
    )
    .await?;
    // A failure here means no such table (or nothing to read): treat as absent.
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

async fn current_comment(family: Family) -> Result<Option<(String, usize)>, NatError> {
    let Some(text) = list_table(family).await? else {
        return Ok(None);
    };
    let comment = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("comment \""))
        .map(|c| c.trim_end_matches(['"', ';']).to_string())
        .unwrap_or_default();
    Ok(Some((comment, rule_count(&text))))
}

/// The rules of a table's text, ours or as nft lists it: the comment
/// says which rules were written, the count shows one deleted by hand.
fn rule_count(text: &str) -> usize {
    text.lines()
        .filter(|l| l.contains(" dnat ") || l.contains("maxseg size set"))
        .count()
}

/// Runs `script`; when it fails, names the modules of `needed` that are
/// missing. `needed` is worked out only then: it formats every rule's VIP:port.
async fn run_script(
    script: &str,
    needed: impl FnOnce() -> Vec<NeededModule>,
) -> Result<(), NatError> {
    let out = run(
        "nft",
        &["-f", "-"],
        script.as_bytes(),
        crate::timeouts::kernel(),
    )
    .await?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let roots = Roots::from_env();
    let err = failure(stderr, &needed(), |m| roots.presence(m));
    if let NatError::MissingModules { missing, nft } = &err {
        let modules: Vec<&str> = missing.iter().map(|n| n.module).collect();
        tracing::warn!(?modules, %nft, "nft failed and kernel modules the table needs are not there");
    }
    Err(err)
}

/// The `nft -f` script that turns our table of `family`, whose comment is
/// `current` (`None` when absent), into `desired`; `None` when it already is.
pub fn diff(family: Family, desired: Option<&str>, current: Option<&str>) -> Option<String> {
    let fam = family.name();
    match (desired, current) {
        (None, None) => None,
        (Some(body), Some(c)) if c == comment_for(body) => None,
        (None, Some(_)) => Some(format!("delete table {fam} {TABLE}\n")),
        // Declaring the table first makes the delete valid whether or not it
        // exists; the whole script is one transaction.
        (Some(body), _) => Some(format!(
            "table {fam} {TABLE}\ndelete table {fam} {TABLE}\ntable {fam} {TABLE} {{\n  comment \"{}\"\n{body}}}\n",
            comment_for(body)
        )),
    }
}

/// Modules only some rules use: without one, the rules that need it are
/// left out and the rest of the table is written.
const OPTIONAL_MODULES: [&str; 2] = ["nft_numgen", "nft_ct"];

/// The rules in our tables, as this process last wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub dnat: Vec<DnatRule>,
    pub mss: Vec<MssRule>,
}

/// What [`apply`] wrote.
#[derive(Debug, Default)]
pub struct Applied {
    /// nft transactions run.
    pub writes: usize,
    /// VIPs with rules refused because the node lacks a module only those
    /// rules need, and why: one VirtualService that spreads over several
    /// endpoints, or clamps the MSS, does not hold up every other mapping.
    pub refused: BTreeMap<IpAddr, String>,
    pub written: Written,
}

/// Makes our tables match `dnat`/`mss`. A rule that needs a missing
/// optional module is replaced by the rule `previous` had for the same
/// port when that one can still be written (the mapping stays as it was),
/// and left out otherwise.
pub async fn apply(
    dnat: &[DnatRule],
    mss: &[MssRule],
    previous: Option<&Written>,
) -> Result<Applied, NatError> {
    match write_tables(dnat, mss).await {
        Ok(writes) => Ok(Applied {
            writes,
            refused: BTreeMap::new(),
            written: Written {
                dnat: dnat.to_vec(),
                mss: mss.to_vec(),
            },
        }),
        Err(NatError::MissingModules { missing, nft })
            if missing.iter().all(|m| OPTIONAL_MODULES.contains(&m.module)) =>
        {
            let (written, refused) = without_modules(dnat, mss, &missing, previous);
            tracing::warn!(
                %nft,
                vips = refused.len(),
                "port mappings that need missing kernel modules keep their previous rules or are left out; writing the rest"
            );
            let writes = write_tables(&written.dnat, &written.mss).await?;
            Ok(Applied {
                writes,
                refused,
                written,
            })
        }
        Err(e) => Err(e),
    }
}

/// The rules that need none of `missing` (a refused rule replaced by its
/// counterpart in `previous` where that needs none either), and for each
/// VIP with refused rules, which modules those rules lack.
fn without_modules(
    dnat: &[DnatRule],
    mss: &[MssRule],
    missing: &[NeededModule],
    previous: Option<&Written>,
) -> (Written, BTreeMap<IpAddr, String>) {
    let lacks = |module: &str| missing.iter().any(|m| m.module == module);
    let dnat_ok = |r: &DnatRule| !(lacks("nft_numgen") && spreads(r));
    let mss_ok = !lacks("nft_ct");
    let (keep_dnat, cut_dnat): (Vec<DnatRule>, Vec<DnatRule>) =
        dnat.iter().cloned().partition(|r| dnat_ok(r));
    let (keep_mss, cut_mss): (Vec<MssRule>, Vec<MssRule>) =
        mss.iter().copied().partition(|_| mss_ok);
    let mut written = Written {
        dnat: keep_dnat,
        mss: keep_mss,
    };
    if let Some(prev) = previous {
        let refused_port = |r: &DnatRule| {
            cut_dnat
                .iter()
                .any(|c| (c.vip, c.protocol, c.port) == (r.vip, r.protocol, r.port))
        };
        written.dnat.extend(
            prev.dnat
                .iter()
                .filter(|p| refused_port(p) && dnat_ok(p))
                .cloned(),
        );
        written.dnat.sort();
        if mss_ok {
            written.mss.extend(
                prev.mss
                    .iter()
                    .filter(|p| cut_mss.iter().any(|c| (c.vip, c.port) == (p.vip, p.port))),
            );
            written.mss.sort();
        }
    }
    let vips: BTreeSet<IpAddr> = cut_dnat
        .iter()
        .map(|r| r.vip)
        .chain(cut_mss.iter().map(|r| r.vip))
        .collect();
    let refused = vips
        .into_iter()
        .map(|vip| {
            let dnat: Vec<DnatRule> = cut_dnat.iter().filter(|r| r.vip == vip).cloned().collect();
            let mss: Vec<MssRule> = cut_mss.iter().filter(|r| r.vip == vip).copied().collect();
            let why: Vec<String> = needed_modules(Family::of(&vip), &dnat, &mss)
                .into_iter()
                .filter(|n| lacks(n.module))
                .map(|n| n.to_string())
                .collect();
            (vip, why.join("; "))
        })
        .collect();
    (written, refused)
}

/// Writes both families' tables; returns the number of nft transactions run.
async fn write_tables(dnat: &[DnatRule], mss: &[MssRule]) -> Result<usize, NatError> {
    let mut writes = 0;
    for family in [Family::Ip, Family::Ip6] {
        let desired = render_table(family, dnat, mss);
        let current = current_comment(family).await?.map(|(comment, rules)| {
            if desired.as_deref().is_some_and(|b| rule_count(b) != rules) {
                // Rules removed or added by hand: rewrite the table.
                String::new()
            } else {
                comment
            }
        });
        if let Some(script) = diff(family, desired.as_deref(), current.as_deref()) {
            run_script(&script, || needed_modules(family, dnat, mss)).await?;
            writes += 1;
        }
    }
    Ok(writes)
}

/// The text of our tables, for `show`.
pub async fn list() -> Result<String, NatError> {
    let mut text = String::new();
    for family in [Family::Ip, Family::Ip6] {
        if let Some(t) = list_table(family).await? {
            text.push_str(&t);
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn renders_port_only_dnat_endpoints_and_mss() {
        let dnat = vec![
            DnatRule {
                vip: ip("192.168.56.186"),
                protocol: Protocol::Tcp,
                port: 8099,
                targets: vec![(None, 80)],
            },
            DnatRule {
                vip: ip("192.168.56.190"),
                protocol: Protocol::Udp,
                port: 53,
                targets: vec![
                    (Some(ip("10.244.1.5")), 5353),
                    (Some(ip("10.244.1.6")), 5353),
                ],
            },
        ];
        let mss = vec![MssRule {
            vip: ip("192.168.56.186"),
            port: 80,
            mss: 1440,
        }];
        let body = render_table(Family::Ip, &dnat, &mss).unwrap_or_default();
        assert!(
            body.contains("ip daddr 192.168.56.186 tcp dport 8099 dnat to :80\n"),
            "{body}"
        );
        assert!(body.contains("ip daddr 192.168.56.190 udp dport 53 dnat ip addr . port to numgen inc mod 2 map { 0 : 10.244.1.5 . 5353, 1 : 10.244.1.6 . 5353 }"), "{body}");
        assert!(body.contains("ct original ip daddr 192.168.56.186 tcp flags & (syn | ack) == syn | ack tcp option maxseg size > 1440 tcp option maxseg size set 1440"), "{body}");
        assert_eq!(render_table(Family::Ip6, &dnat, &mss), None);
    }

    fn rule(vip: &str, port: u16, targets: &[(&str, u16)]) -> DnatRule {
        DnatRule {
            vip: ip(vip),
            protocol: Protocol::Tcp,
            port,
            targets: targets
                .iter()
                .map(|(a, p)| ((!a.is_empty()).then(|| ip(a)), *p))
                .collect(),
        }
    }

    fn names(needed: &[NeededModule]) -> Vec<&str> {
        needed.iter().map(|n| n.module).collect()
    }

    #[test]
    fn modules_follow_the_rules_that_use_them() {
        let mapped = rule("192.168.56.186", 8099, &[("", 80)]);
        let one = rule("192.168.56.190", 80, &[("10.244.1.5", 8080)]);
        let two = rule(
            "192.168.56.191",
            80,
            &[("10.244.1.5", 8080), ("10.244.1.6", 8080)],
        );
        let mss = MssRule {
            vip: ip("192.168.56.186"),
            port: 80,
            mss: 1440,
        };
        assert_eq!(needed_modules(Family::Ip, &[], &[]), vec![]);
        let single = needed_modules(Family::Ip, &[mapped.clone(), one.clone()], &[]);
        assert_eq!(names(&single), ["nf_tables", "nft_chain_nat", "nft_nat"]);
        assert_eq!(
            single[2].purpose,
            "to DNAT 192.168.56.186:8099 and 192.168.56.190:80"
        );
        let spread = needed_modules(Family::Ip, &[one, two.clone()], &[]);
        assert_eq!(
            names(&spread),
            ["nf_tables", "nft_chain_nat", "nft_nat", "nft_numgen"]
        );
        assert_eq!(
            spread[3].to_string(),
            "kernel module nft_numgen is not available (needed to spread 192.168.56.191:80 over several local endpoints)"
        );
        let clamp_only = needed_modules(Family::Ip, &[], &[mss]);
        assert_eq!(names(&clamp_only), ["nf_tables", "nft_ct"]);
        assert_eq!(
            clamp_only[1].purpose,
            "to clamp the TCP MSS of 192.168.56.186"
        );
        assert_eq!(clamp_only[0].purpose, "for tunlb's nftables table ip tunlb");
        assert_eq!(
            needed_modules(Family::Ip6, &[two], &[mss]),
            vec![],
            "IPv4 rules need nothing of the ip6 table"
        );
        let v6 = rule(
            "2001:db8::5",
            443,
            &[("2001:db8:1::5", 8443), ("2001:db8:1::6", 8443)],
        );
        let needed = needed_modules(Family::Ip6, &[v6], &[]);
        assert_eq!(
            needed[3].purpose,
            "to spread [2001:db8::5]:443 over several local endpoints"
        );
    }

    #[test]
    fn long_listings_are_cut() {
        let items: Vec<String> = (1..=5).map(|i| format!("10.0.0.{i}:80")).collect();
        assert_eq!(listing(&items[..1]), "10.0.0.1:80");
        assert_eq!(
            listing(&items[..3]),
            "10.0.0.1:80, 10.0.0.2:80 and 10.0.0.3:80"
        );
        assert_eq!(
            listing(&items),
            "10.0.0.1:80, 10.0.0.2:80, 10.0.0.3:80 and 2 more"
        );
    }

    #[test]
    fn rules_needing_a_missing_optional_module_are_left_out_alone() {
        let single = rule("192.168.56.185", 8099, &[("", 80)]);
        let spread = rule(
            "192.168.56.190",
            80,
            &[("10.244.1.5", 8080), ("10.244.1.6", 8080)],
        );
        let clamp = MssRule {
            vip: ip("192.168.56.191"),
            port: 80,
            mss: 1400,
        };
        let dnat = [single.clone(), spread];
        let missing = |m: &[&'static str]| -> Vec<NeededModule> {
            m.iter()
                .map(|module| NeededModule {
                    module,
                    purpose: String::new(),
                })
                .collect()
        };

        let (w, refused) = without_modules(&dnat, &[clamp], &missing(&["nft_numgen"]), None);
        assert_eq!(w.dnat, vec![single.clone()]);
        assert_eq!(w.mss, vec![clamp]);
        assert_eq!(
            refused.into_iter().collect::<Vec<_>>(),
            vec![(
                ip("192.168.56.190"),
                "kernel module nft_numgen is not available (needed to spread 192.168.56.190:80 over several local endpoints)".to_string()
            )]
        );

        let (w, refused) = without_modules(&dnat, &[clamp], &missing(&["nft_ct"]), None);
        assert_eq!(w.dnat, dnat.to_vec());
        assert!(w.mss.is_empty());
        assert_eq!(
            refused.keys().copied().collect::<Vec<_>>(),
            vec![ip("192.168.56.191")]
        );
        assert!(refused[&ip("192.168.56.191")].contains("nft_ct"));

        // A refused port keeps its previous rule when that can be written;
        // a previous rule that needs the missing module cannot.
        let before = rule("192.168.56.190", 80, &[("10.244.1.5", 8080)]);
        let previous = Written {
            dnat: vec![single.clone(), before.clone()],
            mss: vec![],
        };
        let (w, refused) = without_modules(&dnat, &[], &missing(&["nft_numgen"]), Some(&previous));
        let mut want = vec![single.clone(), before];
        want.sort();
        assert_eq!(w.dnat, want);
        assert_eq!(refused.len(), 1, "still reported: {refused:?}");
        let spread_before = Written {
            dnat: vec![dnat[1].clone()],
            mss: vec![],
        };
        let (w, _) = without_modules(&dnat, &[], &missing(&["nft_numgen"]), Some(&spread_before));
        assert_eq!(w.dnat, vec![single]);
    }

    #[test]
    fn a_failure_names_what_is_still_missing() {
        let two = rule(
            "192.168.56.190",
            80,
            &[("10.244.1.5", 8080), ("10.244.1.6", 8080)],
        );
        let needed = needed_modules(Family::Ip, &[two], &[]);
        let enoent = "Error: Could not process rule: No such file or directory".to_string();
        let without = |gone: &'static [&'static str]| {
            move |m: &str| {
                if gone.contains(&m) {
                    Presence::Absent
                } else {
                    Presence::Loaded
                }
            }
        };

        let err = failure(enoent.clone(), &needed, without(&["nft_numgen"]));
        assert_eq!(
            err.to_string(),
            "kernel module nft_numgen is not available (needed to spread 192.168.56.190:80 over several local endpoints)"
        );
        match &err {
            NatError::MissingModules { nft, .. } => assert_eq!(nft, &enoent),
            other => panic!("expected MissingModules, got {other:?}"),
        }

        let err = failure(enoent.clone(), &needed, without(&["nft_nat", "nft_numgen"]));
        assert_eq!(
            err.to_string(),
            "kernel module nft_nat is not available (needed to DNAT 192.168.56.190:80); \
             kernel module nft_numgen is not available (needed to spread 192.168.56.190:80 over several local endpoints)"
        );

        let err = failure(
            enoent.clone(),
            &needed,
            without(&["nf_tables", "nft_chain_nat", "nft_nat", "nft_numgen"]),
        );
        assert_eq!(
            err.to_string(),
            "kernel module nf_tables is not available (needed for tunlb's nftables table ip tunlb)",
            "its extensions cannot load without it: only it is named"
        );

        let err = failure(enoent.clone(), &needed, |_| Presence::NotLoaded);
        assert!(
            err.to_string()
                .starts_with("kernel module nf_tables is not available"),
            "not loaded and not known to be built in counts as missing: {err}"
        );

        let err = failure(enoent.clone(), &needed, |_| Presence::BuiltIn);
        assert_eq!(
            err.to_string(),
            format!("nft -f failed: {enoent}"),
            "with every module there, nft's own words"
        );
        let err = failure(enoent.clone(), &[], |_| Presence::Absent);
        assert_eq!(err.to_string(), format!("nft -f failed: {enoent}"));
    }

    #[tokio::test]
    async fn a_program_gets_its_input_and_reports_its_output() {
        let out = run(
            "sh",
            &["-c", "cat; echo oops >&2; exit 3"],
            b"table ip tunlb {}\n",
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"table ip tunlb {}\n");
        assert_eq!(out.stderr, b"oops\n");
    }

    /// A program that hangs is killed and reaped at the timeout, and the
    /// error names it and the time waited.
    #[tokio::test]
    async fn a_hung_program_is_killed_at_the_timeout() {
        let dir = std::env::temp_dir().join(format!("tunlb-nat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let pidfile = dir.join("pid");
        let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
        let started = std::time::Instant::now();
        let result = run("sh", &["-c", &script], b"", Duration::from_millis(500)).await;
        let waited = started.elapsed();
        match result {
            Err(e @ NatError::Timeout { .. }) => assert_eq!(
                e.to_string(),
                format!("`sh -c {script}` did not finish within 500ms; killed it")
            ),
            Err(e) => panic!("expected a timeout, got {e}"),
            Ok(_) => panic!("expected a timeout, the program finished"),
        }
        assert!(waited < Duration::from_secs(5), "took {waited:?}");
        let pid = std::fs::read_to_string(&pidfile).unwrap_or_else(|e| panic!("{e}"));
        let proc = std::path::Path::new("/proc").join(pid.trim());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            !proc.exists(),
            "{} still exists: not killed and reaped",
            proc.display()
        );
    }

    #[test]
    fn hash_is_stable_and_content_sensitive() {
        assert_eq!(content_hash("a"), content_hash("a"));
        assert_ne!(content_hash("a"), content_hash("b"));
        assert_eq!(content_hash(""), "cbf29ce484222325");
    }

    #[test]
    fn diff_replaces_deletes_or_leaves_the_table() {
        let body = "  chain c {\n  }\n";
        let comment = comment_for(body);
        assert_eq!(diff(Family::Ip, Some(body), Some(&comment)), None);
        assert_eq!(diff(Family::Ip, None, None), None);
        assert_eq!(
            diff(Family::Ip6, None, Some("tunlb 0")).as_deref(),
            Some("delete table ip6 tunlb\n")
        );
        let script = diff(Family::Ip, Some(body), Some("tunlb 0")).unwrap_or_default();
        assert!(
            script.starts_with("table ip tunlb\ndelete table ip tunlb\n"),
            "{script}"
        );
        assert!(script.contains(&comment), "{script}");
        assert!(diff(Family::Ip, Some(body), None).is_some());
    }
}
