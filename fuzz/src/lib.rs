//! Helpers shared by the fuzz targets: oracles that check what the decoders produce can be
//! written back out and read in again.

use agent::value::{write_json, Value};
use agent::xml::write_value;
use serde_json::Value as Json;
use std::collections::HashSet;

/// The untyped value a decoded parameter would become if a handler echoed it back.
pub fn untyped(j: &Json) -> Value {
    match j {
        Json::Null => Value::None,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Value::str(s.as_str()),
        Json::Array(a) => Value::Set(a.iter().map(untyped).collect()),
        Json::Object(m) => Value::Struct(m.iter().map(|(k, v)| (k.clone(), untyped(v))).collect()),
    }
}

/// What the XML-RPC decoder must give back for `untyped(j)` written with `write_value`:
/// XenAPI sends ints as bare strings, `nil`/void as an empty `<value>`.
pub fn xml_roundtrip_expectation(j: &Json) -> Json {
    match j {
        Json::Null => Json::String(String::new()),
        Json::Number(n) if n.as_i64().is_some() => Json::String(n.to_string()),
        Json::Array(a) => Json::Array(a.iter().map(xml_roundtrip_expectation).collect()),
        Json::Object(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), xml_roundtrip_expectation(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `v` as the single parameter of a method call, in the daemon's own XML encoding.
pub fn as_method_call(v: &Value) -> String {
    let mut s = String::from("<methodCall><methodName>m</methodName><params><param>");
    write_value(v, &mut s);
    s.push_str("</param></params></methodCall>");
    s
}

/// `v` in the daemon's JSON encoding, parsed back.
pub fn json_roundtrip(v: &Value) -> Json {
    let mut s = String::new();
    write_json(v, &mut s);
    match serde_json::from_str(&s) {
        Ok(j) => j,
        Err(e) => panic!("write_json produced invalid JSON ({e}): {s}"),
    }
}

/// Whether a typed value holds a float or a datetime anywhere (their text forms are not exact).
pub fn has_inexact(v: &Value) -> bool {
    match v {
        Value::Float(_) | Value::DateTime(_) => true,
        Value::Set(items) => items.iter().any(has_inexact),
        Value::Map(pairs) => pairs.iter().any(|(k, v)| has_inexact(k) || has_inexact(v)),
        Value::Struct(m) => m.iter().any(|(_, v)| has_inexact(v)),
        Value::Record(o) => o.fields.iter().any(has_inexact),
        _ => false,
    }
}

/// `v` with every map's entries sorted by key: maps are unordered, and JSON objects come back
/// from serde_json sorted by their wire keys, which typing may have changed (`"Start"` is
/// the enum value `start`).
pub fn sort_maps(v: &Value) -> Value {
    match v {
        Value::Set(items) => Value::Set(items.iter().map(sort_maps).collect()),
        Value::Map(pairs) => {
            let mut pairs: Vec<(Value, Value)> = pairs.iter().map(|(k, v)| (sort_maps(k), sort_maps(v))).collect();
            pairs.sort_by_key(|(k, _)| k.key_text());
            Value::Map(pairs.into())
        }
        Value::Struct(m) => Value::Struct(m.iter().map(|(k, v)| (k.clone(), sort_maps(v))).collect()),
        Value::Record(o) => {
            let mut o = (**o).clone();
            o.fields = o.fields.iter().map(sort_maps).collect();
            Value::Record(std::sync::Arc::new(o))
        }
        other => other.clone(),
    }
}

/// Checks the invariants of a typed value: sets hold no duplicates, maps no duplicate keys.
/// Runs in about linear time (by the JSON text of elements and the key text of keys), so a
/// large input that is slow is slow in the code under test, not here.
pub fn check_typed_invariants(v: &Value) {
    match v {
        Value::Set(items) => {
            if items.iter().any(has_inexact) {
                // Floats: NaN has one text but is unequal to itself; compare as values.
                for (i, a) in items.iter().enumerate() {
                    assert!(!items[..i].contains(a), "set with a duplicate element {a:?}");
                }
            } else {
                let mut seen = HashSet::with_capacity(items.len());
                for a in items.iter() {
                    let mut text = String::new();
                    write_json(a, &mut text);
                    assert!(seen.insert(text), "set with a duplicate element {a:?}");
                }
            }
            items.iter().for_each(check_typed_invariants);
        }
        Value::Map(pairs) => {
            let mut seen = HashSet::with_capacity(pairs.len());
            for (k, val) in pairs.iter() {
                let text = match k {
                    Value::Float(_) => format!("{k:?}"),
                    _ => k.key_text(),
                };
                assert!(seen.insert(text), "map with a duplicate key {k:?}: {pairs:?}");
                check_typed_invariants(val);
            }
        }
        Value::Record(o) => o.fields.iter().for_each(check_typed_invariants),
        Value::Struct(m) => m.iter().for_each(|(_, v)| check_typed_invariants(v)),
        _ => {}
    }
}
