//! The Xen backend: [`XenBackend`] drives a real Xen hypervisor from dom0
//! through the `xenctrl` crate (libxenctrl, libxenguest's `xc_dom_*` PV
//! builder, libxenstore), not through libxl: like xapi's xenopsd, the
//! toolstack owns the domain build and the xenstore layout.
//!
//! * Domains: `xc_domain_create` (PV, uuid as the handle), the xenstore
//!   skeleton ([`layout`]), `build` with libxenguest (from a kernel in dom0,
//!   or one pygrub extracts from the guest's bootable disk: [`bootloader`]), `xs_introduce_domain`,
//!   pause/unpause/destroy with domctls, clean shutdown through the guest's
//!   `control/shutdown` key, balloon target and vCPU availability through
//!   xenstore.
//! * Memory: Xen allocates a PV domain's memory when it is built, so
//!   between `create_domain` and `build` the backend *reserves* the
//!   domain's target itself (libxenctrl's `xc_domain_claim_pages` is not
//!   wrapped by `xenctrl` yet): free memory is Xen's free memory minus the
//!   reservations still outstanding.
//! * Devices ([`devices`]): blkback/netback directories plus the hotplug
//!   work (loop devices, bridge ports) done by the toolstack itself.
//! * Console ([`console`]): the pty xenconsoled creates.
//! * Events ([`watcher`]): a thread watching `@introduceDomain`,
//!   `@releaseDomain` and the backend directories.
//!
//! * HVM ([`devicemodel`]): hvmloader and SeaBIOS loaded by libxenguest, then one
//!   `qemu-system-xen` per domain, supervised: a device model that dies takes its domain
//!   with it. Saving HVM domains is not supported yet ([`BackendError::Unsupported`]).
//!
//! Thread safety: libxenctrl and libxenstore handles are not `Sync`;
//! the backend keeps a small pool of each and every call borrows one, so
//! calls on different domains run in parallel. Only the memory check of
//! `create_domain`/`set_memory_target` and device plugging (read-write
//! sharing check) take a process-wide lock, for milliseconds.

pub mod bootloader;
mod console;
pub mod devicemodel;
mod devices;
mod guest_agent;
mod host;
mod layout;
pub mod saverestore;
mod watcher;
pub mod xenguest;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use uuid::Uuid;
use xenctrl::{
    DomainCreateConfig, DomainInfo as XcDomainInfo, Transaction, XcHandle, XenctrlError, XsHandle, PAGE_SIZE,
};

use super::{
    BackendError, BackendEvent, BlockDevice, Capabilities, ConsoleStream, DevId, DeviceInfo, DeviceKind, DomId,
    DomainConfig, DomainInfo, DomainKind, DomainState, Errno, EventBus, EventReceiver, GuestControl, HostInfo, HvmBoot,
    Hypervisor, HypervisorVersion, LiveMigration, LiveSent, MacAddr, NetDevice, Op, PvBoot, ShutdownCode,
    ShutdownReason, UnplugMode, VifIpSetting, DOM0, DOMID_FIRST_RESERVED,
};
use layout::{
    dom_path, kib, mib_ceil, read_opt, read_record, record_path, rm_quiet, state_of, vm_path, write_domain_skeleton,
    write_vcpus, Record,
};

/// Extra KiB above `memory_max` given to `xc_domain_setmaxmem`, for the
/// pages Xen and the builder add beyond the guest's RAM.
const MAXMEM_SLACK_KIB: u64 = 1024;
/// Further KiB an HVM domain may populate: its device model's video RAM and option ROMs.
const HVM_DM_SLACK_KIB: u64 = 32 * 1024;
/// Idle handles kept per pool.
const POOL_IDLE: usize = 8;
/// How long `destroy` waits for Xen to forget the domain.
const DESTROY_WAIT: Duration = Duration::from_secs(10);
/// Where a backend instance's event thread is told to stop.
const STOP_ROOT: &str = "/xapid/backend-stop";

/// Converts a `xenctrl` error into the backend's error for `op`.
pub(crate) fn xen_err(op: Op, e: XenctrlError) -> BackendError {
    match e {
        XenctrlError::Call { call, errno } => call_err(op, call, errno, String::new()),
        XenctrlError::InvalidArgument { call, reason } => BackendError::InvalidArgument {
            op,
            reason: format!("{call}: {reason}"),
        },
        XenctrlError::InvalidData { call, reason } => BackendError::Os {
            op,
            errno: Errno::EIO,
            detail: format!("{call}: unexpected result: {reason}"),
        },
        e @ (XenctrlError::LibraryMissing { .. } | XenctrlError::LibraryIncompatible { .. }) => unavailable(e),
    }
}

/// A failed C call as [`BackendError::Os`]. libxenguest sometimes fails
/// without setting `errno` (its message goes to the `xentoollog` log):
/// that is reported as `EIO`, saying so.
fn call_err(op: Op, call: &str, errno: i32, context: String) -> BackendError {
    let (errno, note) = if errno == 0 {
        (
            Errno::EIO,
            " without setting errno (see the xentoollog error logged just before)",
        )
    } else {
        (Errno::from_raw(errno), "")
    };
    BackendError::Os {
        op,
        errno,
        detail: format!("{call} failed{context}{note}"),
    }
}

/// The error `XenBackend::open` returns when a handle cannot be opened.
fn unavailable(e: XenctrlError) -> BackendError {
    let hint = match e.call() {
        Some("xc_interface_open") => " (cannot use /dev/xen/privcmd: not a Xen control domain, or not running as root)",
        Some("xs_open") => " (cannot reach xenstored: is it running in dom0?)",
        _ => "",
    };
    BackendError::Unavailable {
        backend: "xen",
        reason: format!("{e}{hint}"),
    }
}

/// A built or restored domain's xenstore and console rings.
struct Rings {
    store_mfn: u64,
    store_port: u32,
    console_mfn: u64,
    console_port: u32,
}

