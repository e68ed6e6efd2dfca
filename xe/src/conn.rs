//! Connections to the host: a unix socket, TCP, or TLS over TCP.
//!
//! Like the reference's `xe`, the client does not check the host's certificate against any
//! authority (hosts sign their own); the TLS handshake's signatures are still verified, so
//! the peer must hold the key of the certificate it shows.

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use xapi_sdk::AcceptAnyCertificate;

/// Where the reference's `xe` looks for the local host's socket.
pub const UNIX_SOCKET: &str = "/var/lib/xcp/xapi";

/// An open connection.
pub enum Stream {
    /// The local unix socket.
    Unix(UnixStream),
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => match s.read(buf) {
                // A peer that closes without close_notify has still ended the stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Stream {
    /// Ends the stream's sending side (TLS close_notify, or a TCP half-close), then reads
    /// what the peer still sends until it closes, so it has read everything sent before.
    pub fn finish(mut self, limit: std::time::Duration) {
        self.end_sending();
        self.drain(limit);
    }

    /// Reads what the peer still sends until it closes (or `limit` passes without a byte),
    /// the sending side left open: for a body whose length the request head gave, the host
    /// knows where it ends, and a half-close could make it drop bytes it had not read yet.
    pub fn drain(mut self, limit: std::time::Duration) {
        let sock_timeout = match &self {
            Stream::Unix(s) => s.set_read_timeout(Some(limit)),
            Stream::Tcp(s) => s.set_read_timeout(Some(limit)),
            Stream::Tls(s) => s.sock.set_read_timeout(Some(limit)),
        };
        if sock_timeout.is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        while matches!(self.read(&mut buf), Ok(n) if n > 0) {}
    }

    fn end_sending(&mut self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tls(s) => {
                s.conn.send_close_notify();
                s.flush()
            }
        };
    }

    /// The socket underneath.
    pub fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.sock.as_raw_fd(),
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The name does not resolve.
    NotFound,
    /// The system refused (`connect`, or resolving).
    Io(io::Error, String),
    /// The TLS setup failed.
    Tls(String),
}

/// `host` without the brackets of an IPv6 literal.
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// TCP to `host:port`, trying each address the name resolves to.
pub fn tcp(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let h = bare_host(host);
    let addrs: Vec<_> = match (h, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(_) => return Err(ConnectError::NotFound),
    };
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect(a) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some((e, a.to_string())),
        }
    }
    match last {
        Some((e, a)) => Err(ConnectError::Io(e, format!("connect {a}"))),
        None => Err(ConnectError::NotFound),
    }
}

/// TLS to `host:port`.
pub fn tls(host: &str, port: u16) -> Result<Stream, ConnectError> {
    let sock = tcp(host, port)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(bare_host(host).to_owned()).map_err(|e| ConnectError::Tls(e.to_string()))?;
    let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| ConnectError::Tls(e.to_string()))?;
    let mut s = StreamOwned::new(conn, sock);
    // Finish the handshake now, so a failure shows as a connection failure.
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            return Err(ConnectError::Io(e, format!("TLS handshake with {host}:{port}")));
        }
    }
    Ok(Stream::Tls(Box::new(s)))
}

/// The local socket.
pub fn unix(path: &str) -> io::Result<Stream> {
    UnixStream::connect(path).map(Stream::Unix)
}
