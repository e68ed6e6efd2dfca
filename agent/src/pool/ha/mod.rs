//! High availability (issue 20): `pool.enable_ha`/`disable_ha`, the failover planning
//! messages, the VM's restart priority and order, and what runs while HA is on
//! ([`runtime`]: restarting protected VMs of failed hosts, fencing, electing a new master).
//!
//! Liveness is etcd's (`pool/liveness.rs`): a host is live while its lease is held; there is
//! no heartbeat or state file of the project's own. `enable_ha` still makes the state-file and
//! metadata VDIs the reference makes on the heartbeat SR (records and files clients list; kept
//! after `disable_ha` and found again by the next `enable_ha`, as the reference's are), but
//! nothing is written to them: etcd holds the pool database and its leases the liveness.
//!
//! A VM is protected when its `ha_restart_priority` is `restart` and `ha_always_run` is true;
//! `ha_always_run` is set when such a VM starts and cleared when it is stopped on purpose (by
//! a call or by its guest), so a VM halted because its host failed stays protected and is
//! restarted. `best-effort` VMs of a failed host are restarted after the protected ones, where
//! room is left.

pub mod agility;
pub mod plan;
pub mod runtime;

use crate::call::{Call, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::lifecycle::vm_power::vm_of;
use crate::objects::{set_field, set_fields};
use crate::schema::{
    class_ids,
    enums::{Cls, VdiType},
    fields,
};
use crate::value::{default_object, Object, Value};
use crate::Agent;
use plan::{Guest, Host, Outcome};
use std::sync::Arc;

/// `ha_restart_priority` of a protected VM.
pub const RESTART: &str = "restart";
/// `ha_restart_priority` of a VM restarted where room is left.
pub const BEST_EFFORT: &str = "best-effort";
/// Size of the state-file VDI made by `enable_ha`.
const STATEFILE_SIZE: i64 = 4 << 20;
/// Size of the metadata VDI made by `enable_ha`.
const METADATA_SIZE: i64 = 256 << 20;
/// `pool.ha_cluster_stack` while HA is on: the hosts' liveness is etcd's leases.
const CLUSTER_STACK: &str = "etcd";

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::pool, "enable_ha", |agent, _ctx, c| enable(&agent, &c).await),
        entry!(class_ids::pool, "disable_ha", |agent, _ctx, _c| disable(&agent).await),
        entry!(class_ids::pool, "set_ha_host_failures_to_tolerate", |agent, _ctx, c| {
            set_failures_to_tolerate(&agent, c.int_arg(1)).await
        }),
        entry!(
            class_ids::pool,
            "ha_compute_max_host_failures_to_tolerate",
            |agent, _ctx, _c| {
                let n = max_failures(&agent, &protected(&agent));
                if enabled(&agent) {
                    record_status(&agent, Some(n)).await?;
                }
                Ok(Value::Int(n as i64))
            }
        ),
        entry!(
            class_ids::pool,
            "ha_compute_hypothetical_max_host_failures_to_tolerate",
            |agent, _ctx, c| {
                let mut vms = Vec::new();
                for (vm, priority) in c.arg(0).as_map() {
                    let priority = priority.as_str().unwrap_or("");
                    valid_priority(priority)?;
                    let vm = vm.as_ref_str().unwrap_or("");
                    let rec = vm_of(&agent, vm)?;
                    if priority == RESTART {
                        vms.push(rec);
                    }
                }
                Ok(Value::Int(max_failures(&agent, &vms) as i64))
            }
        ),
        entry!(class_ids::pool, "ha_failover_plan_exists", |agent, _ctx, c| {
            let n = usize::try_from(c.int_arg(0)).unwrap_or(0);
            let (hosts, guests) = inputs(&agent, &protected(&agent));
            Ok(Value::Bool(plan::for_failures(&hosts, &guests, n) == Outcome::All))
        }),
        entry!(class_ids::pool, "ha_compute_vm_failover_plan", |agent, _ctx, c| {
            failover_plan(&agent, &c)
        }),
        entry!(class_ids::pool, "ha_prevent_restarts_for", |agent, _ctx, c| {
            let _ = &agent;
            runtime::prevent_restarts_for(c.int_arg(0));
            Ok(Value::None)
        }),
        entry!(class_ids::VM, "set_ha_restart_priority", |agent, _ctx, c| {
            let vm = c.ref_arg(0)?.to_owned();
            set_restart_priority(&agent, &vm, c.str_arg(1)).await
        }),
        entry!(class_ids::VM, "set_ha_always_run", |agent, _ctx, c| {
            // Deprecated: true asks for `restart`, false for no protection.
            let vm = c.ref_arg(0)?.to_owned();
            let priority = if c.bool_arg(1) { RESTART } else { "" };
            set_restart_priority(&agent, &vm, priority).await
        }),
        entry!(class_ids::VM, "set_order", |agent, _ctx, c| {
            let vm = c.ref_arg(0)?.to_owned();
            let value = c.int_arg(1);
            if value < 0 {
                return Err(ApiError::invalid_value("order must be non-negative", value));
            }
            agent
                .store
                .write(|tx| set_field(tx, class_ids::VM, &vm, fields::VM::order, Value::Int(value)))
                .await?;
            Ok(Value::None)
        }),
        entry!(class_ids::VM, "assert_agile", |agent, _ctx, c| {
            let rec = vm_of(&agent, c.ref_arg(0)?)?;
            agility::assert_agile(&agent, &rec)?;
            Ok(Value::None)
        }),
    ]
}

