"""The pool database backup (issue 22): `GET /pool/xmldbdump`, the "pool metadata" backup Xen
Orchestra takes, read here by Python's own XML parser; and its restore, `PUT /pool/xmldbdump`,
checked with `dry_run=true` and then applied (the daemon restarts on the backup's database),
with the reference's refusals for a backup of another schema version, one naming a network
device this host lacks, and damaged uploads, none of which changes anything."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import XenAPI

from conftest import login, safe_logout
from test_backup import http_get, http_put, wait_task


def unprotect(s: str) -> str:
    """The reference's white-space protection of database values, undone."""
    out, i = [], 0
    table = {".": " ", "t": "\t", "n": "\n", "r": "\r", "%": "%", "_": "  "}
    while i < len(s):
        if s[i] == "%" and i + 1 < len(s) and s[i + 1] in table:
            out.append(table[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def rows(root: ET.Element, table: str) -> list[ET.Element]:
    tables = [t for t in root.findall("table") if t.get("name") == table]
    assert len(tables) == 1, f"{len(tables)} tables named {table}"
    return tables[0].findall("row")


def put_backup(d, s, x, body: bytes, dry_run: bool) -> dict:
    task = x.task.create("restore", "")
    status, reply = http_put(d, s, f"/pool/xmldbdump?dry_run={'true' if dry_run else 'false'}&task_id={task}", body)
    rec = wait_task(x, task, timeout=30)
    rec["http_status"] = status
    rec["http_body"] = reply
    return rec


def test_backup_and_restore_of_the_pool_database(new_daemon):
    d = new_daemon().start()
    s = login(d.url, d.password)
    x = s.xenapi
    host = x.host.get_all()[0]
    host_uuid = x.host.get_uuid(host)
    template = x.VM.get_by_name_label("Other install media")[0]
    vm = x.VM.clone(template, "kept VM")
    x.VM.set_is_a_template(vm, False)
    x.VM.set_name_description(vm, "two  spaces, a tab\tand 100% of a 'quote'")
    x.VM.add_to_other_config(vm, "backup-test", "a (b) 'c'")
    vm_uuid = x.VM.get_uuid(vm)

    # ---- the backup, as Xen Orchestra takes it (with a task), read by a third-party parser
    task = x.task.create("Export pool metadata", "")
    backup = http_get(d, s, f"/pool/xmldbdump?task_id={task}")
    assert wait_task(x, task)["status"] == "success"
    root = ET.fromstring(backup)
    assert root.tag == "database"
    manifest = {p.get("key"): p.get("value") for p in root.find("manifest").findall("pair")}
    assert manifest["schema_major_vsn"] == "5" and manifest["schema_minor_vsn"] == "775", manifest
    assert int(manifest["generation_count"]) > 0
    vm_rows = [r for r in rows(root, "VM") if r.get("uuid") == vm_uuid]
    assert len(vm_rows) == 1
    row = vm_rows[0]
    assert row.get("ref") == vm
    assert unprotect(row.get("name__label")) == "kept VM"
    assert unprotect(row.get("name__description")) == "two  spaces, a tab\tand 100% of a 'quote'"
    assert int(row.get("memory__static_max")) == int(x.VM.get_memory_static_max(vm))
    assert row.get("VCPUs__max") == x.VM.get_VCPUs_max(vm)
    assert row.get("power_state") == "Halted" and row.get("is_a_template") == "false"
    # Maps are s-expressions, their white space protected like any value's.
    assert r"('backup-test'%.'a%.(b)%.\'c\'')" in row.get("other_config"), row.get("other_config")
    assert r"('backup-test' 'a (b) \'c\'')" in unprotect(row.get("other_config"))
    hosts = rows(root, "host")
    assert [h.get("uuid") for h in hosts] == [host_uuid]
    assert hosts[0].get("API_version__major") == "2"
    assert rows(root, "session") == [], "sessions are not in the backup"
    assert not [t for t in root.findall("table") if t.get("name") in ("message", "event")]

    # ---- changes after the backup
    x.VM.set_name_label(vm, "renamed after the backup")
    extra = x.VM.clone(template, "made after the backup")
    x.VM.set_is_a_template(extra, False)

    def unchanged():
        assert x.VM.get_name_label(vm) == "renamed after the backup"
        assert x.VM.get_name_label(extra) == "made after the backup"

    # ---- a dry run checks and changes nothing
    rec = put_backup(d, s, x, backup, dry_run=True)
    assert rec["status"] == "success" and rec["http_status"] == 200, rec
    unchanged()

    # ---- refusals, each leaving everything as it was
    other_version = backup.replace(b'key="schema_minor_vsn" value="775"', b'key="schema_minor_vsn" value="42"')
    rec = put_backup(d, s, x, other_version, dry_run=False)
    assert rec["status"] == "failure" and rec["error_info"] == ["RESTORE_INCOMPATIBLE_VERSION"], rec
    physical = [p for p in x.PIF.get_all() if x.PIF.get_physical(p)]
    assert physical, "the simulated host has physical interfaces"
    device = x.PIF.get_device(physical[0])
    renamed = backup.replace(f'device="{device}"'.encode(), b'device="nosuchdev9"')
    assert renamed != backup
    # The backup's physical PIF names a device this host lacks (checked before the management one).
    rec = put_backup(d, s, x, renamed, dry_run=True)
    assert rec["status"] == "failure", rec
    assert rec["error_info"] == ["RESTORE_TARGET_MISSING_DEVICE", "nosuchdev9"], rec
    for damaged in (backup[: len(backup) // 2], b"<database><table name='VM'><row/></table></database>",
                    backup.replace(b'memory__static_max="', b'memory__static_max="lots', 1), b""):
        rec = put_backup(d, s, x, damaged, dry_run=False)
        assert rec["status"] == "failure" and rec["error_info"][0] == "INTERNAL_ERROR", rec
        assert "not valid" in rec["error_info"][1], rec
    unchanged()
    assert not (d.state_dir / "restore-db.xml").exists()

    # ---- the restore: the daemon restarts on the backup's database
    rec = put_backup(d, s, x, backup, dry_run=False)
    assert rec["status"] == "success" and rec["http_status"] == 200, rec
    safe_logout(s)
    deadline = time.monotonic() + 60
    restored = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            s2 = login(d.url, d.password)
        except (OSError, XenAPI.Failure):
            continue
        try:
            if s2.xenapi.VM.get_name_label(vm) == "kept VM":
                restored = s2
                break
        except (OSError, XenAPI.Failure):
            pass
        safe_logout(s2)
    assert restored is not None, f"the restored database did not come up\n{d.log_tail()}"
    x = restored.xenapi
    try:
        assert x.VM.get_uuid(vm) == vm_uuid
        assert x.VM.get_name_description(vm) == "two  spaces, a tab\tand 100% of a 'quote'"
        assert x.VM.get_other_config(vm)["backup-test"] == "a (b) 'c'"
        try:
            x.VM.get_record(extra)
            raise AssertionError("a VM made after the backup is still there")
        except XenAPI.Failure as e:
            assert e.details[0] == "HANDLE_INVALID", e.details
        assert [x.host.get_uuid(h) for h in x.host.get_all()] == [host_uuid]
        assert len(x.host.get_all()) == 1 and x.pool.get_master(x.pool.get_all()[0]) == host
        assert not (d.state_dir / "restore-db.xml").exists(), "the staged backup is removed once applied"
        # Still usable: a VM is made and started on the restored database.
        new = x.VM.clone(template, "after the restore")
        x.VM.set_is_a_template(new, False)
        assert x.VM.get_power_state(new) == "Halted"
    finally:
        safe_logout(restored)
