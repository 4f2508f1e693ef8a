//! The directors' probe verdicts (`status.nodes[].health`) -> each real
//! server's health, the Healthy summary and the real-server health
//! transitions worth an Event. Pure.
//!
//! Directors probe on their own and weight unhealthy servers 0 in their own
//! kernels; the operator only reports what they found, all ports and
//! directors together.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use tunlb_api::{HealthState, NodeStatus, RealServer, RealServerHealth};

/// The health of every real server, and what the directors say of the whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// Per real server, in their order; `None` when none of the service's
    /// ports is checked.
    pub servers: Vec<Option<RealServerHealth>>,
    /// Real servers that are Healthy or not checked at all.
    pub healthy: usize,
    pub total: usize,
    /// Directors that keep sending to servers they all find unhealthy.
    pub fail_open: Vec<String>,
}

impl Aggregate {
    /// "healthy/total", the printer column.
    pub fn summary(&self) -> String {
        format!("{}/{}", self.healthy, self.total)
    }

    /// True when there are real servers and every one is Unhealthy.
    pub fn all_unhealthy(&self) -> bool {
        self.total > 0
            && self.servers.iter().all(|h| {
                h.as_ref()
                    .is_some_and(|h| h.state == HealthState::Unhealthy)
            })
    }
}

/// One director's view of one real server.
struct View<'a> {
    /// (VIP port, state, since, message) of each probe it reports.
    probes: Vec<(i32, HealthState, Option<&'a str>, &'a str)>,
}

impl View<'_> {
    fn state(&self, checked: &BTreeSet<i32>) -> HealthState {
        if self.probes.iter().any(|p| p.1 == HealthState::Unhealthy) {
            return HealthState::Unhealthy;
        }
        let healthy: BTreeSet<i32> = self
            .probes
            .iter()
            .filter(|p| p.1 == HealthState::Healthy)
            .map(|p| p.0)
            .collect();
        if checked.iter().all(|p| healthy.contains(p)) {
            HealthState::Healthy
        } else {
            HealthState::Unknown
        }
    }

    /// What this director says: its failing probes' messages (with their
    /// ports when several are checked), else its state.
    fn words(&self, checked: &BTreeSet<i32>) -> String {
        let failing: Vec<String> = self
            .probes
            .iter()
            .filter(|p| p.1 == HealthState::Unhealthy)
            .map(|(port, _, _, msg)| {
                let msg = if msg.is_empty() { "unhealthy" } else { msg };
                if checked.len() > 1 {
                    format!("port {port}: {msg}")
                } else {
                    msg.to_string()
                }
            })
            .collect();
        if failing.is_empty() {
            self.state(checked).as_str().to_string()
        } else {
            failing.join(", ")
        }
    }
}

/// An RFC 3339 time for ordering; unparsable ones order by their text after
/// every parsable one.
fn instant(since: &str) -> (Option<Timestamp>, &str) {
    match since.parse::<Timestamp>() {
        Ok(t) => (Some(t), since),
        Err(_) => (None, since),
    }
}

fn earliest<'a>(times: impl Iterator<Item = &'a str>) -> Option<String> {
    times
        .min_by(|a, b| match (instant(a), instant(b)) {
            ((Some(x), _), (Some(y), _)) => x.cmp(&y),
            ((Some(_), _), (None, _)) => std::cmp::Ordering::Less,
            ((None, _), (Some(_), _)) => std::cmp::Ordering::Greater,
            ((None, x), (None, y)) => x.cmp(y),
        })
        .map(str::to_string)
}

fn latest<'a>(times: impl Iterator<Item = &'a str>) -> Option<String> {
    times
        .max_by(|a, b| match (instant(a), instant(b)) {
            ((Some(x), _), (Some(y), _)) => x.cmp(&y),
            ((Some(_), _), (None, _)) => std::cmp::Ordering::Greater,
            ((None, _), (Some(_), _)) => std::cmp::Ordering::Less,
            ((None, x), (None, y)) => x.cmp(y),
        })
        .map(str::to_string)
}

