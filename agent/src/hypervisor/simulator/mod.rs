//! [`SimulatorBackend`]: an in-process host with simulated guests.
//!
//! It behaves like a small Xen host as seen through the [`Hypervisor`]
//! trait:
//!
//! * host CPUs and memory are configurable ([`SimConfig`]); the defaults are
//!   this machine's, from `/proc/cpuinfo` and `/proc/meminfo`. Domain 0
//!   exists from the start and owns `dom0_memory`;
//! * domids are allocated monotonically from 1 and never reused while live;
//!   memory is accounted exactly: `create_domain` claims `memory_target`,
//!   ballooning moves it, `destroy` and `suspend_to` free it;
//! * PV guests booted through their bootloader have it simulated when they
//!   are built: it reads the start of the disk image and finds nothing to boot
//!   on a blank disk (see the `bootloader` module for the rule);
//! * guests "run": they print a boot banner on their console when first
//!   unpaused, echo console input at a shell prompt, act on clean shutdown
//!   requests (optionally after a delay, or not at all — see
//!   [`GuestBehaviour`]), reboot in place, and can be made to power off,
//!   reboot or crash on their own ([`SimulatorBackend::guest_poweroff`] and
//!   friends, or typing `poweroff`/`reboot`/`crash` at the console);
//! * every operation can be slowed down ([`Latency`]) and made to fail
//!   ([`SimulatorBackend::inject`]);
//! * all state is in memory: a new simulator has only dom0, so after a
//!   daemon restart every VM reconciles to Halted.

mod bootloader;
mod console;
mod faults;
mod guest;
mod guest_agent;
mod host;
mod image;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use uuid::Uuid;

use self::console::SimConsole;
use self::faults::FaultTable;
pub use self::faults::Latency;
use super::{
    vbd_vdev, BackendError, BackendEvent, BlockDevice, BlockMode, Capabilities, ConsoleStream, CpuInfo, DevId,
    DeviceInfo, DeviceKind, DomId, DomainConfig, DomainInfo, DomainState, Errno, EventBus, EventReceiver, Fault,
    FaultInjection, GuestControl, HostInfo, Hypervisor, HypervisorVersion, MacAddr, NetDevice, Op, PvBoot,
    ShutdownCode, ShutdownReason, UnplugMode, VifIpSetting, DEFAULT_EVENT_QUEUE, DOMID_FIRST_RESERVED, MIB,
};

const BACKEND: &str = "simulator";

/// How a simulated guest reacts to requests from the toolstack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestBehaviour {
    /// Acts on clean shutdown requests (`shutdown`, `suspend_to`). When
    /// false, requests are accepted and ignored, like a hung guest, and
    /// `suspend_to` fails with [`BackendError::Timeout`].
    pub honours_shutdown: bool,
    /// Time between a shutdown request and the guest acting on it. Zero
    /// means the guest has acted by the time `shutdown` returns.
    pub shutdown_delay: Duration,
    /// Releases devices on a clean unplug. When false, clean unplugs of a
    /// running guest fail with [`BackendError::DeviceBusy`].
    pub releases_devices: bool,
}

impl Default for GuestBehaviour {
    fn default() -> Self {
        GuestBehaviour {
            honours_shutdown: true,
            shutdown_delay: Duration::ZERO,
            releases_devices: true,
        }
    }
}

/// Configuration of a [`SimulatorBackend`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The host's hostname.
    pub hostname: String,
    /// The host's CPUs.
    pub cpu: CpuInfo,
    /// Total host memory in bytes.
    pub memory_total: u64,
    /// Memory owned by dom0 (already accounted at start), bytes.
    pub dom0_memory: u64,
    /// Dom0's vCPUs.
    pub dom0_vcpus: u32,
    /// Dom0's uuid (the control domain VM's uuid).
    pub dom0_uuid: Uuid,
    /// Reported hypervisor name and version.
    pub hypervisor: HypervisorVersion,
    /// Per-operation latency; also changeable at run time with
    /// [`SimulatorBackend::set_latency`].
    pub latency: Latency,
    /// Behaviour of newly created guests.
    pub guest: GuestBehaviour,
    /// Whether guest reboots restart the domain in place (see
    /// [`Capabilities::reboot_in_place`]). With `false` the simulator leaves
    /// rebooting domains in `Shutdown(Reboot)`, as the Xen backend will.
    pub reboot_in_place: bool,
    /// Bytes of console output kept per domain.
    pub console_ring_bytes: usize,
    /// Whether `plug_block` requires the backing path to exist.
    pub check_backing_paths: bool,
    /// Per-subscriber event queue length.
    pub event_queue: usize,
}

impl SimConfig {
    /// This machine's CPUs, memory and hostname, dom0 sized by
    /// an eighth of the host (at least 512 MiB, at most 4 GiB, at most half
    /// the host), no latency, cooperative guests.
    pub fn from_host() -> Self {
        let cpu = host::local_cpu();
        let memory_total = host::local_memory();
        SimConfig {
            hostname: host::local_hostname(),
            dom0_vcpus: cpu.count,
            cpu,
            memory_total,
            dom0_memory: host::default_dom0_memory(memory_total),
            ..SimConfig::small_host()
        }
    }

