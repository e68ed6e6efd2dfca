//! Dispatch: a wire call (method name + untyped params) becomes a typed call, checked against
//! the datamodel, and runs either the generic implementation its `MessageKind` names or the
//! hand-written handler of a message with behaviour.

use crate::error::ApiError;
use crate::handlers;
use crate::objects::{self, new_ref, new_uuid};
use crate::query;
use crate::schema::{self, ClassId, FieldId, MessageDef, MessageKind};
use crate::value::{from_json, Object, Value};
use crate::Agent;
use serde_json::Value as Json;
use std::sync::Arc;

/// Who is calling, as the transport knows it.
#[derive(Clone, Debug, Default)]
pub struct CallCtx {
    /// A uid-0 peer on the unix socket.
    pub trusted_root: bool,
    /// The task this call runs under, for `Async.*` calls.
    pub task: Option<String>,
}

/// A call after checking: the message, its typed arguments (session first, where it has one).
pub struct Call {
    /// Owning class.
    pub class: ClassId,
    /// The message.
    pub message: &'static MessageDef,
    /// The session, when the message takes one.
    pub session: Option<String>,
    /// Typed arguments after the session.
    pub args: Vec<Value>,
}

/// Every method name `system.listMethods` reports.
pub fn method_list() -> Vec<String> {
    let mut out = Vec::new();
    for (c, m) in schema::method_names() {
        out.push(format!("{}.{}", c.name(), m.name));
    }
    for (c, m) in schema::method_names() {
        if is_async_eligible(c, m) {
            out.push(format!("Async.{}.{}", c.name(), m.name));
        }
    }
    out.push("system.listMethods".to_owned());
    out
}

/// Whether a message also exists as `Async.<Class>.<msg>`.
pub fn is_async_eligible(class: ClassId, m: &MessageDef) -> bool {
    use crate::schema::class_ids;
    // The reference declares session and event calls, and the message class's queries,
    // without an asynchronous form.
    if class == class_ids::session
        || class == class_ids::event
        || (class == class_ids::message && m.name.starts_with("get"))
    {
        return false;
    }
    m.takes_session() && (!m.implicit || matches!(m.kind, MessageKind::Create | MessageKind::Destroy))
}

/// Checks a wire call against the datamodel and types its arguments.
pub fn check(agent: &Agent, method: &str, params: &[Json]) -> Result<Call, ApiError> {
    let m = schema::method(method).ok_or_else(|| ApiError::MessageMethodUnknown {
        method: method.to_owned(),
    })?;
    let defs = m.message.params;
    let expected = defs.len();
    // Trailing parameters with a default may be left out, as the reference allows.
    let required = defs.len() - defs.iter().rev().take_while(|p| p.default.is_some()).count();
    if params.len() < required || params.len() > expected {
        return Err(ApiError::MessageParameterCountMismatch {
            method: method.to_owned(),
            expected: expected.to_string(),
            received: params.len().to_string(),
        });
    }
    let filled: Vec<Json>;
    let params = if params.len() < expected {
        let mut all = params.to_vec();
        for d in &defs[params.len()..] {
            let text = d.default.unwrap_or("null");
            all.push(serde_json::from_str(text).unwrap_or(Json::Null));
        }
        filled = all;
        filled.as_slice()
    } else {
        params
    };
    let mut session = None;
    let mut args = Vec::with_capacity(expected);
    for (i, (def, p)) in defs.iter().zip(params.iter()).enumerate() {
        if i == 0 && m.message.takes_session() {
            let s = p
                .as_str()
                .ok_or_else(|| ApiError::SessionInvalid { handle: p.to_string() })?;
            agent.sessions.validate(&agent.store, s)?;
            session = Some(s.to_owned());
            continue;
        }
        if m.message.kind == MessageKind::Create {
            require_constructor_fields(m.class, p)?;
        }
        // The value itself is never logged: it may be a secret.
        let v = from_json(p, def.ty).map_err(|e| {
            tracing::debug!(method, param = def.name, expected = %e.expected, "parameter of the wrong type");
            ApiError::field_type(def.name)
        })?;
        args.push(v);
    }
    Ok(Call {
        class: m.class,
        message: m.message,
        session,
        args,
    })
}

