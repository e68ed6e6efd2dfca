//! The reader of `other_config:perfmon` (performance alarm thresholds, which any client may
//! write): the document parser, its `minidom`-style pretty printer and the variables read for
//! each class of object. Nothing may panic; what the printer writes must read again; a
//! variable that reads must take values (NaN and infinities included) and consolidate any
//! sources.
#![no_main]

use agent::metrics::perfmon::{consolidate, Monitor};
use agent::metrics::perfmon_config::{parse, parse_document, Monitored};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(doc) = parse_document(text) {
        let pretty = doc.pretty();
        if let Err(e) = parse_document(&pretty) {
            panic!("the pretty form of a document that read does not read: {e}\n{pretty}");
        }
    }
    for class in [Monitored::Vm, Monitored::Host, Monitored::Sr] {
        let Ok(vars) = parse(class, text) else { continue };
        for v in &vars {
            let sources = [("cpu0", 0.5), ("physical_size", 10.0), ("physical_utilisation", f64::NAN)];
            let picked: Vec<(&str, f64)> = sources.iter().copied().filter(|(n, _)| v.rrd_regex.is_match(n)).collect();
            let _ = consolidate(v.consolidation, &picked);
        }
        let mut m = Monitor::new(class, text, 1.7e9);
        for w in &mut m.vars {
            for (k, x) in [f64::NAN, f64::INFINITY, -1.0, 0.0, 1e300].into_iter().enumerate() {
                let _ = w.update(x, 1.7e9 + 60.0 * k as f64);
            }
        }
    }
});
