//! The connection front: every accepted connection (TCP, HTTPS, the unix socket) is looked at
//! before the HTTP stack sees it.
//!
//! The thin CLI protocol starts with an ordinary request, `POST /cli` with the command line as
//! its body, but the server's answer is no HTTP response: the protocol's handshake and frames
//! follow on the raw connection, both ways, until the command exits. An HTTP stack always
//! writes a status line first, so a connection whose first request is `POST /cli` is taken
//! from the front of the connection and served by [`super::session`]; every other connection
//! goes, with the bytes already read put back in front of it, to actix-web's HTTP/1 service
//! with the application and settings an `actix_web::HttpServer` would give it.
//!
//! `xe` uploads files (`HttpPut`) by sending the request head and waiting for the status line
//! before the body, as the reference's `xe` does. A `PUT /cli/<path>` request gets `200 OK`
//! at once and then goes to the HTTP service as `PUT /<path>`, so the CLI's uploads reach the
//! ordinary data paths (`/import_raw_vdi`), whose task says how the upload ended.

use actix_http::body::MessageBody;
use actix_http::error::DispatchError;
use actix_http::{HttpService, Protocol, Request, Response};
use actix_server::{Server, ServerBuilder};
use actix_service::{
    fn_factory, fn_service, map_config, IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::{AppConfig, Extensions};
use agent::Agent;
use std::any::Any;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// What a connection's first request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `POST /cli`: a thin CLI session.
    Cli,
    /// `PUT /cli/<path>`: a CLI upload, acknowledged before its body.
    Upload,
    /// Anything else.
    Http,
}

/// How many bytes of a connection are read, at most, to tell what it is.
const SNIFF_LIMIT: usize = 8 * 1024;

/// What the bytes read so far say, or `None` when more are needed.
pub(crate) fn classify(buf: &[u8]) -> Option<Kind> {
    const CLI: &[u8] = b"POST /cli";
    const UPLOAD: &[u8] = b"PUT /cli/";
    if let Some(rest) = buf.strip_prefix(CLI) {
        return match rest.first() {
            None => None,
            Some(b' ' | b'?') => Some(Kind::Cli),
            Some(_) => Some(Kind::Http),
        };
    }
    if buf.starts_with(UPLOAD) {
        // The request line is rewritten: it must be here whole.
        return if buf.contains(&b'\n') {
            Some(Kind::Upload)
        } else if buf.len() >= SNIFF_LIMIT {
            Some(Kind::Http)
        } else {
            None
        };
    }
    if CLI.starts_with(buf) || UPLOAD.starts_with(buf) {
        return None;
    }
    Some(Kind::Http)
}

/// An upload's request line with the `/cli` prefix taken off its target.
pub(crate) fn rewrite_upload(buf: &[u8]) -> Vec<u8> {
    let prefix = b"PUT /cli".len();
    let mut out = Vec::with_capacity(buf.len());
    out.extend_from_slice(b"PUT ");
    out.extend_from_slice(buf.get(prefix..).unwrap_or_default());
    out
}

/// A stream with bytes already read from it put back in front.
pub struct Sniffed<S> {
    head: Vec<u8>,
    pos: usize,
    io: S,
    /// For an upload of known length: the bytes (head included) still to come before the
    /// request is whole; once they have come, an end of stream is held back (see
    /// [`Sniffed::whole_after`]).
    until_whole: Option<u64>,
}

impl<S> Sniffed<S> {
    /// `head` is read again before anything else from `io`.
    pub fn new(head: Vec<u8>, io: S) -> Self {
        Sniffed {
            head,
            pos: 0,
            io,
            until_whole: None,
        }
    }

