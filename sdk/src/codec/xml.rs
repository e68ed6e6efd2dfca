//! XML-RPC as XenAPI speaks it: calls written as its clients write them (int64 as strings),
//! replies read into the untyped tree (`<value>` text, `<string>`, `<int>`/`<i4>`/`<i8>`,
//! `<double>`, `<boolean>`, `<dateTime.iso8601>`, `<base64>`, `<nil/>`, arrays, structs).

use crate::Error;
use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Number, Value as Json};
use std::borrow::Cow;

/// Deepest nesting of arrays and structs read.
const MAX_DEPTH: usize = 128;

/// A `methodCall` document.
pub(crate) fn write_call(method: &str, params: &[Json]) -> Result<String, Error> {
    let mut out = String::with_capacity(128 + 64 * params.len());
    out.push_str("<?xml version=\"1.0\"?><methodCall><methodName>");
    escape(method, &mut out)?;
    out.push_str("</methodName><params>");
    for p in params {
        out.push_str("<param>");
        write_value(p, &mut out)?;
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>");
    Ok(out)
}

/// Writes `<value>…</value>`: strings as bare text, ints as text (as XenAPI's clients send
/// int64), floats as `<double>`, bools as `<boolean>`, sets as arrays, maps and records as
/// structs.
pub(crate) fn write_value(v: &Json, out: &mut String) -> Result<(), Error> {
    match v {
        Json::Null => out.push_str("<value/>"),
        Json::Bool(b) => out.push_str(if *b {
            "<value><boolean>1</boolean></value>"
        } else {
            "<value><boolean>0</boolean></value>"
        }),
        Json::Number(n) => {
            if n.is_f64() {
                let f = n.as_f64().unwrap_or(0.0);
                out.push_str("<value><double>");
                out.push_str(&format_double(f));
                out.push_str("</double></value>");
            } else {
                out.push_str("<value>");
                out.push_str(&n.to_string());
                out.push_str("</value>");
            }
        }
        Json::String(s) => {
            out.push_str("<value>");
            escape(s, out)?;
            out.push_str("</value>");
        }
        Json::Array(items) => {
            out.push_str("<value><array><data>");
            for it in items {
                write_value(it, out)?;
            }
            out.push_str("</data></array></value>");
        }
        Json::Object(m) => {
            out.push_str("<value><struct>");
            for (k, val) in m {
                out.push_str("<member><name>");
                escape(k, out)?;
                out.push_str("</name>");
                write_value(val, out)?;
                out.push_str("</member>");
            }
            out.push_str("</struct></value>");
        }
    }
    Ok(())
}

/// A double as XML-RPC writes it: always with a point, exact on the way back.
fn format_double(f: f64) -> String {
    let mut s = format!("{f:?}");
    if !s.contains(['.', 'e', 'E']) {
        s.push_str(".0");
    }
    s
}

/// Escapes character data. XML 1.0 cannot carry C0 controls other than tab, newline and
/// carriage return (nor U+FFFE, U+FFFF) at all: such a string is refused here rather than
/// by the server. A carriage return is written as a reference, so that the server's XML
/// parser does not turn it into a newline.
fn escape(s: &str, out: &mut String) -> Result<(), Error> {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                return Err(Error::Encode(format!(
                    "U+{:04X} cannot travel in XML-RPC (JSON-RPC can carry it)",
                    c as u32
                )))
            }
            c => out.push(c),
        }
    }
    Ok(())
}

/// What a `methodResponse` holds.
pub(crate) enum Response {
    /// `<params><param><value>` (XenAPI's `{Status, …}` struct, or a bare value).
    Value(Json),
    /// `<fault>`.
    Fault { code: i64, message: String },
}

/// Reads a `methodResponse` document.
pub(crate) fn parse_response(body: &[u8]) -> Result<Response, Error> {
    let mut p = Parser::new(body);
    p.expect_start("methodResponse")?;
    let r = match p.next_tag()? {
        Tag::Start(n) if n == "params" => {
            p.expect_start("param")?;
            let v = p.value_elem()?;
            p.expect_end("param")?;
            p.expect_end("params")?;
            Response::Value(v)
        }
        Tag::Start(n) if n == "fault" => {
            let v = p.value_elem()?;
            p.expect_end("fault")?;
            let code = v.get("faultCode").and_then(|c| match c {
                Json::Number(n) => n.as_i64(),
                Json::String(s) => s.trim().parse().ok(),
                _ => None,
            });
            let message = v.get("faultString").and_then(Json::as_str).unwrap_or("").to_owned();
            Response::Fault {
                code: code.unwrap_or(0),
                message,
            }
        }
        _ => return Err(protocol("expected <params> or <fault>")),
    };
    p.expect_end("methodResponse")?;
    p.expect_eof()?;
    Ok(r)
}

