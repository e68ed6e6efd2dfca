//! The generic behaviour of implicit messages: accessors, `create`, `destroy`, the queries.
//! The behaviour table gives every implicit message [`handler`] unless a module registers
//! its own entry for it (a module that checks first, then calls back into this one).

use crate::call::{Call, CallCtx, Reply};
use crate::error::ApiError;
use crate::objects::{self, new_ref, new_uuid};
use crate::query;
use crate::schema::{self, ClassId, FieldId, MessageKind};
use crate::store::Tx;
use crate::value::{Object, Value};
use crate::Agent;
use std::sync::Arc;

/// The table's handler for implicit messages.
pub fn handler(agent: Arc<Agent>, _ctx: CallCtx, c: Call) -> Reply {
    Box::pin(async move { generic(&agent, c).await })
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
            store
                .write(|tx| objects::set_field(tx, class, &r, f, v.clone()))
                .await?;
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
                        items.push(item.clone());
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
                            // The reference names the object by its ref here (its database
                            // layer raises this with the objref), whatever errors.json calls it.
                            uuid: r.clone(),
                            key: key.key_text(),
                        });
                    }
                    pairs.push((key.clone(), val.clone()));
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
        MessageKind::Create => create(agent, &c, &NO_HOOKS).await,
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

/// What a class adds to the implicit constructor (a VM's metrics, a device's checks).
pub struct CreateHooks {
    /// Checks and completes the record before the write starts.
    pub before: fn(&Agent, &mut Object) -> Result<(), ApiError>,
    /// In the write, before the object is stored: objects it needs from birth.
    pub companions: fn(&mut Tx, &mut Object) -> Result<(), ApiError>,
    /// In the write, after the object is stored.
    pub after: fn(&mut Tx, ClassId, &str) -> Result<(), ApiError>,
}

/// The constructor of a class that adds nothing.
pub const NO_HOOKS: CreateHooks = CreateHooks {
    before: |_, _| Ok(()),
    companions: |_, _| Ok(()),
    after: |_, _, _| Ok(()),
};

/// The implicit `create(record)` of `c`'s class, with a class's hooks.
pub async fn create(agent: &Agent, c: &Call, hooks: &CreateHooks) -> Result<Value, ApiError> {
    let Some(Value::Record(rec)) = c.args.first() else {
        return Err(ApiError::field_type("args"));
    };
    create_from_record(agent, c.class, rec, hooks)
        .await
        .map(Value::reference)
}

/// The implicit constructor: RW and RO/constructor fields come from the record, the rest
/// from defaults; the server picks the uuid and ref.
pub async fn create_from_record(
    agent: &Agent,
    class: ClassId,
    rec: &Object,
    hooks: &CreateHooks,
) -> Result<String, ApiError> {
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
    (hooks.before)(agent, &mut obj)?;
    agent
        .store
        .write(|tx| {
            let class = obj.class;
            (hooks.companions)(tx, &mut obj)?;
            objects::create(tx, obj.clone())?;
            crate::lifecycle::rules::refresh_allowed(tx, class, &reference)?;
            (hooks.after)(tx, class, &reference)
        })
        .await?;
    Ok(reference)
}
