//! Which operations an object allows in its current state, as the reference decides it:
//! blocked operations, power state, concurrent operations, templates, snapshots and the
//! control domain — checked in that order, the first failure reported.

use crate::error::ApiError;
use crate::objects::set_field;
use crate::schema::{class_ids, fields, ClassId, FieldId};
use crate::store::Tx;
use crate::value::{Object, Value};

const HALTED: &str = "Halted";
const PAUSED: &str = "Paused";
const RUNNING: &str = "Running";
const SUSPENDED: &str = "Suspended";

/// VM operations whose availability `allowed_operations` reports.
const VM_CANDIDATES: &[&str] = &[
    "start",
    "start_on",
    "pause",
    "unpause",
    "clean_shutdown",
    "clean_reboot",
    "hard_shutdown",
    "hard_reboot",
    "shutdown",
    "suspend",
    "resume",
    "resume_on",
    "pool_migrate",
    "migrate_send",
    "clone",
    "copy",
    "snapshot",
    "checkpoint",
    "revert",
    "provision",
    "destroy",
    "export",
    "metadata_export",
    "changing_memory_limits",
    "changing_static_range",
    "changing_dynamic_range",
    "changing_VCPUs",
    "changing_VCPUs_live",
    "changing_memory_live",
    "make_into_template",
    "get_boot_record",
];

/// The power states in which a VM operation may start.
pub fn allowed_power_states(vm: &Object, op: &str) -> &'static [&'static str] {
    let dom0 = vm.get(fields::VM::is_control_domain) == &Value::Bool(true);
    let snapshot = vm.get(fields::VM::is_a_snapshot) == &Value::Bool(true);
    match op {
        "changing_VCPUs" | "changing_static_range" | "changing_memory_limits" => {
            if dom0 {
                &[HALTED, RUNNING]
            } else {
                &[HALTED]
            }
        }
        "changing_shadow_memory" | "changing_NVRAM" | "make_into_template" | "provision" | "start" | "start_on" => {
            &[HALTED]
        }
        "unpause" => &[PAUSED],
        "resume" | "resume_on" => &[SUSPENDED],
        "clean_reboot"
        | "clean_shutdown"
        | "changing_memory_live"
        | "changing_VCPUs_live"
        | "pause"
        | "suspend"
        | "send_sysrq"
        | "send_trigger"
        | "pool_migrate"
        | "call_plugin" => &[RUNNING],
        "changing_dynamic_range" | "migrate_send" => &[HALTED, RUNNING],
        "clone" | "copy" => {
            if snapshot {
                &[HALTED, SUSPENDED]
            } else {
                &[HALTED]
            }
        }
        "destroy" | "export" => &[HALTED, SUSPENDED],
        "hard_reboot" => &[PAUSED, RUNNING],
        "checkpoint" | "get_boot_record" | "shutdown" | "hard_shutdown" => &[PAUSED, SUSPENDED, RUNNING],
        _ => &[HALTED, PAUSED, RUNNING, SUSPENDED],
    }
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn concurrent_ok(op: &str, current: &[&str]) -> bool {
    let group = |g: &[&str]| g.contains(&op) && current.iter().all(|c| g.contains(c));
    match op {
        "hard_shutdown" => !current.contains(&"hard_shutdown"),
        "hard_reboot" => !current.iter().any(|c| *c == "hard_shutdown" || *c == "hard_reboot"),
        _ => group(&["clone", "copy", "export"]) || group(&["snapshot", "checkpoint"]) || group(&["get_boot_record"]),
    }
}

/// The canonical `*_operations` enum spelling of an operation name.
pub fn canonical_op(class: ClassId, op: &str) -> &'static str {
    let field = class.field_by_name("allowed_operations").map(|f| class.field(f).ty);
    if let Some(crate::schema::Ty::Set(crate::schema::Ty::Enum(e))) = field {
        if let Some(v) = e.canonical(op) {
            return v;
        }
    }
    "unknown"
}

/// Checks that `op` may start on `obj` now; the error is the reference's.
pub fn check(tx: &Tx, obj: &Object, op: &str) -> Result<(), ApiError> {
    if obj.class == class_ids::VM {
        check_vm(obj, op)
    } else if obj.class == class_ids::VBD || obj.class == class_ids::VIF {
        check_device(tx, obj, op)
    } else {
        Ok(())
    }
}