    /// A deterministic small host for tests: 4 CPUs, 16 GiB of which dom0
    /// owns 1 GiB, hostname `sim-host`.
    pub fn small_host() -> Self {
        SimConfig {
            hostname: "sim-host".into(),
            cpu: CpuInfo {
                count: 4,
                vendor: "GenuineIntel".into(),
                model_name: "Simulated Xeon(R) CPU".into(),
                speed_mhz: 2400.0,
                flags: ["fpu", "vme", "de", "pse", "tsc", "msr", "pae", "cx8", "apic", "sep"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                family: 6,
                model: 85,
                stepping: 4,
            },
            memory_total: 16 * 1024 * MIB,
            dom0_memory: 1024 * MIB,
            dom0_vcpus: 4,
            dom0_uuid: Uuid::nil(),
            hypervisor: HypervisorVersion {
                name: "xen-simulator".into(),
                major: 4,
                minor: 17,
                extra: ".0-sim".into(),
            },
            latency: Latency::none(),
            guest: GuestBehaviour::default(),
            reboot_in_place: true,
            console_ring_bytes: 64 * 1024,
            check_backing_paths: true,
            event_queue: DEFAULT_EVENT_QUEUE,
        }
    }

    /// Sets total and dom0 memory (builder style).
    pub fn with_memory(mut self, total: u64, dom0: u64) -> Self {
        self.memory_total = total;
        self.dom0_memory = dom0;
        self
    }

    /// Sets the latency table (builder style).
    pub fn with_latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }

    /// Sets the default guest behaviour (builder style).
    pub fn with_guest(mut self, guest: GuestBehaviour) -> Self {
        self.guest = guest;
        self
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig::from_host()
    }
}

/// One simulated guest domain.
struct Domain {
    domid: DomId,
    config: DomainConfig,
    state: DomainState,
    built: bool,
    /// The kernel command line the guest boots with: the config's for a kernel from dom0,
    /// what the bootloader found for one booted through it (known once built).
    cmdline: String,
    /// What the bootloader printed before the kernel started, if the guest has one.
    loader_banner: Option<String>,
    /// The guest OS has printed its boot banner (since the last reboot).
    booted: bool,
    /// Restored from a suspend image and not yet unpaused.
    resumed: bool,
    booted_at: Instant,
    memory_target: u64,
    memory_actual: u64,
    vcpus_online: u32,
    cpu_accum: Duration,
    running_since: Option<Instant>,
    restarts: u32,
    /// Bumped whenever the guest shuts down or reboots, so delayed actions
    /// scheduled earlier can tell they are stale.
    epoch: u64,
    /// A long operation (suspend) owns the domain.
    busy: Option<Op>,
    /// A shutdown request the guest has not acted on yet.
    pending: Option<ShutdownReason>,
    behaviour: GuestBehaviour,
    blocks: BTreeMap<DevId, BlockDevice>,
    nets: BTreeMap<DevId, NetDevice>,
    /// Addresses the toolstack configured per interface, which the guest's agent reports.
    statics: BTreeMap<DevId, guest_agent::StaticAddresses>,
    console: Arc<SimConsole>,
}

impl Domain {
    fn info(&self, now: Instant) -> DomainInfo {
        let running = self
            .running_since
            .map(|since| now.saturating_duration_since(since).saturating_mul(self.vcpus_online))
            .unwrap_or_default();
        DomainInfo {
            domid: self.domid,
            uuid: self.config.uuid,
            name: self.config.name.clone(),
            state: self.state,
            built: self.built,
            memory_target: self.memory_target,
            memory_actual: self.memory_actual,
            memory_max: self.config.memory_max,
            vcpus_max: self.config.vcpus_max,
            vcpus_online: self.vcpus_online,
            cpu_time: self.cpu_accum.saturating_add(running),
            restarts: self.restarts,
        }
    }

    /// Folds the running interval so far into `cpu_accum`.
    fn settle_cpu(&mut self, now: Instant) {
        if let Some(since) = self.running_since {
            let ran = now.saturating_duration_since(since).saturating_mul(self.vcpus_online);
            self.cpu_accum = self.cpu_accum.saturating_add(ran);
            self.running_since = Some(now);
        }
    }

    fn set_state(&mut self, state: DomainState, now: Instant) {
        self.settle_cpu(now);
        self.running_since = (state == DomainState::Running).then_some(now);
        self.state = state;
    }

    fn invalid(&self, op: Op, reason: impl Into<String>) -> BackendError {
        BackendError::InvalidState {
            op,
            domid: self.domid,
            state: self.state,
            reason: reason.into(),
        }
    }

    fn ensure_idle(&self, op: Op) -> Result<(), BackendError> {
        match self.busy {
            Some(other) => Err(self.invalid(op, format!("{other} in progress"))),
            None => Ok(()),
        }
    }

    fn ensure_alive(&self, op: Op) -> Result<(), BackendError> {
        match self.state {
            DomainState::Shutdown(_) | DomainState::Dying => Err(self.invalid(op, "the guest has shut down")),
            DomainState::Running | DomainState::Paused => Ok(()),
        }
    }

    fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.booted_at)
    }

    fn print_boot(&mut self, hypervisor: &str, now: Instant) {
        let text = guest::boot_text(&guest::BootFacts {
            domid: self.domid,
            config: &self.config,
            cmdline: &self.cmdline,
            loader_banner: self.loader_banner.as_deref(),
            memory_target: self.memory_target,
            vcpus_online: self.vcpus_online,
            hypervisor,
            blocks: self.blocks.values().collect(),
            nets: self.nets.values().collect(),
        });
        self.console.write(text.as_bytes());
        self.booted = true;
        self.booted_at = now;
    }
}

struct State {
    domains: BTreeMap<DomId, Domain>,
    next_domid: DomId,
}

struct Inner {
    config: SimConfig,
    created: Instant,
    latency: Mutex<Latency>,
    faults: Mutex<FaultTable>,
    state: Mutex<State>,
    events: EventBus,
}

/// The simulated host. Cheap to share: wrap it in an `Arc` (it is one
/// inside) and hand it out as `Arc<dyn Hypervisor>`.
pub struct SimulatorBackend {
    inner: Arc<Inner>,
}

