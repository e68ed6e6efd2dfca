//! Lifecycle of VMs and their devices: the power-state rules, the operations the actors carry
//! out against the hypervisor backend, and reconciliation with what the backend reports.
//!
//! The path of one call: the behaviour table's entry (from [`behaviour`]) → [`dispatch`]
//! checks the operation is allowed
//! and marks it in `current_operations` (refusing conflicts with
//! `OTHER_OPERATION_IN_PROGRESS`) → the object's actor runs [`perform`] → the operation's
//! function (`vm_power::start`, …) → the mark is cleared and `allowed_operations` refreshed.

pub mod devices;
pub mod inflight;
pub mod migrate;
pub mod migrate_live;
pub mod migrate_receive;
pub mod migrate_send;
pub mod precopy;
pub mod reconcile;
pub mod rules;
pub mod storage_motion;
pub mod vdi_migrate;
pub mod vm_copy;
pub mod vm_power;

use crate::call::{Call, CallCtx, Entry, Reply};
use crate::error::ApiError;
use crate::hypervisor::BackendError;
use crate::implicit::{self, CreateHooks};
use crate::objects::{new_ref, set_field};
use crate::schema::enums::{VbdOperations, VifOperations, VmOperations, VmPowerState};
use crate::schema::{class_ids, fields, ClassId, MessageId};
use crate::store::Tx;
use crate::value::{Value, NULL_REF};
use crate::Agent;
use std::sync::Arc;

/// An operation an actor performs on its object: the message that asked for it and the
/// `*_operations` value it is checked and marked as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A VM operation.
    Vm {
        /// The message (`VM.start`, `VM.set_memory_limits`, …).
        message: MessageId,
        /// What it marks in `current_operations`.
        marks: VmOperations,
    },
    /// A VBD operation.
    Vbd {
        /// The message.
        message: MessageId,
        /// What it marks.
        marks: VbdOperations,
    },
    /// A VIF operation.
    Vif {
        /// The message.
        message: MessageId,
        /// What it marks.
        marks: VifOperations,
    },
    /// Re-read the object's domain from the backend and commit what changed.
    Reconcile,
}

impl Operation {
    /// The message's name within its class (`start`, `plug`).
    fn message_name(self) -> &'static str {
        match self {
            Operation::Vm { message, .. } | Operation::Vbd { message, .. } | Operation::Vif { message, .. } => {
                message.def().name
            }
            Operation::Reconcile => "reconcile",
        }
    }
}

/// VM messages this module carries out, with the `vm_operations` value each marks.
pub const VM_MESSAGES: &[(&str, VmOperations)] = &[
    ("start", VmOperations::start),
    ("start_on", VmOperations::start_on),
    ("pause", VmOperations::pause),
    ("unpause", VmOperations::unpause),
    ("clean_shutdown", VmOperations::clean_shutdown),
    ("hard_shutdown", VmOperations::hard_shutdown),
    ("shutdown", VmOperations::shutdown),
    ("clean_reboot", VmOperations::clean_reboot),
    ("hard_reboot", VmOperations::hard_reboot),
    ("suspend", VmOperations::suspend),
    ("resume", VmOperations::resume),
    ("resume_on", VmOperations::resume_on),
    ("pool_migrate", VmOperations::pool_migrate),
    ("migrate_send", VmOperations::migrate_send),
    ("power_state_reset", VmOperations::power_state_reset),
    ("clone", VmOperations::clone),
    ("copy", VmOperations::copy),
    ("snapshot", VmOperations::snapshot),
    ("checkpoint", VmOperations::checkpoint),
    ("revert", VmOperations::revert),
    ("provision", VmOperations::provision),
    ("destroy", VmOperations::destroy),
    ("set_memory_limits", VmOperations::changing_memory_limits),
    ("set_memory_static_range", VmOperations::changing_static_range),
    ("set_memory_static_max", VmOperations::changing_static_range),
    ("set_memory_static_min", VmOperations::changing_static_range),
    ("set_memory_dynamic_range", VmOperations::changing_dynamic_range),
    ("set_memory_dynamic_max", VmOperations::changing_dynamic_range),
    ("set_memory_dynamic_min", VmOperations::changing_dynamic_range),
    ("set_memory", VmOperations::changing_memory_limits),
    ("set_memory_target_live", VmOperations::changing_memory_live),
    ("set_VCPUs_max", VmOperations::changing_VCPUs),
    ("set_VCPUs_at_startup", VmOperations::changing_VCPUs),
    ("set_VCPUs_number_live", VmOperations::changing_VCPUs_live),
];

