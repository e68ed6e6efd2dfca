"""Stats and alerts through real clients: /rrd_updates read as Xen Orchestra reads it (JSON,
`meta.legend` entries `AVERAGE:vm:<uuid>:cpu0`, `data` rows of `t` and `values`), the XML form
and the rrdtool dumps, a paused VM's CPU falling to zero, messages through XenAPI.py, data
sources, host.get_servertime, and /metrics checked by Prometheus' own promtool.

The daemon samples every 5 seconds: the tests wait for rounds, up to a bound."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
import xmlrpc.client

import pytest

from helpers import discard_vm, failure, install_vm

WAIT = 60.0  # seconds: a dozen rounds


def get(daemon, path: str, params: dict | list | None = None, session=None, headers=None, auth=None):
    """GET a stats path: (status, content type, body)."""
    q = list(params.items()) if isinstance(params, dict) else list(params or [])
    if session is not None:
        q.append(("session_id", session._session))
    url = f"{daemon.url}{path}?{urllib.parse.urlencode(q)}"
    req = urllib.request.Request(url, headers=dict(headers or {}))
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def updates(daemon, session, start: int, **extra) -> dict:
    """What Xen Orchestra asks for: the host and VMs, 5-second AVERAGE rows, as JSON."""
    params = {"start": str(start), "cf": "AVERAGE", "interval": "5", "host": "true", "json": "true", **extra}
    status, ctype, body = get(daemon, "/rrd_updates", params, session)
    assert status == 200, body
    assert ctype == "application/json", ctype
    return json.loads(body)


def column(doc: dict, legend: str) -> list[tuple[int, float]]:
    """(t, value) of one legend entry, newest first, as XO splits the table."""
    i = doc["meta"]["legend"].index(legend)
    return [(int(row["t"]), float(row["values"][i])) for row in doc["data"]]


def wait_for(what, fn, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(1)


@pytest.fixture(scope="module")
def running(daemon, model):
    """A running VM (with a disk and a NIC) that the module's tests share, and its uuid."""
    from conftest import login, safe_logout
    s = login(daemon.url, daemon.password)
    xapi = s.xenapi
    vm = install_vm(xapi, model, "xapid-metrics")
    xapi.VM.start(vm, False, False)
    # The host's database exists from the daemon's first round (the reference's always does).
    wait_for("the host's database", lambda: get(daemon, "/rrd_updates", {"start": "-60", "host": "true"}, s)[0] == 200)
    yield vm, xapi.VM.get_uuid(vm)
    discard_vm(xapi, vm)
    safe_logout(s)


def host_uuid(xapi) -> str:
    return xapi.host.get_uuid(xapi.host.get_all()[0])


def test_rrd_updates_json_as_xen_orchestra_reads_it(daemon, session, xapi, running):
    vm, uuid = running
    start = int(time.time()) - 60

    def ready():
        doc = updates(daemon, session, start)
        legend = doc["meta"]["legend"]
        key = f"AVERAGE:vm:{uuid}:cpu0"
        if key not in legend:
            return None
        vals = [v for _, v in column(doc, key)]
        return doc if any(v > 0 for v in vals) else None

    doc = wait_for("the VM's CPU in /rrd_updates", ready)
    meta = doc["meta"]
    # Every number is a string, as the reference writes them.
    for k in ("start", "step", "end", "rows", "columns"):
        assert isinstance(meta[k], str) and meta[k].lstrip("-").isdigit(), (k, meta[k])
    assert meta["step"] == "5"
    assert int(meta["rows"]) == len(doc["data"])
    assert int(meta["columns"]) == len(meta["legend"])
    assert int(meta["start"]) > start and int(meta["end"]) >= int(meta["start"])
    legend = meta["legend"]
    h = host_uuid(xapi)
    for name in ("cpu0", "cpu_avg", "loadavg", "memory_total_kib", "memory_free_kib"):
        assert f"AVERAGE:host:{h}:{name}" in legend, (name, legend)
    for name in ("cpu0", "cpu_usage", "memory", "memory_target", "vif_0_rx", "vif_0_tx",
                 "vbd_xvda_read", "vbd_xvda_write"):
        assert f"AVERAGE:vm:{uuid}:{name}" in legend, (name, legend)
    assert all(entry.startswith("AVERAGE:") for entry in legend), legend
    times = [int(r["t"]) for r in doc["data"]]
    assert times == sorted(times, reverse=True), "newest first"
    assert all(b - a == -5 for a, b in zip(times, times[1:])), times
    for row in doc["data"]:
        assert set(row) == {"t", "values"}
        assert len(row["values"]) == len(legend)
        for v in row["values"]:
            float(v)  # "NaN" included
    # The simulated guest runs flat out on its vCPU; its disk and NIC carry a load.
    cpu = [v for _, v in column(doc, f"AVERAGE:vm:{uuid}:cpu0")]
    assert max(cpu) > 0.5, cpu
    assert all(0.0 <= v <= 1.0 for v in cpu if v == v), cpu
    wait_for("disk reads", lambda: any(
        v > 0 for _, v in column(updates(daemon, session, start), f"AVERAGE:vm:{uuid}:vbd_xvda_read")))
    # Only the VM asked for, without the host.
    only = updates(daemon, session, start, host="false", vm_uuid=uuid)
    assert only["meta"]["legend"] and all(f":vm:{uuid}:" in e for e in only["meta"]["legend"])


