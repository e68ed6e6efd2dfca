"""Ansible's community.general XenServer modules (pinned, unmodified) against a fresh xapid:
xenserver_guest_info, xenserver_guest (create from the "Debian Bookworm 12" template with a
disk and a NIC; present/poweredon; wait_for_ip_address; absent) and xenserver_guest_powerstate.

The modules reach the daemon at `hostname: http://127.0.0.1:PORT` over plain HTTP
(module_utils/_xenserver.py XAPI.connect(): a hostname with a scheme is used as is, one
without gets http://, the bare "localhost" means the local unix socket). Each playbook
registers every module result with ignore_errors and saves them as JSON, so one run reports
every step; the tests then check those results and the VM through XenAPI.

The tests of this module run in order: info -> create -> wait for the IP address ->
powerstate -> remove -> the "Generic Linux PV" guest.
"""

from __future__ import annotations

import http.client

import pytest
import XenAPI

VM_NAME = "ansible-vm"
TEMPLATE = "Debian Bookworm 12"
GiB = 1 << 30
MiB = 1 << 20


def step_errors(results: dict, name: str, changed: bool | None = None, state: str | None = None,
                failed: bool = False, msg_has: str | None = None) -> list[str]:
    r = results[name]
    errs = []
    if bool(r.get("failed")) != failed:
        errs.append(f"{name}: failed={r.get('failed')} (expected {failed}): {r.get('msg') or r.get('exception')}")
        return errs
    if failed:
        if msg_has and msg_has not in (r.get("msg") or ""):
            errs.append(f"{name}: msg {r.get('msg')!r} lacks {msg_has!r}")
        return errs
    if changed is not None and r.get("changed") is not changed:
        errs.append(f"{name}: changed={r.get('changed')} (expected {changed})")
    if state is not None:
        got = (r.get("instance") or {}).get("state")
        if got != state:
            errs.append(f"{name}: instance.state={got!r} (expected {state!r})")
    return errs


def management_network(xapi) -> tuple[str, str]:
    for ref, rec in xapi.network.get_all_records().items():
        if rec["PIFs"]:
            return ref, rec["name_label"]
    pytest.fail("no network with a PIF")


def vms_named(xapi, name):
    return [r for r in xapi.VM.get_by_name_label(name) if not xapi.VM.get_is_a_template(r)]


def the_vm(xapi) -> str:
    """The VM test_create_from_template made (the tests of this module run in order)."""
    vms = vms_named(xapi, VM_NAME)
    if len(vms) != 1:
        pytest.fail(f"needs the one VM {VM_NAME!r} that test_create_from_template makes; found {vms} "
                    f"(VMs and templates named so: {xapi.VM.get_by_name_label(VM_NAME)})")
    return vms[0]


@pytest.fixture(scope="module")
def info_vm(xapi):
    """A VM made through XenAPI the way install scripts do, for xenserver_guest_info."""
    t = xapi.VM.get_by_name_label(TEMPLATE)[0]
    vm = xapi.VM.clone(t, "ansible-info-vm")
    xapi.VM.provision(vm)
    xapi.VM.set_is_a_template(vm, False)
    net, _ = management_network(xapi)
    xapi.VIF.create({"device": "0", "network": net, "VM": vm, "MAC": "", "MTU": "1500",
                     "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
                     "locking_mode": "network_default", "ipv4_allowed": [], "ipv6_allowed": []})
    return vm


def test_guest_info(playbooks, xapi, info_vm):
    res = playbooks.run("guest_info", vm_name="ansible-info-vm")
    info = res["info"]
    assert not info.get("failed"), f"xenserver_guest_info failed: {info.get('msg')}"
    inst = info["instance"]
    rec = xapi.VM.get_record(info_vm)
    assert inst["name"] == "ansible-info-vm"
    assert inst["uuid"] == rec["uuid"]
    assert inst["state"] == "poweredoff", inst["state"]
    assert inst["is_template"] is False
    assert inst["hardware"]["num_cpus"] == int(rec["VCPUs_max"]), inst["hardware"]
    assert inst["hardware"]["memory_mb"] == int(rec["memory_static_max"]) // MiB, inst["hardware"]
    assert len(inst["disks"]) == 1, inst["disks"]
    assert inst["disks"][0]["size"] == 10 * GiB, inst["disks"][0]
    assert inst["disks"][0]["vbd_userdevice"] == "0"
    assert len(inst["networks"]) == 1, inst["networks"]
    vif = rec["VIFs"][0]
    assert inst["networks"][0]["mac"] == xapi.VIF.get_MAC(vif)
    assert inst["networks"][0]["name"] == management_network(xapi)[1]
    # a VM that does not exist: the module fails cleanly
    missing = res["missing"]
    assert missing.get("failed") is True
    assert "not found" in missing.get("msg", "").lower(), missing.get("msg")


