//! XenAPI calls to another host of the pool (or to the master a host joins): XML-RPC read as
//! XenAPI answers (`Status`, `Value`, `ErrorDescription`). A host of the pool whose certificate
//! the pool database records is reached on HTTPS port 443 at its address, trusting that
//! certificate alone: its pool-internal one, asked for with the server name `pool`, else the
//! one it serves clients; the call carries the pool secret ([`super::secret::HEADER`]). Other
//! hosts, and the master a host joins, at `http://<address>/`.

use crate::error::ApiError;
use crate::host::xmlrpc::{extension_call, parse_method_response, MethodResponse, XmlRpcValue};
use crate::schema::{class_ids, fields};
use crate::Agent;
use serde_json::Value as Json;
use std::time::Duration;

/// Why a call to another host failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The host could not be reached.
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    /// It answered with an HTTP error.
    #[error("{0} answered HTTP {1}")]
    Http(String, u16),
    /// It answered with a XenAPI failure (code, then parameters).
    #[error("{0:?}")]
    Failure(Vec<String>),
    /// Its answer is not a XenAPI answer.
    #[error("unreadable answer from {0}: {1}")]
    Unreadable(String, String),
}

impl RemoteError {
    /// The XenAPI error a caller gets: a failure the other host raised travels as it was
    /// raised (where this build knows its code), the rest as `INTERNAL_ERROR`.
    pub fn into_api(self) -> ApiError {
        match self {
            RemoteError::Failure(d) => from_wire(&d),
            other => ApiError::internal(other),
        }
    }
}

/// A XenAPI failure read off the wire, as this build's error where it knows the code.
pub fn from_wire(d: &[String]) -> ApiError {
    let (code, params) = d.split_first().map_or(("", &[][..]), |(c, p)| (c.as_str(), p));
    ApiError::from_wire(code, params)
        .unwrap_or_else(|| ApiError::internal(format!("the other host answered {}", d.join(" "))))
}

/// How long a streamed transfer (a disk, a round of memory) may take.
const STREAM_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Another host's XenAPI.
pub struct Remote {
    address: String,
    url: String,
    client: reqwest::Client,
    /// The pool secret sent with each call (over HTTPS only).
    secret: Option<String>,
}

