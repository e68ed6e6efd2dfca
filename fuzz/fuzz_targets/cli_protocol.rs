//! The thin CLI protocol's codec (`xe::protocol`), which both the daemon's `/cli` and the
//! `xe` client run on bytes from the other end: `decode_frame` walked over arbitrary bytes as
//! a stream of frames, and `parse_handshake` on them.
//!
//! Nothing may panic. A frame that decodes says how many bytes it used (at least its header,
//! at most what there was); its message written back out with `encode` decodes to the same
//! message, in exactly as many bytes; a handshake that parses began with the protocol's prefix
//! and gives back the two ints that follow it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xe::protocol::{decode_frame, decode_payload, encode, encode_payload, parse_handshake, PREFIX};

fuzz_target!(|data: &[u8]| {
    if let Ok((major, minor)) = parse_handshake(data) {
        assert!(data.starts_with(PREFIX));
        let rest = &data[PREFIX.len()..];
        assert_eq!(&rest[..4], major.to_le_bytes());
        assert_eq!(&rest[4..8], minor.to_le_bytes());
    }
    // The bytes as a payload on their own.
    if let Ok(m) = decode_payload(data) {
        assert_eq!(decode_payload(&encode_payload(&m)).ok(), Some(m));
    }
    // The bytes as a stream of frames.
    let mut pos = 0;
    while pos < data.len() {
        match decode_frame(&data[pos..]) {
            Ok(Some((m, used))) => {
                assert!(used >= 4 && used <= data.len() - pos, "used {used} of {}", data.len() - pos);
                let again = encode(&m);
                assert_eq!(decode_frame(&again), Ok(Some((m, again.len()))));
                pos += used;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
