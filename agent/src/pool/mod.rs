//! Pools (issue 19): membership (`pool.join`, `join_force`, `eject`, `designate_new_master`)
//! and the master's role. The pool's database is etcd (`store/`); this module moves a host's
//! database into it ([`join`]), says which host is the master, and carries the host-to-host
//! calls ([`remote`]).
//!
//! Host-to-host steps that are no XenAPI message travel as private XML-RPC methods named
//! `xapid.pool.*` (never listed by `system.listMethods`), with a session of the host they
//! are sent to: [`private_call`].

mod carry;
pub mod forward;
mod join;
pub mod placement;
pub mod remote;

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
    vec![
        entry!(class_ids::pool, "join", |agent, _ctx, c| join::join(&agent, &c, false)
            .await),
        entry!(class_ids::pool, "join_force", |agent, _ctx, c| join::join(
            &agent, &c, true
        )
        .await),
        entry!(class_ids::pool, "eject", |agent, _ctx, c| join::eject(&agent, &c).await),
    ]
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
    let address = master(agent)
        .and_then(|m| agent.store.get(class_ids::host, &m))
        .and_then(|h| h.get(fields::host::address).as_str().map(str::to_owned))
        .unwrap_or_default();
    Err(ApiError::HostIsSlave {
        master_address: address,
    })
}

/// The prefix of the private host-to-host methods.
pub const PRIVATE_PREFIX: &str = "xapid.pool.";

/// Runs a private host-to-host method (`xapid.pool.*`); `None` for any other method name.
pub async fn private_call(
    agent: &Arc<Agent>,
    _ctx: &CallCtx,
    method: &str,
    params: &[Json],
) -> Option<Result<Value, ApiError>> {
    let name = method.strip_prefix(PRIVATE_PREFIX)?;
    let session = params.first().and_then(Json::as_str).unwrap_or("");
    if let Err(e) = agent.sessions.validate(&agent.store, session) {
        return Some(Err(e));
    }
    let arg = |i: usize| params.get(i).and_then(Json::as_str).unwrap_or("").to_owned();
    Some(match name {
        "prepare_join" => join::prepare_join(agent, &arg(1), &arg(2)).await,
        "leave" => join::leave(agent).await,
        _ => Err(ApiError::MessageMethodUnknown {
            method: method.to_owned(),
        }),
    })
}
