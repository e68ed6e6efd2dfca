//! xapid's object model: the datamodel's tables, typed values, the durable store, the event
//! log, sessions, dispatch of calls, and the hypervisor backends.

pub mod actors;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod behaviour;
pub mod call;
pub mod console_watch;
pub mod coverage;
pub mod dispatch;
pub mod error;
pub mod event_from;
pub mod events;
pub mod first_boot;
mod front;
mod fsutil;
pub use front::ConsoleHandle;
pub mod host;
pub mod hypervisor;
pub mod implicit;
pub mod lifecycle;
pub mod metrics;
pub mod network;
pub mod objects;
pub mod pool;
pub mod privileged;
pub mod query;
pub mod rbac;
pub mod schema;
pub mod secureboot;
pub mod sessions;
pub mod storage;
pub mod store;
pub mod tasks;
pub mod value;
pub mod xml;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use call::CallCtx;
pub use dispatch::{call, method_list};
/// The port the hosts of a pool call each other's HTTPS on.
pub use host::certificates::POOL_HTTPS_PORT;
/// The HTTP header a call forwarded by another host of the pool carries the pool secret in.
pub use pool::secret::HEADER as POOL_SECRET_HEADER;

/// The hasher of the daemon's lookups by text on hot paths (refs, uuids, field and message
/// names, session refs): foldhash, seeded per process like the standard SipHash, which showed
/// up in lifecycle profiles.
pub type FastHash = foldhash::fast::RandomState;
pub use error::ApiError;
pub use first_boot::{CpuFacts, HostFacts};
pub use value::Value;

