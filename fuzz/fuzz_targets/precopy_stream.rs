//! The destination's check of a live migration's pre-copy round (`agent::lifecycle::precopy::
//! Verifier`, fed by `PUT /xapid/pool_migrate_memory`): the round's announced numbers from the
//! first bytes, then arbitrary bytes in arbitrary pieces. It may refuse, never panic; a round
//! it accepts has exactly the pages announced, and a round made by the sender is accepted.
#![no_main]

use agent::lifecycle::precopy::{round_chunks, Verifier, PAGE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let round = u32::from(data[0] % 8);
    let pages = u64::from(u16::from_le_bytes([data[1], data[2]])) % 64;
    let total = u64::from(u16::from_le_bytes([data[3], data[4]])).max(1);
    let piece = usize::from(data[5]).max(1) * 97;
    let rest = &data[12..];
    let mut v = Verifier::new(round, pages, total);
    let mut ok = true;
    for p in rest.chunks(piece) {
        if v.feed(p).is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        if let Ok(n) = v.finish() {
            assert_eq!(n, pages);
            assert_eq!(rest.len() as u64, pages * PAGE);
        }
    }
    // What a sender makes for these numbers is accepted.
    let mut good = Verifier::new(round, pages, total);
    for c in round_chunks(round, pages, total) {
        for p in c.chunks(piece) {
            good.feed(p).expect("a round made by the sender is accepted");
        }
    }
    assert_eq!(good.finish().expect("a whole round is accepted"), pages);
});
