//! `CONNECT /console?ref=<console or VM ref>` (or `uuid=`): after `200 OK` the connection
//! carries the guest's text console both ways. The console fd from the backend is driven by
//! tokio's `AsyncFd`, so no worker blocks on it.
//!
//! `GET /console` with `Upgrade: websocket` (as Xen Orchestra connects) carries the same bytes
//! in binary WebSocket messages.

use super::auth::refusal;
use super::{authorize, param, request_params, Auth, DataPathError};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use agent::{Agent, ApiError};
use futures_util::StreamExt;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;

/// The console named by `ref` (a console, or a VM's first console) or `uuid`, and its domain.
/// A control domain's console also needs the `…/host_console` permission of the action, as
/// in the reference.
fn domid_of(
    agent: &Agent,
    req: &HttpRequest,
    auth: &Auth,
    action: &str,
) -> Result<agent::ConsoleHandle, DataPathError> {
    let (r, u) = (param(req, "ref"), param(req, "uuid"));
    if r.is_none() && u.is_none() {
        return Err(DataPathError::BadRequest(ApiError::internal(
            "the console request lacks a ref or uuid parameter",
        )));
    }
    let console = agent
        .text_console(r.as_deref(), u.as_deref())
        .map_err(DataPathError::NotFound)?;
    if agent.console_of_control_domain(&console) {
        let host_console = if action == CONSOLE_WS {
            "connect_console_ws/host_console_ws"
        } else {
            "connect_console/host_console"
        };
        agent
            .authorize_http(&auth.session, host_console, &request_params(req))
            .map_err(refusal)?;
    }
    agent.console_domain(&console).map_err(DataPathError::NotFound)
}

/// The HTTP actions of the two ways in.
const CONSOLE: &str = "connect_console";
const CONSOLE_WS: &str = "connect_console_ws";

/// `CONNECT /console` (and `GET`, which needs a WebSocket upgrade this build lacks).
pub(super) async fn connect(req: HttpRequest, body: web::Payload, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref().clone();
    let websocket = req.method() != Method::CONNECT;
    let action = if websocket { CONSOLE_WS } else { CONSOLE };
    let auth = match authorize(&agent, &req, action).await {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    let domid = domid_of(&agent, &req, &auth, action);
    auth.finish(&agent).await;
    if websocket {
        if let Err(e) = actix_http::ws::verify_handshake(req.head()) {
            return HttpResponse::BadRequest()
                .content_type("text/plain")
                .body(format!("use CONNECT /console, or GET with a WebSocket upgrade: {e}\n"));
        }
    }
    let domid = match domid {
        Ok(d) => d,
        Err(e) => return e.response(),
    };
    let stream = match agent.console_stream(domid).await {
        Ok(s) => s,
        Err(e) => return DataPathError::NotFound(e).response(),
    };
    if let Err(e) = stream.set_nonblocking(true) {
        return DataPathError::Failed(ApiError::internal(e)).response();
    }
    let file = File::from(stream.into_owned_fd());
    // SAFETY: `file` owns its descriptor and moves into the AsyncFd, which keeps it open (and
    // the same file) until the AsyncFd is dropped; `File::as_raw_fd` always returns it.
    let registered = unsafe { AsyncFd::register(file) };
    let fd = match registered.map_err(std::io::Error::from) {
        Ok(fd) => Arc::new(fd),
        Err(e) => return DataPathError::Failed(ApiError::internal(e)).response(),
    };
    tracing::info!(domid = domid.domid, rfb = domid.rfb, websocket, "console connected");
    // A text console's reader is counted, so that a domain that shut down is destroyed once its
    // last lines have reached it.
    let tap = Tap {
        fd: fd.clone(),
        watch: (!domid.rfb).then(|| agent.console_watch(domid)),
    };
    if websocket {
        return super::websocket::serve(&req, body, tap);
    }
    actix_web::rt::spawn(keyboard(body, fd));
    HttpResponse::Ok().streaming(futures_util::stream::unfold(tap, screen))
}

/// A console being read: its descriptor and, for a text console, the note of its reader.
pub(super) struct Tap {
    pub(super) fd: Arc<AsyncFd<File>>,
    watch: Option<agent::console_watch::ConsoleWatch>,
}

/// Writes all of `bytes` to the console; false once the console is gone.
pub(super) async fn type_in(fd: &AsyncFd<File>, bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while !rest.is_empty() {
        let Ok(mut guard) = fd.writable().await else {
            return false;
        };
        match guard.try_io(|f| f.get_ref().write(rest)) {
            Ok(Ok(n)) => rest = &rest[n..],
            Ok(Err(_)) => return false,
            Err(_would_block) => continue,
        }
    }
    true
}

/// Client bytes to the console, until the client closes its side or the console goes away.
async fn keyboard(mut body: web::Payload, fd: Arc<AsyncFd<File>>) {
    while let Some(Ok(bytes)) = body.next().await {
        if !type_in(&fd, &bytes).await {
            return;
        }
    }
}

/// The next output of the console; ends when the guest's console closes.
pub(super) async fn screen(tap: Tap) -> Option<(Result<web::Bytes, std::io::Error>, Tap)> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = match tap.fd.readable().await {
            Ok(mut guard) => guard.try_io(|f| f.get_ref().read(&mut buf)),
            Err(e) => return Some((Err(e), tap)),
        };
        match read {
            Ok(Ok(0)) => return None,
            Ok(Ok(n)) => {
                buf.truncate(n);
                if let Some(w) = &tap.watch {
                    w.output();
                }
                return Some((Ok(web::Bytes::from(buf)), tap));
            }
            // A pty whose other end closed (xenconsoled, once the domain is gone) reads EIO:
            // that is the end of the console, not a failure.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return None,
            Ok(Err(e)) => return Some((Err(e), tap)),
            Err(_would_block) => continue,
        }
    }
}
