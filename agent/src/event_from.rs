//! `event.from` and `event.inject`: changes since a token, merged per object, with the
//! latest snapshot of each.

use crate::call::{Call, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::events::EventOp;
use crate::schema::class_ids;
use crate::schema::ClassId;
use crate::value::{Shared, Value, NULL_REF};
use crate::Agent;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// The `event` messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::event, "from", |agent, _, c| from(&agent, &c).await),
        entry!(class_ids::event, "register", |agent, _, c| {
            register(
                &agent,
                c.session_ref(),
                c.args.first().map(Value::as_set).unwrap_or(&[]),
            );
            Ok(Value::None)
        }),
        entry!(class_ids::event, "unregister", |agent, _, c| {
            unregister(
                &agent,
                c.session_ref(),
                c.args.first().map(Value::as_set).unwrap_or(&[]),
            );
            Ok(Value::None)
        }),
        entry!(class_ids::event, "next", |agent, _, c| next(&agent, c.session_ref())
            .await),
        entry!(class_ids::event, "get_current_id", |agent, _, _c| {
            Ok(Value::Int(agent.store.events().latest() as i64))
        }),
        entry!(class_ids::event, "inject", |agent, _, c| inject(&agent, &c).await),
    ]
}

/// The longest an `event.from` may wait, whatever the caller asks.
pub const MAX_TIMEOUT_SECS: f64 = 3600.0;

struct Subscription {
    all: bool,
    classes: HashSet<ClassId>,
    objects: HashSet<(ClassId, String)>,
}

