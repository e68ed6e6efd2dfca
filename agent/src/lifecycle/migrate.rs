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
//! On the simulator the move is live: before the save, the guest's memory crosses in rounds
//! while it runs (`lifecycle/precopy.rs`, each round a `PUT /xapid/pool_migrate_memory` the
//! destination checks page by page), and the stop carries the last dirty pages and the saved
//! state. A failure during the rounds leaves the guest running where it was. On Xen the guest
//! stops at the save and runs again once the destination unpauses it.
//!
//! A migration to the host the VM is on moves it live where the backend can
//! (`lifecycle/migrate_live.rs`: Xen's PV and PVH guests); otherwise it saves and restores it
//! there. The saved image travels in one request body held in memory.

use super::precopy;
use super::vm_power::{domid_of, mark_running, on_backend, restore, vm_of};
use crate::error::ApiError;
use crate::pool::remote::Remote;
use crate::value::Value;
use crate::Agent;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The path of the destination's receiving end (`rpc/src/data_paths/migrate.rs`).
pub const RECEIVE_PATH: &str = "/xapid/pool_migrate_image";
/// The path where the destination takes the pre-copy rounds.
pub const MEMORY_PATH: &str = "/xapid/pool_migrate_memory";

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

/// Where a running VM's domain goes.
pub struct Destination {
    /// The destination host (a ref of the destination's database).
    pub host: String,
    /// The VM's ref in the destination's database.
    pub vm: String,
    /// The destination's receiving end; `None` when it is this host.
    pub remote: Option<Result<Remote, String>>,
    /// A session of the destination's pool, for a destination in another pool (which takes
    /// the stream on that session, not on this pool's secret).
    pub session: Option<String>,
}

impl Destination {
    /// `host`, a host of this pool.
    pub fn in_pool(agent: &Agent, vm: &str, host: &str) -> Destination {
        Destination {
            host: host.to_owned(),
            vm: vm.to_owned(),
            remote: (host != agent.host).then(|| migration_remote(agent, host)),
            session: None,
        }
    }

    /// The query parameters that prove the sender at the destination.
    fn proof(&self) -> String {
        self.session
            .as_deref()
            .map(|s| format!("&session_id={s}"))
            .unwrap_or_default()
    }
}

/// Carries out `VM.pool_migrate` on the source host (in the VM's actor, under its mark).
pub async fn pool_migrate(agent: &Arc<Agent>, vm: &str, args: &[Value]) -> Result<Value, ApiError> {
    let dest = args.first().and_then(Value::as_ref_str).unwrap_or("").to_owned();
    let rec = vm_of(agent, vm)?;
    crate::pool::placement::check(agent, &rec, &dest, dest != agent.host)?;
    move_domain(agent, vm, &Destination::in_pool(agent, vm, &dest), None).await?;
    Ok(Value::None)
}

