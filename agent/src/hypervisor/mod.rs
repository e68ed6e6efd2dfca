//! The hypervisor abstraction the agent's actors talk to.
//!
//! Actors for VMs, VBDs, VIFs and SRs only ever hold an
//! `Arc<dyn Hypervisor>`; which backend sits behind it is decided once at
//! start-up by [`selection::select_backend`]:
//!
//! * [`simulator::SimulatorBackend`] — an in-process host with simulated
//!   guests (memory accounting, state machine, consoles, events, latency and
//!   fault injection). Used in tests and on machines without Xen.
//! * [`xen::XenBackend`] — a real Xen dom0 through the `xenctrl` crate
//!   (libxenctrl, libxenguest in the `xapid-xenguest` helper, xenstore); see
//!   `docs/hypervisor.md`, "The Xen backend". It passes
//!   [`conformance::run_all`] on Xen 4.17 (`tests/xen/run.sh`).
//!
//! # Sync by design
//! Every method is a plain blocking call. On Xen they are ioctls on
//! `/dev/xen/privcmd`, xenstore round trips and (for `build`, `suspend_to`,
//! `resume_from`) long CPU- and IO-bound libxenguest work, so an `async`
//! facade would only hide a thread hop. Async callers (actix/tokio actors)
//! run calls under `tokio::task::spawn_blocking`; the calls are thread safe
//! and independent domains may be driven in parallel. Events arrive on a
//! `crossbeam_channel::Receiver`, which an actor can drain from a dedicated
//! thread or a `spawn_blocking` loop, or turn into a tokio channel with
//! [`forward_to_tokio`].
//!
//! # What callers may assume (the contract)
//! * Domids are never reused while a domain with that id exists; a backend
//!   hands out increasing domids and only wraps at
//!   [`DOMID_FIRST_RESERVED`]. Domain 0 is the control domain; mutating
//!   calls on it fail with [`BackendError::InvalidArgument`].
//! * `create_domain` either fails with no domain left behind, or returns a
//!   *paused, unbuilt* domain that owns `memory_target` bytes of host memory.
//!   `build` loads the kernel (found first by the VM's bootloader on its
//!   bootable disk, for a [`PvBoot::Bootloader`] boot); `unpause` then starts it. A failure *after*
//!   `create_domain` (in `build`, device plugging, ...) leaves the domain in
//!   place: the caller destroys it.
//! * `create_domain` and `resume_from` check free memory up front and fail
//!   with [`BackendError::NotEnoughMemory`] (XenAPI
//!   `HOST_NOT_ENOUGH_FREE_MEMORY [needed, available]`).
//! * `shutdown` only *asks*; it returns once the request is delivered. The
//!   guest may comply immediately, later, or never. Compliance is observed
//!   through a [`BackendEvent::DomainChanged`] and a `domain_info` showing
//!   [`DomainState::Shutdown`]. A shut-down domain keeps its memory until
//!   `destroy`.
//! * A guest may also shut down, reboot or crash on its own at any time;
//!   the same event is emitted.
//! * Reboots: with [`Capabilities::reboot_in_place`] the backend restarts the
//!   guest itself (same domid, `restarts` incremented). Otherwise the domain
//!   stays in `Shutdown(Reboot)` and the caller destroys and re-creates it
//!   (the provided [`Hypervisor::restart`] does exactly that).
//! * `destroy` always works on an existing guest domain, whatever its state,
//!   and frees its memory and devices.
//! * `suspend_to` asks the guest to suspend, saves it to a file and destroys
//!   the domain; `resume_from` creates a new, *paused* domain from that file.
//! * Errors are [`BackendError`] values; those caused by the OS or by
//!   injected faults carry the operation ([`Op`]) and an errno.

pub mod conformance;
mod console;
mod events;
pub mod hvm;
pub mod privileged_calls;
pub mod selection;
pub mod simulator;
mod types;
pub mod xen;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::{fmt, io};

pub use nix::errno::Errno;
use uuid::Uuid;

pub use console::ConsoleStream;
pub use events::{forward_to_tokio, BackendEvent, EventBus, EventReceiver, DEFAULT_EVENT_QUEUE};
pub use hvm::HvmBoot;
pub use selection::{select_backend, BackendChoice};
pub use simulator::{GuestBehaviour, Latency, SimConfig, SimulatorBackend};
pub use types::*;
pub use xen::XenBackend;

