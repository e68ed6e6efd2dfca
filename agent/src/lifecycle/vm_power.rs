//! VM power operations: start, shutdown, reboot, pause, suspend, resume — run by the VM's
//! actor, against the hypervisor backend, committing the VM's runtime fields only when the
//! backend has done its part.

use super::{blocking, devices, note_host_memory, rules, vm_copy};
use crate::error::ApiError;
use crate::hypervisor::{DomId, DomainConfig, DomainKind, DomainState, PvBoot, ShutdownReason};
use crate::objects::{create, destroy, new_ref, new_uuid, set_field};
use crate::schema::{class_ids, fields};
use crate::store::Tx;
use crate::value::{default_object, now, Object, Value, NULL_REF};
use crate::Agent;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a clean shutdown or reboot waits for the guest.
pub const CLEAN_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(300);

fn vm_of(agent: &Agent, vm: &str) -> Result<Arc<Object>, ApiError> {
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

/// The domain a VM record describes.
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
    let hvm = !vm.str_field("HVM_boot_policy").is_empty() || vm.get(f::domain_type) == &Value::Enum("hvm");
    let kind = if hvm {
        DomainKind::Hvm
    } else {
        let ramdisk = vm.str_field("PV_ramdisk");
        DomainKind::Pv(PvBoot {
            kernel: PathBuf::from(vm.str_field("PV_kernel")),
            ramdisk: (!ramdisk.is_empty()).then(|| PathBuf::from(ramdisk)),
            cmdline: vm.str_field("PV_args").to_owned(),
        })
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
    })
}

