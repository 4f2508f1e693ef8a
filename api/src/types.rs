//! The `VirtualService` custom resource (group `tunlb.io`, version `v1alpha1`).
//!
//! Field types stay close to what users write (addresses as strings, ports as
//! int32) so that validation can name the field and the reason instead of a
//! generic deserialisation error.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// The `#[kube]` attributes below take literals only: the test
// `api_version_is_the_derived_one` holds them to these.
macro_rules! group {
    () => {
        "tunlb.io"
    };
}
macro_rules! version {
    () => {
        "v1alpha1"
    };
}
/// The API group of tunlb's kinds.
pub const GROUP: &str = group!();
/// The version of tunlb's kinds.
pub const VERSION: &str = version!();
/// `apiVersion` of tunlb's kinds.
pub const API_VERSION: &str = concat!(group!(), "/", version!());
/// `kind` of a VirtualService.
pub const KIND: &str = "VirtualService";

/// The interface a director puts an IPv4 VIP on unless told otherwise.
pub const DEFAULT_VIP_INTERFACE: &str = "tunl0";
/// The interface a director puts an IPv6 VIP on unless told otherwise: the
/// ip6_tunnel module's fallback device, the IPv6 counterpart of tunl0.
pub const DEFAULT_VIP_INTERFACE_V6: &str = "ip6tnl0";
/// Node label that selects directors when `spec.directors.nodeSelector` is absent.
pub const DEFAULT_DIRECTOR_LABEL: &str = "tunlb.io/director";

