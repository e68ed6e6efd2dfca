//! The records an import makes from an archive's objects: its VMs (originals before their
//! snapshots), their metrics, VBDs and VIFs, all in one transaction, after the disks are in.
//! References to archive names become the new objects' refs; SRs, networks and hosts are the
//! local ones of the same uuid (a network also by name); what cannot be found becomes
//! `OpaqueRef:NULL` (a VIF on no network is left out, as is a disk VBD whose VDI is gone).

use super::ova_xml::{Ova, OvaObject};
use super::BackupError;
use crate::error::ApiError;
use crate::objects::{create, new_ref, new_uuid, set_field};
use crate::schema::enums::{VbdType, VmPowerState};
use crate::schema::{class_ids, fields, ClassId, FieldId, Ty};
use crate::store::Tx;
use crate::value::{default_object, from_json, Object, Value, NULL_REF};
use crate::Agent;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::Arc;

/// How the records are made.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Keep uuids (a VM of the same uuid, halted, is replaced).
    pub full_restore: bool,
}

/// A record of `class` from an archive's untyped snapshot: fields that do not convert keep
/// their defaults (a producer may write a field in a form the reference would not).
pub fn typed(class: ClassId, snapshot: &Json, reference: &str) -> Object {
    let mut o = default_object(class, reference);
    if let Json::Object(m) = snapshot {
        for (name, val) in m {
            let Some(f) = class.field_by_name(name) else {
                continue;
            };
            match from_json(val, class.field(f).ty) {
                Ok(v) => o.set(f, v),
                Err(e) => {
                    tracing::debug!(class = class.name(), field = %name, error = ?e, "archive field left at its default")
                }
            }
        }
    }
    o
}

/// The string a snapshot holds in `field`.
pub fn field_str<'a>(o: &'a OvaObject, field: &str) -> &'a str {
    o.snapshot.get(field).and_then(Json::as_str).unwrap_or("")
}

/// The counterpart a migration names for an archive object in its `other_config:maps_to`.
pub fn maps_to(o: &OvaObject) -> Option<String> {
    o.snapshot
        .get("other_config")
        .and_then(|m| m.get(crate::lifecycle::migrate_send::MAPS_TO))
        .and_then(Json::as_str)
        .filter(|r| !r.is_empty() && *r != NULL_REF)
        .map(str::to_owned)
}

/// The local object of `class` with the archive object's uuid.
fn local_by_uuid(agent: &Agent, class: ClassId, o: &OvaObject) -> Option<String> {
    let u = field_str(o, "uuid");
    (!u.is_empty()).then(|| agent.store.ref_by_uuid(class, u)).flatten()
}

/// Maps the archive's SRs, networks and hosts to local objects.
pub fn map_existing(agent: &Agent, ova: &Ova, map: &mut HashMap<String, String>) {
    for o in &ova.objects {
        let found = match o.class.as_str() {
            "SR" => local_by_uuid(agent, class_ids::SR, o),
            "host" => local_by_uuid(agent, class_ids::host, o),
            "network" => local_by_uuid(agent, class_ids::network, o).or_else(|| {
                let name = field_str(o, "name_label");
                agent
                    .store
                    .all(class_ids::network)
                    .iter()
                    .find(|n| !name.is_empty() && n.get(fields::network::name_label).as_str() == Some(name))
                    .map(|n| n.reference.clone())
            }),
            _ => None,
        };
        if let Some(r) = found {
            map.insert(o.id.clone(), r);
        }
    }
}

