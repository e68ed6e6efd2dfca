//! Plain data types exchanged across the [`Hypervisor`](super::Hypervisor)
//! trait: host facts, domain configuration and state, devices.
//!
//! Everything here is backend-neutral: the simulator and the (future) Xen
//! backend produce and consume exactly these values.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{BackendError, Op};

/// A Xen domain id. Domain 0 is the control domain; guest domids are
/// `1..DOMID_FIRST_RESERVED`.
pub type DomId = u32;

/// A device id, unique per device kind within one domain.
///
/// For block devices this is the XenAPI `VBD.userdevice` position (0 is the
/// first disk, `xvda`); backends map it to their own numbering (see
/// [`vbd_vdev`]). For network devices it is `VIF.device` (0 is `eth0`).
pub type DevId = u32;

/// The control domain's id.
pub const DOM0: DomId = 0;

/// First domid Xen reserves for special purposes (`DOMID_FIRST_RESERVED`);
/// guest domids are always below it.
pub const DOMID_FIRST_RESERVED: DomId = 0x7FF0;

/// Bytes in one MiB, for readable sizes in tests and configs.
pub const MIB: u64 = 1024 * 1024;

/// Facts about the host's CPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// Number of physical CPUs (threads) the hypervisor schedules on.
    pub count: u32,
    /// Vendor string, e.g. `GenuineIntel`, `AuthenticAMD`.
    pub vendor: String,
    /// Marketing model name, e.g. `Intel(R) Xeon(R) ...`.
    pub model_name: String,
    /// Nominal speed in MHz.
    pub speed_mhz: f64,
    /// Feature flags as found in `/proc/cpuinfo` (`fpu`, `vme`, ...).
    pub flags: Vec<String>,
    /// CPU family number.
    pub family: u32,
    /// CPU model number.
    pub model: u32,
    /// CPU stepping.
    pub stepping: u32,
}

/// Name and version of the hypervisor a backend drives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypervisorVersion {
    /// Hypervisor name, e.g. `xen` or `xen-simulator`.
    pub name: String,
    /// Major version (Xen: `XENVER_version >> 16`).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Extra version string, e.g. `.0` or `.1-sim`.
    pub extra: String,
}

impl HypervisorVersion {
    /// The version as `major.minor` followed by `extra`, e.g. `4.17.0`.
    pub fn version_string(&self) -> String {
        format!("{}.{}{}", self.major, self.minor, self.extra)
    }
}

impl fmt::Display for HypervisorVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.version_string())
    }
}

/// Facts about the host, as returned by
/// [`Hypervisor::host_info`](super::Hypervisor::host_info).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host's name.
    pub hostname: String,
    /// CPU facts.
    pub cpu: CpuInfo,
    /// Total memory the hypervisor manages, in bytes.
    pub memory_total: u64,
    /// Memory not owned by any domain (dom0 included), in bytes.
    pub memory_free: u64,
    /// Hypervisor name and version.
    pub hypervisor: HypervisorVersion,
}

/// A PV guest kernel loaded straight from dom0 (XenAPI `PV_kernel`, `PV_ramdisk`, `PV_args`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvKernel {
    /// Path (in dom0) of the guest kernel image.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub ramdisk: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// The bootloaders the backends can run for a PV guest (XenAPI `PV_bootloader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Bootloader {
    /// `pygrub`: reads the guest's GRUB (or extlinux/LILO) configuration from its disk and
    /// extracts the default entry's kernel, ramdisk and arguments.
    Pygrub,
}

impl Bootloader {
    /// Every bootloader a backend can run.
    pub const ALL: [Bootloader; 1] = [Bootloader::Pygrub];

    /// The name a VM gives in `PV_bootloader`.
    pub fn name(self) -> &'static str {
        match self {
            Bootloader::Pygrub => "pygrub",
        }
    }

    /// The bootloader called `name`, if the backends know it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl fmt::Display for Bootloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A PV guest whose kernel a bootloader finds on the guest's own bootable disk when the domain
