//! The network messages through the real dispatch, on an agent with the simulated hypervisor
//! and network backends: the records they make and the simulated host's devices.

use super::backend_sim::{sim_mac, SimLink};
use super::management::Management;
use crate::schema::{class_ids, fields};
use crate::storage::tests::{env, Env};
use crate::value::Value;
use crate::ApiError;
use serde_json::json;
use std::collections::BTreeMap;

fn devices(e: &Env) -> BTreeMap<String, SimLink> {
    e.agent
        .network
        .backend
        .as_sim()
        .map(super::backend_sim::SimNet::snapshot)
        .unwrap_or_default()
}

fn master_of(e: &Env, dev: &str) -> Option<String> {
    devices(e).get(dev).and_then(|l| l.master.clone())
}

fn pif_by_device(e: &Env, device: &str) -> String {
    e.agent
        .store
        .all(class_ids::PIF)
        .into_iter()
        .filter(|p| p.str_field("device") == device && p.get(fields::PIF::VLAN_master_of).as_ref_str().is_none())
        .min_by_key(|p| p.generation)
        .map(|p| p.reference.clone())
        .unwrap_or_else(|| panic!("no PIF {device}"))
}

fn field(e: &Env, class: crate::schema::ClassId, r: &str, f: crate::schema::FieldId) -> Value {
    e.agent
        .store
        .get(class, r)
        .map(|o| o.get(f).clone())
        .unwrap_or(Value::None)
}

async fn scanned() -> Env {
    let e = env().await;
    let host = e.agent.host.clone();
    e.ok("PIF.scan", vec![json!(host)]).await;
    e
}

async fn new_network(e: &Env, label: &str) -> String {
    e.new_ref(
        "network.create",
        vec![json!({"name_label": label, "name_description": "", "MTU": 0, "other_config": {}, "tags": []})],
    )
    .await
}

#[actix::test]
async fn scan_introduces_each_nic_once_on_its_own_bridge() {
    let e = scanned().await;
    for n in 1..4 {
        let p = pif_by_device(&e, &format!("eth{n}"));
        assert_eq!(
            field(&e, class_ids::PIF, &p, fields::PIF::MAC).as_str(),
            Some(sim_mac(&format!("eth{n}")).as_str())
        );
        assert_eq!(
            field(&e, class_ids::PIF, &p, fields::PIF::currently_attached),
            Value::Bool(false)
        );
        let net = field(&e, class_ids::PIF, &p, fields::PIF::network);
        let bridge = field(&e, class_ids::network, net.as_str().unwrap(), fields::network::bridge);
        assert_eq!(bridge.as_str(), Some(format!("xenbr{n}").as_str()));
    }
    let eth0: Vec<_> = e
        .agent
        .store
        .all(class_ids::PIF)
        .into_iter()
        .filter(|p| p.str_field("device") == "eth0")
        .collect();
    assert_eq!(eth0.len(), 1, "the first boot's eth0 is not introduced again");
    let before = e.agent.store.count(class_ids::PIF);
    let host = e.agent.host.clone();
    e.ok("PIF.scan", vec![json!(host)]).await;
    assert_eq!(e.agent.store.count(class_ids::PIF), before);
}

#[actix::test]
async fn network_create_names_a_bridge_and_refuses_reserved_ones() {
    let e = env().await;
    let a = new_network(&e, "a").await;
    let b = new_network(&e, "b").await;
    assert_eq!(
        field(&e, class_ids::network, &a, fields::network::bridge).as_str(),
        Some("xapi0")
    );
    assert_eq!(
        field(&e, class_ids::network, &b, fields::network::bridge).as_str(),
        Some("xapi1")
    );
    assert_eq!(
        field(&e, class_ids::network, &a, fields::network::MTU).as_int(),
        Some(1500)
    );
    let err = e
        .call(
            "network.create",
            vec![json!({"name_label": "c", "bridge": "xenbr9", "MTU": 1500, "other_config": {}})],
        )
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::invalid_value("bridge", "xenbr9"));
}

