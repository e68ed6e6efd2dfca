//! The XML-RPC that plugins and extensions speak: the `methodCall` they are given, and the
//! `methodResponse` they print, read as the reference reads it (its plugin reader for plugins,
//! its RPC library's for extensions). The output comes from a program on the host, so the
//! reader never panics, bounds its depth, and says whether the text was not XML at all or XML
//! of the wrong shape.

use quick_xml::events::Event;
use quick_xml::Reader;
use std::borrow::Cow;

/// A value as XML-RPC carries it.
#[derive(Clone, Debug, PartialEq)]
pub enum XmlRpcValue {
    /// `<string>`, or text directly in `<value>`.
    String(String),
    /// `<int>`, `<i4>`, `<i8>`.
    Int(i64),
    /// `<boolean>`.
    Bool(bool),
    /// `<double>`.
    Double(f64),
    /// `<dateTime.iso8601>`, as written.
    DateTime(String),
    /// `<base64>`, as written.
    Base64(String),
    /// `<array>`.
    Array(Vec<XmlRpcValue>),
    /// `<struct>`, members in order.
    Struct(Vec<(String, XmlRpcValue)>),
    /// `<nil/>`.
    Nil,
}

impl XmlRpcValue {
    /// The member of a struct with this name.
    pub fn member(&self, name: &str) -> Option<&XmlRpcValue> {
        match self {
            XmlRpcValue::Struct(m) => m.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }
    /// The text of a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            XmlRpcValue::String(s) => Some(s),
            _ => None,
        }
    }
    /// The value as JSON (for error messages).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            XmlRpcValue::String(s) | XmlRpcValue::DateTime(s) | XmlRpcValue::Base64(s) => J::String(s.clone()),
            XmlRpcValue::Int(i) => J::from(*i),
            XmlRpcValue::Bool(b) => J::Bool(*b),
            XmlRpcValue::Double(d) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
            XmlRpcValue::Array(a) => J::Array(a.iter().map(XmlRpcValue::to_json).collect()),
            XmlRpcValue::Struct(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            XmlRpcValue::Nil => J::Null,
        }
    }
}

/// A `methodResponse`.
#[derive(Clone, Debug, PartialEq)]
pub enum MethodResponse {
    /// `<params>`: the values of its `<param>`s.
    Params(Vec<XmlRpcValue>),
    /// `<fault>`: its value.
    Fault(XmlRpcValue),
}

/// Why a response could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// The text is not an XML document.
    NotXml(String),
    /// The document is not a `methodResponse` of XML-RPC values.
    Shape(String),
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::NotXml(m) | ResponseError::Shape(m) => f.write_str(m),
        }
    }
}

/// The deepest nesting read.
const MAX_DEPTH: usize = 64;
/// The most elements read.
const MAX_ELEMENTS: usize = 1 << 20;

/// One element: its local name, direct text (concatenated) and child elements.
#[derive(Debug, Default)]
struct Node {
    name: String,
    text: String,
    children: Vec<Node>,
}

fn local_name(raw: &[u8]) -> String {
    let name = String::from_utf8_lossy(raw);
    match name.rsplit_once(':') {
        Some((_, local)) => local.to_owned(),
        None => name.into_owned(),
    }
}

/// Reads a document into its root element.
fn tree(text: &str) -> Result<Node, ResponseError> {
    let not_xml = |m: String| ResponseError::NotXml(m);
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(false);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut count = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| not_xml(format!("at byte {}: {e}", reader.buffer_position())))?;
        let (node, open) = match event {
            Event::Eof => break,
            Event::Start(s) => (local_name(s.local_name().as_ref()), true),
            Event::Empty(s) => (local_name(s.local_name().as_ref()), false),
            Event::End(_) => {
                let Some(done) = stack.pop() else {
                    return Err(not_xml("an end tag without a start".into()));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
                continue;
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(|e| not_xml(e.to_string()))?;
                push_text(&mut stack, root.is_some(), &s)?;
                continue;
            }
            Event::CData(c) => {
                let raw = c.into_inner();
                push_text(&mut stack, root.is_some(), &String::from_utf8_lossy(&raw))?;
                continue;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => continue,
        };
        count += 1;
        if count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
            return Err(not_xml("the document is too deep or too large".into()));
        }
        if stack.is_empty() && root.is_some() {
            return Err(not_xml("content after the root element".into()));
        }
        let n = Node {
            name: node,
            ..Node::default()
        };
        if open {
            stack.push(n);
        } else {
            match stack.last_mut() {
                Some(parent) => parent.children.push(n),
                None => root = Some(n),
            }
        }
    }
    if !stack.is_empty() {
        return Err(not_xml("the document ends inside an element".into()));
    }
    root.ok_or_else(|| not_xml("no root element".into()))
}

