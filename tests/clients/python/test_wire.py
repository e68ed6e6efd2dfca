"""What goes over the wire, byte for byte, for XML-RPC and JSON-RPC 1.0/2.0."""

import re

import pytest

from rawhttp import json_call, post, xml_call

DATETIME_RE = re.compile(r"<dateTime\.iso8601>(\d{8}T\d{2}:\d{2}:\d{2}Z)</dateTime\.iso8601>")


@pytest.fixture
def host(xapi):
    return xapi.host.get_all()[0]


@pytest.fixture
def dom0(xapi):
    return [r for r, v in xapi.VM.get_all_records().items() if v["is_control_domain"]][0]


# -- XML-RPC ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/RPC2", "/xmlrpc"])
def test_xml_endpoints(daemon, session, path):
    r = post(daemon.port, path, xml_call("pool.get_all", session.handle))
    assert r.status == 200, r
    v = r.xmlrpc()
    assert v["Status"] == "Success" and len(v["Value"]) == 1, v


def test_xml_reply_compact_and_typed(daemon, session, host):
    r = post(daemon.port, "/", xml_call("host.get_API_version_major", session.handle, host))
    assert r.status == 200, r
    assert r.content_type == "text/xml", f"Content-Type must be exactly text/xml (xen-api compares it): {r.content_type!r}"
    text = r.body.decode()
    body = re.sub(r"^<\?xml[^>]*\?>", "", text).strip()
    assert not re.search(r">\s+<", body), f"whitespace between elements: {text!r}"
    assert body.startswith("<methodResponse><params><param><value><struct>"), text
    # ints are <value>N</value> (a string), not <int>/<i4>/<i8>
    m = re.search(r"<member><name>Value</name><value>(\d+)</value></member>", body)
    assert m, f"Value is not an untyped <value>N</value>: {text!r}"
    assert "<int>" not in body and "<i4>" not in body and "<i8>" not in body, text
    assert re.search(r"<member><name>Status</name><value>Success</value></member>", body), text


def test_xml_datetime(daemon, session, dom0):
    r = post(daemon.port, "/", xml_call("VM.get_snapshot_time", session.handle, dom0))
    text = r.body.decode()
    m = DATETIME_RE.search(text)
    assert m, f"no <dateTime.iso8601>YYYYMMDDTHH:MM:SSZ</dateTime.iso8601> in {text!r}"
    assert m.group(1) == "19700101T00:00:00Z", m.group(1)


def test_xml_datetime_in_record(daemon, session, xapi):
    # A live datetime: the session's last_active.
    r = post(daemon.port, "/", xml_call("session.get_last_active", session.handle, session.handle))
    text = r.body.decode()
    m = DATETIME_RE.search(text)
    assert m, f"no dateTime.iso8601 in {text!r}"
    assert not m.group(1).startswith("1970"), f"last_active of a live session is {m.group(1)}"


def test_xml_failure_shape(daemon, session):
    r = post(daemon.port, "/", xml_call("VM.get_record", session.handle, "OpaqueRef:nope"))
    assert r.status == 200, r
    v = r.xmlrpc()
    assert v == {"Status": "Failure", "ErrorDescription": ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]}, v


def test_xml_list_methods_bare_array(daemon):
    r = post(daemon.port, "/", xml_call("system.listMethods"))
    assert r.status == 200, r
    body = r.body.decode()
    assert "<methodResponse><params><param><value><array><data>" in body, body[:300]
    v = r.xmlrpc()
    assert isinstance(v, list), f"system.listMethods must return a bare array: {v!r:.200}"
    assert "session.login_with_password" in v
    assert "VM.get_all_records" in v and "pool.get_all_records" in v
    assert all(isinstance(m, str) for m in v)


def test_xml_string_escaping_roundtrip(xapi):
    ref = xapi.VM.get_by_name_label("Other install media")[0]
    old = xapi.VM.get_name_description(ref)
    tricky = "a<b>&c\"d'e ]]> \u00e9\u4e2d\U0001F600"
    try:
        xapi.VM.set_name_description(ref, tricky)
        assert xapi.VM.get_name_description(ref) == tricky
    finally:
        xapi.VM.set_name_description(ref, old)


# -- JSON-RPC --------------------------------------------------------------------------

