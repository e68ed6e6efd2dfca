//! The DHCP client of each bridge whose PIF is configured by DHCP (IPv4), on a real host.
//!
//! The daemon runs ISC's `dhclient` in the foreground on the bridge, as the reference's
//! network daemon does, and its script applies the lease (address, routes, the resolver).
//! One client per bridge: brought up again, the PIF keeps its client; configured otherwise
//! or brought down, the client is stopped. The clients are started by a thread of their own,
//! made with the backend at start-up (so neither a confined HTTP worker nor a short-lived
//! thread starts them), and each is asked to end when that thread does
//! (`PR_SET_PDEATHSIG`): a client never outlives its daemon, however the daemon ends. A
//! client left by an earlier run (its pid file says so) is stopped before a new one starts. The program is `dhclient` on
//! the path or in `/sbin`, `/usr/sbin`, or `XAPID_DHCP_CLIENT`; without one, a DHCP PIF's
//! addresses stay the host's business and a warning says so.

use super::backend::NetError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Where the clients' pid and lease files are.
pub const RUN_DIR: &str = "/run/xapid/dhcp";

/// The variable naming the client program.
pub const CLIENT_ENV: &str = "XAPID_DHCP_CLIENT";

/// A client to start, and where its process goes.
type SpawnJob = (Command, tokio::sync::oneshot::Sender<std::io::Result<Child>>);

/// The running clients, by bridge.
pub struct DhcpClients {
    program: Option<PathBuf>,
    dir: PathBuf,
    running: Mutex<HashMap<String, Child>>,
    /// The thread that starts the clients (none: it could not be made; nothing starts).
    spawner: Option<crossbeam_channel::Sender<SpawnJob>>,
}

/// The thread that starts every client, for the daemon's life.
fn spawner() -> Option<crossbeam_channel::Sender<SpawnJob>> {
    let (tx, rx) = crossbeam_channel::unbounded::<SpawnJob>();
    let made = std::thread::Builder::new().name("dhcp-clients".into()).spawn(move || {
        for (mut command, reply) in rx {
            let _ = reply.send(command.spawn());
        }
    });
    match made {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!(error = %e, "cannot make the DHCP clients' thread: no DHCP client will run");
            None
        }
    }
}

fn find_program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(CLIENT_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin"].map(PathBuf::from))
        .map(|d| d.join("dhclient"))
        .find(|p| p.is_file())
}

impl DhcpClients {
    /// Clients of the program found on this host, their files under [`RUN_DIR`].
    pub fn new() -> DhcpClients {
        DhcpClients::with(find_program(), PathBuf::from(RUN_DIR))
    }

    /// Clients of `program`, their files under `dir`.
    pub fn with(program: Option<PathBuf>, dir: PathBuf) -> DhcpClients {
        DhcpClients {
            spawner: program.as_ref().and_then(|_| spawner()),
            program,
            dir,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn pid_file(&self, bridge: &str) -> PathBuf {
        self.dir.join(format!("dhclient-{bridge}.pid"))
    }

    /// Whether `bridge` has a running client of this daemon.
    pub fn is_running(&self, bridge: &str) -> bool {
        let mut running = self.running.lock();
        match running.get_mut(bridge).map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                running.remove(bridge);
                false
            }
            None => false,
        }
    }

    /// Starts `bridge`'s client unless it runs.
    pub async fn ensure(&self, bridge: &str) -> Result<(), NetError> {
        if self.is_running(bridge) {
            return Ok(());
        }
        let (Some(program), Some(spawner)) = (&self.program, &self.spawner) else {
            tracing::warn!(
                bridge,
                "no DHCP client (dhclient, Debian's isc-dhcp-client, or {CLIENT_ENV}): the bridge's address is left to the host"
            );
            return Ok(());
        };
        std::fs::create_dir_all(&self.dir).map_err(NetError::Socket)?;
        let pid_file = self.pid_file(bridge);
        stop_recorded(&pid_file);
        let lease_file = self.dir.join(format!("dhclient-{bridge}.leases"));
        let mut command = Command::new(program);
        command
            .arg("-4")
            .arg("-d")
            .arg("-pf")
            .arg(&pid_file)
            .arg("-lf")
            .arg(&lease_file)
            .arg(bridge)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs in the child between fork and exec and calls only prctl,
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (reply, spawned) = tokio::sync::oneshot::channel();
        let gone = || NetError::Socket(std::io::Error::other("the DHCP clients' thread is gone"));
        spawner.send((command, reply)).map_err(|_| gone())?;
        let spawned = spawned.await.map_err(|_| gone())?.map_err(NetError::Socket)?;
        tracing::info!(bridge, pid = spawned.id(), "DHCP client started");
        self.running.lock().insert(bridge.to_owned(), spawned);
        Ok(())
    }

    /// Stops `bridge`'s client, if any (the lease's address goes with the bridge's next
    /// configuration or with the bridge).
    pub fn stop(&self, bridge: &str) {
        let child = self.running.lock().remove(bridge);
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
            tracing::info!(bridge, "DHCP client stopped");
        }
        stop_recorded(&self.pid_file(bridge));
    }
}

impl Default for DhcpClients {
    fn default() -> Self {
        DhcpClients::new()
    }
}

impl Drop for DhcpClients {
    fn drop(&mut self) {
        for (_, mut child) in self.running.lock().drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops the client a pid file names, if that process is still a `dhclient`, and removes
/// the file.
fn stop_recorded(pid_file: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let _ = std::fs::remove_file(pid_file);
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "dhclient" {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        tracing::info!(pid, "a DHCP client of an earlier run stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in client: a shell that records its arguments and waits.
    fn fake_client(dir: &Path) -> PathBuf {
        let p = dir.join("fake-dhclient");
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho \"$@\" > {}/args\nexec sleep 600\n", dir.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn one_client_per_bridge_started_once_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let clients = DhcpClients::with(Some(fake_client(dir.path())), dir.path().join("run"));
        clients.ensure("xenbr1").await.unwrap();
        assert!(clients.is_running("xenbr1"));
        let pid = clients.running.lock().get("xenbr1").map(Child::id);
        clients.ensure("xenbr1").await.unwrap();
        assert_eq!(
            clients.running.lock().get("xenbr1").map(Child::id),
            pid,
            "started twice"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let args = loop {
            if let Ok(a) = std::fs::read_to_string(dir.path().join("args")) {
                break a;
            }
            assert!(std::time::Instant::now() < deadline, "the client did not run");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let run = dir.path().join("run");
        assert_eq!(
            args.trim(),
            format!(
                "-4 -d -pf {0}/dhclient-xenbr1.pid -lf {0}/dhclient-xenbr1.leases xenbr1",
                run.display()
            )
        );
        clients.stop("xenbr1");
        assert!(!clients.is_running("xenbr1"));
    }

    #[tokio::test]
    async fn without_a_program_nothing_starts() {
        let dir = tempfile::tempdir().unwrap();
        let clients = DhcpClients::with(None, dir.path().to_path_buf());
        clients.ensure("xenbr0").await.unwrap();
        assert!(!clients.is_running("xenbr0"));
    }
}
