//! The HTTP data paths: `PUT /import_raw_vdi`, `GET /export_raw_vdi` and `CONNECT /console`,
//! with the reference's query parameters and authentication (a `session_id` query parameter
//! or cookie, or HTTP Basic with root's credentials), and an optional `task_id` whose
//! progress and outcome they report.
//!
//! The bodies stream: imports and exports move through the agent's io_uring engine a few
//! megabytes at a time, and are not subject to the RPC routes' body cap.

mod audit_log;
mod auth;
mod carry;
mod console;
mod console_pump;
mod disk_format;
mod migrate;
mod prometheus;
mod rrd;
mod task_stream;
mod vdi;
mod websocket;
mod xmldb;
mod xva;

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use agent::ApiError;

pub use auth::{authenticate, authorize, Auth};

/// Adds the data-path routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/import_raw_vdi", web::put().to(vdi::import))
        .route("/export_raw_vdi", web::get().to(vdi::export))
        .route("/export_raw_vdi", web::head().to(vdi::export))
        .route("/export", web::get().to(xva::export))
        .route("/export_metadata", web::get().to(xva::export_metadata))
        .route("/import", web::put().to(xva::import))
        .route("/import/", web::put().to(xva::import))
        .route("/import_metadata", web::put().to(xva::import_metadata))
        .route("/pool/xmldbdump", web::get().to(xmldb::dump))
        .route("/pool/xmldbdump", web::put().to(xmldb::restore))
        .route(agent::lifecycle::migrate::RECEIVE_PATH, web::put().to(migrate::receive))
        .route(
            agent::lifecycle::migrate::MEMORY_PATH,
            web::put().to(migrate::receive_memory),
        )
        .route("/console", web::method(Method::CONNECT).to(console::connect))
        .route("/console", web::get().to(console::connect))
        .route("/rrd_updates", web::get().to(rrd::rrd_updates))
        .route("/host_rrd", web::get().to(rrd::host_rrd))
        .route("/vm_rrd", web::get().to(rrd::vm_rrd))
        .route("/sr_rrd", web::get().to(rrd::sr_rrd))
        .route("/rrd", web::put().to(carry::put_rrd))
        .route("/messages", web::put().to(carry::put_messages))
        .route("/metrics", web::get().to(prometheus::metrics))
        .route("/audit_log", web::get().to(audit_log::get));
}

/// Failures of the data paths before or while moving bytes.
#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    /// No or bad credentials.
    #[error("authentication failed")]
    Unauthorised,
    /// The session's roles do not allow the handler (`RBAC_PERMISSION_DENIED`).
    #[error("{0}")]
    Forbidden(ApiError),
    /// The request is malformed or names nothing usable.
    #[error("{0}")]
    BadRequest(ApiError),
    /// The format exists but this build cannot do it yet.
    #[error("format {0} is not supported yet")]
    NotImplemented(String),
    /// The object named does not exist or is not ready.
    #[error("{0}")]
    NotFound(ApiError),
    /// The work failed.
    #[error("{0}")]
    Failed(ApiError),
}

impl DataPathError {
    /// The XenAPI error recorded in the task.
    pub fn api_error(&self) -> ApiError {
        match self {
            DataPathError::Unauthorised => ApiError::SessionAuthenticationFailed {},
            DataPathError::Forbidden(e)
            | DataPathError::BadRequest(e)
            | DataPathError::NotFound(e)
            | DataPathError::Failed(e) => e.clone(),
            DataPathError::NotImplemented(f) => ApiError::ImportError {
                msg: format!("format {f} is not supported yet"),
            },
        }
    }

    /// The HTTP answer.
    pub fn response(&self) -> HttpResponse {
        if let DataPathError::Forbidden(e) = self {
            tracing::debug!(error = %e, "data path refused by the role check");
            // The reference's answer to a refused HTTP permission.
            return HttpResponse::Forbidden()
                .force_close()
                .content_type("text/html")
                .body(FORBIDDEN_BODY);
        }
        let status = match self {
            DataPathError::Unauthorised => StatusCode::UNAUTHORIZED,
            DataPathError::Forbidden(_) => StatusCode::FORBIDDEN,
            DataPathError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DataPathError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            DataPathError::NotFound(_) => StatusCode::NOT_FOUND,
            DataPathError::Failed(e) => match e.fault() {
                agent::error::Fault::Client => StatusCode::BAD_REQUEST,
                agent::error::Fault::Server => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        let mut b = HttpResponse::build(status);
        // The body may be unread (a refused upload): close rather than drain it.
        b.force_close();
        if matches!(self, DataPathError::Unauthorised) {
            b.insert_header(("WWW-Authenticate", "Basic realm=\"xapi\""));
        }
        b.content_type("text/plain").body(format!("{}\n", self.api_error()))
    }
}

/// The body of a 403 answer, as the reference words it.
const FORBIDDEN_BODY: &str =
    "<html><body><h1>HTTP 403 forbidden</h1>Access to the requested resource is forbidden.</body></html>";

/// Every parameter of a request, query string then cookies, as the audit record lists them.
pub(crate) fn request_params(req: &HttpRequest) -> Vec<(String, String)> {
    let mut out = rrd::query_pairs(req);
    if let Ok(cookies) = req.cookies() {
        out.extend(cookies.iter().map(|c| (c.name().to_owned(), c.value().to_owned())));
    }
    out
}

/// An upload's bytes as a channel for a blocking reader (`agent::backup::xva_read::ChannelReader`):
/// a task copies the body in; a body that fails ends the channel with an `UnexpectedEof` error.
pub(crate) fn body_channel(mut body: web::Payload) -> tokio::sync::mpsc::Receiver<Result<web::Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(16);
    actix_web::rt::spawn(async move {
        use futures_util::StreamExt;
        while let Some(chunk) = body.next().await {
            let item = chunk.map_err(|e| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e.to_string()));
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    rx
}

/// The request's `Content-Length`, when it names one.
pub(crate) fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A request parameter from the query string or, as the reference allows, a cookie.
pub(crate) fn param(req: &HttpRequest, name: &str) -> Option<String> {
    let q = web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string()).ok();
    q.and_then(|q| q.get(name).cloned())
        .or_else(|| req.cookie(name).map(|c| c.value().to_owned()))
}

#[cfg(test)]
mod tests;