impl SimulatorBackend {
    /// A host with only dom0.
    pub fn new(config: SimConfig) -> Self {
        tracing::info!(
            memory_total = config.memory_total,
            dom0_memory = config.dom0_memory,
            cpus = config.cpu.count,
            "starting hypervisor simulator"
        );
        SimulatorBackend {
            inner: Arc::new(Inner {
                latency: Mutex::new(config.latency.clone()),
                faults: Mutex::new(FaultTable::default()),
                state: Mutex::new(State {
                    domains: BTreeMap::new(),
                    next_domid: 1,
                }),
                events: EventBus::new(config.event_queue),
                created: Instant::now(),
                config,
            }),
        }
    }

    /// The configuration the simulator was started with.
    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    /// Arms a fault (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        tracing::debug!(?fault, "simulator: fault armed");
        self.inner.faults.lock().arm(fault);
    }

    /// Disarms all faults.
    pub fn clear_faults(&self) {
        self.inner.faults.lock().clear();
    }

    /// Changes one operation's latency at run time.
    pub fn set_latency(&self, op: Op, latency: Duration) {
        self.inner.latency.lock().per_op.insert(op, latency);
    }

    /// Changes the whole latency table at run time.
    pub fn set_latency_table(&self, latency: Latency) {
        *self.inner.latency.lock() = latency;
    }

    /// Changes how one guest reacts from now on.
    pub fn set_guest_behaviour(&self, domid: DomId, behaviour: GuestBehaviour) -> Result<(), BackendError> {
        let mut st = self.inner.state.lock();
        let d = st.guest_mut(Op::Guest, domid)?;
        d.behaviour = behaviour;
        Ok(())
    }

    /// The guest powers itself off (as if `poweroff` ran inside it).
    pub fn guest_poweroff(&self, domid: DomId) -> Result<(), BackendError> {
        self.guest_shutdown(domid, ShutdownCode::PowerOff)
    }

    /// The guest reboots itself.
    pub fn guest_reboot(&self, domid: DomId) -> Result<(), BackendError> {
        self.guest_shutdown(domid, ShutdownCode::Reboot)
    }

    /// The guest kernel crashes.
    pub fn guest_crash(&self, domid: DomId) -> Result<(), BackendError> {
        self.guest_shutdown(domid, ShutdownCode::Crash)
    }

    /// Everything the guest printed, as far as the console ring keeps it.
    pub fn console_history(&self, domid: DomId) -> Result<String, BackendError> {
        let st = self.inner.state.lock();
        let d = st.guest(Op::ConsoleStream, domid)?;
        Ok(String::from_utf8_lossy(&d.console.history()).into_owned())
    }
}

impl State {
    fn used(&self) -> u64 {
        self.domains.values().map(|d| d.memory_actual).sum()
    }

    fn guest(&self, op: Op, domid: DomId) -> Result<&Domain, BackendError> {
        if domid == 0 {
            return Err(dom0_refused(op));
        }
        self.domains.get(&domid).ok_or(BackendError::NoSuchDomain { op, domid })
    }

    fn guest_mut(&mut self, op: Op, domid: DomId) -> Result<&mut Domain, BackendError> {
        if domid == 0 {
            return Err(dom0_refused(op));
        }
        self.domains
            .get_mut(&domid)
            .ok_or(BackendError::NoSuchDomain { op, domid })
    }

    fn ensure_unique(&self, op: Op, uuid: Uuid) -> Result<(), BackendError> {
        match self.domains.values().find(|d| d.config.uuid == uuid) {
            Some(d) => Err(BackendError::DuplicateDomain {
                op,
                uuid,
                domid: d.domid,
            }),
            None => Ok(()),
        }
    }

    fn allocate_domid(&mut self, op: Op) -> Result<DomId, BackendError> {
        for _ in 1..DOMID_FIRST_RESERVED {
            let candidate = self.next_domid;
            self.next_domid = if candidate + 1 >= DOMID_FIRST_RESERVED {
                1
            } else {
                candidate + 1
            };
            if !self.domains.contains_key(&candidate) {
                return Ok(candidate);
            }
        }
        Err(BackendError::Os {
            op,
            errno: Errno::ENOSPC,
            detail: "no free domain id".into(),
        })
    }
}

/// The command line of a guest booted from a kernel in dom0; empty for the others until a
/// bootloader has found theirs.
fn direct_cmdline(config: &DomainConfig) -> String {
    match config.pv_boot() {
        Some(PvBoot::Kernel(k)) => k.cmdline.clone(),
        Some(PvBoot::Bootloader(_)) | None => String::new(),
    }
}

fn dom0_refused(op: Op) -> BackendError {
    BackendError::InvalidArgument {
        op,
        reason: "domain 0 is the control domain and cannot be targeted".into(),
    }
}

impl Inner {
    /// Latency, then injected faults: the prologue of every operation.
    fn begin(&self, op: Op) -> Result<(), BackendError> {
        let delay = self.latency.lock().for_op(op);
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        if let Some(errno) = self.faults.lock().take(op) {
            tracing::debug!(%op, %errno, "simulator: injected fault fires");
            return Err(BackendError::Os {
                op,
                errno,
                detail: "injected fault".into(),
            });
        }
        Ok(())
    }

    fn free(&self, st: &State) -> u64 {
        self.config
            .memory_total
            .saturating_sub(self.config.dom0_memory)
            .saturating_sub(st.used())
    }

    fn hypervisor_string(&self) -> String {
        self.config.hypervisor.to_string()
    }

    fn dom0_info(&self, now: Instant) -> DomainInfo {
        DomainInfo {
            domid: 0,
            uuid: self.config.dom0_uuid,
            name: "Domain-0".into(),
            state: DomainState::Running,
            built: true,
            memory_target: self.config.dom0_memory,
            memory_actual: self.config.dom0_memory,
            memory_max: self.config.dom0_memory,
            vcpus_max: self.config.dom0_vcpus,
            vcpus_online: self.config.dom0_vcpus,
            cpu_time: now.saturating_duration_since(self.created),
            restarts: 0,
        }
    }

