"""Changed-block tracking through XenAPI.py: enable, snapshot, write known 64 KiB blocks through
`/import_raw_vdi`, snapshot, and `VDI.list_changed_blocks` decodes to exactly those blocks;
`data_destroy`; the reference's refusals; logs kept over a restart."""

from __future__ import annotations

import base64
import os
import urllib.parse
import urllib.request

import pytest
import XenAPI

from conftest import login, safe_logout
from xapid_harness import Daemon

BLOCK = 64 * 1024
MIB = 1 << 20
SIZE = 8 * MIB  # 128 blocks, a 16-byte bitmap


@pytest.fixture(scope="module")
def cbt_daemon():
    d = Daemon(extra_args=["--no-nbd"])
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def put_raw(daemon: Daemon, session: str, vdi: str, data: bytes) -> None:
    q = urllib.parse.urlencode({"vdi": vdi, "session_id": session, "format": "raw"})
    req = urllib.request.Request(f"{daemon.url}/import_raw_vdi?{q}", data=data, method="PUT")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200


def new_vdi(xapi, size: int = SIZE, vtype: str = "user") -> str:
    sr = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
    return xapi.VDI.create({
        "name_label": "cbt disk", "name_description": "", "SR": sr,
        "virtual_size": str(size), "type": vtype, "sharable": False, "read_only": False,
        "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": [],
    })


