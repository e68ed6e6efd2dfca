//! Host facts that Xen's hypercalls do not give: CPU identification from
//! dom0's `/proc/cpuinfo`, and the hostname.

use super::super::CpuInfo;

/// CPU identification parsed from `/proc/cpuinfo` text (first processor
/// block). `count` and `speed_mhz` come from `xc_physinfo`; they are
/// filled in by the caller.
pub(super) fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut cpu = CpuInfo {
        count: 0,
        vendor: String::new(),
        model_name: String::new(),
        speed_mhz: 0.0,
        flags: Vec::new(),
        family: 0,
        model: 0,
        stepping: 0,
    };
    for line in text.lines() {
        if line.trim().is_empty() && !cpu.vendor.is_empty() {
            break; // end of the first processor's block
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "vendor_id" => cpu.vendor = value.to_string(),
            "model name" => cpu.model_name = value.to_string(),
            "cpu family" => cpu.family = value.parse().unwrap_or(0),
            "model" => cpu.model = value.parse().unwrap_or(0),
            "stepping" => cpu.stepping = value.parse().unwrap_or(0),
            "cpu MHz" => cpu.speed_mhz = value.parse().unwrap_or(0.0),
            "flags" => cpu.flags = value.split_whitespace().map(str::to_string).collect(),
            _ => {}
        }
    }
    cpu
}

/// dom0's CPU identification (empty fields if `/proc/cpuinfo` is unreadable).
pub(super) fn local_cpu() -> CpuInfo {
    parse_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

/// The host's name (dom0's hostname), `localhost` if unknown.
pub(super) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
