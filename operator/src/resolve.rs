//! Backends -> real servers. Static addresses are matched to Nodes by
//! InternalIP; a Service's ready endpoints are grouped per node, one real
//! server per node, weighted by its ready endpoints. Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tunlb_api::validate::ValidService;
use tunlb_api::{LocalEndpoint, RealServer, VirtualServiceSpec};

/// What resolution needs to know about a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub internal_ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> Option<NodeInfo> {
        let name = node.metadata.name.clone()?;
        let internal_ips = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|addrs| {
                addrs
                    .iter()
                    .filter(|a| a.type_ == "InternalIP")
                    .filter_map(|a| a.address.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        Some(NodeInfo {
            name,
            internal_ips,
            labels: node.metadata.labels.clone().unwrap_or_default(),
        })
    }

    /// The node's InternalIP of the given family.
    pub fn ip_of_family(&self, v4: bool) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == v4)
    }
}

impl tunlb_api::election::Candidate for NodeInfo {
    fn name(&self) -> &str {
        &self.name
    }

    fn address(&self, ipv4: bool) -> Option<IpAddr> {
        self.ip_of_family(ipv4)
    }
}

/// What resolution needs to know about a Service: its ports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceInfo {
    pub ports: Vec<ServicePortInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    pub name: Option<String>,
    pub port: i32,
    pub protocol: Option<String>,
}

impl ServiceInfo {
    pub fn from_service(svc: &Service) -> ServiceInfo {
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| ServicePortInfo {
                        name: p.name.clone(),
                        port: p.port,
                        protocol: p.protocol.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        ServiceInfo { ports }
    }
}

/// What resolution needs to know about an EndpointSlice: its address family,
/// its ports, and its ready endpoints on a node (the only ones that can
/// become real servers), so the cache holds nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub address_type: AddressType,
    pub ports: Vec<SlicePortInfo>,
    pub endpoints: Vec<ReadyEndpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    V4,
    V6,
    /// FQDN or anything newer: never resolved into real servers.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePortInfo {
    pub name: Option<String>,
    pub port: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyEndpoint {
    pub address: IpAddr,
    /// Shared between the endpoints on one node (the cache interns it).
    pub node_name: Arc<str>,
}

impl SliceInfo {
    pub fn from_slice(slice: &EndpointSlice) -> SliceInfo {
        let address_type = match slice.address_type.as_str() {
            "IPv4" => AddressType::V4,
            "IPv6" => AddressType::V6,
            _ => AddressType::Other,
        };
        let ports = slice
            .ports
            .iter()
            .flatten()
            .map(|p| SlicePortInfo {
                name: p.name.clone(),
                port: p.port,
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .flatten()
            .filter_map(|ep| {
                // The API treats an unset ready condition as ready.
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                let node_name = ep.node_name.as_deref()?.into();
                let address = ep.addresses.first()?.parse().ok()?;
                ready.then_some(ReadyEndpoint { address, node_name })
            })
            .collect();
        SliceInfo {
            address_type,
            ports,
            endpoints,
        }
    }
}

/// Why backends could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub reason: &'static str,
    pub message: String,
}

/// Static real servers, with nodeName set where the address is a Node's InternalIP.
pub fn resolve_static(valid: &ValidService, nodes: &[NodeInfo]) -> Vec<RealServer> {
    valid
        .static_backends
        .iter()
        .flatten()
        .map(|b| RealServer {
            health: None,
            address: b.address.to_string(),
            weight: b.weight as i32,
            node_name: nodes
                .iter()
                .find(|n| n.internal_ips.contains(&b.address))
                .map(|n| n.name.clone()),
            ready: true,
            upper_threshold: (b.upper_threshold != 0).then_some(i64::from(b.upper_threshold)),
            lower_threshold: (b.lower_threshold != 0).then_some(i64::from(b.lower_threshold)),
            endpoints: Vec::new(),
        })
        .collect()
}

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Whether `slice` belongs to Service `name`.
pub fn slice_service_name(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
}

/// Per VIP port: the target port, either fixed by the VirtualService or the
/// name of the Service port whose endpoint port it is.
enum PortSource {
    Fixed(u16),
    Named(Option<String>),
}

fn port_sources(
    spec: &VirtualServiceSpec,
    valid: &ValidService,
    service: &ServiceInfo,
    svc_key: &str,
) -> Result<Vec<PortSource>, Unresolved> {
    let svc_ports = &service.ports;
    let mut out = Vec::new();
    for (i, (p, vp)) in spec.ports.iter().zip(&valid.ports).enumerate() {
        if p.target_port.is_some() {
            out.push(PortSource::Fixed(vp.target_port));
            continue;
        }
        let proto = vp.protocol.as_str();
        let found = svc_ports.iter().find(|sp| {
            sp.port == i32::from(vp.port) && sp.protocol.as_deref().unwrap_or("TCP") == proto
        });
        match found {
            Some(sp) => out.push(PortSource::Named(sp.name.clone())),
            None => {
                return Err(Unresolved {
                    reason: "PortNotFound",
                    message: format!(
                        "spec.ports[{i}]: Service {svc_key} has no port {}/{proto}; set targetPort or add the port to the Service",
                        vp.port
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// Real servers from a Service's EndpointSlices.
pub fn resolve_service(
    spec: &VirtualServiceSpec,
    valid: &ValidService,
    namespace: &str,
    service: Option<&ServiceInfo>,
    slices: &[&SliceInfo],
    nodes: &[NodeInfo],
) -> Result<Vec<RealServer>, Unresolved> {
    let name = valid.service_name.clone().unwrap_or_default();
    let svc_key = format!("{namespace}/{name}");
    let Some(service) = service else {
        return Err(Unresolved {
            reason: "ServiceNotFound",
            message: format!("Service {svc_key} not found; waiting for it to be created"),
        });
    };
    let sources = port_sources(spec, valid, service, &svc_key)?;
    let v4 = valid.vip.is_ipv4();
    let family = if v4 { AddressType::V4 } else { AddressType::V6 };

    // node -> pod address -> ports (deduplicated across slices)
    let mut per_node: BTreeMap<String, BTreeMap<IpAddr, Vec<i32>>> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != family {
            continue;
        }
        let ports: Option<Vec<i32>> = sources
            .iter()
            .map(|s| match s {
                PortSource::Fixed(p) => Some(i32::from(*p)),
                PortSource::Named(n) => slice
                    .ports
                    .iter()
                    .find(|sp| sp.name == *n)
                    .and_then(|sp| sp.port),
            })
            .collect();
        let Some(ports) = ports else { continue };
        for ep in &slice.endpoints {
            per_node
                .entry(ep.node_name.to_string())
                .or_default()
                .insert(ep.address, ports.clone());
        }
    }

    let mut out = Vec::new();
    for (node_name, eps) in per_node {
        let Some(node_ip) = nodes
            .iter()
            .find(|n| n.name == node_name)
            .and_then(|n| n.ip_of_family(v4))
        else {
            continue;
        };
        out.push(RealServer {
            health: None,
            address: node_ip.to_string(),
            weight: eps.len().min(65535) as i32,
            node_name: Some(node_name),
            ready: true,
            upper_threshold: None,
            lower_threshold: None,
            endpoints: eps
                .into_iter()
                .map(|(a, ports)| LocalEndpoint {
                    address: a.to_string(),
                    ports,
                })
                .collect(),
        });
    }
    Ok(out)
}
