//! Typed XenAPI values and objects, and their conversion from and to the untyped JSON tree
//! that both wire codecs and the store speak.

use crate::schema::{ClassId, FieldId, Ty};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value as Json;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

/// The null reference.
pub const NULL_REF: &str = "OpaqueRef:NULL";

/// A typed value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Text.
    String(Arc<str>),
    /// 64-bit integer (a string in XML-RPC, as the reference sends int64).
    Int(i64),
    /// A 32-bit integer the reference sends as a real XML-RPC `<int>` (e.g. event counts).
    Int32(i32),
    /// Double.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// Seconds since the Unix epoch, UTC.
    DateTime(i64),
    /// `OpaqueRef:…`.
    Ref(Arc<str>),
    /// An enum value in canonical spelling.
    Enum(&'static str),
    /// A set.
    Set(Arc<[Value]>),
    /// A map, in insertion order.
    Map(Arc<[(Value, Value)]>),
    /// A whole record.
    Record(Arc<Object>),
    /// An ad-hoc struct (event batches, events).
    Struct(Box<[(String, Value)]>),
    /// An absent optional value, or `void`.
    None,
    /// A value whose wire forms are encoded once and shared by every reply that carries it.
    Shared(Arc<Shared>),
}

// Three words: text, sets and maps are shared on clone, so copying a record (a VM from its
// template, an object a transaction changes) bumps reference counts instead of allocating.
const _: () = assert!(std::mem::size_of::<Value>() == 24);

/// A value encoded at most once per wire form, however many replies carry it: an
/// `event.from` batch that a thousand waiting clients receive at the same moment.
#[derive(Debug)]
pub struct Shared {
    value: Value,
    json: std::sync::OnceLock<String>,
    xml: std::sync::OnceLock<String>,
}

impl Shared {
    /// Wraps a value.
    pub fn new(value: Value) -> Shared {
        Shared {
            value,
            json: std::sync::OnceLock::new(),
            xml: std::sync::OnceLock::new(),
        }
    }
    /// A value whose wire forms are given: for a reply the generic encoders cannot write
    /// (a `dateTime` without a zone, as `host.get_server_localtime` answers).
    pub fn with_forms(value: Value, json: String, xml: String) -> Shared {
        Shared {
            value,
            json: std::sync::OnceLock::from(json),
            xml: std::sync::OnceLock::from(xml),
        }
    }
    /// The value.
    pub fn value(&self) -> &Value {
        &self.value
    }
    /// Its JSON form (`write_json`), encoded on first use.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| {
            let mut out = String::with_capacity(encoded_len_hint(&self.value, Encoding::Json));
            write_json(&self.value, &mut out);
            out
        })
    }
    /// Its XML-RPC form (`xml::write_value`), encoded on first use.
    pub fn xml(&self) -> &str {
        self.xml.get_or_init(|| {
            let mut out = String::with_capacity(encoded_len_hint(&self.value, Encoding::Xml));
            crate::xml::write_value(&self.value, &mut out);
            out
        })
    }
}

impl PartialEq for Shared {
    fn eq(&self, other: &Shared) -> bool {
        self.value == other.value
    }
}

/// One object: its class, reference, fields in datamodel order, and change generations.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Class.
    pub class: ClassId,
    /// `OpaqueRef:…`.
    pub reference: String,
    /// Field values, indexed by `FieldId`.
    pub fields: Vec<Value>,
    /// Generation of the last change.
    pub generation: u64,
}

impl Object {
    /// A field's value.
    pub fn get(&self, f: FieldId) -> &Value {
        static NONE: Value = Value::None;
        self.fields.get(f.0).unwrap_or(&NONE)
    }
    /// Sets a field.
    pub fn set(&mut self, f: FieldId, v: Value) {
        if let Some(slot) = self.fields.get_mut(f.0) {
            *slot = v;
        }
    }
    /// The `uuid` field, where the class has one.
    pub fn uuid(&self) -> Option<&str> {
        // Looked up once per class: the store asks for every object it writes.
        static UUID_FIELDS: std::sync::OnceLock<Vec<Option<FieldId>>> = std::sync::OnceLock::new();
        let table = UUID_FIELDS.get_or_init(|| {
            (0..crate::schema::CLASSES.len())
                .map(|c| ClassId(c).field_by_name("uuid"))
                .collect()
        });
        table
            .get(self.class.0)
            .copied()
            .flatten()
            .and_then(|f| self.get(f).as_str())
    }
    /// A string field by name ("" when absent or not a string).
    pub fn str_field(&self, name: &str) -> &str {
        self.class
            .field_by_name(name)
            .and_then(|f| self.get(f).as_str())
            .unwrap_or("")
    }
}

