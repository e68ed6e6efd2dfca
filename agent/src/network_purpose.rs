//! `network.add_purpose` / `network.remove_purpose`: the purposes that let the NBD server
//! listen on a network (`nbd`: TLS required; `insecure_nbd`: plain allowed). As the
//! reference: the network must be managed, and `nbd` and `insecure_nbd` never coexist in the
//! pool (`NETWORK_INCOMPATIBLE_PURPOSES [new, conflicting]`).

use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::objects::set_field;
use crate::schema::enums::NetworkPurpose;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use std::sync::Arc;

/// The entries of this module.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::network, "add_purpose", |agent, _, c| {
            let purpose = purpose_arg(&c.arg(1))?;
            add_purpose(&agent, c.ref_arg(0)?, purpose).await.map(|()| Value::None)
        }),
        entry!(class_ids::network, "remove_purpose", |agent, _, c| {
            let purpose = purpose_arg(&c.arg(1))?;
            remove_purpose(&agent, c.ref_arg(0)?, purpose)
                .await
                .map(|()| Value::None)
        }),
    ]
}

fn purpose_arg(v: &Value) -> Result<NetworkPurpose, ApiError> {
    NetworkPurpose::ALL
        .iter()
        .copied()
        .find(|p| *v == *p)
        .ok_or_else(|| ApiError::field_type("value"))
}

fn purposes(agent: &Agent, net: &str) -> Result<Vec<Value>, ApiError> {
    let obj = agent
        .store
        .get(class_ids::network, net)
        .ok_or_else(|| ApiError::handle_invalid("network", net))?;
    if obj.get(fields::network::managed) == &Value::Bool(false) {
        return Err(ApiError::NetworkUnmanaged {
            network: net.to_owned(),
        });
    }
    Ok(obj.get(fields::network::purpose).as_set().to_vec())
}

async fn add_purpose(agent: &Arc<Agent>, net: &str, purpose: NetworkPurpose) -> Result<(), ApiError> {
    let mut current = purposes(agent, net)?;
    if current.iter().any(|p| *p == purpose) {
        return Ok(());
    }
    let conflicting = match purpose {
        NetworkPurpose::nbd => NetworkPurpose::insecure_nbd,
        NetworkPurpose::insecure_nbd => NetworkPurpose::nbd,
    };
    let clash = agent.store.all(class_ids::network).iter().any(|n| {
        n.get(fields::network::purpose)
            .as_set()
            .iter()
            .any(|p| *p == conflicting)
    });
    if clash {
        return Err(ApiError::NetworkIncompatiblePurposes {
            new_purpose: purpose.name().to_owned(),
            conflicting_purpose: conflicting.name().to_owned(),
        });
    }
    current.insert(0, purpose.value());
    let n = net.to_owned();
    agent
        .store
        .write(|tx| {
            set_field(
                tx,
                class_ids::network,
                &n,
                fields::network::purpose,
                Value::Set(current.into()),
            )
        })
        .await
}

async fn remove_purpose(agent: &Arc<Agent>, net: &str, purpose: NetworkPurpose) -> Result<(), ApiError> {
    let obj = agent
        .store
        .get(class_ids::network, net)
        .ok_or_else(|| ApiError::handle_invalid("network", net))?;
    let current = obj.get(fields::network::purpose).as_set();
    if !current.iter().any(|p| *p == purpose) {
        return Ok(());
    }
    let kept: Vec<Value> = current.iter().filter(|p| **p != purpose).cloned().collect();
    let n = net.to_owned();
    agent
        .store
        .write(|tx| {
            set_field(
                tx,
                class_ids::network,
                &n,
                fields::network::purpose,
                Value::Set(kept.into()),
            )
        })
        .await
}
