//! `xe`: runs one command on a XenAPI host through its `/cli`, speaking the thin CLI protocol.
//!
//! Settings, strongest first: the command line (`-s`, `-p`, `-u`, `-pw`, `-pwf`, `--nossl`,
//! `--debug`, `--debug-on-fail`, or `server=`, `port=`, `username=`, `password=`,
//! `passwordfile=`, `nossl=` …), `XE_EXTRA_ARGS` (comma-separated, `\,` for a comma), then
//! `~/.xe` (one `name=value` a line). Without a server the local host is used: its unix
//! socket `/var/lib/xcp/xapi`, else plain HTTP to 127.0.0.1. Another server is reached over
//! HTTPS (port 443) unless `--nossl` (then HTTP, port 80).
//!
//! Every other argument goes to the server as it is. The server drives the rest: it prints,
//! asks for local files (only those named on the command line may be read or written), and
//! says which exit status to leave with.

mod conn;

use conn::{ConnectError, Stream};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};
use xe::protocol::{self, Blob, Command, Message, Response};

/// How often a long transfer tells the server the client is still there.
const HEARTBEAT: Duration = Duration::from_secs(300);

/// The settings a run uses.
struct Settings {
    server: String,
    port: Option<u16>,
    username: String,
    password: String,
    password_file: String,
    ssl: bool,
    debug: bool,
    debug_on_fail: bool,
    traceparent: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: "127.0.0.1".into(),
            port: None,
            username: "root".into(),
            password: "null".into(),
            password_file: String::new(),
            ssl: true,
            debug: false,
            debug_on_fail: false,
            traceparent: None,
        }
    }
}

/// Why a run stopped before the server said `Exit`.
enum Failure {
    /// Print the usage (exit 0).
    Usage,
    /// A message for standard error, with whether the usage follows (exit 1).
    Message(String, bool),
}

