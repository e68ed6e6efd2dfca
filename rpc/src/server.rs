//! The HTTP front: XML-RPC at `/`, `/RPC2`, `/xmlrpc`; JSON-RPC at `/jsonrpc`; on TCP and on
//! a unix socket (where a uid-0 peer is trusted as root, as on a XenServer host).

use crate::reply::{self, Reply, Wire};
use crate::{jsonrpc, xmlrpc};
use actix_web::dev::Extensions;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse};
use agent::value::Value;
use agent::{Agent, CallCtx};
use std::any::Any;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::listeners::Listener;

/// Largest request body accepted (bytes), unless configured otherwise.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;

/// Where and how to listen.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// TCP addresses.
    pub listen: Vec<SocketAddr>,
    /// Unix socket path.
    pub socket: Option<PathBuf>,
    /// Request body cap in bytes.
    pub max_body: usize,
    /// HTTP worker threads (0: one per core).
    pub workers: usize,
    /// HTTPS addresses.
    pub tls_listen: Vec<SocketAddr>,
    /// The TLS configuration, when `tls_listen` is not empty.
    pub tls: Option<rustls::ServerConfig>,
    /// Most connections each worker keeps open at once.
    pub max_connections: usize,
    /// Serve `POST /bench/noop` (an empty 200 on the same stack) for overhead benchmarks.
    pub bench_noop: bool,
    /// Install the seccomp filter of `crate::confine` on every HTTP worker thread.
    pub confine_workers: bool,
    /// What that filter does to a forbidden call.
    pub confine_action: crate::confine::Action,
}

/// The uid of a unix-socket peer.
#[derive(Clone, Copy, Debug)]
struct PeerUid(u32);

fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    if let Some(sock) = conn.downcast_ref::<actix_web::rt::net::UnixStream>() {
        match sock.peer_cred() {
            Ok(cred) => {
                ext.insert(PeerUid(cred.uid()));
            }
            Err(e) => tracing::warn!(error = %e, "no peer credentials on the unix socket"),
        }
    } else {
        tracing::debug!(
            tcp = conn.is::<actix_web::rt::net::TcpStream>(),
            "connection without peer credentials"
        );
    }
}

fn ctx_of(req: &HttpRequest) -> CallCtx {
    CallCtx {
        trusted_root: req.conn_data::<PeerUid>().is_some_and(|p| p.0 == 0),
        task: None,
        pool_secret: req
            .headers()
            .get(agent::POOL_SECRET_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

fn xml_reply(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status).content_type("text/xml").body(body)
}

fn json_reply(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status).content_type("application/json").body(body)
}

/// A call's success reply: whole, or streamed when it is large and the client speaks
/// HTTP/1.1 (chunked transfer encoding); an HTTP/1.0 client gets it whole.
fn success_reply(req: &HttpRequest, wire: Wire, v: Value) -> HttpResponse {
    let content_type = match wire {
        Wire::Xml => "text/xml",
        Wire::Json(..) => "application/json",
    };
    let stream_from = if req.version() >= actix_web::http::Version::HTTP_11 {
        reply::STREAM_FROM
    } else {
        usize::MAX
    };
    match reply::success_streaming_from(wire, v, stream_from) {
        Reply::Whole(body) => HttpResponse::Ok().content_type(content_type).body(body),
        Reply::Streamed(chunks) => HttpResponse::Ok()
            .content_type(content_type)
            .streaming(reply::body(chunks)),
    }
}

fn list_methods() -> Value {
    Value::Set(agent::method_list().into_iter().map(Value::str).collect())
}

async fn xmlrpc_handler(req: HttpRequest, body: web::Bytes, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let call = match xmlrpc::decode_call(&body) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "rejected an XML-RPC body");
            return HttpResponse::BadRequest()
                .content_type("text/plain")
                .body(format!("{e}\n"));
        }
    };
    if call.method == "system.listMethods" {
        return xml_reply(StatusCode::OK, xmlrpc::bare(&list_methods()));
    }
    let ctx = ctx_of(&req);
    match agent::call(agent.get_ref(), &ctx, &call.method, &call.params).await {
        Ok(v) => success_reply(&req, Wire::Xml, v),
        Err(e) => xml_reply(StatusCode::OK, xmlrpc::failure(e.code(), &e.params())),
    }
}

