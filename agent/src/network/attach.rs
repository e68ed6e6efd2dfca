//! Bringing a PIF up or down: the backend makes the host's devices match, then the PIF's
//! `currently_attached` (and its bond members') records it.

use super::topology::{self, kind, PifKind};
use crate::error::ApiError;
use crate::objects::set_field;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;

/// Serialises the network messages that change the host's devices, as the reference's local
/// lock does: two bonds made at once would otherwise pick the same device name.
pub static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Brings `pif` up on the host and marks it attached; a bond master's members are then
/// carried by the bond and marked detached.
pub async fn bring_up(agent: &Agent, pif: &str) -> Result<(), ApiError> {
    apply(agent, pif, true).await
}

/// Takes `pif` down on the host and marks it detached.
pub async fn bring_down(agent: &Agent, pif: &str) -> Result<(), ApiError> {
    apply(agent, pif, false).await
}

/// Makes the host's devices for `pif` match `up`, then records `currently_attached` (a bond
/// master brought up detaches its members' records).
async fn apply(agent: &Agent, pif: &str, up: bool) -> Result<(), ApiError> {
    let p = topology::get(agent, class_ids::PIF, pif)?;
    let plan = topology::plan(agent, &p)?;
    let backend = &agent.network.backend;
    let done = if up {
        backend.bring_up(&plan).await
    } else {
        backend.bring_down(&plan).await
    };
    done.map_err(|e| ApiError::pif_configuration(pif, &e))?;
    let members = match kind(&p) {
        PifKind::BondMaster(b) if up => agent
            .store
            .get(class_ids::Bond, &b)
            .map(|b| topology::refs(&b, fields::Bond::slaves))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    agent
        .store
        .write(|tx| {
            set_field(
                tx,
                class_ids::PIF,
                pif,
                fields::PIF::currently_attached,
                Value::Bool(up),
            )?;
            for m in &members {
                set_field(
                    tx,
                    class_ids::PIF,
                    m,
                    fields::PIF::currently_attached,
                    Value::Bool(false),
                )?;
            }
            Ok(())
        })
        .await
}

/// Brings `pif` up again if it is attached (after its configuration changed).
pub async fn refresh(agent: &Agent, pif: &str) -> Result<(), ApiError> {
    let attached = topology::get(agent, class_ids::PIF, pif)?
        .get(fields::PIF::currently_attached)
        .as_bool()
        == Some(true);
    if attached {
        bring_up(agent, pif).await?;
    }
    Ok(())
}
