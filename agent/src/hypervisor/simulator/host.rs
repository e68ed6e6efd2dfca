//! Default host facts for the simulator, read from this machine's `/proc`.

use std::fs;

use crate::hypervisor::types::CpuInfo;

/// Parses `/proc/cpuinfo` text. Understands the x86 layout and falls back to
/// the Arm field names; missing fields become empty/zero. `count` is the
/// number of `processor` stanzas (at least 1).
pub(super) fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut count = 0u32;
    let mut first: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        if key == "processor" {
            count += 1;
        }
        if count <= 1 {
            first.push((key.to_string(), value.to_string()));
        }
    }
    let get = |names: &[&str]| -> Option<String> {
        names
            .iter()
            .find_map(|n| first.iter().find(|(k, _)| k.as_str() == *n).map(|(_, v)| v.clone()))
    };
    let num = |names: &[&str]| -> u32 {
        get(names)
            .and_then(|v| {
                let v = v.trim();
                match v.strip_prefix("0x") {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => v.parse().ok(),
                }
            })
            .unwrap_or(0)
    };
    CpuInfo {
        count: count.max(1),
        vendor: get(&["vendor_id", "CPU implementer"]).unwrap_or_else(|| "unknown".into()),
        model_name: get(&["model name", "Processor", "Hardware"]).unwrap_or_else(|| "unknown".into()),
        speed_mhz: get(&["cpu MHz"]).and_then(|v| v.parse().ok()).unwrap_or(0.0),
        flags: get(&["flags", "Features"])
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        family: num(&["cpu family", "CPU architecture"]),
        model: num(&["model", "CPU part"]),
        stepping: num(&["stepping", "CPU revision"]),
    }
}

/// `MemTotal` from `/proc/meminfo` text, in bytes.
pub(super) fn parse_mem_total(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// This machine's CPUs; falls back to `available_parallelism` if
/// `/proc/cpuinfo` is unreadable.
pub(super) fn local_cpu() -> CpuInfo {
    match fs::read_to_string("/proc/cpuinfo") {
        Ok(text) => parse_cpuinfo(&text),
        Err(_) => CpuInfo {
            count: std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1),
            vendor: "unknown".into(),
            model_name: "unknown".into(),
            speed_mhz: 0.0,
            flags: Vec::new(),
            family: 0,
            model: 0,
            stepping: 0,
        },
    }
}

/// This machine's memory in bytes (4 GiB if unknown).
pub(super) fn local_memory() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_mem_total(&t))
        .unwrap_or(4 << 30)
}

/// This machine's hostname (`localhost` if unknown).
pub(super) fn local_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A plausible dom0 size for a host with `total` bytes: an eighth of the
/// host, at least 512 MiB, at most 4 GiB, never more than half the host.
pub(super) fn default_dom0_memory(total: u64) -> u64 {
    let mib = 1024 * 1024;
    (total / 8).clamp(512 * mib, 4096 * mib).min(total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n\
model name\t: Intel(R) Xeon(R) Processor\nstepping\t: 2\ncpu MHz\t\t: 2300.000\n\
flags\t\t: fpu vme de\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nmodel\t\t: 99\n";

    const ARM: &str = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\n\
CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n";

    #[test]
    fn parses_x86_cpuinfo() {
        let c = parse_cpuinfo(X86);
        assert_eq!(c.count, 2);
        assert_eq!(c.vendor, "GenuineIntel");
        assert_eq!(c.model_name, "Intel(R) Xeon(R) Processor");
        assert_eq!((c.family, c.model, c.stepping), (6, 207, 2));
        assert!((c.speed_mhz - 2300.0).abs() < f64::EPSILON);
        assert_eq!(c.flags, vec!["fpu", "vme", "de"]);
    }

    #[test]
    fn parses_arm_cpuinfo() {
        let c = parse_cpuinfo(ARM);
        assert_eq!(c.count, 1);
        assert_eq!(c.vendor, "0x41");
        assert_eq!((c.family, c.model, c.stepping), (8, 0xd0c, 1));
        assert_eq!(c.flags.len(), 3);
    }

    #[test]
    fn parses_meminfo_and_sizes_dom0() {
        assert_eq!(
            parse_mem_total("MemTotal:       24684096 kB\nMemFree: 1 kB\n"),
            Some(24684096 * 1024)
        );
        assert_eq!(parse_mem_total("nothing"), None);
        let gib = 1u64 << 30;
        assert_eq!(default_dom0_memory(24 * gib), 3 * gib);
        assert_eq!(default_dom0_memory(64 * gib), 4 * gib);
        assert_eq!(default_dom0_memory(gib / 2), gib / 4);
    }

    #[test]
    fn local_facts_are_sane() {
        assert!(local_cpu().count >= 1);
        assert!(local_memory() > 0);
        assert!(!local_hostname().is_empty());
    }
}
