//! PIF messages: plugging, IP configuration, the properties, and the records of the host's
//! NICs (`scan`, `introduce`, `forget`, and the pool-internal `db_introduce`/`db_forget`).

use super::addresses::{assert_cidr, assert_ip, dns_of, is_valid_mac, Family};
use super::attach::{self, LOCK};
use super::backend::Nic;
use super::topology::{self, kind, refs, text, PifKind};
use crate::call::{Call, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::objects::{self, new_ref, new_uuid, set_field};
use crate::schema::enums::{IpConfigurationMode, Ipv6ConfigurationMode, PifIgmpStatus, PrimaryAddressType};
use crate::schema::{class_ids, fields};
use crate::store::Tx;
use crate::value::{default_object, now, Object, Value};
use crate::Agent;

/// The properties a PIF has, with the values each may take (the reference's one: `gro`).
pub const PROPERTIES: &[(&str, &[&str])] = &[("gro", &["on", "off"])];
/// What a NIC or bond master starts with.
pub const DEFAULT_PROPERTIES: &[(&str, &str)] = &[("gro", "on")];

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::PIF, "plug", |agent, _, c| {
            let _g = LOCK.lock().await;
            plug(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
        entry!(class_ids::PIF, "unplug", |agent, _, c| {
            let _g = LOCK.lock().await;
            unplug(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
        entry!(class_ids::PIF, "reconfigure_ip", |agent, _, c| {
            let _g = LOCK.lock().await;
            reconfigure_ip(&agent, &c).await.map(|()| Value::None)
        }),
        entry!(class_ids::PIF, "reconfigure_ipv6", |agent, _, c| {
            let _g = LOCK.lock().await;
            reconfigure_ipv6(&agent, &c).await.map(|()| Value::None)
        }),
        entry!(class_ids::PIF, "set_primary_address_type", |agent, _, c| {
            let pif = topology::get(&agent, class_ids::PIF, c.ref_arg(0)?)?;
            topology::assert_not_management(&pif)?;
            let v = PrimaryAddressType::parse(c.str_arg(1))
                .ok_or_else(|| ApiError::invalid_value("primary_address_type", c.str_arg(1)))?;
            let r = pif.reference.clone();
            agent
                .store
                .write(|tx| set_field(tx, class_ids::PIF, &r, fields::PIF::primary_address_type, v.value()))
                .await
                .map(|()| Value::None)
        }),
        entry!(class_ids::PIF, "set_property", |agent, _, c| {
            let _g = LOCK.lock().await;
            set_property(&agent, c.ref_arg(0)?, c.str_arg(1), c.str_arg(2))
                .await
                .map(|()| Value::None)
        }),
        entry!(class_ids::PIF, "scan", |agent, _, c| {
            let _g = LOCK.lock().await;
            scan(&agent, c.ref_arg(0)?).await.map(|_| Value::None)
        }),
        entry!(class_ids::PIF, "introduce", |agent, _, c| {
            let _g = LOCK.lock().await;
            introduce(&agent, c.ref_arg(0)?, c.str_arg(1), c.str_arg(2), c.bool_arg(3))
                .await
                .map(Value::reference)
        }),
        entry!(class_ids::PIF, "forget", |agent, _, c| {
            let _g = LOCK.lock().await;
            forget(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
        entry!(class_ids::PIF, "db_introduce", |agent, _, c| {
            db_introduce(&agent, &c).await.map(Value::reference)
        }),
        entry!(class_ids::PIF, "db_forget", |agent, _, c| {
            let r = c.ref_arg(0)?.to_owned();
            topology::get(&agent, class_ids::PIF, &r)?;
            agent
                .store
                .write(|tx| objects::destroy(tx, class_ids::PIF, &r))
                .await
                .map(|()| Value::None)
        }),
    ]
}

/// `PIF.plug`: brings the PIF up (a tunnel's transport PIF first); a bond member cannot be
/// plugged on its own.
pub async fn plug(agent: &Agent, pif: &str) -> Result<(), ApiError> {
    let p = topology::get(agent, class_ids::PIF, pif)?;
    topology::assert_pif_managed(&p)?;
    match kind(&p) {
        PifKind::TunnelAccess(t) => {
            let transport = topology::get(agent, class_ids::tunnel, &t)?
                .get(fields::tunnel::transport_PIF)
                .as_ref_str()
                .map(str::to_owned)
                .unwrap_or_default();
            let tp = topology::get(agent, class_ids::PIF, &transport)?;
            if text(&tp, fields::PIF::ip_configuration_mode) == IpConfigurationMode::None.name() {
                return Err(ApiError::TransportPifNotConfigured { pif: transport });
            }
            Box::pin(plug(agent, &transport)).await?;
        }
        PifKind::Physical if topology::reference(&p, fields::PIF::bond_slave_of).is_some() => {
            return Err(ApiError::CannotPlugBondSlave { pif: pif.to_owned() });
        }
        _ => {}
    }
    if on_this_host(agent, &p) {
        attach::bring_up(agent, pif).await?;
    }
    Ok(())
}

/// `PIF.unplug`: refused on the management interface, with running VIFs on the network, or
/// with `disallow_unplug`; a tunnel over it goes down first.
pub async fn unplug(agent: &Agent, pif: &str) -> Result<(), ApiError> {
    use fields::PIF as f;
    let p = topology::get(agent, class_ids::PIF, pif)?;
    topology::assert_pif_managed(&p)?;
    topology::assert_not_management(&p)?;
    let network = topology::reference(&p, f::network).unwrap_or_default().to_owned();
    if let Some(n) = agent.store.get(class_ids::network, &network) {
        for vif in refs(&n, fields::network::VIFs) {
            let attached = agent
                .store
                .get(class_ids::VIF, &vif)
                .is_some_and(|v| v.get(fields::VIF::currently_attached).as_bool() == Some(true));
            if attached {
                return Err(ApiError::VifInUse { network, vif });
            }
        }
    }
    if p.get(f::disallow_unplug).as_bool() == Some(true) {
        return Err(ApiError::PifDoesNotAllowUnplug { pif: pif.to_owned() });
    }
    for t in refs(&p, f::tunnel_transport_PIF_of) {
        let access = agent
            .store
            .get(class_ids::tunnel, &t)
            .and_then(|t| t.get(fields::tunnel::access_PIF).as_ref_str().map(str::to_owned));
        if let Some(a) = access {
            Box::pin(unplug(agent, &a)).await?;
        }
    }
    let member = topology::reference(&p, f::bond_slave_of).is_some();
    if !member && on_this_host(agent, &p) {
        attach::bring_down(agent, pif).await?;
    }
    Ok(())
}

/// Whether the PIF is this daemon's host's (only those are brought up or down here).
pub fn on_this_host(agent: &Agent, pif: &Object) -> bool {
    topology::reference(pif, fields::PIF::host) == Some(agent.host.as_str())
}

async fn reconfigure_ip(agent: &Agent, c: &Call) -> Result<(), ApiError> {
    use fields::PIF as f;
    let r = c.ref_arg(0)?.to_owned();
    let p = topology::get(agent, class_ids::PIF, &r)?;
    topology::assert_pif_managed(&p)?;
    let mode = IpConfigurationMode::parse(c.str_arg(1)).ok_or_else(|| ApiError::invalid_value("mode", c.str_arg(1)))?;
    let (ip, netmask, gateway, dns) = (c.str_arg(2), c.str_arg(3), c.str_arg(4), c.str_arg(5));
    if mode == IpConfigurationMode::Static {
        assert_ip(Family::V4, "IP", ip)?;
        assert_ip(Family::V4, "netmask", netmask)?;
    }
    for (field, v) in [("IP", ip), ("netmask", netmask), ("gateway", gateway)] {
        if !v.is_empty() {
            assert_ip(Family::V4, field, v)?;
        }
    }
    let primary = text(&p, f::primary_address_type);
    if p.get(f::management).as_bool() == Some(true)
        && mode == IpConfigurationMode::None
        && primary == PrimaryAddressType::IPv4.name()
    {
        return Err(ApiError::PifIsManagementIface { pif: r });
    }
    let mut all_dns = dns_of(Family::V4, dns);
    all_dns.extend(dns_of(Family::V6, text(&p, f::DNS)));
    let (ip, netmask, gateway) = (ip.to_owned(), netmask.to_owned(), gateway.to_owned());
    agent
        .store
        .write(|tx| {
            set_field(tx, class_ids::PIF, &r, f::ip_configuration_mode, mode.value())?;
            set_field(tx, class_ids::PIF, &r, f::IP, Value::str(ip.clone()))?;
            set_field(tx, class_ids::PIF, &r, f::netmask, Value::str(netmask.clone()))?;
            set_field(tx, class_ids::PIF, &r, f::gateway, Value::str(gateway.clone()))?;
            set_field(tx, class_ids::PIF, &r, f::DNS, Value::str(all_dns.join(",")))
        })
        .await?;
    if on_this_host(agent, &p) {
        attach::refresh(agent, &r).await?;
    }
    Ok(())
}

async fn reconfigure_ipv6(agent: &Agent, c: &Call) -> Result<(), ApiError> {
    use fields::PIF as f;
    let r = c.ref_arg(0)?.to_owned();
    let p = topology::get(agent, class_ids::PIF, &r)?;
    topology::assert_pif_managed(&p)?;
    let mode =
        Ipv6ConfigurationMode::parse(c.str_arg(1)).ok_or_else(|| ApiError::invalid_value("mode", c.str_arg(1)))?;
    let (ipv6, gateway, dns) = (c.str_arg(2), c.str_arg(3), c.str_arg(4));
    if !gateway.is_empty() {
        assert_ip(Family::V6, "gateway", gateway)?;
    }
    if !ipv6.is_empty() {
        assert_cidr(Family::V6, "IPv6", ipv6)?;
    }
    let primary = text(&p, f::primary_address_type);
    if p.get(f::management).as_bool() == Some(true)
        && mode == Ipv6ConfigurationMode::None
        && primary == PrimaryAddressType::IPv6.name()
    {
        return Err(ApiError::PifIsManagementIface { pif: r });
    }
    let mut all_dns = dns_of(Family::V6, dns);
    all_dns.extend(dns_of(Family::V4, text(&p, f::DNS)));
    let (ipv6, gateway) = (ipv6.to_owned(), gateway.to_owned());
    agent
        .store
        .write(|tx| {
            set_field(tx, class_ids::PIF, &r, f::ipv6_configuration_mode, mode.value())?;
            set_field(tx, class_ids::PIF, &r, f::ipv6_gateway, Value::str(gateway.clone()))?;
            set_field(
                tx,
                class_ids::PIF,
                &r,
                f::IPv6,
                Value::set(vec![Value::str(ipv6.clone())]),
            )?;
            set_field(tx, class_ids::PIF, &r, f::DNS, Value::str(all_dns.join(",")))
        })
        .await?;
    if on_this_host(agent, &p) {
        attach::refresh(agent, &r).await?;
    }
    Ok(())
}

async fn set_property(agent: &Agent, pif: &str, name: &str, value: &str) -> Result<(), ApiError> {
    use fields::PIF as f;
    let p = topology::get(agent, class_ids::PIF, pif)?;
    let allowed = PROPERTIES
        .iter()
        .find(|(n, _)| *n == name)
        .is_some_and(|(_, values)| values.contains(&value));
    if !allowed {
        return Err(ApiError::invalid_value("properties", format!("{name} = {value}")));
    }
    let bond_master = refs(&p, f::bond_master_of);
    let has_properties = !bond_master.is_empty() || p.get(f::physical).as_bool() == Some(true);
    if !has_properties || topology::reference(&p, f::bond_slave_of).is_some() {
        return Err(ApiError::CannotChangePifProperties { pif: pif.to_owned() });
    }
    let mut props: Vec<(Value, Value)> = p
        .get(f::properties)
        .as_map()
        .iter()
        .filter(|(k, _)| k.as_str() != Some(name))
        .cloned()
        .collect();
    props.insert(0, (Value::str(name), Value::str(value)));
    let props = Value::map(props);
    let members: Vec<String> = bond_master
        .iter()
        .filter_map(|b| agent.store.get(class_ids::Bond, b))
        .flat_map(|b| refs(&b, fields::Bond::slaves))
        .collect();
    let vlan_pifs: Vec<String> = refs(&p, f::VLAN_slave_of)
        .iter()
        .filter_map(|v| agent.store.get(class_ids::VLAN, v))
        .filter_map(|v| topology::reference(&v, fields::VLAN::untagged_PIF).map(str::to_owned))
        .collect();
    agent
        .store
        .write(|tx| {
            set_field(tx, class_ids::PIF, pif, f::properties, props.clone())?;
            for m in &members {
                set_field(tx, class_ids::PIF, m, f::properties, props.clone())?;
            }
            Ok(())
        })
        .await?;
    if on_this_host(agent, &p) {
        for r in std::iter::once(pif.to_owned()).chain(vlan_pifs) {
            attach::refresh(agent, &r).await?;
        }
    }
    Ok(())
}

/// The bridge the reference names for a NIC: `xenbrN` for `ethN`, else `br<device>`.
pub fn bridge_for(device: &str) -> String {
    match device.strip_prefix("eth").and_then(|n| n.parse::<u32>().ok()) {
        Some(n) => format!("xenbr{n}"),
        None => format!("br{device}"),
    }
}

/// The network a new NIC's PIF joins: the one with its bridge, else a new one.
fn find_or_create_network(tx: &mut Tx, agent: &Agent, device: &str, managed: bool) -> Result<String, ApiError> {
    let bridge = if managed { bridge_for(device) } else { String::new() };
    if let Some(n) = agent
        .store
        .all(class_ids::network)
        .into_iter()
        .find(|n| text(n, fields::network::bridge) == bridge)
    {
        return Ok(n.reference.clone());
    }
    let r = new_ref();
    let mut n = default_object(class_ids::network, &r);
    use fields::network as nf;
    n.set(nf::uuid, Value::str(new_uuid()));
    n.set(
        nf::name_label,
        Value::str(format!("Pool-wide network associated with {device}")),
    );
    n.set(nf::bridge, Value::str(bridge));
    n.set(nf::MTU, Value::Int(1500));
    n.set(nf::managed, Value::Bool(managed));
    objects::create(tx, n)?;
    Ok(r)
}

/// A new PIF_metrics record.
fn new_metrics(tx: &mut Tx) -> Result<String, ApiError> {
    let r = new_ref();
    let mut m = default_object(class_ids::PIF_metrics, &r);
    m.set(fields::PIF_metrics::uuid, Value::str(new_uuid()));
    m.set(fields::PIF_metrics::carrier, Value::Bool(true));
    m.set(fields::PIF_metrics::last_updated, Value::DateTime(now()));
    objects::create(tx, m)?;
    Ok(r)
}

fn default_properties() -> Value {
    Value::string_map(DEFAULT_PROPERTIES.iter().copied())
}

/// Records a NIC of `host` as a new physical PIF (and its network when none has its bridge).
async fn introduce_nic(agent: &Agent, host: &str, nic: &Nic, managed: bool) -> Result<String, ApiError> {
    let r = new_ref();
    let (host, nic) = (host.to_owned(), nic.clone());
    agent
        .store
        .write(|tx| {
            use fields::PIF as f;
            let network = find_or_create_network(tx, agent, &nic.device, managed)?;
            let metrics = new_metrics(tx)?;
            let mut p = default_object(class_ids::PIF, &r);
            p.set(f::uuid, Value::str(new_uuid()));
            p.set(f::device, Value::str(nic.device.as_str()));
            p.set(f::network, Value::reference(network));
            p.set(f::host, Value::reference(host.as_str()));
            p.set(f::MAC, Value::str(nic.mac.as_str()));
            p.set(f::MTU, Value::Int(i64::from(nic.mtu)));
            p.set(f::VLAN, Value::Int(-1));
            p.set(f::metrics, Value::reference(metrics));
            p.set(f::physical, Value::Bool(true));
            p.set(f::currently_attached, Value::Bool(false));
            p.set(f::ip_configuration_mode, IpConfigurationMode::None.value());
            p.set(f::ipv6_configuration_mode, Ipv6ConfigurationMode::None.value());
            p.set(f::primary_address_type, PrimaryAddressType::IPv4.value());
            p.set(f::managed, Value::Bool(managed));
            p.set(f::properties, default_properties());
            p.set(f::igmp_snooping_status, PifIgmpStatus::unknown.value());
            objects::create(tx, p)
        })
        .await?;
    Ok(r)
}

/// The devices of `host`'s PIFs.
fn host_devices(agent: &Agent, host: &Object) -> Vec<String> {
    refs(host, fields::host::PIFs)
        .iter()
        .filter_map(|p| agent.store.get(class_ids::PIF, p))
        .filter(|p| topology::reference(p, fields::PIF::VLAN_master_of).is_none())
        .map(|p| text(&p, fields::PIF::device).to_owned())
        .collect()
}

/// `PIF.scan`: a PIF for every NIC of this host that has none; returns the new PIFs.
pub async fn scan(agent: &Agent, host: &str) -> Result<Vec<String>, ApiError> {
    let h = topology::get(agent, class_ids::host, host)?;
    if host != agent.host {
        // Another host's NICs are that host's daemon's to read.
        return Ok(Vec::new());
    }
    let nics = agent
        .network
        .backend
        .nics()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let known = host_devices(agent, &h);
    let mut made = Vec::new();
    for nic in nics.iter().filter(|n| !known.contains(&n.device)) {
        made.push(introduce_nic(agent, host, nic, true).await?);
    }
    Ok(made)
}

async fn introduce(agent: &Agent, host: &str, mac: &str, device: &str, managed: bool) -> Result<String, ApiError> {
    let h = topology::get(agent, class_ids::host, host)?;
    let nics = if host == agent.host {
        agent
            .network
            .backend
            .nics()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    } else {
        Vec::new()
    };
    let mut mac = mac.to_ascii_lowercase();
    if mac.is_empty() {
        mac = nics
            .iter()
            .find(|n| n.device == device)
            .map(|n| n.mac.clone())
            .unwrap_or_default();
    }
    if !is_valid_mac(&mac) {
        return Err(ApiError::MacInvalid { mac });
    }
    if host_devices(agent, &h).iter().any(|d| d == device) {
        return Err(ApiError::DuplicatePifDeviceName {
            device: device.to_owned(),
        });
    }
    let Some(nic) = nics
        .iter()
        .find(|n| n.device == device && n.mac.eq_ignore_ascii_case(&mac))
    else {
        return Err(
            ApiError::CouldNotFindNetworkInterfaceWithSpecifiedDeviceNameAndMacAddress {
                device: device.to_owned(),
                mac,
            },
        );
    };
    introduce_nic(agent, host, nic, managed).await
}

/// `PIF.forget`: refused for the management interface, bond members and masters, PIFs under
/// a VLAN or tunnel; brings a managed PIF down and forgets it and its metrics.
async fn forget(agent: &Agent, pif: &str) -> Result<(), ApiError> {
    use fields::PIF as f;
    let p = topology::get(agent, class_ids::PIF, pif)?;
    topology::assert_not_management(&p)?;
    topology::assert_not_in_bond(agent, &p)?;
    if !refs(&p, f::VLAN_slave_of).is_empty() || p.get(f::VLAN).as_int().unwrap_or(-1) != -1 {
        return Err(ApiError::PifVlanStillExists { pif: pif.to_owned() });
    }
    if !refs(&p, f::tunnel_transport_PIF_of).is_empty() || !refs(&p, f::tunnel_access_PIF_of).is_empty() {
        return Err(ApiError::PifTunnelStillExists { pif: pif.to_owned() });
    }
    if p.get(f::managed).as_bool() != Some(false)
        && p.get(f::currently_attached).as_bool() == Some(true)
        && on_this_host(agent, &p)
    {
        attach::bring_down(agent, pif).await?;
    }
    let metrics = topology::reference(&p, f::metrics).map(str::to_owned);
    agent
        .store
        .write(|tx| {
            if let Some(m) = &metrics {
                if tx.get(class_ids::PIF_metrics, m).is_some() {
                    objects::destroy(tx, class_ids::PIF_metrics, m)?;
                }
            }
            objects::destroy(tx, class_ids::PIF, pif)
        })
        .await
}

/// `PIF.db_introduce`: a record with the fields given, not plugged, with new metrics.
async fn db_introduce(agent: &Agent, c: &Call) -> Result<String, ApiError> {
    use fields::PIF as f;
    let r = new_ref();
    let mut p = default_object(class_ids::PIF, &r);
    p.set(f::uuid, Value::str(new_uuid()));
    let given = [
        (f::device, 0),
        (f::network, 1),
        (f::host, 2),
        (f::MAC, 3),
        (f::MTU, 4),
        (f::VLAN, 5),
        (f::physical, 6),
        (f::ip_configuration_mode, 7),
        (f::IP, 8),
        (f::netmask, 9),
        (f::gateway, 10),
        (f::DNS, 11),
        (f::VLAN_master_of, 13),
        (f::management, 14),
        (f::other_config, 15),
        (f::disallow_unplug, 16),
        (f::ipv6_configuration_mode, 17),
        (f::IPv6, 18),
        (f::ipv6_gateway, 19),
        (f::primary_address_type, 20),
        (f::managed, 21),
        (f::properties, 22),
    ];
    for (field, i) in given {
        p.set(field, c.arg(i));
    }
    p.set(f::currently_attached, Value::Bool(false));
    p.set(f::igmp_snooping_status, PifIgmpStatus::unknown.value());
    agent
        .store
        .write(|tx| {
            let m = new_metrics(tx)?;
            let mut p = p.clone();
            p.set(f::metrics, Value::reference(m));
            objects::create(tx, p)
        })
        .await?;
    Ok(r)
}
