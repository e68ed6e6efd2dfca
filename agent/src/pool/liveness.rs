//! Which hosts of the pool are alive, from etcd leases (`store/etcd_lease.rs`): every host
//! renews its lease every [`BEAT`]; the master reads which leases are held and writes each
//! host's `host_metrics.live` (and `last_updated` when it changes), so placement answers
//! `HOST_OFFLINE [host]` for a host that stopped, and `host.destroy` takes it as dead without
//! asking it. A lease lives [`ttl`] seconds: [`TTL`], or the pool's HA timeout while HA is on
//! (a host takes a new lease when that changes). A host whose lease lapses is marked dead
//! once its key has been missing for that long again (a host that has just joined gets that
//! long to take its first lease), within about 2 × ttl + [`BEAT`] of its end.

use super::ha::runtime::Beat;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;
use std::time::Instant;

/// The lease's time to live while HA is off, seconds.
pub const TTL: i64 = 6;

/// How long the hosts' leases live now, seconds: the pool's HA timeout while HA is on, else
/// [`TTL`].
pub fn ttl(agent: &Agent) -> i64 {
    super::ha::timeout(agent).unwrap_or(TTL)
}
/// How often a host renews its lease and the master reads them.
pub const BEAT: Duration = Duration::from_secs(2);

/// Starts the liveness loop of this host (it idles while the host is alone).
pub fn start(agent: &Arc<Agent>) {
    let weak = Arc::downgrade(agent);
    tokio::spawn(run(weak));
}

async fn run(weak: Weak<Agent>) {
    let mut lease = None;
    let mut lease_ttl = TTL;
    let mut ha = super::ha::runtime::Watch::default();
    let mut missing: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(agent) = weak.upgrade() else { return };
        if !agent.store.is_pooled() {
            lease = None;
            continue;
        }
        let Some(me) = agent
            .store
            .get(class_ids::host, &agent.host)
            .and_then(|h| h.uuid().map(str::to_owned))
        else {
            continue;
        };
        let want = ttl(&agent);
        if want != lease_ttl {
            tracing::info!(
                from = lease_ttl,
                to = want,
                "liveness leases now live this many seconds: a new lease"
            );
            lease = None;
            lease_ttl = want;
        }
        let beat = match agent.store.liveness_beat(lease, &me, lease_ttl).await {
            Ok(held) => {
                let lapsed = held.is_some_and(|(_, lapsed)| lapsed);
                if lapsed {
                    tracing::warn!("this host's liveness lease had lapsed: a new one is taken");
                }
                lease = held.map(|(id, _)| id);
                if lapsed {
                    Beat::Lapsed
                } else {
                    Beat::Renewed
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew this host's liveness lease");
                lease = None;
                Beat::Failed
            }
        };
        if !ha.after_beat(&agent, beat, lease).await {
            return;
        }
        if super::is_master(&agent) {
            match mark(&agent, &mut missing).await {
                Ok(dead) => ha.on_master_beat(&agent, &dead).await,
                Err(e) => tracing::warn!(error = %e, "cannot record which hosts are live"),
            }
        }
    }
}

/// On the master: `host_metrics.live` of every host made to say whether its lease is held;
/// the hosts that have just been found dead.
async fn mark(agent: &Agent, missing: &mut HashMap<String, Instant>) -> Result<Vec<String>, crate::error::ApiError> {
    let Some(live) = agent
        .store
        .live_hosts()
        .await
        .map_err(crate::error::ApiError::internal)?
    else {
        return Ok(Vec::new());
    };
    let live: HashSet<String> = live.into_iter().collect();
    let mut changes = Vec::new();
    for h in agent.store.all(class_ids::host) {
        let Some(metrics) = h.get(fields::host::metrics).as_ref_str().map(str::to_owned) else {
            continue;
        };
        let held = h.uuid().is_some_and(|u| live.contains(u));
        let now_live = if held {
            missing.remove(&h.reference);
            true
        } else {
            let since = *missing.entry(h.reference.clone()).or_insert_with(Instant::now);
            since.elapsed() < Duration::from_secs(ttl(agent).unsigned_abs())
        };
        let recorded = agent
            .store
            .get(class_ids::host_metrics, &metrics)
            .map(|m| m.get(fields::host_metrics::live) == &Value::Bool(true));
        if recorded.is_some_and(|r| r != now_live) {
            tracing::info!(host = %h.reference, live = now_live, "host liveness changed (its etcd lease)");
            changes.push((metrics, now_live, h.reference.clone()));
        }
    }
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let now = chrono::Utc::now().timestamp();
    agent
        .store
        .write(|tx| {
            for (m, live, _) in &changes {
                if tx.get(class_ids::host_metrics, m).is_some() {
                    crate::objects::set_field(
                        tx,
                        class_ids::host_metrics,
                        m,
                        fields::host_metrics::live,
                        Value::Bool(*live),
                    )?;
                    crate::objects::set_field(
                        tx,
                        class_ids::host_metrics,
                        m,
                        fields::host_metrics::last_updated,
                        Value::DateTime(now),
                    )?;
                }
            }
            Ok(())
        })
        .await?;
    Ok(changes
        .into_iter()
        .filter(|(_, live, _)| !live)
        .map(|(_, _, host)| host)
        .collect())
}