def test_jsonrpc2_success_shape(daemon):
    r = post(daemon.port, "/jsonrpc",
             json_call("session.login_with_password", ["root", daemon.password, "2.0", "wire-test"], id=7),
             content_type="application/json")
    assert r.status == 200, r
    assert r.content_type == "application/json", \
        f"Content-Type must be exactly application/json (xen-api compares it): {r.content_type!r}"
    m = r.json()
    assert set(m) == {"jsonrpc", "result", "id"}, f"2.0 success must have no error key: {m}"
    assert m["jsonrpc"] == "2.0" and m["id"] == 7
    assert isinstance(m["result"], str) and m["result"].startswith("OpaqueRef:"), m


def test_jsonrpc2_error_shape(daemon):
    r = post(daemon.port, "/jsonrpc",
             json_call("session.login_with_password", ["root", "wrong"], id="abc"),
             content_type="application/json")
    assert r.status == 200, r
    m = r.json()
    print("JSON-RPC 2.0 error reply:", m)
    assert set(m) == {"jsonrpc", "error", "id"}, f"2.0 error must have no result key: {m}"
    assert m["jsonrpc"] == "2.0" and m["id"] == "abc"
    e = m["error"]
    assert isinstance(e, dict) and set(e) == {"code", "message", "data"}, e
    assert isinstance(e["code"], int) and not isinstance(e["code"], bool), e
    assert e["message"] == "SESSION_AUTHENTICATION_FAILED", e
    assert isinstance(e["data"], list) and all(isinstance(x, str) for x in e["data"]), e


def test_jsonrpc2_session_call(daemon, session, host):
    r = post(daemon.port, "/jsonrpc", json_call("host.get_API_version_major", [session.handle, host]),
             content_type="application/json")
    m = r.json()
    assert "error" not in m, m
    print("JSON-RPC host.get_API_version_major result:", repr(m["result"]))
    assert isinstance(m["result"], int) and m["result"] >= 2, \
        f"ints travel as JSON numbers over JSON-RPC: {m['result']!r}"
    r = post(daemon.port, "/jsonrpc", json_call("VM.get_record", [session.handle, "OpaqueRef:nope"]),
             content_type="application/json")
    m = r.json()
    assert m["error"]["message"] == "HANDLE_INVALID" and m["error"]["data"] == ["VM", "OpaqueRef:nope"], m


def test_jsonrpc1_shapes(daemon):
    ok = post(daemon.port, "/jsonrpc",
              json_call("session.login_with_password", ["root", daemon.password], id=3, version=None),
              content_type="application/json").json()
    assert set(ok) == {"result", "error", "id"}, ok
    assert ok["error"] is None and ok["id"] == 3 and ok["result"].startswith("OpaqueRef:"), ok
    bad = post(daemon.port, "/jsonrpc",
               json_call("session.login_with_password", ["root", "wrong"], id=4, version=None),
               content_type="application/json").json()
    print("JSON-RPC 1.0 error reply:", bad)
    assert set(bad) == {"result", "error", "id"}, bad
    assert bad["result"] is None and bad["id"] == 4 and bad["error"] is not None, bad
    err = bad["error"]
    code = err[0] if isinstance(err, list) else err.get("message") if isinstance(err, dict) else None
    assert code == "SESSION_AUTHENTICATION_FAILED", bad


def test_jsonrpc_list_methods(daemon):
    m = post(daemon.port, "/jsonrpc", json_call("system.listMethods", []),
             content_type="application/json").json()
    assert isinstance(m.get("result"), list) and "VM.get_all_records" in m["result"], str(m)[:300]


@pytest.mark.parametrize("body,code", [
    (b'{"jsonrpc":"2.0","method":', -32700),                                   # not JSON: Parse error
    (b'42', -32600),                                                           # JSON, not a request
    (b'{"jsonrpc":"2.0","params":[],"id":1}', -32600),                         # no method
    (b'{"jsonrpc":"2.0","method":"pool.get_all","params":"x","id":1}', -32600),  # params not an array
], ids=["parse-error", "not-an-object", "no-method", "params-not-array"])
def test_jsonrpc2_protocol_error_codes(daemon, body, code):
    # JSON-RPC 2.0 section 5.1: -32700 only when the body is not JSON; -32600 for JSON that
    # is not a valid request object. (Only checked when the daemon answers with an error object.)
    r = post(daemon.port, "/jsonrpc", body, content_type="application/json")
    assert 400 <= r.status < 500 or r.status == 200, r
    try:
        m = r.json()
    except ValueError:
        return  # a plain 4xx: fine (test_raw_negative covers it)
    assert isinstance(m, dict) and isinstance(m.get("error"), dict), m
    assert m["error"].get("code") == code, f"{body!r}: expected JSON-RPC code {code}, got {m}"
    assert m.get("id") in (None, 1) and m.get("jsonrpc") == "2.0", m