/// VM messages that need no marking: checks and queries.
pub const VM_QUERIES: &[&str] = &[
    "assert_operation_valid",
    "update_allowed_operations",
    "get_allowed_VBD_devices",
    "get_allowed_VIF_devices",
    "assert_can_boot_here",
    "get_possible_hosts",
    "get_boot_record",
];

/// VBD messages carried out here, with the `vbd_operations` value each marks.
pub const VBD_MESSAGES: &[(&str, VbdOperations)] = &[
    ("plug", VbdOperations::plug),
    ("unplug", VbdOperations::unplug),
    ("unplug_force", VbdOperations::unplug_force),
    ("insert", VbdOperations::insert),
    ("eject", VbdOperations::eject),
];
/// VIF messages carried out here, with the `vif_operations` value each marks (a forced
/// unplug is an unplug: `vif_operations` has no value of its own for it).
pub const VIF_MESSAGES: &[(&str, VifOperations)] = &[
    ("plug", VifOperations::plug),
    ("unplug", VifOperations::unplug),
    ("unplug_force", VifOperations::unplug),
];

/// The messages this module carries out: every VM, VBD and VIF operation above (checked,
/// marked and run by the object's actor), the VM queries, and the constructors and
/// destructors of VMs and devices (generic, with their checks).
pub fn behaviour() -> Vec<Entry> {
    let op = |class, message| Entry {
        class,
        message,
        handler: run_operation,
        module: module_path!(),
    };
    let mut v: Vec<Entry> = VM_MESSAGES.iter().map(|(m, _)| op(class_ids::VM, *m)).collect();
    v.extend(VM_QUERIES.iter().map(|m| Entry {
        class: class_ids::VM,
        message: m,
        handler: run_query,
        module: module_path!(),
    }));
    v.extend(VBD_MESSAGES.iter().map(|(m, _)| op(class_ids::VBD, *m)));
    v.extend(VIF_MESSAGES.iter().map(|(m, _)| op(class_ids::VIF, *m)));
    v.extend([
        crate::entry!(class_ids::VM, "create", |agent, _, c| implicit::create(
            &agent, &c, &VM_CREATE
        )
        .await),
        crate::entry!(class_ids::VBD, "create", |agent, _, c| {
            implicit::create(&agent, &c, &devices::DEVICE_CREATE).await
        }),
        crate::entry!(class_ids::VIF, "create", |agent, _, c| {
            implicit::create(&agent, &c, &devices::DEVICE_CREATE).await
        }),
        crate::entry!(class_ids::VBD, "destroy", |agent, _, c| {
            devices::refuse_if_attached(&agent, &c)?;
            implicit::generic(&agent, c).await
        }),
        crate::entry!(class_ids::VIF, "destroy", |agent, _, c| {
            devices::refuse_if_attached(&agent, &c)?;
            implicit::generic(&agent, c).await
        }),
    ]);
    v.extend(migrate_send::behaviour());
    v.extend(migrate_receive::behaviour());
    v.extend(vdi_migrate::behaviour());
    v
}

fn run_operation(agent: Arc<Agent>, ctx: CallCtx, c: Call) -> Reply {
    Box::pin(async move { dispatch(&agent, &ctx, c).await })
}

fn run_query(agent: Arc<Agent>, _ctx: CallCtx, c: Call) -> Reply {
    Box::pin(async move {
        let reference = c.args.first().and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
        vm_power::query(&agent, &reference, c.message.name, &c.args[1..]).await
    })
}