def test_create_from_template(playbooks, xapi):
    net_ref, net_name = management_network(xapi)
    res = playbooks.run("create", vm_name=VM_NAME, net_name=net_name)
    errs = (step_errors(res, "present", changed=True, state="poweredoff")
            + step_errors(res, "poweredon", changed=True, state="poweredon")
            + step_errors(res, "again", changed=False, state="poweredon"))
    assert not errs, "\n".join(errs)

    vm = the_vm(xapi)
    rec = xapi.VM.get_record(vm)
    assert rec["power_state"] == "Running"
    assert rec["is_a_template"] is False
    assert rec["VCPUs_max"] == "2" and rec["VCPUs_at_startup"] == "2", (rec["VCPUs_max"], rec["VCPUs_at_startup"])
    assert int(rec["memory_static_max"]) == 512 * MiB, rec["memory_static_max"]
    disks = [xapi.VBD.get_record(b) for b in rec["VBDs"]]
    disks = [b for b in disks if b["type"] == "Disk"]
    assert len(disks) == 1, disks
    vdi = xapi.VDI.get_record(disks[0]["VDI"])
    assert int(vdi["virtual_size"]) == 1 * GiB, vdi["virtual_size"]
    assert vdi["name_label"] == f"{VM_NAME}-disk0", vdi["name_label"]
    assert disks[0]["currently_attached"] is True
    vifs = [xapi.VIF.get_record(v) for v in rec["VIFs"]]
    assert len(vifs) == 1 and vifs[0]["network"] == net_ref, vifs
    assert vifs[0]["currently_attached"] is True


def simulated_ipv4(mac: str) -> str:
    """The address the simulator's guest agent gives an interface by itself: 10.x.y.z from
    the MAC's last three bytes (z = byte % 253 + 1)."""
    b = [int(x, 16) for x in mac.split(":")]
    return f"10.{b[3]}.{b[4]}.{b[5] % 253 + 1}"


def test_wait_for_ip_address(playbooks, xapi):
    """xenserver_guest with wait_for_ip_address on the running VM: the module polls the VM's
    guest metrics until the simulated guest agent has reported, and returns the address."""
    vm = the_vm(xapi)
    assert xapi.VM.get_power_state(vm) == "Running", "test_create_from_template leaves it running"
    res = playbooks.run("wait_ip", vm_name=VM_NAME)
    errs = step_errors(res, "wait_ip", changed=False, state="poweredon")
    assert not errs, "\n".join(errs)
    nets = res["wait_ip"]["instance"]["networks"]
    assert len(nets) == 1, nets
    vif = xapi.VM.get_VIFs(vm)[0]
    want = simulated_ipv4(xapi.VIF.get_MAC(vif))
    assert nets[0]["ip"] == want, (nets[0], want)
    assert len(nets[0]["ip6"]) == 1 and nets[0]["ip6"][0].startswith("fd00::"), nets[0]
    gm = xapi.VM.get_guest_metrics(vm)
    rec = xapi.VM_guest_metrics.get_record(gm)
    assert rec["networks"]["0/ip"] == want and rec["networks"]["0/ipv4/0"] == want, rec["networks"]
    assert rec["PV_drivers_detected"] is True


def test_powerstate(playbooks, xapi):
    vm = the_vm(xapi)
    assert xapi.VM.get_power_state(vm) == "Running", "test_create_from_template leaves it running"
    res = playbooks.run("powerstate", vm_name=VM_NAME)
    errs = []
    errs += step_errors(res, "on_already", changed=False, state="poweredon")
    errs += step_errors(res, "restarted", changed=True, state="poweredon")
    errs += step_errors(res, "rebootguest", changed=True, state="poweredon")
    errs += step_errors(res, "shutdownguest", changed=True, state="poweredoff")
    errs += step_errors(res, "poweredon", changed=True, state="poweredon")
    errs += step_errors(res, "shutdownguest_sync", changed=True, state="poweredoff")
    errs += step_errors(res, "poweredon2", changed=True, state="poweredon")
    errs += step_errors(res, "suspended", changed=True, state="suspended")
    errs += step_errors(res, "resumed", changed=True, state="poweredon")
    errs += step_errors(res, "poweredoff", changed=True, state="poweredoff")
    errs += step_errors(res, "off_already", changed=False, state="poweredoff")
    errs += step_errors(res, "restart_halted", failed=True, msg_has="Cannot restart VM in state 'poweredoff'")
    assert not errs, "\n".join(errs)
    assert xapi.VM.get_power_state(vm) == "Halted"


