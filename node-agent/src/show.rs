//! `tunlb-agent show`: the node's IPVS table in the familiar `ipvsadm -Ln`
//! layout, then tunl0 addresses, the LVS-TUN sysctls and tunlb's nft tables.

use std::fmt::Write as _;
use std::net::IpAddr;

use tunlb_ipvs::{Client, ForwardMethod, ServiceKey};

use crate::dataplane::{nft, sysctl};
use crate::link::{Links, TUNL0};

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
            let _ = writeln!(
                out,
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10}",
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
        Ok(client) => match ipvs_table(&client).await {
            Ok(t) => out.push_str(&t),
            Err(e) => {
                let _ = writeln!(out, "IPVS: {e}");
            }
        },
        Err(e) => {
            let _ = writeln!(out, "IPVS: {e}");
        }
    }
    out.push_str("\ntunl0 addresses:\n");
    match links.interfaces().await {
        Ok(ifaces) => match links.addresses(&ifaces).await {
            Ok(addrs) => {
                for a in addrs
                    .iter()
                    .filter(|a| a.interface == TUNL0 || a.is_tunlb_labelled())
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
    out.push_str("\nsysctls:\n");
    for (name, _) in sysctl::backend_settings() {
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
