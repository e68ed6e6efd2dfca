"""Fixtures for the Ansible suite: a fresh xapid per test module (the python suite's harness),
and a runner for `ansible-playbook` from the pinned venv (whose bin/ run.sh puts first on PATH)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

import XenAPI  # noqa: E402  (the published client, unmodified)

import xapid_harness  # noqa: E402
from xapid_harness import Daemon  # noqa: E402

PLAYBOOK_TIMEOUT = float(os.environ.get("XAPID_ANSIBLE_TIMEOUT", "300"))


def _ansible_version() -> str:
    out = subprocess.run(["ansible", "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]


def pytest_report_header(config):
    try:
        binary = xapid_harness.xapid_bin()
    except RuntimeError as e:
        binary = f"MISSING ({e})"
    return [
        f"ansible client: {_ansible_version()} | ansible package {importlib.metadata.version('ansible')}"
        f" | xenapi {importlib.metadata.version('xenapi')}",
        f"xapid under test: {binary}",
    ]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for d in list(xapid_harness.LIVE):
            rep.sections.append((f"xapid log ({d.workdir})", d.log_tail()))


@pytest.fixture(scope="module")
def daemon():
    d = Daemon()
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def xapi(daemon):
    s = XenAPI.Session(daemon.url)
    s.xenapi.login_with_password("root", daemon.password, "2.0", "xapid-ansible-tests")
    yield s.xenapi
    try:
        s.xenapi.session.logout()
    except Exception:
        pass


class Playbooks:
    """Runs tests/clients/ansible/playbooks/<name>.yml against a daemon; returns the JSON the
    playbook saved (each module task is registered with ignore_errors, so one run reports
    every step)."""

    def __init__(self, daemon: Daemon, workdir: Path):
        self.daemon = daemon
        self.workdir = workdir
        self.collections = workdir / "collections"  # empty: only the pinned `ansible` bundle counts
        self.collections.mkdir()
        self.tmp = workdir / "tmp"
        self.tmp.mkdir()

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({
            "ANSIBLE_CONFIG": str(HERE / "ansible.cfg"),
            "ANSIBLE_HOME": str(self.workdir / "home"),
            "ANSIBLE_LOCAL_TEMP": str(self.tmp),
            "ANSIBLE_REMOTE_TEMP": str(self.tmp),
            "ANSIBLE_COLLECTIONS_PATH": str(self.collections),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        for k in ("XENSERVER_HOST", "XENSERVER_USER", "XENSERVER_PASSWORD", "XENSERVER_VALIDATE_CERTS"):
            env.pop(k, None)
        return env

    def run(self, name: str, **extra) -> dict:
        out_dir = self.workdir / f"out-{name}"
        out_dir.mkdir(exist_ok=True)
        result = out_dir / f"{name}.json"
        result.unlink(missing_ok=True)
        extra_vars = {
            "xen_url": self.daemon.url,
            "xen_password": self.daemon.password,
            "out_dir": str(out_dir),
            "ansible_python_interpreter": sys.executable,
            **extra,
        }
        cmd = ["ansible-playbook", "-i", "localhost,", "-c", "local",
               "-e", json.dumps(extra_vars), str(HERE / "playbooks" / f"{name}.yml")]
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env(),
                           timeout=PLAYBOOK_TIMEOUT, cwd=self.workdir)
        log = f"$ ansible-playbook ... {name}.yml (exit {p.returncode})\n{p.stdout}\n{p.stderr}"
        print(log.replace(self.daemon.password, "<password>"))
        assert p.returncode == 0, f"ansible-playbook {name}.yml failed:\n{log[-6000:]}"
        assert result.exists(), f"{name}.yml saved no results:\n{log[-6000:]}"
        return json.loads(result.read_text())


@pytest.fixture(scope="module")
def playbooks(daemon):
    if shutil.which("ansible-playbook") is None:
        pytest.fail("ansible-playbook is not on PATH: run tests/clients/run.sh ansible")
    work = Path(tempfile.mkdtemp(prefix="xapid-ansible-", dir="/tmp"))
    try:
        yield Playbooks(daemon, work)
    finally:
        if not os.environ.get("XAPID_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
