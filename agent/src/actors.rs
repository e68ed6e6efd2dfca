//! One actix actor per object with a lifecycle (VM, VBD, VIF): its mailbox is the object's
//! lock. Operations on one object run one at a time; different objects run in parallel, each
//! actor on the arbiter (HTTP worker) that first needed it, or on a small pool of arbiters of
//! the registry's own. Reads never go through an actor.

use crate::error::ApiError;
use crate::lifecycle::{self, Operation};
use crate::schema::ClassId;
use crate::value::Value;
use crate::Agent;
use actix::prelude::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// A typed operation for the owning actor.
#[derive(Message)]
#[rtype(result = "Result<Value, ApiError>")]
pub struct Perform {
    /// What to do.
    pub op: Operation,
    /// Typed arguments after the object's ref.
    pub args: Vec<Value>,
}

/// The actor owning one object.
pub struct ObjectActor {
    class: ClassId,
    reference: String,
    agent: Weak<Agent>,
}

impl Actor for ObjectActor {
    type Context = Context<Self>;
}

impl Handler<Perform> for ObjectActor {
    type Result = AtomicResponse<Self, Result<Value, ApiError>>;

    fn handle(&mut self, msg: Perform, _ctx: &mut Context<Self>) -> Self::Result {
        let agent = self.agent.upgrade();
        let class = self.class;
        let reference = self.reference.clone();
        // AtomicResponse keeps the mailbox closed until the operation ends.
        AtomicResponse::new(Box::pin(
            async move {
                match agent {
                    Some(a) => lifecycle::perform(&a, class, &reference, msg.op, msg.args).await,
                    None => Err(ApiError::internal("the daemon is shutting down")),
                }
            }
            .into_actor(self),
        ))
    }
}

/// The live actors, by object.
pub struct Actors {
    arbiters: Vec<Arbiter>,
    next: AtomicUsize,
    /// Per class, by ref (looked up by `&str`, without building a key).
    addrs: Mutex<HashMap<ClassId, HashMap<String, Addr<ObjectActor>>>>,
}

impl Actors {
    /// A registry whose actors run on `threads` arbiters. Must be called inside an actix
    /// system.
    pub fn new(threads: usize) -> Actors {
        Actors {
            arbiters: (0..threads.max(1)).map(|_| Arbiter::new()).collect(),
            next: AtomicUsize::new(0),
            addrs: Mutex::new(HashMap::new()),
        }
    }

    /// The actor of an object, started on first use.
    pub fn of(&self, agent: &Arc<Agent>, class: ClassId, reference: &str) -> Addr<ObjectActor> {
        let mut all = self.addrs.lock();
        let addrs = all.entry(class).or_default();
        if let Some(a) = addrs.get(reference) {
            if a.connected() {
                return a.clone();
            }
        }
        let actor = ObjectActor {
            class,
            reference: reference.to_owned(),
            agent: Arc::downgrade(agent),
        };
        // The actor lives on the arbiter of the thread that first needs it (an HTTP worker:
        // a client's calls on one connection then reach the actor without a thread hop),
        // or on one of the registry's own arbiters when that thread has none.
        let home = Arbiter::try_current().unwrap_or_else(|| {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
            self.arbiters[i].handle()
        });
        let addr = ObjectActor::start_in_arbiter(&home, move |_| actor);
        addrs.insert(reference.to_owned(), addr.clone());
        addr
    }

    /// Forgets an object's actor (it stops once its queued work is done).
    pub fn remove(&self, class: ClassId, reference: &str) {
        if let Some(addrs) = self.addrs.lock().get_mut(&class) {
            addrs.remove(reference);
        }
    }

    /// How many actors are live.
    pub fn len(&self) -> usize {
        self.addrs.lock().values().map(HashMap::len).sum()
    }

    /// Whether no actor is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends an operation to an object's actor and waits for its result.
    pub async fn perform(
        &self,
        agent: &Arc<Agent>,
        class: ClassId,
        reference: &str,
        op: Operation,
        args: Vec<Value>,
    ) -> Result<Value, ApiError> {
        let addr = self.of(agent, class, reference);
        addr.send(Perform { op, args })
            .await
            .map_err(|e| ApiError::internal(format!("the {} actor is gone: {e}", class.name())))?
    }
}
