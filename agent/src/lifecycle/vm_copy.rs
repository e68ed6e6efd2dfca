//! VM copies and their undoing: clone, copy, snapshot, checkpoint, revert, provision, destroy.

use super::{blocking, devices, rules, vm_power};
use crate::error::ApiError;
use crate::lifecycle::devices::random_mac;
use crate::objects::{create, destroy, new_ref, new_uuid, set_field};
use crate::schema::{class_ids, fields, FieldId};
use crate::store::Tx;
use crate::value::{default_object, now, Object, Value, NULL_REF};
use crate::Agent;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Clone,
    Copy,
    Snapshot,
    Checkpoint,
}

/// Carries out a copy-like VM operation (in the VM's actor).
pub async fn perform(agent: &Arc<Agent>, vm: &str, op: &str, args: &[Value]) -> Result<Value, ApiError> {
    let name = args.first().and_then(Value::as_str).unwrap_or("").to_owned();
    match op {
        "clone" => copy_vm(agent, vm, &name, Mode::Clone, None, &[])
            .await
            .map(Value::reference),
        "copy" => {
            let sr = args.get(1).and_then(Value::as_ref_str).map(str::to_owned);
            if let Some(sr) = &sr {
                if agent.store.get(class_ids::SR, sr).is_none() {
                    return Err(ApiError::handle_invalid("SR", sr));
                }
            }
            copy_vm(agent, vm, &name, Mode::Copy, sr, &[])
                .await
                .map(Value::reference)
        }
        "snapshot" => {
            let ignore: Vec<String> = args
                .get(1)
                .map(|v| {
                    v.as_set()
                        .iter()
                        .filter_map(|x| x.as_ref_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            copy_vm(agent, vm, &name, Mode::Snapshot, None, &ignore)
                .await
                .map(Value::reference)
        }
        "checkpoint" => checkpoint(agent, vm, &name).await.map(Value::reference),
        "revert" => revert(agent, vm).await.map(|_| Value::None),
        "provision" => provision(agent, vm).await.map(|_| Value::None),
        other => Err(ApiError::not_implemented(&format!("VM.{other}"))),
    }
}

/// Fields a copy never takes from its source (identity, runtime state, links).
const NOT_COPIED: &[&str] = &[
    "uuid",
    "allowed_operations",
    "current_operations",
    "power_state",
    "resident_on",
    "scheduled_to_be_resident_on",
    "consoles",
    "VIFs",
    "VBDs",
    "VUSBs",
    "crash_dumps",
    "VTPMs",
    "domid",
    "metrics",
    "guest_metrics",
    "suspend_VDI",
    "is_a_snapshot",
    "snapshot_of",
    "snapshots",
    "snapshot_time",
    "children",
    "parent",
    "is_default_template",
    "appliance",
    "protection_policy",
    "snapshot_schedule",
    "VGPUs",
    "attached_PCIs",
    "groups",
    "is_control_domain",
];

#[derive(Clone)]
struct Planned {
    vm: Object,
    vbds: Vec<Object>,
    vifs: Vec<Object>,
    metrics: Object,
}

/// The new VM's records; its disks are copied by the storage layer as the plan is made.
async fn plan_copy(
    agent: &Arc<Agent>,
    src: &Object,
    name: &str,
    mode: Mode,
    sr: Option<&str>,
    ignore: &[String],
) -> Result<Planned, ApiError> {
    use fields::VM as f;
    let r = new_ref();
    let mut vm = default_object(class_ids::VM, &r);
    for (i, fd) in class_ids::VM.def().fields.iter().enumerate() {
        if !NOT_COPIED.contains(&fd.name) {
            vm.set(FieldId(i), src.get(FieldId(i)).clone());
        }
    }
    vm.set(f::uuid, Value::str(new_uuid()));
    vm.set(f::name_label, Value::str(name));
    vm.set(f::domid, Value::Int(-1));
    let snapshot = matches!(mode, Mode::Snapshot | Mode::Checkpoint);
    if snapshot {
        vm.set(f::is_a_snapshot, Value::Bool(true));
        vm.set(f::is_a_template, Value::Bool(true));
        vm.set(f::snapshot_of, Value::reference(src.reference.as_str()));
        vm.set(f::snapshot_time, Value::DateTime(now()));
        vm.set(
            f::power_state,
            Value::Enum(if mode == Mode::Checkpoint {
                "Suspended"
            } else {
                "Halted"
            }),
        );
    } else {
        let mut oc = vm.get(f::other_config).as_map().to_vec();
        oc.retain(|(k, _)| k.as_str() != Some("default_template"));
        vm.set(f::other_config, Value::map(oc));
    }
    let metrics_ref = new_ref();
    let mut metrics = default_object(class_ids::VM_metrics, &metrics_ref);
    metrics.set(fields::VM_metrics::uuid, Value::str(new_uuid()));
    vm.set(f::metrics, Value::reference(metrics_ref));

    let mut vbds = Vec::new();
    for vbd_ref in src.get(f::VBDs).as_set() {
        let Some(vbd) = vbd_ref.as_ref_str().and_then(|x| agent.store.get(class_ids::VBD, x)) else {
            continue;
        };
        let mut nv = (*vbd).clone();
        nv.reference = new_ref();
        nv.generation = 0;
        nv.set(fields::VBD::uuid, Value::str(new_uuid()));
        nv.set(fields::VBD::VM, Value::reference(r.as_str()));
        nv.set(fields::VBD::currently_attached, Value::Bool(false));
        nv.set(fields::VBD::current_operations, Value::map(Vec::new()));
        nv.set(fields::VBD::metrics, Value::null_ref());
        let is_cd = vbd.get(fields::VBD::r#type) == &crate::schema::enums::VbdType::CD.value();
        match vbd.get(fields::VBD::VDI).as_ref_str() {
            Some(vdi_ref) if !is_cd => {
                if ignore.iter().any(|x| x == vdi_ref) {
                    continue;
                }
                if agent.store.get(class_ids::VDI, vdi_ref).is_none() {
                    continue;
                }
                let new_vdi = match (mode, sr) {
                    (Mode::Copy, Some(sr)) => crate::storage::vdi::copy(agent, vdi_ref, sr, NULL_REF).await?,
                    _ => crate::storage::vdi::duplicate(agent, vdi_ref, snapshot).await?,
                };
                nv.set(fields::VBD::VDI, Value::reference(new_vdi));
            }
            _ => {}
        }
        vbds.push(nv);
    }
    let mut vifs = Vec::new();
    for vif_ref in src.get(f::VIFs).as_set() {
        let Some(vif) = vif_ref.as_ref_str().and_then(|x| agent.store.get(class_ids::VIF, x)) else {
            continue;
        };
        let mut nv = (*vif).clone();
        nv.reference = new_ref();
        nv.generation = 0;
        nv.set(fields::VIF::uuid, Value::str(new_uuid()));
        nv.set(fields::VIF::VM, Value::reference(r.as_str()));
        nv.set(fields::VIF::currently_attached, Value::Bool(false));
        nv.set(fields::VIF::current_operations, Value::map(Vec::new()));
        nv.set(fields::VIF::metrics, Value::null_ref());
        if !snapshot && vif.get(fields::VIF::MAC_autogenerated) == &Value::Bool(true) {
            nv.set(fields::VIF::MAC, Value::str(random_mac()));
        }
        vifs.push(nv);
    }
    Ok(Planned {
        vm,
        vbds,
        vifs,
        metrics,
    })
}

fn commit_planned(tx: &mut Tx, p: Planned) -> Result<String, ApiError> {
    let r = p.vm.reference.clone();
    create(tx, p.metrics)?;
    create(tx, p.vm)?;
    for v in p.vbds {
        create(tx, v)?;
    }
    for v in p.vifs {
        create(tx, v)?;
    }
    rules::refresh_vm_and_devices(tx, &r)?;
    Ok(r)
}

async fn copy_vm(
    agent: &Arc<Agent>,
    vm: &str,
    name: &str,
    mode: Mode,
    sr: Option<String>,
    ignore: &[String],
) -> Result<String, ApiError> {
    let src = agent
        .store
        .get(class_ids::VM, vm)
        .ok_or_else(|| ApiError::handle_invalid("VM", vm))?;
    let planned = plan_copy(agent, &src, name, mode, sr.as_deref(), ignore).await?;
    agent.store.write(|tx| commit_planned(tx, planned.clone())).await
}

fn suspend_file(agent: &Agent, uuid: &str) -> PathBuf {
    agent.state_dir.join("suspend").join(format!("{uuid}.img"))
}

async fn checkpoint(agent: &Arc<Agent>, vm: &str, name: &str) -> Result<String, ApiError> {
    let rec = agent
        .store
        .get(class_ids::VM, vm)
        .ok_or_else(|| ApiError::handle_invalid("VM", vm))?;
    let domid = rec
        .get(fields::VM::domid)
        .as_int()
        .filter(|d| *d >= 0)
        .ok_or_else(|| ApiError::internal("the VM has no domain"))? as u32;
    let cfg = vm_power::domain_config(&rec)?;
    let image = agent
        .state_dir
        .join("suspend")
        .join(format!("checkpoint-{}.img", new_uuid()));
    if let Some(dir) = image.parent() {
        std::fs::create_dir_all(dir).map_err(ApiError::internal)?;
    }
    // Save the memory image, then bring the guest straight back from it (a paused guest is
    // let run for the save and comes back paused).
    let paused = rec.get(fields::VM::power_state) == &crate::schema::enums::VmPowerState::Paused.value();
    let hv = agent.hypervisor.clone();
    let img = image.clone();
    let new_domid = blocking(agent, move || {
        if paused {
            hv.unpause(domid)?;
        }
        hv.suspend_to(domid, &img)?;
        let d = hv.resume_from(&img, &cfg)?;
        Ok(d)
    })
    .await
    .map_err(|_| ApiError::VmCheckpointSuspendFailed { vm: vm.to_owned() })?;
    devices::attach_all(agent, &rec, new_domid).await?;
    if !paused {
        let hv = agent.hypervisor.clone();
        blocking(agent, move || hv.unpause(new_domid)).await?;
    }
    agent.domids.lock().retain(|_, v| v != vm);
    agent.domids.lock().insert(new_domid, vm.to_owned());
    agent
        .store
        .write(|tx| {
            set_field(
                tx,
                class_ids::VM,
                vm,
                fields::VM::domid,
                Value::Int(i64::from(new_domid)),
            )
        })
        .await?;
    let snap = copy_vm(agent, vm, name, Mode::Checkpoint, None, &[]).await?;
    // The checkpoint keeps the memory image as its suspend VDI.
    let snap_uuid = agent
        .store
        .get(class_ids::VM, &snap)
        .and_then(|s| s.uuid().map(str::to_owned))
        .unwrap_or_default();
    let kept = suspend_file(agent, &snap_uuid);
    std::fs::rename(&image, &kept).map_err(ApiError::internal)?;
    attach_suspend_vdi(agent, &snap, &kept).await?;
    Ok(snap)
}

async fn attach_suspend_vdi(agent: &Arc<Agent>, vm: &str, path: &std::path::Path) -> Result<(), ApiError> {
    let image = vm_power::SuspendVdi::of(agent, path);
    agent.store.write(|tx| image.attach(tx, vm)).await
}

/// Fields `revert` keeps from the VM rather than taking from the snapshot.
const KEPT_ON_REVERT: &[&str] = &[
    "name_label",
    "is_a_template",
    "other_config",
    "tags",
    "blocked_operations",
];

async fn revert(agent: &Arc<Agent>, snapshot: &str) -> Result<(), ApiError> {
    let snap = agent
        .store
        .get(class_ids::VM, snapshot)
        .ok_or_else(|| ApiError::handle_invalid("VM", snapshot))?;
    let vm = snap
        .get(fields::VM::snapshot_of)
        .as_ref_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::VmRevertFailed {
            vm: NULL_REF.into(),
            snapshot: snapshot.to_owned(),
        })?;
    let cur = agent
        .store
        .get(class_ids::VM, &vm)
        .ok_or_else(|| ApiError::VmRevertFailed {
            vm: vm.clone(),
            snapshot: snapshot.to_owned(),
        })?;
    // Stop whatever the VM is doing: the snapshot's state replaces it.
    if let Some(d) = cur.get(fields::VM::domid).as_int().filter(|d| *d >= 0) {
        let hv = agent.hypervisor.clone();
        let _ = blocking(agent, move || hv.destroy(d as u32)).await;
    }
    vm_power::mark_halted(agent, &vm).await?;
    let planned = plan_copy(agent, &snap, "", Mode::Clone, None, &[]).await?;
    let checkpoint = snap.get(fields::VM::power_state) == &crate::schema::enums::VmPowerState::Suspended.value();
    let old_disks: Vec<String> = cur
        .get(fields::VM::VBDs)
        .as_set()
        .iter()
        .filter_map(Value::as_ref_str)
        .filter_map(|r| agent.store.get(class_ids::VBD, r))
        .filter(|vbd| vbd.get(fields::VBD::r#type) != &crate::schema::enums::VbdType::CD.value())
        .filter_map(|vbd| vbd.get(fields::VBD::VDI).as_ref_str().map(str::to_owned))
        .collect();
    let cur = agent
        .store
        .get(class_ids::VM, &vm)
        .ok_or_else(|| ApiError::handle_invalid("VM", &vm))?;
    agent
        .store
        .write(|tx| {
            // The VM's old disks and devices go; the snapshot's copies take their place.
            for r in cur.get(fields::VM::VBDs).as_set().iter().filter_map(Value::as_ref_str) {
                if tx.get(class_ids::VBD, r).is_some() {
                    destroy(tx, class_ids::VBD, r)?;
                }
            }
            for r in cur.get(fields::VM::VIFs).as_set().iter().filter_map(Value::as_ref_str) {
                if tx.get(class_ids::VIF, r).is_some() {
                    destroy(tx, class_ids::VIF, r)?;
                }
            }
            let mut next = (*tx.must_get(class_ids::VM, &vm)?).clone();
            for (i, fd) in class_ids::VM.def().fields.iter().enumerate() {
                if !NOT_COPIED.contains(&fd.name) && !KEPT_ON_REVERT.contains(&fd.name) {
                    next.set(FieldId(i), snap.get(FieldId(i)).clone());
                }
            }
            tx.put(next);
            for mut v in planned.vbds.clone() {
                v.set(fields::VBD::VM, Value::reference(vm.as_str()));
                create(tx, v)?;
            }
            for mut v in planned.vifs.clone() {
                v.set(fields::VIF::VM, Value::reference(vm.as_str()));
                create(tx, v)?;
            }
            if checkpoint {
                set_field(
                    tx,
                    class_ids::VM,
                    &vm,
                    fields::VM::power_state,
                    crate::schema::enums::VmPowerState::Suspended.value(),
                )?;
            }
            rules::refresh_vm_and_devices(tx, &vm)
        })
        .await?;
    // The VM's old disks go with the state they held.
    for v in old_disks {
        if let Err(e) = crate::storage::vdi::destroy_vdi(agent, &v).await {
            tracing::warn!(vdi = %v, error = %e, "could not remove a disk replaced by revert");
        }
    }
    if checkpoint {
        let from = suspend_file(agent, snap.uuid().unwrap_or(""));
        let to = suspend_file(agent, cur.uuid().unwrap_or(""));
        std::fs::copy(&from, &to).map_err(|e| ApiError::VmRevertFailed {
            vm: vm.clone(),
            snapshot: format!("{snapshot}: {e}"),
        })?;
        attach_suspend_vdi(agent, &vm, &to).await?;
    }
    Ok(())
}

/// One `<disk …/>` of a template's `other_config:disks`.
struct DiskSpec {
    device: String,
    size: i64,
    sr: String,
    bootable: bool,
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let pat = format!("{name}=\"");
    let start = tag.find(&pat)? + pat.len();
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].to_owned())
}

fn parse_disks(xml: &str) -> Vec<DiskSpec> {
    xml.split("<disk")
        .skip(1)
        .filter_map(|tag| {
            let tag = tag.split('>').next()?;
            Some(DiskSpec {
                device: attr(tag, "device")?,
                size: attr(tag, "size")?.parse().ok()?,
                sr: attr(tag, "sr").unwrap_or_default(),
                bootable: attr(tag, "bootable").as_deref() == Some("true"),
            })
        })
        .collect()
}

async fn provision(agent: &Arc<Agent>, vm: &str) -> Result<(), ApiError> {
    let rec = agent
        .store
        .get(class_ids::VM, vm)
        .ok_or_else(|| ApiError::handle_invalid("VM", vm))?;
    let disks = parse_disks(
        rec.get(fields::VM::other_config)
            .map_get("disks")
            .and_then(Value::as_str)
            .unwrap_or(""),
    );
    let default_sr = agent
        .store
        .get(class_ids::pool, &agent.pool_ref())
        .and_then(|p| p.get(fields::pool::default_SR).as_ref_str().map(str::to_owned))
        .unwrap_or_else(|| NULL_REF.to_owned());
    let mut vbds = Vec::new();
    for d in &disks {
        let sr = agent
            .store
            .ref_by_uuid(class_ids::SR, &d.sr)
            .unwrap_or_else(|| default_sr.clone());
        let mut vdi = default_object(class_ids::VDI, "");
        use fields::VDI as f;
        vdi.set(
            f::name_label,
            Value::str(format!("{} {}", rec.str_field("name_label"), d.device)),
        );
        vdi.set(f::SR, Value::reference(sr));
        vdi.set(f::virtual_size, Value::Int(d.size));
        vdi.set(f::r#type, crate::schema::enums::VdiType::system.value());
        let vdi_ref = crate::storage::vdi::create_vdi(agent, &vdi).await?;
        let mut vbd = default_object(class_ids::VBD, &new_ref());
        use fields::VBD as b;
        vbd.set(b::uuid, Value::str(new_uuid()));
        vbd.set(b::VM, Value::reference(vm));
        vbd.set(b::VDI, Value::reference(vdi_ref));
        vbd.set(b::userdevice, Value::str(d.device.as_str()));
        vbd.set(b::bootable, Value::Bool(d.bootable));
        vbd.set(b::mode, crate::schema::enums::VbdMode::RW.value());
        vbd.set(b::r#type, crate::schema::enums::VbdType::Disk.value());
        vbd.set(b::unpluggable, Value::Bool(true));
        vbds.push(vbd);
    }
    agent
        .store
        .write(|tx| {
            // A provisioned VM is no longer a template, as the reference does.
            set_field(tx, class_ids::VM, vm, fields::VM::is_a_template, Value::Bool(false))?;
            for v in vbds.clone() {
                create(tx, v)?;
            }
            rules::refresh_vm_and_devices(tx, vm)
        })
        .await
}

/// `VM.destroy`: the VM and what only it uses (devices, metrics, consoles, suspend image);
/// its disks stay.
pub async fn destroy_vm(agent: &Arc<Agent>, vm: &str) -> Result<Value, ApiError> {
    let rec = agent
        .store
        .get(class_ids::VM, vm)
        .ok_or_else(|| ApiError::handle_invalid("VM", vm))?;
    if let Some(uuid) = rec.uuid() {
        let _ = std::fs::remove_file(suspend_file(agent, uuid));
    }
    agent
        .store
        .write(|tx| {
            use fields::VM as f;
            for list in [f::VBDs, f::VIFs, f::consoles, f::VTPMs, f::VUSBs] {
                for r in rec.get(list).as_set().iter().filter_map(Value::as_ref_str) {
                    for class in [
                        class_ids::VBD,
                        class_ids::VIF,
                        class_ids::console,
                        class_ids::VTPM,
                        class_ids::VUSB,
                    ] {
                        if tx.get(class, r).is_some() {
                            destroy(tx, class, r)?;
                        }
                    }
                }
            }
            for (field, class) in [
                (f::metrics, class_ids::VM_metrics),
                (f::guest_metrics, class_ids::VM_guest_metrics),
                (f::suspend_VDI, class_ids::VDI),
            ] {
                if let Some(r) = rec.get(field).as_ref_str() {
                    if tx.get(class, r).is_some() {
                        destroy(tx, class, r)?;
                    }
                }
            }
            destroy(tx, class_ids::VM, vm)
        })
        .await?;
    agent.actors.remove(class_ids::VM, vm);
    Ok(Value::None)
}
