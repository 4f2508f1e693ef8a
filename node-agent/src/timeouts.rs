//! How long the agent waits for the kernel: each rtnetlink call, each IPVS
//! request, write batch or dump, and each `nft` run. A call that takes
//! longer fails with an error naming it and the time waited, so one stuck
//! call cannot stall every later pass; the socket it used is replaced.

use std::time::Duration;

/// Sets the timeout in seconds (an environment variable, so that it reaches
/// every part of the agent however it was started).
pub const ENV: &str = "TUNLB_KERNEL_TIMEOUT_SECONDS";

/// Several times the slowest call seen in the lab's emulated (TCG) guest:
/// a dump of 10,000 IPVS services takes about 3.5 s there.
pub const DEFAULT: Duration = Duration::from_secs(30);

/// Parses a value of [`ENV`]: whole or fractional seconds, above zero.
pub fn parse(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{ENV}={value:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("{ENV}={value:?} must be above zero"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{ENV}={value:?}: {e}"))
}

/// The configured timeout, or [`DEFAULT`] when [`ENV`] is unset. The
/// commands check the value at start (see `main`), so an invalid one never
/// gets here; it would fall back to the default.
pub fn kernel() -> Duration {
    std::env::var(ENV)
        .ok()
        .and_then(|v| parse(&v).ok())
        .unwrap_or(DEFAULT)
}

/// The IPVS client's settings with [`kernel`] as its timeout.
pub fn ipvs_config() -> tunlb_ipvs::Config {
    tunlb_ipvs::Config {
        timeout: kernel(),
        ..tunlb_ipvs::Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seconds_and_refuses_the_rest() {
        assert_eq!(parse("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse(" 0.5 "), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "abc", "", "inf", "NaN"] {
            let e = parse(bad).err().unwrap_or_default();
            assert!(e.contains(ENV), "{bad}: {e}");
        }
    }
}
