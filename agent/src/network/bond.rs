//! Bonds: `Bond.create`/`destroy`/`set_mode`/`set_property`. A bond is a master PIF on the
//! bond's network (device `bondN`) over its members; on the host, the kernel's bonding
//! device with the members' NICs enslaved, in the network's bridge.
//!
//! The IP configuration (and the management interface) of the primary member moves to the
//! master, and back on destroy; so do the VLANs, tunnels and VIFs on the members' networks.

use super::attach::{self, LOCK};
use super::topology::{self, refs, text, PifKind};
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::objects::{self, new_ref, new_uuid, set_field};
use crate::schema::enums::{BondMode, IpConfigurationMode, Ipv6ConfigurationMode, PifIgmpStatus, PrimaryAddressType};
use crate::schema::{class_ids, fields, FieldId};
use crate::store::Tx;
use crate::value::{default_object, Value};
use crate::Agent;

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::Bond, "create", |agent, _, c| {
            let _g = LOCK.lock().await;
            let members: Vec<String> = c
                .arg(1)
                .as_set()
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            let mode = BondMode::parse(c.str_arg(3)).ok_or_else(|| ApiError::invalid_value("mode", c.str_arg(3)))?;
            let properties: Vec<(String, String)> = c
                .arg(4)
                .as_map()
                .iter()
                .map(|(k, v)| (k.key_text(), v.key_text()))
                .collect();
            create(&agent, c.ref_arg(0)?, &members, c.str_arg(2), mode, properties)
                .await
                .map(Value::reference)
        }),
        entry!(class_ids::Bond, "destroy", |agent, _, c| {
            let _g = LOCK.lock().await;
            destroy(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
        entry!(class_ids::Bond, "set_mode", |agent, _, c| {
            let _g = LOCK.lock().await;
            let bond = topology::get(&agent, class_ids::Bond, c.ref_arg(0)?)?;
            let mode = BondMode::parse(c.str_arg(1)).ok_or_else(|| ApiError::invalid_value("value", c.str_arg(1)))?;
            let kept: Vec<(String, String)> = bond
                .get(fields::Bond::properties)
                .as_map()
                .iter()
                .map(|(k, v)| (k.key_text(), v.key_text()))
                .filter(|(k, v)| check_property(mode, k, v).is_ok())
                .collect();
            let props = with_defaults(mode, kept);
            let r = bond.reference.clone();
            agent
                .store
                .write(|tx| {
                    set_field(tx, class_ids::Bond, &r, fields::Bond::mode, mode.value())?;
                    set_field(tx, class_ids::Bond, &r, fields::Bond::properties, string_map(&props))
                })
                .await?;
            refresh_master(&agent, &bond).await.map(|()| Value::None)
        }),
        entry!(class_ids::Bond, "set_property", |agent, _, c| {
            let _g = LOCK.lock().await;
            let bond = topology::get(&agent, class_ids::Bond, c.ref_arg(0)?)?;
            let mode = BondMode::parse(text(&bond, fields::Bond::mode)).unwrap_or(BondMode::active_backup);
            let (name, value) = (c.str_arg(1), c.str_arg(2));
            check_property(mode, name, value)?;
            let mut props: Vec<(String, String)> = bond
                .get(fields::Bond::properties)
                .as_map()
                .iter()
                .map(|(k, v)| (k.key_text(), v.key_text()))
                .filter(|(k, _)| k != name)
                .collect();
            props.insert(0, (name.to_owned(), value.to_owned()));
            let r = bond.reference.clone();
            agent
                .store
                .write(|tx| set_field(tx, class_ids::Bond, &r, fields::Bond::properties, string_map(&props)))
                .await?;
            refresh_master(&agent, &bond).await.map(|()| Value::None)
        }),
    ]
}

fn string_map(pairs: &[(String, String)]) -> Value {
    Value::string_map(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// A property a bond mode takes: its key, its default, and whether a value is acceptable.
type Requirement = (&'static str, Option<&'static str>, fn(&str) -> bool);

/// The properties a mode takes. Only LACP has any.
fn requirements(mode: BondMode) -> &'static [Requirement] {
    match mode {
        BondMode::lacp => &[
            ("hashing_algorithm", Some("tcpudp_ports"), |v| {
                matches!(v, "src_mac" | "tcpudp_ports")
            }),
            ("lacp-time", Some("slow"), |v| matches!(v, "fast" | "slow")),
            ("lacp-aggregation-key", None, |v| v.parse::<i64>().is_ok()),
            ("lacp-fallback-ab", Some("true"), |v| matches!(v, "true" | "false")),
        ],
        BondMode::active_backup | BondMode::balance_slb => &[],
    }
}

/// `INVALID_VALUE ["properties", "name = value"]` unless the mode takes the property with
/// this value.
pub fn check_property(mode: BondMode, name: &str, value: &str) -> Result<(), ApiError> {
    let ok = requirements(mode)
        .iter()
        .any(|(k, _, valid)| *k == name && valid(value));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_value("properties", format!("{name} = {value}")))
    }
}

