"""Migration with storage motion, driven by XenAPI.py as Xen Orchestra and CloudStack drive it.

Three xapid hosts with the simulator: 127.0.0.2 (master) and 127.0.0.3 form a pool, 127.0.0.4
stays alone (another pool). Each host gets a file SR of its own. A disk's bytes are written
through `/import_raw_vdi` before a move and read back through `/export_raw_vdi` on the host that
has it after, so every move is judged by what arrived, not by what the daemon says.

- `host.migrate_receive`: the reference's map, a session that works, its refusal.
- Inside the pool: `VM.assert_can_migrate` and its refusals, `VM.migrate_send` of a running VM
  whose disk moves to the member's SR (the VM runs there, its VBD names the copy, the original
  is gone), `VDI.pool_migrate` of that disk to a second SR of the member.
- To the lone host: a running VM with a VIF (`VIF_NOT_IN_MAP` first), then a halted VM with a
  snapshot; each arrives with its disks and leaves nothing behind in the pool. Last, Xen
  Orchestra's xen-api client makes such a move as Xen Orchestra does (`xo_migrate.mjs`).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
import urllib.request
import xmlrpc.client

import pytest
import XenAPI

from test_pool import PASSWORD, Host, failure, started_hosts, vm_rrd_rows, wait_rrd_rows

MiB = 1 << 20
SIZE = 8 * MiB


@pytest.fixture(scope="module")
def hosts():
    with started_hosts(3, "xapid-migrate-") as hs:
        hs[1].session().xenapi.pool.join(hs[0].address, "root", PASSWORD)
        yield hs


def host_ref(x, h: Host) -> str:
    return next(ref for ref, r in x.host.get_all_records().items() if r["address"] == h.address)


def management_network(x, host: str) -> str:
    pif = next(p for p in x.host.get_PIFs(host) if x.PIF.get_management(p))
    return x.PIF.get_network(pif)


def file_sr(x, host: str, h: Host, name: str) -> str:
    where = os.path.join(h.dir, name)
    return x.SR.create(host, {"location": where}, "0", name, "", "file", "user", False, {})


def pattern() -> bytes:
    """A disk's contents: data in the first and sixth MiB, zeros (holes) elsewhere."""
    data = bytearray(SIZE)
    data[0:MiB] = hashlib.sha256(b"first").digest() * (MiB // 32)
    data[5 * MiB:6 * MiB] = hashlib.sha256(b"sixth").digest() * (MiB // 32)
    return bytes(data)


def write_disk(h: Host, session: str, vdi: str, data: bytes) -> None:
    req = urllib.request.Request(f"{h.url}/import_raw_vdi?vdi={vdi}&format=raw&session_id={session}",
                                 data=data, method="PUT")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200


def read_disk(h: Host, session: str, vdi: str) -> bytes:
    with urllib.request.urlopen(f"{h.url}/export_raw_vdi?vdi={vdi}&format=raw&session_id={session}",
                                timeout=60) as r:
        return r.read()


def vm_with_disk(x, session: str, name: str, sr: str, h: Host) -> tuple[str, str]:
    """A halted VM of 128 MiB with one disk on `sr` (on host `h`), holding pattern()."""
    t = x.VM.get_by_name_label("Debian Bookworm 12")[0]
    vm = x.VM.clone(t, name)
    x.VM.remove_from_other_config(vm, "disks")
    x.VM.set_is_a_template(vm, False)
    x.VM.set_memory_limits(vm, 128 * MiB, 128 * MiB, 128 * MiB, 128 * MiB)
    vdi = x.VDI.create({"name_label": f"{name}-disk", "name_description": "", "SR": sr,
                        "virtual_size": str(SIZE), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {"made-by": "test_migrate_send"}})
    write_disk(h, session, vdi, pattern())
    x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW",
                  "type": "Disk", "empty": False, "other_config": {}, "qos_algorithm_type": "",
                  "qos_algorithm_params": {}})
    return vm, vdi


def running_vm_with_vif(x, session: str, name: str, h: Host) -> tuple[str, str, str]:
    """vm_with_disk() on the master's `sr-a` with a VIF on its management network, started on
    the master (`h`); (VM, VDI, VIF)."""
    master = host_ref(x, h)
    sr_a = next(r for r in x.SR.get_by_name_label("sr-a"))
    vm, vdi = vm_with_disk(x, session, name, sr_a, h)
    vif = x.VIF.create({"VM": vm, "network": management_network(x, master), "device": "0", "MAC": "",
                        "MTU": "1500", "other_config": {}, "qos_algorithm_type": "",
                        "qos_algorithm_params": {}})
    x.VM.start_on(vm, master, False, False)
    return vm, vdi, vif


