//! Generic object changes inside a store transaction: create, set a field, destroy — each
//! keeping bound fields (`relations.json`) consistent on both ends.

use crate::error::ApiError;
use crate::schema::{ClassId, FieldId, FieldRef, Ty, CLASSES};
use crate::store::Tx;
use crate::value::{Object, Value, NULL_REF};

/// A fresh random (version 4) uuid, from the thread's CSPRNG (ChaCha, seeded and reseeded
/// from the OS) rather than a `getrandom` call per uuid: refs are made by the dozen per call.
/// Session refs are bearer secrets; this generator is fit for them.
pub fn random_uuid() -> uuid::Uuid {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// A fresh `OpaqueRef:<uuid>`.
pub fn new_ref() -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    let mut s = String::with_capacity(10 + uuid::fmt::Hyphenated::LENGTH);
    s.push_str("OpaqueRef:");
    s.push_str(random_uuid().hyphenated().encode_lower(&mut buf));
    s
}

/// A fresh uuid.
pub fn new_uuid() -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    random_uuid().hyphenated().encode_lower(&mut buf).to_owned()
}

/// The bound partner of a field, from a table built once (the relation list is scanned per
/// lookup otherwise, and `create` asks for every field of the class).
fn partner(class: ClassId, field: FieldId) -> Option<FieldRef> {
    static TABLE: std::sync::OnceLock<Vec<Vec<Option<FieldRef>>>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..CLASSES.len())
            .map(ClassId)
            .map(|c| {
                (0..c.def().fields.len())
                    .map(|f| crate::schema::partner(c, FieldId(f)))
                    .collect()
            })
            .collect()
    });
    table.get(class.0)?.get(field.0).copied().flatten()
}

/// The fields of a class that are one end of a relation.
fn bound_fields(class: ClassId) -> &'static [FieldId] {
    static TABLE: std::sync::OnceLock<Vec<Vec<FieldId>>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..CLASSES.len())
            .map(ClassId)
            .map(|c| {
                (0..c.def().fields.len())
                    .map(FieldId)
                    .filter(|f| partner(c, *f).is_some())
                    .collect()
            })
            .collect()
    });
    table.get(class.0).map_or(&[], Vec::as_slice)
}

/// Checks that every non-null ref in `v` (of type `ty`) names an existing object.
pub fn check_refs(tx: &Tx, ty: &Ty, v: &Value) -> Result<(), ApiError> {
    match (ty, v) {
        (Ty::Ref(c), Value::Ref(r)) => {
            if &**r != NULL_REF && !r.is_empty() && tx.get(*c, r).is_none() {
                return Err(ApiError::handle_invalid(c.name(), r));
            }
            Ok(())
        }
        (Ty::Set(inner), Value::Set(items)) => items.iter().try_for_each(|i| check_refs(tx, inner, i)),
        (Ty::Map(k, val), Value::Map(pairs)) => pairs.iter().try_for_each(|(a, b)| {
            check_refs(tx, k, a)?;
            check_refs(tx, val, b)
        }),
        _ => Ok(()),
    }
}

/// Adds a new object, linking it into the objects its bound fields name.
pub fn create(tx: &mut Tx, obj: Object) -> Result<(), ApiError> {
    let class = obj.class;
    if let Some(u) = obj.uuid() {
        if tx.uuid_taken(class, u) {
            return Err(ApiError::DbUniquenessConstraintViolation {
                table: class.name().to_owned(),
                field: "uuid".into(),
                value: u.to_owned(),
            });
        }
    }
    for (i, f) in class.def().fields.iter().enumerate() {
        check_refs(tx, f.ty, obj.get(FieldId(i)))?;
    }
    let reference = obj.reference.clone();
    let bound: Vec<(FieldId, Value)> = bound_fields(class).iter().map(|f| (*f, obj.get(*f).clone())).collect();
    tx.put(obj);
    for (f, v) in bound {
        relink(tx, class, &reference, f, &empty_like(&v), &v)?;
    }
    Ok(())
}

/// Sets one field, updating the other end of a bound field.
pub fn set_field(tx: &mut Tx, class: ClassId, reference: &str, f: FieldId, v: Value) -> Result<(), ApiError> {
    check_refs(tx, class.field(f).ty, &v)?;
    let bound = partner(class, f).is_some();
    if tx.must_get(class, reference)?.get(f) == &v {
        return Ok(());
    }
    let new = if bound { Some(v.clone()) } else { None };
    let old = tx.modify(class, reference, |obj| {
        let slot = obj.fields.get_mut(f.0);
        slot.map(|s| std::mem::replace(s, v))
    })?;
    if let (Some(old), Some(new)) = (old, new) {
        relink(tx, class, reference, f, &old, &new)?;
    }
    Ok(())
}

/// Sets each of `values` on one object, in order, as [`set_field`] does.
pub fn set_fields(tx: &mut Tx, class: ClassId, reference: &str, values: &[(FieldId, Value)]) -> Result<(), ApiError> {
    for (f, v) in values {
        set_field(tx, class, reference, *f, v.clone())?;
    }
    Ok(())
}

