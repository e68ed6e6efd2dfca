//! One CLI connection: the `POST /cli` request, the version exchange, the command, `Exit`.
//!
//! Errors print as the reference's server prints them: a XenAPI error as the protocol's
//! `Error` command (code and parameters, references shown as `uuid (name)`), a bad login as
//! "Authentication failed", a missing parameter, an unknown command or a syntax error with a
//! pointer to `xe help`, anything else as `Error: …` on standard error; then `Exit 1`.

use super::args::{parse_commandline, parse_session_and_args, CommandLine, Params};
use super::front::Io;
use super::printer::{minimal_of, multi_line_record, PrintVal};
use super::{commands, CliError};
use agent::value::Value;
use agent::{Agent, CallCtx};
use serde_json::Value as Json;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xe::protocol::{self, Command, Message};

/// Who is on the other end.
#[derive(Clone, Debug)]
pub struct Peer {
    /// A uid-0 process on the unix socket: root whatever the password.
    pub trusted_root: bool,
    /// For the log and the session's originator.
    pub address: String,
}

/// The largest request head a CLI client may send.
const MAX_HEAD: usize = 64 * 1024;
/// The largest command line (the request body).
const MAX_BODY: usize = 1024 * 1024;
/// The largest blob a client may send in answer to `Load` or `Prompt`.
pub(crate) const MAX_UPLOAD: usize = 16 * 1024 * 1024;

/// The connection after the request head: frames both ways.
pub(crate) struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
}

impl Conn {
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.io.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Exactly `n` bytes.
    pub(crate) async fn read_exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    async fn write_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.io.write_all(b).await?;
        self.io.flush().await
    }

    /// Sends a command.
    pub(crate) async fn send(&mut self, c: Command) -> Result<(), CliError> {
        self.write_raw(&protocol::encode(&Message::Command(c))).await?;
        Ok(())
    }

    /// The client's next message.
    pub(crate) async fn recv(&mut self) -> Result<Message, CliError> {
        let head = self.read_exact(4).await?;
        let len = protocol::frame_len(&head).map_err(|e| CliError::Protocol(e.to_string()))?;
        let payload = self.read_exact(len).await?;
        protocol::decode_payload(&payload).map_err(|e| CliError::Protocol(e.to_string()))
    }

    /// Blob chunks up to `Blob End`, at most `limit` bytes in all.
    pub(crate) async fn read_chunks(&mut self, limit: usize) -> Result<Vec<u8>, CliError> {
        let mut out = Vec::new();
        loop {
            match self.recv().await? {
                Message::Blob(protocol::Blob::Chunk(n)) => {
                    let n = usize::try_from(n).map_err(|_| CliError::Protocol("a negative chunk".into()))?;
                    if out.len() + n > limit {
                        return Err(CliError::fail(format!(
                            "Fatal error: A CLI client tried to transfer more than the maximum allowed of {limit}B, aborting."
                        )));
                    }
                    out.extend(self.read_exact(n).await?);
                }
                Message::Blob(protocol::Blob::End) => return Ok(out),
                _ => return Err(CliError::fail("Thin CLI protocol error")),
            }
        }
    }
}

/// The printer: straight to the client, or gathered into one line under `--minimal`.
pub(crate) struct Out {
    pub(crate) conn: Conn,
    minimal: bool,
    buffer: Vec<String>,
}

impl Out {
    /// Prints a value.
    pub(crate) async fn print(&mut self, v: PrintVal) -> Result<(), CliError> {
        if self.minimal {
            if let Some(line) = minimal_of(&v) {
                // Later output goes first, as the reference's buffer does.
                self.buffer.insert(0, line);
            }
            return Ok(());
        }
        match v {
            PrintVal::Table(rs) => {
                for r in rs {
                    self.conn.send(Command::Print(multi_line_record(&r) + "\n")).await?;
                }
            }
            PrintVal::List(items) => {
                for i in items {
                    self.conn.send(Command::Print(i)).await?;
                }
            }
            PrintVal::Msg(m) => self.conn.send(Command::Print(m)).await?,
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), CliError> {
        if self.minimal {
            let line = self.buffer.join(",");
            self.conn.send(Command::Print(line)).await?;
        }
        Ok(())
    }
}

/// What a command runs with.
pub(crate) struct Ctx<'a> {
    /// The API.
    pub agent: &'a Arc<Agent>,
    /// The caller's context (trusted root on the unix socket).
    pub call_ctx: CallCtx,
    /// The session the command runs in.
    pub session: String,
    /// The command line's parameters.
    pub params: Params,
    /// Output and the connection.
    pub out: &'a mut Out,
}

