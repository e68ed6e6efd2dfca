"""The VM lifecycle through XenAPI.py, the way install scripts and tools drive it.

From the "Debian Bookworm 12" template: VM.clone -> VM.provision -> set_is_a_template(False)
-> VIF.create, then every power operation, snapshot/checkpoint/revert, clone/copy/destroy.
After each step the runtime fields are checked (power_state, domid, resident_on, VM_metrics,
consoles, devices' currently_attached, allowed_operations), and every wrong-state call must
fail with the reference's error and parameters (xapi_vm_lifecycle.ml):

    VM_BAD_POWER_STATE [vm, expected, actual]   expected: allowed states, lower case,
                                                joined with ", " in the reference's order
"""

from __future__ import annotations

import os
import time

import pytest
import XenAPI

from helpers import (discard_vm, DEBIAN, POWER_OPS, bad_power_state, control_domain, default_network,
                     failure, install_vm, vif_create_record)

NULL = "OpaqueRef:NULL"

# The power states each operation may start in, as the reference lists them
# (allowed_power_states; clone/copy of a non-snapshot with clone_suspended_vm disabled).
ALLOWED_STATES = {
    "start": ["halted"],
    "provision": ["halted"],
    "unpause": ["paused"],
    "resume": ["suspended"],
    "clean_reboot": ["running"],
    "clean_shutdown": ["running"],
    "pause": ["running"],
    "suspend": ["running"],
    "clone": ["halted"],
    "copy": ["halted"],
    "destroy": ["halted", "suspended"],
    "hard_reboot": ["paused", "running"],
    "checkpoint": ["paused", "suspended", "running"],
    "hard_shutdown": ["paused", "suspended", "running"],
    "snapshot": ["halted", "paused", "suspended", "running"],
}

# Ops that must be in allowed_operations of a plain (non-template) VM in each state.
MUST_ALLOW = {
    "Halted": {"start", "clone", "copy", "destroy", "snapshot"},
    "Running": {"hard_shutdown", "hard_reboot", "pause", "snapshot", "checkpoint"},
    "Paused": {"unpause", "hard_shutdown", "hard_reboot", "snapshot", "checkpoint"},
    "Suspended": {"resume", "hard_shutdown", "destroy", "snapshot"},
}


def call_op(xapi, vm: str, op: str):
    """Run the VM operation `op` with the arguments clients pass."""
    m = getattr(xapi.VM, op)
    if op in ("start", "resume"):
        return m(vm, False, False)
    if op in ("clone", "snapshot", "checkpoint"):
        return m(vm, f"{op} of {vm[-8:]}")
    if op == "copy":
        return m(vm, f"copy of {vm[-8:]}", NULL)
    return m(vm)


def host_ref(xapi) -> str:
    hosts = xapi.host.get_all()
    assert len(hosts) == 1
    return hosts[0]


def is_epoch(dt) -> bool:
    return str(dt).startswith("1970")