impl Value {
    /// The text of a string, ref or enum.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::Ref(s) => Some(s),
            Value::Enum(s) => Some(s),
            Value::Shared(v) => v.value().as_str(),
            _ => None,
        }
    }
    /// An integer.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// A ref, unless null.
    pub fn as_ref_str(&self) -> Option<&str> {
        match self {
            Value::Ref(r) if &**r != NULL_REF && !r.is_empty() => Some(r),
            _ => None,
        }
    }
    /// The elements of a set.
    pub fn as_set(&self) -> &[Value] {
        match self {
            Value::Set(v) => v,
            Value::Shared(v) => v.value().as_set(),
            _ => &[],
        }
    }
    /// The pairs of a map.
    pub fn as_map(&self) -> &[(Value, Value)] {
        match self {
            Value::Map(v) => v,
            Value::Shared(v) => v.value().as_map(),
            _ => &[],
        }
    }
    /// Looks a key up in a map.
    pub fn map_get(&self, key: &str) -> Option<&Value> {
        self.as_map()
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
    /// A string value.
    pub fn str(s: impl Into<Arc<str>>) -> Value {
        Value::String(s.into())
    }
    /// The empty string (one shared copy).
    pub fn empty_str() -> Value {
        static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        Value::String(EMPTY.get_or_init(|| "".into()).clone())
    }
    /// A reference.
    pub fn reference(r: impl Into<Arc<str>>) -> Value {
        Value::Ref(r.into())
    }
    /// The null reference (one shared copy of its text).
    pub fn null_ref() -> Value {
        static NULL: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        Value::Ref(NULL.get_or_init(|| NULL_REF.into()).clone())
    }
    /// A set (every empty set shares one allocation).
    pub fn set(items: Vec<Value>) -> Value {
        static EMPTY: std::sync::OnceLock<Arc<[Value]>> = std::sync::OnceLock::new();
        if items.is_empty() {
            return Value::Set(EMPTY.get_or_init(|| Arc::new([])).clone());
        }
        Value::Set(items.into())
    }
    /// A map (every empty map shares one allocation).
    pub fn map(pairs: Vec<(Value, Value)>) -> Value {
        static EMPTY: std::sync::OnceLock<Arc<[(Value, Value)]>> = std::sync::OnceLock::new();
        if pairs.is_empty() {
            return Value::Map(EMPTY.get_or_init(|| Arc::new([])).clone());
        }
        Value::Map(pairs.into())
    }
    /// A `(string -> string) map` from pairs.
    pub fn string_map<K: Into<Arc<str>>, V: Into<Arc<str>>>(pairs: impl IntoIterator<Item = (K, V)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (Value::str(k), Value::str(v))).collect())
    }
    /// The map key as text, borrowed where the value holds it as text.
    pub fn key_cow(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Value::String(s) | Value::Ref(s) => std::borrow::Cow::Borrowed(s),
            Value::Enum(s) => std::borrow::Cow::Borrowed(s),
            other => std::borrow::Cow::Owned(other.key_text()),
        }
    }
    /// The map key as text, as both wire formats carry it.
    pub fn key_text(&self) -> String {
        match self {
            Value::String(s) | Value::Ref(s) => s.to_string(),
            Value::Enum(s) => (*s).to_owned(),
            Value::Int(i) => i.to_string(),
            Value::Int32(i) => i.to_string(),
            Value::Float(f) => format_float(*f),
            Value::Bool(b) => b.to_string(),
            Value::DateTime(t) => format_datetime(*t),
            _ => String::new(),
        }
    }
}

/// Why a wire value does not fit a type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("expected {expected}, got {got}")]
pub struct TypeMismatch {
    /// What the type wanted.
    pub expected: String,
    /// What arrived.
    pub got: String,
}

fn mismatch(expected: &str, got: &Json) -> TypeMismatch {
    let mut g = got.to_string();
    if g.len() > 64 {
        // Cut on a character boundary: `truncate` panics inside a multi-byte character.
        let mut end = 64;
        while !g.is_char_boundary(end) {
            end -= 1;
        }
        g.truncate(end);
        g.push('…');
    }
    TypeMismatch {
        expected: expected.to_owned(),
        got: g,
    }
}

/// Formats seconds since the epoch as the API's `YYYYMMDDTHH:MM:SSZ`.
pub fn format_datetime(t: i64) -> String {
    let mut s = String::with_capacity(18);
    push_datetime(t, &mut s);
    s
}

