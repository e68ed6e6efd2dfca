//! Dispatch: a wire call (method name + untyped params) becomes a typed [`Call`], checked
//! against the datamodel, and runs the handler the behaviour table (`behaviour.rs`) holds for
//! its message. This module knows no behaviour: it reads the table, never a module with
//! behaviour, and none of those imports it. Before any handler runs (an `Async.` form's
//! included, before its task exists), the session's permissions are checked
//! (`rbac::check`, which carries no message out).

use crate::audit;
use crate::behaviour;
use crate::call::{Call, CallCtx};
use crate::error::ApiError;
use crate::rbac::{self, Caller};
use crate::schema::{self, class_ids, ClassId, MessageKind};
use crate::value::{from_json, Value};
use crate::Agent;
use serde_json::Value as Json;
use std::sync::Arc;

/// Every method name `system.listMethods` reports: every message of the datamodel, the
/// `Async.` form of each the table says has one, and `system.listMethods`.
pub fn method_list() -> Vec<String> {
    let table = behaviour::table();
    let mut out = Vec::new();
    for id in schema::MessageId::all() {
        out.push(id.wire_name());
    }
    for id in schema::MessageId::all() {
        if table.async_form(id) {
            out.push(format!("Async.{}", id.wire_name()));
        }
    }
    out.push("system.listMethods".to_owned());
    out
}

/// Checks a wire call against the datamodel, types its arguments, and checks that its
/// session may make it.
pub fn check(agent: &Agent, method: &str, params: &[Json]) -> Result<Call, ApiError> {
    let (c, caller) = typed(agent, method, params)?;
    if let Some(caller) = &caller {
        rbac::authorize(agent, caller, &c)?;
    }
    Ok(c)
}

