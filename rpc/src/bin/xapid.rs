//! `xapid`: the XenAPI toolstack daemon.

use agent::hypervisor::{select_backend, BackendChoice, Latency, SimConfig};
use agent::{Agent, AgentConfig};
use clap::{Parser, ValueEnum};
use rpc::server::{serve, ServerConfig, DEFAULT_MAX_BODY};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc returns freed memory to the system instead of keeping it in per-thread arenas,
/// which keeps the daemon's RSS close to what its objects need.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Simulator only: latency added to every backend operation, in milliseconds (to make
    /// timings realistic in tests and demos).
    #[arg(long, default_value_t = 0)]
    sim_latency_ms: u64,
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
    let choice = match args.backend {
        Backend::Auto => BackendChoice::Auto,
        Backend::Xen => BackendChoice::Xen,
        Backend::Simulator => BackendChoice::Simulator,
    };
    let (hypervisor, why) = match select_backend(
        choice,
        SimConfig::default().with_latency(Latency::uniform(std::time::Duration::from_millis(args.sim_latency_ms))),
    ) {
        Ok(chosen) => chosen,
        Err(e) => {
            tracing::error!("--backend {choice}: {e}");
            return ExitCode::from(2);
        }
    };
    if hypervisor.backend_name() == "simulator" {
        tracing::warn!("running on the SIMULATOR backend: a simulated host, no real guests ({why})");
    } else {
        tracing::info!(backend = hypervisor.backend_name(), "{why}");
    }
    let socket = args.socket.clone().unwrap_or_else(|| args.state_dir.join("xapid.sock"));
    let cfg = AgentConfig {
        state_dir: args.state_dir.clone(),
        root_password_file: args.root_password_file.clone(),
        hypervisor,
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
        serve(agent, server_cfg).await.map_err(|e| format!("serving: {e}"))
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
