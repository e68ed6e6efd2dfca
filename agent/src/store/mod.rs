//! The store: every object in memory for reads, behind one interface with two backends.
//!
//! Reads take a per-class read lock and clone `Arc`s. Writes run as transactions ([`Tx`]) and
//! are answered only once durable:
//! - one host (the default): a short critical section applies the change in memory, assigns
//!   generations, appends to the event log and queues the durable write; the caller is answered
//!   once the redb writer thread has committed it (group commit, [`redb_backend`]);
//! - a pool: the change is one etcd transaction comparing the revisions of what it read, run
//!   again on a conflict; the caller is answered once etcd has committed it and the watch has
//!   brought it into memory, which every host's watch does in the same order
//!   ([`etcd_backend`]).

mod derived;
mod etcd_backend;
mod etcd_lease;
pub mod etcd_member;
mod redb_backend;
mod table;
mod tx;

#[cfg(test)]
mod etcd_tests;
#[cfg(test)]
mod tests;

pub(crate) use derived::members_by_owner;
pub use etcd_backend::{EtcdConfig, MemberInfo};
pub use etcd_client::LeaderKey;
pub use etcd_lease::Campaign;
pub use tx::Tx;

use crate::error::ApiError;
use crate::events::{EventLog, EventOp, LoggedEvent};
#[cfg(test)]
use crate::schema::derived_sets;
use crate::schema::{ClassId, CLASSES};
use crate::value::{now, record_from_json, Object};
use derived::stored_fields_differ;
use etcd_backend::{Etcd, Outcome};
use parking_lot::{Mutex, RwLock};
use redb_backend::{DiskOp, Writer};
use std::path::Path;
use std::sync::Arc;
use table::Table;
use tokio::sync::oneshot;

/// A failure of the store itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or read.
    #[error("opening the store at {path}")]
    Open {
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A write did not reach the disk.
    #[error("writing the store: {0}")]
    Write(String),
    /// A stored object could not be decoded.
    #[error("stored object {key} is unreadable: {reason}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The pool database (etcd) failed or could not be reached.
    #[error("the pool database (etcd): {0}")]
    Etcd(String),
    /// The pool's configuration file is unreadable.
    #[error("the pool configuration {path}: {reason}")]
    Config {
        /// Which file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The `etcd` program is not installed.
    #[error("the etcd program ({0}) is not installed; install the etcd-server package")]
    EtcdMissing(String),
}

/// The file in a state dir that puts its host in a pool: the [`EtcdConfig`] as JSON.
pub const POOL_CONFIG: &str = "pool-store.json";

/// The local etcd member's data dir under the state dir.
pub const POOL_MEMBER_DIR: &str = "etcd";

/// Starts the local member `cfg` names, if any (a relative data dir is under `dir`); `fresh`
/// empties its data dir first (a member joining or starting a cluster).
fn start_member(dir: &Path, cfg: &EtcdConfig, fresh: bool) -> Result<Option<etcd_member::LocalMember>, StoreError> {
    let Some(member) = &cfg.member else {
        return Ok(None);
    };
    let mut member = member.clone();
    if member.data_dir.is_relative() {
        member.data_dir = dir.join(&member.data_dir);
    }
    if fresh {
        let _ = std::fs::remove_dir_all(&member.data_dir);
    }
    // The member's supervisor thread starts etcd: it is made on a privileged thread, never
    // on a confined HTTP worker (a host joining a pool starts its member from a call).
    crate::privileged::run_blocking(move || etcd_member::LocalMember::start(member))
        .map_err(|e| StoreError::Etcd(e.to_string()))?
        .map(Some)
}

/// How many times a write whose reads changed under it is run again before it is refused.
const MAX_ATTEMPTS: usize = 64;

/// The objects in memory and their event log: what the backends' loading and the etcd watch
/// fill.
pub(crate) struct View {
    tables: Vec<RwLock<Table>>,
    events: EventLog,
}

/// Where writes go.
enum Backend {
    /// Nowhere: memory only (tests).
    Memory,
    /// The local redb file.
    Redb(Writer),
    /// The pool's etcd.
    Etcd(Box<Etcd>),
}

/// The object store.
pub struct Store {
    view: Arc<View>,
    commit: Mutex<u64>,
    /// Where writes go; replaced when a host moves into a pool ([`Store::switch_to_pool`]).
    backend: RwLock<Arc<Backend>>,
    /// Held shared by every write, exclusively by a switch of backend.
    switching: tokio::sync::RwLock<()>,
    /// The etcd member this host runs for the pool, stopped with the store.
    member: Mutex<Option<etcd_member::LocalMember>>,
    /// Set when HA fences this host (its ref): every write is refused from then on.
    fenced: Mutex<Option<String>>,
}

/// Decodes a stored record whose key (without any prefix) is `class/ref`; `None` for a class
/// this build does not know.
pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Option<Object>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_owned(),
        reason,
    };
    let (class_name, reference) = key.split_once('/').ok_or_else(|| corrupt("bad key".into()))?;
    let Some(class) = ClassId::by_name(class_name) else {
        tracing::warn!(key, "stored object of a class this build does not know; skipped");
        return Ok(None);
    };
    let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let obj = record_from_json(class, &json, reference).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(obj))
}