/// `address` as the host part of a URL.
fn url_host(address: &str) -> String {
    if address.contains(':') && !address.contains('[') && address.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

/// The hosts this process has called over HTTPS (each is logged once).
static FIRST_CONTACT: std::sync::LazyLock<parking_lot::Mutex<std::collections::HashSet<String>>> =
    std::sync::LazyLock::new(Default::default);

/// The socket addresses of `address` (an IP address, or a name looked up) at `port`.
fn socket_addrs(address: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, ApiError> {
    if let Ok(ip) = address.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(vec![std::net::SocketAddr::new(ip, port)]);
    }
    use std::net::ToSocketAddrs;
    let found: Vec<_> = (address, port)
        .to_socket_addrs()
        .map_err(|e| ApiError::internal(format!("cannot resolve host address {address}: {e}")))?
        .collect();
    if found.is_empty() {
        return Err(ApiError::internal(format!(
            "host address {address} resolves to nothing"
        )));
    }
    Ok(found)
}

fn builder() -> reqwest::ClientBuilder {
    crate::ensure_tls_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
}

impl Remote {
    /// The XenAPI at `address` (an IP address or name, optionally with `:port`), over HTTP.
    pub fn new(address: &str) -> Result<Remote, ApiError> {
        let client = builder().build().map_err(ApiError::internal)?;
        Ok(Remote {
            address: address.to_owned(),
            url: format!("http://{}/", url_host(address)),
            client,
            secret: None,
        })
    }

    /// The XenAPI of `host`, a host of this pool: over HTTPS with its pinned certificate and
    /// the pool secret where the pool database records its certificate, else over HTTP.
    pub fn to_host(agent: &Agent, host: &str) -> Result<Remote, ApiError> {
        let address = agent
            .store
            .get(class_ids::host, host)
            .and_then(|h| h.get(fields::host::address).as_str().map(str::to_owned))
            .ok_or_else(|| ApiError::handle_invalid("host", host))?;
        let Some(pin) = crate::host::certificates::pinned(agent, host) else {
            return Remote::new(&address);
        };
        let port = crate::host::certificates::POOL_HTTPS_PORT;
        let tls = super::pinned_tls::client_config(&pin.fingerprint).map_err(ApiError::internal)?;
        let mut b = builder().use_preconfigured_tls(tls);
        // The pool-internal certificate is asked for by the server name `pool`: the URL names
        // it (so TLS sends it), and the name resolves to the host's address.
        let authority = if pin.internal {
            let name = crate::host::server_identity::POOL_SERVER_NAME;
            b = b.resolve_to_addrs(name, &socket_addrs(&address, port)?);
            name.to_owned()
        } else {
            url_host(&address)
        };
        let client = b.build().map_err(ApiError::internal)?;
        let secret = super::secret::current(&agent.state_dir).map_err(ApiError::internal)?;
        if FIRST_CONTACT.lock().insert(host.to_owned()) {
            tracing::info!(host, %address, fingerprint = %pin.fingerprint, internal = pin.internal,
                "calls to this host of the pool go over HTTPS, its certificate pinned");
        }
        Ok(Remote {
            url: format!("https://{authority}:{port}/"),
            address,
            client,
            secret,
        })
    }

    /// Whether calls go over HTTPS to a pinned certificate.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("https:")
    }

    /// Calls `method` with `params`; the `Value` of a success.
    pub async fn call(&self, method: &str, params: &[Json]) -> Result<XmlRpcValue, RemoteError> {
        let req = self.client.post(&self.url).header("content-type", "text/xml");
        let resp = self.send(req, extension_call(method, params).into_bytes()).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(RemoteError::Http(self.address.clone(), status.as_u16()));
        }
        let text = resp
            .text()
            .await
            .map_err(|e| RemoteError::Connect(self.address.clone(), e.to_string()))?;
        let unreadable = |m: String| RemoteError::Unreadable(self.address.clone(), m);
        let answer = match parse_method_response(&text).map_err(|e| unreadable(e.to_string()))? {
            MethodResponse::Params(mut v) if !v.is_empty() => v.swap_remove(0),
            MethodResponse::Params(_) => return Err(unreadable("no value".into())),
            MethodResponse::Fault(f) => return Err(unreadable(format!("fault {:?}", f.to_json()))),
        };
        match answer.member("Status").and_then(XmlRpcValue::as_str) {
            Some("Success") => Ok(answer.member("Value").cloned().unwrap_or(XmlRpcValue::Nil)),
            Some(_) => {
                let d = match answer.member("ErrorDescription") {
                    Some(XmlRpcValue::Array(items)) => items
                        .iter()
                        .map(|i| match i {
                            XmlRpcValue::String(s) => s.clone(),
                            other => other.to_json().to_string(),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                Err(RemoteError::Failure(d))
            }
            None => Err(unreadable("no Status".into())),
        }
    }

    /// Sends `req` with `body` and the pool secret (over HTTPS only).
    async fn send(&self, mut req: reqwest::RequestBuilder, body: Vec<u8>) -> Result<reqwest::Response, RemoteError> {
        if let Some(secret) = self.secret.as_deref().filter(|_| self.is_tls()) {
            req = req.header(super::secret::HEADER, secret);
        }
        req.body(body)
            .send()
            .await
            .map_err(|e| RemoteError::Connect(self.address.clone(), crate::error::error_chain(&e)))
    }

    /// Sends `body` with `PUT` to `path_and_query` on this host, with the pool secret (HTTPS
    /// only). A refusal's body is the XenAPI error description as a JSON array of strings.
    pub async fn put(&self, path_and_query: &str, body: Vec<u8>) -> Result<(), RemoteError> {
        let url = format!("{}{}", self.url.trim_end_matches('/'), path_and_query);
        let req = self.client.put(&url).header("content-type", "application/octet-stream");
        let resp = self.send(req, body).await?;
        self.put_answer(resp).await
    }

    /// [`Remote::put`] that reads the answer's body as text.
    pub async fn put_text(&self, path_and_query: &str, body: Vec<u8>) -> Result<String, RemoteError> {
        let url = format!("{}{}", self.url.trim_end_matches('/'), path_and_query);
        let req = self
            .client
            .put(&url)
            .timeout(STREAM_TIMEOUT)
            .header("content-type", "application/octet-stream");
        let resp = self.send(req, body).await?;
        if !resp.status().is_success() {
            return Err(self.refusal(resp).await);
        }
        resp.text()
            .await
            .map_err(|e| RemoteError::Connect(self.address.clone(), e.to_string()))
    }

    /// A `PUT`'s answer: success, or the XenAPI error its body describes.
    async fn put_answer(&self, resp: reqwest::Response) -> Result<(), RemoteError> {
        if resp.status().is_success() {
            return Ok(());
        }
        Err(self.refusal(resp).await)
    }

    /// The error an unsuccessful answer describes: the XenAPI error of its body (a JSON array
    /// of strings), else its HTTP status.
    async fn refusal(&self, resp: reqwest::Response) -> RemoteError {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<Vec<String>>(&text) {
            Ok(d) if !d.is_empty() => RemoteError::Failure(d),
            _ => RemoteError::Http(self.address.clone(), status.as_u16()),
        }
    }

    /// Sends `body` (a stream of `len` bytes) with `PUT` to `path_and_query` on this host, as
    /// [`Remote::put`] does.
    pub async fn put_stream(&self, path_and_query: &str, body: reqwest::Body, len: u64) -> Result<(), RemoteError> {
        let url = format!("{}{}", self.url.trim_end_matches('/'), path_and_query);
        let mut req = self
            .client
            .put(&url)
            .timeout(STREAM_TIMEOUT)
            .header("content-type", "application/octet-stream")
            .header("content-length", len);
        if let Some(secret) = self.secret.as_deref().filter(|_| self.is_tls()) {
            req = req.header(super::secret::HEADER, secret);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| RemoteError::Connect(self.address.clone(), crate::error::error_chain(&e)))?;
        self.put_answer(resp).await
    }

    /// `GET path_and_query` on this host (a data path: the body streams, with no overall
    /// time limit), with the pool secret over HTTPS; the response once its status says
    /// success, else the XenAPI error its body describes.
    pub async fn get_stream(&self, path_and_query: &str) -> Result<reqwest::Response, RemoteError> {
        let url = format!("{}{}", self.url.trim_end_matches('/'), path_and_query);
        let mut req = self.client.get(&url).timeout(STREAM_TIMEOUT);
        if let Some(secret) = self.secret.as_deref().filter(|_| self.is_tls()) {
            req = req.header(super::secret::HEADER, secret);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RemoteError::Connect(self.address.clone(), crate::error::error_chain(&e)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.refusal(resp).await)
    }

    /// The address this host is reached at.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Calls the private host-to-host step `xapid.pool.<name>`: its first parameter proves the
    /// caller is of the pool — the pool secret over HTTPS, else `session` (a session of the
    /// pool database, which every host checks).
    pub async fn private(&self, name: &str, session: &str, args: &[Json]) -> Result<XmlRpcValue, RemoteError> {
        let credential = match self.secret.as_deref().filter(|_| self.is_tls()) {
            Some(secret) => secret.to_owned(),
            None => session.to_owned(),
        };
        let mut params = vec![Json::String(credential)];
        params.extend_from_slice(args);
        self.call(&format!("{}{name}", super::PRIVATE_PREFIX), &params).await
    }

    /// Calls `method` and reads a string answer.
    pub async fn call_str(&self, method: &str, params: &[Json]) -> Result<String, RemoteError> {
        match self.call(method, params).await? {
            XmlRpcValue::String(s) => Ok(s),
            other => Err(RemoteError::Unreadable(
                self.address.clone(),
                format!("{} where a string belongs", other.to_json()),
            )),
        }
    }
}
