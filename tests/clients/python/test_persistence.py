"""State survives a restart on the same state dir; sessions do not."""

import secrets
import signal
import xmlrpc.client

from conftest import login, safe_logout
from helpers import (control_domain, network_create_record, raw_failure, raw_value,
                     template, vif_create_record, vm_create_record)


def test_restart_keeps_objects_drops_sessions(new_daemon, model):
    d = new_daemon().start()
    s = login(d.url, d.password)
    x = s.xenapi
    _, trec = template(x)
    net = x.network.create(network_create_record(model, "persisted-net"))
    vm = x.VM.create(vm_create_record(model, trec, "persisted-vm"))
    vif = x.VIF.create(vif_create_record(model, vm, net))
    x.VM.add_to_other_config(vm, "persist", "yes")
    x.VM.add_tags(vm, "kept")
    net_uuid, vm_uuid, vif_uuid = x.network.get_uuid(net), x.VM.get_uuid(vm), x.VIF.get_uuid(vif)
    dom0_uuid = control_domain(x)[1]["uuid"]
    pool_uuid = x.pool.get_uuid(x.pool.get_all()[0])
    host_uuid = x.host.get_uuid(x.host.get_all()[0])
    n_templates = sum(1 for v in x.VM.get_all_records().values() if v["is_a_template"])
    old_handle = s.handle

    rc = d.stop(signal.SIGTERM)
    assert rc == 0, f"xapid exited with {rc} on SIGTERM\n{d.log_tail()}"
    d.start(port=d.port)  # same state dir, password file and port (clients keep their URL)

    proxy = xmlrpc.client.ServerProxy(d.url, allow_none=True)
    assert raw_failure(proxy.VM.get_all(old_handle)) == ["SESSION_INVALID", old_handle]

    s2 = login(d.url, d.password)
    try:
        y = s2.xenapi
        net2 = y.network.get_by_uuid(net_uuid)
        vm2 = y.VM.get_by_uuid(vm_uuid)
        vif2 = y.VIF.get_by_uuid(vif_uuid)
        assert y.network.get_name_label(net2) == "persisted-net"
        rec = y.VM.get_record(vm2)
        assert rec["name_label"] == "persisted-vm"
        assert rec["other_config"].get("persist") == "yes", rec["other_config"]
        assert "kept" in rec["tags"], rec["tags"]
        assert rec["VIFs"] == [vif2]
        assert y.network.get_VIFs(net2) == [vif2]
        assert control_domain(y)[1]["uuid"] == dom0_uuid
        assert y.pool.get_uuid(y.pool.get_all()[0]) == pool_uuid
        assert y.host.get_uuid(y.host.get_all()[0]) == host_uuid
        assert len(y.pool.get_all()) == 1 and len(y.host.get_all()) == 1, "restart must not re-seed"
        assert sum(1 for v in y.VM.get_all_records().values() if v["is_a_template"]) == n_templates
        assert raw_value(proxy.VM.get_all(s2.handle))
    finally:
        safe_logout(s2)

    # XenAPI.py transparently logs in again when its session went stale.
    assert s.handle == old_handle
    assert len(x.pool.get_all()) == 1
    assert s.handle != old_handle
    safe_logout(s)


def assert_login_refused(d, password: str) -> None:
    """root with `password` gets SESSION_AUTHENTICATION_FAILED (and no session)."""
    proxy = xmlrpc.client.ServerProxy(d.url, allow_none=True)
    reply = proxy.session.login_with_password("root", password, "2.0", "xapid-tests-persistence")
    assert raw_failure(reply)[0] == "SESSION_AUTHENTICATION_FAILED", reply


def test_password_file_only_used_on_first_start(new_daemon):
    d = new_daemon().start()
    first = d.password
    d.stop()
    d.password_file.write_text("a-different-password\n")
    d.start()
    # The password stored on first start still works; the file's new content is ignored.
    s = login(d.url, first)
    safe_logout(s)
    assert_login_refused(d, "a-different-password")


def test_changed_password_survives_restart(new_daemon):
    d = new_daemon().start()
    old = d.password
    new = "changed-" + secrets.token_hex(8)
    s = login(d.url, old)
    s.xenapi.session.change_password(old, new)
    safe_logout(s)

    # Acknowledged, so it must survive even a crash: SIGKILL, then the same state dir (and the
    # same password file, which holds the old password and must not bring it back).
    d.kill()
    d.start(port=d.port)
    s = login(d.url, new)
    assert len(s.xenapi.pool.get_all()) == 1
    safe_logout(s)
    assert_login_refused(d, old)