def blocks_of(bitmap_b64: str) -> set[int]:
    """The set bits of the reference's bitmap: bit i (most significant first) is block i."""
    raw = base64.b64decode(bitmap_b64)
    return {i for i in range(len(raw) * 8) if raw[i // 8] & (0x80 >> (i % 8))}


def with_blocks(data: bytes, blocks) -> bytes:
    """`data` with each of `blocks` given new random bytes."""
    b = bytearray(data)
    for n in blocks:
        b[n * BLOCK:(n + 1) * BLOCK] = os.urandom(BLOCK)
    return bytes(b)


def failure(fn, *args) -> list:
    with pytest.raises(XenAPI.Failure) as e:
        fn(*args)
    return e.value.details


def test_changed_blocks_between_snapshots(cbt_daemon):
    s = login(cbt_daemon.url, cbt_daemon.password)
    xapi = s.xenapi
    try:
        sm = [r for r in xapi.SM.get_all_records().values() if r["type"] == "file"][0]
        assert "VDI_CONFIG_CBT" in sm["features"], sm["features"]

        vdi = new_vdi(xapi)
        assert xapi.VDI.get_cbt_enabled(vdi) is False
        xapi.VDI.enable_cbt(vdi)
        assert xapi.VDI.get_cbt_enabled(vdi) is True
        xapi.VDI.enable_cbt(vdi)  # already on: nothing to do

        base = os.urandom(4 * MIB) + bytes(4 * MIB)
        put_raw(cbt_daemon, s._session, vdi, base)
        s1 = xapi.VDI.snapshot(vdi, {})
        assert xapi.VDI.get_cbt_enabled(s1) is True
        assert xapi.VDI.get_is_a_snapshot(s1) is True

        # Known blocks: three in the data, two in the zero half; the rest is imported again
        # unchanged (and is not counted).
        known = {3, 17, 40, 100, 127}
        second = with_blocks(base, known)
        put_raw(cbt_daemon, s._session, vdi, second)
        s2 = xapi.VDI.snapshot(vdi, {})
        bitmap = xapi.VDI.list_changed_blocks(s1, s2)
        assert len(base64.b64decode(bitmap)) == SIZE // BLOCK // 8
        assert blocks_of(bitmap) == known
        # To the disk itself: nothing written since s2.
        assert blocks_of(xapi.VDI.list_changed_blocks(s1, vdi)) == known
        assert blocks_of(xapi.VDI.list_changed_blocks(s2, vdi)) == set()

        # A block overwritten, another zeroed (a hole punched): both count.
        third = bytearray(with_blocks(second, {5}))
        third[17 * BLOCK:18 * BLOCK] = bytes(BLOCK)
        put_raw(cbt_daemon, s._session, vdi, bytes(third))
        assert blocks_of(xapi.VDI.list_changed_blocks(s2, vdi)) == {5, 17}
        assert blocks_of(xapi.VDI.list_changed_blocks(s1, vdi)) == known | {5}

        # The reference's refusals.
        same = failure(xapi.VDI.list_changed_blocks, vdi, vdi)
        assert same[0] == "SR_BACKEND_FAILURE" and same[1] == "460", same
        assert "Source and target VDI are same" in same[3]
        other = new_vdi(xapi, MIB)
        unrelated = failure(xapi.VDI.list_changed_blocks, s1, other)
        assert unrelated[:2] == ["SR_BACKEND_FAILURE", "460"], unrelated
        assert "unrelated" in unrelated[3]
        assert failure(xapi.VDI.data_destroy, vdi) == [
            "OPERATION_NOT_ALLOWED", f"VDI is not a snapshot: {vdi}"]
        assert failure(xapi.VDI.enable_cbt, s2) == [
            "OPERATION_NOT_ALLOWED", f"VDI is a snapshot: {s2}"]
        assert failure(xapi.VDI.set_on_boot, vdi, "reset") == ["VDI_CBT_ENABLED", vdi]
        plain_snap = xapi.VDI.snapshot(other, {})
        assert xapi.VDI.get_cbt_enabled(plain_snap) is False
        assert failure(xapi.VDI.data_destroy, plain_snap) == ["VDI_NO_CBT_METADATA", plain_snap]
        xapi.VDI.set_on_boot(other, "reset")
        assert failure(xapi.VDI.enable_cbt, other) == ["VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION"]
        suspend = new_vdi(xapi, MIB, "suspend")
        assert failure(xapi.VDI.enable_cbt, suspend) == ["VDI_INCOMPATIBLE_TYPE", suspend, "suspend"]

        # data_destroy: s1 keeps its changed-block log, not its data.
        xapi.VDI.data_destroy(s1)
        assert xapi.VDI.get_type(s1) == "cbt_metadata"
        xapi.VDI.data_destroy(s1)  # already done: nothing to do
        assert blocks_of(xapi.VDI.list_changed_blocks(s1, s2)) == known
        assert failure(xapi.VDI.get_nbd_info, s1) == ["VDI_INCOMPATIBLE_TYPE", s1, "cbt_metadata"]
        assert failure(xapi.VDI.snapshot, s1, {}) == ["VDI_INCOMPATIBLE_TYPE", s1, "cbt_metadata"]
        assert failure(xapi.VDI.clone, s1, {}) == ["VDI_INCOMPATIBLE_TYPE", s1, "cbt_metadata"]
        refs = (vdi, s1, s2)
    finally:
        safe_logout(s)

    # The logs outlive a restart (the changes since s2 are still {5, 17}).
    cbt_daemon.stop()
    cbt_daemon.start(port=cbt_daemon.port)
    s = login(cbt_daemon.url, cbt_daemon.password)
    xapi = s.xenapi
    try:
        vdi, s1, s2 = refs
        assert blocks_of(xapi.VDI.list_changed_blocks(s2, vdi)) == {5, 17}
        assert blocks_of(xapi.VDI.list_changed_blocks(s1, vdi)) == known | {5}
        # Destroying the middle snapshot keeps the chain: its changes pass to the disk's log.
        xapi.VDI.destroy(s2)
        assert blocks_of(xapi.VDI.list_changed_blocks(s1, vdi)) == known | {5}
        xapi.VDI.disable_cbt(vdi)
        assert xapi.VDI.get_cbt_enabled(vdi) is False
        gone = failure(xapi.VDI.list_changed_blocks, s1, vdi)
        assert gone[:2] == ["SR_BACKEND_FAILURE", "460"], gone
        xapi.VDI.destroy(s1)
        xapi.VDI.destroy(vdi)
    finally:
        safe_logout(s)