/// Every operation of the [`Hypervisor`] trait, used in errors, latency
/// configuration and fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// [`Hypervisor::host_info`]
    HostInfo,
    /// [`Hypervisor::memory_free`]
    MemoryFree,
    /// [`Hypervisor::create_domain`]
    CreateDomain,
    /// [`Hypervisor::build`]
    Build,
    /// [`Hypervisor::unpause`]
    Unpause,
    /// [`Hypervisor::pause`]
    Pause,
    /// [`Hypervisor::shutdown`]
    Shutdown,
    /// [`Hypervisor::destroy`]
    Destroy,
    /// [`Hypervisor::suspend_to`]
    SuspendTo,
    /// [`Hypervisor::resume_from`]
    ResumeFrom,
    /// [`Hypervisor::set_memory_target`]
    SetMemoryTarget,
    /// [`Hypervisor::set_vcpus`]
    SetVcpus,
    /// [`Hypervisor::domain_info`]
    DomainInfo,
    /// [`Hypervisor::list_domains`]
    ListDomains,
    /// [`Hypervisor::plug_block`]
    PlugBlock,
    /// [`Hypervisor::unplug_block`]
    UnplugBlock,
    /// [`Hypervisor::plug_net`]
    PlugNet,
    /// [`Hypervisor::unplug_net`]
    UnplugNet,
    /// [`Hypervisor::list_devices`]
    ListDevices,
    /// [`Hypervisor::console_stream`]
    ConsoleStream,
    /// [`Hypervisor::subscribe`]
    Subscribe,
    /// A guest acting on its own ([`GuestControl`]).
    Guest,
}

impl Op {
    /// All operations.
    pub const ALL: [Op; 22] = [
        Op::HostInfo,
        Op::MemoryFree,
        Op::CreateDomain,
        Op::Build,
        Op::Unpause,
        Op::Pause,
        Op::Shutdown,
        Op::Destroy,
        Op::SuspendTo,
        Op::ResumeFrom,
        Op::SetMemoryTarget,
        Op::SetVcpus,
        Op::DomainInfo,
        Op::ListDomains,
        Op::PlugBlock,
        Op::UnplugBlock,
        Op::PlugNet,
        Op::UnplugNet,
        Op::ListDevices,
        Op::ConsoleStream,
        Op::Subscribe,
        Op::Guest,
    ];

