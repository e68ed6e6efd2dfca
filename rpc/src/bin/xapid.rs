//! `xapid`: the XenAPI toolstack daemon.

use agent::host::agent_process::AfterStop;
use agent::hypervisor::{select_backend, BackendChoice, Latency, SimConfig};
use agent::{Agent, AgentConfig};
use clap::{Parser, ValueEnum};
use rpc::server::{serve, ServerConfig, DEFAULT_MAX_BODY};
use rpc::tls::{ensure_self_signed, TlsError, TlsFiles};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc returns freed memory to the system instead of keeping it in per-thread arenas,
/// which keeps the daemon's RSS close to what its objects need. It is built without
/// transparent huge pages (`no_thp`): a 2 MiB page made resident for a few small objects
/// cost the daemon 3-4 MiB at start and with 1,000 VMs (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// A TOML config file (keys: listen, socket, state_dir, backend, root_password_file,
    /// max_body, workers, tls_listen, tls_cert, tls_key, max_connections, network_backend,
    /// plugin_dir, nbd_listen, confine_workers, confine_action); flags given on the command line
    /// win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// TCP address to serve HTTP on (repeatable) [default: 127.0.0.1:8080]. Plain HTTP stays
    /// on loopback unless you name another address.
    #[arg(long = "listen")]
    listen: Vec<SocketAddr>,
    /// TCP address to serve HTTPS on (repeatable); any address may be named.
    #[arg(long = "tls-listen")]
    tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for HTTPS [default: a self-signed one generated on first start
    /// into <state-dir>/tls/].
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (with --tls-cert).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Most connections each HTTP worker keeps open [default: 4096].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Unix socket to serve the same API on [default: <state-dir>/xapid.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Where the store, the root password hash and the default SR live [default: xapid-state].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Which hypervisor backend to drive [default: auto].
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// File whose first line sets the root password on first start. Without it a password
    /// is generated into <state-dir>/root-password (mode 0600).
    #[arg(long)]
    root_password_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes [default: 16777216].
    #[arg(long)]
    max_body: Option<usize>,
    /// HTTP worker threads (0: one per core) [default: 0].
    #[arg(long)]
    workers: Option<usize>,
    /// Which network backend drives the host's bridges, VLANs, bonds and tunnels: auto (Linux
    /// on the Xen backend, else simulated), linux, or simulator [default: auto; the
    /// XAPID_NETWORK_BACKEND variable when set].
    #[arg(long)]
    network_backend: Option<String>,
    /// Where `host.call_plugin` finds plugins [default: /etc/xapi.d/plugins; the
    /// XAPID_PLUGIN_DIR variable when set].
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Simulator only: latency added to every backend operation, in milliseconds (to make
    /// timings realistic in tests and demos).
    #[arg(long, default_value_t = 0)]
    sim_latency_ms: u64,
    /// Simulator only: a backend operation that fails, as `<op>:<ERRNO>` (every call) or
    /// `<op>:<ERRNO>:<count>` (the next calls), e.g. `resume_from:EIO:1` (repeatable; for
    /// tests of failure paths, such as a migration whose destination fails).
    #[arg(long = "sim-fault")]
    sim_fault: Vec<agent::hypervisor::Fault>,
    /// Also serve `POST /bench/noop`, an empty 200 on the same HTTP stack, so benchmarks can
    /// measure the cost of an API call against bare HTTP.
    #[arg(long)]
    bench_noop: bool,
    /// TCP address of the NBD server (repeatable) [default: each API listen address, port 10809].
    /// It serves only while a network has purpose `nbd` (TLS required) or `insecure_nbd`.
    #[arg(long = "nbd-listen")]
    nbd_listen: Vec<SocketAddr>,
    /// No NBD server.
    #[arg(long)]
    no_nbd: bool,
    /// Install a seccomp filter on each HTTP worker thread (no exec, no Xen privcmd ioctls,
    /// no raw sockets; docs/threat-model.md): the default.
    #[arg(long, overrides_with = "no_confine_workers")]
    confine_workers: bool,
    /// HTTP workers without their seccomp filter.
    #[arg(long, overrides_with = "confine_workers")]
    no_confine_workers: bool,
    /// What the workers' filter does to a forbidden call: `refuse` (EPERM, the default) or
    /// `kill` (the daemon is killed with SIGSYS; systemd starts it again).
    #[arg(long)]
    confine_action: Option<rpc::confine::Action>,
}

/// The config file's keys (all optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<SocketAddr>>,
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    backend: Option<Backend>,
    root_password_file: Option<PathBuf>,
    max_body: Option<usize>,
    workers: Option<usize>,
    tls_listen: Option<Vec<SocketAddr>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_connections: Option<usize>,
    nbd_listen: Option<Vec<SocketAddr>>,
    network_backend: Option<String>,
    plugin_dir: Option<PathBuf>,
    confine_workers: Option<bool>,
    confine_action: Option<String>,
}

/// Merges the config file under the command line.
fn effective(mut args: Args) -> Result<Args, String> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            toml::from_str::<FileConfig>(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };
    if args.listen.is_empty() {
        args.listen = file
            .listen
            .unwrap_or_else(|| vec![SocketAddr::from(([127, 0, 0, 1], 8080))]);
    }
    args.socket = args.socket.or(file.socket);
    args.state_dir = Some(
        args.state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from("xapid-state")),
    );
    args.backend = Some(args.backend.or(file.backend).unwrap_or(Backend::Auto));
    args.root_password_file = args.root_password_file.or(file.root_password_file);
    args.max_body = Some(args.max_body.or(file.max_body).unwrap_or(DEFAULT_MAX_BODY));
    args.workers = Some(args.workers.or(file.workers).unwrap_or(0));
    if args.tls_listen.is_empty() {
        args.tls_listen = file.tls_listen.unwrap_or_default();
    }
    args.tls_cert = args.tls_cert.or(file.tls_cert);
    args.tls_key = args.tls_key.or(file.tls_key);
    if args.nbd_listen.is_empty() && !args.no_nbd {
        // By default NBD listens on each address the API listens on (so hosts sharing a machine
        // on different loopback addresses each get theirs), on the reference's port.
        let port = agent::storage::nbd_info::DEFAULT_PORT;
        let mut by_api: Vec<SocketAddr> = Vec::new();
        for a in args.listen.iter().chain(&args.tls_listen) {
            let nbd = SocketAddr::new(a.ip(), port);
            if !by_api.contains(&nbd) {
                by_api.push(nbd);
            }
        }
        args.nbd_listen = file.nbd_listen.unwrap_or(by_api);
    }
    if args.no_nbd {
        args.nbd_listen.clear();
    }
    args.max_connections = Some(args.max_connections.or(file.max_connections).unwrap_or(4096));
    args.network_backend = args.network_backend.or(file.network_backend);
    if let Some(nb) = &args.network_backend {
        if agent::network::backend::NetChoice::parse(nb).is_none() {
            return Err(format!("--network-backend {nb:?}: expected auto, linux or simulator"));
        }
    }
    args.plugin_dir = args.plugin_dir.or(file.plugin_dir);
    // The command line wins over the file; confinement is on unless one of them turns it off.
    args.confine_workers = if args.confine_workers {
        true
    } else if args.no_confine_workers {
        false
    } else {
        file.confine_workers.unwrap_or(true)
    };
    if args.confine_action.is_none() {
        args.confine_action = match &file.confine_action {
            Some(a) => Some(a.parse().map_err(|e| format!("confine_action {e}"))?),
            None => Some(rpc::confine::Action::Refuse),
        };
    }
    if args.tls_cert.is_some() != args.tls_key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    Ok(args)
}

