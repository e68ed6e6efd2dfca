//! Generates the XenAPI schema tables from `vendor/xenapi/`.
//!
//! The datamodel is data: this script turns the vendored JSON facts into static Rust tables
//! (classes, fields, messages, enums, bound field pairs, error codes) that the store, the
//! dispatcher and the codecs walk. Nothing here is hand-maintained per class.

use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Classes whose objects live only in memory: they are rebuilt or meaningless after a restart.
const EPHEMERAL: &[&str] = &[
    "session",
    "task",
    "event",
    "VM_metrics",
    "VM_guest_metrics",
    "host_metrics",
    "PIF_metrics",
    "VIF_metrics",
    "VBD_metrics",
    "data_source",
    "sr_stat",
    "probe_result",
    "vdi_nbd_server_info",
];

type BuildResult<T> = Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("schema generation failed: {e}");
        std::process::exit(1);
    }
}

fn read_json(path: &Path) -> BuildResult<Json> {
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_optional(path: &Path) -> BuildResult<Option<Json>> {
    println!("cargo:rerun-if-changed={}", path.display());
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

fn s(v: &Json, key: &str) -> BuildResult<String> {
    v.get(key)
        .and_then(Json::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("missing string {key} in {v}"))
}

fn arr<'a>(v: &'a Json, key: &str) -> &'a [Json] {
    v.get(key).and_then(Json::as_array).map(Vec::as_slice).unwrap_or(&[])
}

struct Field {
    name: String,
    ty: String,
    qualifier: String,
    default: Option<String>,
}

struct Param {
    name: String,
    ty: String,
}

struct Message {
    name: String,
    implicit: bool,
    params: Vec<Param>,
    result: String,
    errors: Vec<String>,
}

struct Class {
    name: String,
    fields: Vec<Field>,
    messages: Vec<Message>,
}

fn parse_field(f: &Json) -> BuildResult<Field> {
    Ok(Field {
        name: s(f, "name")?,
        ty: s(f, "type")?,
        qualifier: s(f, "qualifier")?,
        default: f.get("default").and_then(Json::as_str).map(str::to_owned),
    })
}

fn parse_message(m: &Json) -> BuildResult<Message> {
    let mut params = Vec::new();
    for p in arr(m, "params") {
        params.push(Param {
            name: s(p, "name")?,
            ty: s(p, "type")?,
        });
    }
    Ok(Message {
        name: s(m, "name")?,
        implicit: m.get("implicit").and_then(Json::as_bool).unwrap_or(false),
        params,
        result: s(m, "result")?,
        errors: arr(m, "errors")
            .iter()
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect(),
    })
}

fn parse_class(c: &Json, enums: &mut BTreeMap<String, Vec<String>>) -> BuildResult<Class> {
    let mut fields = Vec::new();
    for f in arr(c, "fields") {
        fields.push(parse_field(f)?);
    }
    let mut messages = Vec::new();
    for m in arr(c, "messages") {
        messages.push(parse_message(m)?);
    }
    for e in arr(c, "enums") {
        let values = arr(e, "values")
            .iter()
            .filter_map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .or_else(|| v.get("name").and_then(Json::as_str).map(str::to_owned))
            })
            .collect();
        enums.entry(s(e, "name")?).or_insert(values);
    }
    Ok(Class {
        name: s(c, "name")?,
        fields,
        messages,
    })
}

/// A parsed XenAPI type, rendered as a Rust constant expression of `Ty`.
fn ty_expr(t: &str, class_ids: &BTreeMap<String, usize>, enum_ids: &BTreeMap<String, usize>) -> BuildResult<String> {
    let t = t.trim();
    if t == "<class> record" {
        return Ok("Ty::AnyRecord".into());
    }
    if t == "an event batch" {
        return Ok("Ty::EventBatch".into());
    }
    if let Some(inner) = strip_outer_map(t) {
        let (k, v) = split_arrow(inner)?;
        return Ok(format!(
            "Ty::Map(&{}, &{})",
            ty_expr(k, class_ids, enum_ids)?,
            ty_expr(v, class_ids, enum_ids)?
        ));
    }
    if let Some(inner) = t.strip_suffix(" set") {
        return Ok(format!("Ty::Set(&{})", ty_expr(inner, class_ids, enum_ids)?));
    }
    if let Some(inner) = t.strip_suffix(" option") {
        return Ok(format!("Ty::Option(&{})", ty_expr(inner, class_ids, enum_ids)?));
    }
    if let Some(c) = t.strip_suffix(" ref") {
        let id = class_ids.get(c).ok_or_else(|| format!("unknown class in type {t}"))?;
        return Ok(format!("Ty::Ref(ClassId({id}))"));
    }
    if let Some(c) = t.strip_suffix(" record") {
        let id = class_ids.get(c).ok_or_else(|| format!("unknown class in type {t}"))?;
        return Ok(format!("Ty::Record(ClassId({id}))"));
    }
    if let Some(e) = t.strip_prefix("enum ") {
        let id = enum_ids.get(e).ok_or_else(|| format!("unknown enum in type {t}"))?;
        return Ok(format!("Ty::Enum(EnumId({id}))"));
    }
    Ok(match t {
        "string" => "Ty::String",
        "int" => "Ty::Int",
        "float" => "Ty::Float",
        "bool" => "Ty::Bool",
        "datetime" => "Ty::DateTime",
        "void" => "Ty::Void",
        other => return Err(format!("unknown type {other}")),
    }
    .into())
}

