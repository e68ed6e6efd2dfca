//! Soak: many concurrent clients on loopback, each logging in once and then issuing cheap
//! calls (`VM.get_record`, `VM.set_name_label`, `VM.get_all`) in a loop, for a set time. The
//! daemon's RSS is sampled every 10 s; the run must see no errors, and the RSS at the end must
//! be within 20% of the RSS at the baseline (one minute in, or a fifth of a shorter run).
//!
//! Ignored by default; run it explicitly:
//! `cargo test --release -p xapid-tests --test soak -- --ignored --nocapture`
//! Environment: `XAPID_SOAK_SECS` (600), `XAPID_SOAK_CLIENTS` (1000), `XAPID_SOAK_VMS` (100),
//! `XAPID_SOAK_THINK_MS` (100: pause between a client's rounds), `XAPID_SOAK_MAX_ROUNDS`
//! (per client; unbounded by default), `XAPID_SOAK_RSS_SLACK` (0.20), `XAPID_BIN`.

// Test code: the helpers around the #[test] functions may unwrap and panic too (clippy's
// allow-*-in-tests covers only the #[test] functions themselves).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value as Json};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xapid_tests::aclient::AsyncRpc;
use xapid_tests::daemon::{Daemon, DaemonOpts};
use xapid_tests::datamodel::Datamodel;
use xapid_tests::fixtures;
use xapid_tests::rpc::Reply;

const PASSWORD: &str = "soak-Pw-1";

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Default)]
struct Stats {
    calls: AtomicU64,
    logins: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    max_latency_us: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Stats {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < 20 {
            first.push(e);
        }
    }
}

async fn call(rpc: &mut AsyncRpc, stats: &Stats, method: &str, params: &[Json]) -> Option<Json> {
    let t = Instant::now();
    let r = rpc.call(method, params, Duration::from_secs(60)).await;
    stats
        .max_latency_us
        .fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
    stats.calls.fetch_add(1, Ordering::Relaxed);
    match r {
        Ok(Reply::Success(v)) => Some(v),
        Ok(Reply::Failure(d)) => {
            stats.error(format!("{method}: {d:?}"));
            None
        }
        Err(e) => {
            stats.error(e);
            None
        }
    }
}

async fn client(
    i: usize,
    addr: std::net::SocketAddr,
    vms: Arc<Vec<String>>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    think: Duration,
    max_rounds: u64,
) {
    let mut rpc = AsyncRpc::new(addr);
    // Logins queue behind one argon2 thread: allow them time.
    let login = rpc
        .call(
            "session.login_with_password",
            &[
                json!("root"),
                json!(PASSWORD),
                json!("2.21"),
                json!(format!("soak-{i}")),
            ],
            Duration::from_secs(600),
        )
        .await;
    let s = match login {
        Ok(Reply::Success(Json::String(s))) => s,
        other => {
            stats.error(format!("client {i} login: {other:?}"));
            return;
        }
    };
    stats.logins.fetch_add(1, Ordering::Relaxed);
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) && round < max_rounds {
        let vm = &vms[(i + round as usize) % vms.len()];
        call(&mut rpc, &stats, "VM.get_record", &[json!(s), json!(vm)]).await;
        call(
            &mut rpc,
            &stats,
            "VM.set_name_label",
            &[json!(s), json!(vm), json!(format!("soak-{i}-{round}"))],
        )
        .await;
        call(&mut rpc, &stats, "VM.get_all", &[json!(s)]).await;
        round += 1;
        // Jitter keeps the clients from marching in step.
        let jitter = Duration::from_millis((i as u64 * 7 + round * 13) % (think.as_millis() as u64 / 2 + 1));
        tokio::time::sleep(think + jitter).await;
    }
    stats.reconnects.fetch_add(rpc.reconnects, Ordering::Relaxed);
}