impl Settings {
    /// Takes a setting the client knows; false for any other name.
    fn set(&mut self, k: &str, v: &str) -> Result<bool, Failure> {
        match k {
            "server" => self.server = v.to_owned(),
            "port" => {
                self.port = Some(
                    v.parse::<u16>()
                        .map_err(|_| Failure::Message("Port number must be an integer (0-65535)\n".into(), true))?,
                )
            }
            "username" => self.username = v.to_owned(),
            "password" => self.password = v.to_owned(),
            "passwordfile" => self.password_file = v.to_owned(),
            "nossl" => match v {
                "true" => self.ssl = false,
                "false" => self.ssl = true,
                _ => return Ok(false),
            },
            "debug" => self.debug = v == "true",
            "debugonfail" => self.debug_on_fail = v == "true",
            "traceparent" => self.traceparent = Some(v.to_owned()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The port: the one given, else 443 for TLS and 80 without.
    fn port_for(&self, ssl: bool) -> u16 {
        self.port.unwrap_or(if ssl { 443 } else { 80 })
    }

    fn is_localhost(&self) -> bool {
        self.server == "127.0.0.1"
    }
}

/// The short options that take the next argument.
fn option(arg: &str) -> Option<&'static str> {
    Some(match arg {
        "-s" | "-h" => "server",
        "-p" => "port",
        "-u" => "username",
        "-pw" => "password",
        "-pwf" => "passwordfile",
        "--traceparent" => "traceparent",
        _ => return None,
    })
}

/// Applies the settings among `args`; returns the arguments for the server.
fn take_settings(s: &mut Settings, args: &[String]) -> Result<Vec<String>, Failure> {
    let mut rest = Vec::new();
    let mut i = 0;
    while let Some(a) = args.get(i) {
        let flag = match a.as_str() {
            "--nossl" => Some(("nossl", "true")),
            "--debug" => Some(("debug", "true")),
            "--debug-on-fail" => Some(("debugonfail", "true")),
            _ => None,
        };
        if let Some((k, v)) = flag {
            s.set(k, v)?;
            i += 1;
            continue;
        }
        if let (Some(k), Some(v)) = (option(a), args.get(i + 1)) {
            if s.set(k, v)? {
                i += 2;
                continue;
            }
        }
        match a.split_once('=') {
            Some((k, v)) if s.set(k, v)? => {}
            _ => rest.push(a.clone()),
        }
        i += 1;
    }
    Ok(rest)
}

/// `XE_EXTRA_ARGS`: comma-separated, a backslash escaping a comma.
fn split_extra(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `~/.xe`: `name=value` lines (blank lines skipped); any other line voids the file.
fn read_rc() -> Vec<(String, String)> {
    let Some(home) = std::env::var_os("HOME") else {
        return Vec::new();
    };
    let Ok(text) = std::fs::read_to_string(Path::new(&home).join(".xe")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        match line.split_once('=') {
            Some((k, v)) => out.push((k.to_owned(), v.to_owned())),
            None => {
                eprintln!("Error parsing rc file. No defaults loaded");
                return Vec::new();
            }
        }
    }
    out
}

/// A path made absolute against the working directory and normalised (`.`, `..`), without
/// following links.
fn canonicalize(p: &str) -> PathBuf {
    let path = Path::new(p);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The files the server may ask for: every `name=value` value on the command line.
fn permitted(args: &[String]) -> Vec<PathBuf> {
    args.iter()
        .filter_map(|a| a.split_once('=').map(|(_, v)| v))
        .filter(|v| !v.trim().is_empty())
        .map(canonicalize)
        .collect()
}

fn assert_permitted(permitted: &[PathBuf], file: &str, allow_cwd: bool) -> Result<(), Failure> {
    let wanted = canonicalize(file);
    let cwd = canonicalize(".");
    if permitted.contains(&wanted) || (allow_cwd && wanted == cwd) {
        return Ok(());
    }
    Err(Failure::Message(
        format!(
            "File not permitted: Blocked upload/download of the file {file}, which was requested by the server. The file name was not present on the command line\n.\n"
        ),
        false,
    ))
}

fn usage() {
    let me = std::env::args().next().unwrap_or_else(|| "xe".into());
    eprint!(
        "Usage:
  {me} <command>
    [ -s <server> ]            the host to connect to
    [ -p <port> ]              its port
    [ -u <username> -pw <password> | -pwf <password file> ]
                               who to log in as (a password file holds the
                               user name on its first line, the password on
                               its second)
    [ --nossl ]                plain HTTP instead of HTTPS
    [ --debug ]                show the protocol's messages
    [ --debug-on-fail ]        show them only when the command fails
    [ --minimal ]              print values only, as comma-separated lists
    [ --traceparent <value> ]  a tracing context to pass on
    [ <other arguments> ... ]  the command's parameters

The commands are listed by
  {me} help -s <server> -p <port>
"
    );
}

/// Where debug output goes.
enum Debug {
    Off,
    Stderr,
    Buffer(Vec<u8>),
}

impl Debug {
    fn log(&mut self, s: &str) {
        match self {
            Debug::Off => {}
            Debug::Stderr => eprint!("{s}"),
            Debug::Buffer(b) => b.extend_from_slice(s.as_bytes()),
        }
    }
}

/// An HTTP reply: the status, the headers (names in lower case), the body's stream.
type Reply = (u16, Vec<(String, String)>, BufReader<Stream>);

/// Everything one run holds.
struct Client {
    settings: Settings,
    permitted: Vec<PathBuf>,
    debug: Debug,
}

fn connect_error(e: ConnectError, server: &str) -> Failure {
    match e {
        ConnectError::NotFound => Failure::Message(format!("Host '{server}' not found.\n"), false),
        ConnectError::Io(e, what) => Failure::Message(format!("Error: {e} (calling {what})\n"), false),
        ConnectError::Tls(e) => Failure::Message(format!("Error: TLS: {e}\n"), false),
    }
}

impl Client {
    /// A TCP or TLS connection to the server (for the data transfers, and for the command
    /// when the server is not the local host). The local host is never reached over TLS.
    fn open_tcp(&mut self, server: &str) -> Result<Stream, Failure> {
        let ssl = self.settings.ssl && server != "127.0.0.1";
        let port = self.settings.port_for(ssl);
        self.debug.log(&format!(
            "Connecting via {} to [{server}] port [{port}]\n",
            if ssl { "TLS" } else { "TCP" }
        ));
        if ssl {
            conn::tls(server, port).map_err(|e| connect_error(e, server))
        } else {
            conn::tcp(server, port)
                .map(Stream::Tcp)
                .map_err(|e| connect_error(e, server))
        }
    }

    /// The connection the command runs on.
    fn open(&mut self) -> Result<Stream, Failure> {
        if self.settings.is_localhost() {
            self.debug
                .log(&format!("Connecting to Unix socket [{}]", conn::UNIX_SOCKET));
            match conn::unix(conn::UNIX_SOCKET) {
                Ok(s) => {
                    self.debug.log("\n");
                    return Ok(s);
                }
                Err(_) => self.debug.log(" failed\n"),
            }
        }
        let server = self.settings.server.clone();
        self.open_tcp(&server)
    }

    /// The server and path of a URL the server sent: an `https://host/path` URL names
    /// another host; anything else is a path on this one.
    fn split_url(&self, url: &str) -> (String, String) {
        if let Some(rest) = url.strip_prefix("https://") {
            let (host, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            return (host.to_owned(), path.to_owned());
        }
        (self.settings.server.clone(), url.to_owned())
    }

    fn run(&mut self, args: &[String]) -> Result<i32, Failure> {
        let mut s = self.open()?;
        let mut body: Vec<String> = args.to_vec();
        body.push(format!("username={}", self.settings.username));
        body.push(format!("password={}", self.settings.password));
        let body = body.join("\n");
        let mut head = String::from("POST /cli HTTP/1.0\r\n");
        head.push_str(&format!(
            "User-agent: xe-cli/Unix/{}.{}\r\n",
            protocol::MAJOR,
            protocol::MINOR
        ));
        head.push_str("originator: cli\r\n");
        if let Some(t) = &self.settings.traceparent {
            head.push_str(&format!("traceparent: {t}\r\n"));
        }
        if let Ok(b) = std::env::var("BAGGAGE") {
            head.push_str(&format!("baggage: {b}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let sent = s
            .write_all(head.as_bytes())
            .and_then(|()| s.write_all(body.as_bytes()))
            .and_then(|()| s.flush());
        if let Err(e) = sent {
            return Err(Failure::Message(format!("Error: {e} (calling write)\n"), false));
        }
        self.main_loop(&mut s)
    }

    fn main_loop(&mut self, s: &mut Stream) -> Result<i32, Failure> {
        let mut theirs = Vec::with_capacity(protocol::HANDSHAKE_LEN);
        let mut buf = [0u8; protocol::HANDSHAKE_LEN];
        while theirs.len() < protocol::HANDSHAKE_LEN {
            match s.read(&mut buf[..protocol::HANDSHAKE_LEN - theirs.len()]) {
                Ok(0) => break,
                Ok(n) => theirs.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
            if protocol::parse_handshake(&theirs) == Err(protocol::HandshakeError::NotCliServer) {
                break;
            }
        }
        let (major, minor) = match protocol::parse_handshake(&theirs) {
            Ok(v) => v,
            Err(_) if theirs.is_empty() => {
                return Err(Failure::Message(
                    "Unable to contact server. Please check server and port settings.\n".into(),
                    false,
                ))
            }
            Err(_) if theirs.len() >= 4 && theirs[..4].eq_ignore_ascii_case(b"HTTP") => {
                return Err(Failure::Message("Server internal error.\n".into(), false))
            }
            Err(protocol::HandshakeError::Truncated) => {
                return Err(Failure::Message("Lost connection to the server.\n".into(), false))
            }
            Err(protocol::HandshakeError::NotCliServer) => {
                return Err(Failure::Message(
                    "Failed to contact a running management agent.\nTry specifying a server name and port.\n".into(),
                    true,
                ))
            }
        };
        let msg = format!(
            "Server has protocol version {major}.{minor}. Client has {}.{}",
            protocol::MAJOR,
            protocol::MINOR
        );
        self.debug.log(&format!("{msg}\n"));
        if major != protocol::MAJOR {
            return Err(Failure::Message(
                format!(
                    "Protocol version mismatch: {msg}.\nTry specifying a server name and port on the command-line.\n"
                ),
                true,
            ));
        }
        let heartbeats = major * 10 + minor >= 2;
        write_all(s, &protocol::handshake())?;
        loop {
            let m = read_message(s)?;
            self.debug.log(&format!("Read: {m}\n"));
            match m {
                Message::Command(Command::Print(x)) => {
                    let mut out = io::stdout().lock();
                    let _ = writeln!(out, "{x}");
                    let _ = out.flush();
                }
                Message::Command(Command::PrintStderr(x)) => eprint!("{x}"),
                Message::Command(Command::Debug(x)) => self.debug.log(&format!("debug from server: {x}\n")),
                Message::Command(Command::Load(file)) => {
                    assert_permitted(&self.permitted, &file, false)?;
                    self.load(s, &file)?;
                }
                Message::Command(Command::HttpPut(file, url)) => {
                    assert_permitted(&self.permitted, &file, false)?;
                    if let Some(code) = self.http_put(s, &file, &url, heartbeats)? {
                        return Ok(code);
                    }
                }
                Message::Command(Command::HttpGet(file, url)) => {
                    if let Some(code) = self.http_get(s, &file, &url, heartbeats)? {
                        return Ok(code);
                    }
                }
                Message::Command(Command::HttpConnect(url)) => self.http_connect(s, &url)?,
                Message::Command(Command::Prompt) => {
                    let mut line = String::new();
                    let _ = io::stdin().lock().read_line(&mut line);
                    let line = line.strip_suffix('\n').unwrap_or(&line);
                    let data = line.as_bytes();
                    write_all(s, &protocol::encode(&Message::Blob(Blob::Chunk(data.len() as i32))))?;
                    write_all(s, data)?;
                    write_all(s, &protocol::encode(&Message::Blob(Blob::End)))?;
                }
                Message::Command(Command::Error(code, params)) => {
                    eprintln!("Error code: {code}");
                    eprintln!("Error parameters: {}", params.join(", "));
                }
                Message::Command(Command::Exit(c)) => return Ok(c),
                other => {
                    return Err(Failure::Message(
                        format!("Unexpected message from server: {other}"),
                        false,
                    ));
                }
            }
        }
    }

    /// `Load`: the file as one blob, or `Failed`.
    fn load(&mut self, s: &mut Stream, file: &str) -> Result<(), Failure> {
        let data = match std::fs::read(file) {
            Ok(d) if d.len() <= i32::MAX as usize => d,
            _ => return respond(s, Response::Failed),
        };
        respond(s, Response::Ok)?;
        write_all(s, &protocol::encode(&Message::Blob(Blob::Chunk(data.len() as i32))))?;
        write_all(s, &data)?;
        write_all(s, &protocol::encode(&Message::Blob(Blob::End)))
    }

    /// An HTTP request to the server's data path; the response's status line, headers, and
    /// the stream positioned at the body.
    fn request(&mut self, url: &str, head: &str) -> Result<Reply, String> {
        let (server, path) = self.split_url(url);
        let mut s = self.open_tcp(&server).map_err(|f| match f {
            Failure::Message(m, _) => m,
            Failure::Usage => String::new(),
        })?;
        self.debug.log(&format!(
            "Request to [{server}]: {}\n",
            head.replace("{path}", &path).trim_end()
        ));
        s.write_all(head.replace("{path}", &path).as_bytes())
            .and_then(|()| s.flush())
            .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).map_err(|e| e.to_string())?;
        let code = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.trim().parse::<u16>().ok())
            .ok_or_else(|| format!("Bad response from HTTP server: {}", status.trim_end()))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                break;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        Ok((code, headers, r))
    }

    /// Sends `head` to `url`, following up to ten redirects: the successful answer's body, or
    /// `None` (the reason logged under `what`).
    fn request_following(&mut self, url: &str, head: &str, what: &str) -> Option<BufReader<Stream>> {
        let mut url = url.to_owned();
        for _ in 0..10 {
            match self.request(&url, head) {
                Ok((200, _, r)) => return Some(r),
                Ok((302, headers, _)) => match headers.into_iter().find(|(k, _)| k == "location") {
                    Some((_, l)) => url = l,
                    None => return None,
                },
                Ok((code, _, _)) => {
                    self.debug.log(&format!("{what} failure: HTTP {code}\n"));
                    return None;
                }
                Err(e) => {
                    self.debug.log(&format!("{what} failure: {e}\n"));
                    return None;
                }
            }
        }
        None
    }

    /// Tells the host how a transfer ended: failures are logged under `what`.
    fn transfer_done(&mut self, s: &mut Stream, copied: io::Result<()>, what: &str) -> Result<Option<i32>, Failure> {
        match copied {
            Ok(()) => respond(s, Response::Ok)?,
            Err(e) => {
                self.debug.log(&format!("{what} failure: {e}\n"));
                respond(s, Response::Failed)?;
            }
        }
        Ok(None)
    }

    /// `HttpPut`: uploads the file; `Some(status)` when the client must stop.
    fn http_put(&mut self, s: &mut Stream, file: &str, url: &str, heartbeats: bool) -> Result<Option<i32>, Failure> {
        let opened = std::fs::metadata(file)
            .map_err(|_| format!("file '{file}' does not exist"))
            .and_then(|m| File::open(file).map(|f| (m, f)).map_err(|e| e.to_string()));
        let (meta, mut f) = match opened {
            Ok(v) => v,
            Err(e) => {
                respond(s, Response::Failed)?;
                eprintln!("Operation failed. Error: {e}");
                return Ok(Some(1));
            }
        };
        let length = if meta.is_file() {
            format!("\r\nContent-length: {}", meta.len())
        } else {
            String::new()
        };
        let head = format!("PUT {{path}} HTTP/1.0{length}\r\n\r\n");
        let Some(r) = self.request_following(url, &head, "HttpPut") else {
            respond(s, Response::Failed)?;
            return Ok(None);
        };
        let mut up = r.into_inner();
        let copied = copy(&mut f, &mut up, s, heartbeats);
        if copied.is_ok() {
            // The host reads all of it before the connection goes. A body of known length is
            // not followed by a half-close: the host's HTTP stack (actix-http) took a
            // half-close while it still held unread body bytes for an early end
            // (IMPORT_ERROR_PREMATURE_EOF, intermittently); without a length, the half-close
            // is where the body ends.
            if length.is_empty() {
                up.finish(Duration::from_secs(600));
            } else {
                up.drain(Duration::from_secs(600));
            }
        }
        self.transfer_done(s, copied, "HttpPut")
    }

    /// `HttpGet`: downloads into the file (standard output for an empty name).
    fn http_get(&mut self, s: &mut Stream, file: &str, url: &str, heartbeats: bool) -> Result<Option<i32>, Failure> {
        let Some(mut r) = self.request_following(url, "GET {path} HTTP/1.0\r\n\r\n", "HttpGet") else {
            respond(s, Response::Failed)?;
            return Ok(None);
        };
        let mut sink: Box<dyn Write> = if file.is_empty() {
            Box::new(io::stdout())
        } else {
            assert_permitted(&self.permitted, file, true)?;
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(file)
            {
                Ok(f) => Box::new(f),
                Err(e) => {
                    respond(s, Response::Failed)?;
                    eprintln!("Operation failed. Error: {e}");
                    return Ok(Some(1));
                }
            }
        };
        let copied = copy(&mut r, &mut sink, s, heartbeats);
        self.transfer_done(s, copied, "HttpGet")
    }

    /// `HttpConnect`: the terminal joined to a console until the user types Ctrl-].
    fn http_connect(&mut self, s: &mut Stream, url: &str) -> Result<(), Failure> {
        let (code, _, r) = match self.request(url, "CONNECT {path} HTTP/1.0\r\ncontent-length: 0\r\n\r\n") {
            Ok(x) => x,
            Err(e) => {
                eprintln!("{e}");
                return respond(s, Response::Failed);
            }
        };
        match code {
            200 => {}
            404 => {
                eprintln!("Server replied with HTTP 404: the console is not available");
                return respond(s, Response::Failed);
            }
            other => {
                eprintln!("Server said: HTTP {other}");
                return respond(s, Response::Failed);
            }
        }
        let saved = raw_terminal();
        let result = console(r);
        if let Some(t) = saved {
            // SAFETY: restores the terminal attributes read from fd 0 before; `t` is a
            // valid termios for it.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
            println!("\r");
        }
        match result {
            Ok(()) => respond(s, Response::Ok),
            Err(e) => {
                eprintln!("{e}");
                respond(s, Response::Failed)
            }
        }
    }
}

/// Puts the terminal in raw mode; its previous settings, when standard input is one.
fn raw_terminal() -> Option<libc::termios> {
    // SAFETY: isatty only reads the descriptor's type.
    if unsafe { libc::isatty(0) } != 1 {
        return None;
    }
    // SAFETY: termios is plain data that tcgetattr fills in for fd 0.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios to write into.
    if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
        return None;
    }
    let saved = t;
    // SAFETY: cfmakeraw edits the termios it is given.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: sets fd 0's attributes from a valid termios.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    Some(saved)
}

/// Copies between the terminal and the console until Ctrl-] or either side closes.
fn console(mut remote: BufReader<Stream>) -> io::Result<()> {
    // Bytes the reader holds already go out first.
    let pending = remote.buffer().to_vec();
    remote.consume(pending.len());
    let mut out = io::stdout();
    out.write_all(&pending)?;
    out.flush()?;
    let mut s = remote.into_inner();
    let fd = s.raw_fd();
    let mut buf = [0u8; 65536];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            let k = io::stdin().read(&mut buf)?;
            if k == 0 {
                return Ok(());
            }
            let chunk = &buf[..k];
            match chunk.iter().position(|b| *b == 0x1d) {
                Some(i) => {
                    s.write_all(&chunk[..i])?;
                    return Ok(());
                }
                None => s.write_all(chunk)?,
            }
            s.flush()?;
        }
        if fds[1].revents != 0 {
            let k = s.read(&mut buf)?;
            if k == 0 {
                return Ok(());
            }
            out.write_all(&buf[..k])?;
            out.flush()?;
        }
    }
}

fn lost() -> Failure {
    Failure::Message("Lost connection to the server.\n".into(), false)
}

fn write_all(s: &mut Stream, b: &[u8]) -> Result<(), Failure> {
    s.write_all(b).and_then(|()| s.flush()).map_err(|_| lost())
}

fn respond(s: &mut Stream, r: Response) -> Result<(), Failure> {
    write_all(s, &protocol::encode(&Message::Response(r)))
}

/// Reads one frame.
fn read_message(s: &mut Stream) -> Result<Message, Failure> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).map_err(|_| lost())?;
    let len = protocol::frame_len(&head)
        .map_err(|e| Failure::Message(format!("Unexpected message from server: {e}\n"), false))?;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).map_err(|_| lost())?;
    protocol::decode_payload(&payload)
        .map_err(|e| Failure::Message(format!("Unexpected message from server: {e}\n"), false))
}

/// Copies `from` to `to`, sending `Response Wait` on the command's connection every five
/// minutes so the server knows the client is still at work.
fn copy(from: &mut dyn Read, to: &mut dyn Write, cli: &mut Stream, heartbeats: bool) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    let mut last = Instant::now();
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return to.flush();
        }
        to.write_all(&buf[..n])?;
        if heartbeats && last.elapsed() >= HEARTBEAT {
            cli.write_all(&protocol::encode(&Message::Response(Response::Wait)))?;
            last = Instant::now();
        }
    }
}

