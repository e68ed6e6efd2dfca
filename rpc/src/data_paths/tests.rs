//! The data paths against a real HTTP server on a loopback port, driven by a plain TCP client
//! (as curl or XenAPI.py's `urllib` would talk to it).

use crate::server::routes;
use actix_web::{web, App, HttpServer};
use agent::hypervisor::{DomainConfig, Hypervisor, SimConfig, SimulatorBackend};
use agent::schema::{class_ids, fields};
use agent::value::{default_object, Value};
use agent::{Agent, AgentConfig};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

struct Env {
    agent: Arc<Agent>,
    addr: SocketAddr,
    password: String,
    sim: Arc<SimulatorBackend>,
    _dir: tempfile::TempDir,
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sim = Arc::new(SimulatorBackend::new(SimConfig::small_host()));
    let state = dir.path().join("state");
    let agent = Agent::start(AgentConfig {
        state_dir: state.clone(),
        root_password_file: None,
        hypervisor: sim.clone(),
        host_address: "127.0.0.1".into(),
        server_identity: None,
    })
    .await
    .unwrap();
    let password = std::fs::read_to_string(state.join("root-password"))
        .unwrap()
        .trim()
        .to_owned();
    let data = web::Data::new(agent.clone());
    let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(|c| routes(c, 1 << 20)))
        .workers(2)
        .bind("127.0.0.1:0")
        .unwrap();
    let addr = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    Env {
        agent,
        addr,
        password,
        sim,
        _dir: dir,
    }
}

/// One HTTP/1.1 exchange over a fresh connection: (status, head, body).
fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // A peer that answers early (e.g. 400 before the body) may reset the rest of the write.
    let _ = s.write_all(body);
    // Read to the end of the body (by Content-Length when there is one: a server that keeps
    // the connection open after an error answer must not stall the test).
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|n| out.len() >= end + 4 + n) {
                break;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    split_response(&out)
}

fn split_response(out: &[u8]) -> (u16, String, Vec<u8>) {
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("no HTTP head") + 4;
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = out[end..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 4 + n..];
    }
}

