//! The event thread: xenstore watches turned into [`BackendEvent`]s.
//!
//! * `@introduceDomain` and `@releaseDomain` (xenstored fires the latter
//!   whenever a domain shuts down or dies, from Xen's `VIRQ_DOM_EXC`): the
//!   thread re-reads `xc_domain_getinfolist`, compares each domain's
//!   state bits with its previous snapshot and emits `DomainChanged` for
//!   every domain that appeared, vanished or changed.
//! * `/local/domain/0/backend/{vbd,vif}`: a device directory appearing or
//!   disappearing, or its `state`/`hotplug-status` changing, becomes
//!   `DeviceChanged`.
//!
//! The backend's own operations publish their events directly; the thread
//! covers what guests and drivers do on their own. It ends when the
//! backend is dropped: the backend sets the stop flag and writes its stop
//! node, which the thread also watches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xenctrl::{ShutdownReason as XenShutdown, Transaction, XcHandle, XsHandle};

use super::super::{BackendError, BackendEvent, DeviceKind, DomId, EventBus, Op};
use super::layout::vdev_devid;
use super::xen_err;

const BACKEND_PREFIX: &str = "/local/domain/0/backend/";

/// What the thread compares between two `@releaseDomain` firings.
type DomainKey = (bool, bool, bool, Option<XenShutdown>);

fn snapshot(xc: &XcHandle) -> HashMap<DomId, DomainKey> {
    match xc.list_domains() {
        Ok(list) => list
            .into_iter()
            .map(|d| {
                (
                    d.domid,
                    (d.flags.dying, d.flags.shutdown, d.flags.paused, d.shutdown_reason),
                )
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "xen event thread: listing domains failed");
            HashMap::new()
        }
    }
}

/// Domains that appeared, vanished or changed between two snapshots.
pub(super) fn changed_domains(old: &HashMap<DomId, DomainKey>, new: &HashMap<DomId, DomainKey>) -> Vec<DomId> {
    let mut out: Vec<DomId> = new
        .iter()
        .filter(|(d, k)| old.get(d) != Some(k))
        .map(|(d, _)| *d)
        .chain(old.keys().filter(|d| !new.contains_key(d)).copied())
        .collect();
    out.sort_unstable();
    out
}

/// The device a backend path is about, if the change is one callers care
/// about (the directory itself, `state`, `hotplug-status`).
pub(super) fn device_event(path: &str) -> Option<BackendEvent> {
    let rest = path.strip_prefix(BACKEND_PREFIX)?;
    let mut parts = rest.split('/');
    let kind = match parts.next()? {
        "vbd" => DeviceKind::Block,
        "vif" => DeviceKind::Net,
        _ => return None,
    };
    let domid: DomId = parts.next()?.parse().ok()?;
    let id: u32 = parts.next()?.parse().ok()?;
    match parts.next() {
        None | Some("state") | Some("hotplug-status") => {}
        Some(_) => return None,
    }
    if parts.next().is_some() {
        return None;
    }
    let devid = match kind {
        DeviceKind::Block => vdev_devid(id)?,
        DeviceKind::Net => id,
    };
    Some(BackendEvent::DeviceChanged { domid, kind, devid })
}

/// Sets the watches and starts the thread.
pub(super) fn spawn(bus: Arc<EventBus>, stop: Arc<AtomicBool>, stop_path: String) -> Result<(), BackendError> {
    let op = Op::Subscribe;
    let xs = XsHandle::open().map_err(|e| xen_err(op, e))?;
    let xc = XcHandle::open().map_err(|e| xen_err(op, e))?;
    for (path, token) in [
        ("@introduceDomain", "domains"),
        ("@releaseDomain", "domains"),
        ("/local/domain/0/backend/vbd", "devices"),
        ("/local/domain/0/backend/vif", "devices"),
        (stop_path.as_str(), "stop"),
    ] {
        xs.watch(path, token).map_err(|e| xen_err(op, e))?;
    }
    std::thread::Builder::new()
        .name("xen-events".into())
        .spawn(move || run(xs, xc, bus, stop, stop_path))
        .map_err(|e| BackendError::Os {
            op,
            errno: e
                .raw_os_error()
                .map(nix::errno::Errno::from_raw)
                .unwrap_or(nix::errno::Errno::EAGAIN),
            detail: "spawning the xen event thread".into(),
        })?;
    Ok(())
}

fn run(xs: XsHandle, xc: XcHandle, bus: Arc<EventBus>, stop: Arc<AtomicBool>, stop_path: String) {
    let mut known = snapshot(&xc);
    loop {
        let event = xs.read_watch();
        if stop.load(Ordering::Acquire) {
            if let Err(e) = xs.rm(Transaction::NONE, &stop_path) {
                tracing::debug!(error = %e, "removing the event thread's stop node");
            }
            return;
        }
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "xen event thread: xs_read_watch failed");
                bus.publish(BackendEvent::Resync);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        match event.token.as_str() {
            "domains" => {
                let now = snapshot(&xc);
                for domid in changed_domains(&known, &now) {
                    bus.publish(BackendEvent::DomainChanged(domid));
                }
                known = now;
            }
            "devices" => {
                if let Some(ev) = device_event(&event.path) {
                    bus.publish(ev);
                }
            }
            _ => {}
        }
    }
}