fn pool(agent: &Agent) -> Option<Arc<Object>> {
    agent.store.get(class_ids::pool, &agent.pool_ref())
}

/// Whether the pool runs HA.
pub fn enabled(agent: &Agent) -> bool {
    pool(agent).is_some_and(|p| p.get(fields::pool::ha_enabled) == &Value::Bool(true))
}

/// HA's timeout when neither the pool's `ha_configuration:timeout` nor its
/// `other_config:default_ha_timeout` sets one, seconds (the reference's default).
pub const DEFAULT_TIMEOUT: i64 = 60;
/// The shortest HA timeout the reference accepts, seconds.
pub const MIN_TIMEOUT: i64 = 10;

/// The HA timeout `configuration` (`pool.enable_ha`'s) and the pool's `other_config` give, in
/// the reference's order; a value that is not a number of seconds, or under [`MIN_TIMEOUT`],
/// is refused as the reference refuses it (`INTERNAL_ERROR`).
fn timeout_of(configuration: &Value, other_config: &Value) -> Result<i64, ApiError> {
    let given = configuration
        .map_get("timeout")
        .or_else(|| other_config.map_get("default_ha_timeout"))
        .and_then(Value::as_str);
    let Some(text) = given else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let t: i64 = text
        .trim()
        .parse()
        .map_err(|_| ApiError::internal(format!("HA timeout {text:?} is not a number of seconds")))?;
    if t < MIN_TIMEOUT {
        return Err(ApiError::internal(format!(
            "constraint violation: HA timeout {t} s, not >= {MIN_TIMEOUT}"
        )));
    }
    Ok(t)
}

/// The pool's HA timeout, seconds, while HA is on: how long a host's lease lives, so how long
/// a host that stops renewing it has before it fences itself and the others count it dead
/// (`pool/ha/runtime.rs`). `None` while HA is off.
pub fn timeout(agent: &Agent) -> Option<i64> {
    let p = pool(agent).filter(|p| p.get(fields::pool::ha_enabled) == &Value::Bool(true))?;
    Some(
        timeout_of(p.get(fields::pool::ha_configuration), p.get(fields::pool::other_config)).unwrap_or(DEFAULT_TIMEOUT),
    )
}

fn valid_priority(p: &str) -> Result<(), ApiError> {
    if [RESTART, BEST_EFFORT, ""].contains(&p) {
        Ok(())
    } else {
        Err(ApiError::invalid_value("ha_restart_priority", p))
    }
}

/// Whether the VM is protected: restart priority `restart` and meant to be running.
pub fn is_protected(vm: &Object) -> bool {
    vm.get(fields::VM::ha_restart_priority).as_str() == Some(RESTART)
        && vm.get(fields::VM::ha_always_run) == &Value::Bool(true)
}

/// Every protected VM of the pool (templates and snapshots aside).
pub fn protected(agent: &Agent) -> Vec<Arc<Object>> {
    agent
        .store
        .all(class_ids::VM)
        .into_iter()
        .filter(|v| {
            is_protected(v)
                && v.get(fields::VM::is_a_template) != &Value::Bool(true)
                && v.get(fields::VM::is_a_snapshot) != &Value::Bool(true)
                && v.get(fields::VM::is_control_domain) != &Value::Bool(true)
        })
        .collect()
}