impl Ctx<'_> {
    /// Calls `method` with the session first.
    pub(crate) async fn call(&self, method: &str, args: Vec<Json>) -> Result<Value, CliError> {
        let mut params = Vec::with_capacity(args.len() + 1);
        params.push(Json::String(self.session.clone()));
        params.extend(args);
        Ok(agent::call(self.agent, &self.call_ctx, method, &params).await?)
    }

    /// Prints.
    pub(crate) async fn print(&mut self, v: PrintVal) -> Result<(), CliError> {
        self.out.print(v).await
    }
}

/// Serves a connection whose first bytes are `POST /cli`.
pub async fn serve(agent: Arc<Agent>, io: Box<dyn Io>, peer: Peer) {
    let mut conn = Conn { io, buf: Vec::new() };
    let body = match read_request(&mut conn).await {
        Ok(b) => b,
        Err(why) => {
            tracing::debug!(peer = %peer.address, %why, "refused a CLI request");
            return;
        }
    };
    if conn.write_raw(&protocol::handshake()).await.is_err() {
        return;
    }
    let theirs = match conn.read_exact(protocol::HANDSHAKE_LEN).await {
        Ok(b) => b,
        Err(_) => return,
    };
    match protocol::parse_handshake(&theirs) {
        Ok((major, _)) if major == protocol::MAJOR => {}
        other => {
            tracing::debug!(peer = %peer.address, ?other, "rejecting a CLI client's version");
            return;
        }
    }
    let (session, args) = parse_session_and_args(&body);
    let parsed = parse_commandline(&args);
    let minimal = parsed
        .as_ref()
        .ok()
        .and_then(|c| c.params.get("minimal"))
        .and_then(super::args::parse_bool)
        .unwrap_or(false);
    let mut out = Out {
        conn,
        minimal,
        buffer: Vec::new(),
    };
    let result = match parsed {
        Ok(cmd) => exec(&agent, &mut out, &peer, session, cmd).await,
        Err(e) => Err(e),
    };
    let code = match result {
        Ok(()) => match out.flush().await {
            Ok(()) => 0,
            Err(_) => return,
        },
        Err(e) => match report(&mut out, e).await {
            Some(code) => code,
            None => return,
        },
    };
    let _ = out.conn.send(Command::Exit(code)).await;
}

/// The request head and body; the body is the command line.
async fn read_request(conn: &mut Conn) -> Result<String, String> {
    let (head_end, body_start) = loop {
        if let Some(i) = find(&conn.buf, b"\r\n\r\n") {
            break (i, i + 4);
        }
        if let Some(i) = find(&conn.buf, b"\n\n") {
            break (i, i + 2);
        }
        if conn.buf.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        match conn.fill().await {
            Ok(0) | Err(_) => return Err("the client closed before the request ended".into()),
            Ok(_) => {}
        }
    };
    let head = String::from_utf8_lossy(&conn.buf[..head_end]).into_owned();
    let mut length = 0usize;
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| format!("bad content-length {v:?}"))?;
            }
        }
    }
    if length > MAX_BODY {
        return Err(format!("a command line of {length} bytes"));
    }
    conn.buf.drain(..body_start);
    let body = conn.read_exact(length).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parameters every command accepts.
pub(crate) const STDPARAMS: &[&str] = &[
    "server",
    "password",
    "port",
    "username",
    "minimal",
    "force",
    "multiple",
    "all",
    "message-priority",
    "trace",
];