fn empty_view() -> View {
    View {
        tables: CLASSES.iter().map(|_| RwLock::new(Table::default())).collect(),
        events: EventLog::new(1 << 16),
    }
}

impl Store {
    /// Opens (or creates) the one-host store in `dir`, loading every persistent object; `None`
    /// keeps everything in memory (tests).
    pub fn open(dir: Option<&Path>) -> Result<Store, StoreError> {
        let mut view = empty_view();
        let backend = match dir {
            None => Backend::Memory,
            Some(dir) => {
                let writer = Writer::open(dir, |key, bytes| {
                    if let Some(obj) = decode(key, bytes)? {
                        view.tables[obj.class.0].get_mut().insert(Arc::new(obj));
                    }
                    Ok(())
                })?;
                derived::rebuild(&mut view.tables);
                Backend::Redb(writer)
            }
        };
        Ok(Store {
            view: Arc::new(view),
            commit: Mutex::new(0),
            backend: RwLock::new(Arc::new(backend)),
            switching: tokio::sync::RwLock::new(()),
            member: Mutex::new(None),
            fenced: Mutex::new(None),
        })
    }

    /// Opens the pool's store in etcd: loads every object and follows every host's writes.
    pub async fn open_etcd(cfg: &EtcdConfig) -> Result<Store, StoreError> {
        let view = Arc::new(empty_view());
        let etcd = Etcd::connect(cfg, view.clone()).await?;
        Ok(Store {
            view,
            commit: Mutex::new(0),
            backend: RwLock::new(Arc::new(Backend::Etcd(Box::new(etcd)))),
            switching: tokio::sync::RwLock::new(()),
            member: Mutex::new(None),
            fenced: Mutex::new(None),
        })
    }

