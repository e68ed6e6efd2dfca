//! Keeping VM records true to the backend: at start-up (a VM whose domain is gone is Halted,
//! as after a host reboot) and when the backend reports that a domain changed (a guest that
//! powered itself off, rebooted or crashed). The VM's actor re-reads the domain; it never
//! trusts a stale command.

use super::{blocking, vm_power, Operation};
use crate::error::ApiError;
use crate::hypervisor::{BackendEvent, DomainState, ShutdownCode};
use crate::schema::enums::VmPowerState;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use std::sync::Arc;

/// Marks Halted every running or paused VM whose domain the backend no longer has, and
/// records the domids of those it still has.
pub async fn at_start(agent: &Arc<Agent>) -> Result<(), ApiError> {
    let hv = agent.hypervisor.clone();
    let domains = blocking(agent, move || hv.list_domains()).await?;
    // In a pool, a VM resident on another host is that host's to reconcile.
    let pooled = agent.store.is_pooled();
    let elsewhere = |o: &crate::value::Object| pooled && super::resident_on_other_host(agent, o);
    // The VMs resident here before any is marked Halted below (which clears `resident_on`):
    // in a pool, their marks are this host's to clear.
    let resident_here: std::collections::HashSet<String> = agent
        .store
        .all(class_ids::VM)
        .iter()
        .filter(|v| v.get(fields::VM::resident_on).as_ref_str() == Some(agent.host.as_str()))
        .map(|v| v.reference.clone())
        .collect();
    for vm in agent.store.all(class_ids::VM) {
        if vm.get(fields::VM::is_control_domain) == &Value::Bool(true) || elsewhere(&vm) {
            continue;
        }
        let state = vm.get(fields::VM::power_state);
        if state != &VmPowerState::Running.value() && state != &VmPowerState::Paused.value() {
            continue;
        }
        let uuid = vm.uuid().unwrap_or("");
        match domains.iter().find(|d| d.uuid.to_string() == uuid) {
            Some(d) => {
                agent.domids.lock().insert(d.domid, vm.reference.clone());
            }
            None => {
                tracing::info!(vm = %vm.reference, "no domain for this VM any more: marking it Halted");
                vm_power::mark_lost(agent, &vm.reference).await?;
            }
        }
    }
    // Operations cut short by a stop or a crash are over: their tasks died with the process.
    // Then every VM's allowed_operations, as this build computes them.
    let vms: Vec<String> = agent
        .store
        .all(class_ids::VM)
        .iter()
        .filter(|v| !elsewhere(v))
        .map(|v| v.reference.clone())
        .collect();
    let mut marked = Vec::new();
    for class in crate::schema::ClassId::all() {
        let Some(f) = class.field_by_name("current_operations") else {
            continue;
        };
        // In a pool only this host's VMs: the others' operations may be running.
        if pooled && class != class_ids::VM {
            continue;
        }
        for o in agent.store.all(class) {
            if pooled && !resident_here.contains(&o.reference) {
                continue;
            }
            if !o.get(f).as_map().is_empty() {
                marked.push((class, f, o.reference.clone()));
            }
        }
    }
    // In a pool, also the marks this host noted and did not clear before it stopped, on
    // objects resident nowhere now (or elsewhere): only this host knows they are its own.
    if pooled {
        for left in super::inflight::leftovers(&agent.state_dir) {
            match super::clear_mark(agent, left.class, &left.reference, &left.op_id).await {
                Ok(()) => {
                    tracing::info!(class = left.class.name(), reference = %left.reference, op = %left.op_id, "cleared the mark of an operation cut short by this host's stop");
                }
                Err(e) => {
                    tracing::warn!(reference = %left.reference, error = %e, "cannot clear the mark of an operation cut short by this host's stop")
                }
            }
        }
    } else {
        // A host alone clears every mark below; notes from its time in a pool are moot.
        super::inflight::forget_all(&agent.state_dir);
    }
    agent
        .store
        .write(|tx| {
            for (class, f, r) in &marked {
                crate::objects::set_field(tx, *class, r, *f, Value::map(Vec::new()))?;
            }
            for v in &vms {
                super::rules::refresh_vm_and_devices(tx, v)?;
            }
            Ok(())
        })
        .await
}