/// The planner's view of the live hosts and of `vms` (a VM resident on a host that is not
/// live counts as not running: it must be placed).
pub fn inputs(agent: &Agent, vms: &[Arc<Object>]) -> (Vec<Host>, Vec<Guest>) {
    let mut hosts: Vec<Host> = agent
        .store
        .all(class_ids::host)
        .iter()
        .filter(|h| super::placement::is_live(agent, &h.reference))
        .map(|h| Host {
            id: h.reference.clone(),
            free: super::placement::memory_free(agent, &h.reference),
            enabled: super::maintenance::is_enabled(agent, &h.reference),
        })
        .collect();
    hosts.sort_by(|a, b| a.id.cmp(&b.id));
    let guests = vms
        .iter()
        .map(|vm| Guest {
            id: vm.reference.clone(),
            memory: super::placement::memory_needed(vm),
            on: vm
                .get(fields::VM::resident_on)
                .as_ref_str()
                .filter(|h| hosts.iter().any(|x| x.id == *h))
                .map(str::to_owned),
            agile: agility::assert_agile(agent, vm).is_ok(),
        })
        .collect();
    (hosts, guests)
}

fn max_failures(agent: &Agent, vms: &[Arc<Object>]) -> usize {
    let (hosts, guests) = inputs(agent, vms);
    plan::max_failures(&hosts, &guests)
}

/// `pool.ha_compute_vm_failover_plan(failed_hosts, failed_vms)`: for each VM, the host it
/// would restart on (`host`) or why it could not (`error_code`).
fn failover_plan(agent: &Agent, c: &Call) -> Result<Value, ApiError> {
    let failed_hosts: Vec<String> = c
        .arg(0)
        .as_set()
        .iter()
        .filter_map(|h| h.as_ref_str().map(str::to_owned))
        .collect();
    let mut vms = Vec::new();
    for v in c.arg(1).as_set() {
        vms.push(vm_of(agent, v.as_ref_str().unwrap_or(""))?);
    }
    let (hosts, _) = inputs(agent, &[]);
    let survivors: Vec<&Host> = hosts.iter().filter(|h| !failed_hosts.contains(&h.id)).collect();
    let mut out = Vec::new();
    let mut agile = Vec::new();
    for vm in &vms {
        match agility::assert_agile(agent, vm) {
            Ok(()) => agile.push(Guest {
                id: vm.reference.clone(),
                memory: super::placement::memory_needed(vm),
                on: None,
                agile: true,
            }),
            Err(e) => out.push((vm.reference.clone(), ("error_code", e.code().to_owned()))),
        }
    }
    let refs: Vec<&Guest> = agile.iter().collect();
    for (g, host) in plan::pack(&survivors, &refs) {
        let entry = match host {
            Some(h) => ("host", h),
            None => ("error_code", "HOST_NOT_ENOUGH_FREE_MEMORY".to_owned()),
        };
        out.push((g.id.clone(), entry));
    }
    Ok(Value::map(
        out.into_iter()
            .map(|(vm, (k, v))| (Value::reference(vm), Value::string_map([(k, v)])))
            .collect(),
    ))
}

/// Writes the pool's planning fields: `ha_plan_exists_for` (the failures to tolerate, or
/// fewer if that many have no plan) and `ha_overcommitted`. `max` is the planner's answer
/// when already computed.
pub async fn record_status(agent: &Agent, max: Option<usize>) -> Result<(), ApiError> {
    let Some(p) = pool(agent) else {
        return Ok(());
    };
    let to_tolerate = p
        .get(fields::pool::ha_host_failures_to_tolerate)
        .as_int()
        .unwrap_or(0)
        .max(0);
    let max = match max {
        Some(m) => m,
        None => max_failures(agent, &protected(agent)),
    } as i64;
    let plan_for = to_tolerate.min(max);
    let overcommitted = max < to_tolerate;
    let changed = p.get(fields::pool::ha_plan_exists_for).as_int() != Some(plan_for)
        || p.get(fields::pool::ha_overcommitted) != &Value::Bool(overcommitted);
    if !changed {
        return Ok(());
    }
    let pool_uuid = p.uuid().unwrap_or("").to_owned();
    let name = p.get(fields::pool::name_label).as_str().unwrap_or("").to_owned();
    if overcommitted && p.get(fields::pool::ha_overcommitted) != &Value::Bool(true) {
        tracing::warn!(max, to_tolerate, "HA_POOL_OVERCOMMITTED");
        let body = format!(
            "The failover tolerance for pool '{name}' has dropped and the initially specified number of host failures to tolerate can no longer be guaranteed"
        );
        message(agent, "HA_POOL_OVERCOMMITTED", 3, Cls::Pool, &pool_uuid, &body).await;
    }
    let was = p.get(fields::pool::ha_plan_exists_for).as_int().unwrap_or(0);
    if max < was {
        message(
            agent,
            "HA_POOL_DROP_IN_PLAN_EXISTS_FOR",
            3,
            Cls::Pool,
            &pool_uuid,
            &max.to_string(),
        )
        .await;
    }
    let r = p.reference.clone();
    agent
        .store
        .write(|tx| {
            set_fields(
                tx,
                class_ids::pool,
                &r,
                &[
                    (fields::pool::ha_plan_exists_for, Value::Int(plan_for)),
                    (fields::pool::ha_overcommitted, Value::Bool(overcommitted)),
                ],
            )
        })
        .await
}

