//! What a PIF is (a NIC, a VLAN's untagged PIF, a bond's master, a tunnel's access PIF), the
//! chain of PIFs under it, the checks several messages share, and the plan a backend gets to
//! bring it up or down.

use super::backend::{IpPlan, LinkPlan, PifPlan};
use crate::error::ApiError;
use crate::schema::enums::{BondMode, IpConfigurationMode, Ipv6ConfigurationMode, TunnelProtocol};
use crate::schema::{class_ids, fields, ClassId};
use crate::value::{Object, Value};
use crate::Agent;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// The most characters of a Linux interface name.
pub const IFNAME_MAX: usize = 15;

/// What a PIF is, and the object that makes it so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PifKind {
    /// The access PIF of this tunnel.
    TunnelAccess(String),
    /// The untagged PIF of this VLAN.
    VlanUntagged(String),
    /// The master of this bond.
    BondMaster(String),
    /// A NIC.
    Physical,
    /// None of these (a record made with `PIF.db_introduce`).
    Other,
}

/// A string field's text.
pub fn text(o: &Object, f: crate::schema::FieldId) -> &str {
    o.get(f).as_str().unwrap_or("")
}

/// A ref field, unless null.
pub fn reference(o: &Object, f: crate::schema::FieldId) -> Option<&str> {
    o.get(f).as_ref_str()
}

/// The refs in a set field.
pub fn refs(o: &Object, f: crate::schema::FieldId) -> Vec<String> {
    o.get(f)
        .as_set()
        .iter()
        .filter_map(Value::as_ref_str)
        .map(str::to_owned)
        .collect()
}

/// An object, or `HANDLE_INVALID [class, ref]`.
pub fn get(agent: &Agent, class: ClassId, r: &str) -> Result<Arc<Object>, ApiError> {
    agent
        .store
        .get(class, r)
        .ok_or_else(|| ApiError::handle_invalid(class.name(), r))
}

/// What `pif` is, as the reference decides it: tunnel access, then VLAN, then bond master,
/// then physical.
pub fn kind(pif: &Object) -> PifKind {
    use fields::PIF as f;
    if let Some(t) = refs(pif, f::tunnel_access_PIF_of).into_iter().next() {
        PifKind::TunnelAccess(t)
    } else if let Some(v) = reference(pif, f::VLAN_master_of) {
        PifKind::VlanUntagged(v.to_owned())
    } else if let Some(b) = refs(pif, f::bond_master_of).into_iter().next() {
        PifKind::BondMaster(b)
    } else if pif.get(f::physical).as_bool() == Some(true) {
        PifKind::Physical
    } else {
        PifKind::Other
    }
}

/// `pif`'s kind, then the kinds of the PIFs it stands on, down to a NIC or a bond master.
pub fn topology(agent: &Agent, pif: Arc<Object>) -> Vec<(PifKind, Arc<Object>)> {
    let mut out = Vec::new();
    let mut cur = Some(pif);
    while let Some(p) = cur.take() {
        let k = kind(&p);
        let below = match &k {
            PifKind::TunnelAccess(t) => agent
                .store
                .get(class_ids::tunnel, t)
                .and_then(|t| reference(&t, fields::tunnel::transport_PIF).map(str::to_owned)),
            PifKind::VlanUntagged(v) => agent
                .store
                .get(class_ids::VLAN, v)
                .and_then(|v| reference(&v, fields::VLAN::tagged_PIF).map(str::to_owned)),
            _ => None,
        };
        out.push((k, p));
        // A chain is at most tunnel → VLAN → NIC; the bound stops a corrupt loop.
        if out.len() < 8 {
            cur = below.and_then(|r| agent.store.get(class_ids::PIF, &r));
        }
    }
    out
}

/// `PIF_UNMANAGED [pif]` unless the toolstack manages the PIF.
pub fn assert_pif_managed(pif: &Object) -> Result<(), ApiError> {
    if pif.get(fields::PIF::managed).as_bool() == Some(false) {
        return Err(ApiError::PifUnmanaged {
            pif: pif.reference.clone(),
        });
    }
    Ok(())
}

/// `NETWORK_UNMANAGED [network]` unless the toolstack manages the network.
pub fn assert_network_managed(agent: &Agent, network: &str) -> Result<Arc<Object>, ApiError> {
    let n = get(agent, class_ids::network, network)?;
    if n.get(fields::network::managed).as_bool() == Some(false) {
        return Err(ApiError::NetworkUnmanaged {
            network: network.to_owned(),
        });
    }
    Ok(n)
}

