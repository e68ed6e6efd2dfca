//! The published XenAPI datamodel as the tests read it, straight from `vendor/xenapi/`
//! (independently of the daemon's generated tables): classes, fields with their types and
//! qualifiers, messages with their parameter lists, enums, and the bound field pairs.

use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap};

/// A field or parameter type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ty {
    /// `string`, `int`, `float`, `bool`, `datetime`.
    Prim(String),
    /// `X ref`.
    Ref(String),
    /// `enum E`.
    Enum(String),
    /// `T set`.
    Set(Box<Ty>),
    /// `(K -> V) map`.
    Map(Box<Ty>, Box<Ty>),
    /// `X record`.
    Record(String),
    /// `T option`.
    Option(Box<Ty>),
}

impl Ty {
    /// Parses a datamodel type string.
    pub fn parse(s: &str) -> Ty {
        let s = s.trim();
        if let Some(inner) = s.strip_suffix(" set") {
            return Ty::Set(Box::new(Ty::parse(inner)));
        }
        if let Some(inner) = s.strip_suffix(" option") {
            return Ty::Option(Box::new(Ty::parse(inner)));
        }
        if let Some(inner) = s.strip_suffix(" map") {
            let inner = inner.trim().trim_start_matches('(').trim_end_matches(')');
            let (k, v) = inner.split_once(" -> ").unwrap_or((inner, "string"));
            return Ty::Map(Box::new(Ty::parse(k)), Box::new(Ty::parse(v)));
        }
        if let Some(c) = s.strip_suffix(" ref") {
            return Ty::Ref(c.to_owned());
        }
        if let Some(c) = s.strip_suffix(" record") {
            return Ty::Record(c.to_owned());
        }
        if let Some(e) = s.strip_prefix("enum ") {
            return Ty::Enum(e.to_owned());
        }
        Ty::Prim(s.to_owned())
    }
}

/// One field.
#[derive(Clone, Debug)]
pub struct Field {
    /// Name.
    pub name: String,
    /// Type.
    pub ty: Ty,
    /// `RW`, `RO/runtime` or `RO/constructor`.
    pub qualifier: String,
    /// Whether the field has a default (and may be left out of a constructor record).
    pub has_default: bool,
}

/// One message.
#[derive(Clone, Debug)]
pub struct Message {
    /// Parameter types, in order (the session first where it takes one).
    pub params: Vec<(String, Ty)>,
}

impl Message {
    /// Whether the first parameter is a session.
    pub fn takes_session(&self) -> bool {
        self.params
            .first()
            .is_some_and(|(n, t)| n == "session_id" && *t == Ty::Ref("session".into()))
    }
}

/// One class.
#[derive(Clone, Debug, Default)]
pub struct Class {
    /// Fields in order.
    pub fields: Vec<Field>,
    /// Messages by name.
    pub messages: BTreeMap<String, Message>,
}

/// The whole datamodel.
#[derive(Clone, Debug, Default)]
pub struct Datamodel {
    /// Classes by wire name.
    pub classes: BTreeMap<String, Class>,
    /// Enum values by enum name.
    pub enums: HashMap<String, Vec<String>>,
    /// Bound field pairs `((class, field), (class, field))`.
    pub relations: Vec<((String, String), (String, String))>,
}

