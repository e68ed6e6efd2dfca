//! An async JSON-RPC client on tokio, one keep-alive connection each, for tests that run
//! many clients at once (the soak) without one OS thread per client.

use crate::rpc::{json_reply, json_request, Reply};
use serde_json::Value as Json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One client connection.
pub struct AsyncRpc {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    id: u64,
    /// Times a reused connection was found closed by the server and reopened.
    pub reconnects: u64,
}

enum Fail {
    /// Nothing of a reply arrived (a keep-alive connection the server had closed).
    Stale(String),
    Hard(String),
}

impl AsyncRpc {
    /// A client for `addr` (connects on the first call).
    pub fn new(addr: SocketAddr) -> AsyncRpc {
        AsyncRpc {
            addr,
            conn: None,
            id: 0,
            reconnects: 0,
        }
    }

    /// Calls `method`, giving up after `timeout`.
    pub async fn call(&mut self, method: &str, params: &[Json], timeout: Duration) -> Result<Reply, String> {
        self.id += 1;
        let body = json_request(method, Some(params), self.id);
        let reused = self.conn.is_some();
        let first = tokio::time::timeout(timeout, self.post(body.as_bytes())).await;
        let resp = match first {
            Err(_) => {
                self.conn = None;
                return Err(format!("{method}: no reply within {timeout:?}"));
            }
            Ok(Ok(r)) => r,
            Ok(Err(Fail::Stale(_))) if reused => {
                self.reconnects += 1;
                match tokio::time::timeout(timeout, self.post(body.as_bytes())).await {
                    Err(_) => {
                        self.conn = None;
                        return Err(format!("{method}: no reply within {timeout:?}"));
                    }
                    Ok(Ok(r)) => r,
                    Ok(Err(Fail::Stale(e) | Fail::Hard(e))) => return Err(format!("{method}: {e}")),
                }
            }
            Ok(Err(Fail::Stale(e) | Fail::Hard(e))) => return Err(format!("{method}: {e}")),
        };
        json_reply(method, resp.0, &resp.1).map_err(|e| e.to_string())
    }

    async fn post(&mut self, body: &[u8]) -> Result<(u16, Vec<u8>), Fail> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let s = TcpStream::connect(self.addr)
                    .await
                    .map_err(|e| Fail::Hard(format!("connect: {e}")))?;
                let _ = s.set_nodelay(true);
                BufReader::with_capacity(16 * 1024, s)
            }
        };
        let mut req = format!(
            "POST /jsonrpc HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        conn.get_mut()
            .write_all(&req)
            .await
            .map_err(|e| Fail::Stale(format!("write: {e}")))?;
        let mut line = String::new();
        let n = conn
            .read_line(&mut line)
            .await
            .map_err(|e| Fail::Stale(format!("read: {e}")))?;
        if n == 0 {
            return Err(Fail::Stale("closed before a reply".into()));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Fail::Hard(format!("status line {line:?}")))?;
        let mut length = None;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line).await.map_err(|e| Fail::Hard(e.to_string()))? == 0 {
                return Err(Fail::Hard("headers cut short".into()));
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    length = v.trim().parse::<usize>().ok();
                } else if k == "connection" && v.trim().eq_ignore_ascii_case("close") {
                    close = true;
                } else if k == "transfer-encoding" {
                    return Err(Fail::Hard("chunked replies are not expected here".into()));
                }
            }
        }
        let n = length.ok_or_else(|| Fail::Hard("reply without content-length".into()))?;
        let mut body = vec![0; n];
        conn.read_exact(&mut body)
            .await
            .map_err(|e| Fail::Hard(e.to_string()))?;
        if !close {
            self.conn = Some(conn);
        }
        Ok((status, body))
    }
}