/// A new VM gets its metrics object in the same write, and starts Halted with no domain.
const VM_CREATE: CreateHooks = CreateHooks {
    before: |_, _| Ok(()),
    companions: |tx, obj| {
        use crate::objects::{create, new_uuid};
        let m = new_ref();
        let mut metrics = crate::value::default_object(class_ids::VM_metrics, &m);
        metrics.set(fields::VM_metrics::uuid, Value::str(new_uuid()));
        create(tx, metrics)?;
        obj.set(fields::VM::metrics, Value::reference(m));
        obj.set(fields::VM::power_state, VmPowerState::Halted.value());
        obj.set(fields::VM::domid, Value::Int(-1));
        Ok(())
    },
    after: |_, _, _| Ok(()),
};

/// The operation a lifecycle message asks for.
fn op_of(id: MessageId) -> Option<Operation> {
    fn find<T>(list: &[(&str, T)], name: &str) -> Option<usize> {
        list.iter().position(|(m, _)| *m == name)
    }
    let name = id.def().name;
    if id.class == class_ids::VM {
        find(VM_MESSAGES, name).map(|i| Operation::Vm {
            message: id,
            marks: VM_MESSAGES[i].1,
        })
    } else if id.class == class_ids::VBD {
        find(VBD_MESSAGES, name).map(|i| Operation::Vbd {
            message: id,
            marks: VBD_MESSAGES[i].1,
        })
    } else if id.class == class_ids::VIF {
        find(VIF_MESSAGES, name).map(|i| Operation::Vif {
            message: id,
            marks: VIF_MESSAGES[i].1,
        })
    } else {
        None
    }
}

/// Runs a lifecycle message: check, mark, hand to the actor, unmark.
pub async fn dispatch(agent: &Arc<Agent>, ctx: &CallCtx, c: Call) -> Result<Value, ApiError> {
    let class = c.class;
    let message = c.message.name;
    let reference = c.args.first().and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
    let Some(op) = op_of(c.id) else {
        return Err(ApiError::not_implemented(&format!("{}.{message}", class.name())));
    };
    // For `revert` the object that changes is the snapshot's VM; the snapshot is the ref.
    let op_id = ctx.task.clone().unwrap_or_else(new_ref);
    // In a pool this host notes the marks it makes: if it is killed, its next start clears them
    // (`reconcile::at_start`); the database does not say which host made a mark.
    let pooled = agent.store.is_pooled();
    if pooled {
        inflight::note(&agent.state_dir, class, &reference, &op_id);
    }
    if let Err(e) = begin(agent, class, &reference, op, &op_id).await {
        // A mark refused by the store, not by the rules (a pool without etcd quorum), may
        // still be committed when the quorum is back, with nobody left to clear it.
        if pooled && matches!(e, ApiError::InternalError { .. }) {
            clear_late_mark(agent, class, &reference, &op_id);
        } else if pooled {
            inflight::forget(&agent.state_dir, &op_id);
        }
        return Err(e);
    }
    if let Some(host) = crate::pool::forward::resident_elsewhere(agent, &c) {
        end(agent, class, &reference, &op_id).await;
        return Err(ApiError::internal(format!(
            "{}.{message} was not run: the VM is resident on host {host} now; call again",
            class.name()
        )));
    }
    let result = if reads_source_only(op) {
        // Nothing that changes the source can start while this one is marked: the rules
        // let only other copies (and, on a running source, a forced stop, which
        // the copy does not depend on) run alongside. Going through the actor would make
        // clones of one template wait for each other.
        perform(agent, class, &reference, op, c.args[1..].to_vec()).await
    } else {
        agent
            .actors
            .perform(agent, class, &reference, op, c.args[1..].to_vec())
            .await
    };
    end(agent, class, &reference, &op_id).await;
    result
}

/// Operations that only read their object (its record and its disks) to make a new VM:
/// they run outside the object's actor, concurrently with each other.
fn reads_source_only(op: Operation) -> bool {
    matches!(
        op,
        Operation::Vm {
            marks: VmOperations::clone | VmOperations::copy | VmOperations::snapshot,
            ..
        }
    )
}

