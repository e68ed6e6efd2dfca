"""The reference's exact answers, pinned one defect at a time (issue 17), through XenAPI.py and
raw XML-RPC against a fresh daemon:

- `MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]`: expected counts the message's
  parameters without a default (never the session), received the parameters given minus the
  session; a message with defaulted trailing parameters takes any count from its required ones
  up (the reference's dispatcher binds the required ones and reads the defaults from the rest,
  by position, ignoring what lies beyond);
- `MAP_DUPLICATE_KEY [class, field, ref, key]` names the object by its ref;
- `get_all_records_where` with the database's field names (`name__label` for `name/label`);
- `VM_IS_TEMPLATE [vm, operation]` for each operation a template refuses;
- `SESSION_NOT_REGISTERED ["trackid=" + md5 hex of the session ref]`;
- `event.inject`'s token makes `event.from` report the touched object at once;
- the SM drivers' `features`, and `SR_OPERATION_NOT_SUPPORTED [sr]` for a resize on an ISO SR;
- the "Generic Linux PV" template installs and starts (from a disk with something to boot:
  `BOOTLOADER_FAILED [vm, msg]` on a blank one); a pygrub VM without a bootable disk answers
  `INTERNAL_ERROR ["there is no bootable device"]`; never a backend's own wording.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import time
import uuid as uuidlib

import pytest
import XenAPI

from helpers import (OTHER_INSTALL_MEDIA, discard_vm, failure, raw_failure, raw_value,
                     template)

GENERIC_LINUX_PV = "Generic Linux PV"
SMALL_DISK = 64 << 20


def event_from(xapi, classes, token, timeout):
    # `from` is a Python keyword: clients call it through getattr.
    return getattr(xapi.event, "from")(classes, token, float(timeout))


def plain_vm(xapi, name: str, template_name: str = OTHER_INSTALL_MEDIA) -> str:
    """A halted VM with no disk: a template's clone made an ordinary VM (not provisioned)."""
    tref = xapi.VM.get_by_name_label(template_name)[0]
    vm = xapi.VM.clone(tref, name)
    xapi.VM.set_is_a_template(vm, False)
    return vm


def no_backend_wording(details: list) -> None:
    leaked = [d for d in details if "hypervisor backend:" in d]
    assert not leaked, f"a backend's own wording reached the client: {details!r}"


# --------------------------------------------------------------------------
# 1. MESSAGE_PARAMETER_COUNT_MISMATCH

def test_count_mismatch_does_not_count_the_session(raw, session, xapi):
    s = session.handle
    ref, _ = template(xapi)
    # VM.get_name_label(session, self): one parameter besides the session, none given.
    assert raw_failure(raw.VM.get_name_label(s)) == \
        ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_name_label", "1", "0"]
    # One too many.
    assert raw_failure(raw.VM.get_name_label(s, ref, "extra")) == \
        ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_name_label", "1", "2"]
    # VM.set_name_label(session, self, value) given only the VM.
    assert raw_failure(raw.VM.set_name_label(s, ref)) == \
        ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.set_name_label", "2", "1"]
    # The right count works.
    assert isinstance(raw_value(raw.VM.get_name_label(s, ref)), str)


