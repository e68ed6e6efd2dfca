//! The measured phases: VM lifecycle throughput, bulk reads at scale, event delivery to many
//! long-polls, and the cost of an API call over the bare HTTP stack.

use crate::client::{as_string, Protocol, Rpc};
use crate::daemon::Daemon;
use crate::stats::{median, r3, summary_ms};
use serde_json::{json, Value as Json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Barrier};

/// The template every VM is cloned from.
pub const TEMPLATE: &str = "Debian Bookworm 12";

/// The operations of one VM lifecycle, in order.
pub const LIFECYCLE_OPS: [&str; 7] = [
    "clone",
    "set_is_a_template",
    "start",
    "suspend",
    "resume",
    "hard_shutdown",
    "destroy",
];

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

async fn template_ref(rpc: &mut Rpc, s: &str) -> Result<String, String> {
    let v = rpc.call("VM.get_by_name_label", &[json!(s), json!(TEMPLATE)]).await?;
    v.as_array()
        .and_then(|a| a.first())
        .and_then(Json::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("no template named {TEMPLATE:?}"))
}

/// The memory of the peer's domains.
const PEER_VM_MEMORY: i64 = 128 << 20;

/// A template for the lifecycle, cloned from [`TEMPLATE`], with the peer's 128 MiB per VM
/// (less when `max_running` such VMs would not fit the simulated host's free memory).
/// Returns its ref and the memory per VM in bytes.
pub async fn bench_template(d: &Daemon, max_running: usize) -> Result<(String, i64), String> {
    let (mut rpc, s) = d.password_login(Protocol::Json, "loadgen-template").await?;
    let tpl = template_ref(&mut rpc, &s).await?;
    let metrics = rpc.call("host_metrics.get_all_records", &[json!(s)]).await?;
    let free = metrics
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|h| h.get("memory_free"))
        .and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|t| t.parse().ok())))
        .ok_or("no host_metrics.memory_free")?;
    let fit = free / 5 * 4 / (max_running.max(1) as i64);
    let mem = PEER_VM_MEMORY.min(fit / (1 << 20) * (1 << 20)).max(16 << 20);
    let vm = rpc
        .call("VM.clone", &[json!(s), json!(tpl), json!("loadgen-bench-template")])
        .await?;
    rpc.call(
        "VM.set_memory_limits",
        &[json!(s), vm.clone(), json!(mem), json!(mem), json!(mem), json!(mem)],
    )
    .await?;
    Ok((as_string(&vm)?, mem))
}

/// clone (+ set_is_a_template false) → start → suspend → resume → hard_shutdown → destroy;
/// the time of each call is added to `lat` (indexed as [`LIFECYCLE_OPS`]).
async fn one_lifecycle(rpc: &mut Rpc, s: &str, tpl: &str, name: &str, lat: &mut [Vec<i64>]) -> Result<(), String> {
    let s = json!(s);
    let mut t = Instant::now();
    let mut mark = |i: usize, t: &mut Instant| {
        let now = Instant::now();
        if let Some(v) = lat.get_mut(i) {
            v.push(ns(now - *t));
        }
        *t = now;
    };
    let vm = json!(as_string(
        &rpc.call("VM.clone", &[s.clone(), json!(tpl), json!(name)]).await?
    )?);
    mark(0, &mut t);
    rpc.call("VM.set_is_a_template", &[s.clone(), vm.clone(), json!(false)])
        .await?;
    mark(1, &mut t);
    rpc.call("VM.start", &[s.clone(), vm.clone(), json!(false), json!(false)])
        .await?;
    mark(2, &mut t);
    rpc.call("VM.suspend", &[s.clone(), vm.clone()]).await?;
    mark(3, &mut t);
    rpc.call("VM.resume", &[s.clone(), vm.clone(), json!(false), json!(false)])
        .await?;
    mark(4, &mut t);
    rpc.call("VM.hard_shutdown", &[s.clone(), vm.clone()]).await?;
    mark(5, &mut t);
    rpc.call("VM.destroy", &[s, vm]).await?;
    mark(6, &mut t);
    Ok(())
}

