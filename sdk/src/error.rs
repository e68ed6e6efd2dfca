//! The crate's error, and the typed XenAPI failure it carries.

use crate::enums::ErrorCode;
use std::fmt;

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a XenAPI failure (`{Status: Failure, ErrorDescription}`, a
    /// JSON-RPC error, or a failed task's `error_info`).
    #[error("{0}")]
    Api(ApiError),
    /// The URL given to the builder is not one this client can use.
    #[error("invalid URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS settings could not be built (a bad CA file, no usable root certificate).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// No connection could be made (refused, unreachable, TLS handshake failed).
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (the connection closed, a malformed response).
    #[error("HTTP: {0}")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The server answered with an HTTP status other than 200.
    #[error("HTTP status {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the body (the server's reason).
        body: String,
    },
    /// The reply is not XML-RPC or JSON-RPC as XenAPI speaks it.
    #[error("malformed reply: {0}")]
    Protocol(String),
    /// An XML-RPC `<fault>` (the server could not read the call at all).
    #[error("XML-RPC fault {code}: {message}")]
    Fault {
        /// `faultCode`.
        code: i64,
        /// `faultString`.
        message: String,
    },
    /// The result does not have the type the datamodel gives the message.
    #[error("cannot decode the result: {0}")]
    Decode(String),
    /// A parameter cannot travel on this wire (XML 1.0 cannot carry most control characters).
    #[error("cannot encode a parameter: {0}")]
    Encode(String),
    /// The task was cancelled and the server gave no error for it.
    #[error("task {task} was cancelled")]
    TaskCancelled {
        /// The task's reference.
        task: String,
    },
}

impl Error {
    /// The XenAPI failure, if this is one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e),
            _ => None,
        }
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Decode(msg.to_string())
    }
}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Encode(msg.to_string())
    }
}

/// A XenAPI failure: its code and its parameters, named as errors.json names them.
///
/// ```
/// use xapi_sdk::{ApiError, ErrorCode};
/// let e = ApiError::new("VM_BAD_POWER_STATE", vec!["OpaqueRef:1".into(), "halted".into(), "running".into()]);
/// assert_eq!(e.code, ErrorCode::VmBadPowerState);
/// assert_eq!(e.param("actual"), Some("running"));
/// assert_eq!(e.to_string(), "VM_BAD_POWER_STATE: vm=OpaqueRef:1, expected=halted, actual=running");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The code.
    pub code: ErrorCode,
    /// The parameters, in the order the server sent them.
    pub params: Vec<ErrorParam>,
}

/// One parameter of a XenAPI failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorParam {
    /// Its name in errors.json (`None`: the code's parameters are not documented, or the
    /// server sent more than are).
    pub name: Option<&'static str>,
    /// Its value.
    pub value: String,
}

impl ApiError {
    /// A failure from the code and parameter values as they travel.
    pub fn new(code: &str, values: Vec<String>) -> ApiError {
        let code = ErrorCode::from_wire(code);
        let names = code.param_names().unwrap_or(&[]);
        let params = values
            .into_iter()
            .enumerate()
            .map(|(i, value)| ErrorParam {
                name: names.get(i).copied(),
                value,
            })
            .collect();
        ApiError { code, params }
    }

    /// The value of the parameter with this name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|p| p.name == Some(name))
            .map(|p| p.value.as_str())
    }

    /// The parameter values, in order.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.value.as_str())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code.as_str())?;
        for (i, p) in self.params.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            match p.name {
                Some(n) => write!(f, "{n}={}", p.value)?,
                None => f.write_str(&p.value)?,
            }
        }
        Ok(())
    }
}

/// A failure's code and parameters as they travel: the first string is the code.
pub(crate) fn api_failure(mut description: Vec<String>) -> Error {
    if description.is_empty() {
        return Error::Protocol("a failure without an error code".into());
    }
    let code = description.remove(0);
    Error::Api(ApiError::new(&code, description))
}
