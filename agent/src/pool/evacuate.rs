//! Evacuating a host: `host.evacuate`, `host.assert_can_evacuate`,
//! `host.get_vms_which_prevent_evacuation`. All three run on the host they name (`host.*`
//! forwarding) and start from one plan, as the reference's do:
//!
//! - the targets are the other enabled hosts; with none, every VM resident on the host (the
//!   control domain aside) gets `NO_HOSTS_AVAILABLE [vm]`;
//! - a VM whose state forbids `pool_migrate` gets that refusal (`VM_BAD_POWER_STATE`,
//!   `OTHER_OPERATION_IN_PROGRESS`); with HA on, a VM HA does not protect (restart priority
//!   `restart` and `ha_always_run`) gets `HOST_EVACUATE_VM_NOT_HA_PROTECTED [vm]`: it is to be
//!   stopped or suspended first, so that an evacuated host leaves the pool as its failure
//!   would; a VM that could not start on one of the targets (`placement::check` without the
//!   memory test: `HOST_OFFLINE`, `VM_REQUIRES_SR`, …) gets that error;
//! - the rest are packed by memory (`memory_static_max`, largest first, each on the target
//!   with the most free memory left by its `host_metrics`); one that fits nowhere gets
//!   `HOST_NOT_ENOUGH_FREE_MEMORY [vm]`.
//!
//! `get_vms_which_prevent_evacuation` answers the errors (VM → code and parameters);
//! `assert_can_evacuate` refuses with `CANNOT_EVACUATE_HOST ["code,params|…"]`; `evacuate`
//! refuses with the first error, else migrates each VM to its planned host with
//! `VM.pool_migrate` (`evacuate_batch_size` at a time, default 10), then checks that no VM is
//! left (`INTERNAL_ERROR` if one is). A VM that stopped meanwhile (`VM_BAD_POWER_STATE`) is
//! not an error.

use super::placement;
use crate::call::{Call, CallCtx, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::schema::class_ids;
use crate::value::{Object, Value};
use crate::Agent;
use std::sync::Arc;

/// Migrations at once when `evacuate_batch_size` is not positive (the reference's default).
const DEFAULT_BATCH: usize = 10;

/// What becomes of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// It moves to this host.
    Migrate(String),
    /// It cannot move: the error's code and parameters.
    Error(Vec<String>),
}

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::host, "get_vms_which_prevent_evacuation", |agent, _ctx, c| {
            let host = this_host(&agent, &c)?;
            let errors = plan(&agent, &host)
                .into_iter()
                .filter_map(|(vm, p)| match p {
                    Plan::Error(d) => Some((
                        Value::reference(vm),
                        Value::set(d.into_iter().map(Value::str).collect()),
                    )),
                    Plan::Migrate(_) => None,
                })
                .collect();
            Ok(Value::map(errors))
        }),
        entry!(class_ids::host, "assert_can_evacuate", |agent, _ctx, c| {
            let host = this_host(&agent, &c)?;
            let errors: Vec<String> = plan(&agent, &host)
                .into_iter()
                .filter_map(|(_, p)| match p {
                    Plan::Error(d) => Some(d.join(",")),
                    Plan::Migrate(_) => None,
                })
                .collect();
            if errors.is_empty() {
                Ok(Value::None)
            } else {
                Err(ApiError::CannotEvacuateHost {
                    errors: errors.join("|"),
                })
            }
        }),
        entry!(class_ids::host, "evacuate", |agent, ctx, c| evacuate(&agent, &ctx, &c)
            .await),
    ]
}

fn this_host(agent: &Agent, c: &Call) -> Result<String, ApiError> {
    let host = c.ref_arg(0)?.to_owned();
    if agent.store.get(class_ids::host, &host).is_none() {
        return Err(ApiError::handle_invalid("host", &host));
    }
    Ok(host)
}

