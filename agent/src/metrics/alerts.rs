//! The messages the daemon raises about VMs, as the reference raises them after its power
//! operations (`VM_STARTED`, `VM_SHUTDOWN`, `VM_REBOOTED`, `VM_SUSPENDED`, `VM_RESUMED`,
//! `VM_PAUSED`, `VM_UNPAUSED`), and `VM_CRASHED` when a guest crashes.
//!
//! The lifecycle module commits power-state changes to the store; this module follows the
//! store's event log and compares each VM's new state with the last it saw. Which operation
//! caused a change is read from the VM's `current_operations` around it (a shutdown the guest
//! made itself raises nothing, as in the reference). Crashes are seen in the backend's events:
//! the domain's state is read as soon as it changes. A crashed domain the VM keeps
//! (`actions_after_crash = preserve`) is always seen; one the lifecycle destroys or restarts
//! at once may be gone before it is read, and then no message is raised (the lifecycle does
//! not record why a domain stopped).

use super::messages;
use crate::hypervisor::{BackendEvent, DomainState, ShutdownCode};
use crate::schema::enums::{Cls, VmPowerState};
use crate::schema::{class_ids, fields};
use crate::value::Object;
use crate::Agent;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// What the daemon knows of a VM between events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VmSnap {
    /// Its power state's name.
    pub power: String,
    /// Its domain.
    pub domid: i64,
    /// The operations in progress.
    pub ops: BTreeSet<String>,
    /// When its domain started (its metrics' `start_time`).
    pub started: i64,
}

/// A message to raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alert {
    /// Started (from Halted).
    Started,
    /// Resumed (from Suspended).
    Resumed,
    /// Paused by `VM.pause`.
    Paused,
    /// Unpaused by `VM.unpause`.
    Unpaused,
    /// Suspended.
    Suspended,
    /// Shut down by an operation; `forced` for `hard_shutdown`.
    Shutdown {
        /// `hard_shutdown`.
        forced: bool,
    },
    /// Rebooted by an operation; `forced` for `hard_reboot`.
    Rebooted {
        /// `hard_reboot`.
        forced: bool,
    },
}

impl Alert {
    /// The message's name and priority.
    pub fn name_priority(self) -> (&'static str, i64) {
        match self {
            Alert::Started => ("VM_STARTED", 5),
            Alert::Resumed => ("VM_RESUMED", 5),
            Alert::Paused => ("VM_PAUSED", 5),
            Alert::Unpaused => ("VM_UNPAUSED", 5),
            Alert::Suspended => ("VM_SUSPENDED", 5),
            Alert::Shutdown { .. } => ("VM_SHUTDOWN", 5),
            Alert::Rebooted { .. } => ("VM_REBOOTED", 5),
        }
    }

    /// The body, as the reference writes it.
    pub fn body(self, vm_name: &str, vm_uuid: &str, host_name: &str, host_uuid: &str) -> String {
        let vm = format!("VM '{vm_name}' (uuid: {vm_uuid})");
        match self {
            Alert::Started => format!("{vm} started on host: {host_name} (uuid: {host_uuid})"),
            Alert::Resumed => format!("{vm} resumed on host: {host_name} (uuid: {host_uuid})"),
            Alert::Paused => format!("{vm} paused"),
            Alert::Unpaused => format!("{vm} unpaused"),
            Alert::Suspended => format!("{vm} suspended"),
            Alert::Shutdown { forced: false } => format!("{vm} shutdown"),
            Alert::Shutdown { forced: true } => format!("{vm} shutdown forcibly"),
            Alert::Rebooted { forced: false } => format!("{vm} rebooted cleanly"),
            Alert::Rebooted { forced: true } => format!("{vm} rebooted forcibly"),
        }
    }
}

fn is_live(power: &str) -> bool {
    power == VmPowerState::Running.name() || power == VmPowerState::Paused.name()
}

