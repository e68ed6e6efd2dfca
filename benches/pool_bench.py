"""Figures of a pool of xapid hosts on etcd (issue 19), driven by XenAPI.py.

  pool_bench.py lifecycle --hosts 1|4 --clients 16 --vms 400   # ops/s, daemon CPU per op
  pool_bench.py events --hosts 4 --samples 200                  # event.from latency across hosts
  pool_bench.py scale --hosts 16 --vms 10000                    # VM.get_all_records, RSS per xapid
  pool_bench.py migrate                                         # live VM.pool_migrate: time, downtime
  pool_bench.py ha --vms 10                                     # SIGKILL of a host -> its VMs running
  pool_bench.py evacuate --sizes 20,100                         # host.evacuate of 20 and 100 VMs

Each command starts its own hosts exactly as tests/pool/test_pool.py does (xapid with the
simulator on 127.0.0.<i+2>:80, its own state dir; one host alone stays on redb, more are joined
into one pool whose first 3 hosts run etcd members) and prints one JSON object (also written to
--json). Daemon CPU is utime+stime from /proc/<pid>/stat of every xapid and every etcd member,
read before and after the measured window. XAPID_BIN names the daemon.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "pool"))

import XenAPI  # noqa: E402
from test_pool import PASSWORD, Host  # noqa: E402
from test_pool_faults import etcd_pid  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))]


class Pool:
    def __init__(self, n: int):
        self.base = tempfile.mkdtemp(prefix="xapid-pool-bench-")
        self.hosts = [Host(i, self.base) for i in range(n)]

    def __enter__(self):
        for h in self.hosts:
            h.start()
        t0 = time.time()
        for h in self.hosts[1:]:
            h.session().xenapi.pool.join(self.hosts[0].address, "root", PASSWORD)
        self.join_s = time.time() - t0
        return self

    def __exit__(self, *exc):
        for h in self.hosts:
            h.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def session(self, i: int):
        h = self.hosts[i]
        return (h.session() if i == 0 else h.local_session()).xenapi

    def pids(self) -> dict[str, int]:
        out = {f"xapid {h.address}": h.proc.pid for h in self.hosts}
        if len(self.hosts) > 1:
            for h in self.hosts[:3]:
                out[f"etcd {h.address}"] = etcd_pid(h.address)
        return out

    def cpu(self) -> dict[str, float]:
        return {k: cpu_s(p) for k, p in self.pids().items()}


def template(x) -> str:
    t = x.VM.get_by_name_label("Debian Bookworm 12")[0]
    vm = x.VM.clone(t, "bench-template")
    x.VM.remove_from_other_config(vm, "disks")
    x.VM.set_memory_limits(vm, 128 << 20, 128 << 20, 128 << 20, 128 << 20)
    return vm


def lifecycle(args) -> dict:
    """Each client: VM.clone(template) → set_is_a_template(false) → start → suspend → resume →
    hard_shutdown → destroy (7 calls, as xapid-loadgen's lifecycle), clients spread over the
    hosts (client k on host k mod N, VM.start placing the VM there)."""
    with Pool(args.hosts) as pool:
        tpl = template(pool.session(0))
        sessions = [pool.session(k % args.hosts) for k in range(args.clients)]
        lat: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        counter = iter(range(10**9))

        def one(x, name):
            calls = []
            t = time.perf_counter()
            vm = x.VM.clone(tpl, name)
            calls.append(time.perf_counter() - t)
            for f, a in ((x.VM.set_is_a_template, (vm, False)), (x.VM.start, (vm, False, False)),
                         (x.VM.suspend, (vm,)), (x.VM.resume, (vm, False, False)),
                         (x.VM.hard_shutdown, (vm,)), (x.VM.destroy, (vm,))):
                t = time.perf_counter()
                f(*a)
                calls.append(time.perf_counter() - t)
            return calls

        def worker(x, n):
            for _ in range(n):
                try:
                    calls = one(x, f"bench-{next(counter)}")
                except Exception as e:  # recorded, and the run fails below
                    with lock:
                        errors.append(repr(e)[:200])
                    continue
                with lock:
                    lat.extend(calls)

        # Warm-up, unmeasured.
        ths = [threading.Thread(target=worker, args=(s, 1)) for s in sessions]
        [t.start() for t in ths]
        [t.join() for t in ths]
        lat.clear()
        per = max(1, args.vms // args.clients)
        before, c0, w0 = pool.cpu(), time.process_time(), time.perf_counter()
        ths = [threading.Thread(target=worker, args=(s, per)) for s in sessions]
        [t.start() for t in ths]
        [t.join() for t in ths]
        wall, client = time.perf_counter() - w0, time.process_time() - c0
        after = pool.cpu()
        ops = len(lat)
        daemon = {k: after[k] - before[k] for k in after}
        xapid = sum(v for k, v in daemon.items() if k.startswith("xapid"))
        etcd = sum(v for k, v in daemon.items() if k.startswith("etcd"))
        return {
            "hosts": args.hosts, "backend": "etcd" if args.hosts > 1 else "redb",
            "clients": args.clients, "lifecycles": ops // 7, "calls": ops, "errors": errors[:5],
            "wall_s": round(wall, 2), "ops_per_s": round(ops / wall, 1),
            "p50_ms": round(pct(lat, 50) * 1000, 2), "p99_ms": round(pct(lat, 99) * 1000, 2),
            "daemon_cpu_ms_per_op": round((xapid + etcd) * 1000 / ops, 3),
            "xapid_cpu_ms_per_op": round(xapid * 1000 / ops, 3),
            "etcd_cpu_ms_per_op": round(etcd * 1000 / ops, 3),
            "client_cpu_ms_per_op": round(client * 1000 / ops, 3),
            "cpu_s_by_process": {k: round(v, 2) for k, v in daemon.items()},
        }


def events(args) -> dict:
    """A write (VM.set_name_description) through the last host, an event.from listener on the
    master: time from the write's call to the listener's wake-up, and from its acknowledgement."""
    with Pool(args.hosts) as pool:
        m = pool.session(0)
        w = pool.session(args.hosts - 1)
        t = w.VM.get_by_name_label("Debian Bookworm 12")[0]
        vm = w.VM.clone(t, "event-target")
        from_call, from_ack = [], []
        for i in range(args.samples):
            token = m.event_from(["VM"], "", 0.0)["token"]
            ready, got = threading.Event(), {}

            def listen():
                tok = token
                ready.set()
                deadline = time.time() + 10
                while time.time() < deadline:
                    ev = m.event_from(["VM"], tok, 10.0)
                    tok = ev["token"]
                    if any(e["ref"] == vm for e in ev["events"]):
                        got["t"] = time.perf_counter()
                        return

            th = threading.Thread(target=listen)
            th.start()
            ready.wait()
            time.sleep(0.03)
            t0 = time.perf_counter()
            w.VM.set_name_description(vm, f"write {i}")
            t1 = time.perf_counter()
            th.join()
            if "t" not in got:
                raise RuntimeError(f"event {i} not delivered")
            from_call.append(got["t"] - t0)
            from_ack.append(max(0.0, got["t"] - t1))
        ms = lambda xs, p: round(pct(xs, p) * 1000, 2)  # noqa: E731
        return {"hosts": args.hosts, "samples": args.samples,
                "writer": pool.hosts[-1].address, "listener": pool.hosts[0].address,
                "from_call_p50_ms": ms(from_call, 50), "from_call_p99_ms": ms(from_call, 99),
                "from_ack_p50_ms": ms(from_ack, 50), "from_ack_p99_ms": ms(from_ack, 99),
                "from_call_max_ms": ms(from_call, 100)}


def scale(args) -> dict:
    """VMs made through every host (VM.clone of a template, set_is_a_template false), then
    pool-wide VM.get_all_records on the master and on a member (XML-RPC, wire time: request
    written to last byte read), and each process's RSS."""
    with Pool(args.hosts) as pool:
        tpl = template(pool.session(0))
        per = args.vms // args.hosts
        errors = []

        def make(i):
            x = pool.session(i)
            for k in range(per):
                try:
                    vm = x.VM.clone(tpl, f"scale-h{i}-{k}")
                    x.VM.set_is_a_template(vm, False)
                except Exception as e:
                    errors.append(repr(e)[:200])

        t0 = time.time()
        ths = [threading.Thread(target=make, args=(i,)) for i in range(args.hosts)]
        [t.start() for t in ths]
        [t.join() for t in ths]
        populate = time.time() - t0
        out = {"hosts": args.hosts, "vms_made": args.hosts * per - len(errors), "errors": errors[:5],
               "populate_s": round(populate, 1), "join_s": round(pool.join_s, 1)}
        for label, i in (("master", 0), ("member", args.hosts - 1)):
            h = pool.hosts[i]
            sess = h.session() if i == 0 else h.local_session()
            n = len(sess.xenapi.VM.get_all())
            raw_call(h.address, sess._session, "VM.get_all_records")  # unmeasured
            times, size = [], 0
            for _ in range(args.reps):
                t = time.perf_counter()
                size = raw_call(h.address, sess._session, "VM.get_all_records")
                times.append(time.perf_counter() - t)
            out[f"get_all_records_{label}"] = {"records": n, "response_bytes": size,
                                               "median_s": round(statistics.median(times), 3),
                                               "min_s": round(min(times), 3), "max_s": round(max(times), 3)}
        rss = {k: rss_kb(p) for k, p in pool.pids().items()}
        xr = [v for k, v in rss.items() if k.startswith("xapid")]
        out["rss_kb"] = rss
        out["xapid_rss_mib_median"] = round(statistics.median(xr) / 1024, 1)
        out["xapid_rss_mib_max"] = round(max(xr) / 1024, 1)
        return out


def live_moves(h) -> list[dict]:
    """Every live move the host logged (agent/src/lifecycle/migrate.rs)."""
    with open(h.log, errors="replace") as f:
        return [{k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
                for line in f if "pool_migrate: done (live)" in line]


def migrate(args) -> dict:
    """VM.pool_migrate of one simulated guest between two hosts, for each memory size and dirty
    rate: wall time of the call, and from the source's log the rounds, MiB sent while the guest
    ran and the downtime (pause to the destination's commit). Medians over --reps moves (one
    move for 4 GiB and more)."""
    sizes = [int(x) for x in args.sizes.split(",")]
    rates = [int(x) for x in args.rates.split(",")]
    rows = []
    with Pool(2) as pool:
        x = pool.session(0)
        refs = {r["address"]: ref for ref, r in x.host.get_all_records().items()}
        a, b = pool.hosts
        t = x.VM.get_by_name_label("Debian Bookworm 12")[0]
        vm = x.VM.clone(t, "bench-mover")
        x.VM.remove_from_other_config(vm, "disks")
        x.VM.set_is_a_template(vm, False)
        for mib in sizes:
            size = str(mib << 20)
            x.VM.set_memory_limits(vm, size, size, size, size)
            x.VM.start_on(vm, refs[a.address], False, False)
            for rate in rates:
                x.VM.remove_from_other_config(vm, "simulator-dirty-rate")
                x.VM.add_to_other_config(vm, "simulator-dirty-rate", str(rate))
                reps = args.reps if mib < 4096 else 1
                walls, downs, rounds, sent = [], [], [], []
                for _ in range(reps):
                    here = x.VM.get_resident_on(vm)
                    src, dst = (a, b) if here == refs[a.address] else (b, a)
                    t0 = time.time()
                    x.VM.pool_migrate(vm, refs[dst.address], {"live": "true"})
                    walls.append((time.time() - t0) * 1000)
                    m = live_moves(src)[-1]
                    downs.append(m["downtime_ms"])
                    rounds.append(m["rounds"])
                    sent.append(m["live_mib"])
                row = {"memory_mib": mib, "dirty_mib_s": rate, "moves": reps,
                       "time_ms": round(statistics.median(walls)), "downtime_ms": round(statistics.median(downs)),
                       "rounds": statistics.median(rounds), "live_mib": statistics.median(sent)}
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
            x.VM.hard_shutdown(vm)
    return {"rows": rows}


def evacuate(args) -> dict:
    """host.evacuate of a member running --vms VMs (128 MiB each, live moves) onto the two other
    hosts of a pool of 3, the reference's default batch (10 at a time): seconds, per size."""
    out = {}
    for n in [int(v) for v in args.sizes.split(",")]:
        with Pool(3) as pool:
            x = pool.session(0)
            refs = {r["address"]: ref for ref, r in x.host.get_all_records().items()}
            src = refs[pool.hosts[1].address]
            t = x.VM.get_by_name_label("Debian Bookworm 12")[0]
            for i in range(n):
                vm = x.VM.clone(t, f"bench-evacuee-{i}")
                x.VM.remove_from_other_config(vm, "disks")
                x.VM.set_is_a_template(vm, False)
                x.VM.set_memory_limits(vm, 128 << 20, 128 << 20, 128 << 20, 128 << 20)
                x.VM.start_on(vm, src, False, False)
            x.host.disable(src)
            t0 = time.time()
            x.host.evacuate(src, "OpaqueRef:NULL", "0")
            took = time.time() - t0
            left = [v for v in x.host.get_resident_VMs(src) if not x.VM.get_is_control_domain(v)]
            assert not left, left
            out[str(n)] = round(took, 2)
            print(json.dumps({"vms": n, "evacuate_s": out[str(n)]}), file=sys.stderr)
    return {"evacuate_s": out}


def ha(args) -> dict:
    """A pool of 3 with HA on; --vms protected VMs (128 MiB, disk on a shared SR) on one member,
    whose xapid is then killed with SIGKILL: seconds until every one runs on a survivor."""
    with Pool(3) as pool:
        x = pool.session(0)
        refs = {r["address"]: ref for ref, r in x.host.get_all_records().items()}
        victim = pool.hosts[2]
        sr = x.SR.create(refs[pool.hosts[0].address], {"location": os.path.join(pool.base, "shared")}, "0",
                         "bench-shared", "", "file", "user", True, {})
        t = x.VM.get_by_name_label("Debian Bookworm 12")[0]
        vms = []
        for i in range(args.vms):
            vm = x.VM.clone(t, f"bench-protected-{i}")
            x.VM.remove_from_other_config(vm, "disks")
            x.VM.set_is_a_template(vm, False)
            x.VM.set_memory_limits(vm, 128 << 20, 128 << 20, 128 << 20, 128 << 20)
            vdi = x.VDI.create({"name_label": f"d{i}", "name_description": "", "SR": sr, "virtual_size": str(1 << 20),
                                "type": "user", "sharable": False, "read_only": False, "other_config": {}})
            x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW", "type": "Disk",
                          "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
            x.VM.set_ha_restart_priority(vm, "restart")
            x.VM.start_on(vm, refs[victim.address], False, False)
            vms.append(vm)
        # The reference's smallest HA timeout (its default, 60 s, would make the run minutes long).
        x.pool.enable_ha([sr], {"timeout": "10"})
        time.sleep(3)
        victim.proc.kill()
        victim.proc.wait()
        t0 = time.time()
        first = None
        while True:
            running = [v for v in vms if x.VM.get_power_state(v) == "Running"
                       and x.VM.get_resident_on(v) != refs[victim.address]]
            if running and first is None:
                first = time.time() - t0
            if len(running) == len(vms):
                break
            if time.time() - t0 > 120:
                raise RuntimeError(f"{len(running)} of {len(vms)} restarted after 120 s")
            time.sleep(0.1)
        total = time.time() - t0
        x.pool.disable_ha()
    return {"protected_vms": args.vms, "first_running_s": round(first, 2), "all_running_s": round(total, 2)}


def raw_call(address: str, session: str, method: str) -> int:
    """One XML-RPC call as XenAPI.py sends it, timed on the wire: the response is read to its
    last byte, not parsed (Python's XML-RPC parser would be most of the time). Its size."""
    import http.client
    import xmlrpc.client
    body = xmlrpc.client.dumps((session,), method).encode()
    c = http.client.HTTPConnection(address, 80, timeout=300)
    c.request("POST", "/", body, {"Content-Type": "text/xml"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200 or b"Success" not in data[:400]:
        raise RuntimeError(f"{method}: HTTP {r.status} {data[:200]!r}")
    return len(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["lifecycle", "events", "scale", "migrate", "ha", "evacuate"])
    ap.add_argument("--sizes", default="64,1024,4096,16384", help="migrate: memory sizes, MiB")
    ap.add_argument("--rates", default="0,64,512", help="migrate: dirty rates, MiB/s")
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--vms", type=int, default=400)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    result = {"lifecycle": lifecycle, "events": events, "scale": scale, "migrate": migrate, "ha": ha,
              "evacuate": evacuate}[args.what](args)
    result["what"] = args.what
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
