//! Live migration of a running guest to the host it runs on, through the backend's
//! [`LiveMigration`](crate::hypervisor::LiveMigration) (Xen's PV and PVH guests), as `xl
//! migrate localhost` moves one: a new domain is restored from the sending domain's stream,
//! read from a pipe as it is written, while the guest runs; the guest stops only for the last
//! round. Then the sending domain (suspended) is destroyed, the VM's devices are attached to
//! the new domain, and it runs. Before that point a failure lets the sending domain run on
//! and destroys the new one: the VM runs where it ran, in the domain it had.

use super::vm_power::{domain_config, mark_running, on_backend};
use super::{blocking, devices};
use crate::error::ApiError;
use crate::hypervisor::{live_migration_of, DomId, DomainKind, LiveSent};
use crate::value::Object;
use crate::Agent;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a live move went: the whole move, and the downtime (from the guest's suspend to the new
/// domain running).
#[derive(Debug, Clone, Copy)]
pub struct LiveMove {
    /// The whole move.
    pub took: Duration,
    /// The guest stopped this long.
    pub downtime: Duration,
    /// The new domain.
    pub domid: DomId,
}

/// Moves the running VM's domain `domid` live to a new domain on this host, where the backend
/// can (`None`: it cannot, or the guest is HVM, whose device model moves stop-and-copy).
pub async fn here(agent: &Arc<Agent>, vm: &str, rec: &Object, domid: DomId) -> Option<Result<LiveMove, String>> {
    agent.hypervisor.live_migration()?;
    let cfg = match domain_config(rec) {
        Ok(c) => c,
        Err(e) => return Some(Err(e.description().join(" "))),
    };
    if matches!(cfg.kind, DomainKind::Hvm(_)) {
        return None;
    }
    Some(run(agent, vm, rec, domid, cfg).await)
}

async fn run(
    agent: &Arc<Agent>,
    vm: &str,
    rec: &Object,
    domid: DomId,
    cfg: crate::hypervisor::DomainConfig,
) -> Result<LiveMove, String> {
    let started = Instant::now();
    let (input, output) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("a pipe for the migration stream: {e}"))?;
    // The receiving end runs on a thread of its own while this one sends.
    let hv = agent.hypervisor.clone();
    let receiving =
        tokio::task::spawn_blocking(move || live_migration_of(hv.as_ref()).and_then(|l| l.receive_live(input, &cfg)));
    let hv = agent.hypervisor.clone();
    let sent = on_backend(agent, vm, move || {
        live_migration_of(hv.as_ref()).and_then(|l| l.send_live(domid, output))
    })
    .await;
    let received = match receiving.await {
        Ok(r) => r.map_err(|e| ApiError::from_backend(e, vm)),
        Err(e) => Err(ApiError::internal(format!("the receiving end did not finish: {e}"))),
    };
    let describe = |e: &ApiError| e.description().join(" ");
    let (suspended, new) = match (sent, received) {
        (Ok(LiveSent { suspended_at }), Ok(new)) => (suspended_at, new),
        (Ok(_), Err(e)) => {
            // The guest suspended for a stream nobody took: it runs on where it was.
            let hv = agent.hypervisor.clone();
            if let Err(r) = blocking(agent, move || {
                live_migration_of(hv.as_ref()).and_then(|l| l.resume_suspended(domid))
            })
            .await
            {
                tracing::error!(vm, domid, error = %r, "live migration: the guest could not run on after a failed restore");
            }
            return Err(describe(&e));
        }
        (Err(e), received) => {
            if let Ok(new) = received {
                destroy(agent, new).await;
            }
            return Err(describe(&e));
        }
    };
    // The new domain has the guest: the old one goes, then the devices move over.
    destroy(agent, domid).await;
    agent.domids.lock().remove(&domid);
    if let Err(e) = devices::attach_all(agent, rec, new).await {
        destroy(agent, new).await;
        return Err(format!(
            "the moved guest's devices could not be attached ({}); its domain is gone",
            describe(&e)
        ));
    }
    let hv = agent.hypervisor.clone();
    if let Err(e) = on_backend(agent, vm, move || hv.unpause(new)).await {
        destroy(agent, new).await;
        return Err(describe(&e));
    }
    let downtime = suspended.elapsed();
    if let Err(e) = mark_running(agent, vm, new, false).await {
        destroy(agent, new).await;
        return Err(describe(&e));
    }
    Ok(LiveMove {
        took: started.elapsed(),
        downtime,
        domid: new,
    })
}

async fn destroy(agent: &Arc<Agent>, domid: DomId) {
    let hv = agent.hypervisor.clone();
    if let Err(e) = blocking(agent, move || hv.destroy(domid)).await {
        tracing::warn!(domid, error = %e, "live migration: destroying a domain");
    }
}