#[test]
#[ignore = "soak: minutes long; run explicitly with --ignored"]
fn many_clients_for_minutes_without_errors_or_growth() {
    let secs: u64 = env_num("XAPID_SOAK_SECS", 600);
    let clients: usize = env_num("XAPID_SOAK_CLIENTS", 1000);
    let n_vms: usize = env_num("XAPID_SOAK_VMS", 100);
    let think = Duration::from_millis(env_num("XAPID_SOAK_THINK_MS", 100));
    let max_rounds: u64 = env_num("XAPID_SOAK_MAX_ROUNDS", u64::MAX);
    let slack: f64 = env_num("XAPID_SOAK_RSS_SLACK", 0.20);
    let baseline_at = Duration::from_secs(60.min(secs / 5).max(1));

    let dm = Datamodel::load().unwrap();
    let scratch = tempfile::Builder::new().prefix("xapid-soak").tempdir().unwrap();
    let daemon = Daemon::start(
        DaemonOpts {
            state_dir: scratch.path().join("state"),
            extra: vec![],
            password: PASSWORD.into(),
        },
        scratch.path(),
    )
    .unwrap();
    let (mut rpc, s) = daemon.client("soak-setup").unwrap();
    let (_, template) = fixtures::default_template(&mut rpc, &s).unwrap();
    let vms: Vec<String> = (0..n_vms)
        .map(|i| {
            let rec = fixtures::vm_record_from(&dm, &template, &format!("soak-vm-{i}"));
            rpc.ok("VM.create", &[json!(s), rec])
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let rss_setup = daemon.rss_kib().unwrap();
    println!(
        "soak: {clients} clients for {secs} s, {n_vms} VMs, think {think:?}; RSS after set-up {} MiB",
        rss_setup / 1024
    );

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let vms = Arc::new(vms);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            rt.spawn(client(
                i,
                daemon.addr,
                vms.clone(),
                stats.clone(),
                stop.clone(),
                think,
                max_rounds,
            ))
        })
        .collect();

    // Sample RSS every 10 s until the time is up.
    let mut samples: Vec<(u64, u64, u64)> = Vec::new();
    let deadline = started + Duration::from_secs(secs);
    let mut next = started;
    while Instant::now() < deadline {
        if Instant::now() >= next {
            let rss = daemon.rss_kib().unwrap_or(0);
            let t = started.elapsed().as_secs();
            let calls = stats.calls.load(Ordering::Relaxed);
            println!(
                "  t={t:>4}s RSS {:>6.1} MiB, {calls} calls, {} logins, {} errors",
                rss as f64 / 1024.0,
                stats.logins.load(Ordering::Relaxed),
                stats.errors.load(Ordering::Relaxed)
            );
            samples.push((t, rss, calls));
            next += Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The end figure is taken under load, before the clients stop.
    let rss_end = daemon.rss_kib().unwrap();
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for h in handles {
            let _ = h.await;
        }
    });
    let elapsed = started.elapsed();
    let rss_idle = daemon.rss_kib().unwrap();
    samples.push((elapsed.as_secs(), rss_end, stats.calls.load(Ordering::Relaxed)));
    let (baseline_t, baseline) = samples
        .iter()
        .find(|(t, _, _)| *t >= baseline_at.as_secs())
        .map(|(t, r, _)| (*t, *r))
        .unwrap_or((elapsed.as_secs(), rss_end));
    let max = samples.iter().map(|(_, r, _)| *r).max().unwrap_or(0);
    let calls = stats.calls.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "soak result: {calls} calls in {:.0} s ({:.0}/s) by {} logged-in clients; {errors} errors; {} reconnects; max latency {} ms",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
        stats.logins.load(Ordering::Relaxed),
        stats.reconnects.load(Ordering::Relaxed),
        stats.max_latency_us.load(Ordering::Relaxed) / 1000
    );
    println!(
        "RSS: after set-up {:.1} MiB, baseline (t={baseline_t}s) {:.1} MiB, end under load {:.1} MiB, max {:.1} MiB, after the clients stopped {:.1} MiB",
        mib(rss_setup),
        mib(baseline),
        mib(rss_end),
        mib(max),
        mib(rss_idle)
    );
    let first = stats.first_errors.lock().unwrap().clone();
    assert_eq!(errors, 0, "errors, first ones: {first:#?}");
    assert_eq!(stats.logins.load(Ordering::Relaxed), clients as u64);
    assert!(
        rss_end as f64 <= baseline as f64 * (1.0 + slack),
        "RSS grew from {baseline} KiB to {rss_end} KiB"
    );
}