fn main() {
    // A closed pipe is an error to handle, not a signal that kills the client.
    // SAFETY: ignoring SIGPIPE changes only how the process reacts to the signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-version") {
        println!("ThinCLI protocol: {}.{}", protocol::MAJOR, protocol::MINOR);
        std::process::exit(0);
    }
    let mut settings = Settings::default();
    let mut debug = Debug::Off;
    let outcome = (|| -> Result<i32, Failure> {
        let mut rc_rest = Vec::new();
        for (k, v) in read_rc() {
            if !settings.set(&k, &v)? {
                rc_rest.push(format!("{k}={v}"));
            }
        }
        let extras = split_extra(&std::env::var("XE_EXTRA_ARGS").unwrap_or_default());
        let extras_rest = take_settings(&mut settings, &extras)?;
        if let Ok(t) = std::env::var("TRACEPARENT") {
            settings.traceparent = Some(t);
        }
        let help = args.iter().any(|a| a == "-help" || a == "--help");
        let mut rest = take_settings(&mut settings, &args)?;
        if help {
            return Err(Failure::Usage);
        }
        if !settings.password_file.is_empty() {
            let text = std::fs::read_to_string(&settings.password_file).map_err(|_| {
                Failure::Message(
                    format!("Error opening password file '{}'\n", settings.password_file),
                    false,
                )
            })?;
            let mut lines = text.lines();
            match (lines.next(), lines.next()) {
                (Some(u), Some(p)) => {
                    settings.username = u.to_owned();
                    settings.password = p.to_owned();
                }
                _ => return Err(Failure::Message(
                    "Error: password file format: expecting username on the first line, password on the second line\n"
                        .into(),
                    false,
                )),
            }
        }
        if settings.debug {
            debug = Debug::Stderr;
        } else if settings.debug_on_fail {
            debug = Debug::Buffer(Vec::new());
        }
        rest.extend(extras_rest);
        rest.extend(rc_rest);
        if rest.is_empty() {
            return Err(Failure::Usage);
        }
        let mut client = Client {
            permitted: permitted(&rest),
            settings: std::mem::take(&mut settings),
            debug: std::mem::replace(&mut debug, Debug::Off),
        };
        let r = client.run(&rest);
        debug = std::mem::replace(&mut client.debug, Debug::Off);
        r
    })();
    let code = match outcome {
        Ok(c) => c,
        Err(Failure::Usage) => {
            usage();
            0
        }
        Err(Failure::Message(m, with_usage)) => {
            eprint!("{m}");
            if with_usage {
                usage();
            }
            1
        }
    };
    if let Debug::Buffer(b) = debug {
        if code != 0 {
            eprint!("\nDebug info:\n\n{}", String::from_utf8_lossy(&b));
        }
    }
    let _ = io::stdout().flush();
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn options_and_settings_are_taken_off_the_command_line() {
        let mut s = Settings::default();
        let rest = take_settings(
            &mut s,
            &v(&[
                "vm-list",
                "-s",
                "h1",
                "-p",
                "8080",
                "--nossl",
                "-u",
                "me",
                "-pw",
                "pw",
                "params=uuid",
                "password=x",
            ]),
        )
        .ok()
        .unwrap_or_default();
        assert_eq!(rest, v(&["vm-list", "params=uuid"]));
        assert_eq!(s.server, "h1");
        assert_eq!(s.port, Some(8080));
        assert!(!s.ssl);
        assert_eq!(s.username, "me");
        assert_eq!(s.password, "x");
        assert!(matches!(
            take_settings(&mut s, &v(&["-p", "x"])),
            Err(Failure::Message(..))
        ));
    }

    #[test]
    fn default_ports_follow_tls() {
        let mut s = Settings::default();
        assert_eq!(s.port_for(true), 443);
        assert_eq!(s.port_for(false), 80);
        s.port = Some(9);
        assert_eq!(s.port_for(true), 9);
    }

    #[test]
    fn extra_args_split_on_unescaped_commas() {
        assert_eq!(split_extra("server=h,port=1"), v(&["server=h", "port=1"]));
        assert_eq!(split_extra("name-label=a\\,b,x=y"), v(&["name-label=a,b", "x=y"]));
        assert!(split_extra("").is_empty());
    }

    #[test]
    fn only_files_named_on_the_command_line_are_permitted() {
        let p = permitted(&v(&["vdi-export", "uuid=u", "filename=/tmp/a/../b.img"]));
        assert!(assert_permitted(&p, "/tmp/b.img", false).is_ok());
        assert!(assert_permitted(&p, "/etc/shadow", false).is_err());
        assert!(assert_permitted(&p, ".", true).is_ok());
        assert!(assert_permitted(&p, ".", false).is_err());
    }
}
