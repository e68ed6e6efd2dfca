//! VLANs: `VLAN.create`/`destroy`, and the older forms `PIF.create_VLAN`/`PIF.destroy`,
//! `pool.create_VLAN` and `pool.create_VLAN_from_PIF` (one VLAN on every host of the pool).
//!
//! A VLAN is a record joining the tagged PIF (the NIC or bond it rides on) and a new untagged
//! PIF on the VLAN's network; on the host the untagged PIF is the 802.1Q sub-interface
//! `<device>.<tag>` in the network's bridge.

use super::attach::{self, LOCK};
use super::topology::{self, kind, refs, text, PifKind};
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::objects::{self, new_ref, new_uuid};
use crate::schema::enums::{IpConfigurationMode, Ipv6ConfigurationMode, PifIgmpStatus};
use crate::schema::{class_ids, fields};
use crate::value::{default_object, Value};
use crate::Agent;

/// The MAC the reference gives every VLAN's untagged PIF.
pub const VLAN_MAC: &str = "fe:ff:ff:ff:ff:ff";

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::VLAN, "create", |agent, _, c| {
            let _g = LOCK.lock().await;
            create(&agent, c.ref_arg(0)?, c.int_arg(1), c.ref_arg(2)?)
                .await
                .map(Value::reference)
        }),
        entry!(class_ids::VLAN, "destroy", |agent, _, c| {
            let _g = LOCK.lock().await;
            destroy(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
        entry!(class_ids::PIF, "create_VLAN", |agent, _, c| {
            let _g = LOCK.lock().await;
            let (device, network, host, tag) = (c.str_arg(0), c.ref_arg(1)?, c.ref_arg(2)?, c.int_arg(3));
            pif_create_vlan(&agent, device, network, host, tag)
                .await
                .map(Value::reference)
        }),
        entry!(class_ids::PIF, "destroy", |agent, _, c| {
            let _g = LOCK.lock().await;
            let pif = topology::get(&agent, class_ids::PIF, c.ref_arg(0)?)?;
            let Some(vlan) = topology::reference(&pif, fields::PIF::VLAN_master_of).map(str::to_owned) else {
                return Err(ApiError::PifIsPhysical {
                    pif: pif.reference.clone(),
                });
            };
            destroy(&agent, &vlan).await.map(|()| Value::None)
        }),
        entry!(class_ids::pool, "create_VLAN", |agent, _, c| {
            let _g = LOCK.lock().await;
            let (device, network, tag) = (c.str_arg(0).to_owned(), c.ref_arg(1)?.to_owned(), c.int_arg(2));
            check_tag(tag)?;
            let mut made = Vec::new();
            for host in agent.store.all(class_ids::host) {
                match pif_create_vlan(&agent, &device, &network, &host.reference, tag).await {
                    Ok(p) => made.push(p),
                    Err(e) => {
                        undo(&agent, &made).await;
                        return Err(e);
                    }
                }
            }
            Ok(Value::set(made.into_iter().map(Value::reference).collect()))
        }),
        entry!(class_ids::pool, "create_VLAN_from_PIF", |agent, _, c| {
            let _g = LOCK.lock().await;
            let (pif, network, tag) = (c.ref_arg(0)?, c.ref_arg(1)?.to_owned(), c.int_arg(2));
            check_tag(tag)?;
            let p = topology::get(&agent, class_ids::PIF, pif)?;
            let base_net = topology::get(
                &agent,
                class_ids::network,
                topology::reference(&p, fields::PIF::network).unwrap_or_default(),
            )?;
            let mut made = Vec::new();
            for base in refs(&base_net, fields::network::PIFs) {
                match create(&agent, &base, tag, &network).await {
                    Ok(v) => made.push(v),
                    Err(e) => {
                        for v in &made {
                            let _ = destroy(&agent, v).await;
                        }
                        return Err(e);
                    }
                }
            }
            let untagged = made
                .iter()
                .filter_map(|v| agent.store.get(class_ids::VLAN, v))
                .filter_map(|v| topology::reference(&v, fields::VLAN::untagged_PIF).map(Value::reference))
                .collect();
            Ok(Value::set(untagged))
        }),
    ]
}

/// `VLAN_TAG_INVALID [tag]` unless 0 <= tag <= 4094.
pub fn check_tag(tag: i64) -> Result<(), ApiError> {
    if !(0..=4094).contains(&tag) {
        return Err(ApiError::VlanTagInvalid { vlan: tag.to_string() });
    }
    Ok(())
}

/// Destroys VLAN PIFs made before a failure, as far as it can.
async fn undo(agent: &Agent, pifs: &[String]) {
    for p in pifs {
        let vlan = agent
            .store
            .get(class_ids::PIF, p)
            .and_then(|p| topology::reference(&p, fields::PIF::VLAN_master_of).map(str::to_owned));
        if let Some(v) = vlan {
            if let Err(e) = destroy(agent, &v).await {
                tracing::warn!(pif = %p, error = %e, "undoing a VLAN");
            }
        }
    }
}

/// `PIF.create_VLAN`: the VLAN on the host's untagged PIF of `device`; its untagged PIF.
async fn pif_create_vlan(agent: &Agent, device: &str, network: &str, host: &str, tag: i64) -> Result<String, ApiError> {
    let h = topology::get(agent, class_ids::host, host)?;
    let base = refs(&h, fields::host::PIFs)
        .into_iter()
        .filter_map(|p| agent.store.get(class_ids::PIF, &p))
        .find(|p| {
            text(p, fields::PIF::device) == device && topology::reference(p, fields::PIF::VLAN_master_of).is_none()
        })
        .ok_or_else(|| ApiError::invalid_value("device", device))?;
    let vlan = create(agent, &base.reference, tag, network).await?;
    topology::get(agent, class_ids::VLAN, &vlan)?
        .get(fields::VLAN::untagged_PIF)
        .as_ref_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::internal("a VLAN without its untagged PIF"))
}

