//! `VM.assert_can_migrate` and `VM.migrate_send`: migration with storage motion, inside the
//! pool and to another pool, to the destination a `host.migrate_receive` named
//! (`lifecycle/migrate_receive.rs`).
//!
//! `VM.migrate_send(vm, dest, live, vdi_map, vif_map, options, vgpu_map)` runs on the host the
//! VM is resident on (or, for a halted VM, where it is received). Inside the pool (the `host`
//! of `dest` is a host of this pool): each disk the VDI map sends to another SR is copied there
//! (`lifecycle/storage_motion.rs`), the VM's domain moves as `VM.pool_migrate` moves it
//! (`lifecycle/migrate.rs`), its VBDs are switched to the copies while the domain is stopped,
//! and the originals are destroyed. To another pool: every disk is copied to the SR the map
//! names there, the VM's metadata (`/export_metadata`, its snapshots included) is imported by
//! the other pool's master with each VDI and VIF naming its counterpart there
//! (`other_config:maps_to`, as the reference does), the domain's memory and state go to the
//! destination host on the session `dest` carries, and then the VM, its snapshots and its disks
//! are removed here (the `copy` option keeps them, for a halted VM). The answer is the VM's
//! ref at the destination.

use super::migrate::{move_domain, Destination};
use super::migrate_receive::Dest;
use super::storage_motion::{Disk, Motion, Target};
use super::vm_power::vm_of;
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::pool::remote::Remote;
use crate::schema::enums::{OnBoot, VbdType, VmPowerState};
use crate::schema::{class_ids, fields};
use crate::value::{Object, Value, NULL_REF};
use crate::Agent;
use serde_json::Value as Json;
use std::sync::Arc;

/// The `other_config` key naming a VDI's or VIF's counterpart in the other pool.
pub const MAPS_TO: &str = "maps_to";

/// The message of this module that is not an actor's operation (`VM.migrate_send` runs in
/// the VM's actor: `lifecycle/mod.rs` and [`migrate_send`]).
pub fn behaviour() -> Vec<Entry> {
    vec![entry!(class_ids::VM, "assert_can_migrate", |agent, _ctx, c| {
        let vm = c.ref_arg(0)?.to_owned();
        let rec = vm_of(&agent, &vm)?;
        super::rules::check_vm(&rec, "migrate_send")?;
        Plan::make(&agent, &rec, &c.args[1..]).await.map(|_| Value::None)
    })]
}

/// `true`/`on`/`1` of an option.
fn option_set(options: &Value, key: &str) -> bool {
    options
        .map_get(key)
        .and_then(Value::as_str)
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "on" | "1"))
}

/// The VDIs of a VM's disk VBDs (neither empty nor CD).
pub(super) fn disk_vdis(agent: &Agent, vm: &Object) -> Vec<String> {
    let mut out = Vec::new();
    for vbd in vm.get(fields::VM::VBDs).as_set().iter().filter_map(Value::as_ref_str) {
        let Some(b) = agent.store.get(class_ids::VBD, vbd) else {
            continue;
        };
        if b.get(fields::VBD::empty) == &Value::Bool(true) || b.get(fields::VBD::r#type) == &VbdType::CD.value() {
            continue;
        }
        if let Some(v) = b.get(fields::VBD::VDI).as_ref_str().filter(|v| *v != NULL_REF) {
            if !out.iter().any(|o| o == v) {
                out.push(v.to_owned());
            }
        }
    }
    out
}

/// The SR a VDI is on.
pub(super) fn sr_of(agent: &Agent, vdi: &str) -> Option<String> {
    agent
        .store
        .get(class_ids::VDI, vdi)
        .and_then(|v| v.get(fields::VDI::SR).as_ref_str().map(str::to_owned))
}

/// A checked migration: where each disk and VIF goes.
struct Plan {
    dest: Dest,
    /// Another pool.
    cross: bool,
    /// Disks that move: (VDI, destination SR).
    moves: Vec<(String, String)>,
    /// VIFs and the other pool's networks.
    vifs: Vec<(String, String)>,
    /// Keep the VM here (another pool, a halted VM).
    copy: bool,
    /// The other pool's master, across pools.
    master: Option<Remote>,
}

