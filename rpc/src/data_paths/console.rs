//! `CONNECT /console?ref=<console or VM ref>` (or `uuid=`): after `200 OK` the connection
//! carries the guest's text console both ways. The console fd from the backend is driven by
//! tokio's `AsyncFd`, so no worker blocks on it.
//!
//! `GET /console` with `Upgrade: websocket` (as Xen Orchestra connects) carries the same bytes
//! in binary WebSocket messages.

use super::{authenticate, param, DataPathError};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use agent::schema::{class_ids, fields};
use agent::value::Value;
use agent::{Agent, ApiError};
use futures_util::StreamExt;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;

/// The console named by `ref` (a console, or a VM's first console) or `uuid`.
fn console_of(agent: &Agent, req: &HttpRequest) -> Result<String, DataPathError> {
    let missing = |what: &str| DataPathError::NotFound(ApiError::handle_invalid("console", what));
    let r = match (param(req, "ref"), param(req, "uuid")) {
        (Some(r), _) => r,
        (None, Some(u)) => agent
            .store
            .ref_by_uuid(class_ids::VM, &u)
            .or_else(|| agent.store.ref_by_uuid(class_ids::console, &u))
            .ok_or_else(|| missing(&u))?,
        (None, None) => {
            return Err(DataPathError::BadRequest(ApiError::internal(
                "the console request lacks a ref or uuid parameter",
            )))
        }
    };
    if agent.store.get(class_ids::console, &r).is_some() {
        return Ok(r);
    }
    let vm = agent.store.get(class_ids::VM, &r).ok_or_else(|| missing(&r))?;
    vm.get(fields::VM::consoles)
        .as_set()
        .iter()
        .filter_map(Value::as_ref_str)
        .find(|c| {
            agent
                .store
                .get(class_ids::console, c)
                .is_some_and(|c| c.get(fields::console::protocol) == &Value::Enum("vt100"))
        })
        .map(str::to_owned)
        .ok_or_else(|| missing(&r))
}

/// The domain behind a console: its VM must have one (running or paused: a client may attach
/// before it unpauses a VM started paused, and so see the whole boot).
fn domid_of(agent: &Agent, console: &str) -> Result<u32, DataPathError> {
    let c = agent
        .store
        .get(class_ids::console, console)
        .ok_or_else(|| DataPathError::NotFound(ApiError::handle_invalid("console", console)))?;
    let vm_ref = c.get(fields::console::VM).as_ref_str().unwrap_or("").to_owned();
    let vm = agent
        .store
        .get(class_ids::VM, &vm_ref)
        .ok_or_else(|| DataPathError::NotFound(ApiError::handle_invalid("VM", &vm_ref)))?;
    let state = vm.get(fields::VM::power_state).clone();
    let domid = vm.get(fields::VM::domid).as_int().unwrap_or(-1);
    if !matches!(state, Value::Enum("Running" | "Paused")) || domid < 0 {
        return Err(DataPathError::NotFound(ApiError::VmBadPowerState {
            vm: vm_ref,
            expected: "running".into(),
            actual: state.key_text().to_ascii_lowercase(),
        }));
    }
    u32::try_from(domid).map_err(|_| DataPathError::NotFound(ApiError::invalid_value("domid", domid)))
}

/// `CONNECT /console` (and `GET`, which needs a WebSocket upgrade this build lacks).
pub(super) async fn connect(req: HttpRequest, body: web::Payload, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref().clone();
    let auth = match authenticate(&agent, &req).await {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    auth.finish(&agent).await;
    let websocket = req.method() != Method::CONNECT;
    if websocket {
        if let Err(e) = actix_http::ws::verify_handshake(req.head()) {
            return HttpResponse::BadRequest()
                .content_type("text/plain")
                .body(format!("use CONNECT /console, or GET with a WebSocket upgrade: {e}\n"));
        }
    }
    let domid = match console_of(&agent, &req).and_then(|c| domid_of(&agent, &c)) {
        Ok(d) => d,
        Err(e) => return e.response(),
    };
    let hv = agent.hypervisor.clone();
    let stream = tokio::task::spawn_blocking(move || hv.console_stream(domid)).await;
    let stream = match stream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return DataPathError::NotFound(ApiError::internal(format!("console of domain {domid}: {e}"))).response()
        }
        Err(e) => return DataPathError::Failed(ApiError::internal(e)).response(),
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
    tracing::info!(domid, websocket, "console connected");
    if websocket {
        return super::websocket::serve(&req, body, fd);
    }
    actix_web::rt::spawn(keyboard(body, fd.clone()));
    HttpResponse::Ok().streaming(futures_util::stream::unfold(fd, screen))
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
pub(super) async fn screen(fd: Arc<AsyncFd<File>>) -> Option<(Result<web::Bytes, std::io::Error>, Arc<AsyncFd<File>>)> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => return Some((Err(e), fd)),
        };
        match guard.try_io(|f| f.get_ref().read(&mut buf)) {
            Ok(Ok(0)) => return None,
            Ok(Ok(n)) => {
                buf.truncate(n);
                return Some((Ok(web::Bytes::from(buf)), fd));
            }
            // A pty whose other end closed (xenconsoled, once the domain is gone) reads EIO:
            // that is the end of the console, not a failure.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return None,
            Ok(Err(e)) => return Some((Err(e), fd)),
            Err(_would_block) => continue,
        }
    }
}