/// Publishes a built or restored domain's rings (for xenconsoled and the guest), marks the
/// record built, and introduces the domain to xenstored.
fn publish_rings(xs: &XsHandle, domid: DomId, rings: Rings) -> Result<(), BackendError> {
    let dom_p = dom_path(domid);
    let record_p = record_path(domid);
    let err = |e| xen_err(Op::Build, e);
    xs.with_transaction(|tx| {
        for (key, value) in [
            ("store/ring-ref", rings.store_mfn.to_string()),
            ("store/port", rings.store_port.to_string()),
            ("console/ring-ref", rings.console_mfn.to_string()),
            ("console/port", rings.console_port.to_string()),
            ("console/limit", "1048576".to_string()),
            ("console/type", "xenconsoled".to_string()),
            ("console/output", "pty".to_string()),
        ] {
            xs.write(tx, &format!("{dom_p}/{key}"), value.as_bytes())?;
        }
        xs.write(tx, &format!("{record_p}/built"), b"1")
    })
    .map_err(err)?;
    xs.introduce_domain(domid, rings.store_mfn, rings.store_port)
        .map_err(err)
}

/// Handles of one kind, opened on demand and reused.
struct Pool<T> {
    idle: Mutex<Vec<T>>,
    open: fn() -> xenctrl::Result<T>,
}

impl<T> Pool<T> {
    fn new(open: fn() -> xenctrl::Result<T>, first: T) -> Self {
        Pool {
            idle: Mutex::new(vec![first]),
            open,
        }
    }

    /// Runs `f` with a handle of its own.
    fn with<R>(&self, op: Op, f: impl FnOnce(&T) -> Result<R, BackendError>) -> Result<R, BackendError> {
        let pooled = self.idle.lock().pop();
        let handle = match pooled {
            Some(h) => h,
            None => (self.open)().map_err(|e| xen_err(op, e))?,
        };
        let result = f(&handle);
        // A connection that broke is not reused.
        let broken = matches!(
            &result,
            Err(BackendError::Os { errno, .. })
                if matches!(*errno, Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN | Errno::EBADF)
        );
        let mut idle = self.idle.lock();
        if !broken && idle.len() < POOL_IDLE {
            idle.push(handle);
        }
        result
    }
}

/// A domain as Xen and the toolstack's record describe it.
struct Dom {
    info: XcDomainInfo,
    record: Option<Record>,
}

impl Dom {
    fn domid(&self) -> DomId {
        self.info.domid
    }

    fn state(&self) -> DomainState {
        state_of(&self.info.flags, self.info.shutdown_reason)
    }

    /// Domains not created by this toolstack exist, so they are built.
    fn built(&self) -> bool {
        self.record.as_ref().is_none_or(|r| r.built)
    }

    fn invalid(&self, op: Op, reason: impl Into<String>) -> BackendError {
        BackendError::InvalidState {
            op,
            domid: self.domid(),
            state: self.state(),
            reason: reason.into(),
        }
    }

    /// Fails unless the domain is running or paused.
    fn ensure_alive(&self, op: Op) -> Result<(), BackendError> {
        match self.state() {
            DomainState::Running | DomainState::Paused => Ok(()),
            DomainState::Shutdown(_) | DomainState::Dying => Err(self.invalid(op, "the guest has shut down")),
        }
    }
}

/// The Xen backend. See the module documentation.
pub struct XenBackend {
    xc: Pool<XcHandle>,
    xs: Pool<XsHandle>,
    bus: Arc<EventBus>,
    /// Serialises free-memory checks with the reservations they lead to.
    memory_lock: Mutex<()>,
    /// Serialises device plugging (read-write sharing check).
    device_lock: Mutex<()>,
    /// Memory reserved for created but not yet built domains, bytes.
    reservations: Arc<Mutex<HashMap<DomId, u64>>>,
    /// The device models of HVM domains.
    dms: devicemodel::DeviceModels,
    stop: Arc<AtomicBool>,
    stop_path: String,
    /// Where domain builds run (the `xapid-xenguest` helper, unless in-process is chosen).
    builds: xenguest::BuildMode,
}

impl std::fmt::Debug for XenBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenBackend").finish_non_exhaustive()
    }
}

impl XenBackend {
    /// Connects to the hypervisor (libxenctrl, `/dev/xen/privcmd`) and to
    /// xenstored, picks up the reservations of domains this toolstack
    /// created but has not built, and starts the event thread.
    ///
    /// Fails with [`BackendError::Unavailable`] naming the failing call and
    /// its errno, e.g. `xc_interface_open failed: No such file or directory
    /// (errno 2, ENOENT)` on a machine that is not a Xen dom0, or the Xen
    /// library that is not installed.
    pub fn open() -> Result<Self, BackendError> {
        let xc = XcHandle::open().map_err(unavailable)?;
        xc.physinfo().map_err(unavailable)?;
        let xs = XsHandle::open().map_err(unavailable)?;
        let backend = XenBackend {
            xc: Pool::new(XcHandle::open, xc),
            xs: Pool::new(XsHandle::open, xs),
            bus: Arc::new(EventBus::default()),
            memory_lock: Mutex::new(()),
            device_lock: Mutex::new(()),
            reservations: Arc::new(Mutex::new(HashMap::new())),
            dms: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            stop_path: format!("{STOP_ROOT}/{}", Uuid::new_v4()),
            builds: xenguest::build_mode().ok_or_else(|| BackendError::Unavailable {
                backend: "xen",
                reason: format!(
                    "{} not found (XAPID_XENGUEST, next to the daemon, PATH); install it, or set \
                     XAPID_XENGUEST={} to build domains inside the daemon",
                    xenguest::HELPER_NAME,
                    xenguest::IN_PROCESS
                ),
            })?,
        };
        match &backend.builds {
            xenguest::BuildMode::Helper(h) => {
                tracing::info!(helper = %h.display(), "xen: domain builds run in a helper process")
            }
            xenguest::BuildMode::InProcess => {
                tracing::warn!("xen: XAPID_XENGUEST=in-process: domain builds run inside the daemon")
            }
        }
        match bootloader::pygrub_path() {
            Some(p) => tracing::info!(pygrub = %p.display(), "xen: PV guests with a bootloader boot through pygrub"),
            None => tracing::warn!(
                "xen: pygrub not found ({}, {}, PATH): PV guests with a bootloader cannot start",
                bootloader::PYGRUB_ENV,
                bootloader::PYGRUB_DEFAULT
            ),
        }
        backend.recover_reservations()?;
        watcher::spawn(
            Arc::clone(&backend.bus),
            Arc::clone(&backend.stop),
            backend.stop_path.clone(),
        )?;
        Ok(backend)
    }

