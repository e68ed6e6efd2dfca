//! The management interface: which PIF carries it (`host.get_management_interface`), moving
//! it (`host.management_reconfigure`, `pool.management_reconfigure`), turning it off
//! (`host.management_disable`).
//!
//! A change is published on [`super::Network::management`] (`Agent::management_changes`) for
//! the HTTP server's listeners to follow (`rpc/src/listeners.rs`, docs/networking.md).

use super::attach::{self, LOCK};
use super::topology::{self, refs, text};
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::objects::set_field;
use crate::schema::enums::{IpConfigurationMode, Ipv6ConfigurationMode, PrimaryAddressType};
use crate::schema::{class_ids, fields};
use crate::value::{Object, Value};
use crate::Agent;
use std::net::IpAddr;

/// Where the management interface is, as the listeners follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Management {
    /// As the daemon was started (its `--listen` addresses).
    AsStarted,
    /// On this address: the listeners move to it, keeping their ports.
    At(IpAddr),
    /// Off (`host.management_disable`): only loopback and the unix socket are served.
    Disabled,
}

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::host, "get_management_interface", |agent, _, c| {
            let host = c.ref_arg(0)?;
            let h = topology::get(&agent, class_ids::host, host)?;
            management_pif(&agent, &h)
                .map(|p| Value::reference(p.reference.as_str()))
                .ok_or_else(|| ApiError::internal("Not_found"))
        }),
        entry!(class_ids::host, "management_reconfigure", |agent, _, c| {
            let _g = LOCK.lock().await;
            reconfigure(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
        entry!(class_ids::host, "management_disable", |agent, _, _c| {
            let _g = LOCK.lock().await;
            let pifs = host_pifs(&agent, &agent.host);
            agent
                .store
                .write(|tx| {
                    for p in &pifs {
                        set_field(
                            tx,
                            class_ids::PIF,
                            &p.reference,
                            fields::PIF::management,
                            Value::Bool(false),
                        )?;
                    }
                    Ok(())
                })
                .await?;
            agent.network.publish(Management::Disabled);
            Ok(Value::None)
        }),
        entry!(class_ids::pool, "management_reconfigure", |agent, _, c| {
            let _g = LOCK.lock().await;
            let network = c.ref_arg(0)?;
            let n = topology::get(&agent, class_ids::network, network)?;
            let pifs: Vec<_> = refs(&n, fields::network::PIFs)
                .iter()
                .filter_map(|p| agent.store.get(class_ids::PIF, p))
                .collect();
            for h in agent.store.all(class_ids::host) {
                if !pifs
                    .iter()
                    .any(|p| topology::reference(p, fields::PIF::host) == Some(h.reference.as_str()))
                {
                    return Err(ApiError::PifNotPresent {
                        host: h.reference.clone(),
                        network: network.to_owned(),
                    });
                }
            }
            let address_type = pifs
                .first()
                .map(|p| text(p, fields::PIF::primary_address_type).to_owned())
                .unwrap_or_default();
            for p in &pifs {
                if text(p, fields::PIF::primary_address_type) != address_type {
                    return Err(ApiError::PifIncompatiblePrimaryAddressType {
                        pif: p.reference.clone(),
                    });
                }
                assert_usable(p)?;
            }
            // This host's PIF; another host's daemon moves its own.
            if let Some(p) = pifs.iter().find(|p| super::pif::on_this_host(&agent, p)) {
                reconfigure(&agent, &p.reference).await?;
            }
            Ok(Value::None)
        }),
    ]
}

fn host_pifs(agent: &Agent, host: &str) -> Vec<std::sync::Arc<Object>> {
    agent
        .store
        .get(class_ids::host, host)
        .map(|h| refs(&h, fields::host::PIFs))
        .unwrap_or_default()
        .iter()
        .filter_map(|p| agent.store.get(class_ids::PIF, p))
        .collect()
}

/// The host's management PIF.
pub fn management_pif(agent: &Agent, host: &Object) -> Option<std::sync::Arc<Object>> {
    host_pifs(agent, &host.reference)
        .into_iter()
        .find(|p| p.get(fields::PIF::management).as_bool() == Some(true))
}

/// A bond member cannot carry the management interface, and the PIF needs an IP
/// configuration of its primary address type.
fn assert_usable(pif: &Object) -> Result<(), ApiError> {
    use fields::PIF as f;
    if topology::reference(pif, f::bond_slave_of).is_some() {
        return Err(ApiError::CannotPlugBondSlave {
            pif: pif.reference.clone(),
        });
    }
    if text(pif, f::primary_address_type) == PrimaryAddressType::IPv6.name() {
        if text(pif, f::ipv6_configuration_mode) == Ipv6ConfigurationMode::None.name() {
            return Err(ApiError::PifHasNoV6NetworkConfiguration {
                pif: pif.reference.clone(),
            });
        }
    } else if text(pif, f::ip_configuration_mode) == IpConfigurationMode::None.name() {
        return Err(ApiError::PifHasNoNetworkConfiguration {
            pif: pif.reference.clone(),
        });
    }
    Ok(())
}

/// The address the management interface listens on: the PIF's static or recorded address.
fn address_of(pif: &Object) -> Option<IpAddr> {
    use fields::PIF as f;
    if text(pif, f::primary_address_type) == PrimaryAddressType::IPv6.name() {
        pif.get(f::IPv6)
            .as_set()
            .iter()
            .filter_map(|a| a.as_str())
            .find_map(|a| a.split('/').next().and_then(|a| a.parse().ok()))
    } else {
        text(pif, f::IP).parse().ok()
    }
}

/// `host.management_reconfigure`: the PIF is brought up and marked the management
/// interface (every other PIF of the host unmarked), `host.address` follows its address, and
/// the listeners move to it.
pub async fn reconfigure(agent: &Agent, pif: &str) -> Result<(), ApiError> {
    use fields::PIF as f;
    let p = topology::get(agent, class_ids::PIF, pif)?;
    let host = topology::reference(&p, f::host).unwrap_or_default().to_owned();
    if host != agent.host {
        return Err(ApiError::PifNotAttachedToHost {
            pif: pif.to_owned(),
            host: agent.host.clone(),
        });
    }
    if p.get(f::managed).as_bool() != Some(false) {
        assert_usable(&p)?;
        if let Some(current) = topology::get(agent, class_ids::host, &host)
            .ok()
            .and_then(|h| management_pif(agent, &h))
        {
            if text(&current, f::primary_address_type) != text(&p, f::primary_address_type) {
                return Err(ApiError::PifIncompatiblePrimaryAddressType { pif: pif.to_owned() });
            }
        }
    }
    if p.get(f::management).as_bool() == Some(true) {
        // Already the management interface: nothing to do, as in the reference.
        return Ok(());
    }
    attach::bring_up(agent, pif).await?;
    let others = host_pifs(agent, &host);
    let address = address_of(&p);
    agent
        .store
        .write(|tx| {
            for o in &others {
                let mine = o.reference == pif;
                set_field(tx, class_ids::PIF, &o.reference, f::management, Value::Bool(mine))?;
            }
            if let Some(a) = address {
                set_field(
                    tx,
                    class_ids::host,
                    &host,
                    fields::host::address,
                    Value::str(a.to_string()),
                )?;
            }
            Ok(())
        })
        .await?;
    agent
        .network
        .publish(address.map_or(Management::AsStarted, Management::At));
    Ok(())
}

/// `host.local_management_reconfigure`: the reference lets it through only on a pool member
/// in emergency mode (cut off from its master); this daemon has no emergency mode, so it
/// answers as the reference does everywhere else.
pub fn local_reconfigure() -> Entry {
    entry!(class_ids::host, "local_management_reconfigure", |_agent, _, _c| {
        Err(ApiError::NotInEmergencyMode {})
    })
}