/// The message a VM's change from `old` to `new` calls for, if any.
pub fn classify(old: &VmSnap, new: &VmSnap) -> Option<Alert> {
    let ops: BTreeSet<&str> = old.ops.iter().chain(new.ops.iter()).map(String::as_str).collect();
    let has = |o: &str| ops.contains(o);
    let reboot = has("clean_reboot") || has("hard_reboot");
    let (halted, suspended) = (VmPowerState::Halted.name(), VmPowerState::Suspended.name());
    let (running, paused) = (VmPowerState::Running.name(), VmPowerState::Paused.name());
    if old.power != new.power {
        let (o, n) = (old.power.as_str(), new.power.as_str());
        return if o == halted && is_live(n) {
            Some(if reboot {
                Alert::Rebooted {
                    forced: has("hard_reboot"),
                }
            } else {
                Alert::Started
            })
        } else if o == suspended && is_live(n) {
            Some(Alert::Resumed)
        } else if o == running && n == paused {
            has("pause").then_some(Alert::Paused)
        } else if o == paused && n == running {
            has("unpause").then_some(Alert::Unpaused)
        } else if n == suspended {
            Some(Alert::Suspended)
        } else if n == halted && !reboot {
            if has("hard_shutdown") {
                Some(Alert::Shutdown { forced: true })
            } else if has("clean_shutdown") || has("shutdown") {
                Some(Alert::Shutdown { forced: false })
            } else {
                None
            }
        } else {
            None
        };
    }
    // A reboot that kept the VM running: the operation is over and the domain is new.
    let old_reboot = old.ops.contains("clean_reboot") || old.ops.contains("hard_reboot");
    let new_reboot = new.ops.contains("clean_reboot") || new.ops.contains("hard_reboot");
    if is_live(&new.power) && old_reboot && !new_reboot && (old.domid != new.domid || old.started != new.started) {
        return Some(Alert::Rebooted {
            forced: old.ops.contains("hard_reboot"),
        });
    }
    None
}

fn snap(agent: &Agent, vm: &Object) -> VmSnap {
    let started = vm
        .get(fields::VM::metrics)
        .as_ref_str()
        .and_then(|m| agent.store.get(class_ids::VM_metrics, m))
        .and_then(|m| match m.get(fields::VM_metrics::start_time) {
            crate::value::Value::DateTime(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(0);
    VmSnap {
        power: vm.get(fields::VM::power_state).key_text(),
        domid: vm.get(fields::VM::domid).as_int().unwrap_or(-1),
        ops: vm
            .get(fields::VM::current_operations)
            .as_map()
            .iter()
            .map(|(_, v)| v.key_text())
            .collect(),
        started,
    }
}

async fn raise(agent: &Agent, vm: &Object, alert: Alert) {
    let host = agent.store.get(class_ids::host, &agent.host);
    let (host_name, host_uuid) = host
        .as_ref()
        .map_or(("", ""), |h| (h.str_field("name_label"), h.uuid().unwrap_or("")));
    let uuid = vm.uuid().unwrap_or("");
    let body = alert.body(vm.str_field("name_label"), uuid, host_name, host_uuid);
    let (name, priority) = alert.name_priority();
    if let Err(e) = messages::create(agent, name, priority, Cls::VM, uuid, &body).await {
        tracing::debug!(vm = %vm.reference, error = %e, "raising {name}");
    }
}

/// Follows the store's events for VM changes (and removes the saved databases of VMs and
/// SRs that are destroyed), and the backend's for crashes, for as long as the agent lives.
pub fn start(agent: &Arc<Agent>) {
    let log = agent.store.events();
    let mut rx = log.subscribe();
    let mut seen = log.latest();
    let mut known: HashMap<String, VmSnap> = agent
        .store
        .all(class_ids::VM)
        .iter()
        .map(|v| (v.reference.clone(), snap(agent, v)))
        .collect();
    let weak = Arc::downgrade(agent);
    actix::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(agent) = weak.upgrade() else { break };
            let Some(entries) = agent.store.events().since(seen) else {
                // The log no longer reaches back: start again from what the store holds.
                seen = agent.store.events().latest();
                known = agent
                    .store
                    .all(class_ids::VM)
                    .iter()
                    .map(|v| (v.reference.clone(), snap(&agent, v)))
                    .collect();
                continue;
            };
            let Some(last) = entries.last() else { continue };
            seen = last.id;
            let mut touched = Vec::new();
            for e in &entries {
                if e.class == class_ids::VM {
                    if e.op == crate::events::EventOp::Del {
                        known.remove(&e.reference);
                        super::forget_owner(&agent, &super::sources::Owner::Vm(e.uuid.clone()));
                    } else if !touched.contains(&e.reference) {
                        touched.push(e.reference.clone());
                    }
                } else if e.class == class_ids::SR && e.op == crate::events::EventOp::Del {
                    super::forget_owner(&agent, &super::sources::Owner::Sr(e.uuid.clone()));
                }
            }
            for r in touched {
                let Some(vm) = agent.store.get(class_ids::VM, &r) else {
                    continue;
                };
                let new = snap(&agent, &vm);
                let old = known.insert(r, new.clone());
                if vm.get(fields::VM::is_control_domain) == &crate::value::Value::Bool(true) {
                    continue;
                }
                if let Some(alert) = old.as_ref().and_then(|o| classify(o, &new)) {
                    raise(&agent, &vm, alert).await;
                }
            }
        }
    });
    follow_crashes(agent);
}