def check_vm(xapi, vm: str, state: str) -> dict:
    """Check every runtime field of `vm` for `state`; returns its record."""
    rec = xapi.VM.get_record(vm)
    where = f"VM {rec['name_label']!r} ({vm}) expected {state}"
    assert rec["power_state"] == state, f"{where}: power_state {rec['power_state']}"
    live = state in ("Running", "Paused")
    domid = int(rec["domid"])
    if live:
        assert domid >= 1, f"{where}: domid {rec['domid']}"
        assert rec["resident_on"] == host_ref(xapi), f"{where}: resident_on {rec['resident_on']}"
    else:
        assert domid == -1, f"{where}: domid {rec['domid']}"
        assert rec["resident_on"] == NULL, f"{where}: resident_on {rec['resident_on']}"

    # VM_metrics
    m = xapi.VM_metrics.get_record(rec["metrics"])
    if live:
        assert int(m["memory_actual"]) > 0, f"{where}: memory_actual {m['memory_actual']}"
        assert int(m["memory_actual"]) <= int(rec["memory_static_max"]), m["memory_actual"]
        assert int(m["VCPUs_number"]) == int(rec["VCPUs_at_startup"]), \
            f"{where}: VCPUs_number {m['VCPUs_number']} (VCPUs_at_startup {rec['VCPUs_at_startup']})"
        assert isinstance(m["start_time"], xmlrpc_datetime), m["start_time"]
        assert not is_epoch(m["start_time"]), f"{where}: start_time {m['start_time']}"

    # consoles while the domain exists: one vt100 console, and for an HVM guest one rfb
    # console (its device model's VNC) too, as the reference has them
    consoles = {c: xapi.console.get_record(c) for c in rec["consoles"]}
    if live:
        want = ["rfb", "vt100"] if rec["domain_type"] == "hvm" else ["vt100"]
        assert sorted(c["protocol"] for c in consoles.values()) == want, f"{where}: consoles {consoles}"
        host_address = xapi.host.get_address(xapi.VM.get_resident_on(vm))
        for ref, c in consoles.items():
            assert c["VM"] == vm, c
            # The reference's form: https://<host address>/console?ref=<console ref>.
            assert c["location"] == f"https://{host_address}/console?ref={ref}", c["location"]
    else:
        assert consoles == {}, f"{where}: consoles {consoles}"

    # devices
    for vif in rec["VIFs"]:
        v = xapi.VIF.get_record(vif)
        assert v["currently_attached"] is live, f"{where}: VIF {v['device']} currently_attached {v['currently_attached']}"
    for vbd in rec["VBDs"]:
        b = xapi.VBD.get_record(vbd)
        assert b["currently_attached"] is live, f"{where}: VBD {b['userdevice']} currently_attached {b['currently_attached']}"

    # allowed_operations
    allowed = set(rec["allowed_operations"])
    assert ("start" in allowed) == (state == "Halted"), f"{where}: allowed_operations {sorted(allowed)}"
    missing = MUST_ALLOW[state] - allowed
    assert not missing, f"{where}: allowed_operations {sorted(allowed)} lacks {sorted(missing)}"
    for op in sorted(allowed):
        try:
            xapi.VM.assert_operation_valid(vm, op)
        except XenAPI.Failure as e:
            pytest.fail(f"{where}: '{op}' is in allowed_operations but assert_operation_valid fails: {e.details}")
    for op in POWER_OPS:
        if op not in allowed:
            with pytest.raises(XenAPI.Failure):
                xapi.VM.assert_operation_valid(vm, op)
                pytest.fail(f"{where}: '{op}' is not in allowed_operations {sorted(allowed)} "
                            "but assert_operation_valid accepts it")
    assert rec["current_operations"] == {}, f"{where}: current_operations {rec['current_operations']}"
    return rec


xmlrpc_datetime = XenAPI.xmlrpclib.DateTime


def check_refused_in(xapi, vm: str, state: str, skip: tuple = ()):
    """Every power op not allowed in `state` fails with the reference's VM_BAD_POWER_STATE."""
    actual = state.lower()
    tried = []
    for op, allowed in ALLOWED_STATES.items():
        if actual in allowed or op in skip or op == "provision":
            continue
        tried.append(op)
        err = failure(call_op, xapi, vm, op)
        assert err == bad_power_state(vm, ", ".join(allowed), actual), f"VM.{op} on a {state} VM: {err}"
        # and it stays there
        assert xapi.VM.get_power_state(vm) == state
    assert tried


# --------------------------------------------------------------------------


@pytest.fixture
def vm(xapi, model):
    ref = install_vm(xapi, model, "xapid-lifecycle")
    yield ref
    discard_vm(xapi, ref)


