//! What a host takes with it from one database into another (joining a pool, or leaving one):
//! its host record and what is its own alone (metrics, CPUs, certificates, PIFs, local SRs with their PBDs
//! and VDIs, its control domain), as xapi keeps them on a join. Its other VMs, templates and
//! objects are left behind.

use crate::error::ApiError;
use crate::schema::{class_ids, derived_sets, fields, ClassId, FieldId, Ty};
use crate::store::{Store, Tx};
use crate::value::{Object, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// This host's own objects, read from `store`.
pub fn collect(store: &Store, me: &str) -> Vec<Arc<Object>> {
    let mut out: Vec<Arc<Object>> = Vec::new();
    let mut push = |o: Option<Arc<Object>>| {
        if let Some(o) = o {
            if !out.iter().any(|x| x.class == o.class && x.reference == o.reference) {
                out.push(o);
            }
        }
    };
    let by_ref = |class: ClassId, o: &Object, f: FieldId| o.get(f).as_ref_str().and_then(|r| store.get(class, r));
    let Some(host) = store.get(class_ids::host, me) else {
        return Vec::new();
    };
    push(by_ref(class_ids::host_metrics, &host, fields::host::metrics));
    let dom0 = by_ref(class_ids::VM, &host, fields::host::control_domain);
    if let Some(d) = &dom0 {
        push(by_ref(class_ids::VM_metrics, d, fields::VM::metrics));
        push(by_ref(class_ids::VM_guest_metrics, d, fields::VM::guest_metrics));
    }
    push(dom0);
    push(Some(host));
    for cpu in store.all(class_ids::host_cpu) {
        if cpu.get(fields::host_cpu::host).as_ref_str() == Some(me) {
            push(Some(cpu));
        }
    }
    // Its certificates (the one it serves clients and its pool-internal one, which the other
    // hosts pin).
    for cert in store.all(class_ids::Certificate) {
        if cert.get(fields::Certificate::host).as_ref_str() == Some(me) {
            push(Some(cert));
        }
    }
    for pif in store.all(class_ids::PIF) {
        if pif.get(fields::PIF::host).as_ref_str() == Some(me) {
            push(by_ref(class_ids::PIF_metrics, &pif, fields::PIF::metrics));
            push(by_ref(class_ids::network, &pif, fields::PIF::network));
            push(Some(pif));
        }
    }
    let mut srs = HashSet::new();
    for pbd in store.all(class_ids::PBD) {
        if pbd.get(fields::PBD::host).as_ref_str() != Some(me) {
            continue;
        }
        let Some(sr) = by_ref(class_ids::SR, &pbd, fields::PBD::SR) else {
            continue;
        };
        if sr.get(fields::SR::shared) == &Value::Bool(true) {
            continue;
        }
        srs.insert(sr.reference.clone());
        push(Some(sr));
        push(Some(pbd));
    }
    for vdi in store.all(class_ids::VDI) {
        if vdi.get(fields::VDI::SR).as_ref_str().is_some_and(|s| srs.contains(s)) {
            push(Some(vdi));
        }
    }
    out
}

/// Writes `carried` into the database `tx` writes: derived sets start empty and are filled
/// from the members' side; a network is the database's own network on the same bridge where
/// it has one; a ref to anything neither carried nor present becomes null.
pub fn write(tx: &mut Tx, store: &Store, carried: &[Arc<Object>]) -> Result<(), ApiError> {
    let mut renamed: HashMap<String, String> = HashMap::new();
    for net in carried.iter().filter(|o| o.class == class_ids::network) {
        let bridge = net.get(fields::network::bridge);
        if let Some(same) = store
            .all(class_ids::network)
            .into_iter()
            .find(|n| n.get(fields::network::bridge) == bridge && n.reference != net.reference)
        {
            renamed.insert(net.reference.clone(), same.reference.clone());
        }
    }
    let kept: HashSet<(ClassId, String)> = carried
        .iter()
        .filter(|o| !renamed.contains_key(&o.reference))
        .map(|o| (o.class, o.reference.clone()))
        .collect();
    let keep_ref = |tx: &Tx, class: ClassId, r: &str| -> Option<String> {
        let r = renamed.get(r).map_or(r, String::as_str);
        (kept.contains(&(class, r.to_owned())) || tx.get(class, r).is_some()).then(|| r.to_owned())
    };
    let mut written = Vec::new();
    for o in carried {
        if renamed.contains_key(&o.reference) {
            continue;
        }
        let mut obj = Object::clone(o);
        let derived = derived_sets(obj.class);
        for (i, def) in obj.class.def().fields.iter().enumerate() {
            let f = FieldId(i);
            if derived.contains(&f) {
                obj.set(f, Value::set(Vec::new()));
                continue;
            }
            let v = match (def.ty, obj.get(f)) {
                (Ty::Ref(c), Value::Ref(r)) => match keep_ref(tx, *c, r) {
                    Some(r) => Value::reference(r),
                    None => Value::null_ref(),
                },
                (Ty::Set(Ty::Ref(c)), Value::Set(items)) => Value::set(
                    items
                        .iter()
                        .filter_map(|i| i.as_ref_str().and_then(|r| keep_ref(tx, *c, r)))
                        .map(Value::reference)
                        .collect(),
                ),
                _ => continue,
            };
            obj.set(f, v);
        }
        written.push((obj.class, obj.reference.clone()));
        tx.put(obj);
    }
    for (class, r) in written {
        crate::objects::link(tx, class, &r)?;
    }
    Ok(())
}
