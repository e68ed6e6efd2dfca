"""Backups through the reference's HTTP paths, driven as XenAPI.py users drive them (issue 22):
an XVA export and import round trip (`GET /export`, `PUT /import`), the metadata export with
snapshots (`GET /export_metadata`), and archives damaged on purpose fed to `/import`."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import random
import tarfile
import time
import xmlrpc.client

import XenAPI


from helpers import install_vm, discard_vm

MiB = 1 << 20


def http_get(daemon, session, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=120)
    try:
        sep = "&" if "?" in path else "?"
        conn.request("GET", f"{path}{sep}session_id={session.handle}")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, f"GET {path}: HTTP {resp.status}: {body[:300]!r}"
        return body
    finally:
        conn.close()


def http_put(daemon, session, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=120)
    try:
        sep = "&" if "?" in path else "?"
        conn.request("PUT", f"{path}{sep}session_id={session.handle}", body=body,
                     headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_task(xapi, task: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while xapi.task.get_status(task) == "pending":
        assert time.monotonic() < deadline, f"task {task} still pending"
        time.sleep(0.05)
    return xapi.task.get_record(task)


def import_xva(daemon, session, xapi, data: bytes, sr: str, path: str = "/import") -> dict:
    task = xapi.task.create("import", "")
    try:
        status, _ = http_put(daemon, session, f"{path}?sr_id={sr}&task_id={task}", data)
        assert status == 200, status
        return wait_task(xapi, task)
    finally:
        xapi.task.destroy(task)


def result_value(rec: dict):
    """A task's result (an XML-RPC value fragment) decoded."""
    return xmlrpc.client.loads(
        "<methodResponse><params><param>" + rec["result"] + "</param></params></methodResponse>")[0][0]


def sha(daemon, session, vdi: str) -> str:
    return hashlib.sha256(http_get(daemon, session, f"/export_raw_vdi?vdi={vdi}&format=raw")).hexdigest()


def write_pattern(daemon, session, vdi: str, size: int, seed: int) -> None:
    """A disk image with data in a few places and holes between (blank chunks are omitted)."""
    rng = random.Random(seed)
    img = bytearray(size)
    for at in (0, 3 * MiB + 4096, size - 5000):
        if at + 4096 <= size:
            img[at:at + 4096] = rng.randbytes(4096)
    status, body = http_put(daemon, session, f"/import_raw_vdi?vdi={vdi}&format=raw", bytes(img))
    assert status == 200, body


def disk_vdis(xapi, vm: str) -> list[str]:
    vbds = sorted(xapi.VM.get_VBDs(vm), key=lambda b: xapi.VBD.get_userdevice(b))
    return [xapi.VBD.get_VDI(b) for b in vbds if xapi.VBD.get_type(b) == "Disk"]


def two_disk_vm(xapi, model, daemon, session, name: str, size: int = 8 * MiB) -> str:
    vm = install_vm(xapi, model, name, disk_size=size)
    first = disk_vdis(xapi, vm)[0]
    sr = xapi.VDI.get_SR(first)
    second = xapi.VDI.create({"name_label": f"{name} data", "name_description": "second disk", "SR": sr,
                              "virtual_size": str(size), "type": "user", "sharable": False,
                              "read_only": False, "other_config": {"k": "v"}})
    xapi.VBD.create({"VM": vm, "VDI": second, "userdevice": "1", "bootable": False, "mode": "RW",
                     "type": "Disk", "empty": False, "other_config": {}, "qos_algorithm_type": "",
                     "qos_algorithm_params": {}})
    for i, vdi in enumerate(disk_vdis(xapi, vm)):
        write_pattern(daemon, session, vdi, size, seed=i + 1)
    return vm


# Fields an import makes anew (identity, links, runtime state) or the reference's export resets.
NOT_COMPARED = {"uuid", "VBDs", "VIFs", "metrics", "guest_metrics", "snapshots", "allowed_operations",
                "current_operations", "consoles", "resident_on", "affinity", "other_config",
                "snapshot_time", "parent", "children", "domid", "power_state", "VTPMs", "VUSBs",
                "attached_PCIs", "scheduled_to_be_resident_on", "crash_dumps", "pending_guidances",
                "pending_guidances_recommended", "pending_guidances_full", "pending_operations"}


