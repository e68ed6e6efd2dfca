"""xapid's NBD server, read by libnbd's own tools (`nbdinfo`, `nbdcopy`, Debian libnbd-bin)
with what `VDI.get_nbd_info` answers through XenAPI.py: plain (`insecure_nbd`) and TLS (`nbd`),
bytes equal to what went in through `/import_raw_vdi`, holes reported by `base:allocation`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest
import XenAPI

from conftest import login, safe_logout
from xapid_harness import Daemon, free_port

MIB = 1 << 20
# Not a whole number of MiB, so the last read is short.
SIZE = 9 * MIB + 3 * 4096


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian libnbd-bin; scripts/test.sh installs it)")
    return path


@pytest.fixture(scope="module")
def nbd_daemon():
    port = free_port()
    d = Daemon(extra_args=["--nbd-listen", f"127.0.0.1:{port}"])
    d.nbd_port = port
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def s(nbd_daemon):
    sess = login(nbd_daemon.url, nbd_daemon.password)
    yield sess
    safe_logout(sess)


def contents() -> bytes:
    """Random MiBs with a zero MiB (a hole after the import) and a short random tail."""
    rnd = os.urandom(SIZE)
    return rnd[: 3 * MIB] + bytes(MIB) + rnd[4 * MIB :]


def put_raw(daemon: Daemon, session: str, vdi: str, data: bytes) -> None:
    q = urllib.parse.urlencode({"vdi": vdi, "session_id": session, "format": "raw"})
    req = urllib.request.Request(f"{daemon.url}/import_raw_vdi?{q}", data=data, method="PUT")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200


def make_vdi(xapi, daemon: Daemon, session, data: bytes) -> str:
    pool = xapi.pool.get_all()[0]
    sr = xapi.pool.get_default_SR(pool)
    vdi = xapi.VDI.create({
        "name_label": "nbd source", "name_description": "", "SR": sr,
        "virtual_size": str(len(data)), "type": "user", "sharable": False, "read_only": False,
        "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": [],
    })
    put_raw(daemon, session._session, vdi, data)
    return vdi


def management_network(xapi) -> str:
    for pif in xapi.PIF.get_all():
        if xapi.PIF.get_management(pif):
            return xapi.PIF.get_network(pif)
    pytest.fail("no management PIF")


def uri(info: dict, tls_dir: str | None = None) -> str:
    scheme = "nbds" if tls_dir else "nbd"
    name = urllib.parse.quote(info["exportname"], safe="")
    u = f"{scheme}://{info['address']}:{info['port']}/{name}"
    if tls_dir:
        u += "?" + urllib.parse.urlencode({"tls-certificates": tls_dir})
    return u


def run(*cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if ok:
        assert p.returncode == 0, f"{cmd}: {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def nbdcopy_sha(u: str, tmp_path) -> str:
    out = tmp_path / "copy.raw"
    run(tool("nbdcopy"), "--flush", u, str(out))
    return hashlib.sha256(out.read_bytes()).hexdigest()


def failure(fn, *args) -> list:
    with pytest.raises(XenAPI.Failure) as e:
        fn(*args)
    return e.value.details


def test_nbd_plain_and_tls(nbd_daemon, s, tmp_path):
    xapi = s.xenapi
    data = contents()
    vdi = make_vdi(xapi, nbd_daemon, s, data)
    net = management_network(xapi)
    # No network has an NBD purpose: no records, and the server refuses connections.
    assert xapi.VDI.get_nbd_info(vdi) == []
    fake = {"exportname": f"/{xapi.VDI.get_uuid(vdi)}?session_id={s._session}",
            "address": "127.0.0.1", "port": nbd_daemon.nbd_port}
    assert run(tool("nbdinfo"), uri(fake), ok=False).returncode != 0

    # insecure_nbd: plain connections.
    xapi.network.add_purpose(net, "insecure_nbd")
    assert failure(xapi.network.add_purpose, net, "nbd") == [
        "NETWORK_INCOMPATIBLE_PURPOSES", "nbd", "insecure_nbd"]
    infos = xapi.VDI.get_nbd_info(vdi)
    assert len(infos) == 1, infos
    info = infos[0]
    host = xapi.host.get_all()[0]
    assert info["address"] == "127.0.0.1"
    assert int(info["port"]) == nbd_daemon.nbd_port
    assert info["exportname"] == f"/{xapi.VDI.get_uuid(vdi)}?session_id={s._session}"
    assert info["cert"] == xapi.host.get_server_certificate(host)
    assert info["subject"], info
    shown = json.loads(run(tool("nbdinfo"), "--json", uri(info)).stdout)
    assert shown["exports"][0]["export-size"] == SIZE
    assert shown["exports"][0]["is_read_only"] is True
    assert "base:allocation" in shown["exports"][0]["contexts"]
    assert nbdcopy_sha(uri(info), tmp_path) == hashlib.sha256(data).hexdigest()
    # The zero MiB was imported as a hole, and base:allocation says so.
    extents = json.loads(run(tool("nbdinfo"), "--map", "--json", uri(info)).stdout)
    holes = [(e["offset"], e["length"]) for e in extents if e["type"] & 1]
    assert any(o <= 3 * MIB and o + n >= 4 * MIB for o, n in holes), extents
    assert all(e["offset"] + e["length"] <= 3 * MIB or e["offset"] >= 4 * MIB or e["type"] & 1
               for e in extents), extents
    assert sum(e["length"] for e in extents) == SIZE

    # A session that is not valid, an unknown VDI: refused.
    bad = dict(info, exportname=f"/{xapi.VDI.get_uuid(vdi)}?session_id=OpaqueRef:nope")
    assert run(tool("nbdinfo"), uri(bad), ok=False).returncode != 0
    unknown = dict(info, exportname=f"/00000000-0000-0000-0000-000000000000?session_id={s._session}")
    assert run(tool("nbdinfo"), uri(unknown), ok=False).returncode != 0

    # nbd: TLS required, checked against the certificate get_nbd_info gives.
    xapi.network.remove_purpose(net, "insecure_nbd")
    xapi.network.add_purpose(net, "nbd")
    assert xapi.network.get_purpose(net) == ["nbd"]
    info = xapi.VDI.get_nbd_info(vdi)[0]
    refused = run(tool("nbdinfo"), uri(info), ok=False)
    assert refused.returncode != 0
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca-cert.pem").write_text(info["cert"])
    shown = json.loads(run(tool("nbdinfo"), "--json", uri(info, str(certs))).stdout)
    assert shown["exports"][0]["export-size"] == SIZE
    assert nbdcopy_sha(uri(info, str(certs)), tmp_path) == hashlib.sha256(data).hexdigest()
    # A certificate the server does not have: the client refuses the server.
    other = tmp_path / "other"
    other.mkdir()
    other_cert = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "/dev/null",
         "-subj", "/CN=127.0.0.1", "-days", "1", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, text=True)
    if other_cert.returncode == 0:
        (other / "ca-cert.pem").write_text(other_cert.stdout)
        assert run(tool("nbdinfo"), uri(info, str(other)), ok=False).returncode != 0
    xapi.network.remove_purpose(net, "nbd")
    assert xapi.network.get_purpose(net) == []