def test_paused_vm_cpu_drops_to_zero(daemon, session, xapi, running):
    vm, uuid = running
    key = f"AVERAGE:vm:{uuid}:cpu0"
    start = int(time.time()) - 30
    wait_for("the VM's CPU", lambda: key in updates(daemon, session, start)["meta"]["legend"])
    xapi.VM.pause(vm)
    paused_at = time.time()
    try:
        def zero_since_pause():
            rows = [(t, v) for t, v in column(updates(daemon, session, start), key) if t >= paused_at + 10]
            return rows if len(rows) >= 2 else None

        rows = wait_for("rows after the pause", zero_since_pause)
        assert all(v == 0.0 for _, v in rows), rows
        io = [(t, v) for t, v in column(updates(daemon, session, start), f"AVERAGE:vm:{uuid}:vbd_xvda_read")
              if t >= paused_at + 10]
        assert io and all(v == 0.0 for _, v in io), io
        usage = xapi.VM_metrics.get_VCPUs_utilisation(xapi.VM.get_metrics(vm))
        assert usage and all(float(u) == 0.0 for u in usage.values()), usage
    finally:
        xapi.VM.unpause(vm)


def test_rrd_updates_xml_and_its_parameters(daemon, session, running):
    _, uuid = running
    start = int(time.time()) - 60
    status, ctype, body = get(daemon, "/rrd_updates", {"start": start, "cf": "AVERAGE", "host": "true"}, session)
    assert status == 200 and ctype == "text/xml", (status, ctype)
    assert body.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<xport><meta><start>')
    root = ET.fromstring(body)
    meta = root.find("meta")
    legend = [e.text for e in meta.find("legend")]
    assert int(meta.find("columns").text) == len(legend)
    rows = root.find("data").findall("row")
    assert int(meta.find("rows").text) == len(rows)
    for row in rows:
        assert row[0].tag == "t" and len(row.findall("v")) == len(legend)
    # A minute's rows, every function (the host keeps MIN and MAX; VMs only AVERAGE).
    status, _, body = get(daemon, "/rrd_updates", {"start": -3600, "interval": "60", "host": "true"}, session)
    assert status == 200
    meta = ET.fromstring(body).find("meta")
    assert meta.find("step").text == "60"
    legend = [e.text for e in meta.find("legend")]
    assert any(e.startswith("MIN:host:") for e in legend) and any(e.startswith("MAX:host:") for e in legend)
    assert not any(e.startswith("MIN:vm:") for e in legend)
    # An Accept header that prefers JSON gets JSON.
    status, ctype, body = get(daemon, "/rrd_updates", {"start": start}, session,
                              headers={"Accept": "application/json"})
    assert ctype == "application/json" and json.loads(body)["meta"]
    # start is required; credentials are.
    status, _, _ = get(daemon, "/rrd_updates", {"host": "true"}, session)
    assert status == 400
    status, _, _ = get(daemon, "/rrd_updates", {"start": start})
    assert status == 401