def test_xva_round_trip_keeps_records_and_disk_bytes(xapi, session, daemon, model):
    vm = two_disk_vm(xapi, model, daemon, session, "backup-src")
    snap = xapi.VM.snapshot(vm, "before-export")
    try:
        src = xapi.VM.get_record(vm)
        src_vdis = disk_vdis(xapi, vm)
        assert len(src_vdis) == 2
        sums = [sha(daemon, session, v) for v in src_vdis]
        sr = xapi.VDI.get_SR(src_vdis[0])
        for comp in ("", "&use_compression=true", "&use_compression=zstd"):
            data = http_get(daemon, session, f"/export?ref={vm}{comp}")
            if comp == "":
                names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
                assert names[0] == "ova.xml", names[:3]
                assert any(n.endswith("/00000000.xxhash") for n in names), names
            rec = import_xva(daemon, session, xapi, data, sr)
            assert rec["status"] == "success", rec["error_info"]
            new_vms = result_value(rec)
            assert len(new_vms) == 1, new_vms
            new = new_vms[0]
            try:
                got = xapi.VM.get_record(new)
                assert got["uuid"] != src["uuid"]
                for k, v in src.items():
                    if k in NOT_COMPARED:
                        continue
                    if k in ("is_a_snapshot", "snapshot_of", "transportable_snapshot_id"):
                        continue
                    assert got[k] == v, (k, got[k], v)
                # As the reference's plain export: the snapshot stays behind.
                assert got["snapshots"] == [] and got["power_state"] == "Halted"
                new_vdis = disk_vdis(xapi, new)
                assert [sha(daemon, session, v) for v in new_vdis] == sums
                assert [xapi.VDI.get_virtual_size(v) for v in new_vdis] == \
                    [xapi.VDI.get_virtual_size(v) for v in src_vdis]
                assert xapi.VDI.get_other_config(new_vdis[1]) == {"k": "v"}
                assert len(xapi.VM.get_VIFs(new)) == len(src["VIFs"])
            finally:
                for v in disk_vdis(xapi, new):
                    xapi.VDI.destroy(v)
                xapi.VM.destroy(new)
    finally:
        discard_vm(xapi, snap)
        discard_vm(xapi, vm)


def test_export_metadata_carries_the_snapshots(xapi, session, daemon, model):
    vm = install_vm(xapi, model, "meta-src", disk_size=MiB)
    snap = xapi.VM.snapshot(vm, "snap-1")
    try:
        data = http_get(daemon, session, f"/export_metadata?uuid={xapi.VM.get_uuid(vm)}")
        t = tarfile.open(fileobj=io.BytesIO(data))
        assert t.getnames() == ["ova.xml"]
        ova = t.extractfile("ova.xml").read().decode()
        (top,), _ = xmlrpc.client.loads(
            "<methodResponse><params><param>" + ova + "</param></params></methodResponse>")
        vms = [o for o in top["objects"] if o["class"] == "VM"]
        assert sorted(o["snapshot"]["is_a_snapshot"] for o in vms) == [False, True], vms
        snap_obj = next(o for o in vms if o["snapshot"]["is_a_snapshot"])
        orig_obj = next(o for o in vms if not o["snapshot"]["is_a_snapshot"])
        assert snap_obj["snapshot"]["snapshot_of"] == orig_obj["id"]
        assert orig_obj["snapshot"]["snapshots"] == [snap]  # the reference keeps the source's refs
        assert int(top["version"]["export_vsn"]) == 2
        # Records only: its import finds the disks already here and makes the VM and snapshot.
        before = set(xapi.VDI.get_all())
        rec = import_xva(daemon, session, xapi, data, xapi.VDI.get_SR(disk_vdis(xapi, vm)[0]),
                         path="/import_metadata")
        assert rec["status"] == "success", rec["error_info"]
        assert set(xapi.VDI.get_all()) == before
        made = result_value(rec)
        assert len(made) == 2
        new_snap = next(v for v in made if xapi.VM.get_is_a_snapshot(v))
        new_vm = next(v for v in made if not xapi.VM.get_is_a_snapshot(v))
        assert xapi.VM.get_snapshot_of(new_snap) == new_vm
        assert disk_vdis(xapi, new_vm) == disk_vdis(xapi, vm)
        for v in made:
            xapi.VM.destroy(v)
    finally:
        discard_vm(xapi, snap)
        discard_vm(xapi, vm)