    /// Rebuilds the reservations of unbuilt domains from their records
    /// (after a daemon restart).
    fn recover_reservations(&self) -> Result<(), BackendError> {
        let op = Op::MemoryFree;
        self.xc.with(op, |xc| {
            self.xs.with(op, |xs| {
                let live = xc.list_domains().map_err(|e| xen_err(op, e))?;
                let mut res = self.reservations.lock();
                for d in live.iter().filter(|d| d.domid != DOM0 && !d.flags.dying) {
                    if let Ok(Some(r)) = read_record(xs, Transaction::NONE, d.domid) {
                        if !r.built {
                            res.insert(d.domid, r.target);
                        }
                    }
                }
                Ok(())
            })
        })
    }

    fn with_handles<R>(
        &self,
        op: Op,
        f: impl FnOnce(&XcHandle, &XsHandle) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        self.xc.with(op, |xc| self.xs.with(op, |xs| f(xc, xs)))
    }

    /// Looks a domain up. Dying domains that have no record left (this
    /// toolstack destroyed them; Xen is still releasing them) count as
    /// gone.
    fn find(&self, op: Op, xc: &XcHandle, xs: &XsHandle, domid: DomId) -> Result<Dom, BackendError> {
        let missing = BackendError::NoSuchDomain { op, domid };
        if domid >= DOMID_FIRST_RESERVED {
            return Err(missing);
        }
        let info = match xc.domain_info(domid) {
            Ok(info) => info,
            Err(e) if e.errno() == Some(libc::ESRCH) => return Err(missing),
            Err(e) => return Err(xen_err(op, e)),
        };
        let record = if domid == DOM0 {
            None
        } else {
            read_record(xs, Transaction::NONE, domid).map_err(|e| xen_err(op, e))?
        };
        if info.flags.dying && record.is_none() {
            return Err(missing);
        }
        Ok(Dom { info, record })
    }

    /// [`Self::find`] for mutating calls: dom0 is refused.
    fn guest(&self, op: Op, xc: &XcHandle, xs: &XsHandle, domid: DomId) -> Result<Dom, BackendError> {
        if domid == DOM0 {
            return Err(BackendError::InvalidArgument {
                op,
                reason: "domain 0 is the control domain".into(),
            });
        }
        self.find(op, xc, xs, domid)
    }

    /// Xen's free memory minus outstanding reservations.
    fn free_memory(&self, op: Op, xc: &XcHandle) -> Result<u64, BackendError> {
        let phys = xc.physinfo().map_err(|e| xen_err(op, e))?;
        let reserved = self.reservations.lock().clone();
        let mut pending = 0u64;
        if !reserved.is_empty() {
            for d in xc.list_domains().map_err(|e| xen_err(op, e))? {
                if let Some(r) = reserved.get(&d.domid) {
                    pending += r.saturating_sub(d.tot_pages.saturating_mul(PAGE_SIZE));
                }
            }
        }
        Ok(phys.free_memory.saturating_sub(pending))
    }

    /// What the memory a domain owns right now: its pages, plus what is
    /// still reserved for it.
    fn memory_actual(&self, dom: &Dom) -> u64 {
        let pages = dom.info.tot_pages.saturating_mul(PAGE_SIZE);
        let reserved = self.reservations.lock().get(&dom.domid()).copied().unwrap_or(0);
        pages.max(reserved)
    }

    fn describe(&self, xs: &XsHandle, dom: &Dom) -> DomainInfo {
        let info = &dom.info;
        let domid = info.domid;
        let base = DomainInfo {
            domid,
            uuid: Uuid::from_bytes(info.handle),
            name: String::new(),
            state: dom.state(),
            built: dom.built(),
            memory_target: 0,
            memory_actual: self.memory_actual(dom),
            memory_max: info.max_memory_kib.saturating_mul(1024),
            vcpus_max: info.vcpus_max,
            vcpus_online: info.vcpus_online,
            cpu_time: Duration::from_nanos(info.cpu_time_ns),
            restarts: 0,
        };
        match &dom.record {
            Some(r) => DomainInfo {
                name: r.config.name.clone(),
                memory_target: r.target,
                memory_max: r.config.memory_max,
                vcpus_max: r.config.vcpus_max,
                vcpus_online: r.vcpus,
                ..base
            },
            None => {
                let dom = dom_path(domid);
                let read = |key: &str| read_opt(xs, Transaction::NONE, &format!("{dom}/{key}")).ok().flatten();
                let name = read("name").unwrap_or_else(|| {
                    if domid == DOM0 {
                        "Domain-0".into()
                    } else {
                        format!("domain-{domid}")
                    }
                });
                let memory_target = read("memory/target")
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .map(|k| k * 1024)
                    .unwrap_or(base.memory_actual);
                DomainInfo {
                    name,
                    memory_target,
                    memory_max: base.memory_max.max(memory_target),
                    ..base
                }
            }
        }
    }

    /// Removes everything a destroyed (or half-created) domain left in
    /// xenstore and in dom0; returns the devices it had. Best effort.
    fn clean_up(&self, xc: &XcHandle, xs: &XsHandle, domid: DomId, uuid: Uuid) -> Vec<(DeviceKind, DevId)> {
        let dm = self.dms.lock().remove(&domid);
        if let Some(dm) = dm {
            dm.stop();
        }
        clean_up_domain(xc, xs, domid, uuid, &self.reservations)
    }