#[actix::test]
async fn a_vlan_is_a_tagged_sub_interface_in_its_network_bridge() {
    let e = scanned().await;
    let eth1 = pif_by_device(&e, "eth1");
    let net = new_network(&e, "vlan 5").await;
    let vlan = e.new_ref("VLAN.create", vec![json!(eth1), json!(5), json!(net)]).await;
    let untagged = field(&e, class_ids::VLAN, &vlan, fields::VLAN::untagged_PIF)
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        field(&e, class_ids::PIF, &untagged, fields::PIF::currently_attached),
        Value::Bool(true)
    );
    assert_eq!(
        field(&e, class_ids::PIF, &untagged, fields::PIF::VLAN).as_int(),
        Some(5)
    );
    assert_eq!(
        field(&e, class_ids::PIF, &untagged, fields::PIF::VLAN_master_of).as_str(),
        Some(vlan.as_str())
    );
    let d = devices(&e);
    assert_eq!(d.get("eth1.5").map(|l| l.kind), Some("vlan"));
    assert_eq!(master_of(&e, "eth1.5").as_deref(), Some("xapi0"));

    // The reference's refusals.
    let other = new_network(&e, "other").await;
    let err = e
        .call("VLAN.create", vec![json!(eth1), json!(5), json!(other)])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::PifVlanExists { pif: "eth1".into() });
    let err = e
        .call("VLAN.create", vec![json!(eth1), json!(4095), json!(other)])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::VlanTagInvalid { vlan: "4095".into() });
    let err = e
        .call("VLAN.create", vec![json!(untagged), json!(7), json!(other)])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::PifIsVlan { pif: untagged.clone() });
    let err = e
        .call("VLAN.create", vec![json!(eth1), json!(6), json!(net)])
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::NetworkAlreadyConnected { .. }), "{err}");

    e.ok("VLAN.destroy", vec![json!(vlan)]).await;
    assert!(e.agent.store.get(class_ids::VLAN, &vlan).is_none());
    assert!(e.agent.store.get(class_ids::PIF, &untagged).is_none());
    let d = devices(&e);
    assert!(!d.contains_key("eth1.5") && !d.contains_key("xapi0"), "{d:?}");
}

#[actix::test]
async fn pool_create_vlan_makes_one_on_every_host_and_pif_destroy_removes_it() {
    let e = scanned().await;
    let net = new_network(&e, "guest 100").await;
    let made = e
        .ok("pool.create_VLAN", vec![json!("eth2"), json!(net), json!(100)])
        .await;
    let pifs: Vec<String> = made
        .as_set()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(pifs.len(), e.agent.store.count(class_ids::host));
    assert_eq!(master_of(&e, "eth2.100").as_deref(), Some("xapi0"));
    e.ok("PIF.destroy", vec![json!(pifs[0])]).await;
    assert!(!devices(&e).contains_key("eth2.100"));
    let eth2 = pif_by_device(&e, "eth2");
    let err = e.call("PIF.destroy", vec![json!(eth2)]).await.unwrap_err();
    assert_eq!(err, ApiError::PifIsPhysical { pif: eth2 });
    let err = e
        .call("pool.create_VLAN", vec![json!("eth2"), json!(net), json!(-1)])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::VlanTagInvalid { vlan: "-1".into() });
}

