//! Objects tests start from: a default template, and a `VM.create` record made from it.

use crate::datamodel::Datamodel;
use crate::rpc::Rpc;
use serde_json::{json, Value as Json};

/// The first default template by name: its ref and record.
pub fn default_template(rpc: &mut Rpc, session: &str) -> Result<(String, Json), String> {
    let vms = rpc.ok("VM.get_all_records", &[json!(session)])?;
    let vms = vms.as_object().ok_or("VM.get_all_records is not a map")?;
    let mut templates: Vec<(&String, &Json)> = vms
        .iter()
        .filter(|(_, v)| v["is_a_template"] == json!(true) && v["is_default_template"] == json!(true))
        .collect();
    templates.sort_by_key(|(_, v)| v["name_label"].as_str().unwrap_or("").to_owned());
    templates
        .first()
        .map(|(r, v)| ((*r).clone(), (*v).clone()))
        .ok_or_else(|| "no default template".to_owned())
}

/// A `VM.create` record from a template's record: its constructor fields (RW and
/// RO/constructor, as the datamodel says), made an ordinary VM named `name`.
pub fn vm_record_from(dm: &Datamodel, template: &Json, name: &str) -> Json {
    let mut record = serde_json::Map::new();
    if let (Some(def), Some(m)) = (dm.classes.get("VM"), template.as_object()) {
        for f in &def.fields {
            if f.qualifier != "RO/runtime" {
                if let Some(v) = m.get(&f.name) {
                    record.insert(f.name.clone(), v.clone());
                }
            }
        }
    }
    record.insert("name_label".into(), json!(name));
    record.insert("name_description".into(), json!(""));
    record.insert("is_a_template".into(), json!(false));
    record.insert("tags".into(), json!([]));
    if record.contains_key("is_default_template") {
        record.insert("is_default_template".into(), json!(false));
    }
    match record.get_mut("other_config") {
        Some(Json::Object(oc)) => {
            oc.remove("default_template");
        }
        _ => {
            record.insert("other_config".into(), json!({}));
        }
    }
    Json::Object(record)
}