/// The `*_operations` value an operation is checked and marked as.
fn op_str(op: Operation) -> &'static str {
    match op {
        Operation::Vm { marks, .. } => marks.name(),
        Operation::Vbd { marks, .. } => marks.name(),
        Operation::Vif { marks, .. } => marks.name(),
        Operation::Reconcile => "reconcile",
    }
}

/// Checks an operation against the object's state and marks it in `current_operations`.
async fn begin(
    agent: &Arc<Agent>,
    class: ClassId,
    reference: &str,
    op: Operation,
    op_id: &str,
) -> Result<(), ApiError> {
    let name = op_str(op);
    // The mark lives in memory only: no operation survives the process, and start-up
    // clears marks that a durable write of the object happened to carry to disk.
    agent
        .store
        .write_volatile(|tx| {
            let obj = tx.must_get(class, reference)?;
            rules::check(tx, &obj, name)?;
            let f = class
                .field_by_name("current_operations")
                .ok_or_else(|| ApiError::internal("no current_operations"))?;
            let mut cur = obj.get(f).as_map().to_vec();
            cur.push((Value::str(op_id), Value::Enum(rules::canonical_op(class, name))));
            set_field(tx, class, reference, f, Value::map(cur))?;
            rules::refresh_allowed(tx, class, reference)
        })
        .await
}

/// Clears an operation's mark (the object may be gone). In a pool the database may be out of
/// reach for a while (no etcd quorum): the clearing is then tried again in the background,
/// or the object would stay marked busy for good.
async fn end(agent: &Arc<Agent>, class: ClassId, reference: &str, op_id: &str) {
    let Err(e) = clear_mark(agent, class, reference, op_id).await else {
        return;
    };
    if !agent.store.is_pooled() {
        tracing::error!(class = class.name(), reference, error = %e, "could not clear an operation");
        return;
    }
    tracing::warn!(class = class.name(), reference, error = %e, "could not clear an operation yet; trying again");
    let (agent, reference, op_id) = (agent.clone(), reference.to_owned(), op_id.to_owned());
    actix::spawn(async move {
        // Ten minutes, a try every two seconds (each may wait for the store's commit timeout).
        for _ in 0..300 {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            if clear_mark(&agent, class, &reference, &op_id).await.is_ok() {
                return;
            }
        }
        tracing::error!(class = class.name(), %reference, "could not clear an operation");
    });
}

/// Watches for a mark whose write was refused but may commit later (the request waited in an
/// etcd member that was stopped): once the store answers again, the mark is removed if it
/// appeared, or the watch ends after it has stayed absent for ten seconds of answers.
fn clear_late_mark(agent: &Arc<Agent>, class: ClassId, reference: &str, op_id: &str) {
    let (agent, reference, op_id) = (agent.clone(), reference.to_owned(), op_id.to_owned());
    actix::spawn(async move {
        let mut absent = 0;
        for _ in 0..300 {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let Some(f) = class.field_by_name("current_operations") else {
                return;
            };
            let marked = agent.store.get(class, &reference).is_some_and(|o| {
                o.get(f)
                    .as_map()
                    .iter()
                    .any(|(k, _)| k.as_str() == Some(op_id.as_str()))
            });
            if !marked {
                // Absent in this host's view, which follows etcd: counted only while the
                // store answers (a committed write would have reached the view by then).
                if agent.store.caught_up().await.is_ok() {
                    absent += 1;
                    if absent >= 5 {
                        inflight::forget(&agent.state_dir, &op_id);
                        return;
                    }
                }
                continue;
            }
            if clear_mark(&agent, class, &reference, &op_id).await.is_ok() {
                tracing::info!(class = class.name(), %reference, "cleared the mark of a call the pool database first refused");
                return;
            }
        }
    });
}

/// Whether the database has `vm` resident on a host other than this one (its domain, if any,
/// is that host's).
pub(crate) fn resident_on_other_host(agent: &Agent, vm: &crate::value::Object) -> bool {
    vm.get(fields::VM::resident_on)
        .as_ref_str()
        .is_some_and(|h| h != agent.host && h != NULL_REF)
}

