//! The receiving ends of what follows a VM that moved (`agent/src/metrics/carry.rs`):
//!
//! - `PUT /rrd?uuid=<uuid>[&archive=true]`: a VM's round-robin database (its XML dump). From
//!   another host of the pool, proven by the pool secret (the `x-xapid-pool-secret` header,
//!   or the reference's `pool_secret` cookie); otherwise a session allowed `http/rrd`
//!   (pool-admin, the reference's `put_rrd`).
//! - `PUT /messages?cls=<class>&uuid=<uuid>`: messages about that object, as a run of XML
//!   documents, on a session allowed `http/put_messages`.
//!
//! Bodies are read whole (at most [`MAX_BODY`] bytes) before anything is taken in; a bad one
//! changes nothing.

use super::{authorize, param};
use actix_web::{web, HttpRequest, HttpResponse};
use agent::metrics::carry;
use agent::metrics::http::StatsError;
use agent::Agent;
use futures_util::StreamExt;
use std::sync::Arc;

/// The largest body taken.
pub const MAX_BODY: usize = 64 << 20;

fn answer(r: Result<(), StatsError>) -> HttpResponse {
    match r {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => super::rrd::refusal(&e),
    }
}

/// The body as text, whole, or why not.
async fn read_text(mut body: web::Payload) -> Result<String, StatsError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StatsError::BadRequest(format!("reading the body: {e}")))?;
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(StatsError::BadRequest(format!("the body is over {MAX_BODY} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| StatsError::BadRequest("the body is not UTF-8 text".into()))
}

/// The pool secret the request presents, in the header or the reference's cookie.
fn presented_secret(req: &HttpRequest) -> Option<String> {
    let header = req
        .headers()
        .get(agent::pool::secret::HEADER)
        .and_then(|h| h.to_str().ok())
        .filter(|s| !s.is_empty());
    if let Some(s) = header {
        return Some(s.to_owned());
    }
    req.cookie("pool_secret")
        .map(|c| c.value().to_owned())
        .filter(|s| !s.is_empty())
}

/// Whether the caller may send what follows a VM: the pool secret, or a session holding
/// `action`. On refusal, the answer.
async fn admitted(agent: &Arc<Agent>, req: &HttpRequest, action: &str) -> Result<(), HttpResponse> {
    if presented_secret(req).is_some_and(|s| agent::pool::secret::accepted_by(agent, &s)) {
        return Ok(());
    }
    match authorize(agent, req, action).await {
        Ok(a) => {
            a.finish(agent).await;
            Ok(())
        }
        Err(e) => Err(e.response()),
    }
}

/// `PUT /rrd`.
pub(super) async fn put_rrd(req: HttpRequest, body: web::Payload, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref();
    if let Err(r) = admitted(agent, &req, "rrd").await {
        return r;
    }
    let Some(uuid) = param(&req, "uuid") else {
        return answer(Err(StatsError::BadRequest(
            "put_rrd: missing the 'uuid' parameter".into(),
        )));
    };
    let archive = param(&req, "archive").is_some();
    let text = match read_text(body).await {
        Ok(t) => t,
        Err(e) => return answer(Err(e)),
    };
    answer(carry::receive_rrd(agent, &uuid, &text, archive))
}

/// `PUT /messages`.
pub(super) async fn put_messages(req: HttpRequest, body: web::Payload, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref();
    if let Err(r) = admitted(agent, &req, "put_messages").await {
        return r;
    }
    let (Some(cls), Some(uuid)) = (param(&req, "cls"), param(&req, "uuid")) else {
        return answer(Err(StatsError::BadRequest(
            "put_messages: the 'cls' and 'uuid' parameters are needed".into(),
        )));
    };
    let text = match read_text(body).await {
        Ok(t) => t,
        Err(e) => return answer(Err(e)),
    };
    answer(carry::receive_messages(agent, &cls, &uuid, &text).await.map(drop))
}
