"""Start and stop a real xapid for the client tests.

Each daemon gets its own temp dir (no underscore in its path: XenAPI.py's
UDSTransport turns the URL host's "_" into "/" to find the socket):

    <tmp>/xapid-<pid>-<n>-<hex>/
        state/           --state-dir
        xapi.sock        --socket
        root-password    --root-password-file
        xapid.log        the daemon's stdout+stderr (appended over restarts)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import itertools
import re
from pathlib import Path

REPO = Path(os.environ.get("XAPID_REPO") or Path(__file__).resolve().parents[3])
START_TIMEOUT = float(os.environ.get("XAPID_START_TIMEOUT", "30"))

# Daemons whose logs are attached to a failing test's report (see conftest.py).
LIVE: list["Daemon"] = []
_counter = itertools.count(1)


def xapid_bin() -> str:
    b = os.environ.get("XAPID_BIN") or str(REPO / "target" / "release" / "xapid")
    if not os.access(b, os.X_OK):
        raise RuntimeError(
            f"xapid binary {b} not found/executable: run tests/clients/run.sh "
            "(it builds it) or set XAPID_BIN")
    return b


def _tmp_base() -> str:
    for cand in (os.environ.get("XAPID_TEST_TMP"), os.environ.get("TMPDIR"), "/tmp"):
        if cand and "_" not in cand and os.path.isdir(cand):
            return cand
    return "/tmp"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonError(RuntimeError):
    pass


class Daemon:
    def __init__(self, binary: str | None = None, password: str | None = None,
                 extra_args: list[str] | None = None):
        self.binary = binary or xapid_bin()
        self.extra_args = list(extra_args or [])  # e.g. ["--sim-latency-ms", "50"]
        self.password = password or ("pw-" + secrets.token_hex(8))
        self.workdir = Path(_tmp_base()) / f"xapid-{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"
        assert "_" not in str(self.workdir), self.workdir
        self.workdir.mkdir(mode=0o700)
        self.state_dir = self.workdir / "state"
        self.state_dir.mkdir()
        self.sock_path = str(self.workdir / "xapi.sock")
        assert len(self.sock_path) < 100, self.sock_path
        self.password_file = self.workdir / "root-password"
        self.password_file.write_text(self.password + "\n")
        self.password_file.chmod(0o600)
        self.log_path = self.workdir / "xapid.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.starts = 0

    # -- URLs --------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def uds_url(self) -> str:
        # XenAPI.UDSHTTPConnection connects to host.replace("_", "/").
        return "http://" + self.sock_path.replace("/", "_") + "/"

    # -- lifecycle ---------------------------------------------------------
    def start(self, port: int | None = None) -> "Daemon":
        assert self.proc is None, "already running"
        self.port = port or free_port()
        self.starts += 1
        cmd = [self.binary,
               "--listen", f"127.0.0.1:{self.port}",
               "--socket", self.sock_path,
               "--state-dir", str(self.state_dir),
               "--backend", "simulator",
               "--root-password-file", str(self.password_file),
               *self.extra_args]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        if self not in LIVE:
            LIVE.append(self)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                raise DaemonError(f"xapid exited with status {rc} during startup\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise DaemonError(f"xapid did not accept on 127.0.0.1:{self.port} within "
                                  f"{START_TIMEOUT}s\n{self.log_tail()}")
            time.sleep(0.05)
        # The unix socket is normally bound before (or with) the TCP port; give it a moment.
        sock_deadline = time.monotonic() + 5
        while not os.path.exists(self.sock_path) and time.monotonic() < sock_deadline:
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the daemon and wait; SIGKILL after `timeout`. Returns its exit status."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                self._append_log(f"=== harness: no exit {timeout}s after signal {sig}; SIGKILL\n")
                p.kill()
                p.wait()
        self.proc = None
        return p.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL, timeout=5)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        self.stop()
        if self in LIVE:
            LIVE.remove(self)
        if not os.environ.get("XAPID_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- diagnostics -------------------------------------------------------
    def _append_log(self, text: str) -> None:
        try:
            with open(self.log_path, "a") as f:
                f.write(text)
        except OSError:
            pass

    def log_tail(self, lines: int = 60) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError as e:
            return f"(no log: {e})"
        text = re.sub(r"\x1b\[[0-9;]*m", "", data.decode("utf-8", "replace"))  # drop colours
        tail = text.splitlines()[-lines:]
        state = "running" if self.running() else "not running"
        return (f"--- last {len(tail)} lines of {self.log_path} (daemon {state}, port {self.port}) ---\n"
                + "\n".join(tail))
