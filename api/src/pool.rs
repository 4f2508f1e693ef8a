//! The `VipPool` custom resource (cluster-scoped, written by cluster admins)
//! and the rule the operator and every agent apply with it: a VirtualService
//! is admitted only when one pool holding its VIP admits all of it — its
//! namespace, its directors and their interface, its static backends and its
//! port mappings. The operator checks the whole object against the cluster;
//! an agent checks what it would program itself, so a forged `Accepted`
//! cannot reach past a pool. Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector::selector_matches;
use crate::types::{DEFAULT_VIP_INTERFACE, DEFAULT_VIP_INTERFACE_V6, default_director_selector};
use crate::validate::ValidService;

/// `kind` of a VipPool.
pub const POOL_KIND: &str = "VipPool";

/// Addresses VirtualServices may take as VIPs, and what a VirtualService on
/// them may make nodes do. Everything a pool does not grant is refused.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "tunlb.io",
    version = "v1alpha1",
    kind = "VipPool",
    status = "VipPoolStatus",
    category = "tunlb",
    derive = "PartialEq",
    printcolumn = r#"{"name":"CIDRs","type":"string","jsonPath":".spec.cidrs"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VipPoolSpec {
    /// The VIP ranges, e.g. 192.168.56.0/24 or fd00:56::/64.
    #[schemars(length(min = 1, max = 64), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("every entry must be a CIDR such as 192.168.56.0/24 or fd00:56::/64"))]
    pub cidrs: Vec<String>,
    /// Namespaces whose VirtualServices may take VIPs from this pool, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// Further namespaces, by their labels. A pool admits only the
    /// namespaces it names or selects; `{}` selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Whether VirtualServices of different namespaces may share a VIP (on
    /// different ports). Off: a VIP belongs to the namespace of its oldest
    /// VirtualService, and other namespaces are refused on every port of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub share_across_namespaces: bool,
    /// Which nodes may direct this pool's VIPs, and on which interfaces.
    #[serde(default)]
    pub directors: PoolDirectors,
    /// Which real servers VirtualServices may list as static backends.
    #[serde(default)]
    pub backends: PoolBackends,
    /// Ports a VIP port may be mapped to (`targetPort` different from
    /// `port`), which backends DNAT to. Unset: no mapping is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub target_ports: Vec<PortRange>,
}

/// Director placement a pool allows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolDirectors {
    /// Nodes that may direct: every node a VirtualService selects as a
    /// director must match. Defaults to nodes labelled `tunlb.io/director: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Interfaces directors may hold the VIP on. Defaults to tunl0 and
    /// ip6tnl0, where holding it answers no ARP or neighbour solicitation
    /// on the directors' links beyond what tunnel-mode directors already do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = r"^[^/:\s]{1,15}$")))]
    pub interfaces: Vec<String>,
}

/// Static backends a pool allows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolBackends {
    /// Cluster nodes that may be static backends (each gets the VIP, its
    /// sysctls and DNAT rules). Unset: no cluster node may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Addresses outside the cluster that may be static backends. Unset: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("every entry must be a CIDR such as 10.0.0.0/8"))]
    pub cidrs: Vec<String>,
}

/// An inclusive range of ports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.to) || self.to >= self.from").message("to must not be below from").field_path(".to"))]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    #[schemars(range(min = 1, max = 65535))]
    pub from: i32,
    /// Defaults to `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub to: Option<i32>,
}

impl PortRange {
    fn contains(&self, port: u16) -> bool {
        let p = i32::from(port);
        self.from <= p && p <= self.to.unwrap_or(self.from)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to {
            Some(to) if to != self.from => write!(f, "{}-{to}", self.from),
            _ => write!(f, "{}", self.from),
        }
    }
}

/// Written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VipPoolStatus {
    /// VIPs of accepted VirtualServices this pool admits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<i32>,
}

