//! What the transport may ask of the agent: sessions for the HTTP data paths, the console
//! behind a request, refs by uuid, the idle-session sweep. The transport never reads the
//! agent's store or backend itself.

use crate::error::ApiError;
use crate::hypervisor::ConsoleStream;
use crate::schema::{class_ids, enums, fields, ClassId};
use crate::value::Value;
use crate::Agent;

/// What a console record leads to ([`Agent::console_domain`]): a domain and which of its
/// consoles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleHandle {
    /// The domain.
    pub domid: u32,
    /// Its graphical (`rfb`) console rather than its text one.
    pub rfb: bool,
}

impl Agent {
    /// This host's ref.
    pub fn host_ref(&self) -> &str {
        &self.host
    }

    /// The pool's ref.
    pub fn pool_ref(&self) -> String {
        self.pool.read().clone()
    }

    /// Checks a session (and notes its activity).
    pub fn validate_session(&self, session: &str) -> Result<(), ApiError> {
        self.sessions.validate(&self.store, session)
    }

    /// Opens a session as `session.login_with_password` does.
    pub async fn login(&self, user: &str, password: &str, originator: &str) -> Result<String, ApiError> {
        self.sessions
            .login(&self.store, &self.host, user, password, originator, false)
            .await
    }

    /// Ends a session.
    pub async fn logout(&self, session: &str) -> Result<(), ApiError> {
        self.sessions.logout(&self.store, session).await
    }

    /// Ends sessions idle for longer than the limit; how many ended.
    pub async fn expire_idle_sessions(&self) -> usize {
        self.sessions.expire_idle(&self.store).await
    }

    /// The ref of the object of `class` named by `r`, a ref or a uuid.
    pub fn resolve(&self, class: ClassId, r: &str) -> Option<String> {
        if self.store.get(class, r).is_some() {
            return Some(r.to_owned());
        }
        self.store.ref_by_uuid(class, r)
    }

    /// The uuid of an object, if it exists.
    pub fn uuid_of(&self, class: ClassId, r: &str) -> Option<String> {
        self.store.get(class, r).and_then(|o| o.uuid().map(str::to_owned))
    }

    /// Whether an object of `class` with this ref exists.
    pub fn exists(&self, class: ClassId, r: &str) -> bool {
        self.store.get(class, r).is_some()
    }

    /// The text console a client names by a console's or a VM's ref (`ref`) or uuid (`uuid`):
    /// a VM stands for its `vt100` console.
    pub fn text_console(&self, by_ref: Option<&str>, by_uuid: Option<&str>) -> Result<String, ApiError> {
        let missing = |what: &str| ApiError::handle_invalid("console", what);
        let r = match (by_ref, by_uuid) {
            (Some(r), _) => r.to_owned(),
            (None, Some(u)) => self
                .store
                .ref_by_uuid(class_ids::VM, u)
                .or_else(|| self.store.ref_by_uuid(class_ids::console, u))
                .ok_or_else(|| missing(u))?,
            (None, None) => return Err(ApiError::internal("the console request lacks a ref or uuid parameter")),
        };
        if self.store.get(class_ids::console, &r).is_some() {
            return Ok(r);
        }
        let vm = self.store.get(class_ids::VM, &r).ok_or_else(|| missing(&r))?;
        vm.get(fields::VM::consoles)
            .as_set()
            .iter()
            .filter_map(Value::as_ref_str)
            .find(|c| {
                self.store
                    .get(class_ids::console, c)
                    .is_some_and(|c| c.get(fields::console::protocol) == &enums::ConsoleProtocol::vt100)
            })
            .map(str::to_owned)
            .ok_or_else(|| missing(&r))
    }

    /// The console handle behind a console, for [`Self::console_stream`]: its domain and
    /// whether it is the graphical (`rfb`) console. Its VM must have a domain (running or paused: a client may attach before it unpauses a VM started
    /// paused, and so see the whole boot).
    pub fn console_domain(&self, console: &str) -> Result<ConsoleHandle, ApiError> {
        let c = self
            .store
            .get(class_ids::console, console)
            .ok_or_else(|| ApiError::handle_invalid("console", console))?;
        let vm_ref = c.get(fields::console::VM).as_ref_str().unwrap_or("").to_owned();
        let vm = self
            .store
            .get(class_ids::VM, &vm_ref)
            .ok_or_else(|| ApiError::handle_invalid("VM", &vm_ref))?;
        let state = vm.get(fields::VM::power_state);
        let live = *state == enums::VmPowerState::Running || *state == enums::VmPowerState::Paused;
        let domid = vm.get(fields::VM::domid).as_int().unwrap_or(-1);
        if !live || domid < 0 {
            return Err(ApiError::VmBadPowerState {
                vm: vm_ref,
                expected: "running".into(),
                actual: state.key_text().to_ascii_lowercase(),
            });
        }
        let domid = u32::try_from(domid).map_err(|_| ApiError::invalid_value("domid", domid))?;
        let rfb = c.get(fields::console::protocol) == &enums::ConsoleProtocol::rfb;
        Ok(ConsoleHandle { domid, rfb })
    }

    /// A reader of a domain's text console, for as long as it is held: a domain that shut down
    /// is destroyed once what it wrote last has reached its readers (`console_watch.rs`).
    pub fn console_watch(&self, handle: ConsoleHandle) -> crate::console_watch::ConsoleWatch {
        self.console_watches.watch(handle.domid)
    }

    /// The text console of `domid` opened again, if the domain still runs or is paused
    /// (`None` otherwise). Blocks: for a console reader's own thread, whose pty ended under a
    /// running domain.
    pub fn reopen_text_console(&self, domid: u32) -> Result<Option<ConsoleStream>, ApiError> {
        use crate::hypervisor::DomainState;
        match self.hypervisor.domain_info(domid) {
            Ok(i) if matches!(i.state, DomainState::Running | DomainState::Paused) => {}
            _ => return Ok(None),
        }
        self.hypervisor
            .console_stream(domid)
            .map(Some)
            .map_err(|e| ApiError::internal(format!("console of domain {domid}: {e}")))
    }

    /// The console byte stream behind a console handle ([`Self::console_domain`]), from the
    /// backend (on a blocking thread): the domain's text console, or the RFB stream of its
    /// graphical console.
    pub async fn console_stream(&self, handle: ConsoleHandle) -> Result<ConsoleStream, ApiError> {
        let hv = self.hypervisor.clone();
        let ConsoleHandle { domid, rfb } = handle;
        let open = move || {
            if rfb {
                hv.vnc_stream(domid)
            } else {
                hv.console_stream(domid)
            }
        };
        match tokio::task::spawn_blocking(open).await {
            Ok(r) => r.map_err(|e| ApiError::internal(format!("console of domain {domid}: {e}"))),
            Err(e) => Err(ApiError::internal(e)),
        }
    }
}