/// Removes an operation's mark and, in a pool, this host's note of it (`inflight.rs`).
pub(crate) async fn clear_mark(
    agent: &Arc<Agent>,
    class: ClassId,
    reference: &str,
    op_id: &str,
) -> Result<(), ApiError> {
    agent
        .store
        .write_volatile(|tx| {
            let Some(obj) = tx.get(class, reference) else {
                return Ok(());
            };
            let Some(f) = class.field_by_name("current_operations") else {
                return Ok(());
            };
            let mut cur = obj.get(f).as_map().to_vec();
            cur.retain(|(k, _)| k.as_str() != Some(op_id));
            set_field(tx, class, reference, f, Value::map(cur))?;
            rules::refresh_allowed(tx, class, reference)
        })
        .await?;
    if agent.store.is_pooled() {
        inflight::forget(&agent.state_dir, op_id);
    }
    Ok(())
}

/// What an actor runs for an operation on its object.
pub async fn perform(
    agent: &Arc<Agent>,
    class: ClassId,
    reference: &str,
    op: Operation,
    args: Vec<Value>,
) -> Result<Value, ApiError> {
    match op {
        Operation::Vm { .. } => {
            let name = op.message_name();
            // The state may have changed while this waited in the mailbox (a hard_shutdown
            // may run alongside a clean one): check the power state again.
            if let Some(vm) = agent.store.get(class_ids::VM, reference) {
                let state = vm
                    .get(fields::VM::power_state)
                    .as_str()
                    .unwrap_or(VmPowerState::Halted.name())
                    .to_owned();
                let allowed = rules::allowed_power_states(&vm, op_str(op));
                if !allowed.contains(&state.as_str()) {
                    return Err(ApiError::VmBadPowerState {
                        vm: reference.to_owned(),
                        expected: allowed
                            .iter()
                            .map(|s| s.to_ascii_lowercase())
                            .collect::<Vec<_>>()
                            .join(", "),
                        actual: state.to_ascii_lowercase(),
                    });
                }
            }
            vm_power::perform(agent, reference, name, &args).await
        }
        Operation::Vbd { .. } => devices::vbd(agent, reference, op.message_name(), &args).await,
        Operation::Vif { .. } => devices::vif(agent, reference, op.message_name(), &args).await,
        Operation::Reconcile if class == class_ids::VM => reconcile::vm(agent, reference).await.map(|_| Value::None),
        Operation::Reconcile => Ok(Value::None),
    }
}

/// Runs backend calls: on the blocking pool when the backend says its calls may keep a thread
/// waiting (real Xen; a simulator with latency), else inline on the caller's worker, which
/// saves two thread hand-offs per call.
pub async fn blocking<T: Send + 'static>(
    agent: &Agent,
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, ApiError> {
    if !agent.hypervisor.calls_may_block() {
        return f().map_err(ApiError::from);
    }
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format!("a backend call did not finish: {e}"))),
    }
}

/// Runs backend calls for an operation on `vm`: their failures name the VM as the API's
/// codes do (`BOOTLOADER_FAILED [vm, msg]`, `VM_BAD_POWER_STATE [vm, …]`).
pub async fn blocking_for<T: Send + 'static>(
    agent: &Agent,
    vm: &str,
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking(agent, move || Ok(f()))
        .await?
        .map_err(|e| ApiError::from_backend(e, vm))
}

/// Refreshes the host's free-memory figure from the backend.
pub fn note_host_memory(tx: &mut Tx, agent: &Agent, free: u64) -> Result<(), ApiError> {
    let Some(host) = tx.get(class_ids::host, &agent.host) else {
        return Ok(());
    };
    let Some(m) = host.get(fields::host::metrics).as_ref_str().map(str::to_owned) else {
        return Ok(());
    };
    if tx.get(class_ids::host_metrics, &m).is_some() {
        set_field(
            tx,
            class_ids::host_metrics,
            &m,
            fields::host_metrics::memory_free,
            Value::Int(free as i64),
        )?;
        set_field(
            tx,
            class_ids::host_metrics,
            &m,
            fields::host_metrics::last_updated,
            Value::DateTime(crate::value::now()),
        )?;
    }
    Ok(())
}
