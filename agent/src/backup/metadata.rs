//! Which records an export holds, and how they are written: the VM, its VIFs and their
//! networks, its VBDs, their VDIs and SRs, its metrics and the hosts it names (and, for a
//! metadata export, its snapshots and parent), each reference rewritten to an archive name
//! (`Ref:N`) or to `OpaqueRef:NULL` when the archive does not hold its target. As the
//! reference: a plain export drops the snapshot fields (the VM leaves as a halted VM with no
//! snapshots), a metadata export keeps them.

use super::ova_xml::{self, Version};
use crate::schema::enums::{VbdType, VmPowerState};
use crate::schema::{class_ids, fields, ClassId, FieldId, Ty};
use crate::value::{Object, Value, NULL_REF};
use crate::Agent;
use std::collections::HashMap;
use std::sync::Arc;

/// How an export is made.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExportOptions {
    /// Keep the snapshot fields and include the VM's snapshots (metadata exports).
    pub with_snapshot_metadata: bool,
    /// Keep the power state (and a suspended VM's suspend image).
    pub preserve_power_state: bool,
    /// Leave out VIFs.
    pub exclude_vifs: bool,
    /// Leave out VBDs.
    pub exclude_vbds: bool,
}

/// A disk an XVA carries: its archive name, its VDI and its size.
#[derive(Clone, Debug)]
pub struct ExportDisk {
    /// `Ref:N`: the chunks are `Ref:N/00000000`, ….
    pub id: String,
    /// The VDI's ref.
    pub vdi: String,
    /// Bytes.
    pub size: u64,
}

/// Archive names of the objects an export holds.
#[derive(Default)]
struct Table {
    ids: HashMap<String, String>,
}

impl Table {
    fn add(&mut self, r: &str) {
        if r.is_empty() || r == NULL_REF || self.ids.contains_key(r) {
            return;
        }
        let id = format!("Ref:{}", self.ids.len());
        self.ids.insert(r.to_owned(), id);
    }
    fn has(&self, r: &str) -> bool {
        self.ids.contains_key(r)
    }
    fn lookup(&self, r: &str) -> Value {
        match self.ids.get(r) {
            Some(id) => Value::reference(id.as_str()),
            None => Value::null_ref(),
        }
    }
}

fn refs(o: &Object, f: FieldId) -> Vec<String> {
    o.get(f)
        .as_set()
        .iter()
        .filter_map(|v| v.as_ref_str().map(str::to_owned))
        .collect()
}

fn one_ref(o: &Object, f: FieldId) -> Option<String> {
    o.get(f)
        .as_ref_str()
        .filter(|r| *r != NULL_REF && !r.is_empty())
        .map(str::to_owned)
}

fn add_vdi(agent: &Agent, t: &mut Table, vdi: &str) {
    t.add(vdi);
    if let Some(sr) = agent
        .store
        .get(class_ids::VDI, vdi)
        .and_then(|v| one_ref(&v, fields::VDI::SR))
    {
        t.add(&sr);
    }
}

fn update_table(agent: &Agent, t: &mut Table, vm_ref: &str, include_snapshots: bool, o: &ExportOptions) {
    use fields::VM as f;
    if t.has(vm_ref) {
        return;
    }
    let Some(vm) = agent.store.get(class_ids::VM, vm_ref) else {
        return;
    };
    t.add(vm_ref);
    if !o.exclude_vifs {
        for vif in refs(&vm, f::VIFs) {
            if let Some(v) = agent.store.get(class_ids::VIF, &vif) {
                t.add(&vif);
                if let Some(n) = one_ref(&v, fields::VIF::network) {
                    t.add(&n);
                }
            }
        }
    }
    if !o.exclude_vbds {
        for vbd in refs(&vm, f::VBDs) {
            if let Some(b) = agent.store.get(class_ids::VBD, &vbd) {
                t.add(&vbd);
                if b.get(fields::VBD::empty) != &Value::Bool(true) {
                    if let Some(vdi) = one_ref(&b, fields::VBD::VDI) {
                        add_vdi(agent, t, &vdi);
                    }
                }
            }
        }
    }
    if include_snapshots {
        for s in refs(&vm, f::snapshots) {
            update_table(agent, t, &s, false, o);
        }
    }
    if o.preserve_power_state && vm.get(f::power_state) == &VmPowerState::Suspended.value() {
        if let Some(v) = one_ref(&vm, f::suspend_VDI) {
            add_vdi(agent, t, &v);
        }
    }
    for fld in [f::metrics, f::guest_metrics, f::resident_on, f::affinity] {
        if let Some(r) = one_ref(&vm, fld) {
            t.add(&r);
        }
    }
    if include_snapshots {
        if let Some(p) = one_ref(&vm, f::parent) {
            update_table(agent, t, &p, false, o);
        }
    }
}

