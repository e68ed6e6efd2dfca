//! A backend conformance suite, written only against the [`Hypervisor`]
//! trait.
//!
//! Every backend must pass it: the simulator does in `cargo test`, and the
//! Xen backend will run it on a real Xen host (with a small PV kernel given
//! in [`ConformanceOptions::kernel`]). Checks that need an optional
//! capability ([`Hypervisor::fault_injection`],
//! [`Hypervisor::guest_control`], [`super::Capabilities::suspend_resume`], ...)
//! report [`Outcome::Skipped`] on backends without it.
//!
//! The suite only touches domains it creates (named
//! `<name_prefix>-<check>-<n>`) and destroys them again, even when a check
//! fails, so it can run on a host with other guests. It does need the host
//! to be otherwise quiet for the memory-accounting checks, within
//! [`ConformanceOptions::memory_slack`].
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use agent::hypervisor::{conformance, SimConfig, SimulatorBackend};
//! let sim = SimulatorBackend::new(SimConfig::small_host());
//! let opts = conformance::ConformanceOptions::for_simulator(std::env::temp_dir());
//! let report = conformance::run_all(&sim, &opts);
//! assert!(report.is_success(), "{report}");
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    BackendError, BackendEvent, BlockDevice, BlockMode, DevId, DeviceKind, DomId, DomainConfig, DomainKind,
    DomainState, Errno, EventReceiver, Fault, Hypervisor, MacAddr, NetDevice, Op, PvBoot, PvKernel, ShutdownCode,
    ShutdownReason, UnplugMode, DOMID_FIRST_RESERVED, MIB,
};

/// Parameters of a conformance run.
#[derive(Debug, Clone)]
pub struct ConformanceOptions {
    /// A writable directory for backing files and suspend images.
    pub scratch_dir: PathBuf,
    /// PV kernel for test guests (the simulator does not read it).
    pub kernel: PathBuf,
    /// Optional ramdisk for test guests.
    pub ramdisk: Option<PathBuf>,
    /// Kernel command line for test guests.
    pub cmdline: String,
    /// Memory of each test guest, bytes.
    pub guest_memory: u64,
    /// How long to wait for events and asynchronous guest reactions.
    pub event_timeout: Duration,
    /// Free memory may differ by this many bytes from the exact expectation
    /// (real hosts have per-domain overheads).
    pub memory_slack: u64,
    /// The console's boot output must mention the domain's name.
    pub console_shows_name: bool,
    /// The guest echoes lines typed at its console.
    pub console_echoes: bool,
    /// Domains created concurrently by the parallel check.
    pub parallel_domains: usize,
    /// Prefix of the names of domains the suite creates.
    pub name_prefix: String,
}

impl ConformanceOptions {
    /// Options for a backend running real guests: `kernel` must boot to a
    /// console; console name/echo expectations are off.
    pub fn new(scratch_dir: impl Into<PathBuf>, kernel: impl Into<PathBuf>) -> Self {
        ConformanceOptions {
            scratch_dir: scratch_dir.into(),
            kernel: kernel.into(),
            ramdisk: None,
            cmdline: "console=hvc0".into(),
            guest_memory: 64 * MIB,
            event_timeout: Duration::from_secs(30),
            memory_slack: 16 * MIB,
            console_shows_name: false,
            console_echoes: false,
            parallel_domains: 4,
            name_prefix: "conformance".into(),
        }
    }

    /// Options matching the simulator's guests (exact memory accounting,
    /// banner with the name, echoing shell).
    pub fn for_simulator(scratch_dir: impl Into<PathBuf>) -> Self {
        ConformanceOptions {
            event_timeout: Duration::from_secs(5),
            memory_slack: 0,
            console_shows_name: true,
            console_echoes: true,
            parallel_domains: 16,
            ..ConformanceOptions::new(scratch_dir, "/boot/vmlinuz-conformance")
        }
    }

    pub(crate) fn config(&self, name: String) -> DomainConfig {
        DomainConfig {
            name,
            uuid: uuid::Uuid::new_v4(),
            memory_target: self.guest_memory,
            memory_max: self.guest_memory,
            vcpus_max: 2,
            vcpus_at_start: 1,
            kind: DomainKind::Pv(PvBoot::Kernel(PvKernel {
                kernel: self.kernel.clone(),
                ramdisk: self.ramdisk.clone(),
                cmdline: self.cmdline.clone(),
            })),
            tsc_mode: None,
        }
    }
}

/// A check's failure: which step went wrong and how.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    /// A backend call failed unexpectedly.
    #[error("{step}: {source}")]
    Backend {
        /// What the check was doing.
        step: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// A backend call succeeded but the result was wrong.
    #[error("{0}")]
    Expectation(String),
    /// Local I/O (scratch files, console) failed.
    #[error("{step}: {source}")]
    Io {
        /// What the check was doing.
        step: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A check that ran to completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The backend behaved as specified.
    Passed,
    /// The check does not apply to this backend (missing capability).
    Skipped(String),
}

/// What happened to one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Passed,
    /// Not applicable, with the reason.
    Skipped(String),
    /// Failed, with the reason.
    Failed(String),
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The check's name (see [`CHECKS`]).
    pub name: &'static str,
    /// What happened.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
}

/// The results of [`run_all`].
#[derive(Debug, Clone)]
pub struct Report {
    /// The backend's name.
    pub backend: String,
    /// One entry per check, in [`CHECKS`] order.
    pub results: Vec<CheckResult>,
}

impl Report {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }

    /// Number of passed checks.
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Passed))
    }

    /// Number of skipped checks.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }

    /// The failed checks.
    pub fn failures(&self) -> Vec<&CheckResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
            .collect()
    }

    /// True when no check failed.
    pub fn is_success(&self) -> bool {
        self.failures().is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance of the {} backend:", self.backend)?;
        for r in &self.results {
            let (tag, why) = match &r.outcome {
                Outcome::Passed => ("ok", ""),
                Outcome::Skipped(why) => ("skipped", why.as_str()),
                Outcome::Failed(why) => ("FAILED", why.as_str()),
            };
            writeln!(f, "  {:<28} {tag:<7} {:>8.1?} {why}", r.name, r.duration)?;
        }
        write!(
            f,
            "{} checks passed, {} failed, {} skipped",
            self.passed(),
            self.failures().len(),
            self.skipped()
        )
    }
}

/// A conformance check.
pub type CheckFn = fn(&dyn Hypervisor, &ConformanceOptions) -> Result<Verdict, CheckFailure>;

