"""Small helpers shared by the python client tests."""

from __future__ import annotations

import re
import uuid as uuidlib

import pytest
import XenAPI

OTHER_INSTALL_MEDIA = "Other install media"


def failure(fn, *args) -> list:
    """Call a XenAPI.Session method that must fail; return the ErrorDescription list."""
    with pytest.raises(XenAPI.Failure) as ei:
        result = fn(*args)
        pytest.fail(f"expected a Failure, got Success {result!r:.300}")  # pragma: no cover
    details = ei.value.details
    assert isinstance(details, list) and details and isinstance(details[0], str), \
        f"ErrorDescription must be a non-empty list headed by a code string: {details!r}"
    return details


def raw_failure(reply) -> list:
    """A raw XML-RPC reply that must be a Failure struct: return its ErrorDescription."""
    assert isinstance(reply, dict), f"reply is not a struct: {reply!r:.300}"
    assert reply.get("Status") == "Failure", f"expected Status Failure: {reply!r:.300}"
    ed = reply.get("ErrorDescription")
    assert isinstance(ed, list) and ed and isinstance(ed[0], str), f"bad ErrorDescription: {reply!r:.300}"
    return ed


def raw_value(reply):
    assert isinstance(reply, dict), f"reply is not a struct: {reply!r:.300}"
    assert reply.get("Status") == "Success", f"expected Status Success: {reply!r:.300}"
    assert "Value" in reply, f"Success without Value: {reply!r:.300}"
    return reply["Value"]


def made_up_ref() -> str:
    return f"OpaqueRef:{uuidlib.uuid4()}"


def made_up_uuid() -> str:
    return str(uuidlib.uuid4())


def control_domain(xapi) -> tuple[str, dict]:
    doms = [(r, v) for r, v in xapi.VM.get_all_records().items() if v["is_control_domain"]]
    assert len(doms) == 1, f"expected one control domain, got {[v['name_label'] for _, v in doms]}"
    return doms[0]


def template(xapi, name: str = OTHER_INSTALL_MEDIA) -> tuple[str, dict]:
    refs = xapi.VM.get_by_name_label(name)
    assert refs, f"no VM named {name!r}"
    rec = xapi.VM.get_record(refs[0])
    assert rec["is_a_template"], f"{name!r} is not a template"
    return refs[0], rec


def vm_create_record(model, template_rec: dict, name_label: str) -> dict:
    """What a real client sends to VM.create: a template's record minus RO/runtime fields
    (the constructor takes the RW and RO/constructor fields), renamed, not a template."""
    allowed = set(model.create_allowed("VM"))
    rec = {k: v for k, v in template_rec.items() if k in allowed}
    rec["name_label"] = name_label
    rec["name_description"] = "made by the xapid client tests"
    rec["is_a_template"] = False
    rec["other_config"] = {}
    rec["tags"] = []
    return rec


def network_create_record(model, name_label: str) -> dict:
    rec = {
        "name_label": name_label,
        "name_description": "",
        "MTU": "1500",
        "other_config": {},
        "tags": [],
    }
    missing = set(model.create_required("network")) - set(rec)
    assert not missing, f"test bug: network.create record lacks required fields {missing}"
    return rec


def vif_create_record(model, vm: str, network: str, device: str = "0") -> dict:
    rec = {
        "device": device,
        "network": network,
        "VM": vm,
        "MAC": "",
        "MTU": "1500",
        "other_config": {},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
        "locking_mode": "network_default",
        "ipv4_allowed": [],
        "ipv6_allowed": [],
    }
    missing = set(model.create_required("VIF")) - set(rec)
    assert not missing, f"test bug: VIF.create record lacks required fields {missing}"
    return rec


# --------------------------------------------------------------------------
# VM lifecycle helpers

DEBIAN = "Debian Bookworm 12"

# vm_operations the reference checks against the power state (rules of xapi_vm_lifecycle).
POWER_OPS = ["start", "pause", "unpause", "clean_shutdown", "clean_reboot", "hard_shutdown",
             "hard_reboot", "suspend", "resume", "checkpoint", "snapshot", "clone", "copy",
             "destroy", "provision"]


def default_network(xapi) -> str:
    """The network of the host's management PIF (what install scripts pick)."""
    nets = [r for r, v in xapi.network.get_all_records().items() if v["PIFs"]]
    assert nets, "no network with a PIF"
    return nets[0]


SMALL_DISK = 64 << 20  # bytes: what the tests that copy disks provision (see install_vm)


def install_vm(xapi, model, name: str, template_name: str = DEBIAN, vif: bool = True,
               disk_size: int | None = SMALL_DISK) -> str:
    """What install scripts do: clone a template, provision its disks, make it a VM, add a NIC.

    `disk_size` rewrites the size in the clone's other_config:disks before provision (as
    `xe vm-install` users do), so tests that clone/copy/snapshot do not copy 10 GiB disks;
    None keeps the template's own size."""
    tref = xapi.VM.get_by_name_label(template_name)[0]
    vm = xapi.VM.clone(tref, name)
    if disk_size is not None:
        disks = xapi.VM.get_other_config(vm)["disks"]
        new = re.sub(r'size="\d+"', f'size="{disk_size}"', disks)
        assert new != disks, disks
        xapi.VM.remove_from_other_config(vm, "disks")
        xapi.VM.add_to_other_config(vm, "disks", new)
    xapi.VM.provision(vm)
    xapi.VM.set_is_a_template(vm, False)
    if vif:
        xapi.VIF.create(vif_create_record(model, vm, default_network(xapi)))
    return vm


def bad_power_state(vm: str, expected: str, actual: str) -> list:
    return ["VM_BAD_POWER_STATE", vm, expected, actual]


def discard_vm(xapi, vm: str) -> None:
    """Test teardown: stops the VM if it runs and destroys it; a failure here is not the test's."""
    try:
        if xapi.VM.get_power_state(vm) != "Halted":
            xapi.VM.hard_shutdown(vm)
        xapi.VM.destroy(vm)
    except Exception:
        pass