/// Why a VM operation may not start (borrowing from the VM: cheap to make and to drop).
enum Refusal<'a> {
    Blocked(&'a Value),
    BadPowerState(&'static [&'static str], &'a str),
    OtherOperation(&'a [(Value, Value)]),
    Template,
    Snapshot,
    ProvisionOnTemplateOnly,
    RevertOnSnapshotOnly,
    Dom0(&'static str),
}

/// Checks that the VM operation `op` may start on `vm` now (what [`check`] asks of a VM).
pub fn check_vm(vm: &Object, op: &str) -> Result<(), ApiError> {
    let Some(why) = vm_refusal(vm, op) else {
        return Ok(());
    };
    let r = vm.reference.clone();
    Err(match why {
        Refusal::Blocked(reason) => ApiError::OperationBlocked {
            r#ref: r,
            code: reason.key_text(),
        },
        Refusal::BadPowerState(allowed, power) => ApiError::VmBadPowerState {
            vm: r,
            expected: allowed.iter().map(|s| lower(s)).collect::<Vec<_>>().join(", "),
            actual: lower(power),
        },
        Refusal::OtherOperation(marks) => {
            let current: Vec<(String, &str)> = marks
                .iter()
                .map(|(k, v)| (k.key_text(), v.as_str().unwrap_or("")))
                .collect();
            let (op_ref, op_type) = if current.len() == 1 {
                (current[0].0.clone(), current[0].1.to_owned())
            } else {
                (
                    format!(
                        "{{{}}}",
                        current.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(",")
                    ),
                    format!("{{{}}}", current.iter().map(|(_, o)| *o).collect::<Vec<_>>().join(",")),
                )
            };
            ApiError::OtherOperationInProgress {
                class: "VM".into(),
                object: r,
                operation_type: op_type,
                operation_ref: op_ref,
            }
        }
        Refusal::Template => ApiError::VmIsTemplate {
            vm: r,
            operation: op.to_owned(),
        },
        Refusal::Snapshot => ApiError::VmIsSnapshot {
            vm: r,
            operation: op.to_owned(),
        },
        Refusal::ProvisionOnTemplateOnly => ApiError::ProvisionOnlyAllowedOnTemplate {},
        Refusal::RevertOnSnapshotOnly => ApiError::RevertOnlyAllowedOnSnapshot {},
        Refusal::Dom0(msg) => ApiError::not_allowed(msg),
    })
}

/// Whether `op` may start on the VM now, and if not the first reason why (in the
/// reference's order of checks). `refresh_allowed` asks this for every candidate operation
/// on every VM write, so it allocates nothing.
fn vm_refusal<'a>(vm: &'a Object, op: &str) -> Option<Refusal<'a>> {
    if let Some(reason) = vm.get(fields::VM::blocked_operations).map_get(op) {
        return Some(Refusal::Blocked(reason));
    }
    let power = vm.get(fields::VM::power_state).as_str().unwrap_or(HALTED);
    let allowed = allowed_power_states(vm, op);
    if !allowed.contains(&power) {
        return Some(Refusal::BadPowerState(allowed, power));
    }
    let marks = vm.get(fields::VM::current_operations).as_map();
    if !marks.is_empty() {
        let mut ops = [""; 8];
        let ok = if marks.len() <= ops.len() {
            for (slot, (_, v)) in ops.iter_mut().zip(marks) {
                *slot = v.as_str().unwrap_or("");
            }
            concurrent_ok(op, &ops[..marks.len()])
        } else {
            let all: Vec<&str> = marks.iter().map(|(_, v)| v.as_str().unwrap_or("")).collect();
            concurrent_ok(op, &all)
        };
        if !ok {
            return Some(Refusal::OtherOperation(marks));
        }
    }
    let template = vm.get(fields::VM::is_a_template) == &Value::Bool(true);
    let snapshot = vm.get(fields::VM::is_a_snapshot) == &Value::Bool(true);
    if template && !snapshot {
        let default_template = vm.get(fields::VM::is_default_template) == &Value::Bool(true)
            || vm
                .get(fields::VM::other_config)
                .map_get("default_template")
                .and_then(Value::as_str)
                == Some("true");
        let ok = [
            "changing_dynamic_range",
            "changing_static_range",
            "changing_memory_limits",
            "changing_shadow_memory",
            "changing_VCPUs",
            "changing_NVRAM",
            "clone",
            "copy",
            "export",
            "metadata_export",
            "provision",
        ]
        .contains(&op)
            || (op == "destroy" && !default_template);
        if !ok {
            return Some(Refusal::Template);
        }
    }
    if snapshot
        && ![
            "revert",
            "clone",
            "copy",
            "export",
            "destroy",
            "hard_shutdown",
            "metadata_export",
        ]
        .contains(&op)
    {
        return Some(Refusal::Snapshot);
    }
    if op == "provision" && !template {
        return Some(Refusal::ProvisionOnTemplateOnly);
    }
    if op == "revert" && !snapshot {
        return Some(Refusal::RevertOnSnapshotOnly);
    }
    if vm.get(fields::VM::is_control_domain) == &Value::Bool(true) {
        if op == "changing_VCPUs" || op == "destroy" {
            return Some(Refusal::Dom0("This operation is not allowed on dom0"));
        }
        if ![
            "changing_memory_live",
            "metadata_export",
            "changing_dynamic_range",
            "changing_memory_limits",
            "changing_static_range",
            "start",
            "start_on",
        ]
        .contains(&op)
        {
            return Some(Refusal::Dom0("This operation is not allowed on a control domain"));
        }
    }
    None
}