    fn domain_changed(&self, domid: DomId) {
        self.events.publish(BackendEvent::DomainChanged(domid));
    }

    fn device_changed(&self, domid: DomId, kind: DeviceKind, devid: DevId) {
        self.events.publish(BackendEvent::DeviceChanged { domid, kind, devid });
    }

    /// The guest shuts down with `code` (state lock held). Reboots restart
    /// in place when configured.
    fn guest_acts(&self, d: &mut Domain, code: ShutdownCode, now: Instant) {
        tracing::info!(domid = d.domid, %code, "simulated guest shuts down");
        d.console.write(guest::shutdown_text(code, d.uptime(now)).as_bytes());
        d.pending = None;
        d.epoch += 1;
        d.set_state(DomainState::Shutdown(code), now);
        self.domain_changed(d.domid);
        if code == ShutdownCode::Reboot && self.config.reboot_in_place {
            d.restarts += 1;
            d.cpu_accum = Duration::ZERO;
            d.vcpus_online = d.config.vcpus_at_start;
            d.set_state(DomainState::Running, now);
            d.print_boot(&self.hypervisor_string(), now);
            self.domain_changed(d.domid);
        }
    }

    /// Delivers a delayed shutdown request, if still relevant.
    fn deliver_pending(&self, domid: DomId, epoch: u64) {
        let mut st = self.state.lock();
        let Some(d) = st.domains.get_mut(&domid) else {
            return;
        };
        if d.epoch != epoch || d.state != DomainState::Running || d.busy.is_some() {
            return;
        }
        if let Some(reason) = d.pending {
            self.guest_acts(d, reason.resulting_code(), Instant::now());
        }
    }

