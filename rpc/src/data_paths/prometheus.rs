//! `GET /metrics`: the daemon's figures for Prometheus, authenticated like the other data
//! paths (a scraper uses HTTP Basic credentials or a `session_id`). The reference has no
//! such handler; it needs the permission of the host's own figures, `http/host_rrd` (every
//! role has it).

use super::authorize;
use actix_web::{web, HttpRequest, HttpResponse};
use agent::Agent;
use std::sync::Arc;

/// `GET /metrics`.
pub(super) async fn metrics(req: HttpRequest, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref();
    match authorize(agent, &req, "host_rrd").await {
        Ok(a) => a.finish(agent).await,
        Err(e) => return e.response(),
    }
    let doc = agent.prometheus_metrics();
    HttpResponse::Ok().content_type(doc.content_type).body(doc.body)
}
