//! `ova.xml`, the first member of an XVA: an XML-RPC struct `{version, objects}` where each
//! object is `{class, id, snapshot}`, `id` an archive-local name (`Ref:N`) and `snapshot` the
//! record as `get_record` sends it, its references rewritten to archive names.
//!
//! Reading turns the XML-RPC into untyped JSON (strings stay strings, as the wire has them), so
//! that any producer's file is accepted; records are typed later, field by field.

use super::BackupError;
use crate::value::Object;
use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Value as Json};

/// The archive format version this build writes (`export_vsn` 2: inline chunk checksums).
pub const EXPORT_VSN: i64 = 2;

/// One object of an archive.
#[derive(Clone, Debug)]
pub struct OvaObject {
    /// Class name as the datamodel spells it (`VM`, `VBD`, …).
    pub class: String,
    /// Archive-local name.
    pub id: String,
    /// The record, untyped.
    pub snapshot: Json,
}

/// A parsed `ova.xml`.
#[derive(Clone, Debug)]
pub struct Ova {
    /// The `version` struct, untyped.
    pub version: Json,
    /// Every object, in file order.
    pub objects: Vec<OvaObject>,
}

/// The `version` struct of an export made here.
pub struct Version<'a> {
    /// This host's name.
    pub hostname: &'a str,
    /// Product version (`host.software_version:product_version`).
    pub product_version: &'a str,
    /// Product brand.
    pub product_brand: &'a str,
    /// Build number.
    pub build_number: &'a str,
    /// API major version.
    pub xapi_major: i64,
    /// API minor version.
    pub xapi_minor: i64,
    /// The date the export was made (`YYYY-MM-DD`).
    pub date: &'a str,
}

fn string_member(name: &str, v: &str, out: &mut String) {
    out.push_str("<member><name>");
    out.push_str(name);
    out.push_str("</name><value>");
    crate::xml::escape(v, out);
    out.push_str("</value></member>");
}

fn int_member(name: &str, v: i64, out: &mut String) {
    out.push_str("<member><name>");
    out.push_str(name);
    out.push_str("</name><value><i4>");
    out.push_str(&v.to_string());
    out.push_str("</i4></value></member>");
}

/// Writes `ova.xml` for `objects` (class name, archive id, record with rewritten refs).
pub fn write(version: &Version<'_>, objects: &[(String, Object)]) -> String {
    let mut out = String::with_capacity(4096 + objects.len() * 4096);
    out.push_str("<value><struct><member><name>version</name><value><struct>");
    string_member("hostname", version.hostname, &mut out);
    string_member("date", version.date, &mut out);
    string_member("product_version", version.product_version, &mut out);
    string_member("product_brand", version.product_brand, &mut out);
    string_member("build_number", version.build_number, &mut out);
    int_member("xapi_major", version.xapi_major, &mut out);
    int_member("xapi_minor", version.xapi_minor, &mut out);
    int_member("export_vsn", EXPORT_VSN, &mut out);
    out.push_str("</struct></value></member><member><name>objects</name><value><array><data>");
    for (id, obj) in objects {
        out.push_str("<value><struct>");
        string_member("class", obj.class.name(), &mut out);
        string_member("id", id, &mut out);
        out.push_str("<member><name>snapshot</name>");
        crate::xml::write_record(obj, &mut out);
        out.push_str("</member></struct></value>");
    }
    out.push_str("</data></array></value></member></struct></value>");
    out
}

/// Parses `ova.xml`.
pub fn parse(text: &str) -> Result<Ova, BackupError> {
    let mut r = Reader::from_str(text);
    r.config_mut().trim_text(false);
    let top = loop {
        match next(&mut r)? {
            Event::Start(e) if e.name().as_ref() == b"value" => break parse_value(&mut r)?,
            Event::Eof => return Err(BackupError::Archive("ova.xml holds no value".into())),
            _ => {}
        }
    };
    let Json::Object(mut top) = top else {
        return Err(BackupError::Archive("ova.xml is not a struct".into()));
    };
    let version = top.remove("version").unwrap_or(Json::Null);
    let Some(Json::Array(items)) = top.remove("objects") else {
        return Err(BackupError::Archive("ova.xml has no objects array".into()));
    };
    let mut objects = Vec::with_capacity(items.len());
    for it in items {
        let Json::Object(mut m) = it else {
            return Err(BackupError::Archive("an object of ova.xml is not a struct".into()));
        };
        let class = match m.remove("class") {
            Some(Json::String(s)) => s,
            _ => return Err(BackupError::Archive("an object of ova.xml has no class".into())),
        };
        let id = match m.remove("id") {
            Some(Json::String(s)) => s,
            _ => return Err(BackupError::Archive(format!("an object of class {class} has no id"))),
        };
        let snapshot = m.remove("snapshot").unwrap_or(Json::Object(Map::new()));
        objects.push(OvaObject { class, id, snapshot });
    }
    Ok(Ova { version, objects })
}

fn next<'a>(r: &mut Reader<&'a [u8]>) -> Result<Event<'a>, BackupError> {
    r.read_event()
        .map_err(|e| BackupError::Archive(format!("ova.xml: {e}")))
}

fn text_of(e: &Event<'_>) -> Result<String, BackupError> {
    match e {
        Event::Text(t) => t
            .unescape()
            .map(|c| c.into_owned())
            .map_err(|e| BackupError::Archive(format!("ova.xml: {e}"))),
        Event::CData(c) => Ok(String::from_utf8_lossy(c).into_owned()),
        _ => Ok(String::new()),
    }
}