/// A virtual service: one VIP, one or more ports, balanced by kernel IPVS in
/// tunnel mode across real servers that answer clients directly.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "tunlb.io",
    version = "v1alpha1",
    kind = "VirtualService",
    namespaced,
    status = "VirtualServiceStatus",
    shortname = "tvs",
    category = "tunlb",
    derive = "PartialEq",
    printcolumn = r#"{"name":"VIP","type":"string","jsonPath":".spec.vip"}"#,
    printcolumn = r#"{"name":"Ports","type":"string","jsonPath":".spec.ports[*].port"}"#,
    printcolumn = r#"{"name":"Scheduler","type":"string","jsonPath":".spec.scheduler"}"#,
    printcolumn = r#"{"name":"Backends","type":"integer","jsonPath":".status.realServerCount"}"#,
    printcolumn = r#"{"name":"Healthy","type":"string","jsonPath":".status.healthy"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.election.activeDirector"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("!has(self.schedulerFlags) || self.schedulerFlags.all(f, f.startsWith(self.scheduler + '-'))").message("schedulerFlags must belong to the scheduler: sh-fallback and sh-port need sh, mh-fallback and mh-port need mh").field_path(".schedulerFlags"),
    validation = Rule::new("!has(self.onePacket) || !self.onePacket || self.ports.exists(p, p.protocol == 'UDP')").message("one-packet scheduling applies to UDP and this service has no UDP port").field_path(".onePacket"),
    validation = Rule::new("!has(self.backends.static) || !isIP(self.vip) || self.backends.static.all(b, !isIP(b.address) || ip(b.address).family() == ip(self.vip).family())").message("real server addresses must be of the VIP's address family").field_path(".backends.static"),
    validation = Rule::new("!has(self.backends.static) || self.backends.static.all(b, b.address != self.vip)").message("a real server cannot be the VIP itself").field_path(".backends.static"),
    validation = Rule::new("!has(self.directors) || !has(self.directors.interface) || !isIP(self.vip) || (ip(self.vip).family() == 4 ? self.directors.interface != 'ip6tnl0' : self.directors.interface != 'tunl0')").message("tunl0 holds IPv4 VIPs and ip6tnl0 IPv6 VIPs: choose the one of the VIP's family, or an ordinary interface").field_path(".directors.interface"),
    validation = Rule::new("!has(self.healthCheck) || (has(self.healthCheck.type) && self.healthCheck.type == 'none') || has(self.healthCheck.port) || self.ports.all(p, has(p.healthCheck) || !has(p.protocol) || p.protocol == 'TCP')").message("a tcp or http check of a UDP or SCTP port needs healthCheck.port, a TCP port on the real servers (or set the port's own healthCheck)").field_path(".healthCheck.port"),
    validation = Rule::new("!has(self.persistence) || !has(self.persistence.prefixLength) || !isIP(self.vip) || ip(self.vip).family() == 6 || self.persistence.prefixLength <= 32").message("prefixLength must be 0-32 for an IPv4 VIP").field_path(".persistence.prefixLength")
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// The virtual IP address clients connect to (IPv4 or IPv6).
    #[schemars(length(max = 45))]
    #[x_kube(
        validation = Rule::new("isIP(self)").message("must be an IPv4 or IPv6 address"),
        validation = Rule::new("!isIP(self) || ip(self).isGlobalUnicast()").message("must be a unicast address (not unspecified, loopback, multicast, link-local or broadcast)"),
        validation = Rule::new("!isIP(self) || ip.isCanonical(self)").message("must be written in canonical form (e.g. 2001:db8::1, lower case, no leading zeros)")
    )]
    pub vip: String,
    /// Ports served on the VIP. Each VIP:port:protocol becomes one IPVS virtual service.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["port".into(), "protocol".into()]),
        validation = Rule::new("self.all(p, !has(p.name) || self.exists_one(q, has(q.name) && q.name == p.name))").message("duplicate port name")
    )]
    pub ports: Vec<ServicePort>,
    /// IPVS scheduling algorithm (ipvsadm -s). Defaults to wlc, like ipvsadm.
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Scheduler flags (ipvsadm -b): sh-fallback, sh-port, mh-fallback, mh-port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub scheduler_flags: Vec<SchedulerFlag>,
    /// Client affinity (ipvsadm -p/-M): connections from one client go to the same real server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// Schedule every UDP datagram on its own (ipvsadm -o, one-packet scheduling).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_packet: bool,
    /// How the director encapsulates packets for the real servers.
    #[serde(default)]
    pub tunnel: Tunnel,
    /// Which nodes act as directors, and where they hold the VIP.
    #[serde(default)]
    pub directors: Directors,
    /// The real servers: exactly one of `static` or `service`.
    pub backends: Backends,
    /// How long a removed real server keeps its connections: it stays in
    /// IPVS at weight 0 (no new connections) until its active and inactive
    /// connections reach 0 or this many seconds pass, then it is deleted.
    /// The same holds for the real servers of a deleted VirtualService.
    /// 0 deletes at once. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_timeout_seconds: Option<i32>,
    /// How directors check the real servers. Unset: a tcp check of every
    /// TCP port (UDP and SCTP ports are checked only when told a TCP
    /// `port`), every 2 s, 1 s timeout, down after 2 failures, up after 2
    /// successes. Ports may override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// One port of the virtual service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.healthCheck) || (has(self.healthCheck.type) && self.healthCheck.type == 'none') || has(self.healthCheck.port) || !has(self.protocol) || self.protocol == 'TCP'").message("a tcp or http check of a UDP or SCTP port needs healthCheck.port, a TCP port on the real servers").field_path(".healthCheck.port")
)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Optional name, unique within the VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// Port on the VIP (1-65535).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Port the real servers listen on (1-65535); defaults to `port`. When it differs,
    /// backends DNAT VIP:port to it, since tunnel mode never rewrites ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<i32>,
    /// TCP, UDP or SCTP. Defaults to TCP. Real servers answer clients
    /// directly, from the VIP: a TCP server needs nothing for that,
    /// but a UDP server must be bound to the VIP (or reply with IP_PKTINFO /
    /// IPV6_RECVPKTINFO); one bound to the wildcard address answers from
    /// the node's own address, and clients drop those answers.
    #[serde(default)]
    pub protocol: Protocol,
    /// This port's own health check, in place of `spec.healthCheck`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

