//! What runs while HA is on, driven by every host's liveness beat (`pool/liveness.rs`):
//!
//! Every time here is counted in the pool's HA timeout T (`ha_configuration:timeout`, else
//! `other_config:default_ha_timeout`, else 60 s; at least 10: [`super::timeout`]), which is
//! also how long each host's lease lives while HA is on (`pool/liveness.rs`).
//!
//! - **Fencing.** A host whose own lease lapsed (a renewal found it gone) or that could not
//!   renew it for T seconds may already be counted dead by the others, who will restart
//!   its protected VMs: it fences itself at once, as the reference's watchdog does. Its store
//!   refuses every write (`HA_SHOULD_BE_FENCED`), it destroys its guests' domains, and once
//!   the others have had time to take its VMs over ([`fence_hold`]) the daemon restarts and
//!   comes back as a member like after a reboot.
//! - **Restarts**, on the master. A host the master finds dead (its lease gone for T
//!   more seconds: at least 2 T after its last renewal, so after it fenced itself) has its
//!   VMs reset to Halted; every protected VM not running is then started, in `order`, on the
//!   host the planner packs it onto (`VM.start_on`, forwarded like a user's call), then the
//!   failed host's `best-effort` VMs where room is left. A start that fails is tried again
//!   [`RETRY`] later. `pool.ha_prevent_restarts_for` holds restarts back.
//! - **Election.** The master campaigns in etcd's election `master` bound to its lease; a
//!   member campaigns once the master's lease has been gone for T seconds. Its
//!   campaign ends when every earlier candidate's key is gone: the winner names itself
//!   `pool.master` (if that is still the host whose lease went), and from then on every host
//!   answers `HOST_IS_SLAVE` with its address.

use super::{is_protected, BEST_EFFORT};
use crate::call::CallCtx;
use crate::pool::liveness::ttl;
use crate::schema::{
    class_ids,
    enums::{Cls, VmPowerState},
    fields,
};
use crate::store::{Campaign, LeaderKey};
use crate::value::Value;
use crate::Agent;
use parking_lot::Mutex;
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a failed restart waits before it is tried again.
pub const RETRY: Duration = Duration::from_secs(20);
/// How long a fenced host waits before its daemon restarts, its leases living `ttl` seconds:
/// time for the master to count it dead (two of them and a beat) and for a new master to be
/// elected if it was the master.
pub fn fence_hold(ttl: i64) -> Duration {
    Duration::from_secs(3 * ttl.unsigned_abs() + 2)
}
/// The master writes the pool's plan fields again every this many beats (and after a failure
/// or a restart).
const PLAN_EVERY: u32 = 10;
/// The election's name under the pool's etcd prefix.
const ELECTION: &str = "master";

static PREVENT_UNTIL: Mutex<Option<Instant>> = Mutex::new(None);

/// `pool.ha_prevent_restarts_for(seconds)`: no restart before then (0 or less lifts it).
pub fn prevent_restarts_for(seconds: i64) {
    let mut g = PREVENT_UNTIL.lock();
    *g = u64::try_from(seconds)
        .ok()
        .filter(|s| *s > 0)
        .map(|s| Instant::now() + Duration::from_secs(s));
    tracing::info!(seconds, "HA restarts held back");
}

fn restarts_prevented() -> bool {
    PREVENT_UNTIL.lock().is_some_and(|t| Instant::now() < t)
}

/// What this host's last beat did with its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Renewed (or taken for the first time).
    Renewed,
    /// The lease had lapsed: a new one was taken.
    Lapsed,
    /// etcd could not be reached.
    Failed,
}

/// A campaign in the master election, on one lease.
struct Candidacy {
    lease: i64,
    task: Option<Campaign>,
    leader: Option<LeaderKey>,
}

/// The HA state one host's liveness loop keeps.
#[derive(Default)]
pub struct Watch {
    last_ok: Option<Instant>,
    candidacy: Option<Candidacy>,
    master_missing_since: Option<Instant>,
    tried: HashMap<String, Instant>,
    failed: HashSet<String>,
    best_effort: Vec<String>,
    beats_since_plan: u32,
    checked_fence_note: bool,
}

