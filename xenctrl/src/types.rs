//! Typed views of the hypervisor's raw domain, host and version records.

use std::fmt;

use xen_sys as sys;

use crate::error::{Result, XenctrlError};

/// Size of a Xen page in bytes (`XC_PAGE_SIZE`).
pub const PAGE_SIZE: u64 = sys::XC_PAGE_SIZE as u64;
/// KiB per Xen page.
const PAGE_KIB: u64 = PAGE_SIZE / 1024;

/// Why a domain shut down, or why it is asked to (`SHUTDOWN_*` in
/// `xen/sched.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff`: exited normally; clean up and kill.
    Poweroff,
    /// `SHUTDOWN_reboot`: clean up, kill, then restart.
    Reboot,
    /// `SHUTDOWN_suspend`: clean up, save suspend info, kill.
    Suspend,
    /// `SHUTDOWN_crash`: the guest crashed.
    Crash,
    /// `SHUTDOWN_watchdog`: the watchdog expired; restart.
    Watchdog,
    /// `SHUTDOWN_soft_reset`: the guest asked for a soft reset.
    SoftReset,
    /// A code this crate does not know (guest-supplied, or newer Xen).
    Other(u32),
}

impl ShutdownReason {
    /// Decodes a raw `SHUTDOWN_*` code.
    pub fn from_raw(code: u32) -> Self {
        match code {
            sys::SHUTDOWN_poweroff => ShutdownReason::Poweroff,
            sys::SHUTDOWN_reboot => ShutdownReason::Reboot,
            sys::SHUTDOWN_suspend => ShutdownReason::Suspend,
            sys::SHUTDOWN_crash => ShutdownReason::Crash,
            sys::SHUTDOWN_watchdog => ShutdownReason::Watchdog,
            sys::SHUTDOWN_soft_reset => ShutdownReason::SoftReset,
            other => ShutdownReason::Other(other),
        }
    }

    /// The raw `SHUTDOWN_*` code.
    pub fn as_raw(self) -> u32 {
        match self {
            ShutdownReason::Poweroff => sys::SHUTDOWN_poweroff,
            ShutdownReason::Reboot => sys::SHUTDOWN_reboot,
            ShutdownReason::Suspend => sys::SHUTDOWN_suspend,
            ShutdownReason::Crash => sys::SHUTDOWN_crash,
            ShutdownReason::Watchdog => sys::SHUTDOWN_watchdog,
            ShutdownReason::SoftReset => sys::SHUTDOWN_soft_reset,
            ShutdownReason::Other(code) => code,
        }
    }
}

/// The state bits of a domain (`XEN_DOMINF_*`), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DomainFlags {
    /// Scheduled to die (being destroyed).
    pub dying: bool,
    /// An HVM guest rather than PV.
    pub hvm: bool,
    /// The guest has shut down; see [`DomainInfo::shutdown_reason`].
    pub shutdown: bool,
    /// Paused by control software.
    pub paused: bool,
    /// Blocked waiting for an event.
    pub blocked: bool,
    /// Currently running on a CPU.
    pub running: bool,
    /// Being debugged.
    pub debugged: bool,
    /// A xenstore domain.
    pub xs_domain: bool,
    /// Uses hardware-assisted paging.
    pub hap: bool,
}

impl DomainFlags {
    /// Decodes the `flags` word of `xen_domctl_getdomaininfo`.
    pub fn from_raw(flags: u32) -> Self {
        let bit = |b: u32| flags & b != 0;
        DomainFlags {
            dying: bit(sys::XEN_DOMINF_dying),
            hvm: bit(sys::XEN_DOMINF_hvm_guest),
            shutdown: bit(sys::XEN_DOMINF_shutdown),
            paused: bit(sys::XEN_DOMINF_paused),
            blocked: bit(sys::XEN_DOMINF_blocked),
            running: bit(sys::XEN_DOMINF_running),
            debugged: bit(sys::XEN_DOMINF_debugged),
            xs_domain: bit(sys::XEN_DOMINF_xs_domain),
            hap: bit(sys::XEN_DOMINF_hap),
        }
    }
}

