//! VIF messages about networks: `VIF.move` (a running VM's backend port changes bridge
//! without the guest noticing), the locking mode and allowed addresses, and the addresses the
//! guest agent is to set (`configure_ipv4`/`configure_ipv6`).

use super::addresses::{assert_cidr, assert_ip, assert_ip_or_cidr, Family};
use super::topology::{self, refs, text};
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::hypervisor::{IpSetting, VifIpSetting};
use crate::objects::set_field;
use crate::schema::enums::{VifIpv4ConfigurationMode, VifIpv6ConfigurationMode, VifLockingMode};
use crate::schema::{class_ids, fields, FieldId};
use crate::value::{Object, Value};
use crate::Agent;

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::VIF, "move", |agent, _, c| {
            move_vif(&agent, c.ref_arg(0)?, c.ref_arg(1)?)
                .await
                .map(|()| Value::None)
        }),
        entry!(class_ids::VIF, "set_locking_mode", |agent, _, c| {
            let r = c.ref_arg(0)?.to_owned();
            topology::get(&agent, class_ids::VIF, &r)?;
            let mode =
                VifLockingMode::parse(c.str_arg(1)).ok_or_else(|| ApiError::invalid_value("value", c.str_arg(1)))?;
            write(&agent, &r, fields::VIF::locking_mode, mode.value()).await
        }),
        entry!(class_ids::VIF, "set_ipv4_allowed", |agent, _, c| {
            set_allowed(&agent, c.ref_arg(0)?, Family::V4, c.arg(1)).await
        }),
        entry!(class_ids::VIF, "set_ipv6_allowed", |agent, _, c| {
            set_allowed(&agent, c.ref_arg(0)?, Family::V6, c.arg(1)).await
        }),
        entry!(class_ids::VIF, "add_ipv4_allowed", |agent, _, c| {
            add_allowed(&agent, c.ref_arg(0)?, Family::V4, c.str_arg(1), true).await
        }),
        entry!(class_ids::VIF, "add_ipv6_allowed", |agent, _, c| {
            add_allowed(&agent, c.ref_arg(0)?, Family::V6, c.str_arg(1), true).await
        }),
        entry!(class_ids::VIF, "remove_ipv4_allowed", |agent, _, c| {
            add_allowed(&agent, c.ref_arg(0)?, Family::V4, c.str_arg(1), false).await
        }),
        entry!(class_ids::VIF, "remove_ipv6_allowed", |agent, _, c| {
            add_allowed(&agent, c.ref_arg(0)?, Family::V6, c.str_arg(1), false).await
        }),
        entry!(class_ids::VIF, "configure_ipv4", |agent, _, c| {
            let r = c.ref_arg(0)?.to_owned();
            let vif = topology::get(&agent, class_ids::VIF, &r)?;
            let mode = VifIpv4ConfigurationMode::parse(c.str_arg(1))
                .ok_or_else(|| ApiError::invalid_value("mode", c.str_arg(1)))?;
            let (address, gateway) = (c.str_arg(2), c.str_arg(3));
            if mode == VifIpv4ConfigurationMode::Static {
                assert_cidr(Family::V4, "address", address)?;
                assert_no_locking_conflict(&agent, &vif, Family::V4, address)?;
                if !gateway.is_empty() {
                    assert_ip(Family::V4, "gateway", gateway)?;
                }
            }
            assert_guest_sets_addresses(&agent, &vif)?;
            let (address, gateway) = (address.to_owned(), gateway.to_owned());
            agent
                .store
                .write(|tx| {
                    use fields::VIF as f;
                    set_field(tx, class_ids::VIF, &r, f::ipv4_configuration_mode, mode.value())?;
                    set_field(
                        tx,
                        class_ids::VIF,
                        &r,
                        f::ipv4_addresses,
                        Value::set(vec![Value::str(address.clone())]),
                    )?;
                    set_field(tx, class_ids::VIF, &r, f::ipv4_gateway, Value::str(gateway.clone()))
                })
                .await?;
            crate::lifecycle::devices::publish_ip_setting(&agent, &r)
                .await
                .map(|()| Value::None)
        }),
        entry!(class_ids::VIF, "configure_ipv6", |agent, _, c| {
            let r = c.ref_arg(0)?.to_owned();
            let vif = topology::get(&agent, class_ids::VIF, &r)?;
            let mode = VifIpv6ConfigurationMode::parse(c.str_arg(1))
                .ok_or_else(|| ApiError::invalid_value("mode", c.str_arg(1)))?;
            let (address, gateway) = (c.str_arg(2), c.str_arg(3));
            if mode == VifIpv6ConfigurationMode::Static {
                assert_cidr(Family::V6, "address", address)?;
                assert_no_locking_conflict(&agent, &vif, Family::V6, address)?;
                if !gateway.is_empty() {
                    assert_ip(Family::V6, "gateway", gateway)?;
                }
            }
            assert_guest_sets_addresses(&agent, &vif)?;
            let (address, gateway) = (address.to_owned(), gateway.to_owned());
            agent
                .store
                .write(|tx| {
                    use fields::VIF as f;
                    set_field(tx, class_ids::VIF, &r, f::ipv6_configuration_mode, mode.value())?;
                    set_field(
                        tx,
                        class_ids::VIF,
                        &r,
                        f::ipv6_addresses,
                        Value::set(vec![Value::str(address.clone())]),
                    )?;
                    set_field(tx, class_ids::VIF, &r, f::ipv6_gateway, Value::str(gateway.clone()))
                })
                .await?;
            crate::lifecycle::devices::publish_ip_setting(&agent, &r)
                .await
                .map(|()| Value::None)
        }),
    ]
}

