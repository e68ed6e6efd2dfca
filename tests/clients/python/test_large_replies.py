"""Large replies (get_all_records of many objects) are streamed by the daemon as they are
encoded; every client must read the same records it would read from a reply sent whole."""

import http.client
import json
import xmlrpc.client

import pytest

from helpers import template
from rawhttp import json_call, post, xml_call

# Enough VMs that VM.get_all_records is well past the daemon's streaming threshold (256 KiB)
# in both encodings (a VM record is ~2.7 kB of JSON, ~7.7 kB of XML).
CLONES = 150


@pytest.fixture(scope="module")
def many_vms(daemon):
    import XenAPI

    s = XenAPI.Session(daemon.url)
    s.xenapi.login_with_password("root", daemon.password, "1.0", "xapid-tests")
    try:
        tmpl, _ = template(s.xenapi)
        made = [s.xenapi.VM.clone(tmpl, f"large-reply-{i:03}") for i in range(CLONES)]
        yield s, made
        for ref in made:
            s.xenapi.VM.destroy(ref)
    finally:
        s.xenapi.session.logout()


def raw_http(port: int, body: bytes, path: str, content_type: str, http10: bool = False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    if http10:
        conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_xenapi_py_reads_a_streamed_reply(many_vms):
    s, made = many_vms
    records = s.xenapi.VM.get_all_records()
    assert set(made) <= set(records), "every clone is in VM.get_all_records"
    for ref in made[::37]:
        assert records[ref] == s.xenapi.VM.get_record(ref), f"{ref}: the bulk record differs from get_record"
    assert records[made[5]]["name_label"] == "large-reply-005"


def test_xml_reply_is_chunked_and_complete(daemon, many_vms):
    s, made = many_vms
    status, headers, body = raw_http(daemon.port, xml_call("VM.get_all_records", s._session), "/", "text/xml")
    assert status == 200
    assert headers.get("content-type") == "text/xml"
    assert headers.get("transfer-encoding") == "chunked", f"a large reply is streamed: {headers}"
    assert len(body) > 256 * 1024
    (value,), _ = xmlrpc.client.loads(body)
    assert value["Status"] == "Success"
    assert value["Value"] == s.xenapi.VM.get_all_records()


@pytest.mark.parametrize("version", ["2.0", None])
def test_json_reply_is_chunked_and_complete(daemon, many_vms, version):
    s, made = many_vms
    status, headers, body = raw_http(
        daemon.port, json_call("VM.get_all_records", [s._session], id="req-7", version=version), "/jsonrpc",
        "application/json")
    assert status == 200
    assert headers.get("content-type") == "application/json"
    assert headers.get("transfer-encoding") == "chunked", f"a large reply is streamed: {headers}"
    reply = json.loads(body)
    assert reply["id"] == "req-7"
    if version:
        assert reply["jsonrpc"] == "2.0" and "error" not in reply
    else:
        assert reply["error"] is None
    records = reply["result"]
    assert set(made) <= set(records)
    assert records[made[0]]["name_label"] == "large-reply-000"
    assert len(records) == len(s.xenapi.VM.get_all())


def test_http10_client_gets_the_whole_reply(daemon, many_vms):
    """An HTTP/1.0 client cannot take chunked encoding: the reply ends with the connection."""
    s, made = many_vms
    status, headers, body = raw_http(daemon.port, xml_call("VM.get_all_records", s._session), "/", "text/xml",
                                     http10=True)
    assert status == 200
    assert "chunked" not in headers.get("transfer-encoding", "")
    (value,), _ = xmlrpc.client.loads(body)
    assert set(made) <= set(value["Value"])
    assert len(body) > 256 * 1024


def test_small_replies_keep_their_length(daemon, many_vms):
    s, _ = many_vms
    r = post(daemon.port, "/", xml_call("pool.get_all", s._session))
    assert r.status == 200 and r.headers.get("content-length") == str(len(r.body)), r.headers
