//! The reference's database backup format, as `GET /pool/xmldbdump` serves it and
//! `PUT /pool/xmldbdump` reads it:
//!
//! ```text
//! <?xml version="1.0" encoding="UTF-8"?>
//! <database><manifest><pair key="schema_major_vsn" value="5"/>
//! <pair key="schema_minor_vsn" value="775"/><pair key="generation_count" value="G"/></manifest>
//! <table name="VM"><row ref="OpaqueRef:…" __mtime="G" __ctime="G" uuid="…" name__label="…" …/>
//! </table>…</database>
//! ```
//!
//! One `table` per class the reference keeps in its database (rows left out for those it does
//! not persist: sessions, tasks, VIF and VBD metrics), one `row` per object, one attribute per
//! field. A column is the field's name with its datamodel namespace joined by `__`
//! (`name__label`, `memory__static_max`, `API_version__major`, [`column_name`]). Every value is
//! text: scalars as on the XML-RPC wire (datetimes `20240101T00:00:00Z`), sets and maps as
//! s-expressions (`('a' 'b')`, `(('key' 'value'))`); white space and `%` inside a value are
//! protected from XML's attribute normalisation as `%.` (space), `%t`, `%n`, `%r`, `%%`.
//! The schema version written is the reference's for this API version ([`SCHEMA`]).

use crate::audit::sexpr::SExpr;
use crate::schema::{ClassId, FieldId, Ty};
use crate::value::{format_datetime, format_float, from_json, Value};
use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::Value as Json;
use std::collections::HashMap;

/// The database schema version of the reference release whose API this daemon serves (API
/// 2.21: schema 5.775). A backup of another version is refused on restore.
pub const SCHEMA: (i64, i64) = (5, 775);

/// Classes of the datamodel that the reference's database does not hold (they are computed or
/// kept elsewhere): no table in a backup.
const NOT_IN_DATABASE: &[&str] = &[
    "auth",
    "data_source",
    "event",
    "message",
    "probe_result",
    "sr_stat",
    "vdi_nbd_server_info",
];

/// Classes whose table the reference writes without rows (it does not persist them).
const NOT_PERSISTED: &[&str] = &["session", "task", "VIF_metrics", "VBD_metrics"];

/// The datamodel namespaces of each class's fields besides `name` (which every class with a
/// `name_label` has): the column of field `<ns>_<rest>` is `<ns>__<rest>`.
const NAMESPACES: &[(&str, &[&str])] = &[
    ("VM", &["memory", "VCPUs", "actions", "PV", "HVM"]),
    ("VM_metrics", &["memory", "VCPUs"]),
    ("host", &["memory", "API_version"]),
    ("host_metrics", &["memory"]),
    ("VIF", &["qos"]),
    ("VBD", &["qos"]),
    ("VIF_metrics", &["io"]),
    ("PIF_metrics", &["io"]),
    ("VBD_metrics", &["io"]),
];

/// Whether the reference's database has a table for `class`.
pub fn has_table(class: ClassId) -> bool {
    !NOT_IN_DATABASE.contains(&class.name())
}

/// Whether a backup carries the rows of `class`.
pub fn has_rows(class: ClassId) -> bool {
    has_table(class) && !NOT_PERSISTED.contains(&class.name())
}

/// The column of field `field` (its wire name) of `class`.
pub fn column_name(class: ClassId, field: &str) -> String {
    let has_name = class.def().fields.iter().any(|f| f.name == "name_label");
    let extra = NAMESPACES
        .iter()
        .find(|(c, _)| *c == class.name())
        .map_or(&[][..], |(_, ns)| *ns);
    let namespaces = has_name.then_some("name").into_iter().chain(extra.iter().copied());
    for ns in namespaces {
        if let Some(rest) = field.strip_prefix(ns).and_then(|r| r.strip_prefix('_')) {
            return format!("{ns}__{rest}");
        }
    }
    field.to_owned()
}

/// The fields of `class` by column name.
pub fn columns(class: ClassId) -> HashMap<String, FieldId> {
    class
        .def()
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| (column_name(class, f.name), FieldId(i)))
        .collect()
}

/// One row: an object's reference, generations and columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `OpaqueRef:…`.
    pub reference: String,
    /// Generation of its last change.
    pub mtime: u64,
    /// Generation of its creation.
    pub ctime: u64,
    /// `(column, value text)`.
    pub columns: Vec<(String, String)>,
}

/// One table.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// The class name.
    pub name: String,
    /// Its rows.
    pub rows: Vec<Row>,
}