/// One real server's health from every director's probes of its `checked`
/// VIP ports.
///
/// Unhealthy when any director finds any port unhealthy; Healthy when every
/// checked port has a Healthy verdict and none an Unhealthy one; Unknown
/// otherwise (a director's Unknown is no verdict: it is still counting
/// probes). `since` is when the failing director saw it fail (the earliest
/// such), or when the last port became healthy. The message is the failing
/// probe's; when directors disagree it names each director and its words.
fn server_health(
    address: &str,
    checked: &BTreeSet<i32>,
    reports: &[NodeStatus],
) -> RealServerHealth {
    let mut views: BTreeMap<&str, View<'_>> = BTreeMap::new();
    for r in reports {
        for p in &r.health {
            if p.address == address && checked.contains(&p.port) {
                views
                    .entry(r.node_name.as_str())
                    .or_insert_with(|| View { probes: Vec::new() })
                    .probes
                    .push((p.port, p.state, p.since.as_deref(), p.message.as_str()));
            }
        }
    }
    let probes = || views.values().flat_map(|v| v.probes.iter());
    let unhealthy = probes().any(|p| p.1 == HealthState::Unhealthy);
    if unhealthy {
        let words: Vec<(&str, String)> = views
            .iter()
            .map(|(director, v)| (*director, v.words(checked)))
            .collect();
        let agree = words.windows(2).all(|w| w[0].1 == w[1].1);
        let message = if agree {
            words.first().map(|w| w.1.clone()).unwrap_or_default()
        } else {
            words
                .iter()
                .map(|(d, w)| format!("{d}: {w}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        return RealServerHealth {
            state: HealthState::Unhealthy,
            since: earliest(
                probes()
                    .filter(|p| p.1 == HealthState::Unhealthy)
                    .filter_map(|p| p.2),
            ),
            message,
        };
    }
    let healthy_ports: BTreeSet<i32> = probes()
        .filter(|p| p.1 == HealthState::Healthy)
        .map(|p| p.0)
        .collect();
    if checked.iter().all(|p| healthy_ports.contains(p)) {
        return RealServerHealth {
            state: HealthState::Healthy,
            since: latest(
                probes()
                    .filter(|p| p.1 == HealthState::Healthy)
                    .filter_map(|p| p.2),
            ),
            message: String::new(),
        };
    }
    RealServerHealth {
        state: HealthState::Unknown,
        since: latest(probes().filter_map(|p| p.2)),
        message: String::new(),
    }
}

/// Aggregates the directors' reports for `servers`. `checked` holds the VIP
/// ports with a health check; with none, no server gets a health and all
/// count as healthy, since directors keep unchecked servers in rotation.
pub fn aggregate(
    checked: &BTreeSet<i32>,
    servers: &[RealServer],
    reports: &[NodeStatus],
) -> Aggregate {
    let per_server: Vec<Option<RealServerHealth>> = servers
        .iter()
        .map(|rs| (!checked.is_empty()).then(|| server_health(&rs.address, checked, reports)))
        .collect();
    let healthy = per_server
        .iter()
        .filter(|h| h.as_ref().is_none_or(|h| h.state == HealthState::Healthy))
        .count();
    let mut fail_open: Vec<String> = reports
        .iter()
        .filter(|r| r.fail_open)
        .map(|r| r.node_name.clone())
        .collect();
    fail_open.sort();
    Aggregate {
        total: servers.len(),
        servers: per_server,
        healthy,
        fail_open,
    }
}

/// A real server whose health changed to Healthy or Unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub address: String,
    pub node_name: Option<String>,
    /// The state before, as last written; `None` when it had none.
    pub from: Option<HealthState>,
    pub to: HealthState,
    pub message: String,
}

/// The transitions from the states last written (`before`, by address) to
/// `servers`. Unknown is no news: neither a first Unknown nor a fall back
/// to it is reported, and neither is a server first seen Healthy without
/// an Unknown before it (the state every server is expected to have, as
/// after an upgrade from an operator that wrote no health).
pub fn transitions(before: &[(String, HealthState)], servers: &[RealServer]) -> Vec<Transition> {
    servers
        .iter()
        .filter_map(|rs| {
            let to = rs.health.as_ref()?;
            let from = before
                .iter()
                .find(|(a, _)| *a == rs.address)
                .map(|(_, s)| *s);
            let news = match (from, to.state) {
                (_, HealthState::Unknown) => false,
                (None, HealthState::Healthy) => false,
                (Some(f), t) => f != t,
                (None, HealthState::Unhealthy) => true,
            };
            news.then(|| Transition {
                address: rs.address.clone(),
                node_name: rs.node_name.clone(),
                from,
                to: to.state,
                message: to.message.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunlb_api::ProbedServer;

    fn probe(address: &str, port: i32, state: HealthState, since: &str, msg: &str) -> ProbedServer {
        ProbedServer {
            address: address.into(),
            port,
            state,
            since: Some(since.into()),
            message: msg.into(),
        }
    }

    fn director(name: &str, health: Vec<ProbedServer>) -> NodeStatus {
        NodeStatus {
            node_name: name.into(),
            roles: vec![tunlb_api::NodeRole::Director],
            observed_generation: Some(1),
            programmed: true,
            message: String::new(),
            draining: vec![],
            health,
            fail_open: false,
            director_state: None,
            director_since: None,
            election_conflict: None,
        }
    }

    fn server(address: &str) -> RealServer {
        RealServer {
            address: address.into(),
            weight: 1,
            node_name: None,
            ready: true,
            upper_threshold: None,
            lower_threshold: None,
            endpoints: vec![],
            health: None,
        }
    }

    fn ports(p: &[i32]) -> BTreeSet<i32> {
        p.iter().copied().collect()
    }

    use HealthState::{Healthy, Unhealthy, Unknown};
    const T1: &str = "2026-01-01T00:00:01Z";
    const T2: &str = "2026-01-01T00:00:02Z";
    const T3: &str = "2026-01-01T00:00:03Z";

    #[test]
    fn every_director_and_port_healthy_is_healthy() {
        let reports = [
            director(
                "ds-a",
                vec![
                    probe("10.0.0.1", 80, Healthy, T1, ""),
                    probe("10.0.0.1", 443, Healthy, T3, ""),
                ],
            ),
            director(
                "ds-b",
                vec![
                    probe("10.0.0.1", 80, Healthy, T2, ""),
                    probe("10.0.0.1", 443, Healthy, T1, ""),
                ],
            ),
        ];
        let a = aggregate(&ports(&[80, 443]), &[server("10.0.0.1")], &reports);
        let h = a.servers[0].clone().unwrap();
        assert_eq!(h.state, Healthy);
        assert_eq!(
            h.since.as_deref(),
            Some(T3),
            "healthy since the last port rose"
        );
        assert_eq!(h.message, "");
        assert_eq!(a.summary(), "1/1");
        assert!(!a.all_unhealthy());
    }

    #[test]
    fn one_failing_probe_makes_it_unhealthy_with_that_message() {
        let reports = [director(
            "ds-a",
            vec![
                probe("10.0.0.1", 80, Healthy, T1, ""),
                probe("10.0.0.2", 80, Unhealthy, T2, "connect: connection refused"),
            ],
        )];
        let a = aggregate(
            &ports(&[80]),
            &[server("10.0.0.1"), server("10.0.0.2")],
            &reports,
        );
        let h = a.servers[1].clone().unwrap();
        assert_eq!(
            (h.state, h.since.as_deref(), h.message.as_str()),
            (Unhealthy, Some(T2), "connect: connection refused")
        );
        assert_eq!(a.summary(), "1/2");
    }

    #[test]
    fn disagreeing_directors_are_each_named() {
        let reports = [
            director("director-b", vec![probe("10.0.0.1", 80, Healthy, T1, "")]),
            director(
                "director-a",
                vec![probe(
                    "10.0.0.1",
                    80,
                    Unhealthy,
                    T2,
                    "connect to 10.0.0.1:80 timed out after 1 s",
                )],
            ),
        ];
        let a = aggregate(&ports(&[80]), &[server("10.0.0.1")], &reports);
        let h = a.servers[0].clone().unwrap();
        assert_eq!(h.state, Unhealthy);
        assert_eq!(
            h.message,
            "director-a: connect to 10.0.0.1:80 timed out after 1 s; director-b: Healthy"
        );
        assert_eq!(h.since.as_deref(), Some(T2));
    }

    #[test]
    fn agreeing_directors_give_the_message_once_and_ports_are_named() {
        let fail = |d: &str, since: &str| {
            director(
                d,
                vec![
                    probe("10.0.0.1", 80, Healthy, T1, ""),
                    probe("10.0.0.1", 443, Unhealthy, since, "refused"),
                ],
            )
        };
        let a = aggregate(
            &ports(&[80, 443]),
            &[server("10.0.0.1")],
            &[fail("ds-a", T3), fail("ds-b", T2)],
        );
        let h = a.servers[0].clone().unwrap();
        assert_eq!(h.message, "port 443: refused");
        assert_eq!(
            h.since.as_deref(),
            Some(T2),
            "the first director to see it fail"
        );
    }

    #[test]
    fn no_verdict_yet_is_unknown_and_not_healthy() {
        let reports = [
            director("ds-a", vec![probe("10.0.0.1", 80, Unknown, T1, "")]),
            // a verdict on one port of two proves nothing of the other
            director(
                "ds-b",
                vec![
                    probe("10.0.0.2", 80, Healthy, T1, ""),
                    probe("10.0.0.2", 443, Unknown, T2, ""),
                ],
            ),
        ];
        let a = aggregate(
            &ports(&[80, 443]),
            &[server("10.0.0.1"), server("10.0.0.2"), server("10.0.0.3")],
            &reports,
        );
        let states: Vec<HealthState> = a
            .servers
            .iter()
            .map(|h| h.as_ref().unwrap().state)
            .collect();
        assert_eq!(states, [Unknown, Unknown, Unknown]);
        assert_eq!(a.summary(), "0/3");
        assert!(!a.all_unhealthy());
    }

    #[test]
    fn unchecked_services_have_no_health_and_count_as_healthy() {
        let a = aggregate(
            &BTreeSet::new(),
            &[server("10.0.0.1"), server("10.0.0.2")],
            &[],
        );
        assert_eq!(a.servers, [None, None]);
        assert_eq!(a.summary(), "2/2");
    }

    #[test]
    fn probes_of_unchecked_ports_are_ignored() {
        let reports = [director(
            "ds-a",
            vec![
                probe("10.0.0.1", 80, Healthy, T1, ""),
                probe("10.0.0.1", 53, Unhealthy, T1, "stale"),
            ],
        )];
        let a = aggregate(&ports(&[80]), &[server("10.0.0.1")], &reports);
        assert_eq!(a.servers[0].as_ref().unwrap().state, Healthy);
    }

    #[test]
    fn fail_open_directors_and_all_unhealthy() {
        let mut d = director(
            "ds-b",
            vec![
                probe("10.0.0.1", 80, Unhealthy, T1, "refused"),
                probe("10.0.0.2", 80, Unhealthy, T1, "refused"),
            ],
        );
        d.fail_open = true;
        let mut other = director("ds-a", vec![]);
        other.fail_open = true;
        let a = aggregate(
            &ports(&[80]),
            &[server("10.0.0.1"), server("10.0.0.2")],
            &[d, other],
        );
        assert_eq!(a.fail_open, ["ds-a", "ds-b"]);
        assert!(a.all_unhealthy());
        assert_eq!(a.summary(), "0/2");
    }

    #[test]
    fn transitions_report_changes_to_healthy_and_unhealthy_only() {
        let with = |address: &str, state: Option<HealthState>| RealServer {
            health: state.map(|state| RealServerHealth {
                state,
                since: None,
                message: if state == Unhealthy {
                    "refused".into()
                } else {
                    String::new()
                },
            }),
            ..server(address)
        };
        let before = vec![
            ("10.0.0.1".to_string(), Unknown),
            ("10.0.0.2".to_string(), Healthy),
            ("10.0.0.3".to_string(), Unhealthy),
            ("10.0.0.4".to_string(), Healthy),
        ];
        let now = [
            with("10.0.0.1", Some(Healthy)),
            with("10.0.0.2", Some(Unhealthy)),
            with("10.0.0.3", Some(Unknown)),
            with("10.0.0.4", Some(Healthy)),
            // first seen: Unknown and Healthy are no news, Unhealthy is
            with("10.0.0.5", Some(Unknown)),
            with("10.0.0.6", Some(Healthy)),
            with("10.0.0.7", Some(Unhealthy)),
            with("10.0.0.8", None),
        ];
        let t = transitions(&before, &now);
        let seen: Vec<(&str, Option<HealthState>, HealthState)> = t
            .iter()
            .map(|t| (t.address.as_str(), t.from, t.to))
            .collect();
        assert_eq!(
            seen,
            [
                ("10.0.0.1", Some(Unknown), Healthy),
                ("10.0.0.2", Some(Healthy), Unhealthy),
                ("10.0.0.7", None, Unhealthy),
            ]
        );
        assert_eq!(t[1].message, "refused");
    }
}
