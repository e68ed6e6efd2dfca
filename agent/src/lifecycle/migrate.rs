//! `VM.pool_migrate(vm, host, options)`: a running VM moves to another host of the pool.
//!
//! The call runs on the host the VM is resident on (`pool/forward.rs`). That host checks the
//! destination as a start there would be checked (`placement::check`: `HOST_OFFLINE`,
//! `HOST_DISABLED`, `VM_REQUIRES_SR`, `HOST_NOT_ENOUGH_FREE_MEMORY`), saves the domain to an
//! image with the backend's `suspend_to`, and sends the image to the destination's
//! `PUT /xapid/pool_migrate_image?vm=<ref>` (`rpc/src/data_paths/migrate.rs`) over HTTPS to
//! the destination's pinned certificate with the pool secret. The destination restores the
//! domain from it (`resume_from`), plugs the VM's devices, unpauses it and commits the VM as
//! running there (`resident_on`, `domid`) before it answers ([`receive`]). If anything fails
//! before that commit, the source restores the domain from its copy of the image and answers
//! `VM_MIGRATE_FAILED [vm, source, destination, reason]`: the VM runs where it ran.
//!
//! A migration to the host the VM is on already saves and restores it there.
//!
//! Not built yet: the move is not live. The guest stops at the save and runs again once the
//! destination unpauses it, so its downtime is the whole move; no memory is sent while it
//! runs (no rounds of dirty pages). The image travels in one request body held in memory.

use super::vm_power::{domid_of, mark_running, on_backend, restore, vm_of};
use crate::error::ApiError;
use crate::value::Value;
use crate::Agent;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The path of the destination's receiving end (`rpc/src/data_paths/migrate.rs`).
pub const RECEIVE_PATH: &str = "/xapid/pool_migrate_image";

/// Where migration images are kept while they are in flight.
pub fn image_dir(agent: &Agent) -> PathBuf {
    agent.state_dir.join("migrate")
}

fn image_path(agent: &Agent, vm: &str, end: &str) -> Result<PathBuf, ApiError> {
    let rec = vm_of(agent, vm)?;
    let dir = image_dir(agent);
    std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
    Ok(dir.join(format!("{}.{end}", rec.uuid().unwrap_or("unknown"))))
}

/// Carries out `VM.pool_migrate` on the source host (in the VM's actor, under its mark).
pub async fn pool_migrate(agent: &Arc<Agent>, vm: &str, args: &[Value]) -> Result<Value, ApiError> {
    let dest = args.first().and_then(Value::as_ref_str).unwrap_or("").to_owned();
    let rec = vm_of(agent, vm)?;
    crate::pool::placement::check(agent, &rec, &dest, dest != agent.host)?;
    let domid = domid_of(&rec).ok_or_else(|| ApiError::internal("the VM has no domain"))?;
    let image = image_path(agent, vm, "out")?;
    let (hv, saved) = (agent.hypervisor.clone(), image.clone());
    on_backend(agent, vm, move || hv.suspend_to(domid, &saved)).await?;
    agent.domids.lock().remove(&domid);
    tracing::info!(vm, destination = %dest, "pool_migrate: domain saved, sending it");
    let sent = if dest == agent.host {
        receive(agent, vm, &image).await.map_err(|e| describe(&e))
    } else {
        send(agent, vm, &dest, &image).await
    };
    let outcome = match sent {
        Ok(()) => {
            // The destination's commit into this host's view before the VM's actor goes on:
            // the event of the domain that left is reconciled next, and must find the VM
            // resident on the destination, not here with its domain gone.
            if let Err(e) = agent.store.caught_up().await {
                tracing::warn!(vm, error = %e, "pool_migrate: could not bring the view up to date");
            }
            Ok(Value::None)
        }
        // The destination committed the VM as its own but its answer did not come back (the
        // connection cut after the commit): the VM runs there, and must not run here too.
        Err(reason) if arrived(agent, vm, &dest).await => {
            tracing::warn!(vm, destination = %dest, %reason, "pool_migrate: no answer, but the VM runs on the destination");
            Ok(Value::None)
        }
        Err(reason) => {
            tracing::warn!(vm, destination = %dest, %reason, "pool_migrate failed: restoring the VM here");
            if let Err(e) = restore_here(agent, vm, &image).await {
                tracing::error!(vm, error = %e, "pool_migrate: the VM could not be restored on its source");
            }
            Err(ApiError::VmMigrateFailed {
                vm: vm.to_owned(),
                source: agent.host.clone(),
                destination: dest,
                msg: reason,
            })
        }
    };
    let _ = std::fs::remove_file(&image);
    outcome
}

/// Whether the pool database, read when it holds every committed change, has the VM running on
/// `dest` (another host).
async fn arrived(agent: &Agent, vm: &str, dest: &str) -> bool {
    if dest == agent.host {
        return false;
    }
    if let Err(e) = agent.store.caught_up().await {
        tracing::warn!(vm, error = %e, "pool_migrate: could not bring the view up to date");
    }
    agent.store.get(crate::schema::class_ids::VM, vm).is_some_and(|r| {
        r.get(crate::schema::fields::VM::resident_on).as_ref_str() == Some(dest)
            && r.get(crate::schema::fields::VM::power_state) == &crate::schema::enums::VmPowerState::Running.value()
    })
}

/// The source's domain back from its image after a failed move.
async fn restore_here(agent: &Arc<Agent>, vm: &str, image: &Path) -> Result<(), ApiError> {
    let rec = vm_of(agent, vm)?;
    let domid = restore(agent, vm, &rec, image.to_path_buf(), false).await?;
    mark_running(agent, vm, domid, false).await
}

/// Sends the image to the destination's receiving end; the reason of a failure.
async fn send(agent: &Agent, vm: &str, dest: &str, image: &Path) -> Result<(), String> {
    let remote = crate::pool::remote::Remote::to_host(agent, dest).map_err(|e| describe(&e))?;
    if !remote.is_tls() {
        return Err(format!(
            "host {dest} serves no HTTPS on port {}: the migration stream goes over HTTPS only",
            crate::host::certificates::POOL_HTTPS_PORT
        ));
    }
    let bytes = std::fs::read(image).map_err(|e| format!("reading the saved image: {e}"))?;
    remote
        .put(&format!("{RECEIVE_PATH}?vm={vm}"), bytes)
        .await
        .map_err(|e| describe(&e.into_api()))
}

/// An error as one line: its code and parameters.
fn describe(e: &ApiError) -> String {
    e.description().join(" ")
}

/// The destination's end: restores the VM from `image` on this host and commits it as running
/// here (the caller removes the image).
pub async fn receive(agent: &Arc<Agent>, vm: &str, image: &Path) -> Result<(), ApiError> {
    let rec = vm_of(agent, vm)?;
    let domid = restore(agent, vm, &rec, image.to_path_buf(), false).await?;
    if let Err(e) = mark_running(agent, vm, domid, false).await {
        let hv = agent.hypervisor.clone();
        let _ = super::blocking(agent, move || hv.destroy(domid)).await;
        agent.domids.lock().remove(&domid);
        return Err(e);
    }
    tracing::info!(vm, domid, "pool_migrate: the VM runs here now");
    Ok(())
}

/// Where the destination writes an arriving image of `vm`.
pub fn arriving_image(agent: &Agent, vm: &str) -> Result<PathBuf, ApiError> {
    image_path(agent, vm, "in")
}
