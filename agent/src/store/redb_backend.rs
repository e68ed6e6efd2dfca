//! The one-host backend: every persistent class in one redb file, written by one thread that
//! drains every queued transaction into one commit (group commit), so concurrent writers share
//! one fsync.

use super::StoreError;
use crate::schema::derived_sets;
use crate::value::{write_stored_record_json, Object};
use redb::{ReadableTable, TableDefinition};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;

pub(super) const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

/// The file in the state dir.
pub(super) const FILE: &str = "xapid.redb";

pub(super) enum DiskOp {
    /// The object as committed; the writer thread serializes it, off the callers' path.
    Put(String, Arc<Object>),
    Delete(String),
}

struct Batch {
    ops: Vec<DiskOp>,
    ack: oneshot::Sender<Result<(), String>>,
}

/// The writer thread and its queue.
pub(super) struct Writer {
    queue: Option<crossbeam_channel::Sender<Batch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and release the database.
        self.queue = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Writer {
    /// Opens the database in `dir`, hands every stored `(key, record)` to `each`, then starts
    /// the writer thread.
    pub(super) fn open(
        dir: &Path,
        mut each: impl FnMut(&str, &[u8]) -> Result<(), StoreError>,
    ) -> Result<Writer, StoreError> {
        let path = dir.join(FILE);
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
                        each(k.value(), v.value())?;
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(open_err(Box::new(e))),
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer_path, db, rx))
            .map_err(|e| open_err(Box::new(e)))?;
        Ok(Writer {
            queue: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `ops` for the next commit; the receiver answers once they are on disk.
    pub(super) fn submit(&self, ops: Vec<DiskOp>) -> oneshot::Receiver<Result<(), String>> {
        let (ack, rx) = oneshot::channel();
        let sent = self.queue.as_ref().map(|q| q.send(Batch { ops, ack }));
        if !matches!(sent, Some(Ok(()))) {
            // The dropped sender answers the receiver with an error.
            tracing::error!("the store writer has stopped");
        }
        rx
    }
}

pub(super) fn open_db(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    // The store reads everything into memory at start; redb's own cache only needs to cover
    // the pages a commit touches (the b-tree's branch pages and a group commit's leaves), and
    // records are small since the derived sets stay off the disk. redb fills whatever cache
    // it is given (loading at start, and every committed page), so all of it is resident:
    // 1 MiB instead of 4 took 3-4 MiB off the daemon with 1,000 VMs (BENCHMARKS.md).
    redb::Database::builder().set_cache_size(1 << 20).create(path)
}

fn writer_loop(path: PathBuf, db: redb::Database, rx: crossbeam_channel::Receiver<Batch>) {
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
