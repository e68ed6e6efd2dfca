//! The pool backend: etcd is the single source of truth. A write is one etcd transaction that
//! compares the mod revision of every object the write read (optimistic concurrency: the store
//! runs the write again on a conflict) and is acknowledged once etcd has committed it and this
//! host's watch has brought it into memory. The watch feeds the in-memory view with every
//! host's writes in etcd's one order; an object's generation, and so every event token, is its
//! etcd mod revision.
//!
//! Keys: `<prefix>obj/<class>/<ref>` → the object's record as JSON (fields at their defaults
//! left out, derived sets kept: another host has no other way to learn them).
//!
//! The client runs on a runtime of its own (one thread), so the store works the same from the
//! actix arbiters, tests and plain threads.

use super::{decode, StoreError, View};
use crate::events::{EventOp, LoggedEvent};
use crate::schema::ClassId;
use crate::value::{now, write_stored_record_json, Object};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a commit, or this host's view catching up with it, may take before the write is
/// refused (a host cut off from etcd answers in this time, never with a stale success).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause before a failed read of etcd's revision is sent again.
const READ_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Where the pool's database is.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EtcdConfig {
    /// Client URLs of etcd members (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The prefix of every key the pool writes.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The etcd member this host runs itself, if any (its data dir, where relative, is under
    /// the state dir); without one the endpoints name an existing cluster.
    #[serde(default)]
    pub member: Option<super::etcd_member::MemberConfig>,
}

fn default_prefix() -> String {
    "/xapi/".to_owned()
}

impl EtcdConfig {
    /// A pool database at `endpoints` under the default prefix.
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: default_prefix(),
            member: None,
        }
    }

    fn objects(&self) -> String {
        format!("{}obj/", self.prefix)
    }

    fn offset_key(&self) -> String {
        format!("{}meta/offset", self.prefix)
    }
}

/// What etcd made of a transaction.
pub(super) enum Outcome {
    /// Committed at this revision.
    Committed(u64),
    /// Something read had changed by this revision; nothing was written.
    Conflict(u64),
}

/// What etcd holds after a transaction whose answer was lost.
enum Resolved {
    /// It was committed, at this revision.
    Applied(u64),
    /// Nothing it compared has changed: it was not committed.
    NotApplied,
    /// Something changed, not (only) by it: a conflict, seen at this revision.
    Changed(u64),
}

/// The time left before `deadline`, if any.
fn remaining(deadline: tokio::time::Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    (!left.is_zero()).then_some(left)
}

/// Whether an etcd failure may pass (no leader, no quorum, a member gone, the connection
/// lost) rather than say the request itself is wrong.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        // gRPC codes that say the request is wrong (tonic's `Code` as its wire number):
        // INVALID_ARGUMENT 3 (too many operations, a request too large), NOT_FOUND 5,
        // ALREADY_EXISTS 6, PERMISSION_DENIED 7, FAILED_PRECONDITION 9, OUT_OF_RANGE 11,
        // UNIMPLEMENTED 12, UNAUTHENTICATED 16. The others (UNAVAILABLE: no leader, no quorum;
        // DEADLINE_EXCEEDED; UNKNOWN: a connection reset) may pass.
        etcd_client::Error::GRpcStatus(s) => {
            let code: i32 = s.code().into();
            !matches!(code, 3 | 5 | 6 | 7 | 9 | 11 | 12 | 16)
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// The connection, its runtime and the watch that feeds the view.
pub(super) struct Etcd {
    client: Client,
    objects: String,
    /// Added to every etcd revision to make a generation or event id: a database moved from
    /// one host's redb keeps its event tokens growing (the key `<prefix>meta/offset`).
    offset: u64,
    runtime: Runtime,
    applied: watch::Receiver<u64>,
}

/// The client's own runtime, stopped without waiting when dropped (dropping a runtime waits
/// for its tasks, which is not allowed inside another runtime).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Runtime {
    fn spawn<F>(&self, f: F) -> Result<tokio::task::JoinHandle<F::Output>, StoreError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self.0.as_ref().ok_or_else(|| etcd_err("the etcd client has stopped"))?;
        Ok(rt.spawn(f))
    }
}