    fn publish(&self, event: BackendEvent) {
        self.bus.publish(event);
    }
}

/// What [`XenBackend::clean_up`] does once the device model (if any) is gone.
fn clean_up_domain(
    xc: &XcHandle,
    xs: &XsHandle,
    domid: DomId,
    uuid: Uuid,
    reservations: &Mutex<HashMap<DomId, u64>>,
) -> Vec<(DeviceKind, DevId)> {
    let devices = devices::teardown_all(xs, domid);
    if let Err(e) = xs.release_domain(domid) {
        tracing::debug!(domid, error = %e, "xs_release_domain");
    }
    let vm = vm_path(&uuid);
    let removed = xs.with_transaction(|tx| {
        rm_quiet(xs, tx, &dom_path(domid))?;
        rm_quiet(xs, tx, &record_path(domid))?;
        rm_quiet(xs, tx, &format!("/local/domain/0/device-model/{domid}"))?;
        rm_quiet(xs, tx, &format!("{vm}/domains/{domid}"))?;
        if layout::list_opt(xs, tx, &format!("{vm}/domains"))?.is_empty() {
            rm_quiet(xs, tx, &vm)?;
        }
        Ok(())
    });
    if let Err(e) = removed {
        tracing::warn!(domid, error = %e, "removing a destroyed domain from xenstore failed");
    }
    reservations.lock().remove(&domid);
    // Wait (bounded) until Xen has released the domain, so that its
    // memory is free and its domid unused when we return.
    let deadline = Instant::now() + DESTROY_WAIT;
    while Instant::now() < deadline {
        match xc.domain_info(domid) {
            Err(_) => break,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    devices
}

/// A device model exited on its own: its domain cannot run without it. Destroys the domain
/// (the VM becomes Halted when the agent sees it gone) and says so in the log.
fn device_model_died(
    domid: DomId,
    uuid: Uuid,
    status: std::process::ExitStatus,
    bus: &EventBus,
    dms: &devicemodel::DeviceModels,
    reservations: &Mutex<HashMap<DomId, u64>>,
) {
    tracing::error!(domid, %uuid, %status, "xen: the device model of domain {domid} exited: destroying the domain");
    dms.lock().remove(&domid);
    let cleaned = XcHandle::open().and_then(|xc| {
        let xs = XsHandle::open()?;
        match xc.domain_destroy(domid) {
            Err(e) if e.errno() != Some(libc::ESRCH) => return Err(e),
            _ => {}
        }
        Ok(clean_up_domain(&xc, &xs, domid, uuid, reservations))
    });
    match cleaned {
        Ok(devices) => {
            for (kind, devid) in devices {
                bus.publish(BackendEvent::DeviceChanged { domid, kind, devid });
            }
        }
        Err(e) => tracing::error!(domid, error = %e, "xen: destroying the domain of a dead device model failed"),
    }
    bus.publish(BackendEvent::DomainChanged(domid));
}

/// The builder a domain kind needs.
fn container_of(kind: &DomainKind) -> xenguest::Container {
    match kind {
        DomainKind::Pv(_) => xenguest::Container::Pv,
        DomainKind::Pvh(_) => xenguest::Container::Pvh,
        DomainKind::Hvm(_) => xenguest::Container::Hvm,
    }
}

/// The system firmware hvmloader starts, as its xenstore key `hvmloader/bios` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firmware {
    /// SeaBIOS: BIOS boot.
    Seabios,
    /// OVMF: UEFI boot (`HVM_boot_params:firmware=uefi`).
    Ovmf,
}

impl Firmware {
    fn key(self) -> &'static str {
        match self {
            Firmware::Seabios => "seabios",
            Firmware::Ovmf => "ovmf",
        }
    }
}

/// hvmloader and the firmware image an HVM domain boots (SeaBIOS, or OVMF for UEFI), checked
/// to be there.
fn hvm_firmware(op: Op, hvm: &HvmBoot) -> Result<(std::path::PathBuf, std::path::PathBuf, Firmware), BackendError> {
    let missing = |what: String| BackendError::Os {
        op,
        errno: Errno::ENOENT,
        detail: what,
    };
    let loader = devicemodel::hvmloader_path().ok_or_else(|| {
        missing(format!(
            "hvmloader not found (/usr/lib/xen-*/boot/hvmloader, {})",
            devicemodel::HVMLOADER_ENV
        ))
    })?;
    let (image, kind) = if hvm.uefi() {
        let ovmf = devicemodel::ovmf_path();
        if !ovmf.is_file() {
            return Err(missing(format!(
                "the UEFI image {} is missing (Debian package ovmf, or {})",
                ovmf.display(),
                devicemodel::OVMF_ENV
            )));
        }
        (ovmf, Firmware::Ovmf)
    } else {
        let bios = devicemodel::bios_path();
        if !bios.is_file() {
            return Err(missing(format!(
                "the BIOS image {} is missing (Debian package seabios, or {})",
                bios.display(),
                devicemodel::BIOS_ENV
            )));
        }
        (bios, Firmware::Seabios)
    };
    let qemu = devicemodel::qemu_path();
    if !qemu.is_file() {
        return Err(missing(format!(
            "the device model {} is missing (Debian package qemu-system-xen, or {})",
            qemu.display(),
            devicemodel::QEMU_ENV
        )));
    }
    Ok((loader, image, kind))
}

/// What hvmloader reads from the domain's xenstore home: which firmware it was given, and
/// that it must not relocate RAM (QEMU could not follow).
fn write_hvmloader_keys(xs: &XsHandle, domid: DomId, firmware: Firmware) -> xenctrl::Result<()> {
    let home = dom_path(domid);
    xs.with_transaction(|tx| {
        xs.write(tx, &format!("{home}/hvmloader/bios"), firmware.key().as_bytes())?;
        xs.write(tx, &format!("{home}/hvmloader/allow-memory-relocate"), b"0")
    })
}

