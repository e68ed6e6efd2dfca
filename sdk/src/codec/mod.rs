//! Between typed values and the untyped tree both wires decode to.
//!
//! Parameters are serialized with serde into a JSON tree; the JSON-RPC codec sends it as it
//! is, the XML-RPC codec writes it as XenAPI's clients do (ints as strings). Replies of both
//! wires are decoded into the same kind of tree and then read into the message's result type
//! by [`Lenient`], a serde deserializer that follows the type asked for: an `int` may arrive
//! as a number or a string (XML-RPC carries int64 as strings), a `bool` as `true`, `1` or
//! `"true"`, a `void` as anything.

pub(crate) mod json;
pub(crate) mod xml;

use crate::Error;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::Value as Json;

/// A parameter as it travels (typed values are serialized once, before the call is sent).
pub(crate) fn arg<T: Serialize + ?Sized>(v: &T) -> Result<Json, Error> {
    serde_json::to_value(v).map_err(|e| Error::Encode(e.to_string()))
}

/// Reads a decoded reply value into `T`.
pub(crate) fn decode<T: DeserializeOwned>(j: &Json) -> Result<T, Error> {
    T::deserialize(Lenient(j))
}

/// Deserializes a value carried as text (refs, enums) through `make`.
pub(crate) fn deserialize_text<'de, D, T>(d: D, make: fn(&str) -> T) -> Result<T, D::Error>
where
    D: de::Deserializer<'de>,
{
    struct V<T>(fn(&str) -> T);
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            Ok((self.0)(s))
        }
    }
    d.deserialize_str(V(make))
}

/// A type-directed, lenient view of a decoded reply value.
#[derive(Clone, Copy)]
pub(crate) struct Lenient<'a>(pub &'a Json);

fn unexpected(j: &Json) -> de::Unexpected<'_> {
    match j {
        Json::Null => de::Unexpected::Unit,
        Json::Bool(b) => de::Unexpected::Bool(*b),
        Json::Number(n) => match n.as_f64() {
            Some(f) => de::Unexpected::Float(f),
            None => de::Unexpected::Other("number"),
        },
        Json::String(s) => de::Unexpected::Str(s),
        Json::Array(_) => de::Unexpected::Seq,
        Json::Object(_) => de::Unexpected::Map,
    }
}

