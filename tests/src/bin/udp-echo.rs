//! A UDP server and client for the lab, which has no UDP tool of its own.
//!
//! usage: udp-echo serve ADDR:PORT REPLY    answer every datagram with REPLY
//!        udp-echo ask ADDR:PORT [SECONDS]  send one datagram, print the answer
//!
//! The server answers with a plain `send_to`: bound to the VIP, the answer
//! leaves from the VIP; bound to the wildcard address, the kernel picks the
//! node's own address as the source, which is how a UDP server that ignores
//! IP_PKTINFO behaves behind LVS-TUN.

use std::net::UdpSocket;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", addr, reply] => {
            let sock = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
            let mut buf = [0u8; 1500];
            loop {
                let (_, peer) = sock.recv_from(&mut buf).context("receive")?;
                sock.send_to(reply.as_bytes(), peer)
                    .with_context(|| format!("answer {peer}"))?;
            }
        }
        ["ask", addr, rest @ ..] => {
            let secs: u64 = match rest {
                [] => 2,
                [s] => s.parse().with_context(|| format!("seconds: {s}"))?,
                _ => bail!("usage: udp-echo ask ADDR:PORT [SECONDS]"),
            };
            let bind = if addr.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let sock = UdpSocket::bind(bind).context("bind")?;
            // connect(): only an answer from ADDR itself is accepted, as a
            // client's connected socket or resolver would.
            sock.connect(addr)
                .with_context(|| format!("connect {addr}"))?;
            sock.set_read_timeout(Some(Duration::from_secs(secs)))?;
            sock.send(b"ask").context("send")?;
            let mut buf = [0u8; 1500];
            match sock.recv(&mut buf) {
                Ok(n) => {
                    println!("{}", String::from_utf8_lossy(&buf[..n]));
                    Ok(ExitCode::SUCCESS)
                }
                Err(_) => {
                    println!("NO-ANSWER");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        _ => bail!("usage: udp-echo serve ADDR:PORT REPLY | udp-echo ask ADDR:PORT [SECONDS]"),
    }
}