/// One domain as reported by `xc_domain_getinfolist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// Domain id.
    pub domid: u32,
    /// Decoded state bits.
    pub flags: DomainFlags,
    /// Why the domain shut down; `Some` exactly when `flags.shutdown`.
    pub shutdown_reason: Option<ShutdownReason>,
    /// Pages currently allocated to the domain.
    pub tot_pages: u64,
    /// Memory currently allocated, in KiB (`tot_pages` × 4).
    pub memory_kib: u64,
    /// Maximum pages the domain may have.
    pub max_pages: u64,
    /// Maximum memory in KiB (`max_pages` × 4, saturating: dom0 often
    /// reports an effectively unlimited value).
    pub max_memory_kib: u64,
    /// Pages shared with other domains.
    pub shared_pages: u64,
    /// Pages paged out.
    pub paged_pages: u64,
    /// Pages claimed but not yet allocated.
    pub outstanding_pages: u64,
    /// Frame of the shared-info page.
    pub shared_info_frame: u64,
    /// CPU time used, in nanoseconds.
    pub cpu_time_ns: u64,
    /// vCPUs currently online.
    pub vcpus_online: u32,
    /// Number of vCPUs the domain has (highest vCPU id + 1; 0 if none).
    pub vcpus_max: u32,
    /// XSM security id.
    pub ssidref: u32,
    /// The domain handle (the VM's UUID bytes, as given at creation).
    pub handle: [u8; 16],
    /// CPU pool the domain belongs to.
    pub cpupool: u32,
}

impl DomainInfo {
    /// Decodes a raw `xc_domaininfo_t`.
    pub fn from_raw(raw: &sys::xc_domaininfo_t) -> Self {
        let flags = DomainFlags::from_raw(raw.flags);
        let shutdown_reason = flags.shutdown.then(|| {
            ShutdownReason::from_raw((raw.flags >> sys::XEN_DOMINF_shutdownshift) & sys::XEN_DOMINF_shutdownmask)
        });
        let vcpus_max = if raw.max_vcpu_id == u32::MAX {
            0
        } else {
            raw.max_vcpu_id + 1
        };
        DomainInfo {
            domid: u32::from(raw.domain),
            flags,
            shutdown_reason,
            tot_pages: raw.tot_pages,
            memory_kib: raw.tot_pages.saturating_mul(PAGE_KIB),
            max_pages: raw.max_pages,
            max_memory_kib: raw.max_pages.saturating_mul(PAGE_KIB),
            shared_pages: raw.shr_pages,
            paged_pages: raw.paged_pages,
            outstanding_pages: raw.outstanding_pages,
            shared_info_frame: raw.shared_info_frame,
            cpu_time_ns: raw.cpu_time,
            vcpus_online: raw.nr_online_vcpus,
            vcpus_max,
            ssidref: raw.ssidref,
            handle: raw.handle,
            cpupool: raw.cpupool,
        }
    }
}

/// The host, as reported by `xc_physinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysInfo {
    /// CPUs currently online.
    pub nr_cpus: u32,
    /// Largest possible CPU id.
    pub max_cpu_id: u32,
    /// Hardware threads per core.
    pub threads_per_core: u32,
    /// Cores per socket.
    pub cores_per_socket: u32,
    /// Sockets (`nr_cpus / (threads_per_core × cores_per_socket)`).
    pub sockets: u32,
    /// NUMA nodes online.
    pub nr_nodes: u32,
    /// CPU speed in kHz.
    pub cpu_khz: u32,
    /// `XEN_SYSCTL_PHYSCAP_*` bits.
    pub capabilities: u32,
    /// Total memory in bytes.
    pub total_memory: u64,
    /// Free memory in bytes.
    pub free_memory: u64,
    /// Memory waiting to be scrubbed, in bytes.
    pub scrub_memory: u64,
}