/// `props` with the mode's defaults for keys it lacks.
pub fn with_defaults(mode: BondMode, mut props: Vec<(String, String)>) -> Vec<(String, String)> {
    for (k, default, _) in requirements(mode) {
        if let Some(d) = default {
            if !props.iter().any(|(p, _)| p == k) {
                props.push(((*k).to_owned(), (*d).to_owned()));
            }
        }
    }
    props
}

async fn refresh_master(agent: &Agent, bond: &crate::value::Object) -> Result<(), ApiError> {
    match topology::reference(bond, fields::Bond::master) {
        Some(m) => attach::refresh(agent, m).await,
        None => Ok(()),
    }
}

/// The first free `bondN` among the host's bond masters.
fn bond_device(agent: &Agent, host: &str) -> String {
    let taken: Vec<String> = agent
        .store
        .all(class_ids::PIF)
        .iter()
        .filter(|p| topology::reference(p, fields::PIF::host) == Some(host))
        .filter(|p| !refs(p, fields::PIF::bond_master_of).is_empty())
        .map(|p| text(p, fields::PIF::device).to_owned())
        .collect();
    (0..)
        .map(|n| format!("bond{n}"))
        .find(|d| !taken.contains(d))
        .unwrap_or_default()
}

/// The IP configuration fields that move between a member and the master.
const IP_FIELDS: &[FieldId] = &[
    fields::PIF::ip_configuration_mode,
    fields::PIF::IP,
    fields::PIF::netmask,
    fields::PIF::gateway,
    fields::PIF::DNS,
    fields::PIF::ipv6_configuration_mode,
    fields::PIF::IPv6,
    fields::PIF::ipv6_gateway,
];

/// Moves the IP configuration from one PIF to another, leaving the first without one.
fn move_configuration(tx: &mut Tx, from: &str, to: &str) -> Result<(), ApiError> {
    use fields::PIF as f;
    let src = tx.must_get(class_ids::PIF, from)?;
    for &field in IP_FIELDS {
        set_field(tx, class_ids::PIF, to, field, src.get(field).clone())?;
    }
    set_field(
        tx,
        class_ids::PIF,
        from,
        f::ip_configuration_mode,
        IpConfigurationMode::None.value(),
    )?;
    set_field(tx, class_ids::PIF, from, f::IP, Value::str(""))?;
    set_field(tx, class_ids::PIF, from, f::netmask, Value::str(""))?;
    set_field(tx, class_ids::PIF, from, f::gateway, Value::str(""))?;
    set_field(tx, class_ids::PIF, from, f::DNS, Value::str(""))?;
    set_field(
        tx,
        class_ids::PIF,
        from,
        f::ipv6_configuration_mode,
        Ipv6ConfigurationMode::None.value(),
    )?;
    set_field(tx, class_ids::PIF, from, f::IPv6, Value::set(Vec::new()))?;
    set_field(tx, class_ids::PIF, from, f::ipv6_gateway, Value::str(""))?;
    let mgmt = src.get(f::management).as_bool() == Some(true);
    if mgmt {
        set_field(tx, class_ids::PIF, from, f::management, Value::Bool(false))?;
        set_field(tx, class_ids::PIF, to, f::management, Value::Bool(true))?;
    }
    Ok(())
}

/// The VLANs on the members' networks move to PIFs over the master (and back): each VLAN's
/// tagged PIF becomes `to`.
fn move_vlans(tx: &mut Tx, vlans: &[String], to: &str) -> Result<(), ApiError> {
    let device = tx.must_get(class_ids::PIF, to)?.get(fields::PIF::device).clone();
    for v in vlans {
        set_field(tx, class_ids::VLAN, v, fields::VLAN::tagged_PIF, Value::reference(to))?;
        // The untagged PIF is named after the device it rides on.
        let untagged = tx
            .must_get(class_ids::VLAN, v)?
            .get(fields::VLAN::untagged_PIF)
            .as_ref_str()
            .map(str::to_owned);
        if let Some(u) = untagged.filter(|u| tx.get(class_ids::PIF, u).is_some()) {
            set_field(tx, class_ids::PIF, &u, fields::PIF::device, device.clone())?;
        }
    }
    Ok(())
}

