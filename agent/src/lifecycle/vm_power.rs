//! VM power operations: start, shutdown, reboot, pause, suspend, resume — run by the VM's
//! actor, against the hypervisor backend, committing the VM's runtime fields only when the
//! backend has done its part.

use super::{blocking, devices, note_host_memory, rules, vm_copy};
use crate::error::ApiError;
use crate::hypervisor::{
    BackendError, DomId, DomainConfig, DomainKind, DomainState, HvmBoot, PvBoot, PvBootloader, PvKernel, ShutdownReason,
};
use crate::objects::{create, destroy, new_ref, new_uuid, set_field};
use crate::schema::enums::{ConsoleProtocol, DomainType, VbdType, VdiType, VmPowerState};
use crate::schema::{class_ids, fields};
use crate::store::Tx;
use crate::value::{default_object, now, Object, Value, NULL_REF};
use crate::Agent;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a clean shutdown or reboot waits for the guest.
pub const CLEAN_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(300);

/// The VM's record, or `HANDLE_INVALID [VM, ref]`.
pub(crate) fn vm_of(agent: &Agent, vm: &str) -> Result<Arc<Object>, ApiError> {
    agent
        .store
        .get(class_ids::VM, vm)
        .ok_or_else(|| ApiError::handle_invalid("VM", vm))
}

fn int(o: &Object, f: crate::schema::FieldId) -> i64 {
    o.get(f).as_int().unwrap_or(0)
}

fn bool_arg(args: &[Value], i: usize) -> bool {
    args.get(i).and_then(Value::as_bool).unwrap_or(false)
}

/// Checks `static_min <= dynamic_min <= dynamic_max <= static_max`.
pub fn check_memory(vm: &Object) -> Result<(), ApiError> {
    use fields::VM as f;
    let (smin, dmin, dmax, smax) = (
        int(vm, f::memory_static_min),
        int(vm, f::memory_dynamic_min),
        int(vm, f::memory_dynamic_max),
        int(vm, f::memory_static_max),
    );
    if !(0 <= smin && smin <= dmin && dmin <= dmax && dmax <= smax) {
        return Err(ApiError::MemoryConstraintViolation {
            constraint: "Memory limits must satisfy: static_min <= dynamic_min <= dynamic_max <= static_max".into(),
        });
    }
    Ok(())
}

/// Runs a backend call on the blocking pool (see [`blocking`]) for an operation on the VM
/// `vm`: a failure reaches the client as [`crate::error::ApiError::from_backend`] maps it,
/// with the VM's reference where the error code names the VM (`BOOTLOADER_FAILED`, …).
pub(super) async fn on_backend<T: Send + 'static>(
    agent: &Agent,
    vm: &str,
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking(agent, move || Ok(f()))
        .await?
        .map_err(|e| ApiError::from_backend(e, vm))
}

/// Whether the VM record describes a PVH guest (`domain_type` `pvh`: booted like a PV guest,
/// from its `PV_*` fields, whatever `HVM_boot_policy` says).
fn is_pvh(vm: &Object) -> bool {
    vm.get(fields::VM::domain_type) == &DomainType::pvh
}

/// Whether the VM record describes an HVM guest.
fn is_hvm(vm: &Object) -> bool {
    !is_pvh(vm) && (!vm.str_field("HVM_boot_policy").is_empty() || vm.get(fields::VM::domain_type) == &DomainType::hvm)
}

/// The `domain_type` a VM's domain runs as.
fn running_domain_type(vm: &Object) -> DomainType {
    if is_pvh(vm) {
        DomainType::pvh
    } else if is_hvm(vm) {
        DomainType::hvm
    } else {
        DomainType::pv
    }
}