    fn schedule_pending(self: &Arc<Self>, domid: DomId, epoch: u64, delay: Duration) {
        let weak: Weak<Inner> = Arc::downgrade(self);
        let spawned = thread::Builder::new()
            .name(format!("sim-guest-{domid}"))
            .spawn(move || {
                thread::sleep(delay);
                if let Some(inner) = weak.upgrade() {
                    inner.deliver_pending(domid, epoch);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(domid, error = %e, "simulator: cannot schedule guest action");
        }
    }

    /// A line typed at the guest's console.
    fn console_input(&self, domid: DomId, line: &str) {
        let mut st = self.state.lock();
        let Some(d) = st.domains.get_mut(&domid) else {
            return;
        };
        if d.state != DomainState::Running || !d.booted {
            return; // Nobody is reading the console.
        }
        d.console.write_line(line);
        let code = match line.trim() {
            "poweroff" | "halt" | "shutdown -h now" => Some(ShutdownCode::PowerOff),
            "reboot" | "shutdown -r now" => Some(ShutdownCode::Reboot),
            "crash" | "echo c > /proc/sysrq-trigger" => Some(ShutdownCode::Crash),
            _ => None,
        };
        match code {
            Some(code) => self.guest_acts(d, code, Instant::now()),
            None => d.console.write(guest::prompt(&d.config.name).as_bytes()),
        }
    }

    fn shutdown(self: &Arc<Self>, domid: DomId, reason: ShutdownReason) -> Result<(), BackendError> {
        let op = Op::Shutdown;
        self.begin(op)?;
        let mut st = self.state.lock();
        let d = st.guest_mut(op, domid)?;
        d.ensure_idle(op)?;
        d.ensure_alive(op)?;
        if !d.built {
            return Err(d.invalid(op, "not built: no guest to ask"));
        }
        tracing::debug!(domid, reason = reason.as_xenstore_str(), "simulator: shutdown request");
        if !d.behaviour.honours_shutdown {
            return Ok(()); // Delivered; the guest ignores it.
        }
        d.pending = Some(reason);
        if d.state == DomainState::Running {
            if d.behaviour.shutdown_delay.is_zero() {
                self.guest_acts(d, reason.resulting_code(), Instant::now());
            } else {
                let (epoch, delay) = (d.epoch, d.behaviour.shutdown_delay);
                drop(st);
                self.schedule_pending(domid, epoch, delay);
            }
        }
        Ok(())
    }

    fn suspend_to(&self, domid: DomId, path: &Path) -> Result<(), BackendError> {
        let op = Op::SuspendTo;
        self.begin(op)?;
        let now = Instant::now();
        // Phase 1: the guest suspends; snapshot it and mark it busy.
        let (image, was_running, epoch) = {
            let mut st = self.state.lock();
            let d = st.guest_mut(op, domid)?;
            d.ensure_idle(op)?;
            if !d.built {
                return Err(d.invalid(op, "not built"));
            }
            let was_running = match d.state {
                DomainState::Running => {
                    if !d.behaviour.honours_shutdown {
                        return Err(BackendError::Timeout {
                            op,
                            domid,
                            waited: Duration::ZERO,
                        });
                    }
                    self.guest_acts(d, ShutdownCode::Suspend, now);
                    true
                }
                DomainState::Shutdown(ShutdownCode::Suspend) => false,
                DomainState::Paused => return Err(d.invalid(op, "a paused guest cannot suspend itself")),
                DomainState::Shutdown(_) | DomainState::Dying => return Err(d.invalid(op, "the guest has shut down")),
            };
            d.busy = Some(op);
            let info = d.info(now);
            let image = image::SuspendImage {
                uuid: d.config.uuid,
                name: d.config.name.clone(),
                memory_target: d.memory_target,
                memory_actual: d.memory_actual,
                memory_max: d.config.memory_max,
                vcpus_max: d.config.vcpus_max,
                vcpus_online: d.vcpus_online,
                cpu_time_ns: u64::try_from(info.cpu_time.as_nanos()).unwrap_or(u64::MAX),
                restarts: d.restarts,
                saved_at: chrono::Utc::now().to_rfc3339(),
                source_domid: domid,
                console: String::from_utf8_lossy(&d.console.history()).into_owned(),
            };
            (image, was_running, d.epoch)
        };
        // Phase 2: write the image without holding the lock.
        let written = image::write(path, &image);
        // Phase 3: destroy the domain, or undo on failure.
        let mut st = self.state.lock();
        let still_ours = st
            .domains
            .get(&domid)
            .is_some_and(|d| d.epoch == epoch && d.busy == Some(op));
        if !still_ours {
            if written.is_ok() {
                // Best effort: the domain was destroyed under us, so the
                // image must not be mistaken for a good one.
                let _ = std::fs::remove_file(path);
            }
            return Err(BackendError::NoSuchDomain { op, domid });
        }
        if let Err(e) = written {
            if let Some(d) = st.domains.get_mut(&domid) {
                d.busy = None;
                if was_running {
                    // Like xc_domain_resume after a failed save.
                    d.set_state(DomainState::Running, Instant::now());
                    d.console.write(guest::resume_text(&d.config.name).as_bytes());
                    self.domain_changed(domid);
                }
            }
            return Err(e);
        }
        self.remove_domain(&mut st, domid);
        tracing::info!(domid, path = %path.display(), "simulator: domain suspended");
        Ok(())
    }

    fn remove_domain(&self, st: &mut State, domid: DomId) {
        if let Some(d) = st.domains.remove(&domid) {
            d.console.close();
            for devid in d.blocks.keys() {
                self.device_changed(domid, DeviceKind::Block, *devid);
            }
            for devid in d.nets.keys() {
                self.device_changed(domid, DeviceKind::Net, *devid);
            }
            self.domain_changed(domid);
        }
    }

    fn resume_from(&self, path: &Path, config: &DomainConfig) -> Result<DomId, BackendError> {
        let op = Op::ResumeFrom;
        self.begin(op)?;
        config.validate(op)?;
        let image = image::read(path)?;
        if image.uuid != config.uuid {
            return Err(BackendError::InvalidImage {
                path: path.to_path_buf(),
                reason: format!(
                    "image holds domain {} but the config is for {}",
                    image.uuid, config.uuid
                ),
            });
        }
        if image.memory_actual > config.memory_max {
            return Err(BackendError::InvalidArgument {
                op,
                reason: format!(
                    "image needs {} bytes but memory_max is {}",
                    image.memory_actual, config.memory_max
                ),
            });
        }
        let now = Instant::now();
        let mut st = self.state.lock();
        st.ensure_unique(op, config.uuid)?;
        let available = self.free(&st);
        if image.memory_actual > available {
            return Err(BackendError::NotEnoughMemory {
                needed: image.memory_actual,
                available,
            });
        }
        let domid = st.allocate_domid(op)?;
        let console = SimConsole::with_history(self.config.console_ring_bytes, image.console.as_bytes());
        st.domains.insert(
            domid,
            Domain {
                domid,
                config: config.clone(),
                state: DomainState::Paused,
                built: true,
                cmdline: direct_cmdline(config),
                loader_banner: None,
                booted: true,
                resumed: true,
                booted_at: now,
                memory_target: image.memory_target.min(config.memory_max),
                memory_actual: image.memory_actual,
                vcpus_online: image.vcpus_online.clamp(1, config.vcpus_max),
                cpu_accum: Duration::from_nanos(image.cpu_time_ns),
                running_since: None,
                restarts: image.restarts,
                epoch: 0,
                busy: None,
                pending: None,
                behaviour: self.config.guest,
                blocks: BTreeMap::new(),
                nets: BTreeMap::new(),
                statics: BTreeMap::new(),
                console,
            },
        );
        self.domain_changed(domid);
        tracing::info!(domid, path = %path.display(), "simulator: domain resumed (paused)");
        Ok(domid)
    }

    fn guest_shutdown(&self, domid: DomId, code: ShutdownCode) -> Result<(), BackendError> {
        let op = Op::Guest;
        self.begin(op)?;
        let mut st = self.state.lock();
        let d = st.guest_mut(op, domid)?;
        d.ensure_idle(op)?;
        if d.state != DomainState::Running {
            return Err(d.invalid(op, "only a running guest can act"));
        }
        self.guest_acts(d, code, Instant::now());
        Ok(())
    }
}

impl Drop for Inner {
    /// The simulated host goes away with its guests: disconnect every
    /// console client so their threads end.
    fn drop(&mut self) {
        for d in self.state.get_mut().domains.values() {
            d.console.close();
        }
    }
}

impl Hypervisor for SimulatorBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    /// Without latency every call returns at once: state changes under a short lock, the
    /// suspend image is one small unsynced write (or read), and a simulated bootloader reads
    /// at most 1 MiB of a disk image. With latency, calls sleep.
    fn calls_may_block(&self) -> bool {
        !self.inner.latency.lock().is_none()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            reboot_in_place: self.inner.config.reboot_in_place,
            hvm: true,
            suspend_resume: true,
        }
    }

    fn host_info(&self) -> Result<HostInfo, BackendError> {
        self.inner.begin(Op::HostInfo)?;
        let memory_free = self.inner.free(&self.inner.state.lock());
        let c = &self.inner.config;
        Ok(HostInfo {
            hostname: c.hostname.clone(),
            cpu: c.cpu.clone(),
            memory_total: c.memory_total,
            memory_free,
            hypervisor: c.hypervisor.clone(),
        })
    }

    fn memory_free(&self) -> Result<u64, BackendError> {
        self.inner.begin(Op::MemoryFree)?;
        Ok(self.inner.free(&self.inner.state.lock()))
    }