async fn write(agent: &Agent, vif: &str, f: FieldId, v: Value) -> Result<Value, ApiError> {
    agent
        .store
        .write(|tx| set_field(tx, class_ids::VIF, vif, f, v.clone()))
        .await
        .map(|()| Value::None)
}

fn allowed_field(family: Family) -> (FieldId, &'static str) {
    match family {
        Family::V4 => (fields::VIF::ipv4_allowed, "ipv4_allowed"),
        Family::V6 => (fields::VIF::ipv6_allowed, "ipv6_allowed"),
    }
}

async fn set_allowed(agent: &Agent, vif: &str, family: Family, value: Value) -> Result<Value, ApiError> {
    topology::get(agent, class_ids::VIF, vif)?;
    let (f, name) = allowed_field(family);
    let mut items: Vec<Value> = Vec::new();
    for v in value.as_set() {
        let s = v.as_str().unwrap_or_default();
        assert_ip_or_cidr(family, name, s)?;
        if !items.iter().any(|i| i.as_str() == Some(s)) {
            items.push(Value::str(s));
        }
    }
    write(agent, vif, f, Value::set(items)).await
}

async fn add_allowed(agent: &Agent, vif: &str, family: Family, value: &str, add: bool) -> Result<Value, ApiError> {
    let o = topology::get(agent, class_ids::VIF, vif)?;
    let (f, name) = allowed_field(family);
    let mut items: Vec<Value> = o.get(f).as_set().to_vec();
    if add {
        assert_ip_or_cidr(family, name, value)?;
        if items.iter().any(|i| i.as_str() == Some(value)) {
            return Ok(Value::None);
        }
        items.push(Value::str(value));
    } else {
        items.retain(|i| i.as_str() != Some(value));
    }
    write(agent, vif, f, Value::set(items)).await
}

/// The locking mode in force: the VIF's, or its network's default.
fn effective_locking_mode(agent: &Agent, vif: &Object) -> String {
    let own = text(vif, fields::VIF::locking_mode);
    if own != VifLockingMode::network_default.name() {
        return own.to_owned();
    }
    topology::reference(vif, fields::VIF::network)
        .and_then(|n| agent.store.get(class_ids::network, n))
        .map(|n| text(&n, fields::network::default_locking_mode).to_owned())
        .unwrap_or_default()
}

/// `ADDRESS_VIOLATES_LOCKING_CONSTRAINT [address]` when the VIF is locked and the address is
/// not among those it allows.
fn assert_no_locking_conflict(agent: &Agent, vif: &Object, family: Family, cidr: &str) -> Result<(), ApiError> {
    if effective_locking_mode(agent, vif) != VifLockingMode::locked.name() {
        return Ok(());
    }
    let (f, _) = allowed_field(family);
    let address = cidr.split('/').next().unwrap_or_default();
    if vif.get(f).as_set().iter().any(|a| a.as_str() == Some(address)) {
        Ok(())
    } else {
        Err(ApiError::AddressViolatesLockingConstraint {
            address: cidr.to_owned(),
        })
    }
}