def test_install_from_template(xapi, model):
    tref = xapi.VM.get_by_name_label(DEBIAN)[0]
    trec = xapi.VM.get_record(tref)
    assert trec["is_a_template"] is True
    assert "disks" in trec["other_config"], trec["other_config"]
    assert "start" not in trec["allowed_operations"]
    assert {"clone", "copy", "provision"} <= set(trec["allowed_operations"]), trec["allowed_operations"]
    # start on a template
    err = failure(xapi.VM.start, tref, False, False)
    assert err[:2] == ["VM_IS_TEMPLATE", tref], err
    assert err[2:] in ([], ["start"]), err

    vm = xapi.VM.clone(tref, "xapid-install")
    try:
        rec = xapi.VM.get_record(vm)
        assert rec["is_a_template"] is True, "a clone of a template is a template"
        assert rec["name_label"] == "xapid-install"
        assert rec["VBDs"] == [], "the template has no disks yet: they come with provision"
        assert failure(xapi.VM.start, vm, False, False)[:2] == ["VM_IS_TEMPLATE", vm]

        xapi.VM.provision(vm)
        # reference Xapi_vm.provision: set_is_a_template false, then install the disks
        assert xapi.VM.get_is_a_template(vm) is False, "VM.provision must clear is_a_template"
        vbds = [xapi.VBD.get_record(b) for b in xapi.VM.get_VBDs(vm)]
        disks = [b for b in vbds if b["type"] == "Disk"]
        assert len(disks) == 1, vbds
        vdi = xapi.VDI.get_record(disks[0]["VDI"])
        assert vdi["virtual_size"] == "10737418240", vdi["virtual_size"]
        assert disks[0]["bootable"] is True and disks[0]["userdevice"] == "0"
        assert vdi["SR"] == xapi.pool.get_default_SR(xapi.pool.get_all()[0])
        assert disks[0]["VDI"] and vm in [xapi.VBD.get_VM(b) for b in vdi["VBDs"]]

        xapi.VM.set_is_a_template(vm, False)
        assert xapi.VM.get_is_a_template(vm) is False
        # provision is for templates only
        assert failure(xapi.VM.provision, vm) == ["PROVISION_ONLY_ALLOWED_ON_TEMPLATE"]

        net = default_network(xapi)
        vif = xapi.VIF.create(vif_create_record(model, vm, net))
        assert xapi.VM.get_VIFs(vm) == [vif]
        assert vif in xapi.network.get_VIFs(net)
        assert xapi.VIF.get_MAC(vif), "VIF.create with MAC '' must generate one"
        check_vm(xapi, vm, "Halted")
        check_refused_in(xapi, vm, "Halted")
    finally:
        xapi.VM.destroy(vm)


def test_start_shutdown(xapi, vm):
    check_vm(xapi, vm, "Halted")
    host = host_ref(xapi)
    free_before = int(xapi.host_metrics.get_memory_free(xapi.host.get_metrics(host)))
    xapi.VM.start(vm, False, False)
    rec = check_vm(xapi, vm, "Running")
    assert vm in xapi.host.get_resident_VMs(host)
    free_running = int(xapi.host_metrics.get_memory_free(xapi.host.get_metrics(host)))
    assert free_running < free_before, (free_before, free_running)
    check_refused_in(xapi, vm, "Running")

    xapi.VM.clean_shutdown(vm)
    check_vm(xapi, vm, "Halted")
    assert vm not in xapi.host.get_resident_VMs(host)

    xapi.VM.start(vm, False, False)
    rec2 = check_vm(xapi, vm, "Running")
    xapi.VM.hard_shutdown(vm)
    check_vm(xapi, vm, "Halted")
    assert rec["uuid"] == rec2["uuid"]


def test_disk_allowed_operations_follow_the_attachment(xapi, vm):
    # While a running VM has its disk attached, what VDI.destroy (and the like) would refuse
    # with VDI_IN_USE is not offered in the VDI's allowed_operations; once it halts, it is.
    vbd = next(b for b in xapi.VM.get_VBDs(vm) if xapi.VBD.get_type(b) == "Disk")
    vdi = xapi.VBD.get_VDI(vbd)
    assert "destroy" in xapi.VDI.get_allowed_operations(vdi)
    xapi.VM.start(vm, False, False)
    allowed = set(xapi.VDI.get_allowed_operations(vdi))
    assert not allowed & {"destroy", "forget", "data_destroy"}, sorted(allowed)
    assert "snapshot" in allowed, sorted(allowed)
    with pytest.raises(XenAPI.Failure) as e:
        xapi.VDI.destroy(vdi)
    assert e.value.details[0] == "VDI_IN_USE", e.value.details
    xapi.VM.hard_shutdown(vm)
    assert "destroy" in xapi.VDI.get_allowed_operations(vdi)


def test_start_paused(xapi, vm):
    xapi.VM.start(vm, True, False)
    check_vm(xapi, vm, "Paused")
    xapi.VM.unpause(vm)
    check_vm(xapi, vm, "Running")
    xapi.VM.hard_shutdown(vm)
    check_vm(xapi, vm, "Halted")