async fn jsonrpc_handler(req: HttpRequest, body: web::Bytes, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let r = match jsonrpc::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "rejected a JSON-RPC body");
            let mut msg = String::new();
            agent::value::write_json_str(&e.to_string(), &mut msg);
            // JSON-RPC 2.0: -32700 when the body is not JSON, -32600 when it is not a request.
            let code = match e {
                jsonrpc::JsonRpcError::Malformed(_) => -32700,
                jsonrpc::JsonRpcError::Structure(_) => -32600,
            };
            return json_reply(
                StatusCode::BAD_REQUEST,
                format!("{{\"jsonrpc\":\"2.0\",\"error\":{{\"code\":{code},\"message\":{msg}}},\"id\":null}}"),
            );
        }
    };
    if r.method == "system.listMethods" {
        return json_reply(StatusCode::OK, jsonrpc::success(r.version, &r.id, &list_methods()));
    }
    let ctx = ctx_of(&req);
    match agent::call(agent.get_ref(), &ctx, &r.method, &r.params).await {
        Ok(v) => success_reply(&req, Wire::Json(r.version, r.id), v),
        Err(e) => json_reply(
            StatusCode::OK,
            jsonrpc::failure(r.version, &r.id, e.code(), &e.params()),
        ),
    }
}

/// An HTTP/1.0 client cannot read chunked transfer encoding (the reference `xe` speaks
/// HTTP/1.0 and copies an export's body to its file as it comes): a streamed reply to one is
/// sent as it is, its end marked by the connection closing.
fn http10_without_chunks<S>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse, actix_web::Error>>
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
{
    // A CONNECT tunnel (the console) is left as actix frames it.
    let old = req.version() < actix_web::http::Version::HTTP_11 && req.method() != actix_web::http::Method::CONNECT;
    let reply = srv.call(req);
    async move {
        let mut res = reply.await?;
        if old {
            res.response_mut().head_mut().no_chunking(true);
        }
        Ok(res)
    }
}

async fn noop(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().content_type("text/xml").finish()
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain")
        .body("xapid: XenAPI over XML-RPC (POST /, /RPC2, /xmlrpc) and JSON-RPC (POST /jsonrpc)\n")
}

/// Configures the routes on an actix-web app (also used by tests).
pub fn routes(cfg: &mut web::ServiceConfig, max_body: usize) {
    cfg.app_data(web::PayloadConfig::new(max_body))
        .route("/", web::post().to(xmlrpc_handler))
        .route("/RPC2", web::post().to(xmlrpc_handler))
        .route("/xmlrpc", web::post().to(xmlrpc_handler))
        .route("/jsonrpc", web::post().to(jsonrpc_handler))
        .route("/cli", web::post().to(crate::cli::not_first))
        .route("/", web::get().to(index));
    crate::data_paths::routes(cfg);
}