    /// Starts the local etcd member `cfg` names (its relative data dir under `dir`), if any,
    /// then opens the pool's store, waiting for the member to answer.
    pub async fn open_pool(dir: &Path, cfg: &EtcdConfig) -> Result<Store, StoreError> {
        let member = start_member(dir, cfg, false)?;
        if let Some(m) = &cfg.member {
            etcd_backend::wait_for(&m.client_url).await?;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Store::open_etcd(cfg).await {
                Ok(store) => {
                    *store.member.lock() = member;
                    return Ok(store);
                }
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }

    /// Where the local etcd member this host runs answers clients, if it runs one.
    pub fn member_client_url(&self) -> Option<String> {
        self.member.lock().as_ref().map(|m| m.client_url().to_owned())
    }

    /// The process id of the local etcd member this host runs, if it runs one.
    pub fn member_pid(&self) -> Option<u32> {
        self.member.lock().as_ref().and_then(etcd_member::LocalMember::pid)
    }

    /// Moves this host into the pool database `cfg` names, in place: starts the local member
    /// it names (a fresh data dir under `dir`), then
    /// - with `carry`, copies every object this host has into it first (a standalone host
    ///   becoming a pool's master: nothing is lost, event tokens keep growing);
    /// - without, adopts what the pool database holds (a host joining a pool: what it had is
    ///   gone from memory, as its redb file is no longer read).
    ///
    /// Writes wait while the store switches; `pool-store.json` is written once it has.
    pub async fn switch_to_pool(&self, dir: &Path, cfg: &EtcdConfig, carry: bool) -> Result<(), StoreError> {
        let _exclusive = self.switching.write().await;
        let member = start_member(dir, cfg, true)?;
        if let Some(m) = &cfg.member {
            etcd_backend::wait_for(&m.client_url).await?;
        }
        if carry {
            let mut objects = Vec::new();
            let mut top = *self.commit.lock();
            for class in ClassId::all() {
                for o in self.all(class) {
                    top = top.max(o.generation);
                    objects.push((format!("{}/{}", class.name(), o.reference), Etcd::value(&o)));
                }
            }
            let offset = top.max(self.view.events.latest()) + 1;
            let copy_cfg = cfg.clone();
            tokio::task::spawn_blocking(move || etcd_backend::copy_in(&copy_cfg, objects, offset))
                .await
                .map_err(|e| StoreError::Etcd(e.to_string()))??;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let etcd = loop {
            match Etcd::connect(cfg, self.view.clone()).await {
                Ok(e) => break e,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        };
        let path = dir.join(POOL_CONFIG);
        let json = serde_json::to_vec_pretty(cfg).map_err(|e| StoreError::Etcd(e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| StoreError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let old = std::mem::replace(&mut *self.backend.write(), Arc::new(Backend::Etcd(Box::new(etcd))));
        let old_member = std::mem::replace(&mut *self.member.lock(), member);
        drop(old_member);
        // The redb writer thread stops once no write holds it (none can: writes wait above).
        drop(old);
        Ok(())
    }

    /// Leaves the pool database: stops the local member and the etcd client, removes
    /// `pool-store.json` and the member's data, and starts a fresh one-host redb store in `dir`
    /// (empty: the caller creates the first objects again).
    pub async fn switch_to_standalone(&self, dir: &Path) -> Result<(), StoreError> {
        let _exclusive = self.switching.write().await;
        let old = std::mem::replace(&mut *self.backend.write(), Arc::new(Backend::Memory));
        drop(old);
        drop(self.member.lock().take());
        let _ = std::fs::remove_file(dir.join(POOL_CONFIG));
        let _ = std::fs::remove_dir_all(dir.join(POOL_MEMBER_DIR));
        let _ = std::fs::remove_file(dir.join(redb_backend::FILE));
        let writer = Writer::open(dir, |_, _| Ok(()))?;
        {
            let _serial = self.commit.lock();
            let mut logged = Vec::new();
            let time = now();
            let top = self.view.events.latest() + 1;
            for class in ClassId::all() {
                let mut table = self.view.tables[class.0].write();
                let all: Vec<Arc<Object>> = table.iter().cloned().collect();
                for o in all {
                    table.remove(&o.reference);
                    logged.push(LoggedEvent::new(
                        top,
                        class,
                        &o.reference,
                        o.uuid().unwrap_or(""),
                        EventOp::Del,
                        time,
                    ));
                }
            }
            self.view.events.append(logged);
        }
        *self.commit.lock() = self.view.events.latest() + 1;
        *self.backend.write() = Arc::new(Backend::Redb(writer));
        Ok(())
    }

    /// The pool database's members (empty on one host).
    pub async fn pool_members(&self) -> Result<Vec<MemberInfo>, StoreError> {
        let backend = self.backend.read().clone();
        match &*backend {
            Backend::Etcd(etcd) => etcd.members().await,
            _ => Ok(Vec::new()),
        }
    }

    /// Waits until this host's view holds every change the pool database has committed (a
    /// linearizable read: fails while etcd has no quorum). At once on a host alone.
    pub async fn caught_up(&self) -> Result<(), StoreError> {
        let backend = self.backend.read().clone();
        match &*backend {
            Backend::Etcd(etcd) => {
                let rev = etcd.current_revision().await?;
                etcd.caught_up(rev).await
            }
            _ => Ok(()),
        }
    }

    /// Renews this host's liveness lease in the pool database (`etcd_lease.rs`): the lease
    /// held, and whether etcd said the one renewed had lapsed; `Ok(None)` on a host alone.
    pub async fn liveness_beat(
        &self,
        lease: Option<i64>,
        name: &str,
        ttl: i64,
    ) -> Result<Option<(i64, bool)>, StoreError> {
        let backend = self.backend.read().clone();
        match &*backend {
            Backend::Etcd(etcd) => etcd.beat(lease, name, ttl).await.map(Some),
            _ => Ok(None),
        }
    }

    /// The hosts (by the names they beat with) whose liveness lease is held; `None` on a host
    /// alone.
    pub async fn live_hosts(&self) -> Result<Option<Vec<String>>, StoreError> {
        let backend = self.backend.read().clone();
        match &*backend {
            Backend::Etcd(etcd) => etcd.live().await.map(Some),
            _ => Ok(None),
        }
    }

    /// Fences this host (HA): every later write is refused with `HA_SHOULD_BE_FENCED [host]`.
    pub fn fence(&self, host: &str) {
        *self.fenced.lock() = Some(host.to_owned());
    }

    /// Campaigns in the pool database's election `name` with `value`, bound to `lease`: the
    /// task ends once this candidate leads, with its leader key. Aborting the task before
    /// then withdraws the candidacy (etcd resigns a campaign whose call is cancelled). `None`
    /// on a host alone.
    pub fn campaign(&self, name: &str, value: String, lease: i64) -> Option<Result<Campaign, StoreError>> {
        let backend = self.backend.read().clone();
        match &*backend {
            Backend::Etcd(etcd) => Some(etcd.campaign(name, value, lease)),
            _ => None,
        }
    }

    /// Gives up the leadership a won campaign gave.
    pub async fn resign(&self, leader: LeaderKey) -> Result<(), StoreError> {
        let backend = self.backend.read().clone();
        match &*backend {
            Backend::Etcd(etcd) => etcd.resign(leader).await,
            _ => Ok(()),
        }
    }

    /// Adds a voting member to the pool database; the members after the change.
    pub async fn add_pool_member(&self, peer_url: String) -> Result<Vec<MemberInfo>, StoreError> {
        let backend = self.backend.read().clone();
        match &*backend {
            Backend::Etcd(etcd) => etcd.add_member(peer_url).await,
            _ => Err(StoreError::Etcd("this host's database is not in etcd".into())),
        }
    }

    /// Removes a member of the pool database.
    pub async fn remove_pool_member(&self, id: u64) -> Result<(), StoreError> {
        let backend = self.backend.read().clone();
        match &*backend {
            Backend::Etcd(etcd) => etcd.remove_member(id).await,
            _ => Ok(()),
        }
    }

    /// The store a state dir names: the pool's etcd where the dir holds [`POOL_CONFIG`],
    /// otherwise the one-host redb store in it.
    pub async fn open_configured(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(POOL_CONFIG);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let cfg: EtcdConfig = serde_json::from_slice(&bytes).map_err(|e| StoreError::Config {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                Store::open_pool(dir, &cfg).await
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Store::open(Some(dir)),
            Err(e) => Err(StoreError::Config {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Whether the store is the pool's etcd.
    pub fn is_pooled(&self) -> bool {
        matches!(**self.backend.read(), Backend::Etcd(_))
    }

    /// Every derived set whose members differ from what its members' side says (as
    /// multisets), as `Class.field of ref`: what a restart, which rebuilds them, would change.
    #[cfg(test)]
    pub(crate) fn derived_set_mismatches(&self) -> Vec<String> {
        let mut out = Vec::new();
        for class in ClassId::all() {
            for &field in derived_sets(class) {
                let Some(member) = crate::schema::partner(class, field) else {
                    continue;
                };
                let members = self.all(member.class);
                let mut expected = derived::members_by_owner(members.iter().map(|o| &**o), member.field);
                for owner in self.all(class) {
                    let mut want = expected.remove(&owner.reference).unwrap_or_default();
                    let mut have: Vec<String> = owner
                        .get(field)
                        .as_set()
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    want.sort();
                    have.sort();
                    if want != have {
                        let name = class.field(field).name;
                        out.push(format!(
                            "{}.{name} of {}: {have:?}, members say {want:?}",
                            class.name(),
                            owner.reference
                        ));
                    }
                }
            }
        }
        out
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.view.events
    }

    /// Reads one object.
    pub fn get(&self, class: ClassId, reference: &str) -> Option<Arc<Object>> {
        self.view.tables.get(class.0)?.read().get(reference)
    }

    /// Every object of a class.
    pub fn all(&self, class: ClassId) -> Vec<Arc<Object>> {
        match self.view.tables.get(class.0) {
            Some(t) => t.read().iter().cloned().collect(),
            None => Vec::new(),
        }
    }

    /// How many objects a class has.
    pub fn count(&self, class: ClassId) -> usize {
        self.view.tables.get(class.0).map_or(0, |t| t.read().objects.len())
    }

    /// The ref of the object with this uuid.
    pub fn ref_by_uuid(&self, class: ClassId, uuid: &str) -> Option<String> {
        self.view
            .tables
            .get(class.0)?
            .read()
            .uuids
            .get(uuid)
            .map(|o| o.0.reference.clone())
    }

    /// Runs `f` as one transaction and returns once its changes are durable. In a pool `f` runs
    /// again when what it read changed under it before the commit, so it must not act outside
    /// the transaction.
    pub async fn write<T>(&self, f: impl FnMut(&mut Tx) -> Result<T, ApiError>) -> Result<T, ApiError> {
        self.write_as(f, true).await
    }

    /// Runs `f` as one transaction in memory only: its changes are seen by readers and
    /// events at once but are not written to disk by this call (a later durable write of
    /// the same object carries them). For state that does not outlive the process, such
    /// as the marks of operations in progress, which start-up clears. In a pool it is a
    /// write like any other: the other hosts must see it.
    pub async fn write_volatile<T>(&self, f: impl FnMut(&mut Tx) -> Result<T, ApiError>) -> Result<T, ApiError> {
        self.write_as(f, false).await
    }

    async fn write_as<T>(
        &self,
        mut f: impl FnMut(&mut Tx) -> Result<T, ApiError>,
        durable: bool,
    ) -> Result<T, ApiError> {
        if let Some(host) = self.fenced.lock().clone() {
            return Err(ApiError::HaShouldBeFenced { host });
        }
        let _shared = self.switching.read().await;
        let backend = self.backend.read().clone();
        if let Backend::Etcd(etcd) = &*backend {
            return self.write_etcd(etcd, f).await;
        }
        let (result, ack, undo) = {
            let mut generation = self.commit.lock();
            let mut tx = Tx::new(self, false);
            let result = f(&mut tx)?;
            let (ack, undo) = self.apply(&backend, &mut generation, tx, durable);
            (result, ack, undo)
        };
        if let Some(ack) = ack {
            let outcome = ack.await.unwrap_or_else(|_| Err("the store writer has stopped".into()));
            if let Err(e) = outcome {
                tracing::error!(error = %e, "a write did not reach the disk; undoing it in memory");
                self.undo(undo);
                return Err(ApiError::internal(format!("the change could not be saved: {e}")));
            }
        }
        Ok(result)
    }

    /// A write in a pool: one etcd transaction comparing the revision of everything read or
    /// written with the one this host's view had, run again while that changes under it.
    async fn write_etcd<T>(
        &self,
        etcd: &Etcd,
        mut f: impl FnMut(&mut Tx) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let refused = |e: StoreError| ApiError::internal(format!("the change was not saved: {e}"));
        let mut caught_up = false;
        let mut conflicts = 0u32;
        for _ in 0..MAX_ATTEMPTS {
            let (result, compares, ops) = {
                let _serial = self.commit.lock();
                let mut tx = Tx::new(self, true);
                let result = match f(&mut tx) {
                    Ok(r) => r,
                    // An object another host has just made may not be in this host's view
                    // yet: look again once the view has every committed change.
                    Err(ApiError::HandleInvalid { .. }) if !caught_up => {
                        caught_up = true;
                        drop(tx);
                        drop(_serial);
                        let rev = etcd.current_revision().await.map_err(refused)?;
                        etcd.caught_up(rev).await.map_err(refused)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let Tx { entries, reads, .. } = tx;
                let mut reads = reads.map(|r| r.into_inner()).unwrap_or_default();
                let mut ops = Vec::with_capacity(entries.len());
                for (class, reference, change) in entries {
                    let base = reads
                        .remove(&(class, reference.clone()))
                        .unwrap_or_else(|| self.get(class, &reference).map_or(0, |o| o.generation));
                    let key = etcd.key(class, &reference);
                    match change {
                        Some(obj) => {
                            let mut obj = Arc::unwrap_or_clone(obj);
                            obj.reference.clone_from(&reference);
                            ops.push((key.clone(), Some(Etcd::value(&obj))));
                        }
                        // Deleting what is not there changes nothing.
                        None if base == 0 => {}
                        None => ops.push((key.clone(), None)),
                    }
                    reads.insert((class, reference), base);
                }
                let compares: Vec<(String, u64)> = reads
                    .into_iter()
                    .map(|((class, reference), rev)| (etcd.key(class, &reference), rev))
                    .collect();
                (result, compares, ops)
            };
            if ops.is_empty() {
                return Ok(result);
            }
            match etcd.commit(compares, ops).await.map_err(refused)? {
                Outcome::Committed(revision) => {
                    // Committed is acknowledged: a view slow to follow (its watch being
                    // re-established) does not undo a durable change. What reads it next
                    // either waits for the view (writes compare what they read) or asks
                    // etcd first (`caught_up`).
                    if let Err(e) = etcd.caught_up(revision).await {
                        tracing::warn!(revision, error = %e, "a committed change has not reached this host's view yet");
                    }
                    return Ok(result);
                }
                Outcome::Conflict(revision) => {
                    // Run again once this host has seen what changed. After a few conflicts
                    // (many hosts writing one object: a template cloned from every host marks
                    // it each time) wait a random while first, up to 64 ms, so that each try
                    // is not lost to the same race again.
                    etcd.caught_up(revision).await.map_err(refused)?;
                    conflicts += 1;
                    if conflicts > 2 {
                        let most = 1u32 << conflicts.min(6);
                        let nanos = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.subsec_nanos());
                        let wait = std::time::Duration::from_micros(u64::from(nanos % (most * 1000)));
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Err(ApiError::internal(format!(
            "the change was not saved: what it read kept changing ({MAX_ATTEMPTS} attempts)"
        )))
    }

    /// Applies a transaction in memory, logs its events and queues its durable part.
    fn apply(
        &self,
        backend: &Backend,
        generation: &mut u64,
        tx: Tx,
        durable: bool,
    ) -> (Option<oneshot::Receiver<Result<(), String>>>, Vec<Undo>) {
        let Tx { entries, .. } = tx;
        let mut events = Vec::with_capacity(entries.len());
        let mut disk = Vec::new();
        let mut undo = Vec::with_capacity(entries.len());
        let time = now();
        for (class, reference, change) in entries {
            let mut table = self.view.tables[class.0].write();
            let old = table.get(&reference);
            match change {
                Some(obj) => {
                    *generation += 1;
                    let mut obj = Arc::unwrap_or_clone(obj);
                    obj.generation = *generation;
                    if obj.reference != reference {
                        // The tables find an object by its own ref.
                        obj.reference.clone_from(&reference);
                    }
                    let obj = Arc::new(obj);
                    table.insert(obj.clone());
                    // A change to derived sets alone (a host's `resident_VMs` when one of its VMs
                    // starts) leaves the stored form as it was: nothing to write, nor to wait for.
                    // (Compared only for writes bound for the disk.)
                    if durable && class.def().persistent && old.as_deref().is_none_or(|o| stored_fields_differ(o, &obj))
                    {
                        disk.push(DiskOp::Put(format!("{}/{}", class.name(), reference), obj.clone()));
                    }
                    let op = if old.is_some() { EventOp::Mod } else { EventOp::Add };
                    let uuid = obj.uuid().unwrap_or("");
                    events.push(LoggedEvent::new(*generation, class, &reference, uuid, op, time));
                    undo.push(Undo {
                        class,
                        reference,
                        old,
                        new: Some(obj),
                    });
                }
                None => {
                    let Some(o) = table.remove(&reference) else {
                        continue;
                    };
                    *generation += 1;
                    let uuid = o.uuid().unwrap_or("");
                    if durable && class.def().persistent {
                        disk.push(DiskOp::Delete(format!("{}/{}", class.name(), reference)));
                    }
                    events.push(LoggedEvent::new(
                        *generation,
                        class,
                        &reference,
                        uuid,
                        EventOp::Del,
                        time,
                    ));
                    undo.push(Undo {
                        class,
                        reference,
                        old: Some(o),
                        new: None,
                    });
                }
            }
        }
        self.view.events.append(events);
        let ack = match (backend, disk.is_empty()) {
            (Backend::Redb(w), false) => Some(w.submit(disk)),
            _ => None,
        };
        (ack, undo)
    }

    /// Puts back what a failed transaction replaced, where nothing newer has replaced it since.
    fn undo(&self, undo: Vec<Undo>) {
        let _guard = self.commit.lock();
        for u in undo.into_iter().rev() {
            let mut table = self.view.tables[u.class.0].write();
            let current = table.get(&u.reference);
            let unchanged = match (&current, &u.new) {
                (Some(c), Some(n)) => Arc::ptr_eq(c, n),
                (None, None) => true,
                _ => false,
            };
            if !unchanged {
                continue;
            }
            table.remove(&u.reference);
            if let Some(o) = u.old {
                table.insert(o);
            }
        }
    }
}

struct Undo {
    class: ClassId,
    reference: String,
    old: Option<Arc<Object>>,
    new: Option<Arc<Object>>,
}