/// Appends `YYYYMMDDTHH:MM:SSZ` to `out` (without chrono's formatter: records carry several
/// datetimes and bulk reads write thousands of records).
pub fn push_datetime(t: i64, out: &mut String) {
    use chrono::{Datelike, Timelike};
    // Years 0-9999 (every date a client can send back), by the civil-from-days algorithm.
    const DAY: i64 = 86_400;
    const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if (MIN..=MAX).contains(&t) {
        let days = t.div_euclid(DAY);
        let secs = t.rem_euclid(DAY);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let mut buf = *b"00000000T00:00:00Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for k in (at..at + width).rev() {
                buf[k] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(4, 2, month);
        put(6, 2, day);
        put(9, 2, secs / 3600);
        put(12, 2, secs / 60 % 60);
        put(15, 2, secs % 60);
        for &b in &buf {
            out.push(char::from(b));
        }
        return;
    }
    match DateTime::<Utc>::from_timestamp(t, 0) {
        Some(d) => {
            let _ = write!(
                out,
                "{:04}{:02}{:02}T{:02}:{:02}:{:02}Z",
                d.year(),
                d.month(),
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            );
        }
        None => out.push_str("19700101T00:00:00Z"),
    }
}

/// Parses the datetime forms clients send.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.timestamp());
    }
    let body = s.strip_suffix('Z').unwrap_or(s);
    for fmt in [
        "%Y%m%dT%H:%M:%S",
        "%Y%m%dT%H%M%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y%m%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(body, fmt) {
            return Some(d.and_utc().timestamp());
        }
    }
    None
}

/// Now, as seconds since the epoch.
pub fn now() -> i64 {
    Utc::now().timestamp()
}

/// Formats a float the way the reference does (always with a point).
pub fn format_float(f: f64) -> String {
    if f.is_finite() {
        let mut s = format!("{f}");
        if !s.contains(['.', 'e', 'E']) {
            s.push_str(".0");
        }
        s
    } else {
        "0.0".to_owned()
    }
}

/// Converts an untyped wire value to a typed value of `ty`.
///
/// Lenient where the reference is: ints and floats may arrive as strings (XML-RPC carries them
/// so), enums match case-insensitively, bools may arrive as "true"/"false".
pub fn from_json(j: &Json, ty: &Ty) -> Result<Value, TypeMismatch> {
    match ty {
        Ty::String => match j {
            Json::String(s) => Ok(Value::str(s.as_str())),
            _ => Err(mismatch("string", j)),
        },
        Ty::Int => match j {
            Json::Number(n) => n.as_i64().map(Value::Int).ok_or_else(|| mismatch("int", j)),
            Json::String(s) => s.trim().parse().map(Value::Int).map_err(|_| mismatch("int", j)),
            _ => Err(mismatch("int", j)),
        },
        Ty::Float => match j {
            Json::Number(n) => n.as_f64().map(Value::Float).ok_or_else(|| mismatch("float", j)),
            Json::String(s) => match s.trim().parse::<f64>() {
                // "nan" and "inf" parse, but no client could read them back (JSON has no form).
                Ok(f) if f.is_finite() => Ok(Value::Float(f)),
                _ => Err(mismatch("float", j)),
            },
            _ => Err(mismatch("float", j)),
        },
        Ty::Bool => match j {
            Json::Bool(b) => Ok(Value::Bool(*b)),
            Json::String(s) if s.eq_ignore_ascii_case("true") || s == "1" => Ok(Value::Bool(true)),
            Json::String(s) if s.eq_ignore_ascii_case("false") || s == "0" => Ok(Value::Bool(false)),
            _ => Err(mismatch("bool", j)),
        },
        Ty::DateTime => match j {
            Json::String(s) => parse_datetime(s)
                .map(Value::DateTime)
                .ok_or_else(|| mismatch("datetime", j)),
            Json::Number(n) => n
                .as_f64()
                .map(|f| Value::DateTime(f as i64))
                .ok_or_else(|| mismatch("datetime", j)),
            _ => Err(mismatch("datetime", j)),
        },
        Ty::Ref(_) => match j {
            Json::String(s) => Ok(Value::reference(s.as_str())),
            _ => Err(mismatch("ref", j)),
        },
        Ty::Enum(e) => match j {
            Json::String(s) => e
                .canonical(s)
                .map(Value::Enum)
                .ok_or_else(|| mismatch(&format!("enum {}", e.def().name), j)),
            _ => Err(mismatch(&format!("enum {}", e.def().name), j)),
        },
        Ty::Set(inner) => match j {
            Json::Array(items) => {
                // Duplicates are dropped by their wire text, in linear time: `out.contains`
                // made a set of n distinct elements cost n²/2 comparisons (minutes of a
                // worker's time for a few MB of tags).
                let mut out: Vec<Value> = Vec::with_capacity(items.len());
                let mut seen: HashSet<String> = HashSet::with_capacity(items.len());
                for it in items {
                    let v = from_json(it, inner)?;
                    let mut text = String::new();
                    write_json(&v, &mut text);
                    if seen.insert(text) {
                        out.push(v);
                    }
                }
                Ok(Value::set(out))
            }
            _ => Err(mismatch("set", j)),
        },
        Ty::Map(k, v) => match j {
            Json::Object(m) => {
                // Keys that differ on the wire may be one typed key ("start" and "START" of
                // an enum, "1" and " 1" of an int): keep one, the later value winning, as in
                // a JSON object.
                let mut out: Vec<(Value, Value)> = Vec::with_capacity(m.len());
                let mut index: HashMap<String, usize> = HashMap::with_capacity(m.len());
                for (key, val) in m {
                    let kv = from_json(&Json::String(key.clone()), k)?;
                    let vv = from_json(val, v)?;
                    match index.entry(kv.key_text()) {
                        Entry::Occupied(slot) => {
                            if let Some(pair) = out.get_mut(*slot.get()) {
                                pair.1 = vv;
                            }
                        }
                        Entry::Vacant(slot) => {
                            slot.insert(out.len());
                            out.push((kv, vv));
                        }
                    }
                }
                Ok(Value::map(out))
            }
            _ => Err(mismatch("map", j)),
        },
        Ty::Record(c) => match j {
            Json::Object(_) => Ok(Value::Record(Arc::new(record_from_json(*c, j, "")?))),
            _ => Err(mismatch("record", j)),
        },
        Ty::Option(inner) => match j {
            Json::Null => Ok(Value::None),
            _ => from_json(j, inner),
        },
        Ty::AnyRecord | Ty::EventBatch | Ty::Void => Ok(Value::None),
    }
}