impl PhysInfo {
    /// Decodes a raw `xc_physinfo_t`.
    pub fn from_raw(raw: &sys::xc_physinfo_t) -> Self {
        let per_socket = raw.threads_per_core.saturating_mul(raw.cores_per_socket);
        PhysInfo {
            nr_cpus: raw.nr_cpus,
            max_cpu_id: raw.max_cpu_id,
            threads_per_core: raw.threads_per_core,
            cores_per_socket: raw.cores_per_socket,
            sockets: raw.nr_cpus.checked_div(per_socket).unwrap_or(0),
            nr_nodes: raw.nr_nodes,
            cpu_khz: raw.cpu_khz,
            capabilities: raw.capabilities,
            total_memory: raw.total_pages.saturating_mul(PAGE_SIZE),
            free_memory: raw.free_pages.saturating_mul(PAGE_SIZE),
            scrub_memory: raw.scrub_pages.saturating_mul(PAGE_SIZE),
        }
    }
}

/// The hypervisor's version (`XENVER_version` and `XENVER_extraversion`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenVersion {
    /// Major version, e.g. 4.
    pub major: u32,
    /// Minor version, e.g. 17.
    pub minor: u32,
    /// Extra version, e.g. ".3" or "-rc" (empty if none).
    pub extra: String,
}

impl XenVersion {
    /// Decodes `xc_version(XENVER_version)` (major << 16 | minor) and the
    /// `XENVER_extraversion` buffer (NUL-terminated or full).
    pub fn from_raw(version: u32, extra: &[std::ffi::c_char]) -> Self {
        let bytes: Vec<u8> = extra.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
        XenVersion {
            major: version >> 16,
            minor: version & 0xffff,
            extra: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
}

impl fmt::Display for XenVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}{}", self.major, self.minor, self.extra)
    }
}

/// Creation flags (`XEN_DOMCTL_CDF_*`) besides those the guest type
/// implies (`hvm`, `hap`: see [`GuestType`]); `nested_virt` is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreateFlags {
    /// `XEN_DOMCTL_CDF_s3_integrity`: tboot verifies memory across S3.
    pub s3_integrity: bool,
    /// `XEN_DOMCTL_CDF_oos_off`: disable out-of-sync shadow page tables.
    pub oos_off: bool,
    /// `XEN_DOMCTL_CDF_xs_domain`: this is a xenstore stub domain.
    pub xs_domain: bool,
    /// `XEN_DOMCTL_CDF_iommu`: the domain may use the IOMMU (passthrough).
    pub iommu: bool,
    /// `XEN_DOMCTL_CDF_vpmu`: expose the virtual PMU.
    pub vpmu: bool,
}

impl CreateFlags {
    /// The raw `XEN_DOMCTL_CDF_*` word.
    pub fn to_raw(self) -> u32 {
        let mut raw = 0;
        for (set, bit) in [
            (self.s3_integrity, sys::XEN_DOMCTL_CDF_s3_integrity),
            (self.oos_off, sys::XEN_DOMCTL_CDF_oos_off),
            (self.xs_domain, sys::XEN_DOMCTL_CDF_xs_domain),
            (self.iommu, sys::XEN_DOMCTL_CDF_iommu),
            (self.vpmu, sys::XEN_DOMCTL_CDF_vpmu),
        ] {
            if set {
                raw |= bit;
            }
        }
        raw
    }
}

/// How a hardware-virtualised domain's emulated platform timers treat the ticks they missed
/// while the domain was not running (`HVM_PARAM_TIMER_MODE`, `HVMPTM_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    /// Guest time stops while the domain is descheduled; missed ticks are delivered late
    /// (Xen's default).
    DelayForMissedTicks,
    /// Guest time runs on; missed ticks are delivered at once (libxl's default for PVH and
    /// HVM guests).
    NoDelayForMissedTicks,
    /// Missed ticks are dropped.
    NoMissedTicksPending,
    /// One missed tick is delivered, the rest dropped.
    OneMissedTickPending,
}

