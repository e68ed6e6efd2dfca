//! The xenstore layout the Xen backend writes and reads, and the pure
//! conversions between Xen's records and the trait's types.
//!
//! Three trees per guest domain `<d>`:
//!
//! * `/local/domain/<d>`: what the guest and the dom0 daemons (xenstored,
//!   xenconsoled, blkback/netback) read. Owned by dom0, readable by the
//!   guest; the parts the guest writes (`control/shutdown`, `data`,
//!   `device/<kind>/<id>`, ...) are owned by the guest.
//! * `/vm/<uuid>`: the VM, shared by successive domains of the same VM.
//! * `/xapid/domain/<d>`: the toolstack's own record (configuration, built
//!   flag, balloon target, online vCPUs). dom0 only: the guest cannot read
//!   it. It is what makes the backend stateless across daemon restarts.

use xenctrl::{DomainFlags, ShutdownReason as XenShutdown, Transaction, XsHandle, XsPermission};

use super::super::{DevId, DomId, DomainConfig, DomainState, ShutdownCode, MIB};

/// Root of the toolstack's private records.
pub(super) const RECORD_ROOT: &str = "/xapid/domain";

/// `/local/domain/<d>`.
pub(super) fn dom_path(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// `/vm/<uuid>`.
pub(super) fn vm_path(uuid: &uuid::Uuid) -> String {
    format!("/vm/{uuid}")
}

/// `/xapid/domain/<d>`.
pub(super) fn record_path(domid: DomId) -> String {
    format!("{RECORD_ROOT}/{domid}")
}

/// Owned by dom0, readable by the guest.
pub(super) fn read_only(domid: DomId) -> [XsPermission; 2] {
    [
        XsPermission {
            domid: 0,
            read: false,
            write: false,
        },
        XsPermission {
            domid,
            read: true,
            write: false,
        },
    ]
}

/// Owned by the guest (dom0 is privileged and keeps full access).
pub(super) fn guest_owned(domid: DomId) -> [XsPermission; 1] {
    [XsPermission {
        domid,
        read: false,
        write: false,
    }]
}

/// Bytes to KiB, rounding up.
pub(super) fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

/// Bytes to whole MiB, rounding up (the PV builder takes MiB).
pub(super) fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

/// The trait's state for a domain's Xen flags.
pub(super) fn state_of(flags: &DomainFlags, reason: Option<XenShutdown>) -> DomainState {
    if flags.dying {
        return DomainState::Dying;
    }
    if flags.shutdown {
        let code = match reason {
            Some(XenShutdown::Poweroff) => ShutdownCode::PowerOff,
            Some(XenShutdown::Reboot) | Some(XenShutdown::SoftReset) => ShutdownCode::Reboot,
            Some(XenShutdown::Suspend) => ShutdownCode::Suspend,
            Some(XenShutdown::Watchdog) => ShutdownCode::Watchdog,
            Some(XenShutdown::Crash) | Some(XenShutdown::Other(_)) | None => ShutdownCode::Crash,
        };
        return DomainState::Shutdown(code);
    }
    if flags.paused {
        DomainState::Paused
    } else {
        DomainState::Running
    }
}

/// The inverse of [`vbd_vdev`](super::super::vbd_vdev): the device
/// position of a Xen virtual-device number, for numbers xapid writes.
pub(super) fn vdev_devid(vdev: u32) -> Option<DevId> {
    if vdev & (1 << 28) != 0 {
        return Some((vdev & 0x0fff_ffff) >> 8);
    }
    if vdev >> 8 == 202 && vdev & 0xf == 0 {
        return Some((vdev & 0xff) >> 4);
    }
    None
}

/// Splits a device number (`st_rdev`) into major and minor the way glibc
/// encodes it.
pub(super) fn dev_major_minor(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

/// blkback's `physical-device` value: `major:minor` in hex.
pub(super) fn physical_device(rdev: u64) -> String {
    let (major, minor) = dev_major_minor(rdev);
    format!("{major:x}:{minor:x}")
}

/// What the backend remembers about a domain it created.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Record {
    /// The configuration given to `create_domain` (or `resume_from`).
    pub config: DomainConfig,
    /// `build` has completed.
    pub built: bool,
    /// The balloon target, bytes.
    pub target: u64,
    /// vCPUs marked online.
    pub vcpus: u32,
}

impl Record {
    pub(super) fn new(config: &DomainConfig) -> Self {
        Record {
            config: config.clone(),
            built: false,
            target: config.memory_target,
            vcpus: config.vcpus_at_start,
        }
    }
}

/// Reads a domain's record; `Ok(None)` when there is none (a domain some
/// other toolstack created, or one already destroyed).
pub(super) fn read_record(xs: &XsHandle, tx: Transaction, domid: DomId) -> xenctrl::Result<Option<Record>> {
    let base = record_path(domid);
    let config = match xs.read(tx, &format!("{base}/config")) {
        Ok(bytes) => bytes,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let config: DomainConfig = serde_json::from_slice(&config).map_err(|e| xenctrl::XenctrlError::InvalidData {
        call: "xs_read",
        reason: format!("{base}/config is not a domain configuration: {e}"),
    })?;
    let num = |key: &str, default: u64| -> xenctrl::Result<u64> {
        match xs.read_string(tx, &format!("{base}/{key}")) {
            Ok(s) => s.trim().parse().map_err(|_| xenctrl::XenctrlError::InvalidData {
                call: "xs_read",
                reason: format!("{base}/{key} is {s:?}, not a number"),
            }),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(default),
            Err(e) => Err(e),
        }
    };
    let built = num("built", 0)? != 0;
    let target = num("target", config.memory_target)?;
    let vcpus = u32::try_from(num("vcpus", u64::from(config.vcpus_at_start))?).unwrap_or(config.vcpus_max);
    Ok(Some(Record {
        config,
        built,
        target,
        vcpus,
    }))
}

/// Writes a whole record.
pub(super) fn write_record(xs: &XsHandle, tx: Transaction, domid: DomId, record: &Record) -> xenctrl::Result<()> {
    let base = record_path(domid);
    let config = serde_json::to_vec(&record.config).map_err(|e| xenctrl::XenctrlError::InvalidArgument {
        call: "xs_write",
        reason: format!("cannot encode the domain configuration: {e}"),
    })?;
    xs.write(tx, &format!("{base}/config"), &config)?;
    xs.write(tx, &format!("{base}/built"), if record.built { b"1" } else { b"0" })?;
    xs.write(tx, &format!("{base}/target"), record.target.to_string().as_bytes())?;
    xs.write(tx, &format!("{base}/vcpus"), record.vcpus.to_string().as_bytes())
}

/// Writes `value` at `path` and sets its permissions.
pub(super) fn put(
    xs: &XsHandle,
    tx: Transaction,
    path: &str,
    value: &str,
    perms: &[XsPermission],
) -> xenctrl::Result<()> {
    xs.write(tx, path, value.as_bytes())?;
    xs.set_permissions(tx, path, perms)
}

/// Writes the skeleton of a new domain's trees (see the module docs).
pub(super) fn write_domain_skeleton(
    xs: &XsHandle,
    tx: Transaction,
    domid: DomId,
    config: &DomainConfig,
) -> xenctrl::Result<()> {
    let dom = dom_path(domid);
    let vm = vm_path(&config.uuid);
    let ro = read_only(domid);
    let rw = guest_owned(domid);
    put(xs, tx, &dom, "", &ro)?;
    put(xs, tx, &format!("{dom}/name"), &config.name, &ro)?;
    put(xs, tx, &format!("{dom}/domid"), &domid.to_string(), &ro)?;
    put(xs, tx, &format!("{dom}/vm"), &vm, &ro)?;
    put(
        xs,
        tx,
        &format!("{dom}/memory/static-max"),
        &kib(config.memory_max).to_string(),
        &ro,
    )?;
    put(
        xs,
        tx,
        &format!("{dom}/memory/target"),
        &kib(config.memory_target).to_string(),
        &ro,
    )?;
    for n in 0..config.vcpus_max {
        let state = if n < config.vcpus_at_start { "online" } else { "offline" };
        put(xs, tx, &format!("{dom}/cpu/{n}/availability"), state, &ro)?;
    }
    put(xs, tx, &format!("{dom}/control"), "", &ro)?;
    for key in [
        "shutdown",
        "feature-poweroff",
        "feature-reboot",
        "feature-suspend",
        "sysrq",
    ] {
        put(xs, tx, &format!("{dom}/control/{key}"), "", &rw)?;
    }
    for key in [
        "platform-feature-multiprocessor-suspend",
        "platform-feature-xs_reset_watches",
    ] {
        put(xs, tx, &format!("{dom}/control/{key}"), "1", &ro)?;
    }
    put(xs, tx, &format!("{dom}/device"), "", &ro)?;
    for dir in ["data", "drivers", "feature", "attr", "error"] {
        put(xs, tx, &format!("{dom}/{dir}"), "", &rw)?;
    }
    put(xs, tx, &format!("{dom}/console"), "", &ro)?;
    put(xs, tx, &format!("{dom}/store"), "", &ro)?;

    put(xs, tx, &vm, "", &ro)?;
    put(xs, tx, &format!("{vm}/uuid"), &config.uuid.to_string(), &ro)?;
    put(xs, tx, &format!("{vm}/name"), &config.name, &ro)?;
    put(xs, tx, &format!("{vm}/domains/{domid}"), &dom, &read_only(0))?;
    write_record(xs, tx, domid, &Record::new(config))
}

/// Writes the guest's `cpu/<n>/availability` keys for `online` vCPUs.
pub(super) fn write_vcpus(
    xs: &XsHandle,
    tx: Transaction,
    domid: DomId,
    vcpus_max: u32,
    online: u32,
) -> xenctrl::Result<()> {
    let dom = dom_path(domid);
    for n in 0..vcpus_max {
        let state: &[u8] = if n < online { b"online" } else { b"offline" };
        xs.write(tx, &format!("{dom}/cpu/{n}/availability"), state)?;
    }
    xs.write(
        tx,
        &format!("{}/vcpus", record_path(domid)),
        online.to_string().as_bytes(),
    )
}

/// Removes a node, treating "already gone" as success.
pub(super) fn rm_quiet(xs: &XsHandle, tx: Transaction, path: &str) -> xenctrl::Result<()> {
    match xs.rm(tx, path) {
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Reads a node as text; `Ok(None)` if it does not exist.
pub(super) fn read_opt(xs: &XsHandle, tx: Transaction, path: &str) -> xenctrl::Result<Option<String>> {
    match xs.read_string(tx, path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Lists a directory; an absent directory is empty.
pub(super) fn list_opt(xs: &XsHandle, tx: Transaction, path: &str) -> xenctrl::Result<Vec<String>> {
    match xs.directory(tx, path) {
        Ok(v) => Ok(v),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