#[actix::test]
async fn a_bond_enslaves_its_members_and_gives_them_back() {
    let e = scanned().await;
    let (eth2, eth3) = (pif_by_device(&e, "eth2"), pif_by_device(&e, "eth3"));
    e.ok("PIF.plug", vec![json!(eth2)]).await;
    assert_eq!(master_of(&e, "eth2").as_deref(), Some("xenbr2"));
    let net = new_network(&e, "bond").await;
    let bond = e
        .new_ref(
            "Bond.create",
            vec![
                json!(net),
                json!([eth2, eth3]),
                json!(""),
                json!("active-backup"),
                json!({}),
            ],
        )
        .await;
    let master = field(&e, class_ids::Bond, &bond, fields::Bond::master)
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        field(&e, class_ids::PIF, &master, fields::PIF::device).as_str(),
        Some("bond0")
    );
    assert_eq!(
        field(&e, class_ids::PIF, &master, fields::PIF::currently_attached),
        Value::Bool(true)
    );
    assert_eq!(
        field(&e, class_ids::PIF, &eth2, fields::PIF::bond_slave_of).as_str(),
        Some(bond.as_str())
    );
    assert_eq!(master_of(&e, "eth2").as_deref(), Some("bond0"));
    assert_eq!(master_of(&e, "eth3").as_deref(), Some("bond0"));
    assert_eq!(master_of(&e, "bond0").as_deref(), Some("xapi0"));
    assert!(!devices(&e).contains_key("xenbr2"), "the member's own bridge is gone");

    let other = new_network(&e, "other").await;
    let err = e
        .call(
            "Bond.create",
            vec![json!(other), json!([eth2]), json!(""), json!("lacp"), json!({})],
        )
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::PifAlreadyBonded { pif: eth2.clone() });
    let err = e
        .call("VLAN.create", vec![json!(eth3), json!(9), json!(other)])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::CannotAddVlanToBondSlave { pif: eth3.clone() });
    let err = e.call("PIF.plug", vec![json!(eth3)]).await.unwrap_err();
    assert_eq!(err, ApiError::CannotPlugBondSlave { pif: eth3.clone() });
    let err = e
        .call(
            "Bond.create",
            vec![json!(other), json!([]), json!(""), json!("lacp"), json!({})],
        )
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::PifBondNeedsMoreMembers {});

    // Modes and properties.
    let err = e
        .call(
            "Bond.set_property",
            vec![json!(bond), json!("lacp-time"), json!("fast")],
        )
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::invalid_value("properties", "lacp-time = fast"));
    e.ok("Bond.set_mode", vec![json!(bond), json!("lacp")]).await;
    let props = field(&e, class_ids::Bond, &bond, fields::Bond::properties);
    assert_eq!(
        props.map_get("hashing_algorithm").and_then(Value::as_str),
        Some("tcpudp_ports")
    );
    assert_eq!(props.map_get("lacp-time").and_then(Value::as_str), Some("slow"));
    e.ok(
        "Bond.set_property",
        vec![json!(bond), json!("lacp-time"), json!("fast")],
    )
    .await;
    let props = field(&e, class_ids::Bond, &bond, fields::Bond::properties);
    assert_eq!(props.map_get("lacp-time").and_then(Value::as_str), Some("fast"));
    let err = e
        .call(
            "Bond.set_property",
            vec![json!(bond), json!("lacp-time"), json!("sometimes")],
        )
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::invalid_value("properties", "lacp-time = sometimes"));

    // A VLAN over the bond moves down to the primary member when the bond goes.
    let vnet = new_network(&e, "vlan on bond").await;
    let vlan = e
        .new_ref("VLAN.create", vec![json!(master), json!(20), json!(vnet)])
        .await;
    assert_eq!(master_of(&e, "bond0.20").as_deref(), Some("xapi2"));
    e.ok("Bond.destroy", vec![json!(bond)]).await;
    assert!(e.agent.store.get(class_ids::Bond, &bond).is_none());
    assert!(e.agent.store.get(class_ids::PIF, &master).is_none());
    let primary = field(&e, class_ids::VLAN, &vlan, fields::VLAN::tagged_PIF)
        .as_str()
        .unwrap()
        .to_owned();
    assert!(primary == eth2 || primary == eth3);
    let d = devices(&e);
    assert!(!d.contains_key("bond0") && !d.contains_key("bond0.20"), "{d:?}");
    let primary_dev = field(&e, class_ids::PIF, &primary, fields::PIF::device)
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(master_of(&e, &format!("{primary_dev}.20")).as_deref(), Some("xapi2"));
    let untagged = field(&e, class_ids::VLAN, &vlan, fields::VLAN::untagged_PIF)
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        field(&e, class_ids::PIF, &untagged, fields::PIF::device).as_str(),
        Some(primary_dev.as_str()),
        "the VLAN's PIF is named after the device it rides on"
    );
    assert_eq!(
        master_of(&e, "eth2").as_deref(),
        Some("xenbr2"),
        "plugged again on its own bridge"
    );
    assert_eq!(
        field(&e, class_ids::PIF, &eth3, fields::PIF::bond_slave_of),
        Value::null_ref()
    );
}

