//! Whole-store checks over the wire: every record of every class, then bound fields
//! consistent both ways, no dangling refs, no operation left in `current_operations`.

use crate::datamodel::{refs_in, Datamodel};
use crate::rpc::{Reply, Rpc};
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;

/// Every record of the classes that answered `get_all_records`.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Records by class, then by ref.
    pub records: BTreeMap<String, Map<String, Json>>,
    /// Classes whose `get_all_records` failed, with the error.
    pub unavailable: BTreeMap<String, String>,
}

impl Snapshot {
    /// A record, if its class was read and it exists.
    pub fn get(&self, class: &str, r: &str) -> Option<&Json> {
        self.records.get(class)?.get(r)
    }

    /// Records of a class (empty if it was not read).
    pub fn class(&self, class: &str) -> impl Iterator<Item = (&String, &Json)> {
        self.records.get(class).into_iter().flat_map(|m| m.iter())
    }
}

/// Reads `get_all_records` of `classes` (all classes of the datamodel that have it when
/// `None`).
pub fn snapshot(rpc: &mut Rpc, session: &str, dm: &Datamodel, classes: Option<&[&str]>) -> Result<Snapshot, String> {
    let names: Vec<String> = match classes {
        Some(c) => c.iter().map(|s| (*s).to_owned()).collect(),
        None => dm
            .classes
            .iter()
            .filter(|(_, c)| c.messages.contains_key("get_all_records"))
            .map(|(n, _)| n.clone())
            .collect(),
    };
    let mut snap = Snapshot::default();
    for class in names {
        match rpc.call(&format!("{class}.get_all_records"), &[json!(session)]) {
            Ok(Reply::Success(Json::Object(m))) => {
                snap.records.insert(class, m);
            }
            Ok(Reply::Success(other)) => {
                return Err(format!("{class}.get_all_records answered {other}"));
            }
            Ok(Reply::Failure(d)) => {
                snap.unavailable.insert(class, d.join(" "));
            }
            Err(e) => return Err(format!("{class}.get_all_records: {e}")),
        }
    }
    Ok(snap)
}

/// Refs held by `rec.field` (typed by the datamodel).
pub fn field_refs<'a>(dm: &'a Datamodel, class: &str, field: &str, rec: &'a Json) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    if let (Some(f), Some(v)) = (dm.field(class, field), rec.get(field)) {
        refs_in(&f.ty, v, &mut out);
    }
    out
}

fn holds(dm: &Datamodel, class: &str, field: &str, rec: &Json, r: &str) -> bool {
    field_refs(dm, class, field, rec).iter().any(|(_, x)| *x == r)
}

/// What [`consistency`] looked at.
#[derive(Debug, Default, Clone, Copy)]
pub struct Coverage {
    /// Records read.
    pub records: usize,
    /// Refs checked for existence.
    pub refs: usize,
    /// Bound-field links checked from one end to the other.
    pub links: usize,
}

/// Bound fields that disagree and refs that name no object, as readable lines.
pub fn consistency(dm: &Datamodel, snap: &Snapshot) -> Vec<String> {
    consistency_with_coverage(dm, snap).0
}

/// [`consistency`], and how much it checked.
pub fn consistency_with_coverage(dm: &Datamodel, snap: &Snapshot) -> (Vec<String>, Coverage) {
    let mut problems = Vec::new();
    let mut cov = Coverage::default();
    for (class, recs) in &snap.records {
        let Some(def) = dm.classes.get(class) else { continue };
        for (r, rec) in recs {
            cov.records += 1;
            for f in &def.fields {
                let mut refs = Vec::new();
                if let Some(v) = rec.get(&f.name) {
                    refs_in(&f.ty, v, &mut refs);
                }
                for (target, x) in refs {
                    cov.refs += 1;
                    if snap.records.contains_key(target) && snap.get(target, x).is_none() {
                        problems.push(format!("dangling: {class} {r} .{} names {target} {x}", f.name));
                    }
                }
            }
        }
    }
    for ((ca, fa), (cb, fb)) in &dm.relations {
        // A field listed as its own partner (`role.subroles`) is a plain, one-sided set.
        if (ca, fa) == (cb, fb) {
            continue;
        }
        for ((c1, f1), (c2, f2)) in [((ca, fa), (cb, fb)), ((cb, fb), (ca, fa))] {
            if !snap.records.contains_key(c1.as_str()) || !snap.records.contains_key(c2.as_str()) {
                continue;
            }
            for (r1, rec1) in snap.class(c1) {
                for (_, r2) in field_refs(dm, c1, f1, rec1) {
                    let Some(rec2) = snap.get(c2, r2) else { continue };
                    cov.links += 1;
                    if !holds(dm, c2, f2, rec2, r1) {
                        problems.push(format!(
                            "bound field one-sided: {c1} {r1} .{f1} holds {r2}, but {c2} {r2} .{f2} = {}",
                            rec2.get(f2.as_str()).unwrap_or(&Json::Null)
                        ));
                    }
                }
            }
        }
    }
    (problems, cov)
}

/// Objects with an operation still marked in `current_operations`, one line each.
pub fn current_operations(snap: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (class, recs) in &snap.records {
        for (r, rec) in recs {
            if let Some(Json::Object(ops)) = rec.get("current_operations") {
                if !ops.is_empty() {
                    out.push(format!("{class} {r}: {}", Json::Object(ops.clone())));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(vm_vifs: Json, vif_vm: &str) -> Snapshot {
        let mut s = Snapshot::default();
        let mut vms = Map::new();
        vms.insert(
            "OpaqueRef:vm".into(),
            json!({ "VIFs": vm_vifs, "current_operations": {} }),
        );
        let mut vifs = Map::new();
        vifs.insert(
            "OpaqueRef:vif".into(),
            json!({ "VM": vif_vm, "network": "OpaqueRef:NULL" }),
        );
        s.records.insert("VM".into(), vms);
        s.records.insert("VIF".into(), vifs);
        s
    }

    #[test]
    fn finds_one_sided_bound_fields_and_dangling_refs() {
        let dm = Datamodel::load().unwrap();
        let (ok, cov) = consistency_with_coverage(&dm, &snap(json!(["OpaqueRef:vif"]), "OpaqueRef:vm"));
        assert_eq!(ok, Vec::<String>::new());
        assert_eq!(cov.links, 2);
        let one_sided = consistency(&dm, &snap(json!([]), "OpaqueRef:vm"));
        assert_eq!(one_sided.len(), 1, "{one_sided:?}");
        assert!(one_sided[0].contains("one-sided"));
        let dangling = consistency(&dm, &snap(json!(["OpaqueRef:vif"]), "OpaqueRef:gone"));
        assert!(dangling.iter().any(|p| p.contains("dangling")), "{dangling:?}");
        let mut stale = snap(json!([]), "OpaqueRef:NULL");
        stale.records.get_mut("VM").unwrap()["OpaqueRef:vm"]["current_operations"] = json!({"OpaqueRef:t": "start"});
        assert_eq!(current_operations(&stale).len(), 1);
    }
}