impl Watch {
    /// After this host's beat; false once the host is fenced (the loop then stops).
    pub async fn after_beat(&mut self, agent: &Arc<Agent>, beat: Beat, lease: Option<i64>) -> bool {
        let now = Instant::now();
        if beat != Beat::Failed || self.last_ok.is_none() {
            self.last_ok = Some(now);
        }
        if !super::enabled(agent) {
            self.withdraw(agent).await;
            self.master_missing_since = None;
            self.best_effort.clear();
            return true;
        }
        let silent = self
            .last_ok
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(ttl(agent).unsigned_abs()));
        if beat == Beat::Lapsed || silent {
            self.withdraw(agent).await;
            fence(agent, if silent { "could not renew" } else { "found lapsed" }).await;
            return false;
        }
        if !self.checked_fence_note && beat != Beat::Failed {
            self.checked_fence_note = true;
            fenced_before(agent).await;
        }
        if let Some(lease) = lease {
            self.elect(agent, lease).await;
        }
        true
    }

    /// On the master, after it has marked which hosts are live: `newly_dead` just went.
    pub async fn on_master_beat(&mut self, agent: &Arc<Agent>, newly_dead: &[String]) {
        if !super::enabled(agent) {
            return;
        }
        for host in newly_dead {
            self.host_failed(agent, host).await;
        }
        let restarted = if restarts_prevented() {
            false
        } else {
            self.restart_pass(agent).await
        };
        self.beats_since_plan += 1;
        if restarted || !newly_dead.is_empty() || self.beats_since_plan >= PLAN_EVERY {
            self.beats_since_plan = 0;
            if let Err(e) = super::record_status(agent, None).await {
                tracing::warn!(error = %e, "cannot record the pool's HA plan");
            }
        }
    }

    async fn host_failed(&mut self, agent: &Arc<Agent>, host: &str) {
        let guests = crate::pool::dead_host::guests_on(agent, host);
        for vm in &guests {
            let running = vm.get(fields::VM::power_state) != &VmPowerState::Halted.value();
            if running && vm.get(fields::VM::ha_restart_priority).as_str() == Some(BEST_EFFORT) {
                self.best_effort.push(vm.reference.clone());
            }
        }
        let refs: Vec<String> = guests.iter().map(|v| v.reference.clone()).collect();
        let reset = agent
            .store
            .write(|tx| {
                for vm in &refs {
                    crate::lifecycle::vm_power::reset_halted_tx(tx, vm)?;
                }
                Ok(())
            })
            .await;
        match reset {
            Ok(()) => tracing::warn!(
                host,
                vms = refs.len(),
                "HA_HOST_FAILED: the host's lease lapsed; its VMs are Halted and the protected ones restart elsewhere"
            ),
            Err(e) => tracing::error!(host, error = %e, "HA: cannot reset the VMs of a failed host"),
        }
        if let Some(h) = agent.store.get(class_ids::host, host) {
            let name = h.get(fields::host::name_label).as_str().unwrap_or("");
            let body = format!("Server '{name}' has failed");
            super::message(agent, "HA_HOST_FAILED", 3, Cls::Host, h.uuid().unwrap_or(""), &body).await;
        }
    }

    /// Starts every protected VM that is not running, then the failed hosts' best-effort VMs;
    /// whether it tried any.
    async fn restart_pass(&mut self, agent: &Arc<Agent>) -> bool {
        let now = Instant::now();
        self.tried.retain(|_, t| now.duration_since(*t) < RETRY);
        let halted = |v: &crate::value::Object| v.get(fields::VM::power_state) == &VmPowerState::Halted.value();
        let mut protected: Vec<_> = super::protected(agent)
            .into_iter()
            .filter(|v| halted(v) && !self.tried.contains_key(&v.reference))
            .collect();
        self.best_effort.retain(|r| {
            agent
                .store
                .get(class_ids::VM, r)
                .is_some_and(|v| halted(&v) && !is_protected(&v))
        });
        if protected.is_empty() && self.best_effort.is_empty() {
            return false;
        }
        protected.sort_by_key(|v| (order(v), v.reference.clone()));
        let session = match agent
            .sessions
            .login(&agent.store, &agent.host, "root", "", "xapid HA", true)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "HA: cannot open a session to restart VMs");
                return false;
            }
        };
        let placed = place(agent, &protected);
        for vm in &protected {
            self.tried.insert(vm.reference.clone(), now);
            let started = match placed.get(&vm.reference) {
                Some(host) => start_on(agent, &session, &vm.reference, host).await,
                None => {
                    tracing::warn!(vm = %vm.reference, "HA: no live host has room for the protected VM");
                    false
                }
            };
            // The reference says it once per VM, until a restart succeeds.
            if started {
                self.failed.remove(&vm.reference);
            } else if self.failed.insert(vm.reference.clone()) {
                let uuid = vm.uuid().unwrap_or("");
                super::message(agent, "HA_PROTECTED_VM_RESTART_FAILED", 2, Cls::VM, uuid, "").await;
            }
        }
        let best: Vec<_> = std::mem::take(&mut self.best_effort)
            .iter()
            .filter_map(|r| agent.store.get(class_ids::VM, r))
            .collect();
        let placed = place(agent, &best);
        for vm in &best {
            match placed.get(&vm.reference) {
                Some(host) => {
                    start_on(agent, &session, &vm.reference, host).await;
                }
                None => tracing::info!(vm = %vm.reference, "HA: no room left for a best-effort VM"),
            }
        }
        if let Err(e) = agent.sessions.logout(&agent.store, &session).await {
            tracing::debug!(error = %e, "HA: closing the restart session");
        }
        true
    }

    /// Keeps this host's candidacy in the master election as its role asks.
    async fn elect(&mut self, agent: &Arc<Agent>, lease: i64) {
        if self.candidacy.as_ref().is_some_and(|c| c.lease != lease) {
            self.withdraw(agent).await;
        }
        let Some(master) = crate::pool::master(agent) else {
            return;
        };
        if master == agent.host {
            self.master_missing_since = None;
            self.stand(agent, lease);
            self.poll(agent).await;
            return;
        }
        let master_uuid = agent
            .store
            .get(class_ids::host, &master)
            .and_then(|h| h.uuid().map(str::to_owned))
            .unwrap_or_default();
        let present = match agent.store.live_hosts().await {
            Ok(Some(live)) => live.contains(&master_uuid),
            Ok(None) => true,
            Err(e) => {
                tracing::debug!(error = %e, "HA: cannot read which hosts are live");
                return;
            }
        };
        if present {
            self.master_missing_since = None;
            self.withdraw(agent).await;
            return;
        }
        let since = *self.master_missing_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_secs(ttl(agent).unsigned_abs()) {
            return;
        }
        self.stand(agent, lease);
        if self.poll(agent).await {
            take_over(agent, &master).await;
        }
    }

    fn stand(&mut self, agent: &Agent, lease: i64) {
        if self.candidacy.is_some() {
            return;
        }
        let me = agent
            .store
            .get(class_ids::host, &agent.host)
            .and_then(|h| h.uuid().map(str::to_owned))
            .unwrap_or_default();
        match agent.store.campaign(ELECTION, me, lease) {
            Some(Ok(task)) => {
                self.candidacy = Some(Candidacy {
                    lease,
                    task: Some(task),
                    leader: None,
                })
            }
            Some(Err(e)) => tracing::warn!(error = %e, "HA: cannot campaign for master"),
            None => {}
        }
    }

    /// Whether this host leads the election (a finished campaign is collected).
    async fn poll(&mut self, agent: &Agent) -> bool {
        let Some(c) = self.candidacy.as_mut() else {
            return false;
        };
        if c.leader.is_some() {
            return true;
        }
        let finished = c.task.as_ref().is_some_and(|t| t.is_finished());
        if !finished {
            return false;
        }
        let outcome = match c.task.take() {
            Some(t) => t.await,
            None => return false,
        };
        match outcome {
            Ok(Ok(key)) => {
                tracing::info!(host = %agent.host, "HA: this host leads the master election");
                c.leader = Some(key);
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "HA: the campaign for master failed");
                self.candidacy = None;
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "HA: the campaign for master stopped");
                self.candidacy = None;
                false
            }
        }
    }

    /// Ends this host's candidacy: a running campaign is cancelled, a won one resigned.
    async fn withdraw(&mut self, agent: &Agent) {
        let Some(c) = self.candidacy.take() else {
            return;
        };
        if let Some(t) = c.task {
            t.abort();
        }
        if let Some(key) = c.leader {
            if let Err(e) = agent.store.resign(key).await {
                tracing::debug!(error = %e, "HA: resigning the master election");
            }
        }
    }
}

