//! The metrics service's readers of stats documents: `Rrd::from_xml` (the databases saved
//! under the state dir, rrdtool's XML dump) and `Updates::from_xml` (`/rrd_updates`' xport
//! form) on arbitrary bytes. Neither may panic; a database that reads must survive updates,
//! a query and an export, and its dump must read back to the same dump; a table that reads
//! must write back to XML that reads back equal.
#![no_main]

use agent::metrics::rrd::{Cf, Rrd, Sample, Transform};
use agent::metrics::updates::{export, Updates};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(mut rrd) = Rrd::from_xml(text) {
        let dump = rrd.to_xml(true);
        match Rrd::from_xml(&dump) {
            Ok(back) => assert_eq!(back.to_xml(true), dump, "the dump does not read back the same"),
            Err(e) => panic!("the dump of a database that read does not read: {e}"),
        }
        let _ = rrd.to_json();
        let names: Vec<String> = rrd.ds_names().map(str::to_owned).collect();
        let t = rrd.last_updated;
        for (k, step) in [1.0, 5.0, 400.0].iter().enumerate() {
            let vals: Vec<(&str, Sample, Transform)> = names
                .iter()
                .map(|n| (n.as_str(), Sample::Int(k as i64 * 1000), Transform::Inverse))
                .collect();
            rrd.update_named(t + step, &vals, k == 1);
        }
        for n in &names {
            let _ = rrd.query(t, n, Cf::Average);
        }
        let _ = export(&[("host:h:".to_owned(), &rrd)], -600, 60, None);
        let _ = export(&[("host:h:".to_owned(), &rrd)], 0, 0, Some(Cf::Max));
    }
    if let Ok(u) = Updates::from_xml(text) {
        let xml = u.to_xml();
        match Updates::from_xml(&xml) {
            Ok(back) => assert_eq!(back.to_xml(), xml, "the table does not read back the same"),
            Err(e) => panic!("the XML of a table that read does not read: {e}"),
        }
        let _ = u.to_json();
    }
});