fn int_of(j: &Json) -> Option<i64> {
    match j {
        Json::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn float_of(j: &Json) -> Option<f64> {
    match j {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn bool_of(j: &Json) -> Option<bool> {
    match j {
        Json::Bool(b) => Some(*b),
        Json::String(s) if s.eq_ignore_ascii_case("true") || s == "1" => Some(true),
        Json::String(s) if s.eq_ignore_ascii_case("false") || s == "0" => Some(false),
        Json::Number(n) => n.as_i64().map(|i| i != 0),
        _ => None,
    }
}

macro_rules! lenient_int {
    ($($method:ident => $visit:ident, $ty:ty;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
                match int_of(self.0).and_then(|i| <$ty>::try_from(i).ok()) {
                    Some(i) => v.$visit(i),
                    None => Err(de::Error::invalid_type(unexpected(self.0), &"an int")),
                }
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Lenient<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Json::Null => v.visit_unit(),
            Json::Bool(b) => v.visit_bool(*b),
            Json::Number(n) => {
                if let Some(i) = n.as_i64() {
                    v.visit_i64(i)
                } else if let Some(u) = n.as_u64() {
                    v.visit_u64(u)
                } else {
                    v.visit_f64(n.as_f64().unwrap_or(0.0))
                }
            }
            Json::String(s) => v.visit_str(s),
            Json::Array(items) => v.visit_seq(Seq(items.iter())),
            Json::Object(m) => v.visit_map(Map {
                iter: m.iter(),
                value: None,
            }),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match bool_of(self.0) {
            Some(b) => v.visit_bool(b),
            None => Err(de::Error::invalid_type(unexpected(self.0), &"a bool")),
        }
    }

    lenient_int! {
        deserialize_i8 => visit_i8, i8;
        deserialize_i16 => visit_i16, i16;
        deserialize_i32 => visit_i32, i32;
        deserialize_i64 => visit_i64, i64;
        deserialize_u8 => visit_u8, u8;
        deserialize_u16 => visit_u16, u16;
        deserialize_u32 => visit_u32, u32;
        deserialize_u64 => visit_u64, u64;
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match float_of(self.0) {
            Some(f) => v.visit_f64(f),
            None => Err(de::Error::invalid_type(unexpected(self.0), &"a float")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Json::String(s) => v.visit_str(s),
            // Servers differ on whether a number-like string stays a string.
            Json::Number(n) => v.visit_str(&n.to_string()),
            Json::Bool(b) => v.visit_str(if *b { "true" } else { "false" }),
            other => Err(de::Error::invalid_type(unexpected(other), &"a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            // XML-RPC has no null: an absent optional value arrives as an empty `<value/>`.
            Json::Null => v.visit_none(),
            Json::String(s) if s.is_empty() => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        // `void` results travel as "" (or nothing at all).
        v.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, v: V) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Json::Array(items) => v.visit_seq(Seq(items.iter())),
            other => Err(de::Error::invalid_type(unexpected(other), &"a set")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Json::Object(m) => v.visit_map(Map {
                iter: m.iter(),
                value: None,
            }),
            other => Err(de::Error::invalid_type(unexpected(other), &"a map")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Json::String(s) => v.visit_enum(s.as_str().into_deserializer()),
            other => Err(de::Error::invalid_type(unexpected(other), &"an enum value")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf identifier
    }
}

struct Seq<'a>(std::slice::Iter<'a, Json>);

impl<'de> SeqAccess<'de> for Seq<'_> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        match self.0.next() {
            Some(j) => seed.deserialize(Lenient(j)).map(Some),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Map<'a> {
    iter: serde_json::map::Iter<'a>,
    value: Option<&'a Json>,
}

impl<'de> MapAccess<'de> for Map<'_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(Key(k)).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(Lenient(v)),
            None => Err(Error::Decode("a map value without its key".into())),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// A map key: always text on both wires, read as the key type asks (`(int -> float) map`).
struct Key<'a>(&'a str);

impl Key<'_> {
    fn json(&self) -> Json {
        Json::String(self.0.to_owned())
    }
}

macro_rules! key_via_lenient {
    ($($method:ident),*) => {
        $(
            fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
                Lenient(&self.json()).$method(v)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Key<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_str(self.0)
    }

    key_via_lenient!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_f32,
        deserialize_f64
    );

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, v: V) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_enum(self.0.into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{DateTime, EventBatch, Ref, Snapshot};
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    /// A value of the type unlike its default, for round trips.
    pub(crate) trait Sample {
        fn sample() -> Self;
    }

    impl Sample for String {
        fn sample() -> Self {
            // Markup, quotes, a tab, newlines (CR too: it must survive XML's line-end
            // normalisation), non-ASCII.
            "a<b>&c \"q\" 'a'\tx\r\ny é ✓ ]]>".to_owned()
        }
    }
    impl Sample for i64 {
        fn sample() -> Self {
            // Not exactly representable as a double: a float on the way would show.
            -9_007_199_254_740_993
        }
    }
    impl Sample for f64 {
        fn sample() -> Self {
            0.1 + 0.2
        }
    }
    impl Sample for bool {
        fn sample() -> Self {
            true
        }
    }
    impl Sample for () {
        fn sample() -> Self {}
    }
    impl Sample for DateTime {
        fn sample() -> Self {
            DateTime::from_unix(1_709_210_096)
        }
    }
    impl<C> Sample for Ref<C> {
        fn sample() -> Self {
            Ref::new("OpaqueRef:5f0c3b2e-0000-4000-8000-00000000abcd")
        }
    }
    impl<T: Sample> Sample for Vec<T> {
        fn sample() -> Self {
            vec![T::sample(), T::sample()]
        }
    }
    impl<T: Sample> Sample for Option<T> {
        fn sample() -> Self {
            Some(T::sample())
        }
    }
    impl<K: Sample + Ord, V: Sample> Sample for BTreeMap<K, V> {
        fn sample() -> Self {
            BTreeMap::from([(K::sample(), V::sample())])
        }
    }
    impl Sample for Snapshot {
        fn sample() -> Self {
            Snapshot::from_json(serde_json::json!({"uuid": "u", "name_label": "a <b>", "tags": ["t"]}))
        }
    }
    impl Sample for EventBatch {
        fn sample() -> Self {
            EventBatch {
                events: Vec::sample(),
                valid_ref_counts: BTreeMap::from([("vm".to_owned(), 3)]),
                token: "00000000000000000042,00000000000000000007".to_owned(),
            }
        }
    }

    /// `v` through the XML-RPC form (as a call's parameter is written, and a reply's value
    /// read) and the JSON-RPC form (through the reply tree, and with plain serde_json).
    pub(crate) fn round_trip<T>(ty: &str)
    where
        T: Sample + Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let v = T::sample();
        let tree = arg(&v).unwrap_or_else(|e| panic!("{ty}: {e}"));

        let mut xml = String::new();
        xml::write_value(&tree, &mut xml).unwrap_or_else(|e| panic!("{ty}: {e}"));
        let back_tree = xml::parse_value_fragment(&xml).unwrap_or_else(|e| panic!("{ty}: {e}\n{xml}"));
        let back: T = decode(&back_tree).unwrap_or_else(|e| panic!("{ty}: {e}\n{xml}"));
        assert_eq!(back, v, "{ty} over XML-RPC: {xml}");

        let text = serde_json::to_string(&v).unwrap_or_else(|e| panic!("{ty}: {e}"));
        let parsed: Json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{ty}: {e}"));
        let back: T = decode(&parsed).unwrap_or_else(|e| panic!("{ty}: {e}\n{text}"));
        assert_eq!(back, v, "{ty} over JSON-RPC: {text}");
        let plain: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{ty} with serde_json: {e}\n{text}"));
        assert_eq!(plain, v, "{ty} with serde_json");
    }

    #[test]
    fn ints_floats_and_bools_are_read_from_any_wire_spelling() {
        assert_eq!(decode::<i64>(&Json::from("42")).unwrap(), 42);
        assert_eq!(decode::<i64>(&Json::from(" -7 ")).unwrap(), -7);
        assert_eq!(decode::<i64>(&Json::from(42)).unwrap(), 42);
        assert!(decode::<i64>(&Json::from("4x")).is_err());
        assert_eq!(decode::<f64>(&Json::from("1.5")).unwrap(), 1.5);
        assert_eq!(decode::<f64>(&Json::from(2)).unwrap(), 2.0);
        for (j, b) in [
            (Json::from(true), true),
            (Json::from("1"), true),
            (Json::from("false"), false),
            (Json::from(0), false),
        ] {
            assert_eq!(decode::<bool>(&j).unwrap(), b, "{j}");
        }
        let m: BTreeMap<i64, f64> = decode(&serde_json::json!({"0": "0.5", "12": 3})).unwrap();
        assert_eq!(m, BTreeMap::from([(0, 0.5), (12, 3.0)]));
    }

    #[test]
    fn void_results_take_any_value_and_options_take_empty_values_as_none() {
        decode::<()>(&Json::from("")).unwrap();
        decode::<()>(&Json::Null).unwrap();
        assert_eq!(decode::<Option<String>>(&Json::from("")).unwrap(), None);
        assert_eq!(decode::<Option<String>>(&Json::Null).unwrap(), None);
        assert_eq!(decode::<Option<String>>(&Json::from("x")).unwrap(), Some("x".into()));
    }

    #[test]
    fn unknown_enum_values_are_kept_and_sent_back_unchanged() {
        use crate::enums::VmPowerState;
        let v: VmPowerState = decode(&Json::from("Hibernating")).unwrap();
        assert_eq!(v, VmPowerState::Unrecognized("Hibernating".into()));
        assert!(!v.is_recognized());
        assert_eq!(arg(&v).unwrap(), Json::from("Hibernating"));
        // Known values match ignoring case, as xapi matches them.
        assert_eq!(
            decode::<VmPowerState>(&Json::from("running")).unwrap(),
            VmPowerState::Running
        );
        assert_eq!(VmPowerState::Running.to_string(), "Running");
        assert_eq!(VmPowerState::default(), VmPowerState::Halted);
    }

    #[test]
    fn records_take_the_datamodel_defaults_for_missing_fields_and_ignore_unknown_ones() {
        use crate::enums::{OnNormalExit, VmPowerState};
        let vm: crate::VMRecord =
            decode(&serde_json::json!({"name_label": "web", "VCPUs_max": "4", "from_a_newer_server": 1})).unwrap();
        assert_eq!(vm.name_label, "web");
        assert_eq!(vm.vcpus_max, 4);
        assert_eq!(vm.power_state, VmPowerState::Halted);
        assert_eq!(vm.hvm_shadow_multiplier, 1.0);
        assert_eq!(vm.actions_after_shutdown, OnNormalExit::default());
        assert!(vm.snapshot_of.is_null());
        // Wire names on the way out.
        let j = arg(&vm).unwrap();
        assert_eq!(j["VCPUs_max"], Json::from(4));
        assert_eq!(j["HVM_shadow_multiplier"], Json::from(1.0));
    }

    #[test]
    fn datetimes_read_every_form_the_servers_write() {
        let t = DateTime::from_unix(1_709_210_096);
        for s in [
            "20240229T12:34:56Z",
            "20240229T12:34:56",
            "2024-02-29T12:34:56Z",
            "2024-02-29T12:34:56+00:00",
            "20240229T123456Z",
            "1709210096",
            "1709210096.000",
        ] {
            assert_eq!(decode::<DateTime>(&Json::from(s)).unwrap(), t, "{s}");
        }
        assert_eq!(decode::<DateTime>(&Json::from(1_709_210_096)).unwrap(), t);
        assert!(decode::<DateTime>(&Json::from("yesterday")).is_err());
        assert_eq!(arg(&t).unwrap(), Json::from("20240229T12:34:56Z"));
        assert!(DateTime::default().is_epoch());
    }

    #[test]
    fn unrecognized_error_codes_and_undocumented_parameters_keep_their_values() {
        let e = crate::ApiError::new("NO_SUCH_CODE_YET", vec!["a".into()]);
        assert_eq!(e.code.as_str(), "NO_SUCH_CODE_YET");
        assert_eq!(e.params[0].name, None);
        assert_eq!(e.to_string(), "NO_SUCH_CODE_YET: a");
        let e = crate::ApiError::new(
            "HANDLE_INVALID",
            vec!["VM".into(), "OpaqueRef:x".into(), "extra".into()],
        );
        assert_eq!(e.param("class"), Some("VM"));
        assert_eq!(e.param("handle"), Some("OpaqueRef:x"));
        assert_eq!(e.params[2].name, None);
    }
}