fn order(vm: &crate::value::Object) -> i64 {
    vm.get(fields::VM::order).as_int().unwrap_or(0).max(0)
}

/// The host the planner packs each of `vms` onto, among the live enabled hosts.
fn place(agent: &Agent, vms: &[Arc<crate::value::Object>]) -> HashMap<String, String> {
    let (hosts, guests) = super::inputs(agent, vms);
    let targets: Vec<&super::plan::Host> = hosts.iter().collect();
    let refs: Vec<&super::plan::Guest> = guests.iter().collect();
    super::plan::pack(&targets, &refs)
        .into_iter()
        .filter_map(|(g, h)| h.map(|h| (g.id.clone(), h)))
        .collect()
}

/// `VM.start_on(vm, host, false, false)` as a call of its own (forwarded to `host`); whether
/// it started.
async fn start_on(agent: &Arc<Agent>, session: &str, vm: &str, host: &str) -> bool {
    let ctx = CallCtx {
        trusted_root: true,
        task: None,
        pool_secret: None,
    };
    let params = [
        Json::String(session.to_owned()),
        Json::String(vm.to_owned()),
        Json::String(host.to_owned()),
        Json::Bool(false),
        Json::Bool(false),
    ];
    let t = Instant::now();
    match crate::dispatch::call(agent, &ctx, "VM.start_on", &params).await {
        Ok(_) => {
            tracing::info!(vm, host, ms = t.elapsed().as_millis() as u64, "HA: VM restarted");
            true
        }
        Err(e) => {
            tracing::warn!(vm, host, error = %e, "HA: a restart failed");
            false
        }
    }
}