def counts(xapi) -> tuple[int, int, int, int]:
    return (len(xapi.VM.get_all()), len(xapi.VDI.get_all()), len(xapi.VBD.get_all()), len(xapi.VIF.get_all()))


def test_damaged_archives_fail_cleanly(xapi, session, daemon, model):
    """Truncated and bit-flipped copies of a real export: each import ends in an IMPORT_ERROR
    family error (or, for a flip in ova.xml's text that no checksum covers, a valid import),
    the daemon keeps serving and no object or file is left behind."""
    n = int(os.environ.get("XAPID_BAD_INPUTS", "1000"))
    vm = install_vm(xapi, model, "bad-input-src", disk_size=2 * MiB)
    try:
        vdi = disk_vdis(xapi, vm)[0]
        write_pattern(daemon, session, vdi, 2 * MiB, seed=7)
        sr = xapi.VDI.get_SR(vdi)
        good = http_get(daemon, session, f"/export?ref={vm}")
        ova_end = 512 + len(tarfile.open(fileobj=io.BytesIO(good)).extractfile("ova.xml").read())
        sr_dir = xapi.PBD.get_device_config(xapi.SR.get_PBDs(sr)[0])["location"]
        files_before = sorted(os.listdir(sr_dir))
        rng = random.Random(22)
        before = counts(xapi)
        errors: dict[str, int] = {}
        for i in range(n):
            data = bytearray(good)
            flipped_text = False
            if i % 2 == 0:
                data = data[:rng.randrange(0, len(good) - 1024)]
            else:
                at = rng.randrange(0, len(good))
                data[at] ^= 1 << rng.randrange(8)
                flipped_text = 512 <= at < ova_end
            rec = import_xva(daemon, session, xapi, bytes(data), sr)
            if rec["status"] == "success":
                assert flipped_text, f"a damaged archive (case {i}) imported"
                made = result_value(rec)
                for v in made:
                    for d in disk_vdis(xapi, v):
                        xapi.VDI.destroy(d)
                    xapi.VM.destroy(v)
            else:
                code = rec["error_info"][0]
                assert code.startswith("IMPORT_ERROR"), (i, rec["error_info"])
                errors[code] = errors.get(code, 0) + 1
            assert counts(xapi) == before, f"case {i} left objects behind"
            assert sorted(os.listdir(sr_dir)) == files_before, f"case {i} left files behind"
        assert errors, "no damaged archive was refused"
        # Still serving, and a good archive still imports.
        rec = import_xva(daemon, session, xapi, good, sr)
        assert rec["status"] == "success", rec["error_info"]
        print(f"{n} damaged archives: {errors}")
    finally:
        discard_vm(xapi, vm)


def test_vm_import_fetches_the_archive_from_a_url(xapi, session, daemon, model, tmp_path):
    """`VM.import(url, sr, full_restore, force)`: the daemon fetches the archive itself."""
    import functools
    import http.server
    import threading

    vm = install_vm(xapi, model, "url-src", disk_size=2 * MiB)
    try:
        vdi = disk_vdis(xapi, vm)[0]
        write_pattern(daemon, session, vdi, 2 * MiB, seed=11)
        (tmp_path / "vm.xva").write_bytes(http_get(daemon, session, f"/export?ref={vm}&use_compression=gzip"))
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{srv.server_address[1]}/vm.xva"
            made = xapi.VM.__getattr__("import")(url, xapi.VDI.get_SR(vdi), False, False)
            assert len(made) == 1
            new_vdis = disk_vdis(xapi, made[0])
            assert [sha(daemon, session, v) for v in new_vdis] == [sha(daemon, session, vdi)]
            for v in new_vdis:
                xapi.VDI.destroy(v)
            xapi.VM.destroy(made[0])
            before = counts(xapi)
            try:
                xapi.VM.__getattr__("import")(url + ".missing", xapi.VDI.get_SR(vdi), False, False)
                raise AssertionError("a missing archive imported")
            except XenAPI.Failure as e:
                assert e.details[0] == "IMPORT_ERROR", e.details
            assert counts(xapi) == before
        finally:
            srv.shutdown()
    finally:
        discard_vm(xapi, vm)