/// The power state of the VM a device belongs to.
fn vm_power_of(tx: &Tx, dev: &Object, vm_field: FieldId) -> Option<&'static str> {
    let vm = tx.get(class_ids::VM, dev.get(vm_field).as_str()?)?;
    match vm.get(fields::VM::power_state) {
        Value::Enum(s) => Some(s),
        _ => None,
    }
}

fn check_device(tx: &Tx, dev: &Object, op: &str) -> Result<(), ApiError> {
    let (vm_field, attached_field, current_field) = if dev.class == class_ids::VBD {
        (
            fields::VBD::VM,
            fields::VBD::currently_attached,
            fields::VBD::current_operations,
        )
    } else {
        (
            fields::VIF::VM,
            fields::VIF::currently_attached,
            fields::VIF::current_operations,
        )
    };
    let r = dev.reference.clone();
    if let Some((k, v)) = dev.get(current_field).as_map().first() {
        return Err(ApiError::OtherOperationInProgress {
            class: dev.class.name().to_owned(),
            object: r,
            operation_type: v.key_text(),
            operation_ref: k.key_text(),
        });
    }
    let attached = dev.get(attached_field) == &Value::Bool(true);
    let power = vm_power_of(tx, dev, vm_field).unwrap_or(HALTED);
    match op {
        "plug" | "unplug" | "unplug_force" => {
            if power != RUNNING {
                let vm = dev.get(vm_field).key_text();
                return Err(ApiError::VmBadPowerState {
                    vm,
                    expected: "running".into(),
                    actual: lower(power),
                });
            }
            if op == "plug" && attached {
                return Err(ApiError::DeviceAlreadyAttached { device: r });
            }
            if op != "plug" && !attached {
                return Err(ApiError::DeviceAlreadyDetached { device: r });
            }
            if op == "unplug" && dev.class == class_ids::VBD && dev.get(fields::VBD::unpluggable) == &Value::Bool(false)
            {
                return Err(ApiError::VbdNotUnpluggable { vbd: r });
            }
            Ok(())
        }
        "insert" | "eject" => {
            if dev.get(fields::VBD::r#type) != &crate::schema::enums::VbdType::CD.value() {
                return Err(ApiError::VbdNotRemovableMedia { vbd: r });
            }
            let empty = dev.get(fields::VBD::empty) == &Value::Bool(true);
            if op == "insert" && !empty {
                return Err(ApiError::VbdNotEmpty { vbd: r });
            }
            if op == "eject" && empty {
                return Err(ApiError::VbdIsEmpty { vbd: r });
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A class's `allowed_operations` field and the operations it reports on, each with its
/// canonical enum spelling, worked out once (`refresh_allowed` runs on every VM write);
/// `None` for classes whose set this module does not keep.
fn allowed_field_and_candidates(class: ClassId) -> Option<(FieldId, &'static [(&'static str, &'static str)])> {
    use std::sync::OnceLock;
    type Table = Vec<(&'static str, &'static str)>;
    static TABLES: OnceLock<[Table; 3]> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        let table = |class: ClassId, ops: &[&'static str]| -> Table {
            ops.iter().map(|op| (*op, canonical_op(class, op))).collect()
        };
        [
            table(class_ids::VM, VM_CANDIDATES),
            table(class_ids::VBD, VBD_CANDIDATES),
            table(class_ids::VIF, VIF_CANDIDATES),
        ]
    });
    if class == class_ids::VM {
        Some((fields::VM::allowed_operations, &tables[0]))
    } else if class == class_ids::VBD {
        Some((fields::VBD::allowed_operations, &tables[1]))
    } else if class == class_ids::VIF {
        Some((fields::VIF::allowed_operations, &tables[2]))
    } else {
        None
    }
}

/// VBD operations whose availability `allowed_operations` reports.
const VBD_CANDIDATES: &[&str] = &["attach", "eject", "insert", "plug", "unplug", "unplug_force"];
/// VIF operations whose availability `allowed_operations` reports.
const VIF_CANDIDATES: &[&str] = &["attach", "plug", "unplug"];

/// Recomputes `allowed_operations` of a VM, VBD or VIF from its current state.
pub fn refresh_allowed(tx: &mut Tx, class: ClassId, reference: &str) -> Result<(), ApiError> {
    let Some((f, candidates)) = allowed_field_and_candidates(class) else {
        return Ok(());
    };
    let Some(obj) = tx.get(class, reference) else {
        return Ok(());
    };
    let allowed = if class == class_ids::VM {
        vm_allowed(&obj)
    } else {
        device_allowed(tx, &obj, candidates)
    };
    if obj.get(f) != &allowed {
        set_field(tx, class, reference, f, allowed)?;
    }
    Ok(())
}

/// The operations a VM allows now. VMs in the same state (see [`VmState`]) share one
/// computed set: it is worked out once per state and thread, not per VM and write.
fn vm_allowed(vm: &Object) -> Value {
    use std::cell::RefCell;
    thread_local! {
        static BY_STATE: RefCell<std::collections::HashMap<VmState, Value, crate::FastHash>> =
            RefCell::default();
    }
    let Some(state) = VmState::of(vm) else {
        return vm_allowed_uncached(vm);
    };
    BY_STATE.with(|memo| {
        let mut memo = memo.borrow_mut();
        if let Some(v) = memo.get(&state) {
            return v.clone();
        }
        // The states seen in practice are a few dozen; the bound only guards memory.
        if memo.len() >= 1024 {
            memo.clear();
        }
        let v = vm_allowed_uncached(vm);
        memo.insert(state, v.clone());
        v
    })
}

fn vm_allowed_uncached(vm: &Object) -> Value {
    let candidates = allowed_field_and_candidates(class_ids::VM).map_or(&[][..], |(_, c)| c);
    let allowed = candidates
        .iter()
        .filter(|(op, _)| vm_refusal(vm, op).is_none())
        .map(|(_, canonical)| Value::Enum(canonical))
        .collect();
    Value::set(allowed)
}

/// Everything [`vm_refusal`] reads of a VM, for a VM with no blocked operations and at most
/// two operations in progress (`None` otherwise: such a VM's set is worked out afresh).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct VmState {
    power: &'static str,
    /// is_a_template, is_a_snapshot, a default template, is_control_domain.
    flags: [bool; 4],
    /// The operations in progress, sorted (the checks do not depend on their order).
    in_progress: [&'static str; 2],
}

impl VmState {
    fn of(vm: &Object) -> Option<VmState> {
        if !vm.get(fields::VM::blocked_operations).as_map().is_empty() {
            return None;
        }
        let Value::Enum(power) = vm.get(fields::VM::power_state) else {
            return None;
        };
        let marks = vm.get(fields::VM::current_operations).as_map();
        if marks.len() > 2 {
            return None;
        }
        let mut in_progress = [""; 2];
        for (slot, (_, v)) in in_progress.iter_mut().zip(marks) {
            let Value::Enum(op) = v else {
                return None;
            };
            *slot = op;
        }
        in_progress.sort_unstable();
        let is = |f| vm.get(f) == &Value::Bool(true);
        let default_template = is(fields::VM::is_default_template)
            || vm
                .get(fields::VM::other_config)
                .map_get("default_template")
                .and_then(Value::as_str)
                == Some("true");
        Some(VmState {
            power,
            flags: [
                is(fields::VM::is_a_template),
                is(fields::VM::is_a_snapshot),
                default_template,
                is(fields::VM::is_control_domain),
            ],
            in_progress,
        })
    }
}

/// The operations a VBD or VIF allows now.
fn device_allowed(tx: &Tx, obj: &Object, candidates: &[(&'static str, &'static str)]) -> Value {
    let class = obj.class;
    let mut allowed = Vec::with_capacity(candidates.len());
    for &(op, canonical) in candidates {
        let ok = if op == "attach" {
            vm_power_of(
                tx,
                obj,
                if class == class_ids::VBD {
                    fields::VBD::VM
                } else {
                    fields::VIF::VM
                },
            ) == Some(HALTED)
        } else {
            check_device(tx, obj, op).is_ok()
        };
        if ok {
            allowed.push(Value::Enum(canonical));
        }
    }
    Value::set(allowed)
}

/// Refreshes a VM's and its devices' `allowed_operations`.
pub fn refresh_vm_and_devices(tx: &mut Tx, vm: &str) -> Result<(), ApiError> {
    refresh_allowed(tx, class_ids::VM, vm)?;
    if let Some(o) = tx.get(class_ids::VM, vm) {
        for vbd in o.get(fields::VM::VBDs).as_set() {
            if let Some(r) = vbd.as_ref_str() {
                refresh_allowed(tx, class_ids::VBD, r)?;
            }
        }
        for vif in o.get(fields::VM::VIFs).as_set() {
            if let Some(r) = vif.as_ref_str() {
                refresh_allowed(tx, class_ids::VIF, r)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::default_object;

    /// Every input `vm_refusal` reads, varied: VMs that differ in any of them must not share a
    /// remembered set, and a remembered set must equal one worked out afresh.
    #[test]
    fn vms_in_one_state_share_a_set_and_no_other_vm_gets_it() {
        let mut vms = Vec::new();
        for power in [HALTED, PAUSED, RUNNING, SUSPENDED] {
            for bits in 0..32u8 {
                for marks in [
                    &[][..],
                    &["clone"][..],
                    &["hard_shutdown"][..],
                    &["clone", "export"][..],
                ] {
                    let mut vm = default_object(class_ids::VM, "OpaqueRef:vm");
                    vm.set(fields::VM::power_state, Value::Enum(power));
                    let flag = |i: u8| Value::Bool(bits & (1 << i) != 0);
                    vm.set(fields::VM::is_a_template, flag(0));
                    vm.set(fields::VM::is_a_snapshot, flag(1));
                    vm.set(fields::VM::is_default_template, flag(2));
                    vm.set(fields::VM::is_control_domain, flag(3));
                    if bits & 16 != 0 {
                        vm.set(
                            fields::VM::other_config,
                            Value::map(vec![(Value::str("default_template"), Value::str("true"))]),
                        );
                    }
                    let marks = marks
                        .iter()
                        .enumerate()
                        .map(|(i, op)| {
                            (
                                Value::str(format!("task{i}")),
                                Value::Enum(canonical_op(class_ids::VM, op)),
                            )
                        })
                        .collect();
                    vm.set(fields::VM::current_operations, Value::map(marks));
                    vms.push(vm);
                }
            }
        }
        let mut blocked = vms[0].clone();
        blocked.set(
            fields::VM::blocked_operations,
            Value::map(vec![(
                crate::schema::enums::VmOperations::start.value(),
                Value::str("no"),
            )]),
        );
        vms.push(blocked);
        let expected: Vec<Value> = vms.iter().map(vm_allowed_uncached).collect();
        let distinct: std::collections::HashSet<String> = expected.iter().map(|v| format!("{v:?}")).collect();
        assert!(distinct.len() > 20, "the variants should allow different operations");
        // Twice: the first pass fills the memory, the second reads it.
        for _ in 0..2 {
            for (vm, want) in vms.iter().zip(&expected) {
                assert_eq!(
                    &vm_allowed(vm),
                    want,
                    "{:?}",
                    VmState::of(vm).map(|s| (s.power, s.flags, s.in_progress))
                );
            }
        }
        // The blocked operation is left out even though an unblocked VM in the same state
        // allows it.
        let start = Value::Enum(canonical_op(class_ids::VM, "start"));
        assert!(expected[0].as_set().contains(&start));
        assert!(!expected[expected.len() - 1].as_set().contains(&start));
    }
}
