#!/usr/bin/env python3
"""Backup throughput of a release xapid next to dd and qemu-img convert, same disk, same run
(BENCHMARKS.md, "Backups"). Run by benches/backup.sh, which builds the daemon.

  1. XVA: a VM with a 4 GiB disk, 10% of it random data in 1 MiB pieces spread over the disk
     (the rest holes). `GET /export` to a file, `PUT /import` of that file (a new VM each time,
     answered when the task ends), against `dd bs=1M conv=fdatasync` of the VDI's file and
     `qemu-img convert -O vpc` of it.
  2. VHD: a 1 GiB disk of random data, snapshot, 10% of its 2 MiB blocks rewritten, snapshot:
     `GET /export_raw_vdi?format=vhd` of the second snapshot whole, and with `base=` the first
     (a differencing VHD of the changed blocks), against `qemu-img convert -O vpc` of the raw.

Prints the medians of RUNS runs (MB/s of the disk's virtual size per second of wall time).
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

MiB = 1 << 20
RUNS = int(os.environ.get("RUNS", "3"))
XAPID = sys.argv[1]
WORK = Path(sys.argv[2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def val(r):
    assert r["Status"] == "Success", r
    return r["Value"]


class Api:
    def __init__(self, url: str, password: str):
        self.url = url
        self.p = xmlrpc.client.ServerProxy(url, allow_none=True)
        self.s = val(self.p.session.login_with_password("root", password, "2.0", "bench"))

    def __call__(self, method: str, *args):
        obj = self.p
        for part in method.split("."):
            obj = getattr(obj, part)
        return val(obj(self.s, *args))


def curl(*args: str) -> float:
    t = time.monotonic()
    subprocess.run(["curl", "-sSf", *args], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t


def timed(cmd: list[str]) -> float:
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t


def put_stream(url: str, size: int, chunk) -> None:
    """PUT a generated body of `size` bytes (chunk(i) gives MiB number i)."""
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    c.putrequest("PUT", u.path + "?" + u.query)
    c.putheader("Content-Length", str(size))
    c.endheaders()
    for i in range(size // MiB):
        c.send(chunk(i))
    r = c.getresponse()
    assert r.status == 200, r.read()
    c.close()


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="state-", dir=WORK))
    port = free_port()
    pw = state / "pw"
    pw.write_text("bench-password\n")
    log = open(state / "xapid.log", "w")
    d = subprocess.Popen([XAPID, "--listen", f"127.0.0.1:{port}", "--socket", str(state / "sock"),
                          "--state-dir", str(state / "state"), "--backend", "simulator",
                          "--root-password-file", str(pw)], stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        api = Api(base, "bench-password")
        sid = api.s
        pool = api("pool.get_all")[0]
        sr = api("pool.get_default_SR", pool)
        sr_dir = Path(api("PBD.get_device_config", api("SR.get_PBDs", sr)[0])["location"])

        def vdi(size: int, name: str) -> str:
            return api("VDI.create", {"name_label": name, "name_description": "", "SR": sr,
                                      "virtual_size": str(size), "type": "user", "sharable": False,
                                      "read_only": False, "other_config": {}})

        def vdi_file(v: str) -> Path:
            return sr_dir / f"{api('VDI.get_location', v)}.img"

        rng = random.Random(1)
        rand = [rng.randbytes(MiB) for _ in range(16)]
        # --- XVA: 4 GiB VM, 10% data ---
        size = 4 << 30
        tmpl = api("VM.get_by_name_label", "Other install media")[0]
        vm = api("VM.clone", tmpl, "bench-vm")
        api("VM.set_is_a_template", vm, False)
        disk = vdi(size, "bench-disk")
        api("VBD.create", {"VM": vm, "VDI": disk, "userdevice": "0", "bootable": True, "mode": "RW",
                           "type": "Disk", "empty": False, "other_config": {}, "qos_algorithm_type": "",
                           "qos_algorithm_params": {}})
        zero = bytes(MiB)
        put_stream(f"{base}/import_raw_vdi?vdi={disk}&session_id={sid}", size,
                   lambda i: rand[i % 16] if i % 10 == 0 else zero)
        xva = WORK / "vm.xva"
        res: dict[str, list[float]] = {}
        curl("-o", str(xva), f"{base}/export?ref={vm}&session_id={sid}")
        for _ in range(RUNS):
            res.setdefault("xva export (to /dev/null)", []).append(
                curl("-o", "/dev/null", f"{base}/export?ref={vm}&session_id={sid}"))
            res.setdefault("xva export, use_compression=zstd (to /dev/null)", []).append(
                curl("-o", "/dev/null", f"{base}/export?ref={vm}&use_compression=zstd&session_id={sid}"))
            t = api("task.create", "bench import", "")
            secs = curl("-T", str(xva), "-o", "/dev/null", f"{base}/import?sr_id={sr}&task_id={t}&session_id={sid}")
            while api("task.get_status", t) == "pending":
                time.sleep(0.01)
            assert api("task.get_status", t) == "success", api("task.get_error_info", t)
            res.setdefault("xva import", []).append(secs)
            new = xmlrpc.client.loads("<methodResponse><params><param>" + api("task.get_result", t)
                                      + "</param></params></methodResponse>")[0][0][0]
            for b in api("VM.get_VBDs", new):
                api("VDI.destroy", api("VBD.get_VDI", b))
            api("VM.destroy", new)
            api("task.destroy", t)
            res.setdefault("dd if=<4 GiB VDI file> of=/dev/null bs=1M", []).append(
                timed(["dd", f"if={vdi_file(disk)}", "of=/dev/null", "bs=1M"]))
            res.setdefault("dd if=<4 GiB VDI file> of=file bs=1M conv=sparse,fdatasync", []).append(
                timed(["dd", f"if={vdi_file(disk)}", f"of={WORK / 'dd.img'}", "bs=1M", "conv=sparse,fdatasync"]))
            res.setdefault("qemu-img convert -O vpc (4 GiB)", []).append(
                timed(["qemu-img", "convert", "-f", "raw", "-O", "vpc", str(vdi_file(disk)), str(WORK / "q.vhd")]))
        print(f"xva archive: {xva.stat().st_size} bytes; disk {size} bytes, 10% data")
        for f in ("dd.img", "q.vhd"):
            (WORK / f).unlink(missing_ok=True)
        xva.unlink()
        # --- VHD: 1 GiB, 10% of blocks changed ---
        size = 1 << 30
        d2 = vdi(size, "vhd-disk")
        put_stream(f"{base}/import_raw_vdi?vdi={d2}&session_id={sid}", size, lambda i: rand[i % 16])
        s0 = api("VDI.snapshot", d2, {})
        blocks = sorted(rng.sample(range(size // (2 * MiB)), size // (2 * MiB) // 10))
        ch = set()
        for b in blocks:
            ch.add(2 * b)
            ch.add(2 * b + 1)
        put_stream(f"{base}/import_raw_vdi?vdi={d2}&session_id={sid}", size,
                   lambda i: rand[(i + 7) % 16] if i in ch else rand[i % 16])
        s1 = api("VDI.snapshot", d2, {})
        for _ in range(RUNS):
            res.setdefault("vhd export, full (1 GiB, to /dev/null)", []).append(
                curl("-o", "/dev/null", f"{base}/export_raw_vdi?vdi={s1}&format=vhd&session_id={sid}"))
            res.setdefault("vhd export, base= (10% changed, to /dev/null)", []).append(
                curl("-o", "/dev/null", f"{base}/export_raw_vdi?vdi={s1}&format=vhd&base={s0}&session_id={sid}"))
            res.setdefault("dd if=<1 GiB VDI file> of=/dev/null bs=1M", []).append(
                timed(["dd", f"if={vdi_file(s1)}", "of=/dev/null", "bs=1M"]))
            res.setdefault("qemu-img convert -O vpc (1 GiB)", []).append(
                timed(["qemu-img", "convert", "-f", "raw", "-O", "vpc", str(vdi_file(s1)), str(WORK / "q.vhd")]))
        curl("-o", str(WORK / "full.vhd"), f"{base}/export_raw_vdi?vdi={s1}&format=vhd&session_id={sid}")
        curl("-o", str(WORK / "delta.vhd"), f"{base}/export_raw_vdi?vdi={s1}&format=vhd&base={s0}&session_id={sid}")
        print(f"full vhd {(WORK / 'full.vhd').stat().st_size} bytes; delta vhd {(WORK / 'delta.vhd').stat().st_size} bytes")
        for f in ("full.vhd", "delta.vhd", "q.vhd"):
            (WORK / f).unlink(missing_ok=True)
        print(f"\n| median of {RUNS} | seconds | MB/s of the disk's size | runs (s) |")
        print("|---|---|---|---|")
        for k, v in res.items():
            disk_size = (4 << 30) if ("4 GiB" in k or "xva" in k) else (1 << 30)
            m = statistics.median(v)
            print(f"| {k} | {m:.2f} | {disk_size / m / 1e6:.0f} | {' / '.join(f'{x:.2f}' for x in v)} |")
    finally:
        d.terminate()
        d.wait(timeout=30)


if __name__ == "__main__":
    main()