pub(super) fn etcd_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Etcd(e.to_string())
}

impl Etcd {
    /// Connects, loads every object into `view`, and follows every later change.
    pub(super) async fn connect(cfg: &EtcdConfig, view: Arc<View>) -> Result<Etcd, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("store-etcd")
            .enable_all()
            .build()
            .map_err(etcd_err)?;
        let runtime = Runtime(Some(runtime));
        let objects = cfg.objects();
        let endpoints = cfg.endpoints.clone();
        let prefix = objects.clone();
        let offset_key = cfg.offset_key();
        let load_view = view.clone();
        let loaded = runtime.spawn(async move {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_keep_alive(Duration::from_secs(2), Duration::from_secs(5));
            let mut client = Client::connect(&endpoints, Some(opts)).await.map_err(etcd_err)?;
            let offset = read_offset(&mut client, &offset_key).await?;
            let revision = load(&mut client, &prefix, &load_view, offset).await?;
            Ok::<_, StoreError>((client, revision, offset))
        })?;
        let (client, revision, offset) = tokio::time::timeout(COMMIT_TIMEOUT, loaded)
            .await
            .map_err(|_| StoreError::Etcd(format!("no answer from etcd at {:?}", cfg.endpoints)))?
            .map_err(etcd_err)??;
        let (applied_tx, applied) = watch::channel(revision);
        runtime.spawn(follow(
            client.clone(),
            cfg.prefix.clone(),
            objects.clone(),
            view,
            revision,
            offset,
            applied_tx,
        ))?;
        Ok(Etcd {
            client,
            objects,
            offset,
            runtime,
            applied,
        })
    }

    /// The key of an object.
    pub(super) fn key(&self, class: ClassId, reference: &str) -> String {
        format!("{}{}/{reference}", self.objects, class.name())
    }

    /// The value written for an object.
    pub(super) fn value(obj: &Object) -> String {
        let mut buf = String::with_capacity(1024);
        write_stored_record_json(obj, &[], &mut buf);
        buf
    }

    /// Commits `ops` (key → new value, `None` to delete) if every key in `compares` still has
    /// the mod revision given (0: absent).
    ///
    /// etcd unreachable, without a leader or without quorum (a member killed, a leader being
    /// elected, this host cut off) is tried again until [`COMMIT_TIMEOUT`] has passed since the
    /// call. When a try ends without an answer the change may or may not have been committed:
    /// what etcd holds says which (every key written holds what was written, at one new
    /// revision: committed; every key compared unchanged: not committed, try again; else a
    /// conflict). Past the deadline the write is refused, never acknowledged.
    pub(super) async fn commit(
        &self,
        compares: Vec<(String, u64)>,
        ops: Vec<(String, Option<String>)>,
    ) -> Result<Outcome, StoreError> {
        let offset = self.offset;
        // 0 is "absent"; any other generation is a mod revision plus the offset.
        let compares: Vec<(String, i64)> = compares
            .into_iter()
            .map(|(k, generation)| {
                let rev = if generation == 0 {
                    0
                } else {
                    generation.saturating_sub(offset)
                };
                (k, i64::try_from(rev).unwrap_or(i64::MAX))
            })
            .collect();
        let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
        let mut last = String::from("no answer");
        loop {
            let Some(left) = remaining(deadline) else {
                return Err(StoreError::Etcd(format!(
                    "no quorum of the pool's etcd members answered within {} s ({last}); the change \
                     was not acknowledged",
                    COMMIT_TIMEOUT.as_secs()
                )));
            };
            let txn = Txn::new()
                .when(
                    compares
                        .iter()
                        .map(|(k, rev)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev))
                        .collect::<Vec<_>>(),
                )
                .and_then(
                    ops.iter()
                        .map(|(k, v)| match v {
                            Some(v) => TxnOp::put(k.as_str(), v.as_str(), None),
                            None => TxnOp::delete(k.as_str(), None),
                        })
                        .collect::<Vec<_>>(),
                );
            let mut kv = self.client.kv_client();
            let tried = self
                .runtime
                .spawn(async move { tokio::time::timeout(left, kv.txn(txn)).await })?
                .await
                .map_err(etcd_err)?;
            match tried {
                Ok(Ok(resp)) => {
                    let revision = u64::try_from(resp.header().map_or(0, |h| h.revision())).unwrap_or(0);
                    return Ok(if resp.succeeded() {
                        Outcome::Committed(revision)
                    } else {
                        Outcome::Conflict(revision)
                    });
                }
                Ok(Err(e)) if !transient(&e) => return Err(etcd_err(e)),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer".into(),
            }
            // Whether that try was committed, from what etcd holds now.
            while let Some(left) = remaining(deadline) {
                match self.resolve(&compares, &ops, left).await {
                    Ok(Resolved::Applied(rev)) => return Ok(Outcome::Committed(rev)),
                    Ok(Resolved::Changed(rev)) => return Ok(Outcome::Conflict(rev)),
                    Ok(Resolved::NotApplied) => break,
                    Err(e) => {
                        last = e.to_string();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What etcd holds of the keys of a transaction whose answer was lost.
    async fn resolve(
        &self,
        compares: &[(String, i64)],
        ops: &[(String, Option<String>)],
        left: Duration,
    ) -> Result<Resolved, StoreError> {
        let gets: Vec<TxnOp> = compares.iter().map(|(k, _)| TxnOp::get(k.as_str(), None)).collect();
        let mut kv = self.client.kv_client();
        let resp = self
            .runtime
            .spawn(async move { tokio::time::timeout(left, kv.txn(Txn::new().and_then(gets))).await })?
            .await
            .map_err(etcd_err)?
            .map_err(|_| etcd_err("no answer"))?
            .map_err(etcd_err)?;
        let header = u64::try_from(resp.header().map_or(0, |h| h.revision())).unwrap_or(0);
        // key → (mod revision, value) now.
        let mut now = std::collections::HashMap::new();
        for r in resp.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = r {
                for kv in g.kvs() {
                    now.insert(kv.key().to_vec(), (kv.mod_revision(), kv.value().to_vec()));
                }
            }
        }
        let unchanged = compares
            .iter()
            .all(|(k, rev)| now.get(k.as_bytes()).map_or(0, |(r, _)| *r) == *rev);
        if unchanged {
            return Ok(Resolved::NotApplied);
        }
        // Committed: every put holds its value, all at one revision newer than compared, and
        // every delete is gone.
        let noted: std::collections::HashMap<&str, i64> = compares.iter().map(|(k, r)| (k.as_str(), *r)).collect();
        let mut at = None;
        let applied = ops.iter().all(|(k, v)| match (v, now.get(k.as_bytes())) {
            (None, None) => true,
            (Some(v), Some((rev, have))) if have == v.as_bytes() && Some(rev) > noted.get(k.as_str()) => {
                *at.get_or_insert(*rev) == *rev
            }
            _ => false,
        });
        Ok(match (applied, at) {
            (true, Some(rev)) => Resolved::Applied(u64::try_from(rev).unwrap_or(0)),
            (true, None) => Resolved::Applied(header),
            (false, _) => Resolved::Changed(header),
        })
    }

    /// etcd's current revision (every change committed so far, by any host).
    pub(super) async fn current_revision(&self) -> Result<u64, StoreError> {
        // A read, so safe to send again: a request that failed at once (the connection to a
        // member that has just restarted closed under it) goes again, to whichever member
        // answers, until the commit timeout; a member that does not answer in time ends it.
        let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
        loop {
            let key = format!("{}meta/offset", self.objects.trim_end_matches("obj/"));
            let once = self
                .with_client(|mut c| async move {
                    let resp = c
                        .get(key, Some(GetOptions::new().with_count_only()))
                        .await
                        .map_err(etcd_err)?;
                    Ok(u64::try_from(resp.header().map_or(0, |h| h.revision())).unwrap_or(0))
                })
                .await;
            match once {
                Ok(rev) => return Ok(rev),
                Err(e) if tokio::time::Instant::now() + READ_RETRY_PAUSE < deadline => {
                    tracing::warn!(error = %e, "reading etcd's revision failed; trying again");
                    tokio::time::sleep(READ_RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until this host's view holds every change up to `revision`.
    pub(super) async fn caught_up(&self, revision: u64) -> Result<(), StoreError> {
        let mut rx = self.applied.clone();
        let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
        loop {
            if *rx.borrow_and_update() >= revision {
                return Ok(());
            }
            // Every revision of the pool's keys reaches the view as an event (the watch covers
            // the whole prefix), so waiting for events is enough.
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(etcd_err("the etcd watch has stopped")),
                Err(_) => {
                    return Err(etcd_err(format!(
                        "this host's view of the pool database did not reach revision {revision} in time"
                    )))
                }
            }
        }
    }
}

/// Loads every object under `prefix` into `view`; the revision it was read at.
async fn load(client: &mut Client, prefix: &str, view: &View, offset: u64) -> Result<u64, StoreError> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd_err)?;
    let revision = u64::try_from(resp.header().map_or(0, |h| h.revision())).unwrap_or(0);
    let mut seen: Vec<std::collections::HashSet<String>> = vec![Default::default(); view.tables.len()];
    let time = now();
    let mut logged = Vec::new();
    for kv in resp.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        let Some(rest) = key.strip_prefix(prefix) else { continue };
        let Some(mut obj) = decode(rest, kv.value())? else {
            continue;
        };
        obj.generation = u64::try_from(kv.mod_revision()).unwrap_or(0) + offset;
        seen[obj.class.0].insert(obj.reference.clone());
        let mut table = view.tables[obj.class.0].write();
        let old = table.get(&obj.reference);
        if old.as_ref().is_some_and(|o| o.generation == obj.generation) {
            continue;
        }
        let op = if old.is_some() { EventOp::Mod } else { EventOp::Add };
        logged.push(LoggedEvent::new(
            obj.generation,
            obj.class,
            &obj.reference,
            obj.uuid().unwrap_or(""),
            op,
            time,
        ));
        table.insert(Arc::new(obj));
    }
    // What is in memory but no longer in etcd (a reload after the watch fell behind etcd's
    // compaction) is gone.
    for class in ClassId::all() {
        let mut table = view.tables[class.0].write();
        let gone: Vec<Arc<Object>> = table
            .iter()
            .filter(|o| !seen[class.0].contains(&o.reference))
            .cloned()
            .collect();
        for o in gone {
            table.remove(&o.reference);
            logged.push(LoggedEvent::new(
                revision + offset,
                class,
                &o.reference,
                o.uuid().unwrap_or(""),
                EventOp::Del,
                time,
            ));
        }
    }
    logged.sort_by_key(LoggedEvent::id);
    view.events.append(logged);
    // Tokens from before this revision are answered from the objects, not the log.
    view.events.forget_up_to(revision + offset);
    Ok(revision)
}

/// Follows every change after `from` into `view`, announcing each revision applied.
///
/// The watch covers the pool's whole prefix (`root`), not only its objects: every revision of
/// the pool database is then some event this host receives (an object, the offset, a host's
/// liveness key written or expired), so the revision announced is exact. It never moves on
/// from etcd's progress reports: etcd 3.4 before 3.4.24 (Debian's is 3.4.23) may send one for
/// a watch still replaying older changes, with the current revision in its header, and a view
/// trusting it would answer reads as current while changes it has not applied are on their way
/// (a fault run met it: a host ran `VM.hard_shutdown` on a record without the domain just
/// started).
async fn follow(
    mut client: Client,
    root: String,
    prefix: String,
    view: Arc<View>,
    from: u64,
    offset: u64,
    applied: watch::Sender<u64>,
) {
    let mut last = from;
    loop {
        let start = i64::try_from(last + 1).unwrap_or(i64::MAX);
        let opts = WatchOptions::new().with_prefix().with_start_revision(start);
        let mut stream = match client.watch(root.as_str(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "watching the pool database failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            tracing::warn!(
                                compacted = resp.compact_revision(),
                                "the pool database's history was compacted past this host's view; reloading"
                            );
                            match load(&mut client, &prefix, &view, offset).await {
                                Ok(rev) => {
                                    last = rev;
                                    applied.send_replace(rev);
                                }
                                Err(e) => tracing::warn!(error = %e, "reloading the pool database failed"),
                            }
                        }
                        break;
                    }
                    let reached = apply(&view, &prefix, resp.events(), offset);
                    if reached > last {
                        last = reached;
                        view.events.advance(last + offset);
                        applied.send_replace(last);
                    }
                }
                Ok(None) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

/// Applies one batch of watched changes (keys outside `prefix`, the objects, only count for
/// their revision); the last revision among them (0 for none).
fn apply(view: &View, prefix: &str, events: &[etcd_client::Event], offset: u64) -> u64 {
    let time = now();
    let mut logged = Vec::with_capacity(events.len());
    let mut last = 0;
    for ev in events {
        let Some(kv) = ev.kv() else { continue };
        let raw = u64::try_from(kv.mod_revision()).unwrap_or(0);
        last = last.max(raw);
        let revision = raw + offset;
        let Ok(key) = kv.key_str() else { continue };
        let Some(rest) = key.strip_prefix(prefix) else { continue };
        match ev.event_type() {
            EventType::Put => {
                let mut obj = match decode(rest, kv.value()) {
                    Ok(Some(o)) => o,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "an object in the pool database is unreadable; skipped");
                        continue;
                    }
                };
                obj.generation = revision;
                let mut table = view.tables[obj.class.0].write();
                let op = if table.get(&obj.reference).is_some() {
                    EventOp::Mod
                } else {
                    EventOp::Add
                };
                logged.push(LoggedEvent::new(
                    revision,
                    obj.class,
                    &obj.reference,
                    obj.uuid().unwrap_or(""),
                    op,
                    time,
                ));
                table.insert(Arc::new(obj));
            }
            EventType::Delete => {
                let Some((class, reference)) = rest.split_once('/') else {
                    continue;
                };
                let Some(class) = ClassId::by_name(class) else { continue };
                if let Some(o) = view.tables[class.0].write().remove(reference) {
                    logged.push(LoggedEvent::new(
                        revision,
                        class,
                        reference,
                        o.uuid().unwrap_or(""),
                        EventOp::Del,
                        time,
                    ));
                }
            }
        }
    }
    view.events.append(logged);
    last
}

/// The offset of generations over etcd revisions the pool database records (0 for none).
async fn read_offset(client: &mut Client, key: &str) -> Result<u64, StoreError> {
    let resp = client.get(key, None).await.map_err(etcd_err)?;
    Ok(resp
        .kvs()
        .first()
        .and_then(|kv| kv.value_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// Waits (up to 30 s) until the etcd at `client_url` answers: a local member just started.
pub(super) async fn wait_for(client_url: &str) -> Result<(), StoreError> {
    let endpoints = vec![client_url.to_owned()];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(etcd_err)?;
    tokio::task::spawn_blocking(move || rt.block_on(connect_waiting(&endpoints)).map(drop))
        .await
        .map_err(etcd_err)?
}

/// Connects to `endpoints`, waiting up to 30 s for them to answer.
async fn connect_waiting(endpoints: &[String]) -> Result<Client, StoreError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        let tried = match Client::connect(endpoints, Some(opts)).await {
            Ok(mut c) => match c.status().await {
                Ok(_) => return Ok(c),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Etcd(format!(
                "no answer from etcd at {endpoints:?}: {tried}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `objects` (`class/ref` → record) and the generation offset into a new pool
/// database, in transactions of at most 1,000 operations.
/// Blocks: run it off the async workers.
pub(super) fn copy_in(cfg: &EtcdConfig, objects: Vec<(String, String)>, offset: u64) -> Result<(), StoreError> {
    let (endpoints, prefix, offset_key) = (cfg.endpoints.clone(), cfg.objects(), cfg.offset_key());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(etcd_err)?;
    let job = async move {
        let mut client = connect_waiting(&endpoints).await?;
        client
            .put(offset_key, offset.to_string(), None)
            .await
            .map_err(etcd_err)?;
        let mut ops = objects
            .into_iter()
            .map(|(k, v)| TxnOp::put(format!("{prefix}{k}"), v, None))
            .peekable();
        while ops.peek().is_some() {
            let chunk: Vec<TxnOp> = ops.by_ref().take(1000).collect();
            client.txn(Txn::new().and_then(chunk)).await.map_err(etcd_err)?;
        }
        Ok::<_, StoreError>(())
    };
    rt.block_on(job)
}

/// One member of the pool's etcd cluster.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    /// Its id.
    pub id: u64,
    /// Its name (empty until it has started).
    pub name: String,
    /// Where the other members reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it.
    pub client_urls: Vec<String>,
}

impl Etcd {
    /// The pool database's key prefix (`<prefix>`, before `obj/`).
    pub(super) fn root(&self) -> &str {
        self.objects.strip_suffix("obj/").unwrap_or(&self.objects)
    }

    /// Runs `f` with a client on the client's runtime.
    pub(super) async fn with_client<T: Send + 'static, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let fut = f(self.client.clone());
        self.runtime
            .spawn(async move { tokio::time::timeout(COMMIT_TIMEOUT, fut).await })?
            .await
            .map_err(etcd_err)?
            .map_err(|_| etcd_err("etcd did not answer in time"))?
    }

    /// Runs `f` with a client on the client's runtime with no time limit (an election
    /// campaign waits as long as another host leads); the task, to await or abort.
    pub(super) fn spawn_with_client<T: Send + 'static, F>(
        &self,
        f: impl FnOnce(Client) -> F,
    ) -> Result<tokio::task::JoinHandle<Result<T, StoreError>>, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.runtime.spawn(f(self.client.clone()))
    }

    /// The cluster's members.
    pub(super) async fn members(&self) -> Result<Vec<MemberInfo>, StoreError> {
        self.with_client(|mut c| async move {
            let resp = c.member_list().await.map_err(etcd_err)?;
            Ok(resp.members().iter().map(member_info).collect())
        })
        .await
    }

    /// Adds a voting member at `peer_url`; the members after the change.
    pub(super) async fn add_member(&self, peer_url: String) -> Result<Vec<MemberInfo>, StoreError> {
        self.with_client(|mut c| async move {
            let resp = c.member_add([peer_url], None).await.map_err(etcd_err)?;
            Ok(resp.member_list().iter().map(member_info).collect())
        })
        .await
    }

    /// Removes a member.
    pub(super) async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        self.with_client(|mut c| async move {
            c.member_remove(id).await.map_err(etcd_err)?;
            Ok(())
        })
        .await
    }
}

fn member_info(m: &etcd_client::Member) -> MemberInfo {
    MemberInfo {
        id: m.id(),
        name: m.name().to_owned(),
        peer_urls: m.peer_urls().to_vec(),
        client_urls: m.client_urls().to_vec(),
    }
}
