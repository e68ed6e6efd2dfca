"""A pool of xapid hosts driven by XenAPI.py, as a user would build one.

N standalone daemons (XAPID_POOL_HOSTS, default 4) with the simulator, each on 127.0.0.<i+2>
(HTTP on 80, HTTPS on 443) with its own state dir; the first becomes the master. The tests run
in file order and share the hosts: refusals first, then the joins, what the master and the
members see, events from writes on every host, HOST_IS_SLAVE, eject and rejoin, host-to-host
HTTPS and the pool secret with its rotation, and last a dead member destroyed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import hashlib
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client
import xml.etree.ElementTree as ET

import pytest
import XenAPI

from procs import etcd_pids

N = int(os.environ.get("XAPID_POOL_HOSTS", "4"))
PASSWORD = "pool-test-pw"


class Host:
    def __init__(self, index: int, base: str):
        self.address = f"127.0.0.{index + 2}"
        self.dir = os.path.join(base, f"host{index}")
        os.makedirs(self.dir)
        self.state = os.path.join(self.dir, "state")
        self.pwfile = os.path.join(self.dir, "root-password")
        with open(self.pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(self.pwfile, 0o600)
        self.log = os.path.join(self.dir, "xapid.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def command(self) -> list[str]:
        return [os.environ["XAPID_BIN"], "--listen", f"{self.address}:80",
                "--tls-listen", f"{self.address}:443",
                "--socket", os.path.join(self.dir, "xapi.sock"),
                "--state-dir", self.state, "--backend", "simulator",
                "--root-password-file", self.pwfile]

    def start(self, env: dict | None = None, extra: list[str] | None = None) -> None:
        cmd = self.command() + (extra or [])
        if env is None:
            # Every host finds host plugins (the power-on one) in the pool's plugin directory.
            env = dict(os.environ, XAPID_PLUGIN_DIR=os.path.join(os.path.dirname(self.dir), "plugins"))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"xapid on {self.address} exited: {self.tail()}")
            try:
                with socket.create_connection((self.address, 80), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"xapid on {self.address} did not listen: {self.tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 40) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def session(self) -> XenAPI.Session:
        """A password login as XenAPI.py users make it (fails with HOST_IS_SLAVE on a member)."""
        s = XenAPI.Session(self.url)
        s.login_with_password("root", PASSWORD, "1.0", "pool-test")
        return s

    def secret(self) -> str:
        with open(os.path.join(self.state, "pool-secret")) as f:
            return f.read().strip()

    def local_session(self) -> XenAPI.Session:
        s = XenAPI.Session(self.url)
        s.slave_local_login_with_password("root", PASSWORD)
        return s


def login_following_slave(url: str) -> XenAPI.Session:
    """What a XenAPI.py user does on HOST_IS_SLAVE: log in to the master it names."""
    s = XenAPI.Session(url)
    try:
        s.xenapi.login_with_password("root", PASSWORD, "1.0", "pool-test")
        return s
    except XenAPI.Failure as e:
        if e.details[0] != "HOST_IS_SLAVE":
            raise
        s = XenAPI.Session(f"http://{e.details[1]}")
        s.xenapi.login_with_password("root", PASSWORD, "1.0", "pool-test")
        return s


@contextlib.contextmanager
def started_hosts(count: int, prefix: str):
    """`count` standalone hosts (127.0.0.2, …) started in a new temporary directory named
    `prefix…`; stopped at the end, the directory removed (kept with XAPID_KEEP=1)."""
    assert shutil.which("etcd"), "the etcd program is missing (etcd-server)"
    base = tempfile.mkdtemp(prefix=prefix)
    hs = [Host(i, base) for i in range(count)]
    try:
        for h in hs:
            h.start()
        yield hs
    finally:
        for h in hs:
            h.stop()
        if os.environ.get("XAPID_KEEP") == "1":
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def hosts():
    with started_hosts(N, "xapid-pool-") as hs:
        yield hs


def failure(f, *args) -> list:
    with pytest.raises(XenAPI.Failure) as e:
        f(*args)
    return e.value.details


def vm_on(xapi, name: str) -> str:
    """A small VM without disks, made and started through this session's host."""
    t = xapi.VM.get_by_name_label("Debian Bookworm 12")[0]
    vm = xapi.VM.clone(t, name)
    xapi.VM.remove_from_other_config(vm, "disks")
    xapi.VM.set_is_a_template(vm, False)
    xapi.VM.set_memory_limits(vm, 128 << 20, 128 << 20, 128 << 20, 128 << 20)
    xapi.VM.start(vm, False, False)
    return vm


def test_refusals_before_any_join(hosts):
    master, joiner = hosts[0], hosts[1]
    s = joiner.session()
    x = s.xenapi
    assert failure(x.pool.join, master.address, "root", "wrong") == ["SESSION_AUTHENTICATION_FAILED"]
    assert failure(x.pool.join, "127.0.0.250", "root", PASSWORD) == ["JOINING_HOST_CONNECTION_FAILED"]
    assert failure(x.pool.join, joiner.address, "root", PASSWORD) == ["HOST_ITS_OWN_SLAVE"]
    vm = vm_on(x, "running-on-joiner")
    assert failure(x.pool.join, master.address, "root", PASSWORD) == ["JOINING_HOST_CANNOT_HAVE_RUNNING_VMS"]
    x.VM.hard_shutdown(vm)
    # Nothing of the master changed: it is still alone and on its own database.
    m = master.session().xenapi
    assert len(m.host.get_all()) == 1
    assert not os.path.exists(os.path.join(master.state, "pool-store.json"))


def test_a_joiner_without_etcd_is_told_the_package(hosts):
    base = os.path.dirname(hosts[0].dir)
    lone = Host(N, base)
    empty = os.path.join(base, "empty-path")
    os.makedirs(empty)
    lone.start(env={**os.environ, "PATH": empty})
    try:
        d = failure(lone.session().xenapi.pool.join, hosts[0].address, "root", PASSWORD)
        assert d[0] == "INTERNAL_ERROR" and "etcd-server" in d[1], d
    finally:
        lone.stop()
    m = hosts[0].session().xenapi
    assert len(m.host.get_all()) == 1


