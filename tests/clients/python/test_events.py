"""event.from / event.get_current_id / event.inject through XenAPI.py, the way event loops
(xe event-wait, XenCenter, Xen Orchestra, monitoring scripts) use them."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import login, safe_logout
from helpers import discard_vm, control_domain, failure, install_vm


def event_from(xapi, classes, token, timeout):
    # `from` is a Python keyword: clients call it through getattr.
    return getattr(xapi.event, "from")(classes, token, float(timeout))


def check_event_shape(ev: dict):
    assert set(ev) >= {"id", "timestamp", "class", "operation", "ref"}, ev.keys()
    assert ev["operation"] in ("add", "mod", "del"), ev
    assert ev["ref"].startswith("OpaqueRef:"), ev
    assert ev["class"] == ev["class"].lower(), f"event class must be lower case: {ev['class']}"
    if ev["operation"] == "del":
        assert "snapshot" not in ev or ev["snapshot"] in (None, {}), ev
    else:
        assert isinstance(ev.get("snapshot"), dict), ev


@pytest.fixture
def vm(xapi, model):
    ref = install_vm(xapi, model, "xapid-events")
    yield ref
    discard_vm(xapi, ref)


def test_from_empty_token_returns_all_vms(xapi):
    r = event_from(xapi, ["vm"], "", 0)
    assert set(r) >= {"events", "valid_ref_counts", "token"}, r.keys()
    assert isinstance(r["token"], str) and r["token"], r["token"]
    all_vms = xapi.VM.get_all_records()
    evs = r["events"]
    for ev in evs:
        check_event_shape(ev)
        assert ev["class"] == "vm", ev
    refs = {ev["ref"] for ev in evs}
    assert refs == set(all_vms), f"event.from('') must list every VM: {len(refs)} vs {len(all_vms)}"
    for ev in evs:
        snap = ev["snapshot"]
        assert snap["uuid"] == all_vms[ev["ref"]]["uuid"], ev
        assert snap["name_label"] == all_vms[ev["ref"]]["name_label"]
    dom0, _ = control_domain(xapi)
    assert dom0 in refs


def test_valid_ref_counts_are_ints(xapi):
    r = event_from(xapi, ["vm", "host"], "", 0)
    counts = r["valid_ref_counts"]
    assert set(counts) == {"vm", "host"}, counts
    bad = {k: v for k, v in counts.items() if not isinstance(v, int)}
    assert not bad, f"valid_ref_counts must be <int> values (reference: int32), got {counts!r}"
    assert counts["vm"] == len(xapi.VM.get_all())
    assert counts["host"] == 1


def test_from_wakes_on_change_by_another_session(daemon, xapi, vm, capsys):
    token = event_from(xapi, ["vm"], "", 0)["token"]
    other = login(daemon.url, daemon.password)
    result: dict = {}

    def waiter():
        t0 = time.monotonic()
        try:
            result["r"] = event_from(xapi, ["vm"], token, 5)
        except Exception as e:  # reported below
            result["error"] = e
        result["at"] = time.monotonic()
        result["t0"] = t0

    th = threading.Thread(target=waiter)
    th.start()
    try:
        time.sleep(0.3)  # let the waiter block in event.from
        assert "at" not in result, f"event.from returned without a change: {result}"
        changed_at = time.monotonic()
        other.xenapi.VM.set_name_label(vm, "renamed-by-other-session")
        th.join(10)
        assert not th.is_alive(), "event.from did not return"
    finally:
        safe_logout(other)
    assert "error" not in result, result.get("error")
    woke = result["at"] - changed_at
    with capsys.disabled():
        print(f"\nevent.from woke {woke * 1000:.1f} ms after the change")
    assert woke < 0.5, f"event.from woke {woke:.3f}s after the change"
    evs = [e for e in result["r"]["events"] if e["ref"] == vm]
    assert evs, result["r"]
    ev = evs[-1]
    check_event_shape(ev)
    assert (ev["class"], ev["operation"], ev["ref"]) == ("vm", "mod", vm), ev
    assert ev["snapshot"]["name_label"] == "renamed-by-other-session"
    assert result["r"]["token"] != token


def test_from_times_out_without_changes(xapi):
    token = event_from(xapi, ["vm"], "", 0)["token"]
    t0 = time.monotonic()
    r = event_from(xapi, ["vm"], token, 1)
    took = time.monotonic() - t0
    assert r["events"] == [], r["events"]
    assert 0.8 < took < 3, took
    assert r["token"], r


def test_from_one_object(xapi, model, vm):
    other_vm = install_vm(xapi, model, "xapid-events-other")
    try:
        token = event_from(xapi, ["vm"], "", 0)["token"]
        xapi.VM.set_name_label(other_vm, "other renamed")
        xapi.VM.set_name_label(vm, "this renamed")
        r = event_from(xapi, [f"vm/{vm}"], token, 2)
        refs = {e["ref"] for e in r["events"]}
        assert refs == {vm}, f"vm/<ref> subscription reported {refs}"
        # and from '' it reports just that object
        r = event_from(xapi, [f"vm/{vm}"], "", 0)
        assert {e["ref"] for e in r["events"]} == {vm}, r["events"]
    finally:
        xapi.VM.destroy(other_vm)


def test_destroy_gives_del_without_snapshot(xapi, model):
    vm = install_vm(xapi, model, "xapid-events-doomed")
    token = event_from(xapi, ["vm"], "", 0)["token"]
    xapi.VM.destroy(vm)
    r = event_from(xapi, ["vm"], token, 2)
    evs = [e for e in r["events"] if e["ref"] == vm]
    assert evs and evs[-1]["operation"] == "del", evs
    check_event_shape(evs[-1])
    assert "snapshot" not in evs[-1] or not evs[-1]["snapshot"], evs[-1]


def test_add_event_for_a_new_vm(xapi, model):
    token = event_from(xapi, ["vm"], "", 0)["token"]
    vm = install_vm(xapi, model, "xapid-events-new")
    try:
        r = event_from(xapi, ["vm"], token, 2)
        evs = [e for e in r["events"] if e["ref"] == vm]
        assert evs, r["events"]
        # created and changed since the token: reported once, as an add, latest snapshot
        assert [e["operation"] for e in evs] in (["add"], ["add", "mod"]), evs
        assert evs[-1]["snapshot"]["is_a_template"] is False
    finally:
        xapi.VM.destroy(vm)


def test_power_ops_make_events(xapi, vm):
    token = event_from(xapi, ["vm", "vm_metrics", "console"], "", 0)["token"]
    xapi.VM.start(vm, False, False)
    r = event_from(xapi, ["vm", "vm_metrics", "console"], token, 2)
    classes = {e["class"] for e in r["events"]}
    assert {"vm", "vm_metrics", "console"} <= classes, classes
    mine = [e for e in r["events"] if e["ref"] == vm]
    assert mine and mine[-1]["snapshot"]["power_state"] == "Running", mine


def test_get_current_id_and_inject(xapi, vm):
    cur = xapi.event.get_current_id()
    assert int(cur) >= 0, cur
    token = event_from(xapi, ["vm"], "", 0)["token"]
    t = xapi.event.inject("VM", vm)
    assert isinstance(t, str) and t, t
    r = event_from(xapi, ["vm"], token, 2)
    evs = [e for e in r["events"] if e["ref"] == vm]
    assert evs and evs[-1]["operation"] == "mod", r["events"]
    assert int(xapi.event.get_current_id()) > int(cur)
    # the token inject returns is a valid event.from token (xen-api starts its loop with it)
    xapi.VM.set_name_description(vm, "after the inject")
    r2 = event_from(xapi, ["vm"], t, 2)
    evs = [e for e in r2["events"] if e["ref"] == vm]
    assert evs and evs[-1]["snapshot"]["name_description"] == "after the inject", r2["events"]


def test_unparsable_token(xapi):
    assert failure(event_from, xapi, ["vm"], "not a token", 0) == \
        ["EVENT_FROM_TOKEN_PARSE_FAILURE", "not a token"]


def test_star_subscription(xapi, vm):
    token = event_from(xapi, ["*"], "", 0)["token"]
    xapi.VM.set_name_description(vm, "star")
    xapi.network.set_name_description(xapi.network.get_all()[0], "star too")
    r = event_from(xapi, ["*"], token, 2)
    classes = {e["class"] for e in r["events"]}
    assert {"vm", "network"} <= classes, classes
