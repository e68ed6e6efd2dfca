"""Reading and setting fields; lookups; handle/uuid errors."""

import pytest

from helpers import (OTHER_INSTALL_MEDIA, control_domain, failure, made_up_ref,
                     made_up_uuid, template)


@pytest.fixture
def vm(xapi):
    """A template to modify (its name is restored afterwards)."""
    ref, rec = template(xapi)
    yield ref
    xapi.VM.set_name_label(ref, rec["name_label"])


def test_set_and_get_name_label(xapi, vm):
    xapi.VM.set_name_label(vm, "renamed by the client tests ✓")
    assert xapi.VM.get_name_label(vm) == "renamed by the client tests ✓"
    assert xapi.VM.get_record(vm)["name_label"] == "renamed by the client tests ✓"
    xapi.VM.set_name_description(vm, "a <description> & such")
    assert xapi.VM.get_name_description(vm) == "a <description> & such"


def test_other_config_add_duplicate_remove(xapi, vm):
    key = "xapid-test-key"
    xapi.VM.add_to_other_config(vm, key, "v1")
    assert xapi.VM.get_other_config(vm)[key] == "v1"
    details = failure(xapi.VM.add_to_other_config, vm, key, "v2")
    # The reference names the object by its ref here.
    assert details == ["MAP_DUPLICATE_KEY", "VM", "other_config", vm, key], details
    assert xapi.VM.get_other_config(vm)[key] == "v1", "a refused add must not change the map"
    xapi.VM.remove_from_other_config(vm, key)
    assert key not in xapi.VM.get_other_config(vm)
    # Removing a missing key is not an error (xen-api's setFieldEntry relies on it).
    xapi.VM.remove_from_other_config(vm, key)


def test_set_other_config_whole_map(xapi, vm):
    before = xapi.VM.get_other_config(vm)
    try:
        xapi.VM.set_other_config(vm, {"a": "1", "b": "two"})
        assert xapi.VM.get_other_config(vm) == {"a": "1", "b": "two"}
    finally:
        xapi.VM.set_other_config(vm, before)


def test_tags(xapi, vm):
    before = xapi.VM.get_tags(vm)
    xapi.VM.add_tags(vm, "blue")
    xapi.VM.add_tags(vm, "green")
    xapi.VM.add_tags(vm, "blue")  # a set: adding again is a no-op
    tags = xapi.VM.get_tags(vm)
    assert sorted(tags) == sorted(set(tags)), f"duplicate tags: {tags}"
    assert {"blue", "green"} <= set(tags), tags
    xapi.VM.remove_tags(vm, "blue")
    assert "blue" not in xapi.VM.get_tags(vm)
    xapi.VM.remove_tags(vm, "green")
    assert sorted(xapi.VM.get_tags(vm)) == sorted(before)


def test_handle_invalid(xapi):
    ref = made_up_ref()
    assert failure(xapi.VM.get_name_label, ref) == ["HANDLE_INVALID", "VM", ref]
    assert failure(xapi.VM.get_record, ref) == ["HANDLE_INVALID", "VM", ref]
    assert failure(xapi.VM.set_name_label, ref, "x") == ["HANDLE_INVALID", "VM", ref]
    assert failure(xapi.network.get_record, ref) == ["HANDLE_INVALID", "network", ref]


def test_handle_of_wrong_class(xapi):
    # A real ref of another class is no VM.
    host = xapi.host.get_all()[0]
    assert failure(xapi.VM.get_record, host) == ["HANDLE_INVALID", "VM", host]


def test_uuid_invalid(xapi):
    u = made_up_uuid()
    assert failure(xapi.VM.get_by_uuid, u) == ["UUID_INVALID", "VM", u]
    assert failure(xapi.host.get_by_uuid, u) == ["UUID_INVALID", "host", u]


def test_get_by_uuid(xapi):
    ref, dom0 = control_domain(xapi)
    assert xapi.VM.get_by_uuid(dom0["uuid"]) == ref
    assert xapi.VM.get_uuid(ref) == dom0["uuid"]


def test_get_by_name_label(xapi):
    refs = xapi.VM.get_by_name_label(OTHER_INSTALL_MEDIA)
    assert len(refs) == 1, refs
    assert xapi.VM.get_name_label(refs[0]) == OTHER_INSTALL_MEDIA
    assert xapi.VM.get_by_name_label("no VM is called this " + made_up_uuid()) == []


def test_get_all_matches_get_all_records(xapi):
    assert sorted(xapi.VM.get_all()) == sorted(xapi.VM.get_all_records())
    ref = xapi.VM.get_all()[0]
    assert xapi.VM.get_record(ref) == xapi.VM.get_all_records()[ref]
