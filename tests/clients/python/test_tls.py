"""XenAPI.py over HTTPS (`--tls-listen`): the self-signed certificate xapid makes on first
start, kept across restarts; verification that really happens; idle keep-alive connections."""

import socket
import ssl
import time

import pytest
import XenAPI

from conftest import ORIGINATOR, safe_logout
from xapid_harness import Daemon, free_port


def wait_accepting(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def server_cert(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port))


@pytest.fixture
def tls_daemon():
    port = free_port()
    d = Daemon(extra_args=["--tls-listen", f"127.0.0.1:{port}"])
    d.tls_port = port
    try:
        d.start()
        wait_accepting(port)
        yield d
    finally:
        d.cleanup()


def https_login(d) -> XenAPI.Session:
    s = XenAPI.Session(f"https://127.0.0.1:{d.tls_port}", ignore_ssl=True)
    s.xenapi.login_with_password("root", d.password, "2.0", ORIGINATOR)
    return s


def test_xenapi_py_over_https_with_ignore_ssl(tls_daemon):
    s = https_login(tls_daemon)
    try:
        x = s.xenapi
        pool = x.pool.get_all()[0]
        host = x.pool.get_master(pool)
        assert x.host.get_record(host)["uuid"] == x.host.get_uuid(host)
        vms = x.VM.get_all_records()
        assert any(r["is_control_domain"] for r in vms.values())
        # The same objects as over plain HTTP: one daemon, two listeners.
        plain = XenAPI.Session(tls_daemon.url)
        plain.xenapi.login_with_password("root", tls_daemon.password, "2.0", ORIGINATOR)
        try:
            assert sorted(plain.xenapi.VM.get_all()) == sorted(vms)
        finally:
            safe_logout(plain)
    finally:
        safe_logout(s)


def test_certificate_is_verified_when_not_ignored(tls_daemon):
    # A client that verifies rejects the self-signed certificate: it is real TLS.
    s = XenAPI.Session(f"https://127.0.0.1:{tls_daemon.tls_port}")
    with pytest.raises(ssl.SSLCertVerificationError):
        s.xenapi.login_with_password("root", tls_daemon.password, "2.0", ORIGINATOR)
    # ... and accepts it once it trusts that certificate.
    ctx = ssl.create_default_context(cadata=server_cert(tls_daemon.tls_port))
    ctx.check_hostname = False
    import xmlrpc.client

    proxy = xmlrpc.client.ServerProxy(f"https://127.0.0.1:{tls_daemon.tls_port}", context=ctx)
    r = proxy.session.login_with_password("root", tls_daemon.password, "2.0", ORIGINATOR)
    assert r["Status"] == "Success", r
    proxy.session.logout(r["Value"])


def test_self_signed_certificate_is_made_once_and_kept(tls_daemon):
    first = server_cert(tls_daemon.tls_port)
    tls_dir = tls_daemon.state_dir / "tls"
    assert tls_dir.is_dir() and any(tls_dir.iterdir()), "the certificate lives in <state-dir>/tls/"
    tls_daemon.stop()
    tls_daemon.start(port=tls_daemon.port)
    wait_accepting(tls_daemon.tls_port)
    assert server_cert(tls_daemon.tls_port) == first


def test_an_idle_https_session_keeps_working(tls_daemon):
    # XenAPI.py keeps one connection; a server that drops idle connections makes the next
    # call over TLS fail with an unclean EOF, which Python's xmlrpc does not retry.
    s = https_login(tls_daemon)
    try:
        x = s.xenapi
        x.pool.get_all()
        time.sleep(7)
        assert x.pool.get_all()
    finally:
        safe_logout(s)