/// Creates one of the reference's HA messages (`message` objects clients list and Xen
/// Orchestra shows); a failure is logged, not raised: the HA work goes on.
pub async fn message(agent: &Agent, name: &str, priority: i64, cls: Cls, obj_uuid: &str, body: &str) {
    if let Err(e) = crate::metrics::messages::create(agent, name, priority, cls, obj_uuid, body).await {
        tracing::warn!(name, error = %e, "HA: cannot create the message");
    }
}

/// `HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN` when HA is on, overcommitting is not allowed, a
/// plan exists for the planned number of failures now and would not with `vms` protected and
/// `n` failures to plan for.
fn assert_plan_kept(agent: &Agent, vms: &[Arc<Object>], n: Option<usize>) -> Result<(), ApiError> {
    assert_change_keeps_plan(agent, vms, n, None)
}

/// `host.disable(host)` with HA on: `HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN` when the planned
/// failures could no longer be survived with the host taking no VMs.
pub fn assert_host_disable_keeps_plan(agent: &Agent, host: &str) -> Result<(), ApiError> {
    assert_change_keeps_plan(agent, &[], None, Some(host))
}

fn assert_change_keeps_plan(
    agent: &Agent,
    vms: &[Arc<Object>],
    n: Option<usize>,
    disabled: Option<&str>,
) -> Result<(), ApiError> {
    let Some(p) = pool(agent) else {
        return Ok(());
    };
    if p.get(fields::pool::ha_enabled) != &Value::Bool(true)
        || p.get(fields::pool::ha_allow_overcommit) == &Value::Bool(true)
    {
        return Ok(());
    }
    let planned = usize::try_from(p.get(fields::pool::ha_plan_exists_for).as_int().unwrap_or(0)).unwrap_or(0);
    let now = protected(agent);
    let (hosts, guests) = inputs(agent, &now);
    if plan::for_failures(&hosts, &guests, planned) != Outcome::All {
        return Ok(());
    }
    let mut after = now;
    after.extend(vms.iter().cloned());
    let (mut hosts, guests) = inputs(agent, &after);
    for h in hosts.iter_mut().filter(|h| Some(h.id.as_str()) == disabled) {
        h.enabled = false;
    }
    if plan::for_failures(&hosts, &guests, n.unwrap_or(planned)) == Outcome::All {
        Ok(())
    } else {
        Err(ApiError::HaOperationWouldBreakFailoverPlan {})
    }
}

async fn set_failures_to_tolerate(agent: &Agent, value: i64) -> Result<Value, ApiError> {
    if value < 0 {
        return Err(ApiError::invalid_value("ha_host_failures_to_tolerate", value));
    }
    let Some(p) = pool(agent) else {
        return Ok(Value::None);
    };
    if p.get(fields::pool::ha_plan_exists_for).as_int().unwrap_or(0) > 0 {
        assert_plan_kept(agent, &[], Some(usize::try_from(value).unwrap_or(usize::MAX)))?;
    }
    let r = p.reference.clone();
    agent
        .store
        .write(|tx| {
            set_field(
                tx,
                class_ids::pool,
                &r,
                fields::pool::ha_host_failures_to_tolerate,
                Value::Int(value),
            )
        })
        .await?;
    if enabled(agent) {
        record_status(agent, None).await?;
    }
    Ok(Value::None)
}