impl Subscription {
    fn parse(list: &[Value]) -> Subscription {
        let mut s = Subscription {
            all: false,
            classes: HashSet::new(),
            objects: HashSet::new(),
        };
        for v in list {
            let Some(t) = v.as_str() else { continue };
            if t == "*" {
                s.all = true;
            } else if let Some((c, r)) = t.split_once('/') {
                if let Some(c) = ClassId::by_name(c) {
                    s.objects.insert((c, r.to_owned()));
                }
            } else if let Some(c) = ClassId::by_name(t) {
                s.classes.insert(c);
            }
        }
        s
    }
    fn wants(&self, c: ClassId, r: &str) -> bool {
        self.all || self.classes.contains(&c) || self.objects.contains(&(c, r.to_owned()))
    }
    /// The subscription in one canonical text (the same for the same classes and objects in
    /// any order), to recognise callers waiting on the same thing.
    fn key(&self) -> String {
        if self.all {
            return "*".to_owned();
        }
        let mut parts: Vec<String> = self
            .classes
            .iter()
            .map(|c| c.name().to_owned())
            .chain(self.objects.iter().map(|(c, r)| format!("{}/{r}", c.name())))
            .collect();
        parts.sort_unstable();
        parts.join(",")
    }
    fn classes(&self) -> Vec<ClassId> {
        if self.all {
            return ClassId::all().collect();
        }
        let mut v: Vec<ClassId> = self
            .classes
            .iter()
            .copied()
            .chain(self.objects.iter().map(|(c, _)| *c))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

fn parse_token(t: &str) -> Result<u64, ApiError> {
    if t.is_empty() {
        return Ok(0);
    }
    t.split(',')
        .next()
        .and_then(|x| x.trim().parse().ok())
        .ok_or_else(|| ApiError::EventFromTokenParseFailure { token: t.to_owned() })
}

fn token(id: u64) -> String {
    format!("{id:020}")
}

/// `event.from(classes, token, timeout)`.
pub async fn from(agent: &Arc<Agent>, c: &Call) -> Result<Value, ApiError> {
    let subs = Subscription::parse(c.args.first().map(Value::as_set).unwrap_or(&[]));
    let since = parse_token(c.args.get(1).and_then(Value::as_str).unwrap_or(""))?;
    let timeout = match c.args.get(2) {
        Some(Value::Float(f)) if f.is_finite() && *f > 0.0 => f.min(MAX_TIMEOUT_SECS),
        _ => 0.0,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(timeout);
    let key = subs.key();
    let mut rx = agent.store.events().subscribe();
    loop {
        let latest = *rx.borrow_and_update();
        if let Some(shared) = agent.event_batches.get(since, latest, &key) {
            return Ok(shared);
        }
        let changes = collect(agent, &subs, since, latest);
        if !changes.is_empty() && changes.len() <= BatchCache::MAX_EVENTS {
            let shared = Value::Shared(Arc::new(Shared::new(batch(agent, &subs, changes, latest.max(since)))));
            agent.event_batches.put(since, latest, key, shared.clone());
            return Ok(shared);
        }
        if !changes.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(batch(agent, &subs, changes, latest.max(since)));
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => {
                let latest = agent.store.events().latest();
                let changes = collect(agent, &subs, since, latest);
                return Ok(batch(agent, &subs, changes, latest.max(since)));
            }
        }
    }
}

/// Recent `event.from` batches. Callers waiting on the same subscription from the same token
/// get the same batch when the log moves: it is built and encoded once (as a
/// [`Value::Shared`]) instead of once per caller. A batch holds the objects' state as of its
/// building, which covers every change up to its token, as a batch built for each caller would.
#[derive(Default)]
pub struct BatchCache {
    recent: parking_lot::Mutex<VecDeque<CachedBatch>>,
}

struct CachedBatch {
    since: u64,
    latest: u64,
    subscription: String,
    batch: Value,
}

impl BatchCache {
    /// Batches kept.
    const KEPT: usize = 4;
    /// Larger batches (a first call's dump of every object, say) are built per caller and
    /// not kept.
    const MAX_EVENTS: usize = 256;

    fn get(&self, since: u64, latest: u64, subscription: &str) -> Option<Value> {
        self.recent
            .lock()
            .iter()
            .find(|b| b.since == since && b.latest == latest && b.subscription == subscription)
            .map(|b| b.batch.clone())
    }

    fn put(&self, since: u64, latest: u64, subscription: String, batch: Value) {
        let mut recent = self.recent.lock();
        if recent.len() >= Self::KEPT {
            recent.pop_front();
        }
        recent.push_back(CachedBatch {
            since,
            latest,
            subscription,
            batch,
        });
    }
}

struct Change {
    class: ClassId,
    reference: String,
    op: EventOp,
    id: u64,
    time: i64,
}

/// Changes after `since`, merged: one per object, in order of their last change.
fn collect(agent: &Agent, subs: &Subscription, since: u64, latest: u64) -> Vec<Change> {
    if latest <= since && since != 0 {
        return Vec::new();
    }
    let log = if since == 0 {
        None
    } else {
        agent.store.events().since(since)
    };
    match log {
        Some(entries) => {
            let mut merged: HashMap<(ClassId, String), Change> = HashMap::new();
            for e in entries {
                if !subs.wants(e.class, &e.reference) {
                    continue;
                }
                let key = (e.class, e.reference.clone());
                let op = match (merged.get(&key).map(|c| c.op), e.op) {
                    (Some(EventOp::Add), EventOp::Mod) => EventOp::Add,
                    (_, op) => op,
                };
                merged.insert(
                    key,
                    Change {
                        class: e.class,
                        reference: e.reference,
                        op,
                        id: e.id,
                        time: e.time,
                    },
                );
            }
            let mut v: Vec<Change> = merged.into_values().collect();
            v.sort_by_key(|c| c.id);
            v
        }
        None => {
            // The caller is new or the log no longer reaches back: every live object.
            let mut v = Vec::new();
            for class in subs.classes() {
                for o in agent.store.all(class) {
                    if o.generation > since || since == 0 {
                        if !subs.wants(class, &o.reference) {
                            continue;
                        }
                        v.push(Change {
                            class,
                            reference: o.reference.clone(),
                            op: if since == 0 { EventOp::Add } else { EventOp::Mod },
                            id: o.generation,
                            time: crate::value::now(),
                        });
                    }
                }
            }
            v.sort_by_key(|c| c.id);
            v
        }
    }
}

fn batch(agent: &Agent, subs: &Subscription, changes: Vec<Change>, latest: u64) -> Value {
    let mut events = Vec::with_capacity(changes.len());
    for ch in changes {
        let snapshot = agent.store.get(ch.class, &ch.reference);
        // An object changed and then destroyed within the window is reported as deleted.
        let op = if snapshot.is_none() { EventOp::Del } else { ch.op };
        let mut ev = vec![
            ("id".to_owned(), Value::Int(ch.id as i64)),
            ("timestamp".to_owned(), Value::str(format!("{}.000", ch.time))),
            ("class".to_owned(), Value::str(ch.class.name().to_ascii_lowercase())),
            ("operation".to_owned(), Value::str(op.as_str())),
            ("ref".to_owned(), Value::reference(ch.reference.as_str())),
        ];
        if let Some(s) = snapshot {
            ev.push(("snapshot".to_owned(), Value::Record(s)));
        }
        events.push(Value::Struct(ev.into()));
    }
    let counts = subs
        .classes()
        .into_iter()
        .map(|c| {
            (
                Value::str(c.name().to_ascii_lowercase()),
                Value::Int32(i32::try_from(agent.store.count(c)).unwrap_or(i32::MAX)),
            )
        })
        .collect();
    Value::Struct(
        vec![
            ("events".to_owned(), Value::set(events)),
            ("valid_ref_counts".to_owned(), Value::Map(counts)),
            ("token".to_owned(), Value::str(token(latest))),
        ]
        .into(),
    )
}

/// `event.inject(class, ref)`: a `mod` event for the object without changing it.
pub async fn inject(agent: &Arc<Agent>, c: &Call) -> Result<Value, ApiError> {
    let class_name = c.args.first().and_then(Value::as_str).unwrap_or("");
    let r = c.args.get(1).and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
    let invalid = || ApiError::handle_invalid(class_name, &r);
    let class = ClassId::by_name(class_name).ok_or_else(invalid)?;
    let generation = agent
        .store
        .write(|tx| {
            let o = tx.get(class, &r).ok_or_else(invalid)?;
            tx.put((*o).clone());
            Ok(())
        })
        .await
        .map(|()| agent.store.get(class, &r).map_or(0, |o| o.generation))?;
    // The token just before the touch (the reference's `generation - 1`): `event.from` with
    // it reports the injected object at once, whatever else happens meanwhile.
    Ok(Value::str(token(generation.saturating_sub(1))))
}

/// Legacy `event.register`/`event.next` subscriptions, by session.
#[derive(Default)]
pub struct Registrations {
    by_session: parking_lot::Mutex<HashMap<String, (Vec<Value>, u64)>>,
}

/// `event.register(classes)`: adds classes to the session's subscription.
pub fn register(agent: &Agent, session: &str, classes: &[Value]) {
    let mut regs = agent.registrations.by_session.lock();
    let latest = agent.store.events().latest();
    let entry = regs.entry(session.to_owned()).or_insert_with(|| (Vec::new(), latest));
    for c in classes {
        if !entry.0.contains(c) {
            entry.0.push(c.clone());
        }
    }
}

/// `event.unregister(classes)`: removes classes from the session's subscription.
pub fn unregister(agent: &Agent, session: &str, classes: &[Value]) {
    let mut regs = agent.registrations.by_session.lock();
    if let Some(entry) = regs.get_mut(session) {
        entry.0.retain(|c| !classes.contains(c));
    }
}

/// `event.next()`: blocks until the session's subscribed classes change, then returns the
/// events (not merged: one per change), or `EVENTS_LOST` when the log has moved past them.
pub async fn next(agent: &Arc<Agent>, session: &str) -> Result<Value, ApiError> {
    let (classes, mut since) = agent
        .registrations
        .by_session
        .lock()
        .get(session)
        .cloned()
        .ok_or_else(|| ApiError::SessionNotRegistered {
            handle: crate::sessions::trackid(session),
        })?;
    let subs = Subscription::parse(&classes);
    let mut rx = agent.store.events().subscribe();
    loop {
        let entries = agent.store.events().since(since).ok_or(ApiError::EventsLost {})?;
        let seen = entries.last().map_or(since, |e| e.id);
        let wanted: Vec<_> = entries
            .into_iter()
            .filter(|e| subs.wants(e.class, &e.reference))
            .collect();
        if let Some(last) = wanted.last().map(|e| e.id) {
            let mut out = Vec::with_capacity(wanted.len());
            for e in wanted {
                let mut ev = vec![
                    ("id".to_owned(), Value::Int(e.id as i64)),
                    ("timestamp".to_owned(), Value::DateTime(e.time)),
                    ("class".to_owned(), Value::str(e.class.name().to_ascii_lowercase())),
                    ("operation".to_owned(), Value::str(e.op.as_str())),
                    ("ref".to_owned(), Value::reference(e.reference.as_str())),
                    ("obj_uuid".to_owned(), Value::str(e.uuid.clone())),
                ];
                if e.op != EventOp::Del {
                    if let Some(s) = agent.store.get(e.class, &e.reference) {
                        ev.push(("snapshot".to_owned(), Value::Record(s)));
                    }
                }
                out.push(Value::Struct(ev.into()));
            }
            if let Some(entry) = agent.registrations.by_session.lock().get_mut(session) {
                entry.1 = last;
            }
            return Ok(Value::set(out));
        }
        // Nothing for this session yet: move past what it does not watch.
        since = seen;
        if let Some(entry) = agent.registrations.by_session.lock().get_mut(session) {
            entry.1 = since;
        }
        if tokio::time::timeout(Duration::from_secs_f64(MAX_TIMEOUT_SECS), rx.changed())
            .await
            .is_err()
        {
            return Ok(Value::set(Vec::new()));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::tests::env;
    use crate::value::Value;
    use serde_json::json;

    fn token_of(v: &Value) -> String {
        match v {
            Value::Shared(s) => token_of(s.value()),
            Value::Struct(m) => m
                .iter()
                .find(|(k, _)| k == "token")
                .and_then(|(_, t)| t.as_str())
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        }
    }

    #[actix::test]
    async fn callers_waiting_on_the_same_thing_share_one_batch() {
        let e = env().await;
        let start = e.ok("event.from", vec![json!(["vm"]), json!(""), json!(0.0)]).await;
        let token = token_of(&start);
        let vm = e.ok("VM.get_all", vec![]).await.as_set()[0]
            .as_str()
            .unwrap()
            .to_owned();
        let wait = |classes: serde_json::Value| e.call("event.from", vec![classes, json!(token), json!(2.0)]);
        let write = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            e.ok("VM.set_name_description", vec![json!(vm), json!("shared")]).await;
        };
        // The later caller below asks as soon as the shared batch is out, while the `host`
        // subscription still waits: the fewer writes of the daemon's own (metrics, guest
        // agents) can land in between and move the log on.
        let vm_side = async {
            let (a, b, ()) = tokio::join!(wait(json!(["vm"])), wait(json!(["vm"])), write);
            let again = e.ok("event.from", vec![json!(["vm"]), json!(token), json!(0.0)]).await;
            (a, b, again)
        };
        let ((a, b, again), c) = tokio::join!(vm_side, wait(json!(["host"])));
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        let (Value::Shared(sa), Value::Shared(sb)) = (&a, &b) else {
            panic!("a non-empty batch is shared: {a:?}");
        };
        assert!(
            std::sync::Arc::ptr_eq(sa, sb),
            "the same subscription and token get one batch"
        );
        let fragment = sa.json();
        assert!(fragment.contains("\"shared\"") && fragment.contains(&vm), "{fragment}");
        // Another subscription from the same token is another batch (nothing happened to hosts:
        // that call waited out its timeout and got an empty batch of its own).
        assert!(!matches!(c, Value::Shared(_)), "{c:?}");
        assert!(c.map_get("events").is_none_or(|v| v.as_set().is_empty()));
        // What a later caller from the same token gets encodes as the shared batch does, unless
        // the log moved on in between (a write of the daemon's own): then it is a new batch
        // holding the shared change too.
        if token_of(&again) != token_of(&a) {
            let mut json = String::new();
            crate::value::write_json(&again, &mut json);
            assert!(json.contains("\"shared\"") && json.contains(&vm), "{json}");
            return;
        }
        assert_eq!(crate::xml::value_fragment(&again), sa.xml());
        let mut json = String::new();
        crate::value::write_json(&again, &mut json);
        assert_eq!(json, sa.json());
    }
}
