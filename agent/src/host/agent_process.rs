//! The daemon's own process: `host.restart_agent` and `host.shutdown_agent`.
//!
//! Both answer first and act a second later, as the reference does, so that the reply reaches
//! the caller: the daemon then stops as on SIGTERM (it stops accepting connections and lets
//! the calls in progress finish), and the binary (`rpc/src/bin/xapid.rs`) asks [`after_stop`]
//! what comes next: `restart_agent` runs the same program again in the same process, with the
//! same arguments (the same pid, so a service manager sees no exit); `shutdown_agent` exits
//! with status 0, which the packaged unit (`dist/xapid.service`, `Restart=on-failure`) leaves
//! stopped. Every acknowledged write is already durable, and a restarted daemon takes up what
//! it finds as after any stop (operations left marked are cleared at start).
//!
//! `host.get_uncooperative_resident_VMs` is here too: the reference answers it with an empty
//! set whatever the host (what it once reported is gone), and so does this daemon.

use crate::call::Entry;
use crate::entry;
use crate::value::Value;
use std::sync::Mutex;
use std::time::Duration;

/// What the process does once the server has stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterStop {
    /// Run the daemon again, in this process (`host.restart_agent`).
    Restart,
    /// Exit with status 0 (`host.shutdown_agent`).
    Exit,
}

/// How long after its answer the daemon stops (the reference waits one second too).
pub const DELAY: Duration = Duration::from_secs(1);

static REQUESTED: Mutex<Option<AfterStop>> = Mutex::new(None);

/// What was asked for, if the server stopped because of one of these messages.
pub fn after_stop() -> Option<AfterStop> {
    REQUESTED.lock().map(|g| *g).unwrap_or(None)
}

/// Notes `what` and stops the server a second from now (a restart asked for after a shutdown,
/// or the other way round, does what was asked last).
pub(crate) fn request(what: AfterStop) {
    if let Ok(mut g) = REQUESTED.lock() {
        *g = Some(what);
    }
    tracing::warn!(?what, "the daemon stops in {DELAY:?}, as asked");
    tokio::spawn(async {
        tokio::time::sleep(DELAY).await;
        if let Err(e) = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM) {
            tracing::error!(error = %e, "could not stop the daemon");
        }
    });
}

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(crate::schema::class_ids::host, "restart_agent", |agent, _, c| {
            // In a pool the call was forwarded to the host it names (pool/forward.rs).
            super::this_host(&agent, c.ref_arg(0)?)?;
            request(AfterStop::Restart);
            Ok(Value::None)
        }),
        entry!(crate::schema::class_ids::host, "shutdown_agent", |_agent, _, _c| {
            request(AfterStop::Exit);
            Ok(Value::None)
        }),
        entry!(
            crate::schema::class_ids::host,
            "get_uncooperative_resident_VMs",
            |agent, _, c| {
                super::this_host(&agent, c.ref_arg(0)?)?;
                Ok(Value::set(Vec::new()))
            }
        ),
    ]
}
