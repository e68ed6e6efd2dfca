//! The client, its builder, the future of one call, and the logged-in session.

use crate::codec;
use crate::transport::{tls_connector, Endpoint, TlsOptions, Transport};
use crate::{Error, EventStream, SessionRef};
use hyper::Uri;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use std::future::Future;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The wire form of calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wire {
    /// XML-RPC, posted to the URL's path (`/` by default), as XenAPI.py speaks it.
    #[default]
    XmlRpc,
    /// JSON-RPC 2.0, posted to `/jsonrpc`.
    JsonRpc,
}

/// Where the client connects.
#[derive(Clone, Debug)]
enum Target {
    Url(String),
    Unix(PathBuf),
}

/// Builds a [`Client`].
///
/// ```no_run
/// # fn main() -> Result<(), xapi_sdk::Error> {
/// use xapi_sdk::{Client, Wire};
/// let lab = Client::builder("https://xenserver.lab:443").accept_invalid_certs(true).wire(Wire::JsonRpc).build()?;
/// let local = Client::unix("/var/lib/xcp/xapi").build()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    target: Target,
    wire: Wire,
    tls: TlsOptions,
}

impl ClientBuilder {
    /// The wire form (XML-RPC by default).
    pub fn wire(mut self, wire: Wire) -> Self {
        self.wire = wire;
        self
    }

    /// Accepts any server certificate, self-signed ones included: for lab hosts only, as it
    /// lets anyone on the path pose as the server.
    pub fn accept_invalid_certs(mut self, yes: bool) -> Self {
        self.tls.accept_invalid_certs = yes;
        self
    }

    /// Trusts the certificates of this PEM text as roots (a pool's own CA, or the host's
    /// self-signed certificate), besides the system's.
    pub fn add_root_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_pems.push(pem.into());
        self
    }

    /// Does not trust the system's root certificates, only those added.
    pub fn without_system_roots(mut self) -> Self {
        self.tls.no_native_roots = true;
        self
    }

    /// The client.
    pub fn build(self) -> Result<Client, Error> {
        let (endpoint, authority, path) = match &self.target {
            Target::Unix(p) => (Endpoint::Unix(p.clone()), "localhost".to_owned(), "/".to_owned()),
            Target::Url(url) => {
                let bad = |reason: &str| Error::Url {
                    url: url.clone(),
                    reason: reason.to_owned(),
                };
                let uri: Uri = url
                    .parse()
                    .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
                let host = uri.host().ok_or_else(|| bad("no host"))?;
                // `[::1]` is connected to as `::1`.
                let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
                let authority = uri
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| host.to_owned());
                let path = match uri.path() {
                    "" => "/".to_owned(),
                    p => p.to_owned(),
                };
                let endpoint = match uri.scheme_str() {
                    Some("http") => Endpoint::Tcp {
                        host: bare,
                        port: uri.port_u16().unwrap_or(80),
                    },
                    Some("https") => {
                        let server_name =
                            rustls::pki_types::ServerName::try_from(bare.clone()).map_err(|e| bad(&e.to_string()))?;
                        Endpoint::Tls {
                            host: bare,
                            port: uri.port_u16().unwrap_or(443),
                            connector: tls_connector(&self.tls)?,
                            server_name,
                        }
                    }
                    _ => return Err(bad("the scheme must be http or https")),
                };
                (endpoint, authority, path)
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                transport: Transport::new(endpoint, authority),
                wire: self.wire,
                xml_path: path,
                next_id: AtomicU64::new(1),
            }),
        })
    }
}

struct Inner {
    transport: Transport,
    wire: Wire,
    xml_path: String,
    next_id: AtomicU64,
}

/// A connection to one server: cheap to clone, shared by every session made with it.
///
/// Calls made without a session (logging in) are methods of the client; everything else is
/// made through a [`Session`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.transport.describe())
            .field("wire", &self.inner.wire)
            .finish()
    }
}

impl Client {
    /// A builder for the server at `url` (`http://host[:port][/path]` or `https://…`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            target: Target::Url(url.into()),
            wire: Wire::default(),
            tls: TlsOptions::default(),
        }
    }

    /// A builder for the server on the unix socket at `path` (xapi's is `/var/lib/xcp/xapi`).
    pub fn unix(path: impl Into<PathBuf>) -> ClientBuilder {
        ClientBuilder {
            target: Target::Unix(path.into()),
            wire: Wire::default(),
            tls: TlsOptions::default(),
        }
    }

    /// The connections to the server.
    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// The wire form of this client's calls.
    pub fn wire(&self) -> Wire {
        self.inner.wire
    }

    /// Calls `method` with untyped parameters and returns the untyped result: for messages
    /// this SDK's datamodel does not have. XenAPI's envelopes are unwrapped and failures
    /// become [`Error::Api`].
    pub async fn call_raw(&self, method: &str, params: Vec<Json>) -> Result<Json, Error> {
        let inner = &self.inner;
        match inner.wire {
            Wire::XmlRpc => {
                let body = codec::xml::write_call(method, &params)?;
                let reply = inner
                    .transport
                    .post(&inner.xml_path, "text/xml", body.into_bytes())
                    .await?;
                codec::xml::read_reply(&reply)
            }
            Wire::JsonRpc => {
                let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
                let body = codec::json::write_call(method, params, id)?;
                let reply = inner.transport.post("/jsonrpc", "application/json", body).await?;
                codec::json::read_reply(&reply)
            }
        }
    }

    /// A typed call with parameters already encoded.
    pub(crate) fn call<T: DeserializeOwned>(&self, method: &'static str, params: Vec<Result<Json, Error>>) -> Call<T> {
        Call {
            fut: self.send(method, params),
            result: PhantomData,
        }
    }

    /// The untyped part of every typed call, shared by all result types.
    fn send(&self, method: &'static str, params: Vec<Result<Json, Error>>) -> BoxedReply {
        let client = self.clone();
        Box::pin(async move {
            let params = params.into_iter().collect::<Result<Vec<Json>, Error>>()?;
            client.call_raw(method, params).await
        })
    }
}

