//! What is measured every five seconds, and where each figure comes from.
//!
//! * Host: CPUs, load and the daemon's own figures from `/proc` (on both backends); the
//!   hypervisor's total and free memory; physical interfaces' counters from `/sys/class/net`;
//!   the store's session and task counts.
//! * VMs: CPU time, memory and vCPUs from the backend's `domain_info` (real on Xen, the
//!   simulator's own on the simulator). Disk and network counters from dom0's blkback and
//!   netback counters in `/sys` on Xen; on the simulator, which keeps none, a seeded load that
//!   follows the VM's state (a paused VM does no I/O).
//! * SRs: sizes from the SR record (kept current by the storage module), and the bytes read
//!   and written through the SR's VBDs.
//!
//! The names, units, types and bounds are the reference's (its xcp-rrdd plugins); see
//! `docs/metrics.md`.

use super::procfs;
use super::rrd::{DsType, Sample, Transform};
use crate::hypervisor::{DomainInfo, Hypervisor};
use std::collections::HashMap;
use std::path::PathBuf;

/// Who a data source belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// This host.
    Host,
    /// A VM, by uuid.
    Vm(String),
    /// An SR, by uuid.
    Sr(String),
}

/// A data source's description.
#[derive(Clone, Debug, PartialEq)]
pub struct DsDef {
    /// Its name.
    pub name: String,
    /// What it measures.
    pub description: String,
    /// Its unit.
    pub units: &'static str,
    /// How readings become rates.
    pub ty: DsType,
    /// Recorded without being asked for (the reference's "standard").
    pub default: bool,
    /// Lower bound.
    pub min: f64,
    /// Upper bound.
    pub max: f64,
    /// What is done to a PDP.
    pub transform: Transform,
}

impl DsDef {
    fn new(name: impl Into<String>, description: impl Into<String>, units: &'static str, ty: DsType) -> DsDef {
        DsDef {
            name: name.into(),
            description: description.into(),
            units,
            ty,
            default: true,
            min: f64::NEG_INFINITY,
            max: f64::INFINITY,
            transform: Transform::Identity,
        }
    }
    fn min(mut self, m: f64) -> DsDef {
        self.min = m;
        self
    }
    fn max(mut self, m: f64) -> DsDef {
        self.max = m;
        self
    }
    fn optional(mut self) -> DsDef {
        self.default = false;
        self
    }
    fn inverse(mut self) -> DsDef {
        self.transform = Transform::Inverse;
        self
    }
}

/// One reading of one data source.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The data source.
    pub def: DsDef,
    /// What was read.
    pub value: Sample,
}

/// The readings of one owner, taken at one moment.
#[derive(Clone, Debug)]
pub struct OwnerReadings {
    /// Whose.
    pub owner: Owner,
    /// When, seconds since the epoch.
    pub timestamp: f64,
    /// Its domain (VMs), else 0.
    pub domid: i64,
    /// The readings.
    pub readings: Vec<Reading>,
}

/// A VBD to measure.
#[derive(Clone, Debug)]
pub struct VbdPlan {
    /// The guest's name for it (`xvda`).
    pub device: String,
    /// Xen's virtual device number (blkback's directory name).
    pub vdev: u32,
    /// Its VDI's SR's uuid (empty for an empty drive).
    pub sr: String,
    /// A stable key for its simulated load.
    pub key: String,
}

/// A VM to measure.
#[derive(Clone, Debug)]
pub struct VmPlan {
    /// Its ref.
    pub reference: String,
    /// Its uuid.
    pub uuid: String,
    /// Its domain.
    pub domid: u32,
    /// Whether it is paused.
    pub paused: bool,
    /// Whether it is the control domain.
    pub control_domain: bool,
    /// Its attached VBDs.
    pub vbds: Vec<VbdPlan>,
    /// Its attached VIFs' device numbers (and keys for their simulated load).
    pub vifs: Vec<(u32, String)>,
}

/// An SR to measure.
#[derive(Clone, Debug)]
pub struct SrPlan {
    /// Its uuid.
    pub uuid: String,
    /// Its recorded size, use and allocation, bytes.
    pub physical_size: i64,
    /// Bytes in use.
    pub physical_utilisation: i64,
    /// Bytes promised to VDIs.
    pub virtual_allocation: i64,
}

