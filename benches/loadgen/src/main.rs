//! `xapid-loadgen`: drives a fresh xapid (simulator backend, zero latency) through the API
//! benchmarks of `BENCHMARKS.md`, and compares the results with the libvirt peer's.
//!
//! `run` starts the daemon itself (a fresh one per phase), measures, and writes one JSON
//! object; `report` reads one or more (peer, xapid) result pairs from the same runs and prints
//! the figures, the same-run ratios and the goals.

mod client;
mod daemon;
mod phases;
mod report;
mod stats;
mod xmlrpc;

use clap::{Args, Parser, Subcommand};
use client::Protocol;
use daemon::Daemon;
use serde_json::{json, Value as Json};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "xapid-loadgen", about = "Load generator and peer comparison for xapid")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start fresh daemons and run the phases; print (and write) one JSON object.
    Run(Box<RunArgs>),
    /// Compare peer and xapid results (pairs from the same runs, in order).
    Report(ReportArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The xapid binary.
    #[arg(long, default_value = "target/release/xapid")]
    xapid: PathBuf,
    /// Phases to run: lifecycle, read, events, overhead.
    #[arg(long, value_delimiter = ',', default_value = "lifecycle,read,events,overhead")]
    phases: Vec<String>,
    /// Wire protocols: json, xml (each phase runs with each).
    #[arg(long, value_delimiter = ',', default_value = "json,xml")]
    protocols: Vec<String>,
    /// VM lifecycles per concurrency level.
    #[arg(long, default_value_t = 1000)]
    vms: usize,
    /// Concurrent clients (each with its own connection and session) for the lifecycle.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    concurrency: Vec<usize>,
    /// Unmeasured lifecycles before each level (the peer does 20).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// VM counts for the bulk reads (cumulative: VMs are added up to each).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    read_sizes: Vec<usize>,
    /// Measured `VM.get_all_records` calls per size and protocol.
    #[arg(long, default_value_t = 20)]
    read_reps: usize,
    /// Concurrent `event.from` long-polls, per run of the event phase.
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    pollers: Vec<usize>,
    /// Writes (events) measured per event run.
    #[arg(long, default_value_t = 50)]
    event_samples: usize,
    /// Clients for the RPC-overhead comparison.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    overhead_concurrency: Vec<usize>,
    /// Seconds per overhead measurement.
    #[arg(long, default_value_t = 1.0)]
    overhead_secs: f64,
    /// Paired (noop, call) rounds per overhead measurement (median of the rounds' ratios).
    #[arg(long, default_value_t = 6)]
    overhead_rounds: usize,
    /// `--workers` for the daemon (default: the daemon's own, one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Run every daemon under this command (whitespace-separated), e.g.
    /// "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p" for profiles.
    #[arg(long, default_value = "")]
    daemon_wrapper: String,
    /// Also write the JSON result here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ReportArgs {
    /// Peer results (peer_libvirt.py --json), one per run.
    #[arg(long, required = true)]
    peer: Vec<PathBuf>,
    /// xapid results (`run --json`), one per run, in the same order.
    #[arg(long, required = true)]
    xapid: Vec<PathBuf>,
    /// Also write the summary (figures, ratios, goals) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn read_file(p: &PathBuf) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn machine() -> Json {
    let cpu = read_file(&PathBuf::from("/proc/cpuinfo"))
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = read_file(&PathBuf::from("/proc/sys/kernel/osrelease"))
        .trim()
        .to_owned();
    let load = read_file(&PathBuf::from("/proc/loadavg")).trim().to_owned();
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    json!({ "nproc": nproc, "cpu_model": cpu, "kernel": kernel, "loadavg_at_start": load })
}

fn log(msg: &str) {
    eprintln!("# {msg}");
}