/// Reads a reply document into the result, or the failure it carries: XenAPI wraps results
/// as `{Status: Success, Value}` and failures as `{Status: Failure, ErrorDescription}`.
pub(crate) fn read_reply(body: &[u8]) -> Result<Json, Error> {
    match parse_response(body)? {
        Response::Fault { code, message } => Err(Error::Fault { code, message }),
        Response::Value(Json::Object(mut m)) if m.contains_key("Status") => {
            match m.get("Status").and_then(Json::as_str) {
                Some("Success") => Ok(m.remove("Value").unwrap_or(Json::String(String::new()))),
                Some("Failure") => match m.remove("ErrorDescription") {
                    Some(Json::Array(items)) => Err(crate::error::api_failure(
                        items
                            .into_iter()
                            .map(|j| match j {
                                Json::String(s) => s,
                                other => other.to_string(),
                            })
                            .collect(),
                    )),
                    _ => Err(protocol("a failure without ErrorDescription")),
                },
                _ => Err(protocol("Status is neither Success nor Failure")),
            }
        }
        Response::Value(v) => Ok(v),
    }
}

/// Reads a lone `<value>…</value>` (a task's `result`); empty text is `void`.
pub fn parse_value_fragment(text: &str) -> Result<Json, Error> {
    if text.trim().is_empty() {
        return Ok(Json::String(String::new()));
    }
    let mut p = Parser::new(text.as_bytes());
    let v = p.value_elem()?;
    p.expect_eof()?;
    Ok(v)
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::Protocol(format!("XML-RPC: {}", msg.into()))
}