/// Rewrites reference fields through `map` (archive names, or nothing); sets of refs are
/// emptied: the objects they list fill them as they are linked.
fn remap(o: &mut Object, map: &HashMap<String, String>) {
    for (i, fd) in o.class.def().fields.iter().enumerate() {
        let id = FieldId(i);
        let new = match (fd.ty, o.get(id)) {
            (Ty::Ref(_), Value::Ref(r)) => Some(match map.get(&**r) {
                Some(n) => Value::reference(n.as_str()),
                None => Value::null_ref(),
            }),
            (Ty::Set(Ty::Ref(_)), Value::Set(_)) => Some(Value::set(Vec::new())),
            _ => None,
        };
        if let Some(v) = new {
            o.set(id, v);
        }
    }
    if let Some(f) = o.class.field_by_name("current_operations") {
        o.set(f, Value::map(Vec::new()));
    }
    if let Some(f) = o.class.field_by_name("allowed_operations") {
        o.set(f, Value::set(Vec::new()));
    }
}

/// The objects to create, in order, and the VM fields set once every VM exists.
pub struct Planned {
    objects: Vec<Object>,
    links: Vec<(String, FieldId, String)>,
    vms: Vec<String>,
    replaces: Vec<String>,
}

impl Planned {
    /// The new VMs' refs (originals first).
    pub fn vms(&self) -> &[String] {
        &self.vms
    }
}

