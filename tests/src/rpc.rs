//! A XenAPI client over JSON-RPC or XML-RPC on [`HttpClient`], returning the daemon's answer
//! as the XenAPI envelope says it: a value, or an error code with parameters.

use crate::http::{HttpClient, TransportError};
use crate::xmlrpc;
use serde_json::{json, Value as Json};
use std::net::SocketAddr;
use std::time::Duration;

/// Which wire protocol a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// JSON-RPC 2.0 at `/jsonrpc`.
    Json,
    /// XML-RPC at `/`.
    Xml,
}

/// What the daemon answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `Status: Success` with its value.
    Success(Json),
    /// `Status: Failure`: the error code, then its parameters.
    Failure(Vec<String>),
}

impl Reply {
    /// The error code of a failure.
    pub fn code(&self) -> Option<&str> {
        match self {
            Reply::Failure(d) => d.first().map(String::as_str),
            Reply::Success(_) => None,
        }
    }
}

/// Why a call has no XenAPI answer.
#[derive(Debug)]
pub enum CallError {
    /// The connection failed: the call may or may not have run.
    Transport(TransportError),
    /// The daemon answered something that is not a XenAPI reply (HTTP status, bad body).
    Bad(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "{e}"),
            CallError::Bad(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for CallError {}

/// One client connection speaking one wire protocol.
pub struct Rpc {
    /// The HTTP connection.
    pub http: HttpClient,
    /// The wire protocol.
    pub wire: Wire,
    id: u64,
}

fn strings(items: &[Json]) -> Vec<String> {
    items
        .iter()
        .map(|v| match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// A JSON-RPC 2.0 request body; `params: None` leaves the parameter list out.
pub fn json_request(method: &str, params: Option<&[Json]>, id: u64) -> String {
    let mut req = serde_json::Map::new();
    req.insert("jsonrpc".into(), json!("2.0"));
    req.insert("method".into(), json!(method));
    if let Some(p) = params {
        req.insert("params".into(), Json::Array(p.to_vec()));
    }
    req.insert("id".into(), json!(id));
    Json::Object(req).to_string()
}

/// Reads a JSON-RPC reply (1.0 or 2.0) into a XenAPI answer.
pub fn json_reply(method: &str, status: u16, body: &[u8]) -> Result<Reply, CallError> {
    if status != 200 {
        return Err(CallError::Bad(format!(
            "{method}: HTTP {status}: {}",
            String::from_utf8_lossy(body)
        )));
    }
    let v: Json =
        serde_json::from_slice(body).map_err(|e| CallError::Bad(format!("{method}: reply is not JSON: {e}")))?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        // 2.0: {code, message: CODE, data: [params]}; 1.0: [CODE, params…].
        let desc = match err {
            Json::Array(items) => strings(items),
            Json::Object(m) => {
                let mut d = vec![m.get("message").and_then(Json::as_str).unwrap_or("").to_owned()];
                if let Some(Json::Array(data)) = m.get("data") {
                    d.extend(strings(data));
                }
                d
            }
            other => vec![other.to_string()],
        };
        return Ok(Reply::Failure(desc));
    }
    match v.get("result") {
        Some(r) => Ok(Reply::Success(r.clone())),
        None => Err(CallError::Bad(format!("{method}: reply without result: {v}"))),
    }
}

impl Rpc {
    /// A client for the daemon at `addr`.
    pub fn new(addr: SocketAddr, wire: Wire) -> Rpc {
        Rpc {
            http: HttpClient::new(addr, Duration::from_secs(60)),
            wire,
            id: 0,
        }
    }

    /// Calls `method`; `params: None` sends no parameter list at all.
    pub fn call_raw(&mut self, method: &str, params: Option<&[Json]>) -> Result<Reply, CallError> {
        self.id += 1;
        match self.wire {
            Wire::Json => {
                let body = json_request(method, params, self.id);
                let resp = self
                    .http
                    .post("/jsonrpc", "application/json", body.as_bytes())
                    .map_err(CallError::Transport)?;
                json_reply(method, resp.status, &resp.body)
            }
            Wire::Xml => {
                let body = xmlrpc::encode_call(method, params);
                let resp = self
                    .http
                    .post("/", "text/xml", body.as_bytes())
                    .map_err(CallError::Transport)?;
                if resp.status != 200 {
                    return Err(CallError::Bad(format!(
                        "{method}: HTTP {}: {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body)
                    )));
                }
                let text = String::from_utf8_lossy(&resp.body);
                let v = xmlrpc::decode_response(&text)
                    .map_err(|e| CallError::Bad(format!("{method}: bad XML-RPC reply ({e}): {text}")))?;
                if method == "system.listMethods" {
                    return Ok(Reply::Success(v));
                }
                match v.get("Status").and_then(Json::as_str) {
                    Some("Success") => Ok(Reply::Success(v.get("Value").cloned().unwrap_or(Json::Null))),
                    Some("Failure") => Ok(Reply::Failure(match v.get("ErrorDescription") {
                        Some(Json::Array(items)) => strings(items),
                        other => vec![format!("{other:?}")],
                    })),
                    _ => Err(CallError::Bad(format!("{method}: reply without Status: {text}"))),
                }
            }
        }
    }

    /// Calls `method` with `params`.
    pub fn call(&mut self, method: &str, params: &[Json]) -> Result<Reply, CallError> {
        self.call_raw(method, Some(params))
    }

    /// Calls `method` and insists on success (for test set-up and checks).
    pub fn ok(&mut self, method: &str, params: &[Json]) -> Result<Json, String> {
        match self.call(method, params) {
            Ok(Reply::Success(v)) => Ok(v),
            Ok(Reply::Failure(d)) => Err(format!("{method}: {d:?}")),
            Err(e) => Err(format!("{method}: {e}")),
        }
    }

    /// Logs in as root; returns the session ref.
    pub fn login(&mut self, password: &str, originator: &str) -> Result<String, String> {
        let v = self.ok(
            "session.login_with_password",
            &[json!("root"), json!(password), json!("2.21"), json!(originator)],
        )?;
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("login answered {v}"))
    }
}