/// Tunnels over a member move to the master (and back).
fn move_tunnels(tx: &mut Tx, tunnels: &[String], to: &str) -> Result<(), ApiError> {
    for t in tunnels {
        set_field(
            tx,
            class_ids::tunnel,
            t,
            fields::tunnel::transport_PIF,
            Value::reference(to),
        )?;
    }
    Ok(())
}

/// `Bond.create`.
pub async fn create(
    agent: &Agent,
    network: &str,
    members: &[String],
    mac: &str,
    mode: BondMode,
    properties: Vec<(String, String)>,
) -> Result<String, ApiError> {
    use fields::PIF as f;
    let mut members: Vec<String> = members.to_vec();
    members.dedup();
    let first = members.first().ok_or(ApiError::PifBondNeedsMoreMembers {})?;
    let first_pif = topology::get(agent, class_ids::PIF, first)?;
    topology::assert_network_managed(agent, network)?;
    let host = topology::reference(&first_pif, f::host).unwrap_or_default().to_owned();
    topology::assert_no_other_local_pifs(agent, &host, network)?;
    if !mac.is_empty() && !super::addresses::is_valid_mac(mac) {
        return Err(ApiError::MacInvalid { mac: mac.to_owned() });
    }
    for (k, v) in &properties {
        check_property(mode, k, v)?;
    }
    let properties = with_defaults(mode, properties);
    let pifs = members
        .iter()
        .map(|m| topology::get(agent, class_ids::PIF, m))
        .collect::<Result<Vec<_>, _>>()?;
    let has_ip = |p: &crate::value::Object| {
        if text(p, f::primary_address_type) == PrimaryAddressType::IPv6.name() {
            text(p, f::ipv6_configuration_mode) != Ipv6ConfigurationMode::None.name()
        } else {
            text(p, f::ip_configuration_mode) != IpConfigurationMode::None.name()
        }
    };
    let management = pifs.iter().find(|p| p.get(f::management).as_bool() == Some(true));
    let with_ip: Vec<_> = pifs.iter().filter(|p| has_ip(p)).collect();
    let primary = management
        .or(with_ip.first().copied())
        .or(pifs.first())
        .ok_or(ApiError::PifBondNeedsMoreMembers {})?
        .clone();
    let address_type = text(&primary, f::primary_address_type).to_owned();
    for p in &pifs {
        if text(p, f::primary_address_type) != address_type {
            return Err(ApiError::PifIncompatiblePrimaryAddressType {
                pif: p.reference.clone(),
            });
        }
    }
    for p in &pifs {
        topology::assert_pif_managed(p)?;
        match topology::topology(agent, p.clone()).first() {
            Some((PifKind::Physical, q)) if topology::reference(q, f::bond_slave_of).is_some() => {
                return Err(ApiError::PifAlreadyBonded {
                    pif: p.reference.clone(),
                })
            }
            Some((PifKind::VlanUntagged(_), q)) => {
                return Err(ApiError::PifVlanExists {
                    pif: text(q, f::device).to_owned(),
                })
            }
            Some((PifKind::TunnelAccess(_), _)) => {
                return Err(ApiError::IsTunnelAccessPif {
                    pif: p.reference.clone(),
                })
            }
            Some((PifKind::BondMaster(_), _)) => {
                return Err(ApiError::PifAlreadyBonded {
                    pif: p.reference.clone(),
                })
            }
            _ => {}
        }
    }
    if pifs
        .iter()
        .any(|p| topology::reference(p, f::host).unwrap_or_default() != host)
    {
        return Err(ApiError::PifCannotBondCrossHost {});
    }
    let props0 = primary.get(f::properties).clone();
    if pifs
        .iter()
        .any(|p| p.get(f::properties) != first_pif.get(f::properties))
    {
        return Err(ApiError::IncompatiblePifProperties {});
    }
    if with_ip.len() > 1 {
        return Err(ApiError::PifBondMoreThanOneIp {});
    }
    let (mac, auto_update_mac) = if mac.is_empty() {
        (text(&primary, f::MAC).to_owned(), true)
    } else {
        (mac.to_owned(), false)
    };
    let disallow_unplug = pifs.iter().any(|p| p.get(f::disallow_unplug).as_bool() == Some(true));
    let vlans: Vec<String> = pifs.iter().flat_map(|p| refs(p, f::VLAN_slave_of)).collect();
    let tunnels: Vec<String> = pifs.iter().flat_map(|p| refs(p, f::tunnel_transport_PIF_of)).collect();
    let member_networks: Vec<String> = pifs
        .iter()
        .filter_map(|p| topology::reference(p, f::network).map(str::to_owned))
        .collect();
    let vifs: Vec<String> = member_networks
        .iter()
        .filter_map(|n| agent.store.get(class_ids::network, n))
        .flat_map(|n| refs(&n, fields::network::VIFs))
        .collect();
    let local = host == agent.host;
    let vlan_pifs = attached_untagged(agent, &vlans);
    let was_attached: Vec<String> = pifs
        .iter()
        .filter(|p| p.get(f::currently_attached).as_bool() == Some(true))
        .map(|p| p.reference.clone())
        .collect();
    // The VLANs over the members and the members themselves leave their bridges before the
    // members join the bond.
    if local {
        for u in &vlan_pifs {
            attach::bring_down(agent, u).await?;
        }
        for p in &pifs {
            if p.get(f::currently_attached).as_bool() == Some(true) {
                attach::bring_down(agent, &p.reference).await?;
            }
        }
    }
    let master = new_ref();
    let bond = new_ref();
    let device = bond_device(agent, &host);
    let primary_ref = primary.reference.clone();
    let network = network.to_owned();
    agent
        .store
        .write(|tx| {
            let metrics = {
                let r = new_ref();
                let mut m = default_object(class_ids::PIF_metrics, &r);
                m.set(fields::PIF_metrics::uuid, Value::str(new_uuid()));
                objects::create(tx, m)?;
                r
            };
            let mut p = default_object(class_ids::PIF, &master);
            p.set(f::uuid, Value::str(new_uuid()));
            p.set(f::device, Value::str(device.as_str()));
            p.set(f::network, Value::reference(network.as_str()));
            p.set(f::host, Value::reference(host.as_str()));
            p.set(f::MAC, Value::str(mac.as_str()));
            p.set(f::MTU, Value::Int(-1));
            p.set(f::VLAN, Value::Int(-1));
            p.set(f::metrics, Value::reference(metrics));
            p.set(f::physical, Value::Bool(false));
            p.set(f::currently_attached, Value::Bool(false));
            p.set(f::ip_configuration_mode, IpConfigurationMode::None.value());
            p.set(f::ipv6_configuration_mode, Ipv6ConfigurationMode::None.value());
            p.set(f::primary_address_type, Value::Enum(leak_address_type(&address_type)));
            p.set(f::managed, Value::Bool(true));
            p.set(f::properties, props0.clone());
            p.set(f::igmp_snooping_status, PifIgmpStatus::unknown.value());
            p.set(f::disallow_unplug, Value::Bool(disallow_unplug));
            objects::create(tx, p)?;
            let mut b = default_object(class_ids::Bond, &bond);
            b.set(fields::Bond::uuid, Value::str(new_uuid()));
            b.set(fields::Bond::master, Value::reference(master.as_str()));
            b.set(fields::Bond::primary_slave, Value::reference(primary_ref.as_str()));
            b.set(fields::Bond::mode, mode.value());
            b.set(fields::Bond::properties, string_map(&properties));
            b.set(fields::Bond::auto_update_mac, Value::Bool(auto_update_mac));
            objects::create(tx, b)?;
            for m in &members {
                set_field(tx, class_ids::PIF, m, f::bond_slave_of, Value::reference(bond.as_str()))?;
                set_field(tx, class_ids::PIF, m, f::disallow_unplug, Value::Bool(false))?;
            }
            move_configuration(tx, &primary_ref, &master)?;
            move_vlans(tx, &vlans, &master)?;
            move_tunnels(tx, &tunnels, &master)?;
            for v in &vifs {
                set_field(
                    tx,
                    class_ids::VIF,
                    v,
                    fields::VIF::network,
                    Value::reference(network.as_str()),
                )?;
            }
            Ok(())
        })
        .await?;
    if local {
        if let Err(e) = attach::bring_up(agent, &master).await {
            // The host refused the bond: undo it (the members get their configuration and
            // bridges back) and say why.
            if let Ok(plan) = topology::get(agent, class_ids::PIF, &master).and_then(|m| topology::plan(agent, &m)) {
                if let Err(u) = agent.network.backend.bring_down(&plan).await {
                    tracing::warn!(bond, error = %u, "removing a bond that did not come up");
                }
            }
            if let Err(u) = destroy(agent, &bond).await {
                tracing::warn!(bond, error = %u, "undoing a bond that did not come up");
            }
            for p in &was_attached {
                if let Err(u) = attach::bring_up(agent, p).await {
                    tracing::warn!(pif = %p, error = %u, "plugging a member again");
                }
            }
            return Err(e);
        }
        // The VLANs that rode on the members now ride on the bond.
        for u in &vlan_pifs {
            attach::bring_up(agent, u).await?;
        }
    }
    Ok(bond)
}

