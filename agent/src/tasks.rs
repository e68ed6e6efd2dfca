//! `Async.*` calls: a `task` object answers at once and follows the call to its end.

use crate::api::{run, Call, CallCtx};
use crate::error::ApiError;
use crate::objects::{create, new_ref, new_uuid, set_field};
use crate::schema::{class_ids, fields};
use crate::value::{default_object, now, Object, Value};
use crate::xml::value_fragment;
use crate::Agent;
use std::sync::Arc;

/// Tasks one session may have pending at once.
pub const MAX_PENDING_TASKS_PER_SESSION: usize = 512;

/// Starts `c` as a task and returns the task's ref.
pub async fn run_async(agent: &Arc<Agent>, ctx: &CallCtx, c: Call) -> Result<Value, ApiError> {
    let session = c.session.clone().unwrap_or_default();
    let pending = agent
        .running_tasks
        .lock()
        .values()
        .filter(|(_, s)| *s == session)
        .count();
    if pending >= MAX_PENDING_TASKS_PER_SESSION {
        return Err(ApiError::TooManyPendingTasks {});
    }
    let task = new_ref();
    let t = pending_task(
        agent,
        &task,
        &format!("Async.{}.{}", c.class.name(), c.message.name),
        "",
    );
    agent.store.write(|tx| create(tx, t)).await?;

    let agent2 = agent.clone();
    let mut ctx2 = ctx.clone();
    ctx2.task = Some(task.clone());
    let task2 = task.clone();
    let handle = tokio::spawn(async move {
        let outcome = run(&agent2, &ctx2, c).await;
        finish(&agent2, &task2, outcome).await;
        agent2.running_tasks.lock().remove(&task2);
    });
    agent
        .running_tasks
        .lock()
        .insert(task.clone(), (handle.abort_handle(), session));
    Ok(Value::reference(task))
}

async fn finish(agent: &Agent, task: &str, outcome: Result<Value, ApiError>) {
    let r = agent
        .store
        .write(|tx| {
            let Some(cur) = tx.get(class_ids::task, task) else {
                return Ok(());
            };
            if cur.get(fields::task::status) != &Value::Enum("pending") {
                return Ok(());
            }
            let (status, result, error) = match &outcome {
                Ok(v) => ("success", value_fragment(v), Vec::new()),
                Err(e) => {
                    let mut err = vec![Value::str(e.code())];
                    err.extend(e.params().into_iter().map(Value::str));
                    ("failure", String::new(), err)
                }
            };
            set_field(tx, class_ids::task, task, fields::task::status, Value::Enum(status))?;
            set_field(tx, class_ids::task, task, fields::task::result, Value::str(result))?;
            set_field(tx, class_ids::task, task, fields::task::error_info, Value::set(error))?;
            set_field(tx, class_ids::task, task, fields::task::progress, Value::Float(1.0))?;
            set_field(
                tx,
                class_ids::task,
                task,
                fields::task::finished,
                Value::DateTime(now()),
            )?;
            set_field(
                tx,
                class_ids::task,
                task,
                fields::task::allowed_operations,
                Value::set(Vec::new()),
            )
        })
        .await;
    if let Err(e) = r {
        tracing::error!(task, error = %e, "could not record a task's end");
    }
}

/// `task.cancel`: stops the task's call where it waits, and marks it cancelled.
pub async fn cancel(agent: &Arc<Agent>, task: &str) -> Result<Value, ApiError> {
    let cur = agent
        .store
        .get(class_ids::task, task)
        .ok_or_else(|| ApiError::handle_invalid("task", task))?;
    if cur.get(fields::task::status) != &Value::Enum("pending") {
        return Err(ApiError::not_allowed("the task has already finished"));
    }
    if let Some((h, _)) = agent.running_tasks.lock().remove(task) {
        h.abort();
    }
    let task_s = task.to_owned();
    agent
        .store
        .write(|tx| {
            set_field(
                tx,
                class_ids::task,
                &task_s,
                fields::task::status,
                Value::Enum("cancelled"),
            )?;
            set_field(
                tx,
                class_ids::task,
                &task_s,
                fields::task::error_info,
                Value::set(vec![Value::str("TASK_CANCELLED"), Value::str(task_s.clone())]),
            )?;
            set_field(
                tx,
                class_ids::task,
                &task_s,
                fields::task::finished,
                Value::DateTime(now()),
            )
        })
        .await?;
    Ok(Value::None)
}

/// `task.create(label, description)`: a pending task a client drives itself.
pub async fn create_task(
    agent: &Arc<Agent>,
    _session: &str,
    label: &str,
    description: &str,
) -> Result<String, ApiError> {
    let task = new_ref();
    let t = pending_task(agent, &task, label, description);
    agent.store.write(|tx| create(tx, t)).await?;
    Ok(task)
}

/// A new task record: pending, on this host, cancellable.
fn pending_task(agent: &Agent, task: &str, label: &str, description: &str) -> Object {
    let mut t = default_object(class_ids::task, task);
    t.set(fields::task::uuid, Value::str(new_uuid()));
    t.set(fields::task::name_label, Value::str(label));
    t.set(fields::task::name_description, Value::str(description));
    t.set(fields::task::created, Value::DateTime(now()));
    t.set(fields::task::status, Value::Enum("pending"));
    t.set(fields::task::resident_on, Value::reference(agent.host.as_str()));
    t.set(fields::task::progress, Value::Float(0.0));
    t.set(
        fields::task::allowed_operations,
        Value::set(vec![Value::Enum("cancel")]),
    );
    t
}

/// `task.destroy`: forgets a task (stopping its call if it still runs).
pub async fn destroy_task(agent: &Arc<Agent>, task: &str) -> Result<(), ApiError> {
    if let Some((h, _)) = agent.running_tasks.lock().remove(task) {
        h.abort();
    }
    agent
        .store
        .write(|tx| crate::objects::destroy(tx, class_ids::task, task))
        .await
}