def test_join_every_host(hosts):
    master = hosts[0]
    m = master.session().xenapi
    master_vm = vm_on(m, "made-before-the-pool")
    t0 = time.time()
    for h in hosts[1:]:
        s = h.session()
        own = s.xenapi.host.get_all()
        assert len(own) == 1
        s.xenapi.pool.join(master.address, "root", PASSWORD)
        assert os.path.exists(os.path.join(h.state, "pool-store.json"))
    print(f"joined {N - 1} hosts in {time.time() - t0:.2f} s")
    assert os.path.exists(os.path.join(master.state, "pool-store.json"))
    # The master's database moved into etcd without losing anything.
    assert m.VM.get_power_state(master_vm) == "Running"


def test_master_sees_every_host(hosts):
    m = hosts[0].session().xenapi
    recs = m.host.get_all_records()
    assert sorted(r["address"] for r in recs.values()) == sorted(h.address for h in hosts)
    pool = m.pool.get_all()
    assert len(pool) == 1
    master = m.pool.get_master(pool[0])
    assert recs[master]["address"] == hosts[0].address
    for ref, r in recs.items():
        # Each host kept its own metrics, control domain and PIFs.
        assert m.host_metrics.get_live(r["metrics"]) is True
        dom0 = r["control_domain"]
        assert m.VM.get_is_control_domain(dom0) is True
        assert m.VM.get_resident_on(dom0) == ref
        assert r["PIFs"], f"host {r['address']} has no PIF"
    # The joiners' templates and VMs were dropped: one set of templates in the pool.
    names = [v["name_label"] for v in m.VM.get_all_records().values() if v["is_a_template"]]
    assert names.count("Debian Bookworm 12") == 1
    assert "running-on-joiner" not in [v["name_label"] for v in m.VM.get_all_records().values()]


def test_member_login_is_host_is_slave(hosts):
    for h in hosts[1:]:
        s = XenAPI.Session(h.url)
        d = failure(s.xenapi.login_with_password, "root", PASSWORD, "1.0", "pool-test")
        assert d == ["HOST_IS_SLAVE", hosts[0].address]
        followed = login_following_slave(h.url)
        assert len(followed.xenapi.host.get_all()) == N
        local = h.local_session().xenapi
        assert len(local.host.get_all()) == N


def test_vms_on_every_host_and_events_on_the_master(hosts):
    m = hosts[0].session().xenapi
    token = m.event_from(["VM"], "", 0.0)["token"]
    made = {}
    for i, h in enumerate(hosts):
        x = (h.session() if i == 0 else h.local_session()).xenapi
        made[vm_on(x, f"vm-on-host{i}")] = h.address
    seen = set()
    deadline = time.time() + 30
    while time.time() < deadline and not set(made) <= seen:
        ev = m.event_from(["VM"], token, 5.0)
        token = ev["token"]
        seen |= {e["ref"] for e in ev["events"]}
    assert set(made) <= seen, f"events from {len(seen & set(made))} of {len(made)} VMs"
    hosts_by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    for vm, addr in made.items():
        assert m.VM.get_power_state(vm) == "Running"
        assert m.VM.get_resident_on(vm) == hosts_by_addr[addr]
        resident = m.host.get_resident_VMs(hosts_by_addr[addr])
        assert vm in resident


def test_calls_about_another_host_run_there(hosts):
    """Forwarding and placement, seen from a client of the master."""
    m = hosts[0].session().xenapi
    by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    member = by_addr[hosts[1].address]
    vm = m.VM.get_by_name_label("vm-on-host1")[0]
    assert m.VM.get_resident_on(vm) == member
    # A lifecycle call about a VM on a member, made on the master, is carried out there.
    m.VM.hard_shutdown(vm)
    assert m.VM.get_power_state(vm) == "Halted"
    assert set(m.VM.get_possible_hosts(vm)) == set(by_addr.values())
    target = by_addr[hosts[-1].address]
    m.VM.start_on(vm, target, False, False)
    assert (m.VM.get_power_state(vm), m.VM.get_resident_on(vm)) == ("Running", target)
    m.VM.hard_shutdown(vm)
    # VM.start honours affinity: the VM lands on the host it names.
    m.VM.set_affinity(vm, member)
    m.VM.start(vm, False, False)
    assert (m.VM.get_power_state(vm), m.VM.get_resident_on(vm)) == ("Running", member)
    # A member's host call, made on the master, runs on the member.
    assert m.host.get_servertime(member)
    # The reference's refusals.
    big = m.VM.clone(m.VM.get_by_name_label("Debian Bookworm 12")[0], "too-big")
    m.VM.remove_from_other_config(big, "disks")
    m.VM.set_is_a_template(big, False)
    huge = str(1 << 42)  # XenAPI carries int64 as text; XML-RPC's <int> stops at 2^31
    m.VM.set_memory_limits(big, huge, huge, huge, huge)
    d = failure(m.VM.assert_can_boot_here, big, member)
    assert d[0] == "HOST_NOT_ENOUGH_FREE_MEMORY" and d[1] == huge, d
    assert m.VM.get_possible_hosts(big) == []
    m.VM.destroy(big)
    disk = m.VM.clone(m.VM.get_by_name_label("Debian Bookworm 12")[0], "disk-on-master")
    disks = m.VM.get_other_config(disk)["disks"]
    import re
    m.VM.remove_from_other_config(disk, "disks")
    m.VM.add_to_other_config(disk, "disks", re.sub(r'size="\d+"', 'size="16777216"', disks))
    m.VM.provision(disk)
    m.VM.set_is_a_template(disk, False)
    m.VM.set_memory_limits(disk, 128 << 20, 128 << 20, 128 << 20, 128 << 20)
    sr = m.VDI.get_SR(m.VBD.get_VDI([b for b in m.VM.get_VBDs(disk) if m.VBD.get_type(b) == "Disk"][0]))
    assert failure(m.VM.assert_can_boot_here, disk, member) == ["VM_REQUIRES_SR", disk, sr]
    assert m.VM.get_possible_hosts(disk) == [by_addr[hosts[0].address]]