enum Tag<'a> {
    Start(Cow<'a, str>),
    Empty(Cow<'a, str>),
    End(Cow<'a, str>),
    Eof,
}

enum Ev<'a> {
    Tag(Tag<'a>),
    Text(Cow<'a, str>),
}

struct Parser<'a> {
    reader: Reader<&'a [u8]>,
    depth: usize,
}

fn name_of(raw: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(raw)
}

impl<'a> Parser<'a> {
    fn new(body: &'a [u8]) -> Self {
        let mut reader = Reader::from_reader(body);
        reader.config_mut().trim_text(false);
        reader.config_mut().expand_empty_elements = false;
        Parser { reader, depth: 0 }
    }

    fn next(&mut self) -> Result<Ev<'a>, Error> {
        loop {
            let ev = self.reader.read_event().map_err(|e| protocol(e.to_string()))?;
            return Ok(match ev {
                Event::Start(e) => Ev::Tag(Tag::Start(owned_name(e.local_name().as_ref()))),
                Event::Empty(e) => Ev::Tag(Tag::Empty(owned_name(e.local_name().as_ref()))),
                Event::End(e) => Ev::Tag(Tag::End(owned_name(e.local_name().as_ref()))),
                Event::Text(t) => Ev::Text(Cow::Owned(
                    t.unescape().map_err(|e| protocol(e.to_string()))?.into_owned(),
                )),
                Event::CData(c) => Ev::Text(Cow::Owned(String::from_utf8_lossy(&c.into_inner()).into_owned())),
                Event::Eof => Ev::Tag(Tag::Eof),
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => continue,
            });
        }
    }

    /// The next tag, skipping whitespace between elements.
    fn next_tag(&mut self) -> Result<Tag<'a>, Error> {
        loop {
            match self.next()? {
                Ev::Text(t) if t.trim().is_empty() => continue,
                Ev::Text(t) => return Err(protocol(format!("unexpected text {t:?}"))),
                Ev::Tag(t) => return Ok(t),
            }
        }
    }

    fn expect_start(&mut self, name: &str) -> Result<(), Error> {
        match self.next_tag()? {
            Tag::Start(n) if n == name => Ok(()),
            _ => Err(protocol(format!("expected <{name}>"))),
        }
    }

    fn expect_end(&mut self, name: &str) -> Result<(), Error> {
        match self.next_tag()? {
            Tag::End(n) if n == name => Ok(()),
            _ => Err(protocol(format!("expected </{name}>"))),
        }
    }

    fn expect_eof(&mut self) -> Result<(), Error> {
        match self.next_tag()? {
            Tag::Eof => Ok(()),
            _ => Err(protocol("content after the document")),
        }
    }

    /// Text up to the end tag `name`.
    fn text_until(&mut self, name: &str) -> Result<String, Error> {
        let mut s = String::new();
        loop {
            match self.next()? {
                Ev::Text(t) => s.push_str(&t),
                Ev::Tag(Tag::End(n)) if n == name => return Ok(s),
                _ => return Err(protocol(format!("expected text in <{name}>"))),
            }
        }
    }

    /// `<value>…</value>`, its opening tag not yet read.
    fn value_elem(&mut self) -> Result<Json, Error> {
        match self.next_tag()? {
            Tag::Start(n) if n == "value" => self.value_body(),
            Tag::Empty(n) if n == "value" => Ok(Json::String(String::new())),
            _ => Err(protocol("expected <value>")),
        }
    }

    /// The inside of a `<value>` and its end tag.
    fn value_body(&mut self) -> Result<Json, Error> {
        let mut text = String::new();
        loop {
            match self.next()? {
                Ev::Text(t) => text.push_str(&t),
                Ev::Tag(Tag::End(n)) if n == "value" => return Ok(Json::String(text)),
                Ev::Tag(Tag::Start(n)) => {
                    if !text.trim().is_empty() {
                        return Err(protocol("text beside a typed value"));
                    }
                    let v = self.typed(&n)?;
                    self.expect_end("value")?;
                    return Ok(v);
                }
                Ev::Tag(Tag::Empty(n)) => {
                    let v = match &*n {
                        "nil" => Json::Null,
                        "string" | "base64" | "dateTime.iso8601" => Json::String(String::new()),
                        "struct" => Json::Object(Map::new()),
                        "array" => Json::Array(Vec::new()),
                        other => return Err(protocol(format!("empty <{other}/>"))),
                    };
                    self.expect_end("value")?;
                    return Ok(v);
                }
                _ => return Err(protocol("malformed <value>")),
            }
        }
    }

    fn typed(&mut self, tag: &str) -> Result<Json, Error> {
        match tag {
            "string" | "base64" | "dateTime.iso8601" => Ok(Json::String(self.text_until(tag)?)),
            "int" | "i4" | "i8" => {
                let t = self.text_until(tag)?;
                t.trim()
                    .parse::<i64>()
                    .map(Json::from)
                    .map_err(|_| protocol(format!("<{tag}>{t}</{tag}> is not an integer")))
            }
            "double" => {
                let t = self.text_until(tag)?;
                let f: f64 = t
                    .trim()
                    .parse()
                    .map_err(|_| protocol(format!("<double>{t}</double> is not a number")))?;
                Number::from_f64(f)
                    .map(Json::Number)
                    .ok_or_else(|| protocol(format!("<double>{t}</double> is not finite")))
            }
            "boolean" => {
                let t = self.text_until(tag)?;
                match t.trim() {
                    "1" | "true" => Ok(Json::Bool(true)),
                    "0" | "false" => Ok(Json::Bool(false)),
                    other => Err(protocol(format!("<boolean>{other}</boolean>"))),
                }
            }
            "nil" => {
                self.expect_end("nil")?;
                Ok(Json::Null)
            }
            "array" => {
                self.enter()?;
                let mut items = Vec::new();
                match self.next_tag()? {
                    Tag::Start(n) if n == "data" => loop {
                        match self.next_tag()? {
                            Tag::Start(n) if n == "value" => items.push(self.value_body()?),
                            Tag::Empty(n) if n == "value" => items.push(Json::String(String::new())),
                            Tag::End(n) if n == "data" => break,
                            _ => return Err(protocol("expected <value> in <data>")),
                        }
                    },
                    Tag::Empty(n) if n == "data" => {}
                    _ => return Err(protocol("expected <data>")),
                }
                self.expect_end("array")?;
                self.depth -= 1;
                Ok(Json::Array(items))
            }
            "struct" => {
                self.enter()?;
                let mut m = Map::new();
                loop {
                    match self.next_tag()? {
                        Tag::Start(n) if n == "member" => {
                            self.expect_start("name")?;
                            let name = self.text_until("name")?;
                            let v = self.value_elem()?;
                            self.expect_end("member")?;
                            m.insert(name, v);
                        }
                        Tag::End(n) if n == "struct" => break,
                        _ => return Err(protocol("expected <member>")),
                    }
                }
                self.depth -= 1;
                Ok(Json::Object(m))
            }
            other => Err(protocol(format!("unknown value type <{other}>"))),
        }
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(protocol("values nested too deeply"));
        }
        Ok(())
    }
}