fn push_text(stack: &mut [Node], after_root: bool, s: &str) -> Result<(), ResponseError> {
    match stack.last_mut() {
        Some(top) => {
            top.text.push_str(s);
            Ok(())
        }
        None if s.trim().is_empty() => Ok(()),
        None if after_root => Err(ResponseError::NotXml("text after the root element".into())),
        None => Err(ResponseError::NotXml("text before the root element".into())),
    }
}

fn shape(m: impl Into<String>) -> ResponseError {
    ResponseError::Shape(m.into())
}

/// A container: only elements inside (whitespace between them allowed).
fn elements(n: &Node) -> Result<&[Node], ResponseError> {
    if !n.text.trim().is_empty() {
        return Err(shape(format!("unexpected text in <{}>", n.name)));
    }
    Ok(&n.children)
}

/// A leaf: only text inside.
fn leaf(n: &Node) -> Result<&str, ResponseError> {
    if let Some(c) = n.children.first() {
        return Err(shape(format!("unexpected <{}> in <{}>", c.name, n.name)));
    }
    Ok(&n.text)
}

/// The one child element of `n`, which must be named `name`.
fn only<'a>(n: &'a Node, name: &str) -> Result<&'a Node, ResponseError> {
    match elements(n)? {
        [c] if c.name == name => Ok(c),
        [c] => Err(shape(format!("<{}> in <{}> where <{name}> belongs", c.name, n.name))),
        [] => Err(shape(format!("<{}> has no <{name}>", n.name))),
        _ => Err(shape(format!("<{}> holds more than one element", n.name))),
    }
}

fn value(n: &Node) -> Result<XmlRpcValue, ResponseError> {
    if n.name != "value" {
        return Err(shape(format!("<{}> where a <value> belongs", n.name)));
    }
    if n.children.is_empty() {
        return Ok(XmlRpcValue::String(n.text.clone()));
    }
    let t = match elements(n)? {
        [c] => c,
        _ => return Err(shape("a <value> holds more than one element")),
    };
    let number = |s: &str| s.trim().to_owned();
    Ok(match t.name.as_str() {
        "string" => XmlRpcValue::String(leaf(t)?.to_owned()),
        "int" | "i4" | "i8" => {
            let s = number(leaf(t)?);
            XmlRpcValue::Int(
                s.parse()
                    .map_err(|_| shape(format!("<{}>{s}</{}> is not an integer", t.name, t.name)))?,
            )
        }
        "boolean" => match leaf(t)?.trim() {
            "1" | "true" => XmlRpcValue::Bool(true),
            "0" | "false" => XmlRpcValue::Bool(false),
            other => return Err(shape(format!("<boolean>{other}</boolean> is not a boolean"))),
        },
        "double" => {
            let s = number(leaf(t)?);
            XmlRpcValue::Double(
                s.parse()
                    .map_err(|_| shape(format!("<double>{s}</double> is not a number")))?,
            )
        }
        "dateTime.iso8601" => XmlRpcValue::DateTime(leaf(t)?.trim().to_owned()),
        "base64" => XmlRpcValue::Base64(leaf(t)?.trim().to_owned()),
        "nil" => {
            leaf(t)?;
            XmlRpcValue::Nil
        }
        "array" => {
            let data = match elements(t)? {
                [] => return Ok(XmlRpcValue::Array(Vec::new())),
                _ => only(t, "data")?,
            };
            XmlRpcValue::Array(elements(data)?.iter().map(value).collect::<Result<_, _>>()?)
        }
        "struct" => {
            let mut members = Vec::new();
            for m in elements(t)? {
                if m.name != "member" {
                    return Err(shape(format!("<{}> in a <struct>", m.name)));
                }
                match elements(m)? {
                    [k, v] if k.name == "name" => members.push((leaf(k)?.to_owned(), value(v)?)),
                    _ => return Err(shape("a <member> is not a <name> and a <value>")),
                }
            }
            XmlRpcValue::Struct(members)
        }
        other => return Err(shape(format!("<{other}> is not an XML-RPC type"))),
    })
}

/// Reads a `methodResponse`.
pub fn parse_method_response(text: &str) -> Result<MethodResponse, ResponseError> {
    let root = tree(text)?;
    if root.name != "methodResponse" {
        return Err(shape(format!("<{}> where a <methodResponse> belongs", root.name)));
    }
    let body = match elements(&root)? {
        [b] => b,
        [] => return Err(shape("an empty <methodResponse>")),
        _ => return Err(shape("a <methodResponse> holds more than one element")),
    };
    match body.name.as_str() {
        "params" => {
            let mut values = Vec::new();
            for p in elements(body)? {
                if p.name != "param" {
                    return Err(shape(format!("<{}> in <params>", p.name)));
                }
                values.push(value(only(p, "value")?)?);
            }
            Ok(MethodResponse::Params(values))
        }
        "fault" => Ok(MethodResponse::Fault(value(only(body, "value")?)?)),
        other => Err(shape(format!("<{other}> where <params> or <fault> belongs"))),
    }
}