def test_pause_unpause(xapi, vm):
    xapi.VM.start(vm, False, False)
    domid = xapi.VM.get_domid(vm)
    xapi.VM.pause(vm)
    check_vm(xapi, vm, "Paused")
    assert xapi.VM.get_domid(vm) == domid
    check_refused_in(xapi, vm, "Paused")
    xapi.VM.unpause(vm)
    check_vm(xapi, vm, "Running")
    assert xapi.VM.get_domid(vm) == domid
    # hard_reboot of a paused VM, hard_shutdown of a paused VM
    xapi.VM.pause(vm)
    xapi.VM.hard_shutdown(vm)
    check_vm(xapi, vm, "Halted")


def test_suspend_resume(xapi, vm):
    xapi.VM.start(vm, False, False)
    xapi.VM.suspend(vm)
    rec = check_vm(xapi, vm, "Suspended")
    assert rec["suspend_VDI"] != NULL, "a suspended VM has a suspend image"
    sv = xapi.VDI.get_record(rec["suspend_VDI"])
    assert sv["type"] == "suspend", sv["type"]
    check_refused_in(xapi, vm, "Suspended")
    xapi.VM.resume(vm, False, False)
    rec = check_vm(xapi, vm, "Running")
    assert rec["suspend_VDI"] == NULL
    # suspend then hard_shutdown discards the image
    xapi.VM.suspend(vm)
    image = xapi.VM.get_suspend_VDI(vm)
    xapi.VM.hard_shutdown(vm)
    rec = check_vm(xapi, vm, "Halted")
    assert rec["suspend_VDI"] == NULL
    assert image not in xapi.VDI.get_all(), "the suspend image outlived the hard_shutdown"
    # resume paused
    xapi.VM.start(vm, False, False)
    xapi.VM.suspend(vm)
    xapi.VM.resume(vm, True, False)
    check_vm(xapi, vm, "Paused")
    xapi.VM.hard_shutdown(vm)


def test_reboots(xapi, vm):
    xapi.VM.start(vm, False, False)
    m = xapi.VM.get_metrics(vm)
    start_time = xapi.VM_metrics.get_start_time(m)
    xapi.VM.clean_reboot(vm)
    check_vm(xapi, vm, "Running")
    xapi.VM.hard_reboot(vm)
    check_vm(xapi, vm, "Running")
    assert xapi.VM_metrics.get_start_time(m) >= start_time
    xapi.VM.hard_shutdown(vm)
    check_vm(xapi, vm, "Halted")


def _disk_vdis(xapi, vm) -> list[str]:
    return [xapi.VBD.get_VDI(b) for b in xapi.VM.get_VBDs(vm) if xapi.VBD.get_type(b) == "Disk"]


def test_snapshot_and_revert(xapi, vm):
    xapi.VM.start(vm, False, False)
    (vdi,) = _disk_vdis(xapi, vm)
    snap = xapi.VM.snapshot(vm, "snap-1")
    s = xapi.VM.get_record(snap)
    assert s["is_a_snapshot"] is True and s["is_a_template"] is True, s
    assert s["snapshot_of"] == vm and snap in xapi.VM.get_snapshots(vm)
    assert s["power_state"] == "Halted", s["power_state"]
    assert not is_epoch(s["snapshot_time"]), s["snapshot_time"]
    assert s["name_label"] == "snap-1"
    svdis = _disk_vdis(xapi, snap)
    assert len(svdis) == 1 and svdis[0] != vdi, svdis
    sv = xapi.VDI.get_record(svdis[0])
    assert sv["is_a_snapshot"] is True and sv["snapshot_of"] == vdi, sv
    assert len(s["VIFs"]) == 1, "the snapshot keeps the VM's NIC"
    check_vm(xapi, vm, "Running")

    # a snapshot cannot start
    err = failure(xapi.VM.start, snap, False, False)
    assert err[:2] in (["VM_IS_SNAPSHOT", snap], ["VM_IS_TEMPLATE", snap]), err

    # snapshot with ignore_vdis: the disk is left out
    snap2 = xapi.VM.snapshot(vm, "snap-no-disk", [vdi])
    assert _disk_vdis(xapi, snap2) == [], "ignore_vdis: the ignored disk was snapshotted"
    assert xapi.VM.get_is_a_snapshot(snap2) is True
    assert set(xapi.VDI.get_snapshots(vdi)) == {svdis[0]}, xapi.VDI.get_snapshots(vdi)
    # and with an empty ignore list, like the two-argument form
    snap3 = xapi.VM.snapshot(vm, "snap-empty-ignore", [])
    assert len(_disk_vdis(xapi, snap3)) == 1

    # revert (the VM may be running: revert is allowed in every state) to a halted snapshot
    xapi.VM.revert(snap)
    check_vm(xapi, vm, "Halted")
    (vdi_after,) = _disk_vdis(xapi, vm)
    assert xapi.VM.get_name_label(vm) == "xapid-lifecycle"
    assert snap in xapi.VM.get_snapshots(vm), "revert keeps the snapshot"
    assert xapi.VM.get_is_a_snapshot(vm) is False and xapi.VM.get_is_a_template(vm) is False
    # revert takes a snapshot, not the VM (reference: Api_errors.only_revert_snapshot)
    assert failure(xapi.VM.revert, vm) == ["REVERT_ONLY_ALLOWED_ON_SNAPSHOT"]
    # the reverted VM works
    xapi.VM.start(vm, False, False)
    check_vm(xapi, vm, "Running")
    xapi.VM.hard_shutdown(vm)
    for s_ in (snap, snap2, snap3):
        xapi.VM.destroy(s_)
    assert xapi.VM.get_snapshots(vm) == []


