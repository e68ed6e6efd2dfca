"""Malformed HTTP bodies get a clear 4xx (or a XenAPI Failure where the body parses),
and the daemon keeps answering normal calls afterwards."""

import json
import xmlrpc.client

import pytest

import rawhttp
from rawhttp import post, xml_call

BIG = 64 << 20  # 64 MiB: above any sane request cap


@pytest.fixture
def still_works(daemon, session):
    """Call after each bad request: a normal call must still succeed."""
    def check():
        proxy = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
        reply = proxy.pool.get_all(session.handle)
        assert reply.get("Status") == "Success" and len(reply["Value"]) == 1, reply
        assert len(session.xenapi.VM.get_all()) >= 1
    return check


def assert_4xx(reply, what):
    assert 400 <= reply.status < 500, f"{what}: expected a 4xx, got {reply!r}"


def assert_4xx_or_failure_xml(reply, what):
    """A 4xx, or an XML-RPC reply that is a Failure struct (or an XML-RPC fault)."""
    if 400 <= reply.status < 500:
        return
    assert reply.status == 200, f"{what}: expected a 4xx or a Failure, got {reply!r}"
    try:
        value = reply.xmlrpc()
    except xmlrpc.client.Fault:
        return
    except Exception as e:
        pytest.fail(f"{what}: 200 with an unparsable body ({e}): {reply!r}")
    assert isinstance(value, dict) and value.get("Status") == "Failure" \
        and isinstance(value.get("ErrorDescription"), list), f"{what}: not a Failure: {value!r}"


def assert_4xx_or_jsonrpc_error(reply, what):
    """A 4xx, or a JSON-RPC error reply (e.g. -32700 parse error / -32600 invalid request)."""
    if 400 <= reply.status < 500:
        return
    assert reply.status == 200, f"{what}: expected a 4xx or a JSON-RPC error, got {reply!r}"
    try:
        msg = reply.json()
    except ValueError as e:
        pytest.fail(f"{what}: 200 with a non-JSON body ({e}): {reply!r}")
    msgs = msg if isinstance(msg, list) else [msg]
    assert msgs, f"{what}: empty reply {msg!r}"
    for m in msgs:
        assert isinstance(m, dict) and m.get("error") is not None, f"{what}: not an error reply: {msg!r}"


XML_PATHS = ["/", "/RPC2", "/xmlrpc"]

TRUNCATED_XML = xml_call("pool.get_all", "OpaqueRef:x")[:-40]
GARBAGE_XML = [
    b"this is not xml at all \x00\xff\xfe",
    b"<methodCall><methodName>pool.get_all</methodName><params><param><value>",
    b"<<<>>>",
    b"",
]
WRONG_STRUCTURE_XML = [
    b'<?xml version="1.0"?><methodCall><params><param><value>x</value></param></params></methodCall>',
    b'<?xml version="1.0"?><methodCall><methodName>pool.get_all</methodName><params><param></param></params></methodCall>',
    b'<?xml version="1.0"?><methodResponse><params><param><value>x</value></param></params></methodResponse>',
    b'<?xml version="1.0"?><foo><bar/></foo>',
    b'<?xml version="1.0"?><methodCall><methodName>pool.get_all</methodName><params><param><value><int>notanint</int></value></param></params></methodCall>',
    b'<?xml version="1.0"?><methodCall><methodName>pool.get_all</methodName><params><param><value><struct><member><value>x</value></member></struct></value></param></params></methodCall>',
]


@pytest.mark.parametrize("path", XML_PATHS)
def test_truncated_xml(daemon, still_works, path):
    r = post(daemon.port, path, TRUNCATED_XML)
    assert_4xx(r, f"truncated XML-RPC to {path}")
    still_works()


@pytest.mark.parametrize("body", GARBAGE_XML, ids=["binary", "unclosed", "angles", "empty"])
def test_garbage_xml(daemon, still_works, body):
    r = post(daemon.port, "/", body)
    assert_4xx(r, f"garbage body {body[:40]!r}")
    still_works()


@pytest.mark.parametrize("body", WRONG_STRUCTURE_XML,
                         ids=["no-methodName", "param-without-value", "methodResponse",
                              "not-xmlrpc", "bad-int", "member-without-name"])
def test_wrong_structure_xml(daemon, still_works, body):
    r = post(daemon.port, "/", body)
    assert_4xx_or_failure_xml(r, f"wrong-structure XML-RPC {body[20:100]!r}")
    still_works()


@pytest.mark.parametrize("body", [
    b'{"jsonrpc":"2.0","method":"pool.get_all","params":["OpaqueRef:x"',
    b'{"jsonrpc":"2.0","method":',
    b'{',
    b'',
], ids=["cut-params", "cut-method", "brace", "empty"])
def test_truncated_json(daemon, still_works, body):
    r = post(daemon.port, "/jsonrpc", body, content_type="application/json")
    assert_4xx_or_jsonrpc_error(r, f"truncated JSON {body!r}")
    still_works()


@pytest.mark.parametrize("body", [b"42", b'"a string"', b"null", b"true", b"[1,2,3]", b"[]"],
                         ids=["number", "string", "null", "bool", "array", "empty-array"])
def test_non_object_json(daemon, still_works, body):
    r = post(daemon.port, "/jsonrpc", body, content_type="application/json")
    assert_4xx_or_jsonrpc_error(r, f"non-object JSON {body!r}")
    still_works()


@pytest.mark.parametrize("body", [
    json.dumps({"jsonrpc": "2.0", "params": [], "id": 1}),
    json.dumps({"jsonrpc": "2.0", "method": 42, "params": [], "id": 1}),
    json.dumps({"jsonrpc": "2.0", "method": "pool.get_all", "params": "notalist", "id": 1}),
], ids=["no-method", "method-not-string", "params-not-array"])
def test_wrong_structure_json(daemon, still_works, body):
    r = post(daemon.port, "/jsonrpc", body, content_type="application/json")
    assert_4xx_or_jsonrpc_error(r, f"wrong-structure JSON {body!r}")
    still_works()


@pytest.mark.parametrize("path,ctype,chunked", [
    ("/", "text/xml", False),
    ("/jsonrpc", "application/json", False),
    ("/", "text/xml", True),
], ids=["xml-content-length", "json-content-length", "xml-chunked"])
def test_body_over_cap(daemon, still_works, path, ctype, chunked):
    reply, note = rawhttp.post_huge(daemon.port, path, BIG, content_type=ctype, chunked=chunked)
    assert reply is not None, f"no HTTP reply to a {BIG}-byte body ({note})"
    assert 400 <= reply.status < 500, f"expected 413 (or a 4xx) for a {BIG}-byte body, got {reply!r} ({note})"
    if reply.status != 413:
        print(f"note: oversized body got {reply.status}, not 413")
    still_works()


def test_get_is_not_a_call(daemon, still_works):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.request("GET", "/jsonrpc")
    r = conn.getresponse()
    r.read()
    conn.close()
    assert 400 <= r.status < 500, r.status
    still_works()