/// Names this host the master in place of `old`, if `old` still is.
async fn take_over(agent: &Agent, old: &str) {
    let pool = agent.pool_ref();
    let me = agent.host.clone();
    let done = agent
        .store
        .write(|tx| {
            let current = tx
                .get(class_ids::pool, &pool)
                .and_then(|p| p.get(fields::pool::master).as_ref_str().map(str::to_owned));
            if current.as_deref() != Some(old) {
                return Ok(false);
            }
            crate::objects::set_field(
                tx,
                class_ids::pool,
                &pool,
                fields::pool::master,
                Value::reference(me.as_str()),
            )?;
            Ok(true)
        })
        .await;
    match done {
        Ok(true) => {
            tracing::warn!(old_master = old, new_master = %me, "HA: the master's lease lapsed; this host is the master now")
        }
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "HA: cannot name this host the master"),
    }
}

/// Fences this host: no more writes, its guests' domains destroyed, the daemon restarted once
/// the others have taken its VMs over.
async fn fence(agent: &Arc<Agent>, why: &str) {
    tracing::error!(
        why,
        "HA: this host's liveness lease is lost; fencing: no writes, guests stopped"
    );
    agent.store.fence(&agent.host);
    let hv = agent.hypervisor.clone();
    let domains = crate::lifecycle::blocking(agent, move || hv.list_domains())
        .await
        .unwrap_or_default();
    for d in domains.into_iter().filter(|d| d.domid != 0) {
        let hv = agent.hypervisor.clone();
        let domid = d.domid;
        if let Err(e) = crate::lifecycle::blocking(agent, move || hv.destroy(domid)).await {
            tracing::error!(domid, error = %e, "HA: cannot destroy a domain while fencing");
        }
    }
    tokio::time::sleep(fence_hold(ttl(agent))).await;
    if let Err(e) = crate::fsutil::write_private(&fence_note(agent), b"fenced\n") {
        tracing::warn!(error = %e, "HA: cannot note the fence for the next start");
    }
    tracing::warn!("HA: fenced; the daemon restarts");
    crate::host::agent_process::request(crate::host::agent_process::AfterStop::Restart);
}

/// The note a fenced host leaves for its next start.
fn fence_note(agent: &Agent) -> std::path::PathBuf {
    agent.state_dir.join("ha-fenced")
}

/// At the first beat after a start: a host that was fenced says so (`HA_HOST_WAS_FENCED`,
/// as the reference's host does after the reboot its watchdog forced).
async fn fenced_before(agent: &Agent) {
    let note = fence_note(agent);
    if !note.exists() {
        return;
    }
    if let Some(h) = agent.store.get(class_ids::host, &agent.host) {
        let name = h.get(fields::host::name_label).as_str().unwrap_or("");
        let body = format!("Server '{name}' was fenced: it lost its liveness lease while HA was on");
        super::message(agent, "HA_HOST_WAS_FENCED", 4, Cls::Host, h.uuid().unwrap_or(""), &body).await;
    }
    if let Err(e) = std::fs::remove_file(&note) {
        tracing::warn!(error = %e, "HA: cannot remove the fence note");
    }
}