/// is built (XenAPI `PV_bootloader`, `PV_bootloader_args`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvBootloader {
    /// The bootloader's name as the VM gives it. Backends run the ones [`Bootloader::from_name`]
    /// knows and refuse the others with [`BackendError::UnknownBootloader`].
    pub bootloader: String,
    /// The disk image (in dom0) the bootloader reads: the VM's first bootable disk. `None`
    /// when the VM has none (or the caller did not look, as for a resume, which boots
    /// nothing): `build` then fails with [`BackendError::NoBootableDevice`].
    pub disk: Option<PathBuf>,
    /// Arguments for the bootloader itself, separated by white space.
    pub bootloader_args: String,
    /// Appended to the command line the bootloader finds (XenAPI `PV_legacy_args` and
    /// `PV_args`).
    pub extra_args: String,
}

impl PvBootloader {
    /// The bootloader's arguments as separate words.
    pub fn bootloader_argv(&self) -> Vec<String> {
        self.bootloader_args.split_whitespace().map(str::to_owned).collect()
    }

    /// The kernel command line for what the bootloader found: its `found` arguments, then
    /// [`Self::extra_args`], the empty parts left out.
    pub fn cmdline(&self, found: &str) -> String {
        [found.trim(), self.extra_args.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How a PV guest is booted: from a kernel in dom0, or through a bootloader run on the
/// guest's disk.
///
/// Serialised without a tag (the Xen backend keeps it in its xenstore record): a direct boot
/// has the fields of [`PvKernel`], a bootloader boot those of [`PvBootloader`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PvBoot {
    /// Direct boot of a kernel in dom0.
    Kernel(PvKernel),
    /// Boot through the VM's bootloader.
    Bootloader(PvBootloader),
}

/// The virtualisation mode of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DomainKind {
    /// Paravirtualised guest, booted from a kernel in dom0 or through its bootloader.
    Pv(PvBoot),
    /// PVH guest: hardware-virtualised, no device model, booted like a PV guest (a kernel in
    /// dom0 or one its bootloader finds on its disk); the kernel needs a PVH entry point.
    Pvh(PvBoot),
    /// Hardware virtualised guest with a device model (BIOS boot from its emulated disks,
    /// CD drive or network). Backends without HVM support refuse it with
    /// [`BackendError::Unsupported`].
    Hvm(super::HvmBoot),
}

impl DomainKind {
    /// Short lower-case name: `pv`, `pvh` or `hvm` (XenAPI `domain_type` values).
    pub fn as_str(&self) -> &'static str {
        match self {
            DomainKind::Pv(_) => "pv",
            DomainKind::Pvh(_) => "pvh",
            DomainKind::Hvm(_) => "hvm",
        }
    }
}

/// Everything a backend needs to create and build a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainConfig {
    /// Human readable name (XenAPI `VM.name_label`).
    pub name: String,
    /// The VM's uuid; at most one live domain per uuid.
    pub uuid: Uuid,
    /// Memory the guest starts with (balloon target), in bytes.
    pub memory_target: u64,
    /// Maximum memory the guest may ever balloon up to, in bytes.
    pub memory_max: u64,
    /// Maximum number of vCPUs.
    pub vcpus_max: u32,
    /// vCPUs online at boot (`1..=vcpus_max`).
    pub vcpus_at_start: u32,
    /// Virtualisation mode and boot parameters.
    pub kind: DomainKind,
    /// How the guest's time stamp counter is virtualised (the VM's `platform:tsc_mode`):
    /// `None` leaves the hypervisor's default; on Xen 0 default, 1 always emulated, 2 native.
    #[serde(default)]
    pub tsc_mode: Option<u32>,
}

/// Largest vCPU count accepted by [`DomainConfig::validate`].
pub const MAX_VCPUS: u32 = 128;

