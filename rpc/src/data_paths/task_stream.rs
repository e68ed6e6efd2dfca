//! A download streamed piece by piece under a task: the task's progress follows the bytes sent,
//! a cancelled task ends the stream, an error fails the task, and a client that goes away
//! before the end fails it too. The raw, VHD and qcow2 disk exports share it.

use actix_web::web::Bytes;
use actix_web::{HttpResponse, HttpResponseBuilder};
use agent::storage::transfer::TransferTask;
use agent::value::Value;
use agent::{Agent, ApiError};
use std::sync::Arc;

/// Where a streamed download's bytes come from.
pub(crate) trait Pieces: 'static {
    /// The next piece, or `None` at the end.
    async fn next_piece(&mut self) -> Option<Result<Bytes, ApiError>>;
    /// Bytes produced so far and the total expected.
    fn progress(&self) -> (u64, u64);
}

/// Answers with `resp`'s headers and the pieces of `source` as the body, under `task`. `what`
/// names the download in the log.
pub(crate) fn respond<P: Pieces>(
    mut resp: HttpResponseBuilder,
    agent: &Arc<Agent>,
    source: P,
    task: TransferTask,
    what: &'static str,
) -> HttpResponse {
    let state = TaskStream {
        agent: agent.clone(),
        source,
        task: Some(task),
        what,
    };
    resp.streaming(futures_util::stream::unfold(state, TaskStream::next))
}

struct TaskStream<P: Pieces> {
    agent: Arc<Agent>,
    source: P,
    task: Option<TransferTask>,
    what: &'static str,
}

impl<P: Pieces> TaskStream<P> {
    async fn next(mut self) -> Option<(Result<Bytes, actix_web::Error>, Self)> {
        if let Some(t) = self.task.as_ref() {
            if agent::backup::cancelled(&self.agent, t.reference()) {
                self.task = None;
                return Some((Err(actix_web::error::ErrorInternalServerError("task cancelled")), self));
            }
        }
        match self.source.next_piece().await {
            Some(Ok(b)) => {
                let (done, total) = self.source.progress();
                if let Some(t) = self.task.as_mut() {
                    t.progress(done, total).await;
                }
                Some((Ok(b), self))
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, what = self.what, "export failed");
                if let Some(t) = self.task.take() {
                    t.fail(&e).await;
                }
                Some((Err(actix_web::error::ErrorInternalServerError(e.to_string())), self))
            }
            None => {
                if let Some(t) = self.task.take() {
                    t.succeed(&Value::None).await;
                }
                None
            }
        }
    }
}

impl<P: Pieces> Drop for TaskStream<P> {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            let (sent, _) = self.source.progress();
            actix_web::rt::spawn(async move {
                t.fail(&ApiError::internal(format!("the client went away after {sent} bytes")))
                    .await;
            });
        }
    }
}
