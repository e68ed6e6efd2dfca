//! Starting, killing and restarting the real `xapid` binary on a free port and a state dir.

use crate::rpc::{Reply, Rpc, Wire};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The `xapid` binary to test: `$XAPID_BIN`, else `target/release/xapid`, brought up to date
/// with `cargo build --release --bin xapid` (a no-op when it is), once per test process.
pub fn xapid_bin() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("XAPID_BIN") {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!("XAPID_BIN={} is not a file", p.display()))
            };
        }
        let root = workspace_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "xapid"])
            .current_dir(&root)
            .status()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build --release --bin xapid: {status}"));
        }
        let bin = target.join("release").join("xapid");
        if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("{} is missing after the build", bin.display()))
        }
    })
    .clone()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// How to run a daemon.
#[derive(Clone, Debug)]
pub struct DaemonOpts {
    /// The state dir (kept across restarts).
    pub state_dir: PathBuf,
    /// Extra flags.
    pub extra: Vec<String>,
    /// The root password (written to a file outside the state dir and passed with
    /// `--root-password-file`).
    pub password: String,
}

/// A running daemon.
pub struct Daemon {
    child: Option<Child>,
    /// Its HTTP address.
    pub addr: SocketAddr,
    /// Its options.
    pub opts: DaemonOpts,
    /// Where its stderr goes (appended across restarts).
    pub log: PathBuf,
    password_file: PathBuf,
    /// How many times it has been started.
    pub starts: usize,
}

impl Daemon {
    /// Starts a daemon on a free port and waits until it answers. `scratch` holds its log and
    /// password file.
    pub fn start(opts: DaemonOpts, scratch: &Path) -> Result<Daemon, String> {
        let port = free_port()?;
        let password_file = scratch.join("root-password.txt");
        std::fs::write(&password_file, format!("{}\n", opts.password)).map_err(|e| e.to_string())?;
        let mut d = Daemon {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            opts,
            log: scratch.join("xapid.log"),
            password_file,
            starts: 0,
        };
        d.spawn()?;
        d.wait_ready(Duration::from_secs(60))?;
        Ok(d)
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = xapid_bin()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let child = Command::new(bin)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--state-dir")
            .arg(&self.opts.state_dir)
            .arg("--backend")
            .arg("simulator")
            .arg("--root-password-file")
            .arg(&self.password_file)
            .args(&self.opts.extra)
            .env(
                "RUST_LOG",
                std::env::var("XAPID_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting xapid: {e}"))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Waits until the daemon answers a call (any XenAPI reply).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut rpc = Rpc::new(self.addr, Wire::Json);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!(
                    "xapid exited at start with {status}; log:\n{}",
                    self.log_tail()
                ));
            }
            if let Ok(Reply::Failure(_) | Reply::Success(_)) = rpc.call("pool.get_all", &[serde_json::json!("")]) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "xapid did not answer within {timeout:?}; log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running (false also when it was never started).
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its status if it did (and it
    /// is then reaped).
    pub fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and reap it (waits up to 10 s, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and state dir and waits until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill9();
        self.spawn()?;
        self.wait_ready(Duration::from_secs(60))
    }

    /// The daemon's resident set size in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A JSON-RPC client logged in as root.
    pub fn client(&self, originator: &str) -> Result<(Rpc, String), String> {
        let mut rpc = Rpc::new(self.addr, Wire::Json);
        let s = rpc.login(&self.opts.password, originator)?;
        Ok((rpc, s))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