/// Failures starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state dir could not be prepared.
    #[error("preparing the state dir {0}")]
    StateDir(String, #[source] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Authentication could not be set up.
    #[error(transparent)]
    Auth(#[from] sessions::AuthError),
    /// The backend could not describe the host.
    #[error("reading host facts from the backend")]
    Backend(#[source] hypervisor::BackendError),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(audit::AuditError),
    /// The first objects could not be created.
    #[error("creating the first objects: {0}")]
    FirstBoot(ApiError),
}

/// How to start the agent.
#[derive(Clone)]
pub struct AgentConfig {
    /// Where the store, the password hash and the default SR live.
    pub state_dir: PathBuf,
    /// Sets the root password on first start.
    pub root_password_file: Option<PathBuf>,
    /// The hypervisor backend every lifecycle operation goes through.
    pub hypervisor: Arc<dyn hypervisor::Hypervisor>,
    /// The address clients reach this host on: `host.address`, and the host part of every
    /// console's `location` (`https://<address>/console?ref=…`).
    pub host_address: String,
    /// The certificate the HTTPS listeners serve, which `host.install_server_certificate`
    /// replaces; none without HTTPS.
    pub server_identity: Option<Arc<host::server_identity::ServerIdentity>>,
}

/// The running object model.
pub struct Agent {
    /// Every object.
    pub(crate) store: store::Store,
    /// Sessions and the root password.
    pub(crate) sessions: sessions::Sessions,
    /// This host's ref.
    pub(crate) host: String,
    /// The pool's ref (another pool's once this host joins one).
    pub(crate) pool: parking_lot::RwLock<String>,
    /// The hypervisor backend.
    pub(crate) hypervisor: Arc<dyn hypervisor::Hypervisor>,
    /// Async calls still running, by task ref.
    pub(crate) running_tasks: Mutex<HashMap<String, (tokio::task::AbortHandle, String)>>,
    /// The per-object actors.
    pub(crate) actors: actors::Actors,
    /// Which VM each live domain belongs to.
    pub(crate) domids: Mutex<HashMap<u32, String>>,
    /// Readers of each domain's text console (`console_watch.rs`).
    pub(crate) console_watches: Arc<console_watch::ConsoleWatches>,
    /// The state dir.
    pub(crate) state_dir: PathBuf,
    /// Legacy event subscriptions.
    pub(crate) registrations: event_from::Registrations,
    /// Recent `event.from` batches, shared by callers waiting on the same thing.
    pub(crate) event_batches: event_from::BatchCache,
    /// The address clients reach this host on (`AgentConfig::host_address`).
    pub(crate) host_address: String,
    /// The metrics service (round-robin databases, alerts).
    pub(crate) metrics: metrics::Metrics,
    /// The network backend and the management interface (`network/`).
    pub(crate) network: network::Network,
    /// The audit trail (`<state dir>/audit.log`).
    pub(crate) audit: audit::AuditLog,
    /// The certificate HTTPS serves (`host/server_identity.rs`).
    pub(crate) server_identity: Option<Arc<host::server_identity::ServerIdentity>>,
}

/// Installs rustls' process-wide crypto provider (ring, as everywhere in this daemon), which
/// reqwest's clients need; done once, a second install being refused harmlessly.
pub fn ensure_tls_provider() {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Agent {
    /// The store, for tests outside this crate that set up states no API call makes (a
    /// domain the backend runs but no VM started). Not for the transport.
    #[cfg(feature = "test-support")]
    pub fn store_for_tests(&self) -> &store::Store {
        &self.store
    }

    /// Follows the management interface (`host.management_reconfigure`, `management_disable`),
    /// for the HTTP server to move its listeners (docs/networking.md).
    pub fn management_changes(&self) -> tokio::sync::watch::Receiver<network::management::Management> {
        self.network.management()
    }

    /// Publishes the certificate this host serves HTTPS with on the pool's port (443) as its
    /// `Certificate` record (type `host`), with its pool-internal one (type `host_internal`),
    /// which the other hosts of a pool pin; `None`: it serves none there (both records go).
    pub async fn publish_https_certificate(&self, pem_file: Option<&std::path::Path>) -> Result<(), ApiError> {
        use schema::enums::CertificateType;
        host::certificates::publish(self, CertificateType::host, pem_file).await?;
        let internal = pem_file.and(self.server_identity.as_deref().and_then(|i| i.internal_cert_file()));
        host::certificates::publish(self, CertificateType::host_internal, internal).await
    }

    /// Where a client connects to a console, in the reference's form
    /// `https://<host address>/console?ref=<console ref>`.
    pub fn console_location(&self, console: &str) -> String {
        if self.host_address.contains(':') {
            format!("https://[{}]/console?ref={console}", self.host_address)
        } else {
            format!("https://{}/console?ref={console}", self.host_address)
        }
    }

    /// Opens the store, creates the first objects on a fresh state dir, rebuilds the
    /// in-memory ones, reconciles VMs with the backend's domains and follows its events.
    /// Must run inside an actix system (the actors live on its arbiters).
    pub async fn start(cfg: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| AgentError::StateDir(cfg.state_dir.display().to_string(), e))?;
        let store = store::Store::open_configured(&cfg.state_dir).await?;
        // A database backup restored before the last stop (`PUT /pool/xmldbdump`).
        backup::xmldb::apply_staged(&store, &cfg.state_dir).await;
        let sessions = sessions::Sessions::open(&cfg.state_dir, cfg.root_password_file.as_deref())?;
        let audit = audit::AuditLog::open(&cfg.state_dir, audit::DEFAULT_MAX_BYTES, audit::DEFAULT_KEEP)
            .map_err(AgentError::Audit)?;
        let facts = HostFacts::from_backend(cfg.hypervisor.as_ref()).map_err(AgentError::Backend)?;
        // Changed-block tracking sees the writes this daemon makes; a Xen guest writes its
        // disk through the kernel, unseen, so the file driver advertises it only on the
        // simulator (docs/nbd-cbt.md).
        storage::features::set_cbt_tracked(cfg.hypervisor.backend_name() == "simulator");
        let (pool, host) = first_boot::ensure(&store, &facts, &cfg.state_dir)
            .await
            .map_err(AgentError::FirstBoot)?;
        first_boot::rebuild_ephemeral(&store, &facts, &cfg.host_address, &host)
            .await
            .map_err(AgentError::FirstBoot)?;
        let network = network::Network::for_hypervisor(cfg.hypervisor.backend_name());
        tracing::info!(backend = network.backend.name(), "network: {}", network.why);
        let agent = Arc::new(Agent {
            store,
            sessions,
            host,
            pool: parking_lot::RwLock::new(pool),
            hypervisor: cfg.hypervisor,
            running_tasks: Mutex::new(HashMap::new()),
            actors: actors::Actors::new(2),
            domids: Mutex::new(HashMap::new()),
            console_watches: Arc::default(),
            state_dir: cfg.state_dir.clone(),
            registrations: event_from::Registrations::default(),
            event_batches: event_from::BatchCache::default(),
            host_address: cfg.host_address.clone(),
            metrics: metrics::Metrics::default(),
            network,
            audit,
            server_identity: cfg.server_identity.clone(),
        });
        storage::load_cbt_logs(&agent).await;
        // The host's networks before its VMs: a running guest's VIFs join their bridges.
        network::attach::at_start(&agent).await;
        lifecycle::reconcile::at_start(&agent)
            .await
            .map_err(AgentError::FirstBoot)?;
        lifecycle::reconcile::follow_backend(&agent).map_err(AgentError::FirstBoot)?;
        host::power::at_start(&agent).await.map_err(AgentError::FirstBoot)?;
        metrics::start(&agent);
        pool::liveness::start(&agent);
        Ok(agent)
    }
}