/// Words joined by single spaces, the empty ones left out.
fn join_words(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The domain a VM record describes, from the record alone.
///
/// A PV VM with a `PV_bootloader` boots through it ([`PvBoot::Bootloader`]); its boot disk
/// is left unresolved here (`disk: None`), as resuming a domain or checking a VM boots
/// nothing. [`start_config`] resolves it for a start.
pub fn domain_config(vm: &Object) -> Result<DomainConfig, ApiError> {
    use fields::VM as f;
    check_memory(vm)?;
    let vcpus_max = int(vm, f::VCPUs_max);
    let vcpus_start = int(vm, f::VCPUs_at_startup);
    if vcpus_max < 1 || vcpus_start < 1 || vcpus_start > vcpus_max {
        return Err(ApiError::invalid_value("VCPUs_at_startup", vcpus_start));
    }
    if vcpus_max > i64::from(crate::hypervisor::MAX_VCPUS) {
        return Err(ApiError::VmTooManyVcpus {
            vm: vm.reference.clone(),
        });
    }
    let bootloader = vm.str_field("PV_bootloader").trim();
    let boot = if !bootloader.is_empty() {
        PvBoot::Bootloader(PvBootloader {
            bootloader: bootloader.to_owned(),
            disk: None,
            bootloader_args: vm.str_field("PV_bootloader_args").to_owned(),
            extra_args: join_words(&[vm.str_field("PV_legacy_args"), vm.str_field("PV_args")]),
        })
    } else {
        let ramdisk = vm.str_field("PV_ramdisk");
        PvBoot::Kernel(PvKernel {
            kernel: PathBuf::from(vm.str_field("PV_kernel")),
            ramdisk: (!ramdisk.is_empty()).then(|| PathBuf::from(ramdisk)),
            cmdline: vm.str_field("PV_args").to_owned(),
        })
    };
    let kind = match running_domain_type(vm) {
        DomainType::hvm => DomainKind::Hvm(hvm_boot(vm)),
        DomainType::pvh => DomainKind::Pvh(boot),
        _ => DomainKind::Pv(boot),
    };
    let uuid =
        uuid::Uuid::parse_str(vm.uuid().unwrap_or("")).map_err(|_| ApiError::internal("VM has no valid uuid"))?;
    Ok(DomainConfig {
        name: vm.str_field("name_label").to_owned(),
        uuid,
        memory_target: int(vm, f::memory_dynamic_max).max(0) as u64,
        memory_max: int(vm, f::memory_static_max).max(0) as u64,
        vcpus_max: vcpus_max as u32,
        vcpus_at_start: vcpus_start as u32,
        kind,
        tsc_mode: tsc_mode(vm)?,
    })
}

/// The VM's `platform:tsc_mode` (Xen's TSC modes by number or name: `0`/`default`,
/// `1`/`always_emulate`, `2`/`native`); absent or empty leaves the hypervisor's default.
fn tsc_mode(vm: &Object) -> Result<Option<u32>, ApiError> {
    let platform = string_map(vm.get(fields::VM::platform));
    match platform.get("tsc_mode").map(|s| s.trim()) {
        None | Some("") => Ok(None),
        Some("0" | "default") => Ok(Some(0)),
        Some("1" | "always_emulate") => Ok(Some(1)),
        Some("2" | "native") => Ok(Some(2)),
        Some(other) => Err(ApiError::invalid_value("platform:tsc_mode", other)),
    }
}

/// The string pairs of a map field.
fn string_map(v: &Value) -> std::collections::BTreeMap<String, String> {
    v.as_map()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect()
}

/// An HVM VM's boot parameters from its record (`HVM_boot_params`, `platform`); its
/// emulated devices are filled in by [`start_config`].
fn hvm_boot(vm: &Object) -> HvmBoot {
    let params = string_map(vm.get(fields::VM::HVM_boot_params));
    HvmBoot {
        boot_order: params.get("order").cloned().unwrap_or_default(),
        firmware: params.get("firmware").cloned().unwrap_or_default(),
        platform: string_map(vm.get(fields::VM::platform)),
        disks: Vec::new(),
        nics: Vec::new(),
    }
}

/// The domain to start for a VM: [`domain_config`], with the disk a bootloader boot reads
/// resolved to the VM's first bootable disk ([`boot_disk`]), and an HVM guest's emulated
/// disks, CD drives and NICs (its VBDs and VIFs).
pub fn start_config(agent: &Agent, vm: &Object) -> Result<DomainConfig, ApiError> {
    let mut cfg = domain_config(vm)?;
    match &mut cfg.kind {
        DomainKind::Pv(PvBoot::Bootloader(boot)) | DomainKind::Pvh(PvBoot::Bootloader(boot)) => {
            boot.disk = boot_disk(agent, vm)?;
        }
        DomainKind::Hvm(hvm) => {
            let (disks, nics) = devices::emulated(agent, vm)?;
            hvm.disks = disks;
            hvm.nics = nics;
        }
        _ => {}
    }
    Ok(cfg)
}

/// The disk image a VM's bootloader reads: that of its first bootable VBD (`bootable`, not
/// `empty`, with a VDI), in `userdevice` order. The reference's toolstack offers the
/// bootloader every bootable, non-empty VBD, disk or CD alike (a PV installer boots from its
/// CD), and its bootloader reads the first. `None` when the VM has no such VBD.
pub fn boot_disk(agent: &Agent, vm: &Object) -> Result<Option<PathBuf>, ApiError> {
    use fields::VBD as b;
    let mut bootable: Vec<(u32, bool, String)> = vm
        .get(fields::VM::VBDs)
        .as_set()
        .iter()
        .filter_map(|r| r.as_ref_str().and_then(|r| agent.store.get(class_ids::VBD, r)))
        .filter(|v| v.get(b::bootable) == &Value::Bool(true) && v.get(b::empty) != &Value::Bool(true))
        .filter_map(|v| {
            let vdi = v.get(b::VDI).as_ref_str().filter(|r| *r != NULL_REF)?.to_owned();
            let position = v.str_field("userdevice").trim().parse::<u32>().unwrap_or(u32::MAX);
            // At one position a disk comes before a CD.
            Some((position, v.get(b::r#type) != &VbdType::Disk, vdi))
        })
        .collect();
    bootable.sort();
    for (_, _, vdi) in bootable {
        if let Some(path) = devices::vdi_backing(agent, &vdi)? {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Carries out a VM operation (in the VM's actor).
pub async fn perform(agent: &Arc<Agent>, vm: &str, message: &str, args: &[Value]) -> Result<Value, ApiError> {
    match message {
        "start" => {
            refuse_if_disabled(agent)?;
            start(agent, vm, bool_arg(args, 0)).await.map(|_| Value::None)
        }
        "start_on" => {
            let host = args.first().and_then(Value::as_str).unwrap_or("");
            if host != agent.host {
                // Not forwarded: that host is not live (or not there); placement says why.
                crate::pool::placement::check(agent, &*vm_of(agent, vm)?, host, true)?;
                return Err(ApiError::handle_invalid("host", host));
            }
            refuse_if_disabled(agent)?;
            start(agent, vm, bool_arg(args, 1)).await.map(|_| Value::None)
        }
        "pause" => pause(agent, vm, true).await,
        "unpause" => pause(agent, vm, false).await,
        "clean_shutdown" => clean_stop(agent, vm, ShutdownReason::PowerOff).await,
        "hard_shutdown" => hard_shutdown(agent, vm).await,
        "shutdown" => match clean_stop(agent, vm, ShutdownReason::PowerOff).await {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::info!(vm, error = %e, "clean shutdown failed; forcing");
                hard_shutdown(agent, vm).await
            }
        },
        "clean_reboot" => clean_reboot(agent, vm).await,
        "hard_reboot" => {
            let paused = vm_of(agent, vm)?.get(fields::VM::power_state) == &VmPowerState::Paused;
            stop_domain(agent, vm).await?;
            start(agent, vm, paused).await.map(|_| Value::None)
        }
        "suspend" => suspend(agent, vm).await,
        "resume" => resume(agent, vm, bool_arg(args, 0)).await,
        "resume_on" => resume(agent, vm, bool_arg(args, 1)).await,
        "pool_migrate" => super::migrate::pool_migrate(agent, vm, args).await,
        "migrate_send" => super::migrate_send::migrate_send(agent, vm, args).await,
        "power_state_reset" => {
            // A domain only on this host's backend: the VM's domid names nothing here when
            // it is resident on another host (or on a dead one).
            let rec = vm_of(agent, vm)?;
            if let Some(d) = domid_of(&rec).filter(|_| !super::resident_on_other_host(agent, &rec)) {
                let hv = agent.hypervisor.clone();
                let _ = blocking(agent, move || hv.destroy(d)).await;
            }
            mark_halted(agent, vm).await.map(|_| Value::None)
        }
        "destroy" => vm_copy::destroy_vm(agent, vm).await,
        "clone" | "copy" | "snapshot" | "checkpoint" | "revert" | "provision" => {
            vm_copy::perform(agent, vm, message, args).await
        }
        m if m.starts_with("set_") => set_resources(agent, vm, m, args).await,
        other => Err(ApiError::not_implemented(&format!("VM.{other}"))),
    }
}

pub(super) fn domid_of(vm: &Object) -> Option<DomId> {
    let d = vm.get(fields::VM::domid).as_int()?;
    (d >= 0 && vm.get(fields::VM::power_state) != &VmPowerState::Halted).then_some(d as DomId)
}

/// Builds and starts the VM's domain, attaching its devices.
pub async fn start(agent: &Arc<Agent>, vm: &str, paused: bool) -> Result<DomId, ApiError> {
    let rec = vm_of(agent, vm)?;
    let cfg = start_config(agent, &rec)?;
    let hv = agent.hypervisor.clone();
    let domid = on_backend(agent, vm, move || {
        let d = hv.create_domain(&cfg)?;
        if let Err(e) = hv.build(d) {
            if let Err(cleanup) = hv.destroy(d) {
                tracing::warn!(domid = d, error = %cleanup, "start: destroying the unbuilt domain failed");
            }
            return Err(e);
        }
        Ok(d)
    })
    .await?;
    if let Err(e) = devices::attach_all(agent, &rec, domid).await {
        let hv = agent.hypervisor.clone();
        let _ = blocking(agent, move || hv.destroy(domid)).await;
        return Err(e);
    }
    if !paused {
        let hv = agent.hypervisor.clone();
        if let Err(e) = on_backend(agent, vm, move || hv.unpause(domid)).await {
            let hv = agent.hypervisor.clone();
            let _ = blocking(agent, move || hv.destroy(domid)).await;
            return Err(e);
        }
    }
    if let Err(e) = mark_running(agent, vm, domid, paused).await {
        // Not committed (in a pool: no etcd quorum): the domain goes too, so that the database
        // and the host still agree (the VM stays Halted).
        agent.domids.lock().remove(&domid);
        let hv = agent.hypervisor.clone();
        let _ = blocking(agent, move || hv.destroy(domid)).await;
        return Err(e);
    }
    Ok(domid)
}

/// What the backend says about a domain that now runs, for [`mark_running_tx`].
struct RunningFacts {
    domid: DomId,
    free: u64,
    info: Option<crate::hypervisor::DomainInfo>,
}

async fn running_facts(agent: &Arc<Agent>, domid: DomId) -> RunningFacts {
    // One trip to the blocking pool for both.
    let hv = agent.hypervisor.clone();
    let (free, info) = blocking(agent, move || {
        Ok((hv.memory_free().unwrap_or(0), hv.domain_info(domid).ok()))
    })
    .await
    .unwrap_or((0, None));
    RunningFacts { domid, free, info }
}

/// Commits a VM as running (or paused) on this host in `domid`.
pub(super) async fn mark_running(agent: &Arc<Agent>, vm: &str, domid: DomId, paused: bool) -> Result<(), ApiError> {
    let facts = running_facts(agent, domid).await;
    agent.domids.lock().insert(domid, vm.to_owned());
    agent
        .store
        .write(|tx| mark_running_tx(tx, agent, vm, paused, &facts))
        .await
}

fn mark_running_tx(tx: &mut Tx, agent: &Agent, vm: &str, paused: bool, facts: &RunningFacts) -> Result<(), ApiError> {
    use fields::VM as f;
    let RunningFacts { domid, free, ref info } = *facts;
    let host = agent.host.clone();
    let state = if paused {
        VmPowerState::Paused
    } else {
        VmPowerState::Running
    };
    set_field(tx, class_ids::VM, vm, f::power_state, state.value())?;
    set_field(tx, class_ids::VM, vm, f::domid, Value::Int(i64::from(domid)))?;
    set_field(tx, class_ids::VM, vm, f::resident_on, Value::reference(host.as_str()))?;
    let rec = tx.must_get(class_ids::VM, vm)?;
    let domain_type = running_domain_type(&rec);
    set_field(tx, class_ids::VM, vm, f::domain_type, domain_type.value())?;
    // Running with restart priority `restart`, the VM is protected by HA (pool/ha/mod.rs).
    let protect = Value::Bool(rec.get(f::ha_restart_priority).as_str() == Some(crate::pool::ha::RESTART));
    if rec.get(f::ha_always_run) != &protect {
        set_field(tx, class_ids::VM, vm, f::ha_always_run, protect)?;
    }
    if let Some(m) = rec.get(f::metrics).as_ref_str().map(str::to_owned) {
        if tx.get(class_ids::VM_metrics, &m).is_some() {
            use fields::VM_metrics as mf;
            let mem = info
                .as_ref()
                .map_or(int(&rec, f::memory_dynamic_max), |i| i.memory_actual as i64);
            let vcpus = info
                .as_ref()
                .map_or(int(&rec, f::VCPUs_at_startup), |i| i64::from(i.vcpus_online));
            set_field(tx, class_ids::VM_metrics, &m, mf::memory_actual, Value::Int(mem))?;
            set_field(tx, class_ids::VM_metrics, &m, mf::VCPUs_number, Value::Int(vcpus))?;
            set_field(tx, class_ids::VM_metrics, &m, mf::start_time, Value::DateTime(now()))?;
            set_field(
                tx,
                class_ids::VM_metrics,
                &m,
                mf::state,
                Value::set(vec![Value::str(state.name().to_ascii_lowercase())]),
            )?;
            set_field(
                tx,
                class_ids::VM_metrics,
                &m,
                mf::current_domain_type,
                domain_type.value(),
            )?;
            set_field(tx, class_ids::VM_metrics, &m, mf::last_updated, Value::DateTime(now()))?;
        }
    }
    if rec.get(f::consoles).as_set().is_empty() {
        // Every guest's text console; an HVM guest's graphical one too (its device model's VNC).
        let mut protocols = vec![ConsoleProtocol::vt100];
        if domain_type == DomainType::hvm {
            protocols.push(ConsoleProtocol::rfb);
        }
        for protocol in protocols {
            let c = new_ref();
            let mut con = default_object(class_ids::console, &c);
            con.set(fields::console::uuid, Value::str(new_uuid()));
            con.set(fields::console::protocol, protocol.value());
            con.set(fields::console::location, Value::str(agent.console_location(&c)));
            con.set(fields::console::VM, Value::reference(vm));
            create(tx, con)?;
        }
    } else {
        // Consoles kept through a move to this host (`VM.pool_migrate`) are reached here now.
        for c in rec.get(f::consoles).as_set().iter().filter_map(Value::as_ref_str) {
            if tx.get(class_ids::console, c).is_some() {
                let here = Value::str(agent.console_location(c));
                set_field(tx, class_ids::console, c, fields::console::location, here)?;
            }
        }
    }
    devices::mark_attached(tx, &rec, true)?;
    note_host_memory(tx, agent, free)?;
    rules::refresh_vm_and_devices(tx, vm)
}

/// Commits a VM as halted: no domain, devices detached, console gone.
pub async fn mark_halted(agent: &Arc<Agent>, vm: &str) -> Result<(), ApiError> {
    mark_stopped(agent, vm, VmPowerState::Halted).await
}

/// Commits a VM as halted whose domain went without being asked to (its host's daemon
/// restarted, or the domain vanished): unlike a stop, it stays protected by HA, which then
/// restarts it.
pub async fn mark_lost(agent: &Arc<Agent>, vm: &str) -> Result<(), ApiError> {
    let free = stopped_facts(agent, vm).await;
    agent
        .store
        .write(|tx| mark_stopped_as_tx(tx, agent, vm, VmPowerState::Halted, free, false))
        .await
}

async fn mark_stopped(agent: &Arc<Agent>, vm: &str, state: VmPowerState) -> Result<(), ApiError> {
    let free = stopped_facts(agent, vm).await;
    agent
        .store
        .write(|tx| mark_stopped_tx(tx, agent, vm, state, free))
        .await
}

/// Forgets the VM's domain and reads the host's free memory, for [`mark_stopped_tx`].
async fn stopped_facts(agent: &Arc<Agent>, vm: &str) -> u64 {
    let hv = agent.hypervisor.clone();
    let free = blocking(agent, move || hv.memory_free()).await.unwrap_or(0);
    agent.domids.lock().retain(|_, v| v != vm);
    free
}

/// A stop asked for (by a call or by the guest): the VM is no longer protected by HA.
fn mark_stopped_tx(tx: &mut Tx, agent: &Agent, vm: &str, state: VmPowerState, free: u64) -> Result<(), ApiError> {
    mark_stopped_as_tx(tx, agent, vm, state, free, true)
}

fn mark_stopped_as_tx(
    tx: &mut Tx,
    agent: &Agent,
    vm: &str,
    state: VmPowerState,
    free: u64,
    unprotect: bool,
) -> Result<(), ApiError> {
    // A VM the database has on another host is that host's: this host's view was behind (a
    // `VM.pool_migrate` moved it while its old domain's event waited here). In a pool a write
    // that read an older record is run again on the newer one, so this looks at the latest.
    if tx
        .get(class_ids::VM, vm)
        .is_some_and(|rec| super::resident_on_other_host(agent, &rec))
    {
        tracing::info!(vm, "not marking the VM stopped: it runs on another host now");
        return note_host_memory(tx, agent, free);
    }
    stopped_tx(tx, vm, state)?;
    if unprotect && tx.get(class_ids::VM, vm).is_some() {
        set_field(tx, class_ids::VM, vm, fields::VM::ha_always_run, Value::Bool(false))?;
    }
    note_host_memory(tx, agent, free)?;
    rules::refresh_vm_and_devices(tx, vm)
}

/// Resets a VM to Halted in the database alone, as `VM.power_state_reset` does (no domain,
/// resident nowhere, devices detached, no operation in progress): for the VMs of a host declared
/// dead, whose domains are gone with it.
pub(crate) fn reset_halted_tx(tx: &mut Tx, vm: &str) -> Result<(), ApiError> {
    stopped_tx(tx, vm, VmPowerState::Halted)?;
    if tx.get(class_ids::VM, vm).is_some() {
        set_field(
            tx,
            class_ids::VM,
            vm,
            fields::VM::current_operations,
            Value::map(Vec::new()),
        )?;
    }
    rules::refresh_vm_and_devices(tx, vm)
}

/// The record side of a stop: state, domid, residence, consoles, metrics, devices.
fn stopped_tx(tx: &mut Tx, vm: &str, state: VmPowerState) -> Result<(), ApiError> {
    use fields::VM as f;
    let Some(rec) = tx.get(class_ids::VM, vm) else {
        return Ok(());
    };
    set_field(tx, class_ids::VM, vm, f::power_state, state.value())?;
    set_field(tx, class_ids::VM, vm, f::domid, Value::Int(-1))?;
    set_field(tx, class_ids::VM, vm, f::resident_on, Value::null_ref())?;
    for c in rec.get(f::consoles).as_set() {
        if let Some(c) = c.as_ref_str() {
            if tx.get(class_ids::console, c).is_some() {
                destroy(tx, class_ids::console, c)?;
            }
        }
    }
    if let Some(m) = rec.get(f::metrics).as_ref_str().map(str::to_owned) {
        if tx.get(class_ids::VM_metrics, &m).is_some() {
            use fields::VM_metrics as mf;
            set_field(tx, class_ids::VM_metrics, &m, mf::memory_actual, Value::Int(0))?;
            set_field(tx, class_ids::VM_metrics, &m, mf::VCPUs_number, Value::Int(0))?;
            set_field(tx, class_ids::VM_metrics, &m, mf::state, Value::set(Vec::new()))?;
            set_field(tx, class_ids::VM_metrics, &m, mf::last_updated, Value::DateTime(now()))?;
        }
    }
    crate::metrics::guest::clear_tx(tx, &rec)?;
    devices::mark_attached(tx, &rec, false)
}

/// Destroys the VM's domain (if any) without committing a power state.
async fn stop_domain(agent: &Arc<Agent>, vm: &str) -> Result<(), ApiError> {
    let rec = vm_of(agent, vm)?;
    if let Some(d) = domid_of(&rec) {
        let hv = agent.hypervisor.clone();
        match on_backend(agent, vm, move || hv.destroy(d)).await {
            Ok(()) => {}
            // Already gone (the guest powered off and the backend released it): fine.
            Err(e) if domain_gone(agent, d).await => tracing::debug!(vm, error = %e, "domain already gone"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn domain_gone(agent: &Arc<Agent>, d: DomId) -> bool {
    let hv = agent.hypervisor.clone();
    blocking(agent, move || hv.domain_info(d)).await.is_err()
}

async fn hard_shutdown(agent: &Arc<Agent>, vm: &str) -> Result<Value, ApiError> {
    let rec = vm_of(agent, vm)?;
    if rec.get(fields::VM::power_state) == &VmPowerState::Suspended {
        // The image goes and the VM halts in one commit.
        let vdi = remove_suspend_image(agent, &rec);
        let free = stopped_facts(agent, vm).await;
        agent
            .store
            .write(|tx| {
                drop_suspend_vdi_tx(tx, vm, vdi.as_deref())?;
                mark_stopped_tx(tx, agent, vm, VmPowerState::Halted, free)
            })
            .await?;
    } else {
        stop_domain(agent, vm).await?;
        mark_halted(agent, vm).await?;
    }
    Ok(Value::None)
}

/// Asks the guest to stop and waits until its domain has shut down.
async fn ask_and_wait(
    agent: &Arc<Agent>,
    vm: &str,
    reason: ShutdownReason,
) -> Result<(DomId, DomainState, u32), ApiError> {
    let rec = vm_of(agent, vm)?;
    let d = domid_of(&rec).ok_or_else(|| ApiError::internal("the VM has no domain"))?;
    let hv = agent.hypervisor.clone();
    let before = on_backend(agent, vm, move || hv.domain_info(d)).await?.restarts;
    let hv = agent.hypervisor.clone();
    on_backend(agent, vm, move || hv.shutdown(d, reason)).await?;
    let deadline = Instant::now() + CLEAN_SHUTDOWN_TIMEOUT;
    let mut delay = Duration::from_millis(1);
    loop {
        let hv = agent.hypervisor.clone();
        match blocking(agent, move || hv.domain_info(d)).await {
            Err(_) => return Ok((d, DomainState::Dying, before)),
            Ok(info) => match info.state {
                DomainState::Shutdown(_) | DomainState::Dying => return Ok((d, info.state, before)),
                _ if reason == ShutdownReason::Reboot && info.restarts > before => return Ok((d, info.state, before)),
                _ => {}
            },
        }
        if Instant::now() >= deadline {
            return Err(ApiError::VmShutdownTimeout {
                vm: vm.to_owned(),
                timeout: CLEAN_SHUTDOWN_TIMEOUT.as_secs().to_string(),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

async fn clean_stop(agent: &Arc<Agent>, vm: &str, reason: ShutdownReason) -> Result<Value, ApiError> {
    let (d, _, _) = ask_and_wait(agent, vm, reason).await?;
    // Its last console lines reach an open console before the domain (and its pty) goes.
    agent.console_watches.settle(d).await;
    stop_domain(agent, vm).await?;
    mark_halted(agent, vm).await?;
    Ok(Value::None)
}

async fn clean_reboot(agent: &Arc<Agent>, vm: &str) -> Result<Value, ApiError> {
    let (d, state, _) = ask_and_wait(agent, vm, ShutdownReason::Reboot).await?;
    if matches!(state, DomainState::Running | DomainState::Paused) {
        // The backend restarted the domain in place.
        mark_running(agent, vm, d, state == DomainState::Paused).await?;
        return Ok(Value::None);
    }
    agent.console_watches.settle(d).await;
    stop_domain(agent, vm).await?;
    start(agent, vm, false).await?;
    Ok(Value::None)
}

async fn pause(agent: &Arc<Agent>, vm: &str, pause: bool) -> Result<Value, ApiError> {
    let rec = vm_of(agent, vm)?;
    let d = domid_of(&rec).ok_or_else(|| ApiError::internal("the VM has no domain"))?;
    let hv = agent.hypervisor.clone();
    on_backend(agent, vm, move || if pause { hv.pause(d) } else { hv.unpause(d) }).await?;
    agent
        .store
        .write(|tx| {
            let state = if pause {
                VmPowerState::Paused
            } else {
                VmPowerState::Running
            };
            set_field(tx, class_ids::VM, vm, fields::VM::power_state, state.value())?;
            if let Some(m) = rec.get(fields::VM::metrics).as_ref_str() {
                if tx.get(class_ids::VM_metrics, m).is_some() {
                    set_field(
                        tx,
                        class_ids::VM_metrics,
                        m,
                        fields::VM_metrics::state,
                        Value::set(vec![Value::str(state.name().to_ascii_lowercase())]),
                    )?;
                }
            }
            rules::refresh_vm_and_devices(tx, vm)
        })
        .await?;
    Ok(Value::None)
}

fn suspend_path(agent: &Agent, vm: &Object) -> PathBuf {
    agent
        .state_dir
        .join("suspend")
        .join(format!("{}.img", vm.uuid().unwrap_or("unknown")))
}

async fn suspend(agent: &Arc<Agent>, vm: &str) -> Result<Value, ApiError> {
    let rec = vm_of(agent, vm)?;
    let d = domid_of(&rec).ok_or_else(|| ApiError::internal("the VM has no domain"))?;
    let path = suspend_path(agent, &rec);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(ApiError::internal)?;
    }
    let hv = agent.hypervisor.clone();
    let p2 = path.clone();
    on_backend(agent, vm, move || hv.suspend_to(d, &p2)).await?;
    let image = SuspendVdi::of(agent, &path);
    let free = stopped_facts(agent, vm).await;
    // The VM's new state and its suspend VDI in one commit.
    agent
        .store
        .write(|tx| {
            mark_stopped_tx(tx, agent, vm, VmPowerState::Suspended, free)?;
            image.attach(tx, vm)
        })
        .await?;
    Ok(Value::None)
}

/// The VDI record standing for a suspend image on disk, made before the transaction that
/// attaches it (so that no file is looked at under the store's commit lock).
pub(super) struct SuspendVdi {
    sr: String,
    size: i64,
    location: String,
}

impl SuspendVdi {
    /// The image at `path`, in the pool's suspend-image SR.
    pub(super) fn of(agent: &Agent, path: &Path) -> SuspendVdi {
        let size = std::fs::metadata(path).map(|m| m.len() as i64).unwrap_or(0);
        let sr = agent
            .store
            .get(class_ids::pool, &agent.pool_ref())
            .and_then(|p| p.get(fields::pool::suspend_image_SR).as_ref_str().map(str::to_owned))
            .unwrap_or_else(|| NULL_REF.to_owned());
        SuspendVdi {
            sr,
            size,
            location: path.display().to_string(),
        }
    }

    /// Creates the VDI and makes it the VM's `suspend_VDI`.
    pub(super) fn attach(&self, tx: &mut Tx, vm: &str) -> Result<(), ApiError> {
        use fields::VDI as f;
        let r = new_ref();
        let mut vdi = default_object(class_ids::VDI, &r);
        vdi.set(f::uuid, Value::str(new_uuid()));
        vdi.set(f::name_label, Value::str("Suspend image"));
        vdi.set(f::SR, Value::reference(self.sr.as_str()));
        vdi.set(f::r#type, VdiType::suspend.value());
        vdi.set(f::virtual_size, Value::Int(self.size));
        vdi.set(f::physical_utilisation, Value::Int(self.size));
        vdi.set(f::location, Value::str(self.location.clone()));
        create(tx, vdi)?;
        set_field(tx, class_ids::VM, vm, fields::VM::suspend_VDI, Value::reference(r))
    }
}

/// Removes the VM's suspend image file; returns its VDI for [`drop_suspend_vdi_tx`].
fn remove_suspend_image(agent: &Agent, rec: &Object) -> Option<String> {
    let _ = std::fs::remove_file(suspend_path(agent, rec));
    rec.get(fields::VM::suspend_VDI).as_ref_str().map(str::to_owned)
}

/// Clears the VM's `suspend_VDI` and destroys that VDI.
fn drop_suspend_vdi_tx(tx: &mut Tx, vm: &str, vdi: Option<&str>) -> Result<(), ApiError> {
    set_field(tx, class_ids::VM, vm, fields::VM::suspend_VDI, Value::null_ref())?;
    if let Some(v) = vdi {
        if tx.get(class_ids::VDI, v).is_some() {
            destroy(tx, class_ids::VDI, v)?;
        }
    }
    Ok(())
}

async fn resume(agent: &Arc<Agent>, vm: &str, paused: bool) -> Result<Value, ApiError> {
    let rec = vm_of(agent, vm)?;
    let domid = restore(agent, vm, &rec, suspend_path(agent, &rec), paused).await?;
    // The image goes and the VM runs again in one commit.
    let vdi = remove_suspend_image(agent, &rec);
    let facts = running_facts(agent, domid).await;
    agent.domids.lock().insert(domid, vm.to_owned());
    agent
        .store
        .write(|tx| {
            drop_suspend_vdi_tx(tx, vm, vdi.as_deref())?;
            mark_running_tx(tx, agent, vm, paused, &facts)
        })
        .await?;
    Ok(Value::None)
}

/// A domain restored from the image at `path` with the VM's devices attached, unpaused unless
/// `paused` (a resume, or the arriving end of a migration); nothing is committed here.
pub(super) async fn restore(
    agent: &Arc<Agent>,
    vm: &str,
    rec: &Object,
    path: PathBuf,
    paused: bool,
) -> Result<DomId, ApiError> {
    let cfg = domain_config(rec)?;
    let hv = agent.hypervisor.clone();
    let domid = on_backend(agent, vm, move || hv.resume_from(&path, &cfg)).await?;
    if let Err(e) = devices::attach_all(agent, rec, domid).await {
        let hv = agent.hypervisor.clone();
        let _ = blocking(agent, move || hv.destroy(domid)).await;
        return Err(e);
    }
    if !paused {
        let hv = agent.hypervisor.clone();
        on_backend(agent, vm, move || hv.unpause(domid)).await?;
    }
    Ok(domid)
}

/// Memory and vCPU setters (the power state was checked when the operation was marked).
async fn set_resources(agent: &Arc<Agent>, vm: &str, message: &str, args: &[Value]) -> Result<Value, ApiError> {
    use fields::VM as f;
    let rec = vm_of(agent, vm)?;
    let n = |i: usize| args.get(i).and_then(Value::as_int).unwrap_or(0);
    let changes: Vec<(crate::schema::FieldId, i64)> = match message {
        "set_memory_limits" => vec![
            (f::memory_static_min, n(0)),
            (f::memory_static_max, n(1)),
            (f::memory_dynamic_min, n(2)),
            (f::memory_dynamic_max, n(3)),
        ],
        "set_memory_static_range" => vec![(f::memory_static_min, n(0)), (f::memory_static_max, n(1))],
        "set_memory_static_max" => vec![(f::memory_static_max, n(0))],
        "set_memory_static_min" => vec![(f::memory_static_min, n(0))],
        "set_memory_dynamic_range" => vec![(f::memory_dynamic_min, n(0)), (f::memory_dynamic_max, n(1))],
        "set_memory_dynamic_max" => vec![(f::memory_dynamic_max, n(0))],
        "set_memory_dynamic_min" => vec![(f::memory_dynamic_min, n(0))],
        "set_memory" => vec![
            (f::memory_static_max, n(0)),
            (f::memory_dynamic_max, n(0)),
            (f::memory_dynamic_min, n(0)),
        ],
        "set_memory_target_live" => {
            let d = domid_of(&rec).ok_or_else(|| ApiError::internal("the VM has no domain"))?;
            let target = n(0);
            if target < int(&rec, f::memory_dynamic_min) || target > int(&rec, f::memory_dynamic_max) {
                return Err(ApiError::invalid_value("target", target));
            }
            let hv = agent.hypervisor.clone();
            on_backend(agent, vm, move || hv.set_memory_target(d, target as u64)).await?;
            vec![(f::memory_target, target)]
        }
        "set_VCPUs_max" => {
            if n(0) < int(&rec, f::VCPUs_at_startup) || n(0) < 1 {
                return Err(ApiError::invalid_value("VCPUs_max", n(0)));
            }
            if n(0) > i64::from(crate::hypervisor::MAX_VCPUS) {
                return Err(ApiError::VmTooManyVcpus { vm: vm.to_owned() });
            }
            vec![(f::VCPUs_max, n(0))]
        }
        "set_VCPUs_at_startup" => {
            if n(0) < 1 || n(0) > int(&rec, f::VCPUs_max) {
                return Err(ApiError::invalid_value("VCPUs_at_startup", n(0)));
            }
            vec![(f::VCPUs_at_startup, n(0))]
        }
        "set_VCPUs_number_live" => {
            let d = domid_of(&rec).ok_or_else(|| ApiError::internal("the VM has no domain"))?;
            let count = n(0);
            if count < 1 || count > int(&rec, f::VCPUs_max) {
                return Err(ApiError::invalid_value("nvcpu", count));
            }
            let hv = agent.hypervisor.clone();
            on_backend(agent, vm, move || hv.set_vcpus(d, count as u32)).await?;
            if let Some(m) = rec.get(f::metrics).as_ref_str().map(str::to_owned) {
                agent
                    .store
                    .write(|tx| {
                        if tx.get(class_ids::VM_metrics, &m).is_some() {
                            set_field(
                                tx,
                                class_ids::VM_metrics,
                                &m,
                                fields::VM_metrics::VCPUs_number,
                                Value::Int(count),
                            )?;
                        }
                        Ok(())
                    })
                    .await?;
            }
            return Ok(Value::None);
        }
        other => return Err(ApiError::not_implemented(&format!("VM.{other}"))),
    };
    let running_range = message == "set_memory_dynamic_range" && domid_of(&rec).is_some();
    agent
        .store
        .write(|tx| {
            for (field, v) in &changes {
                set_field(tx, class_ids::VM, vm, *field, Value::Int(*v))?;
            }
            check_memory(tx.must_get(class_ids::VM, vm)?.as_ref())
        })
        .await?;
    if running_range {
        if let Some(d) = domid_of(&rec) {
            let target = n(1) as u64;
            let hv = agent.hypervisor.clone();
            on_backend(agent, vm, move || hv.set_memory_target(d, target)).await?;
        }
    }
    Ok(Value::None)
}

/// VM messages that only read or check.
pub async fn query(agent: &Arc<Agent>, vm: &str, message: &str, args: &[Value]) -> Result<Value, ApiError> {
    let rec = vm_of(agent, vm)?;
    match message {
        "assert_operation_valid" => {
            let op = args.first().and_then(Value::as_str).unwrap_or("");
            let store = &agent.store;
            store.write(|tx| rules::check(tx, &rec, op)).await?;
            Ok(Value::None)
        }
        "update_allowed_operations" => {
            agent.store.write(|tx| rules::refresh_vm_and_devices(tx, vm)).await?;
            Ok(Value::None)
        }
        "get_allowed_VBD_devices" => Ok(devices::free_devices(agent, &rec, true)),
        "get_allowed_VIF_devices" => Ok(devices::free_devices(agent, &rec, false)),
        "assert_can_boot_here" => {
            let host = args.first().and_then(Value::as_str).unwrap_or("");
            assert_can_boot_here(agent, &rec, host).await?;
            Ok(Value::None)
        }
        "get_possible_hosts" => {
            let mut hosts = Vec::new();
            for h in agent.store.all(class_ids::host) {
                let ok = if h.reference == agent.host {
                    assert_can_boot_here(agent, &rec, &agent.host).await.is_ok()
                } else {
                    crate::pool::placement::check(agent, &rec, &h.reference, true).is_ok()
                };
                if ok {
                    hosts.push(Value::reference(h.reference.as_str()));
                }
            }
            Ok(Value::set(hosts))
        }
        "get_boot_record" => Ok(Value::Record(rec)),
        other => Err(ApiError::not_implemented(&format!("VM.{other}"))),
    }
}

/// `HOST_DISABLED [this host]` while `host.disable` holds it.
fn refuse_if_disabled(agent: &Agent) -> Result<(), ApiError> {
    if crate::pool::maintenance::is_enabled(agent, &agent.host) {
        Ok(())
    } else {
        Err(ApiError::HostDisabled {
            host: agent.host.clone(),
        })
    }
}

async fn assert_can_boot_here(agent: &Arc<Agent>, vm: &Object, host: &str) -> Result<(), ApiError> {
    if host != agent.host {
        // Another host of the pool (the call is forwarded there when it is reachable).
        return crate::pool::placement::check(agent, vm, host, true);
    }
    if agent.store.is_pooled() {
        crate::pool::placement::check(agent, vm, host, false)?;
    }
    refuse_if_disabled(agent)?;
    let cfg = domain_config(vm)?;
    let hv = agent.hypervisor.clone();
    let free = blocking(agent, move || hv.memory_free()).await?;
    if cfg.memory_max > free {
        return Err(ApiError::HostNotEnoughFreeMemory {
            needed: cfg.memory_max.to_string(),
            available: free.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::schema::{class_ids, fields};
    use crate::storage::tests::{env, Env};
    use crate::value::Value;
    use serde_json::json;
    use std::io::{Seek, SeekFrom, Write};
    use std::time::Duration;

    /// A clone of the shipped "Generic Linux PV" template (PV, `PV_bootloader = pygrub`),
    /// made a VM; with `provision`, it has the template's bootable 10 GiB disk (blank).
    async fn generic_linux_pv(e: &Env, name: &str, provision: bool) -> String {
        let tpl = e
            .agent
            .store
            .all(class_ids::VM)
            .into_iter()
            .find(|v| v.str_field("name_label") == "Generic Linux PV")
            .unwrap();
        assert_eq!(tpl.str_field("PV_bootloader"), "pygrub");
        assert_eq!(tpl.str_field("PV_kernel"), "");
        let vm = e
            .new_ref("VM.clone", vec![json!(tpl.reference.as_str()), json!(name)])
            .await;
        if provision {
            e.ok("VM.provision", vec![json!(vm)]).await;
        }
        e.ok("VM.set_is_a_template", vec![json!(vm), json!(false)]).await;
        vm
    }

    /// The VDI behind the VM's only VBD.
    fn only_vdi(e: &Env, vm: &str) -> String {
        let rec = e.agent.store.get(class_ids::VM, vm).unwrap();
        let vbds = rec.get(fields::VM::VBDs).as_set();
        assert_eq!(vbds.len(), 1);
        let vbd = e.agent.store.get(class_ids::VBD, vbds[0].as_str().unwrap()).unwrap();
        assert_eq!(vbd.get(fields::VBD::bootable), &Value::Bool(true));
        vbd.get(fields::VBD::VDI).as_str().unwrap().to_owned()
    }

    /// Writes an MBR boot signature into the VDI's file, as an installer would have.
    fn write_boot_sector(e: &Env, vdi: &str) {
        let path = crate::storage::vdi_path(&e.agent, vdi).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(510)).unwrap();
        f.write_all(&[0x55, 0xaa]).unwrap();
    }

    fn power_state(e: &Env, vm: &str) -> String {
        e.agent
            .store
            .get(class_ids::VM, vm)
            .unwrap()
            .get(fields::VM::power_state)
            .key_text()
    }

    /// Guest domains the backend has (dom0 left out).
    fn guest_domains(e: &Env) -> usize {
        e.agent
            .hypervisor
            .list_domains()
            .unwrap()
            .iter()
            .filter(|d| d.domid != 0)
            .count()
    }

    async fn start_error(e: &Env, vm: &str) -> crate::ApiError {
        e.call("VM.start", vec![json!(vm), json!(false), json!(false)])
            .await
            .expect_err("VM.start should fail")
    }

    /// A VM the database has running on another host is left alone by this host's stop marks
    /// (a `VM.pool_migrate` moved it while the event of its old domain waited here).
    #[actix::test]
    async fn a_vm_resident_on_another_host_is_not_marked_stopped_here() {
        let e = env().await;
        let vm = generic_linux_pv(&e, "moved away", false).await;
        let other = crate::objects::new_ref();
        let (v, o) = (vm.clone(), other.clone());
        e.agent
            .store
            .write(move |tx| {
                let mut h = crate::value::default_object(class_ids::host, &o);
                h.set(fields::host::uuid, Value::str(crate::objects::new_uuid()));
                crate::objects::create(tx, h)?;
                crate::objects::set_field(
                    tx,
                    class_ids::VM,
                    &v,
                    fields::VM::power_state,
                    crate::schema::enums::VmPowerState::Running.value(),
                )?;
                crate::objects::set_field(tx, class_ids::VM, &v, fields::VM::domid, Value::Int(7))?;
                crate::objects::set_field(
                    tx,
                    class_ids::VM,
                    &v,
                    fields::VM::resident_on,
                    Value::reference(o.as_str()),
                )
            })
            .await
            .unwrap();
        super::mark_halted(&e.agent, &vm).await.unwrap();
        let rec = e.agent.store.get(class_ids::VM, &vm).unwrap();
        assert_eq!(power_state(&e, &vm), "Running");
        assert_eq!(rec.get(fields::VM::resident_on).as_ref_str(), Some(other.as_str()));
        assert_eq!(rec.get(fields::VM::domid).as_int(), Some(7));
        // Resident here, the same mark stops it.
        let (v, h) = (vm.clone(), e.agent.host.clone());
        e.agent
            .store
            .write(move |tx| {
                crate::objects::set_field(
                    tx,
                    class_ids::VM,
                    &v,
                    fields::VM::resident_on,
                    Value::reference(h.as_str()),
                )
            })
            .await
            .unwrap();
        super::mark_halted(&e.agent, &vm).await.unwrap();
        assert_eq!(power_state(&e, &vm), "Halted");
    }

    #[actix::test]
    async fn a_provisioned_generic_linux_pv_clone_boots_through_its_bootloader() {
        let e = env().await;
        let vm = generic_linux_pv(&e, "pv guest", true).await;
        let vdi = only_vdi(&e, &vm);
        // Blank, as provisioned: the bootloader finds nothing to boot; the VM names itself.
        let err = start_error(&e, &vm).await;
        assert_eq!(err.code(), "BOOTLOADER_FAILED", "{err}");
        assert_eq!(err.params()[0], vm);
        assert!(err.params()[1].contains("nothing to boot"), "{err}");
        assert_eq!(power_state(&e, &vm), "Halted");
        assert_eq!(guest_domains(&e), 0, "the unbuilt domain is destroyed");
        // Once something bootable is on the disk, the VM starts and its guest runs as a PV
        // guest, with the VM's PV_args after what the bootloader found.
        write_boot_sector(&e, &vdi);
        e.ok("VM.set_PV_args", vec![json!(vm), json!("console=hvc0 quiet")])
            .await;
        e.ok("VM.start", vec![json!(vm), json!(false), json!(false)]).await;
        assert_eq!(power_state(&e, &vm), "Running");
        let rec = e.agent.store.get(class_ids::VM, &vm).unwrap();
        assert_eq!(rec.get(fields::VM::domain_type).key_text(), "pv");
        let domid = rec.get(fields::VM::domid).as_int().unwrap();
        assert!(domid > 0);
        let info = e.agent.hypervisor.domain_info(domid as u32).unwrap();
        assert_eq!(info.state, crate::hypervisor::DomainState::Running);
        let mut con = e.agent.hypervisor.console_stream(domid as u32).unwrap();
        let (boot, found) = con.read_until_contains("login:", Duration::from_secs(10)).unwrap();
        assert!(found, "{boot}");
        assert!(
            boot.contains("pygrub (xapid simulator): booting the default entry of"),
            "{boot}"
        );
        assert!(boot.contains("Command line: console=hvc0 quiet\n"), "{boot}");
        e.ok("VM.hard_shutdown", vec![json!(vm)]).await;
        // And again after a reboot through the toolstack.
        e.ok("VM.start", vec![json!(vm), json!(true), json!(false)]).await;
        assert_eq!(power_state(&e, &vm), "Paused");
        e.ok("VM.hard_reboot", vec![json!(vm)]).await;
        assert_eq!(power_state(&e, &vm), "Paused");
        e.ok("VM.hard_shutdown", vec![json!(vm)]).await;
        assert_eq!(guest_domains(&e), 0);
    }

    #[actix::test]
    async fn a_pv_bootloader_vm_without_a_bootable_disk_has_no_bootable_device() {
        let e = env().await;
        let vm = generic_linux_pv(&e, "diskless", false).await;
        let err = start_error(&e, &vm).await;
        assert_eq!(err.code(), "INTERNAL_ERROR");
        assert_eq!(err.params(), vec!["there is no bootable device"]);
        assert_eq!(power_state(&e, &vm), "Halted");
        assert_eq!(guest_domains(&e), 0);
        // A disk that is not bootable does not count, even with a boot sector on it.
        let vm = generic_linux_pv(&e, "not bootable", true).await;
        let vdi = only_vdi(&e, &vm);
        write_boot_sector(&e, &vdi);
        let vbd = e
            .agent
            .store
            .get(class_ids::VM, &vm)
            .unwrap()
            .get(fields::VM::VBDs)
            .as_set()[0]
            .as_str()
            .unwrap()
            .to_owned();
        e.ok("VBD.set_bootable", vec![json!(vbd), json!(false)]).await;
        let err = start_error(&e, &vm).await;
        assert_eq!(err.params(), vec!["there is no bootable device"]);
        // Made bootable again, the same disk boots.
        e.ok("VBD.set_bootable", vec![json!(vbd), json!(true)]).await;
        e.ok("VM.start", vec![json!(vm), json!(false), json!(false)]).await;
        e.ok("VM.hard_shutdown", vec![json!(vm)]).await;
    }

    #[actix::test]
    async fn an_unknown_bootloader_is_refused_naming_it_after_the_disk_check() {
        let e = env().await;
        let vm = generic_linux_pv(&e, "grubby", false).await;
        e.ok("VM.set_PV_bootloader", vec![json!(vm), json!("grubby")]).await;
        // No disk comes first, as in the reference.
        let err = start_error(&e, &vm).await;
        assert_eq!(err.params(), vec!["there is no bootable device"]);
        let vm = generic_linux_pv(&e, "grubby disk", true).await;
        write_boot_sector(&e, &only_vdi(&e, &vm));
        e.ok("VM.set_PV_bootloader", vec![json!(vm), json!("grubby")]).await;
        let err = start_error(&e, &vm).await;
        assert_eq!(err.code(), "INTERNAL_ERROR");
        assert!(
            err.params()[0].contains("grubby") && err.params()[0].contains(&vm),
            "{err}"
        );
        assert_eq!(guest_domains(&e), 0);
    }

    #[actix::test]
    async fn a_pv_vm_without_a_bootloader_still_boots_its_kernel_directly() {
        let e = env().await;
        let vm = generic_linux_pv(&e, "direct", false).await;
        e.ok("VM.set_PV_bootloader", vec![json!(vm), json!("")]).await;
        e.ok("VM.set_PV_kernel", vec![json!(vm), json!("/boot/vmlinuz-guest")])
            .await;
        e.ok("VM.set_PV_args", vec![json!(vm), json!("console=hvc0")]).await;
        e.ok("VM.start", vec![json!(vm), json!(false), json!(false)]).await;
        assert_eq!(power_state(&e, &vm), "Running");
        let domid = e
            .agent
            .store
            .get(class_ids::VM, &vm)
            .unwrap()
            .get(fields::VM::domid)
            .as_int()
            .unwrap();
        let mut con = e.agent.hypervisor.console_stream(domid as u32).unwrap();
        let (boot, found) = con.read_until_contains("login:", Duration::from_secs(10)).unwrap();
        assert!(found, "{boot}");
        assert!(boot.contains("Command line: console=hvc0\n"), "{boot}");
        assert!(!boot.contains("pygrub"), "{boot}");
        e.ok("VM.hard_shutdown", vec![json!(vm)]).await;
    }

    #[test]
    fn the_record_alone_leaves_a_bootloader_disk_unresolved() {
        use crate::hypervisor::{DomainKind, PvBoot};
        let mut vm = crate::value::default_object(class_ids::VM, "OpaqueRef:v");
        vm.set(fields::VM::uuid, Value::str("2b7e2f06-5c6e-4a5e-9d5a-0d8f5b0f9a11"));
        vm.set(fields::VM::name_label, Value::str("v"));
        for (f, n) in [
            (fields::VM::memory_static_min, 1i64 << 27),
            (fields::VM::memory_dynamic_min, 1 << 28),
            (fields::VM::memory_dynamic_max, 1 << 28),
            (fields::VM::memory_static_max, 1 << 28),
            (fields::VM::VCPUs_max, 1),
            (fields::VM::VCPUs_at_startup, 1),
        ] {
            vm.set(f, Value::Int(n));
        }
        vm.set(fields::VM::PV_bootloader, Value::str(" pygrub "));
        vm.set(fields::VM::PV_bootloader_args, Value::str("--entry=1"));
        vm.set(fields::VM::PV_legacy_args, Value::str("legacy"));
        vm.set(fields::VM::PV_args, Value::str(" console=hvc0 "));
        let cfg = super::domain_config(&vm).unwrap();
        match cfg.kind {
            DomainKind::Pv(PvBoot::Bootloader(b)) => {
                assert_eq!(b.bootloader, "pygrub");
                assert_eq!(b.disk, None);
                assert_eq!(b.bootloader_argv(), ["--entry=1"]);
                assert_eq!(b.cmdline("root=/dev/xvda1"), "root=/dev/xvda1 legacy console=hvc0");
            }
            other => panic!("{other:?}"),
        }
        vm.set(fields::VM::domain_type, crate::schema::enums::DomainType::hvm.value());
        assert!(matches!(super::domain_config(&vm).unwrap().kind, DomainKind::Hvm(_)));
        // PVH boots from the PV fields, whatever HVM_boot_policy says.
        vm.set(fields::VM::domain_type, crate::schema::enums::DomainType::pvh.value());
        vm.set(fields::VM::HVM_boot_policy, Value::str("BIOS order"));
        match super::domain_config(&vm).unwrap().kind {
            DomainKind::Pvh(PvBoot::Bootloader(b)) => assert_eq!(b.bootloader, "pygrub"),
            other => panic!("{other:?}"),
        }
        vm.set(fields::VM::PV_bootloader, Value::str(""));
        vm.set(fields::VM::PV_kernel, Value::str("/boot/vmlinuz"));
        match super::domain_config(&vm).unwrap().kind {
            DomainKind::Pvh(PvBoot::Kernel(k)) => {
                assert_eq!(k.kernel, std::path::PathBuf::from("/boot/vmlinuz"));
                assert_eq!(k.cmdline, " console=hvc0 ");
            }
            other => panic!("{other:?}"),
        }
    }
}
