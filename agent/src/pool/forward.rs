//! Forwarding: a call that must run on another host of the pool is carried out by that host's
//! xapid. One table says, per message, which host must run it ([`RULES`]); dispatch asks
//! [`target`] before running any call and, for another host, sends it there ([`forward`]) with
//! the caller's session (sessions are in the pool database, valid on every host), over HTTPS
//! to that host's pinned certificate with the pool secret, which tells the host to run the
//! call itself rather than send it on (or over HTTP where the host serves no HTTPS).

use super::remote::Remote;
use crate::call::Call;
use crate::error::ApiError;
use crate::schema::{class_ids, fields, ClassId, Ty};
use crate::value::{from_json, Value};
use crate::Agent;
use serde_json::Value as Json;

/// Which host must run a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// The host the VM in this argument (after the session) is resident on.
    ResidentOf(usize),
    /// The host in this argument.
    Host(usize),
    /// The host placement picks for the VM in this argument ([`super::placement::pick`]).
    Placement(usize),
    /// A host that has the SR of the VDI in this argument plugged (this one if it has): the
    /// argument is a VDI, or a VDI record naming its `SR` (`VDI.create`).
    SrOf(usize),
}

/// The messages that run on a particular host. `host.*` messages whose first argument is a
/// host run on that host (see [`rule`]), except those [`HOST_LOCAL`] lists.
pub const RULES: &[(ClassId, &str, Runs)] = &[
    (class_ids::VM, "start", Runs::Placement(0)),
    (class_ids::VM, "start_on", Runs::Host(1)),
    (class_ids::VM, "resume", Runs::Placement(0)),
    (class_ids::VM, "resume_on", Runs::Host(1)),
    (class_ids::VM, "clean_shutdown", Runs::ResidentOf(0)),
    (class_ids::VM, "hard_shutdown", Runs::ResidentOf(0)),
    (class_ids::VM, "shutdown", Runs::ResidentOf(0)),
    (class_ids::VM, "clean_reboot", Runs::ResidentOf(0)),
    (class_ids::VM, "hard_reboot", Runs::ResidentOf(0)),
    (class_ids::VM, "suspend", Runs::ResidentOf(0)),
    (class_ids::VM, "pool_migrate", Runs::ResidentOf(0)),
    (class_ids::VM, "pause", Runs::ResidentOf(0)),
    (class_ids::VM, "unpause", Runs::ResidentOf(0)),
    (class_ids::VM, "send_sysrq", Runs::ResidentOf(0)),
    (class_ids::VM, "send_trigger", Runs::ResidentOf(0)),
    (class_ids::VM, "set_VCPUs_number_live", Runs::ResidentOf(0)),
    (class_ids::VM, "set_memory_dynamic_range", Runs::ResidentOf(0)),
    (class_ids::VM, "set_memory_target_live", Runs::ResidentOf(0)),
    (class_ids::VM, "assert_can_boot_here", Runs::Host(1)),
    (class_ids::VM, "migrate_send", Runs::ResidentOf(0)),
    (class_ids::SR, "create", Runs::Host(0)),
    (class_ids::VDI, "create", Runs::SrOf(0)),
    (class_ids::VDI, "destroy", Runs::SrOf(0)),
];

/// `host.*` messages about a host that the host receiving them carries out (records kept in
/// the pool database, or a host that may be down).
pub const HOST_LOCAL: &[&str] = &[
    "destroy",
    "declare_dead",
    "power_on",
    "set_power_on_mode",
    "get_record",
    "get_by_uuid",
];

/// The rule for a message, if it runs on a particular host.
pub fn rule(class: ClassId, message: &crate::schema::MessageDef) -> Option<Runs> {
    if let Some((_, _, r)) = RULES.iter().find(|(c, m, _)| *c == class && *m == message.name) {
        return Some(*r);
    }
    if class != class_ids::host || message.implicit || HOST_LOCAL.contains(&message.name) {
        return None;
    }
    let first = message.params.get(usize::from(message.takes_session()))?;
    matches!(first.ty, Ty::Ref(c) if *c == class_ids::host).then_some(Runs::Host(0))
}