async fn set_restart_priority(agent: &Agent, vm: &str, value: &str) -> Result<Value, ApiError> {
    valid_priority(value)?;
    let rec = vm_of(agent, vm)?;
    let current = rec
        .get(fields::VM::ha_restart_priority)
        .as_str()
        .unwrap_or("")
        .to_owned();
    let halted = rec.get(fields::VM::power_state) == &crate::schema::enums::VmPowerState::Halted.value();
    if current != RESTART && value == RESTART && !halted {
        let mut as_protected = (*rec).clone();
        as_protected.set(fields::VM::ha_always_run, Value::Bool(true));
        as_protected.set(fields::VM::ha_restart_priority, Value::str(RESTART));
        assert_plan_kept(agent, &[Arc::new(as_protected)], None)?;
    }
    if current != value {
        let running = rec.get(fields::VM::power_state) == &crate::schema::enums::VmPowerState::Running.value();
        agent
            .store
            .write(|tx| {
                set_field(
                    tx,
                    class_ids::VM,
                    vm,
                    fields::VM::ha_restart_priority,
                    Value::str(value),
                )?;
                if running {
                    set_field(
                        tx,
                        class_ids::VM,
                        vm,
                        fields::VM::ha_always_run,
                        Value::Bool(value == RESTART),
                    )?;
                }
                Ok(())
            })
            .await?;
    }
    if enabled(agent) {
        record_status(agent, None).await?;
    }
    Ok(Value::None)
}

/// The SR `enable_ha` puts its VDIs on: the first of `heartbeat_srs`, or, with none given, the
/// first SR (by name) every enabled host sees. It must be shared and reached by every host.
fn heartbeat_sr(agent: &Agent, given: &[Value]) -> Result<String, ApiError> {
    let usable = |sr: &str| agility::sr_properly_shared(agent, sr);
    if let Some(first) = given.first() {
        let sr = first.as_ref_str().unwrap_or("");
        if agent.store.get(class_ids::SR, sr).is_none() {
            return Err(ApiError::handle_invalid("SR", sr));
        }
        if !usable(sr) {
            return Err(ApiError::CannotCreateStateFile {});
        }
        return Ok(sr.to_owned());
    }
    let mut srs: Vec<Arc<Object>> = agent
        .store
        .all(class_ids::SR)
        .into_iter()
        .filter(|s| usable(&s.reference))
        .collect();
    srs.sort_by(|a, b| {
        a.get(fields::SR::name_label)
            .as_str()
            .cmp(&b.get(fields::SR::name_label).as_str())
            .then_with(|| a.reference.cmp(&b.reference))
    });
    srs.first()
        .map(|s| s.reference.clone())
        .ok_or(ApiError::CannotCreateStateFile {})
}