async fn run(a: RunArgs) -> Result<Json, String> {
    let protos: Vec<Protocol> = a
        .protocols
        .iter()
        .map(|p| Protocol::parse(p))
        .collect::<Result<_, _>>()?;
    let wants = |p: &str| a.phases.iter().any(|x| x == p);
    let wrapper: Vec<String> = a.daemon_wrapper.split_whitespace().map(str::to_owned).collect();
    let t_all = std::time::Instant::now();
    let mut out = serde_json::Map::new();
    let mut meta = machine();
    meta["xapid"] = json!(a.xapid.display().to_string());
    meta["daemon_wrapper"] = json!(a.daemon_wrapper);
    meta["daemon_flags"] = json!("--backend simulator --sim-latency-ms 0 --bench-noop (fresh state dir per phase)");
    if wants("lifecycle") {
        let mut runs = Vec::new();
        for &p in &protos {
            let d = Daemon::start(&a.xapid, a.workers, &wrapper)?;
            let max_c = a.concurrency.iter().copied().max().unwrap_or(1);
            let (tpl, mem) = phases::bench_template(&d, max_c).await?;
            for &c in &a.concurrency {
                let mut r = phases::lifecycle(&d, p, &tpl, a.vms, c, a.warmup).await?;
                r["vm_memory_bytes"] = json!(mem);
                log(&format!(
                    "lifecycle {} C={c}: {} ops/s, {} lifecycles/s, p50 {} ms, p99 {} ms, {} ms CPU/op",
                    p.name(),
                    r["ops_per_s"],
                    r["vm_lifecycles_per_s"],
                    r["all_ops_latency"]["p50_ms"],
                    r["all_ops_latency"]["p99_ms"],
                    r["daemon_cpu_ms_per_op"]
                ));
                runs.push(r);
            }
            d.stop();
        }
        out.insert("lifecycle".into(), Json::Array(runs));
    }
    if wants("read") {
        let d = Daemon::start(&a.xapid, a.workers, &wrapper)?;
        let r = phases::read_scale(&d, &a.read_sizes, a.read_reps, &protos).await?;
        for s in r["sizes"].as_array().map_or(&[][..], Vec::as_slice) {
            for p in &protos {
                let b = &s["by_protocol"][p.name()];
                log(&format!(
                    "read {} VMs {}: p50 {} ms p99 {} ms, {} bytes, RSS {} kB",
                    s["vms"],
                    p.name(),
                    b["get_all_records_wire"]["p50_ms"],
                    b["get_all_records_wire"]["p99_ms"],
                    b["response_bytes"],
                    s["daemon_VmRSS_kB"]
                ));
            }
        }
        d.stop();
        out.insert("read_scale".into(), r);
    }
    if wants("events") {
        let mut runs = Vec::new();
        for &p in &protos {
            for &n in &a.pollers {
                let d = Daemon::start(&a.xapid, a.workers, &wrapper)?;
                let r = phases::events(&d, p, n, a.event_samples).await?;
                log(&format!(
                    "events {} pollers={n}: from ack p50 {} ms p99 {} ms; from call start p50 {} ms p99 {} ms; last poller p99 {} ms",
                    p.name(),
                    r["from_ack"]["p50_ms"],
                    r["from_ack"]["p99_ms"],
                    r["from_call_start"]["p50_ms"],
                    r["from_call_start"]["p99_ms"],
                    r["last_poller_delivered_from_call_start"]["p99_ms"]
                ));
                runs.push(r);
                d.stop();
            }
        }
        out.insert("events".into(), Json::Array(runs));
    }
    if wants("overhead") {
        let d = Daemon::start(&a.xapid, a.workers, &wrapper)?;
        let mut runs = Vec::new();
        for &p in &protos {
            for &c in &a.overhead_concurrency {
                let r = phases::overhead(&d, p, c, a.overhead_secs, a.overhead_rounds).await?;
                log(&format!(
                    "overhead {} C={c}: {} calls/s vs noop {} /s = {} (rounds {}); daemon CPU {} µs/call vs {} µs/noop",
                    p.name(),
                    r["call_per_s"],
                    r["noop_per_s"],
                    r["ratio"],
                    r["ratios"],
                    r["daemon_cpu_us_per_call"],
                    r["daemon_cpu_us_per_noop"]
                ));
                runs.push(r);
            }
        }
        d.stop();
        out.insert("overhead".into(), Json::Array(runs));
    }
    meta["loadavg_at_end"] = json!(read_file(&PathBuf::from("/proc/loadavg")).trim());
    meta["duration_s"] = json!(stats::r3(t_all.elapsed().as_secs_f64()));
    out.insert("meta".into(), meta);
    Ok(Json::Object(out))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => {
            let a = *a;
            let json_path = a.json.clone();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))
                .and_then(|rt| rt.block_on(run(a)))
                .and_then(|v| {
                    let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
                    if let Some(p) = json_path {
                        std::fs::write(&p, format!("{text}\n")).map_err(|e| format!("{}: {e}", p.display()))?;
                    }
                    println!("{text}");
                    Ok(())
                })
        }
        Cmd::Report(a) => report::report(&a.peer, &a.xapid, a.json.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xapid-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
