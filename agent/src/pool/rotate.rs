//! `pool.rotate_secret`: a new pool secret on every host, in the three phases
//! [`super::secret`] describes (accept the new one everywhere, send it everywhere, drop the old
//! one everywhere). `pool.is_psr_pending` is true while it runs; a rotation cut short (a host
//! unreachable) leaves it true, refuses membership changes with `POOL_SECRET_ROTATION_PENDING`,
//! and is finished — with the same new secret — by calling `pool.rotate_secret` again.

use super::remote::Remote;
use super::secret;
use crate::call::Call;
use crate::error::ApiError;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use serde_json::json;
use std::sync::Arc;

fn internal(e: secret::SecretError) -> ApiError {
    ApiError::internal(e)
}

/// Whether a boolean field of the pool is true.
fn pool_flag(agent: &Agent, field: crate::schema::FieldId) -> bool {
    agent
        .store
        .get(class_ids::pool, &agent.pool_ref())
        .is_some_and(|p| p.get(field) == &Value::Bool(true))
}

/// `HA_IS_ENABLED` when the pool runs high availability.
pub fn refuse_with_ha(agent: &Agent) -> Result<(), ApiError> {
    if super::ha::enabled(agent) {
        return Err(ApiError::HaIsEnabled {});
    }
    Ok(())
}

/// `POOL_SECRET_ROTATION_PENDING` while a rotation is unfinished (membership waits for it).
pub fn refuse_while_pending(agent: &Agent) -> Result<(), ApiError> {
    if pool_flag(agent, fields::pool::is_psr_pending) {
        return Err(ApiError::PoolSecretRotationPending {});
    }
    Ok(())
}

async fn set_pending(agent: &Agent, value: bool) -> Result<(), ApiError> {
    let pool = agent.pool_ref();
    agent
        .store
        .write(|tx| {
            crate::objects::set_field(
                tx,
                class_ids::pool,
                &pool,
                fields::pool::is_psr_pending,
                Value::Bool(value),
            )
        })
        .await
}

/// The three phases, as private steps on the members and as file changes here.
#[derive(Clone, Copy, Debug)]
enum Phase {
    Accept,
    Send,
    DropOld,
}

impl Phase {
    fn step(self) -> &'static str {
        match self {
            Phase::Accept => "accept_new_secret",
            Phase::Send => "send_new_secret",
            Phase::DropOld => "drop_old_secret",
        }
    }
}

/// Runs `phase` here (the master).
fn local(agent: &Agent, phase: Phase, new: &str) -> Result<(), ApiError> {
    let dir = &agent.state_dir;
    match phase {
        Phase::Accept => secret::stage(dir, new),
        Phase::Send => secret::send_new(dir, new),
        Phase::DropOld => secret::drop_old(dir),
    }
    .map_err(internal)
}

/// Runs `phase` on a member, as its private step does.
pub fn on_member(agent: &Agent, step: &str, new: &str) -> Option<Result<Value, ApiError>> {
    let phase = [Phase::Accept, Phase::Send, Phase::DropOld]
        .into_iter()
        .find(|p| p.step() == step)?;
    Some(local(agent, phase, new).map(|()| Value::None))
}

/// `pool.rotate_secret` on the master.
pub async fn rotate_secret(agent: &Arc<Agent>, c: &Call) -> Result<Value, ApiError> {
    super::require_master(agent)?;
    refuse_with_ha(agent)?;
    let dir = &agent.state_dir;
    secret::ensure(dir).map_err(internal)?;
    let new = secret::rotation_begin(dir).map_err(internal)?;
    set_pending(agent, true).await?;
    let members: Vec<String> = agent
        .store
        .all(class_ids::host)
        .into_iter()
        .map(|h| h.reference.clone())
        .filter(|h| *h != agent.host)
        .collect();
    let session = c.session_ref().to_owned();
    for phase in [Phase::Accept, Phase::Send, Phase::DropOld] {
        // The master accepts and sends first, and drops the old secret last.
        if !matches!(phase, Phase::DropOld) {
            local(agent, phase, &new)?;
        }
        for host in &members {
            // A connection per step: it carries the secret this host sends now.
            let remote = Remote::to_host(agent, host)?;
            remote
                .private(phase.step(), &session, &[json!(new)])
                .await
                .map_err(|e| {
                    tracing::warn!(host = %host, ?phase, error = %e, "pool secret rotation cut short");
                    match e {
                        super::remote::RemoteError::Failure(d) => super::remote::from_wire(&d),
                        _ => ApiError::CannotContactHost { host: host.clone() },
                    }
                })?;
        }
        if matches!(phase, Phase::DropOld) {
            local(agent, phase, &new)?;
        }
    }
    secret::rotation_end(dir).map_err(internal)?;
    set_pending(agent, false).await?;
    tracing::info!(hosts = members.len() + 1, "pool secret rotated");
    Ok(Value::None)
}
