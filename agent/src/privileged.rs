//! Where work that needs the daemon's full powers runs when the HTTP workers are confined.
//!
//! With confinement on (docs/threat-model.md), each HTTP worker thread runs under a seccomp
//! filter that refuses `execve`, the Xen privcmd `ioctl`s and raw sockets, and every thread or
//! process a worker creates inherits that filter. The agent's handlers run on the workers, so
//! the work that needs those calls — the Xen backend's calls (hypercalls, the domain builder
//! helper, pygrub, QEMU, hotplug commands), host plugins, the host's power commands, an etcd
//! member started when a host joins a pool — is handed to this module's threads instead.
//!
//! [`start`] makes those threads (a small tokio runtime whose blocking pool grows and shrinks
//! with the work) from the daemon's main thread before any worker exists, so they and every
//! thread they create are free of the filter. [`run_blocking`] and [`run_async`] send a job
//! there and wait for it. Before [`start`] (confinement off, tests, tools) they run the job on
//! the calling thread: the same result, no hop.

use std::future::Future;
use std::sync::OnceLock;
use tokio::runtime::{Handle, Runtime};

/// The runtime whose threads carry out privileged work; set once by [`start`].
static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The privileged threads could not take or finish a job.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegedError {
    /// The runtime could not be made.
    #[error("starting the privileged threads: {0}")]
    Start(#[source] std::io::Error),
    /// The job ended without a result (the daemon is stopping, or the job panicked).
    #[error("the privileged threads did not finish the job: {0}")]
    Lost(String),
}

/// Makes the privileged threads. Call it from a thread without the workers' filter, before
/// the workers start; later calls do nothing.
pub fn start() -> Result<(), PrivilegedError> {
    if RUNTIME.get().is_some() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("xapid-privileged")
        .enable_all()
        .build()
        .map_err(PrivilegedError::Start)?;
    // A second racing `start` drops its runtime; one is kept.
    let _ = RUNTIME.set(rt);
    tracing::info!("privileged work runs on threads made before the HTTP workers");
    Ok(())
}

/// Whether [`start`] has run: jobs go to the privileged threads.
pub fn started() -> bool {
    RUNTIME.get().is_some()
}

/// The privileged runtime's handle, unless the calling thread already is one of its threads
/// (a job that calls back into this module runs inline).
fn elsewhere() -> Option<&'static Handle> {
    let rt = RUNTIME.get()?;
    let ours = rt.handle();
    match Handle::try_current() {
        Ok(current) if current.id() == ours.id() => None,
        _ => Some(ours),
    }
}

/// Runs the blocking `job` on a privileged thread and waits for it (on the calling thread:
/// call it where blocking is allowed, as the backend's calls already are).
pub fn run_blocking<T, F>(job: F) -> Result<T, PrivilegedError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let Some(handle) = elsewhere() else {
        return Ok(job());
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    handle.spawn(async move {
        let done = tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| PrivilegedError::Lost(e.to_string()));
        let _ = tx.send(done);
    });
    rx.recv()
        .map_err(|_| PrivilegedError::Lost("the privileged runtime stopped".into()))?
}

/// Runs the future `make()` builds on a privileged thread and waits for its output. Dropping
/// the returned future drops the job's future too (a cancelled caller cancels the work, as
/// it would inline).
pub async fn run_async<T, F, Fut>(make: F) -> Result<T, PrivilegedError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let Some(handle) = elsewhere() else {
        return Ok(make().await);
    };
    let (mut tx, rx) = tokio::sync::oneshot::channel();
    handle.spawn(async move {
        let work = make();
        tokio::select! {
            out = work => {
                let _ = tx.send(out);
            }
            () = tx.closed() => {}
        }
    });
    rx.await
        .map_err(|_| PrivilegedError::Lost("the job ended without its result".into()))
}

#[cfg(test)]
mod tests;