def test_rrd_dumps(daemon, session, running):
    _, uuid = running
    status, ctype, body = get(daemon, "/host_rrd", {}, session)
    assert status == 200 and ctype == "text/xml"
    root = ET.fromstring(body)
    assert root.tag == "rrd" and root.find("version").text == "0003" and root.find("step").text == "5"
    names = [d.find("name").text for d in root.findall("ds")]
    assert "memory_total_kib" in names and "loadavg" in names
    rras = root.findall("rra")
    # 5 s AVERAGE, then AVERAGE, MIN, MAX for each of minutes, hours, days.
    assert [(r.find("cf").text, r.find("pdp_per_row").text) for r in rras] == [
        ("AVERAGE", "1"),
        ("AVERAGE", "12"), ("MIN", "12"), ("MAX", "12"),
        ("AVERAGE", "720"), ("MIN", "720"), ("MAX", "720"),
        ("AVERAGE", "17280"), ("MIN", "17280"), ("MAX", "17280")]
    assert [len(r.find("database").findall("row")) for r in rras] == [120, 120, 120, 120, 168, 168, 168, 366, 366, 366]
    assert all(len(row.findall("v")) == len(names) for row in rras[0].find("database"))
    status, ctype, body = get(daemon, "/vm_rrd", {"uuid": uuid, "json": "true"}, session)
    assert status == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert [r["cf"] for r in doc["rra"]] == ["AVERAGE"] * 4
    assert "cpu0" in [d["name"] for d in doc["ds"]]
    assert get(daemon, "/vm_rrd", {}, session)[0] == 400
    assert get(daemon, "/vm_rrd", {"uuid": "00000000-0000-0000-0000-00000000beef"}, session)[0] == 404
    assert get(daemon, "/host_rrd", {})[0] == 401


def test_vm_messages_through_xenapi(daemon, xapi, model):
    vm = install_vm(xapi, model, "xapid-alerted", vif=False)
    try:
        uuid = xapi.VM.get_uuid(vm)
        xapi.VM.start(vm, False, False)
        xapi.VM.clean_shutdown(vm)
        epoch = xmlrpc.client.DateTime("19700101T00:00:00Z")

        def both():
            msgs = xapi.message.get("VM", uuid, epoch)
            names = sorted(m["name"] for m in msgs.values())
            return msgs if names == ["VM_SHUTDOWN", "VM_STARTED"] else None

        msgs = wait_for("VM_STARTED and VM_SHUTDOWN", both, timeout=20)
        by_name = {m["name"]: m for m in msgs.values()}
        host = xapi.host.get_all()[0]
        assert by_name["VM_STARTED"]["body"] == (
            f"VM 'xapid-alerted' (uuid: {uuid}) started on host: "
            f"{xapi.host.get_name_label(host)} (uuid: {xapi.host.get_uuid(host)})")
        assert by_name["VM_SHUTDOWN"]["body"] == f"VM 'xapid-alerted' (uuid: {uuid}) shutdown"
        for m in msgs.values():
            assert int(m["priority"]) == 5 and m["cls"] == "VM" and m["obj_uuid"] == uuid
            assert isinstance(m["timestamp"], xmlrpc.client.DateTime)
        # Newest first.
        assert [m["name"] for m in msgs.values()] == ["VM_SHUTDOWN", "VM_STARTED"]
    finally:
        discard_vm(xapi, vm)