/// `(K -> V) map` → `K -> V`, only when the outer parentheses enclose the whole key/value pair.
fn strip_outer_map(t: &str) -> Option<&str> {
    let body = t.strip_suffix(" map")?;
    let inner = body.strip_prefix('(')?.strip_suffix(')')?;
    // Make sure the first '(' matches the last ')'.
    let mut depth = 0i32;
    for (i, ch) in body.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 && i != body.len() - 1 {
                    return None;
                }
            }
            _ => {}
        }
    }
    Some(inner)
}

fn split_arrow(inner: &str) -> BuildResult<(&str, &str)> {
    let mut depth = 0i32;
    let bytes = inner.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'-' if depth == 0 && bytes.get(i + 1) == Some(&b'>') => {
                return Ok((inner[..i].trim(), inner[i + 2..].trim()));
            }
            _ => {}
        }
    }
    Err(format!("map type without arrow: {inner}"))
}

fn rust_str(v: &str) -> String {
    format!("{v:?}")
}

fn ident(name: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "type", "ref", "self", "Self", "mod", "fn", "match", "loop", "move", "static", "struct", "use", "where",
        "impl", "in", "for", "as", "box", "crate", "enum", "trait", "true", "false", "let", "const", "break",
        "continue", "else", "if", "return", "super", "unsafe", "while", "async", "await", "dyn", "abstract", "become",
        "do", "final", "macro", "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "pub", "extern",
        "mut", "gen",
    ];
    if KEYWORDS.contains(&name) {
        format!("r#{name}")
    } else {
        name.replace('-', "_")
    }
}