#[actix::test]
async fn a_tunnel_needs_a_configured_transport_and_rides_on_it() {
    let e = scanned().await;
    let eth1 = pif_by_device(&e, "eth1");
    let net = new_network(&e, "tunnel").await;
    let err = e
        .call("tunnel.create", vec![json!(eth1), json!(net), json!("gre")])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::TransportPifNotConfigured { pif: eth1.clone() });
    let err = e
        .call(
            "PIF.reconfigure_ip",
            vec![
                json!(eth1),
                json!("Static"),
                json!("10.9.0.300"),
                json!("255.255.255.0"),
                json!(""),
                json!(""),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::InvalidIpAddressSpecified { parameter: "IP".into() });
    e.ok(
        "PIF.reconfigure_ip",
        vec![
            json!(eth1),
            json!("Static"),
            json!("10.9.0.1"),
            json!("255.255.255.0"),
            json!("10.9.0.254"),
            json!("10.9.0.53,fd00::53"),
        ],
    )
    .await;
    assert_eq!(
        field(&e, class_ids::PIF, &eth1, fields::PIF::DNS).as_str(),
        Some("10.9.0.53")
    );
    let tunnel = e
        .new_ref("tunnel.create", vec![json!(eth1), json!(net), json!("vxlan")])
        .await;
    let access = field(&e, class_ids::tunnel, &tunnel, fields::tunnel::access_PIF)
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        field(&e, class_ids::PIF, &access, fields::PIF::device).as_str(),
        Some("tunnel0")
    );
    let d = devices(&e);
    assert_eq!(d.get("tunnel0").map(|l| l.kind), Some("vxlan"));
    assert_eq!(master_of(&e, "tunnel0").as_deref(), Some("xapi0"));
    let addr = d.get("xenbr1").map(|l| l.addresses.clone()).unwrap_or_default();
    assert_eq!(addr, vec![("10.9.0.1".parse().unwrap(), 24)]);
    let err = e.call("PIF.forget", vec![json!(eth1)]).await.unwrap_err();
    assert_eq!(err, ApiError::PifTunnelStillExists { pif: eth1.clone() });
    let other = new_network(&e, "other").await;
    let err = e
        .call("tunnel.create", vec![json!(access), json!(other), json!("gre")])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::IsTunnelAccessPif { pif: access.clone() });
    e.ok("tunnel.destroy", vec![json!(tunnel)]).await;
    assert!(e.agent.store.get(class_ids::PIF, &access).is_none());
    assert!(!devices(&e).contains_key("tunnel0"));
}

#[actix::test]
async fn the_management_interface_is_guarded_and_moves() {
    let e = scanned().await;
    let host = e.agent.host.clone();
    let mgmt = e.ok("host.get_management_interface", vec![json!(host)]).await;
    let mgmt = mgmt.as_str().unwrap().to_owned();
    assert_eq!(pif_by_device(&e, "eth0"), mgmt);
    let err = e.call("PIF.unplug", vec![json!(mgmt)]).await.unwrap_err();
    assert_eq!(err, ApiError::PifIsManagementIface { pif: mgmt.clone() });
    let err = e
        .call(
            "PIF.reconfigure_ip",
            vec![json!(mgmt), json!("None"), json!(""), json!(""), json!(""), json!("")],
        )
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::PifIsManagementIface { pif: mgmt.clone() });
    let err = e
        .call("PIF.set_primary_address_type", vec![json!(mgmt), json!("IPv6")])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::PifIsManagementIface { pif: mgmt.clone() });
    let err = e.call("PIF.forget", vec![json!(mgmt)]).await.unwrap_err();
    assert_eq!(err, ApiError::PifIsManagementIface { pif: mgmt.clone() });

    let eth1 = pif_by_device(&e, "eth1");
    let err = e
        .call("host.management_reconfigure", vec![json!(eth1)])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::PifHasNoNetworkConfiguration { pif: eth1.clone() });
    e.ok(
        "PIF.reconfigure_ip",
        vec![
            json!(eth1),
            json!("Static"),
            json!("192.0.2.10"),
            json!("255.255.255.0"),
            json!(""),
            json!(""),
        ],
    )
    .await;
    let mut follow = e.agent.network.management();
    e.ok("host.management_reconfigure", vec![json!(eth1)]).await;
    assert!(follow.has_changed().unwrap_or(false));
    assert_eq!(
        *follow.borrow_and_update(),
        Management::At("192.0.2.10".parse().unwrap())
    );
    let now = e.ok("host.get_management_interface", vec![json!(host)]).await;
    assert_eq!(now.as_str(), Some(eth1.as_str()));
    assert_eq!(
        field(&e, class_ids::PIF, &mgmt, fields::PIF::management),
        Value::Bool(false)
    );
    assert_eq!(
        field(&e, class_ids::host, &host, fields::host::address).as_str(),
        Some("192.0.2.10")
    );
    assert_eq!(master_of(&e, "eth1").as_deref(), Some("xenbr1"));

    let err = e
        .call("host.local_management_reconfigure", vec![json!("xenbr0")])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::NotInEmergencyMode {});
    e.ok("host.management_disable", vec![]).await;
    assert_eq!(*follow.borrow_and_update(), Management::Disabled);
    let err = e
        .call("host.get_management_interface", vec![json!(host)])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::internal("Not_found"));
}

