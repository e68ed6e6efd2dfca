//! Benchmarks for xapid (see BENCHMARKS.md): helpers shared by the benchmark binaries — a
//! minimal blocking HTTP/1.1 and XML-RPC client, and a child `xapid` that is stopped on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Failures of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A system call or the network failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered something unexpected.
    #[error("{0}")]
    Protocol(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// A `xapid` started for the benchmark; killed when dropped.
pub struct Daemon {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Root's password (from the state dir).
    pub password: String,
}

impl Daemon {
    /// Starts `xapid` on the simulator backend with `state_dir` and waits until it answers.
    pub fn start(xapid: &Path, state_dir: &Path, addr: SocketAddr) -> Result<Daemon, BenchError> {
        let child = Command::new(xapid)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--backend")
            .arg("simulator")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", "warn")
            .spawn()
            .map_err(io(format!("starting {}", xapid.display())))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let pw_file = state_dir.join("root-password");
        loop {
            if TcpStream::connect(addr).is_ok() && pw_file.exists() {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Protocol("xapid did not start listening".into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let password = std::fs::read_to_string(&pw_file)
            .map_err(io("reading the root password"))?
            .trim()
            .to_owned();
        Ok(Daemon { child, addr, password })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response: status, head, body.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Status line and headers.
    pub head: String,
    /// Body (empty when it was streamed to a sink).
    pub body: Vec<u8>,
}

fn read_head(r: &mut BufReader<TcpStream>) -> Result<(u16, String, Option<u64>), BenchError> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).map_err(io("reading a response head"))?;
        if n == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BenchError::Protocol(format!("bad response head: {head:?}")))?;
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())
            .flatten()
    });
    Ok((status, head, len))
}

/// Sends a request whose body is read from `body` (`len` bytes) and reads the whole answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &mut dyn Read,
    len: u64,
) -> Result<Response, BenchError> {
    let mut s = TcpStream::connect(addr).map_err(io("connecting"))?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).map_err(io("sending a request"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = body.read(&mut buf[..want]).map_err(io("reading the upload"))?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n]).map_err(io("uploading"))?;
        left -= n as u64;
    }
    let mut r = BufReader::with_capacity(1 << 20, s);
    let (status, head, _) = read_head(&mut r)?;
    let mut body = Vec::new();
    r.read_to_end(&mut body).map_err(io("reading a response"))?;
    Ok(Response { status, head, body })
}

/// A GET whose body is read and thrown away; returns the status and the bytes received.
pub fn download(addr: SocketAddr, path: &str) -> Result<(u16, u64), BenchError> {
    let mut s = TcpStream::connect(addr).map_err(io("connecting"))?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).map_err(io("sending a request"))?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let (status, _, _) = read_head(&mut r)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io("downloading"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok((status, total))
}

/// One XML-RPC parameter.
pub enum Param<'a> {
    /// A string (refs too).
    Str(&'a str),
    /// A raw `<value>` body, e.g. a struct.
    Raw(&'a str),
}

/// An XML-RPC call; returns the text of the `Value` of a success.
pub fn xmlrpc(addr: SocketAddr, method: &str, params: &[Param<'_>]) -> Result<String, BenchError> {
    let ps: String = params
        .iter()
        .map(|p| match p {
            Param::Str(s) => format!("<param><value><string>{s}</string></value></param>"),
            Param::Raw(s) => format!("<param><value>{s}</value></param>"),
        })
        .collect();
    let body =
        format!("<?xml version='1.0'?><methodCall><methodName>{method}</methodName><params>{ps}</params></methodCall>");
    let r = request(addr, "POST", "/", &mut body.as_bytes(), body.len() as u64)?;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    if !text.contains("<value>Success</value>") {
        return Err(BenchError::Protocol(format!("{method}: {text}")));
    }
    let v = text
        .split("<name>Value</name>")
        .nth(1)
        .and_then(|v| v.split("<value>").nth(1))
        .and_then(|v| v.split("</value>").next())
        .unwrap_or("");
    Ok(v.trim_start_matches("<string>")
        .trim_end_matches("</string>")
        .to_owned())
}

/// The median of some figures.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Drops the page cache (root only) so reads come from the disk; says whether it could.
pub fn drop_caches() -> bool {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Runs `dd` and returns its wall time in seconds.
pub fn dd(args: &[String]) -> Result<f64, BenchError> {
    let t = Instant::now();
    let out = Command::new("dd")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(io("running dd"))?;
    if !out.status.success() {
        return Err(BenchError::Protocol(format!(
            "dd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The default path of the release `xapid` next to this workspace.
pub fn default_xapid() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/xapid")
}