/// Plans the records of `ova`; `map` holds the archive names already resolved (VDIs, SRs,
/// networks, hosts).
pub fn plan(
    agent: &Agent,
    ova: &Ova,
    map: &HashMap<String, String>,
    opts: RestoreOptions,
) -> Result<Planned, BackupError> {
    let mut map = map.clone();
    let mut vms: Vec<&OvaObject> = ova.objects.iter().filter(|o| o.class == "VM").collect();
    if vms.is_empty() {
        return Err(BackupError::Archive("the archive holds no VM".into()));
    }
    // Originals before snapshots, so that `snapshot_of` names an object that exists.
    vms.sort_by_key(|o| o.snapshot.get("is_a_snapshot") == Some(&Json::Bool(true)));
    let mut replaces = Vec::new();
    for o in &vms {
        map.insert(o.id.clone(), new_ref());
        if opts.full_restore {
            if let Some(old) = local_by_uuid(agent, class_ids::VM, o) {
                let halted = agent
                    .store
                    .get(class_ids::VM, &old)
                    .is_some_and(|v| v.get(fields::VM::power_state) == &VmPowerState::Halted.value());
                if !halted {
                    return Err(BackupError::Api(ApiError::VmBadPowerState {
                        vm: old,
                        expected: "halted".into(),
                        actual: "running".into(),
                    }));
                }
                replaces.push(old);
            }
        }
    }
    for o in ova.objects.iter().filter(|o| o.class == "VBD" || o.class == "VIF") {
        map.insert(o.id.clone(), new_ref());
    }
    let mut objects = Vec::new();
    let mut links = Vec::new();
    let mut vm_refs = Vec::new();
    for o in &vms {
        use fields::VM as f;
        let r = map.get(&o.id).cloned().unwrap_or_default();
        let mut vm = typed(class_ids::VM, &o.snapshot, &r);
        for (field, name) in [(f::snapshot_of, "snapshot_of"), (f::parent, "parent")] {
            if let Some(target) = o.snapshot.get(name).and_then(Json::as_str).and_then(|id| map.get(id)) {
                links.push((r.clone(), field, target.clone()));
            }
        }
        remap(&mut vm, &map);
        vm.set(f::snapshot_of, Value::null_ref());
        vm.set(f::parent, Value::null_ref());
        if !opts.full_restore || vm.uuid().is_none_or(str::is_empty) {
            vm.set(f::uuid, Value::str(new_uuid()));
        }
        if !opts.full_restore {
            let mut oc: Vec<(Value, Value)> = vm.get(f::other_config).as_map().to_vec();
            oc.retain(|(k, _)| k.as_str() != Some("mac_seed"));
            oc.push((Value::str("mac_seed"), Value::str(new_uuid())));
            vm.set(f::other_config, Value::map(oc));
        }
        vm.set(f::power_state, VmPowerState::Halted.value());
        vm.set(f::domid, Value::Int(-1));
        vm.set(f::resident_on, Value::null_ref());
        vm.set(f::scheduled_to_be_resident_on, Value::null_ref());
        vm.set(f::suspend_VDI, Value::null_ref());
        vm.set(f::guest_metrics, Value::null_ref());
        let m = new_ref();
        let mut metrics = default_object(class_ids::VM_metrics, &m);
        metrics.set(fields::VM_metrics::uuid, Value::str(new_uuid()));
        vm.set(f::metrics, Value::reference(m.as_str()));
        objects.push(metrics);
        objects.push(vm);
        vm_refs.push(r);
    }
    for o in ova.objects.iter().filter(|o| o.class == "VBD") {
        use fields::VBD as f;
        let r = map.get(&o.id).cloned().unwrap_or_default();
        let mut b = typed(class_ids::VBD, &o.snapshot, &r);
        remap(&mut b, &map);
        if b.get(f::VM).as_ref_str().is_none_or(|v| v == NULL_REF) {
            continue;
        }
        let no_vdi = b.get(f::VDI).as_ref_str().is_none_or(|v| v == NULL_REF);
        if no_vdi {
            if b.get(f::r#type) != &VbdType::CD.value() {
                tracing::info!(vbd = %o.id, "a disk VBD of the archive names no VDI here: left out");
                continue;
            }
            b.set(f::empty, Value::Bool(true));
        }
        if !opts.full_restore {
            b.set(f::uuid, Value::str(new_uuid()));
        }
        b.set(f::currently_attached, Value::Bool(false));
        objects.push(b);
    }
    for o in ova.objects.iter().filter(|o| o.class == "VIF") {
        use fields::VIF as f;
        let r = map.get(&o.id).cloned().unwrap_or_default();
        let mut v = typed(class_ids::VIF, &o.snapshot, &r);
        remap(&mut v, &map);
        // A migration to this pool names the VIF's network here (`other_config:maps_to`).
        if let Some(net) = maps_to(o).filter(|n| agent.store.get(class_ids::network, n).is_some()) {
            v.set(f::network, Value::reference(net.as_str()));
        }
        let oc: Vec<(Value, Value)> = v
            .get(f::other_config)
            .as_map()
            .iter()
            .filter(|(k, _)| k.as_str() != Some(crate::lifecycle::migrate_send::MAPS_TO))
            .cloned()
            .collect();
        v.set(f::other_config, Value::map(oc));
        if v.get(f::VM).as_ref_str().is_none_or(|x| x == NULL_REF) {
            continue;
        }
        if v.get(f::network).as_ref_str().is_none_or(|x| x == NULL_REF) {
            tracing::info!(vif = %o.id, "a VIF of the archive is on no network here: left out");
            continue;
        }
        if !opts.full_restore {
            v.set(f::uuid, Value::str(new_uuid()));
        }
        v.set(f::currently_attached, Value::Bool(false));
        objects.push(v);
    }
    Ok(Planned {
        objects,
        links,
        vms: vm_refs,
        replaces,
    })
}

fn commit_tx(tx: &mut Tx, p: &Planned) -> Result<(), ApiError> {
    for o in &p.objects {
        create(tx, o.clone())?;
    }
    for (vm, f, target) in &p.links {
        set_field(tx, class_ids::VM, vm, *f, Value::reference(target.as_str()))?;
    }
    for vm in &p.vms {
        crate::lifecycle::rules::refresh_vm_and_devices(tx, vm)?;
    }
    Ok(())
}

/// Creates the planned records (after destroying the halted VMs a full restore replaces).
pub async fn commit(agent: &Arc<Agent>, p: &Planned) -> Result<Vec<String>, ApiError> {
    for old in &p.replaces {
        crate::lifecycle::vm_copy::destroy_vm(agent, old).await?;
    }
    agent.store.write(|tx| commit_tx(tx, p)).await?;
    Ok(p.vms.clone())
}