impl XenBackend {
    /// Starts and records an HVM domain's device model (see [`devicemodel`]); `incoming` is
    /// the devices' state of a restored domain.
    fn start_device_model(
        &self,
        xs: &XsHandle,
        domid: DomId,
        config: &DomainConfig,
        hvm: &HvmBoot,
        incoming: Option<&[u8]>,
    ) -> Result<(), BackendError> {
        let state_key = format!("/local/domain/0/device-model/{domid}/state");
        let ready = || matches!(read_opt(xs, Transaction::NONE, &state_key), Ok(Some(s)) if s.trim() == "running");
        let (bus, dms, reservations, uuid) = (
            Arc::clone(&self.bus),
            Arc::clone(&self.dms),
            Arc::clone(&self.reservations),
            config.uuid,
        );
        let on_exit = move |status| device_model_died(domid, uuid, status, &bus, &dms, &reservations);
        let dm = devicemodel::start(domid, config, hvm, incoming, ready, on_exit)?;
        self.dms.lock().insert(domid, dm);
        Ok(())
    }

    /// Tells an HVM domain's device model to stop or go on (`stop`/`cont`) with the domain.
    fn device_model_run(&self, domid: DomId, run: bool) {
        let command = if run { "cont" } else { "stop" };
        let dms = self.dms.lock();
        if let Some(dm) = dms.get(&domid) {
            if let Err(e) = dm.qmp(command) {
                tracing::warn!(domid, error = %e, "xen: device model {command} failed");
            }
        }
    }

    /// The serial pty of an HVM domain's device model.
    fn serial_pty(&self, domid: DomId) -> Option<std::path::PathBuf> {
        self.dms.lock().get(&domid).and_then(|dm| dm.serial.clone())
    }
}

impl Drop for XenBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the event thread, which watches this node.
        let woke = self.xs.with(Op::Subscribe, |xs| {
            xs.write(Transaction::NONE, &self.stop_path, b"stop")
                .map_err(|e| xen_err(Op::Subscribe, e))
        });
        if let Err(e) = woke {
            tracing::warn!(error = %e, "cannot stop the xen event thread");
        }
    }
}

impl XenBackend {
    /// `create_domain`; `incoming`: the domain receives a live migration on this host, while
    /// the VM's sending domain (same uuid) still exists.
    fn create_domain_as(&self, config: &DomainConfig, incoming: bool) -> Result<DomId, BackendError> {
        let op = Op::CreateDomain;
        config.validate(op)?;
        let container = container_of(&config.kind);
        let slack = if container == xenguest::Container::Hvm {
            MAXMEM_SLACK_KIB + HVM_DM_SLACK_KIB
        } else {
            MAXMEM_SLACK_KIB
        };
        let domid = self.with_handles(op, |xc, xs| {
            let _memory = self.memory_lock.lock();
            for d in xc.list_domains().map_err(|e| xen_err(op, e))? {
                if !incoming && d.domid != DOM0 && !d.flags.dying && Uuid::from_bytes(d.handle) == config.uuid {
                    return Err(BackendError::DuplicateDomain {
                        op,
                        uuid: config.uuid,
                        domid: d.domid,
                    });
                }
            }
            let available = self.free_memory(op, xc)?;
            if config.memory_target > available {
                return Err(BackendError::NotEnoughMemory {
                    needed: config.memory_target,
                    available,
                });
            }
            let domid = xc
                .domain_create(&DomainCreateConfig {
                    guest: container.guest_type(),
                    handle: *config.uuid.as_bytes(),
                    max_vcpus: config.vcpus_max,
                    ..DomainCreateConfig::default()
                })
                .map_err(|e| xen_err(op, e))?;
            self.reservations.lock().insert(domid, config.memory_target);
            let setup = xc
                .domain_max_vcpus(domid, config.vcpus_max)
                .and_then(|()| match config.tsc_mode {
                    Some(mode) => xc.domain_set_tsc_mode(domid, mode),
                    None => Ok(()),
                })
                .and_then(|()| xc.domain_set_max_mem(domid, kib(config.memory_max) + slack))
                // As libxl sets it for PVH guests: their platform timers do not hold back
                // guest time while the domain waits for a CPU.
                .and_then(|()| match container {
                    xenguest::Container::Pvh => {
                        xc.domain_set_timer_mode(domid, xenctrl::TimerMode::NoDelayForMissedTicks)
                    }
                    _ => Ok(()),
                })
                .and_then(|()| xs.with_transaction(|tx| write_domain_skeleton(xs, tx, domid, config)));
            if let Err(e) = setup {
                if let Err(d) = xc.domain_destroy(domid) {
                    tracing::warn!(domid, error = %d, "create_domain: cleanup destroy failed");
                }
                self.clean_up(xc, xs, domid, config.uuid);
                return Err(xen_err(op, e));
            }
            Ok(domid)
        })?;
        tracing::info!(domid, name = %config.name, uuid = %config.uuid, kind = config.kind.as_str(), "xen: domain created");
        self.publish(BackendEvent::DomainChanged(domid));
        Ok(domid)
    }
}

impl LiveMigration for XenBackend {
    fn send_live(&self, domid: DomId, out: std::os::fd::OwnedFd) -> Result<LiveSent, BackendError> {
        self.send_live(domid, out)
    }

    fn resume_suspended(&self, domid: DomId) -> Result<(), BackendError> {
        self.resume_suspended(domid)
    }

    fn receive_live(&self, input: std::os::fd::OwnedFd, config: &DomainConfig) -> Result<DomId, BackendError> {
        self.receive_live(input, config)
    }
}

