//! The store: every object in memory for reads, persistent classes on disk (redb).
//!
//! Reads take a per-class read lock and clone `Arc`s. Writes run as transactions: a short
//! critical section applies the change in memory, assigns generations, appends to the event
//! log and queues the durable write; the caller is answered only once a writer thread has
//! committed it to disk. The writer drains every queued transaction into one redb commit
//! (group commit), so concurrent writers share one fsync.

use crate::error::ApiError;
use crate::events::{EventLog, EventOp, LoggedEvent};
use crate::schema::{derived_sets, ClassId, FieldId, CLASSES};
use crate::value::{now, record_from_json, write_stored_record_json, Object, Value};
use parking_lot::{Mutex, RwLock};
use redb::{ReadableTable, TableDefinition};
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::oneshot;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

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
}

/// A class's objects, found by ref, and those with a uuid, found by uuid. Both sets hold the
/// object itself and look up by its own text, so no ref or uuid is held twice.
#[derive(Default)]
struct Table {
    objects: HashSet<Keyed<ByRef>, Fast>,
    uuids: HashSet<Keyed<ByUuid>, Fast>,
}

/// Refs and uuids are long texts hashed on every read and write.
use crate::FastHash as Fast;

impl Table {
    fn get(&self, reference: &str) -> Option<Arc<Object>> {
        self.objects.get(reference).map(|o| o.0.clone())
    }

    /// Takes the object with this ref out of both sets.
    fn remove(&mut self, reference: &str) -> Option<Arc<Object>> {
        let Keyed(o, _) = self.objects.take(reference)?;
        self.uuids.remove(ByUuid::key(&o));
        Some(o)
    }

    /// Puts `obj` in, in place of any object with its ref; findable by its uuid where it has one.
    fn insert(&mut self, obj: Arc<Object>) {
        self.remove(&obj.reference);
        if !ByUuid::key(&obj).is_empty() {
            self.uuids.replace(Keyed(obj.clone(), PhantomData));
        }
        self.objects.replace(Keyed(obj, PhantomData));
    }
}

/// Which text of an object a set finds it by.
trait KeyOf {
    fn key(o: &Object) -> &str;
}

/// By its ref.
struct ByRef;

impl KeyOf for ByRef {
    fn key(o: &Object) -> &str {
        &o.reference
    }
}

/// By its uuid (empty for objects without one, which are not put in).
struct ByUuid;

impl KeyOf for ByUuid {
    fn key(o: &Object) -> &str {
        o.uuid().unwrap_or("")
    }
}

/// An object in a set that finds it by `K`'s text.
struct Keyed<K>(Arc<Object>, PhantomData<K>);

impl<K: KeyOf> Borrow<str> for Keyed<K> {
    fn borrow(&self) -> &str {
        K::key(&self.0)
    }
}

impl<K: KeyOf> Hash for Keyed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: lookups go through `Borrow<str>`.
        K::key(&self.0).hash(state);
    }
}

impl<K: KeyOf> PartialEq for Keyed<K> {
    fn eq(&self, other: &Keyed<K>) -> bool {
        K::key(&self.0) == K::key(&other.0)
    }
}

impl<K: KeyOf> Eq for Keyed<K> {}

enum DiskOp {
    /// The object as committed; the writer thread serializes it, off the callers' path.
    Put(String, Arc<Object>),
    Delete(String),
}

struct Batch {
    ops: Vec<DiskOp>,
    ack: oneshot::Sender<Result<(), String>>,
}

/// The object store.
pub struct Store {
    tables: Vec<RwLock<Table>>,
    commit: Mutex<u64>,
    writer: Option<crossbeam_channel::Sender<Batch>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    events: EventLog,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and release the database.
        self.writer = None;
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// A transaction: reads see its own pending writes.
pub struct Tx<'a> {
    store: &'a Store,
    /// What this transaction wrote, in the order first written (`None`: deleted).
    entries: Vec<(ClassId, String, Option<Arc<Object>>)>,
    /// Where each written object is in `entries`, by class and ref.
    index: HashMap<ClassId, HashMap<String, usize, Fast>, Fast>,
}