impl Plan {
    /// Checks the arguments after the VM (`dest`, `live`, `vdi_map`, `vif_map`, `options`,
    /// `vgpu_map`) against `vm` as the reference does; the plan, or its refusal.
    async fn make(agent: &Arc<Agent>, vm: &Object, args: &[Value]) -> Result<Plan, ApiError> {
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::None);
        let dest = Dest::parse(&arg(0))?;
        let vdi_map: Vec<(String, String)> = arg(2)
            .as_map()
            .iter()
            .map(|(k, v)| (k.key_text(), v.key_text()))
            .collect();
        let vif_map: Vec<(String, String)> = arg(3)
            .as_map()
            .iter()
            .map(|(k, v)| (k.key_text(), v.key_text()))
            .collect();
        let options = arg(4);
        let copy = option_set(&options, "copy");
        let force = option_set(&options, "force");
        let cross = agent.store.get(class_ids::host, &dest.host).is_none();
        // Every disk of the VM is named (the reference's check, inside the pool too).
        let mut disks = disk_vdis(agent, vm);
        for vdi in &disks {
            if !vdi_map.iter().any(|(v, _)| v == vdi) {
                return Err(ApiError::VdiNotInMap { vdi: vdi.clone() });
            }
        }
        // Its snapshots' disks go with it across pools: to the SR of the disk they are a
        // snapshot of, else the other pool's default SR.
        let snapshots: Vec<Arc<Object>> = vm
            .get(fields::VM::snapshots)
            .as_set()
            .iter()
            .filter_map(|s| s.as_ref_str().and_then(|s| agent.store.get(class_ids::VM, s)))
            .collect();
        let running = vm.get(fields::VM::power_state) == &VmPowerState::Running.value();
        let mut moves: Vec<(String, String)> = Vec::new();
        for vdi in &disks {
            let to = vdi_map
                .iter()
                .find(|(v, _)| v == vdi)
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            if cross || sr_of(agent, vdi).as_deref() != Some(to.as_str()) {
                moves.push((vdi.clone(), to));
            }
        }
        let master = if cross { Some(Remote::new(&dest.master)?) } else { None };
        let mut vifs = Vec::new();
        if let Some(remote) = &master {
            if copy && !force && running {
                return Err(ApiError::VmBadPowerState {
                    vm: vm.reference.clone(),
                    expected: "halted".into(),
                    actual: vm.get(fields::VM::power_state).key_text().to_ascii_lowercase(),
                });
            }
            let session = Json::String(dest.session.clone());
            let unreachable = |_| ApiError::CannotContactHost {
                host: dest.master.clone(),
            };
            let enabled = remote
                .call("host.get_enabled", &[session.clone(), Json::String(dest.host.clone())])
                .await
                .map_err(|e| match e {
                    crate::pool::remote::RemoteError::Failure(d) => crate::pool::remote::from_wire(&d),
                    other => unreachable(other),
                })?;
            if enabled.to_json() != Json::Bool(true) {
                return Err(ApiError::HostDisabled {
                    host: dest.host.clone(),
                });
            }
            if running {
                let needed = crate::pool::placement::memory_needed(vm);
                let metrics = remote
                    .call_str("host.get_metrics", &[session.clone(), Json::String(dest.host.clone())])
                    .await
                    .map_err(|e| e.into_api())?;
                let free = remote
                    .call_str(
                        "host_metrics.get_memory_free",
                        &[session.clone(), Json::String(metrics)],
                    )
                    .await
                    .map_err(|e| e.into_api())?
                    .parse::<i64>()
                    .unwrap_or(0);
                if needed > free {
                    return Err(ApiError::HostNotEnoughFreeMemory {
                        needed: needed.to_string(),
                        available: free.to_string(),
                    });
                }
            }
            let default_sr = default_sr(remote, &dest.session).await?;
            for snap in &snapshots {
                for vdi in disk_vdis(agent, snap) {
                    if moves.iter().any(|(v, _)| *v == vdi) {
                        continue;
                    }
                    let of = agent
                        .store
                        .get(class_ids::VDI, &vdi)
                        .and_then(|v| v.get(fields::VDI::snapshot_of).as_ref_str().map(str::to_owned));
                    let to = vdi_map
                        .iter()
                        .find(|(v, _)| *v == vdi || Some(v) == of.as_ref())
                        .map(|(_, s)| s.clone())
                        .or_else(|| default_sr.clone())
                        .ok_or_else(|| ApiError::VdiNotInMap { vdi: vdi.clone() })?;
                    moves.push((vdi.clone(), to));
                    disks.push(vdi);
                }
            }
            // Every VIF (the snapshots' too) named, or sharing a MAC with one that is.
            let mut all_vifs: Vec<String> = Vec::new();
            for v in std::iter::once(vm).chain(snapshots.iter().map(|s| &**s)) {
                all_vifs.extend(
                    v.get(fields::VM::VIFs)
                        .as_set()
                        .iter()
                        .filter_map(|r| r.as_ref_str().map(str::to_owned)),
                );
            }
            let mac = |vif: &str| {
                agent
                    .store
                    .get(class_ids::VIF, vif)
                    .map(|v| v.get(fields::VIF::MAC).key_text())
                    .unwrap_or_default()
            };
            for vif in all_vifs {
                let net = vif_map
                    .iter()
                    .find(|(v, _)| *v == vif)
                    .or_else(|| vif_map.iter().find(|(v, _)| mac(v) == mac(&vif)))
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| ApiError::VifNotInMap { vif: vif.clone() })?;
                vifs.push((vif, net));
            }
        } else {
            if !vif_map.is_empty() {
                return Err(ApiError::OperationNotAllowed {
                    reason: "VIF mapping is not allowed for intra-pool migration -all VIFs must be on the same network"
                        .into(),
                });
            }
            for (_, sr) in &moves {
                if agent.store.get(class_ids::SR, sr).is_none() {
                    return Err(ApiError::handle_invalid("SR", sr));
                }
            }
            if running {
                crate::pool::placement::check_moving(agent, vm, &dest.host, dest.host != agent.host, &moves)?;
            }
        }
        // The disks that move: no changed-block tracking, no reset on boot.
        for (vdi, _) in &moves {
            let Some(rec) = agent.store.get(class_ids::VDI, vdi) else {
                return Err(ApiError::handle_invalid("VDI", vdi));
            };
            if rec.get(fields::VDI::cbt_enabled) == &Value::Bool(true) {
                return Err(ApiError::VdiCbtEnabled { vdi: vdi.clone() });
            }
            if rec.get(fields::VDI::on_boot) == &OnBoot::reset.value() {
                return Err(ApiError::VdiOnBootModeIncompatibleWithOperation {});
            }
        }
        Ok(Plan {
            dest,
            cross,
            moves,
            vifs,
            copy,
            master,
        })
    }
}

