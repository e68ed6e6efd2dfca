"""High availability on a pool of xapid hosts (issue 20), driven by XenAPI.py as an admin would:
a fresh pool of N simulator hosts (127.0.0.2…), a shared SR for the heartbeat and the disks,
then `pool.enable_ha` and the planning messages with their refusals, a member killed with
SIGKILL (its protected VMs run again on the survivors), a member frozen with SIGSTOP past its
lease (it fences itself when it wakes: no writes, its domains gone, its daemon restarted), and
the master killed (a member wins etcd's election, clients following HOST_IS_SLAVE reach it, no
acknowledged write is lost). The times printed are the figures docs/pool.md quotes.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import XenAPI

from test_pool import Host, PASSWORD, failure, login_following_slave, wait_live, wait_up

N = int(os.environ.get("XAPID_POOL_HOSTS", "4"))
# The HA timeout the tests enable HA with (the reference's smallest; its default is 60 s):
# while HA is on, each host's lease lives this long.
HA_TIMEOUT = 10
# A host killed is counted dead 2 timeouts and a beat (2 s) after its last renewal at most;
# its VMs are then started in well under a second each.
RESTART_BOUND = 2 * HA_TIMEOUT + 2 + 20.0


@pytest.fixture(scope="module")
def pool():
    assert shutil.which("etcd"), "the etcd program is missing (etcd-server)"
    if N < 3:
        pytest.skip("HA needs a pool of 3 or more hosts (XAPID_POOL_HOSTS)")
    base = tempfile.mkdtemp(prefix="xapid-ha-")
    hs = [Host(i, base) for i in range(N)]
    try:
        for h in hs:
            h.start()
        for h in hs[1:]:
            h.session().xenapi.pool.join(hs[0].address, "root", PASSWORD)
        m = hs[0].session().xenapi
        by_addr = {r["address"]: ref for ref, r in m.host.get_all_records().items()}
        for h in hs:
            h.ref = by_addr[h.address]
            wait_live(m, h.ref, True)
        where = os.path.join(base, "shared-sr")
        shared = m.SR.create(hs[0].ref, {"location": where}, "0", "ha-shared", "", "file", "user", True, {})
        yield hs, shared
    finally:
        for h in hs:
            if h.proc and h.proc.poll() is None:
                h.proc.send_signal(signal.SIGCONT)
            h.stop()
        if os.environ.get("XAPID_KEEP") == "1":
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def make_vm(x, name: str, sr: str, priority: str = "", order: int = 0) -> str:
    """A small VM with one disk on `sr`, halted, with HA restart priority `priority`."""
    t = x.VM.get_by_name_label("Debian Bookworm 12")[0]
    vm = x.VM.clone(t, name)
    x.VM.remove_from_other_config(vm, "disks")
    x.VM.set_is_a_template(vm, False)
    x.VM.set_memory_limits(vm, 128 << 20, 128 << 20, 128 << 20, 128 << 20)
    vdi = x.VDI.create({"name_label": f"{name}-disk", "name_description": "", "SR": sr,
                        "virtual_size": str(4 << 20), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}})
    x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW", "type": "Disk",
                  "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    x.VM.set_ha_restart_priority(vm, priority)
    x.VM.set_order(vm, order)
    return vm


def wait_running_elsewhere(x, vms: list[str], gone: str, bound: float) -> float:
    t0 = time.time()
    while True:
        states = {v: (x.VM.get_power_state(v), x.VM.get_resident_on(v)) for v in vms}
        if all(s == "Running" and h not in (gone, "OpaqueRef:NULL") for s, h in states.values()):
            return time.time() - t0
        assert time.time() - t0 < bound, f"not restarted within {bound} s: {states}"
        time.sleep(0.25)


def test_enable_ha_planning_and_refusals(pool):
    hs, shared = pool
    x = hs[0].session().xenapi
    p = x.pool.get_all()[0]
    assert failure(x.pool.disable_ha) == ["HA_NOT_ENABLED"]
    vm = make_vm(x, "ha-agile", shared)
    assert failure(x.VM.set_ha_restart_priority, vm, "sometimes") == ["INVALID_VALUE", "ha_restart_priority",
                                                                       "sometimes"]
    assert failure(x.VM.set_order, vm, "-1")[0] == "INVALID_VALUE"
    x.VM.assert_agile(vm)
    # A disk on the master's local SR: that VM can only run there.
    local = x.pool.get_default_SR(p)
    if x.SR.get_shared(local):
        local = [s for s in x.SR.get_all() if x.SR.get_type(s) == "file" and not x.SR.get_shared(s)][0]
    pinned = make_vm(x, "ha-pinned", local)
    assert failure(x.VM.assert_agile, pinned) == ["HA_CONSTRAINT_VIOLATION_SR_NOT_SHARED", local]

    # The reference's refusals of a timeout under 10 s or not a number (INTERNAL_ERROR).
    for bad in ("5", "soon"):
        assert failure(x.pool.enable_ha, [shared], {"timeout": bad})[0] == "INTERNAL_ERROR"
        assert x.pool.get_ha_enabled(p) is False
    x.pool.enable_ha([shared], {"timeout": str(HA_TIMEOUT)})
    assert x.pool.get_ha_enabled(p) is True
    # Every host's lease now lives the HA timeout (each takes a new one, and says so).
    deadline = time.time() + 15
    while not all(f"to={HA_TIMEOUT}" in h.tail(400) for h in hs):
        assert time.time() < deadline, [h.tail(40) for h in hs if f"to={HA_TIMEOUT}" not in h.tail(400)]
        time.sleep(0.5)
    assert failure(x.pool.enable_ha, [shared], {}) == ["HA_IS_ENABLED"]
    statefiles = x.pool.get_ha_statefiles(p)
    assert len(statefiles) == 1 and x.VDI.get_type(statefiles[0]) == "ha_statefile"
    assert x.VDI.get_SR(statefiles[0]) == shared
    assert x.pool.get_ha_configuration(p) == {"timeout": str(HA_TIMEOUT)}
    assert x.host.get_ha_statefiles(hs[1].ref) == statefiles
    assert len(x.host.get_ha_network_peers(hs[1].ref)) == N - 1
    assert failure(x.pool.designate_new_master, hs[1].ref) == ["HA_IS_ENABLED"]

    # Nothing protected: any number of failures short of every host is survivable.
    assert int(x.pool.ha_compute_max_host_failures_to_tolerate()) == N
    x.VM.set_ha_restart_priority(vm, "restart")
    x.VM.start_on(vm, hs[1].ref, False, False)
    assert x.VM.get_ha_always_run(vm) is True
    # One 128 MiB protected VM: it survives the loss of all hosts but one.
    assert int(x.pool.ha_compute_max_host_failures_to_tolerate()) == N - 1
    assert x.pool.ha_failover_plan_exists("1") is True
    assert x.pool.ha_failover_plan_exists(str(N)) is False
    assert int(x.pool.ha_compute_hypothetical_max_host_failures_to_tolerate({vm: "restart", pinned: ""})) == N - 1
    assert failure(x.pool.ha_compute_hypothetical_max_host_failures_to_tolerate, {vm: "always"}) == [
        "INVALID_VALUE", "ha_restart_priority", "always"]
    plan = x.pool.ha_compute_vm_failover_plan([hs[1].ref], [vm, pinned])
    assert plan[vm]["host"] not in (hs[1].ref, "")
    assert plan[pinned] == {"error_code": "HA_CONSTRAINT_VIOLATION_SR_NOT_SHARED"}
    # Planned for N-1 failures, the pool needs every host able to take the VM.
    x.pool.set_ha_host_failures_to_tolerate(p, str(N - 1))
    assert int(x.pool.get_ha_plan_exists_for(p)) == N - 1
    assert failure(x.host.disable, hs[2].ref) == ["HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"]
    assert failure(x.host.disable, hs[0].ref) == ["HA_IS_ENABLED"]
    x.pool.set_ha_host_failures_to_tolerate(p, "1")
    assert int(x.pool.get_ha_plan_exists_for(p)) == 1 and x.pool.get_ha_overcommitted(p) is False
    x.host.disable(hs[2].ref)
    x.host.enable(hs[2].ref)
    assert failure(x.pool.set_ha_host_failures_to_tolerate, p, "-1")[0] == "INVALID_VALUE"
    # Evacuating a host with HA on moves only what HA protects: a VM it does not protect is to
    # be stopped first (as the reference plans it), and nothing moves until it is.
    loose = make_vm(x, "ha-loose", shared)
    x.VM.start_on(loose, hs[1].ref, False, False)
    assert x.host.get_vms_which_prevent_evacuation(hs[1].ref) == {
        loose: ["HOST_EVACUATE_VM_NOT_HA_PROTECTED", loose]}
    assert failure(x.host.assert_can_evacuate, hs[1].ref) == [
        "CANNOT_EVACUATE_HOST", f"HOST_EVACUATE_VM_NOT_HA_PROTECTED,{loose}"]
    assert failure(x.host.evacuate, hs[1].ref) == ["HOST_EVACUATE_VM_NOT_HA_PROTECTED", loose]
    assert x.VM.get_resident_on(vm) == hs[1].ref and x.VM.get_resident_on(loose) == hs[1].ref
    x.VM.hard_shutdown(loose)
    assert x.host.get_vms_which_prevent_evacuation(hs[1].ref) == {}
    x.host.evacuate(hs[1].ref)
    assert x.VM.get_power_state(vm) == "Running" and x.VM.get_resident_on(vm) not in (hs[1].ref, "OpaqueRef:NULL")
    x.VM.destroy(loose)
    # Stopped on purpose, a protected VM is no longer to be kept running.
    x.VM.hard_shutdown(vm)
    assert x.VM.get_ha_always_run(vm) is False
    x.VM.destroy(pinned)


def test_protected_vms_of_a_killed_member_run_again_on_the_survivors(pool):
    hs, shared = pool
    x = hs[0].session().xenapi
    victim = hs[2]
    protected = [make_vm(x, f"ha-protected-{i}", shared, "restart", order=i) for i in range(2)]
    best = make_vm(x, "ha-best-effort", shared, "best-effort")
    unprotected = make_vm(x, "ha-unprotected", shared, "")
    for v in protected + [best, unprotected]:
        x.VM.start_on(v, victim.ref, False, False)
    assert all(x.VM.get_ha_always_run(v) for v in protected)
    victim.proc.kill()
    victim.proc.wait()
    t = wait_running_elsewhere(x, protected + [best], victim.ref, RESTART_BOUND)
    print(f"HA: {len(protected)} protected and 1 best-effort VM running on the survivors {t:.1f} s after "
          "SIGKILL of their host's xapid")
    assert x.VM.get_power_state(unprotected) == "Halted"
    assert x.VM.get_resident_on(unprotected) == "OpaqueRef:NULL"
    # The reference's message about the failed host, for clients' alert lists.
    failed = [m for m in x.message.get_all_records().values() if m["name"] == "HA_HOST_FAILED"]
    assert [m["obj_uuid"] for m in failed] == [x.host.get_uuid(victim.ref)], failed
    assert failed[0]["cls"] == "Host" and failed[0]["priority"] == "3"
    assert x.host_metrics.get_live(x.host.get_metrics(victim.ref)) is False
    # Started again, the host is a member like before and runs none of them.
    victim.start()
    wait_live(x, victim.ref, True)
    assert all(x.VM.get_resident_on(v) != victim.ref for v in protected + [best])
    assert all(x.VM.get_power_state(v) == "Running" for v in protected + [best])


def test_a_member_that_lost_its_lease_fences_itself(pool):
    hs, shared = pool
    x = hs[0].session().xenapi
    frozen = hs[3] if N > 3 else hs[1]
    vm = make_vm(x, "ha-on-frozen", shared, "restart")
    x.VM.start_on(vm, frozen.ref, False, False)
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        t = wait_running_elsewhere(x, [vm], frozen.ref, RESTART_BOUND)
        print(f"HA: the protected VM of a frozen member running elsewhere {t:.1f} s after SIGSTOP")
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    # Awake, it finds its lease gone: it fences (no writes, guests destroyed), then restarts.
    deadline = time.time() + 20
    while "fencing" not in frozen.tail(400):
        assert time.time() < deadline, f"the woken host did not fence itself: {frozen.tail()}"
        time.sleep(0.2)
    assert x.VM.get_resident_on(vm) != frozen.ref and x.VM.get_power_state(vm) == "Running"
    wait_up(frozen, "fencing", timeout=90)
    wait_live(x, frozen.ref, True, timeout=60)
    assert "the daemon restarts" in frozen.tail(400)
    assert x.VM.get_resident_on(vm) != frozen.ref and x.VM.get_power_state(vm) == "Running"
    # Back, it says it was fenced.
    uuid = x.host.get_uuid(frozen.ref)
    deadline = time.time() + 20
    while not [m for m in x.message.get_all_records().values()
               if m["name"] == "HA_HOST_WAS_FENCED" and m["obj_uuid"] == uuid]:
        assert time.time() < deadline, "no HA_HOST_WAS_FENCED message from the fenced host"
        time.sleep(0.5)


def test_a_killed_master_is_replaced_through_the_election(pool):
    hs, shared = pool
    old = hs[0]
    x = old.session().xenapi
    p = x.pool.get_all()[0]
    vm = make_vm(x, "ha-on-master", shared, "restart")
    x.VM.start_on(vm, old.ref, False, False)
    # Acknowledged writes made just before the master dies.
    written = {}
    for i in range(20):
        v = make_vm(x, f"ha-written-{i}", shared)
        x.VM.set_name_description(v, f"acknowledged {i}")
        written[v] = f"acknowledged {i}"
    old.proc.kill()
    old.proc.wait()
    t0 = time.time()
    member = hs[1]
    while True:
        try:
            s = login_following_slave(member.url)
            if s.xenapi.pool.get_master(p) != old.ref:
                break
        except (OSError, XenAPI.Failure):
            pass
        assert time.time() - t0 < 60, f"no new master 60 s after SIGKILL of the master: {member.tail()}"
        time.sleep(0.5)
    elected = time.time() - t0
    n = s.xenapi
    new = n.pool.get_master(p)
    new_host = [h for h in hs if h.ref == new][0]
    print(f"HA: a new master ({new_host.address}) answering {elected:.1f} s after SIGKILL of the master's xapid")
    d = failure(XenAPI.Session(hs[-1].url if hs[-1] is not new_host else member.url).xenapi.login_with_password,
                "root", PASSWORD, "1.0", "t")
    assert d == ["HOST_IS_SLAVE", new_host.address]
    for v, desc in written.items():
        assert n.VM.get_name_description(v) == desc
    t = wait_running_elsewhere(n, [vm], old.ref, RESTART_BOUND)
    print(f"HA: the old master's protected VM running again {elected + t:.1f} s after SIGKILL")
    # Xen Orchestra's client, pointed at a member, follows HOST_IS_SLAVE to the new master.
    prefix = os.environ.get("XAPID_NODE_PREFIX")
    assert prefix, "XAPID_NODE_PREFIX is not set (tests/pool/run.sh sets it)"
    other = [h for h in hs[1:] if h is not new_host][0]
    writer = other.local_session().xenapi
    watched = list(written)[0]
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen(["node", os.path.join(here, "xo_pool.mjs"), other.address, new_host.address,
                             str(N), PASSWORD, watched, "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
        writer.VM.set_name_label(watched, "renamed-through-a-member")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.strip() == "seen", (proc.returncode, out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The old master, started again, is a member of the new master's pool.
    old.start()
    wait_live(n, old.ref, True, timeout=60)
    d = failure(XenAPI.Session(old.url).xenapi.login_with_password, "root", PASSWORD, "1.0", "t")
    assert d == ["HOST_IS_SLAVE", new_host.address]
    n.pool.disable_ha()
    assert n.pool.get_ha_enabled(p) is False