impl DomainConfig {
    /// A PV domain with a fresh uuid, `memory` bytes (target = max), `vcpus`
    /// vCPUs all online at start, and a typical console command line.
    pub fn pv(name: impl Into<String>, memory: u64, vcpus: u32, kernel: impl Into<PathBuf>) -> Self {
        DomainConfig {
            name: name.into(),
            uuid: Uuid::new_v4(),
            memory_target: memory,
            memory_max: memory,
            vcpus_max: vcpus,
            vcpus_at_start: vcpus,
            kind: DomainKind::Pv(PvBoot::Kernel(PvKernel {
                kernel: kernel.into(),
                ramdisk: None,
                cmdline: "console=hvc0 root=/dev/xvda1 ro".to_string(),
            })),
            tsc_mode: None,
        }
    }

    /// [`DomainConfig::pv`], booted through `pygrub` from the disk image `disk`, with a
    /// typical console argument appended to what the bootloader finds.
    pub fn pv_bootloader(name: impl Into<String>, memory: u64, vcpus: u32, disk: impl Into<PathBuf>) -> Self {
        DomainConfig {
            kind: DomainKind::Pv(PvBoot::Bootloader(PvBootloader {
                bootloader: Bootloader::Pygrub.name().to_string(),
                disk: Some(disk.into()),
                bootloader_args: String::new(),
                extra_args: "console=hvc0".to_string(),
            })),
            ..DomainConfig::pv(name, memory, vcpus, "")
        }
    }

    /// The boot parameters of a PV or PVH domain.
    pub fn pv_boot(&self) -> Option<&PvBoot> {
        match &self.kind {
            DomainKind::Pv(boot) | DomainKind::Pvh(boot) => Some(boot),
            DomainKind::Hvm(_) => None,
        }
    }

    /// Checks the configuration is self-consistent. Every backend calls this
    /// first in `create_domain`/`resume_from`, so all backends reject the same
    /// configurations with [`BackendError::InvalidArgument`].
    pub fn validate(&self, op: Op) -> Result<(), BackendError> {
        let bad = |reason: String| Err(BackendError::InvalidArgument { op, reason });
        if self.name.trim().is_empty() {
            return bad("domain name is empty".into());
        }
        if self.memory_max == 0 {
            return bad("memory_max is zero".into());
        }
        if self.memory_target == 0 {
            return bad("memory_target is zero".into());
        }
        if self.memory_target > self.memory_max {
            return bad(format!(
                "memory_target {} exceeds memory_max {}",
                self.memory_target, self.memory_max
            ));
        }
        if self.vcpus_max == 0 || self.vcpus_max > MAX_VCPUS {
            return bad(format!("vcpus_max {} not in 1..={MAX_VCPUS}", self.vcpus_max));
        }
        if self.vcpus_at_start == 0 || self.vcpus_at_start > self.vcpus_max {
            return bad(format!(
                "vcpus_at_start {} not in 1..={}",
                self.vcpus_at_start, self.vcpus_max
            ));
        }
        match &self.kind {
            DomainKind::Pv(PvBoot::Kernel(k)) | DomainKind::Pvh(PvBoot::Kernel(k))
                if k.kernel.as_os_str().is_empty() =>
            {
                return bad(format!("{} domain without a kernel path", self.kind.as_str()));
            }
            DomainKind::Pv(PvBoot::Bootloader(b)) | DomainKind::Pvh(PvBoot::Bootloader(b))
                if b.bootloader.trim().is_empty() =>
            {
                return bad(format!("{} domain with an empty bootloader name", self.kind.as_str()));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A *clean* shutdown request sent to the guest, which may or may not act on
/// it (Xen: written to the guest's `control/shutdown` xenstore key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ShutdownReason {
    /// Power off.
    PowerOff,
    /// Reboot.
    Reboot,
    /// Suspend (the toolstack saves the domain afterwards).
    Suspend,
    /// Halt; guests treat it like power off.
    Halt,
}

impl ShutdownReason {
    /// The string a PV guest expects in `control/shutdown`.
    pub fn as_xenstore_str(self) -> &'static str {
        match self {
            ShutdownReason::PowerOff => "poweroff",
            ShutdownReason::Reboot => "reboot",
            ShutdownReason::Suspend => "suspend",
            ShutdownReason::Halt => "halt",
        }
    }

    /// The shutdown code a guest that complies with this request ends up
    /// with.
    pub fn resulting_code(self) -> ShutdownCode {
        match self {
            ShutdownReason::PowerOff | ShutdownReason::Halt => ShutdownCode::PowerOff,
            ShutdownReason::Reboot => ShutdownCode::Reboot,
            ShutdownReason::Suspend => ShutdownCode::Suspend,
        }
    }
}

/// Why a domain is shut down: the code the guest (or Xen) recorded.
/// Mirrors Xen's `SHUTDOWN_*` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ShutdownCode {
    /// The guest powered off (`SHUTDOWN_poweroff`, 0).
    PowerOff,
    /// The guest asked to be rebooted (`SHUTDOWN_reboot`, 1).
    Reboot,
    /// The guest is suspended and may be saved (`SHUTDOWN_suspend`, 2).
    Suspend,
    /// The guest crashed (`SHUTDOWN_crash`, 3).
    Crash,
    /// The guest's watchdog fired (`SHUTDOWN_watchdog`, 4).
    Watchdog,
}

impl ShutdownCode {
    /// Xen's numeric `SHUTDOWN_*` value.
    pub fn to_xen(self) -> u32 {
        match self {
            ShutdownCode::PowerOff => 0,
            ShutdownCode::Reboot => 1,
            ShutdownCode::Suspend => 2,
            ShutdownCode::Crash => 3,
            ShutdownCode::Watchdog => 4,
        }
    }