/// Every check, in the order [`run_all`] runs them.
pub const CHECKS: &[(&str, CheckFn)] = &[
    ("host_info", check_host_info),
    ("dom0", check_dom0),
    ("lifecycle", check_lifecycle),
    ("memory_accounting", check_memory_accounting),
    ("domid_allocation", check_domid_allocation),
    ("memory_exhaustion", check_memory_exhaustion),
    ("config_validation", check_config_validation),
    ("missing_domain", check_missing_domain),
    ("clean_poweroff", check_clean_poweroff),
    ("clean_reboot", check_clean_reboot),
    ("destroy_any_state", check_destroy_any_state),
    ("suspend_resume", check_suspend_resume),
    ("vcpus_and_memory_target", check_vcpus_and_memory_target),
    ("devices", check_devices),
    ("console", check_console),
    ("guest_initiated", check_guest_initiated),
    ("fault_injection", check_fault_injection),
    ("parallel_lifecycle", check_parallel_lifecycle),
    ("hvm_guest", check_hvm_guest),
];

/// Runs one check, catching its failure into an [`Outcome`].
pub fn run_check(
    name: &'static str,
    check: CheckFn,
    backend: &dyn Hypervisor,
    opts: &ConformanceOptions,
) -> CheckResult {
    let start = Instant::now();
    let outcome = match check(backend, opts) {
        Ok(Verdict::Passed) => Outcome::Passed,
        Ok(Verdict::Skipped(why)) => Outcome::Skipped(why),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    CheckResult {
        name,
        outcome,
        duration: start.elapsed(),
    }
}

/// Runs every check in [`CHECKS`] against `backend`.
pub fn run_all(backend: &dyn Hypervisor, opts: &ConformanceOptions) -> Report {
    let results = CHECKS
        .iter()
        .map(|(name, check)| {
            let r = run_check(name, *check, backend, opts);
            tracing::info!(check = name, outcome = ?r.outcome, "conformance");
            r
        })
        .collect();
    Report {
        backend: backend.backend_name().to_string(),
        results,
    }
}

// ---------------------------------------------------------------------------
// Helpers

trait Step<T> {
    fn step(self, what: &str) -> Result<T, CheckFailure>;
}

impl<T> Step<T> for Result<T, BackendError> {
    fn step(self, what: &str) -> Result<T, CheckFailure> {
        self.map_err(|source| CheckFailure::Backend {
            step: what.to_string(),
            source,
        })
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), CheckFailure> {
    if cond {
        Ok(())
    } else {
        Err(CheckFailure::Expectation(msg()))
    }
}

fn expect_err<T: fmt::Debug>(
    r: Result<T, BackendError>,
    what: &str,
    pred: impl FnOnce(&BackendError) -> bool,
) -> Result<BackendError, CheckFailure> {
    match r {
        Ok(v) => Err(CheckFailure::Expectation(format!(
            "{what}: expected an error, got Ok({v:?})"
        ))),
        Err(e) if pred(&e) => Ok(e),
        Err(e) => Err(CheckFailure::Expectation(format!("{what}: wrong error: {e:?}"))),
    }
}

/// Destroys every domain it tracks when dropped, so failed checks do not
/// leak guests.
struct Scope<'a> {
    hv: &'a dyn Hypervisor,
    opts: &'a ConformanceOptions,
    check: &'static str,
    domains: Vec<DomId>,
    counter: u32,
}

impl<'a> Scope<'a> {
    fn new(hv: &'a dyn Hypervisor, opts: &'a ConformanceOptions, check: &'static str) -> Self {
        Scope {
            hv,
            opts,
            check,
            domains: Vec::new(),
            counter: 0,
        }
    }

    fn config(&mut self) -> DomainConfig {
        self.counter += 1;
        self.opts
            .config(format!("{}-{}-{}", self.opts.name_prefix, self.check, self.counter))
    }

    fn track(&mut self, domid: DomId) -> DomId {
        self.domains.push(domid);
        domid
    }

    fn create(&mut self, config: &DomainConfig) -> Result<DomId, CheckFailure> {
        let domid = self.hv.create_domain(config).step("create_domain")?;
        Ok(self.track(domid))
    }

    /// Creates, builds and unpauses a guest.
    fn start(&mut self) -> Result<(DomId, DomainConfig), CheckFailure> {
        let config = self.config();
        let domid = self.create(&config)?;
        self.hv.build(domid).step("build")?;
        self.hv.unpause(domid).step("unpause")?;
        Ok((domid, config))
    }

    fn destroy(&mut self, domid: DomId) -> Result<(), CheckFailure> {
        self.hv.destroy(domid).step("destroy")?;
        self.domains.retain(|d| *d != domid);
        Ok(())
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        for domid in self.domains.drain(..) {
            match self.hv.destroy(domid) {
                Ok(()) | Err(BackendError::NoSuchDomain { .. }) => {}
                Err(e) => tracing::warn!(domid, error = %e, "conformance cleanup failed"),
            }
        }
    }
}

/// Re-arms nothing and clears all faults when dropped.
struct FaultGuard<'a>(&'a dyn super::FaultInjection);

impl Drop for FaultGuard<'_> {
    fn drop(&mut self) {
        self.0.clear_faults();
    }
}

/// Waits for an event matching `pred`, skipping others.
fn wait_event(
    rx: &EventReceiver,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&BackendEvent) -> bool,
) -> Result<(), CheckFailure> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) if pred(&ev) || ev == BackendEvent::Resync => return Ok(()),
            Ok(_) => continue,
            Err(_) => {
                return Err(CheckFailure::Expectation(format!(
                    "no event for {what} within {timeout:?}"
                )))
            }
        }
    }
}