#[actix::test]
async fn forget_and_introduce_a_nic() {
    let e = scanned().await;
    let host = e.agent.host.clone();
    let eth3 = pif_by_device(&e, "eth3");
    e.ok("PIF.forget", vec![json!(eth3)]).await;
    assert!(e.agent.store.get(class_ids::PIF, &eth3).is_none());
    let err = e
        .call(
            "PIF.introduce",
            vec![json!(host), json!("02:00:5e:00:00:99"), json!("eth3"), json!(true)],
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ApiError::CouldNotFindNetworkInterfaceWithSpecifiedDeviceNameAndMacAddress { .. }
    ));
    let err = e
        .call(
            "PIF.introduce",
            vec![json!(host), json!("nonsense"), json!("eth3"), json!(true)],
        )
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::MacInvalid { mac: "nonsense".into() });
    let back = e
        .new_ref(
            "PIF.introduce",
            vec![json!(host), json!(""), json!("eth3"), json!(true)],
        )
        .await;
    assert_eq!(
        field(&e, class_ids::PIF, &back, fields::PIF::MAC).as_str(),
        Some(sim_mac("eth3").as_str())
    );
    let err = e
        .call(
            "PIF.introduce",
            vec![json!(host), json!(""), json!("eth3"), json!(true)],
        )
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::DuplicatePifDeviceName { device: "eth3".into() });
    e.ok("PIF.set_property", vec![json!(back), json!("gro"), json!("off")])
        .await;
    let props = field(&e, class_ids::PIF, &back, fields::PIF::properties);
    assert_eq!(props.map_get("gro").and_then(Value::as_str), Some("off"));
    let err = e
        .call("PIF.set_property", vec![json!(back), json!("mtu"), json!("9000")])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::invalid_value("properties", "mtu = 9000"));
    e.ok("PIF.db_forget", vec![json!(back)]).await;
    assert!(e.agent.store.get(class_ids::PIF, &back).is_none());
}

#[actix::test]
async fn purposes_exclude_each_other_across_networks() {
    let e = env().await;
    let a = new_network(&e, "a").await;
    let b = new_network(&e, "b").await;
    e.ok("network.add_purpose", vec![json!(a), json!("nbd")]).await;
    e.ok("network.add_purpose", vec![json!(a), json!("nbd")]).await;
    assert_eq!(
        field(&e, class_ids::network, &a, fields::network::purpose)
            .as_set()
            .len(),
        1
    );
    let err = e
        .call("network.add_purpose", vec![json!(b), json!("insecure_nbd")])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ApiError::NetworkIncompatiblePurposes {
            new_purpose: "insecure_nbd".into(),
            conflicting_purpose: "nbd".into()
        }
    );
    e.ok("network.remove_purpose", vec![json!(a), json!("nbd")]).await;
    e.ok("network.add_purpose", vec![json!(b), json!("insecure_nbd")]).await;
}