    fn create_domain(&self, config: &DomainConfig) -> Result<DomId, BackendError> {
        let op = Op::CreateDomain;
        let inner = &self.inner;
        inner.begin(op)?;
        config.validate(op)?;
        let mut st = inner.state.lock();
        st.ensure_unique(op, config.uuid)?;
        let available = inner.free(&st);
        if config.memory_target > available {
            return Err(BackendError::NotEnoughMemory {
                needed: config.memory_target,
                available,
            });
        }
        let domid = st.allocate_domid(op)?;
        let now = Instant::now();
        st.domains.insert(
            domid,
            Domain {
                domid,
                config: config.clone(),
                state: DomainState::Paused,
                built: false,
                cmdline: direct_cmdline(config),
                loader_banner: None,
                booted: false,
                resumed: false,
                booted_at: now,
                memory_target: config.memory_target,
                memory_actual: config.memory_target,
                vcpus_online: config.vcpus_at_start,
                cpu_accum: Duration::ZERO,
                running_since: None,
                restarts: 0,
                epoch: 0,
                busy: None,
                pending: None,
                behaviour: inner.config.guest,
                blocks: BTreeMap::new(),
                nets: BTreeMap::new(),
                statics: BTreeMap::new(),
                console: SimConsole::new(inner.config.console_ring_bytes),
            },
        );
        inner.domain_changed(domid);
        tracing::info!(domid, name = %config.name, uuid = %config.uuid, "simulator: domain created");
        Ok(domid)
    }

    fn build(&self, domid: DomId) -> Result<(), BackendError> {
        let op = Op::Build;
        self.inner.begin(op)?;
        let buildable = |d: &Domain| -> Result<(), BackendError> {
            d.ensure_idle(op)?;
            if d.built {
                return Err(d.invalid(op, "already built"));
            }
            if d.state != DomainState::Paused {
                return Err(d.invalid(op, "only a paused domain can be built"));
            }
            Ok(())
        };
        let boot = {
            let st = self.inner.state.lock();
            let d = st.guest(op, domid)?;
            buildable(d)?;
            d.config.pv_boot().cloned()
        };
        // The bootloader reads the disk image outside the lock.
        let loaded = match &boot {
            Some(PvBoot::Bootloader(b)) => Some(bootloader::run(b)?),
            Some(PvBoot::Kernel(_)) | None => None,
        };
        let mut st = self.inner.state.lock();
        let d = st.guest_mut(op, domid)?;
        buildable(d)?;
        if let Some(loaded) = loaded {
            tracing::info!(domid, cmdline = %loaded.cmdline, "simulator: the bootloader found a kernel");
            d.cmdline = loaded.cmdline;
            d.loader_banner = Some(loaded.banner);
        }
        d.built = true;
        self.inner.domain_changed(domid);
        Ok(())
    }

    fn unpause(&self, domid: DomId) -> Result<(), BackendError> {
        let op = Op::Unpause;
        self.inner.begin(op)?;
        let mut st = self.inner.state.lock();
        let d = st.guest_mut(op, domid)?;
        d.ensure_idle(op)?;
        d.ensure_alive(op)?;
        if !d.built {
            return Err(d.invalid(op, "not built"));
        }
        if d.state == DomainState::Running {
            return Ok(());
        }
        let now = Instant::now();
        d.set_state(DomainState::Running, now);
        if !d.booted {
            d.print_boot(&self.inner.hypervisor_string(), now);
        } else if d.resumed {
            d.resumed = false;
            d.console.write(guest::resume_text(&d.config.name).as_bytes());
        }
        self.inner.domain_changed(domid);
        if let Some(reason) = d.pending {
            if d.behaviour.honours_shutdown && d.behaviour.shutdown_delay.is_zero() {
                self.inner.guest_acts(d, reason.resulting_code(), now);
            } else if d.behaviour.honours_shutdown {
                let (epoch, delay) = (d.epoch, d.behaviour.shutdown_delay);
                drop(st);
                self.inner.schedule_pending(domid, epoch, delay);
            }
        }
        Ok(())
    }

    fn pause(&self, domid: DomId) -> Result<(), BackendError> {
        let op = Op::Pause;
        self.inner.begin(op)?;
        let mut st = self.inner.state.lock();
        let d = st.guest_mut(op, domid)?;
        d.ensure_idle(op)?;
        d.ensure_alive(op)?;
        if d.state == DomainState::Paused {
            return Ok(());
        }
        d.set_state(DomainState::Paused, Instant::now());
        self.inner.domain_changed(domid);
        Ok(())
    }

    fn shutdown(&self, domid: DomId, reason: ShutdownReason) -> Result<(), BackendError> {
        self.inner.shutdown(domid, reason)
    }

    fn destroy(&self, domid: DomId) -> Result<(), BackendError> {
        let op = Op::Destroy;
        self.inner.begin(op)?;
        let mut st = self.inner.state.lock();
        st.guest(op, domid)?;
        self.inner.remove_domain(&mut st, domid);
        tracing::info!(domid, "simulator: domain destroyed");
        Ok(())
    }

    fn suspend_to(&self, domid: DomId, path: &Path) -> Result<(), BackendError> {
        self.inner.suspend_to(domid, path)
    }

    fn resume_from(&self, path: &Path, config: &DomainConfig) -> Result<DomId, BackendError> {
        self.inner.resume_from(path, config)
    }

