//! The qcow2 reader of `/import_raw_vdi?format=qcow2`: any bytes as a spooled image, mapped
//! (header, L1, L2) and applied onto a 16 MiB in-memory disk. Must never panic, and must never
//! write outside the disk.
#![no_main]
use agent::backup::qcow2::{apply, map};
use agent::backup::vhd::{block_on_ready, MemTarget};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = map(data, data.len() as u64) {
        let mut disk = MemTarget(vec![0u8; 16 << 20]);
        let r = block_on_ready(apply(data, &m, &mut disk));
        assert!(r.is_some(), "in-memory I/O never waits");
        assert_eq!(disk.0.len(), 16 << 20);
    }
});
