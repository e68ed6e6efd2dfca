//! The stats paths: `GET /rrd_updates`, `/host_rrd`, `/vm_rrd?uuid=` and `/sr_rrd?uuid=`,
//! authenticated like the other data paths, answered with the agent's documents (XML or JSON,
//! as the client's `Accept` header or a `json` parameter asks) and the reference's headers.

use super::authorize;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use agent::metrics::http::{client_prefers_json, StatsDoc, StatsError};
use agent::Agent;
use std::sync::Arc;

/// Every query parameter, in order, repeats kept (`vm_uuid` may repeat).
pub(crate) fn query_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default()
}

fn accept(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|h| h.to_str().ok())
}

fn answer(r: Result<StatsDoc, StatsError>) -> HttpResponse {
    match r {
        Ok(doc) => HttpResponse::Ok()
            .content_type(doc.content_type)
            .insert_header(("Access-Control-Allow-Origin", "*"))
            .insert_header(("Access-Control-Allow-Headers", "X-Requested-With"))
            .body(doc.body),
        Err(e) => refusal(&e),
    }
}

/// A stats path's refusal: 400, 404 or 500 with the reason as text. The connection is closed
/// (an upload's body may be unread).
pub(super) fn refusal(e: &StatsError) -> HttpResponse {
    let status = match e {
        StatsError::BadRequest(_) => StatusCode::BAD_REQUEST,
        StatsError::NotFound(_) => StatusCode::NOT_FOUND,
        StatsError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    HttpResponse::build(status)
        .force_close()
        .content_type("text/plain")
        .body(format!("{e}\n"))
}

/// Authenticates and checks the session's role for `action` (a session opened by Basic
/// credentials is closed at once: the answer needs none).
async fn check(agent: &Arc<Agent>, req: &HttpRequest, action: &str) -> Result<(), HttpResponse> {
    match authorize(agent, req, action).await {
        Ok(a) => {
            a.finish(agent).await;
            Ok(())
        }
        Err(e) => Err(e.response()),
    }
}

fn wants_json(req: &HttpRequest, pairs: &[(String, String)]) -> bool {
    client_prefers_json(accept(req), pairs.iter().any(|(k, _)| k == "json"))
}

/// `GET /rrd_updates`.
pub(super) async fn rrd_updates(req: HttpRequest, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref();
    if let Err(r) = check(agent, &req, "rrd_updates").await {
        return r;
    }
    answer(agent.rrd_updates(&query_pairs(&req), accept(&req)))
}

/// `GET /host_rrd`.
pub(super) async fn host_rrd(req: HttpRequest, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref();
    if let Err(r) = check(agent, &req, "host_rrd").await {
        return r;
    }
    answer(agent.host_rrd(wants_json(&req, &query_pairs(&req))))
}

async fn owner_rrd(req: HttpRequest, agent: web::Data<Arc<Agent>>, sr: bool) -> HttpResponse {
    let agent = agent.get_ref();
    if let Err(r) = check(agent, &req, if sr { "sr_rrd" } else { "vm_rrd" }).await {
        return r;
    }
    let pairs = query_pairs(&req);
    let Some(uuid) = pairs.iter().find(|(k, _)| k == "uuid").map(|(_, v)| v.clone()) else {
        let path = if sr { "get_sr_rrd" } else { "get_vm_rrd" };
        return answer(Err(StatsError::BadRequest(format!(
            "{path}: missing the 'uuid' parameter"
        ))));
    };
    let json = wants_json(&req, &pairs);
    answer(if sr {
        agent.sr_rrd(&uuid, json).await
    } else {
        agent.vm_rrd(&uuid, json).await
    })
}

/// `GET /vm_rrd?uuid=`.
pub(super) async fn vm_rrd(req: HttpRequest, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    owner_rrd(req, agent, false).await
}

/// `GET /sr_rrd?uuid=`.
pub(super) async fn sr_rrd(req: HttpRequest, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    owner_rrd(req, agent, true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn query_pairs_keep_repeats_and_order() {
        let req = TestRequest::get()
            .uri("/rrd_updates?start=-60&vm_uuid=a&host=true&vm_uuid=b%2Dc&json")
            .to_http_request();
        assert_eq!(
            query_pairs(&req),
            [
                ("start".to_owned(), "-60".to_owned()),
                ("vm_uuid".to_owned(), "a".to_owned()),
                ("host".to_owned(), "true".to_owned()),
                ("vm_uuid".to_owned(), "b-c".to_owned()),
                ("json".to_owned(), String::new()),
            ]
        );
        let bad = TestRequest::get().uri("/rrd_updates?%zz").to_http_request();
        let _ = query_pairs(&bad);
    }
}