/// Polls `domain_info` until `pred` holds on the state.
fn wait_state(
    hv: &dyn Hypervisor,
    domid: DomId,
    timeout: Duration,
    what: &str,
    pred: impl Fn(DomainState) -> bool,
) -> Result<super::DomainInfo, CheckFailure> {
    let deadline = Instant::now() + timeout;
    loop {
        let info = hv.domain_info(domid).step("domain_info")?;
        if pred(info.state) {
            return Ok(info);
        }
        if Instant::now() >= deadline {
            return Err(CheckFailure::Expectation(format!(
                "domain {domid} did not reach {what} within {timeout:?} (state {})",
                info.state
            )));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn free(hv: &dyn Hypervisor) -> Result<u64, CheckFailure> {
    hv.memory_free().step("memory_free")
}

fn close_to(a: u64, b: u64, slack: u64) -> bool {
    a.abs_diff(b) <= slack
}

fn is_gone(r: &Result<super::DomainInfo, BackendError>) -> bool {
    matches!(r, Err(BackendError::NoSuchDomain { .. }))
}

/// A domid that no domain has right now.
fn unused_domid(hv: &dyn Hypervisor) -> Result<DomId, CheckFailure> {
    let live: BTreeSet<DomId> = hv
        .list_domains()
        .step("list_domains")?
        .iter()
        .map(|d| d.domid)
        .collect();
    (1..DOMID_FIRST_RESERVED)
        .rev()
        .find(|d| !live.contains(d))
        .ok_or_else(|| CheckFailure::Expectation("every domid is in use".into()))
}

fn scratch_file(opts: &ConformanceOptions, name: &str, len: u64) -> Result<PathBuf, CheckFailure> {
    let io = |source| CheckFailure::Io {
        step: format!("creating scratch file {name}"),
        source,
    };
    std::fs::create_dir_all(&opts.scratch_dir).map_err(io)?;
    let path = opts
        .scratch_dir
        .join(format!("{}-{}-{name}", opts.name_prefix, uuid::Uuid::new_v4()));
    let f = std::fs::File::create(&path).map_err(io)?;
    f.set_len(len).map_err(io)?;
    Ok(path)
}

// ---------------------------------------------------------------------------
// Checks

/// Host facts are present and consistent.
pub fn check_host_info(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let info = hv.host_info().step("host_info")?;
    ensure(info.cpu.count >= 1, || "no CPUs".into())?;
    ensure(!info.hostname.is_empty(), || "empty hostname".into())?;
    ensure(!info.hypervisor.name.is_empty(), || "empty hypervisor name".into())?;
    ensure(info.memory_total > 0, || "zero total memory".into())?;
    ensure(info.memory_free <= info.memory_total, || {
        format!("free {} > total {}", info.memory_free, info.memory_total)
    })?;
    let free_now = free(hv)?;
    ensure(close_to(free_now, info.memory_free, opts.memory_slack), || {
        format!("memory_free() {free_now} disagrees with host_info {}", info.memory_free)
    })?;
    Ok(Verdict::Passed)
}

/// Dom0 is listed first, running, and cannot be destroyed or paused.
pub fn check_dom0(hv: &dyn Hypervisor, _opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let list = hv.list_domains().step("list_domains")?;
    let first = list
        .first()
        .ok_or_else(|| CheckFailure::Expectation("list_domains is empty".into()))?;
    ensure(first.domid == 0, || format!("first domain is {}, not 0", first.domid))?;
    ensure(first.state == DomainState::Running, || {
        format!("dom0 is {}", first.state)
    })?;
    ensure(first.memory_actual > 0, || "dom0 owns no memory".into())?;
    let sorted = list.windows(2).all(|w| w[0].domid < w[1].domid);
    ensure(sorted, || "list_domains not in domid order".into())?;
    let info = hv.domain_info(0).step("domain_info(0)")?;
    ensure(info.domid == 0, || "domain_info(0) is not dom0".into())?;
    expect_err(hv.destroy(0), "destroy(0)", |e| {
        matches!(e, BackendError::InvalidArgument { .. })
    })?;
    expect_err(hv.pause(0), "pause(0)", |e| {
        matches!(e, BackendError::InvalidArgument { .. })
    })?;
    let again = hv.domain_info(0).step("domain_info(0) again")?;
    ensure(again.state == DomainState::Running, || "dom0 changed state".into())?;
    Ok(Verdict::Passed)
}

/// create → paused/unbuilt; build; unpause → running; pause; unpause;
/// destroy → gone; events for each step.
pub fn check_lifecycle(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "lifecycle");
    let rx = hv.subscribe().step("subscribe")?;
    let config = scope.config();
    let domid = scope.create(&config)?;
    ensure(domid != 0 && domid < DOMID_FIRST_RESERVED, || {
        format!("bad domid {domid}")
    })?;
    wait_event(&rx, opts.event_timeout, "create", |e| {
        *e == BackendEvent::DomainChanged(domid)
    })?;
    let info = hv.domain_info(domid).step("domain_info")?;
    ensure(info.state == DomainState::Paused && !info.built, || {
        format!("new domain is {} built={}", info.state, info.built)
    })?;
    ensure(info.uuid == config.uuid && info.name == config.name, || {
        "uuid/name not kept".into()
    })?;
    ensure(info.memory_target == config.memory_target, || {
        format!("memory_target {} != {}", info.memory_target, config.memory_target)
    })?;
    ensure(
        info.vcpus_online == config.vcpus_at_start && info.vcpus_max == config.vcpus_max,
        || "vcpus not as configured".into(),
    )?;
    expect_err(hv.unpause(domid), "unpause before build", |e| {
        matches!(e, BackendError::InvalidState { .. })
    })?;
    hv.build(domid).step("build")?;
    expect_err(hv.build(domid), "second build", |e| {
        matches!(e, BackendError::InvalidState { .. })
    })?;
    hv.unpause(domid).step("unpause")?;
    let info = hv.domain_info(domid).step("domain_info")?;
    ensure(info.state == DomainState::Running && info.built, || {
        format!("after unpause: {}", info.state)
    })?;
    hv.pause(domid).step("pause")?;
    wait_event(&rx, opts.event_timeout, "pause", |e| {
        *e == BackendEvent::DomainChanged(domid)
    })?;
    ensure(
        hv.domain_info(domid).step("domain_info")?.state == DomainState::Paused,
        || "pause did not pause".into(),
    )?;
    hv.unpause(domid).step("unpause again")?;
    let listed = hv.list_domains().step("list_domains")?;
    ensure(listed.iter().any(|d| d.domid == domid), || "domain not listed".into())?;
    scope.destroy(domid)?;
    wait_event(&rx, opts.event_timeout, "destroy", |e| {
        *e == BackendEvent::DomainChanged(domid)
    })?;
    ensure(is_gone(&hv.domain_info(domid)), || {
        "domain still there after destroy".into()
    })?;
    Ok(Verdict::Passed)
}

/// Creating takes `memory_target` from free memory, ballooning moves it,
/// destroying gives it back.
pub fn check_memory_accounting(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "memory");
    let before = free(hv)?;
    let mut config = scope.config();
    config.memory_max = opts.guest_memory * 2;
    let domid = scope.create(&config)?;
    let during = free(hv)?;
    ensure(
        close_to(before - during.min(before), opts.guest_memory, opts.memory_slack),
        || format!("free went {before} -> {during} for a {} byte domain", opts.guest_memory),
    )?;
    let info = hv.domain_info(domid).step("domain_info")?;
    ensure(
        close_to(info.memory_actual, opts.guest_memory, opts.memory_slack),
        || format!("memory_actual {}", info.memory_actual),
    )?;
    hv.build(domid).step("build")?;
    hv.unpause(domid).step("unpause")?;
    hv.set_memory_target(domid, opts.guest_memory * 2).step("balloon up")?;
    let up = hv.domain_info(domid).step("domain_info")?;
    ensure(up.memory_target == opts.guest_memory * 2, || {
        format!("target after balloon up: {}", up.memory_target)
    })?;
    scope.destroy(domid)?;
    let after = free(hv)?;
    ensure(close_to(after, before, opts.memory_slack), || {
        format!("free memory {before} before, {after} after destroy")
    })?;
    Ok(Verdict::Passed)
}

/// Domids are distinct, non-zero, increasing, not reused right away.
pub fn check_domid_allocation(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "domid");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let config = scope.config();
        ids.push(scope.create(&config)?);
    }
    let increasing = ids.windows(2).all(|w| w[1] > w[0] || w[0] > DOMID_FIRST_RESERVED - 64);
    ensure(increasing && !ids.contains(&0), || {
        format!("domids {ids:?} not increasing")
    })?;
    let last = ids[2];
    scope.destroy(last)?;
    let config = scope.config();
    let next = scope.create(&config)?;
    ensure(next != last, || format!("domid {last} reused immediately"))?;
    Ok(Verdict::Passed)
}

