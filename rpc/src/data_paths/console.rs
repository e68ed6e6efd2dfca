//! `CONNECT /console?ref=<console or VM ref>` (or `uuid=`): after `200 OK` the connection
//! carries the guest's text console both ways. The console fd from the backend is owned by a
//! thread of its own (`console_pump.rs`), so no worker blocks on it.
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
use std::sync::Arc;

use super::console_pump::{self, Keys, Screen};

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
    // A text console whose pty ends under a domain that still runs is opened again.
    let reopen = (!domid.rfb).then(|| reopen_text_console(agent.clone(), domid.domid));
    let (screen_rx, keys, seat) = match console_pump::start(file, format!("console-{}", domid.domid), reopen) {
        Ok(started) => started,
        Err(e) => return DataPathError::Failed(ApiError::internal(e)).response(),
    };
    if !domid.rfb {
        take_seat(domid.domid, seat);
    }
    tracing::info!(domid = domid.domid, rfb = domid.rfb, websocket, "console connected");
    // A text console's reader is counted, so that a domain that shut down is destroyed once its
    // last lines have reached it.
    let tap = Tap {
        screen: screen_rx,
        keys: keys.clone(),
        watch: (!domid.rfb).then(|| agent.console_watch(domid)),
    };
    if websocket {
        return super::websocket::serve(&req, body, tap);
    }
    actix_web::rt::spawn(keyboard(body, keys));
    HttpResponse::Ok().streaming(futures_util::stream::unfold(tap, screen))
}

/// The connection reading each domain's text console, by domid. A pty gives each byte to
/// one reader: with two connections each would get part of the guest's output, so a newer
/// connection takes the console over and the older one ends (a client that opens a second
/// connection has given up on the first).
static TEXT_READERS: parking_lot::Mutex<std::collections::BTreeMap<u32, console_pump::Seat>> =
    parking_lot::Mutex::new(std::collections::BTreeMap::new());

fn take_seat(domid: u32, seat: console_pump::Seat) {
    let mut readers = TEXT_READERS.lock();
    readers.retain(|_, s| !s.ended());
    if let Some(older) = readers.insert(domid, seat) {
        if !older.ended() {
            older.take_over();
            tracing::info!(domid, "console: a newer connection takes the text console over");
        }
    }
}

/// How many times a connection opens its text console again, and the pause before each.
const REOPENS: u32 = 10;
const REOPEN_PAUSE: std::time::Duration = std::time::Duration::from_millis(300);

/// Opens `domid`'s text console again while the domain runs (on the pump's thread).
fn reopen_text_console(agent: Arc<Agent>, domid: u32) -> console_pump::Reopen {
    let mut left = REOPENS;
    Box::new(move || {
        while left > 0 {
            left -= 1;
            std::thread::sleep(REOPEN_PAUSE);
            match agent.reopen_text_console(domid) {
                Ok(Some(stream)) if stream.set_nonblocking(true).is_ok() => {
                    tracing::info!(domid, "console reopened: its pty ended while the domain runs");
                    return Some(File::from(stream.into_owned_fd()));
                }
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => tracing::warn!(domid, error = %e, "console: opening it again failed"),
            }
        }
        None
    })
}

/// A console being read: its output, its keyboard and, for a text console, the note of its
/// reader.
pub(super) struct Tap {
    screen: Screen,
    pub(super) keys: Keys,
    watch: Option<agent::console_watch::ConsoleWatch>,
}

/// Client bytes to the console, until the client closes its side or the console goes away.
async fn keyboard(mut body: web::Payload, keys: Keys) {
    while let Some(Ok(bytes)) = body.next().await {
        if !keys.type_in(bytes) {
            return;
        }
    }
}

/// The next output of the console; ends when the guest's console closes.
pub(super) async fn screen(mut tap: Tap) -> Option<(Result<web::Bytes, std::io::Error>, Tap)> {
    let chunk = tap.screen.recv().await?;
    if let (Ok(_), Some(w)) = (&chunk, &tap.watch) {
        w.output();
    }
    Some((chunk, tap))
}
