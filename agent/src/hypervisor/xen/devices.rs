//! Virtual block (blkback) and network (netback) devices.
//!
//! A device is a pair of xenstore directories written in one transaction:
//! the backend's under `/local/domain/0/backend/<kind>/<d>/<id>` (owned by
//! dom0, readable by the guest) and the frontend's under
//! `/local/domain/<d>/device/<kind>/<id>` (owned by the guest). dom0's
//! kernel drivers pick the backend up and move its `state` to InitWait;
//! the guest's frontend driver, if loaded, connects. The toolstack does
//! the hotplug work itself rather than through udev scripts:
//!
//! * block: a file backing is attached to a loop device (`losetup`), and
//!   the device's number goes to `physical-device` (`major:minor`, hex),
//!   which blkback opens. A block-device backing is used as it is.
//! * network: once netback has created `vif<d>.<id>`, it is added to the
//!   bridge (`ip link`), brought up, and `hotplug-status = connected` is
//!   written so netback connects the frontend.
//!
//! Unplug: `Clean` on a connected frontend sets the backend `online = 0`,
//! `state = 5` (Closing) and waits for the frontend (or backend) to reach
//! `Closed` (6); a guest that keeps the device busy gets `DeviceBusy`.
//! A frontend that never connected (no driver in the guest) has nothing
//! to release. Then (and for `Force`) both directories are removed and the
//! loop device is detached (if blkback still holds it, the kernel detaches
//! it on last close).
//!
//! Toolstack-private keys in the backend directory (`xapid-devid`,
//! `xapid-backing`, `xapid-loop`) make `list_devices` and the read-write
//! sharing check work from xenstore alone.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use xenctrl::{Transaction, XsHandle};

use super::super::{
    vbd_name, vbd_vdev, BackendError, BlockDevice, BlockMode, DevId, DeviceInfo, DeviceKind, DomId, Errno, MacAddr,
    NetDevice, Op, UnplugMode,
};
use super::layout::{dom_path, guest_owned, list_opt, physical_device, read_only, read_opt};
use super::xen_err;

/// How long plug waits for dom0's backend driver to pick a device up.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a clean unplug waits for the guest to release a device.
const CLEAN_UNPLUG_TIMEOUT: Duration = Duration::from_secs(20);

/// XenbusState values.
const STATE_INIT_WAIT: u32 = 2;
const STATE_INITIALISED: u32 = 3;
const STATE_CONNECTED: u32 = 4;
const STATE_CLOSED: u32 = 6;

fn kind_dir(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Block => "vbd",
        DeviceKind::Net => "vif",
    }
}

/// The xenstore id of a device: the virtual-device number for a vbd, the
/// devid for a vif.
fn xs_id(kind: DeviceKind, devid: DevId) -> Option<u32> {
    match kind {
        DeviceKind::Block => vbd_vdev(devid),
        DeviceKind::Net => Some(devid),
    }
}

pub(super) fn backend_path(kind: DeviceKind, domid: DomId, id: u32) -> String {
    format!("/local/domain/0/backend/{}/{domid}/{id}", kind_dir(kind))
}

pub(super) fn frontend_path(kind: DeviceKind, domid: DomId, id: u32) -> String {
    format!("{}/device/{}/{id}", dom_path(domid), kind_dir(kind))
}