    /// Decodes Xen's numeric `SHUTDOWN_*` value.
    pub fn from_xen(code: u32) -> Option<Self> {
        Some(match code {
            0 => ShutdownCode::PowerOff,
            1 => ShutdownCode::Reboot,
            2 => ShutdownCode::Suspend,
            3 => ShutdownCode::Crash,
            4 => ShutdownCode::Watchdog,
            _ => return None,
        })
    }
}

impl fmt::Display for ShutdownCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownCode::PowerOff => "poweroff",
            ShutdownCode::Reboot => "reboot",
            ShutdownCode::Suspend => "suspend",
            ShutdownCode::Crash => "crash",
            ShutdownCode::Watchdog => "watchdog",
        })
    }
}

/// Run state of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DomainState {
    /// Scheduled (running or blocked waiting for events).
    Running,
    /// Paused by the toolstack. Freshly created and resumed domains start
    /// paused.
    Paused,
    /// The guest has shut down; the domain still exists and still owns its
    /// memory until [`destroy`](super::Hypervisor::destroy)ed.
    Shutdown(ShutdownCode),
    /// Being torn down by the hypervisor; will disappear shortly.
    Dying,
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainState::Running => f.write_str("running"),
            DomainState::Paused => f.write_str("paused"),
            DomainState::Shutdown(code) => write!(f, "shutdown({code})"),
            DomainState::Dying => f.write_str("dying"),
        }
    }
}

/// A snapshot of one domain, as returned by
/// [`domain_info`](super::Hypervisor::domain_info).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Domain id.
    pub domid: DomId,
    /// The uuid given at creation (dom0: the control domain's uuid).
    pub uuid: Uuid,
    /// The name given at creation.
    pub name: String,
    /// Run state.
    pub state: DomainState,
    /// Whether [`build`](super::Hypervisor::build) has completed (a domain
    /// can only be unpaused once built). Resumed domains are built.
    pub built: bool,
    /// Current balloon target, bytes.
    pub memory_target: u64,
    /// Memory the domain owns right now, bytes (counted against host free
    /// memory).
    pub memory_actual: u64,
    /// Ceiling for the balloon target, bytes.
    pub memory_max: u64,
    /// Maximum vCPUs.
    pub vcpus_max: u32,
    /// vCPUs currently online.
    pub vcpus_online: u32,
    /// Total CPU time consumed by all vCPUs.
    pub cpu_time: Duration,
    /// How many times the domain rebooted in place (only backends with
    /// [`Capabilities::reboot_in_place`]; otherwise always 0).
    pub restarts: u32,
}

