//! Placement: which hosts of the pool can run a VM (live, enough free memory by their
//! `host_metrics`, a PBD on every SR the VM's disks are on), and which one `VM.start` picks.

use crate::error::ApiError;
use crate::schema::{class_ids, fields};
use crate::value::{Object, Value};
use crate::Agent;

fn metrics(agent: &Agent, host: &str) -> Option<std::sync::Arc<Object>> {
    let h = agent.store.get(class_ids::host, host)?;
    let m = h.get(fields::host::metrics).as_ref_str()?.to_owned();
    agent.store.get(class_ids::host_metrics, &m)
}

/// The SRs of the VM's disks (empty CD drives and disks without a VDI left out).
fn srs_of(agent: &Agent, vm: &Object, moved: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for vbd in vm.get(fields::VM::VBDs).as_set().iter().filter_map(Value::as_ref_str) {
        let Some(vbd) = agent.store.get(class_ids::VBD, vbd) else {
            continue;
        };
        let Some(vdi) = vbd
            .get(fields::VBD::VDI)
            .as_ref_str()
            .and_then(|v| agent.store.get(class_ids::VDI, v))
        else {
            continue;
        };
        let to = moved
            .iter()
            .find(|(v, _)| *v == vdi.reference)
            .map(|(_, sr)| sr.as_str());
        if let Some(sr) = to.or_else(|| vdi.get(fields::VDI::SR).as_ref_str()) {
            if !out.iter().any(|s| s == sr) {
                out.push(sr.to_owned());
            }
        }
    }
    out
}

/// Whether `host` sees `sr` (has a PBD of it).
fn sees(agent: &Agent, host: &str, sr: &str) -> bool {
    agent.store.get(class_ids::SR, sr).is_some_and(|sr| {
        sr.get(fields::SR::PBDs)
            .as_set()
            .iter()
            .filter_map(Value::as_ref_str)
            .any(|p| {
                agent
                    .store
                    .get(class_ids::PBD, p)
                    .is_some_and(|p| p.get(fields::PBD::host).as_ref_str() == Some(host))
            })
    })
}

/// The memory a VM needs on a host to start there (`memory_static_max`), as placement,
/// evacuation and HA's planner count it.
pub fn memory_needed(vm: &Object) -> i64 {
    vm.get(fields::VM::memory_static_max).as_int().unwrap_or(0).max(0)
}

/// `host`'s free memory by its `host_metrics` (0 without them).
pub fn memory_free(agent: &Agent, host: &str) -> i64 {
    metrics(agent, host)
        .and_then(|m| m.get(fields::host_metrics::memory_free).as_int())
        .unwrap_or(0)
}

/// Whether `host`'s metrics say it is live (`pool/liveness.rs` keeps them so).
pub fn is_live(agent: &Agent, host: &str) -> bool {
    metrics(agent, host).is_some_and(|m| m.get(fields::host_metrics::live) == &Value::Bool(true))
}

/// The reference's refusals for booting `vm` on `host` that the pool database answers:
/// `HOST_OFFLINE`, `VM_REQUIRES_SR`, and (from the host's metrics, for a host other than the
/// one asking, which asks its backend) `HOST_NOT_ENOUGH_FREE_MEMORY`.
pub fn check(agent: &Agent, vm: &Object, host: &str, memory_from_metrics: bool) -> Result<(), ApiError> {
    check_moving(agent, vm, host, memory_from_metrics, &[])
}

/// [`check`] for a VM whose disks `moved` (VDI, SR) go to other SRs on the way.
pub fn check_moving(
    agent: &Agent,
    vm: &Object,
    host: &str,
    memory_from_metrics: bool,
    moved: &[(String, String)],
) -> Result<(), ApiError> {
    if agent.store.get(class_ids::host, host).is_none() {
        return Err(ApiError::handle_invalid("host", host));
    }
    if !is_live(agent, host) {
        return Err(ApiError::HostOffline { host: host.to_owned() });
    }
    if !super::maintenance::is_enabled(agent, host) {
        return Err(ApiError::HostDisabled { host: host.to_owned() });
    }
    for sr in srs_of(agent, vm, moved) {
        if !sees(agent, host, &sr) {
            return Err(ApiError::VmRequiresSr {
                vm: vm.reference.clone(),
                sr,
            });
        }
    }
    if memory_from_metrics {
        let needed = memory_needed(vm);
        let free = memory_free(agent, host);
        if needed > free {
            return Err(ApiError::HostNotEnoughFreeMemory {
                needed: needed.to_string(),
                available: free.to_string(),
            });
        }
    }
    Ok(())
}

/// Where `VM.start` runs the VM: its `affinity` host if that can, else the host the call
/// arrived on if it can, else the first other host that can; `None` when none can (the call
/// then runs where it arrived and fails there with the reference's error).
pub fn pick(agent: &Agent, vm: &Object) -> Option<String> {
    let ok = |h: &str| check(agent, vm, h, true).is_ok();
    if let Some(a) = vm.get(fields::VM::affinity).as_ref_str() {
        if ok(a) {
            return Some(a.to_owned());
        }
    }
    if ok(&agent.host) {
        return Some(agent.host.clone());
    }
    let mut hosts: Vec<String> = agent
        .store
        .all(class_ids::host)
        .iter()
        .map(|h| h.reference.clone())
        .collect();
    hosts.sort();
    hosts.into_iter().find(|h| ok(h))
}
