//! Publishes Kubernetes Events (events.k8s.io/v1; the API server also serves
//! them as core/v1 Events, so `kubectl describe` and `kubectl get events`
//! both show them).
//!
//! kube-runtime's `Recorder` keeps every Event it published for six minutes
//! to aggregate repeats into a series, and prunes that cache on every
//! publish: at 10,000 VirtualServices that was tens of MB and an O(N) scan
//! per Event. The operator only reports condition and real-server health
//! transitions, which directors debounce (rise and fall) and which do not
//! repeat in quick succession, so each Event is a plain create.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::conditions::{self, Want};
use crate::health::Transition;
use crate::leader::{Fenced, Leadership};
use tunlb_api::HealthState;

/// The API server refuses an events.k8s.io/v1 note longer than this.
const MAX_NOTE_BYTES: usize = 1024;

/// Normal or Warning, as Events spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Normal => "Normal",
            Kind::Warning => "Warning",
        }
    }
}

/// One Event about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub kind: Kind,
    pub reason: String,
    pub note: String,
    pub action: &'static str,
}

/// Who reports: the reportingController and reportingInstance fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter {
    pub controller: String,
    pub instance: String,
}

impl Reporter {
    /// The Event as it is sent.
    pub fn event(&self, regarding: &ObjectReference, note: &Note, now: Timestamp) -> Event {
        Event {
            metadata: ObjectMeta {
                // Unique per object and instant, as kubectl and client-go name them.
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(note.action.to_string()),
            reason: Some(note.reason.clone()),
            note: Some(truncate(&note.note, MAX_NOTE_BYTES).to_string()),
            type_: Some(note.kind.as_str().to_string()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

/// Creates Events on behalf of one controller instance, while it leads.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    reporter: Reporter,
    leadership: Leadership,
}

impl Publisher {
    pub fn new(client: Client, reporter: Reporter, leadership: Leadership) -> Publisher {
        Publisher {
            client,
            reporter,
            leadership,
        }
    }

    /// Creates the Event in the object's namespace, through the leadership fence:
    /// a replica that no longer leads reports nothing.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        note: &Note,
    ) -> Result<(), Fenced<kube::Error>> {
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let event = self.reporter.event(regarding, note, Timestamp::now());
        self.leadership
            .fence(api.create(&PostParams::default(), &event))
            .await?;
        Ok(())
    }
}

/// The Events for a reconcile's condition transitions.
///
/// A VirtualService judged for the first time gets one Event, its verdict:
/// what blocks it, or that it is Accepted. Every condition is "set" then, and
/// one Event per condition made five API writes per new object. Later, each
/// changed condition is reported (Reconciling and Stalled only restate Ready),
/// except AllRealServersUnhealthy turning False: the real servers' own
/// Healthy Events tell the recovery, and an object judged by an operator
/// without that condition would otherwise get one such Event on upgrade.
pub fn for_transitions(transitions: &[Want], first_verdict: bool) -> Vec<Note> {
    let note = |t: &Want| Note {
        kind: if is_good(t) {
            Kind::Normal
        } else {
            Kind::Warning
        },
        reason: t.reason.clone(),
        note: format!(
            "{} is {}: {}",
            t.type_,
            if t.status { "True" } else { "False" },
            t.message
        ),
        action: "Reconcile",
    };
    if first_verdict {
        let cause = transitions.iter().find(|t| {
            !is_good(t)
                && matches!(
                    t.type_,
                    conditions::VIP_ALLOWED | conditions::CONFLICT | conditions::RESOLVED
                )
        });
        let verdict =
            cause.or_else(|| transitions.iter().find(|t| t.type_ == conditions::ACCEPTED));
        return verdict.map(note).into_iter().collect();
    }
    transitions
        .iter()
        .filter(|t| !matches!(t.type_, conditions::RECONCILING | conditions::STALLED))
        .filter(|t| t.type_ != conditions::ALL_UNHEALTHY || t.status)
        .map(note)
        .collect()
}

/// One Event per real-server health transition: Normal when it became
/// Healthy, Warning when it became Unhealthy.
pub fn for_health(transitions: &[Transition]) -> Vec<Note> {
    transitions
        .iter()
        .map(|t| {
            let server = match &t.node_name {
                Some(n) => format!("real server {} (node {n})", t.address),
                None => format!("real server {}", t.address),
            };
            let was = t
                .from
                .map(|f| format!(" (was {})", f.as_str()))
                .unwrap_or_default();
            let (kind, reason, note) = match t.to {
                HealthState::Unhealthy => (
                    Kind::Warning,
                    "RealServerUnhealthy",
                    format!("{server} is Unhealthy{was}: {}", t.message),
                ),
                _ => (
                    Kind::Normal,
                    "RealServerHealthy",
                    format!("{server} is {}{was}", t.to.as_str()),
                ),
            };
            Note {
                kind,
                reason: reason.into(),
                note,
                action: "HealthCheck",
            }
        })
        .collect()
}

/// The Event for a change of the director holding the VIP (`before` and
/// `after` as status.election.activeDirector says), if any.
pub fn for_active_director(before: Option<&str>, after: Option<&str>) -> Option<Note> {
    if before == after {
        return None;
    }
    let (kind, reason, note) = match (before, after) {
        (Some(b), Some(a)) => (
            Kind::Normal,
            "DirectorFailover",
            format!("director {a} now holds the VIP (was {b})"),
        ),
        (None, Some(a)) => (
            Kind::Normal,
            "DirectorElected",
            format!("director {a} holds the VIP"),
        ),
        (Some(b), None) => (
            Kind::Warning,
            "NoActiveDirector",
            format!("no director reports holding the VIP (was {b})"),
        ),
        (None, None) => return None,
    };
    Some(Note {
        kind,
        reason: reason.into(),
        note,
        action: "Elect",
    })
}

/// "Good" is True for most conditions, False for Conflict, Stalled and
/// AllRealServersUnhealthy.
fn is_good(t: &Want) -> bool {
    let bad_when_true = matches!(
        t.type_,
        conditions::CONFLICT | conditions::STALLED | conditions::ALL_UNHEALTHY
    );
    t.status != bad_when_true
}

/// The longest prefix of `s` within `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("aé", 3), "aé");
    }

    #[test]
    fn event_fields() {
        let regarding = ObjectReference {
            api_version: Some(tunlb_api::API_VERSION.into()),
            kind: Some(tunlb_api::KIND.into()),
            name: Some("web".into()),
            namespace: Some("default".into()),
            ..Default::default()
        };
        let note = Note {
            kind: Kind::Warning,
            reason: "OutsidePool".into(),
            note: "x".repeat(2000),
            action: "Reconcile",
        };
        let reporter = Reporter {
            controller: "tunlb-operator".into(),
            instance: "replica-a".into(),
        };
        let now = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let e = reporter.event(&regarding, &note, now);
        let name = format!("web.{:x}", 1_000_000_000_000_i64);
        assert_eq!(e.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reporting_controller.as_deref(), Some("tunlb-operator"));
        assert_eq!(e.reporting_instance.as_deref(), Some("replica-a"));
        assert_eq!(e.note.as_ref().map(String::len), Some(MAX_NOTE_BYTES));
    }

    fn wants(list: &[(&'static str, bool, &str)]) -> Vec<Want> {
        list.iter()
            .map(|(t, s, r)| Want::new(t, *s, *r, format!("{r} message")))
            .collect()
    }

    #[test]
    fn a_new_object_gets_one_event_for_its_verdict() {
        use conditions::*;
        let accepted = wants(&[
            (VIP_ALLOWED, true, "InPool"),
            (CONFLICT, false, "NoConflict"),
            (RESOLVED, true, "Resolved"),
            (ACCEPTED, true, "Accepted"),
            (READY, false, "Pending"),
            (RECONCILING, true, "Pending"),
            (STALLED, false, "Pending"),
        ]);
        let n = for_transitions(&accepted, true);
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].kind, n[0].reason.as_str()),
            (Kind::Normal, "Accepted")
        );
        assert_eq!(n[0].note, "Accepted is True: Accepted message");

        let refused = wants(&[
            (VIP_ALLOWED, false, "OutsidePool"),
            (CONFLICT, true, "PortInUse"),
            (RESOLVED, true, "Resolved"),
            (ACCEPTED, false, "OutsidePool"),
            (READY, false, "OutsidePool"),
        ]);
        let n = for_transitions(&refused, true);
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].kind, n[0].reason.as_str()),
            (Kind::Warning, "OutsidePool")
        );
        assert_eq!(n[0].note, "VipAllowed is False: OutsidePool message");
    }

    #[test]
    fn later_transitions_are_each_reported() {
        use conditions::*;
        let fixed = wants(&[
            (VIP_ALLOWED, true, "InPool"),
            (ACCEPTED, true, "Accepted"),
            (RECONCILING, true, "Pending"),
            (STALLED, false, "Pending"),
        ]);
        let n = for_transitions(&fixed, false);
        let reasons: Vec<_> = n.iter().map(|n| (n.kind, n.reason.as_str())).collect();
        assert_eq!(
            reasons,
            [(Kind::Normal, "InPool"), (Kind::Normal, "Accepted")]
        );
    }

    #[test]
    fn all_unhealthy_is_reported_when_it_turns_true_only() {
        use conditions::*;
        let n = for_transitions(&wants(&[(ALL_UNHEALTHY, true, "FailOpen")]), false);
        assert_eq!(
            n.iter()
                .map(|n| (n.kind, n.reason.as_str()))
                .collect::<Vec<_>>(),
            [(Kind::Warning, "FailOpen")]
        );
        assert!(
            for_transitions(&wants(&[(ALL_UNHEALTHY, false, "HealthyServers")]), false).is_empty()
        );
    }

    #[test]
    fn health_transitions_become_events() {
        let t = |to: HealthState, from: Option<HealthState>, node: Option<&str>| Transition {
            address: "172.16.1.1".into(),
            node_name: node.map(str::to_string),
            from,
            to,
            message: "connect: connection refused".into(),
        };
        let n = for_health(&[
            t(
                HealthState::Unhealthy,
                Some(HealthState::Healthy),
                Some("n1"),
            ),
            t(HealthState::Healthy, Some(HealthState::Unhealthy), None),
        ]);
        assert_eq!(
            (n[0].kind, n[0].reason.as_str(), n[0].note.as_str()),
            (
                Kind::Warning,
                "RealServerUnhealthy",
                "real server 172.16.1.1 (node n1) is Unhealthy (was Healthy): connect: connection refused"
            )
        );
        assert_eq!(
            (n[1].kind, n[1].reason.as_str(), n[1].note.as_str()),
            (
                Kind::Normal,
                "RealServerHealthy",
                "real server 172.16.1.1 is Healthy (was Unhealthy)"
            )
        );
    }

    #[test]
    fn a_change_of_active_director_is_one_event() {
        assert_eq!(for_active_director(Some("d1"), Some("d1")), None);
        let failover = for_active_director(Some("d1"), Some("d2")).unwrap();
        assert_eq!(failover.reason, "DirectorFailover");
        assert_eq!(failover.note, "director d2 now holds the VIP (was d1)");
        assert_eq!(
            for_active_director(None, Some("d1")).unwrap().reason,
            "DirectorElected"
        );
        let lost = for_active_director(Some("d1"), None).unwrap();
        assert_eq!(
            (lost.kind, lost.reason.as_str()),
            (Kind::Warning, "NoActiveDirector")
        );
    }
}