def disk_of(x, vm: str) -> str:
    vbd = next(b for b in x.VM.get_VBDs(vm) if x.VBD.get_type(b) == "Disk")
    return x.VBD.get_VDI(vbd)


def test_migrate_receive_answers_the_reference_map(hosts):
    s = hosts[0].session()
    x = s.xenapi
    member = host_ref(x, hosts[1])
    net = management_network(x, member)
    dest = x.host.migrate_receive(member, net, {})
    assert set(dest) == {"SM", "host", "xenops", "session_id", "master"}, dest
    assert dest["host"] == member
    assert dest["xenops"] == f"http://{hosts[1].address}/services/xenops?session_id={dest['session_id']}"
    assert dest["SM"] == f"http://{hosts[1].address}/services/SM?session_id={dest['session_id']}"
    assert dest["master"] == f"http://{hosts[0].address}/"
    assert dest["session_id"] != s._session
    # The session it hands out works, as the caller's user.
    proxy = xmlrpc.client.ServerProxy(hosts[0].url)
    answer = proxy.session.get_this_host(dest["session_id"], dest["session_id"])
    assert answer["Status"] == "Success" and answer["Value"] == member, answer
    # A network the host has no PIF on.
    lonely = x.network.create({"name_label": "no-pif-here", "name_description": "", "other_config": {}})
    assert failure(x.host.migrate_receive, member, lonely, {}) == ["HOST_CANNOT_ATTACH_NETWORK", member, lonely]


def test_storage_motion_inside_the_pool(hosts):
    s = hosts[0].session()
    x = s.xenapi
    master, member = host_ref(x, hosts[0]), host_ref(x, hosts[1])
    sr_a = file_sr(x, master, hosts[0], "sr-a")
    sr_b = file_sr(x, member, hosts[1], "sr-b")
    vm, vdi = vm_with_disk(x, s._session, "moves-with-its-disk", sr_a, hosts[0])
    x.VM.start_on(vm, master, False, False)
    assert "migrate_send" in x.VM.get_allowed_operations(vm)
    dest = x.host.migrate_receive(member, management_network(x, member), {})
    # The reference's refusals, before anything moves.
    assert failure(x.VM.assert_can_migrate, vm, dest, True, {}, {}, {}, {}) == ["VDI_NOT_IN_MAP", vdi]
    vif_map = {"OpaqueRef:whatever": management_network(x, member)}
    d = failure(x.VM.assert_can_migrate, vm, dest, True, {vdi: sr_b}, vif_map, {}, {})
    assert d[0] == "OPERATION_NOT_ALLOWED", d
    x.VM.assert_can_migrate(vm, dest, True, {vdi: sr_b}, {}, {}, {})
    t0 = time.time()
    assert x.VM.migrate_send(vm, dest, True, {vdi: sr_b}, {}, {}, {}) == vm
    took = time.time() - t0
    rec = x.VM.get_record(vm)
    assert (rec["power_state"], rec["resident_on"]) == ("Running", member), rec
    assert rec["current_operations"] == {}
    copy = disk_of(x, vm)
    assert copy != vdi and x.VDI.get_SR(copy) == sr_b
    assert x.VDI.get_name_label(copy) == "moves-with-its-disk-disk"
    assert x.VDI.get_other_config(copy) == {"made-by": "test_migrate_send"}
    assert failure(x.VDI.get_uuid, vdi)[0] == "HANDLE_INVALID"
    assert read_disk(hosts[1], s._session, copy) == pattern()
    print(f"migrate_send inside the pool, 8 MiB disk to the member's SR: {took * 1000:.0f} ms")

    # VDI.pool_migrate: that disk to a second SR of the member; the VM keeps running there.
    sr_c = file_sr(x, member, hosts[1], "sr-c")
    moved = x.VDI.pool_migrate(copy, sr_c, {})
    assert moved != copy and x.VDI.get_SR(moved) == sr_c and disk_of(x, vm) == moved
    assert (x.VM.get_power_state(vm), x.VM.get_resident_on(vm)) == ("Running", member)
    assert read_disk(hosts[1], s._session, moved) == pattern()
    assert failure(x.VDI.get_uuid, copy)[0] == "HANDLE_INVALID"
    # A disk no running VM has attached.
    x.VM.hard_shutdown(vm)
    assert failure(x.VDI.pool_migrate, moved, sr_b, {}) == ["VDI_NEEDS_VM_FOR_MIGRATE", moved]
    # A halted VM's disk moves too (no domain to move).
    dest = x.host.migrate_receive(master, management_network(x, master), {})
    assert x.VM.migrate_send(vm, dest, False, {moved: sr_a}, {}, {}, {}) == vm
    back = disk_of(x, vm)
    assert x.VDI.get_SR(back) == sr_a and read_disk(hosts[0], s._session, back) == pattern()
    assert x.VM.get_power_state(vm) == "Halted"