/// Lifecycle throughput: `vms` lifecycles split over `c` clients, each with its own
/// connection and session, after `warmup` unmeasured lifecycles.
pub async fn lifecycle(
    d: &Daemon,
    proto: Protocol,
    tpl: &str,
    vms: usize,
    c: usize,
    warmup: usize,
) -> Result<Json, String> {
    let c = c.max(1);
    let sessions = d.sessions(c, &format!("loadgen-lc{c}-{}", proto.name())).await?;
    let hwm_reset = d.reset_hwm();
    let barrier = Arc::new(Barrier::new(c + 1));
    let mut handles = Vec::with_capacity(c);
    for (k, s) in sessions.into_iter().enumerate() {
        let barrier = barrier.clone();
        let tpl = tpl.to_owned();
        let addr = d.addr;
        let warm: Vec<usize> = (0..warmup).filter(|i| i % c == k).collect();
        let mine: Vec<usize> = (0..vms).filter(|i| i % c == k).collect();
        handles.push(tokio::spawn(async move {
            let mut lat: Vec<Vec<i64>> = vec![Vec::with_capacity(mine.len()); LIFECYCLE_OPS.len()];
            let mut scratch: Vec<Vec<i64>> = vec![Vec::new(); LIFECYCLE_OPS.len()];
            let setup = async {
                let mut rpc = Rpc::tcp(addr, proto).await?;
                for i in &warm {
                    one_lifecycle(&mut rpc, &s, &tpl, &format!("warm-{c}-{i}"), &mut scratch).await?;
                }
                Ok::<Rpc, String>(rpc)
            }
            .await;
            barrier.wait().await;
            let mut rpc = setup?;
            for i in &mine {
                one_lifecycle(&mut rpc, &s, &tpl, &format!("lc-{c}-{i}"), &mut lat).await?;
            }
            Ok::<Vec<Vec<i64>>, String>(lat)
        }));
    }
    barrier.wait().await;
    let cpu0 = d.cpu()?;
    let own0 = own_cpu()?;
    let t0 = Instant::now();
    let mut per_op: Vec<Vec<i64>> = vec![Vec::new(); LIFECYCLE_OPS.len()];
    let mut first_err = None;
    for h in handles {
        match h.await {
            Ok(Ok(lat)) => {
                for (all, mine) in per_op.iter_mut().zip(lat) {
                    all.extend(mine);
                }
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(format!("worker: {e}"));
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = d.cpu()? - cpu0;
    let own = own_cpu()? - own0;
    if let Some(e) = first_err {
        return Err(format!("lifecycle C={c}: {e}"));
    }
    let (hwm, rss) = d.memory_kb()?;
    let all: Vec<i64> = per_op.iter().flatten().copied().collect();
    let n_ops = all.len();
    let mut per = serde_json::Map::new();
    for (name, v) in LIFECYCLE_OPS.iter().zip(&per_op) {
        per.insert((*name).to_owned(), summary_ms(v));
    }
    Ok(json!({
        "protocol": proto.name(),
        "concurrency": c,
        "vms": vms,
        "ops": n_ops,
        "ops_per_lifecycle": LIFECYCLE_OPS.len(),
        "wall_s": r3(wall),
        "ops_per_s": (n_ops as f64 / wall).round(),
        "vm_lifecycles_per_s": (vms as f64 / wall).round(),
        "all_ops_latency": summary_ms(&all),
        "per_op_latency": per,
        "daemon_cpu_s": r3(cpu),
        "daemon_cpu_s_per_1000_ops": r3(cpu * 1000.0 / n_ops.max(1) as f64),
        "daemon_cpu_ms_per_op": r3(cpu * 1000.0 / n_ops.max(1) as f64),
        "client_cpu_ms_per_op": r3(own * 1000.0 / n_ops.max(1) as f64),
        "daemon_VmHWM_kB": hwm,
        "daemon_VmRSS_kB": rss,
        "hwm_reset_before_run": hwm_reset,
    }))
}

/// Creates VMs `from..to` (named `rs-<i>`), each cloned from the template and provisioned
/// (a VDI and a VBD), turned into a VM, with one VIF; VM_metrics come with every VM.
async fn populate(d: &Daemon, from: usize, to: usize, c: usize) -> Result<f64, String> {
    let sessions = d.sessions(c, "loadgen-populate").await?;
    let mut probe = Rpc::tcp(d.addr, Protocol::Json).await?;
    let s0 = sessions.first().cloned().unwrap_or_default();
    let tpl = template_ref(&mut probe, &s0).await?;
    let nets = probe.call("network.get_all", &[json!(s0)]).await?;
    let net = nets
        .as_array()
        .and_then(|a| a.first())
        .and_then(Json::as_str)
        .ok_or("no network to attach VIFs to")?
        .to_owned();
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for (k, s) in sessions.into_iter().enumerate() {
        let (tpl, net, addr) = (tpl.clone(), net.clone(), d.addr);
        handles.push(tokio::spawn(async move {
            let mut rpc = Rpc::tcp(addr, Protocol::Json).await?;
            let s = json!(s);
            for i in (from..to).filter(|i| i % c == k) {
                let vm = rpc
                    .call("VM.clone", &[s.clone(), json!(tpl), json!(format!("rs-{i}"))])
                    .await?;
                rpc.call("VM.provision", &[s.clone(), vm.clone()]).await?;
                rpc.call("VM.set_is_a_template", &[s.clone(), vm.clone(), json!(false)])
                    .await?;
                let vif = json!({
                    "VM": vm, "network": net, "device": "0", "MAC": "", "MTU": 1500,
                    "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
                });
                rpc.call("VIF.create", &[s.clone(), vif]).await?;
            }
            Ok::<(), String>(())
        }));
    }
    for h in handles {
        h.await.map_err(|e| format!("populate worker: {e}"))??;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// One call's wire time (request written → whole response read), client decode time, size.
async fn timed_read(rpc: &mut Rpc, method: &str, s: &str) -> Result<(i64, i64, usize, usize), String> {
    let t0 = Instant::now();
    let body = rpc.call_raw(method, &[json!(s)]).await?;
    let t1 = Instant::now();
    let v = rpc.proto.decode(&body).map_err(|e| format!("{method}: {e}"))?;
    let t2 = Instant::now();
    let n = v.as_object().map_or(0, serde_json::Map::len);
    Ok((ns(t1 - t0), ns(t2 - t1), body.len(), n))
}

/// Bulk reads at each size in `sizes` (VMs created by the benchmark, each with a VBD, a VIF
/// and metrics): `VM.get_all_records` `reps` times per protocol, and the four-call read of
/// VMs with their VBDs, VIFs and metrics.
pub async fn read_scale(d: &Daemon, sizes: &[usize], reps: usize, protos: &[Protocol]) -> Result<Json, String> {
    let mut out = Vec::new();
    let mut have = 0;
    for &n in sizes {
        let created = n.saturating_sub(have);
        // The peak is counted from here, as the peer's is counted from the start of each of
        // its runs (`clear_refs` 5): what the daemon needs to create and serve these VMs,
        // not its start-up (the peak since start is recorded too).
        let (hwm_since_start, _) = d.memory_kb()?;
        let hwm_reset = d.reset_hwm();
        let setup_s = populate(d, have, n, 16).await?;
        have = n;
        let (hwm_after_setup, rss_after_setup) = d.memory_kb()?;
        let mut by_proto = serde_json::Map::new();
        for &proto in protos {
            let (mut rpc, s) = d.password_login(proto, "loadgen-read").await?;
            // One unmeasured call warms the connection and the daemon's caches.
            timed_read(&mut rpc, "VM.get_all_records", &s).await?;
            let (mut wire, mut parse) = (Vec::new(), Vec::new());
            let (mut bytes, mut records) = (0, 0);
            let cpu0 = d.cpu()?;
            for _ in 0..reps {
                let (w, p, b, r) = timed_read(&mut rpc, "VM.get_all_records", &s).await?;
                wire.push(w);
                parse.push(p);
                bytes = b;
                records = r;
            }
            let cpu = d.cpu()? - cpu0;
            // VMs with their devices and metrics: what the peer's per-domain XMLDesc carries.
            let full_reps = (reps / 4).max(5);
            let mut full = Vec::new();
            let mut full_bytes = 0;
            for _ in 0..full_reps {
                let t0 = Instant::now();
                let mut b = 0;
                for m in [
                    "VM.get_all_records",
                    "VBD.get_all_records",
                    "VIF.get_all_records",
                    "VM_metrics.get_all_records",
                ] {
                    b += rpc.call_raw(m, &[json!(s)]).await?.len();
                }
                full.push(ns(t0.elapsed()));
                full_bytes = b;
            }
            let (p_hwm, p_rss) = d.memory_kb()?;
            by_proto.insert(
                proto.name().to_owned(),
                json!({
                    "daemon_VmRSS_kB_after": p_rss,
                    "daemon_VmHWM_kB_after": p_hwm,
                    "get_all_records_wire": summary_ms(&wire),
                    "client_decode": summary_ms(&parse),
                    "response_bytes": bytes,
                    "records": records,
                    "daemon_cpu_ms_per_call": r3(cpu * 1000.0 / reps.max(1) as f64),
                    "vm_vbd_vif_metrics_4_calls": summary_ms(&full),
                    "vm_vbd_vif_metrics_bytes": full_bytes,
                }),
            );
        }
        let (hwm, rss) = d.memory_kb()?;
        out.push(json!({
            "vms": n,
            "setup_s": r3(setup_s),
            "setup_vms_per_s": (created as f64 / setup_s.max(1e-9)).round(),
            "daemon_VmRSS_kB_after_setup": rss_after_setup,
            "daemon_VmHWM_kB_after_setup": hwm_after_setup,
            "daemon_VmHWM_kB_since_start_before_setup": hwm_since_start,
            "hwm_reset_before_setup": hwm_reset,
            "daemon_VmRSS_kB": rss,
            "daemon_VmHWM_kB": hwm,
            "by_protocol": by_proto,
        }));
    }
    Ok(json!({ "reps": reps, "sizes": out }))
}

/// What a poller saw: (poller, sample, delivery time since the phase's base instant).
type Delivery = (usize, usize, Duration);

/// The text after `key` up to `end`, found by a plain substring search.
fn scan<'a>(body: &'a str, key: &str, end: char) -> Option<&'a str> {
    let at = body.find(key)? + key.len();
    let rest = body.get(at..)?;
    rest.get(..rest.find(end)?)
}

/// What a poller needs from an `event.from` result: the samples (`ev-<n>` name labels) it
/// carries and the next token. The event phase renames only its one target VM, so a substring
/// scan finds them without parsing the whole batch: keeping the client's CPU (which shares
/// the cores with the daemon) out of the delivery times. Falls back to a full parse.
fn delivered_seqs(proto: Protocol, body: &[u8], target: &str) -> Result<(Vec<usize>, String), String> {
    if let Ok(text) = std::str::from_utf8(body) {
        let (label_key, token_key, end) = match proto {
            Protocol::Json => ("\"name_label\":\"ev-", "\"token\":\"", '"'),
            Protocol::Xml => ("<name>name_label</name><value>ev-", "<name>token</name><value>", '<'),
        };
        let ok = !text.contains("\"error\"") && !text.contains("<name>Status</name><value>Failure");
        if let (true, Some(token)) = (ok, scan(text, token_key, end)) {
            let mut seqs = Vec::new();
            let mut rest = text;
            while let Some(at) = rest.find(label_key) {
                rest = rest.get(at + label_key.len()..).unwrap_or("");
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(seq) = digits.parse() {
                    seqs.push(seq);
                }
            }
            return Ok((seqs, token.to_owned()));
        }
    }
    delivered_seqs_parsed(proto, body, target)
}

fn delivered_seqs_parsed(proto: Protocol, body: &[u8], target: &str) -> Result<(Vec<usize>, String), String> {
    let v = proto.decode(body)?;
    let token = v.get("token").and_then(Json::as_str).unwrap_or("").to_owned();
    let mut seqs = Vec::new();
    for ev in v.get("events").and_then(Json::as_array).map_or(&[][..], Vec::as_slice) {
        if ev.get("ref").and_then(Json::as_str) != Some(target) {
            continue;
        }
        let label = ev
            .get("snapshot")
            .and_then(|s| s.get("name_label"))
            .and_then(Json::as_str)
            .unwrap_or("");
        if let Some(seq) = label.strip_prefix("ev-").and_then(|x| x.parse().ok()) {
            seqs.push(seq);
        }
    }
    Ok((seqs, token))
}

/// Event delivery: `pollers` concurrent `event.from(s, ["vm"], token, 30.0)` long-polls,
/// each on its own connection with its own session; a writer renames one VM `samples` times
/// (`VM.set_name_label`); latency of each poller's delivery from the write's acknowledgement
/// (and from the write's start, the peer's headline measure).
pub async fn events(d: &Daemon, proto: Protocol, pollers: usize, samples: usize) -> Result<Json, String> {
    let pollers = pollers.max(1);
    let sessions = d.sessions(pollers, &format!("loadgen-ev-{}", proto.name())).await?;
    let (mut writer, ws) = d.password_login(proto, "loadgen-ev-writer").await?;
    let tpl = template_ref(&mut writer, &ws).await?;
    let vm = as_string(
        &writer
            .call("VM.clone", &[json!(ws), json!(tpl), json!("ev-target")])
            .await?,
    )?;
    writer
        .call("VM.set_is_a_template", &[json!(ws), json!(vm), json!(false)])
        .await?;
    let base = Instant::now();
    let armed = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Delivery, String>>();
    let mut handles = Vec::new();
    for (k, s) in sessions.into_iter().enumerate() {
        let (tx, armed, vm, addr) = (tx.clone(), armed.clone(), vm.clone(), d.addr);
        handles.push(tokio::spawn(async move {
            let run = async {
                let mut rpc = Rpc::tcp(addr, proto).await?;
                let first = rpc
                    .call_raw("event.from", &[json!(s), json!(["vm"]), json!(""), json!(0.0)])
                    .await?;
                let (_, mut token) = delivered_seqs(proto, &first, &vm)?;
                loop {
                    armed.fetch_add(1, Ordering::SeqCst);
                    let body = rpc
                        .call_raw("event.from", &[json!(s), json!(["vm"]), json!(token), json!(30.0)])
                        .await;
                    let at = base.elapsed();
                    armed.fetch_sub(1, Ordering::SeqCst);
                    let (seqs, t) = delivered_seqs(proto, &body?, &vm)?;
                    token = t;
                    for seq in seqs {
                        let _ = tx.send(Ok((k, seq, at)));
                    }
                }
            };
            let r: Result<(), String> = run.await;
            if let Err(e) = r {
                let _ = tx.send(Err(format!("poller {k}: {e}")));
            }
        }));
    }
    drop(tx);
    let settle = Duration::from_millis(20).max(Duration::from_micros(50) * pollers as u32);
    let mut from_ack = Vec::with_capacity(pollers * samples);
    let mut from_call = Vec::with_capacity(pollers * samples);
    let mut fanout = Vec::with_capacity(samples);
    let mut missing = 0;
    let cpu0 = d.cpu()?;
    let own0 = own_cpu()?;
    let result = async {
        for seq in 0..samples {
            let wait_start = Instant::now();
            while armed.load(Ordering::SeqCst) < pollers {
                if wait_start.elapsed() > Duration::from_secs(30) {
                    return Err(format!(
                        "pollers did not re-arm ({}/{pollers})",
                        armed.load(Ordering::SeqCst)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(settle).await;
            let t_call = base.elapsed();
            writer
                .call("VM.set_name_label", &[json!(ws), json!(vm), json!(format!("ev-{seq}"))])
                .await?;
            let t_ack = base.elapsed();
            let mut got = vec![false; pollers];
            let mut n = 0;
            let mut last = t_call;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while n < pollers {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Ok((k, s, at)))) if s == seq => {
                        if let Some(g) = got.get_mut(k).filter(|g| !**g) {
                            *g = true;
                            n += 1;
                            from_ack.push(ns(at.saturating_sub(t_ack)) - ns(t_ack.saturating_sub(at)));
                            from_call.push(ns(at.saturating_sub(t_call)));
                            last = last.max(at);
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => return Err(e),
                    Ok(None) => return Err("every poller stopped".to_owned()),
                    Err(_) => {
                        missing += pollers - n;
                        break;
                    }
                }
            }
            fanout.push(ns(last.saturating_sub(t_call)));
        }
        Ok(())
    }
    .await;
    // Daemon CPU over the measured writes: each write, its deliveries and the pollers' re-arming
    // calls.
    let cpu = d.cpu()? - cpu0;
    let own = own_cpu()? - own0;
    for h in &handles {
        h.abort();
    }
    result?;
    Ok(json!({
        "protocol": proto.name(),
        "pollers": pollers,
        "daemon_cpu_us_per_delivery": r3(cpu * 1e6 / from_ack.len().max(1) as f64),
        "client_cpu_us_per_delivery": r3(own * 1e6 / from_ack.len().max(1) as f64),
        "sessions": "one per poller (own connection, own session)",
        "samples": samples,
        "deliveries": from_ack.len(),
        "missing": missing,
        "from_ack": summary_ms(&from_ack),
        "from_call_start": summary_ms(&from_call),
        "last_poller_delivered_from_call_start": summary_ms(&fanout),
        "note": "from_ack is signed: negative when the poller got the event before the writer got its acknowledgement",
    }))
}

/// CPU seconds this load generator has used (all its threads): what the client side of a
/// measurement costs on the cores it shares with the daemon.
fn own_cpu() -> Result<f64, String> {
    crate::daemon::cpu_seconds(std::process::id())
}

/// Calls/s of `c` clients for `secs`: a cheap authenticated call, or the same body posted
/// to `/bench/noop`.
async fn hammer(
    d: &Daemon,
    proto: Protocol,
    sessions: &[String],
    vm: &str,
    noop: bool,
    secs: f64,
) -> Result<(f64, f64, f64, Json), String> {
    let barrier = Arc::new(Barrier::new(sessions.len() + 1));
    let dur = Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for s in sessions {
        let (barrier, addr) = (barrier.clone(), d.addr);
        let body = proto.encode("VM.get_name_label", &[json!(s), json!(vm)], 1);
        handles.push(tokio::spawn(async move {
            let conn = Rpc::tcp(addr, proto).await;
            barrier.wait().await;
            let mut rpc = conn?;
            let mut lat = Vec::new();
            let start = Instant::now();
            while start.elapsed() < dur {
                let t = Instant::now();
                if noop {
                    rpc.conn.post("/bench/noop", proto.content_type(), body.clone()).await?;
                } else {
                    let r = rpc.conn.post(proto.path(), proto.content_type(), body.clone()).await?;
                    proto.decode(&r)?;
                }
                lat.push(ns(t.elapsed()));
            }
            Ok::<Vec<i64>, String>(lat)
        }));
    }
    let cpu0 = d.cpu()?;
    let own0 = own_cpu()?;
    barrier.wait().await;
    let t0 = Instant::now();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.map_err(|e| format!("overhead worker: {e}"))??);
    }
    let wall = t0.elapsed().as_secs_f64();
    let n = all.len().max(1) as f64;
    let cpu_us = (d.cpu()? - cpu0) * 1e6 / n;
    let own_us = (own_cpu()? - own0) * 1e6 / n;
    Ok((all.len() as f64 / wall, cpu_us, own_us, summary_ms(&all)))
}

/// RPC overhead: `VM.get_name_label` calls/s against `POST /bench/noop` with the same body
/// on the same daemon, in `rounds` paired rounds (the order alternating, to cancel drift); the
/// ratio is the median of the rounds' ratios. The daemon's CPU per request (µs) is recorded
/// too: on a shared machine it is steadier than the rates.
pub async fn overhead(d: &Daemon, proto: Protocol, c: usize, secs: f64, rounds: usize) -> Result<Json, String> {
    let sessions = d.sessions(c.max(1), &format!("loadgen-oh{c}-{}", proto.name())).await?;
    let mut probe = Rpc::tcp(d.addr, proto).await?;
    let vm = template_ref(&mut probe, sessions.first().map_or("", String::as_str)).await?;
    let (mut call_rates, mut noop_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut call_cpu, mut noop_cpu) = (Vec::new(), Vec::new());
    let (mut call_own, mut noop_own) = (Vec::new(), Vec::new());
    let (mut call_lat, mut noop_lat) = (Json::Null, Json::Null);
    for round in 0..rounds.max(1) {
        let mut one = |noop: bool, (rate, cpu, own, lat): (f64, f64, f64, Json)| {
            if noop {
                noop_rates.push(rate);
                noop_cpu.push(cpu);
                noop_own.push(own);
                noop_lat = lat;
            } else {
                call_rates.push(rate);
                call_cpu.push(cpu);
                call_own.push(own);
                call_lat = lat;
            }
        };
        for noop in if round % 2 == 0 { [true, false] } else { [false, true] } {
            one(noop, hammer(d, proto, &sessions, &vm, noop, secs).await?);
        }
        if let (Some(c), Some(n)) = (call_rates.last(), noop_rates.last()) {
            ratios.push(if *n > 0.0 { c / n } else { 0.0 });
        }
    }
    let med = |v: &[f64]| median(v).unwrap_or(0.0);
    let (cc, nc) = (med(&call_cpu), med(&noop_cpu));
    Ok(json!({
        "protocol": proto.name(),
        "concurrency": c,
        "call": "VM.get_name_label",
        "call_per_s": med(&call_rates).round(),
        "noop_per_s": med(&noop_rates).round(),
        "ratio": r3(med(&ratios)),
        "ratios": ratios.iter().map(|v| r3(*v)).collect::<Vec<_>>(),
        "call_rates": call_rates.iter().map(|v| v.round()).collect::<Vec<_>>(),
        "noop_rates": noop_rates.iter().map(|v| v.round()).collect::<Vec<_>>(),
        "daemon_cpu_us_per_call": r3(cc),
        "daemon_cpu_us_per_noop": r3(nc),
        "cpu_ratio_noop_over_call": r3(if cc > 0.0 { nc / cc } else { 0.0 }),
        "client_cpu_us_per_call": r3(med(&call_own)),
        "client_cpu_us_per_noop": r3(med(&noop_own)),
        "call_latency_last_round": call_lat,
        "noop_latency_last_round": noop_lat,
    }))
}