/// Rewrites every reference field to its archive name (or null; sets lose what is not held).
fn rewrite_refs(t: &Table, o: &mut Object, keep: &[FieldId]) {
    let class = o.class;
    for (i, fd) in class.def().fields.iter().enumerate() {
        let id = FieldId(i);
        if keep.contains(&id) {
            continue;
        }
        let new = match (fd.ty, o.get(id)) {
            (Ty::Ref(_), Value::Ref(r)) => Some(t.lookup(r)),
            (Ty::Set(Ty::Ref(_)), Value::Set(items)) => Some(Value::set(
                items
                    .iter()
                    .filter_map(Value::as_ref_str)
                    .filter(|r| t.has(r))
                    .map(|r| t.lookup(r))
                    .collect(),
            )),
            _ => None,
        };
        if let Some(v) = new {
            o.set(id, v);
        }
    }
    if let Some(f) = class.field_by_name("current_operations") {
        o.set(f, Value::map(Vec::new()));
    }
    if let Some(f) = class.field_by_name("allowed_operations") {
        o.set(f, Value::set(Vec::new()));
    }
}

fn clear(o: &mut Object, names: &[&str]) {
    for n in names {
        if let Some(f) = o.class.field_by_name(n) {
            let v = match o.get(f) {
                Value::Map(_) => Value::map(Vec::new()),
                Value::Set(_) => Value::set(Vec::new()),
                Value::Ref(_) => Value::null_ref(),
                Value::String(_) => Value::empty_str(),
                other => other.clone(),
            };
            o.set(f, v);
        }
    }
}

fn make(t: &Table, src: &Object, opts: &ExportOptions) -> Object {
    let mut o = src.clone();
    let class = o.class;
    let mut keep = Vec::new();
    if class == class_ids::VM && opts.with_snapshot_metadata {
        // The reference writes a metadata export's `snapshots` with the source's own refs.
        keep.push(fields::VM::snapshots);
    }
    rewrite_refs(t, &mut o, &keep);
    if class == class_ids::VM {
        use fields::VM as f;
        if !opts.preserve_power_state {
            o.set(f::power_state, VmPowerState::Halted.value());
            o.set(f::suspend_VDI, Value::null_ref());
        }
        if !opts.with_snapshot_metadata {
            o.set(f::is_a_snapshot, Value::Bool(false));
            o.set(f::snapshot_of, Value::null_ref());
            o.set(f::snapshots, Value::set(Vec::new()));
            o.set(f::snapshot_time, Value::DateTime(0));
            o.set(f::transportable_snapshot_id, Value::empty_str());
            o.set(f::parent, Value::null_ref());
        }
        clear(&mut o, &["crash_dumps", "consoles", "protection_policy", "blobs"]);
    } else if class == class_ids::VBD || class == class_ids::VIF {
        if !opts.preserve_power_state {
            if let Some(f) = class.field_by_name("currently_attached") {
                o.set(f, Value::Bool(false));
            }
        }
        clear(&mut o, &["metrics"]);
    } else if class == class_ids::network {
        clear(&mut o, &["PIFs"]);
    } else if class == class_ids::VDI {
        clear(&mut o, &["crash_dumps"]);
    } else if class == class_ids::SR {
        clear(&mut o, &["PBDs"]);
    } else if class == class_ids::host {
        clear(
            &mut o,
            &[
                "PIFs",
                "PBDs",
                "PGPUs",
                "PCIs",
                "host_CPUs",
                "license_params",
                "blobs",
                "external_auth_type",
                "external_auth_service_name",
                "external_auth_configuration",
                "metrics",
                "patches",
                "crashdumps",
                "logging",
                "supported_bootloaders",
                "cpu_configuration",
                "other_config",
                "capabilities",
                "software_version",
                "sched_policy",
                "ha_statefiles",
                "ha_network_peers",
                "tags",
            ],
        );
    }
    o
}

/// The classes an export writes, in the reference's order.
const CLASSES: [ClassId; 9] = [
    class_ids::host,
    class_ids::VM,
    class_ids::VM_metrics,
    class_ids::VM_guest_metrics,
    class_ids::VBD,
    class_ids::VIF,
    class_ids::network,
    class_ids::VDI,
    class_ids::SR,
];

/// The records of an export of `vms` and their archive names.
pub fn objects(
    agent: &Agent,
    vms: &[String],
    opts: &ExportOptions,
) -> (Vec<(String, Object)>, HashMap<String, String>) {
    let mut t = Table::default();
    for vm in vms {
        update_table(agent, &mut t, vm, opts.with_snapshot_metadata, opts);
    }
    let mut out = Vec::new();
    for class in CLASSES {
        for obj in agent.store.all(class) {
            if let Some(id) = t.ids.get(&obj.reference) {
                out.push((id.clone(), make(&t, &obj, opts)));
            }
        }
    }
    (out, t.ids)
}