/// All backend directories of a domain's devices of one kind.
fn backend_ids(xs: &XsHandle, kind: DeviceKind, domid: DomId) -> xenctrl::Result<Vec<u32>> {
    let dir = format!("/local/domain/0/backend/{}/{domid}", kind_dir(kind));
    let mut ids: Vec<u32> = list_opt(xs, Transaction::NONE, &dir)?
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

fn read_state(xs: &XsHandle, path: &str) -> xenctrl::Result<Option<u32>> {
    Ok(read_opt(xs, Transaction::NONE, &format!("{path}/state"))?.and_then(|s| s.trim().parse().ok()))
}

fn os(op: Op, errno: Errno, detail: String) -> BackendError {
    BackendError::Os { op, errno, detail }
}

/// Runs a dom0 tool, returning its standard output.
fn run_tool(op: Op, program: &str, args: &[&str]) -> Result<String, BackendError> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        os(
            op,
            e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO),
            format!("running {program}: {e}"),
        )
    })?;
    if !out.status.success() {
        return Err(os(
            op,
            Errno::EIO,
            format!(
                "{program} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits until `path/state` reaches at least `want`.
fn wait_backend(xs: &XsHandle, op: Op, path: &str, want: u32) -> Result<bool, BackendError> {
    let deadline = Instant::now() + BACKEND_TIMEOUT;
    loop {
        if read_state(xs, path).map_err(|e| xen_err(op, e))? >= Some(want) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `plug_block` attached for a backing.
struct Attached {
    /// Device node blkback opens.
    dev: PathBuf,
    /// Its number.
    rdev: u64,
    /// Whether it is a loop device we created (and must detach).
    loop_created: bool,
}

fn attach_backing(op: Op, backing: &Path, mode: BlockMode) -> Result<Attached, BackendError> {
    let meta = std::fs::metadata(backing).map_err(|e| BackendError::io(op, backing, e))?;
    if meta.file_type().is_block_device() {
        return Ok(Attached {
            dev: backing.to_path_buf(),
            rdev: meta.rdev(),
            loop_created: false,
        });
    }
    let path = backing.to_string_lossy();
    let mut args = vec!["--find", "--show"];
    if mode == BlockMode::ReadOnly {
        args.push("--read-only");
    }
    args.push(&path);
    let dev = PathBuf::from(run_tool(op, "losetup", &args)?);
    match std::fs::metadata(&dev) {
        Ok(m) => Ok(Attached {
            dev,
            rdev: m.rdev(),
            loop_created: true,
        }),
        Err(e) => {
            detach_loop(&dev);
            Err(BackendError::io(op, &dev, e))
        }
    }
}

fn detach_loop(dev: &Path) {
    let dev_s = dev.to_string_lossy();
    if let Err(e) = run_tool(Op::UnplugBlock, "losetup", &["--detach", &dev_s]) {
        tracing::warn!(device = %dev.display(), error = %e, "detaching a loop device failed");
    }
}

/// Checks the read-write exclusivity of `backing` across all domains.
fn check_sharing(
    xs: &XsHandle,
    op: Op,
    domid: DomId,
    device: &BlockDevice,
    backing: &Path,
) -> Result<(), BackendError> {
    let root = "/local/domain/0/backend/vbd";
    let wanted = backing.to_string_lossy();
    let err = |e| xen_err(op, e);
    for other in list_opt(xs, Transaction::NONE, root).map_err(err)? {
        for vdev in list_opt(xs, Transaction::NONE, &format!("{root}/{other}")).map_err(err)? {
            let base = format!("{root}/{other}/{vdev}");
            let Some(theirs) = read_opt(xs, Transaction::NONE, &format!("{base}/xapid-backing")).map_err(err)? else {
                continue;
            };
            if theirs != wanted {
                continue;
            }
            let their_rw = read_opt(xs, Transaction::NONE, &format!("{base}/mode"))
                .map_err(err)?
                .is_some_and(|m| m.starts_with('w'));
            if their_rw || device.mode == BlockMode::ReadWrite {
                return Err(BackendError::DeviceBusy {
                    op,
                    domid,
                    kind: DeviceKind::Block,
                    devid: device.devid,
                    reason: format!(
                        "{wanted} is already attached to domain {other} (vbd {vdev}) and one of them is read-write"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Plugs a block device (the caller has checked the domain is alive and
/// holds the device lock).
pub(super) fn plug_block(xs: &XsHandle, domid: DomId, device: &BlockDevice) -> Result<(), BackendError> {
    let op = Op::PlugBlock;
    let invalid = |reason: String| BackendError::InvalidArgument { op, reason };
    let Some(vdev) = vbd_vdev(device.devid) else {
        return Err(invalid(format!("device position {} too large", device.devid)));
    };
    if device.cd && device.mode == BlockMode::ReadWrite {
        return Err(invalid("CD drives are read-only".into()));
    }
    if device.backing.is_none() && !device.cd {
        return Err(invalid("a disk needs a backing path".into()));
    }
    let backing = match &device.backing {
        Some(path) => Some(std::fs::canonicalize(path).map_err(|e| {
            os(
                op,
                e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::ENOENT),
                format!("backing {} not found", path.display()),
            )
        })?),
        None => None,
    };
    let be = backend_path(DeviceKind::Block, domid, vdev);
    let fe = frontend_path(DeviceKind::Block, domid, vdev);
    if read_opt(xs, Transaction::NONE, &format!("{be}/frontend"))
        .map_err(|e| xen_err(op, e))?
        .is_some()
    {
        return Err(BackendError::DeviceExists {
            op,
            domid,
            kind: DeviceKind::Block,
            devid: device.devid,
        });
    }
    if let Some(backing) = &backing {
        check_sharing(xs, op, domid, device, backing)?;
    }
    let attached = match &backing {
        Some(b) => Some(attach_backing(op, b, device.mode)?),
        None => None,
    };
    let device_type = if device.cd { "cdrom" } else { "disk" };
    let mode = match device.mode {
        BlockMode::ReadOnly => "r",
        BlockMode::ReadWrite => "w",
    };
    let written = xs.with_transaction(|tx| {
        let ro = read_only(domid);
        let rw = guest_owned(domid);
        xs.write(tx, &be, b"")?;
        xs.set_permissions(tx, &be, &ro)?;
        let mut keys: Vec<(&str, String)> = vec![
            ("frontend", fe.clone()),
            ("frontend-id", domid.to_string()),
            ("online", "1".into()),
            ("removable", if device.cd { "1" } else { "0" }.into()),
            ("mode", mode.into()),
            ("type", "phy".into()),
            ("device-type", device_type.into()),
            ("dev", vbd_name(device.devid)),
            ("xapid-devid", device.devid.to_string()),
        ];
        match (&attached, &backing) {
            (Some(a), Some(b)) => {
                keys.push(("params", a.dev.to_string_lossy().into_owned()));
                keys.push(("physical-device", physical_device(a.rdev)));
                keys.push(("physical-device-path", a.dev.to_string_lossy().into_owned()));
                keys.push(("xapid-backing", b.to_string_lossy().into_owned()));
                if a.loop_created {
                    keys.push(("xapid-loop", a.dev.to_string_lossy().into_owned()));
                }
            }
            _ => keys.push(("params", String::new())),
        }
        // `state` last: blkback starts when it sees the directory complete.
        keys.push(("state", "1".into()));
        for (k, v) in &keys {
            xs.write(tx, &format!("{be}/{k}"), v.as_bytes())?;
        }
        xs.write(tx, &fe, b"")?;
        xs.set_permissions(tx, &fe, &rw)?;
        for (k, v) in [
            ("backend", be.clone()),
            ("backend-id", "0".to_string()),
            ("virtual-device", vdev.to_string()),
            ("device-type", device_type.to_string()),
            ("state", "1".to_string()),
        ] {
            xs.write(tx, &format!("{fe}/{k}"), v.as_bytes())?;
        }
        Ok(())
    });
    if let Err(e) = written {
        if let Some(a) = attached.as_ref().filter(|a| a.loop_created) {
            detach_loop(&a.dev);
        }
        return Err(xen_err(op, e));
    }
    if !wait_backend(xs, op, &be, STATE_INIT_WAIT)? {
        teardown(xs, DeviceKind::Block, domid, vdev);
        return Err(os(
            op,
            Errno::ETIMEDOUT,
            format!("blkback did not pick up {be} within {BACKEND_TIMEOUT:?} (is xen-blkback loaded in dom0?)"),
        ));
    }
    Ok(())
}

/// Plugs a network interface (the caller has checked the domain is alive
/// and holds the device lock).
pub(super) fn plug_net(xs: &XsHandle, domid: DomId, device: &NetDevice) -> Result<(), BackendError> {
    let op = Op::PlugNet;
    let invalid = |reason: String| BackendError::InvalidArgument { op, reason };
    if device.mac.is_multicast() {
        return Err(invalid(format!("{} is a multicast MAC", device.mac)));
    }
    if !(68..=65535).contains(&device.mtu) {
        return Err(invalid(format!("MTU {} not in 68..=65535", device.mtu)));
    }
    let bridge = device.bridge.trim();
    if bridge.is_empty() || bridge.contains('/') {
        return Err(invalid(format!("bad bridge name {:?}", device.bridge)));
    }
    if !Path::new("/sys/class/net").join(bridge).join("bridge").exists() {
        return Err(os(op, Errno::ENODEV, format!("bridge {bridge} does not exist in dom0")));
    }
    let id = device.devid;
    let be = backend_path(DeviceKind::Net, domid, id);
    let fe = frontend_path(DeviceKind::Net, domid, id);
    if read_opt(xs, Transaction::NONE, &format!("{be}/frontend"))
        .map_err(|e| xen_err(op, e))?
        .is_some()
    {
        return Err(BackendError::DeviceExists {
            op,
            domid,
            kind: DeviceKind::Net,
            devid: id,
        });
    }
    let mac = device.mac.to_string();
    xs.with_transaction(|tx| {
        xs.write(tx, &be, b"")?;
        xs.set_permissions(tx, &be, &read_only(domid))?;
        for (k, v) in [
            ("frontend", fe.clone()),
            ("frontend-id", domid.to_string()),
            ("online", "1".into()),
            ("script", String::new()),
            ("mac", mac.clone()),
            ("bridge", bridge.to_string()),
            ("mtu", device.mtu.to_string()),
            ("handle", id.to_string()),
            ("type", "vif".into()),
            ("xapid-devid", id.to_string()),
            ("state", "1".into()),
        ] {
            xs.write(tx, &format!("{be}/{k}"), v.as_bytes())?;
        }
        xs.write(tx, &fe, b"")?;
        xs.set_permissions(tx, &fe, &guest_owned(domid))?;
        for (k, v) in [
            ("backend", be.clone()),
            ("backend-id", "0".to_string()),
            ("handle", id.to_string()),
            ("mac", mac.clone()),
            ("mtu", device.mtu.to_string()),
            ("state", "1".to_string()),
        ] {
            xs.write(tx, &format!("{fe}/{k}"), v.as_bytes())?;
        }
        Ok(())
    })
    .map_err(|e| xen_err(op, e))?;
    let connected = wait_backend(xs, op, &be, STATE_INIT_WAIT).and_then(|picked| {
        if !picked {
            return Err(os(
                op,
                Errno::ETIMEDOUT,
                format!("netback did not pick up {be} within {BACKEND_TIMEOUT:?} (is xen-netback loaded in dom0?)"),
            ));
        }
        let vif = format!("vif{domid}.{id}");
        let mtu = device.mtu.to_string();
        run_tool(op, "ip", &["link", "set", "dev", &vif, "mtu", &mtu])?;
        run_tool(op, "ip", &["link", "set", "dev", &vif, "master", bridge])?;
        run_tool(op, "ip", &["link", "set", "dev", &vif, "up"])?;
        xs.write(Transaction::NONE, &format!("{be}/hotplug-status"), b"connected")
            .map_err(|e| xen_err(op, e))
    });
    if let Err(e) = connected {
        teardown(xs, DeviceKind::Net, domid, id);
        return Err(e);
    }
    Ok(())
}

/// Whether a guest can be asked to release a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Guest {
    /// Running: it can answer.
    Running,
    /// Paused: it cannot answer now.
    Paused,
    /// Shut down: nothing to ask.
    Gone,
}

/// Unplugs a device; see the module docs.
pub(super) fn unplug(
    xs: &XsHandle,
    op: Op,
    kind: DeviceKind,
    domid: DomId,
    devid: DevId,
    mode: UnplugMode,
    guest: Guest,
) -> Result<(), BackendError> {
    let missing = BackendError::NoSuchDevice { op, domid, kind, devid };
    let Some(id) = xs_id(kind, devid) else {
        return Err(missing);
    };
    let be = backend_path(kind, domid, id);
    let fe = frontend_path(kind, domid, id);
    let err = |e| xen_err(op, e);
    if read_opt(xs, Transaction::NONE, &format!("{be}/frontend"))
        .map_err(err)?
        .is_none()
    {
        return Err(missing);
    }
    let fe_state = read_state(xs, &fe).map_err(err)?;
    let guest_uses_it = matches!(fe_state, Some(STATE_INITIALISED | STATE_CONNECTED));
    if mode == UnplugMode::Clean && guest_uses_it && guest == Guest::Paused {
        return Err(BackendError::DeviceBusy {
            op,
            domid,
            kind,
            devid,
            reason: "the guest is paused and cannot release it".into(),
        });
    }
    if mode == UnplugMode::Clean && guest_uses_it && guest == Guest::Running {
        xs.with_transaction(|tx| {
            xs.write(tx, &format!("{be}/online"), b"0")?;
            xs.write(tx, &format!("{be}/state"), b"5")
        })
        .map_err(err)?;
        let deadline = Instant::now() + CLEAN_UNPLUG_TIMEOUT;
        loop {
            let fe_now = read_state(xs, &fe).map_err(err)?;
            let be_now = read_state(xs, &be).map_err(err)?;
            if fe_now.is_none_or(|s| s == STATE_CLOSED) || be_now == Some(STATE_CLOSED) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(BackendError::DeviceBusy {
                    op,
                    domid,
                    kind,
                    devid,
                    reason: format!(
                        "the guest did not release it within {CLEAN_UNPLUG_TIMEOUT:?} (frontend state {fe_now:?})"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    teardown(xs, kind, domid, id);
    Ok(())
}

/// Removes a device's directories and releases what plug attached.
/// Best effort: failures are logged.
pub(super) fn teardown(xs: &XsHandle, kind: DeviceKind, domid: DomId, id: u32) {
    let be = backend_path(kind, domid, id);
    let fe = frontend_path(kind, domid, id);
    let loop_dev = match kind {
        DeviceKind::Block => read_opt(xs, Transaction::NONE, &format!("{be}/xapid-loop"))
            .ok()
            .flatten(),
        DeviceKind::Net => None,
    };
    let removed = xs.with_transaction(|tx| {
        super::layout::rm_quiet(xs, tx, &be)?;
        super::layout::rm_quiet(xs, tx, &fe)?;
        match kind {
            // The interface's settings for the guest's tools go with it.
            DeviceKind::Net => super::layout::rm_quiet(xs, tx, &super::guest_agent::vif_tools_path(domid, id)),
            DeviceKind::Block => Ok(()),
        }
    });
    if let Err(e) = removed {
        tracing::warn!(domid, path = %be, error = %e, "removing a device from xenstore failed");
    }
    if let Some(dev) = loop_dev.filter(|d| !d.is_empty()) {
        detach_loop(Path::new(&dev));
    }
}

/// Removes every device of a domain (after destroy); returns what was
/// there, for events.
pub(super) fn teardown_all(xs: &XsHandle, domid: DomId) -> Vec<(DeviceKind, DevId)> {
    let mut gone = Vec::new();
    for kind in [DeviceKind::Block, DeviceKind::Net] {
        let ids = backend_ids(xs, kind, domid).unwrap_or_default();
        for id in ids {
            teardown(xs, kind, domid, id);
            let devid = match kind {
                DeviceKind::Block => super::layout::vdev_devid(id),
                DeviceKind::Net => Some(id),
            };
            if let Some(devid) = devid {
                gone.push((kind, devid));
            }
        }
        let dir = format!("/local/domain/0/backend/{}/{domid}", kind_dir(kind));
        if let Err(e) = super::layout::rm_quiet(xs, Transaction::NONE, &dir) {
            tracing::warn!(domid, path = %dir, error = %e, "removing a backend directory failed");
        }
    }
    gone
}

/// The devices plugged into a domain, from xenstore.
pub(super) fn list(xs: &XsHandle, op: Op, domid: DomId) -> Result<Vec<DeviceInfo>, BackendError> {
    let err = |e| xen_err(op, e);
    let read = |path: String| read_opt(xs, Transaction::NONE, &path).map_err(err);
    let mut out = Vec::new();
    let mut blocks = Vec::new();
    for vdev in backend_ids(xs, DeviceKind::Block, domid).map_err(err)? {
        let be = backend_path(DeviceKind::Block, domid, vdev);
        let devid = match read(format!("{be}/xapid-devid"))?.and_then(|s| s.parse().ok()) {
            Some(d) => d,
            None => match super::layout::vdev_devid(vdev) {
                Some(d) => d,
                None => continue,
            },
        };
        let mode = if read(format!("{be}/mode"))?.is_some_and(|m| m.starts_with('w')) {
            BlockMode::ReadWrite
        } else {
            BlockMode::ReadOnly
        };
        let cd = read(format!("{be}/device-type"))?.as_deref() == Some("cdrom");
        let backing = read(format!("{be}/xapid-backing"))?
            .or(read(format!("{be}/params"))?)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        blocks.push(BlockDevice {
            devid,
            backing,
            mode,
            cd,
        });
    }
    blocks.sort_by_key(|b| b.devid);
    out.extend(blocks.into_iter().map(DeviceInfo::Block));
    for id in backend_ids(xs, DeviceKind::Net, domid).map_err(err)? {
        let be = backend_path(DeviceKind::Net, domid, id);
        let mac = read(format!("{be}/mac"))?
            .and_then(|m| m.parse::<MacAddr>().ok())
            .unwrap_or(MacAddr([0; 6]));
        let mtu = read(format!("{be}/mtu"))?.and_then(|m| m.parse().ok()).unwrap_or(1500);
        let bridge = read(format!("{be}/bridge"))?.unwrap_or_default();
        out.push(DeviceInfo::Net(NetDevice {
            devid: id,
            mac,
            mtu,
            bridge,
        }));
    }
    Ok(out)
}