/// The two kinds of device a backend can plug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DeviceKind {
    /// A virtual block device (XenAPI VBD).
    Block,
    /// A virtual network interface (XenAPI VIF).
    Net,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Block => "vbd",
            DeviceKind::Net => "vif",
        })
    }
}

/// Access mode of a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlockMode {
    /// Read only.
    ReadOnly,
    /// Read write.
    ReadWrite,
}

/// A virtual block device to plug into a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Device position (`VBD.userdevice`); see [`DevId`].
    pub devid: DevId,
    /// Backing file or block device in dom0. `None` only for an empty CD
    /// drive.
    pub backing: Option<PathBuf>,
    /// Access mode. CD drives must be [`BlockMode::ReadOnly`].
    pub mode: BlockMode,
    /// Whether the guest sees a CD-ROM drive rather than a disk.
    pub cd: bool,
}

/// Maps a `VBD.userdevice` position to the Xen virtual device number the
/// guest sees (`xvda` = 51712). Positions below 16 use the classic `xvd`
/// major (202); larger ones use the extended encoding. Returns `None` for
/// positions that cannot be encoded.
pub fn vbd_vdev(devid: DevId) -> Option<u32> {
    if devid < 16 {
        Some((202 << 8) | (devid << 4))
    } else if devid < (1 << 20) {
        Some((1 << 28) | (devid << 8))
    } else {
        None
    }
}

/// The guest-visible name of a block device position: 0 → `xvda`,
/// 25 → `xvdz`, 26 → `xvdaa`.
pub fn vbd_name(devid: DevId) -> String {
    let mut n = u64::from(devid) + 1;
    let mut letters = Vec::new();
    while n > 0 {
        let rem = ((n - 1) % 26) as u8;
        letters.push(b'a' + rem);
        n = (n - 1) / 26;
    }
    letters.reverse();
    format!("xvd{}", String::from_utf8_lossy(&letters))
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// True for multicast/broadcast addresses, which a VIF may not use.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// A random locally administered unicast address.
    pub fn random_local() -> Self {
        let mut bytes: [u8; 6] = rand::random();
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        MacAddr(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The string was not six colon-separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for slot in out.iter_mut() {
            let part = parts.next().ok_or_else(|| MacParseError(s.to_string()))?;
            if part.len() != 2 {
                return Err(MacParseError(s.to_string()));
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

/// A virtual network interface to plug into a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDevice {
    /// Device position (`VIF.device`).
    pub devid: DevId,
    /// Guest MAC address.
    pub mac: MacAddr,
    /// MTU in bytes (68..=65535).
    pub mtu: u32,
    /// Name of the dom0 bridge the backend interface joins.
    pub bridge: String,
}

/// One address family's setting for an interface, handed to the guest's tools
/// (`VIF.configure_ipv4`/`configure_ipv6`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpSetting {
    /// The guest configures the interface itself (mode `None`).
    #[default]
    Unspecified,
    /// A static address in CIDR form (`192.0.2.10/24`) and the gateway, if one is given.
    Static {
        /// The address with its prefix length.
        address: String,
        /// The default gateway.
        gateway: Option<String>,
    },
}

/// The address settings of one interface, both families: what a toolstack publishes for
/// guest tools that apply them (`feature-static-ip-setting`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VifIpSetting {
    /// IPv4.
    pub v4: IpSetting,
    /// IPv6.
    pub v6: IpSetting,
}

impl VifIpSetting {
    /// The static addresses, IPv4 then IPv6 (empty lists where the guest chooses).
    pub fn addresses(&self) -> (Vec<String>, Vec<String>) {
        let list = |s: &IpSetting| match s {
            IpSetting::Static { address, .. } => vec![address.clone()],
            IpSetting::Unspecified => Vec::new(),
        };
        (list(&self.v4), list(&self.v6))
    }
}

/// How to unplug a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnplugMode {
    /// Ask the guest to release the device; the guest may refuse
    /// ([`BackendError::DeviceBusy`]).
    Clean,
    /// Tear the device down regardless of the guest.
    Force,
}

/// A device currently plugged into a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceInfo {
    /// A block device.
    Block(BlockDevice),
    /// A network interface.
    Net(NetDevice),
}

