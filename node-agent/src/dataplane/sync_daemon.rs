//! The kernel's IPVS connection-sync daemons on directors.
//!
//! While this node directs (holds IPVS services) and sync is configured,
//! it runs a master daemon, which multicasts the connections its IPVS
//! schedules, and a backup daemon, which adds the other directors'
//! connections to its own table. Whichever director takes a VIP over then
//! already knows which real server each established connection goes to.
//!
//! A daemon is tunlb's only if tunlb started it (recorded before the start)
//! and the kernel still runs it as started. A daemon someone else started
//! (ipvsadm --start-daemon, keepalived's lvs_sync_daemon) is never stopped
//! or replaced; wanting one of the same state is then reported instead.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tunlb_ipvs::{SyncDaemon, SyncState};

use super::SyncReport;
use crate::state::{Journal, OwnedState};

/// What `--ipvs-sync-*` asks for; one master and one backup daemon share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub interface: String,
    pub sync_id: u8,
    pub max_len: Option<u16>,
    pub group: Option<IpAddr>,
    pub port: Option<u16>,
    pub ttl: Option<u8>,
}

impl Settings {
    pub fn daemons(&self) -> Vec<SyncDaemon> {
        [SyncState::Master, SyncState::Backup]
            .into_iter()
            .map(|state| SyncDaemon {
                max_len: self.max_len,
                group: self.group,
                port: self.port,
                ttl: self.ttl,
                ..SyncDaemon::new(state, self.interface.clone(), u32::from(self.sync_id))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnedSyncState {
    Master,
    Backup,
}

/// A sync daemon tunlb started, as it asked for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnedDaemon {
    pub state: OwnedSyncState,
    pub interface: String,
    pub sync_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
}

impl From<&SyncDaemon> for OwnedDaemon {
    fn from(d: &SyncDaemon) -> Self {
        OwnedDaemon {
            state: match d.state {
                SyncState::Master => OwnedSyncState::Master,
                SyncState::Backup => OwnedSyncState::Backup,
            },
            interface: d.interface.clone(),
            sync_id: d.sync_id,
            max_len: d.max_len,
            group: d.group,
            port: d.port,
            ttl: d.ttl,
        }
    }
}

impl From<&OwnedDaemon> for SyncDaemon {
    fn from(d: &OwnedDaemon) -> Self {
        SyncDaemon {
            state: match d.state {
                OwnedSyncState::Master => SyncState::Master,
                OwnedSyncState::Backup => SyncState::Backup,
            },
            interface: d.interface.clone(),
            sync_id: d.sync_id,
            max_len: d.max_len,
            group: d.group,
            port: d.port,
            ttl: d.ttl,
        }
    }
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Stop(SyncState),
    Start(SyncDaemon),
}

/// What to do about the sync daemons, from what is wanted, what runs and
/// what tunlb owns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// In order: a stop comes before the start that replaces it.
    pub changes: Vec<Change>,
    /// The owned records to keep: those the kernel still runs as started
    /// and that stay wanted. Every other record is dropped.
    pub keep: Vec<OwnedDaemon>,
    /// Wanted, but a daemon of that state that tunlb did not start runs.
    pub foreign: Vec<(SyncDaemon, SyncDaemon)>,
}

/// Pure: at most one daemon of each state runs in a network namespace.
pub fn diff(wanted: &[SyncDaemon], running: &[SyncDaemon], owned: &[OwnedDaemon]) -> Plan {
    let mut plan = Plan::default();
    for state in [SyncState::Master, SyncState::Backup] {
        let want = wanted.iter().find(|d| d.state == state);
        let run = running.iter().find(|d| d.state == state);
        let own = owned
            .iter()
            .map(SyncDaemon::from)
            .find(|d| d.state == state);
        match (run, own) {
            // Running as tunlb started it: tunlb's.
            (Some(run), Some(own)) if own.matches(run) => {
                if want == Some(&own) {
                    plan.keep.push(OwnedDaemon::from(&own));
                } else {
                    plan.changes.push(Change::Stop(state));
                    if let Some(w) = want {
                        plan.changes.push(Change::Start(w.clone()));
                    }
                }
            }
            // Someone else's (or replaced since): never touched.
            (Some(run), _) => {
                if let Some(w) = want {
                    plan.foreign.push((w.clone(), run.clone()));
                }
            }
            (None, _) => {
                if let Some(w) = want {
                    plan.changes.push(Change::Start(w.clone()));
                }
            }
        }
    }
    plan
}

/// Brings the daemons in line with `wanted` (empty: this node does not
/// direct, or sync is off). Returns the daemons tunlb runs afterwards.
pub async fn sync(
    client: impl std::future::Future<Output = Result<tunlb_ipvs::Client, tunlb_ipvs::Error>>,
    wanted: &[SyncDaemon],
    state: &mut OwnedState,
    journal: &Journal<'_>,
    report: &mut SyncReport,
) -> Vec<SyncDaemon> {
    if wanted.is_empty() && state.sync_daemons.is_empty() {
        return Vec::new();
    }
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            report.node_errors.push(format!("IPVS sync daemons: {e}"));
            return Vec::new();
        }
    };
    let running = match client.daemons().await {
        Ok(r) => r,
        Err(e) => {
            report.fault = true;
            report.node_errors.push(format!("IPVS sync daemons: {e}"));
            return Vec::new();
        }
    };
    let plan = diff(wanted, &running, &state.sync_daemons);
    for (want, run) in &plan.foreign {
        report.node_errors.push(format!(
            "IPVS connection sync: cannot start the {want}: a {run} that tunlb did not start runs; \
             tunlb leaves it alone (stop it, or configure tunlb's sync to match and restart it)"
        ));
    }
    let mut owned = plan.keep;
    for change in plan.changes {
        match change {
            Change::Stop(s) => match client.del_daemon(s).await {
                Ok(()) => {}
                // Already gone: nothing to stop.
                Err(e) if e.errno() == Some(nix::errno::Errno::ESRCH as i32) => {}
                Err(e) => {
                    report.node_errors.push(e.to_string());
                    if let Some(o) = state
                        .sync_daemons
                        .iter()
                        .find(|o| SyncDaemon::from(*o).state == s)
                    {
                        owned.push(o.clone());
                    }
                }
            },
            Change::Start(d) => {
                // Recorded first: a kill right after the start still knows
                // the daemon is tunlb's.
                let record = OwnedDaemon::from(&d);
                let mut with = owned.clone();
                with.push(record.clone());
                with.sort();
                state.sync_daemons = with;
                if let Err(e) = journal.record(state) {
                    report.node_errors.push(format!("IPVS sync daemons: {e}"));
                    continue;
                }
                match client.new_daemon(&d).await {
                    Ok(()) => owned.push(record),
                    // Outcome unknown: keep the record; the next pass reads
                    // the kernel and drops it if the daemon is not running.
                    Err(e) if e.is_transport() => {
                        report.node_errors.push(e.to_string());
                        owned.push(record);
                    }
                    Err(e) => report.node_errors.push(e.to_string()),
                }
            }
        }
    }
    owned.sort();
    state.sync_daemons = owned;
    state.sync_daemons.iter().map(SyncDaemon::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            interface: "eth0".into(),
            sync_id: 7,
            max_len: None,
            group: None,
            port: None,
            ttl: None,
        }
    }

    /// As the kernel reports `d` once started: defaults filled in.
    fn running(d: &SyncDaemon) -> SyncDaemon {
        SyncDaemon {
            max_len: Some(1472),
            group: Some("224.0.0.81".parse().unwrap()),
            port: Some(8848),
            ttl: Some(1),
            ..d.clone()
        }
    }

    #[test]
    fn a_director_starts_both_daemons_then_leaves_them_alone() {
        let want = settings().daemons();
        let plan = diff(&want, &[], &[]);
        assert_eq!(
            plan.changes,
            vec![
                Change::Start(want[0].clone()),
                Change::Start(want[1].clone())
            ]
        );
        let owned: Vec<OwnedDaemon> = want.iter().map(OwnedDaemon::from).collect();
        let run: Vec<SyncDaemon> = want.iter().map(running).collect();
        let plan = diff(&want, &run, &owned);
        assert!(plan.changes.is_empty());
        assert_eq!(plan.keep, owned);
    }

    #[test]
    fn no_longer_directing_stops_only_tunlbs_daemons() {
        let want = settings().daemons();
        let owned = vec![OwnedDaemon::from(&want[0])];
        let run: Vec<SyncDaemon> = want.iter().map(running).collect();
        let plan = diff(&[], &run, &owned);
        assert_eq!(plan.changes, vec![Change::Stop(SyncState::Master)]);
        assert!(plan.keep.is_empty() && plan.foreign.is_empty());
    }

    #[test]
    fn a_daemon_someone_else_started_is_reported_never_replaced() {
        let want = settings().daemons();
        let theirs = running(&SyncDaemon::new(SyncState::Backup, "eth1", 9));
        let plan = diff(&want, std::slice::from_ref(&theirs), &[]);
        assert_eq!(plan.changes, vec![Change::Start(want[0].clone())]);
        assert_eq!(plan.foreign, vec![(want[1].clone(), theirs.clone())]);
        // Not wanted: still left alone, and nothing to report.
        let plan = diff(&[], std::slice::from_ref(&theirs), &[]);
        assert_eq!(plan, Plan::default());
        // A record of tunlb's that the kernel's daemon no longer matches
        // (stopped and started again by someone else) is dropped, not obeyed.
        let stale = OwnedDaemon::from(&SyncDaemon::new(SyncState::Backup, "eth0", 7));
        let plan = diff(&[], &[theirs], &[stale]);
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn changed_settings_restart_tunlbs_daemons() {
        let old = settings().daemons();
        let new = Settings {
            sync_id: 8,
            ..settings()
        }
        .daemons();
        let owned: Vec<OwnedDaemon> = old.iter().map(OwnedDaemon::from).collect();
        let run: Vec<SyncDaemon> = old.iter().map(running).collect();
        let plan = diff(&new, &run, &owned);
        assert_eq!(
            plan.changes,
            vec![
                Change::Stop(SyncState::Master),
                Change::Start(new[0].clone()),
                Change::Stop(SyncState::Backup),
                Change::Start(new[1].clone()),
            ]
        );
    }

    #[test]
    fn a_record_without_a_running_daemon_is_started_again_or_forgotten() {
        let want = settings().daemons();
        let owned: Vec<OwnedDaemon> = want.iter().map(OwnedDaemon::from).collect();
        let plan = diff(&want, &[], &owned);
        assert_eq!(plan.changes.len(), 2);
        assert!(plan.keep.is_empty());
        assert_eq!(diff(&[], &[], &owned), Plan::default());
    }
}