/// Raises `VM_CRASHED` when a guest's domain is seen crashed (or stopped by its watchdog).
/// The backend's events are read on a thread of their own, which reads the domain's state
/// at once (the lifecycle module, told of the same change through the VM's actor, destroys
/// or restarts the domain soon after); the message is then made on the agent's runtime.
fn follow_crashes(agent: &Arc<Agent>) {
    let rx = match agent.hypervisor.subscribe() {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(error = %e, "no backend events: guest crashes will raise no message");
            return;
        }
    };
    let (tx, mut crashed) = tokio::sync::mpsc::unbounded_channel::<String>();
    let weak = Arc::downgrade(agent);
    let watcher = std::thread::Builder::new().name("crash-watch".into()).spawn(move || {
        let mut reported: HashSet<(String, u32)> = HashSet::new();
        while let Ok(ev) = rx.recv() {
            let BackendEvent::DomainChanged(domid) = ev else {
                continue;
            };
            let Some(agent) = weak.upgrade() else { break };
            let Some(vm) = agent.domids.lock().get(&domid).cloned() else {
                continue;
            };
            let Ok(info) = agent.hypervisor.domain_info(domid) else {
                continue;
            };
            if !matches!(
                info.state,
                DomainState::Shutdown(ShutdownCode::Crash | ShutdownCode::Watchdog)
            ) {
                continue;
            }
            if reported.len() > 4096 {
                reported.clear();
            }
            if reported.insert((vm.clone(), domid)) && tx.send(vm).is_err() {
                break;
            }
        }
    });
    if let Err(e) = watcher {
        tracing::warn!(error = %e, "no crash watcher: guest crashes will raise no message");
        return;
    }
    let weak = Arc::downgrade(agent);
    actix::spawn(async move {
        while let Some(vm) = crashed.recv().await {
            let Some(agent) = weak.upgrade() else { break };
            let Some(rec) = agent.store.get(class_ids::VM, &vm) else {
                continue;
            };
            let uuid = rec.uuid().unwrap_or("");
            let body = format!("VM '{}' (uuid: {uuid}) crashed", rec.str_field("name_label"));
            if let Err(e) = messages::create(&agent, "VM_CRASHED", 2, Cls::VM, uuid, &body).await {
                tracing::debug!(vm, error = %e, "raising VM_CRASHED");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(power: &str, domid: i64, ops: &[&str], started: i64) -> VmSnap {
        VmSnap {
            power: power.into(),
            domid,
            ops: ops.iter().map(|o| (*o).to_owned()).collect(),
            started,
        }
    }

    #[test]
    fn power_changes_and_their_messages() {
        let c = |a: VmSnap, b: VmSnap| classify(&a, &b);
        assert_eq!(
            c(s("Halted", -1, &["start"], 0), s("Running", 3, &["start"], 10)),
            Some(Alert::Started)
        );
        assert_eq!(
            c(s("Halted", -1, &[], 0), s("Paused", 3, &[], 10)),
            Some(Alert::Started)
        );
        assert_eq!(
            c(s("Suspended", -1, &["resume"], 0), s("Running", 4, &[], 10)),
            Some(Alert::Resumed)
        );
        assert_eq!(
            c(s("Running", 3, &["pause"], 0), s("Paused", 3, &["pause"], 0)),
            Some(Alert::Paused)
        );
        assert_eq!(
            c(s("Paused", 3, &["unpause"], 0), s("Running", 3, &[], 0)),
            Some(Alert::Unpaused)
        );
        assert_eq!(c(s("Running", 3, &[], 0), s("Paused", 3, &[], 0)), None);
        assert_eq!(
            c(s("Running", 3, &["suspend"], 0), s("Suspended", -1, &[], 0)),
            Some(Alert::Suspended)
        );
        assert_eq!(
            c(
                s("Running", 3, &["clean_shutdown"], 0),
                s("Halted", -1, &["clean_shutdown"], 0)
            ),
            Some(Alert::Shutdown { forced: false })
        );
        assert_eq!(
            c(s("Running", 3, &["hard_shutdown"], 0), s("Halted", -1, &[], 0)),
            Some(Alert::Shutdown { forced: true })
        );
        assert_eq!(
            c(s("Suspended", -1, &["shutdown"], 0), s("Halted", -1, &[], 0)),
            Some(Alert::Shutdown { forced: false })
        );
        // The guest powered itself off: nothing, as in the reference.
        assert_eq!(c(s("Running", 3, &[], 0), s("Halted", -1, &[], 0)), None);
        // A reboot through Halted: nothing on the way down, VM_REBOOTED on the way up.
        assert_eq!(
            c(
                s("Running", 3, &["clean_reboot"], 0),
                s("Halted", -1, &["clean_reboot"], 0)
            ),
            None
        );
        assert_eq!(
            c(
                s("Halted", -1, &["hard_reboot"], 0),
                s("Running", 5, &["hard_reboot"], 9)
            ),
            Some(Alert::Rebooted { forced: true })
        );
        // A reboot in place: the operation ends on a new domain or start time.
        assert_eq!(
            c(s("Running", 3, &["clean_reboot"], 1), s("Running", 3, &[], 2)),
            Some(Alert::Rebooted { forced: false })
        );
        // A reboot that failed: nothing.
        assert_eq!(c(s("Running", 3, &["clean_reboot"], 1), s("Running", 3, &[], 1)), None);
        // Other changes: nothing.
        assert_eq!(
            c(s("Running", 3, &[], 1), s("Running", 3, &["clean_shutdown"], 1)),
            None
        );
    }

    #[test]
    fn bodies_are_the_references() {
        assert_eq!(
            Alert::Started.body("web", "u1", "h", "hu"),
            "VM 'web' (uuid: u1) started on host: h (uuid: hu)"
        );
        assert_eq!(
            Alert::Shutdown { forced: true }.body("web", "u1", "h", "hu"),
            "VM 'web' (uuid: u1) shutdown forcibly"
        );
        assert_eq!(Alert::Paused.name_priority(), ("VM_PAUSED", 5));
    }

    #[actix::test]
    async fn lifecycle_messages_are_raised_through_the_store() {
        use crate::storage::tests::env;
        use serde_json::json;
        let e = env().await;
        let vm = crate::metrics::tests::running_vm(&e, "alerted").await;
        e.ok("VM.pause", vec![json!(vm)]).await;
        e.ok("VM.unpause", vec![json!(vm)]).await;
        e.ok("VM.hard_shutdown", vec![json!(vm)]).await;
        let uuid = e.agent.uuid_of(class_ids::VM, &vm).unwrap();
        let mut names = Vec::new();
        for _ in 0..100 {
            let mut msgs: Vec<Arc<Object>> = e
                .agent
                .store
                .all(class_ids::message)
                .into_iter()
                .filter(|m| m.str_field("obj_uuid") == uuid)
                .collect();
            msgs.sort_by_key(|m| m.generation);
            names = msgs.iter().map(|m| m.str_field("name").to_owned()).collect();
            if names.len() >= 4 {
                assert!(msgs[0].str_field("body").starts_with("VM 'alerted' (uuid: "));
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(names, ["VM_STARTED", "VM_PAUSED", "VM_UNPAUSED", "VM_SHUTDOWN"]);
    }

    #[actix::test]
    async fn a_crashed_guest_raises_vm_crashed() {
        use crate::storage::tests::env;
        let e = env().await;
        let vm = crate::metrics::tests::running_vm(&e, "crashing").await;
        // Kept crashed, the domain's state stays readable; with `destroy` or `restart` the
        // lifecycle may take the domain away before the watcher reads it (see the module's
        // documentation).
        e.ok(
            "VM.set_actions_after_crash",
            vec![serde_json::json!(vm), serde_json::json!("preserve")],
        )
        .await;
        let rec = e.agent.store.get(class_ids::VM, &vm).unwrap();
        let domid = rec.get(fields::VM::domid).as_int().unwrap() as u32;
        let uuid = rec.uuid().unwrap().to_owned();
        e.agent
            .hypervisor
            .guest_control()
            .unwrap()
            .guest_shutdown(domid, ShutdownCode::Crash)
            .unwrap();
        let mut found = None;
        for _ in 0..200 {
            found = e
                .agent
                .store
                .all(class_ids::message)
                .into_iter()
                .find(|m| m.str_field("name") == "VM_CRASHED" && m.str_field("obj_uuid") == uuid);
            if found.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let m = found.expect("no VM_CRASHED");
        assert_eq!(m.get(fields::message::priority), &crate::value::Value::Int(2));
        assert_eq!(m.str_field("body"), format!("VM 'crashing' (uuid: {uuid}) crashed"));
    }
}