/// Removes an object, unlinking it from every object its bound fields name.
pub fn destroy(tx: &mut Tx, class: ClassId, reference: &str) -> Result<(), ApiError> {
    let cur = tx.must_get(class, reference)?;
    for &f in bound_fields(class) {
        let old = cur.get(f).clone();
        relink(tx, class, reference, f, &old, &empty_like(&old))?;
    }
    tx.delete(class, reference);
    Ok(())
}

/// Links an object already put into the transaction into the objects its bound fields name,
/// as `create` does but without its checks: for objects brought whole from another database.
pub fn link(tx: &mut Tx, class: ClassId, reference: &str) -> Result<(), ApiError> {
    let cur = tx.must_get(class, reference)?;
    for &f in bound_fields(class) {
        let v = cur.get(f).clone();
        relink(tx, class, reference, f, &empty_like(&v), &v)?;
    }
    Ok(())
}

fn empty_like(v: &Value) -> Value {
    match v {
        Value::Set(_) => Value::set(Vec::new()),
        Value::Map(_) => Value::map(Vec::new()),
        Value::Ref(_) => Value::null_ref(),
        other => other.clone(),
    }
}

fn refs_of(v: &Value) -> Vec<String> {
    match v {
        Value::Ref(r) if &**r != NULL_REF && !r.is_empty() => vec![r.to_string()],
        Value::Set(items) => items.iter().filter_map(|i| i.as_ref_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// `me.field` went from `old` to `new`: fix the partner field of every object that left or
/// joined.
fn relink(tx: &mut Tx, class: ClassId, me: &str, f: FieldId, old: &Value, new: &Value) -> Result<(), ApiError> {
    let Some(p) = partner(class, f) else {
        return Ok(());
    };
    let old_refs = refs_of(old);
    let new_refs = refs_of(new);
    for r in old_refs.iter().filter(|r| !new_refs.contains(r)) {
        edit_partner(tx, p.class, r, p.field, me, false);
    }
    for r in new_refs.iter().filter(|r| !old_refs.contains(r)) {
        edit_partner(tx, p.class, r, p.field, me, true);
    }
    Ok(())
}

fn edit_partner(tx: &mut Tx, class: ClassId, reference: &str, f: FieldId, me: &str, add: bool) {
    let Some(cur) = tx.get(class, reference) else {
        return;
    };
    // Decide on the shared copy; copy the object (once per transaction) only to change it.
    let is_me = |v: &Value| matches!(v, Value::Ref(r) if &**r == me);
    let change = match cur.get(f) {
        Value::Set(items) => items.iter().any(is_me) != add,
        Value::Ref(r) => (add && &**r != me) || (!add && &**r == me),
        _ => false,
    };
    drop(cur);
    if !change {
        return;
    }
    let _ = tx.modify(class, reference, |obj| match obj.fields.get_mut(f.0) {
        Some(slot @ Value::Set(_)) => {
            // The elements are shared with the old copy: write a new set.
            let items = slot.as_set();
            let next = if add {
                items.iter().cloned().chain([Value::reference(me)]).collect()
            } else {
                items.iter().filter(|i| !is_me(i)).cloned().collect()
            };
            *slot = Value::set(next);
        }
        Some(slot @ Value::Ref(_)) => {
            *slot = if add { Value::reference(me) } else { Value::null_ref() };
        }
        _ => {}
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{class_ids, fields};
    use crate::store::Store;
    use crate::value::default_object;

    #[tokio::test]
    async fn bound_fields_follow_create_set_and_destroy() {
        let store = Store::open(None).unwrap();
        store
            .write(|tx| {
                create(tx, default_object(class_ids::VM, "OpaqueRef:vm"))?;
                create(tx, default_object(class_ids::network, "OpaqueRef:net"))?;
                let mut vif = default_object(class_ids::VIF, "OpaqueRef:vif");
                vif.set(fields::VIF::VM, Value::Ref("OpaqueRef:vm".into()));
                vif.set(fields::VIF::network, Value::Ref("OpaqueRef:net".into()));
                create(tx, vif)
            })
            .await
            .unwrap();
        let vifs = |c, r, f| store.get(c, r).unwrap().get(f).clone();
        let one = Value::Set(vec![Value::Ref("OpaqueRef:vif".into())].into());
        assert_eq!(vifs(class_ids::VM, "OpaqueRef:vm", fields::VM::VIFs), one);
        assert_eq!(vifs(class_ids::network, "OpaqueRef:net", fields::network::VIFs), one);
        store
            .write(|tx| destroy(tx, class_ids::VIF, "OpaqueRef:vif"))
            .await
            .unwrap();
        assert_eq!(
            vifs(class_ids::VM, "OpaqueRef:vm", fields::VM::VIFs),
            Value::Set(vec![].into())
        );
        assert_eq!(
            vifs(class_ids::network, "OpaqueRef:net", fields::network::VIFs),
            Value::Set(vec![].into())
        );
    }

    #[tokio::test]
    async fn dangling_refs_are_refused() {
        let store = Store::open(None).unwrap();
        let mut vif = default_object(class_ids::VIF, "OpaqueRef:vif");
        vif.set(fields::VIF::VM, Value::Ref("OpaqueRef:nope".into()));
        let e = store.write(|tx| create(tx, vif.clone())).await.unwrap_err();
        assert_eq!(e.code(), "HANDLE_INVALID");
        assert_eq!(e.params(), vec!["VM", "OpaqueRef:nope"]);
    }
}