type BoxedReply = Pin<Box<dyn Future<Output = Result<Json, Error>> + Send>>;

/// The pending result of one call: await it.
///
/// Nothing is sent until it is first polled. It owns what it needs (`'static`), so it can be
/// spawned.
#[must_use = "a call does nothing until it is awaited"]
pub struct Call<T> {
    fut: BoxedReply,
    result: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Call<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Call")
    }
}

impl<T: DeserializeOwned> Future for Call<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.fut.as_mut().poll(cx) {
            Poll::Ready(Ok(j)) => Poll::Ready(codec::decode(&j)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A logged-in session: every call that takes a `session_id` is made through one.
///
/// `session.vm()`, `session.host()`, … give each class's calls ([`crate::api`]). Cheap to
/// clone; the session stays valid on the server until [`logout`](Session::logout) (or its
/// idle timeout).
#[derive(Clone, Debug)]
pub struct Session {
    client: Client,
    reference: SessionRef,
}

impl Session {
    /// Logs in (`session.login_with_password`). `version` is the API version the client
    /// speaks (`"2.21"`), `originator` names the client program in the server's logs.
    pub async fn login_with_password(
        client: &Client,
        uname: &str,
        pwd: &str,
        version: &str,
        originator: &str,
    ) -> Result<Session, Error> {
        let reference = client.login_with_password(uname, pwd, version, originator).await?;
        Ok(Session::from_ref(client.clone(), reference))
    }

    /// A session already logged in (by another program, or saved).
    pub fn from_ref(client: Client, reference: SessionRef) -> Session {
        Session { client, reference }
    }

    /// The session's reference.
    pub fn reference(&self) -> &SessionRef {
        &self.reference
    }

    /// The client the session calls through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Logs out (`session.logout`).
    pub async fn logout(self) -> Result<(), Error> {
        self.session().logout().await
    }

    /// The events of `classes` (`"vm"`, `"task"`, `"*"` for all; `"vm/OpaqueRef:…"` for one
    /// object) from now on, as a stream: each object's current state first, as `add` events,
    /// then each change as it happens. See [`EventStream`].
    pub fn events<S: AsRef<str>>(&self, classes: &[S]) -> EventStream {
        EventStream::new(
            self.clone(),
            classes.iter().map(|c| c.as_ref().to_owned()).collect(),
            String::new(),
        )
    }

    /// Like [`events`](Session::events), resuming after `token` (a token an earlier stream
    /// or `event.from` returned).
    pub fn events_since<S: AsRef<str>>(&self, classes: &[S], token: &str) -> EventStream {
        EventStream::new(
            self.clone(),
            classes.iter().map(|c| c.as_ref().to_owned()).collect(),
            token.to_owned(),
        )
    }

    /// A typed call with the session prepended to the parameters.
    pub(crate) fn call<T: DeserializeOwned>(&self, method: &'static str, params: Vec<Result<Json, Error>>) -> Call<T> {
        self.client.call(method, self.with_session(params))
    }

    fn with_session(&self, params: Vec<Result<Json, Error>>) -> Vec<Result<Json, Error>> {
        let mut all = Vec::with_capacity(params.len() + 1);
        all.push(Ok(Json::String(self.reference.as_str().to_owned())));
        all.extend(params);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawnable<T: Send + 'static>() {}

    #[test]
    fn calls_sessions_and_streams_can_be_spawned() {
        spawnable::<Client>();
        spawnable::<Session>();
        spawnable::<Call<crate::VMRecord>>();
        spawnable::<crate::EventStream>();
        spawnable::<crate::AsyncTask<crate::VMRef>>();
    }

    #[test]
    fn urls_are_checked_when_the_client_is_built() {
        for bad in ["ftp://host/", "host:8080", "http://", "not a url"] {
            let r = Client::builder(bad).build();
            assert!(matches!(r, Err(Error::Url { .. })), "{bad}: {r:?}");
        }
        for good in ["http://127.0.0.1:8080", "http://[::1]:8080/RPC2", "http://host"] {
            Client::builder(good).build().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let c = Client::builder("https://10.0.0.1")
            .accept_invalid_certs(true)
            .wire(Wire::JsonRpc)
            .build()
            .unwrap();
        assert_eq!(c.wire(), Wire::JsonRpc);
        Client::unix("/var/lib/xcp/xapi").build().unwrap();
        // Only the roots added are trusted, and none were.
        let r = Client::builder("https://host").without_system_roots().build();
        assert!(matches!(r, Err(Error::Tls(_))), "{r:?}");
        let r = Client::builder("https://host")
            .add_root_certificate_pem("not a certificate")
            .build();
        assert!(matches!(r, Err(Error::Tls(_))), "{r:?}");
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = Client::builder(format!("http://127.0.0.1:{port}")).build().unwrap();
        let r = c.login_with_password("root", "", "2.21", "t").await;
        assert!(matches!(r, Err(Error::Connect { .. })), "{r:?}");
    }
}