/// A domain bigger than free memory fails with `NotEnoughMemory` and
/// leaves nothing behind.
pub fn check_memory_exhaustion(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "exhaustion");
    let domains_before = hv.list_domains().step("list_domains")?.len();
    let before = free(hv)?;
    let too_big = before + 1024 * MIB;
    let mut config = scope.config();
    config.memory_target = too_big;
    config.memory_max = too_big;
    let err = expect_err(hv.create_domain(&config), "oversized create", |e| {
        matches!(e, BackendError::NotEnoughMemory { .. })
    })?;
    if let BackendError::NotEnoughMemory { needed, available } = err {
        ensure(needed >= too_big, || format!("needed {needed} < requested {too_big}"))?;
        ensure(close_to(available, before, opts.memory_slack), || {
            format!("available {available} but free was {before}")
        })?;
    }
    ensure(hv.list_domains().step("list_domains")?.len() == domains_before, || {
        "a failed create left a domain behind".into()
    })?;
    ensure(close_to(free(hv)?, before, opts.memory_slack), || {
        "a failed create consumed memory".into()
    })?;
    // Fill the host with guests until it refuses, then check it refuses
    // cleanly and recovers. Bounded so a huge host does not take forever.
    let chunk = (before / 4).max(opts.guest_memory);
    let mut filled = 0;
    loop {
        let mut config = scope.config();
        config.memory_target = chunk;
        config.memory_max = chunk;
        match hv.create_domain(&config) {
            Ok(domid) => {
                scope.track(domid);
                filled += 1;
                if filled > 8 {
                    return Err(CheckFailure::Expectation(format!(
                        "{filled} domains of {chunk} bytes fit in {before} free bytes"
                    )));
                }
            }
            Err(BackendError::NotEnoughMemory { .. }) => break,
            Err(e) => {
                return Err(CheckFailure::Backend {
                    step: "filling the host".into(),
                    source: e,
                })
            }
        }
    }
    ensure(filled >= 3, || {
        format!("only {filled} domains of {chunk} bytes fit in {before} free bytes")
    })?;
    drop(scope);
    ensure(close_to(free(hv)?, before, opts.memory_slack), || {
        "memory not returned after destroying the filler domains".into()
    })?;
    Ok(Verdict::Passed)
}

/// Inconsistent configs are rejected; HVM is unsupported unless the backend
/// says otherwise.
pub fn check_config_validation(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "validation");
    let invalid = |e: &BackendError| matches!(e, BackendError::InvalidArgument { .. });
    let mut c = scope.config();
    c.memory_target = c.memory_max + 1;
    expect_err(hv.create_domain(&c), "target > max", invalid)?;
    let mut c = scope.config();
    c.vcpus_at_start = 0;
    expect_err(hv.create_domain(&c), "0 vCPUs", invalid)?;
    let mut c = scope.config();
    c.vcpus_at_start = c.vcpus_max + 1;
    expect_err(hv.create_domain(&c), "vcpus_at_start > max", invalid)?;
    let mut c = scope.config();
    c.name = String::new();
    expect_err(hv.create_domain(&c), "empty name", invalid)?;
    let good = scope.config();
    let domid = scope.create(&good)?;
    expect_err(
        hv.create_domain(&good),
        "duplicate uuid",
        |e| matches!(e, BackendError::DuplicateDomain { domid: d, .. } if *d == domid),
    )?;
    if !hv.capabilities().hvm {
        let mut c = scope.config();
        c.kind = DomainKind::Hvm(Default::default());
        expect_err(hv.create_domain(&c), "HVM create", |e| {
            matches!(e, BackendError::Unsupported { .. })
        })?;
    }
    Ok(Verdict::Passed)
}

/// An HVM guest with no disks (its BIOS finds nothing to boot and waits) runs under the
/// backend's device model: built, unpaused, paused and unpaused again, its console (the
/// serial line) opened, destroyed. A backend without HVM support refuses it as unsupported.
pub fn check_hvm_guest(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "hvm");
    let mut config = scope.config();
    config.kind = DomainKind::Hvm(super::HvmBoot {
        boot_order: "dc".into(),
        ..Default::default()
    });
    if !hv.capabilities().hvm {
        expect_err(hv.create_domain(&config), "HVM create", |e| {
            matches!(e, BackendError::Unsupported { .. })
        })?;
        return Ok(Verdict::Passed);
    }
    let domid = scope.create(&config)?;
    hv.build(domid).step("build")?;
    hv.unpause(domid).step("unpause")?;
    thread::sleep(Duration::from_secs(2));
    let info = hv.domain_info(domid).step("domain_info")?;
    ensure(info.state == DomainState::Running && info.built, || {
        format!("HVM guest after unpause: {} built={}", info.state, info.built)
    })?;
    hv.pause(domid).step("pause")?;
    ensure(
        hv.domain_info(domid).step("domain_info")?.state == DomainState::Paused,
        || "pause did not pause the HVM guest".into(),
    )?;
    hv.unpause(domid).step("unpause again")?;
    ensure(
        hv.domain_info(domid).step("domain_info")?.state == DomainState::Running,
        || "the HVM guest does not run again after unpause".into(),
    )?;
    let console = hv.console_stream(domid).step("console_stream")?;
    drop(console);
    scope.destroy(domid)?;
    expect_err(hv.domain_info(domid), "domain_info after destroy", |e| {
        matches!(e, BackendError::NoSuchDomain { .. })
    })?;
    Ok(Verdict::Passed)
}