def test_checkpoint_and_revert(xapi, vm):
    xapi.VM.start(vm, False, False)
    cp = xapi.VM.checkpoint(vm, "cp-1")
    c = xapi.VM.get_record(cp)
    assert c["is_a_snapshot"] is True and c["snapshot_of"] == vm
    assert c["power_state"] == "Suspended", c["power_state"]
    assert c["suspend_VDI"] != NULL, "a checkpoint carries the memory image"
    check_vm(xapi, vm, "Running")
    xapi.VM.hard_shutdown(vm)
    check_vm(xapi, vm, "Halted")
    # revert to the checkpoint: the VM is suspended with the checkpoint's memory
    xapi.VM.revert(cp)
    rec = check_vm(xapi, vm, "Suspended")
    assert rec["suspend_VDI"] != NULL
    xapi.VM.resume(vm, False, False)
    check_vm(xapi, vm, "Running")
    # checkpoint of a paused VM
    xapi.VM.pause(vm)
    cp2 = xapi.VM.checkpoint(vm, "cp-2")
    assert xapi.VM.get_power_state(cp2) == "Suspended"
    check_vm(xapi, vm, "Paused")
    xapi.VM.hard_shutdown(vm)
    for s in (cp, cp2):
        xapi.VM.destroy(s)


def test_clone_copy_destroy(xapi, vm):
    (vdi,) = _disk_vdis(xapi, vm)
    c = xapi.VM.clone(vm, "xapid-clone")
    cp = xapi.VM.copy(vm, "xapid-copy", NULL)
    try:
        for new, name in ((c, "xapid-clone"), (cp, "xapid-copy")):
            r = xapi.VM.get_record(new)
            assert r["name_label"] == name
            assert r["is_a_template"] is False and r["is_a_snapshot"] is False
            assert r["uuid"] != xapi.VM.get_uuid(vm)
            assert len(r["VIFs"]) == 1 and len(r["VBDs"]) == 1, r
            assert xapi.VIF.get_MAC(r["VIFs"][0]) != xapi.VIF.get_MAC(xapi.VM.get_VIFs(vm)[0]), \
                "a clone's NIC must get a new MAC"
            (nvdi,) = _disk_vdis(xapi, new)
            assert nvdi != vdi, "a clone/copy must not share the source's disk"
            check_vm(xapi, new, "Halted")
            xapi.VM.start(new, False, False)
            check_vm(xapi, new, "Running")
        # the source is untouched
        check_vm(xapi, vm, "Halted")
        # copy to an explicit SR
        sr = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
        cp2 = xapi.VM.copy(vm, "xapid-copy-sr", sr)
        (v2,) = _disk_vdis(xapi, cp2)
        assert xapi.VDI.get_SR(v2) == sr
        xapi.VM.destroy(cp2)
        # clone/copy of a running VM: refused
        xapi.VM.start(vm, False, False)
        assert failure(xapi.VM.clone, vm, "nope") == bad_power_state(vm, "halted", "running")
        assert failure(xapi.VM.copy, vm, "nope", NULL) == bad_power_state(vm, "halted", "running")
        xapi.VM.hard_shutdown(vm)
    finally:
        for new in (c, cp):
            if xapi.VM.get_power_state(new) != "Halted":
                xapi.VM.hard_shutdown(new)
    # destroy: the VM and its devices go, its disks stay
    vbds, vifs = xapi.VM.get_VBDs(c), xapi.VM.get_VIFs(c)
    (cvdi,) = _disk_vdis(xapi, c)
    metrics = xapi.VM.get_metrics(c)
    xapi.VM.destroy(c)
    assert failure(xapi.VM.get_record, c) == ["HANDLE_INVALID", "VM", c]
    for b in vbds:
        assert failure(xapi.VBD.get_record, b)[0] == "HANDLE_INVALID"
    for v in vifs:
        assert failure(xapi.VIF.get_record, v)[0] == "HANDLE_INVALID"
        assert v not in xapi.network.get_VIFs(default_network(xapi))
    assert failure(xapi.VM_metrics.get_record, metrics)[0] == "HANDLE_INVALID"
    assert cvdi in xapi.VDI.get_all(), "VM.destroy must leave the VDIs"
    assert xapi.VDI.get_VBDs(cvdi) == []
    xapi.VM.destroy(cp)