/// How long an idle keep-alive connection is kept (as long as a TLS front end for XenAPI
/// typically keeps idle connections: 12 hours).
const IDLE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Serves until the process is asked to stop.
///
/// Two servers share the application: one for the listeners that stay (loopback, the unix
/// socket), one for those that follow the management interface (`crate::listeners`), made
/// again on each move: the new one is bound before the old one is stopped.
pub async fn serve(agent: Arc<Agent>, cfg: ServerConfig) -> std::io::Result<()> {
    let max_body = cfg.max_body;
    let bench_noop = cfg.bench_noop;
    let filter = if cfg.confine_workers {
        let prog = crate::confine::worker_filter(cfg.confine_action).map_err(std::io::Error::other)?;
        // The threads that do what the filter refuses exist before the first worker does.
        agent::privileged::start().map_err(std::io::Error::other)?;
        tracing::info!(action = ?cfg.confine_action, "HTTP workers run under their seccomp filter");
        Some(Arc::new(prog))
    } else {
        None
    };
    let data = web::Data::new(agent.clone());
    let app = move || {
        // The factory runs on each worker thread as it starts: the filter goes on there.
        if let Some(prog) = &filter {
            crate::confine::install_once(prog);
        }
        App::new()
            .app_data(data.clone())
            .wrap_fn(http10_without_chunks)
            .configure(|c| {
                routes(c, max_body);
                if bench_noop {
                    c.route("/bench/noop", web::post().to(noop));
                }
                #[cfg(test)]
                c.route("/test/forbidden", web::get().to(crate::confine::tests::forbidden_hook));
            })
    };
    // The front serves `POST /cli` connections (the thin CLI protocol) itself.
    let (workers, max_connections) = (cfg.workers, cfg.max_connections.max(1));
    let cli_agent = agent.clone();
    let front = move || {
        let f = crate::cli::Front::new(cli_agent.clone(), app.clone())
            .on_connect(on_connect)
            // A client gets 10 s to send its request head and 5 s to close: a slow client
            // holds a connection slot, never a worker thread.
            .client_request_timeout(std::time::Duration::from_secs(10))
            .client_disconnect_timeout(std::time::Duration::from_secs(5))
            // An idle keep-alive connection stays open for hours, not actix's 5 s: over HTTPS
            // an XenAPI.py session that idled longer failed its next call (the closed
            // connection reads as an unclean TLS EOF, which Python's xmlrpc does not retry).
            // Idle connections cost no worker and count against max_connections.
            .keep_alive(IDLE_KEEP_ALIVE)
            // Replies go out as soon as they are written: a streamed reply's last small chunk
            // must not wait for the client's delayed ACK (Nagle's algorithm), nor may a small
            // reply.
            .tcp_nodelay(true)
            .max_connections(max_connections);
        if workers > 0 {
            f.workers(workers)
        } else {
            f
        }
    };
    let bind = |mut server, listeners: &[Listener]| -> std::io::Result<_> {
        for l in listeners {
            server = if l.tls {
                let tls = cfg
                    .tls
                    .clone()
                    .ok_or_else(|| std::io::Error::other(format!("HTTPS on {} without a certificate", l.addr)))?;
                let s = crate::cli::Front::bind_rustls_0_23(server, &l.addr, tls)?;
                tracing::info!(addr = %l.addr, "listening on HTTPS");
                s
            } else {
                let s = crate::cli::Front::bind(server, &l.addr)?;
                tracing::info!(addr = %l.addr, "listening on TCP");
                s
            };
        }
        Ok(server)
    };
    let (fixed, movable) = crate::listeners::split(&cfg.listen, &cfg.tls_listen);
    let mut main = bind(front(), &fixed)?;
    if let Some(path) = &cfg.socket {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        // `listen_uds` (unlike `bind_uds`) runs the on-connect hook that reads SO_PEERCRED.
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        main = main.listen_uds(listener)?;
        tracing::info!(path = %path.display(), "listening on the unix socket");
    }
    if fixed.is_empty() && cfg.socket.is_none() {
        // Nothing would stay reachable while the management listeners move: they stay.
        tracing::warn!("no loopback or unix-socket listener: the listeners do not follow the management interface");
        return bind(main, &movable)?.run().await;
    }
    let mut changes = agent.management_changes();
    let mut placed = crate::listeners::for_management(&fixed, &movable, &changes.borrow_and_update());
    // A server runs while its future is polled: each management server runs as a task, kept
    // by its handle.
    let start = |server: crate::cli::Front<_, _, _, _>| {
        let running = server.run();
        let handle = running.handle();
        actix_web::rt::spawn(running);
        handle
    };
    let mut moving = if placed.is_empty() {
        None
    } else {
        Some(start(bind(front(), &placed)?))
    };
    let main = main.run();
    let follow = async move {
        while changes.changed().await.is_ok() {
            let wanted = crate::listeners::for_management(&fixed, &movable, &changes.borrow_and_update());
            if wanted == placed {
                continue;
            }
            let next = if wanted.is_empty() {
                Ok(None)
            } else {
                bind(front(), &wanted).map(|s| Some(start(s)))
            };
            match next {
                Ok(next) => {
                    if let Some(old) = std::mem::replace(&mut moving, next) {
                        // Its connections end now; the server's own task finishes the stop.
                        actix_web::rt::spawn(old.stop(false));
                    }
                    tracing::info!(listeners = ?wanted, "the API listeners follow the management interface");
                    placed = wanted;
                }
                Err(e) => tracing::error!(
                    listeners = ?wanted,
                    error = %e,
                    "the API listeners cannot follow the management interface; they stay where they were"
                ),
            }
        }
        // The agent is gone: keep whatever runs until the main server stops.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        r = main => r,
        () = follow => Ok(()),
    }
}
