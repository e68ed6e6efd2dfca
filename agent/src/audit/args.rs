//! Which arguments of a call the audit record carries, by the reference's rules: descriptive
//! ones (`name_label`, `name_description`, …, and a few chosen per message) with their
//! values, and references with the object's name and uuid. Anything else — passwords, keys,
//! configuration maps — is left out, so no secret reaches the audit log.

use super::sexpr::{arg, SExpr};
use crate::call::Call;
use crate::schema::{class_ids, ClassId, MessageKind, Ty};
use crate::store::Store;
use crate::value::{Value, NULL_REF};

/// Parameter names logged with their value whatever the message.
const DESCRIPTIVE: &[&str] = &[
    "name",
    "label",
    "description",
    "name_label",
    "name_description",
    "new_name",
];

/// Parameters logged with their value for particular messages (the reference's list; a
/// `<message>.<param>` entry names keys of a map parameter).
const CHOSEN: &[(&str, &[&str])] = &[
    (
        "host.create",
        &[
            "hostname",
            "address",
            "external_auth_type",
            "external_auth_service_name",
            "edition",
        ],
    ),
    (
        "VM.create",
        &[
            "is_a_template",
            "memory_target",
            "memory_static_max",
            "memory_dynamic_max",
            "memory_dynamic_min",
            "memory_static_min",
            "ha_always_run",
            "ha_restart_priority",
        ],
    ),
    ("host.set_address", &["value"]),
    ("VM.migrate", &["dest", "live"]),
    ("VM.start_on", &["start_paused", "force"]),
    ("VM.start", &["start_paused", "force"]),
    ("pool.create_VLAN", &["device", "vLAN"]),
    ("pool.join_force", &["master_address"]),
    ("pool.join", &["master_address"]),
    ("pool.enable_external_auth", &["service_name", "auth_type"]),
    ("host.enable_external_auth", &["service_name", "auth_type"]),
    ("subject.create", &["subject_identifier", "other_config"]),
    ("subject.create.other_config", &["subject-name"]),
    ("message.create", &["name", "body"]),
];

fn logs_value(action: &str, name: &str) -> bool {
    DESCRIPTIVE.contains(&name) || CHOSEN.iter().any(|(a, params)| *a == action && params.contains(&name))
}

/// The arguments of a typed call, as the audit record lists them.
pub fn of_call(store: &Store, c: &Call) -> Vec<SExpr> {
    let action = c.wire_name();
    let defs = c.message.params.iter().skip(usize::from(c.message.takes_session()));
    let mut out = Vec::new();
    for (def, v) in defs.zip(c.args.iter()) {
        if c.message.kind == MessageKind::Create {
            if let Value::Record(obj) = v {
                for (f, fv) in obj.class.def().fields.iter().zip(obj.fields.iter()) {
                    out.extend(one(store, &action, f.name, Some(f.ty), fv));
                }
                continue;
            }
        }
        out.extend(one(store, &action, def.name, Some(def.ty), v));
    }
    // The reference adds the disk a VBD.destroy detaches, for audit reports.
    if c.class == class_ids::VBD && c.message.name == "destroy" {
        let vdi = c
            .args
            .first()
            .and_then(Value::as_ref_str)
            .and_then(|vbd| store.get(class_ids::VBD, vbd))
            .map(|o| o.str_field("VDI").to_owned());
        if let Some(vdi) = vdi {
            out.extend(one(
                store,
                &action,
                "VDI",
                Some(&Ty::Ref(class_ids::VDI)),
                &Value::reference(vdi),
            ));
        }
    }
    out
}

/// The parameters of an HTTP request (query and cookies), as the audit record lists them.
pub fn of_http(store: &Store, action: &str, params: &[(String, String)]) -> Vec<SExpr> {
    params
        .iter()
        .filter(|(k, _)| k != "session_id")
        .filter_map(|(k, v)| one(store, action, k, None, &Value::str(v.as_str())))
        .collect()
}

/// One argument: its value if it is descriptive, its object if it is a reference, else
/// nothing.
fn one(store: &Store, action: &str, name: &str, ty: Option<&Ty>, v: &Value) -> Option<SExpr> {
    if name == "session_id" {
        return None;
    }
    if logs_value(action, name) {
        if !v.as_map().is_empty() || matches!(v, Value::Map(_)) {
            let inner = format!("{action}.{name}");
            let entries = v
                .as_map()
                .iter()
                .filter_map(|(k, x)| one(store, &inner, &k.key_text(), None, x))
                .collect();
            return Some(SExpr::List(vec![
                SExpr::str(name),
                SExpr::List(entries),
                SExpr::str(""),
                SExpr::str(""),
            ]));
        }
        return Some(arg(name, &v.key_text(), "", ""));
    }
    let r = v.as_str()?;
    if !r.starts_with("OpaqueRef:") || r == NULL_REF {
        return None;
    }
    let class = match ty {
        Some(Ty::Ref(c)) => Some(*c),
        _ => ClassId::all().find(|c| store.get(*c, r).is_some()),
    };
    let (label, uuid) = class.map_or_else(|| (String::new(), String::new()), |c| describe(store, c, r));
    Some(arg(name, &label, &uuid, r))
}

/// An object's name for the record (its `name_label`; a subject's `subject-name`) and uuid.
fn describe(store: &Store, class: ClassId, r: &str) -> (String, String) {
    let Some(o) = store.get(class, r) else {
        return (String::new(), String::new());
    };
    let mut label = o.str_field("name_label").to_owned();
    if label.is_empty() && class == class_ids::subject {
        if let Some(f) = class.field_by_name("other_config") {
            label = o
                .get(f)
                .map_get("subject-name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
        }
    }
    (label, o.uuid().unwrap_or("").to_owned())
}
