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


def openssl_pair(d, name: str, *key: str, digest: str = "-sha256") -> tuple[str, str]:
    """A self-signed certificate and its private key made by openssl, as an admin makes one."""
    import subprocess

    cert, pkey = d / f"{name}-cert.pem", d / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", *(key or ("-newkey", "rsa:2048")), "-nodes",
                    "-keyout", str(pkey), "-out", str(cert), "-days", "30", digest,
                    "-subj", f"/CN={name}.example"], check=True, capture_output=True)
    return cert.read_text(), pkey.read_text()


def der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


def test_install_and_reset_server_certificate_without_a_restart(tls_daemon, tmp_path):
    """host.install_server_certificate with the reference's refusals, served from the next
    handshake on; host.reset_server_certificate back to a self-signed one, kept across a
    restart."""
    port = tls_daemon.tls_port
    first = server_cert(port)
    s = https_login(tls_daemon)
    x = s.xenapi
    host = x.pool.get_master(x.pool.get_all()[0])
    cert, key = openssl_pair(tmp_path, "a")
    other_cert, other_key = openssl_pair(tmp_path, "b")
    ec_cert, ec_key = openssl_pair(tmp_path, "ec", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
    small_cert, small_key = openssl_pair(tmp_path, "small", "-newkey", "rsa:1024")
    sha1_cert, sha1_key = openssl_pair(tmp_path, "sha1", digest="-sha1")

    def refused(c, k, chain=""):
        with pytest.raises(XenAPI.Failure) as e:
            x.host.install_server_certificate(host, c, k, chain)
        return e.value.details

    assert refused(cert, "not a key") == ["SERVER_CERTIFICATE_KEY_INVALID"]
    assert refused("not a certificate", key) == ["SERVER_CERTIFICATE_INVALID"]
    assert refused(cert, other_key) == ["SERVER_CERTIFICATE_KEY_MISMATCH"]
    assert refused(ec_cert, ec_key) == ["SERVER_CERTIFICATE_KEY_ALGORITHM_NOT_SUPPORTED", "p256"]
    assert refused(small_cert, small_key) == ["SERVER_CERTIFICATE_KEY_RSA_LENGTH_NOT_SUPPORTED", "1024"]
    assert refused(sha1_cert, sha1_key) == ["SERVER_CERTIFICATE_SIGNATURE_NOT_SUPPORTED"]
    assert refused(cert, key, "not a chain") == ["SERVER_CERTIFICATE_CHAIN_INVALID"]
    assert server_cert(port) == first, "a refused certificate changed what is served"

    x.host.install_server_certificate(host, cert, key, other_cert)
    # The next handshake gets it, no restart; the session made before goes on.
    assert der(server_cert(port)) == der(cert)
    assert der(x.host.get_server_certificate(host)) == der(cert)
    assert x.pool.get_all()
    # A client that trusts exactly the installed certificate now verifies the daemon.
    ctx = ssl.create_default_context(cadata=cert)
    ctx.check_hostname = False
    import xmlrpc.client

    proxy = xmlrpc.client.ServerProxy(f"https://127.0.0.1:{port}", context=ctx)
    r = proxy.session.login_with_password("root", tls_daemon.password, "2.0", ORIGINATOR)
    assert r["Status"] == "Success", r
    proxy.session.logout(r["Value"])
    # The chain given is served after the leaf.
    with open(tls_daemon.state_dir / "tls" / "xapid-cert.pem") as f:
        on_disk = f.read()
    assert on_disk.count("BEGIN CERTIFICATE") == 2

    x.host.reset_server_certificate(host)
    reset = server_cert(port)
    assert der(reset) not in (der(cert), der(first))
    safe_logout(s)
    tls_daemon.stop()
    tls_daemon.start(port=tls_daemon.port)
    wait_accepting(port)
    assert der(server_cert(port)) == der(reset), "the reset certificate did not outlive a restart"