impl ServicePort {
    /// The port real servers listen on.
    pub fn effective_target_port(&self) -> i32 {
        self.target_port.unwrap_or(self.port)
    }
}

#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IPVS schedulers, by their kernel module suffix (ip_vs_<name>).
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Round robin.
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connection.
    Lc,
    /// Weighted least connection (the ipvsadm default).
    #[default]
    Wlc,
    /// Locality-based least connection.
    Lblc,
    /// Locality-based least connection with replication.
    Lblcr,
    /// Destination hashing.
    Dh,
    /// Source hashing.
    Sh,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Weighted failover.
    Fo,
    /// Weighted overflow.
    Ovf,
    /// Maglev hashing.
    Mh,
    /// Weighted random twos choice (kernel 6.8 and later).
    Twos,
}

impl Scheduler {
    pub const ALL: [Scheduler; 14] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Lblc,
        Scheduler::Lblcr,
        Scheduler::Dh,
        Scheduler::Sh,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Fo,
        Scheduler::Ovf,
        Scheduler::Mh,
        Scheduler::Twos,
    ];

    /// The scheduler name the kernel knows (IPVS_SVC_ATTR_SCHED_NAME).
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Lblc => "lblc",
            Scheduler::Lblcr => "lblcr",
            Scheduler::Dh => "dh",
            Scheduler::Sh => "sh",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Fo => "fo",
            Scheduler::Ovf => "ovf",
            Scheduler::Mh => "mh",
            Scheduler::Twos => "twos",
        }
    }

    /// The kernel module that implements it.
    pub fn module(self) -> String {
        format!("ip_vs_{}", self.name())
    }

    pub fn from_name(name: &str) -> Option<Scheduler> {
        Scheduler::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Scheduler flags; the kernel maps them onto IP_VS_SVC_F_SCHED1..3.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerFlag {
    /// sh: pick another server when the hashed one is unavailable (flag-1).
    ShFallback,
    /// sh: include the source port in the hash (flag-2).
    ShPort,
    /// mh: pick another server when the hashed one is unavailable (flag-1).
    MhFallback,
    /// mh: include the source port in the hash (flag-2).
    MhPort,
}

impl SchedulerFlag {
    /// The scheduler this flag belongs to.
    pub fn scheduler(self) -> Scheduler {
        match self {
            SchedulerFlag::ShFallback | SchedulerFlag::ShPort => Scheduler::Sh,
            SchedulerFlag::MhFallback | SchedulerFlag::MhPort => Scheduler::Mh,
        }
    }

    /// IP_VS_SVC_F_SCHED1 (8) or IP_VS_SVC_F_SCHED2 (16).
    pub fn bit(self) -> u32 {
        match self {
            SchedulerFlag::ShFallback | SchedulerFlag::MhFallback => 0x08,
            SchedulerFlag::ShPort | SchedulerFlag::MhPort => 0x10,
        }
    }
}

/// Client affinity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    /// How long a client stays with its real server after its last connection (seconds, >= 1).
    #[schemars(range(min = 1, max = 31_536_000))]
    pub timeout_seconds: i64,
    /// Clients whose addresses share this prefix length count as one client
    /// (ipvsadm -M). Defaults to 32 for IPv4 and 128 for IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 128))]
    pub prefix_length: Option<i32>,
}

