"""The metrics service at scale: 1,000 running simulated VMs (each with a 1 MiB disk and a
NIC). Measures, against a fresh daemon it starts:

* the daemon's CPU (utime+stime, /proc/<pid>/stat) while idle, as a share of one core, over
  WINDOW-second windows: with the 1,000 VMs halted, then running (the difference is what the
  metrics service spends on them: 5-second rounds of readings, the databases, the records,
  the guest agents);
* the daemon's RSS (VmRSS) halted vs running, per VM;
* `GET /rrd_updates` for all of them, as Xen Orchestra asks (`cf=AVERAGE&interval=5
  &host=true`, five and ten minutes back), JSON and XML: the body's size and the time from sending the
  request to the last byte (median of REPEAT, one keep-alive connection), against the bare
  HTTP stack in the same run: `POST /bench/noop` empty, and carrying a body of the same size
  as the reply.

    python3 benches/metrics_scale.py path/to/xapid [VMS=1000] [WINDOW=30] [REPEAT=20]

Needs the XenAPI package (tests/clients/run.sh --python-venv prints a venv that has it).
"""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import XenAPI

MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_share(pid: int, window: float, windows: int = 3) -> list[float]:
    out = []
    for _ in range(windows):
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(window)
        out.append((cpu_seconds(pid) - c0) / (time.monotonic() - t0))
    return out


def timed(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> tuple[float, int]:
    t0 = time.perf_counter()
    conn.request(method, path, body=body)
    r = conn.getresponse()
    data = r.read()
    dt = time.perf_counter() - t0
    if r.status != 200:
        raise RuntimeError(f"{method} {path[:60]}: HTTP {r.status}: {data[:200]!r}")
    return dt, len(data)


def main() -> int:
    binary = sys.argv[1]
    vms = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    window = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    repeat = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    work = tempfile.mkdtemp(prefix="xapid-metrics-bench-")
    port = free_port()
    pw_file = os.path.join(work, "pw")
    open(pw_file, "w").write("bench-password\n")
    log = open(os.path.join(work, "xapid.log"), "wb")
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--state-dir", os.path.join(work, "state"),
                             "--backend", "simulator", "--root-password-file", pw_file, "--bench-noop"],
                            stdout=log, stderr=subprocess.STDOUT)
    result: dict = {"vms": vms, "window_s": window, "repeat": repeat, "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                s = XenAPI.Session(url)
                s.xenapi.login_with_password("root", "bench-password", "2.0", "metrics-bench")
                break
            except (ConnectionError, OSError):
                time.sleep(0.1)
        else:
            raise RuntimeError("the daemon did not come up")
        x = s.xenapi
        tpl = x.VM.get_by_name_label("Debian Bookworm 12")[0]
        base = x.VM.clone(tpl, "bench-base")
        disks = x.VM.get_other_config(base)["disks"]
        x.VM.remove_from_other_config(base, "disks")
        x.VM.add_to_other_config(base, "disks", re.sub(r'size="\d+"', f'size="{MiB}"', disks))
        x.VM.set_memory_limits(base, str(16 * MiB), str(16 * MiB), str(16 * MiB), str(16 * MiB))
        x.VM.set_VCPUs_max(base, "1")
        x.VM.set_VCPUs_at_startup(base, "1")
        net = next(r for r, rec in x.network.get_all_records().items() if rec["PIFs"])

        def make(i: int) -> str:
            c = XenAPI.Session(url)
            c.xenapi.login_with_password("root", "bench-password", "2.0", "metrics-bench")
            try:
                vm = c.xenapi.VM.clone(base, f"bench-{i}")
                c.xenapi.VM.provision(vm)
                c.xenapi.VM.set_is_a_template(vm, False)
                c.xenapi.VIF.create({"device": "0", "network": net, "VM": vm, "MAC": "", "MTU": "1500",
                                     "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
                                     "locking_mode": "network_default", "ipv4_allowed": [], "ipv6_allowed": []})
                return vm
            finally:
                c.xenapi.session.logout()

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            refs = list(ex.map(make, range(vms)))
        time.sleep(11)
        pid = proc.pid
        halted_cpu = cpu_share(pid, window)
        halted_rss = rss_kib(pid)

        def start(vm: str) -> None:
            c = XenAPI.Session(url)
            c.xenapi.login_with_password("root", "bench-password", "2.0", "metrics-bench")
            try:
                c.xenapi.VM.start(vm, False, False)
            finally:
                c.xenapi.session.logout()

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            list(ex.map(start, refs))
        result["start_all_s"] = round(time.monotonic() - t0, 1)
        # Three rounds for the databases, the rates and the guest agents' first reports.
        time.sleep(16)
        running_cpu = cpu_share(pid, window)
        running_rss = rss_kib(pid)
        with_gm = sum(1 for r in refs if x.VM.get_guest_metrics(r) != "OpaqueRef:NULL")
        result.update({
            "vms_with_guest_metrics": with_gm,
            "cpu_share_halted": [round(v, 4) for v in halted_cpu],
            "cpu_share_running": [round(v, 4) for v in running_cpu],
            "cpu_share_halted_median": round(statistics.median(halted_cpu), 4),
            "cpu_share_running_median": round(statistics.median(running_cpu), 4),
            "rss_halted_kib": halted_rss,
            "rss_running_kib": running_rss,
            "rss_per_running_vm_kib": round((running_rss - halted_rss) / vms, 1),
        })
        # /rrd_updates as Xen Orchestra asks, and the bare stack: five minutes back (60 rows of
        # the 5-second archive) and ten (the 5-second archive reaches back only ten minutes
        # from its last row, so the reference's choice falls to the 1-minute archive: 10 rows).
        sid = s._session
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for back in (300, 600):
            start_t = int(time.time()) - back
            for form, extra in (("json", "&json=true"), ("xml", "")):
                path = f"/rrd_updates?session_id={sid}&start={start_t}&cf=AVERAGE&interval=5&host=true{extra}"
                timed(conn, "GET", path)
                runs = [timed(conn, "GET", path) for _ in range(repeat)]
                size = runs[-1][1]
                key = f"rrd_updates_{back}s_{form}"
                result[f"{key}_bytes"] = size
                result[f"{key}_ms_median"] = round(statistics.median(r[0] for r in runs) * 1e3, 2)
                body = b"x" * size
                timed(conn, "POST", "/bench/noop", body)
                same = [timed(conn, "POST", "/bench/noop", body)[0] for _ in range(repeat)]
                result[f"{key}_noop_same_size_ms_median"] = round(statistics.median(same) * 1e3, 2)
            conn.request("GET", f"/rrd_updates?session_id={sid}&start={start_t}&cf=AVERAGE&interval=5&host=true&json=true")
            doc = json.loads(conn.getresponse().read())
            result[f"rrd_updates_{back}s_columns"] = len(doc["meta"]["legend"])
            result[f"rrd_updates_{back}s_rows"] = len(doc["data"])
            result[f"rrd_updates_{back}s_step"] = int(doc["meta"]["step"])
        timed(conn, "POST", "/bench/noop", b"")
        empty = [timed(conn, "POST", "/bench/noop", b"")[0] for _ in range(repeat)]
        result["noop_empty_ms_median"] = round(statistics.median(empty) * 1e3, 3)
        result["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        print(json.dumps(result, indent=2))
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not os.environ.get("XAPID_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