/// `VM_LACKS_FEATURE [vm]` unless the VM's guest agent says it sets addresses
/// (`feature-static-ip-setting` = 1 in its guest metrics).
fn assert_guest_sets_addresses(agent: &Agent, vif: &Object) -> Result<(), ApiError> {
    let vm = topology::reference(vif, fields::VIF::VM).unwrap_or_default().to_owned();
    let can = agent
        .store
        .get(class_ids::VM, &vm)
        .and_then(|v| topology::reference(&v, fields::VM::guest_metrics).map(str::to_owned))
        .and_then(|g| agent.store.get(class_ids::VM_guest_metrics, &g))
        .and_then(|g| {
            g.get(fields::VM_guest_metrics::other)
                .map_get("feature-static-ip-setting")
                .and_then(Value::as_str)
                .map(|v| v == "1")
        })
        .unwrap_or(false);
    if can {
        Ok(())
    } else {
        Err(ApiError::VmLacksFeature { vm })
    }
}

/// `VIF.move`: the VIF joins another network; a running VM's backend port moves bridge,
/// which needs a PIF of this host on the network (or a network with no PIF at all).
async fn move_vif(agent: &Agent, vif: &str, network: &str) -> Result<(), ApiError> {
    let v = topology::get(agent, class_ids::VIF, vif)?;
    let n = topology::get(agent, class_ids::network, network)?;
    let active = v.get(fields::VIF::currently_attached).as_bool() == Some(true);
    let domid = topology::reference(&v, fields::VIF::VM)
        .and_then(|vm| agent.store.get(class_ids::VM, vm))
        .and_then(|vm| vm.get(fields::VM::domid).as_int())
        .filter(|d| *d >= 0);
    if active {
        let pifs = refs(&n, fields::network::PIFs);
        let reachable = pifs.is_empty()
            || pifs.iter().filter_map(|p| agent.store.get(class_ids::PIF, p)).any(|p| {
                topology::reference(&p, fields::PIF::host) == Some(agent.host.as_str())
                    && p.get(fields::PIF::currently_attached).as_bool() == Some(true)
            });
        if !reachable {
            return Err(ApiError::HostCannotAttachNetwork {
                host: agent.host.clone(),
                network: network.to_owned(),
            });
        }
    }
    let r = vif.to_owned();
    let net = network.to_owned();
    agent
        .store
        .write(|tx| {
            set_field(
                tx,
                class_ids::VIF,
                &r,
                fields::VIF::network,
                Value::reference(net.as_str()),
            )
        })
        .await?;
    if let (true, Some(domid)) = (active, domid) {
        let port = format!("vif{domid}.{}", text(&v, fields::VIF::device));
        let bridge = text(&n, fields::network::bridge).to_owned();
        agent
            .network
            .backend
            .move_port(&port, &bridge)
            .await
            .map_err(|e| ApiError::internal(format!("moving {port} to {bridge}: {e}")))?;
    }
    Ok(())
}

/// The address settings a VIF's record asks of the guest's tools: per family, static with the
/// first address of `ipv4_addresses`/`ipv6_addresses` and the gateway when the mode is
/// `Static`, the guest's own choice otherwise.
pub fn ip_setting(vif: &Object) -> VifIpSetting {
    use fields::VIF as f;
    let family = |is_static: bool, addresses: FieldId, gateway: FieldId| {
        let address = vif
            .get(addresses)
            .as_set()
            .iter()
            .filter_map(Value::as_str)
            .find(|a| !a.is_empty())
            .map(str::to_owned);
        match address {
            Some(address) if is_static => IpSetting::Static {
                address,
                gateway: vif.get(gateway).as_str().filter(|g| !g.is_empty()).map(str::to_owned),
            },
            _ => IpSetting::Unspecified,
        }
    };
    VifIpSetting {
        v4: family(
            vif.get(f::ipv4_configuration_mode) == &VifIpv4ConfigurationMode::Static.value(),
            f::ipv4_addresses,
            f::ipv4_gateway,
        ),
        v6: family(
            vif.get(f::ipv6_configuration_mode) == &VifIpv6ConfigurationMode::Static.value(),
            f::ipv6_addresses,
            f::ipv6_gateway,
        ),
    }
}
