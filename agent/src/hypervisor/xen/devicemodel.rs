//! HVM device models: one `qemu-system-xen` (Debian's `/usr/libexec/xen-qemu-system-i386`)
//! per HVM domain, started by xapid after the domain is built and supervised for the
//! domain's life.
//!
//! * Arguments ([`qemu_args`]) come from the domain's [`HvmBoot`]: boot order, `platform`
//!   `vga`, vCPUs, memory, an IDE disk or CD drive per VBD at positions 0-3, an rtl8139 NIC
//!   per VIF on a tap interface (`tap<domid>.<devid>`) that xapid adds to the VIF's bridge,
//!   the guest's first serial line on a pty (the HVM `vt100` console), VNC on a Unix socket.
//! * Its QMP socket (`<run dir>/<domid>/qmp`) is used for its life: `query-chardev` (the
//!   serial pty), `stop`/`cont` with pause/unpause, `xen-save-devices-state` when the domain
//!   is saved ([`DeviceModel::save_state`]), `quit` when the domain is destroyed.
//! * A restored domain's device model starts with the saved state as its incoming migration
//!   (`-incoming fd:N`, the state file open on that descriptor), so that QEMU neither
//!   allocates the guest's video memory again (the stream restored it) nor resets its devices.
//! * A supervisor thread waits for the process: a device model that exits while its domain
//!   is meant to run calls the exit handler, which destroys the domain (the VM then becomes
//!   Halted) and logs why. QEMU's own output is re-logged line by line.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::super::{BackendError, BlockDevice, DomId, DomainConfig, Errno, HvmBoot, Op};