/// The other pool's default SR, if it has one.
async fn default_sr(remote: &Remote, session: &str) -> Result<Option<String>, ApiError> {
    let session = Json::String(session.to_owned());
    let pools = remote
        .call("pool.get_all", std::slice::from_ref(&session))
        .await
        .map_err(|e| e.into_api())?
        .to_json();
    let Some(pool) = pools.as_array().and_then(|p| p.first()).and_then(Json::as_str) else {
        return Ok(None);
    };
    let sr = remote
        .call_str("pool.get_default_SR", &[session, Json::String(pool.to_owned())])
        .await
        .map_err(|e| e.into_api())?;
    Ok((sr != NULL_REF && !sr.is_empty()).then_some(sr))
}

/// A session for the move's own calls and data paths (the caller was checked already).
async fn own_session(agent: &Agent) -> Result<String, ApiError> {
    agent
        .sessions
        .login(&agent.store, &agent.host, "root", "", "xapid migration", true)
        .await
}

/// Carries out `VM.migrate_send` (in the VM's actor, under its mark).
pub async fn migrate_send(agent: &Arc<Agent>, vm: &str, args: &[Value]) -> Result<Value, ApiError> {
    let rec = vm_of(agent, vm)?;
    let plan = Plan::make(agent, &rec, args).await?;
    let session = own_session(agent).await?;
    let r = carry_out(agent, vm, &rec, plan, &session).await;
    if let Err(e) = agent.sessions.logout(&agent.store, &session).await {
        tracing::debug!(error = %e, "migrate_send: closing its session");
    }
    r
}