/// Encapsulation between director and real servers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.type != 'gue' || has(self.port)").message("gue encapsulation needs a UDP port").field_path(".port"),
    validation = Rule::new("!has(self.port) || self.type == 'gue'").message("only gue uses a port").field_path(".port"),
    validation = Rule::new("!has(self.checksum) || self.checksum == 'none' || self.type != 'ipip'").message("ipip has no checksum option (csum and remcsum need gue or gre)").field_path(".checksum"),
    validation = Rule::new("!has(self.checksum) || self.checksum != 'remcsum' || self.type == 'gue'").message("remcsum is only available with gue").field_path(".checksum")
)]
#[serde(rename_all = "camelCase")]
pub struct Tunnel {
    /// ipip (default; ip6ip6 for an IPv6 VIP), gue (needs `port`; directors
    /// need Linux 5.2+, backends the fou module and the UDP port open) or gre
    /// (directors need Linux 5.3+, backends ip_gre or ip6_gre).
    #[serde(default, rename = "type")]
    pub kind: TunnelKind,
    /// UDP destination port for GUE encapsulation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Checksum option: none (default), csum (gue or gre) or remcsum (gue).
    /// A backend address receives GRE either with checksums or without, for
    /// all VirtualServices: the older one's choice wins.
    #[serde(default)]
    pub checksum: TunnelChecksum,
    /// Clamp the TCP MSS that backends announce on connections to the VIP, so
    /// that encapsulated packets fit the path MTU. Unset: no clamp. For a
    /// 1500-byte path: IPv4 ipip 1440 (20 bytes of outer header), gue 1428
    /// (20 + 8 UDP + 4 GUE; remcsum 1420), gre 1436 (20 + 4; with
    /// checksums 1432); IPv6 ip6ip6 1400 (40 + 60 of inner headers), gue
    /// 1388, gre 1396 (with checksums 1392).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 536, max = 9000))]
    pub mss_clamp: Option<i32>,
}

#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    #[default]
    Ipip,
    Gue,
    Gre,
}

#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TunnelChecksum {
    #[default]
    None,
    Csum,
    Remcsum,
}

/// Real-server health checking. Every director probes every real server
/// at VIP:port, and IPVS carries each probe through the tunnel to exactly
/// that server, the way clients' packets travel: a pass proves the tunnel,
/// the VIP on the backend, its sysctls, the port mapping and the
/// application. A server that fails `fall` probes in a row gets weight 0
/// (its connections continue); after `rise` passes its weight returns.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.timeoutSeconds) || self.timeoutSeconds < (has(self.intervalSeconds) ? self.intervalSeconds : 2)").message("timeoutSeconds must be less than intervalSeconds (default 2)").field_path(".timeoutSeconds"),
    validation = Rule::new("(has(self.type) && self.type == 'http') || (!has(self.path) && !has(self.host) && !has(self.expectedStatuses))").message("path, host and expectedStatuses apply to http checks only").field_path(".type")
)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// tcp (default: a connection that opens passes), http (a GET whose
    /// status is expected) or none (not checked: always in rotation).
    #[serde(default, rename = "type")]
    pub kind: HealthCheckType,
    /// Seconds between probes of one real server (1-3600). Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: Option<i32>,
    /// Seconds a probe may take, less than the interval. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3599))]
    pub timeout_seconds: Option<i32>,
    /// Passes in a row that bring an unhealthy server back (1-100). Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub rise: Option<i32>,
    /// Failures in a row that take a server out (1-100). Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub fall: Option<i32>,
    /// VIP port to probe (TCP); defaults to the service port itself. Probes
    /// to it travel the tunnel like the service's traffic but are not port-mapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// http: the request path. Defaults to /.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("must start with '/'"))]
    pub path: Option<String>,
    /// http: the Host header. Defaults to the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.contains(' ') && !self.contains('/')").message("must be a host name or address, optionally with :port"))]
    pub host: Option<String>,
    /// http: status codes that pass. Defaults to any 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new("self.all(c, c >= 100 && c <= 599)").message("status codes are 100-599")
    )]
    pub expected_statuses: Vec<i32>,
}

#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckType {
    #[default]
    Tcp,
    Http,
    None,
}

