//! Health checks as directors run them: the effective check of each port
//! (its own, the spec's, or the default) in kernel-sized units.

use std::time::Duration;

use crate::types::{HealthCheck, HealthCheckType, Protocol, ServicePort, VirtualServiceSpec};
use crate::validate::FieldError;

/// Seconds between probes when the spec gives none: a dead server is out
/// after about interval x fall + timeout = 5 s, at one probe per server port and
/// director every 2 s.
pub const DEFAULT_INTERVAL_SECONDS: i32 = 2;
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
pub const DEFAULT_RISE: i32 = 2;
pub const DEFAULT_FALL: i32 = 2;
pub const MAX_INTERVAL_SECONDS: i32 = 3600;
pub const MAX_RISE_FALL: i32 = 100;

/// What a probe does once its connection is open.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// The connection opening is the pass.
    Tcp,
    /// A GET of `path` with `host` as Host header; passes on a status in
    /// `expected` (empty: any 2xx or 3xx).
    Http {
        path: String,
        host: Option<String>,
        expected: Vec<u16>,
    },
}

/// A validated, effective health check of one service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValidHealthCheck {
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// The VIP port probes connect to (TCP).
    pub port: u16,
}

impl ValidHealthCheck {
    /// Whether an HTTP status passes.
    pub fn status_passes(expected: &[u16], status: u16) -> bool {
        if expected.is_empty() {
            (200..400).contains(&status)
        } else {
            expected.contains(&status)
        }
    }
}

/// The effective check of `spec.ports[index]`, `None` when it is not
/// checked; problems are pushed to `errs` under the field that holds them.
pub fn effective(
    spec: &VirtualServiceSpec,
    index: usize,
    port: &ServicePort,
    errs: &mut Vec<FieldError>,
) -> Option<ValidHealthCheck> {
    let (field, given) = match (&port.health_check, &spec.health_check) {
        (Some(h), _) => (format!("spec.ports[{index}].healthCheck"), Some(h)),
        (None, Some(h)) => ("spec.healthCheck".to_string(), Some(h)),
        (None, None) => (String::new(), None),
    };
    let Some(h) = given else {
        // Unconfigured: TCP ports get the default check; a UDP or SCTP port
        // has nothing a TCP connect could prove.
        return (port.protocol == Protocol::Tcp).then(|| default_check(port.port));
    };
    validate_check(&field, h, port, errs)
}

fn default_check(port: i32) -> ValidHealthCheck {
    ValidHealthCheck {
        kind: ProbeKind::Tcp,
        interval: secs(DEFAULT_INTERVAL_SECONDS),
        timeout: secs(DEFAULT_TIMEOUT_SECONDS),
        rise: DEFAULT_RISE as u32,
        fall: DEFAULT_FALL as u32,
        port: u16::try_from(port).unwrap_or(0),
    }
}

