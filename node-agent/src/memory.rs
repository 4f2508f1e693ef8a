//! The process's memory, for the debug logs of long operations (at 10,000
//! services it tells which phase sets the peak).

/// (VmRSS, VmHWM): resident and peak resident set in kB; zeros where /proc
/// is unavailable.
pub fn resident_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `rss=..kB peak=..kB`, for a log field.
pub fn summary() -> String {
    let (rss, peak) = resident_kb();
    format!("rss={rss}kB peak={peak}kB")
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_resident_set() {
        let (rss, peak) = super::resident_kb();
        assert!(rss > 0 && peak >= rss, "{rss} {peak}");
    }
}
