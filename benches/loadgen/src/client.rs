//! One keep-alive HTTP/1.1 connection (hyper) per simulated client, and the XenAPI calls made
//! over it in either wire protocol.

use crate::xmlrpc;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value as Json};
use std::net::SocketAddr;
use std::path::Path;

/// The wire protocol of a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// XML-RPC at `POST /`.
    Xml,
    /// JSON-RPC 2.0 at `POST /jsonrpc`.
    Json,
}

impl Protocol {
    /// Parses `xml` or `json`.
    pub fn parse(s: &str) -> Result<Protocol, String> {
        match s {
            "xml" => Ok(Protocol::Xml),
            "json" => Ok(Protocol::Json),
            other => Err(format!("unknown protocol {other:?} (xml or json)")),
        }
    }
    /// `xml` or `json`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Xml => "xml",
            Protocol::Json => "json",
        }
    }
    /// The request path of API calls.
    pub fn path(self) -> &'static str {
        match self {
            Protocol::Xml => "/",
            Protocol::Json => "/jsonrpc",
        }
    }
    /// The request's content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Protocol::Xml => "text/xml",
            Protocol::Json => "application/json",
        }
    }
    /// A request body for `method(params)`.
    pub fn encode(self, method: &str, params: &[Json], id: u64) -> Bytes {
        match self {
            Protocol::Xml => Bytes::from(xmlrpc::encode_call(method, params)),
            Protocol::Json => {
                Bytes::from(json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id}).to_string())
            }
        }
    }
    /// The result of a response body, or the API error it carries, as text.
    pub fn decode(self, body: &[u8]) -> Result<Json, String> {
        match self {
            Protocol::Json => {
                let mut v: Json = serde_json::from_slice(body).map_err(|e| format!("JSON response: {e}"))?;
                if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
                    return Err(format!("API error: {e}"));
                }
                v.get_mut("result")
                    .map(Json::take)
                    .ok_or_else(|| "JSON response without a result".to_owned())
            }
            Protocol::Xml => {
                let mut v = xmlrpc::decode_response(body)?;
                match v.get("Status").and_then(Json::as_str) {
                    Some("Success") => v
                        .get_mut("Value")
                        .map(Json::take)
                        .ok_or_else(|| "XML-RPC response without a Value".to_owned()),
                    _ => Err(format!(
                        "API error: {}",
                        v.get("ErrorDescription").cloned().unwrap_or(Json::Null)
                    )),
                }
            }
        }
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    send: SendRequest<Full<Bytes>>,
    host: &'static str,
}

impl Conn {
    /// Connects over TCP (with TCP_NODELAY, as HTTP clients do).
    pub async fn tcp(addr: SocketAddr) -> Result<Conn, String> {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
        Self::handshake(TokioIo::new(s)).await
    }

    /// Connects over the daemon's unix socket.
    pub async fn unix(path: &Path) -> Result<Conn, String> {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
        Self::handshake(TokioIo::new(s)).await
    }

    async fn handshake<T>(io: T) -> Result<Conn, String>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (send, conn) = http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            send,
            host: "localhost",
        })
    }

    /// `POST path` and the whole response body (an error unless HTTP 200).
    pub async fn post(&mut self, path: &str, content_type: &str, body: Bytes) -> Result<Bytes, String> {
        self.send.ready().await.map_err(|e| format!("connection: {e}"))?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host)
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the response to POST {path}: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "POST {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        Ok(body)
    }
}

/// A client: a connection and the protocol it speaks.
pub struct Rpc {
    /// The connection.
    pub conn: Conn,
    /// Its protocol.
    pub proto: Protocol,
    id: u64,
}

impl Rpc {
    /// A client over an open connection.
    pub fn new(conn: Conn, proto: Protocol) -> Rpc {
        Rpc { conn, proto, id: 0 }
    }

    /// Connects over TCP.
    pub async fn tcp(addr: SocketAddr, proto: Protocol) -> Result<Rpc, String> {
        Ok(Rpc::new(Conn::tcp(addr).await?, proto))
    }

    /// The raw response body of a call.
    pub async fn call_raw(&mut self, method: &str, params: &[Json]) -> Result<Bytes, String> {
        self.id += 1;
        let body = self.proto.encode(method, params, self.id);
        self.conn.post(self.proto.path(), self.proto.content_type(), body).await
    }

    /// A call's result; API errors become `Err` with the method's name.
    pub async fn call(&mut self, method: &str, params: &[Json]) -> Result<Json, String> {
        let body = self.call_raw(method, params).await?;
        self.proto.decode(&body).map_err(|e| format!("{method}: {e}"))
    }

    /// `session.login_with_password(user, pw, "2.21", originator)`.
    pub async fn login(&mut self, password: &str, originator: &str) -> Result<String, String> {
        let v = self
            .call(
                "session.login_with_password",
                &[json!("root"), json!(password), json!("2.21"), json!(originator)],
            )
            .await?;
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("login returned {v}"))
    }
}

/// The text of a string result.
pub fn as_string(v: &Json) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a string, got {v}"))
}
