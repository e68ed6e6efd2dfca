"""NBD read throughput of xapid next to dd of the same VDI file, in the same run.

    XAPID_BIN=target/release/xapid <venv>/bin/python benches/nbd_read.py [--size-mib 1024] [--runs 5]

(`tests/clients/run.sh --python-venv` prints a venv with XenAPI.py.) Starts `xapid --backend
simulator` (tests/clients/python/xapid_harness.py), imports SIZE MiB of random bytes into a VDI
through `/import_raw_vdi`, then for each run, alternating: drop the page cache (as root), `dd
if=<the VDI's file> of=/dev/null bs=1M`; drop the page cache, `nbdcopy <uri> null:` with the
address and export name `VDI.get_nbd_info` gives, plain (network purpose `insecure_nbd`) and
then TLS (`nbd`). Prints each run and the medians in MB/s (10^6 bytes per second of wall time).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "clients" / "python"))

import XenAPI  # noqa: E402
from xapid_harness import Daemon, free_port  # noqa: E402

MIB = 1 << 20


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        print(f"(page cache not dropped: {e})")


def timed(cmd: list[str]) -> float:
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - t


def uri(info: dict, certs: str | None) -> str:
    name = urllib.parse.quote(info["exportname"], safe="")
    u = f"{'nbds' if certs else 'nbd'}://{info['address']}:{info['port']}/{name}"
    return u + (f"?tls-certificates={certs}" if certs else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    size = args.size_mib * MIB
    port = free_port()
    d = Daemon(extra_args=["--nbd-listen", f"127.0.0.1:{port}"])
    d.start()
    try:
        s = XenAPI.Session(d.url)
        s.xenapi.login_with_password("root", d.password, "2.21", "nbd-bench")
        x = s.xenapi
        sr = x.pool.get_default_SR(x.pool.get_all()[0])
        vdi = x.VDI.create({"name_label": "bench", "name_description": "", "SR": sr,
                            "virtual_size": str(size), "type": "user", "sharable": False,
                            "read_only": False, "other_config": {}, "xenstore_data": {},
                            "sm_config": {}, "tags": []})
        with tempfile.NamedTemporaryFile(dir=d.workdir) as src:
            for _ in range(args.size_mib):
                src.write(os.urandom(MIB))
            src.flush()
            q = urllib.parse.urlencode({"vdi": vdi, "session_id": s._session})
            subprocess.run(["curl", "-sSf", "-T", src.name, f"{d.url}/import_raw_vdi?{q}"], check=True)
        pbd = x.SR.get_PBDs(sr)[0]
        path = Path(x.PBD.get_device_config(pbd)["location"]) / f"{x.VDI.get_location(vdi)}.img"
        net = [x.PIF.get_network(p) for p in x.PIF.get_all() if x.PIF.get_management(p)][0]
        certs = Path(d.workdir) / "certs"
        certs.mkdir()
        res: dict[str, list[float]] = {"dd": [], "nbdcopy (plain)": [], "nbdcopy (TLS)": []}
        for run in range(args.runs):
            for purpose, key, tls in (("insecure_nbd", "nbdcopy (plain)", False), ("nbd", "nbdcopy (TLS)", True)):
                for p in x.network.get_purpose(net):
                    x.network.remove_purpose(net, p)
                x.network.add_purpose(net, purpose)
                info = x.VDI.get_nbd_info(vdi)[0]
                (certs / "ca-cert.pem").write_text(info["cert"])
                drop_caches()
                res["dd"].append(size / timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"]) / 1e6)
                drop_caches()
                res[key].append(size / timed(["nbdcopy", uri(info, str(certs) if tls else None), "null:"]) / 1e6)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in res.items()), flush=True)
        print(f"machine: {platform.platform()}; {os.cpu_count()} CPUs; load {os.getloadavg()}")
        print(f"{args.size_mib} MiB, median of {args.runs} runs (dd: {len(res['dd'])} runs, one before each nbdcopy):")
        med_dd = statistics.median(res["dd"])
        for k, v in res.items():
            m = statistics.median(v)
            print(f"  {k:18} {m:7.0f} MB/s  ({m / med_dd:.0%} of dd)  runs: {' / '.join(f'{r:.0f}' for r in v)}")
    finally:
        d.cleanup()


if __name__ == "__main__":
    main()