/// Appends `<value>text</value>` (the reference writes the empty string as `<value/>`).
pub fn write_string(s: &str, out: &mut String) {
    if s.is_empty() {
        out.push_str("<value/>");
    } else {
        out.push_str("<value>");
        crate::xml::escape(s, out);
        out.push_str("</value>");
    }
}

/// The argument a plugin is run with: a call of `fn_name` with the session's ref and the
/// arguments as a struct of strings.
pub fn plugin_call(fn_name: &str, session: &str, args: &[(String, String)]) -> String {
    let mut out = String::with_capacity(128 + args.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>());
    out.push_str("<methodCall><methodName>");
    crate::xml::escape(fn_name, &mut out);
    out.push_str("</methodName><params><param>");
    write_string(session, &mut out);
    out.push_str("</param><param><value><struct>");
    for (k, v) in args {
        out.push_str("<member><name>");
        crate::xml::escape(k, &mut out);
        out.push_str("</name>");
        write_string(v, &mut out);
        out.push_str("</member>");
    }
    out.push_str("</struct></value></param></params></methodCall>");
    out
}

/// Appends a JSON value in the form the reference's RPC library writes it (an integer as
/// plain text, as XenAPI carries `int`s).
pub fn write_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value as J;
    match v {
        J::Null => out.push_str("<value><nil/></value>"),
        J::Bool(b) => out.push_str(if *b {
            "<value><boolean>1</boolean></value>"
        } else {
            "<value><boolean>0</boolean></value>"
        }),
        J::Number(n) => match n.as_i64() {
            Some(i) => {
                out.push_str("<value>");
                out.push_str(&i.to_string());
                out.push_str("</value>");
            }
            None => {
                out.push_str("<value><double>");
                out.push_str(&crate::value::format_float(n.as_f64().unwrap_or(0.0)));
                out.push_str("</double></value>");
            }
        },
        J::String(s) => {
            out.push_str("<value>");
            crate::xml::escape(s, out);
            out.push_str("</value>");
        }
        J::Array(items) => {
            out.push_str("<value><array><data>");
            for i in items {
                write_json(i, out);
            }
            out.push_str("</data></array></value>");
        }
        J::Object(m) => {
            out.push_str("<value><struct>");
            for (k, v) in m {
                out.push_str("<member><name>");
                crate::xml::escape(k, out);
                out.push_str("</name>");
                write_json(v, out);
                out.push_str("</member>");
            }
            out.push_str("</struct></value>");
        }
    }
}

/// The document an extension reads on stdin: a call of `method` with `params`.
pub fn extension_call(method: &str, params: &[serde_json::Value]) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?><methodCall><methodName>");
    crate::xml::escape(method, &mut out);
    out.push_str("</methodName><params>");
    for p in params {
        out.push_str("<param>");
        write_json(p, &mut out);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>");
    out
}