/// A whole backup.
#[derive(Clone, Debug, PartialEq)]
pub struct Database {
    /// `(schema_major_vsn, schema_minor_vsn)`.
    pub schema: (i64, i64),
    /// The database's generation count.
    pub generation: u64,
    /// Its tables.
    pub tables: Vec<Table>,
}

/// A value's text in a row.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Set(items) => SExpr::List(items.iter().map(|i| SExpr::Str(value_text(i))).collect()).text(),
        Value::Map(pairs) => SExpr::List(
            pairs
                .iter()
                .map(|(k, v)| SExpr::List(vec![SExpr::Str(value_text(k)), SExpr::Str(value_text(v))]))
                .collect(),
        )
        .text(),
        Value::Shared(s) => value_text(s.value()),
        other => scalar_text(other),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) | Value::Ref(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Int32(i) => i.to_string(),
        Value::Float(f) => format_float(*f),
        Value::Bool(b) => b.to_string(),
        Value::DateTime(t) => format_datetime(*t),
        Value::Enum(e) => (*e).to_owned(),
        _ => String::new(),
    }
}

/// Reads a value of type `ty` from its text in a row.
pub fn value_from_text(ty: &Ty, text: &str) -> Result<Value, String> {
    match ty {
        Ty::Set(inner) => {
            let items = atoms(text)?
                .iter()
                .map(|e| {
                    e.atom()
                        .ok_or("a set element is a list".to_string())
                        .and_then(|a| value_from_text(inner, a))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Value::set(items))
        }
        Ty::Map(kt, vt) => {
            let mut pairs: Vec<(Value, Value)> = Vec::new();
            for pair in atoms(text)? {
                let (Some(k), Some(v)) = (
                    pair.items().and_then(|i| i.first()).and_then(SExpr::atom),
                    pair.items().and_then(|i| i.get(1)).and_then(SExpr::atom),
                ) else {
                    return Err("a map entry is not a (key value) pair".into());
                };
                if pair.items().is_some_and(|i| i.len() != 2) {
                    return Err("a map entry is not a (key value) pair".into());
                }
                let (k, v) = (value_from_text(kt, k)?, value_from_text(vt, v)?);
                // A repeated key: the later entry wins, in the first one's place.
                match pairs.iter_mut().find(|(old, _)| *old == k) {
                    Some(slot) => slot.1 = v,
                    None => pairs.push((k, v)),
                }
            }
            Ok(Value::map(pairs))
        }
        // An empty datetime is the reference's "never".
        Ty::DateTime if text.is_empty() => Ok(Value::DateTime(0)),
        _ => from_json(&Json::String(text.to_owned()), ty).map_err(|e| e.to_string()),
    }
}

/// The elements of a set's or map's text (the empty text is the empty list).
fn atoms(text: &str) -> Result<Vec<SExpr>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match SExpr::parse(text)? {
        SExpr::List(items) => Ok(items),
        SExpr::Str(_) => Err("not a list".into()),
    }
}

/// Protects white space and `%` from XML attribute normalisation.
pub fn protect(s: &str) -> String {
    if !s.contains([' ', '\t', '\n', '\r', '%']) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            ' ' => out.push_str("%."),
            '\t' => out.push_str("%t"),
            '\n' => out.push_str("%n"),
            '\r' => out.push_str("%r"),
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out
}

/// Undoes [`protect`] (and reads the older `%_`, two spaces).
pub fn unprotect(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('.') => out.push(' '),
            Some('_') => out.push_str("  "),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('%') => out.push('%'),
            _ => {
                out.push('%');
                continue;
            }
        }
        chars.next();
    }
    out
}

fn push_attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            // Other control characters go out as they are, as the reference's writer sends
            // them: XML has no reference for most of them, and this reader takes them raw.
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The backup's text.
pub fn write(db: &Database) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<database><manifest>");
    for (k, v) in [
        ("schema_major_vsn", db.schema.0.to_string()),
        ("schema_minor_vsn", db.schema.1.to_string()),
        ("generation_count", db.generation.to_string()),
    ] {
        out.push_str("<pair");
        push_attr(&mut out, "key", k);
        push_attr(&mut out, "value", &v);
        out.push_str("/>");
    }
    out.push_str("</manifest>");
    for t in &db.tables {
        out.push_str("<table");
        push_attr(&mut out, "name", &t.name);
        out.push('>');
        for r in &t.rows {
            out.push_str("<row");
            push_attr(&mut out, "ref", &r.reference);
            push_attr(&mut out, "__mtime", &r.mtime.to_string());
            push_attr(&mut out, "__ctime", &r.ctime.to_string());
            for (k, v) in &r.columns {
                push_attr(&mut out, k, &protect(v));
            }
            out.push_str("/>");
        }
        out.push_str("</table>");
    }
    out.push_str("</database>");
    out
}