def test_a_disabled_host_takes_no_new_vm(hosts):
    m = hosts[0].session().xenapi
    by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    member = by_addr[hosts[2].address]
    vm = m.VM.get_by_name_label("vm-on-host1")[0]
    m.VM.hard_shutdown(vm)
    m.VM.set_affinity(vm, member)
    m.host.disable(member)
    try:
        assert m.host.get_enabled(member) is False
        assert failure(m.VM.assert_can_boot_here, vm, member) == ["HOST_DISABLED", member]
        assert failure(m.VM.start_on, vm, member, False, False) == ["HOST_DISABLED", member]
        assert member not in m.VM.get_possible_hosts(vm)
        # VM.start passes over it, affinity or not.
        m.VM.start(vm, False, False)
        assert m.VM.get_resident_on(vm) not in ("OpaqueRef:NULL", member)
        m.VM.hard_shutdown(vm)
    finally:
        m.host.enable(member)
    assert m.host.get_enabled(member) is True
    m.VM.start(vm, False, False)
    assert m.VM.get_resident_on(vm) == member
    m.VM.hard_shutdown(vm)
    m.VM.set_affinity(vm, by_addr[hosts[1].address])
    m.VM.start(vm, False, False)
    assert m.VM.get_resident_on(vm) == by_addr[hosts[1].address]


def test_a_shared_sr_is_seen_by_every_host(hosts):
    m = hosts[0].session().xenapi
    by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    where = os.path.join(os.path.dirname(hosts[0].dir), "shared-sr")
    # Made through the master, named for a member: the member runs it.
    sr = m.SR.create(by_addr[hosts[1].address], {"location": where}, "0", "shared-sr", "", "file", "user",
                     True, {})
    assert m.SR.get_shared(sr) is True
    pbds = [m.PBD.get_record(p) for p in m.SR.get_PBDs(sr)]
    assert sorted(p["host"] for p in pbds) == sorted(by_addr.values())
    assert all(p["currently_attached"] and p["device_config"] == {"location": where} for p in pbds)
    # A VM whose disk is on it can start on any host.
    vdi = m.VDI.create({"name_label": "on-shared", "name_description": "", "SR": sr, "virtual_size": str(4 << 20),
                        "type": "user", "sharable": False, "read_only": False, "other_config": {}})
    t = m.VM.get_by_name_label("Debian Bookworm 12")[0]
    vm = m.VM.clone(t, "disk-on-shared")
    m.VM.remove_from_other_config(vm, "disks")
    m.VM.set_is_a_template(vm, False)
    m.VM.set_memory_limits(vm, 128 << 20, 128 << 20, 128 << 20, 128 << 20)
    m.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW", "type": "Disk",
                  "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    assert set(m.VM.get_possible_hosts(vm)) == set(by_addr.values())
    m.VM.start_on(vm, by_addr[hosts[2].address], False, False)
    assert m.VM.get_resident_on(vm) == by_addr[hosts[2].address]
    m.VM.hard_shutdown(vm)


def console_text(location: str, session_ref: str, until: str, timeout: float = 20.0) -> str:
    """What a console location gives over HTTP CONNECT (to the host's port 80) until `until`."""
    u = urllib.parse.urlsplit(location)
    sock = socket.create_connection((u.hostname, 80), timeout=timeout)
    try:
        sock.sendall(f"CONNECT {u.path}?{u.query}&session_id={session_ref} HTTP/1.0\r\n\r\n".encode())
        seen = b""
        deadline = time.time() + timeout
        while until.encode() not in seen and time.time() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            seen += chunk
        return seen.decode("utf-8", "replace")
    finally:
        sock.close()


def vm_rrd_rows(address: str, uuid: str, session_ref: str) -> dict | None:
    """The VM's 5-second averages as the host at `address` serves them (`GET /vm_rrd`, read by
    Python's XML parser): row time -> values, rows holding a value only; None when the host has
    no database of the VM (404)."""
    url = f"http://{address}/vm_rrd?uuid={uuid}&session_id={session_ref}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            root = ET.fromstring(r.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
    step = int(root.findtext("step"))
    last = int(root.findtext("lastupdate")) // step * step
    for rra in root.findall("rra"):
        if rra.findtext("cf") == "AVERAGE" and rra.findtext("pdp_per_row") == "1":
            rows = rra.find("database").findall("row")
            return {
                last - (len(rows) - 1 - i) * step: [v.text for v in row.findall("v")]
                for i, row in enumerate(rows)
                if any(v.text.lower() != "nan" for v in row.findall("v"))
            }
    raise AssertionError("no 5-second AVERAGE archive")