/// Guests acting on their own, for the conformance suite: Xen's remote shutdown
/// (`xc_domain_shutdown`, `SCHEDOP_remote_shutdown`) puts the domain in the state its own
/// `SCHEDOP_shutdown` would, with the same code, and Xen announces it the same way
/// (`VIRQ_DOM_EXC`, `@releaseDomain`); what the toolstack sees is what a guest powering off,
/// crashing or rebooting by itself makes it see. (A real guest's own poweroff is the
/// end-to-end run's.)
impl GuestControl for XenBackend {
    fn guest_shutdown(&self, domid: DomId, code: ShutdownCode) -> Result<(), BackendError> {
        let op = Op::Guest;
        let reason = match code {
            ShutdownCode::PowerOff => xenctrl::ShutdownReason::Poweroff,
            ShutdownCode::Reboot => xenctrl::ShutdownReason::Reboot,
            ShutdownCode::Suspend => xenctrl::ShutdownReason::Suspend,
            ShutdownCode::Crash => xenctrl::ShutdownReason::Crash,
            ShutdownCode::Watchdog => xenctrl::ShutdownReason::Watchdog,
        };
        self.with_handles(op, |xc, xs| {
            let dom = self.guest(op, xc, xs, domid)?;
            dom.ensure_alive(op)?;
            xc.domain_shutdown(domid, reason).map_err(|e| xen_err(op, e))
        })?;
        tracing::info!(domid, code = %code, "xen: the domain shut down as its guest would");
        self.publish(BackendEvent::DomainChanged(domid));
        Ok(())
    }
}