/// Checks a wire call against the datamodel and types its arguments; who its session is.
fn typed(agent: &Agent, method: &str, params: &[Json]) -> Result<(Call, Option<Caller>), ApiError> {
    let m = schema::method(method).ok_or_else(|| ApiError::MessageMethodUnknown {
        method: method.to_owned(),
    })?;
    let defs = m.message.params;
    let expected = defs.len();
    // Trailing parameters with a default may be left out, as the reference allows.
    let required = defs.len() - defs.iter().rev().take_while(|p| p.default.is_some()).count();
    // A message with defaulted parameters (not a constructor) takes any count from the
    // required ones up, as the reference's generated dispatcher matches
    // `required :: … :: default_args`: what follows the defaults is ignored.
    let open_ended = required < expected && m.message.kind != MessageKind::Create;
    if params.len() < required || (params.len() > expected && !open_ended) {
        // The reference counts neither the session nor the parameters that have defaults in
        // what it expects, and not the session in what it received.
        let session = usize::from(m.message.takes_session());
        let without_defaults = defs.iter().skip(session).filter(|p| p.default.is_none()).count();
        return Err(ApiError::MessageParameterCountMismatch {
            method: method.to_owned(),
            expected: without_defaults.to_string(),
            received: (params.len() as i64 - session as i64).to_string(),
        });
    }
    let params = &params[..params.len().min(expected)];
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
    let mut caller = None;
    let mut args = Vec::with_capacity(expected);
    for (i, (def, p)) in defs.iter().zip(params.iter()).enumerate() {
        if i == 0 && m.message.takes_session() {
            let s = p
                .as_str()
                .ok_or_else(|| ApiError::SessionInvalid { handle: p.to_string() })?;
            caller = Some(agent.sessions.validate_caller(&agent.store, s)?);
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
    let c = Call {
        id: m.id,
        class: m.class,
        message: m.message,
        session,
        args,
    };
    Ok((c, caller))
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

/// [`typed`], read again once this host's view of the pool database holds every committed
/// change when the session is not in it: a session opened on another host (a call forwarded
/// here, or a client that logged in elsewhere) may not have reached this host's view yet.
async fn typed_in_view(agent: &Agent, method: &str, params: &[Json]) -> Result<(Call, Option<Caller>), ApiError> {
    match typed(agent, method, params) {
        Err(ApiError::SessionInvalid { .. }) if agent.store.is_pooled() => {
            if let Err(e) = agent.store.caught_up().await {
                tracing::debug!(method, error = %e, "bringing the view up to date for a session");
            }
            typed(agent, method, params)
        }
        other => other,
    }
}

/// Runs a wire call.
pub async fn call(agent: &Arc<Agent>, ctx: &CallCtx, method: &str, params: &[Json]) -> Result<Value, ApiError> {
    // Host-to-host steps of the pool that are no XenAPI message (`xapid.pool.*`).
    if let Some(out) = crate::pool::private_call(agent, ctx, method, params).await {
        return out;
    }
    let table = behaviour::table();
    if let Some(inner) = method.strip_prefix("Async.") {
        let (c, caller) = typed_in_view(agent, inner, params).await?;
        if !table.async_form(c.id) {
            return Err(ApiError::MessageMethodUnknown {
                method: method.to_owned(),
            });
        }
        let pending = match admit(agent, ctx, caller.as_ref(), &c, method, params).await {
            Ok(p) => p,
            Err(answer) => return answer,
        };
        let Some(handler) = table.handler(c.id) else {
            let e = ApiError::not_implemented(&c.wire_name());
            record(agent, pending, audit::Outcome::Error(&e));
            return Err(e);
        };
        let task = behaviour::spawn_async(agent, ctx, c, handler).await;
        record_result(agent, pending, &task);
        let task = task?;
        note_task_owner(agent, caller.as_ref(), &task);
        return Ok(task);
    }
    let (c, caller) = typed_in_view(agent, method, params).await?;
    let pending = match admit(agent, ctx, caller.as_ref(), &c, method, params).await {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let creates_task = rbac::check::creates_task(&c);
    let destroyed_task = rbac::check::destroys_task(&c).map(str::to_owned);
    let login =
        (c.class == class_ids::session && c.message.name == "login_with_password").then(|| c.str_arg(0).to_owned());
    let logout = (c.class == class_ids::session && c.message.name == "logout")
        .then(|| {
            c.session
                .as_deref()
                .and_then(|s| agent.audit.pending_session_destroy(&agent.store, s))
        })
        .flatten();
    let out = run(agent, ctx, c).await;
    record_result(agent, pending, &out);
    let out = out?;
    if let (Some(uname), Some(s)) = (login, out.as_ref_str()) {
        agent.audit.session_created(&agent.store, &agent.host, s, &uname);
    }
    if logout.is_some() {
        record(agent, logout, audit::Outcome::Ok);
    }
    if creates_task {
        note_task_owner(agent, caller.as_ref(), &out);
    }
    if let Some(t) = destroyed_task {
        agent.sessions.forget_task(&t);
    }
    Ok(out)
}

/// The audit record a call by a session will leave, if its message is recorded.
/// What every call (plain or `Async.`) passes before it runs on this host: its audit record is
/// opened, the caller's roles are checked, and a call that must run on another host of the
/// pool is sent there (`pool::forward`). `Err` is the call's whole answer (the refusal, or the
/// other host's reply), already in the audit trail; `Ok` hands back the open audit record.
async fn admit(
    agent: &Arc<Agent>,
    ctx: &CallCtx,
    caller: Option<&Caller>,
    c: &Call,
    method: &str,
    params: &[Json],
) -> Result<Option<audit::Pending>, Result<Value, ApiError>> {
    let pending = pending_record(agent, c);
    if let Some(caller) = caller {
        if let Err(e) = rbac::authorize(agent, caller, c) {
            record(agent, pending, audit::Outcome::Denied);
            return Err(Err(e));
        }
    }
    // A call another host of the pool forwarded here runs here (it is never sent on), once
    // its pool secret is good.
    let forwarded = match ctx.pool_secret.as_deref() {
        None => false,
        Some(secret) if crate::pool::secret::accepts(&agent.state_dir, secret) => true,
        Some(_) => {
            let e = ApiError::SessionAuthenticationFailed {};
            record(agent, pending, audit::Outcome::Error(&e));
            return Err(Err(e));
        }
    };
    // Before choosing where a call runs, and before running a call another host chose to send
    // here, this host's view takes in every change etcd has committed: the sender's view had
    // them (a `VM.hard_shutdown` just carried out on a third host, whose mark this host must
    // not still see when a `VM.start` is sent here).
    if forwarded || crate::pool::forward::depends_on_view(agent, c) {
        if let Err(e) = agent.store.caught_up().await {
            let e = ApiError::internal(format!("this host's view of the pool database is not current: {e}"));
            record(agent, pending, audit::Outcome::Error(&e));
            return Err(Err(e));
        }
    }
    if let Some(host) = crate::pool::forward::target(agent, c).filter(|_| !forwarded) {
        let out = crate::pool::forward::forward(agent, &host, c, method, params).await;
        // The caller reads next from this host: its view first takes in what the other host
        // committed (a `VM.start` sent on, then `VM.get_resident_on` here, sees the new host).
        if let Err(e) = agent.store.caught_up().await {
            tracing::warn!(method, error = %e, "this host's view may lag behind a call it forwarded");
        }
        record_result(agent, pending, &out);
        return Err(out);
    }
    Ok(pending)
}

fn pending_record(agent: &Agent, c: &Call) -> Option<audit::Pending> {
    let s = c.session.as_deref()?;
    agent.audit.pending_call(&agent.store, s, c)
}

/// Writes a pending audit record with its outcome.
fn record(agent: &Agent, p: Option<audit::Pending>, outcome: audit::Outcome<'_>) {
    if let Some(p) = p {
        agent.audit.finish(&agent.store, &agent.host, p, outcome);
    }
}

fn record_result(agent: &Agent, p: Option<audit::Pending>, r: &Result<Value, ApiError>) {
    match r {
        Ok(_) => record(agent, p, audit::Outcome::Ok),
        Err(e) => record(agent, p, audit::Outcome::Error(e)),
    }
}

/// Remembers who created a task (operations on it by other subjects need
/// `task.destroy/any`).
fn note_task_owner(agent: &Agent, caller: Option<&Caller>, task: &Value) {
    if let (Some(caller), Some(t)) = (caller, task.as_ref_str()) {
        agent.sessions.note_task_owner(&agent.store, t, &caller.sid);
    }
}

/// Runs a checked call: the table's handler for its message, or `NOT_IMPLEMENTED`.
pub async fn run(agent: &Arc<Agent>, ctx: &CallCtx, c: Call) -> Result<Value, ApiError> {
    match behaviour::table().handler(c.id) {
        Some(handler) => handler(agent.clone(), ctx.clone(), c).await,
        None => Err(ApiError::not_implemented(&c.wire_name())),
    }
}