def test_count_mismatch_of_a_message_without_a_session(raw):
    # session.login_with_password(uname, pwd, version="1.1", originator=""): two required,
    # and with no session nothing is taken off what was received.
    assert raw_failure(raw.session.login_with_password("root")) == \
        ["MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "2", "1"]


def test_count_of_a_message_with_defaulted_trailing_params(raw, session, xapi):
    """VM.snapshot(session, vm, new_name, ignore_vdis=[]) (vendor/xenapi/param_defaults.json)."""
    s = session.handle
    vm = plain_vm(xapi, "count-defaults")
    try:
        # Too few: only the parameters without a default are expected.
        assert raw_failure(raw.VM.snapshot(s, vm)) == \
            ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.snapshot", "2", "1"]
        # The default left out.
        snap1 = raw_value(raw.VM.snapshot(s, vm, "snap-default-left-out"))
        assert xapi.VM.get_snapshot_of(snap1) == vm
        # Given.
        snap2 = raw_value(raw.VM.snapshot(s, vm, "snap-default-given", []))
        assert xapi.VM.get_snapshot_of(snap2) == vm
        # Too many: the reference binds the required parameters, reads each default from the
        # rest by position and ignores anything past them, so this is a plain snapshot too.
        snap3 = raw_value(raw.VM.snapshot(s, vm, "snap-one-too-many", [], "extra"))
        assert xapi.VM.get_snapshot_of(snap3) == vm
        assert xapi.VM.get_name_label(snap3) == "snap-one-too-many"
    finally:
        for snap in xapi.VM.get_snapshots(vm):
            discard_vm(xapi, snap)
        discard_vm(xapi, vm)


def test_extra_params_after_the_defaults_of_login_are_ignored(raw, daemon):
    s = raw_value(raw.session.login_with_password("root", daemon.password, "2.0",
                                                  "xapid-client-tests", "extra"))
    assert s.startswith("OpaqueRef:"), s
    assert len(raw_value(raw.pool.get_all(s))) == 1
    raw_value(raw.session.logout(s))


# --------------------------------------------------------------------------
# 2. MAP_DUPLICATE_KEY

def test_map_duplicate_key_names_the_ref(xapi):
    vm = plain_vm(xapi, "duplicate-key")
    try:
        key = "xapid-dup"
        xapi.VM.add_to_other_config(vm, key, "v1")
        details = failure(xapi.VM.add_to_other_config, vm, key, "v2")
        assert details == ["MAP_DUPLICATE_KEY", "VM", "other_config", vm, key], details
        assert xapi.VM.get_other_config(vm)[key] == "v1", "a refused add changed the map"
    finally:
        discard_vm(xapi, vm)


# --------------------------------------------------------------------------
# 3. get_all_records_where with the database's field names

def test_get_all_records_where_database_field_names(xapi):
    name = f"where-{uuidlib.uuid4().hex[:8]}"
    vm = plain_vm(xapi, name)
    try:
        got = xapi.VM.get_all_records_where(f'field "name__label" = "{name}"')
        assert set(got) == {vm}, f'field "name__label" = {name!r} selected {sorted(got)}'
        assert got[vm]["name_label"] == name
        # The API's spelling keeps working.
        got = xapi.VM.get_all_records_where(f'field "name_label" = "{name}"')
        assert set(got) == {vm}, f'field "name_label" = {name!r} selected {sorted(got)}'
        # A field with no namespace, an enum value.
        halted = {r for r, v in xapi.VM.get_all_records().items() if v["power_state"] == "Halted"}
        assert vm in halted
        got = xapi.VM.get_all_records_where('field "power_state" = "Halted"')
        assert set(got) == halted, (sorted(set(got) ^ halted))
        assert all(v["power_state"] == "Halted" for v in got.values())
        # Nothing matches a name nobody has.
        assert xapi.VM.get_all_records_where('field "name__label" = "no-such-name-xapid"') == {}
    finally:
        discard_vm(xapi, vm)


# --------------------------------------------------------------------------
# 4. VM_IS_TEMPLATE with the operation

def test_operations_refused_on_a_template(xapi):
    ref, _ = template(xapi)  # "Other install media": a default template
    host = xapi.host.get_all()[0]
    assert xapi.VM.get_is_default_template(ref) is True
    assert failure(xapi.VM.start, ref, False, False) == ["VM_IS_TEMPLATE", ref, "start"]
    assert failure(xapi.VM.start_on, ref, host, False, False) == ["VM_IS_TEMPLATE", ref, "start_on"]
    assert failure(xapi.VM.snapshot, ref, "snap-of-template") == ["VM_IS_TEMPLATE", ref, "snapshot"]
    # A default template may not be destroyed.
    assert failure(xapi.VM.destroy, ref) == ["VM_IS_TEMPLATE", ref, "destroy"]
    # Halted first: an operation a halted VM cannot do is refused on its power state.
    assert failure(xapi.VM.clean_shutdown, ref) == \
        ["VM_BAD_POWER_STATE", ref, "running", "halted"]
    assert xapi.VM.get_power_state(ref) == "Halted"
    assert ref in xapi.VM.get_all()


# --------------------------------------------------------------------------
# 5. SESSION_NOT_REGISTERED

def test_event_next_without_register(xapi, session):
    trackid = "trackid=" + hashlib.md5(session.handle.encode()).hexdigest()
    assert failure(xapi.event.next) == ["SESSION_NOT_REGISTERED", trackid]


# --------------------------------------------------------------------------
# 6. event.inject's token

def test_event_inject_token_reports_the_object_at_once(xapi):
    pool = xapi.pool.get_all()[0]
    token = xapi.event.inject("pool", pool)
    assert isinstance(token, str) and token, token
    t0 = time.monotonic()
    r = event_from(xapi, ["pool"], token, 1.0)
    took = time.monotonic() - t0
    mods = [e for e in r["events"] if e["class"] == "pool" and e["ref"] == pool and e["operation"] == "mod"]
    assert mods, f"event.from(['pool'], inject's token) did not report the pool: {r['events']!r:.500}"
    assert took < 0.5, f"event.from waited {took:.3f}s for an event already there"
    assert mods[0]["snapshot"]["uuid"] == xapi.pool.get_uuid(pool)


# --------------------------------------------------------------------------
# 7. SM features; VDI.resize on an ISO SR

def sm_by_type(xapi) -> dict:
    return {v["type"]: v for v in xapi.SM.get_all_records().values()}


def test_sm_features(xapi):
    sms = sm_by_type(xapi)
    assert {"file", "iso"} <= set(sms), sorted(sms)
    file_features = sms["file"]["features"]
    assert "VDI_RESIZE" in file_features, file_features
    assert int(file_features["VDI_RESIZE"]) >= 1, file_features
    assert sms["iso"]["features"], "the iso driver's SM.features is empty"
    assert "VDI_RESIZE" not in sms["iso"]["features"], sms["iso"]["features"]
    for ty, sm in sms.items():
        assert all(int(v) >= 1 for v in sm["features"].values()), (ty, sm["features"])


def iso_library(xapi, daemon) -> str:
    """An ISO SR over a directory holding one image (SR.create type iso, as `xe sr-create
    type=iso device-config:location=...` does)."""
    lib = daemon.workdir / "isos"
    lib.mkdir(exist_ok=True)
    (lib / "tools.iso").write_bytes(b"\0" * 4096)
    host = xapi.host.get_all()[0]
    return xapi.SR.create(host, {"location": str(lib)}, "0", "ISO test library", "", "iso", "iso",
                          False, {})


def test_vdi_resize_on_an_iso_sr(xapi, daemon):
    sr = iso_library(xapi, daemon)
    xapi.SR.scan(sr)
    srs = [sr] + [r for r, v in xapi.SR.get_all_records().items() if v["type"] == "iso" and r != sr]
    checked = 0
    for iso_sr in srs:
        for vdi in xapi.SR.get_VDIs(iso_sr):
            size = int(xapi.VDI.get_virtual_size(vdi))
            assert failure(xapi.VDI.resize, vdi, str(size + (1 << 20))) == \
                ["SR_OPERATION_NOT_SUPPORTED", iso_sr]
            assert int(xapi.VDI.get_virtual_size(vdi)) == size
            checked += 1
    assert xapi.SR.get_VDIs(sr), "the ISO library's scan found no image"
    assert checked >= 1


# --------------------------------------------------------------------------
# 8, 9. The Generic Linux PV template; no bootable device

def provisioned(xapi, name: str, template_name: str) -> str:
    """A template's clone with its disks provisioned (64 MiB), made an ordinary VM."""
    vm = xapi.VM.clone(xapi.VM.get_by_name_label(template_name)[0], name)
    disks = xapi.VM.get_other_config(vm)["disks"]
    xapi.VM.remove_from_other_config(vm, "disks")
    xapi.VM.add_to_other_config(vm, "disks", re.sub(r'size="\d+"', f'size="{SMALL_DISK}"', disks))
    xapi.VM.provision(vm)
    xapi.VM.set_is_a_template(vm, False)
    return vm


def import_boot_sector(daemon, session, vdi: str) -> None:
    """Writes a disk image holding an MBR boot signature into `vdi` through the reference's
    raw import (`PUT /import_raw_vdi?vdi=...&session_id=...&format=raw`), as users put an
    installed system's image on a new disk."""
    image = bytearray(64 * 1024)
    image[510:512] = b"\x55\xaa"
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    try:
        conn.request("PUT", f"/import_raw_vdi?vdi={vdi}&session_id={session.handle}&format=raw",
                     body=bytes(image), headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, f"import_raw_vdi: HTTP {resp.status}: {body[:300]!r}"
    finally:
        conn.close()


def test_generic_linux_pv_installs_and_starts(xapi, session, daemon):
    """Clone "Generic Linux PV", provision, start: a pygrub guest boots from its bootable disk.
    On the blank disk provision makes, the bootloader finds nothing to boot
    (`BOOTLOADER_FAILED [vm, msg]`); with an image on it the VM runs."""
    tref, trec = template(xapi, GENERIC_LINUX_PV)
    assert trec["PV_bootloader"] == "pygrub", trec["PV_bootloader"]
    assert trec["domain_type"] == "pv", trec["domain_type"]
    vm = provisioned(xapi, "pv-guest", GENERIC_LINUX_PV)
    try:
        vbds = [b for b in xapi.VM.get_VBDs(vm) if xapi.VBD.get_type(b) == "Disk"]
        assert len(vbds) == 1 and xapi.VBD.get_bootable(vbds[0]) is True, vbds
        vdi = xapi.VBD.get_VDI(vbds[0])

        details = failure(xapi.VM.start, vm, False, False)
        no_backend_wording(details)
        assert details[:2] == ["BOOTLOADER_FAILED", vm] and len(details) == 3 and details[2], details
        assert xapi.VM.get_power_state(vm) == "Halted"

        import_boot_sector(daemon, session, vdi)
        try:
            xapi.VM.start(vm, False, False)
        except XenAPI.Failure as e:  # the whole answer in the report
            no_backend_wording(e.details)
            pytest.fail(f"VM.start of a {GENERIC_LINUX_PV} install failed: {e.details!r}")
        assert xapi.VM.get_power_state(vm) == "Running"
        assert int(xapi.VM.get_domid(vm)) >= 1
        assert xapi.VBD.get_currently_attached(vbds[0]) is True
        xapi.VM.hard_shutdown(vm)
        assert xapi.VM.get_power_state(vm) == "Halted"
    finally:
        discard_vm(xapi, vm)


def test_pygrub_vm_without_a_bootable_disk(xapi):
    # No disk at all: the template's clone, not provisioned.
    vm = plain_vm(xapi, "pv-no-disk", GENERIC_LINUX_PV)
    try:
        assert xapi.VM.get_PV_bootloader(vm) == "pygrub"
        assert xapi.VM.get_VBDs(vm) == []
        details = failure(xapi.VM.start, vm, False, False)
        no_backend_wording(details)
        assert details == ["INTERNAL_ERROR", "there is no bootable device"], details
        assert xapi.VM.get_power_state(vm) == "Halted"
    finally:
        discard_vm(xapi, vm)
    # A disk whose VBD is not bootable (what a disk added with `bootable: false` gives).
    vm = provisioned(xapi, "pv-disk-not-bootable", GENERIC_LINUX_PV)
    try:
        vbds = xapi.VM.get_VBDs(vm)
        assert len(vbds) == 1, vbds
        xapi.VBD.set_bootable(vbds[0], False)
        details = failure(xapi.VM.start, vm, False, False)
        no_backend_wording(details)
        assert details == ["INTERNAL_ERROR", "there is no bootable device"], details
        assert xapi.VM.get_power_state(vm) == "Halted"
    finally:
        discard_vm(xapi, vm)
