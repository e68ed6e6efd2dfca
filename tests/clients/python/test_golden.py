"""Wire-protocol golden test: recorded request/response pairs for the encodings clients are
strict about, replayed against a fresh daemon and compared after normalisation.

Files: ../golden/<case>.xml (XML-RPC, compared byte for byte) and ../golden/<case>.json
(JSON-RPC, compared as parsed JSON: key order and spacing are free, types are not).

What the cases pin down: compact XML (no whitespace between elements), the XML-RPC
Success/Failure structs, int64 as untyped <value>N</value> strings, booleans, doubles,
<dateTime.iso8601>YYYYMMDDTHH:MM:SSZ</dateTime.iso8601>, XML escaping, void results,
event.from records (valid_ref_counts as <int>), an Async task's result fragment, JSON-RPC 2.0
success without `error`, 2.0 error objects {code, message, data}, JSON-RPC 1.0 {result, error, id}.

Normalisation: refs of the fixture objects become {SESSION}, {DOM0}, {TEMPLATE}, {NET}, ...;
other refs OpaqueRef:#1, #2... and uuids UUID#1... in order of appearance; live timestamps
DATETIME (after checking their form); event ids/timestamps/tokens EVENT_ID, EVENT_TS, TOKEN.

Re-record after an intended change: XAPID_GOLDEN_UPDATE=1 tests/clients/run.sh python
(-k golden), then review the diff of tests/clients/golden/ before committing it. Two values
are not what the daemon sent when first recorded but what the reference sends (see the
README): valid_ref_counts as <int> / JSON numbers.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from rawhttp import post

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
UPDATE = bool(os.environ.get("XAPID_GOLDEN_UPDATE"))

REF_RE = re.compile(r"OpaqueRef:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
UUID_RE = re.compile(r"(?<![0-9a-fA-F:-])[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![0-9a-f-])")
XML_DT_RE = re.compile(r"<dateTime\.iso8601>([^<]*)</dateTime\.iso8601>")
DT_FORM = re.compile(r"^\d{8}T\d{2}:\d{2}:\d{2}Z$")
EPOCH = "19700101T00:00:00Z"


# --------------------------------------------------------------------------
# the fixture objects every case may name


@pytest.fixture(scope="module")
def env(daemon):
    import XenAPI
    from conftest import login
    s = login(daemon.url, daemon.password)
    x = s.xenapi
    dom0 = [r for r, v in x.VM.get_all_records().items() if v["is_control_domain"]][0]
    template = x.VM.get_by_name_label("Other install media")[0]
    net = x.network.create({"name_label": "golden <net> & \"quotes\" 'apos'",
                            "name_description": "tab\there, unicode é ☃",
                            "MTU": "9000", "other_config": {"a&b": "<x/>", "k": ""},
                            "tags": ["t1", "t2"]})
    values = {
        "SESSION": s.handle,
        "PASSWORD": daemon.password,
        "DOM0": dom0,
        "TEMPLATE": template,
        "NET": net,
        "HOST": x.host.get_all()[0],
        "POOL": x.pool.get_all()[0],
    }
    # a finished Async.VM.clone of the template, for its result fragment
    task = x.Async.VM.clone(template, "golden clone")
    deadline = time.monotonic() + 30
    while x.task.get_status(task) == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert x.task.get_status(task) == "success", x.task.get_record(task)
    values["TASK"] = task
    values["CLONE"] = XenAPI.xmlrpclib.loads(
        "<methodResponse><params><param>%s</param></params></methodResponse>" % x.task.get_result(task)
    )[0][0]
    yield values
    try:
        x.VM.destroy(values["CLONE"])
        x.network.destroy(net)
    finally:
        s.xenapi.session.logout()


def substitute(text: str, env: dict) -> str:
    for k, v in env.items():
        text = text.replace("{" + k + "}", v)
    return text


class Normaliser:
    def __init__(self, env: dict):
        self.known = {v: "{" + k + "}" for k, v in env.items() if k != "PASSWORD"}
        self.refs: dict[str, str] = {}
        self.uuids: dict[str, str] = {}

    def ref(self, r: str) -> str:
        if r in self.known:
            return self.known[r]
        return self.refs.setdefault(r, f"OpaqueRef:#{len(self.refs) + 1}")

    def uuid(self, u: str) -> str:
        return self.uuids.setdefault(u, f"UUID#{len(self.uuids) + 1}")

    def datetime(self, d: str) -> str:
        assert DT_FORM.match(d), f"datetime not in YYYYMMDDTHH:MM:SSZ form: {d!r}"
        return d if d == EPOCH else "DATETIME"

    def text(self, s: str) -> str:
        s = REF_RE.sub(lambda m: self.ref(m.group(0)), s)
        return UUID_RE.sub(lambda m: self.uuid(m.group(0)), s)


def normalise_xml(body: str, norm: Normaliser) -> str:
    body = norm.text(body)
    body = XML_DT_RE.sub(lambda m: f"<dateTime.iso8601>{norm.datetime(m.group(1))}</dateTime.iso8601>", body)
    # event records: ids, timestamps and tokens are counters/clocks
    body = re.sub(r"(<member><name>id</name><value>)\d+(</value></member>)", r"\1EVENT_ID\2", body)
    body = re.sub(r"(<member><name>timestamp</name><value>)[0-9.]+(</value></member>)", r"\1EVENT_TS\2", body)
    body = re.sub(r"(<member><name>token</name><value>)[^<]+(</value></member>)", r"\1TOKEN\2", body)
    return body


def normalise_json(v, norm: Normaliser, key: str | None = None):
    if isinstance(v, dict):
        out = {norm.text(k): normalise_json(x, norm, k) for k, x in v.items()}
        # an event record's id is a counter (JSON-RPC carries it as a number)
        if {"class", "operation", "ref"} <= v.keys() and isinstance(v.get("id"), int):
            out["id"] = "EVENT_ID"
        return out
    if isinstance(v, list):
        return [normalise_json(x, norm) for x in v]
    if isinstance(v, str):
        if key == "token":
            return "TOKEN"
        if key == "id" and v.isdigit():
            return "EVENT_ID"
        if key == "timestamp":
            return "EVENT_TS"
        if DT_FORM.match(v):
            return norm.datetime(v)
        return norm.text(v)
    return v


# --------------------------------------------------------------------------
# the cases: (name, path, request template)

XML_HEAD = '<?xml version="1.0"?>'


def xml_req(method: str, *params: str) -> str:
    return (f"{XML_HEAD}<methodCall><methodName>{method}</methodName><params>"
            + "".join(f"<param>{p}</param>" for p in params) + "</params></methodCall>")


def s(v: str) -> str:
    return f"<value><string>{v}</string></value>"


XML_CASES = {
    "xml_login": xml_req("session.login_with_password", s("root"), s("{PASSWORD}"), s("2.0"), s("golden")),
    "xml_int64_domid": xml_req("VM.get_domid", s("{SESSION}"), s("{DOM0}")),
    "xml_int64_memory": xml_req("VM.get_memory_static_max", s("{SESSION}"), s("{TEMPLATE}")),
    "xml_int64_mtu": xml_req("network.get_MTU", s("{SESSION}"), s("{NET}")),
    "xml_boolean": xml_req("VM.get_is_a_template", s("{SESSION}"), s("{TEMPLATE}")),
    "xml_double": xml_req("VM.get_HVM_shadow_multiplier", s("{SESSION}"), s("{TEMPLATE}")),
    "xml_datetime_epoch": xml_req("VM.get_snapshot_time", s("{SESSION}"), s("{DOM0}")),
    "xml_datetime_live": xml_req("session.get_last_active", s("{SESSION}"), s("{SESSION}")),
    "xml_record_escaping": xml_req("network.get_record", s("{SESSION}"), s("{NET}")),
    "xml_set_of_refs": xml_req("pool.get_all", s("{SESSION}")),
    "xml_void": xml_req("network.set_name_description", s("{SESSION}"), s("{NET}"),
                        s("tab\there, unicode é ☃")),
    "xml_failure_handle_invalid": xml_req("VM.get_record", s("{SESSION}"), s("OpaqueRef:nope")),
    "xml_failure_param_count": xml_req("VM.get_domid", s("{SESSION}")),
    "xml_failure_session_invalid": xml_req("pool.get_all", s("OpaqueRef:not-a-session")),
    "xml_failure_unknown_method": xml_req("VM.no_such_message", s("{SESSION}")),
    "xml_event_from": xml_req("event.from", s("{SESSION}"),
                              "<value><array><data>" + s("network/{NET}") + "</data></array></value>",
                              s(""), "<value><double>0.0</double></value>"),
    "xml_task_result": xml_req("task.get_result", s("{SESSION}"), s("{TASK}")),
    "xml_task_status": xml_req("task.get_status", s("{SESSION}"), s("{TASK}")),
}

JSON_CASES = {
    "json2_success_int": {"jsonrpc": "2.0", "method": "VM.get_domid", "params": ["{SESSION}", "{DOM0}"], "id": 1},
    "json2_success_record": {"jsonrpc": "2.0", "method": "network.get_record", "params": ["{SESSION}", "{NET}"], "id": 2},
    "json2_success_datetime": {"jsonrpc": "2.0", "method": "VM.get_snapshot_time", "params": ["{SESSION}", "{DOM0}"], "id": 3},
    "json2_success_void": {"jsonrpc": "2.0", "method": "network.set_name_description",
                           "params": ["{SESSION}", "{NET}", "tab\there, unicode é ☃"], "id": "str-id"},
    "json2_error_handle_invalid": {"jsonrpc": "2.0", "method": "VM.get_record", "params": ["{SESSION}", "OpaqueRef:nope"], "id": 4},
    "json2_error_session_invalid": {"jsonrpc": "2.0", "method": "pool.get_all", "params": ["OpaqueRef:not-a-session"], "id": 5},
    "json2_error_unknown_method": {"jsonrpc": "2.0", "method": "VM.no_such_message", "params": ["{SESSION}"], "id": 6},
    "json2_event_from": {"jsonrpc": "2.0", "method": "event.from",
                         "params": ["{SESSION}", ["network/{NET}"], "", 0.0], "id": 7},
    "json1_success": {"method": "VM.get_is_a_template", "params": ["{SESSION}", "{TEMPLATE}"], "id": 8},
    "json1_error": {"method": "VM.get_record", "params": ["{SESSION}", "OpaqueRef:nope"], "id": 9},
}


def fill(v, env):
    if isinstance(v, str):
        return substitute(v, env)
    if isinstance(v, list):
        return [fill(x, env) for x in v]
    if isinstance(v, dict):
        return {k: fill(x, env) for k, x in v.items()}
    return v


@pytest.mark.parametrize("case", sorted(XML_CASES))
def test_xmlrpc_golden(daemon, env, case):
    request = XML_CASES[case]
    r = post(daemon.port, "/", substitute(request, env).encode())
    assert r.status == 200, r
    assert r.content_type == "text/xml", r.content_type
    got = normalise_xml(r.body.decode(), Normaliser(env))
    path = GOLDEN / f"{case}.xml"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(f"# request: POST / (Content-Type: text/xml)\n{request}\n"
                        f"# response: 200 (Content-Type: text/xml)\n{got}\n")
    assert path.exists(), f"no golden file {path}: record with XAPID_GOLDEN_UPDATE=1"
    lines = path.read_text().split("\n")
    want_req, want = lines[1], lines[3]
    assert want_req == request, f"{path.name}: the recorded request differs from the test's: re-record"
    assert got == want, f"{case}: the reply differs from {path.name}\n got: {got}\nwant: {want}"


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_jsonrpc_golden(daemon, env, case):
    request = JSON_CASES[case]
    r = post(daemon.port, "/jsonrpc", json.dumps(fill(request, env)).encode(), content_type="application/json")
    assert r.status == 200, r
    assert r.content_type == "application/json", r.content_type
    got = normalise_json(r.json(), Normaliser(env))
    path = GOLDEN / f"{case}.json"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps({"request": request, "response": got}, indent=1, ensure_ascii=False) + "\n")
    assert path.exists(), f"no golden file {path}: record with XAPID_GOLDEN_UPDATE=1"
    want = json.loads(path.read_text())
    assert want["request"] == request, f"{path.name}: the recorded request differs from the test's: re-record"
    assert got == want["response"], \
        f"{case}: the reply differs from {path.name}\n got: {json.dumps(got)}\nwant: {json.dumps(want['response'])}"
    # types are part of the contract: 1 != 1.0 != "1" != true in the comparison above
    assert json.dumps(got, sort_keys=True) == json.dumps(want["response"], sort_keys=True)
