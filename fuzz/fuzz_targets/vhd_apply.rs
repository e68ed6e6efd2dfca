//! The VHD reader of `/import_raw_vdi?format=vhd`: any bytes applied onto a 16 MiB in-memory
//! disk. Must never panic, and must never write outside the disk.
#![no_main]
use agent::backup::vhd::{apply, block_on_ready, MemTarget, SliceSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut disk = MemTarget(vec![0u8; 16 << 20]);
    let r = block_on_ready(apply(&mut SliceSource(data), &mut disk));
    assert!(r.is_some(), "in-memory I/O never waits");
    assert_eq!(disk.0.len(), 16 << 20);
});