/// Builds an object of `class` from a JSON object keyed by field name: fields it lacks take
/// their datamodel defaults; names the class does not have are ignored.
pub fn record_from_json(class: ClassId, j: &Json, reference: &str) -> Result<Object, TypeMismatch> {
    let mut obj = default_object(class, reference);
    if let Json::Object(m) = j {
        for (name, val) in m {
            if let Some(f) = class.field_by_name(name) {
                let fv = from_json(val, class.field(f).ty).map_err(|e| TypeMismatch {
                    expected: format!("{name}: {}", e.expected),
                    got: e.got,
                })?;
                obj.set(f, fv);
            }
        }
    }
    Ok(obj)
}

/// An object of `class` with every field at its default.
pub fn default_object(class: ClassId, reference: &str) -> Object {
    // Every new object shares the defaults' text, sets and maps.
    Object {
        class,
        reference: reference.to_owned(),
        fields: class_defaults(class).to_vec(),
        generation: 0,
    }
}

/// A class's field defaults, in field order, parsed once per class.
fn class_defaults(class: ClassId) -> &'static [Value] {
    static DEFAULTS: std::sync::OnceLock<Vec<Vec<Value>>> = std::sync::OnceLock::new();
    let all = DEFAULTS.get_or_init(|| ClassId::all().map(default_fields).collect());
    all.get(class.0).map_or(&[], Vec::as_slice)
}

fn default_fields(class: ClassId) -> Vec<Value> {
    class
        .def()
        .fields
        .iter()
        .map(|f| default_value(f.ty, f.default))
        .collect()
}

/// The value a field has when nothing set it.
pub fn default_value(ty: &Ty, default: Option<&str>) -> Value {
    if let Some(d) = default {
        if let Some(v) = parse_default(ty, d) {
            return v;
        }
    }
    zero(ty)
}

fn zero(ty: &Ty) -> Value {
    match ty {
        Ty::String => Value::empty_str(),
        Ty::Int => Value::Int(0),
        Ty::Float => Value::Float(0.0),
        Ty::Bool => Value::Bool(false),
        Ty::DateTime => Value::DateTime(0),
        Ty::Ref(_) => Value::null_ref(),
        Ty::Enum(e) => e.def().values.first().map_or(Value::None, |v| Value::Enum(v)),
        Ty::Set(_) => Value::set(Vec::new()),
        Ty::Map(_, _) => Value::map(Vec::new()),
        // Not `default_object`: this runs while its table of defaults is being built.
        Ty::Record(c) => Value::Record(Arc::new(Object {
            class: *c,
            reference: String::new(),
            fields: default_fields(*c),
            generation: 0,
        })),
        Ty::Option(_) | Ty::AnyRecord | Ty::EventBatch | Ty::Void => Value::None,
    }
}

