//! The HTTP workers' seccomp filter. The worker threads parse what clients send (TLS,
//! HTTP, XML-RPC, JSON); with confinement on (`--confine-workers`) each worker installs, when
//! it starts, a filter that refuses with `EPERM`:
//!
//! - `execve` and `execveat` (no program is started from a worker or from a thread or child
//!   it creates);
//! - `ioctl`s of the Xen privcmd device (request type `'P'`: hypercalls, foreign mappings);
//! - packet sockets (`AF_PACKET`) and raw IP sockets (`AF_INET`/`AF_INET6` with `SOCK_RAW`).
//!
//! A filter is per thread and inherited by the threads and processes the thread creates.
//! What happens to a forbidden call is the [`Action`]: by default it is refused (`EPERM`): a
//! worker that meets it answers the request with an error and keeps serving; with `kill`
//! (`--confine-action kill`) the kernel kills the whole daemon with `SIGSYS` at the first
//! forbidden call, and systemd starts it again (`Restart=on-failure`). A thread alone is never
//! killed: one killed inside the HTTP server could die holding a lock the others wait on.
//!
//! The agent's handlers run on the workers, but what they do that the filter refuses — the
//! Xen backend's calls and the programs it starts, host plugins, power commands, an etcd
//! member — runs on the privileged threads (`agent::privileged`), which `serve` makes
//! before the workers. Confinement is on by default (`--no-confine-workers` turns it off;
//! see `docs/threat-model.md`).

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use std::collections::BTreeMap;

/// Failures building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The filter could not be built for this machine.
    #[error("building the workers' seccomp filter: {0}")]
    Build(String),
    /// The kernel refused the filter.
    #[error("installing the workers' seccomp filter: {0}")]
    Install(String),
}

/// What the filter does to a forbidden call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Action {
    /// The call fails with `EPERM`; the worker goes on.
    #[default]
    Refuse,
    /// The kernel kills the process with `SIGSYS`.
    Kill,
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Action, String> {
        match s {
            "refuse" => Ok(Action::Refuse),
            "kill" => Ok(Action::Kill),
            other => Err(format!("{other:?}: expected refuse or kill")),
        }
    }
}

/// The privcmd ioctls' type byte (`_IOC_TYPE` = `'P'`), in the request's bits 8-15.
const PRIVCMD_TYPE: u64 = (b'P' as u64) << 8;
const IOC_TYPE_MASK: u64 = 0xff00;
/// The socket type without `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
const SOCK_TYPE_MASK: u64 = 0xf;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, ConfineError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| ConfineError::Build(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, ConfineError> {
    SeccompRule::new(conds).map_err(|e| ConfineError::Build(e.to_string()))
}

/// The workers' filter, compiled for this machine's architecture, doing `action` to a
/// forbidden call.
pub fn worker_filter(action: Action) -> Result<BpfProgram, ConfineError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // An empty rule list matches every call of the syscall.
    rules.insert(libc::SYS_execve, vec![]);
    rules.insert(libc::SYS_execveat, vec![]);
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![cond(
            1,
            SeccompCmpOp::MaskedEq(IOC_TYPE_MASK),
            PRIVCMD_TYPE,
        )?])?],
    );
    let raw = SOCK_TYPE_MASK & libc::SOCK_RAW as u64;
    rules.insert(
        libc::SYS_socket,
        vec![
            rule(vec![cond(0, SeccompCmpOp::Eq, libc::AF_PACKET as u64)?])?,
            rule(vec![
                cond(0, SeccompCmpOp::Eq, libc::AF_INET as u64)?,
                cond(1, SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK), raw)?,
            ])?,
            rule(vec![
                cond(0, SeccompCmpOp::Eq, libc::AF_INET6 as u64)?,
                cond(1, SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK), raw)?,
            ])?,
        ],
    );
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| ConfineError::Build(e.to_string()))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        match action {
            Action::Refuse => SeccompAction::Errno(libc::EPERM as u32),
            Action::Kill => SeccompAction::KillProcess,
        },
        arch,
    )
    .map_err(|e| ConfineError::Build(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| ConfineError::Build(e.to_string()))
}

/// Installs `prog` on the calling thread (and so on every thread and process it creates from
/// now on); also sets the thread's no-new-privileges flag, as seccomp requires.
pub fn install(prog: &BpfProgram) -> Result<(), ConfineError> {
    seccompiler::apply_filter(prog).map_err(|e| ConfineError::Install(e.to_string()))
}

thread_local! {
    static CONFINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs `prog` on the calling thread once (an HTTP worker builds its app more than once).
pub fn install_once(prog: &BpfProgram) {
    if CONFINED.with(std::cell::Cell::get) {
        return;
    }
    match install(prog) {
        Ok(()) => {
            CONFINED.with(|c| c.set(true));
            tracing::debug!("HTTP worker confined by its seccomp filter");
        }
        Err(e) => tracing::error!(error = %e, "an HTTP worker runs without its seccomp filter"),
    }
}

#[cfg(test)]
pub(crate) mod tests;
