//! `PUT /xapid/pool_migrate_image?vm=<ref>`: the arriving end of `VM.pool_migrate`
//! (`agent/src/lifecycle/migrate.rs`). Only another host of the pool calls it: the request
//! carries the pool secret in the `x-xapid-pool-secret` header (the sending host uses HTTPS to
//! this host's pinned certificate). The body is the domain's saved image; it is written under
//! the state dir, the VM is restored and committed as running on this host, and then the
//! answer goes: `200`, or the XenAPI error as a JSON array of strings (code, then parameters).

use super::param;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use agent::{Agent, ApiError};
use futures_util::StreamExt;
use std::sync::Arc;

/// The error description as the sending host reads it.
fn refused(status: StatusCode, e: &ApiError) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(serde_json::Value::from(e.description()).to_string())
}

pub(super) async fn receive(req: HttpRequest, mut body: web::Payload, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref().clone();
    let presented = req
        .headers()
        .get(agent::pool::secret::HEADER)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if presented.is_empty() || !agent::pool::secret::accepted_by(&agent, presented) {
        return refused(
            StatusCode::FORBIDDEN,
            &ApiError::internal("a migration image comes from a host of this pool, with the pool secret"),
        );
    }
    let Some(vm) = param(&req, "vm") else {
        return refused(StatusCode::BAD_REQUEST, &ApiError::internal("no vm parameter"));
    };
    let path = match agent::lifecycle::migrate::arriving_image(&agent, &vm) {
        Ok(p) => p,
        Err(e) => return refused(StatusCode::NOT_FOUND, &e),
    };
    let mut image = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => image.extend_from_slice(&b),
            Err(e) => return refused(StatusCode::BAD_REQUEST, &ApiError::internal(e)),
        }
    }
    if let Err(e) = tokio::fs::write(&path, &image).await {
        return refused(StatusCode::INTERNAL_SERVER_ERROR, &ApiError::internal(e));
    }
    let restored = agent::lifecycle::migrate::receive(&agent, &vm, &path).await;
    let _ = tokio::fs::remove_file(&path).await;
    match restored {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}