/// Moves the running VM's domain to `d`: the live rounds where the backend has them, the
/// save, `motion`'s step at the stop (its disks switched to their copies), the image, and the
/// destination's commit. On a failure the domain runs here again (and `motion`'s step is
/// undone) and the error is `VM_MIGRATE_FAILED`.
pub async fn move_domain(
    agent: &Arc<Agent>,
    vm: &str,
    d: &Destination,
    mut motion: Option<&mut super::storage_motion::Motion>,
) -> Result<(), ApiError> {
    let rec = vm_of(agent, vm)?;
    let domid = domid_of(&rec).ok_or_else(|| ApiError::internal("the VM has no domain"))?;
    let failed = |reason: String| ApiError::VmMigrateFailed {
        vm: vm.to_owned(),
        source: agent.host.clone(),
        destination: d.host.clone(),
        msg: reason,
    };
    // To this host, where the backend moves a guest live (Xen's PV and PVH guests): its
    // memory goes into a new domain while it runs.
    if d.remote.is_none() && motion.is_none() {
        if let Some(moved) = super::migrate_live::here(agent, vm, &rec, domid).await {
            let m = moved.map_err(|reason| {
                tracing::warn!(vm, %reason, "migration: the live move failed");
                failed(reason)
            })?;
            tracing::info!(
                vm,
                destination = %d.host,
                domid = m.domid,
                took_ms = m.took.as_millis() as u64,
                downtime_ms = m.downtime.as_millis() as u64,
                "pool_migrate: done (live)"
            );
            return Ok(());
        }
    }
    // The live part: the guest runs while its memory crosses.
    let model = precopy_model(agent, &rec);
    let live = match (model, &d.remote) {
        (Some(model), Some(remote)) => {
            let report = precopy::run(model, |round, pages| send_round(remote, d, round, pages, model.pages))
                .await
                .map_err(|reason| {
                    tracing::warn!(vm, destination = %d.host, %reason, "migration: a pre-copy round failed; the VM runs here still");
                    failed(reason)
                })?;
            Some((model, report))
        }
        _ => None,
    };
    let paused = std::time::Instant::now();
    let image = image_path(agent, vm, "out")?;
    let (hv, saved) = (agent.hypervisor.clone(), image.clone());
    on_backend(agent, vm, move || hv.suspend_to(domid, &saved)).await?;
    agent.domids.lock().remove(&domid);
    tracing::info!(vm, destination = %d.host, "migration: domain saved, sending it");
    let at_stop = match motion.as_deref_mut() {
        Some(m) => m.at_stop(agent).await.map_err(|e| describe(&e)),
        None => Ok(()),
    };
    let sent = match (&at_stop, &d.remote) {
        (Err(e), _) => Err(e.clone()),
        (Ok(()), None) => receive(agent, vm, &image).await.map_err(|e| describe(&e)),
        (Ok(()), Some(remote)) => {
            let last = match &live {
                Some((model, r)) => send_round(remote, d, r.rounds, r.final_pages, model.pages).await,
                None => Ok(()),
            };
            match last {
                Ok(()) => send(remote, d, &image).await,
                Err(e) => Err(e),
            }
        }
    };
    if sent.is_ok() {
        let downtime = paused.elapsed();
        match &live {
            Some((model, r)) => tracing::info!(
                vm,
                destination = %d.host,
                memory_mib = (model.pages * precopy::PAGE) >> 20,
                dirty_mib_s = model.dirty_per_s >> 20,
                rounds = r.rounds,
                live_mib = (r.live_pages * precopy::PAGE) >> 20,
                live_ms = r.live.as_millis() as u64,
                final_kib = (r.final_pages * precopy::PAGE) >> 10,
                downtime_ms = downtime.as_millis() as u64,
                "pool_migrate: done (live)"
            ),
            None => {
                tracing::info!(vm, destination = %d.host, downtime_ms = downtime.as_millis() as u64, "pool_migrate: done")
            }
        }
    }
    let outcome = match sent {
        Ok(()) => {
            // The destination's commit into this host's view before the VM's actor goes on:
            // the event of the domain that left is reconciled next, and must find the VM
            // resident on the destination, not here with its domain gone.
            if let Err(e) = agent.store.caught_up().await {
                tracing::warn!(vm, error = %e, "pool_migrate: could not bring the view up to date");
            }
            note_memory_freed(agent).await;
            Ok(())
        }
        // The destination committed the VM as its own but its answer did not come back (the
        // connection cut after the commit): the VM runs there, and must not run here too.
        Err(reason) if arrived(agent, d).await => {
            tracing::warn!(vm, destination = %d.host, %reason, "pool_migrate: no answer, but the VM runs on the destination");
            Ok(())
        }
        Err(reason) => {
            tracing::warn!(vm, destination = %d.host, %reason, "migration failed: restoring the VM here");
            if let (Some(m), Ok(())) = (motion, &at_stop) {
                m.undo_stop(agent).await;
            }
            if let Err(e) = restore_here(agent, vm, &image).await {
                tracing::error!(vm, error = %e, "pool_migrate: the VM could not be restored on its source");
            }
            Err(failed(reason))
        }
    };
    let _ = std::fs::remove_file(&image);
    // The VM's history goes with it to the host it runs on now.
    if let (Ok(()), Some(Ok(remote)), Some(uuid)) = (&outcome, &d.remote, rec.uuid()) {
        crate::metrics::carry::send_vm_rrd(agent, uuid, remote, &d.proof()).await;
    }
    outcome
}

