//! `Async.` calls: the task a call runs as, and its typed result.

use crate::codec;
use crate::enums::TaskStatusType;
use crate::error::api_failure;
use crate::{Error, Session, TaskRecord, TaskRef};
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::time::Duration;

/// The task an `Async.` call runs as, and the type of the message's result.
///
/// ```no_run
/// # async fn f(session: &xapi_sdk::Session, vm: &xapi_sdk::VMRef) -> Result<(), xapi_sdk::Error> {
/// let task = session.vm().async_clone(vm, "copy").await?; // returns at once
/// let copy: xapi_sdk::VMRef = task.wait(session).await?; // the message's result, typed
/// # Ok(()) }
/// ```
pub struct AsyncTask<T> {
    task: TaskRef,
    result: PhantomData<fn() -> T>,
}

impl<T> AsyncTask<T> {
    /// The task of an `Async.` call made otherwise (its result type is the caller's word).
    pub fn new(task: TaskRef) -> AsyncTask<T> {
        AsyncTask {
            task,
            result: PhantomData,
        }
    }

    /// The task's reference (`task.cancel`, `task.get_progress`, `task.destroy` take it).
    pub fn task(&self) -> &TaskRef {
        &self.task
    }
}

impl<T: DeserializeOwned> AsyncTask<T> {
    /// Waits until the task ends and returns its result, read as the message's result type:
    /// the call's own failure on `failure`, [`Error::TaskCancelled`] (or the server's error)
    /// on `cancelled`. It asks for the task's record, at first every 20 ms and then less
    /// often, up to once a second. The task is left for the caller (or the server's
    /// garbage collection) to destroy.
    pub async fn wait(&self, session: &Session) -> Result<T, Error> {
        let mut pause = Duration::from_millis(20);
        loop {
            let rec = session.task().get_record(&self.task).await?;
            if let Some(outcome) = outcome(&self.task, &rec) {
                return outcome;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// The result of a task that has ended, or `None` while it runs.
fn outcome<T: DeserializeOwned>(task: &TaskRef, rec: &TaskRecord) -> Option<Result<T, Error>> {
    match rec.status {
        TaskStatusType::Success => Some(parse_task_result(&rec.result)),
        TaskStatusType::Failure => Some(Err(api_failure(rec.error_info.clone()))),
        TaskStatusType::Cancelled if rec.error_info.is_empty() => {
            Some(Err(Error::TaskCancelled { task: task.to_string() }))
        }
        TaskStatusType::Cancelled => Some(Err(api_failure(rec.error_info.clone()))),
        _ => None,
    }
}

/// Reads a task's `result` (an XML-RPC `<value>` fragment, whatever the wire of the call;
/// empty for `void`) as `T`.
///
/// ```
/// let vm: xapi_sdk::VMRef = xapi_sdk::parse_task_result("<value>OpaqueRef:1</value>").unwrap();
/// assert_eq!(vm.as_str(), "OpaqueRef:1");
/// let n: i64 = xapi_sdk::parse_task_result("<value>42</value>").unwrap();
/// assert_eq!(n, 42);
/// ```
pub fn parse_task_result<T: DeserializeOwned>(fragment: &str) -> Result<T, Error> {
    codec::decode(&codec::xml::parse_value_fragment(fragment)?)
}

impl<T> Clone for AsyncTask<T> {
    fn clone(&self) -> Self {
        AsyncTask::new(self.task.clone())
    }
}

impl<T> std::fmt::Debug for AsyncTask<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AsyncTask({})", self.task)
    }
}

impl<'de, T> serde::Deserialize<'de> for AsyncTask<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TaskRef::deserialize(d).map(AsyncTask::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enums::TaskStatusType;
    use crate::{ErrorCode, VMRef};

    fn task(status: TaskStatusType, result: &str, error_info: &[&str]) -> TaskRecord {
        TaskRecord {
            status,
            result: result.to_owned(),
            error_info: error_info.iter().map(|s| (*s).to_owned()).collect(),
            ..TaskRecord::default()
        }
    }

    #[test]
    fn outcomes_follow_the_status() {
        let t = TaskRef::new("OpaqueRef:t");
        assert!(outcome::<()>(&t, &task(TaskStatusType::Pending, "", &[])).is_none());
        assert!(outcome::<()>(&t, &task(TaskStatusType::Cancelling, "", &[])).is_none());
        let vm: VMRef = outcome(&t, &task(TaskStatusType::Success, "<value>OpaqueRef:v</value>", &[]))
            .unwrap()
            .unwrap();
        assert_eq!(vm.as_str(), "OpaqueRef:v");
        outcome::<()>(&t, &task(TaskStatusType::Success, "", &[]))
            .unwrap()
            .unwrap();
        let failed = outcome::<()>(
            &t,
            &task(
                TaskStatusType::Failure,
                "",
                &["VM_BAD_POWER_STATE", "OpaqueRef:v", "halted", "running"],
            ),
        );
        let Some(Err(Error::Api(e))) = failed else {
            panic!("{failed:?}")
        };
        assert_eq!(e.code, ErrorCode::VmBadPowerState);
        assert_eq!(e.param("actual"), Some("running"));
        let cancelled = outcome::<()>(&t, &task(TaskStatusType::Cancelled, "", &[]));
        assert!(
            matches!(cancelled, Some(Err(Error::TaskCancelled { .. }))),
            "{cancelled:?}"
        );
    }

    #[test]
    fn results_of_every_shape_are_read_from_fragments() {
        let m: std::collections::BTreeMap<VMRef, String> = parse_task_result(
            "<value><struct><member><name>OpaqueRef:a</name><value>x</value></member></struct></value>",
        )
        .unwrap();
        assert_eq!(m.get(&VMRef::new("OpaqueRef:a")).map(String::as_str), Some("x"));
        let b: bool = parse_task_result("<value><boolean>1</boolean></value>").unwrap();
        assert!(b);
        assert!(parse_task_result::<i64>("<value>x</value>").is_err());
        assert!(parse_task_result::<i64>("<nope>").is_err());
    }
}
