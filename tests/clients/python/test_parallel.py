"""Many clients at once against a daemon whose simulated backend is slow
(`--sim-latency-ms 50`): operations on different VMs run in parallel (per-VM actors), and two
conflicting operations on one VM never both succeed."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import XenAPI

from conftest import login, safe_logout
from helpers import install_vm
from xapid_harness import Daemon

LATENCY_MS = 50
N = 64
MEM = 256 << 20  # bytes per VM: N of them fit in the simulated host


@pytest.fixture(scope="module")
def daemon():
    d = Daemon(extra_args=["--sim-latency-ms", str(LATENCY_MS)])
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def vms(daemon, model):
    """N installed VMs (made in parallel: each install is a few backend operations)."""
    # XenAPI.Session is not thread-safe (one HTTP connection): a session per worker.
    def worker(k: int) -> list[str]:
        s = login(daemon.url, daemon.password)
        try:
            refs = []
            for i in range(k, N, 8):
                vm = install_vm(s.xenapi, model, f"xapid-par-{i:02d}")
                # N VMs must fit in the simulated host at once
                s.xenapi.VM.set_memory_limits(vm, str(MEM // 2), str(MEM), str(MEM), str(MEM))
                refs.append(vm)
            return refs
        finally:
            safe_logout(s)

    with ThreadPoolExecutor(8) as ex:
        refs = [r for chunk in ex.map(worker, range(8)) for r in chunk]
    assert len(set(refs)) == N
    return refs


def start_stop(url: str, password: str, vm: str) -> tuple[float, float]:
    s = login(url, password)
    try:
        t0 = time.monotonic()
        s.xenapi.VM.start(vm, False, False)
        t1 = time.monotonic()
        assert s.xenapi.VM.get_power_state(vm) == "Running"
        s.xenapi.VM.hard_shutdown(vm)
        t2 = time.monotonic()
        assert s.xenapi.VM.get_power_state(vm) == "Halted"
        return t1 - t0, t2 - t1
    finally:
        safe_logout(s)


def test_many_vms_start_and_stop_in_parallel(daemon, vms, capsys):
    # one VM, alone: the serial cost
    serial = [start_stop(daemon.url, daemon.password, vms[0]) for _ in range(2)]
    one = min(a + b for a, b in serial)
    assert one >= 2 * LATENCY_MS / 1000, f"start+shutdown took {one:.3f}s: is the latency flag in effect?"
    estimate = N * one

    released: list[float] = []
    barrier = threading.Barrier(N, action=lambda: released.append(time.monotonic()))
    errors: list = []
    timings: list = []
    ends: list[float] = []

    def client(vm):
        # One originator per client, as 64 separate tools would have: the per-originator
        # session limit is test_session.py's business, not this test's.
        s = XenAPI.Session(daemon.url)
        s.xenapi.login_with_password("root", daemon.password, "2.0", f"xapid-par-client-{vm[-12:]}")
        try:
            barrier.wait(30)
            t0 = time.monotonic()
            s.xenapi.VM.start(vm, False, False)
            s.xenapi.VM.hard_shutdown(vm)
            ends.append(time.monotonic())
            timings.append(ends[-1] - t0)
        except Exception as e:  # collected and reported below
            errors.append((vm, repr(e)))
        finally:
            safe_logout(s)

    threads = [threading.Thread(target=client, args=(vm,)) for vm in vms]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    total = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "clients still running after 120 s"
    assert not errors, f"{len(errors)} of {N} clients failed:\n" + "\n".join(f"{vm}: {e}" for vm, e in errors[:8])
    # from the moment all N clients are logged in and released together to the last shutdown
    wall = max(ends) - released[0]
    with capsys.disabled():  # the figures belong in the run's log
        print(f"\n{N} VMs start+hard_shutdown: one VM alone {one * 1000:.0f} ms -> serial estimate "
              f"{estimate:.2f} s; {N} clients in parallel: wall {wall:.2f} s "
              f"({100 * wall / estimate:.1f}% of serial; per-client max {max(timings):.2f} s; "
              f"with the {N} logins {total:.2f} s)")
    assert wall < 0.25 * estimate, f"wall {wall:.2f}s is not far below the serial {estimate:.2f}s"
    x = login(daemon.url, daemon.password)
    try:
        states = {x.xenapi.VM.get_power_state(v) for v in vms}
        assert states == {"Halted"}, states
        assert all(x.xenapi.VM.get_current_operations(v) == {} for v in vms)
    finally:
        safe_logout(x)
    assert daemon.running()


def _outcome(fn, *args):
    try:
        fn(*args)
        return ("ok", None)
    except XenAPI.Failure as e:
        return ("fail", e.details)


def check_loser(details, vm, op_in_progress: str, bad_state: list):
    """The refused call: OTHER_OPERATION_IN_PROGRESS [VM, ref, op, op_ref], or the power-state
    error the reference checks first."""
    if details[0] == "OTHER_OPERATION_IN_PROGRESS":
        assert len(details) == 5 and details[1:4] == ["VM", vm, op_in_progress], details
        assert details[4].startswith("OpaqueRef:"), details
    else:
        assert details == ["VM_BAD_POWER_STATE", vm] + bad_state, details


def test_two_starts_of_one_vm(daemon, vms):
    vm = vms[1]
    a, b = login(daemon.url, daemon.password), login(daemon.url, daemon.password)
    try:
        seen = set()
        for trial in range(5):
            barrier = threading.Barrier(2)
            out = [None, None]

            def go(i, s):
                barrier.wait(10)
                out[i] = _outcome(s.xenapi.VM.start, vm, False, False)

            ts = [threading.Thread(target=go, args=(i, s)) for i, s in enumerate((a, b))]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            oks = [o for o in out if o[0] == "ok"]
            fails = [o[1] for o in out if o[0] == "fail"]
            assert len(oks) == 1 and len(fails) == 1, f"trial {trial}: {out}"
            check_loser(fails[0], vm, "start", ["halted", "running"])
            seen.add(fails[0][0])
            assert a.xenapi.VM.get_power_state(vm) == "Running"
            a.xenapi.VM.hard_shutdown(vm)
        print(f"\nrefusals seen: {sorted(seen)}")
    finally:
        safe_logout(a)
        safe_logout(b)
    assert daemon.running()


def test_shutdown_while_start_in_progress(daemon, vms):
    vm = vms[2]
    s = login(daemon.url, daemon.password)
    x = s.xenapi
    try:
        for trial in range(3):
            task = x.Async.VM.start(vm, False, False)
            # the start is marked at once and takes several LATENCY_MS backend operations
            deadline = time.monotonic() + 5
            while not x.VM.get_current_operations(vm):
                assert x.task.get_status(task) == "pending", "start finished before it was seen"
                assert time.monotonic() < deadline
                time.sleep(0.002)
            cur = x.VM.get_current_operations(vm)
            assert list(cur.values()) == ["start"], cur
            op_ref = list(cur)[0]
            for op, args in (("clean_shutdown", ()), ("hard_shutdown", ()), ("start", (False, False)),
                             ("destroy", ())):
                kind, details = _outcome(getattr(x.VM, op), vm, *args)
                if x.task.get_status(task) != "pending":
                    # the start finished meanwhile: this op may have come after it
                    assert kind == "ok" or details[0] != "INTERNAL_ERROR", (op, details)
                    break
                assert kind == "fail", f"VM.{op} succeeded while a start was in progress"
                if details[0] == "OTHER_OPERATION_IN_PROGRESS":
                    assert details == ["OTHER_OPERATION_IN_PROGRESS", "VM", vm, "start", op_ref], details
                else:
                    # reference order: the power state (still Halted) is checked first
                    assert details[:2] == ["VM_BAD_POWER_STATE", vm] and details[3] == "halted", details
            while x.task.get_status(task) == "pending":
                time.sleep(0.01)
            assert x.task.get_status(task) == "success", x.task.get_record(task)
            assert x.VM.get_current_operations(vm) == {}
            if x.VM.get_power_state(vm) != "Halted":
                x.VM.hard_shutdown(vm)
    finally:
        safe_logout(s)
    assert daemon.running()


def test_conflicting_shutdowns(daemon, vms):
    """clean_shutdown and hard_shutdown of one running VM at once. The reference lets a
    hard_shutdown run alongside a clean_shutdown (is_allowed_concurrently), so both may
    succeed, or the clean one may be cut short; what must hold: at least one succeeds, no
    INTERNAL_ERROR, the VM ends Halted with no operation left marked."""
    vm = vms[3]
    a, b = login(daemon.url, daemon.password), login(daemon.url, daemon.password)
    try:
        for trial in range(10):
            a.xenapi.VM.start(vm, False, False)
            barrier = threading.Barrier(2)
            out = {}

            def go(name, s):
                barrier.wait(10)
                out[name] = _outcome(getattr(s.xenapi.VM, name), vm)

            ts = [threading.Thread(target=go, args=a_) for a_ in (("clean_shutdown", a), ("hard_shutdown", b))]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            oks = [k for k, v in out.items() if v[0] == "ok"]
            assert len(oks) >= 1, out
            for k, v in out.items():
                if v[0] == "fail":
                    d = v[1]
                    assert d[0] in ("TASK_CANCELLED", "VM_BAD_POWER_STATE",
                                    "OTHER_OPERATION_IN_PROGRESS"), out
                    if d[0] == "VM_BAD_POWER_STATE":
                        assert d[3] == "halted", out
            assert a.xenapi.VM.get_power_state(vm) == "Halted", out
            assert a.xenapi.VM.get_current_operations(vm) == {}
    finally:
        safe_logout(a)
        safe_logout(b)