/// Why no pool admits a VirtualService: a condition reason, the pool and
/// the rule (its field) that refused, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// A node as the pool rules see it.
#[derive(Debug, Clone, Copy)]
pub struct PoolNode<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// What of a VirtualService is checked against a pool. The operator fills
/// in the whole object as the cluster resolves it; an agent fills in only
/// what it would program itself.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub namespace: &'a str,
    /// The namespace's labels (empty when the Namespace is not known).
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub service: &'a ValidService,
    /// Nodes that would direct the VIP.
    pub directors: Vec<PoolNode<'a>>,
    /// Static backends that are cluster nodes: (address, node).
    pub backend_nodes: Vec<(IpAddr, PoolNode<'a>)>,
    /// Static backends outside the cluster.
    pub external_backends: Vec<IpAddr>,
    /// Whether the port mappings concern the checker (a node that DNATs, or
    /// the operator).
    pub port_mappings: bool,
}

/// A pool's CIDRs, parsed; entries that do not parse (admission refuses
/// them) hold nothing.
fn nets(cidrs: &[String]) -> Vec<IpNet> {
    cidrs.iter().filter_map(|c| c.trim().parse().ok()).collect()
}

fn matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
    field: &str,
) -> Result<bool, String> {
    selector_matches(selector, labels).map_err(|e| format!("{field}.{e}"))
}

impl VipPool {
    fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// Whether one of the pool's CIDRs holds `vip`.
    pub fn holds(&self, vip: IpAddr) -> bool {
        nets(&self.spec.cidrs).iter().any(|n| n.contains(&vip))
    }

    fn refuse(&self, reason: &'static str, what: String) -> Refusal {
        Refusal {
            reason,
            message: format!("VipPool {}: {what}", self.name()),
        }
    }

