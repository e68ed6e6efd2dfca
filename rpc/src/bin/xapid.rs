//! `xapid`: the XenAPI toolstack daemon.

use agent::{Agent, AgentConfig, CpuFacts, HostFacts};
use clap::{Parser, ValueEnum};
use rpc::server::{serve, ServerConfig, DEFAULT_MAX_BODY};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Backend {
    /// Xen when the hypervisor answers, else the simulator.
    Auto,
    /// Real Xen through libxenctrl; fails where there is none.
    Xen,
    /// A simulated host.
    Simulator,
}

/// The XenServer Management API (XenAPI) served by a dom0 toolstack daemon.
#[derive(Parser, Debug)]
#[command(name = "xapid", version)]
struct Args {
    /// TCP address to serve HTTP on (repeatable). Plain HTTP stays on loopback unless you
    /// name another address.
    #[arg(long = "listen", default_value = "127.0.0.1:8080")]
    listen: Vec<SocketAddr>,
    /// Unix socket to serve the same API on [default: <state-dir>/xapid.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Where the store, the root password hash and the default SR live.
    #[arg(long, default_value = "xapid-state")]
    state_dir: PathBuf,
    /// Which hypervisor backend to drive.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// File whose first line sets the root password on first start. Without it a password
    /// is generated into <state-dir>/root-password (mode 0600).
    #[arg(long)]
    root_password_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY)]
    max_body: usize,
    /// HTTP worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

fn read_proc_facts() -> HostFacts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut cpus = Vec::new();
    let mut cur = CpuFacts::default();
    let mut seen = false;
    for line in cpuinfo.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if seen {
                cpus.push(std::mem::take(&mut cur));
                seen = false;
            }
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        seen = true;
        match k {
            "vendor_id" => cur.vendor = v.to_owned(),
            "model name" => cur.modelname = v.to_owned(),
            "cpu MHz" => cur.speed_mhz = v.parse::<f64>().map(|f| f as i64).unwrap_or(0),
            "cpu family" => cur.family = v.parse().unwrap_or(0),
            "model" => cur.model = v.parse().unwrap_or(0),
            "stepping" => cur.stepping = v.parse().unwrap_or(0),
            "flags" => cur.flags = v.to_owned(),
            _ => {}
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |key: &str| -> i64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let total = kb("MemTotal:");
    let dom0 = (total / 16).clamp(512 << 20, 4 << 30).min(total);
    HostFacts {
        hostname,
        cpus,
        memory_total: total,
        memory_free: (total - dom0).max(0),
        dom0_memory: dom0,
        hypervisor_version: "4.17.0-simulated".into(),
        backend: "simulator".into(),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let facts = match args.backend {
        Backend::Xen => {
            tracing::error!("--backend xen: the Xen backend is not available in this build");
            return ExitCode::from(2);
        }
        Backend::Auto | Backend::Simulator => {
            if args.backend == Backend::Auto {
                tracing::warn!("no usable Xen hypervisor backend: running on the simulator");
            }
            tracing::info!("backend: simulator (a simulated host; no real guests run)");
            read_proc_facts()
        }
    };
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| args.state_dir.join("xapid.sock"));
    let cfg = AgentConfig {
        state_dir: args.state_dir.clone(),
        root_password_file: args.root_password_file.clone(),
        facts,
    };
    let server_cfg = ServerConfig {
        listen: args.listen.clone(),
        socket: Some(socket),
        max_body: args.max_body,
        workers: args.workers,
    };
    let result = actix_web::rt::System::new().block_on(async move {
        let agent = Agent::start(cfg)
            .await
            .map_err(|e| format!("{e}: {}", source_chain(&e)))?;
        tracing::info!(state_dir = %args.state_dir.display(), "state loaded");
        let sweeper = agent.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
            loop {
                tick.tick().await;
                let n = sweeper.sessions.expire_idle(&sweeper.store).await;
                if n > 0 {
                    tracing::info!(n, "expired idle sessions");
                }
            }
        });
        serve(agent, server_cfg)
            .await
            .map_err(|e| format!("serving: {e}"))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