    /// The request is whole after `n` bytes (its head and a body of the length the head
    /// gives): an end of stream after them is not passed on, as the client's half-close (or
    /// close) after its last byte made actix-http end a body it had not read yet with
    /// "incomplete" (its dispatcher errors the payload as soon as it sees the end of stream,
    /// even with body bytes still in its buffer). The response ends the connection instead.
    /// An end before `n` bytes is passed on: the upload was cut.
    pub fn whole_after(mut self, n: u64) -> Self {
        self.until_whole = Some(n);
        self
    }
    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.head.len() {
            let n = (this.head.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.head.len() {
                this.head = Vec::new();
                this.pos = 0;
            }
            this.counted(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = match Pin::new(&mut this.io).poll_read(cx, buf) {
            // A TLS peer that closes without close_notify has ended its stream all the same:
            // HTTP's own framing (Content-Length, chunks) tells a cut request from a whole
            // one. Read as an error, it made the HTTP/1 dispatcher drop the request still
            // being served (an upload whose last bytes had arrived).
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        };
        if let Poll::Ready(Ok(())) = read {
            let n = buf.filled().len() - before;
            if n == 0 && this.until_whole == Some(0) {
                return Poll::Pending;
            }
            this.counted(n);
        }
        read
    }
}

impl<S> Sniffed<S> {
    fn counted(&mut self, n: usize) {
        if let Some(left) = self.until_whole.as_mut() {
            *left = left.saturating_sub(n as u64);
        }
    }
}

/// The length of a request whose head is `head` (up to and with its blank line) and whose body
/// is as long as its `Content-Length` says; `None` without one.
fn whole_length(head: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(head).ok()?;
    let body = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<u64>().ok())?
    })?;
    body.checked_add(head.len() as u64)
}

