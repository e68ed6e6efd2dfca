//! A local etcd member run and supervised by xapid, its data under the state dir: restarted
//! when it exits while wanted, stopped with the daemon.

use super::StoreError;
use parking_lot::Mutex;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The program, found on `PATH` (Debian's `etcd-server` installs `/usr/bin/etcd`).
pub const ETCD_PROGRAM: &str = "etcd";

/// How one member is run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MemberConfig {
    /// The member's name in the cluster.
    pub name: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Where clients reach it (`http://127.0.0.2:2379`).
    pub client_url: String,
    /// Where the other members reach it (`http://127.0.0.2:2380`).
    pub peer_url: String,
    /// Every member at start, `name=peer_url` joined by commas.
    pub initial_cluster: String,
    /// Whether it starts a new cluster (rather than joining one).
    #[serde(default)]
    pub new_cluster: bool,
}

impl MemberConfig {
    /// A member that is a cluster of its own.
    pub fn single(name: &str, data_dir: PathBuf, client_url: &str, peer_url: &str) -> MemberConfig {
        MemberConfig {
            name: name.to_owned(),
            data_dir,
            client_url: client_url.to_owned(),
            peer_url: peer_url.to_owned(),
            initial_cluster: format!("{name}={peer_url}"),
            new_cluster: true,
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(ETCD_PROGRAM);
        c.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&self.client_url)
            .arg("--advertise-client-urls")
            .arg(&self.client_url)
            .arg("--listen-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(if self.new_cluster { "new" } else { "existing" })
            // A first boot writes a few hundred objects in one transaction; etcd's defaults
            // (128 operations, 1.5 MiB) refuse it.
            .args(["--max-txn-ops", "65536", "--max-request-bytes", "67108864"])
            // A pool grows one host at a time: the second member is added to a cluster of
            // one, which the strict check refuses (the new quorum of two is not started yet).
            .arg("--strict-reconfig-check=false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and calls only prctl,
        // which is async-signal-safe; it allocates nothing and takes no lock.
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    fn spawn(&self) -> Result<Child, StoreError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|e| StoreError::Etcd(e.to_string()))?;
        self.command().spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::EtcdMissing(ETCD_PROGRAM.to_owned()),
            _ => StoreError::Etcd(format!("starting {ETCD_PROGRAM}: {e}")),
        })
    }
}

/// A running member and the thread that keeps it running.
pub struct LocalMember {
    config: MemberConfig,
    child: Arc<Mutex<Option<Child>>>,
    stop: Arc<AtomicBool>,
    supervisor: Option<std::thread::JoinHandle<()>>,
}

impl LocalMember {
    /// Starts the member; it is restarted whenever it exits until this is dropped.
    /// The supervisor thread starts every process of the member: each is asked to end when
    /// the thread that started it does (`PR_SET_PDEATHSIG`), so a member never outlives its
    /// xapid, however that ends.
    pub fn start(config: MemberConfig) -> Result<LocalMember, StoreError> {
        let child = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = std::sync::mpsc::channel();
        let supervisor = {
            let (child, stop, config) = (child.clone(), stop.clone(), config.clone());
            std::thread::Builder::new()
                .name("etcd-member".into())
                .spawn(move || {
                    match config.spawn() {
                        Ok(c) => {
                            *child.lock() = Some(c);
                            let _ = started_tx.send(Ok(()));
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    }
                    supervise(&config, &child, &stop)
                })
                .map_err(|e| StoreError::Etcd(e.to_string()))?
        };
        started
            .recv()
            .unwrap_or_else(|_| Err(StoreError::Etcd("the etcd supervisor stopped".into())))?;
        Ok(LocalMember {
            config,
            child,
            stop,
            supervisor: Some(supervisor),
        })
    }

    /// Where clients reach it.
    pub fn client_url(&self) -> &str {
        &self.config.client_url
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().as_ref().map(Child::id)
    }
}

fn supervise(config: &MemberConfig, child: &Mutex<Option<Child>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        let mut guard = child.lock();
        let exited = match guard.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(e.to_string()),
            None => Some("not running".to_owned()),
        };
        let Some(why) = exited else { continue };
        if stop.load(Ordering::Acquire) {
            break;
        }
        tracing::warn!(member = %config.name, %why, "the local etcd member exited; restarting it");
        match config.spawn() {
            Ok(c) => *guard = Some(c),
            Err(e) => {
                *guard = None;
                drop(guard);
                tracing::error!(error = %e, "restarting the local etcd member failed; will retry");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

impl Drop for LocalMember {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(mut c) = self.child.lock().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(t) = self.supervisor.take() {
            let _ = t.join();
        }
    }
}
