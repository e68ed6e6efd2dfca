//! Who is calling a data path: a session (query parameter or cookie `session_id`) or HTTP
//! Basic credentials, which open a session for the request and close it afterwards.

use super::{param, request_params, DataPathError};
use actix_web::HttpRequest;
use agent::{Agent, ApiError};
use std::sync::Arc;

/// The session a data-path request runs as.
pub struct Auth {
    /// The session's ref.
    pub session: String,
    /// Opened for this request (Basic auth): logged out by [`Auth::finish`].
    temporary: bool,
}

impl Auth {
    /// Ends a session opened for the request.
    pub async fn finish(self, agent: &Agent) {
        if self.temporary {
            if let Err(e) = agent.logout(&self.session).await {
                tracing::debug!(error = %e, "logging out a data-path session");
            }
        }
    }
}

/// Checks the request's credentials.
pub async fn authenticate(agent: &Arc<Agent>, req: &HttpRequest) -> Result<Auth, DataPathError> {
    if let Some(s) = param(req, "session_id") {
        agent.validate_session(&s).map_err(|_| DataPathError::Unauthorised)?;
        return Ok(Auth {
            session: s,
            temporary: false,
        });
    }
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .ok_or(DataPathError::Unauthorised)?;
    let (user, password) = basic_credentials(header).ok_or(DataPathError::Unauthorised)?;
    let peer = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string());
    let session = agent
        .login(&user, &password, &format!("{peer} using Basic auth"))
        .await
        .map_err(|_| DataPathError::Unauthorised)?;
    Ok(Auth {
        session,
        temporary: true,
    })
}

/// Checks the request's credentials and that its session may use the HTTP handler `action`
/// (the datamodel's name of the HTTP action, e.g. `get_export_raw_vdi`): a refusal is
/// `DataPathError::Forbidden` (HTTP 403). A session opened for the request is closed on
/// refusal.
pub async fn authorize(agent: &Arc<Agent>, req: &HttpRequest, action: &str) -> Result<Auth, DataPathError> {
    let auth = authenticate(agent, req).await?;
    match agent.authorize_http(&auth.session, action, &request_params(req)) {
        Ok(()) => Ok(auth),
        Err(e) => {
            auth.finish(agent).await;
            Err(refusal(e))
        }
    }
}

/// The data-path error for an error of the role check.
pub(crate) fn refusal(e: ApiError) -> DataPathError {
    match e {
        ApiError::RbacPermissionDenied { .. } => DataPathError::Forbidden(e),
        ApiError::SessionInvalid { .. } => DataPathError::Unauthorised,
        other => DataPathError::Failed(other),
    }
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(rest.trim())?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// Standard base64 (padding optional).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        // "root:s3cret:x" — the password may contain colons.
        assert_eq!(
            basic_credentials("Basic cm9vdDpzM2NyZXQ6eA=="),
            Some(("root".into(), "s3cret:x".into()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
    }
}