    fn set_memory_target(&self, domid: DomId, bytes: u64) -> Result<(), BackendError> {
        let op = Op::SetMemoryTarget;
        self.inner.begin(op)?;
        let mut st = self.inner.state.lock();
        let available = self.inner.free(&st);
        let d = st.guest_mut(op, domid)?;
        d.ensure_idle(op)?;
        d.ensure_alive(op)?;
        if bytes == 0 || bytes > d.config.memory_max {
            return Err(BackendError::InvalidArgument {
                op,
                reason: format!("target {bytes} not in 1..={}", d.config.memory_max),
            });
        }
        let growth = bytes.saturating_sub(d.memory_actual);
        if growth > available {
            return Err(BackendError::NotEnoughMemory {
                needed: growth,
                available,
            });
        }
        d.memory_target = bytes;
        d.memory_actual = bytes;
        self.inner.domain_changed(domid);
        Ok(())
    }

    fn set_vcpus(&self, domid: DomId, online: u32) -> Result<(), BackendError> {
        let op = Op::SetVcpus;
        self.inner.begin(op)?;
        let mut st = self.inner.state.lock();
        let d = st.guest_mut(op, domid)?;
        d.ensure_idle(op)?;
        d.ensure_alive(op)?;
        if online == 0 || online > d.config.vcpus_max {
            return Err(BackendError::InvalidArgument {
                op,
                reason: format!("{online} vCPUs not in 1..={}", d.config.vcpus_max),
            });
        }
        d.settle_cpu(Instant::now());
        d.vcpus_online = online;
        self.inner.domain_changed(domid);
        Ok(())
    }

    fn domain_info(&self, domid: DomId) -> Result<DomainInfo, BackendError> {
        let op = Op::DomainInfo;
        self.inner.begin(op)?;
        let now = Instant::now();
        if domid == 0 {
            return Ok(self.inner.dom0_info(now));
        }
        let st = self.inner.state.lock();
        st.domains
            .get(&domid)
            .map(|d| d.info(now))
            .ok_or(BackendError::NoSuchDomain { op, domid })
    }

    fn list_domains(&self) -> Result<Vec<DomainInfo>, BackendError> {
        self.inner.begin(Op::ListDomains)?;
        let now = Instant::now();
        let st = self.inner.state.lock();
        let mut out = Vec::with_capacity(st.domains.len() + 1);
        out.push(self.inner.dom0_info(now));
        out.extend(st.domains.values().map(|d| d.info(now)));
        Ok(out)
    }

    fn plug_block(&self, domid: DomId, device: &BlockDevice) -> Result<(), BackendError> {
        let op = Op::PlugBlock;
        self.inner.begin(op)?;
        let invalid = |reason: String| BackendError::InvalidArgument { op, reason };
        if vbd_vdev(device.devid).is_none() {
            return Err(invalid(format!("device position {} too large", device.devid)));
        }
        if device.cd && device.mode == BlockMode::ReadWrite {
            return Err(invalid("CD drives are read-only".into()));
        }
        if device.backing.is_none() && !device.cd {
            return Err(invalid("a disk needs a backing path".into()));
        }
        if let (true, Some(path)) = (self.inner.config.check_backing_paths, &device.backing) {
            if !path.exists() {
                return Err(BackendError::Os {
                    op,
                    errno: Errno::ENOENT,
                    detail: format!("backing {} not found", path.display()),
                });
            }
        }
        let mut st = self.inner.state.lock();
        {
            let d = st.guest(op, domid)?;
            d.ensure_idle(op)?;
            d.ensure_alive(op)?;
            if d.blocks.contains_key(&device.devid) {
                return Err(BackendError::DeviceExists {
                    op,
                    domid,
                    kind: DeviceKind::Block,
                    devid: device.devid,
                });
            }
        }
        if let Some(path) = &device.backing {
            // Like blkback: a writable backing is exclusive.
            let conflict = st.domains.values().find_map(|other| {
                other
                    .blocks
                    .values()
                    .find(|b| {
                        b.backing.as_ref() == Some(path)
                            && (b.mode == BlockMode::ReadWrite || device.mode == BlockMode::ReadWrite)
                    })
                    .map(|b| (other.domid, b.devid))
            });
            if let Some((holder, holder_dev)) = conflict {
                return Err(BackendError::DeviceBusy {
                    op,
                    domid,
                    kind: DeviceKind::Block,
                    devid: device.devid,
                    reason: format!(
                        "{} is already attached to domain {holder} (vbd {holder_dev}) and one of them is read-write",
                        path.display()
                    ),
                });
            }
        }
        let d = st.guest_mut(op, domid)?;
        d.blocks.insert(device.devid, device.clone());
        if d.booted && d.state == DomainState::Running {
            let t = guest::stamp(d.uptime(Instant::now()));
            d.console.write_line(&format!("{t} {}", guest::block_line(device)));
        }
        self.inner.device_changed(domid, DeviceKind::Block, device.devid);
        Ok(())
    }

    fn unplug_block(&self, domid: DomId, devid: DevId, mode: UnplugMode) -> Result<(), BackendError> {
        self.unplug(Op::UnplugBlock, DeviceKind::Block, domid, devid, mode)
    }

    fn plug_net(&self, domid: DomId, device: &NetDevice) -> Result<(), BackendError> {
        let op = Op::PlugNet;
        self.inner.begin(op)?;
        let invalid = |reason: String| BackendError::InvalidArgument { op, reason };
        if device.mac.is_multicast() {
            return Err(invalid(format!("{} is a multicast MAC", device.mac)));
        }
        if !(68..=65535).contains(&device.mtu) {
            return Err(invalid(format!("MTU {} not in 68..=65535", device.mtu)));
        }
        if device.bridge.trim().is_empty() {
            return Err(invalid("empty bridge name".into()));
        }
        let mut st = self.inner.state.lock();
        let d = st.guest_mut(op, domid)?;
        d.ensure_idle(op)?;
        d.ensure_alive(op)?;
        if d.nets.contains_key(&device.devid) {
            return Err(BackendError::DeviceExists {
                op,
                domid,
                kind: DeviceKind::Net,
                devid: device.devid,
            });
        }
        d.nets.insert(device.devid, device.clone());
        if d.booted && d.state == DomainState::Running {
            let t = guest::stamp(d.uptime(Instant::now()));
            d.console.write_line(&format!("{t} {}", guest::net_line(device)));
        }
        self.inner.device_changed(domid, DeviceKind::Net, device.devid);
        Ok(())
    }

