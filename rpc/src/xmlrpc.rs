//! XML-RPC as XenAPI speaks it: a streaming quick-xml decoder for `methodCall` (into the
//! untyped JSON tree the agent types by the datamodel) and compact response envelopes.

use agent::value::Value;
use agent::xml::{escape, write_value};
use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Number, Value as Json};
use std::borrow::Cow;

/// Deepest nesting of arrays and structs accepted.
const MAX_DEPTH: usize = 64;

/// Why a request body is not a method call.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum XmlRpcError {
    /// Not well-formed XML.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// Well-formed, but not an XML-RPC method call.
    #[error("not an XML-RPC method call: {0}")]
    Structure(String),
}

/// A decoded call.
#[derive(Debug, PartialEq)]
pub struct MethodCall {
    /// `Class.message`.
    pub method: String,
    /// Untyped parameters.
    pub params: Vec<Json>,
}

struct Parser<'a> {
    reader: Reader<&'a [u8]>,
    depth: usize,
}

/// A parse event. Tag names of XML-RPC are static text; text borrows the request body
/// unless it held character references: a call decodes without an allocation per tag.
enum Ev<'a> {
    Start(Cow<'static, str>),
    Empty(Cow<'static, str>),
    End(Cow<'static, str>),
    Text(Cow<'a, str>),
    Eof,
}

/// A tag's local name: XML-RPC's own names as static text, any other copied (for errors).
fn tag_name(raw: &[u8]) -> Cow<'static, str> {
    Cow::Borrowed(match raw {
        b"value" => "value",
        b"string" => "string",
        b"member" => "member",
        b"name" => "name",
        b"struct" => "struct",
        b"array" => "array",
        b"data" => "data",
        b"param" => "param",
        b"params" => "params",
        b"methodCall" => "methodCall",
        b"methodName" => "methodName",
        b"int" => "int",
        b"i4" => "i4",
        b"i8" => "i8",
        b"boolean" => "boolean",
        b"double" => "double",
        b"dateTime.iso8601" => "dateTime.iso8601",
        b"base64" => "base64",
        b"nil" => "nil",
        other => return Cow::Owned(String::from_utf8_lossy(other).into_owned()),
    })
}

/// Text as XML 1.0 allows it: no C0 control other than tab, newline and carriage return, no
/// U+FFFE or U+FFFF, neither raw nor as a character reference. A reply could not carry such a
/// value back (`agent::xml::escape` writes U+FFFD for them), so the request is refused whole
/// rather than stored with characters its client could never read.
fn xml_chars(text: Cow<'_, str>) -> Result<Cow<'_, str>, XmlRpcError> {
    match text.chars().find(|&c| agent::xml::forbidden_in_xml(c)) {
        Some(c) => Err(XmlRpcError::Malformed(format!(
            "character U+{:04X} is not allowed in XML",
            u32::from(c)
        ))),
        None => Ok(text),
    }
}

fn structure(msg: impl Into<String>) -> XmlRpcError {
    XmlRpcError::Structure(msg.into())
}

impl<'a> Parser<'a> {
    fn new(body: &'a [u8]) -> Self {
        let mut reader = Reader::from_reader(body);
        reader.config_mut().trim_text(false);
        reader.config_mut().expand_empty_elements = false;
        Parser { reader, depth: 0 }
    }

    fn next(&mut self) -> Result<Ev<'a>, XmlRpcError> {
        loop {
            let ev = self
                .reader
                .read_event()
                .map_err(|e| XmlRpcError::Malformed(e.to_string()))?;
            return Ok(match ev {
                Event::Start(e) => Ev::Start(tag_name(e.local_name().as_ref())),
                Event::Empty(e) => Ev::Empty(tag_name(e.local_name().as_ref())),
                Event::End(e) => Ev::End(tag_name(e.local_name().as_ref())),
                Event::Text(t) => Ev::Text(xml_chars(
                    t.unescape().map_err(|e| XmlRpcError::Malformed(e.to_string()))?,
                )?),
                Event::CData(c) => Ev::Text(xml_chars(Cow::Owned(
                    String::from_utf8_lossy(&c.into_inner()).into_owned(),
                ))?),
                Event::Eof => Ev::Eof,
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => continue,
            });
        }
    }

    /// The next event that is not whitespace-only text.
    fn next_tag(&mut self) -> Result<Ev<'a>, XmlRpcError> {
        loop {
            match self.next()? {
                Ev::Text(t) if t.trim().is_empty() => continue,
                Ev::Text(t) => return Err(structure(format!("unexpected text {t:?}"))),
                other => return Ok(other),
            }
        }
    }

    fn expect_start(&mut self, name: &str) -> Result<bool, XmlRpcError> {
        match self.next_tag()? {
            Ev::Start(n) if n == name => Ok(true),
            Ev::Empty(n) if n == name => Ok(false),
            Ev::Start(n) | Ev::Empty(n) => Err(structure(format!("expected <{name}>, found <{n}>"))),
            Ev::End(n) => Err(structure(format!("expected <{name}>, found </{n}>"))),
            Ev::Eof => Err(structure(format!("expected <{name}>, found the end"))),
            Ev::Text(_) => Err(structure("unexpected text")),
        }
    }

    fn expect_end(&mut self, name: &str) -> Result<(), XmlRpcError> {
        match self.next_tag()? {
            Ev::End(n) if n == name => Ok(()),
            _ => Err(structure(format!("expected </{name}>"))),
        }
    }

    /// Text content up to the end tag `name`.
    fn text_until(&mut self, name: &str) -> Result<String, XmlRpcError> {
        let mut s = String::new();
        loop {
            match self.next()? {
                Ev::Text(t) => s.push_str(&t),
                Ev::End(n) if n == name => return Ok(s),
                _ => return Err(structure(format!("expected text in <{name}>"))),
            }
        }
    }

    fn method_call(&mut self) -> Result<MethodCall, XmlRpcError> {
        if !self.expect_start("methodCall")? {
            return Err(structure("empty methodCall"));
        }
        if !self.expect_start("methodName")? {
            return Err(structure("empty methodName"));
        }
        let method = self.text_until("methodName")?.trim().to_owned();
        let mut params = Vec::new();
        match self.next_tag()? {
            Ev::End(n) if n == "methodCall" => return Ok(MethodCall { method, params }),
            Ev::Empty(n) if n == "params" => {}
            Ev::Start(n) if n == "params" => loop {
                match self.next_tag()? {
                    Ev::Start(n) if n == "param" => {
                        params.push(self.value_elem()?);
                        self.expect_end("param")?;
                    }
                    Ev::End(n) if n == "params" => break,
                    _ => return Err(structure("expected <param>")),
                }
            },
            _ => return Err(structure("expected <params>")),
        }
        self.expect_end("methodCall")?;
        match self.next_tag()? {
            Ev::Eof => Ok(MethodCall { method, params }),
            _ => Err(structure("content after </methodCall>")),
        }
    }

    /// `<value>…</value>` (the opening tag not yet read).
    fn value_elem(&mut self) -> Result<Json, XmlRpcError> {
        if !self.expect_start("value")? {
            return Ok(Json::String(String::new()));
        }
        self.value_body()
    }

    /// The inside of `<value>` and its closing tag.
    fn value_body(&mut self) -> Result<Json, XmlRpcError> {
        let mut text = String::new();
        loop {
            match self.next()? {
                Ev::Text(t) => text.push_str(&t),
                Ev::End(n) if n == "value" => return Ok(Json::String(text)),
                Ev::Start(tag) => {
                    let v = self.typed(&tag, false)?;
                    self.expect_end("value")?;
                    return Ok(v);
                }
                Ev::Empty(tag) => {
                    let v = self.typed(&tag, true)?;
                    self.expect_end("value")?;
                    return Ok(v);
                }
                _ => return Err(structure("unterminated <value>")),
            }
        }
    }

    fn typed(&mut self, tag: &str, empty: bool) -> Result<Json, XmlRpcError> {
        let scalar = |p: &mut Self| -> Result<String, XmlRpcError> {
            if empty {
                Ok(String::new())
            } else {
                p.text_until(tag)
            }
        };
        Ok(match tag {
            "string" => Json::String(scalar(self)?),
            "int" | "i4" | "i8" => {
                let t = scalar(self)?;
                let n: i64 = t.trim().parse().map_err(|_| structure(format!("bad <{tag}> {t:?}")))?;
                Json::Number(n.into())
            }
            "boolean" => match scalar(self)?.trim() {
                "1" | "true" => Json::Bool(true),
                "0" | "false" => Json::Bool(false),
                other => return Err(structure(format!("bad <boolean> {other:?}"))),
            },
            "double" => {
                let t = scalar(self)?;
                let f: f64 = t.trim().parse().map_err(|_| structure(format!("bad <double> {t:?}")))?;
                Number::from_f64(f).map(Json::Number).unwrap_or(Json::Null)
            }
            "dateTime.iso8601" | "base64" => Json::String(scalar(self)?.trim().to_owned()),
            "nil" => {
                if !empty {
                    self.expect_end("nil")?;
                }
                Json::Null
            }
            "array" => {
                if empty {
                    return Ok(Json::Array(Vec::new()));
                }
                self.enter()?;
                let mut items = Vec::new();
                match self.next_tag()? {
                    Ev::Empty(n) if n == "data" => {}
                    Ev::Start(n) if n == "data" => loop {
                        match self.next_tag()? {
                            Ev::Start(n) if n == "value" => items.push(self.value_body()?),
                            Ev::Empty(n) if n == "value" => items.push(Json::String(String::new())),
                            Ev::End(n) if n == "data" => break,
                            _ => return Err(structure("expected <value> in <data>")),
                        }
                    },
                    _ => return Err(structure("expected <data> in <array>")),
                }
                self.expect_end("array")?;
                self.depth -= 1;
                Json::Array(items)
            }
            "struct" => {
                if empty {
                    return Ok(Json::Object(Map::new()));
                }
                self.enter()?;
                let mut m = Map::new();
                loop {
                    match self.next_tag()? {
                        Ev::Start(n) if n == "member" => {
                            let name = match self.next_tag()? {
                                Ev::Start(n) if n == "name" => self.text_until("name")?,
                                Ev::Empty(n) if n == "name" => String::new(),
                                _ => return Err(structure("expected <name> in <member>")),
                            };
                            let v = self.value_elem()?;
                            self.expect_end("member")?;
                            m.insert(name, v);
                        }
                        Ev::End(n) if n == "struct" => break,
                        _ => return Err(structure("expected <member> in <struct>")),
                    }
                }
                self.depth -= 1;
                Json::Object(m)
            }
            other => return Err(structure(format!("unknown value type <{other}>"))),
        })
    }

    fn enter(&mut self) -> Result<(), XmlRpcError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(structure("values nested too deeply"));
        }
        Ok(())
    }
}