def test_a_running_vm_moves_to_another_pool(hosts):
    s = hosts[0].session()
    x = s.xenapi
    vm, vdi, vif = running_vm_with_vif(x, s._session, "leaves-the-pool", hosts[0])
    uuid = x.VM.get_uuid(vm)

    lone_s = hosts[2].session()
    lone = lone_s.xenapi
    lone_host = lone.host.get_all()[0]
    lone_net = management_network(lone, lone_host)
    lone_sr = file_sr(lone, lone_host, hosts[2], "sr-lone")
    dest = lone.host.migrate_receive(lone_host, lone_net, {})
    assert dest["master"] == f"http://{hosts[2].address}/"

    assert failure(x.VM.assert_can_migrate, vm, dest, True, {vdi: lone_sr}, {}, {}, {}) == ["VIF_NOT_IN_MAP", vif]
    d = failure(x.VM.assert_can_migrate, vm, dest, True, {vdi: lone_sr}, {vif: lone_net}, {"copy": "true"}, {})
    assert d == ["VM_BAD_POWER_STATE", vm, "halted", "running"], d
    x.VM.assert_can_migrate(vm, dest, True, {vdi: lone_sr}, {vif: lone_net}, {}, {})
    # What goes with the VM besides its records: a message about it, and its statistics.
    note = x.message.create("XAPID_TEST_NOTE", 3, "VM", uuid, "made before the move <&>")
    note_rec = x.message.get_record(note)
    history = wait_rrd_rows(hosts[0].address, uuid, s._session, 2)
    t0 = time.time()
    there = x.VM.migrate_send(vm, dest, True, {vdi: lone_sr}, {vif: lone_net}, {}, {})
    took = time.time() - t0
    rec = lone.VM.get_record(there)
    assert rec["uuid"] == uuid
    assert (rec["power_state"], rec["resident_on"]) == ("Running", lone_host), rec
    copy = disk_of(lone, there)
    assert lone.VDI.get_SR(copy) == lone_sr
    assert read_disk(hosts[2], lone_s._session, copy) == pattern()
    vifs = lone.VM.get_VIFs(there)
    assert len(vifs) == 1 and lone.VIF.get_network(vifs[0]) == lone_net
    assert "maps_to" not in lone.VIF.get_other_config(vifs[0])
    # Its message is there with its uuid, time and text, and gone here.
    arrived = lone.message.get("VM", uuid, xmlrpc.client.DateTime("19700101T00:00:00Z"))
    mine = [m for m in arrived.values() if m["uuid"] == note_rec["uuid"]]
    assert len(mine) == 1, arrived
    assert {k: str(mine[0][k]) for k in ("name", "priority", "body", "timestamp", "obj_uuid")} == {
        k: str(note_rec[k]) for k in ("name", "priority", "body", "timestamp", "obj_uuid")}
    assert not [m for m in x.message.get_all_records().values() if m["obj_uuid"] == uuid]
    # Its statistics are served there (the rows the source had), and no longer here.
    moved = vm_rrd_rows(hosts[2].address, uuid, lone_s._session) or {}
    assert all(moved.get(t) == v for t, v in history.items()), (history, moved)
    assert vm_rrd_rows(hosts[0].address, uuid, s._session) is None
    # Nothing of it is left in the pool.
    assert failure(x.VM.get_by_uuid, uuid)[0] == "UUID_INVALID"
    assert failure(x.VDI.get_uuid, vdi)[0] == "HANDLE_INVALID"
    print(f"migrate_send to another pool, 128 MiB VM and an 8 MiB disk: {took * 1000:.0f} ms")
    lone.VM.hard_shutdown(there)


