//! Messages with behaviour of their own. Each arm names the code that carries it out; every
//! other non-implicit message answers `NOT_IMPLEMENTED [function]`.

use crate::api::{Call, CallCtx};
use crate::error::ApiError;
use crate::event_from;
use crate::schema::class_ids;
use crate::value::{Object, Value};
use crate::Agent;
use std::sync::Arc;

/// Non-implicit messages this build carries out (the README lists them).
pub const IMPLEMENTED: &[&str] = &[
    "session.login_with_password",
    "session.slave_local_login_with_password",
    "session.logout",
    "session.local_logout",
    "session.change_password",
    "session.get_all_subject_identifiers",
    "event.from",
    "event.register",
    "event.unregister",
    "event.next",
    "event.get_current_id",
    "event.inject",
    "task.cancel",
    "task.create",
    "task.destroy",
];

fn str_arg(c: &Call, i: usize) -> &str {
    c.args.get(i).and_then(Value::as_str).unwrap_or("")
}

/// Runs a message with behaviour.
pub async fn custom(agent: &Arc<Agent>, ctx: &CallCtx, c: Call) -> Result<Value, ApiError> {
    if let Some(r) = crate::storage::custom(agent, ctx, &c).await {
        return r;
    }
    let name = format!("{}.{}", c.class.name(), c.message.name);
    match name.as_str() {
        "session.login_with_password" | "session.slave_local_login_with_password" => {
            let originator = str_arg(&c, 3);
            let r = agent
                .sessions
                .login(
                    &agent.store,
                    &agent.host,
                    str_arg(&c, 0),
                    str_arg(&c, 1),
                    originator,
                    ctx.trusted_root,
                )
                .await?;
            Ok(Value::reference(r))
        }
        "session.logout" | "session.local_logout" => {
            let s = c.session.clone().unwrap_or_default();
            agent.sessions.logout(&agent.store, &s).await?;
            Ok(Value::None)
        }
        "session.change_password" => {
            agent.sessions.change_password(str_arg(&c, 0), str_arg(&c, 1))?;
            Ok(Value::None)
        }
        "session.get_all_subject_identifiers" => Ok(Value::set(Vec::new())),
        "event.from" => event_from::from(agent, &c).await,
        "event.register" => {
            event_from::register(
                agent,
                c.session.as_deref().unwrap_or(""),
                c.args.first().map(Value::as_set).unwrap_or(&[]),
            );
            Ok(Value::None)
        }
        "event.unregister" => {
            event_from::unregister(
                agent,
                c.session.as_deref().unwrap_or(""),
                c.args.first().map(Value::as_set).unwrap_or(&[]),
            );
            Ok(Value::None)
        }
        "event.next" => event_from::next(agent, c.session.as_deref().unwrap_or("")).await,
        "event.get_current_id" => Ok(Value::Int(agent.store.events().latest() as i64)),
        "event.inject" => event_from::inject(agent, &c).await,
        "task.create" => crate::tasks::create_task(
            agent,
            c.session.as_deref().unwrap_or(""),
            str_arg(&c, 0),
            str_arg(&c, 1),
        )
        .await
        .map(Value::reference),
        "task.destroy" => crate::tasks::destroy_task(agent, str_arg(&c, 0))
            .await
            .map(|_| Value::None),
        "task.cancel" => crate::tasks::cancel(agent, str_arg(&c, 0)).await,
        _ => Err(ApiError::not_implemented(&name)),
    }
}

/// Implicit messages that need a check before the generic code runs; `None` lets it run.
pub async fn special(agent: &Arc<Agent>, c: &Call) -> Option<Result<Value, ApiError>> {
    if let Some(r) = crate::storage::special(agent, c).await {
        return Some(r);
    }
    use crate::schema::fields;
    let r = c.args.first().and_then(Value::as_str).unwrap_or("");
    if c.message.name == "destroy" && (c.class == class_ids::VBD || c.class == class_ids::VIF) {
        let f = if c.class == class_ids::VBD {
            fields::VBD::currently_attached
        } else {
            fields::VIF::currently_attached
        };
        if agent
            .store
            .get(c.class, r)
            .is_some_and(|o| o.get(f) == &Value::Bool(true))
        {
            return Some(Err(ApiError::not_allowed(format!(
                "{} {r} is currently attached",
                c.class.name()
            ))));
        }
    }
    if c.message.name == "destroy" && (c.class == class_ids::host || c.class == class_ids::pool) {
        return Some(Err(ApiError::not_allowed(format!(
            "the {} cannot be destroyed while this daemon runs it",
            c.class.name()
        ))));
    }
    None
}

/// Objects a new object needs from birth, created in the same transaction (a VM's metrics).
pub fn with_companions(tx: &mut crate::store::Tx, obj: &mut Object) -> Result<(), ApiError> {
    use crate::objects::{create, new_ref, new_uuid};
    use crate::schema::fields;
    if obj.class == class_ids::VM {
        let m = new_ref();
        let mut metrics = crate::value::default_object(class_ids::VM_metrics, &m);
        metrics.set(fields::VM_metrics::uuid, Value::str(new_uuid()));
        create(tx, metrics)?;
        obj.set(fields::VM::metrics, Value::reference(m));
        obj.set(fields::VM::power_state, Value::Enum("Halted"));
        obj.set(fields::VM::domid, Value::Int(-1));
    }
    Ok(())
}

/// Follow-up after the implicit `create` stored an object.
pub fn after_create(tx: &mut crate::store::Tx, class: crate::schema::ClassId, reference: &str) -> Result<(), ApiError> {
    use crate::schema::fields;
    if class == class_ids::VBD || class == class_ids::VIF {
        let vm_field = if class == class_ids::VBD {
            fields::VBD::VM
        } else {
            fields::VIF::VM
        };
        if let Some(vm) = tx
            .get(class, reference)
            .and_then(|o| o.get(vm_field).as_ref_str().map(str::to_owned))
        {
            crate::lifecycle::rules::refresh_vm_and_devices(tx, &vm)?;
        }
    }
    Ok(())
}

/// Class-specific completion of a record before the implicit `create` stores it.
pub fn before_create(agent: &Agent, obj: &mut Object) -> Result<(), ApiError> {
    use crate::schema::fields;
    if obj.class == class_ids::VBD || obj.class == class_ids::VIF {
        crate::lifecycle::devices::check_new_device(agent, obj)?;
    }
    if obj.class == class_ids::VBD && obj.get(fields::VBD::r#type) == &Value::Enum("CD") {
        obj.set(fields::VBD::mode, Value::Enum("RO"));
    }
    if obj.class == class_ids::VIF && obj.get(fields::VIF::MAC).as_str() == Some("") {
        obj.set(fields::VIF::MAC, Value::str(random_mac()));
        obj.set(fields::VIF::MAC_autogenerated, Value::Bool(true));
    }
    Ok(())
}

/// A locally administered unicast MAC address.
pub fn random_mac() -> String {
    use rand::Rng;
    let mut b: [u8; 6] = rand::thread_rng().gen();
    b[0] = (b[0] & 0xfe) | 0x02;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}