impl Tx<'_> {
    fn slot(&self, class: ClassId, reference: &str) -> Option<usize> {
        self.index.get(&class)?.get(reference).copied()
    }
    fn set_slot(&mut self, class: ClassId, reference: &str, v: Option<Arc<Object>>) -> usize {
        match self.slot(class, reference) {
            Some(i) => {
                self.entries[i].2 = v;
                i
            }
            None => {
                let i = self.entries.len();
                self.entries.push((class, reference.to_owned(), v));
                self.index.entry(class).or_default().insert(reference.to_owned(), i);
                i
            }
        }
    }
    /// Reads an object, seeing this transaction's writes.
    pub fn get(&self, class: ClassId, reference: &str) -> Option<Arc<Object>> {
        match self.slot(class, reference) {
            Some(i) => self.entries[i].2.clone(),
            None => self.store.get(class, reference),
        }
    }
    /// Changes an object in place (copying it once per transaction, not once per change);
    /// `HANDLE_INVALID` if it does not exist.
    pub fn modify<T>(
        &mut self,
        class: ClassId,
        reference: &str,
        f: impl FnOnce(&mut Object) -> T,
    ) -> Result<T, ApiError> {
        let i = match self.slot(class, reference) {
            Some(i) => i,
            None => {
                let cur = self.store.get(class, reference);
                self.set_slot(class, reference, cur)
            }
        };
        match &mut self.entries[i].2 {
            Some(obj) => Ok(f(Arc::make_mut(obj))),
            None => Err(ApiError::handle_invalid(class.name(), reference)),
        }
    }
    /// Reads an object or fails with `HANDLE_INVALID`.
    pub fn must_get(&self, class: ClassId, reference: &str) -> Result<Arc<Object>, ApiError> {
        self.get(class, reference)
            .ok_or_else(|| ApiError::handle_invalid(class.name(), reference))
    }
    /// Writes (creates or replaces) an object.
    pub fn put(&mut self, obj: Object) {
        let (class, reference) = (obj.class, obj.reference.clone());
        self.set_slot(class, &reference, Some(Arc::new(obj)));
    }
    /// Deletes an object.
    pub fn delete(&mut self, class: ClassId, reference: &str) {
        self.set_slot(class, reference, None);
    }
    /// Whether a uuid is taken in the class (seeing this transaction's writes).
    pub fn uuid_taken(&self, class: ClassId, uuid: &str) -> bool {
        if self
            .entries
            .iter()
            .any(|(c, _, o)| *c == class && o.as_ref().is_some_and(|o| o.uuid() == Some(uuid)))
        {
            return true;
        }
        self.store.ref_by_uuid(class, uuid).is_some()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, loading every persistent object; `None` keeps
    /// everything in memory (tests).
    pub fn open(dir: Option<&Path>) -> Result<Store, StoreError> {
        let tables = CLASSES.iter().map(|_| RwLock::new(Table::default())).collect();
        let mut store = Store {
            tables,
            commit: Mutex::new(0),
            writer: None,
            writer_thread: None,
            events: EventLog::new(1 << 16),
        };
        let Some(dir) = dir else {
            return Ok(store);
        };
        let path = dir.join("xapid.redb");
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.display().to_string(),
            source: e,
        };
        let db = open_db(&path).map_err(|e| open_err(Box::new(e)))?;
        {
            let rtx = db.begin_read().map_err(|e| open_err(Box::new(e)))?;
            match rtx.open_table(OBJECTS) {
                Ok(table) => {
                    let iter = table.iter().map_err(|e| open_err(Box::new(e)))?;
                    for item in iter {
                        let (k, v) = item.map_err(|e| open_err(Box::new(e)))?;
                        store.load_one(k.value(), v.value())?;
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(open_err(Box::new(e))),
            }
        }
        store.rebuild_derived_sets();
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer_path = path.clone();
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer_path, db, rx))
            .map_err(|e| open_err(Box::new(e)))?;
        store.writer = Some(tx);
        store.writer_thread = Some(handle);
        Ok(store)
    }

    fn load_one(&mut self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: key.to_owned(),
            reason,
        };
        let (class_name, reference) = key.split_once('/').ok_or_else(|| corrupt("bad key".into()))?;
        let Some(class) = ClassId::by_name(class_name) else {
            tracing::warn!(key, "stored object of a class this build does not know; skipped");
            return Ok(());
        };
        let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let obj = record_from_json(class, &json, reference).map_err(|e| corrupt(e.to_string()))?;
        self.tables[class.0].get_mut().insert(Arc::new(obj));
        Ok(())
    }

    /// Fills every derived set (see [`derived_sets`]) from the members' side: those sets are
    /// not on disk (older stores that wrote them are read the same way, their copy ignored).
    /// Members are listed in ref order.
    fn rebuild_derived_sets(&mut self) {
        for class in ClassId::all() {
            for &field in derived_sets(class) {
                let Some(member) = crate::schema::partner(class, field) else {
                    continue;
                };
                let members = self.tables[member.class.0].get_mut().objects.iter().map(|o| &*o.0);
                let mut members = members_by_owner(members, member.field);
                let table = self.tables[class.0].get_mut();
                let owners: Vec<Arc<Object>> = table.objects.iter().map(|o| o.0.clone()).collect();
                for owner in owners {
                    let mut refs = members.remove(&owner.reference).unwrap_or_default();
                    refs.sort();
                    let set = Value::set(refs.into_iter().map(Value::reference).collect());
                    if *owner.get(field) != set {
                        let mut o = Arc::unwrap_or_clone(owner);
                        o.set(field, set);
                        table.insert(Arc::new(o));
                    }
                }
            }
        }
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
                let mut expected = members_by_owner(members.iter().map(|o| &**o), member.field);
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
        &self.events
    }

    /// Reads one object.
    pub fn get(&self, class: ClassId, reference: &str) -> Option<Arc<Object>> {
        self.tables.get(class.0)?.read().get(reference)
    }

    /// Every object of a class.
    pub fn all(&self, class: ClassId) -> Vec<Arc<Object>> {
        match self.tables.get(class.0) {
            Some(t) => t.read().objects.iter().map(|o| o.0.clone()).collect(),
            None => Vec::new(),
        }
    }

    /// How many objects a class has.
    pub fn count(&self, class: ClassId) -> usize {
        self.tables.get(class.0).map_or(0, |t| t.read().objects.len())
    }

    /// The ref of the object with this uuid.
    pub fn ref_by_uuid(&self, class: ClassId, uuid: &str) -> Option<String> {
        self.tables
            .get(class.0)?
            .read()
            .uuids
            .get(uuid)
            .map(|o| o.0.reference.clone())
    }

    /// Runs `f` as one transaction and returns once its changes are durable.
    pub async fn write<T>(&self, f: impl FnOnce(&mut Tx) -> Result<T, ApiError>) -> Result<T, ApiError> {
        self.write_as(f, true).await
    }

    /// Runs `f` as one transaction in memory only: its changes are seen by readers and
    /// events at once but are not written to disk by this call (a later durable write of
    /// the same object carries them). For state that does not outlive the process, such
    /// as the marks of operations in progress, which start-up clears.
    pub async fn write_volatile<T>(&self, f: impl FnOnce(&mut Tx) -> Result<T, ApiError>) -> Result<T, ApiError> {
        self.write_as(f, false).await
    }

    async fn write_as<T>(&self, f: impl FnOnce(&mut Tx) -> Result<T, ApiError>, durable: bool) -> Result<T, ApiError> {
        let (result, ack, undo) = {
            let mut generation = self.commit.lock();
            let mut tx = Tx {
                store: self,
                entries: Vec::new(),
                index: HashMap::default(),
            };
            let result = f(&mut tx)?;
            let (ack, undo) = self.apply(&mut generation, tx, durable);
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

    /// Applies a transaction in memory, logs its events and queues its durable part.
    fn apply(
        &self,
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
            let mut table = self.tables[class.0].write();
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
        self.events.append(events);
        let ack = match (&self.writer, disk.is_empty()) {
            (Some(w), false) => {
                let (ack_tx, ack_rx) = oneshot::channel();
                if w.send(Batch { ops: disk, ack: ack_tx }).is_err() {
                    tracing::error!("the store writer has stopped");
                }
                Some(ack_rx)
            }
            _ => None,
        };
        (ack, undo)
    }

    /// Puts back what a failed transaction replaced, where nothing newer has replaced it since.
    fn undo(&self, undo: Vec<Undo>) {
        let _guard = self.commit.lock();
        for u in undo.into_iter().rev() {
            let mut table = self.tables[u.class.0].write();
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

/// The refs of `objects`, grouped by the (non-null) ref each holds in `field`: a derived set's
/// members by owner, read from the members' side.
fn members_by_owner<'a>(objects: impl Iterator<Item = &'a Object>, field: FieldId) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for o in objects {
        if let Some(owner) = o.get(field).as_ref_str() {
            out.entry(owner.to_owned()).or_default().push(o.reference.clone());
        }
    }
    out
}

fn open_db(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    // The store reads everything into memory at start; redb's own cache only needs to cover
    // the pages a commit touches (the b-tree's branch pages and a group commit's leaves), and
    // records are small since the derived sets stay off the disk. redb fills whatever cache
    // it is given (loading at start, and every committed page), so all of it is resident:
    // 1 MiB instead of 4 took 3-4 MiB off the daemon with 1,000 VMs (BENCHMARKS.md).
    redb::Database::builder().set_cache_size(1 << 20).create(path)
}

/// Whether two states of one object differ in a field the store writes (any field but the
/// class's derived sets, which are rebuilt from their members when the store loads).
fn stored_fields_differ(old: &Object, new: &Object) -> bool {
    let derived = derived_sets(new.class);
    old.fields
        .iter()
        .zip(new.fields.iter())
        .enumerate()
        .any(|(i, (a, b))| a != b && !derived.contains(&FieldId(i)))
}

fn writer_loop(path: std::path::PathBuf, db: redb::Database, rx: crossbeam_channel::Receiver<Batch>) {
    let mut db = Some(db);
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while batches.len() < 4096 {
            match rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        if db.is_none() {
            // redb refuses all writes after an I/O error (a full disk, say): start afresh from
            // what is on disk, which holds every acknowledged write.
            db = open_db(&path)
                .map_err(|e| tracing::error!(error = %e, "reopening the store failed; will retry"))
                .ok();
        }
        let result = match &db {
            Some(d) => commit_batches(d, &batches).map_err(|e| e.to_string()),
            None => Err("the store cannot be reopened".to_owned()),
        };
        if result.is_err() {
            db = None;
        }
        for b in batches {
            let _ = b.ack.send(result.clone());
        }
    }
}

fn commit_batches(db: &redb::Database, batches: &[Batch]) -> Result<(), Box<dyn std::error::Error>> {
    // Only the last write of a key in the group reaches the disk (one object is often
    // written several times by the transactions of one group).
    let ops: Vec<&DiskOp> = batches.iter().flat_map(|b| b.ops.iter()).collect();
    let mut seen: HashSet<&str> = HashSet::with_capacity(ops.len());
    let mut last: Vec<&DiskOp> = Vec::with_capacity(ops.len());
    for op in ops.into_iter().rev() {
        let key = match op {
            DiskOp::Put(k, _) | DiskOp::Delete(k) => k.as_str(),
        };
        if seen.insert(key) {
            last.push(op);
        }
    }
    let wtx = db.begin_write()?;
    {
        let mut table = wtx.open_table(OBJECTS)?;
        let mut buf = String::with_capacity(8192);
        for op in last.into_iter().rev() {
            match op {
                DiskOp::Put(k, obj) => {
                    buf.clear();
                    // The derived sets are rebuilt at load, and fields at their defaults filled
                    // in: neither is stored.
                    write_stored_record_json(obj, derived_sets(obj.class), &mut buf);
                    table.insert(k.as_str(), buf.as_bytes())?;
                }
                DiskOp::Delete(k) => {
                    table.remove(k.as_str())?;
                }
            }
        }
    }
    wtx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{class_ids, fields};
    use crate::value::{default_object, Value};

    fn network(r: &str, uuid: &str, name: &str) -> Object {
        let mut o = default_object(class_ids::network, r);
        o.set(fields::network::uuid, Value::str(uuid));
        o.set(fields::network::name_label, Value::str(name));
        o
    }

    #[tokio::test]
    async fn writes_survive_reopen_and_ephemeral_classes_do_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(Some(dir.path())).unwrap();
            store
                .write(|tx| {
                    tx.put(network("OpaqueRef:n1", "u1", "net one"));
                    tx.put(default_object(class_ids::session, "OpaqueRef:s1"));
                    Ok(())
                })
                .await
                .unwrap();
            assert_eq!(store.events().latest(), 2);
        }
        let store = Store::open(Some(dir.path())).unwrap();
        let n = store.get(class_ids::network, "OpaqueRef:n1").unwrap();
        assert_eq!(n.str_field("name_label"), "net one");
        assert_eq!(
            store.ref_by_uuid(class_ids::network, "u1").as_deref(),
            Some("OpaqueRef:n1")
        );
        assert!(store.get(class_ids::session, "OpaqueRef:s1").is_none());
    }

    /// `network.VIFs` is the members' `VIF.network` read the other way: it is not written, and
    /// a reopened store lists exactly the VIFs that name the network (a stale or duplicate
    /// entry a store of an older build wrote is dropped), in ref order.
    #[tokio::test]
    async fn derived_sets_are_rebuilt_from_their_members_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let vif = |r: &str, net: &str| {
            let mut o = default_object(class_ids::VIF, r);
            o.set(fields::VIF::network, Value::Ref(net.into()));
            o
        };
        let vifs = |refs: &[&str]| Value::Set(refs.iter().map(|r| Value::Ref((*r).into())).collect());
        {
            let store = Store::open(Some(dir.path())).unwrap();
            store
                .write(|tx| {
                    let mut n = network("OpaqueRef:n1", "u1", "one");
                    n.set(
                        fields::network::VIFs,
                        vifs(&["OpaqueRef:v2", "OpaqueRef:gone", "OpaqueRef:v1", "OpaqueRef:v1"]),
                    );
                    tx.put(n);
                    tx.put(network("OpaqueRef:n2", "u2", "two"));
                    tx.put(vif("OpaqueRef:v2", "OpaqueRef:n1"));
                    tx.put(vif("OpaqueRef:v1", "OpaqueRef:n1"));
                    tx.put(vif("OpaqueRef:v3", "OpaqueRef:NULL"));
                    Ok(())
                })
                .await
                .unwrap();
        }
        let db = open_db(&dir.path().join("xapid.redb")).unwrap();
        let stored = db.begin_read().unwrap().open_table(OBJECTS).unwrap();
        let n1 = stored.get("network/OpaqueRef:n1").unwrap().unwrap();
        let text = std::str::from_utf8(n1.value()).unwrap().to_owned();
        assert!(text.contains("\"name_label\":\"one\""), "{text}");
        assert!(!text.contains("VIFs"), "{text}");
        drop((stored, db));
        let store = Store::open(Some(dir.path())).unwrap();
        let n1 = store.get(class_ids::network, "OpaqueRef:n1").unwrap();
        assert_eq!(*n1.get(fields::network::VIFs), vifs(&["OpaqueRef:v1", "OpaqueRef:v2"]));
        assert_eq!(n1.str_field("name_label"), "one");
        let n2 = store.get(class_ids::network, "OpaqueRef:n2").unwrap();
        assert_eq!(*n2.get(fields::network::VIFs), vifs(&[]));
    }

    /// Fields at their defaults are left out of the stored record and come back as they were:
    /// a reopened store holds every field as written, including one set back to its default.
    #[tokio::test]
    async fn fields_at_their_defaults_are_not_stored_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = default_object(class_ids::VM, "OpaqueRef:vm1");
        vm.set(fields::VM::uuid, Value::str("u-vm1"));
        vm.set(fields::VM::name_label, Value::str("web"));
        vm.set(fields::VM::memory_static_max, Value::Int(1 << 30));
        vm.set(
            fields::VM::power_state,
            crate::schema::enums::VmPowerState::Running.value(),
        );
        vm.set(
            fields::VM::other_config,
            Value::map(vec![(Value::str("k"), Value::str("v"))]),
        );
        {
            let store = Store::open(Some(dir.path())).unwrap();
            let mut described = vm.clone();
            described.set(fields::VM::name_description, Value::str("soon empty again"));
            store
                .write(|tx| {
                    tx.put(described);
                    Ok(())
                })
                .await
                .unwrap();
            store
                .write(|tx| {
                    tx.put(vm.clone());
                    Ok(())
                })
                .await
                .unwrap();
        }
        let db = open_db(&dir.path().join("xapid.redb")).unwrap();
        let stored = db.begin_read().unwrap().open_table(OBJECTS).unwrap();
        let text = std::str::from_utf8(stored.get("VM/OpaqueRef:vm1").unwrap().unwrap().value())
            .unwrap()
            .to_owned();
        assert!(text.contains("\"name_label\":\"web\""), "{text}");
        assert!(text.contains("\"power_state\":\"Running\""), "{text}");
        assert!(!text.contains("name_description"), "{text}");
        assert!(!text.contains("is_a_template"), "{text}");
        let full = {
            let mut t = String::new();
            crate::value::write_record_json(&vm, &mut t);
            t
        };
        assert!(
            text.len() * 4 < full.len(),
            "stored {} bytes, whole record {}",
            text.len(),
            full.len()
        );
        drop((stored, db));
        let store = Store::open(Some(dir.path())).unwrap();
        let back = store.get(class_ids::VM, "OpaqueRef:vm1").unwrap();
        assert_eq!(back.fields, vm.fields);
    }

    /// A write that changes only derived sets reaches no disk; any other change does, and a
    /// reopened store holds the last stored state with its sets rebuilt from the members.
    #[tokio::test]
    async fn changes_to_derived_sets_alone_are_not_written() {
        let net = network("OpaqueRef:n1", "u1", "one");
        let mut grown = net.clone();
        grown.set(
            fields::network::VIFs,
            Value::set(vec![Value::Ref("OpaqueRef:v1".into())]),
        );
        assert!(!stored_fields_differ(&net, &grown));
        assert!(!stored_fields_differ(&net, &net.clone()));
        let mut renamed = grown.clone();
        renamed.set(fields::network::name_label, Value::str("two"));
        assert!(stored_fields_differ(&grown, &renamed));
        assert!(stored_fields_differ(&net, &renamed));

        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(Some(dir.path())).unwrap();
            store
                .write(|tx| {
                    tx.put(net.clone());
                    Ok(())
                })
                .await
                .unwrap();
            let queued = |store: &Store, change: Object| {
                let tx = Tx {
                    store,
                    entries: vec![(class_ids::network, change.reference.clone(), Some(Arc::new(change)))],
                    index: HashMap::default(),
                };
                let mut generation = store.commit.lock();
                store.apply(&mut generation, tx, true).0.is_some()
            };
            assert!(
                !queued(&store, grown.clone()),
                "a derived-set change was queued for the disk"
            );
            assert!(
                queued(&store, renamed.clone()),
                "a stored change was not queued for the disk"
            );
        }
        let store = Store::open(Some(dir.path())).unwrap();
        let n1 = store.get(class_ids::network, "OpaqueRef:n1").unwrap();
        assert_eq!(n1.str_field("name_label"), "two");
        assert_eq!(*n1.get(fields::network::VIFs), Value::set(vec![]));
    }

    #[test]
    fn derived_sets_are_the_many_ends_of_one_to_many_relations() {
        use crate::schema::derived_sets;
        assert!(derived_sets(class_ids::SR).contains(&fields::SR::VDIs));
        assert!(derived_sets(class_ids::network).contains(&fields::network::VIFs));
        assert!(derived_sets(class_ids::VM).contains(&fields::VM::VBDs));
        assert!(derived_sets(class_ids::host).contains(&fields::host::resident_VMs));
        // The "one" ends stay stored.
        assert!(!derived_sets(class_ids::VDI).contains(&fields::VDI::SR));
        assert!(derived_sets(class_ids::VIF).is_empty());
    }

    #[tokio::test]
    async fn failed_transactions_change_nothing() {
        let store = Store::open(None).unwrap();
        let r: Result<(), ApiError> = store
            .write(|tx| {
                tx.put(network("OpaqueRef:n1", "u1", "x"));
                Err(ApiError::internal("no"))
            })
            .await;
        assert!(r.is_err());
        assert!(store.get(class_ids::network, "OpaqueRef:n1").is_none());
        assert_eq!(store.events().latest(), 0);
    }

    #[tokio::test]
    async fn refs_and_uuids_follow_changes() {
        let store = Store::open(None).unwrap();
        store
            .write(|tx| {
                tx.put(network("OpaqueRef:n1", "u1", "one"));
                tx.put(network("OpaqueRef:n2", "u2", "two"));
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.count(class_ids::network), 2);
        store
            .write(|tx| {
                tx.modify(class_ids::network, "OpaqueRef:n1", |o| {
                    o.set(fields::network::uuid, Value::str("u3"))
                })
            })
            .await
            .unwrap();
        assert_eq!(store.ref_by_uuid(class_ids::network, "u1"), None);
        assert_eq!(
            store.ref_by_uuid(class_ids::network, "u3").as_deref(),
            Some("OpaqueRef:n1")
        );
        assert_eq!(
            store.get(class_ids::network, "OpaqueRef:n1").unwrap().str_field("uuid"),
            "u3"
        );
        store
            .write(|tx| {
                tx.delete(class_ids::network, "OpaqueRef:n2");
                Ok(())
            })
            .await
            .unwrap();
        assert!(store.get(class_ids::network, "OpaqueRef:n2").is_none());
        assert_eq!(store.ref_by_uuid(class_ids::network, "u2"), None);
        let all = store.all(class_ids::network);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].reference, "OpaqueRef:n1");
        // A replaced object is the one found by both ref and uuid.
        store
            .write(|tx| {
                tx.put(network("OpaqueRef:n1", "u3", "renamed"));
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .get(class_ids::network, "OpaqueRef:n1")
                .unwrap()
                .str_field("name_label"),
            "renamed"
        );
        assert_eq!(
            store.ref_by_uuid(class_ids::network, "u3").as_deref(),
            Some("OpaqueRef:n1")
        );
    }

    #[test]
    fn undo_puts_back_refs_and_uuids() {
        let store = Store::open(None).unwrap();
        let mut generation = 0;
        let mut tx = Tx {
            store: &store,
            entries: Vec::new(),
            index: HashMap::default(),
        };
        tx.put(network("OpaqueRef:n1", "u1", "one"));
        let (_, undo) = store.apply(&mut generation, tx, false);
        let mut tx = Tx {
            store: &store,
            entries: Vec::new(),
            index: HashMap::default(),
        };
        tx.put(network("OpaqueRef:n1", "u9", "changed"));
        tx.put(network("OpaqueRef:n2", "u2", "two"));
        let (_, undo2) = store.apply(&mut generation, tx, false);
        assert_eq!(
            store.ref_by_uuid(class_ids::network, "u9").as_deref(),
            Some("OpaqueRef:n1")
        );
        store.undo(undo2);
        assert_eq!(
            store
                .get(class_ids::network, "OpaqueRef:n1")
                .unwrap()
                .str_field("name_label"),
            "one"
        );
        assert!(store.get(class_ids::network, "OpaqueRef:n2").is_none());
        assert_eq!(
            store.ref_by_uuid(class_ids::network, "u1").as_deref(),
            Some("OpaqueRef:n1")
        );
        assert_eq!(store.ref_by_uuid(class_ids::network, "u9"), None);
        assert_eq!(store.ref_by_uuid(class_ids::network, "u2"), None);
        store.undo(undo);
        assert_eq!(store.count(class_ids::network), 0);
        assert_eq!(store.ref_by_uuid(class_ids::network, "u1"), None);
    }
}
