"""The objects a fresh state dir starts with, read through XenAPI.py."""

from helpers import OTHER_INSTALL_MEDIA, control_domain


def test_vm_records_hold_control_domain_and_templates(xapi):
    vms = xapi.VM.get_all_records()
    assert isinstance(vms, dict) and vms
    for ref in vms:
        assert ref.startswith("OpaqueRef:"), ref
    doms = [v for v in vms.values() if v["is_control_domain"]]
    assert len(doms) == 1, [v["name_label"] for v in doms]
    dom0 = doms[0]
    assert dom0["power_state"] == "Running", dom0["power_state"]
    assert dom0["domid"] == "0", f"domid must travel as the string '0': {dom0['domid']!r}"
    assert dom0["is_a_template"] is False
    templates = [v for v in vms.values() if v["is_a_template"]]
    names = sorted(v["name_label"] for v in templates)
    assert OTHER_INSTALL_MEDIA in names, names
    assert len(templates) >= 2, f"expected several templates (some Linux distributions): {names}"
    for t in templates:
        assert t["power_state"] == "Halted", (t["name_label"], t["power_state"])
        assert t["is_control_domain"] is False


def test_control_domain_resident_on_host(xapi):
    ref, dom0 = control_domain(xapi)
    hosts = xapi.host.get_all()
    assert dom0["resident_on"] in hosts, dom0["resident_on"]
    assert xapi.VM.get_is_control_domain(ref) is True
    assert xapi.VM.get_power_state(ref) == "Running"


def test_pool_and_host(xapi):
    pools = xapi.pool.get_all_records()
    assert len(pools) == 1, pools
    (pool_ref, pool), = pools.items()
    assert pool_ref.startswith("OpaqueRef:")
    master = pool["master"]
    assert master in xapi.host.get_all(), master
    assert xapi.pool.get_master(pool_ref) == master
    host = xapi.host.get_record(master)
    assert host["uuid"] and isinstance(host["uuid"], str)
    assert isinstance(host["name_label"], str)
    assert xapi.host.get_by_uuid(host["uuid"]) == master
    major = xapi.host.get_API_version_major(master)
    minor = xapi.host.get_API_version_minor(master)
    # ints travel as strings over XML-RPC
    assert isinstance(major, str) and major.isdigit() and int(major) >= 2, repr(major)
    assert isinstance(minor, str) and minor.isdigit(), repr(minor)


def test_storage_and_network_seeded(xapi):
    srs = xapi.SR.get_all_records()
    assert srs, "a fresh state dir must have a local SR"
    pbds = xapi.PBD.get_all_records()
    plugged = [p for p in pbds.values() if p["currently_attached"] and p["SR"] in srs]
    assert plugged, f"expected a plugged PBD for the local SR: {pbds}"
    nets = xapi.network.get_all_records()
    pifs = xapi.PIF.get_all_records()
    assert nets and pifs
    for pref, pif in pifs.items():
        assert pif["network"] in nets, pif
        assert pref in nets[pif["network"]]["PIFs"], (pref, nets[pif["network"]]["PIFs"])