async fn carry_out(agent: &Arc<Agent>, vm: &str, rec: &Object, plan: Plan, session: &str) -> Result<Value, ApiError> {
    let running = rec.get(fields::VM::power_state) == &VmPowerState::Running.value();
    let target = match &plan.master {
        None => Target::Pool,
        Some(master) => Target::Remote {
            master: Remote::new(master.address())?,
            host: Remote::new(&plan.dest.address)?,
            session: plan.dest.session.clone(),
        },
    };
    let disks = plan
        .moves
        .iter()
        .map(|(vdi, sr)| Disk {
            vdi: vdi.clone(),
            to_sr: sr.clone(),
            copy: None,
        })
        .collect();
    // A guest that writes its disks (any backend but the simulator's) has them filled at the
    // stop, once its domain is saved.
    let fill_at_stop = running && agent.hypervisor.backend_name() != "simulator";
    let mut motion = Motion::new(disks, target, session, fill_at_stop);
    tracing::info!(
        vm,
        destination = %plan.dest.host,
        cross_pool = plan.cross,
        disks = plan.moves.len(),
        running,
        "migrate_send: begins"
    );
    if let Err(e) = motion.copy(agent).await {
        motion.abandon(agent).await;
        return Err(e);
    }
    if !plan.cross {
        if running {
            let d = Destination::in_pool(agent, vm, &plan.dest.host);
            if let Err(e) = move_domain(agent, vm, &d, Some(&mut motion)).await {
                motion.abandon(agent).await;
                return Err(e);
            }
        } else if let Err(e) = motion.at_stop(agent).await {
            motion.abandon(agent).await;
            return Err(e);
        }
        motion.finish(agent).await;
        tracing::info!(vm, destination = %plan.dest.host, "migrate_send: done");
        return Ok(Value::reference(vm));
    }
    // Across pools: the records there, then the domain.
    let Some(master) = plan.master.as_ref() else {
        return Err(ApiError::internal("no master of the other pool"));
    };
    let remote_vm = match send_metadata(agent, vm, rec, &plan, &motion, master, session).await {
        Ok(r) => r,
        Err(e) => {
            motion.abandon(agent).await;
            return Err(e);
        }
    };
    if running {
        let d = Destination {
            host: plan.dest.host.clone(),
            vm: remote_vm.clone(),
            remote: Some(Remote::new(&plan.dest.address).map_err(|e| e.description().join(" "))),
            session: Some(plan.dest.session.clone()),
        };
        if let Err(e) = move_domain(agent, vm, &d, Some(&mut motion)).await {
            forget_remote(agent, master, &plan.dest.session, rec).await;
            motion.abandon(agent).await;
            return Err(e);
        }
    }
    if !plan.copy {
        // The VM's messages go with it (its database went with its domain).
        if let Some(uuid) = rec.uuid() {
            crate::metrics::carry::send_vm_messages(agent, uuid, master, &plan.dest.session).await;
        }
        remove_here(agent, vm, rec).await;
        motion.finish(agent).await;
    }
    tracing::info!(vm, remote_vm = %remote_vm, destination = %plan.dest.host, "migrate_send: done (to another pool)");
    Ok(Value::reference(remote_vm.as_str()))
}