def test_destroy_running_refused(xapi, vm):
    xapi.VM.start(vm, False, False)
    assert failure(xapi.VM.destroy, vm) == bad_power_state(vm, "halted, suspended", "running")
    xapi.VM.pause(vm)
    assert failure(xapi.VM.destroy, vm) == bad_power_state(vm, "halted, suspended", "paused")
    xapi.VM.unpause(vm)
    xapi.VM.suspend(vm)
    xapi.VM.destroy(vm)  # suspended VMs can be destroyed
    assert failure(xapi.VM.get_record, vm)[0] == "HANDLE_INVALID"


def test_examples_from_the_brief(xapi, vm):
    xapi.VM.start(vm, False, False)
    assert failure(xapi.VM.start, vm, False, False) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert failure(xapi.VM.unpause, vm) == ["VM_BAD_POWER_STATE", vm, "paused", "running"]
    xapi.VM.hard_shutdown(vm)
    assert failure(xapi.VM.hard_shutdown, vm) == \
        ["VM_BAD_POWER_STATE", vm, "paused, suspended, running", "halted"]


def test_control_domain(xapi):
    dom0, rec = control_domain(xapi)
    assert rec["power_state"] == "Running"
    for op in ("clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot", "pause",
               "suspend", "checkpoint", "snapshot"):
        err = failure(call_op, xapi, dom0, op)
        assert err[0] == "OPERATION_NOT_ALLOWED" and len(err) == 2, f"VM.{op} on dom0: {err}"
        assert xapi.VM.get_power_state(dom0) == "Running"
    # ops whose power state is wrong for a running dom0 get the power-state error first
    assert failure(xapi.VM.start, dom0, False, False) == bad_power_state(dom0, "halted", "running")
    assert failure(xapi.VM.destroy, dom0) == bad_power_state(dom0, "halted, suspended", "running")
    assert "hard_shutdown" not in xapi.VM.get_allowed_operations(dom0)
    assert xapi.VM.get_domid(dom0) == "0"


def test_not_enough_memory(xapi, vm):
    host = host_ref(xapi)
    free = int(xapi.host_metrics.get_memory_free(xapi.host.get_metrics(host)))
    huge = 1 << 40  # 1 TiB
    assert huge > free
    smin = int(xapi.VM.get_memory_static_min(vm))
    xapi.VM.set_memory_limits(vm, str(smin), str(huge), str(huge), str(huge))
    assert xapi.VM.get_memory_static_max(vm) == str(huge)
    err = failure(xapi.VM.start, vm, False, False)
    assert err[0] == "HOST_NOT_ENOUGH_FREE_MEMORY" and len(err) == 3, err
    needed, available = int(err[1]), int(err[2])
    assert needed >= huge, err
    assert 0 < available < needed, err
    assert abs(available - free) < (1 << 30), (available, free)
    check_vm(xapi, vm, "Halted")
    # the VM still starts once it fits
    xapi.VM.set_memory_limits(vm, str(smin), str(1 << 30), str(1 << 30), str(1 << 30))
    xapi.VM.start(vm, False, False)
    check_vm(xapi, vm, "Running")
    xapi.VM.hard_shutdown(vm)


