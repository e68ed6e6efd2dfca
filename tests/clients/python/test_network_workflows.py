"""Network workflows of published XenAPI clients, as XenAPI.py calls, on a daemon with the
simulated network backend (tests/clients/python/test_network_netns.py runs them on Linux).

- CloudStack (CitrixResourceBase): a VLAN network per isolated guest network: network.create
  named VLAN-<uuid>-<tag>, VLAN.create on the host's physical PIF, then VLAN.destroy and
  network.destroy when the guest network goes; `echo` host plugin health checks are in
  test_plugins.py.
- terraform (xenserver provider): network.create, pool.create_VLAN_from_PIF, PIF.reconfigure_ip
  for a static address, then teardown.
- Xen Orchestra (xo-server's network API): a bonded network (network.create + Bond.create),
  a VLAN on the bond (pool.create_VLAN_from_PIF), a private network over a tunnel
  (tunnel.create), Bond.set_mode.
- Ansible's xenserver modules only attach VIFs to existing networks (VIF.create / VIF.move).
"""

from __future__ import annotations

import XenAPI
import pytest


def failure(fn, *args) -> list[str]:
    with pytest.raises(XenAPI.Failure) as e:
        fn(*args)
    return e.value.details


def this_host(xapi) -> str:
    return xapi.host.get_all()[0]


def pif_of(xapi, device: str) -> str:
    host = this_host(xapi)
    for ref, rec in xapi.PIF.get_all_records().items():
        if rec["host"] == host and rec["device"] == device and rec["VLAN_master_of"] == "OpaqueRef:NULL":
            return ref
    raise AssertionError(f"no PIF {device}")


@pytest.fixture
def scanned(xapi):
    xapi.PIF.scan(this_host(xapi))
    return xapi


def new_network(xapi, label: str, mtu: str = "1500") -> str:
    return xapi.network.create({"name_label": label, "name_description": "", "MTU": mtu,
                                "other_config": {}, "tags": []})


def test_cloudstack_vlan_per_guest_network(scanned):
    xapi = scanned
    # CloudStack finds the physical PIF carrying the guest traffic label by its network.
    pif = pif_of(xapi, "eth1")
    assert xapi.PIF.get_record(pif)["VLAN"] == "-1"
    tag = 1001
    net = new_network(xapi, f"VLAN-{xapi.network.get_uuid(xapi.PIF.get_network(pif))}-{tag}")
    assert xapi.network.get_by_name_label(xapi.network.get_name_label(net)) == [net]
    vlan = xapi.VLAN.create(pif, str(tag), net)
    rec = xapi.VLAN.get_record(vlan)
    assert rec["tag"] == str(tag) and rec["tagged_PIF"] == pif
    untagged = xapi.PIF.get_record(rec["untagged_PIF"])
    assert untagged["VLAN"] == str(tag)
    assert untagged["network"] == net
    assert untagged["currently_attached"] is True
    assert xapi.network.get_PIFs(net) == [rec["untagged_PIF"]]
    # A second guest network on the same tag is refused as the reference refuses it.
    other = new_network(xapi, "VLAN-other")
    assert failure(xapi.VLAN.create, pif, str(tag), other) == ["PIF_VLAN_EXISTS", "eth1"]
    assert failure(xapi.VLAN.create, pif, "4095", other) == ["VLAN_TAG_INVALID", "4095"]
    assert failure(xapi.VLAN.create, rec["untagged_PIF"], "7", other) == ["PIF_IS_VLAN", rec["untagged_PIF"]]
    # Teardown when the guest network is garbage collected.
    assert failure(xapi.network.destroy, net) == ["NETWORK_CONTAINS_PIF", rec["untagged_PIF"]]
    xapi.VLAN.destroy(vlan)
    xapi.network.destroy(net)
    xapi.network.destroy(other)
    assert vlan not in xapi.VLAN.get_all()


def test_terraform_vlan_from_pif_and_static_address(scanned):
    xapi = scanned
    pif = pif_of(xapi, "eth2")
    net = new_network(xapi, "tf-vlan-42", "1400")
    assert xapi.network.get_bridge(net).startswith("xapi")
    pifs = xapi.pool.create_VLAN_from_PIF(pif, net, "42")
    assert len(pifs) == 1
    vpif = pifs[0]
    assert xapi.PIF.get_VLAN(vpif) == "42"
    xapi.PIF.reconfigure_ip(vpif, "Static", "198.51.100.7", "255.255.255.0", "198.51.100.1", "198.51.100.53")
    rec = xapi.PIF.get_record(vpif)
    assert (rec["ip_configuration_mode"], rec["IP"], rec["netmask"], rec["gateway"], rec["DNS"]) == (
        "Static", "198.51.100.7", "255.255.255.0", "198.51.100.1", "198.51.100.53")
    assert failure(xapi.PIF.reconfigure_ip, vpif, "Static", "198.51.100.700", "255.255.255.0", "", "") == [
        "INVALID_IP_ADDRESS_SPECIFIED", "IP"]
    xapi.PIF.reconfigure_ipv6(vpif, "Static", "2001:db8::7/64", "", "")
    assert xapi.PIF.get_IPv6(vpif) == ["2001:db8::7/64"]
    assert failure(xapi.PIF.reconfigure_ipv6, vpif, "Static", "2001:db8::7", "", "") == [
        "INVALID_CIDR_ADDRESS_SPECIFIED", "IPv6"]
    xapi.PIF.unplug(vpif)
    assert xapi.PIF.get_currently_attached(vpif) is False
    xapi.PIF.plug(vpif)
    assert xapi.PIF.get_currently_attached(vpif) is True
    xapi.VLAN.destroy(xapi.PIF.get_VLAN_master_of(vpif))
    xapi.network.destroy(net)