/// Every per-domain call on a missing domid fails with `NoSuchDomain`.
pub fn check_missing_domain(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let d = unused_domid(hv)?;
    let gone = |e: &BackendError| matches!(e, BackendError::NoSuchDomain { domid, .. } if *domid == d);
    expect_err(hv.domain_info(d), "domain_info", gone)?;
    expect_err(hv.build(d), "build", gone)?;
    expect_err(hv.unpause(d), "unpause", gone)?;
    expect_err(hv.pause(d), "pause", gone)?;
    expect_err(hv.shutdown(d, ShutdownReason::PowerOff), "shutdown", gone)?;
    expect_err(hv.destroy(d), "destroy", gone)?;
    expect_err(hv.set_vcpus(d, 1), "set_vcpus", gone)?;
    expect_err(hv.set_memory_target(d, opts.guest_memory), "set_memory_target", gone)?;
    expect_err(hv.list_devices(d), "list_devices", gone)?;
    expect_err(hv.unplug_block(d, 0, UnplugMode::Force), "unplug_block", gone)?;
    expect_err(hv.unplug_net(d, 0, UnplugMode::Force), "unplug_net", gone)?;
    expect_err(hv.console_stream(d).map(|_| ()), "console_stream", gone)?;
    let path = opts.scratch_dir.join(format!("{}-never-written", opts.name_prefix));
    expect_err(hv.suspend_to(d, &path), "suspend_to", gone)?;
    ensure(!path.exists(), || "suspend_to of a missing domain wrote a file".into())?;
    Ok(Verdict::Passed)
}

/// A clean poweroff request leads to `Shutdown(PowerOff)` and an event;
/// the domain keeps its memory until destroyed.
pub fn check_clean_poweroff(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "poweroff");
    let (domid, _) = scope.start()?;
    let rx = hv.subscribe().step("subscribe")?;
    let before = free(hv)?;
    hv.shutdown(domid, ShutdownReason::PowerOff)
        .step("shutdown(poweroff)")?;
    wait_event(&rx, opts.event_timeout, "guest poweroff", |e| {
        *e == BackendEvent::DomainChanged(domid)
    })?;
    let info = wait_state(hv, domid, opts.event_timeout, "shutdown(poweroff)", |s| {
        s == DomainState::Shutdown(ShutdownCode::PowerOff)
    })?;
    ensure(info.memory_actual > 0, || {
        "a shut-down domain released its memory before destroy".into()
    })?;
    expect_err(hv.unpause(domid), "unpause of a shut-down domain", |e| {
        matches!(e, BackendError::InvalidState { .. })
    })?;
    scope.destroy(domid)?;
    ensure(
        close_to(free(hv)?, before + opts.guest_memory, opts.memory_slack),
        || "destroy did not free the shut-down domain's memory".into(),
    )?;
    Ok(Verdict::Passed)
}