impl TimerMode {
    /// The `HVMPTM_*` value.
    pub fn as_raw(self) -> u64 {
        u64::from(match self {
            TimerMode::DelayForMissedTicks => sys::HVMPTM_delay_for_missed_ticks,
            TimerMode::NoDelayForMissedTicks => sys::HVMPTM_no_delay_for_missed_ticks,
            TimerMode::NoMissedTicksPending => sys::HVMPTM_no_missed_ticks_pending,
            TimerMode::OneMissedTickPending => sys::HVMPTM_one_missed_tick_pending,
        })
    }
}

/// The kind of domain `xc_domain_create` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestType {
    /// Paravirtualised: no hardware virtualisation, no emulated devices.
    #[default]
    Pv,
    /// PVH: a hardware-virtualised container (`XEN_DOMCTL_CDF_hvm` with
    /// hardware-assisted paging, `XEN_DOMCTL_CDF_hap`) whose only emulated
    /// device is the local APIC (`XEN_X86_EMU_LAPIC`); no device model.
    Pvh,
    /// HVM: the same container with every emulated device Xen offers a
    /// guest (`XEN_X86_EMU_ALL` but vPCI, which is for a PVH dom0); a device
    /// model in dom0 emulates the rest (PCI bus, disks, NICs, VGA).
    Hvm,
}

/// Parameters of `xc_domain_create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainCreateConfig {
    /// PV, PVH or HVM.
    pub guest: GuestType,
    /// Domain id to use; `None` lets Xen pick a free one.
    pub domid: Option<u32>,
    /// XSM security id (0 without XSM/FLASK policy).
    pub ssidref: u32,
    /// Domain handle: the VM's UUID as 16 bytes.
    pub handle: [u8; 16],
    /// Creation flags.
    pub flags: CreateFlags,
    /// Maximum number of vCPUs (at least 1).
    pub max_vcpus: u32,
    /// Highest event channel port the domain may use.
    pub max_evtchn_port: u32,
    /// Grant table frames; `None` for the hypervisor's default.
    pub max_grant_frames: Option<u32>,
    /// Maptrack frames; `None` for the hypervisor's default.
    pub max_maptrack_frames: Option<u32>,
    /// Highest grant table version the guest may use (1 or 2).
    pub max_grant_version: u8,
    /// CPU pool (0 is the default pool).
    pub cpupool_id: u32,
}

impl Default for DomainCreateConfig {
    /// One vCPU, 1023 event channels (xl's default), hypervisor-default
    /// grant/maptrack frames, grant table v1, pool 0, Xen-chosen domid.
    fn default() -> Self {
        DomainCreateConfig {
            guest: GuestType::Pv,
            domid: None,
            ssidref: 0,
            handle: [0; 16],
            flags: CreateFlags::default(),
            max_vcpus: 1,
            max_evtchn_port: 1023,
            max_grant_frames: None,
            max_maptrack_frames: None,
            max_grant_version: 1,
            cpupool_id: 0,
        }
    }
}

