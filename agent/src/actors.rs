//! One queue per object with a lifecycle (VM, VBD, VIF): operations on one object run one at a
//! time, in the order they arrived; different objects run in parallel. Reads never queue.
//!
//! An operation runs as its own task, behind the object's fair lock, on the runtime of the
//! caller: the HTTP workers' runtimes are single-threaded, so on the thread that received the
//! call, with no hand-off to another thread and back. Being its own task, it runs to the end
//! even if the caller goes away (a client that disconnects), as it would in an actor's mailbox.

use crate::error::ApiError;
use crate::lifecycle::{self, Operation};
use crate::schema::ClassId;
use crate::value::Value;
use crate::Agent;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The queue of one object: a fair (first come, first served) lock.
type Queue = Arc<tokio::sync::Mutex<()>>;

/// The live queues, by object.
pub struct Actors {
    queues: Mutex<HashMap<(ClassId, String), Queue>>,
}

impl Actors {
    /// A registry of per-object queues. (`_threads` is kept for callers that size a pool:
    /// operations now run on the thread that received them.)
    pub fn new(_threads: usize) -> Actors {
        Actors {
            queues: Mutex::new(HashMap::new()),
        }
    }

    fn queue(&self, class: ClassId, reference: &str) -> Queue {
        self.queues
            .lock()
            .entry((class, reference.to_owned()))
            .or_default()
            .clone()
    }

    /// Forgets an object's queue (operations already queued on it still run).
    pub fn remove(&self, class: ClassId, reference: &str) {
        self.queues.lock().remove(&(class, reference.to_owned()));
    }

    /// How many objects have a queue.
    pub fn len(&self) -> usize {
        self.queues.lock().len()
    }

    /// Whether no object has a queue.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues an operation on an object and waits for its result.
    pub async fn perform(
        &self,
        agent: &Arc<Agent>,
        class: ClassId,
        reference: &str,
        op: Operation,
        args: Vec<Value>,
    ) -> Result<Value, ApiError> {
        let queue = self.queue(class, reference);
        let agent = Arc::clone(agent);
        let reference = reference.to_owned();
        let task = tokio::spawn(async move {
            let _turn = queue.lock().await;
            lifecycle::perform(&agent, class, &reference, op, args).await
        });
        task.await
            .map_err(|e| ApiError::internal(format!("a {} operation did not finish: {e}", class.name())))?
    }
}
