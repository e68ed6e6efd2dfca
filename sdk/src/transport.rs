//! HTTP/1.1 over TCP, TLS (rustls) or a unix socket, with idle connections kept for reuse.

use crate::Error;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Idle connections kept per client.
const MAX_IDLE: usize = 8;
/// How long a connection (and its TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a request is retried on a kept connection the server had closed meanwhile
/// (the request was never sent on it).
const STALE_RETRIES: usize = MAX_IDLE + 1;

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Where the server listens.
pub(crate) enum Endpoint {
    Tcp {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
        connector: tokio_rustls::TlsConnector,
        server_name: ServerName<'static>,
    },
    Unix(PathBuf),
}

impl Endpoint {
    fn describe(&self) -> String {
        match self {
            Endpoint::Tcp { host, port } => format!("http://{host}:{port}"),
            Endpoint::Tls { host, port, .. } => format!("https://{host}:{port}"),
            Endpoint::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

type Sender = SendRequest<Full<Bytes>>;

/// One server's connections.
pub(crate) struct Transport {
    endpoint: Endpoint,
    /// The `Host` header.
    authority: String,
    idle: Mutex<Vec<Sender>>,
}

fn http_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Http(Box::new(e))
}

impl Transport {
    pub(crate) fn new(endpoint: Endpoint, authority: String) -> Transport {
        Transport {
            endpoint,
            authority,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn describe(&self) -> String {
        self.endpoint.describe()
    }

    fn take_idle(&self) -> Option<Sender> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    fn put_idle(&self, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(s);
        }
    }

    async fn open(&self) -> Result<Box<dyn Io>, std::io::Error> {
        Ok(match &self.endpoint {
            Endpoint::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Endpoint::Tls {
                host,
                port,
                connector,
                server_name,
            } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Box::new(connector.connect(server_name.clone(), s).await?)
            }
            Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    }

    async fn connect(&self) -> Result<Sender, Error> {
        self.connect_for().await
    }

    /// A new connection whose requests carry bodies of type `B`.
    async fn connect_for<B>(&self) -> Result<SendRequest<B>, Error>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let connect_error = |source| Error::Connect {
            endpoint: self.describe(),
            source,
        };
        let io = match tokio::time::timeout(CONNECT_TIMEOUT, self.open()).await {
            Ok(r) => r.map_err(connect_error)?,
            Err(_) => return Err(connect_error(std::io::ErrorKind::TimedOut.into())),
        };
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await.map_err(http_error)?;
        // The connection's own task: it ends when the server closes or the sender is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// POSTs `body` to `path` and returns the response body (HTTP 200 only).
    pub(crate) async fn post(&self, path: &str, content_type: &'static str, body: Vec<u8>) -> Result<Bytes, Error> {
        let body = Bytes::from(body);
        let mut stale = 0;
        loop {
            let (mut sender, kept) = match self.take_idle() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            if let Err(e) = sender.ready().await {
                if kept {
                    continue;
                }
                return Err(http_error(e));
            }
            let req = Request::post(path)
                .header(HOST, self.authority.as_str())
                .header(CONTENT_TYPE, content_type)
                .header(USER_AGENT, concat!("xapi-sdk/", env!("CARGO_PKG_VERSION")))
                .body(Full::new(body.clone()))
                .map_err(http_error)?;
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = resp.into_body().collect().await.map_err(http_error)?.to_bytes();
                    self.put_idle(sender);
                    if status != StatusCode::OK {
                        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
                        return Err(Error::Status {
                            status: status.as_u16(),
                            body: text,
                        });
                    }
                    return Ok(bytes);
                }
                Err(mut e) => {
                    // A kept connection the server closed meanwhile: the request was never
                    // written, so it is safe to send it on another.
                    if kept && e.take_message().is_some() && stale < STALE_RETRIES {
                        stale += 1;
                        continue;
                    }
                    return Err(http_error(e.into_error()));
                }
            }
        }
    }
}

impl Transport {
    /// Sends one request whose body streams (a data path's upload, or none), on a connection
    /// of its own, and returns the response once its head has arrived (HTTP 200 only; any
    /// other status is [`Error::Status`] with the start of its body). `len` is the body's
    /// Content-Length.
    pub(crate) async fn stream(
        &self,
        method: hyper::Method,
        path: &str,
        body: StreamingBody,
        len: Option<u64>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Error> {
        let mut sender = self.connect_for::<StreamingBody>().await?;
        sender.ready().await.map_err(http_error)?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.authority.as_str())
            .header(USER_AGENT, concat!("xapi-sdk/", env!("CARGO_PKG_VERSION")));
        if let Some(n) = len {
            req = req
                .header(hyper::header::CONTENT_LENGTH, n)
                .header(CONTENT_TYPE, "application/octet-stream");
        }
        let req = req.body(body).map_err(http_error)?;
        let resp = sender.send_request(req).await.map_err(http_error)?;
        let status = resp.status();
        if status != StatusCode::OK {
            let bytes = resp.into_body().collect().await.map_err(http_error)?.to_bytes();
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(Error::Status {
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(resp)
    }
}

/// A request body that streams.
pub(crate) type StreamingBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// TLS settings.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsOptions {
    pub(crate) accept_invalid_certs: bool,
    pub(crate) root_pems: Vec<Vec<u8>>,
    pub(crate) no_native_roots: bool,
}

pub(crate) fn tls_connector(opts: &TlsOptions) -> Result<tokio_rustls::TlsConnector, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut config = if opts.accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for pem in &opts.root_pems {
            let mut found = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| Error::Tls(format!("reading a PEM certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Tls(format!("adding a root certificate: {e}")))?;
                found += 1;
            }
            if found == 0 {
                return Err(Error::Tls("a root certificate PEM holds no certificate".into()));
            }
        }
        if !opts.no_native_roots {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
        if roots.is_empty() {
            return Err(Error::Tls(
                "no trusted root certificate: add the server's CA, or accept invalid certificates for a lab".into(),
            ));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A certificate verifier that accepts any certificate the server shows (self-signed lab
/// hosts); the handshake's signatures are still checked with it. Used by
/// [`ClientBuilder::accept_invalid_certs`](crate::ClientBuilder::accept_invalid_certs) and by blocking clients
/// (the `xe` binary) that build their own rustls configuration.
#[derive(Debug)]
pub struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl AcceptAnyCertificate {
    /// The verifier, checking signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> AcceptAnyCertificate {
        AcceptAnyCertificate(provider)
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
