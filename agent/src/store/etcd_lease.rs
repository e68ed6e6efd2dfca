//! Host liveness in the pool database: each host keeps a key `<prefix>live/<host uuid>` bound
//! to an etcd lease it renews; when the host (or its link to etcd) is gone, etcd lets the lease
//! lapse and deletes the key. No heartbeat of our own: etcd's lease is the clock.

use super::etcd_backend::{etcd_err, Etcd};
use super::StoreError;
use etcd_client::{Client, GetOptions, LeaderKey, PutOptions, ResignOptions};
use std::time::Duration;

/// How long one liveness beat keeps trying.
const BEAT_TRIES_FOR: Duration = Duration::from_secs(4);
/// The longest one try of a beat may take.
const BEAT_TRY_TIMEOUT: Duration = Duration::from_millis(1500);
/// The pause between two tries of a beat.
const BEAT_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// One try of a beat: renews `lease`, or takes a new one if it is `None` or lapsed.
async fn beat_once(mut c: Client, key: String, lease: Option<i64>, ttl: i64) -> Result<(i64, bool), StoreError> {
    let mut lapsed = false;
    if let Some(id) = lease {
        let (mut keeper, mut stream) = c.lease_keep_alive(id).await.map_err(etcd_err)?;
        keeper.keep_alive().await.map_err(etcd_err)?;
        match stream.message().await.map_err(etcd_err)? {
            Some(r) if r.ttl() > 0 => return Ok((id, false)),
            Some(_) => lapsed = true,
            None => return Err(etcd_err("the lease keep-alive stream ended without an answer")),
        }
    }
    let id = c.lease_grant(ttl, None).await.map_err(etcd_err)?.id();
    c.put(key, "", Some(PutOptions::new().with_lease(id)))
        .await
        .map_err(etcd_err)?;
    Ok((id, lapsed))
}

/// A campaign in an etcd election: ends once the candidate leads, with its leader key.
pub type Campaign = tokio::task::JoinHandle<Result<LeaderKey, StoreError>>;

impl Etcd {
    fn live_prefix(&self) -> String {
        format!("{}live/", self.root())
    }

    /// Renews `lease` (or, when it is `None` or has lapsed, takes a new one of `ttl` seconds)
    /// and keeps `<prefix>live/<name>` bound to it; the lease held afterwards, and whether
    /// etcd answered that `lease` had lapsed.
    pub(super) async fn beat(&self, lease: Option<i64>, name: &str, ttl: i64) -> Result<(i64, bool), StoreError> {
        let key = format!("{}{name}", self.live_prefix());
        self.with_client(move |c| async move {
            // The client spreads requests over every member's endpoint: one that went with its
            // host fails at once, and the beat goes again (to whichever member answers) until
            // BEAT_TRIES_FOR has passed, each try bounded by BEAT_TRY_TIMEOUT.
            let deadline = tokio::time::Instant::now() + BEAT_TRIES_FOR;
            loop {
                let attempt = tokio::time::timeout(BEAT_TRY_TIMEOUT, beat_once(c.clone(), key.clone(), lease, ttl));
                let err = match attempt.await {
                    Ok(Ok(held)) => return Ok(held),
                    Ok(Err(e)) => e,
                    Err(_) => etcd_err("a liveness beat got no answer in time"),
                };
                if tokio::time::Instant::now() + BEAT_RETRY_PAUSE >= deadline {
                    return Err(err);
                }
                tracing::debug!(error = %err, "a liveness beat failed; trying again");
                tokio::time::sleep(BEAT_RETRY_PAUSE).await;
            }
        })
        .await
    }

    /// The names whose liveness key is there (their lease is held).
    pub(super) async fn live(&self) -> Result<Vec<String>, StoreError> {
        let prefix = self.live_prefix();
        self.with_client(move |mut c| async move {
            let resp = c
                .get(prefix.clone(), Some(GetOptions::new().with_prefix().with_keys_only()))
                .await
                .map_err(etcd_err)?;
            Ok(resp
                .kvs()
                .iter()
                .filter_map(|kv| kv.key_str().ok())
                .filter_map(|k| k.strip_prefix(prefix.as_str()).map(str::to_owned))
                .collect())
        })
        .await
    }

    /// Campaigns in the election `<prefix>election/<name>` with `value`, bound to `lease`.
    pub(super) fn campaign(&self, name: &str, value: String, lease: i64) -> Result<Campaign, StoreError> {
        let key = format!("{}election/{name}", self.root());
        self.spawn_with_client(move |mut c| async move {
            let resp = c.campaign(key, value, lease).await.map_err(etcd_err)?;
            resp.leader()
                .cloned()
                .ok_or_else(|| etcd_err("a campaign was answered without a leader key"))
        })
    }

    /// Gives up a leadership.
    pub(super) async fn resign(&self, leader: LeaderKey) -> Result<(), StoreError> {
        self.with_client(move |mut c| async move {
            c.resign(Some(ResignOptions::new().with_leader(leader)))
                .await
                .map_err(etcd_err)?;
            Ok(())
        })
        .await
    }
}
