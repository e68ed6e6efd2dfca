//! The in-memory event log: every committed change appends `(id, class, ref, op)`.
//!
//! `event.from` waits on the log's watch channel until it passes the caller's token, so
//! thousands of waiting calls are futures, not threads.

use crate::schema::ClassId;
use parking_lot::Mutex;
use std::collections::VecDeque;
use tokio::sync::watch;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOp {
    /// Created.
    Add,
    /// Changed.
    Mod,
    /// Destroyed.
    Del,
}

impl EventOp {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventOp::Add => "add",
            EventOp::Mod => "mod",
            EventOp::Del => "del",
        }
    }
}

/// One logged change.
#[derive(Clone, Debug)]
pub struct EventEntry {
    /// Generation of the change (strictly increasing).
    pub id: u64,
    /// Class of the object.
    pub class: ClassId,
    /// The object's ref.
    pub reference: String,
    /// The object's uuid, where it has one (kept for `del`).
    pub uuid: String,
    /// What happened.
    pub op: EventOp,
    /// When (seconds since the epoch).
    pub time: i64,
}

/// A bounded log of recent changes.
pub struct EventLog {
    entries: Mutex<VecDeque<EventEntry>>,
    latest: watch::Sender<u64>,
    capacity: usize,
}

impl EventLog {
    /// A log keeping at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        let (latest, _) = watch::channel(0);
        EventLog {
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            latest,
            capacity,
        }
    }

    /// Appends entries (in id order) and wakes every waiter once.
    pub fn append(&self, batch: Vec<EventEntry>) {
        let Some(last) = batch.last().map(|e| e.id) else {
            return;
        };
        {
            let mut q = self.entries.lock();
            for e in batch {
                if q.len() >= self.capacity {
                    q.pop_front();
                }
                q.push_back(e);
            }
        }
        self.latest.send_replace(last);
    }

    /// The id of the newest entry.
    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    /// A receiver that changes whenever the log grows.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Entries with id greater than `since`, or `None` when the log no longer reaches back
    /// that far (the caller must resynchronise from the store).
    pub fn since(&self, since: u64) -> Option<Vec<EventEntry>> {
        let q = self.entries.lock();
        if let Some(first) = q.front() {
            if first.id > since + 1 {
                return None;
            }
        }
        let start = q.partition_point(|e| e.id <= since);
        Some(q.iter().skip(start).cloned().collect())
    }
}
