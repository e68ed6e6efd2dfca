//! `rpc::jsonrpc::decode` on arbitrary bytes. When a body decodes, the replies built for it
//! (`success` echoing each parameter and the method name, `failure` with the method name and
//! the string parameters) must be valid JSON that carries the same id and text back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpc::jsonrpc::{decode, failure, success, Version};
use serde_json::Value as Json;
use xapid_fuzz::untyped;

fn parse(s: &str) -> Json {
    match serde_json::from_str(s) {
        Ok(j) => j,
        Err(e) => panic!("reply is not JSON ({e}): {s}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = decode(data) else {
        return;
    };
    let ok = parse(&success(
        req.version,
        &req.id,
        &agent::value::Value::str(req.method.as_str()),
    ));
    assert_eq!(ok["result"].as_str(), Some(req.method.as_str()));
    assert_eq!(ok["id"], req.id);
    for p in &req.params {
        let _ = parse(&success(req.version, &req.id, &untyped(p)));
    }
    let texts: Vec<String> = req
        .params
        .iter()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    let err = parse(&failure(req.version, &req.id, &req.method, &texts));
    assert_eq!(err["id"], req.id);
    let code = match req.version {
        Version::V2 => err["error"]["message"].clone(),
        Version::V1 => err["error"][0].clone(),
    };
    assert_eq!(code.as_str(), Some(req.method.as_str()));
});
