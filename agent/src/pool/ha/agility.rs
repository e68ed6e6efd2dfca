//! Whether a VM may run on any host of the pool (`VM.assert_agile`): no virtual GPU or USB
//! device, every disk on an SR that every enabled host has attached, every VIF on a network
//! that every enabled host has a PIF on (a bond's members aside). HA restarts elsewhere only
//! VMs that are agile.

use crate::error::ApiError;
use crate::schema::{class_ids, fields};
use crate::value::{Object, Value};
use crate::Agent;
use std::collections::HashSet;

fn enabled_hosts(agent: &Agent) -> HashSet<String> {
    agent
        .store
        .all(class_ids::host)
        .iter()
        .filter(|h| h.get(fields::host::enabled) == &Value::Bool(true))
        .map(|h| h.reference.clone())
        .collect()
}

/// Whether `sr` is shared and every enabled host has its PBD attached.
pub fn sr_properly_shared(agent: &Agent, sr: &str) -> bool {
    let Some(rec) = agent.store.get(class_ids::SR, sr) else {
        return false;
    };
    if rec.get(fields::SR::shared) != &Value::Bool(true) {
        return false;
    }
    let attached: HashSet<String> = rec
        .get(fields::SR::PBDs)
        .as_set()
        .iter()
        .filter_map(Value::as_ref_str)
        .filter_map(|p| agent.store.get(class_ids::PBD, p))
        .filter(|p| p.get(fields::PBD::currently_attached) == &Value::Bool(true))
        .filter_map(|p| p.get(fields::PBD::host).as_ref_str().map(str::to_owned))
        .collect();
    enabled_hosts(agent).is_subset(&attached)
}

/// Whether every enabled host has a PIF (not a bond member) on `network`.
pub fn network_properly_shared(agent: &Agent, network: &str) -> bool {
    let with_pif: HashSet<String> = agent
        .store
        .all(class_ids::PIF)
        .iter()
        .filter(|p| p.get(fields::PIF::network).as_ref_str() == Some(network))
        .filter(|p| {
            p.get(fields::PIF::bond_slave_of)
                .as_ref_str()
                .is_none_or(|b| agent.store.get(class_ids::Bond, b).is_none())
        })
        .filter_map(|p| p.get(fields::PIF::host).as_ref_str().map(str::to_owned))
        .collect();
    enabled_hosts(agent).is_subset(&with_pif)
}

/// `VM.assert_agile`: the reference's refusals, in its order.
pub fn assert_agile(agent: &Agent, vm: &Object) -> Result<(), ApiError> {
    if !vm.get(fields::VM::VGPUs).as_set().is_empty() {
        return Err(ApiError::VmHasVgpu {
            vm: vm.reference.clone(),
        });
    }
    if !vm.get(fields::VM::VUSBs).as_set().is_empty() {
        return Err(ApiError::VmHasVusbs {
            vm: vm.reference.clone(),
        });
    }
    for vbd in vm.get(fields::VM::VBDs).as_set().iter().filter_map(Value::as_ref_str) {
        let Some(vbd) = agent.store.get(class_ids::VBD, vbd) else {
            continue;
        };
        if vbd.get(fields::VBD::empty) == &Value::Bool(true) {
            continue;
        }
        let Some(sr) = vbd
            .get(fields::VBD::VDI)
            .as_ref_str()
            .and_then(|v| agent.store.get(class_ids::VDI, v))
            .and_then(|v| v.get(fields::VDI::SR).as_ref_str().map(str::to_owned))
        else {
            continue;
        };
        if !sr_properly_shared(agent, &sr) {
            return Err(ApiError::HaConstraintViolationSrNotShared { sr });
        }
    }
    for vif in vm.get(fields::VM::VIFs).as_set().iter().filter_map(Value::as_ref_str) {
        let Some(network) = agent
            .store
            .get(class_ids::VIF, vif)
            .and_then(|v| v.get(fields::VIF::network).as_ref_str().map(str::to_owned))
        else {
            continue;
        };
        if !network_properly_shared(agent, &network) {
            return Err(ApiError::HaConstraintViolationNetworkNotShared { network });
        }
    }
    Ok(())
}