/// The other host that must run `c`, if any (never this one; none on a host alone).
pub fn target(agent: &Agent, c: &Call) -> Option<String> {
    if !agent.store.is_pooled() {
        return None;
    }
    let arg_ref = |i: usize| c.args.get(i).and_then(|v| v.as_ref_str().map(str::to_owned));
    let host = match rule(c.class, c.message)? {
        // A VM call naming a host that is not live runs here: its checks answer HOST_OFFLINE.
        Runs::Host(i) if c.class == class_ids::VM => arg_ref(i).filter(|h| super::placement::is_live(agent, h)),
        Runs::Host(i) => arg_ref(i),
        Runs::ResidentOf(i) => arg_ref(i)
            .and_then(|vm| agent.store.get(class_ids::VM, &vm))
            .and_then(|vm| vm.get(fields::VM::resident_on).as_ref_str().map(str::to_owned)),
        Runs::Placement(i) => arg_ref(i)
            .and_then(|vm| agent.store.get(class_ids::VM, &vm))
            .and_then(|vm| super::placement::pick(agent, &vm)),
        Runs::SrOf(i) => {
            let sr = match c.args.get(i) {
                Some(Value::Record(r)) => r.get(fields::VDI::SR).as_ref_str().map(str::to_owned),
                Some(v) => v
                    .as_ref_str()
                    .and_then(|vdi| agent.store.get(class_ids::VDI, vdi))
                    .and_then(|vdi| vdi.get(fields::VDI::SR).as_ref_str().map(str::to_owned)),
                None => None,
            }?;
            host_with_sr(agent, &sr)
        }
    }?;
    (host != agent.host && agent.store.get(class_ids::host, &host).is_some()).then_some(host)
}

/// A live host on which `sr` is plugged: this host when it is one of them, else the first
/// other (`None` when none is: the call runs here and says why).
pub fn host_with_sr(agent: &Agent, sr: &str) -> Option<String> {
    let hosts: Vec<String> = agent
        .store
        .all(class_ids::PBD)
        .iter()
        .filter(|p| p.get(fields::PBD::SR).as_ref_str() == Some(sr))
        .filter(|p| p.get(fields::PBD::currently_attached) == &Value::Bool(true))
        .filter_map(|p| p.get(fields::PBD::host).as_ref_str().map(str::to_owned))
        .collect();
    if hosts.contains(&agent.host) {
        return Some(agent.host.clone());
    }
    hosts.into_iter().find(|h| super::placement::is_live(agent, h))
}

/// Whether which host runs `c` depends on this host's view of the pool database (the VM's
/// `resident_on`, or placement): dispatch then waits for the view to hold every committed
/// change before choosing ([`target`]), or a view left behind (its etcd watch broken for a
/// while) would run a VM's call on a host that no longer has its domain.
pub fn depends_on_view(agent: &Agent, c: &Call) -> bool {
    agent.store.is_pooled() && matches!(rule(c.class, c.message), Some(Runs::ResidentOf(_) | Runs::Placement(_)))
}

/// The host other than this one the VM of a `ResidentOf` call is resident on, by this host's
/// view. Asked again once the call's mark is committed (the mark's write compares the VM's
/// record, so the view then holds its latest version): a call that came here while the VM was
/// still elsewhere must not touch this host's domains.
pub fn resident_elsewhere(agent: &Agent, c: &Call) -> Option<String> {
    match rule(c.class, c.message)? {
        Runs::ResidentOf(_) => target(agent, c),
        _ => None,
    }
}

/// Sends `method` with the caller's own `params` to `host` and answers with its reply.
pub async fn forward(agent: &Agent, host: &str, c: &Call, method: &str, params: &[Json]) -> Result<Value, ApiError> {
    let remote = Remote::to_host(agent, host)?;
    tracing::debug!(
        method,
        host,
        tls = remote.is_tls(),
        "forwarding to the host that must run it"
    );
    let reply = remote.call(method, params).await.map_err(|e| match e {
        super::remote::RemoteError::Connect(..) | super::remote::RemoteError::Http(..) => {
            ApiError::CannotContactHost { host: host.to_owned() }
        }
        other => other.into_api(),
    })?;
    let json = reply.to_json();
    if method.starts_with("Async.") {
        return Ok(json.as_str().map(Value::reference).unwrap_or(Value::None));
    }
    Ok(from_json(&json, c.message.result).unwrap_or(Value::None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::method;

    #[test]
    fn the_table_names_messages_that_exist() {
        for (class, name, _) in RULES {
            assert!(class.message_by_name(name).is_some(), "{}.{name}", class.name());
        }
    }

    #[test]
    fn host_messages_about_a_host_run_on_it() {
        let m = |n: &str| method(n).unwrap();
        assert_eq!(rule(class_ids::host, m("host.reboot").message), Some(Runs::Host(0)));
        assert_eq!(rule(class_ids::host, m("host.get_name_label").message), None);
        assert_eq!(rule(class_ids::host, m("host.destroy").message), None);
        assert_eq!(
            rule(class_ids::VM, m("VM.hard_shutdown").message),
            Some(Runs::ResidentOf(0))
        );
        assert_eq!(rule(class_ids::VM, m("VM.get_power_state").message), None);
    }
}