fn secs(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

fn validate_check(
    field: &str,
    h: &HealthCheck,
    port: &ServicePort,
    errs: &mut Vec<FieldError>,
) -> Option<ValidHealthCheck> {
    let before = errs.len();
    let mut range = |name: &str, v: Option<i32>, default: i32, max: i32| -> i32 {
        let v = v.unwrap_or(default);
        if !(1..=max).contains(&v) {
            errs.push(FieldError::new(
                format!("{field}.{name}"),
                format!("{v} is out of range 1-{max}"),
            ));
        }
        v
    };
    let interval = range(
        "intervalSeconds",
        h.interval_seconds,
        DEFAULT_INTERVAL_SECONDS,
        MAX_INTERVAL_SECONDS,
    );
    let timeout = range(
        "timeoutSeconds",
        h.timeout_seconds,
        DEFAULT_TIMEOUT_SECONDS,
        MAX_INTERVAL_SECONDS - 1,
    );
    let rise = range("rise", h.rise, DEFAULT_RISE, MAX_RISE_FALL);
    let fall = range("fall", h.fall, DEFAULT_FALL, MAX_RISE_FALL);
    if timeout >= interval {
        errs.push(FieldError::new(
            format!("{field}.timeoutSeconds"),
            format!("{timeout} must be less than intervalSeconds ({interval})"),
        ));
    }
    let probe_port = match h.port {
        Some(p) => match u16::try_from(p).ok().filter(|p| *p != 0) {
            Some(p) => p,
            None => {
                errs.push(FieldError::new(
                    format!("{field}.port"),
                    format!("{p} is out of range 1-65535"),
                ));
                0
            }
        },
        None => u16::try_from(port.port).unwrap_or(0),
    };
    if h.kind != HealthCheckType::None && h.port.is_none() && port.protocol != Protocol::Tcp {
        errs.push(FieldError::new(
            format!("{field}.port"),
            format!(
                "a {} check of a {} port needs a TCP port on the real servers to probe",
                type_name(h.kind),
                port.protocol
            ),
        ));
    }
    let http_only = [
        ("path", h.path.is_some()),
        ("host", h.host.is_some()),
        ("expectedStatuses", !h.expected_statuses.is_empty()),
    ];
    if h.kind != HealthCheckType::Http {
        for (name, set) in http_only {
            if set {
                errs.push(FieldError::new(
                    format!("{field}.{name}"),
                    format!("applies to http checks only, not {}", type_name(h.kind)),
                ));
            }
        }
    }
    if let Some(path) = &h.path
        && (!path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        errs.push(FieldError::new(
            format!("{field}.path"),
            format!("{path:?} must start with '/' and hold no spaces or control characters"),
        ));
    }
    if let Some(host) = &h.host
        && (host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/'))
    {
        errs.push(FieldError::new(
            format!("{field}.host"),
            format!("{host:?} must be a host name or address, optionally with :port"),
        ));
    }
    let mut expected = Vec::new();
    for (i, c) in h.expected_statuses.iter().enumerate() {
        match u16::try_from(*c).ok().filter(|c| (100..=599).contains(c)) {
            Some(c) => expected.push(c),
            None => errs.push(FieldError::new(
                format!("{field}.expectedStatuses[{i}]"),
                format!("{c} is not a status code (100-599)"),
            )),
        }
    }
    if errs.len() > before || h.kind == HealthCheckType::None {
        return None;
    }
    expected.sort_unstable();
    expected.dedup();
    let kind = match h.kind {
        HealthCheckType::Http => ProbeKind::Http {
            path: h.path.clone().unwrap_or_else(|| "/".to_string()),
            host: h.host.clone(),
            expected,
        },
        _ => ProbeKind::Tcp,
    };
    Some(ValidHealthCheck {
        kind,
        interval: secs(interval),
        timeout: secs(timeout),
        rise: rise as u32,
        fall: fall as u32,
        port: probe_port,
    })
}

pub fn type_name(kind: HealthCheckType) -> &'static str {
    match kind {
        HealthCheckType::Tcp => "tcp",
        HealthCheckType::Http => "http",
        HealthCheckType::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;

    fn spec(yaml: &str) -> VirtualServiceSpec {
        serde_yaml::from_str(yaml).expect("test spec parses")
    }

    const BASE: &str = "vip: 192.0.2.10\nports: [{port: 80}, {port: 53, protocol: UDP}]\nbackends: {static: [{address: 192.0.2.20}]}\n";

    #[test]
    fn tcp_ports_are_checked_by_default_and_udp_ports_are_not() {
        let v = validate(&spec(BASE)).expect("valid");
        assert_eq!(v.health[0].as_ref().map(|h| h.port), Some(80));
        assert_eq!(v.health[0].as_ref().map(|h| h.fall), Some(2));
        assert_eq!(v.health[1], None);
    }

    #[test]
    fn a_port_overrides_the_spec_and_none_turns_checking_off() {
        let s = spec(
            "vip: 192.0.2.10\nports: [{port: 80, healthCheck: {type: none}}, {port: 81}]\nhealthCheck: {type: http, path: /healthz, expectedStatuses: [204], intervalSeconds: 5, timeoutSeconds: 2}\nbackends: {static: [{address: 192.0.2.20}]}\n",
        );
        let v = validate(&s).expect("valid");
        assert_eq!(v.health[0], None);
        let h = v.health[1].as_ref().expect("checked");
        assert_eq!(
            h.kind,
            ProbeKind::Http {
                path: "/healthz".into(),
                host: None,
                expected: vec![204]
            }
        );
        assert_eq!(h.interval, Duration::from_secs(5));
        assert_eq!(h.port, 81);
    }

    #[test]
    fn bad_checks_name_the_field() {
        let cases = [
            (
                "healthCheck: {intervalSeconds: 2, timeoutSeconds: 2}",
                "spec.healthCheck.timeoutSeconds",
            ),
            ("healthCheck: {rise: 0}", "spec.healthCheck.rise"),
            ("healthCheck: {fall: 0}", "spec.healthCheck.fall"),
            (
                "healthCheck: {type: http, path: healthz}",
                "spec.healthCheck.path",
            ),
            (
                "healthCheck: {type: tcp, path: /x}",
                "spec.healthCheck.path",
            ),
            (
                "healthCheck: {type: http, expectedStatuses: [700]}",
                "spec.healthCheck.expectedStatuses[0]",
            ),
            ("healthCheck: {type: http}", "spec.healthCheck.port"),
        ];
        for (extra, field) in cases {
            let s = spec(&format!("{BASE}{extra}\n"));
            let err = validate(&s).expect_err(extra);
            assert!(
                err.0.iter().any(|e| e.field == field),
                "{extra}: want {field}, got {err}"
            );
        }
    }

    #[test]
    fn a_udp_port_is_checked_through_a_named_tcp_port() {
        let s = spec(&format!("{BASE}healthCheck: {{port: 8080}}\n"));
        let v = validate(&s).expect("valid");
        assert_eq!(v.health[1].as_ref().map(|h| h.port), Some(8080));
    }

    #[test]
    fn statuses_default_to_2xx_and_3xx() {
        assert!(ValidHealthCheck::status_passes(&[], 204));
        assert!(ValidHealthCheck::status_passes(&[], 302));
        assert!(!ValidHealthCheck::status_passes(&[], 500));
        assert!(ValidHealthCheck::status_passes(&[500], 500));
    }
}
