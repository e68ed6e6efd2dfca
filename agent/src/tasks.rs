//! Tasks: `Async.*` calls (a `task` object answers at once and follows the call to its end),
//! the `task` messages, and the one place where a task is created, advanced and finished (the
//! HTTP data paths' transfers report through the same functions).

use crate::call::{Call, CallCtx, Entry, Handler};
use crate::entry;
use crate::error::ApiError;
use crate::objects::{create, new_ref, new_uuid, set_field};
use crate::schema::enums::TaskStatusType;
use crate::schema::{class_ids, fields};
use crate::value::{default_object, now, Object, Value};
use crate::xml::value_fragment;
use crate::Agent;
use std::sync::Arc;

/// Tasks one session may have pending at once.
pub const MAX_PENDING_TASKS_PER_SESSION: usize = 512;

/// The `task` messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::task, "create", |agent, _, c| {
            create_task(&agent, c.session_ref(), c.str_arg(0), c.str_arg(1))
                .await
                .map(Value::reference)
        }),
        entry!(class_ids::task, "destroy", |agent, _, c| {
            destroy_task(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
        entry!(class_ids::task, "cancel", |agent, _, c| cancel(&agent, c.ref_arg(0)?)
            .await),
    ]
}

/// Starts `c` as a task running `handler`, and returns the task's ref.
pub async fn run_async(agent: &Arc<Agent>, ctx: &CallCtx, c: Call, handler: Handler) -> Result<Value, ApiError> {
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
    let task = create_task(agent, &session, &format!("Async.{}", c.wire_name()), "").await?;

    let agent2 = agent.clone();
    let mut ctx2 = ctx.clone();
    ctx2.task = Some(task.clone());
    let task2 = task.clone();
    let handle = tokio::spawn(async move {
        let outcome = handler(agent2.clone(), ctx2, c).await;
        finish(&agent2, &task2, outcome.as_ref()).await;
        agent2.running_tasks.lock().remove(&task2);
    });
    agent
        .running_tasks
        .lock()
        .insert(task.clone(), (handle.abort_handle(), session));
    Ok(Value::reference(task))
}

/// Ends a pending task with its call's outcome: `success` with the result (an XML-RPC value
/// fragment) or `failure` with the error; progress 1, `finished` now, nothing left to cancel.
/// A task no longer pending (cancelled, destroyed) is left as it is.
pub async fn finish(agent: &Agent, task: &str, outcome: Result<&Value, &ApiError>) {
    let r = agent
        .store
        .write(|tx| {
            let Some(cur) = tx.get(class_ids::task, task) else {
                return Ok(());
            };
            if cur.get(fields::task::status) != &TaskStatusType::pending.value() {
                return Ok(());
            }
            match outcome {
                Ok(v) => end(tx, task, TaskStatusType::success, value_fragment(v), Vec::new()),
                Err(e) => end(tx, task, TaskStatusType::failure, String::new(), error_info(e)),
            }
        })
        .await;
    if let Err(e) = r {
        tracing::error!(task, error = %e, "could not record a task's end");
    }
}

/// An error as a task's `error_info`: the code, then its parameters.
fn error_info(e: &ApiError) -> Vec<Value> {
    let mut err = vec![Value::str(e.code())];
    err.extend(e.params().into_iter().map(Value::str));
    err
}

/// Writes a task's end.
fn end(
    tx: &mut crate::store::Tx,
    task: &str,
    status: TaskStatusType,
    result: String,
    error: Vec<Value>,
) -> Result<(), ApiError> {
    use fields::task as f;
    set_field(tx, class_ids::task, task, f::status, status.value())?;
    set_field(tx, class_ids::task, task, f::result, Value::str(result))?;
    set_field(tx, class_ids::task, task, f::error_info, Value::set(error))?;
    if status != TaskStatusType::cancelled {
        set_field(tx, class_ids::task, task, f::progress, Value::Float(1.0))?;
    }
    set_field(tx, class_ids::task, task, f::finished, Value::DateTime(now()))?;
    set_field(tx, class_ids::task, task, f::allowed_operations, Value::set(Vec::new()))
}

/// Records a pending task's progress (0 to 1); a task that is gone is not an error.
pub async fn progress(agent: &Agent, task: &str, p: f64) -> Result<(), ApiError> {
    agent
        .store
        .write(|tx| {
            if tx.get(class_ids::task, task).is_none() {
                return Ok(());
            }
            set_field(tx, class_ids::task, task, fields::task::progress, Value::Float(p))
        })
        .await
}

/// `task.cancel`: stops the task's call where it waits, and marks it cancelled.
pub async fn cancel(agent: &Arc<Agent>, task: &str) -> Result<Value, ApiError> {
    let cur = agent
        .store
        .get(class_ids::task, task)
        .ok_or_else(|| ApiError::handle_invalid("task", task))?;
    if cur.get(fields::task::status) != &TaskStatusType::pending.value() {
        return Err(ApiError::not_allowed("the task has already finished"));
    }
    if let Some((h, _)) = agent.running_tasks.lock().remove(task) {
        h.abort();
    }
    let task_s = task.to_owned();
    agent
        .store
        .write(|tx| {
            let cancelled = ApiError::TaskCancelled { task: task_s.clone() };
            end(
                tx,
                &task_s,
                TaskStatusType::cancelled,
                String::new(),
                error_info(&cancelled),
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
    agent.store.write(|tx| create(tx, t.clone())).await?;
    Ok(task)
}

/// A new task record: pending, on this host, cancellable.
fn pending_task(agent: &Agent, task: &str, label: &str, description: &str) -> Object {
    let mut t = default_object(class_ids::task, task);
    t.set(fields::task::uuid, Value::str(new_uuid()));
    t.set(fields::task::name_label, Value::str(label));
    t.set(fields::task::name_description, Value::str(description));
    t.set(fields::task::created, Value::DateTime(now()));
    t.set(fields::task::status, TaskStatusType::pending.value());
    t.set(fields::task::resident_on, Value::reference(agent.host.as_str()));
    t.set(fields::task::progress, Value::Float(0.0));
    t.set(
        fields::task::allowed_operations,
        Value::set(vec![crate::schema::enums::TaskAllowedOperations::cancel.value()]),
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
