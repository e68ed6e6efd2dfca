//! `GET /pool/xmldbdump` (the pool database as a backup) and `PUT /pool/xmldbdump` (a backup
//! restored, `dry_run=true` to check it only), with `task_id` as the reference takes it. What
//! they do is `agent::backup::xmldb`'s.
//!
//! As the reference, a restore that names its length is answered `200` and its outcome is the
//! task's (the body says it too): Xen Orchestra's client probes the path with an empty upload
//! first and takes any other status as a failure.

use super::{authorize, content_length, param, DataPathError};
use actix_web::{web, HttpRequest, HttpResponse};
use agent::backup::xmldb;
use agent::storage::transfer::TransferTask;
use agent::value::Value;
use agent::{Agent, ApiError};
use futures_util::StreamExt;
use std::sync::Arc;

/// The largest backup accepted (the reference's databases are a few megabytes).
const MAX_BACKUP: u64 = 512 << 20;

/// `GET /pool/xmldbdump`.
pub(super) async fn dump(req: HttpRequest, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref().clone();
    let auth = match authorize(&agent, &req, "get_pool_xml_db_sync").await {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    auth.finish(&agent).await;
    let task = match TransferTask::begin(&agent, param(&req, "task_id").as_deref(), "Dumping database as XML").await {
        Ok(t) => t,
        Err(e) => return DataPathError::BadRequest(e).response(),
    };
    let a = agent.clone();
    match tokio::task::spawn_blocking(move || xmldb::dump(&a)).await {
        Ok(text) => {
            task.succeed(&Value::str("")).await;
            HttpResponse::Ok()
                .content_type("text/xml")
                .insert_header(("content-disposition", "attachment; filename=\"xmldbdump.xml\""))
                .body(text)
        }
        Err(e) => {
            let err = ApiError::internal(format!("dumping the database: {e}"));
            task.fail(&err).await;
            DataPathError::Failed(err).response()
        }
    }
}

/// `PUT /pool/xmldbdump`.
pub(super) async fn restore(req: HttpRequest, mut body: web::Payload, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref().clone();
    let auth = match authorize(&agent, &req, "put_pool_xml_db_sync").await {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    auth.finish(&agent).await;
    // As the reference: a restore names its length.
    let Some(length) = content_length(&req) else {
        return DataPathError::BadRequest(ApiError::internal("a database restore needs a Content-Length")).response();
    };
    if length > MAX_BACKUP {
        return DataPathError::BadRequest(ApiError::internal(format!(
            "a database backup of {length} bytes is larger than the {MAX_BACKUP} accepted"
        )))
        .response();
    }
    let dry_run = param(&req, "dry_run").is_some_and(|v| v == "true");
    let label = if dry_run {
        "Checking a database backup"
    } else {
        "Restoring the database from a backup"
    };
    let task = match TransferTask::begin(&agent, param(&req, "task_id").as_deref(), label).await {
        Ok(t) => t,
        Err(e) => return DataPathError::BadRequest(e).response(),
    };
    let mut bytes = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    let mut read_error = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) if (bytes.len() + c.len()) as u64 <= length => bytes.extend_from_slice(&c),
            Ok(_) => break,
            Err(e) => {
                read_error = Some(format!("reading the database backup: {e}"));
                break;
            }
        }
    }
    if read_error.is_none() && (bytes.len() as u64) < length {
        read_error = Some(format!(
            "the database backup ended after {} of {length} bytes",
            bytes.len()
        ));
    }
    if let Some(msg) = read_error {
        let err = ApiError::internal(msg);
        task.fail(&err).await;
        return answered(Err(err));
    }
    let a = agent.clone();
    let outcome = tokio::task::spawn_blocking(move || xmldb::restore(&a, &bytes, dry_run))
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("restoring the database: {e}"))));
    match &outcome {
        Ok(()) => task.succeed(&Value::str("")).await,
        Err(e) => task.fail(e).await,
    }
    answered(outcome)
}

/// The answer to an accepted restore: `200`, the outcome in the body.
fn answered(outcome: Result<(), ApiError>) -> HttpResponse {
    let text = match outcome {
        Ok(()) => "OK\n".to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "database restore refused");
            format!("{e}\n")
        }
    };
    HttpResponse::Ok().content_type("text/plain").force_close().body(text)
}
