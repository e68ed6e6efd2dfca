//! Derived sets: the "many" ends of one-to-many relations (`network.VIFs`, `host.resident_VMs`),
//! kept in memory and rebuilt from the members' side when a store loads from redb.

use super::table::Table;
use crate::schema::{derived_sets, ClassId, FieldId};
use crate::value::{Object, Value};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// The refs of `objects`, grouped by the (non-null) ref each holds in `field`: a derived set's
/// members by owner, read from the members' side.
pub(crate) fn members_by_owner<'a>(
    objects: impl Iterator<Item = &'a Object>,
    field: FieldId,
) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for o in objects {
        if let Some(owner) = o.get(field).as_ref_str() {
            out.entry(owner.to_owned()).or_default().push(o.reference.clone());
        }
    }
    out
}

/// Fills every derived set (see [`derived_sets`]) from the members' side: those sets are not
/// in redb (older stores that wrote them are read the same way, their copy ignored). Members
/// are listed in ref order.
pub(super) fn rebuild(tables: &mut [RwLock<Table>]) {
    for class in ClassId::all() {
        for &field in derived_sets(class) {
            let Some(member) = crate::schema::partner(class, field) else {
                continue;
            };
            let members = tables[member.class.0].get_mut().iter().map(|o| &**o);
            let mut members = members_by_owner(members, member.field);
            let table = tables[class.0].get_mut();
            let owners: Vec<Arc<Object>> = table.iter().cloned().collect();
            for owner in owners {
                let mut refs = members.remove(&owner.reference).unwrap_or_default();
                refs.sort();
                let set = Value::set(refs.into_iter().map(Value::reference).collect());
                if *owner.get(field) != set {
                    let mut o = Arc::unwrap_or_clone(owner);
                    o.set(field, set);
                    table.insert(Arc::new(o));
                }
            }
        }
    }
}

/// Whether two states of one object differ in a field the store writes (any field but the
/// class's derived sets, which are rebuilt from their members when the store loads).
pub(super) fn stored_fields_differ(old: &Object, new: &Object) -> bool {
    let derived = derived_sets(new.class);
    old.fields
        .iter()
        .zip(new.fields.iter())
        .enumerate()
        .any(|(i, (a, b))| a != b && !derived.contains(&FieldId(i)))
}
