//! The process's peak memory, for the debug logs of long operations (at
//! 10,000 services it tells which phase sets the peak).

/// VmHWM (peak resident set) in kB; 0 where /proc is unavailable.
pub fn peak_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_peak() {
        assert!(super::peak_kb() > 0);
    }
}
