//! Host liveness in the pool database: each host keeps a key `<prefix>live/<host uuid>` bound
//! to an etcd lease it renews; when the host (or its link to etcd) is gone, etcd lets the lease
//! lapse and deletes the key. No heartbeat of our own: etcd's lease is the clock.

use super::etcd_backend::{etcd_err, Etcd};
use super::StoreError;
use etcd_client::{GetOptions, PutOptions};

impl Etcd {
    fn live_prefix(&self) -> String {
        format!("{}live/", self.root())
    }

    /// Renews `lease` (or, when it is `None` or has lapsed, takes a new one of `ttl` seconds)
    /// and keeps `<prefix>live/<name>` bound to it; the lease held afterwards.
    pub(super) async fn beat(&self, lease: Option<i64>, name: &str, ttl: i64) -> Result<i64, StoreError> {
        let key = format!("{}{name}", self.live_prefix());
        self.with_client(move |mut c| async move {
            if let Some(id) = lease {
                let (mut keeper, mut stream) = c.lease_keep_alive(id).await.map_err(etcd_err)?;
                keeper.keep_alive().await.map_err(etcd_err)?;
                let alive = matches!(stream.message().await.map_err(etcd_err)?, Some(r) if r.ttl() > 0);
                if alive {
                    return Ok(id);
                }
            }
            let id = c.lease_grant(ttl, None).await.map_err(etcd_err)?.id();
            c.put(key, "", Some(PutOptions::new().with_lease(id)))
                .await
                .map_err(etcd_err)?;
            Ok(id)
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
}
