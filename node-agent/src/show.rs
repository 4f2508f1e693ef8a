//! `tunlb-agent show`: the node's IPVS table in the familiar `ipvsadm -Ln`
//! layout (a tunnel destination also shows its encapsulation, which older
//! ipvsadm versions do not) and the connection-sync daemons, then the VIP addresses, GUE ports, the LVS-TUN
//! sysctls and tunlb's nft tables.

use std::fmt::Write as _;
use std::net::IpAddr;

use tunlb_api::plan::TunnelDevice;
use tunlb_ipvs::{
    Client, ForwardMethod, IP_VS_TUNNEL_ENCAP_FLAG_CSUM, IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM,
    ServiceKey, TunnelType,
};

use crate::dataplane::{nft, sysctl};
use crate::link::Links;

/// The encapsulation of a tunnel destination, e.g. `ipip`, `gue:6080 csum`.
fn tunnel_text(d: &tunlb_ipvs::Destination) -> String {
    let mut t = match d.tunnel_type {
        TunnelType::Ipip => "ipip".to_string(),
        TunnelType::Gue => format!("gue:{}", d.tunnel_port),
        TunnelType::Gre => "gre".to_string(),
    };
    if d.tunnel_flags & IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM != 0 {
        t.push_str(" remcsum");
    } else if d.tunnel_flags & IP_VS_TUNNEL_ENCAP_FLAG_CSUM != 0 {
        t.push_str(" csum");
    }
    t
}

fn addr_port(a: &IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn forward_name(f: ForwardMethod) -> &'static str {
    match f {
        ForwardMethod::Masq => "Masq",
        ForwardMethod::Local => "Local",
        ForwardMethod::Tunnel => "Tunnel",
        ForwardMethod::DirectRoute => "Route",
        ForwardMethod::Bypass => "Bypass",
    }
}

/// The IPVS table as `ipvsadm -Ln` prints it.
pub async fn ipvs_table(client: &Client) -> Result<String, tunlb_ipvs::Error> {
    let mut out = String::new();
    let info = client.info().await?;
    let (a, b, c) = info.version;
    let _ = writeln!(
        out,
        "IP Virtual Server version {a}.{b}.{c} (size={})",
        info.conn_tab_size
    );
    out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
    out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
    let mut services = client.services().await?;
    services.sort_by(|x, y| format!("{:?}", x.service.key).cmp(&format!("{:?}", y.service.key)));
    for entry in services {
        let s = &entry.service;
        let head = match &s.key {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => {
                let p = match protocol {
                    tunlb_ipvs::Protocol::Tcp => "TCP".to_string(),
                    tunlb_ipvs::Protocol::Udp => "UDP".to_string(),
                    tunlb_ipvs::Protocol::Sctp => "SCTP".to_string(),
                    tunlb_ipvs::Protocol::Other(n) => format!("P{n}"),
                };
                format!("{p:<4} {} {}", addr_port(addr, *port), s.scheduler)
            }
            ServiceKey::FwMark { mark, .. } => format!("FWM  {mark} {}", s.scheduler),
        };
        let mut line = head;
        if s.flags & 0x0001 != 0 {
            let _ = write!(line, " persistent {}", s.timeout);
        }
        if s.flags & 0x0004 != 0 {
            line.push_str(" ops");
        }
        let _ = writeln!(out, "{line}");
        let mut dests = client.destinations(&s.key).await?;
        dests.sort_by_key(|d| (d.dest.addr, d.dest.port));
        for d in dests {
            let tunnel = if d.dest.forward == ForwardMethod::Tunnel {
                tunnel_text(&d.dest)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10} {tunnel}",
                addr_port(&d.dest.addr, d.dest.port),
                forward_name(d.dest.forward),
                d.dest.weight,
                d.active_conns,
                d.inactive_conns
            );
        }
    }
    Ok(out)
}

/// Everything `show` prints.
pub async fn render(links: &Links) -> String {
    let mut out = String::new();
    match Client::connect_with(crate::timeouts::ipvs_config()).await {
        Ok(client) => {
            match ipvs_table(&client).await {
                Ok(t) => out.push_str(&t),
                Err(e) => {
                    let _ = writeln!(out, "IPVS: {e}");
                }
            }
            out.push_str("\nIPVS sync daemons:\n");
            match client.daemons().await {
                Ok(d) if d.is_empty() => out.push_str("  (none)\n"),
                Ok(daemons) => {
                    for d in daemons {
                        let _ = writeln!(out, "  {d}");
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "  {e}");
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "IPVS: {e}");
        }
    }
    out.push_str("\nVIP addresses (tunnel devices, and tunlb's elsewhere):\n");
    match links.interfaces().await {
        Ok(ifaces) => match links.addresses(&ifaces).await {
            Ok(addrs) => {
                for a in addrs
                    .iter()
                    .filter(|a| {
                        TunnelDevice::from_name(&a.interface).is_some() || a.is_tunlb_labelled()
                    })
                    .filter(|a| !matches!(a.address, IpAddr::V6(v6) if v6.is_unicast_link_local()))
                {
                    let _ = writeln!(
                        out,
                        "  {}/{} dev {}{}",
                        a.address,
                        a.prefix_len,
                        a.interface,
                        a.label
                            .as_deref()
                            .map(|l| format!(" label {l}"))
                            .unwrap_or_default()
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "  {e}");
            }
        },
        Err(e) => {
            let _ = writeln!(out, "  {e}");
        }
    }
    out.push_str("\nGUE ports:\n");
    match tunlb_ipvs::fou::FouClient::connect(crate::timeouts::kernel()).await {
        Ok(fou) => match fou.list().await {
            Ok(ports) if ports.is_empty() => out.push_str("  (none)\n"),
            Ok(ports) => {
                for p in ports {
                    let _ = writeln!(
                        out,
                        "  port {} {}{}",
                        p.port,
                        if p.ipv6 { "ipv6" } else { "ipv4" },
                        if p.gue { " gue" } else { " direct" }
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "  {e}");
            }
        },
        Err(tunlb_ipvs::Error::FamilyNotFound) => out.push_str("  (fou not loaded)\n"),
        Err(e) => {
            let _ = writeln!(out, "  {e}");
        }
    }
    out.push_str("\nsysctls:\n");
    for (name, _) in sysctl::every_setting(&Default::default()) {
        let v = sysctl::read(&name).unwrap_or_else(|_| "-".into());
        let _ = writeln!(out, "  {name} = {v}");
    }
    out.push_str("\nnftables (tunlb tables):\n");
    match nft::list().await {
        Ok(t) if t.is_empty() => out.push_str("  (none)\n"),
        Ok(t) => out.push_str(&t),
        Err(e) => {
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}