/// The attributes of an element, unescaped.
fn attributes(e: &quick_xml::events::BytesStart) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|e| format!("bad attribute: {e}"))?;
        let key = std::str::from_utf8(a.key.as_ref())
            .map_err(|_| "an attribute name is not UTF-8".to_string())?
            .to_owned();
        let value = a
            .unescape_value()
            .map_err(|e| format!("attribute {key}: {e}"))?
            .into_owned();
        out.push((key, value));
    }
    Ok(out)
}

/// Reads a backup. Checks its shape only (every row has a ref, the manifest its version);
/// what the rows hold is checked by whoever reads them.
pub fn parse(bytes: &[u8]) -> Result<Database, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let mut r = Reader::from_str(text);
    let mut manifest: HashMap<String, String> = HashMap::new();
    let mut tables: Vec<Table> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut seen_database = false;
    loop {
        let ev = r
            .read_event()
            .map_err(|e| format!("XML error at byte {}: {e}", r.buffer_position()))?;
        let (start, empty) = match &ev {
            Event::Start(s) => (Some(s.clone()), false),
            Event::Empty(s) => (Some(s.clone()), true),
            Event::End(_) => {
                path.pop();
                continue;
            }
            Event::Eof => break,
            _ => (None, false),
        };
        let Some(s) = start else { continue };
        let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
        let parent = path.last().map(String::as_str);
        match (parent, name.as_str()) {
            (None, "database") => seen_database = true,
            (Some("database"), "manifest") => {}
            (Some("manifest"), "pair") => {
                let attrs = attributes(&s)?;
                let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                if let (Some(k), Some(v)) = (get("key"), get("value")) {
                    manifest.insert(k, v);
                }
            }
            (Some("database"), "table") => {
                let attrs = attributes(&s)?;
                let name = attrs
                    .into_iter()
                    .find(|(n, _)| n == "name")
                    .map(|(_, v)| v)
                    .ok_or("a table has no name")?;
                tables.push(Table { name, rows: Vec::new() });
            }
            (Some("table"), "row") => {
                let mut row = Row {
                    reference: String::new(),
                    mtime: 0,
                    ctime: 0,
                    columns: Vec::new(),
                };
                for (k, v) in attributes(&s)? {
                    match k.as_str() {
                        "ref" if row.reference.is_empty() => row.reference = v,
                        "ref" => {}
                        "__mtime" => row.mtime = v.parse().unwrap_or(0),
                        "__ctime" => row.ctime = v.parse().unwrap_or(0),
                        _ => row.columns.push((k, unprotect(&v))),
                    }
                }
                if row.reference.is_empty() {
                    return Err("a row has no ref".into());
                }
                match tables.last_mut() {
                    Some(t) => t.rows.push(row),
                    None => return Err("a row outside a table".into()),
                }
            }
            (parent, other) => {
                return Err(format!(
                    "unexpected element <{other}> inside {}",
                    parent.map_or("the document".to_string(), |p| format!("<{p}>"))
                ))
            }
        }
        if !empty {
            path.push(name);
        }
    }
    if !seen_database {
        return Err("no <database> element".into());
    }
    if !path.is_empty() {
        return Err(format!("the document ends inside <{}>", path.join("><")));
    }
    let number = |k: &str| -> Result<i64, String> {
        manifest
            .get(k)
            .ok_or_else(|| format!("the manifest has no {k}"))?
            .trim()
            .parse()
            .map_err(|_| format!("the manifest's {k} is not a number"))
    };
    Ok(Database {
        schema: (number("schema_major_vsn")?, number("schema_minor_vsn")?),
        generation: manifest
            .get("generation_count")
            .and_then(|g| g.trim().parse().ok())
            .unwrap_or(0),
        tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::class_ids;

    #[test]
    fn columns_carry_the_namespaces() {
        assert_eq!(column_name(class_ids::VM, "name_label"), "name__label");
        assert_eq!(column_name(class_ids::VM, "memory_static_max"), "memory__static_max");
        assert_eq!(column_name(class_ids::VM, "VCPUs_at_startup"), "VCPUs__at_startup");
        assert_eq!(
            column_name(class_ids::VM, "actions_after_crash"),
            "actions__after_crash"
        );
        assert_eq!(column_name(class_ids::VM, "PV_bootloader_args"), "PV__bootloader_args");
        assert_eq!(column_name(class_ids::VM, "HVM_boot_params"), "HVM__boot_params");
        assert_eq!(column_name(class_ids::VM, "power_state"), "power_state");
        assert_eq!(column_name(class_ids::host, "API_version_major"), "API_version__major");
        assert_eq!(column_name(class_ids::VIF, "qos_algorithm_type"), "qos__algorithm_type");
        assert_eq!(column_name(class_ids::PIF_metrics, "io_read_kbs"), "io__read_kbs");
        // Not a namespace of that class: the guest metrics' PV fields stay flat.
        assert_eq!(
            column_name(class_ids::VM_guest_metrics, "PV_drivers_version"),
            "PV_drivers_version"
        );
        let vm = columns(class_ids::VM);
        assert_eq!(vm.len(), class_ids::VM.def().fields.len());
        assert!(vm.contains_key("memory__dynamic_min") && vm.contains_key("is_a_template"));
    }

    #[test]
    fn white_space_and_percent_survive_protection() {
        for s in ["", "plain", "a b\tc\nd\re", "100% sure %n", "%%.%"] {
            assert_eq!(unprotect(&protect(s)), s);
        }
        assert_eq!(protect("a b%"), "a%.b%%");
        assert_eq!(unprotect("x%_y"), "x  y");
        assert_eq!(unprotect("trailing %"), "trailing %");
    }

    #[test]
    fn values_round_trip_through_their_text() {
        let set_ty = &Ty::Set(&Ty::String);
        let v = Value::set(vec![Value::str("a'b"), Value::str("c d")]);
        assert_eq!(value_text(&v), r"('a\'b' 'c d')");
        assert_eq!(value_from_text(set_ty, &value_text(&v)).unwrap(), v);
        let map_ty = &Ty::Map(&Ty::String, &Ty::String);
        let m = Value::string_map([("k", "v"), ("back\\slash", "")]);
        assert_eq!(value_text(&m), r"(('k' 'v') ('back\\slash' ''))");
        assert_eq!(value_from_text(map_ty, &value_text(&m)).unwrap(), m);
        assert_eq!(value_from_text(set_ty, "").unwrap(), Value::set(vec![]));
        assert_eq!(value_from_text(&Ty::Int, "42").unwrap(), Value::Int(42));
        assert_eq!(value_from_text(&Ty::Bool, "true").unwrap(), Value::Bool(true));
        assert_eq!(
            value_from_text(&Ty::DateTime, "20240101T00:00:00Z").unwrap(),
            Value::DateTime(1_704_067_200)
        );
        assert!(value_from_text(&Ty::Int, "many").is_err());
        assert!(value_from_text(map_ty, "(('k'))").is_err());
        assert!(value_from_text(set_ty, "('a'").is_err());
    }

    #[test]
    fn a_backup_round_trips_and_broken_ones_are_refused() {
        let db = Database {
            schema: SCHEMA,
            generation: 9,
            tables: vec![
                Table {
                    name: "VM".into(),
                    rows: vec![Row {
                        reference: "OpaqueRef:1".into(),
                        mtime: 7,
                        ctime: 3,
                        columns: vec![
                            ("name__label".into(), "a \"VM\" <&> 100%\n".into()),
                            ("other_config".into(), "(('k' 'v w'))".into()),
                        ],
                    }],
                },
                Table {
                    name: "session".into(),
                    rows: vec![],
                },
            ],
        };
        let text = write(&db);
        assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<database><manifest>"));
        assert!(text.contains(r#"<pair key="schema_minor_vsn" value="775"/>"#));
        assert!(text.contains(r#"name__label="a%.&quot;VM&quot;%.&lt;&amp;&gt;%.100%%%n""#));
        assert_eq!(parse(text.as_bytes()).unwrap(), db);
        for bad in [
            "",
            "<database>",
            "<database><manifest></manifest></database>",
            "<database><manifest><pair key=\"schema_major_vsn\" value=\"5\"/><pair key=\"schema_minor_vsn\" value=\"x\"/></manifest></database>",
            "<database><table name=\"VM\"><row uuid=\"x\"/></table></database>",
            "<database><row ref=\"OpaqueRef:1\"/></database>",
            "<other/>",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let cut = &text.as_bytes()[..text.len() / 2];
        assert!(parse(cut).is_err());
    }

    #[test]
    fn what_the_fuzzer_found_reads_back_the_same() {
        // Control characters in a value (written raw, as read) and odd column names.
        let input = include_bytes!("../../../fuzz/regressions/xmldb_backup/nul-bytes-in-a-value.xml");
        let db = parse(input).unwrap();
        assert_eq!(parse(write(&db).as_bytes()).unwrap(), db);
    }
}