/// `VLAN.create`: checks as the reference does, records the VLAN and its untagged PIF, and
/// plugs it when the tagged PIF is on this host.
pub async fn create(agent: &Agent, tagged: &str, tag: i64, network: &str) -> Result<String, ApiError> {
    use fields::PIF as f;
    let tagged_pif = topology::get(agent, class_ids::PIF, tagged)?;
    topology::assert_network_managed(agent, network)?;
    let host = topology::reference(&tagged_pif, f::host).unwrap_or_default().to_owned();
    topology::assert_no_other_local_pifs(agent, &host, network)?;
    topology::assert_pif_managed(&tagged_pif)?;
    match topology::topology(agent, tagged_pif.clone()).first() {
        Some((PifKind::Physical, p)) if topology::reference(p, f::bond_slave_of).is_some() => {
            return Err(ApiError::CannotAddVlanToBondSlave { pif: tagged.to_owned() })
        }
        Some((PifKind::VlanUntagged(_), _)) => return Err(ApiError::PifIsVlan { pif: tagged.to_owned() }),
        Some((PifKind::TunnelAccess(_), _)) => return Err(ApiError::IsTunnelAccessPif { pif: tagged.to_owned() }),
        _ => {}
    }
    check_tag(tag)?;
    let device = text(&tagged_pif, f::device).to_owned();
    let exists = refs(&tagged_pif, f::VLAN_slave_of)
        .iter()
        .filter_map(|v| agent.store.get(class_ids::VLAN, v))
        .any(|v| v.get(fields::VLAN::tag).as_int() == Some(tag));
    if exists {
        return Err(ApiError::PifVlanExists { pif: device });
    }
    let local = host == agent.host;
    if local {
        let in_kernel = agent
            .network
            .backend
            .has_vlan(&device, tag as u16)
            .await
            .map_err(|e| ApiError::pif_configuration(tagged, &e))?;
        if in_kernel {
            return Err(ApiError::VlanInUse {
                device,
                vlan: tag.to_string(),
            });
        }
    }
    let vlan_ref = new_ref();
    let untagged_ref = new_ref();
    let mut untagged = default_object(class_ids::PIF, &untagged_ref);
    untagged.set(f::uuid, Value::str(new_uuid()));
    untagged.set(f::device, Value::str(device.as_str()));
    untagged.set(f::network, Value::reference(network));
    untagged.set(f::host, Value::reference(host.as_str()));
    untagged.set(f::MAC, Value::str(VLAN_MAC));
    untagged.set(f::MTU, tagged_pif.get(f::MTU).clone());
    untagged.set(f::VLAN, Value::Int(tag));
    untagged.set(f::metrics, tagged_pif.get(f::metrics).clone());
    untagged.set(f::physical, Value::Bool(false));
    untagged.set(f::currently_attached, Value::Bool(false));
    untagged.set(f::ip_configuration_mode, IpConfigurationMode::None.value());
    untagged.set(f::ipv6_configuration_mode, Ipv6ConfigurationMode::None.value());
    untagged.set(f::primary_address_type, tagged_pif.get(f::primary_address_type).clone());
    untagged.set(f::managed, Value::Bool(true));
    untagged.set(f::igmp_snooping_status, PifIgmpStatus::unknown.value());
    let mut vlan = default_object(class_ids::VLAN, &vlan_ref);
    vlan.set(fields::VLAN::uuid, Value::str(new_uuid()));
    vlan.set(fields::VLAN::tagged_PIF, Value::reference(tagged));
    vlan.set(fields::VLAN::untagged_PIF, Value::reference(untagged_ref.as_str()));
    vlan.set(fields::VLAN::tag, Value::Int(tag));
    // The untagged PIF's VLAN_master_of and the VLAN's untagged_PIF name each other, and no
    // relation keeps them so: the PIF first, the VLAN naming it, then the PIF naming the VLAN.
    agent
        .store
        .write(|tx| {
            objects::create(tx, untagged.clone())?;
            objects::create(tx, vlan.clone())?;
            objects::set_field(
                tx,
                class_ids::PIF,
                &untagged_ref,
                f::VLAN_master_of,
                Value::reference(vlan_ref.as_str()),
            )
        })
        .await?;
    if local {
        if let Err(e) = attach::bring_up(agent, &untagged_ref).await {
            // The host refused the device: forget the records rather than leave a VLAN that
            // never came up.
            forget_records(agent, &vlan_ref, &untagged_ref).await;
            return Err(e);
        }
    }
    Ok(vlan_ref)
}

