//! A small blocking HTTP/1.1 client over `std::net`: one keep-alive connection, `POST` only,
//! `Content-Length` or chunked replies. Written for tests that must know exactly what happened
//! to each request (sent, answered, or lost with the connection), so it never retries on its
//! own unless told to.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Why a request got no complete reply.
#[derive(Debug)]
pub enum TransportError {
    /// The connection could not be made: the request was never sent.
    Connect(std::io::Error),
    /// The connection failed after the request may have been sent.
    Io(std::io::Error),
    /// The reply was not HTTP as expected.
    Protocol(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Connect(e) => write!(f, "connect: {e}"),
            TransportError::Io(e) => write!(f, "i/o: {e}"),
            TransportError::Protocol(s) => write!(f, "protocol: {s}"),
        }
    }
}

impl std::error::Error for TransportError {}

/// An HTTP reply.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// One keep-alive connection to one address, reopened when it breaks.
pub struct HttpClient {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
    /// Retry once on a fresh connection when a reused one turns out closed before any reply
    /// byte arrived (the server's keep-alive timer). Off for tests that count writes.
    pub retry_stale: bool,
}

impl HttpClient {
    /// A client for `addr`; each request may take up to `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> HttpClient {
        HttpClient {
            addr,
            timeout,
            conn: None,
            retry_stale: false,
        }
    }

    /// Drops the connection; the next request opens a new one.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// Points the client at another address (drops the connection).
    pub fn set_addr(&mut self, addr: SocketAddr) {
        self.addr = addr;
        self.conn = None;
    }

    fn connect(&mut self) -> Result<BufReader<TcpStream>, TransportError> {
        let s = TcpStream::connect_timeout(&self.addr, self.timeout).map_err(TransportError::Connect)?;
        s.set_nodelay(true).map_err(TransportError::Connect)?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(TransportError::Connect)?;
        s.set_write_timeout(Some(self.timeout))
            .map_err(TransportError::Connect)?;
        Ok(BufReader::with_capacity(64 * 1024, s))
    }

    /// Sends `POST path` with `body` and reads the reply.
    pub fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> Result<Response, TransportError> {
        let reused = self.conn.is_some();
        match self.post_once(path, content_type, body) {
            Err(f) if f.stale && reused && self.retry_stale => {
                self.conn = None;
                self.post_once(path, content_type, body).map_err(|f| f.err)
            }
            r => r.map_err(|f| f.err),
        }
    }

    fn post_once(&mut self, path: &str, content_type: &str, body: &[u8]) -> Result<Response, Failure> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().map_err(Failure::stale)?,
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nUser-Agent: xapid-tests\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        conn.get_mut()
            .write_all(&req)
            .map_err(|e| Failure::stale(TransportError::Io(e)))?;
        let mut line = String::new();
        let n = read_line(&mut conn, &mut line).map_err(Failure::stale)?;
        if n == 0 {
            return Err(Failure::stale(TransportError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a reply",
            ))));
        }
        // From here on part of a reply has arrived: a failure is not a stale connection.
        let (resp, close) = read_rest(&mut conn, &line).map_err(|err| Failure { err, stale: false })?;
        if !close {
            self.conn = Some(conn);
        }
        Ok(resp)
    }
}

/// A failed attempt; `stale` when no byte of a reply had arrived.
struct Failure {
    err: TransportError,
    stale: bool,
}

impl Failure {
    fn stale(err: TransportError) -> Failure {
        Failure { err, stale: true }
    }
}

fn read_line(conn: &mut BufReader<TcpStream>, line: &mut String) -> Result<usize, TransportError> {
    line.clear();
    conn.read_line(line).map_err(TransportError::Io)
}

/// Reads headers and body after the status line; also says whether the server will close.
fn read_rest(conn: &mut BufReader<TcpStream>, status_line: &str) -> Result<(Response, bool), TransportError> {
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(TransportError::Protocol(format!("status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TransportError::Protocol(format!("status line {status_line:?}")))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    let mut line = String::new();
    loop {
        if read_line(conn, &mut line)? == 0 {
            return Err(TransportError::Protocol("headers cut short".into()));
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim();
            match k.as_str() {
                "content-length" => {
                    length = Some(
                        v.parse()
                            .map_err(|_| TransportError::Protocol(format!("content-length {v:?}")))?,
                    )
                }
                "transfer-encoding" if v.eq_ignore_ascii_case("chunked") => chunked = true,
                "connection" if v.eq_ignore_ascii_case("close") => close = true,
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            if read_line(conn, &mut line)? == 0 {
                return Err(TransportError::Protocol("chunk cut short".into()));
            }
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| TransportError::Protocol(format!("chunk size {size_text:?}")))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    if read_line(conn, &mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..]).map_err(TransportError::Io)?;
            read_line(conn, &mut line)?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        conn.read_exact(&mut body).map_err(TransportError::Io)?;
    } else if close {
        conn.read_to_end(&mut body).map_err(TransportError::Io)?;
    }
    Ok((Response { status, body }, close))
}