/// This host's `version` struct, and the `ova.xml` of `objects`.
pub fn ova_xml(agent: &Agent, objects: &[(String, Object)]) -> String {
    let host = agent.store.get(class_ids::host, &agent.host);
    let sv = |k: &str| -> String {
        host.as_ref()
            .and_then(|h| {
                h.get(fields::host::software_version)
                    .map_get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    };
    let hostname = host
        .as_ref()
        .map(|h| h.get(fields::host::hostname).as_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    let xapi = sv("xapi");
    let mut parts = xapi.split('.').map(|p| p.trim().parse::<i64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let (pv, brand, build) = (sv("product_version"), sv("product_brand"), sv("build_number"));
    let v = Version {
        hostname: &hostname,
        product_version: &pv,
        product_brand: &brand,
        build_number: &build,
        xapi_major: major,
        xapi_minor: minor,
        date: &date,
    };
    ova_xml::write(&v, objects)
}

/// The disks a plain export of `vm` streams: its VBDs' VDIs (not CDs, not in an `iso` SR),
/// with a suspended VM's suspend image first when the power state is kept.
pub fn disks(agent: &Arc<Agent>, vm: &Object, ids: &HashMap<String, String>, opts: &ExportOptions) -> Vec<ExportDisk> {
    let mut vdis = Vec::new();
    if opts.preserve_power_state && vm.get(fields::VM::power_state) == &VmPowerState::Suspended.value() {
        if let Some(v) = one_ref(vm, fields::VM::suspend_VDI) {
            vdis.push(v);
        }
    }
    for vbd in refs(vm, fields::VM::VBDs) {
        let Some(b) = agent.store.get(class_ids::VBD, &vbd) else {
            continue;
        };
        if b.get(fields::VBD::r#type) == &VbdType::CD.value() || b.get(fields::VBD::empty) == &Value::Bool(true) {
            continue;
        }
        if let Some(v) = one_ref(&b, fields::VBD::VDI) {
            vdis.push(v);
        }
    }
    let mut out = Vec::new();
    for v in vdis {
        let Some(vdi) = agent.store.get(class_ids::VDI, &v) else {
            continue;
        };
        let iso = one_ref(&vdi, fields::VDI::SR)
            .and_then(|sr| agent.store.get(class_ids::SR, &sr))
            .is_some_and(|sr| {
                sr.get(fields::SR::content_type).as_str() == Some("iso")
                    || sr.get(fields::SR::r#type).as_str() == Some("iso")
            });
        let Some(id) = ids.get(&v) else {
            continue;
        };
        if iso || out.iter().any(|d: &ExportDisk| d.vdi == v) {
            continue;
        }
        let size = vdi.get(fields::VDI::virtual_size).as_int().unwrap_or(0).max(0) as u64;
        out.push(ExportDisk {
            id: id.clone(),
            vdi: v,
            size,
        });
    }
    out
}

/// Every VM a `/export_metadata?all=true` holds: not default templates, not the control
/// domain unless `include_dom0`.
pub fn all_vms(agent: &Agent, include_dom0: bool) -> Vec<String> {
    use fields::VM as f;
    agent
        .store
        .all(class_ids::VM)
        .iter()
        .filter(|vm| {
            let default_template = vm.get(f::is_default_template) == &Value::Bool(true)
                || (vm.get(f::is_a_template) == &Value::Bool(true)
                    && vm
                        .get(f::other_config)
                        .map_get("default_template")
                        .and_then(Value::as_str)
                        == Some("true"));
            let dom0 = vm.get(f::is_control_domain) == &Value::Bool(true);
            !default_template && (include_dom0 || !dom0)
        })
        .map(|vm| vm.reference.clone())
        .collect()
}

/// The `ova.xml` of an export of `vms` and, when `with_disks`, the disks the first one
/// streams. A running or paused VM cannot be exported with its disks (`VM_BAD_POWER_STATE`).
pub fn plan_export(
    agent: &Arc<Agent>,
    vms: &[String],
    opts: &ExportOptions,
    with_disks: bool,
) -> Result<(String, Vec<ExportDisk>), crate::error::ApiError> {
    let (objects, ids) = self::objects(agent, vms, opts);
    let ova = ova_xml(agent, &objects);
    if !with_disks {
        return Ok((ova, Vec::new()));
    }
    let vm_ref = vms.first().map(String::as_str).unwrap_or(NULL_REF);
    let vm = agent
        .store
        .get(class_ids::VM, vm_ref)
        .ok_or_else(|| crate::error::ApiError::handle_invalid("VM", vm_ref))?;
    let state = vm.get(fields::VM::power_state);
    if state == &VmPowerState::Running.value() || state == &VmPowerState::Paused.value() {
        return Err(crate::error::ApiError::VmBadPowerState {
            vm: vm_ref.to_owned(),
            expected: "halted".into(),
            actual: state.as_str().unwrap_or("").to_ascii_lowercase(),
        });
    }
    Ok((ova, disks(agent, &vm, &ids, opts)))
}