/// The plan for every VM resident on `host` but its control domain, in reference order.
fn plan(agent: &Agent, host: &str) -> Vec<(String, Plan)> {
    let mut targets: Vec<String> = agent
        .store
        .all(class_ids::host)
        .iter()
        .map(|h| h.reference.clone())
        .filter(|h| h != host && super::maintenance::is_enabled(agent, h))
        .collect();
    targets.sort();
    let mut vms = super::dead_host::guests_on(agent, host);
    vms.sort_by(|a, b| a.reference.cmp(&b.reference));
    if targets.is_empty() {
        return vms
            .iter()
            .map(|vm| {
                let d = vec!["NO_HOSTS_AVAILABLE".to_owned(), vm.reference.clone()];
                (vm.reference.clone(), Plan::Error(d))
            })
            .collect();
    }
    let mut out: Vec<(String, Plan)> = Vec::new();
    let mut movable: Vec<Arc<Object>> = Vec::new();
    // With HA on, only protected VMs move: the others must be stopped or suspended first, so
    // that evacuating the host leaves the pool as a failure of the host would.
    let ha = super::ha::enabled(agent);
    for vm in &vms {
        let state = crate::lifecycle::rules::check_vm(vm, "pool_migrate");
        if let Err(e) = state {
            out.push((vm.reference.clone(), Plan::Error(e.description())));
            continue;
        }
        if ha && !super::ha::is_protected(vm) {
            let d = vec!["HOST_EVACUATE_VM_NOT_HA_PROTECTED".to_owned(), vm.reference.clone()];
            out.push((vm.reference.clone(), Plan::Error(d)));
            continue;
        }
        match targets.iter().try_for_each(|t| placement::check(agent, vm, t, false)) {
            Err(e) => out.push((vm.reference.clone(), Plan::Error(e.description()))),
            Ok(()) => movable.push(vm.clone()),
        }
    }
    // Largest first, each where the most memory is left.
    movable.sort_by_key(|vm| std::cmp::Reverse(placement::memory_needed(vm)));
    let mut free: Vec<(String, i64)> = targets
        .iter()
        .map(|t| (t.clone(), placement::memory_free(agent, t)))
        .collect();
    for vm in movable {
        let need = placement::memory_needed(&vm);
        let best = free.iter_mut().filter(|(_, f)| *f >= need).max_by_key(|(_, f)| *f);
        let p = match best {
            Some((t, f)) => {
                *f -= need;
                Plan::Migrate(t.clone())
            }
            None => Plan::Error(vec!["HOST_NOT_ENOUGH_FREE_MEMORY".to_owned(), vm.reference.clone()]),
        };
        out.push((vm.reference.clone(), p));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The error `evacuate` refuses with for a plan's error: the reference raises the code with
/// the plan's parameters; where this build's error has other parameters, the nearest form.
fn refusal(agent: &Agent, host: &str, d: &[String]) -> ApiError {
    let code = d.first().map(String::as_str).unwrap_or("");
    match code {
        "NO_HOSTS_AVAILABLE" => ApiError::NoHostsAvailable {},
        "HOST_NOT_ENOUGH_FREE_MEMORY" => {
            let vm = d.get(1).and_then(|v| agent.store.get(class_ids::VM, v));
            let most = agent
                .store
                .all(class_ids::host)
                .iter()
                .filter(|h| h.reference != host && super::maintenance::is_enabled(agent, &h.reference))
                .map(|h| placement::memory_free(agent, &h.reference))
                .max()
                .unwrap_or(0);
            ApiError::HostNotEnoughFreeMemory {
                needed: vm.map_or(0, |v| placement::memory_needed(&v)).to_string(),
                available: most.to_string(),
            }
        }
        _ => super::remote::from_wire(d),
    }
}

async fn evacuate(agent: &Arc<Agent>, ctx: &CallCtx, c: &Call) -> Result<Value, ApiError> {
    let host = this_host(agent, c)?;
    let batch = c
        .args
        .get(2)
        .and_then(Value::as_int)
        .filter(|n| *n > 0)
        .map_or(DEFAULT_BATCH, |n| usize::try_from(n).unwrap_or(DEFAULT_BATCH));
    let plan = plan(agent, &host);
    if let Some(d) = plan.iter().find_map(|(_, p)| match p {
        Plan::Error(d) => Some(d.clone()),
        Plan::Migrate(_) => None,
    }) {
        return Err(refusal(agent, &host, &d));
    }
    let moves: Vec<(String, String)> = plan
        .into_iter()
        .filter_map(|(vm, p)| match p {
            Plan::Migrate(t) => Some((vm, t)),
            Plan::Error(_) => None,
        })
        .collect();
    tracing::info!(host, vms = moves.len(), batch, "host.evacuate");
    let message = class_ids::VM
        .message_by_name("pool_migrate")
        .ok_or_else(|| ApiError::internal("no VM.pool_migrate in the datamodel"))?;
    for chunk in moves.chunks(batch) {
        let runs = chunk.iter().map(|(vm, target)| {
            let call = Call {
                id: message,
                class: class_ids::VM,
                message: message.def(),
                session: c.session.clone(),
                args: vec![
                    Value::reference(vm.as_str()),
                    Value::reference(target.as_str()),
                    Value::map(vec![(Value::str("live"), Value::str("true"))]),
                ],
            };
            let ctx = CallCtx {
                trusted_root: ctx.trusted_root,
                task: None,
                pool_secret: None,
            };
            async move { crate::lifecycle::dispatch(agent, &ctx, call).await }
        });
        for result in futures_util::future::join_all(runs).await {
            match result {
                Ok(_) | Err(ApiError::VmBadPowerState { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let left = super::dead_host::guests_on(agent, &host).len();
    if left > 0 {
        return Err(ApiError::internal(format!(
            "evacuate: {left} VMs are still resident on {host}"
        )));
    }
    Ok(Value::None)
}
