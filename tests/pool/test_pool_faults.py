"""Faults in a pool (issue 19): the crash-durability report extended to a pool.

A pool of N hosts (XAPID_POOL_HOSTS, default 4; 3 of them run the pool's etcd members) is made
exactly as test_pool.py makes it. Then a mixed write load runs through the master and every
member from several client threads (network create / set / destroy, VM lifecycle on VMs of
every host, each call made on another host than the VM's), recording every acknowledged write,
while:

1. the xapid of a member that runs an etcd member is `kill -9`ed, then started again with the
   same command: it must rejoin the pool and make its VMs' power states true against its
   simulator (whose domains ended with the process);
2. one etcd member process (the master's) is `kill -9`ed; quorum holds with the two others and
   xapid's supervisor starts it again;
3. a member is cut off from etcd (the two other etcd members are SIGSTOPped, so its own has no
   quorum): its writes must be refused with the documented error within a bounded time, none
   acknowledged; after SIGCONT its view must equal etcd's.

Afterwards every acknowledged create must be present with its acknowledged value, every
acknowledged destroy gone, every acknowledged power state true; each host's view must equal
what etcd holds (read from etcd's own JSON gateway).
"""
from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.request

import pytest
import XenAPI

from procs import etcd_pids
from test_pool import PASSWORD, Host, vm_on

N = int(os.environ.get("XAPID_POOL_HOSTS", "4"))
ABSENT = "<absent>"
# The error a write gets when this host cannot commit to the pool database (docs/pool.md).
REFUSED = "the change was not saved: the pool database (etcd)"
# How long a refused write may take (the store's commit timeout is 10 s; a write may wait for
# the commit and then for the view to catch up).
REFUSAL_BOUND = 25.0

socket.setdefaulttimeout(60)


