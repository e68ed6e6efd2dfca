"""Host plugins through XenAPI.py: host.call_plugin on a daemon whose plugin directory holds
the test plugins of plugins/ (an echo plugin speaking the protocol itself, and one written
with the shipped helper dist/XenAPIPlugin.py), as plugins written for XenServer run.

The daemon reads its plugin settings from its environment (docs/plugins.md): this module
starts its own daemon with them set."""

from __future__ import annotations

import ast
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

import xapid_harness
from helpers import failure

HERE = Path(__file__).resolve().parent
TIMEOUT = 4  # XAPID_PLUGIN_TIMEOUT for this daemon, in seconds


@pytest.fixture(scope="module")
def daemon():
    d = xapid_harness.Daemon()
    plugins = d.workdir / "plugins"
    plugins.mkdir()
    for p in (HERE / "plugins").iterdir():
        shutil.copy2(p, plugins / p.name)
    extensions = d.workdir / "extensions"
    extensions.mkdir()
    (extensions / "Test.hello").write_text("#!/bin/sh\nexit 0\n")
    (extensions / "Test.hello").chmod(0o755)
    env = {
        "XAPID_PLUGIN_DIR": str(plugins),
        "XAPID_EXTENSION_DIR": str(extensions),
        "XAPID_PLUGIN_TIMEOUT": str(TIMEOUT),
        # A plugin gets only PATH unless the daemon is told to pass more on: here the
        # client's python first on PATH (it has XenAPI), the helper module, and the socket
        # the helper reaches the daemon on.
        "XAPID_PLUGIN_PASS_ENV": "PATH PYTHONPATH XAPID_SOCKET",
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(xapid_harness.REPO / "dist"),
        "XAPID_SOCKET": d.sock_path,
    }
    saved = {k: os.environ.get(k) for k in env}
    try:
        os.environ.update(env)  # the daemon inherits the harness's environment
        d.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def host(xapi):
    return xapi.host.get_all()[0]


def test_echo_plugin_echoes_its_args(xapi, host):
    args = {"a": "1", "b": "two words", "empty": "", "markup": "<&>\"'"}
    answer = xapi.host.call_plugin(host, "echo", "main", args)
    assert answer.startswith("args were: "), answer
    assert ast.literal_eval(answer[len("args were: "):]) == args
    # Any function name reaches the plugin; no arguments is an empty struct.
    assert xapi.host.call_plugin(host, "echo", "other", {}) == "args were: {}"


def test_async_call_plugin_leaves_the_answer_in_the_task(xapi, host):
    task = xapi.Async.host.call_plugin(host, "echo", "main", {"k": "v"})
    deadline = time.monotonic() + 30
    while xapi.task.get_status(task) == "pending":
        assert time.monotonic() < deadline, "the task did not finish"
        time.sleep(0.1)
    assert xapi.task.get_status(task) == "success", xapi.task.get_error_info(task)
    assert "args were: {'k': 'v'}" in xapi.task.get_result(task)
    xapi.task.destroy(task)


def test_helper_plugin_calls_back_with_the_callers_session(xapi, host):
    assert xapi.host.call_plugin(host, "helper-test", "host_uuid", {}) == xapi.host.get_uuid(host)
    assert xapi.host.call_plugin(host, "helper-test", "join", {"b": "2", "a": "1"}) == "a=1,b=2"


def test_helper_plugin_failures_reach_the_client(xapi, host):
    # A XenAPI code raised with XenAPIPlugin.Failure.
    assert failure(xapi.host.call_plugin, host, "helper-test", "refuse",
                   {"code": "HANDLE_INVALID", "p1": "VM", "p2": "OpaqueRef:none"}) == \
        ["HANDLE_INVALID", "VM", "OpaqueRef:none"]
    # A plugin's own code travels inside XENAPI_PLUGIN_FAILURE.
    assert failure(xapi.host.call_plugin, host, "helper-test", "refuse",
                   {"code": "MY_CODE", "p1": "a"}) == \
        ["XENAPI_PLUGIN_FAILURE", "MY_CODE", '["a"]', ""]
    # Any other exception.
    assert failure(xapi.host.call_plugin, host, "helper-test", "crash", {}) == \
        ["XENAPI_PLUGIN_FAILURE", "crash", "ValueError", "it went wrong"]
    # A function the plugin does not have.
    assert failure(xapi.host.call_plugin, host, "helper-test", "nope", {}) == \
        ["XENAPI_PLUGIN_FAILURE", "UNKNOWN_XENAPI_PLUGIN_FUNCTION", '["nope"]', ""]


def test_missing_plugins_and_names_outside_the_directory(xapi, host):
    for name in ["no-such-plugin", "", ".", "..", "../plugins/echo", "/bin/true"]:
        assert failure(xapi.host.call_plugin, host, name, "main", {}) == \
            ["XENAPI_MISSING_PLUGIN", name], name


def test_a_plugin_past_the_timeout_is_stopped(xapi, host):
    start = time.monotonic()
    details = failure(xapi.host.call_plugin, host, "echo", "main", {"sleep": str(TIMEOUT * 10)})
    assert details[0] == "XENAPI_PLUGIN_FAILURE"
    assert details[1].startswith("timeout"), details
    assert time.monotonic() - start < TIMEOUT * 5
    # The daemon still answers plugin calls.
    assert xapi.host.call_plugin(host, "echo", "main", {}) == "args were: {}"


def test_has_extension_says_what_the_extension_directory_holds(xapi, host):
    pool = xapi.pool.get_all()[0]
    assert xapi.host.has_extension(host, "Test.hello") is True
    assert xapi.pool.has_extension(pool, "Test.hello") is True
    assert xapi.host.has_extension(host, "Test.absent") is False
    assert xapi.pool.has_extension(pool, "Test.absent") is False
    # A name that leaves the directory names nothing in it.
    assert xapi.host.has_extension(host, "../plugins/echo") is False