fn read_json(name: &str) -> Result<Json, String> {
    let path = crate::daemon::workspace_root().join("vendor/xenapi").join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn field_of(f: &Json) -> Field {
    Field {
        name: f["name"].as_str().unwrap_or("").to_owned(),
        ty: Ty::parse(f["type"].as_str().unwrap_or("string")),
        qualifier: f["qualifier"].as_str().unwrap_or("").to_owned(),
        has_default: f.get("default").is_some_and(|d| !d.is_null()),
    }
}

/// A message's name and parameters from its JSON record in `vendor/xenapi/`.
pub fn message_of(m: &Json) -> (String, Message) {
    let params = m["params"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or("").to_owned(),
                        Ty::parse(p["type"].as_str().unwrap_or("string")),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (m["name"].as_str().unwrap_or("").to_owned(), Message { params })
}

fn add_class(dm: &mut Datamodel, c: &Json) {
    let name = c["name"].as_str().unwrap_or("").to_owned();
    let class = dm.classes.entry(name).or_default();
    for f in c["fields"].as_array().into_iter().flatten() {
        class.fields.push(field_of(f));
    }
    for m in c["messages"].as_array().into_iter().flatten() {
        let (n, msg) = message_of(m);
        class.messages.insert(n, msg);
    }
    for e in c["enums"].as_array().into_iter().flatten() {
        let values = e["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Json::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        dm.enums
            .entry(e["name"].as_str().unwrap_or("").to_owned())
            .or_insert(values);
    }
}

fn pair(p: &Json) -> (String, String) {
    (
        p[0].as_str().unwrap_or("").to_owned(),
        p[1].as_str().unwrap_or("").to_owned(),
    )
}

impl Datamodel {
    /// Reads `vendor/xenapi/{datamodel,additions,enums,relations}.json` (additions: new classes,
    /// fields with their messages, and messages alone).
    pub fn load() -> Result<Datamodel, String> {
        let mut dm = Datamodel::default();
        for c in read_json("datamodel.json")?.as_array().into_iter().flatten() {
            add_class(&mut dm, c);
        }
        let additions = read_json("additions.json")?;
        for c in additions["classes"].as_array().into_iter().flatten() {
            add_class(&mut dm, c);
        }
        for f in additions["fields"].as_array().into_iter().flatten() {
            let class = dm
                .classes
                .entry(f["class"].as_str().unwrap_or("").to_owned())
                .or_default();
            class.fields.push(field_of(&f["field"]));
            for m in f["messages"].as_array().into_iter().flatten() {
                let (n, msg) = message_of(m);
                class.messages.insert(n, msg);
            }
        }
        // Messages added to a class that gains no field.
        for a in additions["messages"].as_array().into_iter().flatten() {
            let class = dm
                .classes
                .entry(a["class"].as_str().unwrap_or("").to_owned())
                .or_default();
            for m in a["messages"].as_array().into_iter().flatten() {
                let (n, msg) = message_of(m);
                class.messages.insert(n, msg);
            }
        }
        if let Json::Object(m) = read_json("enums.json")? {
            for (k, v) in m {
                let values = v
                    .as_array()
                    .map(|v| v.iter().filter_map(Json::as_str).map(str::to_owned).collect())
                    .unwrap_or_default();
                dm.enums.insert(k, values);
            }
        }
        let rel = read_json("relations.json")?;
        for r in rel
            .as_array()
            .into_iter()
            .flatten()
            .chain(additions["relations"].as_array().into_iter().flatten())
        {
            dm.relations.push((pair(&r[0]), pair(&r[1])));
        }
        Ok(dm)
    }

    /// A message by `Class.name`.
    pub fn message(&self, method: &str) -> Option<&Message> {
        let (c, m) = method.split_once('.')?;
        self.classes.get(c)?.messages.get(m)
    }

    /// A field of a class.
    pub fn field(&self, class: &str, field: &str) -> Option<&Field> {
        self.classes.get(class)?.fields.iter().find(|f| f.name == field)
    }

    /// A value of type `ty` that the daemon accepts as well-typed (empty, zero, the first
    /// enum value, the null ref).
    pub fn dummy(&self, ty: &Ty) -> Json {
        match ty {
            Ty::Prim(p) => match p.as_str() {
                "int" => json!(0),
                "float" => json!(0.0),
                "bool" => json!(false),
                "datetime" => json!("19700101T00:00:00Z"),
                _ => json!(""),
            },
            Ty::Ref(_) => json!("OpaqueRef:NULL"),
            Ty::Enum(e) => json!(self.enums.get(e).and_then(|v| v.first()).cloned().unwrap_or_default()),
            Ty::Set(_) => json!([]),
            Ty::Map(_, _) | Ty::Record(_) => json!({}),
            Ty::Option(inner) => self.dummy(inner),
        }
    }

    /// A constructor record for `class` with every field a constructor needs (RW and
    /// RO/constructor fields without a default) set to a dummy value, then `overrides`.
    pub fn constructor_record(&self, class: &str, overrides: &[(&str, Json)]) -> Json {
        let mut m = serde_json::Map::new();
        if let Some(c) = self.classes.get(class) {
            for f in &c.fields {
                if f.qualifier != "RO/runtime" && !f.has_default {
                    m.insert(f.name.clone(), self.dummy(&f.ty));
                }
            }
        }
        for (k, v) in overrides {
            m.insert((*k).to_owned(), v.clone());
        }
        Json::Object(m)
    }
}

/// Every ref a value of type `ty` holds, paired with the class it names.
pub fn refs_in<'a>(ty: &'a Ty, v: &'a Json, out: &mut Vec<(&'a str, &'a str)>) {
    match (ty, v) {
        (Ty::Ref(c), Json::String(r)) if r != "OpaqueRef:NULL" && !r.is_empty() => {
            out.push((c.as_str(), r.as_str()));
        }
        (Ty::Set(inner), Json::Array(items)) => {
            for i in items {
                refs_in(inner, i, out);
            }
        }
        (Ty::Map(k, val), Json::Object(m)) => {
            for (key, item) in m {
                if let Ty::Ref(c) = k.as_ref() {
                    if key != "OpaqueRef:NULL" && !key.is_empty() {
                        out.push((c.as_str(), key.as_str()));
                    }
                }
                refs_in(val, item, out);
            }
        }
        (Ty::Option(inner), v) => refs_in(inner, v, out),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse() {
        assert_eq!(Ty::parse("VM ref set"), Ty::Set(Box::new(Ty::Ref("VM".into()))));
        assert_eq!(
            Ty::parse("(VIF ref -> string) map"),
            Ty::Map(Box::new(Ty::Ref("VIF".into())), Box::new(Ty::Prim("string".into())))
        );
        assert_eq!(
            Ty::parse("(string -> enum vm_operations) map"),
            Ty::Map(
                Box::new(Ty::Prim("string".into())),
                Box::new(Ty::Enum("vm_operations".into()))
            )
        );
    }

    #[test]
    fn the_vendored_datamodel_loads() {
        let dm = Datamodel::load().unwrap();
        assert!(dm.classes.len() >= 70);
        let m = dm.message("VM.add_to_other_config").unwrap();
        assert_eq!(m.params.len(), 4);
        assert!(m.takes_session());
        assert!(!dm.relations.is_empty());
    }
}
