//! A fresh xapid for each phase: simulator backend, zero latency, `--bench-noop`, state in a
//! temporary directory; and the figures read from its `/proc` entries.

use crate::client::{Conn, Protocol, Rpc};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The root password of every benchmark daemon.
pub const PASSWORD: &str = "loadgen-bench-password";

/// A running daemon.
pub struct Daemon {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// Its TCP address.
    pub addr: SocketAddr,
    /// Its unix socket.
    pub socket: PathBuf,
    dir: tempfile::TempDir,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<f64, String> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {i}"))
    };
    // After the command: state is 0, utime 11, stime 12.
    Ok((field(11)? + field(12)?) / clk_tck())
}

/// `(VmHWM, VmRSS)` in kB.
pub fn memory_kb(pid: u32) -> Result<(u64, u64), String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let get = |key: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((get("VmHWM"), get("VmRSS")))
}

impl Daemon {
    /// Starts `exe` on a free loopback port and waits until it answers.
    ///
    /// `wrapper`, when not empty, is a command the daemon runs under (a profiler:
    /// `valgrind --tool=callgrind`, `perf record -g --`); CPU and RSS figures are then the
    /// wrapper's.
    pub fn start(exe: &Path, workers: Option<usize>, wrapper: &[String]) -> Result<Daemon, String> {
        let dir = tempfile::Builder::new()
            .prefix("xapid-loadgen-")
            .tempdir()
            .map_err(|e| format!("temporary dir: {e}"))?;
        let pw = dir.path().join("password");
        std::fs::write(&pw, format!("{PASSWORD}\n")).map_err(|e| format!("password file: {e}"))?;
        let state = dir.path().join("state");
        let socket = state.join("xapid.sock");
        let log = std::fs::File::create(dir.path().join("xapid.log")).map_err(|e| format!("log file: {e}"))?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--state-dir")
            .arg(&state)
            .args(["--backend", "simulator", "--sim-latency-ms", "0", "--bench-noop"])
            .arg("--root-password-file")
            .arg(&pw)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if let Some(w) = workers {
            cmd.arg("--workers").arg(w.to_string());
        }
        // Its own process group, so that stopping it also stops a wrapper's child.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", exe.display()))?;
        let mut d = Daemon {
            pid: child.id(),
            child,
            addr,
            socket,
            dir,
        };
        let limit = if wrapper.is_empty() { 60 } else { 600 };
        let deadline = Instant::now() + Duration::from_secs(limit);
        loop {
            if let Ok(Some(st)) = d.child.try_wait() {
                return Err(format!("xapid exited ({st}) during start-up: {}", d.log_tail()));
            }
            if std::net::TcpStream::connect(addr).is_ok() && d.socket.exists() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "xapid did not answer on {addr} within {limit} s: {}",
                    d.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("xapid.log")).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// CPU seconds used so far.
    pub fn cpu(&self) -> Result<f64, String> {
        cpu_seconds(self.pid)
    }

    /// `(VmHWM, VmRSS)` in kB.
    pub fn memory_kb(&self) -> Result<(u64, u64), String> {
        memory_kb(self.pid)
    }

    /// Resets the peak RSS (VmHWM) counter, as the peer script does (`clear_refs` 5).
    pub fn reset_hwm(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    /// Verifies the password login over TCP (argon2: slow on purpose), then returns a client.
    pub async fn password_login(&self, proto: Protocol, originator: &str) -> Result<(Rpc, String), String> {
        let mut rpc = Rpc::tcp(self.addr, proto).await?;
        let s = rpc.login(PASSWORD, originator).await?;
        Ok((rpc, s))
    }

    /// Opens `n` sessions, one per simulated client, each with its own originator (at most 50
    /// sessions per originator are kept). They are opened over the unix socket as root, which
    /// skips the deliberately slow argon2 check serialized on one thread (~0.1-0.2 s a login
    /// here); sessions are not tied to a transport, and every measured call goes over TCP.
    pub async fn sessions(&self, n: usize, prefix: &str) -> Result<Vec<String>, String> {
        let mut rpc = Rpc::new(Conn::unix(&self.socket).await?, Protocol::Json);
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            out.push(rpc.login("", &format!("{prefix}-{k}")).await?);
        }
        Ok(out)
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 60 s: a profiler may be writing its data) and removes its state.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.pid) {
                // SAFETY: kill(2) on the process group our unreaped child leads (try_wait
                // returned None, so its pid, and with it the group id, cannot have been reused).
                unsafe {
                    libc::kill(-pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}
