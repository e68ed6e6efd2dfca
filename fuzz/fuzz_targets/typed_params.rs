//! Typed parameter conversion, as `agent::api::check` does it: a JSON-RPC body is decoded,
//! its method looked up in the schema (or, when the name is not a method, one of a few
//! chosen by the first byte), and each parameter after the session converted with
//! `agent::value::from_json` to the parameter's datamodel type. Converted values must hold
//! no duplicate set elements or map keys, must encode as valid JSON and XML-RPC, and, where
//! they hold no float or datetime, must convert back to the same value from their JSON form
//! (maps compared without regard to order).
#![no_main]

use agent::schema::{method, MethodRef};
use agent::value::{from_json, record_from_json, Value};
use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;
use xapid_fuzz::{as_method_call, check_typed_invariants, has_inexact, json_roundtrip, sort_maps};

/// Messages whose parameters cover records, maps, sets, enums, refs, ints, floats, bools
/// and datetimes.
const METHODS: &[&str] = &[
    "VM.create",
    "VM.add_to_other_config",
    "event.from",
    "VM.set_blocked_operations",
    "VM.set_HVM_shadow_multiplier",
    "VM.set_VCPUs_max",
    "VM.set_tags",
    "VM.start",
    "VM.set_actions_after_crash",
    "VM.get_all_records_where",
    "VDI.create",
    "network.create",
    "task.set_status",
    "message.create",
    "host.set_other_config",
    "session.login_with_password",
];

fuzz_target!(
    init: {
        for name in METHODS {
            assert!(method(name).is_some(), "{name} is not in the schema: update METHODS");
        }
    },
    |data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let Ok(req) = rpc::jsonrpc::decode(body) else {
        return;
    };
    let m: MethodRef = match method(&req.method) {
        Some(m) => m,
        None => match method(METHODS[usize::from(pick) % METHODS.len()]) {
            Some(m) => m,
            None => unreachable!("checked at init"),
        },
    };
    let defs = m.message.params;
    // Trailing parameters left out take their defaults, as in `agent::api::check`.
    let mut params = req.params;
    for d in defs.iter().skip(params.len()) {
        params.push(serde_json::from_str(d.default.unwrap_or("null")).unwrap_or(Json::Null));
    }
    let skip = usize::from(m.message.takes_session());
    for (def, p) in defs.iter().zip(params.iter()).skip(skip) {
        if let Json::Object(_) = p {
            // What the implicit constructor builds from its record argument.
            if let Ok(obj) = record_from_json(m.class, p, "OpaqueRef:fuzz") {
                check_typed_invariants(&Value::Record(std::sync::Arc::new(obj)));
            }
        }
        let Ok(v) = from_json(p, def.ty) else {
            continue;
        };
        check_typed_invariants(&v);
        let back = json_roundtrip(&v);
        let _ = as_method_call(&v);
        if !has_inexact(&v) {
            match from_json(&back, def.ty) {
                Ok(again) => assert_eq!(
                    sort_maps(&again),
                    sort_maps(&v),
                    "JSON round trip of a {:?} changed it",
                    def.ty
                ),
                Err(e) => panic!("a {:?} written as {back} does not convert back: {e}", def.ty),
            }
        }
    }
    }
);