def test_guest_metrics_follow_the_guest(xapi, model):
    """The simulated guest agent reports a few seconds after boot; the record is the
    reference's (networks in both key forms, memory left empty); it goes when the VM stops."""
    vm = install_vm(xapi, model, "xapid-guest-metrics")
    try:
        xapi.VM.start(vm, False, False)
        gm = wait_for("the VM's guest metrics",
                      lambda: (lambda r: r if r != "OpaqueRef:NULL" else None)(xapi.VM.get_guest_metrics(vm)),
                      timeout=30)
        rec = xapi.VM_guest_metrics.get_record(gm)
        assert rec["uuid"] and xapi.VM_guest_metrics.get_by_uuid(rec["uuid"]) == gm
        mac = [int(x, 16) for x in xapi.VIF.get_MAC(xapi.VM.get_VIFs(vm)[0]).split(":")]
        ip = f"10.{mac[3]}.{mac[4]}.{mac[5] % 253 + 1}"
        nets = rec["networks"]
        assert nets["0/ip"] == ip and nets["0/ipv4/0"] == ip, nets
        assert nets["0/ipv6/0"].startswith("fd00::"), nets
        assert set(nets) == {"0/ip", "0/ipv4/0", "0/ipv6/0"}, nets
        assert rec["os_version"]["uname"] == "6.1.0-xapid-sim", rec["os_version"]
        assert {"name", "distro", "major", "minor"} <= set(rec["os_version"]), rec["os_version"]
        assert rec["PV_drivers_version"] == {"major": "8", "minor": "4", "micro": "0", "build": "1"}
        assert rec["PV_drivers_detected"] is True and rec["PV_drivers_up_to_date"] is True
        assert rec["other"]["feature-static-ip-setting"] == "1", rec["other"]
        assert rec["can_use_hotplug_vbd"] == "yes" and rec["can_use_hotplug_vif"] == "yes"
        assert rec["memory"] == {} and rec["disks"] == {}
        assert rec["live"] is True
        assert isinstance(rec["last_updated"], xmlrpc.client.DateTime)
        # VIF.configure_ipv4 on the running VM: its tools (which say feature-static-ip-setting)
        # take the address, as the guest metrics then show; mode None gives the guest its own
        # address back.
        vif = xapi.VM.get_VIFs(vm)[0]
        xapi.VIF.configure_ipv4(vif, "Static", "192.0.2.50/24", "192.0.2.1")
        vrec = xapi.VIF.get_record(vif)
        assert vrec["ipv4_configuration_mode"] == "Static", vrec
        assert vrec["ipv4_addresses"] == ["192.0.2.50/24"] and vrec["ipv4_gateway"] == "192.0.2.1", vrec
        wait_for("the static address in the guest metrics",
                 lambda: xapi.VM_guest_metrics.get_networks(gm).get("0/ipv4/0") == "192.0.2.50" or None,
                 timeout=30)
        xapi.VIF.configure_ipv4(vif, "None", "", "")
        wait_for("the guest's own address again",
                 lambda: xapi.VM_guest_metrics.get_networks(gm).get("0/ipv4/0") == ip or None, timeout=30)
        # The guest's free memory is a data source of the VM.
        free = wait_for("memory_internal_free", lambda: [
            v for v in [float(xapi.VM.query_data_source(vm, "memory_internal_free"))] if v > 0]
            if "memory_internal_free" in [d["name_label"] for d in xapi.VM.get_data_sources(vm)] else None)
        assert free[0] > 0
        xapi.VM.clean_shutdown(vm)
        assert xapi.VM.get_guest_metrics(vm) == "OpaqueRef:NULL"
        assert failure(xapi.VM_guest_metrics.get_record, gm) == ["HANDLE_INVALID", "VM_guest_metrics", gm]
    finally:
        discard_vm(xapi, vm)


def test_message_class(xapi):
    host = xapi.host.get_all()[0]
    h = xapi.host.get_uuid(host)
    token = getattr(xapi.event, "from")(["message"], "", 0.0)["token"]
    m = xapi.message.create("XAPID_TEST", "3", "Host", h, "a test alert")
    rec = xapi.message.get_record(m)
    assert rec["name"] == "XAPID_TEST" and int(rec["priority"]) == 3 and rec["cls"] == "Host"
    assert rec["obj_uuid"] == h and rec["body"] == "a test alert"
    assert xapi.message.get_by_uuid(rec["uuid"]) == m
    assert m in xapi.message.get_all()
    assert m in xapi.message.get_all_records()
    assert m in xapi.message.get_since(rec["timestamp"])
    assert list(xapi.message.get_all_records_where('field "name" = "XAPID_TEST"')) == [m]
    ev = getattr(xapi.event, "from")(["message"], token, 5.0)
    adds = [e for e in ev["events"] if e["class"] == "message" and e["operation"] == "add"]
    assert [e["ref"] for e in adds] == [m], ev["events"]
    assert failure(xapi.message.create, "X", "1", "VM", "no-such-uuid", "")[:3] == \
        ["UUID_INVALID", "VM", "no-such-uuid"]
    xapi.message.destroy(m)
    assert failure(xapi.message.get_record, m) == ["HANDLE_INVALID", "message", m]
    ev = getattr(xapi.event, "from")(["message"], ev["token"], 5.0)
    assert [(e["operation"], e["ref"]) for e in ev["events"]] == [("del", m)]