#[actix::test]
async fn vif_addresses_locking_and_move() {
    let e = scanned().await;
    let store = &e.agent.store;
    let tpl = store
        .all(class_ids::VM)
        .into_iter()
        .find(|v| v.str_field("name_label") == "Debian Bookworm 12")
        .map(|v| v.reference.clone())
        .unwrap();
    let vm = e.new_ref("VM.clone", vec![json!(tpl), json!("net test")]).await;
    e.ok("VM.provision", vec![json!(vm)]).await;
    e.ok("VM.set_is_a_template", vec![json!(vm), json!(false)]).await;
    let net0 = field(&e, class_ids::PIF, &pif_by_device(&e, "eth0"), fields::PIF::network)
        .as_str()
        .unwrap()
        .to_owned();
    let vif = e
        .new_ref(
            "VIF.create",
            vec![json!({
                "VM": vm, "network": net0, "device": "0", "MAC": "", "MTU": 1500,
                "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}
            })],
        )
        .await;
    let err = e
        .call("VIF.add_ipv4_allowed", vec![json!(vif), json!("10.0.0.300")])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ApiError::InvalidIpAddressSpecified {
            parameter: "ipv4_allowed".into()
        }
    );
    e.ok("VIF.add_ipv4_allowed", vec![json!(vif), json!("10.0.0.5")]).await;
    e.ok("VIF.add_ipv6_allowed", vec![json!(vif), json!("fd00::5")]).await;
    e.ok("VIF.set_locking_mode", vec![json!(vif), json!("locked")]).await;
    assert_eq!(
        field(&e, class_ids::VIF, &vif, fields::VIF::locking_mode).as_str(),
        Some("locked")
    );
    let err = e
        .call(
            "VIF.configure_ipv4",
            vec![json!(vif), json!("Static"), json!("10.0.0.6/24"), json!("")],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ApiError::AddressViolatesLockingConstraint {
            address: "10.0.0.6/24".into()
        }
    );
    let err = e
        .call(
            "VIF.configure_ipv4",
            vec![json!(vif), json!("Static"), json!("10.0.0.5/24"), json!("")],
        )
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::VmLacksFeature { vm: vm.clone() });
    e.ok("VIF.remove_ipv4_allowed", vec![json!(vif), json!("10.0.0.5")])
        .await;
    assert!(field(&e, class_ids::VIF, &vif, fields::VIF::ipv4_allowed)
        .as_set()
        .is_empty());

    // A halted VM's VIF just changes network; a running one's port changes bridge.
    let net1 = field(&e, class_ids::PIF, &pif_by_device(&e, "eth1"), fields::PIF::network)
        .as_str()
        .unwrap()
        .to_owned();
    e.ok("VIF.move", vec![json!(vif), json!(net1)]).await;
    assert_eq!(
        field(&e, class_ids::VIF, &vif, fields::VIF::network).as_str(),
        Some(net1.as_str())
    );
    e.ok("VM.start", vec![json!(vm), json!(false), json!(false)]).await;
    let err = e.call("VIF.move", vec![json!(vif), json!(net0)]).await;
    assert!(err.is_ok(), "eth0 is attached: {err:?}");
    assert_eq!(
        field(&e, class_ids::VIF, &vif, fields::VIF::currently_attached),
        Value::Bool(true)
    );
    let err = e.call("VIF.move", vec![json!(vif), json!(net1)]).await.unwrap_err();
    assert_eq!(
        err,
        ApiError::HostCannotAttachNetwork {
            host: e.agent.host.clone(),
            network: net1.clone()
        }
    );
    let err = e
        .call("PIF.unplug", vec![json!(pif_by_device(&e, "eth0"))])
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::PifIsManagementIface { .. }));
    e.ok("VM.hard_shutdown", vec![json!(vm)]).await;
}

#[actix::test]
async fn at_start_the_attached_pifs_come_back_and_the_hosts_dhcp_nic_stays_as_it_is() {
    let e = scanned().await;
    let eth1 = pif_by_device(&e, "eth1");
    e.ok("PIF.plug", vec![json!(eth1)]).await;
    e.ok(
        "PIF.reconfigure_ip",
        vec![
            json!(eth1),
            json!("Static"),
            json!("10.9.0.1"),
            json!("255.255.255.0"),
            json!(""),
            json!(""),
        ],
    )
    .await;
    // A PIF recorded attached whose device the host does not have.
    let ghost = pif_by_device(&e, "eth2");
    e.agent
        .store
        .write(|tx| {
            crate::objects::set_field(tx, class_ids::PIF, &ghost, fields::PIF::device, Value::str("eth9"))?;
            crate::objects::set_field(
                tx,
                class_ids::PIF,
                &ghost,
                fields::PIF::currently_attached,
                Value::Bool(true),
            )
        })
        .await
        .unwrap();
    let sim = e.agent.network.backend.as_sim().unwrap();
    sim.reboot();
    assert!(!devices(&e).contains_key("xenbr1"));
    super::attach::at_start(&e.agent).await;
    let after = devices(&e);
    assert_eq!(after.get("xenbr1").map(|l| l.kind), Some("bridge"), "{after:?}");
    assert_eq!(master_of(&e, "eth1").as_deref(), Some("xenbr1"));
    assert!(after["xenbr1"].addresses.contains(&("10.9.0.1".parse().unwrap(), 24)));
    // The first start's management PIF (eth0, DHCP) is the host's own: not bridged.
    assert!(!after.contains_key("xenbr0"), "{after:?}");
    assert_eq!(master_of(&e, "eth0"), None);
    // What cannot come back is recorded detached.
    assert_eq!(
        field(&e, class_ids::PIF, &ghost, fields::PIF::currently_attached),
        Value::Bool(false)
    );
    assert_eq!(
        field(&e, class_ids::PIF, &eth1, fields::PIF::currently_attached),
        Value::Bool(true)
    );
}
