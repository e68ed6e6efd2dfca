//! The header of a Xen suspend image, which `resume_from` reads back from the suspend VDI's
//! file before handing the rest to libxenguest:
//! `agent::hypervisor::xen::saverestore::ImageHeader::decode` on arbitrary bytes.
//!
//! It may not panic. A header that decodes ends within the input, and encoded again it
//! decodes to the same header and length.
#![no_main]

use agent::hypervisor::xen::saverestore::ImageHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, len)) = ImageHeader::decode(data) {
        assert!(len <= data.len(), "{len} > {}", data.len());
        let bytes = match header.encode() {
            Ok(b) => b,
            Err(e) => panic!("{header:?} does not encode: {e}"),
        };
        match ImageHeader::decode(&bytes) {
            Ok((again, n)) => {
                assert_eq!(again, header);
                assert_eq!(n, bytes.len());
            }
            Err(e) => panic!("{header:?} encoded does not decode: {e}"),
        }
    }
});