def test_data_sources_and_servertime(xapi, running):
    vm, _ = running
    names = wait_for("the VM's data sources", lambda: [d["name_label"] for d in xapi.VM.get_data_sources(vm)])
    assert {"cpu0", "memory"} <= set(names), names
    for d in xapi.VM.get_data_sources(vm):
        assert set(d) >= {"name_label", "name_description", "enabled", "standard", "units", "min", "max", "value"}
    mem = wait_for("memory", lambda: [v for v in [float(xapi.VM.query_data_source(vm, "memory"))] if v > 0])
    assert mem[0] > 0
    host = xapi.host.get_all()[0]
    assert "memory_total_kib" in [d["name_label"] for d in xapi.host.get_data_sources(host)]
    t = xapi.host.get_servertime(host)
    assert isinstance(t, xmlrpc.client.DateTime) and t.value.endswith("Z"), t
    server = datetime.datetime.strptime(t.value, "%Y%m%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert abs((server - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) < 5
    m = xapi.host.get_metrics(host)
    assert int(xapi.host_metrics.get_memory_total(m)) > int(xapi.host_metrics.get_memory_free(m)) > 0


def scrape(daemon) -> str:
    status, ctype, body = get(daemon, "/metrics", auth=("root", daemon.password))
    assert status == 200, body
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    return body


def test_metrics_text_format(daemon, running):
    _, uuid = running
    assert get(daemon, "/metrics")[0] == 401
    body = wait_for("VM gauges", lambda: (lambda b: b if f'vm="{uuid}"' in b else None)(scrape(daemon)))
    declared = {}
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in declared, f"{name} declared twice"
            declared[name] = kind
        elif line.startswith("# HELP ") or not line:
            continue
        else:
            name = line.split("{", 1)[0]
            assert name in declared, line
            float(line.rsplit(" ", 1)[1].replace("+Inf", "inf"))
    assert declared["xapid_sessions"] == "gauge"
    assert "xapid_vm_cpu0" in declared and "xapid_host_memory_total_kib" in declared


def test_metrics_pass_promtool(daemon, running):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    _, uuid = running
    body = wait_for("VM gauges", lambda: (lambda b: b if f'vm="{uuid}"' in b else None)(scrape(daemon)))
    r = subprocess.run([promtool, "check", "metrics"], input=body.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout.decode() + r.stderr.decode())[:4000]


def test_server_localtime(xapi):
    """The reference's form: the server's wall-clock time as a dateTime without a zone."""
    host = xapi.host.get_all()[0]
    t = xapi.host.get_server_localtime(host)
    assert isinstance(t, xmlrpc.client.DateTime) and not t.value.endswith("Z"), t
    local = datetime.datetime.strptime(t.value, "%Y%m%dT%H:%M:%S")
    assert abs((local - datetime.datetime.now()).total_seconds()) < 5, (t.value, datetime.datetime.now())


def test_perfmon_alarms(xapi, running):
    """other_config:perfmon thresholds raise ALARM messages with the reference's body: a VM
    whose CPU stays above its level (the simulated guest runs flat out), a host whose free
    memory is below its level."""
    vm, uuid = running
    host = xapi.host.get_all()[0]
    h = xapi.host.get_uuid(host)
    vm_cfg = ('<config><variable><name value="cpu_usage"/><alarm_trigger_level value="0.5"/>'
              '</variable></config>')
    host_cfg = ('<config><variable><name value="memory_free_kib"/>'
                '<alarm_trigger_level value="1e15"/><alarm_priority value="2"/></variable></config>')
    epoch = xmlrpc.client.DateTime("19700101T00:00:00Z")
    xapi.VM.add_to_other_config(vm, "perfmon", vm_cfg)
    xapi.host.add_to_other_config(host, "perfmon", host_cfg)
    try:
        def alarms(cls, obj):
            return [m for m in xapi.message.get(cls, obj, epoch).values() if m["name"] == "ALARM"] or None

        # A one-minute row must be complete first.
        vm_alarm = wait_for("the VM's ALARM", lambda: alarms("VM", uuid), timeout=150)
        assert len(vm_alarm) == 1, vm_alarm
        m = vm_alarm[0]
        assert int(m["priority"]) == 3 and m["cls"] == "VM" and m["obj_uuid"] == uuid
        value, config = m["body"].split("\nconfig:\n")
        assert value.startswith("value: ") and float(value[len("value: "):]) > 0.5, m["body"]
        assert len(value.split(".")[1]) == 6, value  # Python's %f
        assert config == ('<variable>\n\t<name value="cpu_usage"/>\n'
                          '\t<alarm_trigger_level value="0.5"/>\n</variable>\n'), config
        host_alarm = wait_for("the host's ALARM", lambda: alarms("Host", h), timeout=90)
        assert int(host_alarm[0]["priority"]) == 2 and host_alarm[0]["cls"] == "Host"
        assert float(host_alarm[0]["body"].split("\n")[0][len("value: "):]) > 0
        # Inhibited for an hour: no second alarm from the next rows.
        time.sleep(6)
        assert len(alarms("VM", uuid)) == 1
    finally:
        xapi.VM.remove_from_other_config(vm, "perfmon")
        xapi.host.remove_from_other_config(host, "perfmon")