class Tracker:
    """What each object may look like in the end: the value of its last acknowledged write,
    plus the values of later writes that were refused or failed (they may or may not have
    been committed)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.possible: dict[str, set] = {}
        self.kind: dict[str, str] = {}
        self.acked = {"create": 0, "set": 0, "destroy": 0, "lifecycle": 0}
        self.refused = 0
        self.errors: dict[str, int] = {}
        self.first_busy = None
        self.calls: list[tuple[float, float]] = []  # (call started, acknowledged)

    def ack(self, op: str, ref: str, value, kind: str, started: float = 0.0) -> None:
        with self.lock:
            self.acked[op] += 1
            self.calls.append((started, time.time()))
            self.possible[ref] = {value}
            self.kind[ref] = kind

    def unsure(self, ref: str, value, e: Exception) -> None:
        with self.lock:
            self.refused += 1
            if ref in self.possible:
                self.possible[ref].add(value)
            self.note(e)

    def note(self, e: Exception) -> None:
        key = (e.details[0] if isinstance(e, XenAPI.Failure) else type(e).__name__)
        if key == "OTHER_OPERATION_IN_PROGRESS" and self.first_busy is None:
            self.first_busy = (time.strftime("%H:%M:%S"), e.details)
        self.errors[key] = self.errors.get(key, 0) + 1

    def reset(self, ref: str, value) -> None:
        with self.lock:
            self.possible[ref] = {value}


class Load:
    """Client threads writing through every host until stopped."""

    def __init__(self, hosts, vms: dict[int, str]):
        self.hosts = hosts
        self.vms = vms
        self.t = Tracker()
        self.stop = threading.Event()
        self.paused: set[int] = set()  # VMs (by host index) whose lifecycle thread waits
        self.threads = []

    def session(self, i: int):
        h = self.hosts[i]
        return (h.session() if i == 0 else h.local_session()).xenapi

    def start(self) -> None:
        for i in range(len(self.hosts)):
            self.threads.append(threading.Thread(target=self.writer, args=(i,), daemon=True))
            self.threads.append(threading.Thread(target=self.lifecycle, args=(i,), daemon=True))
        for th in self.threads:
            th.start()

    def finish(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(90)
            assert not th.is_alive(), "a load thread did not stop"

    def writer(self, i: int) -> None:
        """network create / set / destroy through host i."""
        rnd = random.Random(i)
        x, mine, n = None, [], 0
        while not self.stop.is_set():
            try:
                if x is None:
                    x = self.session(i)
            except Exception as e:  # the host is down or cut off: try again
                self.t.note(e)
                time.sleep(0.3)
                continue
            n += 1
            r = rnd.random()
            t0 = time.time()
            if not mine or r < 0.4:
                value = f"h{i}-w{n}"
                try:
                    ref = x.network.create({"name_label": f"fault-h{i}-{n}", "name_description": value,
                                            "other_config": {}})
                except Exception as e:
                    self.t.unsure("", value, e)
                    x = None if not isinstance(e, XenAPI.Failure) else x
                    continue
                self.t.ack("create", ref, value, "network", t0)
                mine.append(ref)
            elif r < 0.8:
                ref = rnd.choice(mine)
                value = f"h{i}-w{n}"
                try:
                    x.network.set_name_description(ref, value)
                except Exception as e:
                    self.t.unsure(ref, value, e)
                    x = None if not isinstance(e, XenAPI.Failure) else x
                    continue
                self.t.ack("set", ref, value, "network", t0)
            else:
                ref = mine.pop(rnd.randrange(len(mine)))
                try:
                    x.network.destroy(ref)
                except Exception as e:
                    self.t.unsure(ref, ABSENT, e)
                    x = None if not isinstance(e, XenAPI.Failure) else x
                    continue
                self.t.ack("destroy", ref, ABSENT, "network", t0)

    def lifecycle(self, j: int) -> None:
        """VM.start / hard_shutdown of the VM on host j, called on the next host."""
        i = (j + 1) % len(self.hosts)
        vm, x = self.vms[j], None
        state = "Running"
        while not self.stop.is_set():
            if j in self.paused:
                time.sleep(0.1)
                continue
            try:
                if x is None:
                    x = self.session(i)
            except Exception as e:
                self.t.note(e)
                time.sleep(0.3)
                continue
            want = "Halted" if state == "Running" else "Running"
            t0 = time.time()
            try:
                if want == "Halted":
                    x.VM.hard_shutdown(vm)
                else:
                    x.VM.start(vm, False, False)
            except Exception as e:
                self.t.unsure(vm, want, e)
                x = None if not isinstance(e, XenAPI.Failure) else x
                # Find out where it is before going on.
                try:
                    state = x.VM.get_power_state(vm) if x else state
                except Exception:
                    x = None
                time.sleep(0.1)
                continue
            state = want
            self.t.ack("lifecycle", vm, want, "VM", t0)


def etcd_pid(address: str) -> int:
    """The etcd member serving clients on `address` (started by that host's xapid)."""
    pids = etcd_pids(f"http://{address}:2379")
    if not pids:
        raise AssertionError(f"no etcd member on {address}")
    return pids[0]


def etcd_range(address: str, prefix: str) -> dict[str, dict]:
    """Every key under `prefix` in etcd (its JSON gateway), key -> decoded record."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                       "range_end": base64.b64encode(end.encode()).decode()}).encode()
    req = urllib.request.Request(f"http://{address}:2379/v3/kv/range", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        resp = json.load(r)
    out = {}
    for kv in resp.get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()
        out[key[len(prefix):]] = json.loads(base64.b64decode(kv["value"]))
    return out


def view_of(x) -> dict:
    """What a host's view says of the objects the load writes."""
    nets = {ref: r["name_description"] for ref, r in x.network.get_all_records().items()}
    vms = {ref: r["power_state"] for ref, r in x.VM.get_all_records().items() if not r["is_a_template"]}
    return {"network": nets, "VM": vms}


def etcd_view(address: str) -> dict:
    nets = {ref: r.get("name_description", "") for ref, r in etcd_range(address, "/xapi/obj/network/").items()}
    vms = {ref: r.get("power_state", "Halted") for ref, r in etcd_range(address, "/xapi/obj/VM/").items()
           if not r.get("is_a_template", False)}
    return {"network": nets, "VM": vms}


def wait_views_equal(hosts, address: str, timeout: float = 30.0):
    """Every host's view equals etcd's (the load stopped); the last difference otherwise."""
    deadline = time.time() + timeout
    while True:
        truth = etcd_view(address)
        diffs = []
        for i, h in enumerate(hosts):
            v = view_of((h.session() if i == 0 else h.local_session()).xenapi)
            for cls in truth:
                if v[cls] != truth[cls]:
                    only_v = set(v[cls].items()) - set(truth[cls].items())
                    only_e = set(truth[cls].items()) - set(v[cls].items())
                    diffs.append((h.address, cls, sorted(only_v)[:5], sorted(only_e)[:5]))
        if not diffs:
            return truth
        if time.time() > deadline:
            raise AssertionError(f"views differ from etcd: {diffs}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def pool():
    assert shutil.which("etcd"), "the etcd program is missing (etcd-server)"
    assert N >= 3, "the fault runs need 3 etcd members (XAPID_POOL_HOSTS >= 3)"
    base = tempfile.mkdtemp(prefix="xapid-pool-faults-")
    hs = [Host(i, base) for i in range(N)]
    stopped: list[int] = []
    try:
        for h in hs:
            h.start()
        m = hs[0].session().xenapi
        for h in hs[1:]:
            h.session().xenapi.pool.join(hs[0].address, "root", PASSWORD)
        assert len(m.host.get_all()) == N
        yield hs, stopped
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        for h in hs:
            h.stop()
        if os.environ.get("XAPID_KEEP") == "1":
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def test_faults_during_a_mixed_write_load(pool):
    hosts, stopped = pool
    t_start = time.time()
    m = hosts[0].session().xenapi
    by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    vms = {}
    for i, h in enumerate(hosts):
        x = (h.session() if i == 0 else h.local_session()).xenapi
        vms[i] = vm_on(x, f"fault-vm{i}")
        x.VM.set_affinity(vms[i], by_addr[h.address])
    load = Load(hosts, vms)
    load.start()
    time.sleep(4)

    # 1. kill -9 of a member's xapid (host 1 runs an etcd member: it goes down with it).
    victim = hosts[1]
    acked_before = sum(load.t.acked.values())
    print(f"\n{time.strftime('%H:%M:%S')} kill -9 xapid {victim.address}; fault VMs {vms}")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    load.paused.add(1)
    time.sleep(3)
    t0 = time.time()
    victim.start()
    # It rejoins: a member's password login names the master; its view has every host.
    deadline = time.time() + 30
    while True:
        try:
            local = victim.local_session().xenapi
            if len(local.host.get_all()) == N:
                break
        except (XenAPI.Failure, OSError):
            pass
        assert time.time() < deadline, victim.tail()
        time.sleep(0.2)
    d = None
    try:
        XenAPI.Session(victim.url).xenapi.login_with_password("root", PASSWORD, "1.0", "t")
    except XenAPI.Failure as e:
        d = e.details
    assert d == ["HOST_IS_SLAVE", hosts[0].address], d
    rejoin = time.time() - t0
    # Its domains ended with it: every VM the database had resident on it is Halted now, and
    # nothing says it runs there.
    me = by_addr[victim.address]
    deadline = time.time() + 20
    while True:
        recs = m.VM.get_all_records()
        wrong = [(r["name_label"], r["power_state"]) for r in recs.values()
                 if r["resident_on"] == me and not r["is_control_domain"] and r["power_state"] != "Halted"]
        if not wrong and m.VM.get_power_state(vms[1]) == "Halted":
            break
        assert time.time() < deadline, f"not reconciled: {wrong}, fault-vm1 {m.VM.get_power_state(vms[1])}"
        time.sleep(0.3)
    assert m.VM.get_power_state(vms[1]) == "Halted"
    load.t.reset(vms[1], "Halted")
    # The marks of operations it was running are cleared at its start-up, on its VMs and on
    # VMs resident nowhere (a VM.start it was running marked a Halted VM; a hard_shutdown it
    # was running may have written Halted before it was killed): it notes each mark it makes in
    # its state dir, as nothing in the database says which host made a mark.
    deadline = time.time() + 15
    while True:
        left = m.VM.get_current_operations(vms[1])
        if not left:
            break
        assert time.time() < deadline, f"marks of the killed host's operations left: {left}"
        time.sleep(0.3)
    load.paused.discard(1)
    # It runs VMs again.
    time.sleep(3)
    assert sum(load.t.acked.values()) > acked_before, "no write acknowledged around the xapid kill"
    print(f"xapid of {victim.address} killed; restarted, it rejoined in {rejoin:.1f} s and halted its VMs")

    # 2. kill -9 of one etcd member (the master's): the two others keep quorum; xapid's
    # supervisor starts it again.
    pid = etcd_pid(hosts[0].address)
    acked_before = sum(load.t.acked.values())
    print(f"{time.strftime('%H:%M:%S')} kill -9 etcd {hosts[0].address}")
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 20
    while True:
        try:
            again = etcd_pid(hosts[0].address)
            if again != pid:
                break
        except AssertionError:
            pass
        assert time.time() < deadline, "the master's etcd member was not started again"
        time.sleep(0.2)
    time.sleep(4)
    assert sum(load.t.acked.values()) > acked_before, "no write acknowledged after the etcd member kill"
    print(f"etcd member on {hosts[0].address} killed (pid {pid}); restarted as pid {again}")

    # 3. A member cut off: the etcd members of hosts 0 and 1 stopped, host 2's alone has no
    # quorum. Its writes are refused in bounded time; none is acknowledged.
    cut = hosts[2]
    x = cut.local_session().xenapi
    net = x.network.create({"name_label": "cut-off-probe", "name_description": "before", "other_config": {}})
    load.t.ack("create", net, "before", "network", time.time())
    for h in hosts[:2]:
        p = etcd_pid(h.address)
        stopped.append(p)
        os.kill(p, signal.SIGSTOP)
    t_stop = time.time()
    refusals = []
    for k in range(3):
        t0 = time.time()
        with pytest.raises(XenAPI.Failure) as e:
            x.network.set_name_description(net, f"during {k}")
        refusals.append(time.time() - t0)
        load.t.unsure(net, f"during {k}", e.value)
        assert e.value.details[0] == "INTERNAL_ERROR" and REFUSED in e.value.details[1], e.value.details
    # No call made anywhere while the pool database had no quorum was acknowledged (a call
    # made before may be: its writes were committed before the stop).
    time.sleep(1)
    t_cont = time.time()
    for p in stopped:
        os.kill(p, signal.SIGCONT)
    stopped.clear()
    with load.t.lock:
        during = [c for c in load.t.calls if t_stop < c[0] and c[1] < t_cont]
    assert max(refusals) < REFUSAL_BOUND, refusals
    assert not during, f"acknowledged without quorum: {during}"
    print(f"cut off from etcd, {cut.address} refused writes in {min(refusals):.1f}-{max(refusals):.1f} s "
          f"with '{e.value.details[1][:90]}...'")
    # Writes go on once quorum is back.
    deadline = time.time() + 30
    while True:
        try:
            x.network.set_name_description(net, "after")
            load.t.ack("set", net, "after", "network", time.time())
            break
        except XenAPI.Failure:
            assert time.time() < deadline, "writes did not resume after the cut"
            time.sleep(0.5)
    time.sleep(3)
    load.finish()

    stuck = {m.VM.get_name_label(vm): (m.VM.get_power_state(vm), m.VM.get_current_operations(vm))
             for vm in vms.values() if m.VM.get_current_operations(vm)}
    print(f"marks left: {stuck}; first OTHER_OPERATION_IN_PROGRESS at {load.t.first_busy}")
    # Every host's view equals etcd's, and every acknowledged write is there.
    truth = wait_views_equal(hosts, hosts[0].address)
    t = load.t
    lost = []
    for ref, possible in t.possible.items():
        have = truth[t.kind[ref]].get(ref, ABSENT)
        if have not in possible:
            lost.append((t.kind[ref], ref, have, sorted(possible)))
    total = sum(t.acked.values())
    print(f"pool faults: {total} acknowledged writes ({t.acked['create']} creates, {t.acked['set']} sets, "
          f"{t.acked['destroy']} destroys, {t.acked['lifecycle']} VM lifecycle), {t.refused} refused; "
          f"{len(t.possible)} objects' final states checked against etcd and every host: "
          f"{len(t.possible) - len(lost)} as acknowledged, {len(lost)} lost; errors seen {t.errors}; "
          f"calls made and acknowledged while cut off {len(during)}; {time.time() - t_start:.0f} s")
    assert not lost, lost[:10]
    assert t.acked["create"] > 20 and t.acked["lifecycle"] > 10, t.acked
    # Marks of operations that ended while etcd was out of reach are cleared (in the
    # background, every 2 s), and so are the marks of calls whose first write (the mark
    # itself) was refused after 10 s but committed when the stopped members resumed (the
    # request waited in a stopped member): the host that made the call watches for them.
    deadline = time.time() + 40
    while any(m.VM.get_current_operations(vm) for vm in vms.values()) and time.time() < deadline:
        time.sleep(0.5)
    left = {m.VM.get_name_label(vm): m.VM.get_current_operations(vm) for vm in vms.values()}
    left = {k: v for k, v in left.items() if v}
    assert not left, f"marks left {time.time() - deadline + 40:.0f} s after the cut ended: {left}"
    # The VMs are really where the database says: each running one answers a lifecycle call on
    # its host, each halted one starts there (a domain the database did not know of would make
    # the start fail).
    for i, vm in vms.items():
        if m.VM.get_power_state(vm) == "Running":
            assert m.VM.get_resident_on(vm) == by_addr[hosts[i].address]
            m.VM.hard_shutdown(vm)
        m.VM.start(vm, False, False)
        assert m.VM.get_resident_on(vm) == by_addr[hosts[i].address]
