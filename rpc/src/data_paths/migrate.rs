//! `PUT /xapid/pool_migrate_image?vm=<ref>`: the arriving end of `VM.pool_migrate` and
//! `VM.migrate_send` (`agent/src/lifecycle/migrate.rs`). Another host of the pool proves
//! itself with the pool secret in the `x-xapid-pool-secret` header (it uses HTTPS to this
//! host's pinned certificate); a host of another pool with the `session_id` this host's
//! `host.migrate_receive` gave out, whose user must hold `http/put_services_xenops` (the
//! reference's permission for its migration stream). The body is the domain's saved image; it is written under
//! the state dir, the VM is restored and committed as running on this host, and then the
//! answer goes: `200`, or the XenAPI error as a JSON array of strings (code, then parameters).
//!
//! `PUT /xapid/pool_migrate_memory?vm=<ref>&round=<k>&pages=<n>&total=<pages>`: one pre-copy
//! round of a live move (`agent/src/lifecycle/precopy.rs`), with the same proof; every page is
//! checked as it arrives (`precopy::Verifier`) and the answer says whether the round was whole.

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

/// Whether the sending host proved itself: the pool secret, or a session allowed to send a
/// migration stream.
fn from_the_pool(req: &HttpRequest, agent: &Agent) -> bool {
    let presented = req
        .headers()
        .get(agent::pool::secret::HEADER)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !presented.is_empty() && agent::pool::secret::accepted_by(agent, presented) {
        return true;
    }
    param(req, "session_id").is_some_and(|s| {
        agent
            .authorize_http(&s, "put_services_xenops", &super::request_params(req))
            .is_ok()
    })
}

pub(super) async fn receive_memory(
    req: HttpRequest,
    mut body: web::Payload,
    agent: web::Data<Arc<Agent>>,
) -> HttpResponse {
    use agent::lifecycle::precopy::Verifier;
    let agent = agent.get_ref().clone();
    if !from_the_pool(&req, &agent) {
        return refused(
            StatusCode::FORBIDDEN,
            &ApiError::internal("migration rounds come from a host of this pool with the pool secret, or with a session of host.migrate_receive"),
        );
    }
    let number = |name: &str| param(&req, name).and_then(|v| v.parse::<u64>().ok());
    let (Some(vm), Some(round), Some(pages), Some(total)) =
        (param(&req, "vm"), number("round"), number("pages"), number("total"))
    else {
        return refused(
            StatusCode::BAD_REQUEST,
            &ApiError::internal("vm, round, pages and total are needed"),
        );
    };
    let Ok(round) = u32::try_from(round) else {
        return refused(StatusCode::BAD_REQUEST, &ApiError::internal("round out of range"));
    };
    if let Err(e) = agent::lifecycle::migrate::known_vm(&agent, &vm) {
        return refused(StatusCode::NOT_FOUND, &e);
    }
    let mut check = Verifier::new(round, pages, total);
    while let Some(chunk) = body.next().await {
        let fed = match chunk {
            Ok(b) => check.feed(&b),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = fed {
            return refused(
                StatusCode::BAD_REQUEST,
                &ApiError::internal(format!("pre-copy round: {e}")),
            );
        }
    }
    match check.finish() {
        Ok(_) => HttpResponse::Ok().finish(),
        Err(e) => refused(
            StatusCode::BAD_REQUEST,
            &ApiError::internal(format!("pre-copy round: {e}")),
        ),
    }
}

pub(super) async fn receive(req: HttpRequest, mut body: web::Payload, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref().clone();
    if !from_the_pool(&req, &agent) {
        return refused(
            StatusCode::FORBIDDEN,
            &ApiError::internal("a migration image comes from a host of this pool with the pool secret, or with a session of host.migrate_receive"),
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
