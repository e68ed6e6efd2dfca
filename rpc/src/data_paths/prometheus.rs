//! `GET /metrics`: the daemon's figures for Prometheus, authenticated like the other data
//! paths (a scraper uses HTTP Basic credentials or a `session_id`).

use super::authenticate;
use actix_web::{web, HttpRequest, HttpResponse};
use agent::Agent;
use std::sync::Arc;

/// `GET /metrics`.
pub(super) async fn metrics(req: HttpRequest, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref();
    match authenticate(agent, &req).await {
        Ok(a) => a.finish(agent).await,
        Err(e) => return e.response(),
    }
    let doc = agent.prometheus_metrics();
    HttpResponse::Ok().content_type(doc.content_type).body(doc.body)
}