/// Director placement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Directors {
    /// Nodes that run IPVS for this service. Defaults to nodes labelled
    /// `tunlb.io/director: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Interface that holds the VIP on directors: by default tunl0 for an IPv4
    /// VIP (the director answers ARP for it on every interface) and ip6tnl0
    /// for an IPv6 VIP. Linux answers IPv6 neighbour solicitations only for
    /// addresses on the interface they arrive on, so an IPv6 VIP on ip6tnl0
    /// must be routed to the directors; for clients on the directors' own
    /// link, name that interface (e.g. eth0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^/:\s]{1,15}$"))]
    pub interface: Option<String>,
    /// How two or more selected directors elect the one that holds the VIP
    /// (VRRP version 3, RFC 5798, unicast between the directors' InternalIPs):
    /// the others keep the IPVS services programmed and hold no VIP, so only
    /// one answers ARP for it, and a backup takes over without the API
    /// server. With one director nothing is elected. VirtualServices on one
    /// VIP elect alike: a younger one whose directors or settings differ is
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election: Option<Election>,
}

/// VRRP settings of a director election.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Election {
    /// Advertisement interval in milliseconds, a multiple of 10 (VRRP
    /// counts centiseconds). A backup takes over after 3 intervals plus a
    /// skew below one interval. Defaults to 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 40950))]
    #[x_kube(validation = Rule::new("self % 10 == 0").message("must be a multiple of 10: VRRP counts centiseconds"))]
    pub advert_interval_ms: Option<u32>,
    /// Whether a director with a higher priority takes the VIP back when it
    /// returns. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempt: Option<bool>,
    /// The director that holds the VIP whenever it is up. By default the
    /// VIPs' masters are spread over the directors by a hash of the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub preferred_node: Option<String>,
    /// The VRRP virtual router id, unique among the VRRP speakers on the
    /// directors' segment. By default the operator assigns one per director
    /// set, interface and master (shown in status.election).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub virtual_router_id: Option<u8>,
    /// Gratuitous ARPs (IPv6: unsolicited neighbour advertisements) a new
    /// master sends per VIP. Defaults to 5, as keepalived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub announce_count: Option<u32>,
    /// Milliseconds between them. Defaults to 0 (back to back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub announce_interval_ms: Option<u32>,
    /// Send adverts to the VRRP group (224.0.0.18, ff02::12) instead of to
    /// each other director, for segments where that is the rule. Adverts
    /// are still followed only from the directors. Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multicast: Option<bool>,
}

/// Advertisement interval of an election without one, milliseconds.
pub const DEFAULT_ADVERT_INTERVAL_MS: u32 = 200;
/// Gratuitous ARPs a new master sends by default (keepalived's default).
pub const DEFAULT_ANNOUNCE_COUNT: u32 = 5;

impl Election {
    pub fn advert_interval_ms(&self) -> u32 {
        self.advert_interval_ms
            .unwrap_or(DEFAULT_ADVERT_INTERVAL_MS)
    }

    pub fn preempt(&self) -> bool {
        self.preempt.unwrap_or(true)
    }

    pub fn announce_count(&self) -> u32 {
        self.announce_count.unwrap_or(DEFAULT_ANNOUNCE_COUNT)
    }
}

/// The selector of nodes labelled `tunlb.io/director: "true"`: directors of
/// a VirtualService without a node selector, and of a VipPool without one.
pub fn default_director_selector() -> LabelSelector {
    LabelSelector {
        match_labels: Some([(DEFAULT_DIRECTOR_LABEL.to_string(), "true".to_string())].into()),
        match_expressions: None,
    }
}

impl Directors {
    /// The director selector in effect.
    pub fn selector(&self) -> LabelSelector {
        self.node_selector
            .clone()
            .unwrap_or_else(default_director_selector)
    }

    /// The interface that holds a VIP of this family (`ipv6`) on directors.
    pub fn vip_interface(&self, ipv6: bool) -> &str {
        match (&self.interface, ipv6) {
            (Some(i), _) => i,
            (None, false) => DEFAULT_VIP_INTERFACE,
            (None, true) => DEFAULT_VIP_INTERFACE_V6,
        }
    }
}

/// Where the real servers come from: exactly one kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.static) != has(self.service)").message("set exactly one of static or service"))]
#[serde(rename_all = "camelCase")]
pub struct Backends {
    /// Fixed real servers, inside or outside the cluster.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["address".into()]))]
    pub static_servers: Option<Vec<StaticBackend>>,
    /// A Service in the same namespace; each node with ready endpoints becomes one real server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackend>,
}