/// What one round measures, read from the store beforehand.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The resident VMs.
    pub vms: Vec<VmPlan>,
    /// The attached SRs.
    pub srs: Vec<SrPlan>,
    /// The host's PIFs' devices.
    pub pifs: Vec<String>,
    /// Sessions open.
    pub sessions: u64,
    /// Tasks in the store.
    pub tasks: u64,
    /// Whether the backend is the simulator (no device counters of its own).
    pub simulated_devices: bool,
}

/// What one round measured.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Per owner.
    pub owners: Vec<OwnerReadings>,
    /// Each resident VM's figures for its `VM_metrics` record: (ref, domid, memory bytes if
    /// not paused, per-vCPU utilisation).
    pub vm_records: Vec<(String, u32, Option<i64>, Vec<f64>)>,
    /// The host's total and free memory, bytes.
    pub host_memory: Option<(i64, i64)>,
}

/// State kept between rounds: earlier counters, the simulated devices' totals.
#[derive(Default)]
pub struct SamplerState {
    /// Last CPU time per domain: (domid, seconds, when).
    last_cpu: HashMap<String, (u32, f64, f64)>,
    /// Simulated device counters by key: (domid, counters, when last advanced).
    sim: HashMap<String, (u32, [u64; 4], f64)>,
    /// Last VBD counters (read, write bytes) by key, for the SR totals.
    last_vbd: HashMap<String, (u64, u64)>,
    /// Bytes read and written through each SR since the daemon started.
    sr_totals: HashMap<String, (u64, u64)>,
}

/// The clock the readings are stamped with.
pub type Clock<'a> = &'a dyn Fn() -> f64;

/// Seconds since the epoch, now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Takes one round of readings (blocking: files and backend calls).
pub fn collect(hv: &dyn Hypervisor, plan: &Plan, state: &mut SamplerState, clock: Clock) -> Round {
    let mut round = Round::default();
    let mut running_domains = 0i64;
    let live_vms: std::collections::HashSet<&str> = plan.vms.iter().map(|v| v.uuid.as_str()).collect();
    state.last_cpu.retain(|k, _| live_vms.contains(k.as_str()));
    let mut live_devices = std::collections::HashSet::new();
    for vm in &plan.vms {
        let Ok(info) = hv.domain_info(vm.domid) else { continue };
        if !vm.paused {
            running_domains += 1;
        }
        let ts = clock();
        let (readings, utilisation) = vm_readings(vm, &info, ts, plan.simulated_devices, state, &mut live_devices);
        round.vm_records.push((
            vm.reference.clone(),
            vm.domid,
            (!vm.paused).then_some(info.memory_actual as i64),
            utilisation,
        ));
        round.owners.push(OwnerReadings {
            owner: Owner::Vm(vm.uuid.clone()),
            timestamp: ts,
            domid: i64::from(vm.domid),
            readings,
        });
    }
    state.sim.retain(|k, _| live_devices.contains(k));
    state.last_vbd.retain(|k, _| live_devices.contains(k));
    let host = host_readings(hv, plan, state, running_domains, &mut round);
    round.owners.insert(
        0,
        OwnerReadings {
            owner: Owner::Host,
            timestamp: clock(),
            domid: 0,
            readings: host,
        },
    );
    for sr in &plan.srs {
        let (r, w) = state.sr_totals.get(&sr.uuid).copied().unwrap_or((0, 0));
        let bytes = |n: &str, d: &str| DsDef::new(n, d, "B", DsType::Gauge).min(0.0);
        let rate = |n: &str, d: &str| DsDef::new(n, d, "B/s", DsType::Derive).min(0.0);
        round.owners.push(OwnerReadings {
            owner: Owner::Sr(sr.uuid.clone()),
            timestamp: clock(),
            domid: 0,
            readings: vec![
                reading(bytes("physical_size", "Size of the SR"), Sample::Int(sr.physical_size)),
                reading(
                    bytes("physical_utilisation", "Space used on the SR"),
                    Sample::Int(sr.physical_utilisation),
                ),
                reading(
                    bytes("virtual_allocation", "Sum of the virtual sizes of the SR's VDIs"),
                    Sample::Int(sr.virtual_allocation),
                ),
                reading(
                    rate("read", "Bytes per second read from the SR's VDIs"),
                    Sample::Int(to_i64(r)),
                ),
                reading(
                    rate("write", "Bytes per second written to the SR's VDIs"),
                    Sample::Int(to_i64(w)),
                ),
            ],
        });
    }
    round
}