/// Carries out a VM operation (in the VM's actor).
pub async fn perform(agent: &Arc<Agent>, vm: &str, message: &str, args: &[Value]) -> Result<Value, ApiError> {
    match message {
        "start" => start(agent, vm, bool_arg(args, 0)).await.map(|_| Value::None),
        "start_on" => {
            let host = args.first().and_then(Value::as_str).unwrap_or("");
            if host != agent.host {
                return Err(ApiError::handle_invalid("host", host));
            }
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
            let paused = vm_of(agent, vm)?.get(fields::VM::power_state) == &Value::Enum("Paused");
            stop_domain(agent, vm).await?;
            start(agent, vm, paused).await.map(|_| Value::None)
        }
        "suspend" => suspend(agent, vm).await,
        "resume" => resume(agent, vm, bool_arg(args, 0)).await,
        "resume_on" => resume(agent, vm, bool_arg(args, 1)).await,
        "power_state_reset" => {
            if let Some(d) = domid_of(&*vm_of(agent, vm)?) {
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

fn domid_of(vm: &Object) -> Option<DomId> {
    let d = vm.get(fields::VM::domid).as_int()?;
    (d >= 0 && vm.get(fields::VM::power_state) != &Value::Enum("Halted")).then_some(d as DomId)
}

/// Builds and starts the VM's domain, attaching its devices.
pub async fn start(agent: &Arc<Agent>, vm: &str, paused: bool) -> Result<DomId, ApiError> {
    let rec = vm_of(agent, vm)?;
    let cfg = domain_config(&rec)?;
    let hv = agent.hypervisor.clone();
    let domid = blocking(agent, move || {
        let d = hv.create_domain(&cfg)?;
        if let Err(e) = hv.build(d) {
            let _ = hv.destroy(d);
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
        if let Err(e) = blocking(agent, move || hv.unpause(domid)).await {
            let hv = agent.hypervisor.clone();
            let _ = blocking(agent, move || hv.destroy(domid)).await;
            return Err(e);
        }
    }
    mark_running(agent, vm, domid, paused).await?;
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
async fn mark_running(agent: &Arc<Agent>, vm: &str, domid: DomId, paused: bool) -> Result<(), ApiError> {
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
    let state = if paused { "Paused" } else { "Running" };
    set_field(tx, class_ids::VM, vm, f::power_state, Value::Enum(state))?;
    set_field(tx, class_ids::VM, vm, f::domid, Value::Int(i64::from(domid)))?;
    set_field(tx, class_ids::VM, vm, f::resident_on, Value::reference(host.as_str()))?;
    let rec = tx.must_get(class_ids::VM, vm)?;
    let domain_type = if rec.str_field("HVM_boot_policy").is_empty() && rec.get(f::domain_type) != &Value::Enum("hvm") {
        "pv"
    } else {
        "hvm"
    };
    set_field(tx, class_ids::VM, vm, f::domain_type, Value::Enum(domain_type))?;
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
                Value::set(vec![Value::str(state.to_ascii_lowercase())]),
            )?;
            set_field(
                tx,
                class_ids::VM_metrics,
                &m,
                mf::current_domain_type,
                Value::Enum(domain_type),
            )?;
            set_field(tx, class_ids::VM_metrics, &m, mf::last_updated, Value::DateTime(now()))?;
        }
    }
    if rec.get(f::consoles).as_set().is_empty() {
        let c = new_ref();
        let mut con = default_object(class_ids::console, &c);
        con.set(fields::console::uuid, Value::str(new_uuid()));
        con.set(fields::console::protocol, Value::Enum("vt100"));
        con.set(fields::console::location, Value::str(agent.console_location(&c)));
        con.set(fields::console::VM, Value::reference(vm));
        create(tx, con)?;
    }
    devices::mark_attached(tx, &rec, true)?;
    note_host_memory(tx, agent, free)?;
    rules::refresh_vm_and_devices(tx, vm)
}

/// Commits a VM as halted: no domain, devices detached, console gone.
pub async fn mark_halted(agent: &Arc<Agent>, vm: &str) -> Result<(), ApiError> {
    mark_stopped(agent, vm, "Halted").await
}

async fn mark_stopped(agent: &Arc<Agent>, vm: &str, state: &'static str) -> Result<(), ApiError> {
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

fn mark_stopped_tx(tx: &mut Tx, agent: &Agent, vm: &str, state: &'static str, free: u64) -> Result<(), ApiError> {
    use fields::VM as f;
    let Some(rec) = tx.get(class_ids::VM, vm) else {
        return Ok(());
    };
    set_field(tx, class_ids::VM, vm, f::power_state, Value::Enum(state))?;
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
    devices::mark_attached(tx, &rec, false)?;
    note_host_memory(tx, agent, free)?;
    rules::refresh_vm_and_devices(tx, vm)
}

/// Destroys the VM's domain (if any) without committing a power state.
async fn stop_domain(agent: &Arc<Agent>, vm: &str) -> Result<(), ApiError> {
    let rec = vm_of(agent, vm)?;
    if let Some(d) = domid_of(&rec) {
        let hv = agent.hypervisor.clone();
        match blocking(agent, move || hv.destroy(d)).await {
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
    if rec.get(fields::VM::power_state) == &Value::Enum("Suspended") {
        // The image goes and the VM halts in one commit.
        let vdi = remove_suspend_image(agent, &rec);
        let free = stopped_facts(agent, vm).await;
        agent
            .store
            .write(|tx| {
                drop_suspend_vdi_tx(tx, vm, vdi.as_deref())?;
                mark_stopped_tx(tx, agent, vm, "Halted", free)
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
    let before = blocking(agent, move || hv.domain_info(d)).await?.restarts;
    let hv = agent.hypervisor.clone();
    blocking(agent, move || hv.shutdown(d, reason)).await?;
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
    ask_and_wait(agent, vm, reason).await?;
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
    stop_domain(agent, vm).await?;
    start(agent, vm, false).await?;
    Ok(Value::None)
}

async fn pause(agent: &Arc<Agent>, vm: &str, pause: bool) -> Result<Value, ApiError> {
    let rec = vm_of(agent, vm)?;
    let d = domid_of(&rec).ok_or_else(|| ApiError::internal("the VM has no domain"))?;
    let hv = agent.hypervisor.clone();
    blocking(agent, move || if pause { hv.pause(d) } else { hv.unpause(d) }).await?;
    agent
        .store
        .write(|tx| {
            let state = if pause { "Paused" } else { "Running" };
            set_field(tx, class_ids::VM, vm, fields::VM::power_state, Value::Enum(state))?;
            if let Some(m) = rec.get(fields::VM::metrics).as_ref_str() {
                if tx.get(class_ids::VM_metrics, m).is_some() {
                    set_field(
                        tx,
                        class_ids::VM_metrics,
                        m,
                        fields::VM_metrics::state,
                        Value::set(vec![Value::str(state.to_ascii_lowercase())]),
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
    blocking(agent, move || hv.suspend_to(d, &p2)).await?;
    let image = SuspendVdi::of(agent, &path);
    let free = stopped_facts(agent, vm).await;
    // The VM's new state and its suspend VDI in one commit.
    agent
        .store
        .write(|tx| {
            mark_stopped_tx(tx, agent, vm, "Suspended", free)?;
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
            .get(class_ids::pool, &agent.pool)
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
        vdi.set(f::r#type, Value::Enum("suspend"));
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
    let cfg = domain_config(&rec)?;
    let path = suspend_path(agent, &rec);
    let hv = agent.hypervisor.clone();
    let domid = blocking(agent, move || hv.resume_from(&path, &cfg)).await?;
    if let Err(e) = devices::attach_all(agent, &rec, domid).await {
        let hv = agent.hypervisor.clone();
        let _ = blocking(agent, move || hv.destroy(domid)).await;
        return Err(e);
    }
    if !paused {
        let hv = agent.hypervisor.clone();
        blocking(agent, move || hv.unpause(domid)).await?;
    }
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
            blocking(agent, move || hv.set_memory_target(d, target as u64)).await?;
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
            blocking(agent, move || hv.set_vcpus(d, count as u32)).await?;
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
            blocking(agent, move || hv.set_memory_target(d, target)).await?;
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
        "get_possible_hosts" => Ok(Value::set(match assert_can_boot_here(agent, &rec, &agent.host).await {
            Ok(()) => vec![Value::reference(agent.host.as_str())],
            Err(_) => vec![],
        })),
        "get_boot_record" => Ok(Value::Record(rec)),
        other => Err(ApiError::not_implemented(&format!("VM.{other}"))),
    }
}

async fn assert_can_boot_here(agent: &Arc<Agent>, vm: &Object, host: &str) -> Result<(), ApiError> {
    if host != agent.host {
        return Err(ApiError::handle_invalid("host", host));
    }
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