/// Decodes a `methodCall` body.
pub fn decode_call(body: &[u8]) -> Result<MethodCall, XmlRpcError> {
    Parser::new(body).method_call()
}

const HEAD: &str = "<?xml version=\"1.0\"?><methodResponse><params><param>";
const TAIL: &str = "</param></params></methodResponse>";

/// `{Status: Success, Value: v}`.
pub fn success(v: &Value) -> String {
    success_sized(v, agent::value::encoded_len_hint(v, agent::value::Encoding::Xml))
}

/// [`success`] with the value's encoded size already estimated.
pub(crate) fn success_sized(v: &Value, hint: usize) -> String {
    let mut out = String::with_capacity(256 + hint);
    success_head(&mut out);
    write_value(v, &mut out);
    success_tail(&mut out);
    out
}

/// What comes before the value in a success response.
pub(crate) fn success_head(out: &mut String) {
    out.push_str(HEAD);
    out.push_str("<value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name>");
}

/// What comes after the value in a success response.
pub(crate) fn success_tail(out: &mut String) {
    out.push_str("</member></struct></value>");
    out.push_str(TAIL);
}

/// `{Status: Failure, ErrorDescription: [code, params…]}`.
pub fn failure(code: &str, params: &[String]) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(HEAD);
    out.push_str("<value><struct><member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name><value><array><data>");
    for s in std::iter::once(code).chain(params.iter().map(String::as_str)) {
        out.push_str("<value>");
        escape(s, &mut out);
        out.push_str("</value>");
    }
    out.push_str("</data></array></value></member></struct></value>");
    out.push_str(TAIL);
    out
}

