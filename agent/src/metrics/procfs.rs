//! Readers of the kernel's figures the host's data sources come from: `/proc/stat`,
//! `/proc/meminfo`, `/proc/loadavg`, `/proc/self/status` and the counters under `/sys`.
//! The parsers take text and never fail on odd input: what they cannot read, they leave out.

use std::path::Path;

/// Per-CPU idle time from `/proc/stat`: `(cpu number, idle ticks)`, where idle counts the
/// `idle` and `iowait` columns (time the CPU ran nothing).
pub fn parse_stat_idle(text: &str) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(name) = it.next() else { continue };
        let Some(n) = name.strip_prefix("cpu").and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        let cols: Vec<u64> = it.map_while(|c| c.parse::<u64>().ok()).collect();
        let (Some(idle), iowait) = (cols.get(3), cols.get(4)) else {
            continue;
        };
        out.push((n, idle.saturating_add(iowait.copied().unwrap_or(0))));
    }
    out
}

/// A field of `/proc/meminfo` (or `/proc/self/status`) in KiB: `MemAvailable`, `VmRSS`.
pub fn parse_kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim() != field {
            return None;
        }
        let mut it = v.split_ascii_whitespace();
        let n = it.next()?.parse::<u64>().ok()?;
        match it.next() {
            None | Some("kB") => Some(n),
            Some(_) => None,
        }
    })
}

/// The one-minute load average, the first field of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_ascii_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
}

/// An integer counter file (`/sys/.../statistics/rx_bytes`).
pub fn parse_counter(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Reads a file as text; `None` if it cannot be read.
pub fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Reads a counter file.
pub fn counter(path: &Path) -> Option<u64> {
    read(path).as_deref().and_then(parse_counter)
}

/// Clock ticks per second of `/proc/stat`.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// How many file descriptors this process holds.
pub fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_meminfo_loadavg() {
        let stat = "cpu  100 0 50 1000 20 0 0 0 0 0\ncpu0 50 0 25 500 10 0 0 0 0 0\ncpu1 50 0 25 500 10 0 0 0\ncpuX 1 2\ncpu2 1 2\nintr 5\n";
        assert_eq!(parse_stat_idle(stat), vec![(0, 510), (1, 510)]);
        assert!(parse_stat_idle("").is_empty());
        let mi =
            "MemTotal:       16303920 kB\nMemFree:         1234 kB\nMemAvailable:    9999 kB\nHugePages_Total: 0\n";
        assert_eq!(parse_kib_field(mi, "MemAvailable"), Some(9999));
        assert_eq!(parse_kib_field(mi, "MemTotal"), Some(16303920));
        assert_eq!(parse_kib_field(mi, "HugePages_Total"), Some(0));
        assert_eq!(parse_kib_field(mi, "Nope"), None);
        assert_eq!(parse_kib_field("VmRSS:\t  5120 kB\n", "VmRSS"), Some(5120));
        assert_eq!(parse_kib_field("VmRSS: 5 MB\n", "VmRSS"), None);
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/467 12345\n"), Some(0.52));
        assert_eq!(parse_loadavg("nan 1 1"), None);
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_counter(" 42\n"), Some(42));
        assert_eq!(parse_counter("-1"), None);
        assert!(ticks_per_second() > 0.0);
        assert!(open_fds().unwrap_or(0) > 0);
    }
}