/// Parses the datamodel's textual defaults (`""`, `{}`, `OpaqueRef:NULL`, `1.`, `{"a" -> "b"}`).
fn parse_default(ty: &Ty, d: &str) -> Option<Value> {
    let unquote = |s: &str| -> String { s.trim().trim_matches('"').to_owned() };
    match ty {
        Ty::String => Some(Value::str(unquote(d))),
        Ty::Int => d.trim().parse().ok().map(Value::Int),
        Ty::Float => d.trim().parse().ok().map(Value::Float),
        Ty::Bool => d.trim().parse().ok().map(Value::Bool),
        Ty::DateTime => parse_datetime(d).map(Value::DateTime),
        Ty::Ref(_) => Some(if d == "Null" {
            Value::null_ref()
        } else {
            Value::reference(unquote(d))
        }),
        Ty::Enum(e) => e.canonical(&unquote(d)).map(Value::Enum),
        Ty::Set(inner) => {
            let body = d.trim().strip_prefix('{')?.strip_suffix('}')?;
            let mut out = Vec::new();
            for item in body.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                out.push(parse_default(inner, item)?);
            }
            Some(Value::set(out))
        }
        Ty::Map(k, v) => {
            let body = d.trim().strip_prefix('{')?.strip_suffix('}')?;
            let mut out = Vec::new();
            for item in body.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (a, b) = item.split_once("->")?;
                out.push((parse_default(k, a)?, parse_default(v, b)?));
            }
            Some(Value::map(out))
        }
        _ => None,
    }
}

/// A wire encoding, for [`encoded_len_hint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// JSON (`write_json`).
    Json,
    /// XML-RPC (`xml::write_value`).
    Xml,
}

fn digits(i: i64) -> usize {
    i.unsigned_abs().checked_ilog10().map_or(1, |d| d as usize + 1) + usize::from(i < 0)
}

/// `each` summed over `items`; for long lists estimated from an even sample, with an eighth
/// added (capacity a reply never touches costs no memory), so that the hint stays cheap next
/// to the encoding it sizes.
fn sum_sampled<T>(items: &[T], each: impl Fn(&T) -> usize) -> usize {
    const SAMPLE: usize = 128;
    if items.len() <= 2 * SAMPLE {
        return items.iter().map(each).sum();
    }
    let stride = items.len() / SAMPLE;
    let (count, sum) = items
        .iter()
        .step_by(stride)
        .fold((0usize, 0usize), |(n, total), x| (n + 1, total + each(x)));
    let estimate = sum * items.len() / count.max(1);
    estimate + estimate / 8
}

/// About how many bytes `v` encodes to (exact but for escapes and floats), so that a reply
/// buffer is allocated once at its size rather than grown by doubling: a 10,000-VM reply is
/// tens of MB, and doubling copies it several times and leaves up to twice its size mapped.
pub fn encoded_len_hint(v: &Value, enc: Encoding) -> usize {
    let xml = enc == Encoding::Xml;
    // `<value>` + `</value>` around every XML value.
    let tags = if xml { 15 } else { 0 };
    match v {
        Value::String(s) | Value::Ref(s) => s.len() + if xml { tags } else { 2 },
        Value::Enum(s) => s.len() + if xml { tags } else { 2 },
        Value::Int(i) => digits(*i) + tags,
        Value::Int32(i) => digits(i64::from(*i)) + if xml { 26 } else { 0 },
        Value::Float(_) => 24 + if xml { 32 } else { 0 },
        Value::Bool(_) => {
            if xml {
                35
            } else {
                5
            }
        }
        Value::DateTime(_) => 20 + if xml { 51 } else { 0 },
        Value::Set(items) => {
            let each = sum_sampled(items, |x| encoded_len_hint(x, enc) + 1);
            each + if xml { 43 } else { 2 }
        }
        Value::Map(pairs) => {
            let each = sum_sampled(pairs, |(k, x)| {
                let key = match k {
                    Value::String(s) | Value::Ref(s) => s.len(),
                    Value::Enum(s) => s.len(),
                    other => other.key_text().len(),
                };
                key + encoded_len_hint(x, enc) + if xml { 30 } else { 4 }
            });
            each + if xml { 32 } else { 2 }
        }
        Value::Record(obj) => {
            let each: usize = obj
                .class
                .def()
                .fields
                .iter()
                .zip(obj.fields.iter())
                .map(|(f, x)| f.name.len() + encoded_len_hint(x, enc) + if xml { 30 } else { 4 })
                .sum();
            each + if xml { 32 } else { 2 }
        }
        Value::Struct(members) => {
            let each: usize = members
                .iter()
                .map(|(k, x)| k.len() + encoded_len_hint(x, enc) + if xml { 30 } else { 4 })
                .sum();
            each + if xml { 32 } else { 2 }
        }
        Value::None => {
            if xml {
                15
            } else {
                4
            }
        }
        Value::Shared(v) => {
            let done = if xml { v.xml.get() } else { v.json.get() };
            done.map_or_else(|| encoded_len_hint(&v.value, enc), String::len)
        }
    }
}

