"""Logging in and out with XenAPI.py, over TCP and over the unix socket."""

import os
import xmlrpc.client

import pytest

import XenAPI

from conftest import ORIGINATOR, login
from helpers import failure, made_up_ref, raw_failure, raw_value


def test_login_tcp_and_logout(daemon):
    s = XenAPI.Session(daemon.url)
    s.xenapi.login_with_password("root", daemon.password, "2.0", ORIGINATOR)
    handle = s.handle
    assert isinstance(handle, str) and handle.startswith("OpaqueRef:"), handle
    pools = s.xenapi.pool.get_all()
    assert len(pools) == 1, pools
    s.xenapi.session.logout()
    assert s.handle is None
    # The handle is dead after logout.
    proxy = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
    assert raw_failure(proxy.pool.get_all(handle)) == ["SESSION_INVALID", handle]


def test_login_two_params(daemon):
    # Old clients (and xen-api) call session.login_with_password(user, password) only.
    s = XenAPI.Session(daemon.url)
    s.xenapi.login_with_password("root", daemon.password)
    try:
        assert s.handle.startswith("OpaqueRef:")
        assert len(s.xenapi.host.get_all()) == 1
    finally:
        s.xenapi.session.logout()


def test_login_wrong_password(daemon):
    s = XenAPI.Session(daemon.url)
    details = failure(s.xenapi.login_with_password, "root", daemon.password + "-wrong", "2.0", ORIGINATOR)
    assert details[0] == "SESSION_AUTHENTICATION_FAILED", details


def test_login_unknown_user(daemon):
    s = XenAPI.Session(daemon.url)
    details = failure(s.xenapi.login_with_password, "nobody", daemon.password, "2.0", ORIGINATOR)
    assert details[0] == "SESSION_AUTHENTICATION_FAILED", details


def test_bad_session_handle(daemon):
    proxy = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
    bogus = made_up_ref()
    assert raw_failure(proxy.VM.get_all(bogus)) == ["SESSION_INVALID", bogus]
    assert raw_failure(proxy.VM.get_all_records("not-even-a-ref")) == ["SESSION_INVALID", "not-even-a-ref"]


def test_session_record(xapi, session):
    me = session.handle
    assert xapi.session.get_this_host(me) in xapi.host.get_all()
    user = xapi.session.get_this_user(me)
    assert isinstance(user, str)
    assert xapi.session.get_is_local_superuser(me) is True
    assert xapi.session.get_originator(me) == ORIGINATOR


def test_login_unix_socket(daemon):
    assert os.path.exists(daemon.sock_path), f"no unix socket at {daemon.sock_path}"
    # XenAPI.xapi_local() is hard-wired to /var/lib/xcp/xapi; the same UDSTransport finds
    # our socket through the URL host ("_" stands for "/").
    s = XenAPI.Session(daemon.uds_url, transport=XenAPI.UDSTransport())
    s.xenapi.login_with_password("root", daemon.password, "2.0", ORIGINATOR)
    try:
        assert s.handle.startswith("OpaqueRef:")
        assert len(s.xenapi.pool.get_all()) == 1
        # A session made over the socket works over TCP too (one daemon, one session table).
        proxy = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
        assert len(raw_value(proxy.pool.get_all(s.handle))) == 1
    finally:
        s.xenapi.session.logout()


def test_unix_socket_root_peer_any_password(daemon):
    if os.geteuid() != 0:
        import pytest
        why = "needs a uid-0 test process (peer-credential login)"
        if os.environ.get("XAPID_REQUIRE_ROOT"):
            pytest.fail(why + " and XAPID_REQUIRE_ROOT is set")
        pytest.skip(why + " (set XAPID_REQUIRE_ROOT=1 to make this a failure)")
    s = XenAPI.Session(daemon.uds_url, transport=XenAPI.UDSTransport())
    s.xenapi.login_with_password("root", "definitely-not-the-password", "2.0", ORIGINATOR)
    try:
        assert s.handle.startswith("OpaqueRef:")
        assert len(s.xenapi.VM.get_all()) >= 1
    finally:
        s.xenapi.session.logout()


def test_api_version_property(session):
    # XenAPI.Session.API_version: pool.get_master + host.get_API_version_{major,minor}.
    major, minor = session.API_version.split(".")
    assert int(major) >= 2 and int(minor) >= 0, session.API_version


def test_many_sessions_of_one_originator_stay_valid(daemon):
    """Tools open many sessions under one originator (a backup job per VM, a thread pool).
    The reference limits sessions per originator to 500 (xapi_globs.max_sessions_per_originator)
    and only its periodic GC removes the least recently active ones beyond that: 80 sessions
    opened one after the other must all stay usable."""
    raw = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
    handles = []
    try:
        for _ in range(80):
            handles.append(raw_value(raw.session.login_with_password("root", daemon.password, "2.0",
                                                                     "xapid-many-sessions")))
        dead = [h for h in handles if raw.pool.get_all(h).get("Status") != "Success"]
        assert not dead, f"{len(dead)} of {len(handles)} sessions of one originator were destroyed: " \
                         f"{raw.pool.get_all(dead[0])}"
    finally:
        for h in handles:
            raw.session.logout(h)