/// A clean reboot request restarts the guest in place (capability) or
/// leaves it in `Shutdown(Reboot)` for the caller, who can `restart` it.
pub fn check_clean_reboot(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "reboot");
    let (domid, config) = scope.start()?;
    let rx = hv.subscribe().step("subscribe")?;
    hv.shutdown(domid, ShutdownReason::Reboot).step("shutdown(reboot)")?;
    wait_event(&rx, opts.event_timeout, "guest reboot", |e| {
        *e == BackendEvent::DomainChanged(domid)
    })?;
    if hv.capabilities().reboot_in_place {
        let deadline = Instant::now() + opts.event_timeout;
        loop {
            let info = hv.domain_info(domid).step("domain_info")?;
            if info.state == DomainState::Running && info.restarts == 1 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(CheckFailure::Expectation(format!(
                    "no in-place restart: state {} restarts {}",
                    info.state, info.restarts
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    } else {
        wait_state(hv, domid, opts.event_timeout, "shutdown(reboot)", |s| {
            s == DomainState::Shutdown(ShutdownCode::Reboot)
        })?;
        let new = hv.restart(domid, &config).step("restart")?;
        scope.domains.retain(|d| *d != domid);
        scope.track(new);
        ensure(is_gone(&hv.domain_info(domid)), || "restart left the old domain".into())?;
        let info = hv.domain_info(new).step("domain_info(new)")?;
        ensure(info.state == DomainState::Running && info.uuid == config.uuid, || {
            format!("restarted domain is {}", info.state)
        })?;
    }
    Ok(Verdict::Passed)
}

/// `destroy` works whatever the domain's state.
pub fn check_destroy_any_state(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "destroy");
    let before = free(hv)?;
    let c = scope.config();
    let unbuilt = scope.create(&c)?;
    let (running, _) = scope.start()?;
    let (paused, _) = scope.start()?;
    hv.pause(paused).step("pause")?;
    let (shut, _) = scope.start()?;
    hv.shutdown(shut, ShutdownReason::Halt).step("shutdown(halt)")?;
    wait_state(hv, shut, opts.event_timeout, "shutdown", |s| {
        matches!(s, DomainState::Shutdown(_))
    })?;
    for d in [unbuilt, running, paused, shut] {
        scope.destroy(d)?;
        ensure(is_gone(&hv.domain_info(d)), || format!("domain {d} survived destroy"))?;
    }
    ensure(close_to(free(hv)?, before, opts.memory_slack), || {
        "memory not returned".into()
    })?;
    Ok(Verdict::Passed)
}

/// `suspend_to` writes a file, destroys the domain and frees its memory;
/// `resume_from` brings back a paused domain with the same uuid and memory.
pub fn check_suspend_resume(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    if !hv.capabilities().suspend_resume {
        return Ok(Verdict::Skipped("backend lacks suspend_resume".into()));
    }
    let mut scope = Scope::new(hv, opts, "suspend");
    let before = free(hv)?;
    let (domid, config) = scope.start()?;
    hv.set_vcpus(domid, 2).step("set_vcpus")?;
    std::fs::create_dir_all(&opts.scratch_dir).map_err(|source| CheckFailure::Io {
        step: "scratch dir".into(),
        source,
    })?;
    let path = opts
        .scratch_dir
        .join(format!("{}-{}.suspend", opts.name_prefix, config.uuid));
    let rx = hv.subscribe().step("subscribe")?;
    hv.suspend_to(domid, &path).step("suspend_to")?;
    scope.domains.retain(|d| *d != domid);
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    ensure(len > 0, || format!("no suspend image at {}", path.display()))?;
    ensure(is_gone(&hv.domain_info(domid)), || {
        "domain still exists after suspend_to".into()
    })?;
    wait_event(&rx, opts.event_timeout, "suspend", |e| {
        *e == BackendEvent::DomainChanged(domid)
    })?;
    ensure(close_to(free(hv)?, before, opts.memory_slack), || {
        "suspend did not free memory".into()
    })?;
    let mut other = config.clone();
    other.uuid = uuid::Uuid::new_v4();
    expect_err(hv.resume_from(&path, &other), "resume with a foreign uuid", |e| {
        matches!(
            e,
            BackendError::InvalidImage { .. } | BackendError::InvalidArgument { .. }
        )
    })?;
    let new = hv.resume_from(&path, &config).step("resume_from")?;
    scope.track(new);
    let info = hv.domain_info(new).step("domain_info")?;
    ensure(info.state == DomainState::Paused && info.built, || {
        format!("resumed domain is {} built={}", info.state, info.built)
    })?;
    ensure(info.uuid == config.uuid, || "uuid changed".into())?;
    ensure(info.memory_target == config.memory_target, || {
        "memory target changed".into()
    })?;
    ensure(info.vcpus_online == 2, || {
        format!("vcpus_online {} after resume", info.vcpus_online)
    })?;
    hv.unpause(new).step("unpause resumed")?;
    ensure(
        hv.domain_info(new).step("domain_info")?.state == DomainState::Running,
        || "resumed domain does not run".into(),
    )?;
    let _ = std::fs::remove_file(&path);
    scope.destroy(new)?;
    let missing = opts.scratch_dir.join(format!("{}-missing.suspend", opts.name_prefix));
    expect_err(hv.resume_from(&missing, &config), "resume from a missing file", |e| {
        matches!(e, BackendError::Io { .. })
    })?;
    Ok(Verdict::Passed)
}

/// vCPU hot(un)plug and balloon target changes show in `domain_info`;
/// out-of-range values are rejected.
pub fn check_vcpus_and_memory_target(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "vcpus");
    let (domid, config) = scope.start()?;
    hv.set_vcpus(domid, config.vcpus_max).step("set_vcpus(max)")?;
    ensure(
        hv.domain_info(domid).step("domain_info")?.vcpus_online == config.vcpus_max,
        || "vcpus_online not updated".into(),
    )?;
    let invalid = |e: &BackendError| matches!(e, BackendError::InvalidArgument { .. });
    expect_err(hv.set_vcpus(domid, config.vcpus_max + 1), "vcpus > max", invalid)?;
    expect_err(hv.set_vcpus(domid, 0), "0 vcpus", invalid)?;
    let half = opts.guest_memory / 2;
    hv.set_memory_target(domid, half).step("balloon down")?;
    let info = hv.domain_info(domid).step("domain_info")?;
    ensure(info.memory_target == half, || {
        format!("target {} != {half}", info.memory_target)
    })?;
    expect_err(
        hv.set_memory_target(domid, config.memory_max + 1),
        "target > max",
        invalid,
    )?;
    Ok(Verdict::Passed)
}

/// Block and network devices plug, list, refuse duplicates, unplug, and
/// emit `DeviceChanged`.
pub fn check_devices(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "devices");
    let (domid, _) = scope.start()?;
    let rx = hv.subscribe().step("subscribe")?;
    let disk_path = scratch_file(opts, "disk.img", 8 * MIB)?;
    let disk = BlockDevice {
        devid: 0,
        backing: Some(disk_path.clone()),
        mode: BlockMode::ReadWrite,
        cd: false,
    };
    let cd = BlockDevice {
        devid: 3,
        backing: None,
        mode: BlockMode::ReadOnly,
        cd: true,
    };
    let nic = NetDevice {
        devid: 0,
        mac: MacAddr::random_local(),
        mtu: 1500,
        bridge: "xenbr0".into(),
    };
    let changed = |kind: DeviceKind, devid: DevId| {
        move |e: &BackendEvent| *e == BackendEvent::DeviceChanged { domid, kind, devid }
    };
    hv.plug_block(domid, &disk).step("plug_block(disk)")?;
    wait_event(&rx, opts.event_timeout, "disk plug", changed(DeviceKind::Block, 0))?;
    hv.plug_block(domid, &cd).step("plug_block(empty cd)")?;
    hv.plug_net(domid, &nic).step("plug_net")?;
    wait_event(&rx, opts.event_timeout, "nic plug", changed(DeviceKind::Net, 0))?;
    let devices = hv.list_devices(domid).step("list_devices")?;
    let ids: Vec<(DeviceKind, DevId)> = devices.iter().map(|d| (d.kind(), d.devid())).collect();
    ensure(
        ids == vec![(DeviceKind::Block, 0), (DeviceKind::Block, 3), (DeviceKind::Net, 0)],
        || format!("list_devices gave {ids:?}"),
    )?;
    expect_err(hv.plug_block(domid, &disk), "duplicate vbd", |e| {
        matches!(e, BackendError::DeviceExists { .. })
    })?;
    expect_err(hv.plug_net(domid, &nic), "duplicate vif", |e| {
        matches!(e, BackendError::DeviceExists { .. })
    })?;
    let mut rw_cd = cd.clone();
    rw_cd.devid = 4;
    rw_cd.mode = BlockMode::ReadWrite;
    expect_err(hv.plug_block(domid, &rw_cd), "read-write CD", |e| {
        matches!(e, BackendError::InvalidArgument { .. })
    })?;
    // A read-write disk cannot be shared with a second guest.
    let (other, _) = scope.start()?;
    expect_err(hv.plug_block(other, &disk), "sharing a rw disk", |e| {
        matches!(e, BackendError::DeviceBusy { .. })
    })?;
    hv.unplug_block(domid, 0, UnplugMode::Clean)
        .step("unplug_block(clean)")?;
    wait_event(&rx, opts.event_timeout, "disk unplug", changed(DeviceKind::Block, 0))?;
    hv.plug_block(other, &disk).step("plug the freed disk elsewhere")?;
    hv.unplug_net(domid, 0, UnplugMode::Force).step("unplug_net(force)")?;
    expect_err(hv.unplug_net(domid, 0, UnplugMode::Force), "unplug twice", |e| {
        matches!(e, BackendError::NoSuchDevice { .. })
    })?;
    let left = hv.list_devices(domid).step("list_devices")?;
    ensure(left.len() == 1 && left[0].devid() == 3, || {
        format!("after unplug: {left:?}")
    })?;
    drop(scope);
    let _ = std::fs::remove_file(&disk_path);
    Ok(Verdict::Passed)
}