fn run() -> BuildResult<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let vendor = manifest.join("..").join("vendor").join("xenapi");
    let datamodel = read_json(&vendor.join("datamodel.json"))?;
    let relations = read_json(&vendor.join("relations.json"))?;
    let errors = read_json(&vendor.join("errors.json"))?;
    let additions = read_optional(&vendor.join("additions.json"))?;
    let seed_enums = read_optional(&vendor.join("enums.json"))?;
    let param_defaults = read_optional(&vendor.join("param_defaults.json"))?;

    let mut enums: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut classes = Vec::new();
    for c in datamodel.as_array().ok_or("datamodel.json is not a list")? {
        classes.push(parse_class(c, &mut enums)?);
    }
    let mut relation_pairs: Vec<((String, String), (String, String))> = Vec::new();
    let parse_rel = |r: &Json| -> BuildResult<((String, String), (String, String))> {
        let side = |x: &Json| -> BuildResult<(String, String)> {
            let a = x.as_array().ok_or("relation side is not a list")?;
            let c = a.first().and_then(Json::as_str).ok_or("relation class")?;
            let f = a.get(1).and_then(Json::as_str).ok_or("relation field")?;
            Ok((c.to_owned(), f.to_owned()))
        };
        let a = r.as_array().ok_or("relation is not a pair")?;
        Ok((side(a.first().ok_or("relation")?)?, side(a.get(1).ok_or("relation")?)?))
    };
    for r in relations.as_array().ok_or("relations.json is not a list")? {
        relation_pairs.push(parse_rel(r)?);
    }
    if let Some(add) = &additions {
        for c in arr(add, "classes") {
            classes.push(parse_class(c, &mut enums)?);
        }
        for fa in arr(add, "fields") {
            let class = s(fa, "class")?;
            let field = parse_field(fa.get("field").ok_or("field addition without field")?)?;
            let target = classes
                .iter_mut()
                .find(|c| c.name == class)
                .ok_or_else(|| format!("field addition for unknown class {class}"))?;
            if !target.fields.iter().any(|f| f.name == field.name) {
                target.fields.push(field);
            }
            for m in arr(fa, "messages") {
                let m = parse_message(m)?;
                if !target.messages.iter().any(|x| x.name == m.name) {
                    target.messages.push(m);
                }
            }
        }
        // Messages added to an existing class without a field of their own.
        for ma in arr(add, "messages") {
            let class = s(ma, "class")?;
            let target = classes
                .iter_mut()
                .find(|c| c.name == class)
                .ok_or_else(|| format!("message addition for unknown class {class}"))?;
            for m in arr(ma, "messages") {
                let m = parse_message(m)?;
                if target.messages.iter().any(|x| x.name == m.name) {
                    return Err(format!("message addition {class}.{} already exists", m.name));
                }
                target.messages.push(m);
            }
        }
        for r in arr(add, "relations") {
            relation_pairs.push(parse_rel(r)?);
        }
    }
    // Seed 000 is the authority for enum values.
    if let Some(seed) = &seed_enums {
        for (name, values) in seed.as_object().ok_or("enums.json is not an object")? {
            let vals: Vec<String> = values
                .as_array()
                .ok_or("enum values not a list")?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            // Values the rendering has and the seed lacks (e.g. `cls.VM`) are kept after the
            // seed's own: clients send them.
            let mut vals = vals;
            if let Some(rendered) = enums.get(name) {
                for v in rendered {
                    if !vals.contains(v) {
                        vals.push(v.clone());
                    }
                }
            }
            enums.insert(name.clone(), vals);
        }
    }

    // Every class with get_all_records also answers get_all_records_where (the reference's
    // expression language); the published rendering lists it for `message` only.
    for c in classes.iter_mut() {
        let has_all = c.messages.iter().any(|m| m.name == "get_all_records");
        let has_where = c.messages.iter().any(|m| m.name == "get_all_records_where");
        if has_all && !has_where {
            c.messages.push(Message {
                name: "get_all_records_where".into(),
                implicit: true,
                params: vec![
                    Param {
                        name: "session_id".into(),
                        ty: "session ref".into(),
                    },
                    Param {
                        name: "expr".into(),
                        ty: "string".into(),
                    },
                ],
                result: format!("({0} ref -> {0} record) map", c.name),
                errors: vec![],
            });
        }
    }

    let class_ids: BTreeMap<String, usize> = classes.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
    let enum_names: Vec<&String> = enums.keys().collect();
    let enum_ids: BTreeMap<String, usize> = enum_names.iter().enumerate().map(|(i, n)| ((*n).clone(), i)).collect();

    let mut out = String::new();
    out.push_str("// @generated by agent/build.rs from vendor/xenapi/. Do not edit.\n\n");

    // Enums.
    out.push_str("/// Every enum of the API, values in the reference's order.\npub static ENUMS: &[EnumDef] = &[\n");
    for (name, values) in &enums {
        let vals: Vec<String> = values.iter().map(|v| rust_str(v)).collect();
        let _ = writeln!(
            out,
            "    EnumDef {{ name: {}, values: &[{}] }},",
            rust_str(name),
            vals.join(", ")
        );
    }
    out.push_str("];\n\n");
    out.push_str("/// Enum ids by name.\n#[allow(non_upper_case_globals, dead_code)]\npub mod enum_ids {\n    use super::EnumId;\n");
    for (name, id) in &enum_ids {
        let _ = writeln!(out, "    pub const {}: EnumId = EnumId({id});", ident(name));
    }
    out.push_str("}\n\n");

    // Typed enums.
    out.push_str(&typed_enums(&enums));

    // Classes.
    out.push_str("/// Every class of the API.\npub static CLASSES: &[ClassDef] = &[\n");
    for c in &classes {
        let field_index: BTreeMap<&str, usize> =
            c.fields.iter().enumerate().map(|(i, f)| (f.name.as_str(), i)).collect();
        let _ = writeln!(out, "    ClassDef {{\n        name: {},", rust_str(&c.name));
        let _ = writeln!(out, "        persistent: {},", !EPHEMERAL.contains(&c.name.as_str()));
        out.push_str("        fields: &[\n");
        for f in &c.fields {
            let q = match f.qualifier.as_str() {
                "RW" => "Qualifier::Rw",
                "RO/constructor" => "Qualifier::RoConstructor",
                "RO/runtime" => "Qualifier::RoRuntime",
                other => return Err(format!("unknown qualifier {other}")),
            };
            let default = match &f.default {
                Some(d) => format!("Some({})", rust_str(d)),
                None => "None".into(),
            };
            let _ = writeln!(
                out,
                "            FieldDef {{ name: {}, ty: &{}, qualifier: {q}, default: {default} }},",
                rust_str(&f.name),
                ty_expr(&f.ty, &class_ids, &enum_ids)?
            );
        }
        out.push_str("        ],\n        messages: &[\n");
        for m in &c.messages {
            let kind = message_kind(c, m, &field_index);
            let defaults = param_defaults
                .as_ref()
                .and_then(|d| d.get(format!("{}.{}", c.name, m.name)));
            let params: Vec<String> = m
                .params
                .iter()
                .map(|p| {
                    let default = match defaults.and_then(|d| d.get(&p.name)) {
                        Some(v) => format!("Some({})", rust_str(&v.to_string())),
                        None => "None".into(),
                    };
                    ty_expr(&p.ty, &class_ids, &enum_ids).map(|t| {
                        format!(
                            "ParamDef {{ name: {}, ty: &{t}, default: {default} }}",
                            rust_str(&p.name)
                        )
                    })
                })
                .collect::<BuildResult<_>>()?;
            let errs: Vec<String> = m.errors.iter().map(|e| rust_str(e)).collect();
            let _ = writeln!(
                out,
                "            MessageDef {{ name: {}, implicit: {}, kind: {kind}, params: &[{}], result: &{}, errors: &[{}] }},",
                rust_str(&m.name),
                m.implicit,
                params.join(", "),
                ty_expr(&m.result, &class_ids, &enum_ids)?,
                errs.join(", ")
            );
        }
        out.push_str("        ],\n    },\n");
    }
    out.push_str("];\n\n");

    out.push_str("/// Class ids by name.\n#[allow(non_upper_case_globals, dead_code)]\npub mod class_ids {\n    use super::ClassId;\n");
    for (name, id) in &class_ids {
        let _ = writeln!(out, "    pub const {}: ClassId = ClassId({id});", ident(name));
    }
    out.push_str("}\n\n");

    out.push_str("/// Field ids by class and name.\n#[allow(non_upper_case_globals, non_snake_case, dead_code)]\npub mod fields {\n");
    for c in &classes {
        let _ = writeln!(out, "    /// Fields of `{}`.\n    pub mod {} {{\n        #[allow(unused_imports)]\n        use crate::schema::FieldId;", c.name, ident(&c.name));
        let mut seen = BTreeSet::new();
        for (i, f) in c.fields.iter().enumerate() {
            if seen.insert(f.name.clone()) {
                let _ = writeln!(out, "        pub const {}: FieldId = FieldId({i});", ident(&f.name));
            }
        }
        out.push_str("    }\n");
    }
    out.push_str("}\n\n");

    // Relations.
    // A pair naming a field the published API hides (e.g. `task.session`) is left out: only
    // visible fields are kept consistent generically.
    out.push_str(
        "/// Bound field pairs: each end lists the other.\npub static RELATIONS: &[(FieldRef, FieldRef)] = &[\n",
    );
    for ((ca, fa), (cb, fb)) in &relation_pairs {
        let fr = |c: &str, f: &str| -> Option<String> {
            let ci = class_ids.get(c)?;
            let fi = classes[*ci].fields.iter().position(|x| x.name == f)?;
            Some(format!("FieldRef {{ class: ClassId({ci}), field: FieldId({fi}) }}"))
        };
        match (fr(ca, fa), fr(cb, fb)) {
            (Some(a), Some(b)) => {
                let _ = writeln!(out, "    ({a}, {b}),");
            }
            _ => {
                let _ = writeln!(out, "    // hidden end: {ca}.{fa} <-> {cb}.{fb}");
            }
        }
    }
    out.push_str("];\n\n");

    // Errors.
    out.push_str("/// Every error code and its parameter names (None where undocumented).\npub static ERROR_CODES: &[(&str, Option<&[&str]>)] = &[\n");
    for (code, params) in errors.as_object().ok_or("errors.json is not an object")? {
        let p = match params.as_array() {
            Some(list) => {
                let names: Vec<String> = list.iter().filter_map(|x| x.as_str().map(rust_str)).collect();
                format!("Some(&[{}])", names.join(", "))
            }
            None => "None".into(),
        };
        let _ = writeln!(out, "    ({}, {p}),", rust_str(code));
    }
    out.push_str("];\n");

    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    std::fs::write(out_dir.join("schema_gen.rs"), out).map_err(|e| e.to_string())?;
    Ok(())
}