/// Follows the backend's events for as long as the daemon runs.
pub fn follow_backend(agent: &Arc<Agent>) -> Result<(), ApiError> {
    let rx = agent.hypervisor.subscribe()?;
    let Some(mut rx) = crate::hypervisor::forward_to_tokio(rx, 4096) else {
        return Err(ApiError::internal("could not start the backend event thread"));
    };
    let weak = Arc::downgrade(agent);
    actix::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let Some(agent) = weak.upgrade() else { break };
            let domids: Vec<u32> = match ev {
                BackendEvent::DomainChanged(d) => vec![d],
                BackendEvent::DeviceChanged { .. } => continue,
                BackendEvent::Resync => agent.domids.lock().keys().copied().collect(),
            };
            for d in domids {
                let Some(vm) = agent.domids.lock().get(&d).cloned() else {
                    continue;
                };
                let a = agent.clone();
                // Queue behind whatever the VM's actor is doing; don't hold up other events.
                actix::spawn(async move {
                    if let Err(e) = a
                        .actors
                        .perform(&a, class_ids::VM, &vm, Operation::Reconcile, vec![])
                        .await
                    {
                        tracing::warn!(vm, error = %e, "reconciling a VM with its domain failed");
                    }
                });
            }
        }
    });
    Ok(())
}

/// Re-reads a VM's domain and commits what changed (in the VM's actor).
pub async fn vm(agent: &Arc<Agent>, vm: &str) -> Result<(), ApiError> {
    let Some(rec) = agent.store.get(class_ids::VM, vm) else {
        return Ok(());
    };
    let state = rec.get(fields::VM::power_state).clone();
    if state != VmPowerState::Running.value() && state != VmPowerState::Paused.value() {
        return Ok(());
    }
    // A VM that runs on another host now (`VM.pool_migrate` moved it while this event waited)
    // has no domain here to look at: its domid names one of that host's domains.
    if super::resident_on_other_host(agent, &rec) {
        return Ok(());
    }
    let Some(domid) = rec.get(fields::VM::domid).as_int().filter(|d| *d >= 0) else {
        return Ok(());
    };
    let domid = domid as u32;
    let hv = agent.hypervisor.clone();
    let info = blocking(agent, move || hv.domain_info(domid)).await.ok();
    let action_field = |code: ShutdownCode| match code {
        ShutdownCode::PowerOff | ShutdownCode::Suspend => fields::VM::actions_after_shutdown,
        ShutdownCode::Reboot => fields::VM::actions_after_reboot,
        ShutdownCode::Crash | ShutdownCode::Watchdog => fields::VM::actions_after_crash,
    };
    match info.map(|i| i.state) {
        None | Some(DomainState::Dying) => {
            tracing::info!(vm, domid, "the domain is gone: VM halted");
            vm_power::mark_lost(agent, vm).await
        }
        Some(DomainState::Shutdown(code)) => {
            let action = rec.get(action_field(code)).as_str().unwrap_or("destroy");
            tracing::info!(vm, domid, ?code, action, "the guest shut down");
            if action != "preserve" {
                // Its last console lines reach an open console before the domain goes.
                agent.console_watches.settle(domid).await;
            }
            match action {
                "preserve" => Ok(()),
                "restart" | "rename_restart" | "coredump_and_restart" => {
                    let hv = agent.hypervisor.clone();
                    let _ = blocking(agent, move || hv.destroy(domid)).await;
                    vm_power::start(agent, vm, false).await.map(|_| ())
                }
                _ => {
                    let hv = agent.hypervisor.clone();
                    let _ = blocking(agent, move || hv.destroy(domid)).await;
                    vm_power::mark_halted(agent, vm).await
                }
            }
        }
        Some(DomainState::Running) if state != VmPowerState::Running.value() => {
            set_state(agent, vm, VmPowerState::Running).await
        }
        Some(DomainState::Paused) if state != VmPowerState::Paused.value() => {
            set_state(agent, vm, VmPowerState::Paused).await
        }
        Some(_) => Ok(()),
    }
}

async fn set_state(agent: &Arc<Agent>, vm: &str, s: VmPowerState) -> Result<(), ApiError> {
    agent
        .store
        .write(|tx| {
            // Only a VM still running or paused here, by the latest record (a write in a pool
            // that read an older one is run again): never a VM that has stopped or moved
            // meanwhile, which would be left Running with no host.
            let Some(rec) = tx.get(class_ids::VM, vm) else {
                return Ok(());
            };
            let now = rec.get(fields::VM::power_state);
            if super::resident_on_other_host(agent, &rec)
                || (now != &VmPowerState::Running.value() && now != &VmPowerState::Paused.value())
            {
                return Ok(());
            }
            crate::objects::set_field(tx, class_ids::VM, vm, fields::VM::power_state, s.value())?;
            super::rules::refresh_vm_and_devices(tx, vm)
        })
        .await
}