/// The implicit constructor needs every RW and RO/constructor field that has no default, as
/// the reference does; a missing one is `FIELD_TYPE_ERROR [field]`.
fn require_constructor_fields(class: ClassId, record: &Json) -> Result<(), ApiError> {
    let Json::Object(m) = record else {
        return Err(ApiError::field_type("args"));
    };
    for f in class.def().fields {
        if f.qualifier != schema::Qualifier::RoRuntime && f.default.is_none() && !m.contains_key(f.name) {
            return Err(ApiError::field_type(f.name));
        }
    }
    Ok(())
}

/// Runs a wire call.
pub async fn call(agent: &Arc<Agent>, ctx: &CallCtx, method: &str, params: &[Json]) -> Result<Value, ApiError> {
    if let Some(inner) = method.strip_prefix("Async.") {
        let c = check(agent, inner, params)?;
        if !is_async_eligible(c.class, c.message) {
            return Err(ApiError::MessageMethodUnknown {
                method: method.to_owned(),
            });
        }
        return crate::tasks::run_async(agent, ctx, c).await;
    }
    let c = check(agent, method, params)?;
    run(agent, ctx, c).await
}

/// Runs a checked call.
pub async fn run(agent: &Arc<Agent>, ctx: &CallCtx, c: Call) -> Result<Value, ApiError> {
    if crate::lifecycle::handles(c.class, c.message.name) {
        return crate::lifecycle::dispatch(agent, ctx, c).await;
    }
    if c.message.kind == MessageKind::Custom {
        return handlers::custom(agent, ctx, c).await;
    }
    if let Some(r) = handlers::special(agent, &c).await {
        return r;
    }
    generic(agent, c).await
}

fn arg_ref(c: &Call, i: usize) -> Result<&str, ApiError> {
    c.args
        .get(i)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::field_type(c.message.params.get(i + 1).map_or("self", |p| p.name)))
}

fn get_obj(agent: &Agent, class: ClassId, r: &str) -> Result<Arc<Object>, ApiError> {
    agent
        .store
        .get(class, r)
        .ok_or_else(|| ApiError::handle_invalid(class.name(), r))
}