    fn unplug_net(&self, domid: DomId, devid: DevId, mode: UnplugMode) -> Result<(), BackendError> {
        self.unplug(Op::UnplugNet, DeviceKind::Net, domid, devid, mode)
    }

    fn list_devices(&self, domid: DomId) -> Result<Vec<DeviceInfo>, BackendError> {
        let op = Op::ListDevices;
        self.inner.begin(op)?;
        let st = self.inner.state.lock();
        let d = st.guest(op, domid)?;
        Ok(d.blocks
            .values()
            .cloned()
            .map(DeviceInfo::Block)
            .chain(d.nets.values().cloned().map(DeviceInfo::Net))
            .collect())
    }

    fn console_stream(&self, domid: DomId) -> Result<ConsoleStream, BackendError> {
        let op = Op::ConsoleStream;
        self.inner.begin(op)?;
        let console = {
            let st = self.inner.state.lock();
            Arc::clone(&st.guest(op, domid)?.console)
        };
        let weak = Arc::downgrade(&self.inner);
        let handler = Box::new(move |line: &str| {
            if let Some(inner) = weak.upgrade() {
                inner.console_input(domid, line);
            }
        });
        let stream = console
            .connect(format!("sim-console-{domid}"), handler)
            .map_err(|e| BackendError::Os {
                op,
                errno: e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::ENOTCONN),
                detail: format!("connecting to the console of domain {domid}: {e}"),
            })?;
        Ok(ConsoleStream::from_owned_fd(stream.into()))
    }

    fn subscribe(&self) -> Result<EventReceiver, BackendError> {
        self.inner.begin(Op::Subscribe)?;
        Ok(self.inner.events.subscribe())
    }

    fn fault_injection(&self) -> Option<&dyn FaultInjection> {
        Some(self)
    }

    fn guest_control(&self) -> Option<&dyn GuestControl> {
        Some(self)
    }

    /// The simulated guest's tools take the static addresses at once (as real tools
    /// watching their nodes do).
    fn set_vif_ip_setting(
        &self,
        domid: DomId,
        devid: DevId,
        _mac: &MacAddr,
        setting: &VifIpSetting,
    ) -> Result<(), BackendError> {
        let (ipv4, ipv6) = setting.addresses();
        let op = Op::Guest;
        self.inner.begin(op)?;
        let mut st = self.inner.state.lock();
        let d = st.guest_mut(op, domid)?;
        if ipv4.is_empty() && ipv6.is_empty() {
            d.statics.remove(&devid);
        } else {
            d.statics.insert(devid, guest_agent::StaticAddresses { ipv4, ipv6 });
        }
        Ok(())
    }

    fn guest_agent_keys(&self, domid: DomId) -> Result<BTreeMap<String, String>, BackendError> {
        let op = Op::DomainInfo;
        self.inner.begin(op)?;
        let st = self.inner.state.lock();
        let d = st.guest(op, domid)?;
        let alive = matches!(d.state, DomainState::Running | DomainState::Paused);
        if !alive || !d.booted || d.uptime(Instant::now()) < guest_agent::AGENT_DELAY {
            return Ok(BTreeMap::new());
        }
        Ok(guest_agent::keys(&guest_agent::AgentFacts {
            hostname: &guest::hostname_of(&d.config.name),
            memory_actual: d.memory_actual,
            blocks: d.blocks.values().collect(),
            nets: d.nets.values().collect(),
            statics: &d.statics,
        }))
    }
}

impl SimulatorBackend {
    fn unplug(
        &self,
        op: Op,
        kind: DeviceKind,
        domid: DomId,
        devid: DevId,
        mode: UnplugMode,
    ) -> Result<(), BackendError> {
        self.inner.begin(op)?;
        let mut st = self.inner.state.lock();
        let d = st.guest_mut(op, domid)?;
        d.ensure_idle(op)?;
        let present = match kind {
            DeviceKind::Block => d.blocks.contains_key(&devid),
            DeviceKind::Net => d.nets.contains_key(&devid),
        };
        if !present {
            return Err(BackendError::NoSuchDevice { op, domid, kind, devid });
        }
        let guest_running = d.booted && d.state == DomainState::Running;
        if mode == UnplugMode::Clean && guest_running && !d.behaviour.releases_devices {
            return Err(BackendError::DeviceBusy {
                op,
                domid,
                kind,
                devid,
                reason: "the guest refused to release the device".into(),
            });
        }
        match kind {
            DeviceKind::Block => {
                d.blocks.remove(&devid);
            }
            DeviceKind::Net => {
                d.nets.remove(&devid);
            }
        }
        if guest_running {
            let t = guest::stamp(d.uptime(Instant::now()));
            d.console
                .write_line(&format!("{t} {kind} {devid} removed ({mode:?} unplug)"));
        }
        self.inner.device_changed(domid, kind, devid);
        Ok(())
    }
}

impl FaultInjection for SimulatorBackend {
    fn inject(&self, fault: Fault) {
        SimulatorBackend::inject(self, fault);
    }

    fn clear_faults(&self) {
        SimulatorBackend::clear_faults(self);
    }
}

impl GuestControl for SimulatorBackend {
    fn guest_shutdown(&self, domid: DomId, code: ShutdownCode) -> Result<(), BackendError> {
        self.inner.guest_shutdown(domid, code)
    }
}
