//! XenAPI calls to another host of the pool (or to the master a host joins): XML-RPC over HTTP
//! to `http://<address>/`, read as XenAPI answers (`Status`, `Value`, `ErrorDescription`).

use crate::error::ApiError;
use crate::host::xmlrpc::{extension_call, parse_method_response, MethodResponse, XmlRpcValue};
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

/// Another host's XenAPI.
pub struct Remote {
    address: String,
    url: String,
    client: reqwest::Client,
}

impl Remote {
    /// The XenAPI at `address` (an IP address or name, optionally with `:port`).
    pub fn new(address: &str) -> Result<Remote, ApiError> {
        let host = if address.contains(':') && !address.contains('[') && address.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("[{address}]")
        } else {
            address.to_owned()
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(ApiError::internal)?;
        Ok(Remote {
            address: address.to_owned(),
            url: format!("http://{host}/"),
            client,
        })
    }

    /// Calls `method` with `params`; the `Value` of a success.
    pub async fn call(&self, method: &str, params: &[Json]) -> Result<XmlRpcValue, RemoteError> {
        let body = extension_call(method, params);
        let resp = self
            .client
            .post(&self.url)
            .header("content-type", "text/xml")
            .body(body)
            .send()
            .await
            .map_err(|e| RemoteError::Connect(self.address.clone(), crate::error::error_chain(&e)))?;
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