/// Forgets a VLAN and its untagged PIF (after the host refused to bring it up).
async fn forget_records(agent: &Agent, vlan: &str, untagged: &str) {
    let forgotten = agent
        .store
        .write(|tx| {
            objects::destroy(tx, class_ids::VLAN, vlan)?;
            objects::destroy(tx, class_ids::PIF, untagged)
        })
        .await;
    if let Err(e) = forgotten {
        tracing::warn!(vlan, error = %e, "forgetting a VLAN that did not come up");
    }
}

/// `VLAN.destroy`: unplugs and forgets the untagged PIF, then the VLAN.
pub async fn destroy(agent: &Agent, vlan: &str) -> Result<(), ApiError> {
    let v = topology::get(agent, class_ids::VLAN, vlan)?;
    let untagged = topology::reference(&v, fields::VLAN::untagged_PIF).map(str::to_owned);
    let Some(untagged) = untagged.and_then(|u| agent.store.get(class_ids::PIF, &u)) else {
        // An orphaned record: only the VLAN to forget.
        return agent
            .store
            .write(|tx| objects::destroy(tx, class_ids::VLAN, vlan))
            .await;
    };
    topology::assert_not_in_bond(agent, &untagged)?;
    if untagged.get(fields::PIF::VLAN).as_int().unwrap_or(-1) < 0 {
        return Err(ApiError::PifIsPhysical {
            pif: untagged.reference.clone(),
        });
    }
    if matches!(kind(&untagged), PifKind::VlanUntagged(_)) {
        super::pif::unplug(agent, &untagged.reference).await?;
    }
    let pif_ref = untagged.reference.clone();
    agent
        .store
        .write(|tx| {
            objects::destroy(tx, class_ids::VLAN, vlan)?;
            objects::destroy(tx, class_ids::PIF, &pif_ref)
        })
        .await
}