/// `NETWORK_ALREADY_CONNECTED [host, pif]` when the host already has a PIF on the network.
pub fn assert_no_other_local_pifs(agent: &Agent, host: &str, network: &str) -> Result<(), ApiError> {
    let n = get(agent, class_ids::network, network)?;
    for p in refs(&n, fields::network::PIFs) {
        if let Some(pif) = agent.store.get(class_ids::PIF, &p) {
            if reference(&pif, fields::PIF::host) == Some(host) {
                return Err(ApiError::NetworkAlreadyConnected {
                    network: host.to_owned(),
                    connected_pif: p,
                });
            }
        }
    }
    Ok(())
}

/// `PIF_IS_MANAGEMENT_INTERFACE [pif]` when the PIF carries the management interface.
pub fn assert_not_management(pif: &Object) -> Result<(), ApiError> {
    if pif.get(fields::PIF::management).as_bool() == Some(true) {
        return Err(ApiError::PifIsManagementIface {
            pif: pif.reference.clone(),
        });
    }
    Ok(())
}

/// `PIF_ALREADY_BONDED [pif]` when the PIF is in a bond or is a bond's master.
pub fn assert_not_in_bond(agent: &Agent, pif: &Object) -> Result<(), ApiError> {
    let member =
        reference(pif, fields::PIF::bond_slave_of).is_some_and(|b| agent.store.get(class_ids::Bond, b).is_some());
    if member || !refs(pif, fields::PIF::bond_master_of).is_empty() {
        return Err(ApiError::PifAlreadyBonded {
            pif: pif.reference.clone(),
        });
    }
    Ok(())
}

/// The number of leading ones of a dotted netmask (`255.255.255.0` → 24).
pub fn prefix_of_netmask(netmask: &str) -> Option<u8> {
    let m: Ipv4Addr = netmask.parse().ok()?;
    let bits = u32::from(m);
    let ones = bits.leading_ones();
    // A netmask's ones are contiguous.
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// `addr/prefix` as an address and prefix length, checked against the family's width.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = s.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    let prefix: u8 = p.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

/// The IP configuration recorded on a PIF, as the backend applies it.
pub fn ip_plan(pif: &Object) -> IpPlan {
    use fields::PIF as f;
    let mut plan = IpPlan::default();
    let v4 = IpConfigurationMode::parse(text(pif, f::ip_configuration_mode));
    if v4 == Some(IpConfigurationMode::Static) {
        if let (Ok(ip), Some(prefix)) = (
            text(pif, f::IP).parse::<IpAddr>(),
            prefix_of_netmask(text(pif, f::netmask)),
        ) {
            plan.addresses.push((ip, prefix));
        }
        if let Ok(gw) = text(pif, f::gateway).parse::<IpAddr>() {
            plan.gateways.push(gw);
        }
    }
    let v6 = Ipv6ConfigurationMode::parse(text(pif, f::ipv6_configuration_mode));
    if v6 == Some(Ipv6ConfigurationMode::Static) {
        plan.addresses
            .extend(pif.get(f::IPv6).as_set().iter().filter_map(|a| parse_cidr(a.as_str()?)));
        if let Ok(gw) = text(pif, f::ipv6_gateway).parse::<IpAddr>() {
            plan.gateways.push(gw);
        }
    }
    plan.dhcp_v4 = v4 == Some(IpConfigurationMode::DHCP);
    plan.dynamic = v4 == Some(IpConfigurationMode::DHCP)
        || matches!(v6, Some(Ipv6ConfigurationMode::DHCP | Ipv6ConfigurationMode::Autoconf));
    plan
}

/// The VXLAN identifier or GRE key of a tunnel: `other_config:key` when set, else 24 bits of
/// the network's uuid, so every host of the pool derives the same one.
pub fn tunnel_key(tunnel: &Object, network: &Object) -> u32 {
    if let Some(k) = tunnel
        .get(fields::tunnel::other_config)
        .map_get("key")
        .and_then(Value::as_str)
        .and_then(|k| k.parse::<u32>().ok())
    {
        return k & 0x00ff_ffff;
    }
    let hex: String = text(network, fields::network::uuid)
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(6)
        .collect();
    u32::from_str_radix(&hex, 16).unwrap_or(1).max(1)
}

fn name_ok(name: String) -> Result<String, ApiError> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(ApiError::invalid_value("device", name));
    }
    Ok(name)
}

