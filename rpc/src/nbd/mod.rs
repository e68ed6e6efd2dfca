//! The NBD server: VDIs' blocks for backup clients, read-only, as the reference's serves them
//! (port 10809 by default, the export named `/<vdi uuid>?session_id=<session ref>`, the session
//! checked when the client picks the export). Whether a connection is served, and how, follows
//! the networks' `purpose`: `nbd` requires TLS (`NBD_OPT_STARTTLS`, with the certificate the
//! HTTPS listener uses), `insecure_nbd` serves plain connections, neither (or both) refuses.
//!
//! It runs on its own thread and tokio runtime, beside the HTTP workers; reads go through the
//! agent's I/O engine (`agent::storage::nbd_export`).

mod negotiate;
pub mod proto;
mod transmit;

use agent::storage::nbd_export::{policy, NbdPolicy};
use agent::Agent;
use negotiate::{negotiate, Outcome, State};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to finish the negotiation.
const NEGOTIATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Failures of one NBD connection.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed or the client went away.
    #[error("connection")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The negotiation took too long.
    #[error("negotiation timed out")]
    Timeout,
}

/// Where and how the NBD server listens.
#[derive(Clone)]
pub struct NbdConfig {
    /// TCP addresses (the reference's: every address, port 10809).
    pub listen: Vec<SocketAddr>,
    /// The host's TLS configuration (needed for purpose `nbd`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Binds the listeners (reporting what could not be bound) and serves them on a thread of
/// their own. Returns the addresses bound.
pub fn start(agent: Arc<Agent>, cfg: NbdConfig) -> std::io::Result<Vec<SocketAddr>> {
    let mut listeners = Vec::new();
    for addr in &cfg.listen {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                listeners.push(l);
            }
            Err(e) => tracing::warn!(%addr, error = %e, "NBD: cannot listen here; NBD is off on this address"),
        }
    }
    let bound: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    if let Some(port) = bound.first().map(SocketAddr::port) {
        agent::storage::nbd_info::set_port(port);
    }
    if listeners.is_empty() {
        return Ok(bound);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("xapid-nbd")
        .enable_all()
        .build()?;
    std::thread::Builder::new().name("xapid-nbd".into()).spawn(move || {
        runtime.block_on(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            let mut tasks = Vec::new();
            for l in listeners {
                let agent = agent.clone();
                let tls = cfg.tls.clone();
                let limit = limit.clone();
                tasks.push(tokio::spawn(async move {
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => accept_loop(l, agent, tls, limit).await,
                        Err(e) => tracing::error!(error = %e, "NBD: listener unusable"),
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    })?;
    for addr in &bound {
        tracing::info!(%addr, "listening for NBD (served when a network has purpose nbd or insecure_nbd)");
    }
    Ok(bound)
}

async fn accept_loop(
    l: tokio::net::TcpListener,
    agent: Arc<Agent>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limit: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (sock, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "NBD: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let agent = agent.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match connection(sock, &agent, tls).await {
                Ok(()) => tracing::debug!(%peer, "NBD connection ended"),
                Err(e) => tracing::debug!(%peer, error = %e, "NBD connection ended"),
            }
            drop(permit);
        });
    }
}

/// One client, from the greeting to the end of transmission.
async fn connection(
    mut sock: TcpStream,
    agent: &Arc<Agent>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(), NbdError> {
    let require_tls = match policy(agent) {
        NbdPolicy::Tls => true,
        NbdPolicy::Plain => false,
        NbdPolicy::Refuse(why) => {
            tracing::info!("NBD connection refused: {why}");
            return Ok(());
        }
    };
    if require_tls && tls.is_none() {
        tracing::warn!("NBD connection refused: TLS is required (purpose nbd) and there is no certificate");
        return Ok(());
    }
    sock.set_nodelay(true)?;
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&proto::NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    sock.write_all(&greeting).await?;
    let client = sock.read_u32().await?;
    if client & !(proto::C_FIXED_NEWSTYLE | proto::C_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!("unknown client flags {client:#x}")));
    }
    let mut st = State {
        require_tls,
        no_zeroes: client & proto::C_NO_ZEROES != 0,
        ..State::default()
    };
    let outcome = tokio::time::timeout(NEGOTIATION_TIMEOUT, negotiate(&mut sock, &mut st, agent))
        .await
        .map_err(|_| NbdError::Timeout)??;
    match outcome {
        Outcome::Close => Ok(()),
        Outcome::Serve(export) => transmit::transmit(&mut sock, &st, export).await,
        Outcome::StartTls => {
            let Some(cfg) = tls else {
                return Ok(());
            };
            let mut t = tokio::time::timeout(NEGOTIATION_TIMEOUT, tokio_rustls::TlsAcceptor::from(cfg).accept(sock))
                .await
                .map_err(|_| NbdError::Timeout)??;
            st.tls_done = true;
            let outcome = tokio::time::timeout(NEGOTIATION_TIMEOUT, negotiate(&mut t, &mut st, agent))
                .await
                .map_err(|_| NbdError::Timeout)??;
            match outcome {
                Outcome::Serve(export) => {
                    let r = transmit::transmit(&mut t, &st, export).await;
                    let _ = t.shutdown().await;
                    r
                }
                Outcome::Close | Outcome::StartTls => Ok(()),
            }
        }
    }
}