fn owned_name(raw: &[u8]) -> Cow<'static, str> {
    Cow::Owned(name_of(raw).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(value: &str) -> Json {
        let doc = format!("<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n{value}\n</param>\n</params>\n</methodResponse>\n");
        match parse_response(doc.as_bytes()).unwrap() {
            Response::Value(v) => v,
            Response::Fault { .. } => panic!("fault"),
        }
    }

    #[test]
    fn calls_carry_ints_as_strings_and_floats_as_doubles() {
        let doc = write_call(
            "VM.set_memory",
            &[json!("OpaqueRef:s"), json!(1_i64 << 40), json!(0.5), json!(true)],
        )
        .unwrap();
        assert_eq!(
            doc,
            "<?xml version=\"1.0\"?><methodCall><methodName>VM.set_memory</methodName><params>\
             <param><value>OpaqueRef:s</value></param><param><value>1099511627776</value></param>\
             <param><value><double>0.5</double></value></param>\
             <param><value><boolean>1</boolean></value></param></params></methodCall>"
        );
    }

    #[test]
    fn every_value_type_of_xml_rpc_is_read() {
        let v = response(
            "<value><struct>\
             <member><name>a</name><value>plain</value></member>\
             <member><name>b</name><value><string>s &amp; t</string></value></member>\
             <member><name>c</name><value><int>-3</int></value></member>\
             <member><name>d</name><value><i4>4</i4></value></member>\
             <member><name>e</name><value><i8>9007199254740993</i8></value></member>\
             <member><name>f</name><value><double>1.5</double></value></member>\
             <member><name>g</name><value><boolean>0</boolean></value></member>\
             <member><name>h</name><value><dateTime.iso8601>20240229T12:34:56Z</dateTime.iso8601></value></member>\
             <member><name>i</name><value><nil/></value></member>\
             <member><name>j</name><value><array><data><value>x</value><value/></data></array></value></member>\
             <member><name>k</name><value><array><data/></array></value></member>\
             <member><name>l</name><value><struct></struct></value></member>\
             <member><name>m</name><value/></member>\
             <member><name>n</name><value><base64>aGk=</base64></value></member>\
             </struct></value>",
        );
        assert_eq!(
            v,
            json!({"a": "plain", "b": "s & t", "c": -3, "d": 4, "e": 9_007_199_254_740_993_i64, "f": 1.5,
                   "g": false, "h": "20240229T12:34:56Z", "i": null, "j": ["x", ""], "k": [], "l": {},
                   "m": "", "n": "aGk="})
        );
    }

    #[test]
    fn faults_and_malformed_replies_are_told_apart() {
        let doc = "<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>-32601</int></value></member>\
                   <member><name>faultString</name><value>no such method</value></member></struct></value></fault></methodResponse>";
        match parse_response(doc.as_bytes()).unwrap() {
            Response::Fault { code, message } => {
                assert_eq!(code, -32601);
                assert_eq!(message, "no such method");
            }
            Response::Value(_) => panic!("not a fault"),
        }
        for bad in [
            "",
            "<methodResponse>",
            "<methodResponse><params></params></methodResponse>",
            "<html>502</html>",
            "<methodResponse><params><param><value><int>x</int></value></param></params></methodResponse>",
            "<methodResponse><params><param><value>a</value></param></params></methodResponse><x/>",
        ] {
            assert!(parse_response(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let depth = 10_000;
        let doc = format!(
            "{}{}",
            "<value><array><data>".repeat(depth),
            "</data></array></value>".repeat(depth)
        );
        assert!(parse_value_fragment(&doc).is_err());
    }

    #[test]
    fn control_characters_are_refused_before_sending() {
        assert!(matches!(write_call("m", &[json!("a\u{1}b")]), Err(Error::Encode(_))));
        let doc = write_call("m", &[json!("tab\tnl\ncr\r")]).unwrap();
        assert!(doc.contains("tab\tnl\ncr&#13;"), "{doc}");
    }

    #[test]
    fn xenapi_status_envelopes_are_unwrapped() {
        let ok = "<methodResponse><params><param><value><struct><member><name>Status</name><value>Success</value></member>\
                  <member><name>Value</name><value><array><data><value>OpaqueRef:a</value></data></array></value></member>\
                  </struct></value></param></params></methodResponse>";
        assert_eq!(read_reply(ok.as_bytes()).unwrap(), json!(["OpaqueRef:a"]));
        let failed = "<methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member>\
                      <member><name>ErrorDescription</name><value><array><data><value>HANDLE_INVALID</value><value>VM</value>\
                      <value>OpaqueRef:x</value></data></array></value></member></struct></value></param></params></methodResponse>";
        let Err(Error::Api(e)) = read_reply(failed.as_bytes()) else {
            panic!("not a failure")
        };
        assert_eq!(e.code, crate::ErrorCode::HandleInvalid);
        assert_eq!(e.param("class"), Some("VM"));
        assert_eq!(e.param("handle"), Some("OpaqueRef:x"));
    }

    #[test]
    fn task_result_fragments_are_read() {
        assert_eq!(parse_value_fragment("").unwrap(), json!(""));
        assert_eq!(
            parse_value_fragment("<value>OpaqueRef:x</value>").unwrap(),
            json!("OpaqueRef:x")
        );
        assert_eq!(
            parse_value_fragment("<value><array><data><value>a</value></data></array></value>").unwrap(),
            json!(["a"])
        );
    }
}