impl Hypervisor for XenBackend {
    fn backend_name(&self) -> &'static str {
        "xen"
    }

    fn guest_control(&self) -> Option<&dyn GuestControl> {
        Some(self)
    }

    fn live_migration(&self) -> Option<&dyn LiveMigration> {
        Some(self)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            reboot_in_place: false,
            hvm: true,
            suspend_resume: true,
        }
    }

    fn host_info(&self) -> Result<HostInfo, BackendError> {
        let op = Op::HostInfo;
        self.xc.with(op, |xc| {
            let phys = xc.physinfo().map_err(|e| xen_err(op, e))?;
            let version = xc.version().map_err(|e| xen_err(op, e))?;
            let mut cpu = host::local_cpu();
            cpu.count = phys.nr_cpus;
            if phys.cpu_khz > 0 {
                cpu.speed_mhz = f64::from(phys.cpu_khz) / 1000.0;
            }
            Ok(HostInfo {
                hostname: host::hostname(),
                cpu,
                memory_total: phys.total_memory,
                memory_free: self.free_memory(op, xc)?,
                hypervisor: HypervisorVersion {
                    name: "xen".into(),
                    major: version.major,
                    minor: version.minor,
                    extra: version.extra,
                },
            })
        })
    }

    fn memory_free(&self) -> Result<u64, BackendError> {
        let op = Op::MemoryFree;
        self.xc.with(op, |xc| self.free_memory(op, xc))
    }

    fn create_domain(&self, config: &DomainConfig) -> Result<DomId, BackendError> {
        self.create_domain_as(config, false)
    }

    fn build(&self, domid: DomId) -> Result<(), BackendError> {
        let op = Op::Build;
        self.with_handles(op, |xc, xs| {
            let dom = self.guest(op, xc, xs, domid)?;
            dom.ensure_alive(op)?;
            let Some(record) = &dom.record else {
                return Err(dom.invalid(op, "not created by this toolstack"));
            };
            if record.built {
                return Err(dom.invalid(op, "already built"));
            }
            let memory_mib = u32::try_from(mib_ceil(record.target)).map_err(|_| BackendError::InvalidArgument {
                op,
                reason: format!("memory target {} too large", record.target),
            })?;
            // A bootloader's files live until the build has loaded them (`_extracted` drops
            // them at the end of this closure, whatever happens).
            let mut firmware = None;
            let (kernel, ramdisk, cmdline, _extracted) = match &record.config.kind {
                DomainKind::Pv(PvBoot::Kernel(k)) | DomainKind::Pvh(PvBoot::Kernel(k)) => {
                    (k.kernel.clone(), k.ramdisk.clone(), k.cmdline.clone(), None)
                }
                DomainKind::Pv(PvBoot::Bootloader(b)) | DomainKind::Pvh(PvBoot::Bootloader(b)) => {
                    let x = bootloader::extract(b)?;
                    tracing::info!(domid, kernel = %x.kernel.display(), args = %x.args, "xen: the bootloader extracted a kernel");
                    (x.kernel.clone(), x.ramdisk.clone(), b.cmdline(&x.args), Some(x))
                }
                DomainKind::Hvm(hvm) => {
                    let (loader, image, kind) = hvm_firmware(op, hvm)?;
                    write_hvmloader_keys(xs, domid, kind).map_err(|e| xen_err(op, e))?;
                    tracing::info!(domid, firmware = kind.key(), image = %image.display(), "xen: HVM firmware");
                    firmware = Some(image);
                    (loader, None, String::new(), None)
                }
            };
            let err = |e| xen_err(op, e);
            let store_port = xc.evtchn_alloc_unbound(domid, DOM0).map_err(err)?;
            let console_port = xc.evtchn_alloc_unbound(domid, DOM0).map_err(err)?;
            let container = container_of(&record.config.kind);
            let request = xenguest::BuildRequest {
                domid,
                container,
                firmware,
                kernel: kernel.clone(),
                ramdisk: ramdisk.clone(),
                cmdline,
                memory_mib,
                max_vcpus: record.config.vcpus_max,
                online_vcpus: record.config.vcpus_at_start,
                console_evtchn: console_port,
                xenstore_evtchn: store_port,
            };
            let outcome = match &self.builds {
                xenguest::BuildMode::Helper(helper) => xenguest::build_in_helper(helper, &request)?,
                xenguest::BuildMode::InProcess => xenguest::build_in_process(xc, &request),
            };
            let built = outcome.map_err(|f| {
                call_err(
                    op,
                    &f.call,
                    f.errno,
                    format!(
                        " ({} kernel {}, ramdisk {ramdisk:?}, {memory_mib} MiB)",
                        record.config.kind.as_str(),
                        kernel.display()
                    ),
                )
            })?;
            publish_rings(
                xs,
                domid,
                Rings {
                    store_mfn: built.xenstore_mfn,
                    store_port,
                    console_mfn: built.console_mfn,
                    console_port,
                },
            )?;
            self.reservations.lock().remove(&domid);
            if let DomainKind::Hvm(hvm) = &record.config.kind {
                self.start_device_model(xs, domid, &record.config, hvm, None)?;
            }
            Ok(())
        })?;
        tracing::info!(domid, "xen: domain built");
        self.publish(BackendEvent::DomainChanged(domid));
        Ok(())
    }

    fn unpause(&self, domid: DomId) -> Result<(), BackendError> {
        let op = Op::Unpause;
        let changed = self.with_handles(op, |xc, xs| {
            let dom = self.guest(op, xc, xs, domid)?;
            dom.ensure_alive(op)?;
            if !dom.built() {
                return Err(dom.invalid(op, "not built yet"));
            }
            if !dom.info.flags.paused {
                return Ok(false);
            }
            self.device_model_run(domid, true);
            xc.domain_unpause(domid).map_err(|e| xen_err(op, e))?;
            Ok(true)
        })?;
        if changed {
            self.publish(BackendEvent::DomainChanged(domid));
        }
        Ok(())
    }

    fn pause(&self, domid: DomId) -> Result<(), BackendError> {
        let op = Op::Pause;
        let changed = self.with_handles(op, |xc, xs| {
            let dom = self.guest(op, xc, xs, domid)?;
            dom.ensure_alive(op)?;
            if dom.info.flags.paused {
                return Ok(false);
            }
            xc.domain_pause(domid).map_err(|e| xen_err(op, e))?;
            self.device_model_run(domid, false);
            Ok(true)
        })?;
        if changed {
            self.publish(BackendEvent::DomainChanged(domid));
        }
        Ok(())
    }

    fn shutdown(&self, domid: DomId, reason: ShutdownReason) -> Result<(), BackendError> {
        let op = Op::Shutdown;
        self.with_handles(op, |xc, xs| {
            let dom = self.guest(op, xc, xs, domid)?;
            dom.ensure_alive(op)?;
            xs.write(
                Transaction::NONE,
                &format!("{}/control/shutdown", dom_path(domid)),
                reason.as_xenstore_str().as_bytes(),
            )
            .map_err(|e| xen_err(op, e))
        })?;
        tracing::info!(domid, reason = reason.as_xenstore_str(), "xen: shutdown requested");
        Ok(())
    }

    fn destroy(&self, domid: DomId) -> Result<(), BackendError> {
        let op = Op::Destroy;
        let devices = self.with_handles(op, |xc, xs| {
            let dom = self.guest(op, xc, xs, domid)?;
            // An HVM domain's device model goes first (expected to exit: not a crash).
            let dm = self.dms.lock().remove(&domid);
            if let Some(dm) = dm {
                dm.stop();
            }
            match xc.domain_destroy(domid) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::ESRCH) => return Err(BackendError::NoSuchDomain { op, domid }),
                Err(e) => return Err(xen_err(op, e)),
            }
            let uuid = dom
                .record
                .as_ref()
                .map(|r| r.config.uuid)
                .unwrap_or_else(|| Uuid::from_bytes(dom.info.handle));
            Ok(self.clean_up(xc, xs, domid, uuid))
        })?;
        tracing::info!(domid, "xen: domain destroyed");
        for (kind, devid) in devices {
            self.publish(BackendEvent::DeviceChanged { domid, kind, devid });
        }
        self.publish(BackendEvent::DomainChanged(domid));
        Ok(())
    }

    fn suspend_to(&self, domid: DomId, path: &Path) -> Result<(), BackendError> {
        self.save_domain(domid, path)
    }

    fn resume_from(&self, path: &Path, config: &DomainConfig) -> Result<DomId, BackendError> {
        self.restore_domain(path, config)
    }

    fn set_memory_target(&self, domid: DomId, bytes: u64) -> Result<(), BackendError> {
        let op = Op::SetMemoryTarget;
        self.with_handles(op, |xc, xs| {
            let dom = self.guest(op, xc, xs, domid)?;
            dom.ensure_alive(op)?;
            let max = dom
                .record
                .as_ref()
                .map(|r| r.config.memory_max)
                .unwrap_or(dom.info.max_memory_kib.saturating_mul(1024));
            if bytes == 0 || bytes > max {
                return Err(BackendError::InvalidArgument {
                    op,
                    reason: format!("memory target {bytes} not in 1..={max}"),
                });
            }
            let _memory = self.memory_lock.lock();
            let actual = self.memory_actual(&dom);
            if bytes > actual {
                let needed = bytes - actual;
                let available = self.free_memory(op, xc)?;
                if needed > available {
                    return Err(BackendError::NotEnoughMemory { needed, available });
                }
            }
            let has_record = dom.record.is_some();
            xs.with_transaction(|tx| {
                xs.write(
                    tx,
                    &format!("{}/memory/target", dom_path(domid)),
                    kib(bytes).to_string().as_bytes(),
                )?;
                if has_record {
                    xs.write(
                        tx,
                        &format!("{}/target", record_path(domid)),
                        bytes.to_string().as_bytes(),
                    )?;
                }
                Ok(())
            })
            .map_err(|e| xen_err(op, e))?;
            if !dom.built() {
                self.reservations.lock().insert(domid, bytes);
            }
            Ok(())
        })?;
        self.publish(BackendEvent::DomainChanged(domid));
        Ok(())
    }

    fn set_vcpus(&self, domid: DomId, online: u32) -> Result<(), BackendError> {
        let op = Op::SetVcpus;
        self.with_handles(op, |xc, xs| {
            let dom = self.guest(op, xc, xs, domid)?;
            dom.ensure_alive(op)?;
            let max = dom
                .record
                .as_ref()
                .map(|r| r.config.vcpus_max)
                .unwrap_or(dom.info.vcpus_max);
            if online == 0 || online > max {
                return Err(BackendError::InvalidArgument {
                    op,
                    reason: format!("{online} vCPUs not in 1..={max}"),
                });
            }
            xs.with_transaction(|tx| write_vcpus(xs, tx, domid, max, online))
                .map_err(|e| xen_err(op, e))
        })?;
        self.publish(BackendEvent::DomainChanged(domid));
        Ok(())
    }

    fn domain_info(&self, domid: DomId) -> Result<DomainInfo, BackendError> {
        let op = Op::DomainInfo;
        self.with_handles(op, |xc, xs| {
            let dom = self.find(op, xc, xs, domid)?;
            Ok(self.describe(xs, &dom))
        })
    }

    fn set_vif_ip_setting(
        &self,
        domid: DomId,
        devid: DevId,
        mac: &MacAddr,
        setting: &VifIpSetting,
    ) -> Result<(), BackendError> {
        let op = Op::Guest;
        self.with_handles(op, |xc, xs| {
            self.guest(op, xc, xs, domid)?;
            guest_agent::write_ip_setting(xs, domid, devid, mac, setting).map_err(|e| xen_err(op, e))
        })
    }

    fn guest_agent_keys(&self, domid: DomId) -> Result<std::collections::BTreeMap<String, String>, BackendError> {
        let op = Op::DomainInfo;
        self.with_handles(op, |xc, xs| {
            self.guest(op, xc, xs, domid)?;
            guest_agent::read(xs, domid).map_err(|e| xen_err(op, e))
        })
    }

    fn list_domains(&self) -> Result<Vec<DomainInfo>, BackendError> {
        let op = Op::ListDomains;
        self.with_handles(op, |xc, xs| {
            let mut out = Vec::new();
            for info in xc.list_domains().map_err(|e| xen_err(op, e))? {
                let domid = info.domid;
                let record = if domid == DOM0 {
                    None
                } else {
                    read_record(xs, Transaction::NONE, domid).map_err(|e| xen_err(op, e))?
                };
                if info.flags.dying && record.is_none() {
                    continue;
                }
                out.push(self.describe(xs, &Dom { info, record }));
            }
            out.sort_by_key(|d| d.domid);
            Ok(out)
        })
    }

    fn plug_block(&self, domid: DomId, device: &BlockDevice) -> Result<(), BackendError> {
        self.plug(Op::PlugBlock, DeviceKind::Block, domid, device.devid, |xs| {
            devices::plug_block(xs, domid, device)
        })
    }

    fn unplug_block(&self, domid: DomId, devid: DevId, mode: UnplugMode) -> Result<(), BackendError> {
        self.unplug(Op::UnplugBlock, DeviceKind::Block, domid, devid, mode)
    }

    fn plug_net(&self, domid: DomId, device: &NetDevice) -> Result<(), BackendError> {
        self.plug(Op::PlugNet, DeviceKind::Net, domid, device.devid, |xs| {
            devices::plug_net(xs, domid, device)
        })
    }

    fn unplug_net(&self, domid: DomId, devid: DevId, mode: UnplugMode) -> Result<(), BackendError> {
        self.unplug(Op::UnplugNet, DeviceKind::Net, domid, devid, mode)
    }

    fn list_devices(&self, domid: DomId) -> Result<Vec<DeviceInfo>, BackendError> {
        let op = Op::ListDevices;
        self.with_handles(op, |xc, xs| {
            self.find(op, xc, xs, domid)?;
            devices::list(xs, op, domid)
        })
    }

    fn console_stream(&self, domid: DomId) -> Result<ConsoleStream, BackendError> {
        let op = Op::ConsoleStream;
        let tty = self.with_handles(op, |xc, xs| {
            let dom = self.find(op, xc, xs, domid)?;
            if !dom.built() {
                return Err(dom.invalid(op, "not built yet: no console"));
            }
            // An HVM guest's text console is its first serial line, on the device model.
            if let Some(pty) = self.serial_pty(domid) {
                return Ok(pty.to_string_lossy().into_owned());
            }
            console::wait_tty(xs, domid)
        })?;
        console::open_pty(Path::new(&tty))
    }

    fn vnc_stream(&self, domid: DomId) -> Result<ConsoleStream, BackendError> {
        let op = Op::ConsoleStream;
        let socket = self.with_handles(op, |xc, xs| {
            self.find(op, xc, xs, domid)?;
            self.dms
                .lock()
                .get(&domid)
                .map(devicemodel::DeviceModel::vnc_path)
                .ok_or_else(|| BackendError::Unsupported {
                    op,
                    backend: "xen",
                    what: format!("a graphical console for domain {domid}, which has no device model"),
                })
        })?;
        let stream = std::os::unix::net::UnixStream::connect(&socket).map_err(|e| BackendError::io(op, &socket, e))?;
        Ok(ConsoleStream::from_owned_fd(std::os::fd::OwnedFd::from(stream)))
    }

    fn subscribe(&self) -> Result<EventReceiver, BackendError> {
        Ok(self.bus.subscribe())
    }
}

