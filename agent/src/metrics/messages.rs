//! The `message` class: alerts about objects, with the reference's messages and semantics
//! (its `xapi_message`). Messages are objects of the store, so `event.from` on class
//! `message` sees them come and go, and they outlive restarts as the reference's files do.
//! At most [`MESSAGE_LIMIT`] are kept: every 30 s the oldest beyond it are destroyed.

use crate::call::{Call, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::objects::{new_ref, new_uuid};
use crate::schema::enums::Cls;
use crate::schema::{class_ids, fields, ClassId};
use crate::value::{default_object, now, Object, Value};
use crate::Agent;
use std::sync::Arc;

/// The most messages kept (the reference's default `message_limit`).
pub const MESSAGE_LIMIT: usize = 10_000;

/// The `message` messages carried out here.
pub fn entries() -> Vec<Entry> {
    vec![
        entry!(class_ids::message, "create", |agent, _, c| {
            let cls = cls_arg(&c, 2)?;
            create(&agent, c.str_arg(0), c.int_arg(1), cls, c.str_arg(3), c.str_arg(4))
                .await
                .map(Value::reference)
        }),
        entry!(class_ids::message, "get", |agent, _, c| {
            let cls = cls_arg(&c, 0)?;
            let obj_uuid = c.str_arg(1);
            let since = datetime_arg(&c, 2);
            if !object_exists(&agent, cls, obj_uuid) {
                // The reference names nothing here (UUID_INVALID without parameters); the
                // error type needs both.
                return Err(ApiError::UuidInvalid {
                    r#type: cls.name().to_owned(),
                    uuid: obj_uuid.to_owned(),
                });
            }
            Ok(records(&agent, |m| {
                m.get(fields::message::cls) == &cls.value()
                    && m.str_field("obj_uuid") == obj_uuid
                    && timestamp(m) > since
            }))
        }),
        entry!(class_ids::message, "get_since", |agent, _, c| {
            let since = datetime_arg(&c, 0);
            // The reference compares the message's time to the second fractions it was made
            // in (`> since`); the record keeps whole seconds, so a message of the same second
            // counts.
            Ok(records(&agent, |m| timestamp(m) >= since))
        }),
        entry!(class_ids::message, "get_all", |agent, _, _c| {
            Ok(Value::Set(
                sorted(&agent)
                    .iter()
                    .map(|m| Value::reference(m.reference.as_str()))
                    .collect(),
            ))
        }),
        entry!(class_ids::message, "get_all_records", |agent, _, _c| {
            Ok(records(&agent, |_| true))
        }),
        entry!(class_ids::message, "get_all_records_where", |agent, _, c| {
            let expr = c.str_arg(0);
            let e =
                crate::query::parse(expr).map_err(|why| ApiError::invalid_value("expr", format!("{expr}: {why}")))?;
            Ok(records(&agent, |m| crate::query::matches(&e, m)))
        }),
        entry!(class_ids::message, "get_by_uuid", |agent, _, c| {
            let u = c.str_arg(0);
            agent
                .store
                .ref_by_uuid(class_ids::message, u)
                .map(Value::reference)
                .ok_or_else(|| ApiError::UuidInvalid {
                    r#type: "message".into(),
                    uuid: u.to_owned(),
                })
        }),
        entry!(class_ids::message, "get_record", |agent, _, c| {
            let r = c.str_arg(0);
            agent
                .store
                .get(class_ids::message, r)
                .map(Value::Record)
                .ok_or_else(|| ApiError::handle_invalid("message", r))
        }),
        entry!(class_ids::message, "destroy", |agent, _, c| {
            destroy(&agent, &[c.str_arg(0).to_owned()]).await.map(|_| Value::None)
        }),
        entry!(class_ids::message, "destroy_many", |agent, _, c| {
            let refs: Vec<String> = c
                .arg(0)
                .as_set()
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            destroy(&agent, &refs).await.map(|_| Value::None)
        }),
    ]
}

fn cls_arg(c: &Call, i: usize) -> Result<Cls, ApiError> {
    let v = c.arg(i);
    let s = v.as_str().unwrap_or("");
    Cls::parse(s).ok_or_else(|| ApiError::invalid_value("cls", s))
}

fn datetime_arg(c: &Call, i: usize) -> i64 {
    match c.arg(i) {
        Value::DateTime(t) => t,
        v => v
            .as_str()
            .and_then(crate::value::parse_datetime)
            .or_else(|| v.as_int())
            .unwrap_or(0),
    }
}

fn timestamp(m: &Object) -> i64 {
    match m.get(fields::message::timestamp) {
        Value::DateTime(t) => *t,
        _ => 0,
    }
}

/// The class a message's `cls` names.
fn class_of(cls: Cls) -> Option<ClassId> {
    let name = match cls {
        Cls::Host => "host",
        Cls::Pool => "pool",
        other => other.name(),
    };
    ClassId::by_name(name)
}

/// Whether the object of class `cls` with uuid `uuid` exists.
pub(crate) fn object_exists(agent: &Agent, cls: Cls, uuid: &str) -> bool {
    class_of(cls).is_some_and(|c| agent.store.ref_by_uuid(c, uuid).is_some())
}

/// Every message, newest first (by the order they were made, then by time).
fn sorted(agent: &Agent) -> Vec<Arc<Object>> {
    let mut all = agent.store.all(class_ids::message);
    all.sort_by(|a, b| {
        b.generation
            .cmp(&a.generation)
            .then_with(|| timestamp(b).cmp(&timestamp(a)))
    });
    all
}

fn records(agent: &Agent, keep: impl Fn(&Object) -> bool) -> Value {
    Value::Map(
        sorted(agent)
            .into_iter()
            .filter(|m| keep(m))
            .map(|m| (Value::reference(m.reference.as_str()), Value::Record(m)))
            .collect(),
    )
}

/// Makes a message about the object of class `cls` with uuid `obj_uuid`
/// (`UUID_INVALID [cls, obj_uuid]` if there is none). Returns its ref.
pub async fn create(
    agent: &Agent,
    name: &str,
    priority: i64,
    cls: Cls,
    obj_uuid: &str,
    body: &str,
) -> Result<String, ApiError> {
    if !object_exists(agent, cls, obj_uuid) {
        return Err(ApiError::UuidInvalid {
            r#type: cls.name().to_owned(),
            uuid: obj_uuid.to_owned(),
        });
    }
    let r = new_ref();
    let mut m = default_object(class_ids::message, &r);
    m.set(fields::message::uuid, Value::str(new_uuid()));
    m.set(fields::message::name, Value::str(name));
    m.set(fields::message::priority, Value::Int(priority));
    m.set(fields::message::cls, cls.value());
    m.set(fields::message::obj_uuid, Value::str(obj_uuid));
    m.set(fields::message::timestamp, Value::DateTime(now()));
    m.set(fields::message::body, Value::str(body));
    agent
        .store
        .write(|tx| {
            tx.put(m.clone());
            Ok(())
        })
        .await?;
    tracing::debug!(name, priority, cls = cls.name(), obj_uuid, "message created");
    Ok(r)
}

/// Destroys messages in order; the first that does not exist stops it with
/// `HANDLE_INVALID [message, ref]` (those before it are gone).
pub async fn destroy(agent: &Agent, refs: &[String]) -> Result<(), ApiError> {
    for r in refs {
        agent
            .store
            .write(|tx| {
                if tx.get(class_ids::message, r).is_none() {
                    return Err(ApiError::handle_invalid("message", r));
                }
                tx.delete(class_ids::message, r);
                Ok(())
            })
            .await?;
    }
    Ok(())
}

/// Destroys the oldest messages beyond `limit`; how many went.
pub async fn gc(agent: &Agent, limit: usize) -> usize {
    let all = agent.store.all(class_ids::message);
    if all.len() <= limit {
        return 0;
    }
    tracing::warn!(limit, count = all.len(), "messages have reached over the limit");
    let mut by_age: Vec<(i64, u64, String)> = all
        .iter()
        .map(|m| (timestamp(m), m.generation, m.reference.clone()))
        .collect();
    by_age.sort();
    let extra = by_age.len() - limit;
    let doomed: Vec<String> = by_age.into_iter().take(extra).map(|(_, _, r)| r).collect();
    let n = doomed.len();
    let r = agent
        .store
        .write(|tx| {
            for r in &doomed {
                tx.delete(class_ids::message, r);
            }
            Ok(())
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "destroying old messages");
        return 0;
    }
    n
}

#[cfg(test)]
mod tests {
    use crate::schema::class_ids;
    use crate::storage::tests::env;
    use crate::value::Value;
    use serde_json::json;

    fn text(v: &Value) -> String {
        v.as_str().unwrap().to_owned()
    }

    #[actix::test]
    async fn create_get_destroy_with_the_references_errors() {
        let e = env().await;
        let host = e.agent.host.clone();
        let host_uuid = e.agent.uuid_of(class_ids::host, &host).unwrap();
        let m = text(
            &e.ok(
                "message.create",
                vec![
                    json!("ALARM"),
                    json!("3"),
                    json!("Host"),
                    json!(host_uuid),
                    json!("body"),
                ],
            )
            .await,
        );
        let rec = e.ok("message.get_record", vec![json!(m)]).await;
        let Value::Record(r) = rec else { panic!() };
        assert_eq!(r.str_field("name"), "ALARM");
        assert_eq!(r.str_field("obj_uuid"), host_uuid);
        assert_eq!(*r.get(crate::schema::fields::message::priority), Value::Int(3));
        assert_eq!(
            *r.get(crate::schema::fields::message::cls),
            crate::schema::enums::Cls::Host.value()
        );
        let uuid = r.str_field("uuid").to_owned();
        assert_eq!(text(&e.ok("message.get_by_uuid", vec![json!(uuid)]).await), m);
        // An object that does not exist: UUID_INVALID [cls, uuid].
        let err = e
            .call(
                "message.create",
                vec![json!("X"), json!("1"), json!("VM"), json!("no-such-vm"), json!("")],
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "UUID_INVALID");
        assert_eq!(err.params(), ["VM", "no-such-vm"]);
        // get: by class and object, newer than the time given.
        let got = e
            .ok(
                "message.get",
                vec![json!("Host"), json!(host_uuid), json!("19700101T00:00:00Z")],
            )
            .await;
        assert_eq!(got.as_map().len(), 1);
        let later = e
            .ok(
                "message.get",
                vec![json!("Host"), json!(host_uuid), json!("20990101T00:00:00Z")],
            )
            .await;
        assert!(later.as_map().is_empty());
        assert_eq!(
            e.call(
                "message.get",
                vec![json!("VM"), json!("nope"), json!("19700101T00:00:00Z")]
            )
            .await
            .unwrap_err()
            .code(),
            "UUID_INVALID"
        );
        // get_since counts a message of the very second asked for.
        let ts = crate::value::format_datetime(crate::value::now());
        assert_eq!(e.ok("message.get_since", vec![json!(ts)]).await.as_map().len(), 1);
        let m2 = text(
            &e.ok(
                "message.create",
                vec![json!("SECOND"), json!("5"), json!("Host"), json!(host_uuid), json!("")],
            )
            .await,
        );
        let all = e.ok("message.get_all_records", vec![]).await;
        let keys: Vec<String> = all.as_map().iter().map(|(k, _)| text(k)).collect();
        assert_eq!(keys, [m2.clone(), m.clone()], "newest first");
        let w = e
            .ok(
                "message.get_all_records_where",
                vec![json!("field \"name\" = \"SECOND\"")],
            )
            .await;
        assert_eq!(w.as_map().len(), 1);
        assert_eq!(e.ok("message.get_all", vec![]).await.as_set().len(), 2);
        // destroy_many stops at the first unknown ref, those before it gone.
        let err = e
            .call("message.destroy_many", vec![json!([m2, "OpaqueRef:nope", m])])
            .await
            .unwrap_err();
        assert_eq!(err.code(), "HANDLE_INVALID");
        assert_eq!(err.params(), ["message", "OpaqueRef:nope"]);
        assert_eq!(e.ok("message.get_all", vec![]).await.as_set().len(), 1);
        e.ok("message.destroy", vec![json!(m)]).await;
        assert_eq!(
            e.call("message.get_record", vec![json!(m)]).await.unwrap_err().code(),
            "HANDLE_INVALID"
        );
        assert_eq!(
            e.call("message.get_by_uuid", vec![json!(uuid)])
                .await
                .unwrap_err()
                .params(),
            ["message", uuid.as_str()]
        );
    }

    #[actix::test]
    async fn the_oldest_beyond_the_limit_go() {
        let e = env().await;
        let host_uuid = e.agent.uuid_of(class_ids::host, &e.agent.host).unwrap();
        let mut made = Vec::new();
        for i in 0..5 {
            made.push(
                super::create(
                    &e.agent,
                    &format!("M{i}"),
                    5,
                    crate::schema::enums::Cls::Host,
                    &host_uuid,
                    "",
                )
                .await
                .unwrap(),
            );
        }
        assert_eq!(super::gc(&e.agent, 3).await, 2);
        assert_eq!(super::gc(&e.agent, 3).await, 0);
        let left: Vec<String> = e
            .agent
            .store
            .all(class_ids::message)
            .iter()
            .map(|m| m.reference.clone())
            .collect();
        assert_eq!(left.len(), 3);
        assert!(!left.contains(&made[0]) && !left.contains(&made[1]));
    }
}
