//! The reader of messages sent with a VM that moves to another pool (`PUT /messages`,
//! `agent::metrics::carry`). Nothing may panic; a run that reads, written out again, reads
//! back to the same messages (a class is read in any case, as the reference reads it, and
//! written in its own: `vM` comes back `VM`).
#![no_main]

use agent::metrics::carry::{messages_xml, parse_messages};
use agent::schema::enums::Cls;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(run) = parse_messages(text) else { return };
    let objects: Vec<_> = run
        .iter()
        .filter_map(|m| m.to_object("OpaqueRef:fuzz").map(Arc::new))
        .collect();
    let kept: Vec<_> = run.iter().filter(|m| m.to_object("OpaqueRef:fuzz").is_some()).collect();
    let written = messages_xml(&objects);
    let again = match parse_messages(&written) {
        Ok(a) => a,
        Err(e) => panic!("messages written out do not read: {e}\n{written}"),
    };
    assert_eq!(again.len(), kept.len());
    for (a, b) in again.iter().zip(kept) {
        let same = a.name == b.name
            && a.priority == b.priority
            && Cls::parse(&a.cls) == Cls::parse(&b.cls)
            && a.obj_uuid == b.obj_uuid
            && a.timestamp == b.timestamp
            && a.body == b.body
            && (b.uuid.is_empty() || a.uuid == b.uuid);
        assert!(same, "a message read back differently:\n{b:?}\n{a:?}");
    }
});