/// The generic implementation of implicit messages.
pub async fn generic(agent: &Arc<Agent>, c: Call) -> Result<Value, ApiError> {
    let class = c.class;
    let store = &agent.store;
    match c.message.kind {
        MessageKind::Get(f) => Ok(get_obj(agent, class, arg_ref(&c, 0)?)?.get(f).clone()),
        MessageKind::Set(f) | MessageKind::ExplicitSet(f) => {
            let r = arg_ref(&c, 0)?.to_owned();
            let v = c.args.get(1).cloned().unwrap_or(Value::None);
            store.write(|tx| objects::set_field(tx, class, &r, f, v)).await?;
            Ok(Value::None)
        }
        MessageKind::AddToSet(f) | MessageKind::RemoveFromSet(f) => {
            let add = matches!(c.message.kind, MessageKind::AddToSet(_));
            let r = arg_ref(&c, 0)?.to_owned();
            let item = c.args.get(1).cloned().unwrap_or(Value::None);
            store
                .write(|tx| {
                    let cur = tx.must_get(class, &r)?;
                    let mut items = cur.get(f).as_set().to_vec();
                    if add {
                        if items.contains(&item) {
                            return Ok(());
                        }
                        items.push(item);
                    } else {
                        items.retain(|x| x != &item);
                    }
                    objects::set_field(tx, class, &r, f, Value::set(items))
                })
                .await?;
            Ok(Value::None)
        }
        MessageKind::AddToMap(f) => {
            let r = arg_ref(&c, 0)?.to_owned();
            let key = c.args.get(1).cloned().unwrap_or(Value::None);
            let val = c.args.get(2).cloned().unwrap_or(Value::None);
            store
                .write(|tx| {
                    let cur = tx.must_get(class, &r)?;
                    let mut pairs = cur.get(f).as_map().to_vec();
                    if pairs.iter().any(|(k, _)| k == &key) {
                        return Err(ApiError::MapDuplicateKey {
                            r#type: class.name().to_owned(),
                            param_name: class.field(f).name.to_owned(),
                            uuid: cur.uuid().unwrap_or("").to_owned(),
                            key: key.key_text(),
                        });
                    }
                    pairs.push((key, val));
                    objects::set_field(tx, class, &r, f, Value::map(pairs))?;
                    crate::lifecycle::rules::refresh_allowed(tx, class, &r)
                })
                .await?;
            Ok(Value::None)
        }
        MessageKind::RemoveFromMap(f) => {
            let r = arg_ref(&c, 0)?.to_owned();
            let key = c.args.get(1).cloned().unwrap_or(Value::None);
            store
                .write(|tx| {
                    let cur = tx.must_get(class, &r)?;
                    let mut pairs = cur.get(f).as_map().to_vec();
                    pairs.retain(|(k, _)| k != &key);
                    objects::set_field(tx, class, &r, f, Value::map(pairs))?;
                    crate::lifecycle::rules::refresh_allowed(tx, class, &r)
                })
                .await?;
            Ok(Value::None)
        }
        MessageKind::GetByUuid => {
            let u = arg_ref(&c, 0)?;
            store
                .ref_by_uuid(class, u)
                .map(Value::reference)
                .ok_or_else(|| ApiError::UuidInvalid {
                    r#type: class.name().to_owned(),
                    uuid: u.to_owned(),
                })
        }
        MessageKind::GetByNameLabel => {
            let label = arg_ref(&c, 0)?;
            Ok(Value::Set(
                store
                    .all(class)
                    .iter()
                    .filter(|o| o.str_field("name_label") == label)
                    .map(|o| Value::reference(o.reference.as_str()))
                    .collect(),
            ))
        }
        MessageKind::GetRecord => Ok(Value::Record(get_obj(agent, class, arg_ref(&c, 0)?)?)),
        MessageKind::GetAll => Ok(Value::Set(
            store
                .all(class)
                .iter()
                .map(|o| Value::reference(o.reference.as_str()))
                .collect(),
        )),
        MessageKind::GetAllRecords => Ok(all_records(agent, class, None)),
        MessageKind::GetAllRecordsWhere => {
            let expr = arg_ref(&c, 0)?;
            let e = query::parse(expr).map_err(|why| ApiError::invalid_value("expr", format!("{expr}: {why}")))?;
            Ok(all_records(agent, class, Some(&e)))
        }
        MessageKind::Create => {
            let Some(Value::Record(rec)) = c.args.first() else {
                return Err(ApiError::field_type("args"));
            };
            let r = create_from_record(agent, class, rec).await?;
            Ok(Value::reference(r))
        }
        MessageKind::Destroy => {
            let r = arg_ref(&c, 0)?.to_owned();
            store.write(|tx| objects::destroy(tx, class, &r)).await?;
            Ok(Value::None)
        }
        MessageKind::Custom => Err(ApiError::not_implemented(&format!(
            "{}.{}",
            class.name(),
            c.message.name
        ))),
    }
}

/// `get_all_records`, optionally filtered.
pub fn all_records(agent: &Agent, class: ClassId, filter: Option<&query::Expr>) -> Value {
    Value::Map(
        agent
            .store
            .all(class)
            .into_iter()
            .filter(|o| filter.is_none_or(|e| query::matches(e, o)))
            .map(|o| (Value::reference(o.reference.as_str()), Value::Record(o)))
            .collect(),
    )
}

/// The implicit constructor: RW and RO/constructor fields come from the record, the rest
/// from defaults; the server picks the uuid and ref.
pub async fn create_from_record(agent: &Agent, class: ClassId, rec: &Object) -> Result<String, ApiError> {
    let reference = new_ref();
    let mut obj = crate::value::default_object(class, &reference);
    for (i, f) in class.def().fields.iter().enumerate() {
        if f.qualifier != schema::Qualifier::RoRuntime {
            obj.set(FieldId(i), rec.get(FieldId(i)).clone());
        }
    }
    if let Some(uf) = class.field_by_name("uuid") {
        obj.set(uf, Value::str(new_uuid()));
    }
    handlers::before_create(agent, &mut obj)?;
    agent
        .store
        .write(|tx| {
            let class = obj.class;
            handlers::with_companions(tx, &mut obj)?;
            objects::create(tx, obj)?;
            crate::lifecycle::rules::refresh_allowed(tx, class, &reference)?;
            handlers::after_create(tx, class, &reference)
        })
        .await?;
    Ok(reference)
}
