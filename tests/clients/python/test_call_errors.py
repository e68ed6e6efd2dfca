"""Badly formed calls get XenAPI failures and leave the session working."""

import xmlrpc.client

from helpers import failure, raw_failure, raw_value, template

# Codes a server may reasonably use for a parameter of the wrong XML-RPC type.
TYPE_ERROR_CODES = {"FIELD_TYPE_ERROR", "XMLRPC_UNMARSHAL_FAILURE", "JSONRPC_UNMARSHAL_FAILURE",
                    "INVALID_VALUE", "MESSAGE_PARAMETER_TYPE_MISMATCH"}


def assert_still_works(xapi, ref):
    assert isinstance(xapi.VM.get_name_label(ref), str)
    assert len(xapi.pool.get_all()) == 1


def test_int_where_string_required(xapi):
    ref, rec = template(xapi)
    details = failure(xapi.VM.set_name_label, ref, 12345)  # <int>, not <string>
    assert details[0] in TYPE_ERROR_CODES, details
    assert xapi.VM.get_name_label(ref) == rec["name_label"], "a refused set must not change the field"
    assert_still_works(xapi, ref)


def test_string_where_bool_required(xapi):
    ref, rec = template(xapi)
    details = failure(xapi.VM.set_is_a_template, ref, "yes please")
    assert details[0] in TYPE_ERROR_CODES, details
    assert xapi.VM.get_is_a_template(ref) is True
    assert_still_works(xapi, ref)


def test_struct_where_ref_required(xapi):
    details = failure(xapi.VM.get_record, {"not": "a ref"})
    assert details[0] in TYPE_ERROR_CODES | {"HANDLE_INVALID"}, details
    assert len(xapi.pool.get_all()) == 1


def test_string_where_map_required(xapi):
    ref, _ = template(xapi)
    details = failure(xapi.VM.set_other_config, ref, "not a map")
    assert details[0] in TYPE_ERROR_CODES, details
    assert_still_works(xapi, ref)


def test_parameter_count_mismatch(xapi, session):
    ref, _ = template(xapi)
    # XAPI counts neither the session nor parameters with defaults in what it expects, and not
    # the session in what it received: VM.set_name_label takes (session, vm, value).
    details = failure(xapi.VM.set_name_label, ref)
    assert details == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.set_name_label", "2", "1"], details
    details = failure(xapi.VM.get_name_label, ref, "extra")
    assert details == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_name_label", "1", "2"], details
    assert_still_works(xapi, ref)


def test_unknown_method(xapi, daemon, session):
    details = failure(xapi.VM.frobnicate, "x")
    assert details == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"], details
    details = failure(xapi.NoSuchClass.get_all)
    assert details == ["MESSAGE_METHOD_UNKNOWN", "NoSuchClass.get_all"], details
    # RO fields have no setter.
    vm = xapi.VM.get_all()[0]
    details = failure(xapi.VM.set_power_state, vm, "Running")
    assert details == ["MESSAGE_METHOD_UNKNOWN", "VM.set_power_state"], details
    # Without a session too.
    proxy = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
    assert raw_failure(getattr(proxy, "nonsense")()) == ["MESSAGE_METHOD_UNKNOWN", "nonsense"]
    assert len(raw_value(proxy.pool.get_all(session.handle))) == 1


def test_not_implemented_is_a_failure(xapi):
    # Lifecycle is not built yet; whatever it answers must be a proper XenAPI reply.
    # (VM.start on a template would fail in XAPI too; a control domain is already running.)
    ref, _ = template(xapi)
    details = failure(xapi.VM.start, ref, False, False)
    assert details[0] in {"NOT_IMPLEMENTED", "VM_IS_TEMPLATE", "OPERATION_NOT_ALLOWED"}, details
    assert len(xapi.pool.get_all()) == 1