/// The source's free memory, now that the guest left, in its `host_metrics` at once (placement
/// reads it: a move back must not wait for the next metrics pass).
async fn note_memory_freed(agent: &Arc<Agent>) {
    let hv = agent.hypervisor.clone();
    let Ok(free) = super::blocking(agent, move || hv.memory_free()).await else {
        return;
    };
    if let Err(e) = agent.store.write(|tx| super::note_host_memory(tx, agent, free)).await {
        tracing::warn!(error = %e, "pool_migrate: could not record the memory freed");
    }
}

/// Whether the destination, asked again, has the VM running there (this pool's database read
/// when it holds every committed change, or the other pool's answer).
async fn arrived(agent: &Agent, d: &Destination) -> bool {
    let Some(Ok(remote)) = &d.remote else {
        return false;
    };
    if let Some(session) = &d.session {
        let state = remote
            .call_str("VM.get_power_state", &[session.as_str().into(), d.vm.as_str().into()])
            .await;
        return state.is_ok_and(|s| s == "Running");
    }
    if let Err(e) = agent.store.caught_up().await {
        tracing::warn!(vm = %d.vm, error = %e, "pool_migrate: could not bring the view up to date");
    }
    agent.store.get(crate::schema::class_ids::VM, &d.vm).is_some_and(|r| {
        r.get(crate::schema::fields::VM::resident_on).as_ref_str() == Some(d.host.as_str())
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
async fn send(remote: &Result<Remote, String>, d: &Destination, image: &Path) -> Result<(), String> {
    let remote = remote.as_ref().map_err(String::clone)?;
    let bytes = std::fs::read(image).map_err(|e| format!("reading the saved image: {e}"))?;
    remote
        .put(&format!("{RECEIVE_PATH}?vm={}{}", d.vm, d.proof()), bytes)
        .await
        .map_err(|e| describe(&e.into_api()))
}

/// The destination's end of the migration stream: HTTPS to its pinned certificate, or why not.
fn migration_remote(agent: &Agent, dest: &str) -> Result<Remote, String> {
    let remote = Remote::to_host(agent, dest).map_err(|e| describe(&e))?;
    if !remote.is_tls() {
        return Err(format!(
            "host {dest} serves no HTTPS on port {}: the migration stream goes over HTTPS only",
            crate::host::certificates::POOL_HTTPS_PORT
        ));
    }
    Ok(remote)
}

/// The memory model of a VM whose move can be live (the simulator's guests), from its record.
fn precopy_model(agent: &Agent, rec: &crate::value::Object) -> Option<precopy::Model> {
    if agent.hypervisor.backend_name() != "simulator" {
        return None;
    }
    let memory = rec
        .get(crate::schema::fields::VM::memory_dynamic_max)
        .as_int()
        .unwrap_or(0)
        .max(0) as u64;
    let rate = rec
        .get(crate::schema::fields::VM::other_config)
        .map_get(precopy::DIRTY_RATE_KEY)
        .and_then(Value::as_str)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(precopy::DEFAULT_DIRTY_MIB_S);
    Some(precopy::Model::new(memory, rate))
}

/// Sends one round of `pages` pages (of a VM of `total`) to the destination, which checks it.
async fn send_round(
    remote: &Result<Remote, String>,
    d: &Destination,
    round: u32,
    pages: u64,
    total: u64,
) -> Result<(), String> {
    let remote = remote.as_ref().map_err(String::clone)?;
    let chunks = precopy::round_chunks(round, pages, total).map(Ok::<_, std::io::Error>);
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    remote
        .put_stream(
            &format!(
                "{MEMORY_PATH}?vm={}&round={round}&pages={pages}&total={total}{}",
                d.vm,
                d.proof()
            ),
            body,
            pages * precopy::PAGE,
        )
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

/// `HANDLE_INVALID` unless `vm` is a VM of the pool.
pub fn known_vm(agent: &Agent, vm: &str) -> Result<(), ApiError> {
    vm_of(agent, vm).map(drop)
}

/// Where the destination writes an arriving image of `vm`.
pub fn arriving_image(agent: &Agent, vm: &str) -> Result<PathBuf, ApiError> {
    image_path(agent, vm, "in")
}