/// Reads the rest of a request head (to its blank line) after `head`, within `limit`.
async fn read_head<S: AsyncRead + Unpin>(io: &mut S, mut head: Vec<u8>, limit: Duration) -> Option<Vec<u8>> {
    let read = async {
        let mut byte = [0u8; 1];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() >= SNIFF_LIMIT || io.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        Some(head)
    };
    tokio::time::timeout(limit, read).await.ok().flatten()
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Reads until the first bytes say what the connection is. `None`: the peer sent nothing
/// usable in time (the connection is dropped).
async fn sniff<S: AsyncRead + Unpin>(io: &mut S, limit: Duration) -> Option<(Kind, Vec<u8>)> {
    let read = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let room = SNIFF_LIMIT.saturating_sub(buf.len()).min(chunk.len());
            let n = match io.read(&mut chunk[..room]).await {
                Ok(n) => n,
                Err(_) => return None,
            };
            if n == 0 {
                // The peer closed: let the HTTP stack see what there is.
                return Some((Kind::Http, buf));
            }
            buf.extend_from_slice(&chunk[..n]);
            match classify(&buf) {
                Some(kind) => return Some((kind, buf)),
                None if buf.len() >= SNIFF_LIMIT => return Some((Kind::Http, buf)),
                None => {}
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok().flatten()
}

/// Any byte stream a session or the HTTP service can run on.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

type OnConnect = Arc<dyn Fn(&dyn Any, &mut Extensions) + Send + Sync>;

#[derive(Clone)]
struct Settings {
    keep_alive: Duration,
    client_request_timeout: Duration,
    client_disconnect_timeout: Duration,
    tcp_nodelay: bool,
    on_connect: Option<OnConnect>,
}

/// The application's types, held only as types.
type AppTypes<I, S, B> = fn() -> (I, S, B);

/// An `actix_web::HttpServer` look-alike (the subset xapid uses) whose connections pass
/// through the front first.
pub struct Front<F, I, S, B> {
    agent: Arc<Agent>,
    factory: F,
    builder: ServerBuilder,
    settings: Settings,
    _app: std::marker::PhantomData<AppTypes<I, S, B>>,
}

/// How long a TLS client has for its handshake (actix-tls's default).
const TLS_HANDSHAKE: Duration = Duration::from_secs(3);

impl<F, I, S, B> Front<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    /// A server for the application `factory` makes (once per worker), with `agent` serving
    /// the CLI sessions.
    pub fn new(agent: Arc<Agent>, factory: F) -> Self {
        Front {
            agent,
            factory,
            builder: ServerBuilder::default(),
            settings: Settings {
                keep_alive: Duration::from_secs(5),
                client_request_timeout: Duration::from_secs(5),
                client_disconnect_timeout: Duration::from_secs(1),
                tcp_nodelay: false,
                on_connect: None,
            },
            _app: std::marker::PhantomData,
        }
    }

    /// Called for every HTTP connection with its stream (`TcpStream`, `UnixStream` or the TLS
    /// stream) before the first request.
    pub fn on_connect<C: Fn(&dyn Any, &mut Extensions) + Send + Sync + 'static>(mut self, f: C) -> Self {
        self.settings.on_connect = Some(Arc::new(f));
        self
    }

    /// Time a client has to send its request head (a CLI client, its first bytes).
    pub fn client_request_timeout(mut self, d: Duration) -> Self {
        self.settings.client_request_timeout = d;
        self
    }

    /// Time a client has to close after the server decided to.
    pub fn client_disconnect_timeout(mut self, d: Duration) -> Self {
        self.settings.client_disconnect_timeout = d;
        self
    }

    /// How long an idle keep-alive connection is kept.
    pub fn keep_alive(mut self, d: Duration) -> Self {
        self.settings.keep_alive = d;
        self
    }

    /// Sets TCP_NODELAY on TCP connections.
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.settings.tcp_nodelay = on;
        self
    }

    /// Most connections each worker keeps open at once.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.builder = self.builder.max_concurrent_connections(n);
        self
    }

    /// Worker threads (1 to 512).
    pub fn workers(mut self, n: usize) -> Self {
        self.builder = self.builder.workers(n.clamp(1, 512));
        self
    }

    /// Serves plain TCP on `addr`.
    pub fn bind(mut self, addr: &SocketAddr) -> io::Result<Self> {
        let addr = *addr;
        let lst = tcp_listener(addr)?;
        let (agent, settings, app) = (self.agent.clone(), self.settings.clone(), self.factory.clone());
        let signal = self.builder.graceful_shutdown_signal();
        let factory = move || {
            let http =
                http_service::<actix_rt::net::TcpStream, _, _, _, _>(&settings, app.clone(), addr, signal.clone());
            let (agent, settings, signal) = (agent.clone(), settings.clone(), signal.clone());
            fn_factory(move || {
                let http = http.new_service(());
                let (agent, settings, signal) = (agent.clone(), settings.clone(), signal.clone());
                async move {
                    let http = Rc::new(http.await?);
                    Ok::<_, ()>(fn_service(move |io: actix_rt::net::TcpStream| {
                        let (http, agent, settings, signal) =
                            (http.clone(), agent.clone(), settings.clone(), signal.clone());
                        async move {
                            if settings.tcp_nodelay {
                                let _ = io.set_nodelay(true);
                            }
                            let peer_addr = io.peer_addr().ok();
                            let ends = Ends {
                                agent,
                                peer: tcp_peer(peer_addr),
                                peer_addr,
                                limit: settings.client_request_timeout,
                                signal,
                            };
                            route(io, http.as_ref(), ends).await
                        }
                    }))
                }
            })
        };
        self.builder = self.builder.listen(format!("xapid-tcp-{addr}"), lst, factory)?;
        Ok(self)
    }

    /// Serves HTTPS on `addr`.
    pub fn bind_rustls_0_23(mut self, addr: &SocketAddr, mut tls: rustls::ServerConfig) -> io::Result<Self> {
        let addr = *addr;
        let lst = tcp_listener(addr)?;
        let mut protos = vec![b"http/1.1".to_vec()];
        protos.append(&mut tls.alpn_protocols);
        tls.alpn_protocols = protos;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (agent, settings, app) = (self.agent.clone(), self.settings.clone(), self.factory.clone());
        let signal = self.builder.graceful_shutdown_signal();
        let factory = move || {
            let http = http_service::<tokio_rustls::server::TlsStream<actix_rt::net::TcpStream>, _, _, _, _>(
                &settings,
                app.clone(),
                addr,
                signal.clone(),
            );
            let (agent, settings, signal, acceptor) =
                (agent.clone(), settings.clone(), signal.clone(), acceptor.clone());
            fn_factory(move || {
                let http = http.new_service(());
                let (agent, settings, signal, acceptor) =
                    (agent.clone(), settings.clone(), signal.clone(), acceptor.clone());
                async move {
                    let http = Rc::new(http.await?);
                    Ok::<_, ()>(fn_service(move |io: actix_rt::net::TcpStream| {
                        let (http, agent, settings, signal, acceptor) = (
                            http.clone(),
                            agent.clone(),
                            settings.clone(),
                            signal.clone(),
                            acceptor.clone(),
                        );
                        async move {
                            if settings.tcp_nodelay {
                                let _ = io.set_nodelay(true);
                            }
                            let peer_addr = io.peer_addr().ok();
                            let Ok(Ok(io)) = tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(io)).await else {
                                return Ok(());
                            };
                            let ends = Ends {
                                agent,
                                peer: tcp_peer(peer_addr),
                                peer_addr,
                                limit: settings.client_request_timeout,
                                signal,
                            };
                            route(io, http.as_ref(), ends).await
                        }
                    }))
                }
            })
        };
        self.builder = self.builder.listen(format!("xapid-tls-{addr}"), lst, factory)?;
        Ok(self)
    }

    /// Serves the unix socket `listener` is bound to. A CLI client with uid 0 is root without
    /// a password, as on a XenServer host.
    pub fn listen_uds(mut self, listener: std::os::unix::net::UnixListener) -> io::Result<Self> {
        let (agent, settings, app) = (self.agent.clone(), self.settings.clone(), self.factory.clone());
        let signal = self.builder.graceful_shutdown_signal();
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let factory = move || {
            let http =
                http_service::<actix_rt::net::UnixStream, _, _, _, _>(&settings, app.clone(), local, signal.clone());
            let (agent, settings, signal) = (agent.clone(), settings.clone(), signal.clone());
            fn_factory(move || {
                let http = http.new_service(());
                let (agent, settings, signal) = (agent.clone(), settings.clone(), signal.clone());
                async move {
                    let http = Rc::new(http.await?);
                    Ok::<_, ()>(fn_service(move |io: actix_rt::net::UnixStream| {
                        let (http, agent, settings, signal) =
                            (http.clone(), agent.clone(), settings.clone(), signal.clone());
                        async move {
                            let uid = io.peer_cred().ok().map(|c| c.uid());
                            let ends = Ends {
                                agent,
                                peer: super::session::Peer {
                                    trusted_root: uid == Some(0),
                                    address: match uid {
                                        Some(u) => format!("the unix socket (uid {u})"),
                                        None => "the unix socket".into(),
                                    },
                                },
                                peer_addr: None,
                                limit: settings.client_request_timeout,
                                signal,
                            };
                            route(io, http.as_ref(), ends).await
                        }
                    }))
                }
            })
        };
        self.builder = self.builder.listen_uds("xapid-unix", listener, factory)?;
        Ok(self)
    }

    /// Starts the workers; the server runs until stopped (SIGINT, SIGTERM) or dropped.
    pub fn run(self) -> Server {
        self.builder.run()
    }
}