/// Classifies an implicit message by the field it accesses.
fn message_kind(c: &Class, m: &Message, fields: &BTreeMap<&str, usize>) -> String {
    let n = m.name.as_str();
    let field = |prefix: &str| n.strip_prefix(prefix).and_then(|f| fields.get(f).copied());
    let fixed = match n {
        "get_by_uuid" => Some("MessageKind::GetByUuid"),
        "get_by_name_label" => Some("MessageKind::GetByNameLabel"),
        "get_record" => Some("MessageKind::GetRecord"),
        "get_all" => Some("MessageKind::GetAll"),
        "get_all_records" => Some("MessageKind::GetAllRecords"),
        "get_all_records_where" => Some("MessageKind::GetAllRecordsWhere"),
        "create" if m.implicit => Some("MessageKind::Create"),
        "destroy" if m.implicit => Some("MessageKind::Destroy"),
        _ => None,
    };
    if let Some(k) = fixed {
        return k.into();
    }
    let has_self = m.params.len() >= 2 && m.params[1].ty == format!("{} ref", c.name);
    if m.implicit && has_self {
        if let Some(f) = field("get_") {
            if m.params.len() == 2 {
                return format!("MessageKind::Get(FieldId({f}))");
            }
        }
        if let Some(f) = field("add_to_") {
            return format!("MessageKind::AddToMap(FieldId({f}))");
        }
        if let Some(f) = field("remove_from_") {
            return format!("MessageKind::RemoveFromMap(FieldId({f}))");
        }
        if let Some(f) = field("set_") {
            return format!("MessageKind::Set(FieldId({f}))");
        }
        if let Some(f) = field("add_") {
            return format!("MessageKind::AddToSet(FieldId({f}))");
        }
        if let Some(f) = field("remove_") {
            return format!("MessageKind::RemoveFromSet(FieldId({f}))");
        }
    }
    // An explicit `set_<field>(self, value)` whose value has the field's type: a setter with
    // checks that the owning object's code may add.
    if !m.implicit && has_self && m.params.len() == 3 {
        if let Some(f) = field("set_") {
            if m.params[2].ty == c.fields[f].ty {
                return format!("MessageKind::ExplicitSet(FieldId({f}))");
            }
        }
    }
    "MessageKind::Custom".into()
}