/// Writes a value as JSON (the JSON-RPC wire form and the store's form).
pub fn write_json(v: &Value, out: &mut String) {
    match v {
        Value::String(s) | Value::Ref(s) => write_json_str(s, out),
        Value::Enum(s) => write_json_str(s, out),
        Value::Int(i) => push_int(*i, out),
        Value::Int32(i) => push_int(i64::from(*i), out),
        Value::Float(f) => out.push_str(&format_float(*f)),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::DateTime(t) => {
            out.push('"');
            push_datetime(*t, out);
            out.push('"');
        }
        Value::Set(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(it, out);
            }
            out.push(']');
        }
        Value::Map(pairs) => {
            out.push('{');
            for (i, (k, val)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_entry(k, val, out);
            }
            out.push('}');
        }
        Value::Record(obj) => write_record_json(obj, out),
        Value::Struct(members) => {
            out.push('{');
            for (i, (k, val)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_str(k, out);
                out.push(':');
                write_json(val, out);
            }
            out.push('}');
        }
        Value::None => out.push_str("null"),
        Value::Shared(v) => out.push_str(v.json()),
    }
}

/// Writes one `key:value` entry of a JSON map (keys are written as strings, as XenAPI maps
/// travel as JSON objects).
pub fn write_json_entry(k: &Value, val: &Value, out: &mut String) {
    match k {
        Value::String(s) | Value::Ref(s) => write_json_str(s, out),
        Value::Enum(s) => write_json_str(s, out),
        other => write_json_str(&other.key_text(), out),
    }
    out.push(':');
    write_json(val, out);
}

/// Writes an object's fields as a JSON object keyed by field name.
pub fn write_record_json(obj: &Object, out: &mut String) {
    write_record_json_except(obj, &[], out);
}

/// Writes an object's fields but those in `skip` as a JSON object keyed by field name.
pub fn write_record_json_except(obj: &Object, skip: &[FieldId], out: &mut String) {
    write_record_fields_json(obj, |i, _| !skip.contains(&FieldId(i)), out);
}

/// Writes what a stored record needs: the fields but those in `skip` and those at their
/// default, which [`record_from_json`] puts back (most of a VM's ~100 fields sit at their
/// defaults, so the record on disk is a fraction of the whole).
pub fn write_stored_record_json(obj: &Object, skip: &[FieldId], out: &mut String) {
    let defaults = class_defaults(obj.class);
    write_record_fields_json(
        obj,
        |i, v| !skip.contains(&FieldId(i)) && defaults.get(i) != Some(v),
        out,
    );
}

fn write_record_fields_json(obj: &Object, keep: impl Fn(usize, &Value) -> bool, out: &mut String) {
    // Field names are plain identifiers (see the `field_names_need_no_escaping` test).
    let tags = field_tags(obj.class, [",", "\"", "\":"], &JSON_FIELD_TAGS);
    out.push('{');
    let mut first = true;
    for (i, (tag, val)) in tags.iter().zip(obj.fields.iter()).enumerate() {
        if !keep(i, val) {
            continue;
        }
        // Every tag but the first field's starts with the separator.
        let tag = if std::mem::take(&mut first) {
            tag.strip_prefix(',').unwrap_or(tag)
        } else {
            tag
        };
        out.push_str(tag);
        write_json(val, out);
    }
    out.push('}');
}

static JSON_FIELD_TAGS: FieldTags = FieldTags::new();

/// Per class, the text an encoder writes before each field's value (its name with the
/// punctuation around it), built once: a record is then written with one copy per field.
pub struct FieldTags(std::sync::OnceLock<Vec<Vec<Box<str>>>>);

impl FieldTags {
    /// An empty table, filled on first use.
    pub const fn new() -> FieldTags {
        FieldTags(std::sync::OnceLock::new())
    }
}

impl Default for FieldTags {
    fn default() -> Self {
        FieldTags::new()
    }
}

/// The tags of `class`'s fields in `table`, each `before` + name + `after`, with `separator`
/// first for all but the first field (`[separator, before, after]`); built for every class on
/// first use.
pub fn field_tags(
    class: ClassId,
    [separator, before, after]: [&str; 3],
    table: &'static FieldTags,
) -> &'static [Box<str>] {
    let all = table.0.get_or_init(|| {
        ClassId::all()
            .map(|c| {
                c.def()
                    .fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let sep = if i > 0 { separator } else { "" };
                        [sep, before, f.name, after].concat().into_boxed_str()
                    })
                    .collect()
            })
            .collect()
    });
    all.get(class.0).map_or(&[], Vec::as_slice)
}