impl XenBackend {
    /// Plugs a device into a live guest (under the device lock) and announces it.
    fn plug(
        &self,
        op: Op,
        kind: DeviceKind,
        domid: DomId,
        devid: DevId,
        attach: impl FnOnce(&XsHandle) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        self.with_handles(op, |xc, xs| {
            let dom = self.guest(op, xc, xs, domid)?;
            dom.ensure_alive(op)?;
            let _devices = self.device_lock.lock();
            attach(xs)
        })?;
        self.publish(BackendEvent::DeviceChanged { domid, kind, devid });
        Ok(())
    }

    fn unplug(
        &self,
        op: Op,
        kind: DeviceKind,
        domid: DomId,
        devid: DevId,
        mode: UnplugMode,
    ) -> Result<(), BackendError> {
        self.with_handles(op, |xc, xs| {
            let dom = self.guest(op, xc, xs, domid)?;
            let guest = match dom.state() {
                DomainState::Running => devices::Guest::Running,
                DomainState::Paused => devices::Guest::Paused,
                DomainState::Shutdown(_) | DomainState::Dying => devices::Guest::Gone,
            };
            devices::unplug(xs, op, kind, domid, devid, mode, guest)
        })?;
        self.publish(BackendEvent::DeviceChanged { domid, kind, devid });
        Ok(())
    }
}
