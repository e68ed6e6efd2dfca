//! The small parsers of the metrics service: the `Accept` header the stats paths choose XML or
//! JSON by, and the readers of `/proc/stat`, `/proc/meminfo`, `/proc/loadavg` and `/sys`
//! counters, and of the RRD files' floats. None may panic on any input; a float the stats
//! documents write must read back to itself.
#![no_main]

use agent::metrics::fmt::{float, parse_float};
use agent::metrics::http::client_prefers_json;
use agent::metrics::procfs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = client_prefers_json(Some(&text), false);
    let _ = client_prefers_json(Some(&text), true);
    let _ = procfs::parse_stat_idle(&text);
    let _ = procfs::parse_kib_field(&text, "MemAvailable");
    let _ = procfs::parse_loadavg(&text);
    let _ = procfs::parse_counter(&text);
    if let Some(f) = parse_float(&text) {
        let back = parse_float(&float(f));
        match back {
            Some(b) if f.is_nan() => assert!(b.is_nan()),
            // 15 significant digits: equal within a relative 1e-14.
            Some(b) => assert!(
                b == f
                    || (b - f).abs() <= f.abs() * 1e-14
                    // Subnormals keep fewer digits; the largest floats round up to infinity.
                    || f.abs() < 1e-300
                    || (b.is_infinite() && f.abs() > 1e308),
                "{f:e} wrote as {} read back as {b:e}",
                float(f)
            ),
            None => panic!("{f:e} wrote as {} which does not read", float(f)),
        }
    }
});