/// The console replays boot output, (optionally) names the guest, echoes
/// input, and reaches end of stream when the domain is destroyed.
pub fn check_console(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let mut scope = Scope::new(hv, opts, "console");
    let (domid, config) = scope.start()?;
    let mut console = hv.console_stream(domid).step("console_stream")?;
    let io = |step: &str| {
        let step = step.to_string();
        move |source| CheckFailure::Io { step, source }
    };
    let needle = if opts.console_shows_name {
        config.name.clone()
    } else {
        "\n".to_string()
    };
    let (text, found) = console
        .read_until_contains(&needle, opts.event_timeout)
        .map_err(io("reading boot output"))?;
    ensure(found && !text.is_empty(), || {
        format!("boot output lacks {needle:?}: {text:?}")
    })?;
    if opts.console_echoes {
        let probe = format!("conformance-echo-{}", rand::random::<u32>());
        console
            .write_all(format!("{probe}\n").as_bytes())
            .map_err(io("writing to the console"))?;
        let (text, found) = console
            .read_until_contains(&probe, opts.event_timeout)
            .map_err(io("reading the echo"))?;
        ensure(found, || format!("no echo of {probe:?}: {text:?}"))?;
        // A second, independent connection also sees the history.
        let mut second = hv.console_stream(domid).step("second console_stream")?;
        let (_, found) = second
            .read_until_contains(&probe, opts.event_timeout)
            .map_err(io("reading history on a second connection"))?;
        ensure(found, || "second connection did not replay history".into())?;
    }
    scope.destroy(domid)?;
    console
        .read_until_contains("\u{0}never\u{0}", opts.event_timeout)
        .map_err(io("draining after destroy"))?;
    let mut buf = [0u8; 64];
    let eof = console.wait_readable(opts.event_timeout).map_err(io("poll"))?
        && matches!(std::io::Read::read(&mut console, &mut buf), Ok(0));
    ensure(eof, || "console did not close after destroy".into())?;
    Ok(Verdict::Passed)
}

/// Guests powering off, crashing and rebooting on their own produce
/// `DomainChanged` and the right state. Needs [`Hypervisor::guest_control`].
pub fn check_guest_initiated(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let Some(guests) = hv.guest_control() else {
        return Ok(Verdict::Skipped("backend cannot drive guests".into()));
    };
    let mut scope = Scope::new(hv, opts, "guest");
    let rx = hv.subscribe().step("subscribe")?;
    for code in [ShutdownCode::PowerOff, ShutdownCode::Crash] {
        let (domid, _) = scope.start()?;
        guests.guest_shutdown(domid, code).step("guest_shutdown")?;
        wait_event(&rx, opts.event_timeout, "guest self-shutdown", |e| {
            *e == BackendEvent::DomainChanged(domid)
        })?;
        wait_state(hv, domid, opts.event_timeout, "self shutdown", |s| {
            s == DomainState::Shutdown(code)
        })?;
        expect_err(guests.guest_shutdown(domid, code), "acting twice", |e| {
            matches!(e, BackendError::InvalidState { .. })
        })?;
        scope.destroy(domid)?;
    }
    let (domid, _) = scope.start()?;
    guests
        .guest_shutdown(domid, ShutdownCode::Reboot)
        .step("guest reboot")?;
    wait_event(&rx, opts.event_timeout, "guest self-reboot", |e| {
        *e == BackendEvent::DomainChanged(domid)
    })?;
    let info = hv.domain_info(domid).step("domain_info")?;
    let ok = if hv.capabilities().reboot_in_place {
        info.state == DomainState::Running && info.restarts == 1
    } else {
        info.state == DomainState::Shutdown(ShutdownCode::Reboot)
    };
    ensure(ok, || {
        format!("after self reboot: {} restarts={}", info.state, info.restarts)
    })?;
    Ok(Verdict::Passed)
}

/// Injected faults fail the right calls with the op and errno, before any
/// side effect, and stop after `count`. Needs
/// [`Hypervisor::fault_injection`].
pub fn check_fault_injection(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let Some(faults) = hv.fault_injection() else {
        return Ok(Verdict::Skipped("backend has no fault injection".into()));
    };
    let _guard = FaultGuard(faults);
    let mut scope = Scope::new(hv, opts, "faults");
    let domains_before = hv.list_domains().step("list_domains")?.len();
    let before = free(hv)?;
    faults.inject(Fault::FailNext {
        op: Op::CreateDomain,
        count: 2,
        errno: Errno::EIO,
    });
    for i in 0..2 {
        let c = scope.config();
        expect_err(hv.create_domain(&c), &format!("faulted create #{i}"), |e| {
            e.op() == Some(Op::CreateDomain) && e.errno() == Some(Errno::EIO)
        })?;
    }
    ensure(
        hv.list_domains().step("list_domains")?.len() == domains_before
            && close_to(free(hv)?, before, opts.memory_slack),
        || "a faulted create had side effects".into(),
    )?;
    let c = scope.config();
    let domid = scope.create(&c)?;
    faults.inject(Fault::FailAlways {
        op: Op::Build,
        errno: Errno::ENOMEM,
    });
    for _ in 0..3 {
        let err = expect_err(hv.build(domid), "faulted build", |e| e.errno() == Some(Errno::ENOMEM))?;
        let msg = err.to_string();
        ensure(msg.contains("build"), || format!("message lacks the op: {msg}"))?;
    }
    faults.clear_faults();
    hv.build(domid).step("build after clearing faults")?;
    faults.inject(Fault::FailNext {
        op: Op::Destroy,
        count: 1,
        errno: Errno::EBUSY,
    });
    expect_err(hv.destroy(domid), "faulted destroy", |e| {
        e.errno() == Some(Errno::EBUSY)
    })?;
    ensure(hv.domain_info(domid).is_ok(), || "a faulted destroy destroyed".into())?;
    scope.destroy(domid)?;
    Ok(Verdict::Passed)
}