def test_a_halted_vm_with_a_snapshot_moves_to_another_pool(hosts):
    s = hosts[0].session()
    x = s.xenapi
    sr_a = next(r for r in x.SR.get_by_name_label("sr-a"))
    vm, vdi = vm_with_disk(x, s._session, "halted-leaves", sr_a, hosts[0])
    snap = x.VM.snapshot(vm, "before-the-move")
    snap_vdi = disk_of(x, snap)
    snap_time = x.VDI.get_snapshot_time(snap_vdi)
    uuid, snap_uuid = x.VM.get_uuid(vm), x.VM.get_uuid(snap)

    lone_s = hosts[2].session()
    lone = lone_s.xenapi
    lone_host = lone.host.get_all()[0]
    lone_sr = next(r for r in lone.SR.get_by_name_label("sr-lone"))
    dest = lone.host.migrate_receive(lone_host, management_network(lone, lone_host), {})
    there = x.VM.migrate_send(vm, dest, False, {vdi: lone_sr}, {}, {}, {})
    assert lone.VM.get_uuid(there) == uuid and lone.VM.get_power_state(there) == "Halted"
    snaps = lone.VM.get_snapshots(there)
    assert [lone.VM.get_uuid(v) for v in snaps] == [snap_uuid]
    for v in (there, snaps[0]):
        d = disk_of(lone, v)
        assert lone.VDI.get_SR(d) == lone_sr
        assert read_disk(hosts[2], lone_s._session, d) == pattern()
    # The snapshot's disk arrives as a snapshot of the VM's disk there, taken when it was here.
    disk, snap_disk = disk_of(lone, there), disk_of(lone, snaps[0])
    assert lone.VDI.get_is_a_snapshot(snap_disk) is True and lone.VDI.get_is_a_snapshot(disk) is False
    assert lone.VDI.get_snapshot_of(snap_disk) == disk
    assert lone.VDI.get_snapshots(disk) == [snap_disk]
    assert lone.VDI.get_snapshot_time(snap_disk) == snap_time
    assert failure(x.VM.get_by_uuid, uuid)[0] == "UUID_INVALID"
    assert failure(x.VM.get_by_uuid, snap_uuid)[0] == "UUID_INVALID"
    for gone in (vdi, snap_vdi):
        assert failure(x.VDI.get_uuid, gone)[0] == "HANDLE_INVALID"
    # It starts there.
    lone.VM.start(there, False, False)
    assert lone.VM.get_power_state(there) == "Running"
    lone.VM.hard_shutdown(there)


def test_xen_orchestra_client_moves_a_vm_to_another_pool(hosts):
    """What Xen Orchestra's migration calls, through its own xen-api client: the destination's
    `host.migrate_receive`, then `Async.VM.migrate_send` read as a task by the client."""
    prefix = os.environ.get("XAPID_NODE_PREFIX")
    assert prefix, "XAPID_NODE_PREFIX is not set (tests/pool/run.sh sets it)"
    s = hosts[0].session()
    x = s.xenapi
    vm, vdi, vif = running_vm_with_vif(x, s._session, "moved-by-xen-orchestra", hosts[0])
    uuid = x.VM.get_uuid(vm)
    lone_s = hosts[2].session()
    lone = lone_s.xenapi
    lone_host = lone.host.get_all()[0]
    lone_sr = next(r for r in lone.SR.get_by_name_label("sr-lone"))
    lone_net = management_network(lone, lone_host)
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run(["node", os.path.join(here, "xo_migrate.mjs"), hosts[0].address, hosts[2].address,
                        PASSWORD, vm, vdi, lone_sr, vif, lone_net],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    there = p.stdout.strip().splitlines()[-1]
    assert lone.VM.get_uuid(there) == uuid
    assert (lone.VM.get_power_state(there), lone.VM.get_resident_on(there)) == ("Running", lone_host)
    assert read_disk(hosts[2], lone_s._session, disk_of(lone, there)) == pattern()
    assert failure(x.VM.get_by_uuid, uuid)[0] == "UUID_INVALID"
    lone.VM.hard_shutdown(there)