/// Adds each guest's free memory, as its agent reports it (`data/meminfo_free`, KiB), to the
/// VM's readings as `memory_internal_free` (not while paused, as the other memory figures).
pub fn add_guest_memory(round: &mut Round, plan: &Plan, reports: &[(String, u32, super::guest::GuestReport)]) {
    for (vm, domid, report) in reports {
        let Some(free) = report.memory.get("free").and_then(|v| v.trim().parse::<i64>().ok()) else {
            continue;
        };
        let Some(p) = plan.vms.iter().find(|p| &p.reference == vm && p.domid == *domid) else {
            continue;
        };
        if p.paused {
            continue;
        }
        let owner = Owner::Vm(p.uuid.clone());
        if let Some(o) = round.owners.iter_mut().find(|o| o.owner == owner) {
            o.readings.push(reading(
                DsDef::new(
                    "memory_internal_free",
                    "Memory used as reported by the guest agent",
                    "KiB",
                    DsType::Gauge,
                )
                .min(0.0),
                Sample::Int(free),
            ));
        }
    }
}

fn reading(def: DsDef, value: Sample) -> Reading {
    Reading { def, value }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn cpu_def(name: String, description: String) -> DsDef {
    DsDef::new(name, description, "(fraction)", DsType::Derive)
        .min(0.0)
        .max(1.0)
}

fn vm_readings(
    vm: &VmPlan,
    info: &DomainInfo,
    ts: f64,
    simulated: bool,
    state: &mut SamplerState,
    live_devices: &mut std::collections::HashSet<String>,
) -> (Vec<Reading>, Vec<f64>) {
    let mut out = Vec::new();
    let vcpus = info.vcpus_online.max(1);
    let per_vcpu = info.cpu_time.as_secs_f64() / f64::from(vcpus);
    for i in 0..vcpus {
        out.push(reading(
            cpu_def(format!("cpu{i}"), format!("CPU{i} usage")),
            Sample::Float(per_vcpu),
        ));
    }
    out.push(reading(
        cpu_def("cpu_usage".into(), "Domain CPU usage".into()),
        Sample::Float(per_vcpu),
    ));
    // The utilisation for VM_metrics: from the previous reading of the same domain.
    let utilisation = match state.last_cpu.insert(vm.uuid.clone(), (vm.domid, per_vcpu, ts)) {
        Some((d, prev, when)) if d == vm.domid && ts > when => {
            let u = ((per_vcpu - prev) / (ts - when)).clamp(0.0, 1.0);
            vec![u; vcpus as usize]
        }
        _ => Vec::new(),
    };
    // Memory figures of a paused domain are left out, as the reference leaves them out.
    if !vm.paused {
        out.push(reading(
            DsDef::new("memory", "Memory currently allocated to VM", "B", DsType::Gauge).min(0.0),
            Sample::Int(info.memory_actual as i64),
        ));
        out.push(reading(
            DsDef::new("memory_target", "Target of VM balloon driver", "B", DsType::Gauge).min(0.0),
            Sample::Int(info.memory_target as i64),
        ));
        if vm.control_domain {
            if let Some(free) = procfs::read(std::path::Path::new("/proc/meminfo"))
                .as_deref()
                .and_then(|t| procfs::parse_kib_field(t, "MemAvailable"))
            {
                out.push(reading(
                    DsDef::new("memory_internal_free", "Dom0 current free memory", "KiB", DsType::Gauge).min(0.0),
                    Sample::Int(to_i64(free)),
                ));
            }
        }
    }
    for vbd in &vm.vbds {
        live_devices.insert(vbd.key.clone());
        let counters = if simulated {
            Some(simulated_counters(
                state,
                &vbd.key,
                vm.domid,
                vm.paused,
                ts,
                DeviceKind::Disk,
            ))
        } else {
            blkback_counters(vm.domid, vbd.vdev)
        };
        let Some([rd_bytes, wr_bytes, rd_req, wr_req]) = counters else {
            continue;
        };
        let d = &vbd.device;
        let rate = |n: String, desc: String| DsDef::new(n, desc, "B/s", DsType::Derive).min(0.0);
        out.push(reading(
            rate(
                format!("vbd_{d}_read"),
                format!("Reads from device '{d}' in bytes per second"),
            ),
            Sample::Int(to_i64(rd_bytes)),
        ));
        out.push(reading(
            rate(
                format!("vbd_{d}_write"),
                format!("Writes to device '{d}' in bytes per second"),
            ),
            Sample::Int(to_i64(wr_bytes)),
        ));
        let reqs = |n: String, desc: String| DsDef::new(n, desc, "requests/s", DsType::Derive).min(0.0);
        out.push(reading(
            reqs(
                format!("vbd_{d}_iops_read"),
                format!("Read requests per second on device '{d}'"),
            ),
            Sample::Int(to_i64(rd_req)),
        ));
        out.push(reading(
            reqs(
                format!("vbd_{d}_iops_write"),
                format!("Write requests per second on device '{d}'"),
            ),
            Sample::Int(to_i64(wr_req)),
        ));
        if !vbd.sr.is_empty() {
            let prev = state.last_vbd.insert(vbd.key.clone(), (rd_bytes, wr_bytes));
            let (dr, dw) = match prev {
                Some((pr, pw)) => (rd_bytes.saturating_sub(pr), wr_bytes.saturating_sub(pw)),
                None => (0, 0),
            };
            let t = state.sr_totals.entry(vbd.sr.clone()).or_default();
            t.0 = t.0.saturating_add(dr);
            t.1 = t.1.saturating_add(dw);
        }
    }
    for (devid, key) in &vm.vifs {
        live_devices.insert(key.clone());
        let counters = if simulated {
            Some(simulated_counters(state, key, vm.domid, vm.paused, ts, DeviceKind::Net))
        } else {
            netback_counters(vm.domid, *devid)
        };
        let Some([rx, tx, rx_err, tx_err]) = counters else {
            continue;
        };
        let n = devid;
        let rate = |name: String, desc: String| DsDef::new(name, desc, "B/s", DsType::Derive).min(0.0);
        let errs = |name: String, desc: String| DsDef::new(name, desc, "err/s", DsType::Derive).min(0.0).optional();
        out.push(reading(
            rate(
                format!("vif_{n}_rx"),
                format!("Bytes per second received on virtual interface number '{n}'"),
            ),
            Sample::Int(to_i64(rx)),
        ));
        out.push(reading(
            rate(
                format!("vif_{n}_tx"),
                format!("Bytes per second transmitted on virtual interface number '{n}'"),
            ),
            Sample::Int(to_i64(tx)),
        ));
        out.push(reading(
            errs(
                format!("vif_{n}_rx_errors"),
                format!("Receive errors per second on virtual interface number '{n}'"),
            ),
            Sample::Int(to_i64(rx_err)),
        ));
        out.push(reading(
            errs(
                format!("vif_{n}_tx_errors"),
                format!("Transmit errors per second on virtual interface number '{n}'"),
            ),
            Sample::Int(to_i64(tx_err)),
        ));
    }
    (out, utilisation)
}

/// blkback's counters of a VBD: bytes read and written (sectors of 512 bytes), read and write
/// requests.
fn blkback_counters(domid: u32, vdev: u32) -> Option<[u64; 4]> {
    let dir = PathBuf::from(format!("/sys/bus/xen-backend/devices/vbd-{domid}-{vdev}/statistics"));
    let c = |f: &str| procfs::counter(&dir.join(f));
    Some([
        c("rd_sect")?.saturating_mul(512),
        c("wr_sect")?.saturating_mul(512),
        c("rd_req")?,
        c("wr_req")?,
    ])
}

/// netback's counters of a VIF, as the guest sees them: what dom0's `vif<d>.<n>` sends the
/// guest receives.
fn netback_counters(domid: u32, devid: u32) -> Option<[u64; 4]> {
    let dir = PathBuf::from(format!("/sys/class/net/vif{domid}.{devid}/statistics"));
    let c = |f: &str| procfs::counter(&dir.join(f));
    Some([c("tx_bytes")?, c("rx_bytes")?, c("tx_errors")?, c("rx_errors")?])
}

#[derive(Clone, Copy)]
enum DeviceKind {
    Disk,
    Net,
}

/// A 64-bit mix (splitmix64's finaliser): the seeded load's randomness.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn seed_of(key: &str) -> u64 {
    // FNV-1a: stable across runs and builds.
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A number in [0, 1) from a seed.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The simulated load of a device at time `t`: bytes per second of its two directions.
/// Each device has its own base rates (log-uniform over two decades), a slow swing of its
/// own period and a little noise per five-second step, all from its key.
pub fn simulated_rates(key: &str, disk: bool, t: f64) -> (f64, f64) {
    let s = seed_of(key);
    let base = |k: u64, lo: f64| lo * 100f64.powf(unit(mix(s ^ k)));
    let (a, b) = if disk {
        (base(1, 20e3), base(2, 10e3))
    } else {
        (base(3, 5e3), base(4, 2e3))
    };
    let period = 120.0 + 480.0 * unit(mix(s ^ 5));
    let phase = std::f64::consts::TAU * unit(mix(s ^ 6));
    let swing = 1.0 + 0.6 * (std::f64::consts::TAU * t / period + phase).sin();
    let step = (t / 5.0).floor() as i64 as u64;
    let noise = |k: u64| 0.8 + 0.4 * unit(mix(s ^ k ^ step.wrapping_mul(0x1000_0000_01b3)));
    (a * swing * noise(7), b * swing * noise(8))
}

/// Advances a simulated device's counters to `t` (not while paused) and gives them: for a
/// disk, bytes read and written and requests; for a network interface, bytes received and
/// sent, and errors (none). A new domain starts its counters from zero, as real ones do.
fn simulated_counters(
    state: &mut SamplerState,
    key: &str,
    domid: u32,
    paused: bool,
    t: f64,
    kind: DeviceKind,
) -> [u64; 4] {
    let entry = state.sim.entry(key.to_owned()).or_insert((domid, [0; 4], t));
    if entry.0 != domid {
        *entry = (domid, [0; 4], t);
    }
    // The time since the last round (at most a heartbeat's worth).
    let dt = (t - entry.2).clamp(0.0, 300.0);
    entry.2 = t;
    let c = &mut entry.1;
    if !paused {
        let disk = matches!(kind, DeviceKind::Disk);
        let (a, b) = simulated_rates(key, disk, t);
        let (da, db) = ((a * dt) as u64, (b * dt) as u64);
        c[0] = c[0].saturating_add(da);
        c[1] = c[1].saturating_add(db);
        if disk {
            // Requests of 4 to 64 KiB.
            let size = 4096.0 * (1.0 + 15.0 * unit(mix(seed_of(key) ^ 9)));
            c[2] = c[2].saturating_add((da as f64 / size) as u64);
            c[3] = c[3].saturating_add((db as f64 / size) as u64);
        }
    }
    *c
}

fn host_readings(
    hv: &dyn Hypervisor,
    plan: &Plan,
    state: &SamplerState,
    running_domains: i64,
    round: &mut Round,
) -> Vec<Reading> {
    let mut out = Vec::new();
    if let Some(stat) = procfs::read(std::path::Path::new("/proc/stat")) {
        let hz = procfs::ticks_per_second();
        let idle = procfs::parse_stat_idle(&stat);
        for (n, ticks) in &idle {
            out.push(reading(
                cpu_def(format!("cpu{n}"), format!("Physical cpu usage for cpu {n}")).inverse(),
                Sample::Float(*ticks as f64 / hz),
            ));
        }
        if !idle.is_empty() {
            let avg = idle.iter().map(|(_, t)| *t as f64).sum::<f64>() / idle.len() as f64 / hz;
            out.push(reading(
                cpu_def("cpu_avg".into(), "Average physical cpu usage".into()).inverse(),
                Sample::Float(avg),
            ));
        }
    }
    if let Some(l) = procfs::read(std::path::Path::new("/proc/loadavg"))
        .as_deref()
        .and_then(procfs::parse_loadavg)
    {
        out.push(reading(
            DsDef::new("loadavg", "Domain0 loadavg", "(fraction)", DsType::Gauge),
            Sample::Float(l),
        ));
    }
    let total = hv.host_info().ok().map(|i| i.memory_total);
    let free = hv.memory_free().ok();
    if let (Some(total), Some(free)) = (total, free) {
        round.host_memory = Some((total as i64, free as i64));
        let kib = |n: &str, d: &str| DsDef::new(n, d, "KiB", DsType::Gauge).min(0.0);
        out.push(reading(
            kib("memory_total_kib", "Total amount of memory in the host"),
            Sample::Int((total / 1024) as i64),
        ));
        out.push(reading(
            kib("memory_free_kib", "Total amount of free memory"),
            Sample::Int((free / 1024) as i64),
        ));
    }
    let (mut sum_rx, mut sum_tx) = (0u64, 0u64);
    for dev in &plan.pifs {
        if dev.is_empty() || dev.contains('/') || dev.starts_with('.') {
            continue;
        }
        let dir = PathBuf::from(format!("/sys/class/net/{dev}/statistics"));
        let c = |f: &str| procfs::counter(&dir.join(f));
        let (Some(rx), Some(tx)) = (c("rx_bytes"), c("tx_bytes")) else {
            continue;
        };
        sum_rx = sum_rx.saturating_add(rx);
        sum_tx = sum_tx.saturating_add(tx);
        let rate = |n: String, d: String| DsDef::new(n, d, "B/s", DsType::Derive).min(0.0);
        let errs = |n: String, d: String| DsDef::new(n, d, "err/s", DsType::Derive).min(0.0).optional();
        out.push(reading(
            rate(
                format!("pif_{dev}_rx"),
                format!("Bytes per second received on physical interface {dev}"),
            ),
            Sample::Int(to_i64(rx)),
        ));
        out.push(reading(
            rate(
                format!("pif_{dev}_tx"),
                format!("Bytes per second sent on physical interface {dev}"),
            ),
            Sample::Int(to_i64(tx)),
        ));
        if let (Some(re), Some(te)) = (c("rx_errors"), c("tx_errors")) {
            out.push(reading(
                errs(
                    format!("pif_{dev}_rx_errors"),
                    format!("Receive errors per second on physical interface {dev}"),
                ),
                Sample::Int(to_i64(re)),
            ));
            out.push(reading(
                errs(
                    format!("pif_{dev}_tx_errors"),
                    format!("Transmit errors per second on physical interface {dev}"),
                ),
                Sample::Int(to_i64(te)),
            ));
        }
    }
    let aggr = |n: &str, d: &str| DsDef::new(n, d, "B/s", DsType::Derive).min(0.0);
    out.push(reading(
        aggr("pif_aggr_rx", "Bytes per second received on all physical interfaces"),
        Sample::Int(to_i64(sum_rx)),
    ));
    out.push(reading(
        aggr("pif_aggr_tx", "Bytes per second sent on all physical interfaces"),
        Sample::Int(to_i64(sum_tx)),
    ));
    for sr in &plan.srs {
        let (r, w) = state.sr_totals.get(&sr.uuid).copied().unwrap_or((0, 0));
        let short: String = sr.uuid.chars().take(8).collect();
        let rate = |n: String, d: String| DsDef::new(n, d, "B/s", DsType::Derive).min(0.0);
        out.push(reading(
            rate(
                format!("read_{short}"),
                format!("Reads from SR {short} in bytes per second"),
            ),
            Sample::Int(to_i64(r)),
        ));
        out.push(reading(
            rate(
                format!("write_{short}"),
                format!("Writes to SR {short} in bytes per second"),
            ),
            Sample::Int(to_i64(w)),
        ));
    }
    let count = |n: &str, d: &str, u: &'static str| DsDef::new(n, d, u, DsType::Gauge).min(0.0);
    out.push(reading(
        count(
            "running_domains",
            "The total number of running domains per host",
            "count",
        ),
        Sample::Int(running_domains),
    ));
    out.push(reading(
        count("pool_session_count", "Number of sessions", "sessions"),
        Sample::Int(to_i64(plan.sessions)),
    ));
    out.push(reading(
        count("pool_task_count", "Number of tasks", "tasks"),
        Sample::Int(to_i64(plan.tasks)),
    ));
    if let Some(fds) = procfs::open_fds() {
        out.push(reading(
            count(
                "xapi_open_fds",
                "Number of open file descriptors held by xapid",
                "file descriptors",
            ),
            Sample::Int(to_i64(fds)),
        ));
    }
    if let Some(rss) = procfs::read(std::path::Path::new("/proc/self/status"))
        .as_deref()
        .and_then(|t| procfs::parse_kib_field(t, "VmRSS"))
    {
        out.push(reading(
            count(
                "xapi_memory_usage_kib",
                "Memory used by the xapid daemon (resident)",
                "KiB",
            ),
            Sample::Int(to_i64(rss)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{DomainConfig, SimConfig, SimulatorBackend};

    #[test]
    fn simulated_load_is_seeded_and_plausible() {
        let a = simulated_rates("vm1/vbd0", true, 1000.0);
        assert_eq!(a, simulated_rates("vm1/vbd0", true, 1000.0));
        assert_ne!(a, simulated_rates("vm2/vbd0", true, 1000.0));
        for k in 0..200 {
            let t = 1_700_000_000.0 + 5.0 * f64::from(k);
            let (r, w) = simulated_rates(&format!("vm{k}/vif0"), false, t);
            assert!((5e3 * 0.4 * 0.8..=5e5 * 1.6 * 1.2).contains(&r), "{r}");
            assert!((2e3 * 0.4 * 0.8..=2e5 * 1.6 * 1.2).contains(&w), "{w}");
        }
    }

    #[test]
    fn a_paused_vm_uses_no_cpu_and_does_no_io() {
        let sim = SimulatorBackend::new(SimConfig::small_host());
        let d = sim.create_domain(&DomainConfig::pv("g", 256 << 20, 2, "/k")).unwrap();
        sim.build(d).unwrap();
        sim.pause(d).unwrap();
        let plan = Plan {
            vms: vec![VmPlan {
                reference: "OpaqueRef:vm".into(),
                uuid: "u-vm".into(),
                domid: d,
                paused: true,
                control_domain: false,
                vbds: vec![VbdPlan {
                    device: "xvda".into(),
                    vdev: 51712,
                    sr: "sr-1".into(),
                    key: "u-vm/vbd/0".into(),
                }],
                vifs: vec![(0, "u-vm/vif/0".into())],
            }],
            srs: vec![],
            pifs: vec![],
            sessions: 1,
            tasks: 0,
            simulated_devices: true,
        };
        let mut state = SamplerState::default();
        let t = std::cell::Cell::new(1000.0);
        let clock = || {
            t.set(t.get() + 1.0);
            t.get()
        };
        let r1 = collect(&sim, &plan, &mut state, &clock);
        let r2 = collect(&sim, &plan, &mut state, &clock);
        let vm = |r: &Round| {
            r.owners
                .iter()
                .find(|o| o.owner == Owner::Vm("u-vm".into()))
                .cloned()
                .unwrap()
        };
        let value = |o: &OwnerReadings, n: &str| o.readings.iter().find(|r| r.def.name == n).map(|r| r.value);
        let (a, b) = (vm(&r1), vm(&r2));
        assert_eq!(value(&a, "cpu0"), value(&b, "cpu0"));
        assert!(value(&a, "cpu1").is_some());
        assert_eq!(value(&a, "vbd_xvda_read"), Some(Sample::Int(0)));
        assert_eq!(value(&b, "vif_0_rx"), Some(Sample::Int(0)));
        // Memory figures of a paused domain are left out.
        assert_eq!(value(&a, "memory"), None);
        assert_eq!(r2.vm_records[0].3, vec![0.0, 0.0]);
        // Unpaused, it does I/O, which the SR's totals count.
        sim.unpause(d).unwrap();
        let mut running = plan.clone();
        running.vms[0].paused = false;
        running.srs.push(SrPlan {
            uuid: "sr-1".into(),
            physical_size: 10,
            physical_utilisation: 5,
            virtual_allocation: 7,
        });
        let r3 = collect(&sim, &running, &mut state, &clock);
        let c = vm(&r3);
        assert!(matches!(value(&c, "vbd_xvda_read"), Some(Sample::Int(n)) if n > 0));
        assert!(matches!(value(&c, "vif_0_tx"), Some(Sample::Int(n)) if n > 0));
        assert!(matches!(value(&c, "memory"), Some(Sample::Int(n)) if n > 0));
        let sr = r3.owners.iter().find(|o| o.owner == Owner::Sr("sr-1".into())).unwrap();
        assert!(matches!(value(sr, "read"), Some(Sample::Int(n)) if n > 0));
        assert_eq!(value(sr, "physical_size"), Some(Sample::Int(10)));
        let host = &r3.owners[0];
        assert_eq!(host.owner, Owner::Host);
        assert!(value(host, "memory_total_kib").is_some());
        assert!(value(host, "read_sr-1").is_some());
        assert_eq!(value(host, "running_domains"), Some(Sample::Int(1)));
    }
}
