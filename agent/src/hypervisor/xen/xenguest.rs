//! The PV and PVH domain builder in a helper process, `xapid-xenguest`.
//!
//! libxenguest's builder maps the new domain's memory into the calling
//! process, decompresses and copies the kernel and ramdisk in, and unmaps
//! it again: tens of MiB of foreign mappings, and a C library with its
//! own allocations, in whatever process calls it. Like xapi (whose
//! xenopsd runs its `xenguest` helper per build), xapid runs each build in
//! a short-lived process, so a crash, leak or stray mapping in libxenguest
//! cannot touch the daemon, parallel builds share nothing, and the
//! daemon's memory does not grow by a decompressed kernel per build.
//!
//! Protocol: `xapid-xenguest build` reads one JSON [`BuildRequest`] on
//! stdin, writes one JSON [`BuildReply`] on stdout and exits 0; its stderr
//! carries libxenctrl's log (one line per message), which the daemon
//! re-logs. The daemon finds the helper in `$XAPID_XENGUEST`, next to its
//! own executable, or on `$PATH`; without it the Xen backend does not
//! start. Building inside the daemon is an explicit setting:
//! `XAPID_XENGUEST=in-process` (see [`BuildMode`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use xenctrl::{GuestType, PvBuildConfig, PvBuildResult, XcHandle};

use super::super::{BackendError, Errno, Op};

/// The helper's file name.
pub const HELPER_NAME: &str = "xapid-xenguest";

/// Which builder a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    /// A PV domain (`xc_dom_*` with the PV container).
    #[default]
    Pv,
    /// A PVH domain (the HVM container, no device model).
    Pvh,
    /// An HVM domain: hvmloader as the kernel, the BIOS as its firmware module, room for a
    /// device model.
    Hvm,
}

impl Container {
    /// The guest type `xc_domain_create` was given for this container.
    pub fn guest_type(self) -> GuestType {
        match self {
            Container::Pv => GuestType::Pv,
            Container::Pvh => GuestType::Pvh,
            Container::Hvm => GuestType::Hvm,
        }
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    /// The (created, empty, paused) domain.
    pub domid: u32,
    /// PV or PVH.
    #[serde(default)]
    pub container: Container,
    /// Guest kernel (hvmloader for [`Container::Hvm`]).
    pub kernel: PathBuf,
    /// The system firmware an HVM domain's hvmloader starts (the BIOS image).
    #[serde(default)]
    pub firmware: Option<PathBuf>,
    /// Guest ramdisk.
    pub ramdisk: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// vCPUs the domain was created with.
    pub max_vcpus: u32,
    /// vCPUs online when it starts (0: all).
    #[serde(default)]
    pub online_vcpus: u32,
    /// Guest port of the console event channel (backend in dom0).
    pub console_evtchn: u32,
    /// Guest port of the xenstore event channel (xenstored in dom0).
    pub xenstore_evtchn: u32,
}

impl BuildRequest {
    fn config(&self) -> PvBuildConfig {
        PvBuildConfig {
            kernel: self.kernel.clone(),
            ramdisk: self.ramdisk.clone(),
            cmdline: self.cmdline.clone(),
            memory_mib: self.memory_mib,
            max_vcpus: self.max_vcpus,
            online_vcpus: self.online_vcpus,
            console_evtchn: self.console_evtchn,
            console_domid: 0,
            xenstore_evtchn: self.xenstore_evtchn,
            xenstore_domid: 0,
        }
    }
}

/// The helper's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildReply {
    /// Built: the frames to give xenconsoled and xenstored.
    Built {
        /// MFN of the console ring.
        console_mfn: u64,
        /// MFN of the xenstore ring.
        xenstore_mfn: u64,
    },
    /// Failed.
    Failed {
        /// The C function that failed, if known.
        call: Option<String>,
        /// Its errno (0 if none).
        errno: i32,
        /// The whole error message.
        message: String,
    },
}

/// A build failure, as the caller maps it to a [`BackendError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BuildFailure {
    pub call: String,
    pub errno: i32,
    pub message: String,
}

impl From<xenctrl::XenctrlError> for BuildFailure {
    fn from(e: xenctrl::XenctrlError) -> Self {
        BuildFailure {
            call: e.call().unwrap_or("xc_dom_*").to_string(),
            errno: e.errno().unwrap_or(0),
            message: e.to_string(),
        }
    }
}

/// The value of `XAPID_XENGUEST` that asks for builds inside the daemon.
pub const IN_PROCESS: &str = "in-process";

/// Where domain builds run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildMode {
    /// In the helper process at this path (the default).
    Helper(PathBuf),
    /// Inside the daemon: only when `XAPID_XENGUEST=in-process` says so.
    InProcess,
}

/// The build mode `XAPID_XENGUEST` and the installed files give: `in-process` is the
/// explicit choice of building inside the daemon; otherwise the helper must be found, and
/// `None` says it was not.
pub fn build_mode() -> Option<BuildMode> {
    let setting = std::env::var("XAPID_XENGUEST").ok();
    mode_of(setting.as_deref(), helper_path)
}

fn mode_of(setting: Option<&str>, find: impl FnOnce() -> Option<PathBuf>) -> Option<BuildMode> {
    match setting {
        Some(IN_PROCESS) => Some(BuildMode::InProcess),
        _ => find().map(BuildMode::Helper),
    }
}

