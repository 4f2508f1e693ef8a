//! A client probe loop for failover tests: one HTTP GET through a new TCP
//! connection every INTERVAL_MS, each with TIMEOUT_MS to connect and answer,
//! until STOP_FILE exists. One process for the whole loop, so the probe rate
//! does not depend on how fast the guest starts programs.
//!
//! usage: probe-loop ADDR:PORT INTERVAL_MS TIMEOUT_MS STOP_FILE
//!
//! Prints one line per probe, `<ms since start> <answer body or ERR:reason>`,
//! then a summary line:
//!   probes=N answered=A failed=F longest_gap_ms=G
//! where the longest gap is the time between two answered probes furthest
//! apart: the outage clients saw, to within one interval.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

fn probe(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect:{e}"))?;
    let left = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    write!(
        s,
        "GET / HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write:{e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("read:{e}"))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    if body.is_empty() {
        return Err("empty".into());
    }
    Ok(body)
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let [addr, interval, timeout, stop] = args else {
        anyhow::bail!("usage: probe-loop ADDR:PORT INTERVAL_MS TIMEOUT_MS STOP_FILE");
    };
    let addr: SocketAddr = addr.parse().context("ADDR:PORT")?;
    let interval = Duration::from_millis(interval.parse().context("INTERVAL_MS")?);
    let timeout = Duration::from_millis(timeout.parse().context("TIMEOUT_MS")?);
    let stop = Path::new(stop);
    let start = Instant::now();
    let (mut probes, mut answered) = (0u64, 0u64);
    let mut last_answer: Option<Duration> = None;
    let mut longest = Duration::ZERO;
    let out = std::io::stdout();
    let mut out = out.lock();
    while !stop.exists() {
        let at = start.elapsed();
        let result = probe(addr, timeout);
        let done = start.elapsed();
        probes += 1;
        match &result {
            Ok(body) => {
                answered += 1;
                if let Some(prev) = last_answer {
                    longest = longest.max(done - prev);
                }
                last_answer = Some(done);
                writeln!(out, "{} {body}", done.as_millis())?;
            }
            Err(e) => writeln!(out, "{} ERR:{e}", done.as_millis())?,
        }
        out.flush()?;
        let next = at + interval;
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    writeln!(
        out,
        "probes={probes} answered={answered} failed={} longest_gap_ms={}",
        probes - answered,
        longest.as_millis()
    )?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probe-loop: {e:#}");
            ExitCode::from(2)
        }
    }
}