fn tcp_peer(addr: Option<SocketAddr>) -> super::session::Peer {
    super::session::Peer {
        trusted_root: false,
        address: addr.map_or_else(|| "unknown".into(), |a| a.ip().to_string()),
    }
}

/// A TCP listener as actix-web makes one: address reuse, a backlog of 1024.
fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol as P, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(P::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// What a connection's service needs besides the stream.
struct Ends {
    agent: Arc<Agent>,
    peer: super::session::Peer,
    peer_addr: Option<SocketAddr>,
    limit: Duration,
    signal: actix_server::GracefulShutdownSignal,
}

/// Serves one connection: a CLI session, a CLI upload, or HTTP.
async fn route<T, H>(mut io: T, http: &H, ends: Ends) -> Result<(), DispatchError>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    H: Service<(Sniffed<T>, Protocol, Option<SocketAddr>), Response = (), Error = DispatchError>,
{
    let Some((kind, head)) = sniff(&mut io, ends.limit).await else {
        return Ok(());
    };
    match kind {
        Kind::Http => {
            http.call((Sniffed::new(head, io), Protocol::Http1, ends.peer_addr))
                .await
        }
        Kind::Upload => {
            // The client sends its whole head, then waits for this before it sends the body.
            let Some(head) = read_head(&mut io, head, ends.limit).await else {
                return Ok(());
            };
            if io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.is_err() {
                return Ok(());
            }
            let _ = io.flush().await;
            let head = rewrite_upload(&head);
            let whole = whole_length(&head);
            let mut stream = Sniffed::new(head, io);
            if let Some(n) = whole {
                stream = stream.whole_after(n);
            }
            http.call((stream, Protocol::Http1, ends.peer_addr)).await
        }
        Kind::Cli => {
            let session = super::session::serve(ends.agent, Box::new(Sniffed::new(head, io)), ends.peer);
            tokio::select! {
                () = session => {}
                () = ends.signal.notified() => tracing::info!("a CLI session ended by the server's shutdown"),
            }
            Ok(())
        }
    }
}

/// actix-web's HTTP/1 service for the application, over `Sniffed<T>` streams; the on-connect
/// hook sees the `T` underneath.
fn http_service<T, F, I, S, B>(
    settings: &Settings,
    app: F,
    addr: SocketAddr,
    signal: actix_server::GracefulShutdownSignal,
) -> impl ServiceFactory<
    (Sniffed<T>, Protocol, Option<SocketAddr>),
    Config = (),
    Response = (),
    Error = DispatchError,
    InitError = (),
>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    F: Fn() -> I,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let mut svc = HttpService::<Sniffed<T>, _, _>::build()
        .graceful_shutdown_signal(move || {
            let signal = signal.clone();
            async move { signal.notified().await }
        })
        .keep_alive(settings.keep_alive)
        .client_request_timeout(settings.client_request_timeout)
        .client_disconnect_timeout(settings.client_disconnect_timeout)
        .h1_allow_half_closed(true)
        .local_addr(addr);
    if let Some(f) = settings.on_connect.clone() {
        svc = svc.on_connect_ext(move |io: &Sniffed<T>, ext: &mut Extensions| f(io.get_ref() as &dyn Any, ext));
    }
    let fac = app().into_factory().map_err(|err| err.into().error_response());
    // The application reads nothing from AppConfig (host, scheme, address).
    svc.finish(map_config(fac, |_| AppConfig::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_a_cli_session_from_http() {
        assert_eq!(classify(b"POST /cli HTTP/1.0\r\n"), Some(Kind::Cli));
        assert_eq!(classify(b"POST /cli?x=1 HTTP/1.1\r\n"), Some(Kind::Cli));
        assert_eq!(classify(b"POST /cli"), None);
        assert_eq!(classify(b"POST /c"), None);
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"POST / HTTP/1.1\r\n"), Some(Kind::Http));
        assert_eq!(classify(b"POST /client HTTP/1.1\r\n"), Some(Kind::Http));
        assert_eq!(classify(b"POST /jsonrpc HTTP/1.1\r\n"), Some(Kind::Http));
        assert_eq!(classify(b"GET /cli HTTP/1.1\r\n"), Some(Kind::Http));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Kind::Http));
        assert_eq!(classify(b"PUT /cli/import_raw_vdi?vdi=x HTTP/1.0"), None);
        assert_eq!(
            classify(b"PUT /cli/import_raw_vdi?vdi=x HTTP/1.0\r\n"),
            Some(Kind::Upload)
        );
        assert_eq!(classify(b"PUT /import_raw_vdi HTTP/1.0\r\n"), Some(Kind::Http));
        assert_eq!(classify(b"PUT /cl"), None);
    }

    #[test]
    fn an_upload_goes_on_without_the_cli_prefix() {
        assert_eq!(
            rewrite_upload(b"PUT /cli/import_raw_vdi?a=b HTTP/1.0\r\nContent-length: 3\r\n\r\nabc"),
            b"PUT /import_raw_vdi?a=b HTTP/1.0\r\nContent-length: 3\r\n\r\nabc".to_vec()
        );
    }

    /// A stream whose reads fail as a TLS stream does when the peer closes without
    /// close_notify.
    struct Truncated;

    impl AsyncRead for Truncated {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
        }
    }

    #[actix_web::test]
    async fn a_peer_that_closes_without_close_notify_reads_as_the_end() {
        let mut s = Sniffed::new(b"PUT".to_vec(), Truncated);
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"PUT");
    }

    #[actix_web::test]
    async fn a_whole_upload_holds_back_the_end_of_stream_and_a_cut_one_does_not() {
        use std::future::Future;
        let head = b"PUT /import HTTP/1.0\r\nContent-Length: 3\r\n\r\n".to_vec();
        assert_eq!(whole_length(&head), Some(head.len() as u64 + 3));
        assert_eq!(whole_length(b"PUT /import HTTP/1.0\r\n\r\n"), None);
        // Head and body, then the client's half-close: everything is read, then no end.
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"abc").await.unwrap();
        drop(a);
        let n = whole_length(&head).unwrap();
        let mut s = Sniffed::new(head.clone(), b).whole_after(n);
        let mut got = vec![0u8; n as usize];
        s.read_exact(&mut got).await.unwrap();
        assert!(got.ends_with(b"abc"));
        let mut more = [0u8; 8];
        let mut read = std::pin::pin!(s.read(&mut more));
        let waker = std::task::Waker::noop();
        let pending = read.as_mut().poll(&mut Context::from_waker(waker));
        assert!(
            pending.is_pending(),
            "the end of stream after a whole upload was passed on"
        );
        // A body cut short: the end is passed on.
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"a").await.unwrap();
        drop(a);
        let mut s = Sniffed::new(head, b).whole_after(n);
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len() as u64, n - 2);
    }

    #[actix_web::test]
    async fn sniffed_bytes_are_read_again_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut s = Sniffed::new(b"hello".to_vec(), b);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