def test_xen_orchestra_bond_vlan_and_tunnel(scanned):
    xapi = scanned
    eth2, eth3 = pif_of(xapi, "eth2"), pif_of(xapi, "eth3")
    bnet = new_network(xapi, "Bond 2+3")
    bond = xapi.Bond.create(bnet, [eth2, eth3], "", "active-backup", {})
    rec = xapi.Bond.get_record(bond)
    assert sorted(rec["slaves"]) == sorted([eth2, eth3])
    master = xapi.PIF.get_record(rec["master"])
    assert master["device"] == "bond0" and master["network"] == bnet
    assert master["currently_attached"] is True
    assert xapi.PIF.get_bond_slave_of(eth2) == bond
    # XO refuses nothing itself: the reference's errors reach the user.
    other = new_network(xapi, "other")
    assert failure(xapi.Bond.create, other, [eth2], "", "lacp", {}) == ["PIF_ALREADY_BONDED", eth2]
    assert failure(xapi.PIF.plug, eth3) == ["CANNOT_PLUG_BOND_SLAVE", eth3]
    assert failure(xapi.VLAN.create, eth3, "5", other) == ["CANNOT_ADD_VLAN_TO_BOND_SLAVE", eth3]
    xapi.Bond.set_mode(bond, "lacp")
    assert xapi.Bond.get_properties(bond) == {"hashing_algorithm": "tcpudp_ports", "lacp-time": "slow",
                                              "lacp-fallback-ab": "true"}
    xapi.Bond.set_property(bond, "lacp-time", "fast")
    assert xapi.Bond.get_properties(bond)["lacp-time"] == "fast"
    assert failure(xapi.Bond.set_property, bond, "miimon", "100") == ["INVALID_VALUE", "properties", "miimon = 100"]
    # A VLAN network on the bond.
    vnet = new_network(xapi, "VLAN 30 on bond")
    vpifs = xapi.pool.create_VLAN_from_PIF(rec["master"], vnet, "30")
    assert xapi.PIF.get_device(vpifs[0]) == "bond0"
    # A private network over a tunnel on a configured transport PIF.
    eth1 = pif_of(xapi, "eth1")
    tnet = new_network(xapi, "private")
    assert failure(xapi.tunnel.create, eth1, tnet, "vxlan") == ["TRANSPORT_PIF_NOT_CONFIGURED", eth1]
    xapi.PIF.reconfigure_ip(eth1, "Static", "203.0.113.1", "255.255.255.0", "", "")
    tunnel = xapi.tunnel.create(eth1, tnet, "vxlan")
    trec = xapi.tunnel.get_record(tunnel)
    assert trec["protocol"] == "vxlan" and trec["status"] == {"active": "true"}
    assert xapi.PIF.get_device(trec["access_PIF"]) == "tunnel0"
    assert failure(xapi.PIF.forget, eth1) == ["PIF_TUNNEL_STILL_EXISTS", eth1]
    xapi.tunnel.destroy(tunnel)
    # Teardown: the VLAN rides down to a member with the bond.
    xapi.Bond.destroy(bond)
    assert xapi.PIF.get_bond_slave_of(eth2) == "OpaqueRef:NULL"
    assert xapi.PIF.get_device(vpifs[0]) in ("eth2", "eth3")
    xapi.VLAN.destroy(xapi.PIF.get_VLAN_master_of(vpifs[0]))
    for n in (bnet, vnet, tnet, other):
        xapi.network.destroy(n)


def test_management_interface_refusals_and_queries(scanned):
    xapi = scanned
    host = this_host(xapi)
    mgmt = xapi.host.get_management_interface(host)
    assert xapi.PIF.get_management(mgmt) is True
    assert failure(xapi.PIF.unplug, mgmt) == ["PIF_IS_MANAGEMENT_INTERFACE", mgmt]
    assert failure(xapi.PIF.forget, mgmt) == ["PIF_IS_MANAGEMENT_INTERFACE", mgmt]
    eth3 = pif_of(xapi, "eth3")
    assert failure(xapi.host.management_reconfigure, eth3) == ["PIF_HAS_NO_NETWORK_CONFIGURATION", eth3]
    assert failure(xapi.host.local_management_reconfigure, "xenbr3") == ["NOT_IN_EMERGENCY_MODE"]
    net = xapi.PIF.get_network(eth3)
    assert failure(xapi.pool.management_reconfigure, net) == ["PIF_HAS_NO_NETWORK_CONFIGURATION", eth3]


def test_network_purposes(xapi):
    a, b = new_network(xapi, "nbd a"), new_network(xapi, "nbd b")
    xapi.network.add_purpose(a, "nbd")
    assert xapi.network.get_purpose(a) == ["nbd"]
    assert failure(xapi.network.add_purpose, b, "insecure_nbd") == [
        "NETWORK_INCOMPATIBLE_PURPOSES", "insecure_nbd", "nbd"]
    xapi.network.remove_purpose(a, "nbd")
    xapi.network.add_purpose(b, "insecure_nbd")
    xapi.network.remove_purpose(b, "insecure_nbd")
    for n in (a, b):
        xapi.network.destroy(n)