impl DomainCreateConfig {
    /// The raw `xen_domctl_createdomain` for this configuration; fails on
    /// values Xen would reject or that do not fit the C fields.
    pub fn to_raw(&self) -> Result<sys::xen_domctl_createdomain> {
        let invalid = |reason: String| XenctrlError::InvalidArgument {
            call: "xc_domain_create",
            reason,
        };
        if let Some(domid) = self.domid {
            if domid == 0 || domid >= xen_sys::DOMID_FIRST_RESERVED {
                return Err(invalid(format!(
                    "domid {domid} is not an ordinary domain id (1..{})",
                    xen_sys::DOMID_FIRST_RESERVED
                )));
            }
        }
        if self.max_vcpus == 0 {
            return Err(invalid("max_vcpus must be at least 1".into()));
        }
        if !(1..=2).contains(&self.max_grant_version) {
            return Err(invalid(format!(
                "max_grant_version {} is not 1 or 2",
                self.max_grant_version
            )));
        }
        let frames = |name: &str, v: Option<u32>| -> Result<i32> {
            match v {
                None => Ok(-1),
                Some(n) => i32::try_from(n).map_err(|_| invalid(format!("{name} {n} is too large"))),
            }
        };
        let (guest_flags, emulation_flags) = match self.guest {
            // PV: no emulated devices.
            GuestType::Pv => (0, 0),
            GuestType::Pvh => (
                sys::XEN_DOMCTL_CDF_hvm | sys::XEN_DOMCTL_CDF_hap,
                sys::XEN_X86_EMU_LAPIC,
            ),
            GuestType::Hvm => (
                sys::XEN_DOMCTL_CDF_hvm | sys::XEN_DOMCTL_CDF_hap,
                sys::XEN_X86_EMU_ALL & !sys::XEN_X86_EMU_VPCI,
            ),
        };
        Ok(sys::xen_domctl_createdomain {
            ssidref: self.ssidref,
            handle: self.handle,
            flags: self.flags.to_raw() | guest_flags,
            iommu_opts: 0,
            max_vcpus: self.max_vcpus,
            max_evtchn_port: self.max_evtchn_port,
            max_grant_frames: frames("max_grant_frames", self.max_grant_frames)?,
            max_maptrack_frames: frames("max_maptrack_frames", self.max_maptrack_frames)?,
            grant_opts: u32::from(self.max_grant_version) & sys::XEN_DOMCTL_GRANT_version_mask,
            vmtrace_size: 0,
            cpupool_id: self.cpupool_id,
            arch: sys::xen_arch_domainconfig {
                emulation_flags,
                ..Default::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_info(domid: u16, flags: u32) -> sys::xc_domaininfo_t {
        sys::xc_domaininfo_t {
            domain: domid,
            flags,
            tot_pages: 262_144,
            max_pages: 262_400,
            cpu_time: 1_234_567,
            nr_online_vcpus: 2,
            max_vcpu_id: 3,
            handle: [7; 16],
            ..Default::default()
        }
    }

    #[test]
    fn decodes_running_domain() {
        let info = DomainInfo::from_raw(&raw_info(5, sys::XEN_DOMINF_running | sys::XEN_DOMINF_blocked));
        assert_eq!(info.domid, 5);
        assert!(info.flags.running && info.flags.blocked);
        assert!(!info.flags.paused && !info.flags.dying && !info.flags.shutdown && !info.flags.hvm);
        assert_eq!(info.shutdown_reason, None);
        assert_eq!(info.memory_kib, 1_048_576);
        assert_eq!(info.max_memory_kib, 1_049_600);
        assert_eq!(info.vcpus_online, 2);
        assert_eq!(info.vcpus_max, 4);
        assert_eq!(info.cpu_time_ns, 1_234_567);
        assert_eq!(info.handle, [7; 16]);
    }

    #[test]
    fn decodes_shutdown_reason() {
        for (code, reason) in [
            (0, ShutdownReason::Poweroff),
            (1, ShutdownReason::Reboot),
            (2, ShutdownReason::Suspend),
            (3, ShutdownReason::Crash),
            (4, ShutdownReason::Watchdog),
            (5, ShutdownReason::SoftReset),
            (200, ShutdownReason::Other(200)),
        ] {
            let flags = sys::XEN_DOMINF_shutdown | sys::XEN_DOMINF_paused | (code << 16);
            let info = DomainInfo::from_raw(&raw_info(9, flags));
            assert!(info.flags.shutdown && info.flags.paused);
            assert_eq!(info.shutdown_reason, Some(reason));
            assert_eq!(reason.as_raw(), code);
            assert_eq!(ShutdownReason::from_raw(code), reason);
        }
    }

    #[test]
    fn shutdown_code_ignored_without_shutdown_flag() {
        let info = DomainInfo::from_raw(&raw_info(1, 3 << 16));
        assert_eq!(info.shutdown_reason, None);
    }

    #[test]
    fn decodes_all_flags() {
        let all = DomainFlags::from_raw(0x1ff);
        assert_eq!(
            all,
            DomainFlags {
                dying: true,
                hvm: true,
                shutdown: true,
                paused: true,
                blocked: true,
                running: true,
                debugged: true,
                xs_domain: true,
                hap: true,
            }
        );
        assert_eq!(DomainFlags::from_raw(0), DomainFlags::default());
        assert!(DomainFlags::from_raw(sys::XEN_DOMINF_dying).dying);
    }

    #[test]
    fn no_vcpus_and_huge_max() {
        let mut raw = raw_info(0, 0);
        raw.max_vcpu_id = u32::MAX;
        raw.max_pages = u64::MAX;
        let info = DomainInfo::from_raw(&raw);
        assert_eq!(info.vcpus_max, 0);
        assert_eq!(info.max_memory_kib, u64::MAX);
    }

    #[test]
    fn physinfo() {
        let raw = sys::xc_physinfo_t {
            threads_per_core: 2,
            cores_per_socket: 8,
            nr_cpus: 32,
            cpu_khz: 2_400_000,
            total_pages: 1 << 20,
            free_pages: 1 << 18,
            ..Default::default()
        };
        let p = PhysInfo::from_raw(&raw);
        assert_eq!(p.sockets, 2);
        assert_eq!(p.total_memory, 4 << 30);
        assert_eq!(p.free_memory, 1 << 30);
        assert_eq!(p.cpu_khz, 2_400_000);
        let zero = PhysInfo::from_raw(&sys::xc_physinfo_t::default());
        assert_eq!(zero.sockets, 0);
    }

    #[test]
    fn version() {
        let mut extra = [0 as std::ffi::c_char; 16];
        for (d, s) in extra.iter_mut().zip(b".7-pre") {
            *d = *s as std::ffi::c_char;
        }
        let v = XenVersion::from_raw((4 << 16) | 17, &extra);
        assert_eq!((v.major, v.minor, v.extra.as_str()), (4, 17, ".7-pre"));
        assert_eq!(v.to_string(), "4.17.7-pre");
        // A full buffer with no NUL is used whole.
        let full = [b'a' as std::ffi::c_char; 16];
        assert_eq!(XenVersion::from_raw(0, &full).extra, "a".repeat(16));
    }

    #[test]
    fn create_config_to_raw() {
        let cfg = DomainCreateConfig {
            handle: [1; 16],
            max_vcpus: 4,
            max_grant_frames: Some(64),
            flags: CreateFlags {
                iommu: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let raw = cfg.to_raw().unwrap();
        assert_eq!(raw.flags, sys::XEN_DOMCTL_CDF_iommu);
        assert_eq!(raw.max_vcpus, 4);
        assert_eq!(raw.max_evtchn_port, 1023);
        assert_eq!(raw.max_grant_frames, 64);
        assert_eq!(raw.max_maptrack_frames, -1);
        assert_eq!(raw.grant_opts, 1);
        assert_eq!(raw.arch.emulation_flags, 0);
        assert_eq!(raw.handle, [1; 16]);
    }

    #[test]
    fn create_config_rejects_bad_values() {
        let bad = [
            DomainCreateConfig {
                max_vcpus: 0,
                ..Default::default()
            },
            DomainCreateConfig {
                max_grant_version: 3,
                ..Default::default()
            },
            DomainCreateConfig {
                domid: Some(0x7FF0),
                ..Default::default()
            },
            DomainCreateConfig {
                max_grant_frames: Some(u32::MAX),
                ..Default::default()
            },
        ];
        for cfg in bad {
            let err = cfg.to_raw().unwrap_err();
            assert_eq!(err.call(), Some("xc_domain_create"));
            assert!(matches!(err, XenctrlError::InvalidArgument { .. }), "{err}");
        }
    }

    #[test]
    fn create_flags() {
        let all = CreateFlags {
            s3_integrity: true,
            oos_off: true,
            xs_domain: true,
            iommu: true,
            vpmu: true,
        };
        assert_eq!(all.to_raw(), 4 | 8 | 16 | 32 | 128);
        assert_eq!(CreateFlags::default().to_raw(), 0);
    }
}
