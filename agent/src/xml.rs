//! The XML-RPC form of a typed value (`<value>…</value>`), compact as clients require.
//!
//! It lives here rather than in the RPC crate because `task.result` stores this fragment for
//! every client, JSON ones included.

use crate::value::{format_float, push_datetime, Object, Value};
use std::fmt::Write as _;

/// Writes `<value>…</value>` for a typed value.
pub fn write_value(v: &Value, out: &mut String) {
    match v {
        Value::String(s) | Value::Ref(s) => {
            out.push_str("<value>");
            escape(s, out);
            out.push_str("</value>");
        }
        Value::Enum(s) => {
            out.push_str("<value>");
            escape(s, out);
            out.push_str("</value>");
        }
        Value::Int(i) => {
            let _ = write!(out, "<value>{i}</value>");
        }
        Value::Int32(i) => {
            let _ = write!(out, "<value><int>{i}</int></value>");
        }
        Value::Float(f) => {
            let _ = write!(out, "<value><double>{}</double></value>", format_float(*f));
        }
        Value::Bool(b) => {
            out.push_str(if *b {
                "<value><boolean>1</boolean></value>"
            } else {
                "<value><boolean>0</boolean></value>"
            });
        }
        Value::DateTime(t) => {
            out.push_str("<value><dateTime.iso8601>");
            push_datetime(*t, out);
            out.push_str("</dateTime.iso8601></value>");
        }
        Value::Set(items) => {
            out.push_str("<value><array><data>");
            for it in items {
                write_value(it, out);
            }
            out.push_str("</data></array></value>");
        }
        Value::Map(pairs) => {
            out.push_str("<value><struct>");
            for (k, val) in pairs {
                match k {
                    Value::String(s) | Value::Ref(s) => member(s, val, out),
                    Value::Enum(s) => member(s, val, out),
                    other => member(&other.key_text(), val, out),
                }
            }
            out.push_str("</struct></value>");
        }
        Value::Record(obj) => write_record(obj, out),
        Value::Struct(members) => {
            out.push_str("<value><struct>");
            for (k, val) in members {
                member(k, val, out);
            }
            out.push_str("</struct></value>");
        }
        Value::None => out.push_str("<value></value>"),
    }
}

fn member(name: &str, v: &Value, out: &mut String) {
    out.push_str("<member><name>");
    escape(name, out);
    out.push_str("</name>");
    write_value(v, out);
    out.push_str("</member>");
}

/// Writes a record as a struct keyed by field name.
pub fn write_record(obj: &Object, out: &mut String) {
    out.push_str("<value><struct>");
    for (f, val) in obj.class.def().fields.iter().zip(obj.fields.iter()) {
        member(f.name, val, out);
    }
    out.push_str("</struct></value>");
}

/// Escapes text for XML character data.
pub fn escape(s: &str, out: &mut String) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'"' => "&quot;",
            b'\r' => "&#13;",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(rep);
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// The `<value>` fragment of a value, as `task.result` holds it.
pub fn value_fragment(v: &Value) -> String {
    let mut s = String::new();
    write_value(v, &mut s);
    s
}