/// `vm_power_state` → `VmPowerState`.
fn camel(name: &str) -> String {
    name.split(['_', '-'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// One Rust enum per API enum, its variants spelled as the values are (`-` becomes `_`), with
/// the wire spelling, a case-insensitive parse, and conversions to and comparisons with
/// `Value`.
fn typed_enums(enums: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = String::new();
    out.push_str("/// Every API enum as a Rust enum: `enums::VmPowerState::Halted`, never a string literal.\n");
    out.push_str("#[allow(non_camel_case_types, dead_code, clippy::enum_variant_names)]\npub mod enums {\n    use crate::value::Value;\n\n");
    for (name, values) in enums {
        let ty = camel(name);
        let variants: Vec<String> = values.iter().map(|v| ident(&v.replace(['-', '.'], "_"))).collect();
        let _ = writeln!(out, "    /// The values of `{name}`.\n    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]\n    pub enum {ty} {{");
        for (v, var) in values.iter().zip(&variants) {
            let _ = writeln!(out, "        /// `{v}`\n        {var},");
        }
        out.push_str("    }\n\n");
        let _ = writeln!(out, "    impl {ty} {{");
        let _ = writeln!(
            out,
            "        /// Every value, in the reference's order.\n        pub const ALL: &'static [{ty}] = &[{}];",
            variants
                .iter()
                .map(|v| format!("{ty}::{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out.push_str("        /// The wire spelling.\n        pub const fn name(self) -> &'static str {\n            match self {\n");
        for (v, var) in values.iter().zip(&variants) {
            let _ = writeln!(out, "                {ty}::{var} => {},", rust_str(v));
        }
        out.push_str("            }\n        }\n");
        out.push_str("        /// The value with this spelling, matched case-insensitively.\n        pub fn parse(s: &str) -> Option<Self> {\n            Self::ALL.iter().copied().find(|v| v.name().eq_ignore_ascii_case(s))\n        }\n");
        out.push_str("        /// As a `Value`.\n        pub const fn value(self) -> Value {\n            Value::Enum(self.name())\n        }\n    }\n\n");
        let _ = writeln!(out, "    impl From<{ty}> for Value {{\n        fn from(e: {ty}) -> Value {{\n            e.value()\n        }}\n    }}\n");
        let _ = writeln!(
            out,
            "    impl PartialEq<{ty}> for Value {{\n        fn eq(&self, e: &{ty}) -> bool {{\n            matches!(self, Value::Enum(s) if *s == e.name())\n        }}\n    }}\n"
        );
    }
    out.push_str("}\n\n");
    out
}
