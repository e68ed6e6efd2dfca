//! `rpc::xmlrpc::decode_call` on arbitrary bytes. When a body decodes, every parameter is
//! written back with the daemon's own encoder (`agent::xml::write_value`, which `success`
//! uses) and decoded again: it must come back as the same tree (ints as strings, as XenAPI
//! sends them). `success`, `failure` and `bare` must not panic on any decoded text.
#![no_main]

use agent::value::Value;
use libfuzzer_sys::fuzz_target;
use rpc::xmlrpc::{bare, decode_call, failure, success};
use xapid_fuzz::{as_method_call, untyped, xml_roundtrip_expectation};

fuzz_target!(|data: &[u8]| {
    let Ok(call) = decode_call(data) else {
        return;
    };
    let _ = success(&Value::str(call.method.as_str()));
    let texts: Vec<String> = call
        .params
        .iter()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    let _ = failure(&call.method, &texts);
    for p in &call.params {
        let v = untyped(p);
        let _ = success(&v);
        let _ = bare(&v);
        let again = as_method_call(&v);
        match decode_call(again.as_bytes()) {
            Ok(c) => assert_eq!(
                c.params,
                vec![xml_roundtrip_expectation(p)],
                "XML round trip changed a value; re-encoded as {again}"
            ),
            Err(e) => panic!("the daemon's own encoding does not decode ({e}): {again}"),
        }
    }
});