/// Text with characters XML cannot carry replaced, for error messages.
pub fn printable(s: &str) -> Cow<'_, str> {
    if s.chars().any(crate::xml::forbidden_in_xml) {
        Cow::Owned(
            s.chars()
                .map(|c| if crate::xml::forbidden_in_xml(c) { '\u{fffd}' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use XmlRpcValue as V;

    #[test]
    fn reads_what_pythons_xmlrpc_writes() {
        // xmlrpc.client.dumps(({'Status': 'Success', 'Value': 'a & b'},), '', True)
        let text = "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><struct>\n\
                    <member>\n<name>Status</name>\n<value><string>Success</string></value>\n</member>\n\
                    <member>\n<name>Value</name>\n<value><string>a &amp; b</string></value>\n</member>\n\
                    </struct></value>\n</param>\n</params>\n</methodResponse>\n\n";
        let MethodResponse::Params(p) = parse_method_response(text).unwrap() else {
            panic!()
        };
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].member("Status"), Some(&V::String("Success".into())));
        assert_eq!(p[0].member("Value"), Some(&V::String("a & b".into())));
    }

    #[test]
    fn reads_every_type() {
        let text = "<methodResponse><params><param><value><array><data>\
                    <value>plain  </value><value/><value><string/></value><value><i4> 7 </i4></value>\
                    <value><int>-3</int></value><value><i8>9000000000</i8></value>\
                    <value><boolean>1</boolean></value><value><double>2.5</double></value>\
                    <value><dateTime.iso8601>20240101T00:00:00Z</dateTime.iso8601></value>\
                    <value><base64>aGk=</base64></value><value><nil/></value><value><ex:nil/></value>\
                    <value><array/></value><value><struct></struct></value>\
                    </data></array></value></param></params></methodResponse>";
        let MethodResponse::Params(p) = parse_method_response(text).unwrap() else {
            panic!()
        };
        assert_eq!(
            p,
            vec![V::Array(vec![
                V::String("plain  ".into()),
                V::String(String::new()),
                V::String(String::new()),
                V::Int(7),
                V::Int(-3),
                V::Int(9_000_000_000),
                V::Bool(true),
                V::Double(2.5),
                V::DateTime("20240101T00:00:00Z".into()),
                V::Base64("aGk=".into()),
                V::Nil,
                V::Nil,
                V::Array(vec![]),
                V::Struct(vec![]),
            ])]
        );
    }

    #[test]
    fn reads_faults() {
        let text = "<methodResponse><fault><value><struct><member><name>faultCode</name>\
                    <value><int>42</int></value></member><member><name>faultString</name>\
                    <value><string>no</string></value></member></struct></value></fault></methodResponse>";
        let MethodResponse::Fault(f) = parse_method_response(text).unwrap() else {
            panic!()
        };
        assert_eq!(f.member("faultCode"), Some(&V::Int(42)));
        assert_eq!(f.member("faultString").and_then(V::as_str), Some("no"));
    }

    #[test]
    fn tells_text_that_is_not_xml_from_xml_of_the_wrong_shape() {
        for not_xml in [
            "",
            "hello",
            "Traceback (most recent call last):",
            "<methodResponse>",
            "<a></b>",
            "<a/><b/>",
            "<a/>trailing",
            "<methodResponse>&bogus;</methodResponse>",
        ] {
            assert!(
                matches!(parse_method_response(not_xml), Err(ResponseError::NotXml(_))),
                "{not_xml:?}"
            );
        }
        for wrong in [
            "<html/>",
            "<methodResponse/>",
            "<methodResponse><params/><params/></methodResponse>",
            "<methodResponse><other/></methodResponse>",
            "<methodResponse>text<params/></methodResponse>",
            "<methodResponse><params><param/></params></methodResponse>",
            "<methodResponse><params><param><value><i4>x</i4></value></param></params></methodResponse>",
            "<methodResponse><params><param><value><boolean>2</boolean></value></param></params></methodResponse>",
            "<methodResponse><params><param><value><float>1</float></value></param></params></methodResponse>",
            "<methodResponse><params><param><value><string><b/></string></value></param></params></methodResponse>",
            "<methodResponse><params><param><value><struct><member><name>a</name></member></struct></value></param></params></methodResponse>",
        ] {
            assert!(matches!(parse_method_response(wrong), Err(ResponseError::Shape(_))), "{wrong:?}");
        }
        let deep = "<value><array><data>".repeat(200);
        let doc = format!("<methodResponse><params><param>{deep}");
        assert!(parse_method_response(&doc).is_err());
    }

    #[test]
    fn writes_the_plugin_call() {
        let call = plugin_call(
            "main",
            "OpaqueRef:s",
            &[("a".into(), "x<y".into()), ("empty".into(), String::new())],
        );
        assert_eq!(
            call,
            "<methodCall><methodName>main</methodName><params><param><value>OpaqueRef:s</value></param>\
             <param><value><struct><member><name>a</name><value>x&lt;y</value></member>\
             <member><name>empty</name><value/></member></struct></value></param></params></methodCall>"
        );
        assert!(tree(&call).is_ok());
    }

    #[test]
    fn writes_the_extension_call_and_reads_it_back() {
        let params = vec![
            serde_json::json!("OpaqueRef:s"),
            serde_json::json!({"n": 5, "f": 1.5, "b": true, "l": [null, "s"]}),
        ];
        let call = extension_call("Ext.fn", &params);
        assert!(call.starts_with("<?xml version=\"1.0\"?><methodCall><methodName>Ext.fn</methodName>"));
        assert!(
            call.contains("<member><name>n</name><value>5</value></member>"),
            "{call}"
        );
        assert!(call.contains("<value><double>1.5</double></value>"), "{call}");
        assert!(call.contains("<value><nil/></value>"), "{call}");
        // The same values in a response read back.
        let body = call
            .trim_start_matches("<?xml version=\"1.0\"?><methodCall><methodName>Ext.fn</methodName>")
            .trim_end_matches("</methodCall>");
        let MethodResponse::Params(p) =
            parse_method_response(&format!("<methodResponse>{body}</methodResponse>")).unwrap()
        else {
            panic!()
        };
        assert_eq!(p[0], V::String("OpaqueRef:s".into()));
        assert_eq!(p[1].member("n"), Some(&V::String("5".into())));
        assert_eq!(p[1].member("b"), Some(&V::Bool(true)));
        assert_eq!(p[1].member("l"), Some(&V::Array(vec![V::Nil, V::String("s".into())])));
    }
}