/// Eight copies of a byte.
const fn splat(b: u8) -> u64 {
    (b as u64) * 0x0101_0101_0101_0101
}

const HIGH_BITS: u64 = splat(0x80);

/// Whether any byte of `w` is below `n` (`n` ≤ 0x80; exact, no false positives).
#[inline]
pub(crate) fn any_byte_below(w: u64, n: u8) -> bool {
    w.wrapping_sub(splat(n)) & !w & HIGH_BITS != 0
}

/// Whether any byte of `w` equals `b`.
#[inline]
pub(crate) fn any_byte_is(w: u64, b: u8) -> bool {
    any_byte_below(w ^ splat(b), 1)
}

/// The eight bytes of `bytes` from `i`, if there are eight.
#[inline]
pub(crate) fn word_at(bytes: &[u8], i: usize) -> Option<u64> {
    let chunk: [u8; 8] = bytes.get(i..i + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// Writes a JSON string literal.
///
/// Bulk replies are mostly strings with nothing to escape: they are scanned eight bytes at a
/// time and copied as whole runs.
pub fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(w) = word_at(bytes, i) {
            if !any_byte_below(w, 0x20) && !any_byte_is(w, b'"') && !any_byte_is(w, b'\\') {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(esc);
        }
        i += 1;
        start = i;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends a decimal integer (without the formatting machinery: records carry many).
pub fn push_int(i: i64, out: &mut String) {
    let mut buf = [0u8; 20];
    let mut pos = buf.len();
    let mut n = i.unsigned_abs();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        out.push('-');
    }
    for &d in &buf[pos..] {
        out.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{class_ids, fields};

    #[test]
    fn defaults_follow_the_datamodel() {
        let vm = default_object(class_ids::VM, "OpaqueRef:x");
        assert_eq!(
            vm.get(fields::VM::power_state),
            &crate::schema::enums::VmPowerState::Halted.value()
        );
        assert_eq!(vm.get(fields::VM::HVM_shadow_multiplier), &Value::Float(1.0));
        assert_eq!(vm.get(fields::VM::generation_id), &Value::str("0:0"));
        assert_eq!(vm.get(fields::VM::snapshot_of), &Value::Ref(NULL_REF.into()));
        assert_eq!(vm.get(fields::VM::tags), &Value::Set(vec![].into()));
    }

    #[test]
    fn wire_values_convert_by_type() {
        let ty_int = Ty::Int;
        assert_eq!(from_json(&Json::String("42".into()), &ty_int), Ok(Value::Int(42)));
        assert!(from_json(&Json::String("x".into()), &ty_int).is_err());
        assert!(from_json(&serde_json::json!(5), &Ty::String).is_err());
        assert_eq!(
            from_json(&Json::String("1.5".into()), &Ty::Float),
            Ok(Value::Float(1.5))
        );
        for bad in ["nan", "inf", "-infinity", "1e999"] {
            assert!(from_json(&Json::String(bad.into()), &Ty::Float).is_err(), "{bad}");
        }
        assert_eq!(
            parse_datetime("20250319T04:16:24Z").map(format_datetime).as_deref(),
            Some("20250319T04:16:24Z")
        );
    }

    /// Found with the `typed_params` fuzz target: `{"start": .., "START": ..}` became a map
    /// with the enum key `start` twice (fuzz/regressions/typed_params/).
    #[test]
    fn typed_map_keys_are_unique() {
        let ty = Ty::Map(&Ty::Int, &Ty::String);
        let j = serde_json::json!({"1": "a", " 1": "b", "2": "c"});
        let Ok(Value::Map(pairs)) = from_json(&j, &ty) else {
            panic!("not a map");
        };
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs.iter().filter(|(k, _)| *k == Value::Int(1)).count(), 1);
    }

    /// Found with the `typed_params` fuzz target: a set of n distinct strings took n²/2
    /// comparisons to deduplicate (20,000 tags: seconds; 1.8 million, a 16 MB body: hours).
    #[test]
    fn large_sets_convert_in_linear_time() {
        let ty = Ty::Set(&Ty::String);
        let mut items: Vec<Json> = (0..50_000).map(|i| Json::String(format!("t{i}"))).collect();
        items.push(Json::String("t7".into()));
        let start = std::time::Instant::now();
        let Ok(Value::Set(out)) = from_json(&Json::Array(items), &ty) else {
            panic!("not a set");
        };
        assert_eq!(out.len(), 50_000);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }

    /// Found by the `typed_params` fuzz target: a wrongly typed parameter whose JSON text
    /// had a multi-byte character across byte 64 panicked while the error was built (no
    /// session needed: `session.login_with_password` with an array for the user name).
    #[test]
    fn type_errors_cut_long_values_on_a_character_boundary() {
        let j = Json::Array(vec![Json::String(format!("{}é", "a".repeat(61)))]);
        let e = from_json(&j, &Ty::String).unwrap_err();
        assert!(e.got.ends_with('…') && e.got.len() <= 64 + '…'.len_utf8(), "{}", e.got);
    }

    #[test]
    fn datetimes_format_like_chrono() {
        use chrono::{Datelike, Timelike};
        let via_chrono = |t: i64| {
            let d = DateTime::<Utc>::from_timestamp(t, 0).unwrap();
            format!(
                "{:04}{:02}{:02}T{:02}:{:02}:{:02}Z",
                d.year(),
                d.month(),
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            )
        };
        let mut t: i64 = -62_167_219_200;
        while t <= 253_402_300_799 {
            assert_eq!(format_datetime(t), via_chrono(t), "{t}");
            t += 86_399 * 37 + 7;
        }
        for t in [0, -1, 951_782_400, 1_709_251_199, 253_402_300_799, -62_167_219_200] {
            assert_eq!(format_datetime(t), via_chrono(t), "{t}");
        }
    }

    #[test]
    fn ints_format_like_display() {
        for i in [0, 7, -7, 10, 99, -100, i64::MAX, i64::MIN, 1 << 40] {
            let mut s = String::new();
            push_int(i, &mut s);
            assert_eq!(s, i.to_string());
        }
    }

    #[test]
    fn json_escaping_matches_serde_on_every_position() {
        let specials = ['"', '\\', '\n', '\r', '\t', '\u{1}', '\u{1f}', 'é', 'x', '\u{7f}', ' '];
        for len in 0..20 {
            for (k, c) in specials.iter().enumerate() {
                for at in 0..len.max(1) {
                    let mut text: String = (0..len).map(|j| char::from(b'a' + (j % 26) as u8)).collect();
                    if len > 0 {
                        text.replace_range(at..at + 1, &c.to_string());
                    }
                    text.push(specials[(k + 3) % specials.len()]);
                    let mut s = String::new();
                    write_json_str(&text, &mut s);
                    let back: String = serde_json::from_str(&s).unwrap();
                    assert_eq!(back, text);
                    assert_eq!(s, serde_json::to_string(&text).unwrap());
                }
            }
        }
    }

    /// Record encoders write field names as they are.
    #[test]
    fn field_names_need_no_escaping() {
        for c in crate::schema::ClassId::all() {
            for f in c.def().fields {
                assert!(
                    !f.name.is_empty() && f.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                    "{}.{}",
                    c.name(),
                    f.name
                );
            }
        }
    }

    #[test]
    fn length_hints_are_close() {
        let mut vm = default_object(class_ids::VM, "OpaqueRef:x");
        vm.set(fields::VM::name_label, Value::str("a name"));
        vm.set(
            fields::VM::tags,
            Value::Set(vec![Value::str("t1"), Value::str("t2")].into()),
        );
        vm.set(
            fields::VM::other_config,
            Value::string_map([("k", "v"), ("disks", "<disk/>")]),
        );
        let v = Value::Map(vec![(Value::Ref("OpaqueRef:x".into()), Value::Record(Arc::new(vm)))].into());
        let mut json = String::new();
        write_json(&v, &mut json);
        let hint = encoded_len_hint(&v, Encoding::Json);
        assert!(
            hint >= json.len() && hint < json.len() + json.len() / 4,
            "{hint} {}",
            json.len()
        );
        let xml = crate::xml::value_fragment(&v);
        let hint = encoded_len_hint(&v, Encoding::Xml);
        assert!(
            hint >= xml.len() && hint < xml.len() + xml.len() / 4,
            "{hint} {}",
            xml.len()
        );
    }

    #[test]
    fn length_hints_of_long_lists_are_close() {
        let records: Vec<(Value, Value)> = (0..1000)
            .map(|i| {
                let r = format!("OpaqueRef:{i:08}");
                let mut vm = default_object(class_ids::VM, &r);
                vm.set(fields::VM::name_label, Value::str("x".repeat(i % 50)));
                (Value::Ref(r.into()), Value::Record(Arc::new(vm)))
            })
            .collect();
        let v = Value::Map(records.into());
        for enc in [Encoding::Json, Encoding::Xml] {
            let len = match enc {
                Encoding::Json => {
                    let mut s = String::new();
                    write_json(&v, &mut s);
                    s.len()
                }
                Encoding::Xml => crate::xml::value_fragment(&v).len(),
            };
            let hint = encoded_len_hint(&v, enc);
            assert!(hint >= len && hint < len + len / 4, "{enc:?}: {hint} {len}");
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        write_json_str("a\"b\\c\n\u{1}", &mut s);
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001\"");
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\n\u{1}");
    }
}