/// Environment variable naming the device model binary.
pub const QEMU_ENV: &str = "XAPID_QEMU";
/// Where Debian's `qemu-system-xen` puts its binary.
pub const QEMU_DEFAULT: &str = "/usr/libexec/xen-qemu-system-i386";
/// Environment variable naming hvmloader.
pub const HVMLOADER_ENV: &str = "XAPID_HVMLOADER";
/// Environment variable naming the BIOS image.
pub const BIOS_ENV: &str = "XAPID_HVM_BIOS";
/// Debian's SeaBIOS (package `seabios`), the image hvmloader starts.
pub const BIOS_DEFAULT: &str = "/usr/share/seabios/bios-256k.bin";
/// Environment variable naming the UEFI firmware image (default [`OVMF_DEFAULT`]).
pub const OVMF_ENV: &str = "XAPID_HVM_OVMF";
/// Debian's OVMF (package `ovmf`), the UEFI image hvmloader starts for `firmware=uefi`.
pub const OVMF_DEFAULT: &str = "/usr/share/ovmf/OVMF.fd";
/// Where the option ROMs (VGA BIOS) of Debian's SeaBIOS package are.
const ROM_DIR: &str = "/usr/share/seabios";
/// Environment variable naming the directory of the device models' sockets.
pub const RUN_DIR_ENV: &str = "XAPID_DM_DIR";
/// Default directory of the device models' sockets.
pub const RUN_DIR_DEFAULT: &str = "/run/xapid/dm";
/// Environment variable: `1` makes each device model also copy its guest's serial output to
/// `<run dir>/<domid>/serial.log` (a diagnostic: what the guest wrote whether or not a console
/// client had the pty open; the file lives as long as the device model).
pub const SERIAL_LOG_ENV: &str = "XAPID_DM_SERIAL_LOG";
/// How long a device model may take to say it runs (it is slow under emulation).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long saving the devices' state may take.
const SAVE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest device state accepted from QEMU (its devices' registers and buffers; the
/// guest's memory, video memory included, is in Xen's stream).
pub const MAX_STATE: u64 = 64 << 20;
/// How long `quit` may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one QMP exchange.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Emulated IDE positions (primary/secondary master/slave).
const IDE_SLOTS: u32 = 4;

/// The device model binary: `$XAPID_QEMU`, else Debian's.
pub fn qemu_path() -> PathBuf {
    std::env::var_os(QEMU_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(QEMU_DEFAULT))
}

/// hvmloader: `$XAPID_HVMLOADER`, else the newest `/usr/lib/xen-*/boot/hvmloader`.
pub fn hvmloader_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(HVMLOADER_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("xen-"))
        .map(|e| e.path().join("boot/hvmloader"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// The BIOS image: `$XAPID_HVM_BIOS`, else Debian's SeaBIOS.
pub fn bios_path() -> PathBuf {
    std::env::var_os(BIOS_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BIOS_DEFAULT))
}

/// The UEFI image: `$XAPID_HVM_OVMF`, else Debian's OVMF.
pub fn ovmf_path() -> PathBuf {
    std::env::var_os(OVMF_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(OVMF_DEFAULT))
}

/// The directory holding domain `domid`'s sockets.
pub fn run_dir(domid: DomId) -> PathBuf {
    let root = std::env::var_os(RUN_DIR_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(RUN_DIR_DEFAULT));
    root.join(domid.to_string())
}

/// The tap interface of NIC `devid` of domain `domid` (at most 15 characters for any domid
/// and devid below 10000).
pub fn tap_name(domid: DomId, devid: u32) -> String {
    format!("tap{domid}.{devid}")
}

/// The emulated drive at an IDE position.
fn drive_arg(d: &BlockDevice) -> String {
    let media = if d.cd { "cdrom" } else { "disk" };
    let mut arg = format!("if=ide,index={},media={media}", d.devid);
    if let Some(path) = &d.backing {
        // QEMU's option syntax doubles commas inside values.
        let file = path.to_string_lossy().replace(',', ",,");
        arg = format!("file={file},{arg},format=raw");
        if d.cd || d.mode == super::super::BlockMode::ReadOnly {
            arg.push_str(",readonly=on");
        } else {
            arg.push_str(",cache=writeback");
        }
    }
    arg
}

/// The guest's first serial line: a pty (the HVM `vt100` console), with a copy in a log file
/// when [`SERIAL_LOG_ENV`] asks for one.
fn serial_chardev(dir: &Path) -> String {
    let mut arg = "pty,id=serial0".to_string();
    if std::env::var(SERIAL_LOG_ENV).is_ok_and(|v| v == "1") {
        let log = dir.join("serial.log").to_string_lossy().replace(',', ",,");
        arg.push_str(&format!(",logfile={log},logappend=on"));
    }
    arg
}

/// The device model's command line for domain `domid` (without the binary).
pub fn qemu_args(domid: DomId, config: &DomainConfig, hvm: &HvmBoot, dir: &Path) -> Vec<String> {
    let mib = config.memory_max.div_ceil(1 << 20);
    let vga = match hvm.platform.get("vga").map(String::as_str) {
        Some("cirrus") => "cirrus",
        _ => "std",
    };
    let mut a: Vec<String> = [
        "-xen-domid",
        &domid.to_string(),
        "-no-shutdown",
        "-nodefaults",
        "-no-user-config",
        "-name",
        &config.name.replace(',', ",,"),
        "-chardev",
        &format!("socket,id=qmp,path={},server=on,wait=off", dir.join("qmp").display()),
        "-mon",
        "chardev=qmp,mode=control",
        "-machine",
        "xenfv",
        "-m",
        &mib.to_string(),
        "-smp",
        &format!("{},maxcpus={}", config.vcpus_at_start, config.vcpus_max),
        "-boot",
        &format!("order={}", hvm.effective_boot_order()),
        "-vga",
        vga,
        "-vnc",
        &format!("unix:{}", dir.join("vnc").display()),
        "-chardev",
        &serial_chardev(dir),
        "-serial",
        "chardev:serial0",
        "-L",
        ROM_DIR,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for d in hvm.disks.iter().filter(|d| d.devid < IDE_SLOTS) {
        a.push("-drive".into());
        a.push(drive_arg(d));
    }
    if hvm.nics.is_empty() {
        a.extend(["-net".to_string(), "none".to_string()]);
    }
    for n in &hvm.nics {
        a.push("-netdev".into());
        a.push(format!(
            "tap,id=net{},ifname={},script=no,downscript=no",
            n.devid,
            tap_name(domid, n.devid)
        ));
        a.push("-device".into());
        a.push(format!("rtl8139,netdev=net{},mac={},romfile=", n.devid, n.mac));
    }
    a
}

/// Whether the supervised process has exited, with a condition variable to wait on.
#[derive(Default)]
struct Exit {
    done: Mutex<bool>,
    cond: Condvar,
}

/// A running device model.
pub struct DeviceModel {
    domid: DomId,
    pid: u32,
    dir: PathBuf,
    /// Set before xapid stops it: its exit is then expected.
    stopping: Arc<AtomicBool>,
    exit: Arc<Exit>,
    /// The pty of the guest's first serial line.
    pub serial: Option<PathBuf>,
}

impl std::fmt::Debug for DeviceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceModel")
            .field("domid", &self.domid)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

fn os_err(op: Op, detail: String) -> BackendError {
    BackendError::Os {
        op,
        errno: Errno::EIO,
        detail,
    }
}

/// Starts domain `domid`'s device model, waits until it runs (`ready` says so, polled), puts
/// its taps on their bridges and finds its serial pty. `incoming` is the devices' state
/// saved with the domain ([`DeviceModel::save_state`]) when the domain was restored. `on_exit`
/// runs on the supervisor thread if the process exits without [`DeviceModel::stop`] having
/// been called.
pub fn start(
    domid: DomId,
    config: &DomainConfig,
    hvm: &HvmBoot,
    incoming: Option<&[u8]>,
    ready: impl Fn() -> bool,
    on_exit: impl FnOnce(ExitStatus) + Send + 'static,
) -> Result<DeviceModel, BackendError> {
    let op = Op::Build;
    let dir = run_dir(domid);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| BackendError::io(op, &dir, e))?;
    let qemu = qemu_path();
    let mut args = qemu_args(domid, config, hvm, &dir);
    // The saved state, open for QEMU to read as its incoming migration; the file is removed
    // once QEMU has it open.
    let state = match incoming {
        Some(bytes) => {
            let path = dir.join("incoming");
            std::fs::write(&path, bytes).map_err(|e| BackendError::io(op, &path, e))?;
            let file = std::fs::File::open(&path).map_err(|e| BackendError::io(op, &path, e));
            let _ = std::fs::remove_file(&path);
            let file = file?;
            args.push("-incoming".into());
            args.push(format!("fd:{}", file.as_raw_fd()));
            Some(file)
        }
        None => None,
    };
    tracing::info!(domid, qemu = %qemu.display(), args = %args.join(" "), "xen: starting the device model");
    let mut command = Command::new(&qemu);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(file) = &state {
        let fd = file.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls fcntl(2),
        // which is async-signal-safe; `fd` is open in the child (inherited from this
        // process, where `state` keeps it open until after the spawn).
        unsafe {
            command.pre_exec(move || {
                // The state's descriptor survives the exec (std opens files close-on-exec).
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let mut child: Child = command.spawn().map_err(|e| BackendError::io(op, &qemu, e))?;
    drop(state);
    let pid = child.id();
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                tracing::info!(domid, "qemu-dm: {line}");
            }
        });
    }
    let stopping = Arc::new(AtomicBool::new(false));
    let exit = Arc::new(Exit::default());
    {
        let (stopping, exit) = (Arc::clone(&stopping), Arc::clone(&exit));
        std::thread::Builder::new()
            .name(format!("dm-{domid}"))
            .spawn(move || {
                let status = child.wait();
                *exit.done.lock() = true;
                exit.cond.notify_all();
                match status {
                    Ok(status) if !stopping.load(Ordering::Acquire) => on_exit(status),
                    Ok(status) => tracing::info!(domid, %status, "xen: device model stopped"),
                    Err(e) => tracing::warn!(domid, error = %e, "xen: waiting for the device model failed"),
                }
            })
            .map_err(|e| os_err(op, format!("cannot start the device model's supervisor: {e}")))?;
    }
    let mut dm = DeviceModel {
        domid,
        pid,
        dir,
        stopping,
        exit,
        serial: None,
    };
    if let Err(e) = dm.wait_running(&ready).and_then(|()| dm.connect_devices(hvm)) {
        dm.stop();
        return Err(e);
    }
    tracing::info!(domid, pid, serial = ?dm.serial, "xen: device model running");
    Ok(dm)
}

impl DeviceModel {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The QMP socket.
    pub fn qmp_path(&self) -> PathBuf {
        self.dir.join("qmp")
    }

    /// The VNC socket.
    pub fn vnc_path(&self) -> PathBuf {
        self.dir.join("vnc")
    }

    fn exited(&self) -> bool {
        *self.exit.done.lock()
    }

    fn wait_running(&self, ready: &dyn Fn() -> bool) -> Result<(), BackendError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.exited() {
                return Err(os_err(
                    Op::Build,
                    format!(
                        "the device model of domain {} exited while starting (see its log lines)",
                        self.domid
                    ),
                ));
            }
            if ready() && self.qmp_path().exists() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BackendError::Os {
                    op: Op::Build,
                    errno: Errno::ETIMEDOUT,
                    detail: format!(
                        "the device model of domain {} did not start within {START_TIMEOUT:?}",
                        self.domid
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Bridges the taps and finds the serial pty.
    fn connect_devices(&mut self, hvm: &HvmBoot) -> Result<(), BackendError> {
        for n in &hvm.nics {
            let tap = tap_name(self.domid, n.devid);
            let mut cmd = Command::new("ip");
            cmd.args(["link", "set", "dev", &tap]);
            if !n.bridge.is_empty() {
                cmd.args(["master", &n.bridge]);
            }
            cmd.arg("up");
            let out = cmd
                .output()
                .map_err(|e| os_err(Op::Build, format!("ip link set {tap}: {e}")))?;
            if !out.status.success() {
                return Err(os_err(
                    Op::Build,
                    format!(
                        "ip link set {tap} master {}: {}",
                        n.bridge,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                ));
            }
        }
        let chardevs = self.qmp("query-chardev")?;
        self.serial = chardevs.as_array().and_then(|list| {
            list.iter()
                .find(|c| c.get("label").and_then(|l| l.as_str()) == Some("serial0"))
                .and_then(|c| c.get("filename")?.as_str()?.strip_prefix("pty:").map(PathBuf::from))
        });
        Ok(())
    }

    /// Runs one QMP command and returns its `return` value.
    pub fn qmp(&self, command: &str) -> Result<serde_json::Value, BackendError> {
        qmp(&self.qmp_path(), command, None)
    }

    /// Runs one QMP command with arguments and returns its `return` value.
    pub fn qmp_with(&self, command: &str, arguments: serde_json::Value) -> Result<serde_json::Value, BackendError> {
        qmp(&self.qmp_path(), command, Some(arguments))
    }

    /// Stops the emulated devices (`stop`) and returns their state
    /// (`xen-save-devices-state`, not live: the domain is suspended and goes away after the
    /// save), read from a file in the device model's directory that is removed again.
    /// [`start`] takes it back as `incoming`.
    pub fn save_state(&self) -> Result<Vec<u8>, BackendError> {
        let op = Op::SuspendTo;
        let path = self.dir.join("saved-state");
        let _ = std::fs::remove_file(&path);
        self.qmp("stop")?;
        let args = serde_json::json!({ "filename": path.to_string_lossy(), "live": false });
        let saved = qmp_timeout(&self.qmp_path(), "xen-save-devices-state", Some(args), SAVE_TIMEOUT);
        let read = saved.and_then(|_| {
            let len = std::fs::metadata(&path)
                .map_err(|e| BackendError::io(op, &path, e))?
                .len();
            if len == 0 || len > MAX_STATE {
                return Err(os_err(
                    op,
                    format!("the device model saved {len} bytes of device state (at most {MAX_STATE} expected)"),
                ));
            }
            std::fs::read(&path).map_err(|e| BackendError::io(op, &path, e))
        });
        let _ = std::fs::remove_file(&path);
        read
    }

    /// Stops the device model: `quit` through QMP, then SIGKILL if it is still there after
    /// [`STOP_TIMEOUT`]. Its exit is then expected (no exit handler).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        if !self.exited() {
            if let Err(e) = self.qmp("quit") {
                tracing::debug!(domid = self.domid, error = %e, "qmp quit");
            }
            let mut done = self.exit.done.lock();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while !*done && Instant::now() < deadline {
                self.exit.cond.wait_until(&mut done, deadline);
            }
            if !*done {
                tracing::warn!(
                    domid = self.domid,
                    pid = self.pid,
                    "xen: the device model did not quit: killing it"
                );
                if let Ok(pid) = i32::try_from(self.pid) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
                let deadline = Instant::now() + STOP_TIMEOUT;
                while !*done && Instant::now() < deadline {
                    self.exit.cond.wait_until(&mut done, deadline);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One QMP exchange on `socket`: greeting, `qmp_capabilities`, `command` with its
/// `arguments`; its `return`.
pub fn qmp(
    socket: &Path,
    command: &str,
    arguments: Option<serde_json::Value>,
) -> Result<serde_json::Value, BackendError> {
    qmp_timeout(socket, command, arguments, QMP_TIMEOUT)
}

/// [`qmp`] waiting up to `timeout` for each reply.
fn qmp_timeout(
    socket: &Path,
    command: &str,
    arguments: Option<serde_json::Value>,
    timeout: Duration,
) -> Result<serde_json::Value, BackendError> {
    let op = Op::DomainInfo;
    let err = |what: &str, e: std::io::Error| {
        BackendError::io(op, socket, std::io::Error::new(e.kind(), format!("{what}: {e}")))
    };
    let stream = UnixStream::connect(socket).map_err(|e| err("connect", e))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| err("timeout", e))?;
    stream
        .set_write_timeout(Some(QMP_TIMEOUT))
        .map_err(|e| err("timeout", e))?;
    let mut writer = stream.try_clone().map_err(|e| err("clone", e))?;
    let mut reader = BufReader::new(stream);
    let mut next = |want_reply: bool| -> Result<serde_json::Value, BackendError> {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(|e| err("read", e))? == 0 {
                return Err(os_err(op, format!("QMP {}: connection closed", socket.display())));
            }
            let v: serde_json::Value = serde_json::from_str(line.trim())
                .map_err(|e| os_err(op, format!("QMP {}: bad reply {line:?}: {e}", socket.display())))?;
            if !want_reply || v.get("return").is_some() || v.get("error").is_some() {
                return Ok(v);
            }
            // An asynchronous event: not the reply.
        }
    };
    next(false)?;
    for cmd in ["qmp_capabilities", command] {
        let mut request = serde_json::json!({ "execute": cmd });
        if let (true, Some(args)) = (cmd == command, &arguments) {
            request["arguments"] = args.clone();
        }
        writeln!(writer, "{request}").map_err(|e| err("write", e))?;
        let reply = next(true)?;
        if let Some(e) = reply.get("error") {
            return Err(os_err(op, format!("QMP {cmd}: {e}")));
        }
        if cmd == command {
            return Ok(reply.get("return").cloned().unwrap_or(serde_json::Value::Null));
        }
    }
    Ok(serde_json::Value::Null)
}

/// The device models of an instance's HVM domains.
pub type DeviceModels = Arc<Mutex<HashMap<DomId, DeviceModel>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{BlockMode, MacAddr, NetDevice};

    #[test]
    fn arguments_from_the_vm() {
        let mut config = DomainConfig::pv("hvm, test", 128 << 20, 2, "");
        config.vcpus_at_start = 1;
        let hvm = HvmBoot {
            boot_order: "dc".into(),
            platform: [("vga".to_string(), "cirrus".to_string())].into(),
            disks: vec![
                BlockDevice {
                    devid: 0,
                    backing: Some("/srv/a.img".into()),
                    mode: BlockMode::ReadWrite,
                    cd: false,
                },
                BlockDevice {
                    devid: 3,
                    backing: Some("/srv/x.iso".into()),
                    mode: BlockMode::ReadOnly,
                    cd: true,
                },
                BlockDevice {
                    devid: 5,
                    backing: Some("/srv/pv-only.img".into()),
                    mode: BlockMode::ReadWrite,
                    cd: false,
                },
            ],
            nics: vec![NetDevice {
                devid: 0,
                mac: "02:00:00:00:00:01".parse::<MacAddr>().unwrap(),
                mtu: 1500,
                bridge: "xenbr0".into(),
            }],
            ..HvmBoot::default()
        };
        let a = qemu_args(7, &config, &hvm, Path::new("/run/dm/7")).join(" ");
        assert!(a.starts_with("-xen-domid 7 -no-shutdown"), "{a}");
        assert!(a.contains("-name hvm,, test"), "{a}");
        assert!(
            a.contains("-machine xenfv -m 128 -smp 1,maxcpus=2 -boot order=dc -vga cirrus"),
            "{a}"
        );
        assert!(
            a.contains("-vnc unix:/run/dm/7/vnc -chardev pty,id=serial0") && a.contains("-serial chardev:serial0"),
            "{a}"
        );
        assert!(a.contains("path=/run/dm/7/qmp,server=on,wait=off"), "{a}");
        assert!(
            a.contains("-drive file=/srv/a.img,if=ide,index=0,media=disk,format=raw,cache=writeback"),
            "{a}"
        );
        assert!(
            a.contains("-drive file=/srv/x.iso,if=ide,index=3,media=cdrom,format=raw,readonly=on"),
            "{a}"
        );
        assert!(!a.contains("pv-only"), "{a}");
        assert!(
            a.contains("-netdev tap,id=net0,ifname=tap7.0,script=no,downscript=no"),
            "{a}"
        );
        assert!(
            a.contains("-device rtl8139,netdev=net0,mac=02:00:00:00:00:01,romfile="),
            "{a}"
        );
        assert!(!a.contains("-net none"), "{a}");
        let empty_cd = BlockDevice {
            devid: 2,
            backing: None,
            mode: BlockMode::ReadOnly,
            cd: true,
        };
        assert_eq!(drive_arg(&empty_cd), "if=ide,index=2,media=cdrom");
        assert!(tap_name(32000, 9999).len() <= 15);
    }
}