/// Reads the rest of an element (its start was consumed) as text.
fn element_text(r: &mut Reader<&[u8]>) -> Result<String, BackupError> {
    let mut s = String::new();
    let mut depth = 0usize;
    loop {
        let e = next(r)?;
        match e {
            Event::Start(_) => depth += 1,
            Event::End(_) if depth == 0 => return Ok(s),
            Event::End(_) => depth -= 1,
            Event::Text(_) | Event::CData(_) => s.push_str(&text_of(&e)?),
            Event::Eof => return Err(BackupError::Archive("ova.xml ends inside an element".into())),
            _ => {}
        }
    }
}

/// Reads a `<value>` (its start consumed) up to and including `</value>`.
fn parse_value(r: &mut Reader<&[u8]>) -> Result<Json, BackupError> {
    let mut text = String::new();
    let mut result: Option<Json> = None;
    loop {
        let e = next(r)?;
        match e {
            Event::Text(_) | Event::CData(_) => text.push_str(&text_of(&e)?),
            Event::Empty(_) => {}
            Event::Start(s) => {
                let name = s.name().as_ref().to_vec();
                let v = match name.as_slice() {
                    b"struct" => parse_struct(r)?,
                    b"array" => parse_array(r)?,
                    b"boolean" => {
                        let t = element_text(r)?;
                        Json::Bool(matches!(t.trim(), "1" | "true"))
                    }
                    b"int" | b"i4" | b"i8" => {
                        let t = element_text(r)?;
                        t.trim()
                            .parse::<i64>()
                            .map(Json::from)
                            .map_err(|_| BackupError::Archive(format!("ova.xml: bad integer {t:?}")))?
                    }
                    b"double" => {
                        let t = element_text(r)?;
                        let f: f64 = t
                            .trim()
                            .parse()
                            .map_err(|_| BackupError::Archive(format!("ova.xml: bad double {t:?}")))?;
                        serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
                    }
                    b"nil" => {
                        element_text(r)?;
                        Json::Null
                    }
                    // string, dateTime.iso8601, base64: text.
                    _ => Json::String(element_text(r)?),
                };
                result = Some(v);
            }
            Event::End(e) if e.name().as_ref() == b"value" => {
                return Ok(result.unwrap_or(Json::String(text)));
            }
            Event::End(_) => return Err(BackupError::Archive("ova.xml: unbalanced <value>".into())),
            Event::Eof => return Err(BackupError::Archive("ova.xml ends inside a value".into())),
            _ => {}
        }
    }
}

fn parse_struct(r: &mut Reader<&[u8]>) -> Result<Json, BackupError> {
    let mut m = Map::new();
    loop {
        match next(r)? {
            Event::Start(s) if s.name().as_ref() == b"member" => {
                let mut name = String::new();
                let mut value = Json::String(String::new());
                loop {
                    match next(r)? {
                        Event::Start(s) if s.name().as_ref() == b"name" => name = element_text(r)?,
                        Event::Start(s) if s.name().as_ref() == b"value" => value = parse_value(r)?,
                        Event::Empty(s) if s.name().as_ref() == b"value" => value = Json::String(String::new()),
                        Event::End(s) if s.name().as_ref() == b"member" => break,
                        Event::Eof => return Err(BackupError::Archive("ova.xml ends inside a member".into())),
                        _ => {}
                    }
                }
                m.insert(name, value);
            }
            Event::End(s) if s.name().as_ref() == b"struct" => return Ok(Json::Object(m)),
            Event::Eof => return Err(BackupError::Archive("ova.xml ends inside a struct".into())),
            _ => {}
        }
    }
}

fn parse_array(r: &mut Reader<&[u8]>) -> Result<Json, BackupError> {
    let mut items = Vec::new();
    loop {
        match next(r)? {
            Event::Start(s) if s.name().as_ref() == b"value" => items.push(parse_value(r)?),
            Event::Empty(s) if s.name().as_ref() == b"value" => items.push(Json::String(String::new())),
            Event::End(s) if s.name().as_ref() == b"array" => return Ok(Json::Array(items)),
            Event::Eof => return Err(BackupError::Archive("ova.xml ends inside an array".into())),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_a_third_party_writes() {
        // The shape of a file made by Xen Orchestra's XVA writer: untyped ints, typed booleans.
        let x = "<value><struct><member><name>version</name><value><struct><member><name>export_vsn</name><value>2</value></member></struct></value></member>\
                 <member><name>objects</name><value><array><data><value><struct><member><name>class</name><value>VM</value></member>\
                 <member><name>id</name><value>Ref:000</value></member><member><name>snapshot</name><value><struct>\
                 <member><name>name_label</name><value>a &amp; b</value></member><member><name>VCPUs_max</name><value>2</value></member>\
                 <member><name>is_a_template</name><value><boolean>0</boolean></value></member>\
                 <member><name>tags</name><value><array><data><value><string>t</string></value></data></array></value></member>\
                 <member><name>empty</name><value/></member></struct></value></member></struct></value></data></array></value></member></struct></value>";
        let ova = parse(x).unwrap();
        assert_eq!(ova.version["export_vsn"], Json::String("2".into()));
        assert_eq!(ova.objects.len(), 1);
        let o = &ova.objects[0];
        assert_eq!((o.class.as_str(), o.id.as_str()), ("VM", "Ref:000"));
        assert_eq!(o.snapshot["name_label"], "a & b");
        assert_eq!(o.snapshot["VCPUs_max"], "2");
        assert_eq!(o.snapshot["is_a_template"], false);
        assert_eq!(o.snapshot["tags"], serde_json::json!(["t"]));
        assert_eq!(o.snapshot["empty"], "");
    }

    #[test]
    fn refuses_broken_files() {
        for bad in [
            "",
            "<value><struct>",
            "<value><struct><member><name>objects</name><value>x</value></member></struct></value>",
            "<value><i4>x</i4></value>",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
