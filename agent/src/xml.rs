//! The XML-RPC form of a typed value (`<value>…</value>`), compact as clients require.
//!
//! It lives here rather than in the RPC crate because `task.result` stores this fragment for
//! every client, JSON ones included.

use crate::value::{any_byte_below, any_byte_is, format_float, push_datetime, push_int, word_at, Object, Value};

/// Opens an array value; items follow as `<value>`s.
pub const ARRAY_OPEN: &str = "<value><array><data>";
/// Closes an array value.
pub const ARRAY_CLOSE: &str = "</data></array></value>";
/// Opens a struct value; `<member>`s follow.
pub const STRUCT_OPEN: &str = "<value><struct>";
/// Closes a struct value.
pub const STRUCT_CLOSE: &str = "</struct></value>";

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
            out.push_str("<value>");
            push_int(*i, out);
            out.push_str("</value>");
        }
        Value::Int32(i) => {
            out.push_str("<value><int>");
            push_int(i64::from(*i), out);
            out.push_str("</int></value>");
        }
        Value::Float(f) => {
            out.push_str("<value><double>");
            out.push_str(&format_float(*f));
            out.push_str("</double></value>");
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
            out.push_str(ARRAY_OPEN);
            for it in items.iter() {
                write_value(it, out);
            }
            out.push_str(ARRAY_CLOSE);
        }
        Value::Map(pairs) => {
            out.push_str(STRUCT_OPEN);
            for (k, val) in pairs.iter() {
                write_map_member(k, val, out);
            }
            out.push_str(STRUCT_CLOSE);
        }
        Value::Record(obj) => write_record(obj, out),
        Value::Struct(members) => {
            out.push_str(STRUCT_OPEN);
            for (k, val) in members {
                member(k, val, out);
            }
            out.push_str(STRUCT_CLOSE);
        }
        Value::None => out.push_str("<value></value>"),
        Value::Shared(v) => out.push_str(v.xml()),
    }
}

/// Writes one `<member>` of a map's `<struct>` (keys are written as member names).
pub fn write_map_member(k: &Value, val: &Value, out: &mut String) {
    match k {
        Value::String(s) | Value::Ref(s) => member(s, val, out),
        Value::Enum(s) => member(s, val, out),
        other => member(&other.key_text(), val, out),
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
    // Field names are plain identifiers (value.rs: `field_names_need_no_escaping`).
    let tags = crate::value::field_tags(obj.class, ["</member>", "<member><name>", "</name>"], &XML_FIELD_TAGS);
    out.push_str(STRUCT_OPEN);
    for (tag, val) in tags.iter().zip(obj.fields.iter()) {
        out.push_str(tag);
        write_value(val, out);
    }
    if !obj.fields.is_empty() {
        out.push_str("</member>");
    }
    out.push_str(STRUCT_CLOSE);
}

static XML_FIELD_TAGS: crate::value::FieldTags = crate::value::FieldTags::new();

/// Escapes text for XML character data.
///
/// Characters that XML 1.0 cannot carry at all, not even as references (C0 controls other than
/// tab, newline and carriage return; U+FFFE and U+FFFF), are written as U+FFFD: a string set over
/// JSON-RPC may hold them, and an XML-RPC client must still be able to parse the reply.
pub fn escape(s: &str, out: &mut String) {
    // The byte-level form of `forbidden_in_xml`, for speed (a test holds the two together).
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Runs of plain text are skipped eight bytes at a time.
        if let Some(w) = word_at(bytes, i) {
            if !any_byte_below(w, 0x20)
                && !any_byte_is(w, b'<')
                && !any_byte_is(w, b'>')
                && !any_byte_is(w, b'&')
                && !any_byte_is(w, b'"')
                && !any_byte_is(w, 0xef)
            {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        if PLAIN[usize::from(b)] {
            i += 1;
            continue;
        }
        let (rep, len) = match b {
            b'<' => ("&lt;", 1),
            b'>' => ("&gt;", 1),
            b'&' => ("&amp;", 1),
            b'"' => ("&quot;", 1),
            b'\r' => ("&#13;", 1),
            b'\t' | b'\n' => {
                i += 1;
                continue;
            }
            0..=0x1f => ("\u{fffd}", 1),
            0xef if matches!(bytes.get(i + 1..i + 3), Some([0xbf, 0xbe | 0xbf])) => ("\u{fffd}", 3),
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[start..i]);
        out.push_str(rep);
        i += len;
        start = i;
    }
    out.push_str(&s[start..]);
}

/// Bytes `escape` copies as they are (a table, for the bytes the eight-at-a-time scan leaves).
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 256 {
        t[b] = !matches!(b as u8, b'<' | b'>' | b'&' | b'"' | 0xef);
        b += 1;
    }
    t[b'\t' as usize] = true;
    t[b'\n' as usize] = true;
    t
};

/// Whether XML 1.0 cannot carry `c` at all, neither raw nor as a character reference: C0
/// controls other than tab, newline and carriage return, and U+FFFE / U+FFFF.
pub fn forbidden_in_xml(c: char) -> bool {
    (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{fffe}' | '\u{ffff}')
}

/// The `<value>` fragment of a value, as `task.result` holds it.
pub fn value_fragment(v: &Value) -> String {
    let mut s = String::new();
    write_value(v, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::escape;

    fn esc(s: &str) -> String {
        let mut out = String::new();
        escape(s, &mut out);
        out
    }

    /// The eight-byte scan finds what the byte loop finds, wherever it sits.
    #[test]
    fn escaping_does_not_depend_on_position() {
        for special in [
            "<", ">", "&", "\"", "\r", "\u{1}", "\u{fffe}", "\u{ffff}", "\t", "é", "\u{efbf}",
        ] {
            for len in 0..20 {
                for at in 0..=len {
                    let mut text: String = "abcdefghijklmnopqrst"[..len].to_owned();
                    text.insert_str(at, special);
                    let mut expected = String::new();
                    for ch in text.chars() {
                        match ch {
                            '<' => expected.push_str("&lt;"),
                            '>' => expected.push_str("&gt;"),
                            '&' => expected.push_str("&amp;"),
                            '"' => expected.push_str("&quot;"),
                            '\r' => expected.push_str("&#13;"),
                            '\t' | '\n' => expected.push(ch),
                            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => expected.push('\u{fffd}'),
                            c => expected.push(c),
                        }
                    }
                    assert_eq!(esc(&text), expected, "{text:?}");
                }
            }
        }
    }

    #[test]
    fn markup_is_escaped_and_text_kept() {
        assert_eq!(esc("a<b>&\"c\r\n\té"), "a&lt;b&gt;&amp;&quot;c&#13;\n\té");
    }

    #[test]
    fn escape_replaces_exactly_what_xml_forbids() {
        for c in ('\0'..='\u{10000}').chain(['\u{10ffff}']) {
            let out = esc(&c.to_string());
            let replaced = out == "\u{fffd}" && c != '\u{fffd}';
            assert_eq!(replaced, super::forbidden_in_xml(c), "{c:?} -> {out:?}");
        }
    }

    #[test]
    fn characters_xml_cannot_carry_become_replacement_characters() {
        assert_eq!(esc("a\u{1}b\u{1f}\u{0}"), "a\u{fffd}b\u{fffd}\u{fffd}");
        assert_eq!(esc("x\u{fffe}y\u{ffff}z\u{fffd}"), "x\u{fffd}y\u{fffd}z\u{fffd}");
        assert_eq!(esc("\u{efbf}\u{10000}"), "\u{efbf}\u{10000}");
    }
}
