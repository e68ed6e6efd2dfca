//! `GET /audit_log[?since=<ISO 8601 time>]`: the audit records (`<state dir>/audit.log` and
//! its rotated files, oldest first) as `text/plain`, from `since` on. The session needs
//! `http/get_audit_log` and the `pool-admin` role (see `docs/rbac.md`); a refusal is 403.

use super::auth::refusal;
use super::{authenticate, request_params};
use actix_web::{web, HttpRequest, HttpResponse};
use agent::Agent;
use std::sync::Arc;

/// `GET /audit_log`.
pub(super) async fn get(req: HttpRequest, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref();
    let auth = match authenticate(agent, &req).await {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    let lines = agent.audit_log(&auth.session, &request_params(&req));
    auth.finish(agent).await;
    match lines {
        Ok(lines) => {
            let mut body = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
            for l in lines {
                body.push_str(&l);
                body.push('\n');
            }
            // As the reference, the answer ends with the connection.
            HttpResponse::Ok().force_close().content_type("text/plain").body(body)
        }
        Err(e) => refusal(e).response(),
    }
}