/// Many guests started and destroyed concurrently get distinct domids and
/// leave memory as it was.
pub fn check_parallel_lifecycle(hv: &dyn Hypervisor, opts: &ConformanceOptions) -> Result<Verdict, CheckFailure> {
    let before = free(hv)?;
    let n = opts.parallel_domains.max(2);
    let results: Vec<Result<DomId, CheckFailure>> = thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    let mut config = opts.config(format!("{}-parallel-{i}", opts.name_prefix));
                    config.vcpus_at_start = 1;
                    let domid = hv.create_domain(&config).step("create_domain")?;
                    let run = hv.build(domid).and_then(|()| hv.unpause(domid)).step("build+unpause");
                    let info = hv.domain_info(domid).step("domain_info");
                    hv.destroy(domid).step("destroy")?;
                    run?;
                    let info = info?;
                    ensure(info.uuid == config.uuid, || {
                        format!("domain {domid} has someone else's uuid")
                    })?;
                    Ok(domid)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CheckFailure::Expectation("a worker thread panicked".into())))
            })
            .collect()
    });
    let mut ids = BTreeSet::new();
    for r in results {
        ids.insert(r?);
    }
    ensure(ids.len() == n, || {
        format!("{n} creates gave {} distinct domids", ids.len())
    })?;
    ensure(close_to(free(hv)?, before, opts.memory_slack), || {
        "memory not returned after parallel lifecycle".into()
    })?;
    Ok(Verdict::Passed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{SimConfig, SimulatorBackend};

    #[test]
    fn simulator_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimulatorBackend::new(SimConfig::small_host());
        let report = run_all(&sim, &ConformanceOptions::for_simulator(dir.path()));
        println!("{report}");
        assert!(report.is_success(), "{report}");
        assert_eq!(report.passed(), CHECKS.len());
        // Nothing leaked.
        assert_eq!(sim.list_domains().unwrap().len(), 1);
    }

    #[test]
    fn simulator_with_xen_like_reboots_passes_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SimConfig::small_host();
        config.reboot_in_place = false;
        let sim = SimulatorBackend::new(config);
        let report = run_all(&sim, &ConformanceOptions::for_simulator(dir.path()));
        assert!(report.is_success(), "{report}");
    }

    #[test]
    fn simulator_with_slow_guests_passes_too() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig::small_host().with_guest(crate::hypervisor::GuestBehaviour {
            shutdown_delay: Duration::from_millis(30),
            ..Default::default()
        });
        let sim = SimulatorBackend::new(config);
        let report = run_all(&sim, &ConformanceOptions::for_simulator(dir.path()));
        assert!(report.is_success(), "{report}");
    }

    /// The simulator with some capabilities hidden or some behaviour broken.
    struct Wrapped {
        sim: SimulatorBackend,
        hide_extras: bool,
        constant_free: Option<u64>,
    }

    impl Wrapped {
        fn new(sim: SimulatorBackend) -> Self {
            Wrapped {
                sim,
                hide_extras: false,
                constant_free: None,
            }
        }
    }

    impl Hypervisor for Wrapped {
        fn backend_name(&self) -> &'static str {
            "wrapped"
        }
        fn capabilities(&self) -> super::super::Capabilities {
            super::super::Capabilities {
                suspend_resume: !self.hide_extras,
                ..self.sim.capabilities()
            }
        }
        fn host_info(&self) -> Result<super::super::HostInfo, BackendError> {
            let mut info = self.sim.host_info()?;
            if let Some(f) = self.constant_free {
                info.memory_free = f;
            }
            Ok(info)
        }
        fn memory_free(&self) -> Result<u64, BackendError> {
            match self.constant_free {
                Some(f) => Ok(f),
                None => self.sim.memory_free(),
            }
        }
        fn create_domain(&self, c: &DomainConfig) -> Result<DomId, BackendError> {
            self.sim.create_domain(c)
        }
        fn build(&self, d: DomId) -> Result<(), BackendError> {
            self.sim.build(d)
        }
        fn unpause(&self, d: DomId) -> Result<(), BackendError> {
            self.sim.unpause(d)
        }
        fn pause(&self, d: DomId) -> Result<(), BackendError> {
            self.sim.pause(d)
        }
        fn shutdown(&self, d: DomId, r: ShutdownReason) -> Result<(), BackendError> {
            self.sim.shutdown(d, r)
        }
        fn destroy(&self, d: DomId) -> Result<(), BackendError> {
            self.sim.destroy(d)
        }
        fn suspend_to(&self, d: DomId, p: &std::path::Path) -> Result<(), BackendError> {
            self.sim.suspend_to(d, p)
        }
        fn resume_from(&self, p: &std::path::Path, c: &DomainConfig) -> Result<DomId, BackendError> {
            self.sim.resume_from(p, c)
        }
        fn set_memory_target(&self, d: DomId, b: u64) -> Result<(), BackendError> {
            self.sim.set_memory_target(d, b)
        }
        fn set_vcpus(&self, d: DomId, n: u32) -> Result<(), BackendError> {
            self.sim.set_vcpus(d, n)
        }
        fn domain_info(&self, d: DomId) -> Result<super::super::DomainInfo, BackendError> {
            self.sim.domain_info(d)
        }
        fn list_domains(&self) -> Result<Vec<super::super::DomainInfo>, BackendError> {
            self.sim.list_domains()
        }
        fn plug_block(&self, d: DomId, b: &BlockDevice) -> Result<(), BackendError> {
            self.sim.plug_block(d, b)
        }
        fn unplug_block(&self, d: DomId, i: DevId, m: UnplugMode) -> Result<(), BackendError> {
            self.sim.unplug_block(d, i, m)
        }
        fn plug_net(&self, d: DomId, n: &NetDevice) -> Result<(), BackendError> {
            self.sim.plug_net(d, n)
        }
        fn unplug_net(&self, d: DomId, i: DevId, m: UnplugMode) -> Result<(), BackendError> {
            self.sim.unplug_net(d, i, m)
        }
        fn list_devices(&self, d: DomId) -> Result<Vec<super::super::DeviceInfo>, BackendError> {
            self.sim.list_devices(d)
        }
        fn console_stream(&self, d: DomId) -> Result<super::super::ConsoleStream, BackendError> {
            self.sim.console_stream(d)
        }
        fn subscribe(&self) -> Result<EventReceiver, BackendError> {
            self.sim.subscribe()
        }
        // fault_injection and guest_control: the defaults (None).
    }

    #[test]
    fn optional_capabilities_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut hv = Wrapped::new(SimulatorBackend::new(SimConfig::small_host()));
        hv.hide_extras = true;
        let report = run_all(&hv, &ConformanceOptions::for_simulator(dir.path()));
        assert!(report.is_success(), "{report}");
        assert_eq!(report.skipped(), 3, "{report}");
        assert!(report.to_string().contains("skipped"));
    }

    #[test]
    fn broken_memory_accounting_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ConformanceOptions::for_simulator(dir.path());
        let mut hv = Wrapped::new(SimulatorBackend::new(SimConfig::small_host()));
        hv.constant_free = Some(8 * 1024 * MIB);
        let r = run_check("memory_accounting", check_memory_accounting, &hv, &opts);
        assert!(matches!(r.outcome, Outcome::Failed(_)), "{r:?}");
        // A host too small to hold even three guests fails the exhaustion
        // check's sanity bound.
        let tiny = SimulatorBackend::new(SimConfig::small_host().with_memory(1200 * MIB, 1024 * MIB));
        let r = run_check("memory_exhaustion", check_memory_exhaustion, &tiny, &opts);
        assert!(matches!(r.outcome, Outcome::Failed(_)), "{r:?}");
    }
}