/// mimalloc's `mi_option_purge_delay` (its place in mimalloc 3's option enum; the sys crate
/// names only some options). A test checks it against the option's known default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory mimalloc no longer uses goes back to the system at once (`purge_delay` 0) instead
/// of a second later (its default): populating 1,000 VMs left 28 MiB resident instead of
/// 33, 10,000 VMs 117 MiB instead of 128, for 2-5 % more CPU per lifecycle call
/// (medians of 5 alternated runs; BENCHMARKS.md).
fn purge_freed_memory_at_once() {
    // SAFETY: mi_option_set only stores a value in mimalloc's option table (an atomic
    // write); any option number is accepted, and purge_delay is read on each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

fn main() -> ExitCode {
    purge_freed_memory_at_once();
    // No transparent huge pages for this process: each first touch of one zeroes 2 MiB (a
    // fifth of the daemon's CPU under lifecycle load, when mimalloc asked for them) and keeps
    // the whole page resident for a few small objects. mimalloc itself is built not to ask
    // (`no_thp`), which also covers the arena it maps before `main`.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("xapid: could not turn transparent huge pages off: {e}");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match effective(Args::parse()) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // The agent reads these settings from the environment; no other thread runs yet.
    if let Some(nb) = &args.network_backend {
        std::env::set_var("XAPID_NETWORK_BACKEND", nb);
    }
    if let Some(dir) = &args.plugin_dir {
        std::env::set_var("XAPID_PLUGIN_DIR", dir);
    }
    let state_dir = args.state_dir.clone().unwrap_or_default();
    let choice = match args.backend.unwrap_or(Backend::Auto) {
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
    if !args.sim_fault.is_empty() {
        let Some(faults) = hypervisor.fault_injection() else {
            tracing::error!(
                "--sim-fault: the {} backend takes no injected faults",
                hypervisor.backend_name()
            );
            return ExitCode::from(2);
        };
        for f in &args.sim_fault {
            tracing::warn!(fault = ?f, "simulator: injected fault armed (--sim-fault)");
            faults.inject(*f);
        }
    }
    if hypervisor.backend_name() == "simulator" {
        tracing::warn!("running on the SIMULATOR backend: a simulated host, no real guests ({why})");
    } else {
        tracing::info!(backend = hypervisor.backend_name(), "{why}");
    }
    let socket = args.socket.clone().unwrap_or_else(|| state_dir.join("xapid.sock"));
    let host_address = advertised_address(args.listen.iter().chain(&args.tls_listen));
    tracing::info!(address = %host_address, "host address (host.address, console locations)");
    // The certificate HTTPS and NBD serve: one in memory, which host.install_server_certificate
    // replaces for the next handshake.
    let identity = if args.tls_listen.is_empty() && args.nbd_listen.is_empty() {
        None
    } else {
        match tls_identity(&args, &state_dir) {
            Ok(i) => Some(i),
            Err(e) if args.tls_listen.is_empty() => {
                tracing::warn!(
                    "NBD: no TLS (purpose nbd will refuse connections): {e}: {}",
                    source_chain(&e)
                );
                None
            }
            Err(e) => {
                tracing::error!("HTTPS: {e}: {}", source_chain(&e));
                return ExitCode::from(2);
            }
        }
    };
    let cfg = AgentConfig {
        state_dir: state_dir.clone(),
        root_password_file: args.root_password_file.clone(),
        hypervisor,
        host_address: host_address.to_string(),
        server_identity: identity.clone(),
    };
    let tls = if args.tls_listen.is_empty() {
        None
    } else {
        match identity.clone().map(rpc::tls::serving).transpose() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("HTTPS: {e}: {}", source_chain(&e));
                return ExitCode::from(2);
            }
        }
    };
    // The NBD server offers TLS with the certificate HTTPS uses (made now if need be).
    let nbd_tls = match (&tls, args.nbd_listen.is_empty()) {
        (_, true) => None,
        (Some(c), false) => Some(std::sync::Arc::new(c.clone())),
        (None, false) => match identity.clone().map(rpc::tls::serving).transpose() {
            Ok(Some(c)) => Some(std::sync::Arc::new(c)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(
                    "NBD: no TLS (purpose nbd will refuse connections): {e}: {}",
                    source_chain(&e)
                );
                None
            }
        },
    };
    let nbd_cfg = rpc::nbd::NbdConfig {
        listen: args.nbd_listen.clone(),
        tls: nbd_tls,
    };
    let tls_ready = tls.is_some();
    let server_cfg = ServerConfig {
        tls_listen: args.tls_listen.clone(),
        tls,
        max_connections: args.max_connections.unwrap_or(4096),
        listen: args.listen.clone(),
        socket: Some(socket),
        max_body: args.max_body.unwrap_or(DEFAULT_MAX_BODY),
        workers: args.workers.unwrap_or(0),
        bench_noop: args.bench_noop,
        confine_workers: args.confine_workers,
        confine_action: args.confine_action.unwrap_or_default(),
    };
    let pool_https = tls_ready && args.tls_listen.iter().any(|a| a.port() == agent::POOL_HTTPS_PORT);
    let https_cert = args
        .tls_cert
        .clone()
        .unwrap_or_else(|| TlsFiles::in_state_dir(&state_dir).cert);
    let result = actix_web::rt::System::new().block_on(async move {
        let agent = Agent::start(cfg)
            .await
            .map_err(|e| format!("{e}: {}", source_chain(&e)))?;
        tracing::info!(state_dir = %state_dir.display(), "state loaded");
        // The certificate other hosts of a pool pin when they call this one on HTTPS port 443.
        let pool_port = agent::POOL_HTTPS_PORT;
        let pinned_cert = pool_https.then(|| https_cert.clone());
        if let Err(e) = agent.publish_https_certificate(pinned_cert.as_deref()).await {
            tracing::warn!(error = %e, "the HTTPS certificate is not recorded: pool hosts will call this one over HTTP");
        } else if pinned_cert.is_none() {
            tracing::info!("no HTTPS on port {pool_port}: other hosts of a pool call this one over HTTP");
        }
        if !nbd_cfg.listen.is_empty() {
            if let Err(e) = rpc::nbd::start(agent.clone(), nbd_cfg) {
                tracing::warn!(error = %e, "NBD server not started");
            }
        }
        let sweeper = agent.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
            loop {
                tick.tick().await;
                let n = sweeper.expire_idle_sessions().await;
                if n > 0 {
                    tracing::info!(n, "expired idle sessions");
                }
            }
        });
        serve(agent, server_cfg).await.map_err(|e| format!("serving: {e}"))
    });
    match result {
        Ok(()) => match agent::host::agent_process::after_stop() {
            Some(AfterStop::Restart) => restart(),
            Some(AfterStop::Exit) | None => ExitCode::SUCCESS,
        },
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `host.restart_agent`: the same program with the same arguments, in this process. Every
/// descriptor the daemon opened is close-on-exec, so the listeners and the database are free
/// for the new image. A binary replaced since the start (an upgrade) is the one run.
fn restart() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(p) => {
            let s = p.to_string_lossy();
            match s.strip_suffix(" (deleted)") {
                Some(path) => std::path::PathBuf::from(path),
                None => p,
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "host.restart_agent: cannot find this program to run it again");
            return ExitCode::FAILURE;
        }
    };
    tracing::warn!(exe = %exe.display(), "host.restart_agent: starting again");
    let e = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    tracing::error!(error = %e, exe = %exe.display(), "host.restart_agent: could not start again");
    ExitCode::FAILURE
}