/// A fixed real server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.upperThreshold) || !has(self.lowerThreshold) || self.upperThreshold == 0 || self.lowerThreshold <= self.upperThreshold").message("lowerThreshold must not exceed upperThreshold").field_path(".lowerThreshold"))]
#[serde(rename_all = "camelCase")]
pub struct StaticBackend {
    /// Real server address (RIP).
    #[schemars(length(max = 45))]
    #[x_kube(
        validation = Rule::new("isIP(self)").message("must be an IPv4 or IPv6 address"),
        validation = Rule::new("!isIP(self) || ip(self).isGlobalUnicast()").message("must be a unicast address (not unspecified, loopback, multicast, link-local or broadcast)"),
        validation = Rule::new("!isIP(self) || ip.isCanonical(self)").message("must be written in canonical form (e.g. 2001:db8::1, lower case, no leading zeros)")
    )]
    pub address: String,
    /// Scheduling weight, 0-65535 (0 drains: no new connections). Defaults to 1.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 65535))]
    pub weight: i32,
    /// Stop sending new connections above this many (0 = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_147_483_647))]
    pub upper_threshold: Option<i64>,
    /// Resume sending below this many (0 = unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_147_483_647))]
    pub lower_threshold: Option<i64>,
}

pub fn default_weight() -> i32 {
    1
}

/// A Service whose ready endpoints are the real servers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackend {
    /// Service name in the VirtualService's namespace.
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
}

/// Observed state, written by the operator (realServers, conditions) and by
/// each node agent (its own `nodes[]` entry).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceStatus {
    /// The generation the operator last judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Resolved, VipAllowed, Conflict, Ready, AllRealServersUnhealthy (True
    /// when every real server is unhealthy, reason FailOpen when a director
    /// keeps sending to them anyway), and Reconciling/Stalled, kstatus style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Resolved real servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub real_servers: Vec<RealServer>,
    /// Number of real servers, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_server_count: Option<i32>,
    /// Healthy real servers out of all, e.g. "2/3", for the printer column.
    /// Servers with no checked port count as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<String>,
    /// One entry per node that programs this service, written by that node's agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["nodeName".into()]))]
    pub nodes: Vec<NodeStatus>,
    /// The director election, set by the operator when two or more nodes
    /// direct this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election: Option<ElectionStatus>,
}

/// The most VIPs one virtual router carries: an IPv4 advert counts its
/// addresses in one byte; an IPv6 advert of 77 addresses (1,280 bytes with
/// its headers) still fits the smallest MTU IPv6 allows. More VIPs with the
/// same directors and settings run more than one virtual router.
pub const MAX_ROUTER_VIPS_V4: usize = 255;
pub const MAX_ROUTER_VIPS_V6: usize = 77;

/// [`MAX_ROUTER_VIPS_V4`] or [`MAX_ROUTER_VIPS_V6`].
pub fn max_router_vips(ipv4: bool) -> usize {
    if ipv4 {
        MAX_ROUTER_VIPS_V4
    } else {
        MAX_ROUTER_VIPS_V6
    }
}

/// One VRRP virtual router: the directors, their priorities and where they
/// send adverts, as the agents run it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ElectionStatus {
    pub virtual_router_id: u8,
    pub advert_interval_ms: u32,
    pub preempt: bool,
    pub announce_count: u32,
    #[serde(default)]
    pub announce_interval_ms: u32,
    /// Adverts go to the VRRP multicast group, not to each director.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multicast: bool,
    /// The directors, highest priority first.
    pub directors: Vec<ElectionMember>,
    /// The director whose agent reports holding the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_director: Option<String>,
}