/// An XML-RPC call as XenAPI.py makes it; returns the `Value` text of a success.
fn xmlrpc(addr: SocketAddr, method: &str, params: &[&str]) -> String {
    let ps: String = params
        .iter()
        .map(|p| match *p {
            "{}" => "<param><value><struct></struct></value></param>".to_owned(),
            p => format!("<param><value><string>{p}</string></value></param>"),
        })
        .collect();
    let body =
        format!("<?xml version='1.0'?><methodCall><methodName>{method}</methodName><params>{ps}</params></methodCall>");
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (status, _, out) = exchange(addr, &head, body.as_bytes());
    assert_eq!(status, 200);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Success"), "{method}: {text}");
    let v = text.split("<name>Value</name>").nth(1).unwrap();
    let v = v.split("<value>").nth(1).unwrap();
    let v = v.split("</value>").next().unwrap();
    v.trim_start_matches("<string>")
        .trim_end_matches("</string>")
        .to_owned()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn put(addr: SocketAddr, query: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let head = format!(
        "PUT /import_raw_vdi?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    exchange(addr, &head, body)
}

fn get(addr: SocketAddr, query: &str) -> (u16, String, Vec<u8>) {
    exchange(
        addr,
        &format!("GET /export_raw_vdi?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        b"",
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn task_status(agent: &Agent, task: &str) -> (String, Vec<String>) {
    let t = agent.store_for_tests().get(class_ids::task, task).unwrap();
    let status = t.get(fields::task::status).key_text();
    let err = t
        .get(fields::task::error_info)
        .as_set()
        .iter()
        .map(Value::key_text)
        .collect();
    (status, err)
}

#[actix_web::test]
async fn raw_vdi_round_trip_and_snapshot() {
    let e = start().await;
    let (addr, pw, pool) = (e.addr, e.password.clone(), e.agent.pool_ref().to_owned());
    let (session, sr) = blocking(move || {
        let s = xmlrpc(addr, "session.login_with_password", &["root", &pw, "2.21", "test"]);
        let sr = xmlrpc(addr, "pool.get_default_SR", &[&s, &pool]);
        (s, sr)
    })
    .await;
    let size = 64usize << 20;
    let s2 = session.clone();
    let vdi = blocking(move || {
        let body = format!(
            "<?xml version='1.0'?><methodCall><methodName>VDI.create</methodName><params><param><value>{s2}</value></param><param><value><struct>\
             <member><name>name_label</name><value>d</value></member><member><name>name_description</name><value></value></member>\
             <member><name>SR</name><value>{sr}</value></member><member><name>virtual_size</name><value>{size}</value></member>\
             <member><name>type</name><value>user</value></member><member><name>sharable</name><value><boolean>0</boolean></value></member>\
             <member><name>read_only</name><value><boolean>0</boolean></value></member><member><name>other_config</name><value><struct></struct></value></member>\
             </struct></value></param></params></methodCall>"
        );
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        let (_, _, out) = exchange(addr, &head, body.as_bytes());
        let text = String::from_utf8(out).unwrap();
        text.split("OpaqueRef:").nth(1).map(|r| format!("OpaqueRef:{}", r.split('<').next().unwrap())).unwrap()
    })
    .await;

    // 64 MiB of random bytes in, the same bytes out.
    let data = Arc::new(random_bytes(size, 42));
    let (d, s, v) = (data.clone(), session.clone(), vdi.clone());
    let (status, head, _) = blocking(move || put(addr, &format!("vdi={v}&session_id={s}&format=raw"), &d)).await;
    assert_eq!(status, 200, "{head}");
    let task = head
        .lines()
        .find_map(|l| l.strip_prefix("task-id: "))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(task_status(&e.agent, &task).0, "success");
    let (s, v) = (session.clone(), vdi.clone());
    let (status, head, out) = blocking(move || get(addr, &format!("vdi={v}&session_id={s}"))).await;
    assert_eq!(status, 200, "{head}");
    assert!(out == *data, "export differs from import");

    // A snapshot taken before an overwrite keeps the old bytes.
    let (s, v) = (session.clone(), vdi.clone());
    let snap = blocking(move || xmlrpc(addr, "VDI.snapshot", &[&s, &v, "{}"])).await;
    let snap = snap.trim().to_owned();
    let newer = Arc::new(random_bytes(size, 7));
    let (d, s, v) = (newer.clone(), session.clone(), vdi.clone());
    assert_eq!(
        blocking(move || put(addr, &format!("vdi={v}&session_id={s}"), &d))
            .await
            .0,
        200
    );
    let (s, sn) = (session.clone(), snap.clone());
    let (_, _, old) = blocking(move || get(addr, &format!("vdi={sn}&session_id={s}"))).await;
    assert!(old == *data, "the snapshot changed");
    // Basic auth and a uuid work too.
    let uuid = e
        .agent
        .store_for_tests()
        .get(class_ids::VDI, &vdi)
        .unwrap()
        .uuid()
        .unwrap()
        .to_owned();
    let creds = base64(&format!("root:{}", e.password));
    let (status, _, now) = blocking(move || {
        exchange(addr, &format!("GET /export_raw_vdi?vdi={uuid} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {creds}\r\nConnection: close\r\n\r\n"), b"")
    })
    .await;
    assert_eq!(status, 200);
    assert!(now == *newer);
}

fn base64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn small_vdi(e: &Env, size: u64) -> (String, String) {
    let session = e.agent.login("root", &e.password, "t").await.unwrap();
    let sr = e
        .agent
        .store_for_tests()
        .all(class_ids::SR)
        .iter()
        .find(|s| s.str_field("type") == "file")
        .unwrap()
        .reference
        .clone();
    let rec = serde_json::json!({"name_label": "d", "name_description": "", "SR": sr, "virtual_size": size.to_string(),
        "type": "user", "sharable": false, "read_only": false, "other_config": {}});
    let v = agent::call(
        &e.agent,
        &agent::CallCtx::default(),
        "VDI.create",
        &[serde_json::json!(session), rec],
    )
    .await
    .unwrap();
    (session, v.as_str().unwrap().to_owned())
}

async fn new_task(e: &Env) -> String {
    let t = agent::storage::transfer::TransferTask::begin(&e.agent, None, "client task")
        .await
        .unwrap();
    t.reference().to_owned()
}

#[actix_web::test]
async fn bad_uploads_fail_the_task_and_the_daemon_keeps_serving() {
    let e = start().await;
    let addr = e.addr;
    let (session, vdi) = small_vdi(&e, 4 << 20).await;

    // No credentials: 401, and the named task fails.
    let task = new_task(&e).await;
    let (v, t) = (vdi.clone(), task.clone());
    let (status, _, _) = blocking(move || put(addr, &format!("vdi={v}&task_id={t}"), b"abc")).await;
    assert_eq!(status, 401);
    assert_eq!(
        task_status(&e.agent, &task),
        ("failure".into(), vec!["SESSION_AUTHENTICATION_FAILED".into()])
    );

    // Larger than the VDI (by Content-Length): refused before any byte is written.
    let task = new_task(&e).await;
    let (s, v, t) = (session.clone(), vdi.clone(), task.clone());
    let (status, _, _) = blocking(move || {
        put(
            addr,
            &format!("vdi={v}&session_id={s}&task_id={t}"),
            &vec![1u8; (4 << 20) + 1],
        )
    })
    .await;
    assert_eq!(status, 400);
    assert_eq!(task_status(&e.agent, &task).1[0], "VDI_TOO_SMALL");

    // Larger than the VDI, chunked (no length known up front).
    let task = new_task(&e).await;
    let (s, v, t) = (session.clone(), vdi.clone(), task.clone());
    let (status, _, _) = blocking(move || {
        let mut body = Vec::new();
        for _ in 0..5 {
            body.extend_from_slice(format!("{:x}\r\n", 1 << 20).as_bytes());
            body.extend_from_slice(&vec![3u8; 1 << 20]);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        exchange(addr, &format!("PUT /import_raw_vdi?vdi={v}&session_id={s}&task_id={t} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"), &body)
    })
    .await;
    assert_eq!(status, 400);
    assert_eq!(task_status(&e.agent, &task).1[0], "VDI_TOO_SMALL");

    // Truncated: the client stops after 1 of 4 MiB.
    let task = new_task(&e).await;
    let (s, v, t) = (session.clone(), vdi.clone(), task.clone());
    blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(format!("PUT /import_raw_vdi?vdi={v}&session_id={s}&task_id={t} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", 4 << 20).as_bytes()).unwrap();
        c.write_all(&vec![5u8; 1 << 20]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
    })
    .await;
    for _ in 0..100 {
        if task_status(&e.agent, &task).0 != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        task_status(&e.agent, &task),
        ("failure".into(), vec!["IMPORT_ERROR_PREMATURE_EOF".into()])
    );

    // A VHD that is no VHD, a tar stream that is no tar (docs/backups.md), and unknown formats.
    let (s, v) = (session.clone(), vdi.clone());
    assert_eq!(
        blocking(move || put(addr, &format!("vdi={v}&session_id={s}&format=vhd"), b"x"))
            .await
            .0,
        400
    );
    let (s, v) = (session.clone(), vdi.clone());
    let (status, _, body) = blocking(move || put(addr, &format!("vdi={v}&session_id={s}&format=tar"), b"x")).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("IMPORT_ERROR"));
    // A tar export is served (its first member the disk's first chunk).
    let (s, v) = (session.clone(), vdi.clone());
    let (status, _, body) = blocking(move || get(addr, &format!("vdi={v}&session_id={s}&format=tar"))).await;
    assert_eq!(status, 200);
    assert!(body.starts_with(b"vdi/00000000\0"), "{:?}", &body[..body.len().min(64)]);
    let (s, v) = (session.clone(), vdi.clone());
    assert_eq!(
        blocking(move || get(addr, &format!("vdi={v}&session_id={s}&format=zip")))
            .await
            .0,
        400
    );

    // The VDI is intact and the daemon still serves: a full-size upload works.
    assert_eq!(
        std::fs::metadata(agent::storage::vdi_path(&e.agent, &vdi).unwrap())
            .unwrap()
            .len(),
        4 << 20
    );
    let (s, v) = (session.clone(), vdi.clone());
    let data = random_bytes(4 << 20, 3);
    let d2 = data.clone();
    assert_eq!(
        blocking(move || put(addr, &format!("vdi={v}&session_id={s}"), &d2))
            .await
            .0,
        200
    );
    let (s, v) = (session.clone(), vdi.clone());
    assert!(blocking(move || get(addr, &format!("vdi={v}&session_id={s}"))).await.2 == data);
    // Import into a new VDI of an SR.
    let sr = e
        .agent
        .store_for_tests()
        .all(class_ids::SR)
        .iter()
        .find(|s| s.str_field("type") == "file")
        .unwrap()
        .reference
        .clone();
    let s = session.clone();
    let (status, _, body) = blocking(move || put(addr, &format!("sr_id={sr}&session_id={s}"), &[9u8; 4096])).await;
    assert_eq!(status, 200);
    let created = String::from_utf8(body).unwrap().trim().to_owned();
    assert_eq!(
        e.agent
            .store_for_tests()
            .get(class_ids::VDI, &created)
            .unwrap()
            .get(fields::VDI::virtual_size),
        &Value::Int(4096)
    );
}

#[actix_web::test]
async fn console_streams_boot_lines_and_echoes() {
    let e = start().await;
    let addr = e.addr;
    let hv: Arc<dyn Hypervisor> = e.sim.clone();
    let domid = blocking(move || {
        let d = hv
            .create_domain(&DomainConfig::pv("webby", 256 << 20, 1, "/boot/vmlinuz"))
            .unwrap();
        hv.build(d).unwrap();
        hv.unpause(d).unwrap();
        d
    })
    .await;
    let vm_ref = "OpaqueRef:console-test-vm".to_owned();
    let console_ref = "OpaqueRef:console-test-console".to_owned();
    let (vr, cr) = (vm_ref.clone(), console_ref.clone());
    e.agent
        .store_for_tests()
        .write(|tx| {
            let mut vm = default_object(class_ids::VM, &vr);
            vm.set(fields::VM::uuid, Value::str(uuid::Uuid::new_v4().to_string()));
            vm.set(fields::VM::name_label, Value::str("webby"));
            vm.set(
                fields::VM::power_state,
                agent::schema::enums::VmPowerState::Running.value(),
            );
            vm.set(fields::VM::domid, Value::Int(i64::from(domid)));
            agent::objects::create(tx, vm)?;
            let mut c = default_object(class_ids::console, &cr);
            c.set(fields::console::uuid, Value::str(uuid::Uuid::new_v4().to_string()));
            c.set(
                fields::console::protocol,
                agent::schema::enums::ConsoleProtocol::vt100.value(),
            );
            c.set(fields::console::location, Value::str(format!("/console?ref={cr}")));
            c.set(fields::console::VM, Value::Ref(vr.clone().into()));
            agent::objects::create(tx, c)
        })
        .await
        .unwrap();
    let session = e.agent.login("root", &e.password, "t").await.unwrap();
    let text = blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(
            format!("CONNECT /console?ref={console_ref}&session_id={session} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut read_until = |c: &mut TcpStream, needle: &str, seen: &mut Vec<u8>| {
            while !String::from_utf8_lossy(seen).contains(needle) {
                let n = c.read(&mut buf).unwrap();
                assert!(
                    n > 0,
                    "console closed before {needle:?}: {}",
                    String::from_utf8_lossy(seen)
                );
                seen.extend_from_slice(&buf[..n]);
            }
        };
        read_until(&mut c, "root@webby:~# ", &mut seen);
        c.write_all(b"echo-me-please\n").unwrap();
        read_until(&mut c, "echo-me-please", &mut seen);
        String::from_utf8_lossy(&seen).into_owned()
    })
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("Xen simulator: booting domain"), "{text}");
    assert!(text.contains("echo-me-please"), "{text}");

    // The same over a WebSocket, as Xen Orchestra connects.
    let s3 = e.agent.login("root", &e.password, "t").await.unwrap();
    let vm_uuid = e
        .agent
        .store_for_tests()
        .get(class_ids::VM, &vm_ref)
        .unwrap()
        .uuid()
        .unwrap()
        .to_owned();
    let ws_text = blocking(move || {
        use actix_codec::{Decoder, Encoder};
        use actix_http::ws::{Codec, Frame, Message};
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(format!("GET /console?uuid={vm_uuid}&session_id={s3} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes()).unwrap();
        let mut codec = Codec::new().client_mode();
        let mut raw = actix_web::web::BytesMut::new();
        let mut text = String::new();
        let mut head_done = false;
        let mut sent = false;
        let mut buf = [0u8; 4096];
        while !text.contains("ws-echo-test") || !sent {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed: {text}");
            raw.extend_from_slice(&buf[..n]);
            if !head_done {
                let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&raw[..end]).into_owned();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                assert!(head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
                let _ = raw.split_to(end + 4);
                head_done = true;
            }
            while let Some(f) = codec.decode(&mut raw).unwrap() {
                if let Frame::Binary(b) = f {
                    text.push_str(&String::from_utf8_lossy(&b));
                }
            }
            if !sent && text.contains("root@webby:~# ") {
                let mut out = actix_web::web::BytesMut::new();
                codec.encode(Message::Text("ws-echo-test\n".into()), &mut out).unwrap();
                c.write_all(&out).unwrap();
                sent = true;
            }
        }
        text
    })
    .await;
    assert!(ws_text.contains("ws-echo-test"), "{ws_text}");
    // Not running: 404.
    let (vr, s2) = (vm_ref.clone(), e.agent.login("root", &e.password, "t").await.unwrap());
    e.agent
        .store_for_tests()
        .write(|tx| {
            agent::objects::set_field(
                tx,
                class_ids::VM,
                &vr,
                fields::VM::power_state,
                agent::schema::enums::VmPowerState::Halted.value(),
            )
        })
        .await
        .unwrap();
    let (status, _, _) = blocking(move || {
        exchange(
            addr,
            &format!("CONNECT /console?ref={vm_ref}&session_id={s2} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        )
    })
    .await;
    assert_eq!(status, 404);
}

mod rbac;

/// `PUT <path>?<query>` with `body` (and the pool secret header when given).
fn put_to(addr: SocketAddr, path_query: &str, secret: Option<&str>, body: &[u8]) -> (u16, String, Vec<u8>) {
    let secret = secret.map_or(String::new(), |s| format!("x-xapid-pool-secret: {s}\r\n"));
    let head = format!(
        "PUT {path_query} HTTP/1.1\r\nHost: x\r\n{secret}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    exchange(addr, &head, body)
}

#[actix_web::test]
async fn what_follows_a_moved_vm_is_taken_in_and_bad_input_refused() {
    let e = start().await;
    let addr = e.addr;
    let session = e.agent.login("root", &e.password, "t").await.unwrap();
    let s = session.clone();
    let host_uuid = blocking(move || {
        let host = xmlrpc(addr, "session.get_this_host", &[&s, &s]);
        xmlrpc(addr, "host.get_uuid", &[&s, &host])
    })
    .await;
    let run = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><message><ref>OpaqueRef:moved-1</ref><name>MOVED</name>\
         <priority>4</priority><cls>Host</cls><obj_uuid>{host_uuid}</obj_uuid>\
         <timestamp>20270115T08:00:00Z</timestamp><uuid>9a1f0c52-3c7e-4f0e-8d7a-0b1c2d3e4f50</uuid>\
         <body>came along</body></message>"
    );
    // No credentials, no pool secret: 401, nothing taken.
    let (h, b) = (host_uuid.clone(), run.clone());
    let (status, _, _) =
        blocking(move || put_to(addr, &format!("/messages?cls=Host&uuid={h}"), None, b.as_bytes())).await;
    assert_eq!(status, 401);
    // A session: taken in with its uuid; a class or object that is not here, or a bad run: refused.
    for (query, body, want) in [
        (format!("cls=Host&uuid={host_uuid}"), run.clone(), 200),
        (format!("cls=Nothing&uuid={host_uuid}"), run.clone(), 400),
        ("cls=VM&uuid=no-such-vm".to_owned(), run.clone(), 404),
        (
            format!("cls=Host&uuid={host_uuid}"),
            "<message><colour/></message>".to_owned(),
            400,
        ),
        (format!("uuid={host_uuid}"), run.clone(), 400),
    ] {
        let s = session.clone();
        let (status, _, out) = blocking(move || {
            put_to(
                addr,
                &format!("/messages?{query}&session_id={s}"),
                None,
                body.as_bytes(),
            )
        })
        .await;
        assert_eq!(status, want, "{}", String::from_utf8_lossy(&out));
    }
    let s = session.clone();
    // It keeps its ref and uuid.
    let found = blocking(move || {
        xmlrpc(
            addr,
            "message.get_by_uuid",
            &[&s, "9a1f0c52-3c7e-4f0e-8d7a-0b1c2d3e4f50"],
        )
    })
    .await;
    assert_eq!(found, "OpaqueRef:moved-1");
    // An RRD: no uuid 400, a uuid of nothing 404, not an RRD 400; the pool secret is a proof too.
    let secret = agent::pool::secret::ensure(&e._dir.path().join("state")).unwrap();
    for (query, body, want) in [
        ("/rrd".to_owned(), "<rrd/>", 400),
        ("/rrd?uuid=no-such".to_owned(), "<rrd/>", 404),
        (format!("/rrd?uuid={host_uuid}&archive=true"), "<rrd/>", 400),
    ] {
        let s = secret.clone();
        let q = query.clone();
        let (status, _, out) = blocking(move || put_to(addr, &q, Some(&s), body.as_bytes())).await;
        assert_eq!(status, want, "{query}: {}", String::from_utf8_lossy(&out));
    }
    let (status, _, _) = blocking(move || put_to(addr, "/rrd?uuid=x", Some("not-the-secret"), b"<rrd/>")).await;
    assert_eq!(status, 401);
}
