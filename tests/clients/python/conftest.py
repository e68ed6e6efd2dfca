"""pytest fixtures: a fresh xapid per test module, XenAPI sessions, the datamodel."""

from __future__ import annotations

import importlib.metadata
import sys
import xmlrpc.client
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import XenAPI  # noqa: E402  (the published client, unmodified)

import xapid_harness  # noqa: E402
from xapid_harness import Daemon  # noqa: E402
from xapi_model import Model  # noqa: E402

ORIGINATOR = "xapid-client-tests"


def pytest_report_header(config):
    try:
        binary = xapid_harness.xapid_bin()
    except RuntimeError as e:
        binary = f"MISSING ({e})"
    return [
        f"xenapi client: {importlib.metadata.version('xenapi')} ({XenAPI.__file__})",
        f"xapid under test: {binary}",
    ]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for d in list(xapid_harness.LIVE):
            rep.sections.append((f"xapid log ({d.workdir})", d.log_tail()))


def login(url: str, password: str, transport=None) -> XenAPI.Session:
    s = XenAPI.Session(url, transport=transport)
    s.xenapi.login_with_password("root", password, "2.0", ORIGINATOR)
    return s


def safe_logout(s: XenAPI.Session) -> None:
    try:
        if s._session is not None:
            s.xenapi.session.logout()
    except Exception:
        pass


@pytest.fixture(scope="session")
def model() -> Model:
    return Model()


@pytest.fixture(scope="module")
def daemon():
    d = Daemon()
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def new_daemon():
    """Factory for daemons owned by one test (e.g. restart tests)."""
    made: list[Daemon] = []

    def make() -> Daemon:
        d = Daemon()
        made.append(d)
        return d

    yield make
    for d in made:
        d.cleanup()


@pytest.fixture
def session(daemon):
    s = login(daemon.url, daemon.password)
    yield s
    safe_logout(s)


@pytest.fixture
def xapi(session):
    return session.xenapi


@pytest.fixture
def raw(daemon):
    """A plain XML-RPC proxy: returns XenAPI's {Status, Value|ErrorDescription} structs as-is."""
    return xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