    /// The operation's name, as the trait method is called.
    pub fn name(self) -> &'static str {
        match self {
            Op::HostInfo => "host_info",
            Op::MemoryFree => "memory_free",
            Op::CreateDomain => "create_domain",
            Op::Build => "build",
            Op::Unpause => "unpause",
            Op::Pause => "pause",
            Op::Shutdown => "shutdown",
            Op::Destroy => "destroy",
            Op::SuspendTo => "suspend_to",
            Op::ResumeFrom => "resume_from",
            Op::SetMemoryTarget => "set_memory_target",
            Op::SetVcpus => "set_vcpus",
            Op::DomainInfo => "domain_info",
            Op::ListDomains => "list_domains",
            Op::PlugBlock => "plug_block",
            Op::UnplugBlock => "unplug_block",
            Op::PlugNet => "plug_net",
            Op::UnplugNet => "unplug_net",
            Op::ListDevices => "list_devices",
            Op::ConsoleStream => "console_stream",
            Op::Subscribe => "subscribe",
            Op::Guest => "guest",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of the hypervisor layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The host lacks free memory (XenAPI `HOST_NOT_ENOUGH_FREE_MEMORY`).
    #[error("not enough free memory: {needed} bytes needed, {available} bytes available")]
    NotEnoughMemory {
        /// Bytes the operation needs.
        needed: u64,
        /// Bytes free on the host.
        available: u64,
    },
    /// No domain with this id exists.
    #[error("{op}: no such domain {domid}")]
    NoSuchDomain {
        /// The operation.
        op: Op,
        /// The missing domain.
        domid: DomId,
    },
    /// A live domain already has this uuid.
    #[error("{op}: domain {domid} already has uuid {uuid}")]
    DuplicateDomain {
        /// The operation.
        op: Op,
        /// The uuid asked for.
        uuid: Uuid,
        /// The domain that has it.
        domid: DomId,
    },
    /// The domain is not in a state that allows the operation.
    #[error("{op}: domain {domid} is {state}: {reason}")]
    InvalidState {
        /// The operation.
        op: Op,
        /// The domain.
        domid: DomId,
        /// Its state at the time.
        state: DomainState,
        /// What was wrong.
        reason: String,
    },
    /// A parameter is out of range or inconsistent.
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument {
        /// The operation.
        op: Op,
        /// What was wrong.
        reason: String,
    },
    /// The backend does not implement this (e.g. HVM domains).
    #[error("{op}: {what} is not supported by the {backend} backend")]
    Unsupported {
        /// The operation.
        op: Op,
        /// Backend name.
        backend: &'static str,
        /// The unsupported feature.
        what: String,
    },
    /// No device with this id is plugged.
    #[error("{op}: domain {domid} has no {kind} {devid}")]
    NoSuchDevice {
        /// The operation.
        op: Op,
        /// The domain.
        domid: DomId,
        /// Device kind.
        kind: DeviceKind,
        /// Device id.
        devid: DevId,
    },
    /// A device with this id is already plugged.
    #[error("{op}: domain {domid} already has {kind} {devid}")]
    DeviceExists {
        /// The operation.
        op: Op,
        /// The domain.
        domid: DomId,
        /// Device kind.
        kind: DeviceKind,
        /// Device id.
        devid: DevId,
    },
    /// The device (or its backing) is in use.
    #[error("{op}: {kind} {devid} of domain {domid} is busy: {reason}")]
    DeviceBusy {
        /// The operation.
        op: Op,
        /// The domain.
        domid: DomId,
        /// Device kind.
        kind: DeviceKind,
        /// Device id.
        devid: DevId,
        /// Why.
        reason: String,
    },
    /// A system call (or an injected fault standing in for one) failed.
    #[error("{op}: {detail}: {errno}")]
    Os {
        /// The operation.
        op: Op,
        /// The error number.
        errno: Errno,
        /// What was being done.
        detail: String,
    },
    /// File I/O failed.
    #[error("{op}: {}: {source}", path.display())]
    Io {
        /// The operation.
        op: Op,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A suspend image could not be used.
    #[error("{}: not a usable suspend image: {reason}", path.display())]
    InvalidImage {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The guest did not respond in time.
    #[error("{op}: domain {domid} did not respond within {waited:?}")]
    Timeout {
        /// The operation.
        op: Op,
        /// The domain.
        domid: DomId,
        /// How long the backend waited.
        waited: Duration,
    },
    /// The VM's bootloader could not find or extract what to boot.
    #[error("the bootloader failed: {reason}")]
    BootloaderFailed {
        /// What the bootloader said.
        reason: String,
    },
    /// A PV domain to be booted through its bootloader has no bootable disk.
    #[error("there is no bootable device")]
    NoBootableDevice,
    /// The VM names a bootloader this backend cannot run.
    #[error("unknown bootloader {name:?}")]
    UnknownBootloader {
        /// The name the VM gave.
        name: String,
    },
    /// The backend cannot be used on this host or build.
    #[error("the {backend} backend is unavailable: {reason}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// Why.
        reason: String,
    },
}

impl BackendError {
    /// The operation that failed, when known.
    pub fn op(&self) -> Option<Op> {
        match self {
            BackendError::NoSuchDomain { op, .. }
            | BackendError::DuplicateDomain { op, .. }
            | BackendError::InvalidState { op, .. }
            | BackendError::InvalidArgument { op, .. }
            | BackendError::Unsupported { op, .. }
            | BackendError::NoSuchDevice { op, .. }
            | BackendError::DeviceExists { op, .. }
            | BackendError::DeviceBusy { op, .. }
            | BackendError::Os { op, .. }
            | BackendError::Io { op, .. }
            | BackendError::Timeout { op, .. } => Some(*op),
            BackendError::NotEnoughMemory { .. }
            | BackendError::InvalidImage { .. }
            | BackendError::BootloaderFailed { .. }
            | BackendError::NoBootableDevice
            | BackendError::UnknownBootloader { .. }
            | BackendError::Unavailable { .. } => None,
        }
    }

    /// The errno behind the error, for OS-level failures.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            BackendError::Os { errno, .. } => Some(*errno),
            BackendError::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    /// Shorthand for an [`BackendError::Io`] error.
    pub fn io(op: Op, path: &Path, source: io::Error) -> Self {
        BackendError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A fault to inject into a backend that supports [`FaultInjection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next `count` calls of `op` fail with [`BackendError::Os`]
    /// carrying `errno`, before having any effect.
    FailNext {
        /// Operation to fail.
        op: Op,
        /// How many calls fail.
        count: u32,
        /// The errno reported.
        errno: Errno,
    },
    /// Every call of `op` fails until [`FaultInjection::clear_faults`].
    FailAlways {
        /// Operation to fail.
        op: Op,
        /// The errno reported.
        errno: Errno,
    },
}

impl std::str::FromStr for Fault {
    type Err = String;

    /// `<op>:<ERRNO>` (every call fails) or `<op>:<ERRNO>:<count>` (the next `count` calls),
    /// with the operation as [`Op::name`] spells it and the errno by its name: the form of
    /// `xapid --sim-fault resume_from:EIO:1`.
    fn from_str(s: &str) -> Result<Fault, String> {
        let mut parts = s.split(':');
        let (op, errno, count) = (parts.next(), parts.next(), parts.next());
        if parts.next().is_some() {
            return Err(format!("{s}: more than <op>:<ERRNO>[:<count>]"));
        }
        let op = op.unwrap_or_default();
        let op = Op::ALL
            .into_iter()
            .find(|o| o.name() == op)
            .ok_or_else(|| format!("{s}: no backend operation is called '{op}'"))?;
        let name = errno.unwrap_or_default();
        let errno = (1..4096)
            .map(Errno::from_raw)
            .find(|e| format!("{e:?}") == name)
            .ok_or_else(|| format!("{s}: '{name}' is not an errno name (EIO, ENOMEM, …)"))?;
        match count {
            None => Ok(Fault::FailAlways { op, errno }),
            Some(c) => match c.parse::<u32>() {
                Ok(count) if count > 0 => Ok(Fault::FailNext { op, count, errno }),
                _ => Err(format!("{s}: '{c}' is not a positive count")),
            },
        }
    }
}

/// Optional capability: run-time fault injection (the simulator has it,
/// a production Xen backend does not).
pub trait FaultInjection: Send + Sync {
    /// Arms a fault. Faults for the same operation are consumed in the
    /// order they were injected.
    fn inject(&self, fault: Fault);
    /// Disarms all faults.
    fn clear_faults(&self);
}

/// Optional capability: make a guest act on its own, as a real guest OS
/// might (power off from inside, reboot, crash).
pub trait GuestControl: Send + Sync {
    /// The guest in `domid` shuts itself down with `code`
    /// ([`ShutdownCode::Reboot`] restarts it on backends with
    /// [`Capabilities::reboot_in_place`]). Emits
    /// [`BackendEvent::DomainChanged`].
    fn guest_shutdown(&self, domid: DomId, code: ShutdownCode) -> Result<(), BackendError>;
}

/// When a live save had the guest suspend for its last round (the downtime starts there).
#[derive(Debug, Clone, Copy)]
pub struct LiveSent {
    /// The moment the guest was suspended.
    pub suspended_at: std::time::Instant,
}

/// Optional capability: live migration of a running guest on the same host (Xen's PV and PVH
/// guests): the sending domain's memory copied into a new domain while it runs, in rounds of
/// the pages it dirtied, then a short stop. Errors count as [`Op::SuspendTo`] (sending) and
/// [`Op::ResumeFrom`] (receiving).
pub trait LiveMigration: Send + Sync {
    /// Streams running domain `domid` into `out`: the image header, then the memory while the
    /// guest runs, then (the guest asked to suspend) the rest. The domain is left suspended,
    /// for the caller to destroy once the new domain exists or to let run on with
    /// [`LiveMigration::resume_suspended`]; on a failure after it suspended it runs on.
    fn send_live(&self, domid: DomId, out: OwnedFd) -> Result<LiveSent, BackendError>;
    /// Lets a domain that [`LiveMigration::send_live`] left suspended run on.
    fn resume_suspended(&self, domid: DomId) -> Result<(), BackendError>;
    /// A new, paused domain of `config` restored from what `send_live` writes, read from
    /// `input` as it arrives; the VM's sending domain exists meanwhile (same uuid).
    fn receive_live(&self, input: OwnedFd, config: &DomainConfig) -> Result<DomId, BackendError>;
}

/// `h`'s live migration, or `Unsupported` (counted as [`Op::SuspendTo`]) when it has none.
pub fn live_migration_of<H: Hypervisor + ?Sized>(h: &H) -> Result<&dyn LiveMigration, BackendError> {
    h.live_migration().ok_or_else(|| BackendError::Unsupported {
        op: Op::SuspendTo,
        backend: h.backend_name(),
        what: "live migration".into(),
    })
}

/// A hypervisor backend. Object safe; shared as `Arc<dyn Hypervisor>`.
/// See the module documentation for the contract.
pub trait Hypervisor: Send + Sync {
    /// Short backend name (`simulator`, `xen`) for logs and errors.
    fn backend_name(&self) -> &'static str;

    /// Whether a call may keep the calling thread waiting (on the hypervisor, a device, a
    /// sleep). The agent runs calls of a backend that says so on a blocking thread pool, and
    /// the others inline on its async workers. A backend that cannot tell says `true`.
    fn calls_may_block(&self) -> bool {
        true
    }

    /// Optional behaviours of this backend.
    fn capabilities(&self) -> Capabilities;

    /// Host CPUs, memory, hypervisor version and hostname.
    fn host_info(&self) -> Result<HostInfo, BackendError>;

    /// Bytes of host memory not owned by any domain.
    fn memory_free(&self) -> Result<u64, BackendError>;

    /// Creates a paused, unbuilt domain owning `config.memory_target` bytes
    /// and returns its id. Fails with [`BackendError::NotEnoughMemory`] when
    /// the memory does not fit, [`BackendError::Unsupported`] for HVM,
    /// [`BackendError::DuplicateDomain`] when the uuid is live.
    fn create_domain(&self, config: &DomainConfig) -> Result<DomId, BackendError>;

    /// Loads the kernel/ramdisk into the domain created with
    /// `create_domain`. The domain stays paused. A domain booted through its
    /// bootloader ([`PvBoot::Bootloader`]) first has the bootloader find the
    /// kernel on its disk: without a disk this fails with
    /// [`BackendError::NoBootableDevice`], for a bootloader the backend does
    /// not know with [`BackendError::UnknownBootloader`], and when the
    /// bootloader finds nothing to boot with [`BackendError::BootloaderFailed`].
    fn build(&self, domid: DomId) -> Result<(), BackendError>;

    /// Starts (or resumes running) a built domain.
    fn unpause(&self, domid: DomId) -> Result<(), BackendError>;

    /// Stops scheduling a running domain.
    fn pause(&self, domid: DomId) -> Result<(), BackendError>;

    /// Asks the guest to shut down cleanly; see the module docs.
    fn shutdown(&self, domid: DomId, reason: ShutdownReason) -> Result<(), BackendError>;

    /// Destroys the domain immediately, whatever its state, freeing its
    /// memory and devices.
    fn destroy(&self, domid: DomId) -> Result<(), BackendError>;

    /// Suspends the guest, writes its state to `path` (a new file) and
    /// destroys the domain. On error the domain is left as it was where
    /// possible.
    fn suspend_to(&self, domid: DomId, path: &Path) -> Result<(), BackendError>;

    /// Creates a new, paused domain from a file written by `suspend_to`.
    /// `config` must carry the same uuid as the saved domain.
    fn resume_from(&self, path: &Path, config: &DomainConfig) -> Result<DomId, BackendError>;

    /// Sets the balloon target (bytes, at most `memory_max`).
    fn set_memory_target(&self, domid: DomId, bytes: u64) -> Result<(), BackendError>;

    /// Sets the number of online vCPUs (`1..=vcpus_max`).
    fn set_vcpus(&self, domid: DomId, online: u32) -> Result<(), BackendError>;

    /// A snapshot of one domain (domid 0 included).
    fn domain_info(&self, domid: DomId) -> Result<DomainInfo, BackendError>;

    /// Snapshots of all domains, dom0 first, in domid order.
    fn list_domains(&self) -> Result<Vec<DomainInfo>, BackendError>;

    /// Plugs a block device.
    fn plug_block(&self, domid: DomId, device: &BlockDevice) -> Result<(), BackendError>;

    /// Unplugs a block device.
    fn unplug_block(&self, domid: DomId, devid: DevId, mode: UnplugMode) -> Result<(), BackendError>;

    /// Plugs a network interface.
    fn plug_net(&self, domid: DomId, device: &NetDevice) -> Result<(), BackendError>;

    /// Unplugs a network interface.
    fn unplug_net(&self, domid: DomId, devid: DevId, mode: UnplugMode) -> Result<(), BackendError>;

    /// Devices currently plugged into the domain, block devices first, each
    /// kind in devid order.
    fn list_devices(&self, domid: DomId) -> Result<Vec<DeviceInfo>, BackendError>;

    /// Connects to the domain's text console. Reads yield output (what the
    /// guest printed before the connection is replayed first, as far as the
    /// backend keeps it); writes are keyboard input. End of stream means the
    /// domain went away.
    fn console_stream(&self, domid: DomId) -> Result<ConsoleStream, BackendError>;

    /// Connects to an HVM domain's graphical console: a byte stream speaking RFB (VNC) from
    /// the server's first byte. Backends without one say so with
    /// [`BackendError::Unsupported`] (the default).
    fn vnc_stream(&self, domid: DomId) -> Result<ConsoleStream, BackendError> {
        let _ = domid;
        Err(BackendError::Unsupported {
            op: Op::ConsoleStream,
            backend: self.backend_name(),
            what: "graphical (RFB) consoles".into(),
        })
    }

    /// Subscribes to [`BackendEvent`]s from now on. Dropping the receiver
    /// unsubscribes.
    fn subscribe(&self) -> Result<EventReceiver, BackendError>;

    /// What the guest's own agent has published about it: the nodes the guest tools write
    /// under the domain's xenstore home (`data/…`, `attr/…`, `control/…`, `feature/…`,
    /// `drivers/…`), as paths relative to that home with their values. Empty while the guest
    /// runs no agent (or it has not written yet); a backend without guests' agents says so
    /// with the default, empty.
    fn guest_agent_keys(&self, domid: DomId) -> Result<BTreeMap<String, String>, BackendError> {
        let _ = domid;
        Ok(BTreeMap::new())
    }

    /// Hands the tools of the guest in `domid` the address settings of its interface
    /// `devid` (MAC `mac`): on Xen the nodes under
    /// `xenserver/device/vif/<devid>/static-ip-setting` that XenServer's guest tools watch
    /// and apply, answering in `error-code`/`error-msg` there. Called when the interface
    /// is plugged and when `VIF.configure_ipv4`/`configure_ipv6` change a plugged one.
    fn set_vif_ip_setting(
        &self,
        domid: DomId,
        devid: DevId,
        mac: &MacAddr,
        setting: &VifIpSetting,
    ) -> Result<(), BackendError> {
        let _ = (domid, devid, mac, setting);
        Err(BackendError::Unsupported {
            op: Op::Guest,
            backend: self.backend_name(),
            what: "address settings for guest tools".into(),
        })
    }

    /// Run-time fault injection, if the backend supports it.
    fn fault_injection(&self) -> Option<&dyn FaultInjection> {
        None
    }

    /// Guest self-actions, if the backend can trigger them.
    fn guest_control(&self) -> Option<&dyn GuestControl> {
        None
    }

    /// Live migration on this host, if the backend has it.
    fn live_migration(&self) -> Option<&dyn LiveMigration> {
        None
    }

    /// Reboots by re-creation: destroys `domid` (if it still exists), then
    /// creates, builds and unpauses a new domain from `config`, returning the
    /// new domid. This is what a caller does on `Shutdown(Reboot)` when the
    /// backend lacks [`Capabilities::reboot_in_place`].
    fn restart(&self, domid: DomId, config: &DomainConfig) -> Result<DomId, BackendError> {
        match self.destroy(domid) {
            Ok(()) | Err(BackendError::NoSuchDomain { .. }) => {}
            Err(e) => return Err(e),
        }
        let new = self.create_domain(config)?;
        let started = self.build(new).and_then(|()| self.unpause(new));
        if let Err(e) = started {
            if let Err(cleanup) = self.destroy(new) {
                tracing::warn!(domid = new, error = %cleanup, "restart: cleanup failed");
            }
            return Err(e);
        }
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn trait_is_object_safe_and_shareable() {
        fn assert_send_sync<T: Send + Sync + ?Sized>() {}
        assert_send_sync::<dyn Hypervisor>();
        let sim: Arc<dyn Hypervisor> = Arc::new(SimulatorBackend::new(SimConfig::small_host()));
        let shared: Arc<dyn Hypervisor + Send + Sync> = sim.clone();
        assert_eq!(shared.backend_name(), "simulator");
    }

    #[test]
    fn error_accessors_and_messages() {
        let e = BackendError::Os {
            op: Op::CreateDomain,
            errno: Errno::EIO,
            detail: "injected fault".into(),
        };
        assert_eq!(e.op(), Some(Op::CreateDomain));
        assert_eq!(e.errno(), Some(Errno::EIO));
        let msg = e.to_string();
        assert!(msg.contains("create_domain") && msg.contains("EIO"), "{msg}");
        let e = BackendError::NotEnoughMemory {
            needed: 10,
            available: 5,
        };
        assert_eq!(e.op(), None);
        assert!(e.to_string().contains("10 bytes needed"));
    }
}