/// Where the helper is, if anywhere.
pub(super) fn helper_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("XAPID_XENGUEST").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        // Next to the daemon; for test binaries (target/*/deps/) one up.
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(HELPER_NAME);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(HELPER_NAME))
            .find(|p| p.is_file())
    })
}

/// Builds in this process.
pub(super) fn build_in_process(xc: &XcHandle, req: &BuildRequest) -> Result<PvBuildResult, BuildFailure> {
    match req.container {
        Container::Pv => xc.build_pv(req.domid, &req.config()),
        Container::Pvh => xc.build_pvh(req.domid, &req.config()),
        Container::Hvm => {
            let Some(path) = &req.firmware else {
                return Err(BuildFailure {
                    call: "xc_dom_allocate".into(),
                    errno: libc::EINVAL,
                    message: "an HVM build needs its system firmware".into(),
                });
            };
            let firmware = std::fs::read(path).map_err(|e| BuildFailure {
                call: "open".into(),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
                message: format!("reading the HVM firmware {}: {e}", path.display()),
            })?;
            xc.build_hvm(req.domid, &req.config(), &firmware)
        }
    }
    .map_err(BuildFailure::from)
}

/// Builds in a helper process.
pub(super) fn build_in_helper(
    helper: &Path,
    req: &BuildRequest,
) -> Result<Result<PvBuildResult, BuildFailure>, BackendError> {
    let op = Op::Build;
    let io = |what: &str, e: std::io::Error| BackendError::Os {
        op,
        errno: e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO),
        detail: format!("{what} {}: {e}", helper.display()),
    };
    let request = serde_json::to_vec(req).map_err(|e| BackendError::InvalidArgument {
        op,
        reason: format!("encoding the build request: {e}"),
    })?;
    let mut child = Command::new(helper)
        .arg("build")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io("starting", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&request).map_err(|e| io("writing the request to", e))?;
    }
    let out = child.wait_with_output().map_err(|e| io("waiting for", e))?;
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if line.contains(" ERROR ") || line.contains(" WARN ") {
            tracing::warn!(target: "xenguest", domid = req.domid, "{line}");
        } else {
            tracing::debug!(target: "xenguest", domid = req.domid, "{line}");
        }
    }
    let reply: Option<BuildReply> = serde_json::from_slice(&out.stdout).ok();
    match reply {
        Some(BuildReply::Built {
            console_mfn,
            xenstore_mfn,
        }) if out.status.success() => Ok(Ok(PvBuildResult {
            console_mfn,
            xenstore_mfn,
        })),
        Some(BuildReply::Failed { call, errno, message }) => Ok(Err(BuildFailure {
            call: call.unwrap_or_else(|| HELPER_NAME.to_string()),
            errno,
            message,
        })),
        _ => Err(BackendError::Os {
            op,
            errno: Errno::EIO,
            detail: format!(
                "{} {} gave no answer: {}",
                helper.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
            ),
        }),
    }
}

/// Prints `tracing` events to stderr, one line each (the helper's log,
/// and the ignored real-Xen test's).
pub struct StderrLog(pub tracing::Level);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!(" {value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl tracing::Subscriber for StderrLog {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        *meta.level() <= self.0
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let meta = event.metadata();
        eprintln!("XAPID_LOG {} {}:{}", meta.level(), meta.target(), fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The log level `XAPID_XEN_LOG` asks for (`debug`, `trace`; default info).
pub fn log_level_from_env() -> tracing::Level {
    match std::env::var("XAPID_XEN_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    }
}

/// `main` of the `xapid-xenguest` helper; returns the exit status.
pub fn helper_main() -> i32 {
    let _ = tracing::subscriber::set_global_default(StderrLog(log_level_from_env()));
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("build") {
        eprintln!("usage: {HELPER_NAME} build  < request.json  > reply.json");
        return 2;
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("{HELPER_NAME}: reading the request: {e}");
        return 2;
    }
    let req: BuildRequest = match serde_json::from_slice(&input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{HELPER_NAME}: bad request: {e}");
            return 2;
        }
    };
    let reply = match XcHandle::open()
        .map_err(BuildFailure::from)
        .and_then(|xc| build_in_process(&xc, &req))
    {
        Ok(r) => BuildReply::Built {
            console_mfn: r.console_mfn,
            xenstore_mfn: r.xenstore_mfn,
        },
        Err(f) => BuildReply::Failed {
            call: Some(f.call),
            errno: f.errno,
            message: f.message,
        },
    };
    match serde_json::to_vec(&reply) {
        Ok(bytes) => {
            let mut stdout = std::io::stdout();
            if stdout.write_all(&bytes).and_then(|()| stdout.flush()).is_err() {
                return 1;
            }
            0
        }
        Err(e) => {
            eprintln!("{HELPER_NAME}: encoding the reply: {e}");
            1
        }
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;

    #[test]
    fn in_process_only_when_asked() {
        let found = || Some(PathBuf::from("/usr/local/bin/xapid-xenguest"));
        assert_eq!(mode_of(Some("in-process"), found), Some(BuildMode::InProcess));
        assert_eq!(
            mode_of(None, found),
            Some(BuildMode::Helper(PathBuf::from("/usr/local/bin/xapid-xenguest")))
        );
        // No helper and no explicit choice: no silent fallback.
        assert_eq!(mode_of(None, || None), None);
        assert_eq!(mode_of(Some("/nowhere/xapid-xenguest"), || None), None);
    }
}
