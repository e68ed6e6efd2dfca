//! The XVA reader: any bytes as an uploaded archive (plain, gzip or zstd by magic), and as a
//! disk's tar stream (`/import_raw_vdi?format=tar`: chunks alone), and the ova.xml parser on
//! whatever the archive's first member holds. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut items = 0usize;
    let _ = agent::backup::xva_read::read(data, false, &mut |item| {
        if let agent::backup::xva_read::Item::OvaXml(s) = &item {
            let _ = agent::backup::ova_xml::parse(s);
        }
        items += 1;
        items < 4096
    });
    let mut chunks = 0usize;
    let _ = agent::backup::xva_read::read_chunks(data, false, &mut |_| {
        chunks += 1;
        chunks < 4096
    });
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = agent::backup::ova_xml::parse(s);
    }
});