async fn exec(
    agent: &Arc<Agent>,
    out: &mut Out,
    peer: &Peer,
    session: Option<String>,
    cmd: CommandLine,
) -> Result<(), CliError> {
    if cmd.cmdname == "help" {
        return commands::help(out, &cmd).await;
    }
    let spec = commands::find(&cmd.cmdname).ok_or_else(|| CliError::UnknownCommand(cmd.cmdname.clone()))?;
    for k in &spec.reqd {
        cmd.params.req(k)?;
    }
    let username = cmd.params.get("username").unwrap_or("").to_owned();
    let password = cmd.params.get("password").unwrap_or("").to_owned();
    let call_ctx = CallCtx {
        trusted_root: peer.trusted_root,
        ..CallCtx::default()
    };
    let (session, logout) = match session {
        Some(s) => (s, false),
        None => {
            let args = [
                Json::String(username.clone()),
                Json::String(password),
                Json::String("2.21".into()),
                Json::String("cli".into()),
            ];
            match agent::call(agent, &call_ctx, "session.login_with_password", &args).await {
                Ok(v) => (v.as_str().unwrap_or_default().to_owned(), true),
                Err(e) if e.code() == "SESSION_AUTHENTICATION_FAILED" => {
                    return Err(CliError::Login(if username.is_empty() {
                        "Username/password must be specified"
                    } else {
                        "Authentication failed"
                    }));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    tracing::info!(peer = %peer.address, command = %cmd.cmdname, "xe");
    let mut ctx = Ctx {
        agent,
        call_ctx,
        session,
        params: cmd.params.clone(),
        out,
    };
    let r = commands::run(&mut ctx, spec).await;
    // Error parameters that name objects are shown as their uuids and names, while the
    // session is still open to look them up.
    let r = match r {
        Err(CliError::Api { code, params }) => {
            let mut shown = Vec::with_capacity(params.len());
            for p in &params {
                shown.push(commands::ref_convert(&ctx, p).await);
            }
            Err(CliError::Api { code, params: shown })
        }
        other => other,
    };
    if logout {
        let s = Json::String(ctx.session.clone());
        if let Err(e) = agent::call(agent, &ctx.call_ctx, "session.logout", &[s]).await {
            tracing::debug!(error = %e, "logging out a CLI session");
        }
    }
    r
}

async fn param_error(out: &mut Out, what: &str, detail: &str) -> Result<(), CliError> {
    let line = if what.is_empty() {
        format!("{detail}\n")
    } else {
        format!("{what}: {detail}\n")
    };
    out.conn.send(Command::PrintStderr(line)).await?;
    out.conn
        .send(Command::PrintStderr("For usage run: 'xe help'\n".into()))
        .await
}

/// Prints a failure; the exit status, or `None` when the client is gone.
async fn report(out: &mut Out, e: CliError) -> Option<i32> {
    let sent = match e {
        CliError::Exit(n) => return Some(n),
        CliError::Protocol(why) => {
            tracing::debug!(%why, "a CLI session ended early");
            return None;
        }
        CliError::Api { code, params } => out.conn.send(Command::Error(code, params)).await,
        CliError::Failure(msg) => out.conn.send(Command::PrintStderr(format!("Error: {msg}\n"))).await,
        CliError::ParamNotFound(p) => param_error(out, "Required parameter not found", &p).await,
        CliError::Login(msg) => param_error(out, "", msg).await,
        CliError::Syntax(s) => param_error(out, "Syntax error", &s).await,
        CliError::UnknownCommand(c) => param_error(out, "Unknown command", &c).await,
        CliError::Multiple(fails) => {
            let mut r = Ok(());
            for (uuid, why) in fails {
                r = out
                    .conn
                    .send(Command::Print(format!("operation failed on {uuid}: {why}")))
                    .await;
                if r.is_err() {
                    break;
                }
            }
            r
        }
        CliError::MissingParameter(name) => {
            out.conn
                .send(Command::Error("Missing parameter".into(), vec![name]))
                .await
        }
    };
    sent.ok().map(|()| 1)
}