def test_devices_hotplug(xapi, model, vm):
    (vif,) = xapi.VM.get_VIFs(vm)
    # plug/unplug need a running VM
    err = failure(xapi.VIF.plug, vif)
    assert err == bad_power_state(vm, "running", "halted"), err
    xapi.VM.start(vm, False, False)
    assert xapi.VIF.get_currently_attached(vif) is True
    assert failure(xapi.VIF.plug, vif) == ["DEVICE_ALREADY_ATTACHED", vif]
    xapi.VIF.unplug(vif)
    assert xapi.VIF.get_currently_attached(vif) is False
    assert failure(xapi.VIF.unplug, vif) == ["DEVICE_ALREADY_DETACHED", vif]
    xapi.VIF.plug(vif)
    assert xapi.VIF.get_currently_attached(vif) is True
    # a second NIC hot-plugged
    vif2 = xapi.VIF.create(vif_create_record(model, vm, default_network(xapi), device="1"))
    assert xapi.VIF.get_currently_attached(vif2) is False
    xapi.VIF.plug(vif2)
    assert xapi.VIF.get_currently_attached(vif2) is True
    xapi.VIF.unplug(vif2)
    # the disk
    (vbd,) = xapi.VM.get_VBDs(vm)
    xapi.VBD.unplug(vbd)
    assert xapi.VBD.get_currently_attached(vbd) is False
    xapi.VBD.plug(vbd)
    assert xapi.VBD.get_currently_attached(vbd) is True
    xapi.VM.hard_shutdown(vm)
    assert xapi.VIF.get_currently_attached(vif) is False
    xapi.VIF.destroy(vif2)


def test_cd_insert_eject(xapi, vm):
    cd = xapi.VBD.create({
        "VM": vm, "VDI": NULL, "userdevice": "3", "bootable": False, "mode": "RO",
        "type": "CD", "empty": True, "unpluggable": True, "other_config": {},
        "qos_algorithm_type": "", "qos_algorithm_params": {},
    })
    sr = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
    iso = xapi.VDI.create({
        "name_label": "xapid-test.iso", "name_description": "", "SR": sr,
        "virtual_size": str(1 << 20), "type": "user", "sharable": False, "read_only": True,
        "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": [],
    })
    try:
        assert failure(xapi.VBD.eject, cd) == ["VBD_IS_EMPTY", cd]
        xapi.VBD.insert(cd, iso)
        assert xapi.VBD.get_empty(cd) is False and xapi.VBD.get_VDI(cd) == iso
        assert failure(xapi.VBD.insert, cd, iso) == ["VBD_NOT_EMPTY", cd]
        xapi.VM.start(vm, False, False)
        assert xapi.VBD.get_currently_attached(cd) is True
        xapi.VBD.eject(cd)
        assert xapi.VBD.get_empty(cd) is True and xapi.VBD.get_VDI(cd) == NULL
        xapi.VBD.insert(cd, iso)
        assert xapi.VBD.get_VDI(cd) == iso
        (disk,) = [b for b in xapi.VM.get_VBDs(vm) if xapi.VBD.get_type(b) == "Disk"]
        assert failure(xapi.VBD.eject, disk) == ["VBD_NOT_REMOVABLE_MEDIA", disk]
        xapi.VM.hard_shutdown(vm)
    finally:
        xapi.VBD.destroy(cd)


def _allocated_bytes(path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def test_disk_copies_stay_sparse(xapi, model, daemon, capsys):
    """Copying an empty 1 GiB disk must neither write 1 GiB nor take seconds (file SRs keep
    VDIs sparse; the reference's clone/snapshot are copy-on-write)."""
    vm = install_vm(xapi, model, "xapid-sparse", disk_size=1 << 30)
    made = []
    try:
        before = _allocated_bytes(daemon.state_dir)
        timings = {}
        for op in ("clone", "copy", "snapshot"):
            t0 = time.monotonic()
            made.append(call_op(xapi, vm, op))
            timings[op] = time.monotonic() - t0
        grown = _allocated_bytes(daemon.state_dir) - before
        with capsys.disabled():
            print(f"\ncopies of an empty 1 GiB disk: "
                  + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items())
                  + f"; disk grew {grown >> 20} MiB")
        assert grown < (64 << 20), f"3 copies of an empty 1 GiB disk allocated {grown >> 20} MiB"
        assert max(timings.values()) < 2.0, timings
    finally:
        for r in made + [vm]:
            try:
                xapi.VM.destroy(r)
            except XenAPI.Failure:
                pass
