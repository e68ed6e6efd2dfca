"""Async.* calls through XenAPI.py (`session.xenapi.Async.VM.start(...)`): a task ref comes
back at once, the task moves to success (result: an XML-RPC <value> fragment) or failure
(error_info: the error), with `finished` set."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
import xmlrpc.client

import pytest

from helpers import discard_vm, bad_power_state, failure, install_vm
from xapid_harness import Daemon
from conftest import login, safe_logout

LATENCY_MS = 50


@pytest.fixture(scope="module")
def daemon():
    """A daemon whose backend takes LATENCY_MS per operation, so a start is observably pending."""
    d = Daemon(extra_args=["--sim-latency-ms", str(LATENCY_MS)])
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def wait_task(xapi, task: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec = xapi.task.get_record(task)
        if rec["status"] != "pending":
            return rec
        assert time.monotonic() < deadline, f"task {task} still pending after {timeout}s: {rec}"
        time.sleep(0.02)


def parse_value_fragment(fragment: str):
    """Decode a task result the way clients do: an XML-RPC <value> element."""
    el = ET.fromstring(fragment)
    assert el.tag == "value", fragment
    params, _ = xmlrpc.client.loads(
        f"<methodResponse><params><param>{fragment}</param></params></methodResponse>")
    return params[0]


def is_epoch(dt) -> bool:
    return str(dt).startswith("1970")


@pytest.fixture
def vm(xapi, model):
    ref = install_vm(xapi, model, "xapid-async")
    yield ref
    discard_vm(xapi, ref)


def test_async_start_returns_at_once(xapi, vm):
    t0 = time.monotonic()
    task = xapi.Async.VM.start(vm, False, False)
    returned = time.monotonic() - t0
    assert task.startswith("OpaqueRef:") and task != "OpaqueRef:NULL", task
    rec = xapi.task.get_record(task)
    # a start is several backend operations of LATENCY_MS each: the task is still running
    assert rec["status"] == "pending", f"after {returned:.3f}s: {rec}"
    assert returned < 3 * LATENCY_MS / 1000, f"Async.VM.start took {returned:.3f}s to return"
    assert task in xapi.task.get_all()
    assert rec["name_label"] == "Async.VM.start", rec["name_label"]
    assert is_epoch(rec["finished"]), rec["finished"]
    assert rec["error_info"] == [] and rec["result"] == "", rec
    assert not is_epoch(rec["created"])
    done = wait_task(xapi, task)
    assert done["status"] == "success", done
    assert done["error_info"] == [], done
    assert not is_epoch(done["finished"]), done["finished"]
    assert done["finished"] >= done["created"]
    assert float(done["progress"]) == 1.0, done["progress"]
    # VM.start returns void: an empty result or an empty <value> fragment
    assert done["result"] == "" or parse_value_fragment(done["result"]) in ("", None), done["result"]
    assert xapi.VM.get_power_state(vm) == "Running"


def test_async_start_failure(xapi, vm):
    xapi.VM.start(vm, False, False)
    task = xapi.Async.VM.start(vm, False, False)
    done = wait_task(xapi, task)
    assert done["status"] == "failure", done
    assert done["error_info"] == bad_power_state(vm, "halted", "running"), done["error_info"]
    assert not is_epoch(done["finished"])
    assert done["result"] == "", done["result"]
    assert xapi.VM.get_power_state(vm) == "Running"


def test_async_bad_ref_fails_in_the_task_or_at_once(xapi):
    bad = "OpaqueRef:00000000-0000-0000-0000-000000000000"
    try:
        task = xapi.Async.VM.start(bad, False, False)
    except Exception as e:  # the reference checks refs before making the task
        assert getattr(e, "details", [None])[0] == "HANDLE_INVALID", e
        return
    done = wait_task(xapi, task)
    assert done["status"] == "failure" and done["error_info"][:2] == ["HANDLE_INVALID", "VM"], done


def test_async_clone_result_is_the_new_vm(xapi, vm):
    task = xapi.Async.VM.clone(vm, "xapid-async-clone")
    done = wait_task(xapi, task)
    assert done["status"] == "success", done
    frag = done["result"]
    assert frag.startswith("<value>") and frag.endswith("</value>"), frag
    new = parse_value_fragment(frag)
    assert new.startswith("OpaqueRef:") and new != vm, frag
    assert xapi.VM.get_name_label(new) == "xapid-async-clone"
    assert xapi.VM.get_power_state(new) == "Halted"
    xapi.VM.destroy(new)


def test_async_hard_shutdown_and_task_listing(xapi, vm):
    xapi.VM.start(vm, False, False)
    task = xapi.Async.VM.hard_shutdown(vm)
    # while it runs, the VM shows the operation in current_operations, keyed by the task
    cur = xapi.VM.get_current_operations(vm)
    assert cur in ({}, {task: "hard_shutdown"}), cur
    done = wait_task(xapi, task)
    assert done["status"] == "success", done
    assert xapi.VM.get_power_state(vm) == "Halted"
    assert xapi.VM.get_current_operations(vm) == {}
    assert xapi.task.get_by_uuid(done["uuid"]) == task


def test_task_visible_to_another_session(daemon, xapi, vm):
    task = xapi.Async.VM.start(vm, False, False)
    other = login(daemon.url, daemon.password)
    try:
        done = wait_task(other.xenapi, task)
        assert done["status"] == "success", done
    finally:
        safe_logout(other)


def test_task_destroy(xapi, vm):
    """Clients destroy the tasks they awaited (Ansible's wait_for_task, xen-api's callAsync)."""
    task = xapi.Async.VM.clone(vm, "xapid-async-clone-2")
    done = wait_task(xapi, task)
    new = parse_value_fragment(done["result"])
    xapi.task.destroy(task)
    assert task not in xapi.task.get_all()
    assert failure(xapi.task.get_record, task) == ["HANDLE_INVALID", "task", task]
    xapi.VM.destroy(new)


def test_task_create(xapi):
    """xen-api's createTask/getResource use task.create."""
    task = xapi.task.create("xapid-test-task", "made by a test")
    rec = xapi.task.get_record(task)
    assert rec["status"] == "pending" and rec["name_label"] == "xapid-test-task", rec
    xapi.task.destroy(task)
