//! Pools (issue 19): membership (`pool.join`, `join_force`, `eject`, `designate_new_master`)
//! and the master's role. The pool's database is etcd (`store/`); this module moves a host's
//! database into it ([`join`]), says which host is the master, and carries the host-to-host
//! calls ([`remote`]).
//!
//! Host-to-host steps that are no XenAPI message travel as private XML-RPC methods named
//! `xapid.pool.*` (never listed by `system.listMethods`), proven by the pool secret
//! ([`secret`]) over HTTPS to the pinned certificate of the host they are sent to, or by a
//! session where that host serves no HTTPS: [`private_call`].

mod carry;
pub(crate) mod dead_host;
mod evacuate;
pub mod forward;
pub mod ha;
mod join;
pub mod liveness;
pub mod maintenance;
mod pinned_tls;
pub mod placement;
pub mod remote;
pub(crate) mod rotate;
pub mod secret;

use crate::call::{CallCtx, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use serde_json::Value as Json;
use std::sync::Arc;

/// The `pool` messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    let mut v = maintenance::behaviour();
    v.extend(evacuate::behaviour());
    v.extend(ha::behaviour());
    v.extend([
        entry!(class_ids::pool, "join", |agent, _ctx, c| join::join(&agent, &c, false)
            .await),
        entry!(class_ids::pool, "join_force", |agent, _ctx, c| join::join(
            &agent, &c, true
        )
        .await),
        entry!(class_ids::pool, "eject", |agent, _ctx, c| join::eject(&agent, &c).await),
        entry!(class_ids::pool, "designate_new_master", |agent, _ctx, c| {
            require_master(&agent)?;
            // With HA on, the master is whoever leads the election (pool/ha/runtime.rs).
            rotate::refuse_with_ha(&agent)?;
            let host = c.ref_arg(0)?.to_owned();
            set_master(&agent, &host).await
        }),
        entry!(class_ids::pool, "emergency_transition_to_master", |agent, _ctx, _c| {
            let me = agent.host.clone();
            set_master(&agent, &me).await
        }),
        entry!(class_ids::pool, "emergency_reset_master", |agent, _ctx, c| {
            let address = c.str_arg(0);
            let host = agent
                .store
                .all(class_ids::host)
                .into_iter()
                .find(|h| h.get(fields::host::address).as_str() == Some(address))
                .ok_or_else(|| ApiError::invalid_value("master_address", address))?;
            set_master(&agent, &host.reference).await
        }),
        entry!(class_ids::pool, "recover_slaves", |agent, _ctx, _c| {
            require_master(&agent)?;
            // Every member follows the pool database, which names this host the master:
            // each is recovered as soon as it reads it.
            let others = agent
                .store
                .all(class_ids::host)
                .into_iter()
                .filter(|h| h.reference != agent.host)
                .map(|h| Value::reference(h.reference.as_str()))
                .collect();
            Ok(Value::set(others))
        }),
        entry!(class_ids::pool, "rotate_secret", |agent, _ctx, c| {
            rotate::rotate_secret(&agent, &c).await
        }),
        entry!(class_ids::host, "destroy", |agent, _ctx, c| dead_host::destroy(
            &agent, &c
        )
        .await),
        entry!(class_ids::host, "declare_dead", |agent, _ctx, c| {
            dead_host::declare_dead(&agent, &c).await
        }),
        entry!(class_ids::pool, "sync_database", |agent, _ctx, _c| {
            // Every write is committed by the etcd members' majority before it is
            // acknowledged: there is nothing left to push to the members.
            let _ = &agent;
            Ok(Value::None)
        }),
    ]);
    v
}

/// Names `host` the pool's master in the pool database: every host reads its role from there,
/// so password logins go to `host` from now on (`HOST_IS_SLAVE` elsewhere names it).
async fn set_master(agent: &Agent, host: &str) -> Result<Value, ApiError> {
    if agent.store.get(class_ids::host, host).is_none() {
        return Err(ApiError::handle_invalid("host", host));
    }
    let pool = agent.pool_ref();
    agent
        .store
        .write(|tx| crate::objects::set_field(tx, class_ids::pool, &pool, fields::pool::master, Value::reference(host)))
        .await?;
    Ok(Value::None)
}

/// The pool's master: its host ref.
pub fn master(agent: &Agent) -> Option<String> {
    let pool = agent.store.get(class_ids::pool, &agent.pool_ref())?;
    pool.get(fields::pool::master).as_ref_str().map(str::to_owned)
}

/// Whether this host is the pool's master (a host alone always is).
pub fn is_master(agent: &Agent) -> bool {
    !agent.store.is_pooled() || master(agent).is_none_or(|m| m == agent.host)
}

/// `HOST_IS_SLAVE [master address]` on a member, for what only the master does.
pub fn require_master(agent: &Agent) -> Result<(), ApiError> {
    if is_master(agent) {
        return Ok(());
    }
    Err(ApiError::HostIsSlave {
        master_address: master_address(agent).unwrap_or_default(),
    })
}

/// The address of the pool's master.
pub fn master_address(agent: &Agent) -> Option<String> {
    master(agent)
        .and_then(|m| agent.store.get(class_ids::host, &m))
        .and_then(|h| h.get(fields::host::address).as_str().map(str::to_owned))
}

/// The prefix of the private host-to-host methods.
pub const PRIVATE_PREFIX: &str = "xapid.pool.";

/// Runs a private host-to-host method (`xapid.pool.*`); `None` for any other method name.
/// Its first parameter proves the caller is of the pool: the pool secret (current, or the one
/// a rotation is bringing in), or a session of the pool database (`prepare_join` is called by
/// the joining host with a session it opened on the master with the user's credentials).
pub async fn private_call(
    agent: &Arc<Agent>,
    _ctx: &CallCtx,
    method: &str,
    params: &[Json],
) -> Option<Result<Value, ApiError>> {
    let name = method.strip_prefix(PRIVATE_PREFIX)?;
    let credential = params.first().and_then(Json::as_str).unwrap_or("");
    if !secret::accepts(&agent.state_dir, credential) {
        if let Err(e) = agent.sessions.validate(&agent.store, credential) {
            return Some(Err(e));
        }
    }
    let arg = |i: usize| params.get(i).and_then(Json::as_str).unwrap_or("").to_owned();
    if let Some(out) = rotate::on_member(agent, name, &arg(1)) {
        return Some(out);
    }
    Some(match name {
        "prepare_join" => join::prepare_join(agent, &arg(1), &arg(2)).await,
        "leave" => join::leave(agent).await,
        "ping" => Ok(Value::None),
        _ => Err(ApiError::MessageMethodUnknown {
            method: method.to_owned(),
        }),
    })
}