impl ElectionStatus {
    /// The election as the agents run it: without the active director,
    /// which their own reports move.
    pub fn without_active(&self) -> ElectionStatus {
        ElectionStatus {
            active_director: None,
            ..self.clone()
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ElectionMember {
    pub node_name: String,
    /// The InternalIP of the VIP's family that adverts come from.
    pub address: String,
    /// VRRP priority, 1-254 (higher wins).
    pub priority: u8,
}

/// A resolved real server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RealServer {
    pub address: String,
    /// The weight directors give it. A real server on a cluster node
    /// (`nodeName` set) stays at 0 until that node's agent reports this
    /// VirtualService programmed with the backend role (its `status.nodes`
    /// entry: programmed, at the current generation or at an earlier one
    /// while its agent catches up with a spec edit), and goes back to 0
    /// while the node reports a failure: until then packets tunnelled to it
    /// would find no VIP to receive them. It stays listed meanwhile, so its
    /// node programs it. Servers outside the cluster are not held back.
    pub weight: i32,
    /// Set when the address is a cluster Node: that node's agent configures it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default = "default_true")]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_threshold: Option<i64>,
    /// For Service backends: the node-local endpoints that VIP traffic is DNATed to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<LocalEndpoint>,
    /// What the directors' probes found, all ports and directors together.
    /// Absent when none of the service's ports is checked (type none, or a
    /// UDP or SCTP port without a check port): such a server stays in
    /// rotation and counts as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<RealServerHealth>,
}

/// A real server's health as the directors see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RealServerHealth {
    /// Healthy when every director finds every port healthy, Unhealthy when
    /// any finds any port unhealthy, Unknown until probes have a verdict.
    pub state: HealthState,
    /// When the state last changed (RFC 3339), as the director that saw it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The failing probe in words, naming the director when directors disagree.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum HealthState {
    Healthy,
    Unhealthy,
    Unknown,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "Healthy",
            HealthState::Unhealthy => "Unhealthy",
            HealthState::Unknown => "Unknown",
        }
    }
}

/// One director's verdict on one real server port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbedServer {
    /// Real server address.
    pub address: String,
    /// The VIP port whose service the verdict weighs.
    pub port: i32,
    pub state: HealthState,
    /// When the state last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Why it is unhealthy: the failed probe that made it so, in words
    /// (kept while it stays unhealthy; empty otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

fn default_true() -> bool {
    true
}

/// A pod endpoint on the real server's node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalEndpoint {
    pub address: String,
    /// targetPort per VIP port, in the order of spec.ports.
    pub ports: Vec<i32>,
}

/// What a node's agent reports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node_name: String,
    /// director, backend, or both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<NodeRole>,
    /// The generation this node last programmed successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// True when the kernel holds what the observed generation asks for.
    pub programmed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Removed real servers still in IPVS at weight 0 while their
    /// connections end, as address:port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<String>,
    /// Directors: each checked real server port and its health.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<ProbedServer>,
    /// Directors: set when every checked server of a service is unhealthy
    /// and the director keeps sending to them anyway (fail open).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_open: bool,
    /// Directors in an election: whether this one holds the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub director_state: Option<DirectorState>,
    /// When directorState last changed (RFC 3339), by this node's clock: of
    /// two entries saying active, the later one is the current holder (the
    /// other node may be cut off and unable to report that it let go).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub director_since: Option<String>,
    /// Directors in an election: what this node hears on its segment that
    /// contradicts the election (another speaker using its virtual router
    /// id, or a second master).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_conflict: Option<ElectionConflict>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ElectionConflict {
    /// VirtualRouterIdClash or SplitBrain.
    pub reason: String,
    pub message: String,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DirectorState {
    /// VRRP master: holds the VIP and answers for it.
    Active,
    /// VRRP backup: IPVS programmed, no VIP.
    Standby,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Director,
    Backend,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn api_version_is_the_derived_one() {
        assert_eq!(VirtualService::group(&()), GROUP);
        assert_eq!(VirtualService::version(&()), VERSION);
        assert_eq!(VirtualService::api_version(&()), API_VERSION);
        assert_eq!(VirtualService::kind(&()), KIND);
    }
}