/// The untagged PIFs of `vlans` that are attached.
fn attached_untagged(agent: &Agent, vlans: &[String]) -> Vec<String> {
    vlans
        .iter()
        .filter_map(|v| agent.store.get(class_ids::VLAN, v))
        .filter_map(|v| topology::reference(&v, fields::VLAN::untagged_PIF).map(str::to_owned))
        .filter(|u| {
            agent
                .store
                .get(class_ids::PIF, u)
                .is_some_and(|p| p.get(fields::PIF::currently_attached).as_bool() == Some(true))
        })
        .collect()
}

/// The enum's static spelling of a primary address type read from a record.
fn leak_address_type(s: &str) -> &'static str {
    PrimaryAddressType::parse(s).unwrap_or(PrimaryAddressType::IPv4).name()
}

/// `Bond.destroy`: the configuration, management, VLANs, tunnels and VIFs go back to the
/// primary member; the master and the bond are forgotten; the members are plugged again.
pub async fn destroy(agent: &Agent, bond: &str) -> Result<(), ApiError> {
    use fields::PIF as f;
    let b = topology::get(agent, class_ids::Bond, bond)?;
    let master = topology::reference(&b, fields::Bond::master)
        .unwrap_or_default()
        .to_owned();
    let m = topology::get(agent, class_ids::PIF, &master)?;
    let members = refs(&b, fields::Bond::slaves);
    let primary = topology::reference(&b, fields::Bond::primary_slave)
        .map(str::to_owned)
        .or_else(|| members.first().cloned())
        .ok_or(ApiError::PifBondNeedsMoreMembers {})?;
    let primary_network = agent
        .store
        .get(class_ids::PIF, &primary)
        .and_then(|p| topology::reference(&p, f::network).map(str::to_owned))
        .unwrap_or_default();
    let plugged = m.get(f::currently_attached).as_bool() == Some(true);
    let local = topology::reference(&m, f::host) == Some(agent.host.as_str());
    let vlans = refs(&m, f::VLAN_slave_of);
    let tunnels = refs(&m, f::tunnel_transport_PIF_of);
    let vifs = agent
        .store
        .get(
            class_ids::network,
            topology::reference(&m, f::network).unwrap_or_default(),
        )
        .map(|n| refs(&n, fields::network::VIFs))
        .unwrap_or_default();
    let vlan_pifs = attached_untagged(agent, &vlans);
    if local {
        for u in &vlan_pifs {
            attach::bring_down(agent, u).await?;
        }
        if plugged {
            attach::bring_down(agent, &master).await?;
        }
    }
    let disallow = m.get(f::disallow_unplug).as_bool() == Some(true);
    let metrics = topology::reference(&m, f::metrics).map(str::to_owned);
    agent
        .store
        .write(|tx| {
            move_configuration(tx, &master, &primary)?;
            move_vlans(tx, &vlans, &primary)?;
            move_tunnels(tx, &tunnels, &primary)?;
            for v in &vifs {
                set_field(
                    tx,
                    class_ids::VIF,
                    v,
                    fields::VIF::network,
                    Value::reference(primary_network.as_str()),
                )?;
            }
            if disallow {
                set_field(tx, class_ids::PIF, &primary, f::disallow_unplug, Value::Bool(true))?;
            }
            for s in &members {
                set_field(tx, class_ids::PIF, s, f::bond_slave_of, Value::null_ref())?;
            }
            objects::destroy(tx, class_ids::Bond, bond)?;
            objects::destroy(tx, class_ids::PIF, &master)?;
            if let Some(mm) = &metrics {
                if tx.get(class_ids::PIF_metrics, mm).is_some() {
                    objects::destroy(tx, class_ids::PIF_metrics, mm)?;
                }
            }
            Ok(())
        })
        .await?;
    if local {
        if plugged {
            for s in &members {
                attach::bring_up(agent, s).await?;
            }
        }
        for u in &vlan_pifs {
            attach::bring_up(agent, u).await?;
        }
    }
    Ok(())
}
