//! What the Xen backend reads back from pygrub, whose output comes from the guest's own boot
//! configuration: `agent::hypervisor::xen::bootloader::parse_simple0` on arbitrary bytes (the
//! `--output-format=simple0` answer) and `failure_reason` on arbitrary stderr text.
//!
//! Neither may panic. An answer that parses names a non-empty kernel, and written back out in
//! the same format (kernel, then ramdisk and args when present, then the empty record) it
//! parses to the same entry.
#![no_main]

use agent::hypervisor::xen::bootloader::{failure_reason, parse_simple0, BootEntry};
use libfuzzer_sys::fuzz_target;

/// `e` in pygrub's `simple0` format.
fn simple0(e: &BootEntry) -> Vec<u8> {
    let mut out = Vec::new();
    let mut record = |key: &str, value: &str| {
        out.extend_from_slice(key.as_bytes());
        out.push(b' ');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    };
    // Parsed from UTF-8 records, so the paths are UTF-8.
    record("kernel", &e.kernel.to_string_lossy());
    if let Some(r) = &e.ramdisk {
        record("ramdisk", &r.to_string_lossy());
    }
    if !e.args.is_empty() {
        record("args", &e.args);
    }
    out.push(0);
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = parse_simple0(data) {
        assert!(!entry.kernel.as_os_str().is_empty(), "{entry:?}");
        match parse_simple0(&simple0(&entry)) {
            Ok(again) => assert_eq!(again, entry),
            Err(e) => panic!("{entry:?} written back does not parse: {e}"),
        }
    }
    let reason = failure_reason(&String::from_utf8_lossy(data), "exit status: 1");
    assert!(!reason.trim().is_empty(), "an empty reason for {data:?}");
});