    /// Whether the pool admits the namespace, by name or by its labels.
    pub fn admits_namespace(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Refusal> {
        if self.spec.namespaces.iter().any(|n| n == namespace) {
            return Ok(());
        }
        if let Some(sel) = &self.spec.namespace_selector {
            match matches(sel, labels, "spec.namespaceSelector") {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(self.refuse("InvalidPool", e)),
            }
        }
        Err(self.refuse(
            "NamespaceNotAllowed",
            format!(
                "namespace {namespace} is neither listed in spec.namespaces nor selected by spec.namespaceSelector"
            ),
        ))
    }

    /// Interfaces directors may hold the VIP on.
    pub fn director_interfaces(&self) -> Vec<&str> {
        if self.spec.directors.interfaces.is_empty() {
            vec![DEFAULT_VIP_INTERFACE, DEFAULT_VIP_INTERFACE_V6]
        } else {
            self.spec
                .directors
                .interfaces
                .iter()
                .map(String::as_str)
                .collect()
        }
    }

    /// Checks everything in `subject`; the first rule that refuses is named.
    pub fn check(&self, subject: &Subject<'_>) -> Result<(), Refusal> {
        self.admits_namespace(subject.namespace, subject.namespace_labels)?;
        let director_selector = self
            .spec
            .directors
            .node_selector
            .clone()
            .unwrap_or_else(default_director_selector);
        for node in &subject.directors {
            match matches(
                &director_selector,
                node.labels,
                "spec.directors.nodeSelector",
            ) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(self.refuse(
                        "DirectorNotAllowed",
                        format!(
                            "node {} may not direct its VIPs (spec.directors.nodeSelector)",
                            node.name
                        ),
                    ));
                }
                Err(e) => return Err(self.refuse("InvalidPool", e)),
            }
        }
        let interface = subject.service.director_interface.as_str();
        if !subject.directors.is_empty() && !self.director_interfaces().contains(&interface) {
            return Err(self.refuse(
                "InterfaceNotAllowed",
                format!(
                    "directors may hold its VIPs on {} only (spec.directors.interfaces), not on {interface}",
                    self.director_interfaces().join(", ")
                ),
            ));
        }
        for (address, node) in &subject.backend_nodes {
            let allowed = match &self.spec.backends.node_selector {
                None => false,
                Some(sel) => match matches(sel, node.labels, "spec.backends.nodeSelector") {
                    Ok(b) => b,
                    Err(e) => return Err(self.refuse("InvalidPool", e)),
                },
            };
            if !allowed {
                return Err(self.refuse(
                    "BackendNotAllowed",
                    format!(
                        "static backend {address} is node {}, which spec.backends.nodeSelector does not admit",
                        node.name
                    ),
                ));
            }
        }
        let outside = nets(&self.spec.backends.cidrs);
        for address in &subject.external_backends {
            if !outside.iter().any(|n| n.contains(address)) {
                return Err(self.refuse(
                    "BackendNotAllowed",
                    format!("static backend {address} is outside spec.backends.cidrs"),
                ));
            }
        }
        if subject.port_mappings {
            for p in subject
                .service
                .ports
                .iter()
                .filter(|p| p.target_port != p.port)
            {
                if !self
                    .spec
                    .target_ports
                    .iter()
                    .any(|r| r.contains(p.target_port))
                {
                    let allowed: Vec<String> = self
                        .spec
                        .target_ports
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    let allowed = if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    };
                    return Err(self.refuse(
                        "TargetPortNotAllowed",
                        format!(
                            "port {}/{} may not map to {} (spec.targetPorts: {allowed})",
                            p.port, p.protocol, p.target_port
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The pool that admits all of `subject`: among the pools holding its VIP
/// (by name), the first whose rules all pass. Refused: that none holds the
/// VIP, or the reasons of the holding pools that admit the namespace (those
/// the namespace could use), or else that none admits the namespace.
pub fn admit<'p>(pools: &'p [VipPool], subject: &Subject<'_>) -> Result<&'p VipPool, Refusal> {
    let vip = subject.service.vip;
    let mut holding: Vec<&VipPool> = pools.iter().filter(|p| p.holds(vip)).collect();
    holding.sort_by(|a, b| a.name().cmp(b.name()));
    if holding.is_empty() {
        let message = if pools.is_empty() {
            format!(
                "VIP {vip} is in no VipPool: none exists; a cluster admin creates one (kind VipPool) holding it"
            )
        } else {
            format!("VIP {vip} is in no VipPool's spec.cidrs")
        };
        return Err(Refusal {
            reason: "NoPool",
            message,
        });
    }
    let mut for_namespace = Vec::new();
    let mut namespace_refusals = Vec::new();
    for pool in holding {
        if let Err(r) = pool.admits_namespace(subject.namespace, subject.namespace_labels) {
            namespace_refusals.push(r);
            continue;
        }
        match pool.check(subject) {
            Ok(()) => return Ok(pool),
            Err(r) => for_namespace.push(r),
        }
    }
    let refusals = if for_namespace.is_empty() {
        namespace_refusals
    } else {
        for_namespace
    };
    let reason = refusals.first().map_or("NoPool", |r| r.reason);
    let message = refusals
        .into_iter()
        .map(|r| r.message)
        .collect::<Vec<_>>()
        .join("; ");
    Err(Refusal { reason, message })
}

/// The older VirtualService of another namespace that owns `vip`, when the
/// admitting pool does not share VIPs across namespaces. `others`: (key,
/// age, namespace, VIP) of the other admitted VirtualServices.
pub fn vip_owner<'o, K: Ord + std::fmt::Display + 'o>(
    pool: &VipPool,
    vip: IpAddr,
    namespace: &str,
    age: &K,
    others: impl IntoIterator<Item = (&'o K, &'o str, IpAddr)>,
) -> Option<Refusal> {
    if pool.spec.share_across_namespaces {
        return None;
    }
    let owner = others
        .into_iter()
        .filter(|(a, ns, v)| *v == vip && *ns != namespace && *a < age)
        .min_by(|a, b| a.0.cmp(b.0))?;
    Some(pool.refuse(
        "VipInUse",
        format!(
            "VIP {vip} belongs to namespace {} ({}), and spec.shareAcrossNamespaces is off",
            owner.1, owner.0
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VirtualServiceSpec;
    use crate::validate::validate;

    fn pool(yaml: &str) -> VipPool {
        let spec: VipPoolSpec = serde_yaml::from_str(yaml).unwrap();
        VipPool::new("p", spec)
    }

    fn service(yaml: &str) -> ValidService {
        let spec: VirtualServiceSpec = serde_yaml::from_str(yaml).unwrap();
        validate(&spec).unwrap()
    }

    const SEED: &str = "vip: 192.168.56.185\nports: [{port: 80}]\nbackends: {static: [{address: 192.168.56.181}]}\n";

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn subject<'a>(
        ns: &'a str,
        ns_labels: &'a BTreeMap<String, String>,
        svc: &'a ValidService,
    ) -> Subject<'a> {
        Subject {
            namespace: ns,
            namespace_labels: ns_labels,
            service: svc,
            directors: Vec::new(),
            backend_nodes: Vec::new(),
            external_backends: Vec::new(),
            port_mappings: true,
        }
    }

    #[test]
    fn namespaces_by_name_or_selector_only() {
        let p = pool(
            "cidrs: [192.168.56.0/24]\nnamespaces: [team-a]\nnamespaceSelector: {matchLabels: {tier: web}}\n",
        );
        let none = BTreeMap::new();
        let web = labels(&[("tier", "web")]);
        assert!(p.admits_namespace("team-a", &none).is_ok());
        assert!(p.admits_namespace("team-b", &web).is_ok());
        let r = p.admits_namespace("team-b", &none).unwrap_err();
        assert_eq!(r.reason, "NamespaceNotAllowed");
        assert!(
            r.message.starts_with("VipPool p: namespace team-b"),
            "{}",
            r.message
        );
        // Nothing listed, nothing selected: nothing admitted.
        let empty = pool("cidrs: [192.168.56.0/24]\n");
        assert!(empty.admits_namespace("default", &none).is_err());
        let all = pool("cidrs: [192.168.56.0/24]\nnamespaceSelector: {}\n");
        assert!(all.admits_namespace("default", &none).is_ok());
    }

    #[test]
    fn a_vip_in_no_pool_is_refused() {
        let svc = service(SEED);
        let none = BTreeMap::new();
        let s = subject("team-a", &none, &svc);
        let r = admit(&[], &s).unwrap_err();
        assert_eq!(r.reason, "NoPool");
        assert!(r.message.contains("none exists"), "{}", r.message);
        let other = pool("cidrs: [10.0.0.0/8]\nnamespaces: [team-a]\n");
        let r = admit(std::slice::from_ref(&other), &s).unwrap_err();
        assert_eq!(
            r.message,
            "VIP 192.168.56.185 is in no VipPool's spec.cidrs"
        );
    }

    #[test]
    fn directors_need_the_pools_nodes_and_interfaces() {
        let p = pool("cidrs: [192.168.56.0/24]\nnamespaces: [team-a]\n");
        let none = BTreeMap::new();
        let director = labels(&[("tunlb.io/director", "true")]);
        let control = labels(&[("node-role.kubernetes.io/control-plane", "")]);
        let svc = service(SEED);
        let mut s = subject("team-a", &none, &svc);
        s.external_backends = Vec::new();
        s.directors = vec![PoolNode {
            name: "director",
            labels: &director,
        }];
        assert!(p.check(&s).is_ok());
        s.directors.push(PoolNode {
            name: "cp",
            labels: &control,
        });
        let r = p.check(&s).unwrap_err();
        assert_eq!(r.reason, "DirectorNotAllowed");
        assert!(
            r.message.contains("node cp may not direct"),
            "{}",
            r.message
        );

        let eth0 = service(&format!("{SEED}directors: {{interface: eth0}}\n"));
        let mut s = subject("team-a", &none, &eth0);
        s.directors = vec![PoolNode {
            name: "director",
            labels: &director,
        }];
        let r = p.check(&s).unwrap_err();
        assert_eq!(r.reason, "InterfaceNotAllowed");
        assert!(r.message.contains("tunl0, ip6tnl0 only"), "{}", r.message);
        let allows = pool(
            "cidrs: [192.168.56.0/24]\nnamespaces: [team-a]\ndirectors: {interfaces: [eth0]}\n",
        );
        assert!(allows.check(&s).is_ok());
    }

    #[test]
    fn static_backends_need_the_pools_nodes_or_cidrs() {
        let none = BTreeMap::new();
        let backend = labels(&[("tunlb.io/backend", "true")]);
        let svc = service(SEED);
        let mut s = subject("team-a", &none, &svc);
        s.backend_nodes = vec![(
            "192.168.56.181".parse().unwrap(),
            PoolNode {
                name: "rs1",
                labels: &none,
            },
        )];
        let strict = pool("cidrs: [192.168.56.0/24]\nnamespaces: [team-a]\n");
        let r = strict.check(&s).unwrap_err();
        assert_eq!(r.reason, "BackendNotAllowed");
        assert!(
            r.message.contains("192.168.56.181 is node rs1"),
            "{}",
            r.message
        );
        let by_label = pool(
            "cidrs: [192.168.56.0/24]\nnamespaces: [team-a]\nbackends: {nodeSelector: {matchLabels: {tunlb.io/backend: 'true'}}}\n",
        );
        assert!(by_label.check(&s).is_err());
        s.backend_nodes[0].1.labels = &backend;
        assert!(by_label.check(&s).is_ok());

        let mut s = subject("team-a", &none, &svc);
        s.external_backends = vec!["203.0.113.7".parse().unwrap()];
        assert_eq!(strict.check(&s).unwrap_err().reason, "BackendNotAllowed");
        let outside = pool(
            "cidrs: [192.168.56.0/24]\nnamespaces: [team-a]\nbackends: {cidrs: [203.0.113.0/24]}\n",
        );
        assert!(outside.check(&s).is_ok());
    }

    #[test]
    fn port_mappings_need_the_pools_target_ports() {
        let none = BTreeMap::new();
        let svc = service(
            "vip: 192.168.56.185\nports: [{port: 80, targetPort: 10250}, {port: 53, protocol: UDP}]\nbackends: {static: [{address: 192.168.56.181}]}\n",
        );
        let mut s = subject("team-a", &none, &svc);
        let strict = pool("cidrs: [192.168.56.0/24]\nnamespaces: [team-a]\n");
        let r = strict.check(&s).unwrap_err();
        assert_eq!(r.reason, "TargetPortNotAllowed");
        assert_eq!(
            r.message,
            "VipPool p: port 80/TCP may not map to 10250 (spec.targetPorts: none)"
        );
        let web = pool(
            "cidrs: [192.168.56.0/24]\nnamespaces: [team-a]\ntargetPorts: [{from: 8000, to: 8999}, {from: 443}]\n",
        );
        assert!(
            web.check(&s)
                .unwrap_err()
                .message
                .contains("spec.targetPorts: 8000-8999, 443")
        );
        let kubelet =
            pool("cidrs: [192.168.56.0/24]\nnamespaces: [team-a]\ntargetPorts: [{from: 10250}]\n");
        assert!(kubelet.check(&s).is_ok());
        // A node that maps nothing does not judge mappings.
        s.port_mappings = false;
        assert!(strict.check(&s).is_ok());
    }

    #[test]
    fn the_first_pool_by_name_that_admits_all_wins() {
        let none = BTreeMap::new();
        let svc = service(SEED);
        let s = subject("team-a", &none, &svc);
        let mut a = pool("cidrs: [192.168.56.0/24]\nnamespaces: [team-b]\n");
        a.metadata.name = Some("a".into());
        let mut b = pool("cidrs: [192.168.56.128/25]\nnamespaces: [team-a]\n");
        b.metadata.name = Some("b".into());
        let pools = [b.clone(), a.clone()];
        assert_eq!(
            admit(&pools, &s).unwrap().metadata.name.as_deref(),
            Some("b")
        );
        let s2 = subject("team-c", &none, &svc);
        let r = admit(&pools, &s2).unwrap_err();
        assert_eq!(r.reason, "NamespaceNotAllowed");
        assert!(
            r.message.starts_with("VipPool a: ") && r.message.contains("; VipPool b: "),
            "{}",
            r.message
        );
    }

    #[test]
    fn a_vip_belongs_to_its_oldest_namespace_unless_shared() {
        let p = pool("cidrs: [192.168.56.0/24]\nnamespaceSelector: {}\n");
        let vip: IpAddr = "192.168.56.185".parse().unwrap();
        let (old, me, young) = (
            "1 team-b/web".to_string(),
            "2 team-a/x".to_string(),
            "3 team-c/y".to_string(),
        );
        let others = [
            (&old, "team-b", vip),
            (&young, "team-c", vip),
            (&old, "team-a", "192.168.56.1".parse().unwrap()),
        ];
        let r = vip_owner(&p, vip, "team-a", &me, others).unwrap();
        assert_eq!(r.reason, "VipInUse");
        assert!(
            r.message
                .contains("belongs to namespace team-b (1 team-b/web)"),
            "{}",
            r.message
        );
        assert!(vip_owner(&p, vip, "team-b", &old, others).is_none());
        let shared =
            pool("cidrs: [192.168.56.0/24]\nnamespaceSelector: {}\nshareAcrossNamespaces: true\n");
        assert!(vip_owner(&shared, vip, "team-a", &me, others).is_none());
    }
}
