"""The disk formats of `/export_raw_vdi` and `/import_raw_vdi` checked by third-party readers
(issue 22): `qemu-img` (Debian `qemu-utils`) reads the VHD (`vpc`) and qcow2 exports and finds
them equal to the raw disk; `vhdiinfo` (Debian `libvhdi-utils`) reads the dynamic and
differencing VHDs; an incremental chain (a full VHD and three `base=` deltas taken after
writes) restored through `/import_raw_vdi?format=vhd` gives the exact final bytes; damaged VHDs
are refused (the VDI keeps what was written before the damage was met; no object is left)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess

import pytest

from test_backup import MiB, http_get, http_put

QEMU_IMG = shutil.which("qemu-img")
VHDIINFO = shutil.which("vhdiinfo")


def need(tool: str | None, pkg: str) -> str:
    if tool is None:
        assert not os.environ.get("XAPID_REQUIRE_ROOT"), f"{pkg} is not installed (scripts/test.sh installs it)"
        pytest.skip(f"{pkg} is not installed")
    return tool


def new_vdi(xapi, size: int, name: str) -> str:
    sr = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
    return xapi.VDI.create({"name_label": name, "name_description": "", "SR": sr, "virtual_size": str(size),
                            "type": "user", "sharable": False, "read_only": False, "other_config": {}})


def put_raw(daemon, session, vdi: str, img: bytes) -> None:
    status, body = http_put(daemon, session, f"/import_raw_vdi?vdi={vdi}&format=raw", img)
    assert status == 200, body


def qemu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([need(QEMU_IMG, "qemu-utils"), *args], capture_output=True, text=True, timeout=120)


def test_vhd_and_qcow2_exports_read_by_qemu_img(xapi, session, daemon, tmp_path):
    size = 24 * MiB + 512 * 3
    vdi = new_vdi(xapi, size, "formats")
    try:
        rng = random.Random(5)
        img = bytearray(size)
        for at in (0, 5 * MiB + 100, 17 * MiB, size - 700):
            img[at:at + 600] = rng.randbytes(600)
        put_raw(daemon, session, vdi, bytes(img))
        raw = tmp_path / "disk.raw"
        raw.write_bytes(http_get(daemon, session, f"/export_raw_vdi?vdi={vdi}&format=raw"))
        assert raw.read_bytes() == bytes(img)
        for fmt, qfmt in (("vhd", "vpc"), ("qcow2", "qcow2")):
            f = tmp_path / f"disk.{fmt}"
            f.write_bytes(http_get(daemon, session, f"/export_raw_vdi?vdi={vdi}&format={fmt}"))
            info = qemu("info", "--output=json", "-f", qfmt, str(f))
            assert info.returncode == 0, info.stderr
            assert f'"virtual-size": {size}' in info.stdout, info.stdout
            if qfmt == "qcow2":
                chk = qemu("check", "-f", "qcow2", str(f))
                assert chk.returncode == 0, chk.stdout + chk.stderr
            cmp = qemu("compare", "-f", qfmt, "-F", "raw", str(f), str(raw))
            assert cmp.returncode == 0, cmp.stdout + cmp.stderr
        out = subprocess.run([need(VHDIINFO, "libvhdi-utils"), str(tmp_path / "disk.vhd")], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "Dynamic" in out.stdout, out.stdout
        # qcow2 in: qemu-img's own image (tables among the data) and xapid's export.
        q = tmp_path / "qemu.qcow2"
        conv = qemu("convert", "-f", "raw", "-O", "qcow2", str(raw), str(q))
        assert conv.returncode == 0, conv.stderr
        for src in (q, tmp_path / "disk.qcow2"):
            target = new_vdi(xapi, size, "qcow2-in")
            try:
                status, body = http_put(daemon, session, f"/import_raw_vdi?vdi={target}&format=qcow2", src.read_bytes())
                assert status == 200, body
                assert http_get(daemon, session, f"/export_raw_vdi?vdi={target}&format=raw") == bytes(img)
                # Cut short: refused.
                status, body = http_put(daemon, session, f"/import_raw_vdi?vdi={target}&format=qcow2",
                                        src.read_bytes()[:70000])
                assert status != 200 and b"IMPORT_ERROR" in body, body
            finally:
                xapi.VDI.destroy(target)
    finally:
        xapi.VDI.destroy(vdi)


def test_incremental_chain_restores_the_final_bytes(xapi, session, daemon, tmp_path):
    """Full VHD of a snapshot, then three rounds of writes each exported as a differencing VHD
    against the previous snapshot (`base=`); applied in order onto a blank VDI they give the
    disk's final bytes. vhdiinfo reads each delta as a differential image of its parent."""
    size = 32 * MiB
    vdi = new_vdi(xapi, size, "chain-src")
    made = [vdi]
    try:
        rng = random.Random(9)
        img = bytearray(size)
        for at in (0, 9 * MiB, 30 * MiB):
            img[at:at + 4096] = rng.randbytes(4096)
        put_raw(daemon, session, vdi, bytes(img))
        snap = xapi.VDI.snapshot(vdi, {})
        made.append(snap)
        files = [tmp_path / "0-full.vhd"]
        files[0].write_bytes(http_get(daemon, session, f"/export_raw_vdi?vdi={snap}&format=vhd"))
        for i in range(1, 4):
            for _ in range(3):
                at = rng.randrange(0, size - 8192)
                img[at:at + 8192] = rng.randbytes(8192)
            put_raw(daemon, session, vdi, bytes(img))
            nxt = xapi.VDI.snapshot(vdi, {})
            made.append(nxt)
            f = tmp_path / f"{i}-delta.vhd"
            f.write_bytes(http_get(daemon, session, f"/export_raw_vdi?vdi={nxt}&format=vhd&base={snap}"))
            # Only the changed blocks travel: at most 3 writes x 2 blocks of 2 MiB each.
            assert len(f.read_bytes()) < 7 * (2 * MiB + 512) + 64 * 1024, len(f.read_bytes())
            files.append(f)
            snap = nxt
        final = hashlib.sha256(bytes(img)).hexdigest()
        target = new_vdi(xapi, size, "chain-restore")
        made.append(target)
        for f in files:
            status, body = http_put(daemon, session, f"/import_raw_vdi?vdi={target}&format=vhd", f.read_bytes())
            assert status == 200, (f.name, body)
        got = http_get(daemon, session, f"/export_raw_vdi?vdi={target}&format=raw")
        assert hashlib.sha256(got).hexdigest() == final
        out = subprocess.run([need(VHDIINFO, "libvhdi-utils"), str(files[1])], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "Differential" in out.stdout, out.stdout
        parent_uuid = xapi.VDI.get_uuid(made[1])
        assert parent_uuid in out.stdout, out.stdout
    finally:
        for v in reversed(made):
            xapi.VDI.destroy(v)


def test_damaged_vhds_are_refused_and_leave_no_vdi(xapi, session, daemon):
    n = int(os.environ.get("XAPID_BAD_INPUTS", "1000"))
    size = 4 * MiB
    src = new_vdi(xapi, size, "vhd-src")
    dst = new_vdi(xapi, size, "vhd-dst")
    try:
        rng = random.Random(3)
        img = bytearray(size)
        for at in (0, 2 * MiB + 4096):
            img[at:at + 4096] = rng.randbytes(4096)
        put_raw(daemon, session, src, bytes(img))
        good = http_get(daemon, session, f"/export_raw_vdi?vdi={src}&format=vhd")
        marker = bytes([0x5A]) * size
        put_raw(daemon, session, dst, marker)
        vdis_before = len(xapi.VDI.get_all())
        refused = 0
        for i in range(n):
            data = bytearray(good)
            if i % 2 == 0:
                data = data[:rng.randrange(0, len(good) - 512)]
            else:
                # Flip a bit of the metadata (footer, header, BAT, bitmaps): block data carries
                # no checksum in the format, so a flip there is a valid (different) image.
                at = rng.choice([rng.randrange(0, 1536 + 512), 1536 + 512 + rng.randrange(0, 512)])
                data[at] ^= 1 << rng.randrange(8)
            task = xapi.task.create("vhd import", "")
            status, body = http_put(daemon, session, f"/import_raw_vdi?vdi={dst}&format=vhd&task_id={task}",
                                    bytes(data))
            rec = xapi.task.get_record(task)
            xapi.task.destroy(task)
            if status == 200:
                # A flip that leaves a valid image (a padding or reserved byte): applied whole.
                assert rec["status"] == "success"
                put_raw(daemon, session, dst, marker)
                continue
            refused += 1
            assert rec["status"] == "failure", rec
            assert rec["error_info"][0].startswith("IMPORT_ERROR") or rec["error_info"][0] == "VDI_TOO_SMALL", \
                (i, rec["error_info"])
            assert len(xapi.VDI.get_all()) == vdis_before
        assert refused > n // 2, refused
        status, body = http_put(daemon, session, f"/import_raw_vdi?vdi={dst}&format=vhd", good)
        assert status == 200, body
        assert http_get(daemon, session, f"/export_raw_vdi?vdi={dst}&format=raw") == bytes(img)
    finally:
        xapi.VDI.destroy(src)
        xapi.VDI.destroy(dst)


def test_tar_stream_of_a_disk_round_trips_and_damage_is_refused(xapi, session, daemon):
    """`format=tar`: the disk as the reference's numbered 1 MiB chunks under `vdi/`, each with
    its `.xxhash` file, read by Python's tarfile and checked with the xxhash package; imported
    onto a VDI holding other bytes it gives the exact disk (the blank chunks it left out
    cleared); truncated and bit-flipped streams are refused and the daemon serves on."""
    import io
    import tarfile

    import xxhash

    size = 6 * MiB + 4096
    src = new_vdi(xapi, size, "tar-src")
    dst = new_vdi(xapi, size, "tar-dst")
    try:
        rng = random.Random(11)
        img = bytearray(size)
        for at in (100, 3 * MiB + 7, size - 900):
            img[at:at + 800] = rng.randbytes(800)
        put_raw(daemon, session, src, bytes(img))
        stream = http_get(daemon, session, f"/export_raw_vdi?vdi={src}&format=tar")
        names = []
        with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
            members = tar.getmembers()
            for m in members:
                names.append(m.name)
                data = tar.extractfile(m).read()
                if m.name.endswith(".xxhash"):
                    chunk = tar.extractfile(m.name[: -len(".xxhash")]).read()
                    assert data.decode() == xxhash.xxh64(chunk, seed=0).hexdigest().upper(), m.name
                else:
                    index = int(m.name.split("/")[1])
                    assert data == bytes(img[index * MiB:index * MiB + len(data)]), m.name
        # Chunks 0, 3 and 6 hold data (6 is also the last); 1, 2, 4 and 5 are blank, left out.
        assert names == [n for i in (0, 3, 6) for n in (f"vdi/{i:08}", f"vdi/{i:08}.xxhash")], names
        put_raw(daemon, session, dst, bytes([0x5A]) * size)
        task = xapi.task.create("tar import", "")
        status, body = http_put(daemon, session, f"/import_raw_vdi?vdi={dst}&format=tar&task_id={task}", stream)
        assert status == 200, body
        assert xapi.task.get_status(task) == "success"
        assert http_get(daemon, session, f"/export_raw_vdi?vdi={dst}&format=raw") == bytes(img)
        # Damage: cut short anywhere, or a flipped byte inside a chunk (its checksum fails).
        vdis_before = len(xapi.VDI.get_all())
        for i in range(60):
            data = bytearray(stream)
            if i % 2 == 0:
                data = data[:rng.randrange(0, len(stream) - 1024)]
            else:
                data[512 + rng.randrange(0, 800) + 100] ^= 1 << rng.randrange(8)
            status, body = http_put(daemon, session, f"/import_raw_vdi?vdi={dst}&format=tar", bytes(data))
            assert status in (400, 500) and b"IMPORT_ERROR" in body, (i, status, body[:200])
        assert len(xapi.VDI.get_all()) == vdis_before
        status, body = http_put(daemon, session, f"/import_raw_vdi?vdi={dst}&format=tar", stream)
        assert status == 200, body
        assert http_get(daemon, session, f"/export_raw_vdi?vdi={dst}&format=raw") == bytes(img)
    finally:
        xapi.VDI.destroy(src)
        xapi.VDI.destroy(dst)