fn tls_identity(
    args: &Args,
    state_dir: &std::path::Path,
) -> Result<std::sync::Arc<agent::host::server_identity::ServerIdentity>, TlsError> {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let files = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => {
            let files = TlsFiles::in_state_dir(state_dir);
            if ensure_self_signed(&files, &host)? {
                tracing::info!(cert = %files.cert.display(), "generated a self-signed certificate");
            }
            files
        }
    };
    // The pool-internal certificate, always the daemon's own, kept in the state dir.
    let internal = TlsFiles::internal_in_state_dir(state_dir);
    if ensure_self_signed(&internal, &host)? {
        tracing::info!(cert = %internal.cert.display(), "made this host's pool-internal certificate");
    }
    rpc::tls::identity_with_internal(&files, &internal)
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

/// The address this host is known by: the first specific, non-loopback address it listens on;
/// when it listens on every address, the one the kernel would use towards other hosts (its
/// default route's source address); otherwise loopback.
fn advertised_address<'a>(addrs: impl Iterator<Item = &'a SocketAddr> + Clone) -> IpAddr {
    if let Some(a) = addrs
        .clone()
        .map(|a| a.ip())
        .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
    {
        return a;
    }
    if addrs.clone().any(|a| a.ip().is_unspecified()) {
        // Connecting a UDP socket sends nothing; it only picks the route and source address.
        let routed = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
            .and_then(|s| s.local_addr());
        if let Ok(local) = routed {
            return local.ip();
        }
    }
    // A loopback address of its own (127.0.0.2, …): hosts of a pool on one machine each have
    // their own `host.address`.
    if let Some(a) = addrs.map(|a| a.ip()).find(|ip| !ip.is_unspecified()) {
        return a;
    }
    IpAddr::from([127, 0, 0, 1])
}

#[cfg(test)]
mod tests {
    use super::advertised_address;
    use std::net::{IpAddr, SocketAddr};

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn the_host_address_is_a_specific_listen_address_when_there_is_one() {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(advertised_address(addrs(&["127.0.0.1:8080"]).iter()), loopback);
        assert_eq!(
            advertised_address(addrs(&["127.0.0.1:8080", "0.0.0.0:443", "10.1.2.3:443"]).iter()),
            IpAddr::from([10, 1, 2, 3])
        );
        assert_eq!(
            advertised_address(addrs(&["127.0.0.3:80"]).iter()),
            IpAddr::from([127, 0, 0, 3])
        );
        // Every address: the routed source address, or loopback without a route; never 0.0.0.0.
        assert!(!advertised_address(addrs(&["0.0.0.0:443"]).iter()).is_unspecified());
    }

    /// The option number names purge_delay: its default (1,000 ms in mimalloc 3) is what the
    /// number reads back, and setting it changes nothing else the test can see.
    #[test]
    fn the_purge_delay_option_number_is_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: mi_option_get reads mimalloc's option table.
        let before = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(before, 1000);
        super::purge_freed_memory_at_once();
        // SAFETY: as above.
        let after = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(after, 0);
    }
}