/// The SR's VDI of `kind` (the one a former `enable_ha` made), or a new one.
async fn find_or_make_vdi(
    agent: &Arc<Agent>,
    sr: &str,
    name: &str,
    kind: VdiType,
    size: i64,
) -> Result<String, ApiError> {
    let found = agent
        .store
        .all(class_ids::VDI)
        .into_iter()
        .find(|v| v.get(fields::VDI::SR).as_ref_str() == Some(sr) && v.get(fields::VDI::r#type) == &kind.value());
    if let Some(v) = found {
        return Ok(v.reference.clone());
    }
    let mut rec = default_object(class_ids::VDI, "");
    rec.set(fields::VDI::SR, Value::reference(sr));
    rec.set(fields::VDI::name_label, Value::str(name));
    rec.set(fields::VDI::r#type, kind.value());
    rec.set(fields::VDI::virtual_size, Value::Int(size));
    crate::storage::vdi::create_vdi(agent, &rec).await
}

/// `pool.enable_ha(heartbeat_srs, configuration)`.
async fn enable(agent: &Arc<Agent>, c: &Call) -> Result<Value, ApiError> {
    let p = pool(agent).ok_or_else(|| ApiError::internal("no pool record"))?;
    if p.get(fields::pool::ha_enabled) == &Value::Bool(true) {
        return Err(ApiError::HaIsEnabled {});
    }
    if !agent.store.is_pooled() {
        // Liveness comes from the pool database's leases: a host alone has none.
        return Err(ApiError::HaTooFewHosts {});
    }
    let hosts = agent.store.all(class_ids::host);
    if let Some(h) = hosts.iter().find(|h| !super::placement::is_live(agent, &h.reference)) {
        return Err(ApiError::HostOffline {
            host: h.reference.clone(),
        });
    }
    let sr = heartbeat_sr(agent, c.arg(0).as_set())?;
    let timeout = timeout_of(&c.arg(1), p.get(fields::pool::other_config))?;
    tracing::info!(timeout, "HA: enabling, hosts' leases live this long");
    // Made (or found) as the reference makes them; nothing is written to them here.
    let statefile = find_or_make_vdi(agent, &sr, "Statefile for HA", VdiType::ha_statefile, STATEFILE_SIZE).await?;
    find_or_make_vdi(agent, &sr, "Metadata for HA", VdiType::redo_log, METADATA_SIZE).await?;
    let configuration = c.arg(1);
    let host_uuids: Vec<(String, String)> = hosts
        .iter()
        .map(|h| (h.reference.clone(), h.uuid().unwrap_or("").to_owned()))
        .collect();
    let pool_ref = p.reference.clone();
    let written = agent
        .store
        .write(|tx| {
            use fields::pool as f;
            set_fields(
                tx,
                class_ids::pool,
                &pool_ref,
                &[
                    (f::ha_statefiles, Value::set(vec![Value::str(statefile.as_str())])),
                    (f::ha_configuration, configuration.clone()),
                    (f::ha_cluster_stack, Value::str(CLUSTER_STACK)),
                    (f::ha_plan_exists_for, Value::Int(0)),
                    (f::ha_overcommitted, Value::Bool(false)),
                    (f::ha_enabled, Value::Bool(true)),
                ],
            )?;
            for (h, _) in &host_uuids {
                let peers = host_uuids
                    .iter()
                    .filter(|(o, _)| o != h)
                    .map(|(_, u)| Value::str(u.as_str()))
                    .collect();
                set_fields(
                    tx,
                    class_ids::host,
                    h,
                    &[
                        (
                            fields::host::ha_statefiles,
                            Value::set(vec![Value::str(statefile.as_str())]),
                        ),
                        (fields::host::ha_network_peers, Value::set(peers)),
                    ],
                )?;
            }
            Ok(())
        })
        .await;
    written?;
    record_status(agent, None).await?;
    tracing::info!(sr, "HA enabled: hosts' liveness from their etcd leases");
    Ok(Value::None)
}

/// `pool.disable_ha()`.
async fn disable(agent: &Arc<Agent>) -> Result<Value, ApiError> {
    let p = pool(agent).ok_or_else(|| ApiError::internal("no pool record"))?;
    if p.get(fields::pool::ha_enabled) != &Value::Bool(true) {
        return Err(ApiError::HaNotEnabled {});
    }
    let hosts: Vec<String> = agent
        .store
        .all(class_ids::host)
        .iter()
        .map(|h| h.reference.clone())
        .collect();
    let pool_ref = p.reference.clone();
    agent
        .store
        .write(|tx| {
            use fields::pool as f;
            set_fields(
                tx,
                class_ids::pool,
                &pool_ref,
                &[
                    (f::ha_enabled, Value::Bool(false)),
                    (f::ha_statefiles, Value::set(Vec::new())),
                    (f::ha_plan_exists_for, Value::Int(0)),
                    (f::ha_overcommitted, Value::Bool(false)),
                    (f::ha_cluster_stack, Value::str("")),
                ],
            )?;
            for h in &hosts {
                let empty = Value::set(Vec::new());
                set_fields(
                    tx,
                    class_ids::host,
                    h,
                    &[
                        (fields::host::ha_statefiles, empty.clone()),
                        (fields::host::ha_network_peers, empty),
                    ],
                )?;
            }
            Ok(())
        })
        .await?;
    tracing::info!("HA disabled");
    Ok(Value::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Value {
        Value::string_map(pairs.iter().copied())
    }

    #[test]
    fn the_timeout_comes_from_the_configuration_then_other_config_then_sixty_seconds() {
        let none = map(&[]);
        assert_eq!(timeout_of(&none, &none), Ok(DEFAULT_TIMEOUT));
        assert_eq!(timeout_of(&map(&[("timeout", "30")]), &none), Ok(30));
        assert_eq!(timeout_of(&none, &map(&[("default_ha_timeout", "45")])), Ok(45));
        assert_eq!(
            timeout_of(&map(&[("timeout", "12")]), &map(&[("default_ha_timeout", "45")])),
            Ok(12)
        );
        assert_eq!(timeout_of(&map(&[("timeout", "10")]), &none), Ok(MIN_TIMEOUT));
        for bad in ["9", "0", "-5", "soon", ""] {
            let e = timeout_of(&map(&[("timeout", bad)]), &none).unwrap_err();
            assert!(matches!(e, ApiError::InternalError { .. }), "{bad:?}: {e:?}");
        }
    }
}
