//! The client side of XML-RPC as XenAPI clients speak it: `methodCall` bodies written from a
//! JSON tree, and `methodResponse` bodies read back into one (ints arrive as bare strings).

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Number, Value as Json};

fn escape(s: &str, out: &mut String) {
    for ch in s.chars() {
        match ch {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

fn write_value(v: &Json, out: &mut String) {
    out.push_str("<value>");
    match v {
        Json::Null => out.push_str("<string></string>"),
        Json::Bool(b) => out.push_str(if *b {
            "<boolean>1</boolean>"
        } else {
            "<boolean>0</boolean>"
        }),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str("<int>");
                out.push_str(&i.to_string());
                out.push_str("</int>");
            } else {
                out.push_str("<double>");
                out.push_str(&n.to_string());
                out.push_str("</double>");
            }
        }
        Json::String(s) => {
            out.push_str("<string>");
            escape(s, out);
            out.push_str("</string>");
        }
        Json::Array(items) => {
            out.push_str("<array><data>");
            for it in items {
                write_value(it, out);
            }
            out.push_str("</data></array>");
        }
        Json::Object(m) => {
            out.push_str("<struct>");
            for (k, val) in m {
                out.push_str("<member><name>");
                escape(k, out);
                out.push_str("</name>");
                write_value(val, out);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

/// A `methodCall` body.
pub fn encode_call(method: &str, params: &[Json]) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version=\"1.0\"?><methodCall><methodName>");
    escape(method, &mut out);
    out.push_str("</methodName><params>");
    for p in params {
        out.push_str("<param>");
        write_value(p, &mut out);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>");
    out
}

struct Parser<'a> {
    r: Reader<&'a [u8]>,
}

enum Tag {
    Start(Vec<u8>),
    Empty(Vec<u8>),
    End(Vec<u8>),
    Eof,
}

impl<'a> Parser<'a> {
    fn err<T>(msg: impl Into<String>) -> Result<T, String> {
        Err(format!("XML-RPC response: {}", msg.into()))
    }

    /// The next tag, skipping whitespace, declarations and comments.
    fn tag(&mut self) -> Result<Tag, String> {
        loop {
            match self.r.read_event().map_err(|e| format!("XML: {e}"))? {
                Event::Start(e) => return Ok(Tag::Start(e.local_name().as_ref().to_vec())),
                Event::Empty(e) => return Ok(Tag::Empty(e.local_name().as_ref().to_vec())),
                Event::End(e) => return Ok(Tag::End(e.local_name().as_ref().to_vec())),
                Event::Eof => return Ok(Tag::Eof),
                Event::Text(t) if t.iter().all(u8::is_ascii_whitespace) => continue,
                Event::Text(_) | Event::CData(_) => return Self::err("unexpected text"),
                _ => continue,
            }
        }
    }

    fn open(&mut self, name: &[u8]) -> Result<bool, String> {
        match self.tag()? {
            Tag::Start(n) if n == name => Ok(true),
            Tag::Empty(n) if n == name => Ok(false),
            _ => Self::err(format!("expected <{}>", String::from_utf8_lossy(name))),
        }
    }

    fn close(&mut self, name: &[u8]) -> Result<(), String> {
        match self.tag()? {
            Tag::End(n) if n == name => Ok(()),
            _ => Self::err(format!("expected </{}>", String::from_utf8_lossy(name))),
        }
    }

    /// Text up to the end tag (whatever its name).
    fn text(&mut self) -> Result<String, String> {
        let mut s = String::new();
        loop {
            match self.r.read_event().map_err(|e| format!("XML: {e}"))? {
                Event::Text(t) => s.push_str(&t.unescape().map_err(|e| format!("XML: {e}"))?),
                Event::CData(c) => s.push_str(&String::from_utf8_lossy(&c.into_inner())),
                Event::End(_) => return Ok(s),
                _ => return Self::err("expected text"),
            }
        }
    }

    /// After `<value>`: its content and `</value>`.
    fn value_body(&mut self) -> Result<Json, String> {
        let mut text = String::new();
        loop {
            match self.r.read_event().map_err(|e| format!("XML: {e}"))? {
                Event::Text(t) => text.push_str(&t.unescape().map_err(|e| format!("XML: {e}"))?),
                Event::End(_) => return Ok(Json::String(text)),
                Event::Start(e) => {
                    let name = e.local_name().as_ref().to_vec();
                    let v = self.typed(&name)?;
                    self.close(b"value")?;
                    return Ok(v);
                }
                Event::Empty(e) => {
                    let v = match e.local_name().as_ref() {
                        b"array" => Json::Array(Vec::new()),
                        b"struct" => Json::Object(Map::new()),
                        b"nil" => Json::Null,
                        _ => Json::String(String::new()),
                    };
                    self.close(b"value")?;
                    return Ok(v);
                }
                _ => return Self::err("unterminated <value>"),
            }
        }
    }

    fn typed(&mut self, tag: &[u8]) -> Result<Json, String> {
        Ok(match tag {
            b"string" | b"dateTime.iso8601" | b"base64" => Json::String(self.text()?),
            b"int" | b"i4" | b"i8" => {
                let t = self.text()?;
                Json::Number(t.trim().parse::<i64>().map_err(|_| format!("bad int {t:?}"))?.into())
            }
            b"boolean" => Json::Bool(matches!(self.text()?.trim(), "1" | "true")),
            b"double" => {
                let t = self.text()?;
                let f: f64 = t.trim().parse().map_err(|_| format!("bad double {t:?}"))?;
                Number::from_f64(f).map_or(Json::Null, Json::Number)
            }
            b"nil" => {
                self.close(b"nil")?;
                Json::Null
            }
            b"array" => {
                let mut items = Vec::new();
                if self.open(b"data")? {
                    loop {
                        match self.tag()? {
                            Tag::Start(n) if n == b"value" => items.push(self.value_body()?),
                            Tag::Empty(n) if n == b"value" => items.push(Json::String(String::new())),
                            Tag::End(n) if n == b"data" => break,
                            _ => return Self::err("expected <value> in <data>"),
                        }
                    }
                }
                self.close(b"array")?;
                Json::Array(items)
            }
            b"struct" => {
                let mut m = Map::new();
                loop {
                    match self.tag()? {
                        Tag::Start(n) if n == b"member" => {
                            let name = if self.open(b"name")? {
                                self.text()?
                            } else {
                                String::new()
                            };
                            let v = match self.tag()? {
                                Tag::Start(n) if n == b"value" => self.value_body()?,
                                Tag::Empty(n) if n == b"value" => Json::String(String::new()),
                                _ => return Self::err("expected <value> in <member>"),
                            };
                            self.close(b"member")?;
                            m.insert(name, v);
                        }
                        Tag::End(n) if n == b"struct" => break,
                        _ => return Self::err("expected <member> in <struct>"),
                    }
                }
                Json::Object(m)
            }
            other => return Self::err(format!("unknown type <{}>", String::from_utf8_lossy(other))),
        })
    }
}

/// Reads a `methodResponse` into the JSON tree of its single value (or a fault's text).
pub fn decode_response(body: &[u8]) -> Result<Json, String> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut p = Parser { r: reader };
    if !p.open(b"methodResponse")? {
        return Parser::err("empty methodResponse");
    }
    match p.tag()? {
        Tag::Start(n) if n == b"params" => {
            p.open(b"param")?;
            if !p.open(b"value")? {
                return Ok(Json::String(String::new()));
            }
            p.value_body()
        }
        Tag::Start(n) if n == b"fault" => {
            p.open(b"value")?;
            let v = p.value_body()?;
            Err(format!("XML-RPC fault: {v}"))
        }
        _ => Parser::err("expected <params> or <fault>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_what_xenapi_sends() {
        let call = encode_call(
            "VM.clone",
            &[json!("s"), json!("a<b"), json!(false), json!(3), json!({"k": [1]})],
        );
        assert!(call.contains("<string>a&lt;b</string>"));
        assert!(call.contains("<boolean>0</boolean>"));
        assert!(call.contains("<struct><member><name>k</name><value><array><data><value><int>1</int>"));
        let body = b"<?xml version=\"1.0\"?><methodResponse><params><param><value><struct>\
<member><name>Status</name><value>Success</value></member><member><name>Value</name><value><struct>\
<member><name>a</name><value>5</value></member><member><name>b</name><value><array><data><value>x &amp; y</value>\
</data></array></value></member><member><name>c</name><value><boolean>1</boolean></value></member>\
<member><name>d</name><value><double>1.5</double></value></member><member><name>e</name><value></value></member>\
<member><name>f</name><value><struct></struct></value></member>\
</struct></value></member></struct></value></param></params></methodResponse>";
        let v = decode_response(body).unwrap();
        assert_eq!(
            v,
            json!({"Status": "Success", "Value": {"a": "5", "b": ["x & y"], "c": true, "d": 1.5, "e": "", "f": {}}})
        );
    }
}
