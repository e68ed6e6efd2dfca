//! XML-RPC for tests: encoding a call from JSON values and decoding a reply into JSON values
//! (`<int>` → number, `<string>`/bare `<value>` → string, `<struct>` → object, `<array>` →
//! array). Only what XenAPI replies use; anything else is reported, not guessed.

use serde_json::{Map, Value as Json};

/// Escapes text for XML character data.
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

fn encode_value(v: &Json, out: &mut String) {
    out.push_str("<value>");
    match v {
        Json::Null => out.push_str("<string></string>"),
        Json::Bool(b) => {
            out.push_str("<boolean>");
            out.push(if *b { '1' } else { '0' });
            out.push_str("</boolean>");
        }
        Json::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.push_str("<int>");
                out.push_str(&n.to_string());
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
            for i in items {
                encode_value(i, out);
            }
            out.push_str("</data></array>");
        }
        Json::Object(m) => {
            out.push_str("<struct>");
            for (k, v) in m {
                out.push_str("<member><name>");
                escape(k, out);
                out.push_str("</name>");
                encode_value(v, out);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

/// A `<methodCall>` body. `params: None` leaves out the `<params>` element altogether.
pub fn encode_call(method: &str, params: Option<&[Json]>) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version=\"1.0\"?><methodCall><methodName>");
    escape(method, &mut out);
    out.push_str("</methodName>");
    if let Some(params) = params {
        out.push_str("<params>");
        for p in params {
            out.push_str("<param>");
            encode_value(p, &mut out);
            out.push_str("</param>");
        }
        out.push_str("</params>");
    }
    out.push_str("</methodCall>");
    out
}

#[derive(Debug, PartialEq)]
enum Tok {
    Open(String),
    Close(String),
    Empty(String),
    Text(String),
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after.find(';').ok_or_else(|| format!("unterminated entity in {s:?}"))?;
        let ent = &after[..end];
        match ent {
            "lt" => out.push('<'),
            "gt" => out.push('>'),
            "amp" => out.push('&'),
            "quot" => out.push('"'),
            "apos" => out.push('\''),
            _ => {
                let code = if let Some(h) = ent.strip_prefix("#x") {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = ent.strip_prefix('#') {
                    d.parse().ok()
                } else {
                    None
                };
                let c = code
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity &{ent};"))?;
                out.push(c);
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('<') {
            let end = after.find('>').ok_or("unterminated tag")?;
            let tag = &after[..end];
            rest = &after[end + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                toks.push(Tok::Close(name.trim().to_owned()));
            } else if let Some(name) = tag.strip_suffix('/') {
                let name = name.split_whitespace().next().unwrap_or("");
                toks.push(Tok::Empty(name.to_owned()));
            } else {
                let name = tag.split_whitespace().next().unwrap_or("");
                toks.push(Tok::Open(name.to_owned()));
            }
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            toks.push(Tok::Text(unescape(&rest[..end])?));
            rest = &rest[end..];
        }
    }
    Ok(toks)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn skip_space(&mut self) {
        while let Some(Tok::Text(t)) = self.peek() {
            if t.trim().is_empty() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }
    fn next(&mut self) -> Option<&Tok> {
        let t = self.toks.get(self.pos);
        self.pos += 1;
        t
    }
    fn open(&mut self, name: &str) -> Result<(), String> {
        self.skip_space();
        match self.next() {
            Some(Tok::Open(n)) if n == name => Ok(()),
            other => Err(format!("expected <{name}>, got {other:?}")),
        }
    }
    fn close(&mut self, name: &str) -> Result<(), String> {
        self.skip_space();
        match self.next() {
            Some(Tok::Close(n)) if n == name => Ok(()),
            other => Err(format!("expected </{name}>, got {other:?}")),
        }
    }
    fn text_until(&mut self, name: &str) -> Result<String, String> {
        let mut s = String::new();
        loop {
            match self.next() {
                Some(Tok::Text(t)) => s.push_str(t),
                Some(Tok::Close(n)) if n == name => return Ok(s),
                other => return Err(format!("expected text in <{name}>, got {other:?}")),
            }
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.skip_space();
        match self.next() {
            Some(Tok::Empty(n)) if n == "value" => return Ok(Json::String(String::new())),
            Some(Tok::Open(n)) if n == "value" => {}
            other => return Err(format!("expected <value>, got {other:?}")),
        }
        // A bare string: text (possibly none) then </value>.
        let mut bare = String::new();
        loop {
            match self.peek() {
                Some(Tok::Text(t)) => {
                    bare.push_str(t);
                    self.pos += 1;
                }
                Some(Tok::Close(n)) if n == "value" => {
                    self.pos += 1;
                    return Ok(Json::String(bare));
                }
                _ => break,
            }
        }
        let v = match self.next() {
            Some(Tok::Empty(t)) => match t.as_str() {
                "string" => Json::String(String::new()),
                "nil" => Json::Null,
                "struct" => Json::Object(Map::new()),
                t => return Err(format!("unexpected <{t}/>")),
            },
            Some(Tok::Open(t)) => {
                let t = t.clone();
                match t.as_str() {
                    "string" | "dateTime.iso8601" | "base64" => Json::String(self.text_until(&t)?),
                    "int" | "i4" | "i8" => {
                        let s = self.text_until(&t)?;
                        let n: i64 = s.trim().parse().map_err(|_| format!("bad int {s:?}"))?;
                        Json::from(n)
                    }
                    "double" => {
                        let s = self.text_until(&t)?;
                        let n: f64 = s.trim().parse().map_err(|_| format!("bad double {s:?}"))?;
                        Json::from(n)
                    }
                    "boolean" => {
                        let s = self.text_until(&t)?;
                        Json::Bool(s.trim() == "1")
                    }
                    "array" => {
                        let mut items = Vec::new();
                        self.skip_space();
                        match self.next() {
                            Some(Tok::Empty(d)) if d == "data" => {}
                            Some(Tok::Open(d)) if d == "data" => loop {
                                self.skip_space();
                                if let Some(Tok::Close(d)) = self.peek() {
                                    if d == "data" {
                                        self.pos += 1;
                                        break;
                                    }
                                }
                                items.push(self.value()?);
                            },
                            other => return Err(format!("expected <data>, got {other:?}")),
                        }
                        self.close("array")?;
                        Json::Array(items)
                    }
                    "struct" => {
                        let mut m = Map::new();
                        loop {
                            self.skip_space();
                            match self.peek() {
                                Some(Tok::Close(s)) if s == "struct" => {
                                    self.pos += 1;
                                    break;
                                }
                                _ => {}
                            }
                            self.open("member")?;
                            self.open("name")?;
                            let name = self.text_until("name")?;
                            let v = self.value()?;
                            self.close("member")?;
                            m.insert(name, v);
                        }
                        Json::Object(m)
                    }
                    t => return Err(format!("unexpected <{t}>")),
                }
            }
            other => return Err(format!("unexpected {other:?} in <value>")),
        };
        self.close("value")?;
        Ok(v)
    }
}

/// Decodes a `<methodResponse>` into its one value (a fault becomes an object with
/// `faultCode`/`faultString` under the key `fault`).
pub fn decode_response(body: &str) -> Result<Json, String> {
    let mut p = Parser {
        toks: tokenize(body)?,
        pos: 0,
    };
    p.open("methodResponse")?;
    p.skip_space();
    match p.next() {
        Some(Tok::Open(n)) if n == "params" => {
            p.open("param")?;
            let v = p.value()?;
            p.close("param")?;
            p.close("params")?;
            p.close("methodResponse")?;
            Ok(v)
        }
        Some(Tok::Open(n)) if n == "fault" => {
            let v = p.value()?;
            let mut m = Map::new();
            m.insert("fault".into(), v);
            Ok(Json::Object(m))
        }
        other => Err(format!("expected <params> or <fault>, got {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_the_shapes_xenapi_uses() {
        let body = "<?xml version=\"1.0\"?><methodResponse><params><param><value><struct>\
            <member><name>Status</name><value>Success</value></member>\
            <member><name>Value</name><value><struct><member><name>a</name><value><array><data>\
            <value>x &amp; y</value><value><int>3</int></value><value><boolean>1</boolean></value>\
            <value/><value><string/></value></data></array></value></member></struct></value></member>\
            </struct></value></param></params></methodResponse>";
        let v = decode_response(body).unwrap();
        assert_eq!(
            v,
            json!({"Status": "Success", "Value": {"a": ["x & y", 3, true, "", ""]}})
        );
        let call = encode_call("VM.get_record", Some(&[json!("s<"), json!(1), json!({"k": [true]})]));
        assert!(call.contains("<string>s&lt;</string>"));
        assert!(call.contains("<int>1</int>"));
        assert!(encode_call("x", None).ends_with("</methodName></methodCall>"));
    }
}