/// The plan that brings `pif` up (or takes it down) on its host.
pub fn plan(agent: &Agent, pif: &Object) -> Result<PifPlan, ApiError> {
    use fields::PIF as f;
    let network = get(
        agent,
        class_ids::network,
        reference(pif, f::network).unwrap_or_default(),
    )?;
    let bridge = name_ok(text(&network, fields::network::bridge).to_owned())?;
    let mtu = [pif.get(f::MTU), network.get(fields::network::MTU)]
        .into_iter()
        .filter_map(Value::as_int)
        .find(|m| *m > 0)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(1500);
    let device = text(pif, f::device).to_owned();
    let link = match kind(pif) {
        PifKind::Physical | PifKind::Other => LinkPlan::Physical {
            device: name_ok(device)?,
        },
        PifKind::VlanUntagged(v) => {
            let vlan = get(agent, class_ids::VLAN, &v)?;
            let tag = vlan.get(fields::VLAN::tag).as_int().unwrap_or(0);
            let tagged = get(
                agent,
                class_ids::PIF,
                reference(&vlan, fields::VLAN::tagged_PIF).unwrap_or_default(),
            )?;
            let parent = text(&tagged, f::device).to_owned();
            LinkPlan::Vlan {
                device: name_ok(format!("{parent}.{tag}"))?,
                parent,
                tag: u16::try_from(tag).map_err(|_| ApiError::VlanTagInvalid { vlan: tag.to_string() })?,
            }
        }
        PifKind::BondMaster(b) => {
            let bond = get(agent, class_ids::Bond, &b)?;
            let members = refs(&bond, fields::Bond::slaves)
                .iter()
                .filter_map(|m| agent.store.get(class_ids::PIF, m))
                .map(|m| text(&m, f::device).to_owned())
                .collect();
            LinkPlan::Bond {
                device: name_ok(device)?,
                members,
                mode: BondMode::parse(text(&bond, fields::Bond::mode)).unwrap_or(BondMode::active_backup),
                properties: bond
                    .get(fields::Bond::properties)
                    .as_map()
                    .iter()
                    .map(|(k, v)| (k.key_text(), v.key_text()))
                    .collect(),
                mac: text(pif, f::MAC).to_owned(),
            }
        }
        PifKind::TunnelAccess(t) => {
            let tunnel = get(agent, class_ids::tunnel, &t)?;
            let transport = get(
                agent,
                class_ids::PIF,
                reference(&tunnel, fields::tunnel::transport_PIF).unwrap_or_default(),
            )?;
            let transport_net = get(
                agent,
                class_ids::network,
                reference(&transport, f::network).unwrap_or_default(),
            )?;
            let other = tunnel.get(fields::tunnel::other_config);
            LinkPlan::Tunnel {
                device: name_ok(device)?,
                protocol: TunnelProtocol::parse(text(&tunnel, fields::tunnel::protocol)).unwrap_or(TunnelProtocol::gre),
                transport: text(&transport_net, fields::network::bridge).to_owned(),
                key: tunnel_key(&tunnel, &network),
                remote: other
                    .map_get("remote_ip")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok()),
                local: ip_plan(&transport).addresses.first().map(|(a, _)| *a),
            }
        }
    };
    Ok(PifPlan {
        bridge,
        mtu,
        link,
        ip: ip_plan(pif),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_become_prefixes() {
        assert_eq!(prefix_of_netmask("255.255.255.0"), Some(24));
        assert_eq!(prefix_of_netmask("255.255.0.0"), Some(16));
        assert_eq!(prefix_of_netmask("255.255.255.255"), Some(32));
        assert_eq!(prefix_of_netmask("0.0.0.0"), Some(0));
        assert_eq!(prefix_of_netmask("255.0.255.0"), None);
        assert_eq!(prefix_of_netmask("nonsense"), None);
    }

    #[test]
    fn cidrs_are_checked_against_their_family() {
        assert_eq!(parse_cidr("10.0.0.1/24"), Some(("10.0.0.1".parse().unwrap(), 24)));
        assert_eq!(parse_cidr("fd00::1/64"), Some(("fd00::1".parse().unwrap(), 64)));
        assert_eq!(parse_cidr("10.0.0.1/33"), None);
        assert_eq!(parse_cidr("10.0.0.1"), None);
    }
}