def test_remove(playbooks, xapi):
    vm = the_vm(xapi)
    vdis = [xapi.VBD.get_VDI(b) for b in xapi.VM.get_VBDs(vm) if xapi.VBD.get_type(b) == "Disk"]
    # start it, so that absent+force has to power it off first
    if xapi.VM.get_power_state(vm) == "Halted":
        xapi.VM.start(vm, False, False)
    res = playbooks.run("remove", vm_name=VM_NAME)
    errs = step_errors(res, "absent", changed=True) + step_errors(res, "absent_again", changed=False)
    assert not errs, "\n".join(errs)
    assert vms_named(xapi, VM_NAME) == []
    all_vdis = xapi.VDI.get_all()
    assert not [v for v in vdis if v in all_vdis], "state=absent must destroy the VM's disks"


PV_VM_NAME = "ansible-pv-vm"


def import_boot_sector(daemon, vdi: str) -> None:
    """Writes a disk image holding an MBR boot signature into `vdi` (`PUT /import_raw_vdi`,
    the reference's raw import), as users put an installed system's image on a disk."""
    s = XenAPI.Session(daemon.url)
    s.xenapi.login_with_password("root", daemon.password, "2.0", "xapid-ansible-tests")
    try:
        image = bytearray(64 * 1024)
        image[510:512] = b"\x55\xaa"
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        try:
            conn.request("PUT", f"/import_raw_vdi?vdi={vdi}&session_id={s.handle}&format=raw",
                         body=bytes(image), headers={"Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, f"import_raw_vdi: HTTP {resp.status}: {body[:300]!r}"
        finally:
            conn.close()
    finally:
        s.xenapi.session.logout()


def test_generic_linux_pv_poweredon(playbooks, xapi, daemon):
    """xenserver_guest from "Generic Linux PV" (a pygrub guest) with one disk, state=poweredon.

    The module drops a built-in template's `disks` provisioning and makes the disks it is
    given with `bootable: false`; the reference boots a pygrub guest from its bootable disks
    only, so the first start answers `INTERNAL_ERROR ["there is no bootable device"]` (the
    module fails with that; the VM is made and halted). With the disk marked bootable (what
    `xe vbd-param-set bootable=true` does) and an image on it, the same task powers it on."""
    res = playbooks.run("pv_guest", vm_name=PV_VM_NAME)
    first = res["poweredon"]
    msg = first.get("msg") or ""
    assert "hypervisor backend:" not in msg, f"a backend's own wording reached the client: {msg!r}"
    errs = step_errors(res, "poweredon", failed=True,
                       msg_has="XAPI ERROR: ['INTERNAL_ERROR', 'there is no bootable device']")
    assert not errs, "\n".join(errs)

    vms = vms_named(xapi, PV_VM_NAME)
    assert len(vms) == 1, f"the module made {vms}"
    vm = vms[0]
    rec = xapi.VM.get_record(vm)
    assert rec["power_state"] == "Halted", rec["power_state"]
    assert rec["PV_bootloader"] == "pygrub" and rec["domain_type"] == "pv", \
        (rec["PV_bootloader"], rec["domain_type"])
    disks = [b for b in rec["VBDs"] if xapi.VBD.get_type(b) == "Disk"]
    assert len(disks) == 1, disks
    assert xapi.VBD.get_bootable(disks[0]) is False
    vdi = xapi.VBD.get_VDI(disks[0])
    assert int(xapi.VDI.get_virtual_size(vdi)) == 1 * GiB

    xapi.VBD.set_bootable(disks[0], True)
    import_boot_sector(daemon, vdi)
    res = playbooks.run("pv_guest", vm_name=PV_VM_NAME)
    errs = step_errors(res, "poweredon", changed=True, state="poweredon")
    assert not errs, "\n".join(errs)
    assert vms_named(xapi, PV_VM_NAME) == [vm]
    assert xapi.VM.get_power_state(vm) == "Running"
    assert xapi.VBD.get_currently_attached(disks[0]) is True
    xapi.VM.hard_shutdown(vm)
