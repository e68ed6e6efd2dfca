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

/// At start-up, makes the host's devices match the records again, as the reference's start
/// of day does: after a reboot (or on a new network backend) every bridge, VLAN, bond and
/// tunnel and every address is gone while this host's PIFs say they are attached. Each PIF
/// recorded attached is brought up again — NICs first, then bonds, VLANs and tunnels, which
/// sit on them. One that cannot be is logged and recorded detached, as it is.
///
/// A management PIF configured by DHCP is left as the host has it: its address comes from
/// the host's own DHCP client (the daemon runs none), and moving its NIC into a bridge would
/// take that address away and cut the host off (the first start records the host's first
/// NIC so, before anything was configured through the API).
pub async fn at_start(agent: &Agent) {
    use crate::schema::enums::IpConfigurationMode;
    let hosts_own = |p: &crate::value::Object| {
        p.get(fields::PIF::management).as_bool() == Some(true)
            && IpConfigurationMode::parse(topology::text(p, fields::PIF::ip_configuration_mode))
                == Some(IpConfigurationMode::DHCP)
    };
    let mut attached: Vec<_> = agent
        .store
        .get(class_ids::host, &agent.host)
        .map(|h| topology::refs(&h, fields::host::PIFs))
        .unwrap_or_default()
        .iter()
        .filter_map(|p| agent.store.get(class_ids::PIF, p))
        .filter(|p| p.get(fields::PIF::currently_attached).as_bool() == Some(true) && !hosts_own(p))
        .collect();
    let layer = |p: &crate::value::Object| match kind(p) {
        PifKind::Physical => 0,
        PifKind::BondMaster(_) => 1,
        PifKind::VlanUntagged(_) => 2,
        PifKind::TunnelAccess(_) => 3,
        PifKind::Other => 4,
    };
    attached.sort_by_key(|p| layer(p));
    let backend = &agent.network.backend;
    let mut up = 0usize;
    for p in &attached {
        let done = match topology::plan(agent, p) {
            Ok(plan) => backend.bring_up(&plan).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match done {
            Ok(()) => up += 1,
            Err(e) => {
                tracing::warn!(pif = %p.reference, error = %e, "a PIF recorded attached cannot be brought up at start: recorded detached");
                let detached = agent
                    .store
                    .write(|tx| {
                        set_field(
                            tx,
                            class_ids::PIF,
                            &p.reference,
                            fields::PIF::currently_attached,
                            Value::Bool(false),
                        )
                    })
                    .await;
                if let Err(e) = detached {
                    tracing::warn!(pif = %p.reference, error = %e, "recording the PIF detached failed");
                }
            }
        }
    }
    if !attached.is_empty() {
        tracing::info!(
            backend = backend.name(),
            attached = attached.len(),
            up,
            "the host's attached PIFs brought up again"
        );
    }
}