impl DeviceInfo {
    /// The device's kind.
    pub fn kind(&self) -> DeviceKind {
        match self {
            DeviceInfo::Block(_) => DeviceKind::Block,
            DeviceInfo::Net(_) => DeviceKind::Net,
        }
    }

    /// The device's id.
    pub fn devid(&self) -> DevId {
        match self {
            DeviceInfo::Block(b) => b.devid,
            DeviceInfo::Net(n) => n.devid,
        }
    }
}

/// Optional behaviours a backend implements; actors check these instead of
/// the backend's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// A guest reboot (requested or self-initiated) restarts the domain in
    /// place: same domid, [`DomainInfo::restarts`] incremented, state back to
    /// `Running`. Without it the domain stays in `Shutdown(Reboot)` and the
    /// caller destroys and re-creates it.
    pub reboot_in_place: bool,
    /// HVM domains can be created.
    pub hvm: bool,
    /// `suspend_to`/`resume_from` work.
    pub suspend_resume: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbd_names_and_numbers() {
        assert_eq!(vbd_vdev(0), Some(51712));
        assert_eq!(vbd_vdev(1), Some(51728));
        assert_eq!(vbd_vdev(16), Some((1 << 28) | (16 << 8)));
        assert_eq!(vbd_name(0), "xvda");
        assert_eq!(vbd_name(25), "xvdz");
        assert_eq!(vbd_name(26), "xvdaa");
    }

    #[test]
    fn mac_roundtrip() {
        let m: MacAddr = "02:aB:00:11:22:33".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:00:11:22:33");
        assert!("02:ab:00:11:22".parse::<MacAddr>().is_err());
        assert!("02:ab:00:11:22:33:44".parse::<MacAddr>().is_err());
        assert!("zz:ab:00:11:22:33".parse::<MacAddr>().is_err());
        let r = MacAddr::random_local();
        assert!(!r.is_multicast());
        assert_eq!(r.0[0] & 2, 2);
    }

    #[test]
    fn config_validation() {
        let ok = DomainConfig::pv("vm", 256 * MIB, 2, "/boot/vmlinuz");
        assert!(ok.validate(Op::CreateDomain).is_ok());
        let mut c = ok.clone();
        c.memory_target = c.memory_max + 1;
        assert!(matches!(
            c.validate(Op::CreateDomain),
            Err(BackendError::InvalidArgument { .. })
        ));
        let mut c = ok.clone();
        c.vcpus_at_start = 3;
        assert!(c.validate(Op::CreateDomain).is_err());
        let mut c = ok;
        c.name = " ".into();
        assert!(c.validate(Op::CreateDomain).is_err());
    }

    #[test]
    fn shutdown_codes() {
        for code in 0..5 {
            assert_eq!(ShutdownCode::from_xen(code).map(ShutdownCode::to_xen), Some(code));
        }
        assert_eq!(ShutdownCode::from_xen(9), None);
        assert_eq!(ShutdownReason::Halt.resulting_code(), ShutdownCode::PowerOff);
    }
}