/// A bare value with no Status wrapper (`system.listMethods`).
pub fn bare(v: &Value) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(HEAD);
    write_value(v, &mut out);
    out.push_str(TAIL);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_every_value_form() {
        let body = br#"<?xml version='1.0'?>
<methodCall><methodName>VM.set_name_label</methodName>
<params>
<param><value><string>OpaqueRef:s</string></value></param>
<param><value>bare &amp; text</value></param>
<param><value><int>42</int></value></param>
<param><value><i8>-7</i8></value></param>
<param><value><boolean>1</boolean></value></param>
<param><value><double>1.5</double></value></param>
<param><value><array><data><value>a</value><value><string/></value></data></array></value></param>
<param><value><struct><member><name>k</name><value>v</value></member></struct></value></param>
<param><value/></param>
<param><value><dateTime.iso8601>20250319T04:16:24Z</dateTime.iso8601></value></param>
</params></methodCall>"#;
        let c = decode_call(body).unwrap();
        assert_eq!(c.method, "VM.set_name_label");
        assert_eq!(
            c.params,
            vec![
                json!("OpaqueRef:s"),
                json!("bare & text"),
                json!(42),
                json!(-7),
                json!(true),
                json!(1.5),
                json!(["a", ""]),
                json!({"k": "v"}),
                json!(""),
                json!("20250319T04:16:24Z"),
            ]
        );
    }

    #[test]
    fn keeps_whitespace_inside_strings() {
        let c = decode_call(b"<methodCall><methodName>m</methodName><params><param><value><string>  a </string></value></param></params></methodCall>").unwrap();
        assert_eq!(c.params, vec![json!("  a ")]);
    }

    /// Found by the `xmlrpc_decode` fuzz target: a control character in a string decoded,
    /// and the reply then carried U+FFFD in its place.
    #[test]
    fn refuses_characters_xml_cannot_carry() {
        for text in ["a\u{1c}b", "&#1;", "&#x1F;", "\u{ffff}", "<![CDATA[\u{7}]]>"] {
            let body = format!("<methodCall><methodName>m</methodName><params><param><value>{text}</value></param></params></methodCall>");
            assert!(decode_call(body.as_bytes()).is_err(), "{text:?}");
        }
        let ok = "<methodCall><methodName>m</methodName><params><param><value>a\tb\nc&#13;é</value></param></params></methodCall>";
        assert!(decode_call(ok.as_bytes()).is_ok());
    }

    #[test]
    fn rejects_bad_bodies() {
        for body in [
            &b""[..],
            b"<methodCall><methodName>x</methodName><params><param><value><int>x</int></value></param></params></methodCall>",
            b"<methodCall><methodName>x</methodName><params>",
            b"<foo/>",
            b"garbage",
            b"<methodCall><methodName>x</methodName><params><param><value><struct><member><value>1</value></member></struct></value></param></params></methodCall>",
        ] {
            assert!(decode_call(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        let deep = format!(
            "<methodCall><methodName>x</methodName><params><param>{}{}</param></params></methodCall>",
            "<value><array><data>".repeat(200),
            "</data></array></value>".repeat(200)
        );
        assert!(decode_call(deep.as_bytes()).is_err());
    }

    #[test]
    fn responses_are_compact() {
        let s = success(&Value::Int(5));
        assert!(!s.contains('\n') && !s.contains("> <"));
        assert!(s.contains("<name>Value</name><value>5</value>"));
        let f = failure("HANDLE_INVALID", &["VM".into(), "OpaqueRef:x".into()]);
        assert!(f.contains("<value>HANDLE_INVALID</value><value>VM</value>"));
    }
}
