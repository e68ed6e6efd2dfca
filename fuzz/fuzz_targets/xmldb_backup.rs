//! The reader of pool database backups (`PUT /pool/xmldbdump`): the document parser, the
//! values of each row read by their fields' types, and the writer. Nothing may panic; a
//! backup that reads must write out to text that reads back to the same backup.
#![no_main]

use agent::backup::xmldb::objects_of;
use agent::backup::xmldb_format::{parse, write};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(db) = parse(data) else { return };
    let text = write(&db);
    match parse(text.as_bytes()) {
        Ok(again) if again == db => {}
        Ok(again) => panic!("a backup written out reads back differently:\n{db:?}\n{again:?}"),
        Err(e) => panic!("a backup written out does not read: {e}\n{text}"),
    }
    let _ = objects_of(&db);
});
