//! Long-lived TCP connections for the lab: an echo server, and a client that
//! keeps many connections open and sends a line on each periodically, to
//! see which connections survive a director failover.
//!
//! usage: tcp-hold serve PORT
//!        tcp-hold hold ADDR:PORT COUNT INTERVAL_MS STATUS_FILE
//!
//! The client writes STATUS_FILE (replaced atomically) every 100 ms:
//!   open=N alive=A reset=R timeout=T replies=K max_gap_ms=G
//!   ports=P1,P2,...
//! `reset` counts connections that ended in an error or EOF (a director
//! without the connection answers with a reset); `timeout` those with no
//! answer for 10 s; `max_gap_ms` is the longest wait for an answer on any
//! connection; `ports` are the client's local ports, as IPVS lists them.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn serve(port: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).context("bind")?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let Ok(mut out) = stream.try_clone() else {
                return;
            };
            let mut lines = BufReader::new(stream);
            let mut line = String::new();
            while matches!(lines.read_line(&mut line), Ok(n) if n > 0) {
                if out.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
        });
    }
    Ok(())
}

#[derive(Default)]
struct Counters {
    alive: AtomicU64,
    reset: AtomicU64,
    timeout: AtomicU64,
    replies: AtomicU64,
    max_gap_ms: AtomicU64,
}

/// One connection: a line every `interval`, its echo awaited each time.
fn keep(stream: TcpStream, interval: Duration, c: &Counters) {
    let outcome = (|| -> std::io::Result<()> {
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut out = stream.try_clone()?;
        let mut lines = BufReader::new(stream);
        let mut line = String::new();
        for seq in 0u64.. {
            let sent = Instant::now();
            out.write_all(format!("ping {seq}\n").as_bytes())?;
            line.clear();
            if lines.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let gap = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
            c.max_gap_ms.fetch_max(gap, Ordering::Relaxed);
            c.replies.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(interval);
        }
        Ok(())
    })();
    c.alive.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            c.timeout.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            c.reset.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn hold(addr: &str, count: &str, interval_ms: &str, status: &str) -> anyhow::Result<()> {
    let count: u64 = count.parse().context("COUNT")?;
    let interval = Duration::from_millis(interval_ms.parse().context("INTERVAL_MS")?);
    let counters = Arc::new(Counters::default());
    let mut ports = Vec::new();
    for _ in 0..count {
        let stream =
            TcpStream::connect_timeout(&addr.parse().context("ADDR:PORT")?, Duration::from_secs(5))
                .with_context(|| format!("connect to {addr}"))?;
        ports.push(stream.local_addr()?.port().to_string());
        counters.alive.fetch_add(1, Ordering::Relaxed);
        let c = counters.clone();
        std::thread::spawn(move || keep(stream, interval, &c));
    }
    let ports = ports.join(",");
    let tmp = format!("{status}.tmp");
    loop {
        let c = &counters;
        let text = format!(
            "open={count} alive={} reset={} timeout={} replies={} max_gap_ms={}\nports={ports}\n",
            c.alive.load(Ordering::Relaxed),
            c.reset.load(Ordering::Relaxed),
            c.timeout.load(Ordering::Relaxed),
            c.replies.load(Ordering::Relaxed),
            c.max_gap_ms.load(Ordering::Relaxed),
        );
        std::fs::write(&tmp, text).context("write status")?;
        std::fs::rename(&tmp, status).context("write status")?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", port] => serve(port)?,
        ["hold", addr, count, interval, status] => hold(addr, count, interval, status)?,
        _ => bail!(
            "usage: tcp-hold serve PORT | tcp-hold hold ADDR:PORT COUNT INTERVAL_MS STATUS_FILE"
        ),
    }
    Ok(ExitCode::SUCCESS)
}
