//! How the operator's and the agents' watches retry after the API server
//! goes away.

use std::time::Duration;

use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;

/// The longest wait between two attempts to reach the API server.
///
/// kube-runtime's default (client-go's) grows to 30 s. After an API server
/// restart the first attempt usually meets "resource version too old" and
/// relists only after one more delay, so a 30 s cap makes a change made just
/// after the restart wait about a minute. At 5 s, with jitter, a fleet of
/// agents retries at most once per 5 s per watch while the server is down.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// The retry policy of every watch: 200 ms doubling up to
/// [`MAX_RETRY_DELAY`], with jitter, reset after two minutes without errors.
pub fn backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(MAX_RETRY_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(exponential.into(), Duration::from_secs(120))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_cap_and_never_end() {
        let delays: Vec<Duration> = backoff().take(50).collect();
        assert_eq!(delays.len(), 50);
        assert!(delays.iter().all(|d| *d <= MAX_RETRY_DELAY * 2));
        assert!(delays.iter().skip(10).all(|d| *d >= MAX_RETRY_DELAY));
    }
}