def wait_rrd_rows(address: str, uuid: str, session_ref: str, n: int, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while True:
        rows = vm_rrd_rows(address, uuid, session_ref) or {}
        if len(rows) >= n:
            return rows
        assert time.time() < deadline, f"fewer than {n} rows in the VM's RRD after {timeout} s: {rows}"
        time.sleep(1)


def test_pool_migrate_moves_a_running_vm(hosts):
    """VM.pool_migrate: the VM's domain is saved on its host, its image goes to the destination
    over HTTPS with the pool secret, and it runs there with its console history."""
    s = hosts[0].session()
    m = s.xenapi
    by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    src, dst = by_addr[hosts[2].address], by_addr[hosts[3].address]
    vm = m.VM.get_by_name_label("vm-on-host2")[0]
    assert (m.VM.get_power_state(vm), m.VM.get_resident_on(vm)) == ("Running", src)
    assert "pool_migrate" in m.VM.get_allowed_operations(vm)
    console = m.VM.get_consoles(vm)[0]
    before = console_text(m.console.get_location(console), s._session, "booting domain")
    assert "booting domain" in before, before
    domid = m.VM.get_domid(vm)
    uuid = m.VM.get_uuid(vm)
    history = wait_rrd_rows(hosts[2].address, uuid, s._session, 2)
    token = m.event_from(["VM"], "", 0.0)["token"]
    t0 = time.time()
    m.VM.pool_migrate(vm, dst, {"live": "true"})
    took = time.time() - t0
    rec = m.VM.get_record(vm)
    assert (rec["power_state"], rec["resident_on"]) == ("Running", dst), rec
    assert rec["current_operations"] == {}, rec["current_operations"]
    assert vm in m.host.get_resident_VMs(dst) and vm not in m.host.get_resident_VMs(src)
    # An event announces the VM on its new host (event.from gives each object's latest state,
    # so the mark in between may not show).
    seen = []
    deadline = time.time() + 10
    while time.time() < deadline and not any(e["snapshot"]["resident_on"] == dst for e in seen):
        ev = m.event_from(["VM"], token, 2.0)
        token = ev["token"]
        seen += [e for e in ev["events"] if e["ref"] == vm and e["operation"] == "mod"]
    assert any(e["snapshot"]["resident_on"] == dst for e in seen), seen
    # The console is on the destination now, with what the guest printed before the move.
    location = m.console.get_location(console)
    assert location.startswith(f"https://{hosts[3].address}/"), location
    after = console_text(location, s._session, "restored by the xapid simulator")
    assert "booting domain" in after and "restored by the xapid simulator" in after, after
    print(f"pool_migrate of a 128 MiB simulated VM: {took * 1000:.0f} ms (domid {domid} -> {rec['domid']})")
    # Its statistics went with it: the destination serves the rows the source had (same
    # times, same values), and the source has no database of it left.
    moved = vm_rrd_rows(hosts[3].address, uuid, s._session) or {}
    assert all(moved.get(t) == v for t, v in history.items()), (history, moved)
    assert vm_rrd_rows(hosts[2].address, uuid, s._session) is None
    # The reference's refusals; the VM stays where it is.
    m.host.disable(src)
    try:
        assert failure(m.VM.pool_migrate, vm, src, {}) == ["HOST_DISABLED", src]
    finally:
        m.host.enable(src)
    assert m.VM.get_resident_on(vm) == dst
    halted = m.VM.get_by_name_label("disk-on-shared")[0]
    assert m.VM.get_power_state(halted) == "Halted"
    assert failure(m.VM.pool_migrate, halted, dst, {}) == ["VM_BAD_POWER_STATE", halted, "running", "halted"]
    # And back, called on a member this time (forwarded to the host the VM is on).
    x = hosts[1].local_session().xenapi
    x.VM.pool_migrate(vm, src, {})
    assert (m.VM.get_power_state(vm), m.VM.get_resident_on(vm)) == ("Running", src)


def last_live_move(h: Host) -> dict:
    """The figures of the last live move the host logged (lifecycle/migrate.rs)."""
    with open(h.log, errors="replace") as f:
        lines = [line for line in f if "pool_migrate: done (live)" in line]
    assert lines, f"no live move logged: {h.tail()}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


def test_pool_migrate_is_live_on_the_simulator(hosts):
    """A 512 MiB simulated guest moves live: its memory crosses in pre-copy rounds while it
    runs (each round checked page by page by the destination), then a short stop. An idle
    guest needs one round; a busy one more; the downtime is a fraction of the move. A round
    that is not whole, or comes without the pool secret, is refused."""
    m = hosts[0].session().xenapi
    by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    src, dst = hosts[1], hosts[2]
    t = m.VM.get_by_name_label("Debian Bookworm 12")[0]
    vm = m.VM.clone(t, "live-mover")
    m.VM.remove_from_other_config(vm, "disks")
    m.VM.set_is_a_template(vm, False)
    m.VM.set_memory_limits(vm, 512 << 20, 512 << 20, 512 << 20, 512 << 20)
    m.VM.start_on(vm, by_addr[src.address], False, False)
    try:
        m.VM.add_to_other_config(vm, "simulator-dirty-rate", "0")
        m.VM.pool_migrate(vm, by_addr[dst.address], {"live": "true"})
        idle = last_live_move(src)
        assert (idle["rounds"], idle["live_mib"], idle["final_kib"]) == (1, 512, 0), idle
        m.VM.remove_from_other_config(vm, "simulator-dirty-rate")
        m.VM.add_to_other_config(vm, "simulator-dirty-rate", "256")
        t0 = time.time()
        m.VM.pool_migrate(vm, by_addr[src.address], {"live": "true"})
        took = (time.time() - t0) * 1000
        busy = last_live_move(dst)
        assert busy["rounds"] >= 2 and busy["live_mib"] > 512, busy
        assert busy["downtime_ms"] < took, (busy, took)
        assert (m.VM.get_power_state(vm), m.VM.get_resident_on(vm)) == ("Running", by_addr[src.address])
        print(f"live pool_migrate of a 512 MiB guest: idle {idle['live_ms']} ms + {idle['downtime_ms']} ms down; "
              f"dirtying 256 MiB/s {busy['rounds']} rounds, {busy['live_mib']} MiB, {took:.0f} ms, "
              f"{busy['downtime_ms']} ms down")
    finally:
        m.VM.hard_shutdown(vm)
    # The destination's end of a round refuses what is not a whole round, and strangers.
    url = f"https://{dst.address}/xapid/pool_migrate_memory?vm={vm}&round=0&pages=2&total=4"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    page = (0).to_bytes(8, "little") + (0).to_bytes(8, "little") + bytes(4096 - 16)
    req = urllib.request.Request(url, data=page, method="PUT", headers={"x-xapid-pool-secret": src.secret()})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, context=ctx)
    assert e.value.code == 400 and "2 pages announced, 1 received" in e.value.read().decode()
    req = urllib.request.Request(url, data=page * 2, method="PUT")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, context=ctx)
    assert e.value.code == 403


def test_evacuate_a_host(hosts):
    """host.evacuate moves every VM off a host (placed by memory on the other enabled hosts);
    its assertions say why it cannot when it cannot."""
    m = hosts[0].session().xenapi
    by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    src = by_addr[hosts[2].address]
    others = [by_addr[h.address] for h in hosts if h is not hosts[2]]
    t = m.VM.get_by_name_label("Debian Bookworm 12")[0]
    extra = []
    # With the member's own VM, 20 to move.
    for i in range(19):
        vm = m.VM.clone(t, f"to-evacuate-{i}")
        m.VM.remove_from_other_config(vm, "disks")
        m.VM.set_is_a_template(vm, False)
        m.VM.set_memory_limits(vm, 128 << 20, 128 << 20, 128 << 20, 128 << 20)
        m.VM.start_on(vm, src, False, False)
        extra.append(vm)
    moving = extra + [m.VM.get_by_name_label("vm-on-host2")[0]]
    assert all(m.VM.get_resident_on(vm) == src for vm in moving)
    # With every other host disabled nothing can go.
    for h in others:
        m.host.disable(h)
    try:
        prevent = m.host.get_vms_which_prevent_evacuation(src)
        assert prevent == {vm: ["NO_HOSTS_AVAILABLE", vm] for vm in moving}, prevent
        d = failure(m.host.assert_can_evacuate, src)
        assert d[0] == "CANNOT_EVACUATE_HOST" and len(d) == 2, d
        assert sorted(d[1].split("|")) == sorted(f"NO_HOSTS_AVAILABLE,{vm}" for vm in moving), d
        assert failure(m.host.evacuate, src, "OpaqueRef:NULL", "0") == ["NO_HOSTS_AVAILABLE"]
    finally:
        for h in others:
            m.host.enable(h)
    assert m.host.get_vms_which_prevent_evacuation(src) == {}
    m.host.assert_can_evacuate(src)
    m.host.disable(src)
    try:
        t0 = time.time()
        m.host.evacuate(src, "OpaqueRef:NULL", "2")
        took = time.time() - t0
        for vm in moving:
            assert m.VM.get_power_state(vm) == "Running"
            assert m.VM.get_resident_on(vm) in others
        assert [vm for vm in m.host.get_resident_VMs(src) if not m.VM.get_is_control_domain(vm)] == []
        print(f"host.evacuate of {len(moving)} VMs, 2 at a time: {took * 1000:.0f} ms")
    finally:
        m.host.enable(src)
    for vm in extra:
        m.VM.hard_shutdown(vm)
        m.VM.destroy(vm)
    back = m.VM.get_by_name_label("vm-on-host2")[0]
    m.VM.pool_migrate(back, src, {})
    assert m.VM.get_resident_on(back) == src