/// The VM's metadata, with each disk and VIF naming its counterpart, imported by the other
/// pool's master; the VM's ref there.
async fn send_metadata(
    agent: &Arc<Agent>,
    vm: &str,
    rec: &Object,
    plan: &Plan,
    motion: &Motion,
    master: &Remote,
    session: &str,
) -> Result<String, ApiError> {
    let copies = motion.copies();
    let mark = |on: bool| {
        let (copies, vifs) = (copies.clone(), plan.vifs.clone());
        move |tx: &mut crate::store::Tx| {
            for (vdi, copy) in &copies {
                set_maps_to(tx, class_ids::VDI, vdi, fields::VDI::other_config, on.then_some(copy))?;
            }
            for (vif, net) in &vifs {
                set_maps_to(tx, class_ids::VIF, vif, fields::VIF::other_config, on.then_some(net))?;
            }
            Ok(())
        }
    };
    agent.store.write(mark(true)).await?;
    let sent = async {
        let here = Remote::to_host(agent, &agent.host)?;
        let metadata = here
            .get_stream(&format!(
                "/export_metadata?ref={vm}&export_snapshots=true&session_id={session}"
            ))
            .await
            .map_err(|e| e.into_api())?
            .bytes()
            .await
            .map_err(ApiError::internal)?;
        let answer = master
            .put_text(
                &format!(
                    "/import_metadata?restore={}&session_id={}",
                    !plan.copy, plan.dest.session
                ),
                metadata.to_vec(),
            )
            .await
            .map_err(|e| e.into_api())?;
        answer
            .lines()
            .next()
            .filter(|l| l.starts_with("OpaqueRef:"))
            .map(str::to_owned)
            .ok_or_else(|| ApiError::ImportError {
                msg: format!("the other pool refused the VM's metadata: {}", answer.trim()),
            })
    }
    .await;
    if let Err(e) = agent.store.write(mark(false)).await {
        tracing::warn!(vm, error = %e, "migrate_send: could not remove the maps_to keys");
    }
    if sent.is_err() {
        forget_remote(agent, master, &plan.dest.session, rec).await;
    }
    sent
}

/// Sets (or removes) `maps_to` in an object's `other_config`.
fn set_maps_to(
    tx: &mut crate::store::Tx,
    class: crate::schema::ClassId,
    r: &str,
    field: crate::schema::FieldId,
    to: Option<&String>,
) -> Result<(), ApiError> {
    let Some(o) = tx.get(class, r) else {
        return Ok(());
    };
    let mut pairs: Vec<(Value, Value)> = o
        .get(field)
        .as_map()
        .iter()
        .filter(|(k, _)| k.as_str() != Some(MAPS_TO))
        .cloned()
        .collect();
    if let Some(to) = to {
        pairs.push((Value::str(MAPS_TO), Value::str(to.as_str())));
    }
    crate::objects::set_field(tx, class, r, field, Value::map(pairs))
}

/// Removes from the other pool the VM (and its snapshots) a failed migration imported there.
async fn forget_remote(agent: &Agent, master: &Remote, session: &str, rec: &Object) {
    let s = Json::String(session.to_owned());
    let uuids = std::iter::once(rec.uuid().unwrap_or("").to_owned()).chain(
        rec.get(fields::VM::snapshots)
            .as_set()
            .iter()
            .filter_map(|r| r.as_ref_str().and_then(|r| agent.uuid_of(class_ids::VM, r))),
    );
    for uuid in uuids.into_iter().filter(|u| !u.is_empty()) {
        let Ok(r) = master
            .call_str("VM.get_by_uuid", &[s.clone(), Json::String(uuid.clone())])
            .await
        else {
            continue;
        };
        if let Err(e) = master.call("VM.destroy", &[s.clone(), Json::String(r)]).await {
            tracing::warn!(uuid, error = %e, "migrate_send: the VM imported by the other pool could not be removed");
        }
    }
}

/// The VM and its snapshots removed from this pool once they run in the other.
async fn remove_here(agent: &Arc<Agent>, vm: &str, rec: &Object) {
    let halted = agent
        .store
        .write(|tx| {
            use fields::VM as f;
            if tx.get(class_ids::VM, vm).is_some() {
                crate::objects::set_fields(
                    tx,
                    class_ids::VM,
                    vm,
                    &[
                        (f::power_state, VmPowerState::Halted.value()),
                        (f::domid, Value::Int(-1)),
                        (f::resident_on, Value::null_ref()),
                    ],
                )?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = halted {
        tracing::warn!(vm, error = %e, "migrate_send: could not mark the VM halted here");
    }
    let snapshots: Vec<String> = rec
        .get(fields::VM::snapshots)
        .as_set()
        .iter()
        .filter_map(|s| s.as_ref_str().map(str::to_owned))
        .collect();
    for r in snapshots.iter().map(String::as_str).chain(std::iter::once(vm)) {
        if let Err(e) = super::vm_copy::destroy_vm(agent, r).await {
            tracing::warn!(vm = r, error = %e, "migrate_send: could not remove the VM here");
        }
    }
}
