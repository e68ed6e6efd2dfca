//! The filter refuses what it names on the thread it is installed on (and the threads and
//! children that thread creates), and nothing else; `serve` installs it on its workers.

use super::*;
use actix_web::HttpResponse;

/// `IOCTL_PRIVCMD_HYPERCALL`: `_IOC(_IOC_NONE, 'P', 0, sizeof(privcmd_hypercall_t) = 40)`.
const IOCTL_PRIVCMD_HYPERCALL: libc::c_ulong = (40 << 16) | ((b'P' as libc::c_ulong) << 8);

/// What the forbidden calls (and one allowed call of each kind) answer on this thread:
/// `name=ok` or `name=<errno>`.
fn probe() -> String {
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    let mut out = Vec::new();
    let exec = match std::process::Command::new("/bin/true").status() {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.raw_os_error().unwrap_or(-1).to_string(),
    };
    out.push(format!("exec={exec}"));
    let mut sock = |name: &str, domain: i32, ty: i32, proto: i32| {
        // SAFETY: socket() takes plain integers; the descriptor it returns is closed here.
        let fd = unsafe { libc::socket(domain, ty, proto) };
        if fd < 0 {
            out.push(format!("{name}={}", errno()));
        } else {
            // SAFETY: `fd` was just returned by socket() and is not used after this.
            unsafe { libc::close(fd) };
            out.push(format!("{name}=ok"));
        }
    };
    sock("packet", libc::AF_PACKET, libc::SOCK_RAW, 0);
    sock(
        "raw4",
        libc::AF_INET,
        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
        libc::IPPROTO_ICMP,
    );
    sock("raw6", libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
    sock("tcp", libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
    let null = std::fs::File::open("/dev/null").map(|f| {
        use std::os::fd::AsRawFd;
        let ioctl = |req: libc::c_ulong| {
            // SAFETY: both requests are refused or unknown to /dev/null before any argument is
            // read; the null pointer is never dereferenced.
            let r = unsafe {
                libc::ioctl(
                    f.as_raw_fd(),
                    req as libc::c_ulong,
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
            if r < 0 {
                errno().to_string()
            } else {
                "ok".to_owned()
            }
        };
        (ioctl(IOCTL_PRIVCMD_HYPERCALL), ioctl(libc::TCGETS))
    });
    match null {
        Ok((privcmd, tty)) => {
            out.push(format!("privcmd={privcmd}"));
            out.push(format!("tcgets={tty}"));
        }
        Err(e) => out.push(format!("devnull={e}")),
    }
    out.join(" ")
}

/// The test hook `serve` routes at `GET /test/forbidden` (compiled only in tests): the
/// probe, run on the worker thread that serves the request.
pub(crate) async fn forbidden_hook() -> HttpResponse {
    let mut p = probe();
    // A program started through the privileged threads, as the agent starts plugins.
    let privileged =
        agent::privileged::run_async(|| async { tokio::process::Command::new("/bin/true").status().await }).await;
    p.push_str(match privileged {
        Ok(Ok(s)) if s.success() => " privileged_exec=ok",
        _ => " privileged_exec=refused",
    });
    HttpResponse::Ok().content_type("text/plain").body(p)
}

fn field<'a>(probe: &'a str, name: &str) -> &'a str {
    probe
        .split(' ')
        .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .unwrap_or("missing")
}

fn assert_confined(p: &str) {
    let eperm = libc::EPERM.to_string();
    for name in ["exec", "packet", "raw4", "raw6", "privcmd"] {
        assert_eq!(field(p, name), eperm, "{name} not refused: {p}");
    }
    // What the filter does not name still works, or fails as it would without it.
    assert_eq!(field(p, "tcp"), "ok", "{p}");
    assert_eq!(field(p, "tcgets"), libc::ENOTTY.to_string(), "{p}");
}

#[test]
fn the_filter_refuses_exec_raw_sockets_and_privcmd_on_its_thread_only() {
    let prog = worker_filter(Action::Refuse).unwrap();
    let confined = std::thread::spawn(move || {
        install(&prog).unwrap();
        // A thread the confined thread creates inherits the filter.
        let child = std::thread::spawn(probe).join().unwrap();
        (probe(), child)
    })
    .join()
    .unwrap();
    assert_confined(&confined.0);
    assert_confined(&confined.1);
    // This thread has no filter: /dev/null answers the privcmd request as unknown, and a
    // program starts.
    let free = probe();
    assert_eq!(field(&free, "exec"), "ok", "{free}");
    assert_eq!(field(&free, "privcmd"), libc::ENOTTY.to_string(), "{free}");
}

#[test]
fn under_the_kill_action_a_forbidden_call_kills_the_process() {
    let prog = worker_filter(Action::Kill).unwrap();
    let (path, arg) = (c"/bin/true", [c"/bin/true".as_ptr(), std::ptr::null()]);
    let env = [std::ptr::null()];
    // SAFETY: the child calls only async-signal-safe functions (prctl and seccomp through
    // `install`, which allocates nothing, then execve and _exit) before it ends.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: see above; every pointer refers to memory made before the fork.
        unsafe {
            if install(&prog).is_err() {
                libc::_exit(3);
            }
            libc::execve(path.as_ptr(), arg.as_ptr(), env.as_ptr());
            // Not killed: the filter let it through (or it failed otherwise).
            libc::_exit(4);
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child made above; `status` is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
        "the child was not killed by SIGSYS: status {status:#x}"
    );
}

/// `GET path` on `addr`: (status, body).
fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (
        status,
        out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned()),
    )
}

async fn serve_probe(confine: bool) -> (String, u16) {
    use agent::hypervisor::{SimConfig, SimulatorBackend};
    let dir = tempfile::tempdir().unwrap();
    let agent = agent::Agent::start(agent::AgentConfig {
        state_dir: dir.path().join("state"),
        root_password_file: None,
        hypervisor: std::sync::Arc::new(SimulatorBackend::new(SimConfig::small_host())),
        host_address: "127.0.0.1".into(),
        server_identity: None,
    })
    .await
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = crate::server::ServerConfig {
        listen: vec![addr],
        socket: None,
        max_body: 1 << 20,
        workers: 1,
        tls_listen: vec![],
        tls: None,
        max_connections: 16,
        bench_noop: false,
        confine_workers: confine,
        confine_action: Action::Refuse,
    };
    let server = actix_web::rt::spawn(crate::server::serve(agent, cfg));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "the server did not listen");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/test/forbidden"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // The worker keeps serving after its refusals.
    let (after, _) = tokio::task::spawn_blocking(move || get(addr, "/")).await.unwrap();
    server.abort();
    (body, after)
}

#[actix_web::test]
async fn serve_confines_its_workers_when_asked() {
    let (confined, after) = serve_probe(true).await;
    assert_confined(&confined);
    // What a confined worker hands to the privileged threads still runs.
    assert_eq!(field(&confined, "privileged_exec"), "ok", "{confined}");
    assert_eq!(after, 200);
    let (free, _) = serve_probe(false).await;
    assert_eq!(field(&free, "exec"), "ok", "{free}");
}