def test_xen_orchestra_client_follows_host_is_slave_and_sees_the_pool(hosts):
    """Xen Orchestra's xen-api client, pointed at a member: it must end up on the master, see
    every host and VM, and get the event of a write made through another member."""
    prefix = os.environ.get("XAPID_NODE_PREFIX")
    assert prefix, "XAPID_NODE_PREFIX is not set (tests/pool/run.sh sets it)"
    writer = hosts[-1].local_session().xenapi
    vm = writer.VM.get_by_name_label(f"vm-on-host{N - 1}")[0]
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.Popen(["node", os.path.join(here, "xo_pool.mjs"), hosts[1].address, hosts[0].address,
                          str(N), PASSWORD, vm], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().strip()
        assert line == "ready", (line, p.stderr.read() if p.poll() is not None else "")
        writer.VM.set_name_label(vm, "renamed-through-a-member")
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and out.strip() == "seen", (p.returncode, out, err)
    finally:
        if p.poll() is None:
            p.kill()
        writer.VM.set_name_label(vm, f"vm-on-host{N - 1}")


def test_event_latency_member_write_to_master_listener(hosts):
    """A write through a member, an event.from listener on the master: how long between."""
    m = hosts[0].session().xenapi
    member = hosts[-1].local_session().xenapi
    vm = member.VM.get_by_name_label(f"vm-on-host{N - 1}")[0]
    lat = []
    for i in range(20):
        token = m.event_from(["VM"], "", 0.0)["token"]
        got = {}

        def listen():
            tok, refs = token, []
            deadline = time.time() + 10
            while vm not in refs and time.time() < deadline:
                ev = m.event_from(["VM"], tok, 10.0)
                tok = ev["token"]
                refs = [e["ref"] for e in ev["events"]]
            got["t"] = time.time()
            got["refs"] = refs

        t = threading.Thread(target=listen)
        t.start()
        time.sleep(0.05)
        t0 = time.time()
        member.VM.set_name_description(vm, f"write {i}")
        t.join()
        assert vm in got["refs"]
        lat.append(got["t"] - t0)
    lat.sort()
    print(f"event latency member write -> master listener: p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
          f"max {lat[-1] * 1000:.1f} ms")


def test_designate_new_master(hosts):
    old, new = hosts[0], hosts[1]
    m = old.session().xenapi
    by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    pool = m.pool.get_all()[0]
    m.pool.designate_new_master(by_addr[new.address])
    # Clients following HOST_IS_SLAVE reach the new master, from the old one too.
    d = failure(XenAPI.Session(old.url).xenapi.login_with_password, "root", PASSWORD, "1.0", "t")
    assert d == ["HOST_IS_SLAVE", new.address]
    n = login_following_slave(old.url).xenapi
    assert n.pool.get_master(pool) == by_addr[new.address]
    assert len(n.host.get_all()) == N
    assert failure(m.pool.designate_new_master, by_addr[old.address])[0] == "HOST_IS_SLAVE"
    # And back, through the new master.
    n.pool.designate_new_master(by_addr[old.address])
    assert len(old.session().xenapi.host.get_all()) == N


def test_eject_and_rejoin(hosts):
    master, last = hosts[0], hosts[-1]
    m = master.session().xenapi
    ref = [r for r, v in m.host.get_all_records().items() if v["address"] == last.address][0]
    assert failure(m.pool.eject, m.pool.get_master(m.pool.get_all()[0]))[0] == "INTERNAL_ERROR"
    assert failure(m.pool.eject, ref) == ["OPERATION_NOT_ALLOWED", "VM resident on host"]
    local = last.local_session().xenapi
    vm = local.VM.get_by_name_label(f"vm-on-host{N - 1}")[0]
    local.VM.hard_shutdown(vm)
    m.pool.eject(ref)
    assert len(m.host.get_all()) == N - 1
    # The ejected host is alone again: a password login works, it sees only itself.
    deadline = time.time() + 30
    while True:
        try:
            alone = last.session().xenapi
            if len(alone.host.get_all()) == 1:
                break
        except (XenAPI.Failure, OSError):
            pass
        assert time.time() < deadline, last.tail()
        time.sleep(0.2)
    assert alone.host.get_address(alone.host.get_all()[0]) == last.address
    assert not os.path.exists(os.path.join(last.state, "pool-store.json"))
    sr = m.SR.get_by_name_label("shared-sr")[0]
    assert len(m.SR.get_PBDs(sr)) == N - 1, "the ejected host's PBD of the shared SR went with it"
    # And it joins again, and sees the pool's shared SR.
    alone.pool.join(master.address, "root", PASSWORD)
    assert len(m.host.get_all()) == N
    rejoined = [r for r, v in m.host.get_all_records().items() if v["address"] == last.address][0]
    pbds = [m.PBD.get_record(p) for p in m.SR.get_PBDs(sr)]
    assert sorted(p["host"] for p in pbds) == sorted(m.host.get_all())
    assert [p["currently_attached"] for p in pbds if p["host"] == rejoined] == [True]
    d = failure(XenAPI.Session(last.url).xenapi.login_with_password, "root", PASSWORD, "1.0", "t")
    assert d == ["HOST_IS_SLAVE", master.address]


def test_a_member_restarted_is_still_in_the_pool(hosts):
    h = hosts[1]
    m = hosts[0].session().xenapi
    on_master = m.VM.get_by_name_label("vm-on-host0")[0]
    assert m.VM.get_power_state(on_master) == "Running"
    h.stop()
    h.start()
    d = failure(XenAPI.Session(h.url).xenapi.login_with_password, "root", PASSWORD, "1.0", "t")
    assert d == ["HOST_IS_SLAVE", hosts[0].address]
    local = h.local_session().xenapi
    assert len(local.host.get_all()) == N
    # The simulator's domains end with its process: the restarted host marks its own VM
    # Halted, and leaves the master's alone.
    mine = m.VM.get_by_name_label("vm-on-host1")[0]
    assert m.VM.get_power_state(mine) == "Halted"
    assert m.VM.get_power_state(on_master) == "Running"
    assert m.VM.get_resident_on(on_master) == m.pool.get_master(m.pool.get_all()[0])


def etcd_members_of(h: Host) -> list[int]:
    """The pids of etcd processes whose data dir is under this host's state dir."""
    return etcd_pids(h.state)


def test_restart_agent_of_a_member(hosts):
    """host.restart_agent through the master: the member's xapid runs itself again (same
    process), with one etcd member, still in the pool and answering forwarded calls."""
    h = hosts[1]
    m = hosts[0].session().xenapi
    member = {r["address"]: ref for ref, r in m.host.get_all_records().items()}[h.address]
    pid = h.proc.pid
    assert len(etcd_members_of(h)) == 1
    t0 = time.time()
    m.host.restart_agent(member)
    # It stops answering a second later, then answers again.
    wait_down(h, "host.restart_agent", timeout=10)
    wait_up(h, "host.restart_agent")
    back = time.time() - t0
    assert h.proc.poll() is None and h.proc.pid == pid
    deadline = time.time() + 20
    while len(etcd_members_of(h)) != 1 and time.time() < deadline:
        time.sleep(0.2)
    assert len(etcd_members_of(h)) == 1, etcd_members_of(h)
    assert m.host.get_servertime(member)
    assert len(h.local_session().xenapi.host.get_all()) == N
    print(f"host.restart_agent of a member: answering again {back:.2f} s after the call")


class Adopted:
    """A host's xapid started by another program (the power-on plugin below): what the
    fixture's teardown and the tests ask of a Popen, by pid."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return 0
        return 0 if state in ("Z", "X") else None

    def send_signal(self, sig) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.time() + (timeout if timeout is not None else 3600)
        while self.poll() is None:
            if time.time() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.1)
        return 0


XMLRPC_TRUE = ("<?xml version='1.0'?><methodResponse><params><param><value><struct>"
               "<member><name>Status</name><value>Success</value></member>"
               "<member><name>Value</name><value>True</value></member>"
               "</struct></value></param></params></methodResponse>")


def install_power_on_plugin(hosts, h: Host) -> str:
    """The pool's `power-on-host` plugin: a stand-in for a machine's management controller
    that starts `h`'s xapid (the simulated machine) again, waits for it to listen, and answers
    True as the reference's plugin does once the host is up. Returns the file its pid goes to."""
    plugins = os.path.join(os.path.dirname(h.dir), "plugins")
    os.makedirs(plugins, exist_ok=True)
    pidfile = os.path.join(h.dir, "powered-on.pid")
    cmd = " ".join(f"'{a}'" for a in h.command())
    script = f"""#!/bin/bash
# Called as: power-on-host <methodCall main(session, {{remote_host_uuid}})>
case "$1" in *{h.uuid}*) ;; *) echo "not the host this stand-in wakes" >&2; exit 1 ;; esac
setsid {cmd} >>'{h.log}' 2>&1 </dev/null &
echo $! > '{pidfile}'
for i in $(seq 600); do
  if (exec 3<>/dev/tcp/{h.address}/80) 2>/dev/null; then
    printf '%s' "{XMLRPC_TRUE}"
    exit 0
  fi
  sleep 0.1
done
echo "the host did not come up" >&2
exit 1
"""
    path = os.path.join(plugins, "power-on-host")
    with open(path, "w") as f:
        f.write(script)
    os.chmod(path, 0o755)
    return pidfile


def wait_down(h: Host, what: str, timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((h.address, 80), timeout=0.2):
                pass
            time.sleep(0.05)
        except OSError:
            return
    pytest.fail(f"the member never stopped after {what}")


def wait_up(h: Host, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            h.local_session()
            return
        except (OSError, XenAPI.Failure, xmlrpc.client.ProtocolError):
            assert time.time() < deadline, f"the member did not come back after {what}: {h.tail()}"
            time.sleep(0.1)


def wait_live(x, host: str, live: bool, timeout: float = 30) -> float:
    metrics = x.host.get_metrics(host)
    t0 = time.time()
    while x.host_metrics.get_live(metrics) != live:
        assert time.time() - t0 < timeout, f"host_metrics.live is not {live} after {timeout} s"
        time.sleep(0.2)
    return time.time() - t0


def test_reboot_shutdown_and_power_on_a_member(hosts):
    """host.reboot and host.shutdown with the reference's preconditions (disabled first, no
    guest running), then host.power_on through the power-on plugin: the simulated machine is
    the member's xapid process."""
    h = hosts[2]
    m = hosts[0].session().xenapi
    member = {r["address"]: ref for ref, r in m.host.get_all_records().items()}[h.address]
    h.uuid = m.host.get_uuid(member)
    assert failure(m.host.reboot, member) == ["HOST_NOT_DISABLED"]
    assert failure(m.host.shutdown, member) == ["HOST_NOT_DISABLED"]
    vm = m.VM.get_by_name_label("vm-on-host2")[0]
    if m.VM.get_power_state(vm) == "Halted":
        m.VM.start_on(vm, member, False, False)
    elif m.VM.get_resident_on(vm) != member:
        m.VM.pool_migrate(vm, member, {})
    running = [v for v in m.host.get_resident_VMs(member)
               if not m.VM.get_is_control_domain(v) and m.VM.get_power_state(v) == "Running"]
    assert running
    m.host.disable(member)
    d = failure(m.host.reboot, member)
    assert d[:3] == ["HOST_IN_USE", member, "vm"] and d[3] in running, d
    for v in running:
        m.VM.hard_shutdown(v)
    # reboot: the same process runs itself again and the host comes back enabled.
    pid = h.proc.pid
    t0 = time.time()
    m.host.reboot(member)
    wait_down(h, "host.reboot")
    wait_up(h, "host.reboot")
    print(f"host.reboot of a member: answering again {time.time() - t0:.2f} s after the call")
    assert h.proc.poll() is None and h.proc.pid == pid
    deadline = time.time() + 20
    while not m.host.get_enabled(member):
        assert time.time() < deadline, "the rebooted host was not enabled again"
        time.sleep(0.2)
    # shutdown: the process exits with status 0; the master sees the host go.
    m.host.disable(member)
    m.host.shutdown(member)
    assert h.proc.wait(30) == 0
    gone = wait_live(m, member, False)
    print(f"host.shutdown of a member: not live {gone:.1f} s after its process exited")
    assert m.host.get_enabled(member) is False
    # power_on: refused without a power-on mode, then carried out by the plugin.
    assert failure(m.host.power_on, member) == ["HOST_POWER_ON_MODE_DISABLED"]
    m.host.set_power_on_mode(member, "custom-bmc", {"power_on_ip": h.address})
    assert m.host.get_power_on_mode(member) == "custom-bmc"
    assert m.host.get_power_on_config(member) == {"power_on_ip": h.address}
    assert failure(m.host.power_on, member) == ["XENAPI_MISSING_PLUGIN", "power-on-host"]
    pidfile = install_power_on_plugin(hosts, h)
    t0 = time.time()
    m.host.power_on(member)
    with open(pidfile) as f:
        h.proc = Adopted(int(f.read().strip()))
    up = wait_live(m, member, True)
    print(f"host.power_on of a member: live {time.time() - t0:.1f} s after the call")
    assert up < 30
    assert failure(m.host.power_on, member) == ["HOST_IS_LIVE", member]
    deadline = time.time() + 20
    while not m.host.get_enabled(member):
        assert time.time() < deadline, "the powered-on host was not enabled"
        time.sleep(0.2)
    assert m.host.get_servertime(member)
    m.VM.start_on(vm, member, False, False)
    assert m.VM.get_resident_on(vm) == member


def call_with_secret(h: Host, secret: str, method: str, *params):
    """A call as another host of the pool forwards it: the pool secret in its header."""
    body = xmlrpc.client.dumps(params, method).encode()
    req = urllib.request.Request(h.url + "/", data=body, method="POST",
                                 headers={"content-type": "text/xml", "x-xapid-pool-secret": secret})
    with urllib.request.urlopen(req, timeout=30) as r:
        return xmlrpc.client.loads(r.read())[0][0]


def served_fingerprint(address: str, server_name: str | None = None) -> str:
    """The SHA-256 fingerprint (the reference's spelling) of the certificate a host serves on
    port 443 to a client asking for `server_name` (SNI; none when None)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, 443), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as t:
            der = t.getpeercert(binary_form=True)
    fp = hashlib.sha256(der).hexdigest().upper()
    return ":".join(fp[i:i + 2] for i in range(0, len(fp), 2))


def host_certificates(m, host: str) -> dict[str, dict]:
    """The host's Certificate records by type."""
    return {c["type"]: dict(c, ref=r) for r, c in m.Certificate.get_all_records().items() if c["host"] == host}


def test_hosts_call_each_other_over_pinned_https(hosts):
    """Each host's certificates are in the pool database: the one it serves clients (type
    `host`) and its pool-internal one (type `host_internal`, served to a client asking for the
    server name `pool`); hosts call each other over HTTPS trusting exactly the internal one,
    and prove themselves with the pool secret."""
    m = hosts[0].session().xenapi
    by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    for h in hosts:
        mine = host_certificates(m, by_addr[h.address])
        assert set(mine) == {"host", "host_internal"}, (h.address, mine)
        assert mine["host"]["fingerprint"] == served_fingerprint(h.address), (h.address, mine)
        assert mine["host_internal"]["fingerprint"] == served_fingerprint(h.address, "pool"), (h.address, mine)
        assert mine["host"]["fingerprint"] != mine["host_internal"]["fingerprint"]
        assert sorted(m.host.get_certificates(by_addr[h.address])) == sorted(c["ref"] for c in mine.values())
    secrets = {h.secret() for h in hosts}
    assert len(secrets) == 1 and len(secrets.pop()) == 64
    for h in hosts:
        assert os.stat(os.path.join(h.state, "pool-secret")).st_mode & 0o777 == 0o600
    # The calls forwarded so far went over HTTPS: the master logged its first contact with each.
    with open(hosts[0].log, errors="replace") as f:
        log = f.read()
    assert "go over HTTPS, its certificate pinned" in log
    # A call claiming to come from a host of the pool with a wrong secret is refused; the right
    # secret is accepted.
    s = hosts[0].session()
    r = call_with_secret(hosts[1], "0" * 64, "host.get_servertime", s._session, by_addr[hosts[1].address])
    assert r["Status"] == "Failure" and r["ErrorDescription"] == ["SESSION_AUTHENTICATION_FAILED"], r
    r = call_with_secret(hosts[1], hosts[1].secret(), "host.get_servertime", s._session, by_addr[hosts[1].address])
    assert r["Status"] == "Success", r


def test_refresh_server_certificate_renews_the_internal_one(hosts):
    """host.refresh_server_certificate: the host named gets a new pool-internal certificate,
    served from the next handshake asking for it and recorded in place of the old one; the
    certificate clients see stays; the other hosts go on calling it (pinning the new one)."""
    m = hosts[0].session().xenapi
    by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    for h in (hosts[1], hosts[0]):
        ref = by_addr[h.address]
        before = host_certificates(m, ref)
        m.host.refresh_server_certificate(ref)
        after = host_certificates(m, ref)
        assert after["host"] == before["host"], "the certificate clients see is not touched"
        assert after["host_internal"]["ref"] != before["host_internal"]["ref"]
        assert after["host_internal"]["fingerprint"] != before["host_internal"]["fingerprint"]
        assert served_fingerprint(h.address, "pool") == after["host_internal"]["fingerprint"]
        assert served_fingerprint(h.address) == after["host"]["fingerprint"]
        assert failure(m.Certificate.get_record, before["host_internal"]["ref"])[0] == "HANDLE_INVALID"
    # Calls the master forwards to the member reach it over the renewed certificate.
    member = by_addr[hosts[1].address]
    assert m.host.get_servertime(member)
    assert m.host.get_server_localtime(member)


def test_rotate_secret(hosts):
    m = hosts[0].session()
    x = m.xenapi
    pool = x.pool.get_all()[0]
    old = hosts[0].secret()
    x.pool.rotate_secret()
    new = {h.secret() for h in hosts}
    assert len(new) == 1 and old not in new, "every host has the one new secret"
    new = new.pop()
    for h in hosts:
        assert not os.path.exists(os.path.join(h.state, "pool-secret.also-accepted"))
    assert x.pool.get_is_psr_pending(pool) is False
    by_addr = {r["address"]: ref for ref, r in x.host.get_all_records().items()}
    member = by_addr[hosts[1].address]
    r = call_with_secret(hosts[1], old, "host.get_servertime", m._session, member)
    assert r["ErrorDescription"] == ["SESSION_AUTHENTICATION_FAILED"], r
    r = call_with_secret(hosts[1], new, "host.get_servertime", m._session, member)
    assert r["Status"] == "Success", r
    # Forwarding works with the new secret.
    vm = x.VM.get_by_name_label("vm-on-host2")[0]
    assert x.VM.get_resident_on(vm) == by_addr[hosts[2].address]
    x.VM.hard_shutdown(vm)
    x.VM.start_on(vm, by_addr[hosts[2].address], False, False)
    assert x.VM.get_power_state(vm) == "Running"


def test_a_rotation_cut_short_is_finished_by_the_next(hosts):
    last = hosts[-1]
    x = hosts[0].session().xenapi
    pool = x.pool.get_all()[0]
    ref = [r for r, v in x.host.get_all_records().items() if v["address"] == last.address][0]
    before = hosts[0].secret()
    last.stop()
    try:
        assert failure(x.pool.rotate_secret) == ["CANNOT_CONTACT_HOST", ref]
        assert x.pool.get_is_psr_pending(pool) is True
        assert failure(x.pool.eject, ref) == ["POOL_SECRET_ROTATION_PENDING"]
    finally:
        last.start()
    x.pool.rotate_secret()
    assert x.pool.get_is_psr_pending(pool) is False
    secrets = {h.secret() for h in hosts}
    assert len(secrets) == 1 and before not in secrets


def test_a_failed_migration_leaves_the_vm_running_on_its_source(hosts):
    """VM.pool_migrate to a host that fails to restore the guest (its simulator started with
    `--sim-fault resume_from:EIO:1`): VM_MIGRATE_FAILED [vm, source, destination, msg], the VM
    running on its source again with no mark left; the next try moves it."""
    src, dst = hosts[1], hosts[-1]
    m = hosts[0].session().xenapi
    by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
    s_ref, d_ref = by_addr[src.address], by_addr[dst.address]
    dst.stop()
    dst.start(extra=["--sim-fault", "resume_from:EIO:1"])
    wait_live(m, d_ref, True)
    vm = m.VM.get_by_name_label("vm-on-host1")[0]
    if m.VM.get_power_state(vm) == "Halted":
        m.VM.start_on(vm, s_ref, False, False)
    elif m.VM.get_resident_on(vm) != s_ref:
        m.VM.pool_migrate(vm, s_ref, {})
    d = failure(m.VM.pool_migrate, vm, d_ref, {})
    assert d[:4] == ["VM_MIGRATE_FAILED", vm, s_ref, d_ref] and len(d) == 5, d
    print(f"a migration whose destination failed: {d[4]!r}")
    assert m.VM.get_power_state(vm) == "Running"
    assert m.VM.get_resident_on(vm) == s_ref
    assert m.VM.get_current_operations(vm) == {}
    assert "pool_migrate" in m.VM.get_allowed_operations(vm)
    m.VM.pool_migrate(vm, d_ref, {})
    assert m.VM.get_resident_on(vm) == d_ref and m.VM.get_power_state(vm) == "Running"


def test_destroy_a_dead_member(hosts):
    master, last = hosts[0], hosts[-1]
    x = master.session().xenapi
    by_addr = {r["address"]: ref for ref, r in x.host.get_all_records().items()}
    dead = by_addr[last.address]
    assert failure(x.host.destroy, by_addr[master.address]) == ["HOST_IS_LIVE", by_addr[master.address]]
    assert failure(x.host.destroy, dead) == ["HOST_IS_LIVE", dead]
    vm = x.VM.get_by_name_label(f"vm-on-host{N - 1}")[0]
    if x.VM.get_power_state(vm) != "Running":
        x.VM.start_on(vm, dead, False, False)
    assert x.VM.get_resident_on(vm) == dead
    pifs = x.host.get_PIFs(dead)
    last.proc.kill()
    last.proc.wait()
    # Its etcd lease lapses: the master marks it not live, and placement refuses it.
    metrics = x.host.get_metrics(dead)
    t0 = time.time()
    while x.host_metrics.get_live(metrics):
        assert time.time() - t0 < 30, "the killed host is still marked live after 30 s"
        time.sleep(0.5)
    print(f"a killed host was marked not live {time.time() - t0:.1f} s after SIGKILL")
    other = x.VM.get_by_name_label("vm-on-host0")[0]
    assert failure(x.VM.assert_can_boot_here, other, dead) == ["HOST_OFFLINE", dead]
    assert dead not in x.VM.get_possible_hosts(other)
    assert failure(x.host.destroy, dead) == ["HOST_HAS_RESIDENT_VMS", dead]
    # host.declare_dead: its VMs Halted in the database (their domains died with it), resident
    # nowhere, startable elsewhere; the host disabled.
    assert failure(x.host.declare_dead, by_addr[master.address]) == ["HOST_IS_LIVE", by_addr[master.address]]
    x.host.declare_dead(dead)
    assert x.VM.get_power_state(vm) == "Halted"
    assert x.VM.get_resident_on(vm) == "OpaqueRef:NULL"
    assert x.VM.get_current_operations(vm) == {}
    assert x.host.get_enabled(dead) is False
    x.VM.start(vm, False, False)
    assert x.VM.get_resident_on(vm) not in (dead, "OpaqueRef:NULL")
    x.VM.hard_shutdown(vm)
    x.host.destroy(dead)
    assert dead not in x.host.get_all() and len(x.host.get_all()) == N - 1
    assert not set(pifs) & set(x.PIF.get_all())
    assert failure(x.host.get_address, dead)[0] == "HANDLE_INVALID"
