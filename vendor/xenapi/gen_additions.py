#!/usr/bin/env python3
"""Generate additions.json: API classes, fields and messages newer than
datamodel.json.

The explicit facts below (class flags, fields, custom messages, roles, errors)
were transcribed from xapi's OCaml datamodel (see PROVENANCE.md). The implicit
messages are derived here with the same rules the published rendering
(datamodel.json) follows, so the output has exactly its class shape:

  per class, in this order before the final reversal that the rendering
  applies to every class's message list:
    get_record, get_by_uuid                    (classes stored in the database)
    create, destroy                            (classes with a generated ctor/dtor)
    get_by_name_label                          (classes with a name_label field)
    get_<f>                                    (every field)
    setters of RW fields, by type:
      T set          -> set_<f>, add_<f>, remove_<f>
                        (none for a C ref set unless both ends of its relation
                         are sets)
      (K -> V) map   -> set_<f>, add_to_<f>, remove_from_<f>
      anything else  -> set_<f>
    the class's own (non-hidden) messages, in declaration order
    get_all, get_all_records                   (classes exposing get_all)

Hidden messages (not in the docs) are left out; a class left with no fields and
no messages is left out too, as the rendering does (this drops Diagnostics,
whose four messages are all hidden). The one exception is CALLED_HIDDEN: hidden
messages that the reference serves all the same and that clients call; they
are kept.

Messages added to an existing class without a new field (NEW_MESSAGES) are
listed under "messages", one entry per class, in the rendering's (reversed)
order.

Usage: gen_additions.py [OUTPUT_DIR]   (default: the directory of this script)
Python 3 standard library only. Output: indent=1, trailing newline.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# --- roles (decreasing privilege; "X or more" lists as xapi expands them) ---
ROLES = ["pool-admin", "pool-operator", "vm-power-admin", "vm-admin",
         "vm-operator", "client-cert", "read-only"]


def roles_gte(role):
    return ROLES[:ROLES.index(role) + 1]


R_POOL_ADMIN = roles_gte("pool-admin")
R_POOL_OP = roles_gte("pool-operator")
R_VM_ADMIN = roles_gte("vm-admin")
R_ALL = roles_gte("read-only")
# Only the local superuser (and the pool secret): no role grants it.
R_LOCAL_ROOT_ONLY = []

SESSION = {"name": "session_id", "type": "session ref"}


# --- type helpers ---------------------------------------------------------
def split_map(ty):
    """'(K -> V) map' -> (K, V); None for any other type."""
    if not (ty.startswith("(") and ty.endswith(") map")):
        return None
    inner = ty[1:-len(") map")]
    depth = 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and inner.startswith(" -> ", i):
            return inner[:i], inner[i + 4:]
    raise ValueError("bad map type: %r" % ty)


def set_elem(ty):
    """'T set' -> T; None for any other type (maps included)."""
    if ty.endswith(" set") and split_map(ty) is None:
        return ty[:-len(" set")]
    return None


def enums_of_type(ty):
    """Names of the enums a type mentions, in order of appearance."""
    parts = ty.replace("(", " ").replace(")", " ").split()
    return [parts[i + 1] for i, w in enumerate(parts[:-1]) if w == "enum"]


# --- implicit messages ----------------------------------------------------
def msg(name, params, result, roles, implicit, errors=()):
    return {"name": name, "implicit": implicit,
            "params": [SESSION] + [{"name": n, "type": t} for n, t in params],
            "result": result, "errors": list(errors),
            "roles": None if roles is None else list(roles)}


def field_messages(cls_name, fld, many_to_many):
    """Implicit get/set/add/remove messages of one field, in xapi's order
    (getter first, then the setters); the caller reverses the class list."""
    self_p = ("self", cls_name + " ref")
    name, ty = fld["name"], fld["type"]
    getter = [msg("get_" + name, [self_p], ty, fld["reader_roles"], True)]
    if fld["qualifier"] != "RW":
        return getter, []
    w = fld["writer_roles"]
    elem, kv = set_elem(ty), split_map(ty)
    if elem is not None:
        if elem.endswith(" ref") and not many_to_many:
            return getter, []
        return getter, [
            msg("set_" + name, [self_p, ("value", ty)], "void", w, True),
            msg("add_" + name, [self_p, ("value", elem)], "void", w, True),
            msg("remove_" + name, [self_p, ("value", elem)], "void", w, True),
        ]
    if kv is not None:
        k, v = kv
        return getter, [
            msg("set_" + name, [self_p, ("value", ty)], "void", w, True),
            msg("add_to_" + name, [self_p, ("key", k), ("value", v)], "void",
                w, True),
            msg("remove_from_" + name, [self_p, ("key", k)], "void", w, True),
        ]
    return getter, [msg("set_" + name, [self_p, ("value", ty)], "void", w,
                        True)]


def class_messages(c, many_to_many_fields=()):
    """Full client-visible message list of a class, in the rendering's order."""
    n = c["name"]
    ref, rec = n + " ref", n + " record"
    implicit_roles = c.get("implicit_roles", R_ALL)
    out = []
    if c["in_db"]:
        out.append(msg("get_record", [("self", ref)], rec, implicit_roles,
                       True))
        out.append(msg("get_by_uuid", [("uuid", "string")], ref,
                       implicit_roles, True))
        if c["ctor"]:
            out.append(msg("create", [("args", rec)], ref, c["default_roles"],
                           True))
            out.append(msg("destroy", [("self", ref)], "void",
                           c["default_roles"], True))
        if any(f["name"] == "name_label" for f in c["fields"]):
            out.append(msg("get_by_name_label", [("label", "string")],
                           ref + " set", implicit_roles, True))
        getters, setters = [], []
        for f in c["fields"]:
            g, s = field_messages(n, f, f["name"] in many_to_many_fields)
            getters += g
            setters += s
        out += getters + setters
    out += [m for m in c["messages"] if not m.get("hidden")]
    if c["in_db"] and c["get_all"]:
        out.append(msg("get_all", [], ref + " set", implicit_roles, True))
        out.append(msg("get_all_records", [],
                       "(%s -> %s) map" % (ref, rec), implicit_roles, True))
    out.reverse()
    return [{k: v for k, v in m.items() if k != "hidden"} for m in out]


# --- transcribed facts ----------------------------------------------------
def F(name, ty, qualifier, default=None, reader_roles=None,
      writer_roles=None):
    f = {"name": name, "type": ty, "qualifier": qualifier}
    if default is not None:
        f["default"] = default
    f["reader_roles"] = reader_roles
    f["writer_roles"] = writer_roles
    return f


def M(name, params, result="void", errors=(), roles=None, hidden=False):
    m = msg(name, params, result, roles, False, errors)
    if hidden:
        m["hidden"] = True
    return m


def uid():
    return F("uuid", "string", "RO/runtime", writer_roles=R_POOL_ADMIN)


def names():
    return [F("name_label", "string", "RW", '""'),
            F("name_description", "string", "RW", '""')]


def CLASS(name, default_roles, in_db, ctor, get_all, fields, messages):
    # Unset field roles fall back to the class defaults: everyone reads,
    # writers default to the class's default message roles.
    for f in fields:
        if f["reader_roles"] is None:
            f["reader_roles"] = R_ALL
        if f["writer_roles"] is None:
            f["writer_roles"] = default_roles
    for m in messages:
        if m["roles"] is None:
            m["roles"] = list(default_roles)
    return {"name": name, "default_roles": default_roles, "in_db": in_db,
            "ctor": ctor, "get_all": get_all, "fields": fields,
            "messages": messages}


# ocaml/idl/datamodel_vm_group.ml
VM_GROUP = CLASS(
    "VM_group", R_VM_ADMIN, in_db=True, ctor=True, get_all=True,
    fields=[uid()] + names() + [
        F("placement", "enum placement_policy", "RO/constructor", "normal"),
        F("VMs", "VM ref set", "RO/runtime"),
    ],
    messages=[])

# ocaml/idl/datamodel_host_driver.ml
HOST_DRIVER = CLASS(
    "Host_driver", R_POOL_ADMIN, in_db=True, ctor=False, get_all=True,
    fields=[
        uid(),
        F("host", "host ref", "RO/constructor", "Null"),
        F("name", "string", "RO/runtime"),
        F("friendly_name", "string", "RO/runtime"),
        F("variants", "Driver_variant ref set", "RO/runtime"),
        F("active_variant", "Driver_variant ref", "RO/runtime"),
        F("selected_variant", "Driver_variant ref", "RO/runtime"),
        F("type", "string", "RO/runtime"),
        F("description", "string", "RO/runtime"),
        F("info", "string", "RO/runtime"),
    ],
    messages=[
        M("select", [("self", "Host_driver ref"),
                                    ("variant", "Driver_variant ref")],
          roles=R_POOL_ADMIN),
        M("deselect", [("self", "Host_driver ref")],
          roles=R_POOL_ADMIN),
        M("rescan", [("host", "host ref")],
          roles=R_POOL_ADMIN),
    ])

# ocaml/idl/datamodel_driver_variant.ml
DRIVER_VARIANT = CLASS(
    "Driver_variant", R_POOL_ADMIN, in_db=True, ctor=False, get_all=True,
    fields=[
        uid(),
        F("name", "string", "RO/runtime"),
        F("driver", "Host_driver ref", "RO/runtime"),
        F("version", "string", "RO/runtime"),
        F("hardware_present", "bool", "RO/runtime"),
        F("priority", "float", "RO/runtime"),
        F("status", "string", "RO/runtime"),
    ],
    messages=[
        M("select", [("self", "Driver_variant ref")],
          roles=R_POOL_ADMIN),
    ])

# ocaml/idl/datamodel_diagnostics.ml (not stored in the database; every
# message is hidden from the docs, so the class drops out of the output)
DIAGNOSTICS = CLASS(
    "Diagnostics", R_POOL_OP, in_db=False, ctor=False, get_all=False,
    fields=[],
    messages=[
        M("gc_compact", [("host", "host ref")],
          roles=R_POOL_OP, hidden=True),
        M("gc_stats", [("host", "host ref")],
          "(string -> string) map", roles=R_POOL_OP, hidden=True),
        M("db_stats", [], "(string -> string) map",
          roles=R_POOL_OP, hidden=True),
        M("network_stats",
          [("host", "host ref"), ("params", "(string -> string) map")],
          "string set set", roles=R_POOL_OP, hidden=True),
    ])

# ocaml/idl/datamodel_caller.ml
CALLER = CLASS(
    "Caller", R_POOL_ADMIN, in_db=True, ctor=True, get_all=True,
    fields=[uid()] + names() + [
        F("user_agent", "string", "RO/constructor", '""'),
        F("client_ip", "string", "RO/constructor", '""'),
        F("last_access", "datetime", "RO/runtime", "19700101T00:00:00Z"),
        F("groups", "string set", "RO/runtime", "{}"),
        F("rate_limit", "Rate_limit ref", "RO/runtime", "OpaqueRef:NULL"),
        F("auto_registered", "bool", "RO/runtime", "false"),
    ],
    messages=[
        M("add_group", [("self", "Caller ref"), ("group", "string")],
          roles=R_POOL_OP),
        M("remove_group",
          [("self", "Caller ref"), ("group", "string")], roles=R_POOL_OP),
        M("query_token_usage", [("self", "Caller ref")], "float",
          roles=R_POOL_OP),
        M("query_call_count", [("self", "Caller ref")], "int",
          roles=R_POOL_OP),
        M("query_group_token_usage", [("group", "string")], "float",
          roles=R_POOL_OP),
        M("query_group_call_count", [("group", "string")], "int",
          roles=R_POOL_OP),
        M("query_all_usage", [], "string set set", roles=R_POOL_OP),
    ])

# ocaml/idl/datamodel_rate_limit.ml
RATE_LIMIT = CLASS(
    "Rate_limit", R_POOL_ADMIN, in_db=True, ctor=True, get_all=True,
    fields=[uid()] + names() + [
        F("callers", "Caller ref set", "RO/runtime"),
        F("burst_size", "float", "RO/constructor", "0."),
        F("fill_rate", "float", "RO/constructor", "0."),
    ],
    messages=[
        M("add_caller",
          [("self", "Rate_limit ref"), ("caller", "Caller ref")],
          roles=R_POOL_ADMIN),
        M("remove_caller",
          [("self", "Rate_limit ref"), ("caller", "Caller ref")],
          roles=R_POOL_ADMIN),
        M("set_burst_size",
          [("self", "Rate_limit ref"), ("value", "float")],
          roles=R_POOL_ADMIN),
        M("set_fill_rate",
          [("self", "Rate_limit ref"), ("value", "float")],
          roles=R_POOL_ADMIN),
    ])

NEW_CLASSES = [VM_GROUP, HOST_DRIVER, DRIVER_VARIANT, DIAGNOSTICS, CALLER,
               RATE_LIMIT]

# Fields added to existing classes that bind to the new classes, with the
# messages that came with them. ocaml/idl/datamodel_vm.ml
NEW_FIELDS = [
    {"class": "VM",
     "field": F("groups", "VM_group ref set", "RO/runtime",
                reader_roles=R_ALL, writer_roles=R_VM_ADMIN),
     "messages": [
         M("set_groups",
           [("self", "VM ref"), ("value", "VM_group ref set")],
           errors=["OPERATION_NOT_ALLOWED"], roles=R_VM_ADMIN),
     ]},
]

# Messages added to existing classes, with no field of their own.
# ocaml/idl/datamodel_vm.ml, ocaml/idl/datamodel_pool.ml,
# ocaml/idl/datamodel_vtpm.ml
NEW_MESSAGES = [
    {"class": "VM",
     "messages": [
         M("set_uefi_mode",
           [("self", "VM ref"), ("mode", "enum vm_uefi_mode")], "string",
           roles=R_POOL_ADMIN),
         M("get_secureboot_readiness", [("self", "VM ref")],
           "enum vm_secureboot_readiness", roles=R_POOL_ADMIN),
     ]},
    {"class": "pool",
     "messages": [
         M("get_guest_secureboot_readiness", [("self", "pool ref")],
           "enum pool_guest_secureboot_readiness", roles=R_POOL_OP),
     ]},
    {"class": "VTPM",
     "messages": [
         M("get_contents", [("self", "VTPM ref")], "string",
           roles=R_LOCAL_ROOT_ONLY, hidden=True),
         M("set_contents",
           [("self", "VTPM ref"), ("contents", "string")],
           roles=R_LOCAL_ROOT_ONLY, hidden=True),
     ]},
]

# Hidden from the reference's docs, but served by it and called by clients
# (VTPM.get_contents and set_contents carry a vTPM's state across export and
# import): kept in the output.
CALLED_HIDDEN = {("VTPM", "get_contents"), ("VTPM", "set_contents")}

# Bound field pairs of the new classes (ocaml/idl/datamodel.ml,
# all_relations). The output lists only those relations.json lacks.
NEW_RELATIONS = [
    [["VM", "groups"], ["VM_group", "VMs"]],
    [["Driver_variant", "driver"], ["Host_driver", "variants"]],
    [["Caller", "rate_limit"], ["Rate_limit", "callers"]],
]


# --- rendering ------------------------------------------------------------
def public_field(f):
    return {k: f[k] for k in ("name", "type", "qualifier", "default")
            if k in f}


def class_enums(fields, messages):
    names = []
    for ty in [f["type"] for f in fields] + [
            t for m in messages
            for t in [m["result"]] + [p["type"] for p in m["params"]]]:
        for n in enums_of_type(ty):
            if n not in names:
                names.append(n)
    return names


def build(enum_values, relations_all):
    field_types = {}
    for c in NEW_CLASSES:
        for f in c["fields"]:
            field_types[(c["name"], f["name"])] = f["type"]
    for nf in NEW_FIELDS:
        field_types[(nf["class"], nf["field"]["name"])] = nf["field"]["type"]

    def is_many_to_many(cls_name, fname):
        for a, b in relations_all:
            for x, y in ((a, b), (b, a)):
                if tuple(x) == (cls_name, fname):
                    t1 = field_types.get(tuple(x), "")
                    t2 = field_types.get(tuple(y), "")
                    return (set_elem(t1) is not None
                            and set_elem(t2) is not None)
        return False

    classes = []
    for c in NEW_CLASSES:
        m2m = [f["name"] for f in c["fields"]
               if is_many_to_many(c["name"], f["name"])]
        messages = class_messages(c, m2m)
        if not c["fields"] and not messages:
            continue
        enums = class_enums(c["fields"], messages)
        classes.append({
            "name": c["name"],
            "fields": [public_field(f) for f in c["fields"]],
            "messages": messages,
            "enums": [{"name": n, "values": enum_values[n]} for n in enums],
        })

    fields = []
    for nf in NEW_FIELDS:
        f = nf["field"]
        getter, setters = field_messages(
            nf["class"], f, is_many_to_many(nf["class"], f["name"]))
        own = [{k: v for k, v in m.items() if k != "hidden"}
               for m in nf["messages"] if not m.get("hidden")]
        ms = list(reversed(getter + setters + own))
        fields.append({"class": nf["class"], "field": public_field(f),
                       "messages": ms})
    messages = []
    for nm in NEW_MESSAGES:
        kept = [{k: v for k, v in m.items() if k != "hidden"}
                for m in nm["messages"]
                if not m.get("hidden")
                or (nm["class"], m["name"]) in CALLED_HIDDEN]
        if kept:
            messages.append({"class": nm["class"],
                             "messages": list(reversed(kept))})
    return {"classes": classes, "fields": fields, "messages": messages}


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else HERE
    with open(os.path.join(HERE, "relations.json")) as f:
        published = json.load(f)
    # enum values come from the generated enums.json (seed 000); regenerate
    # it from the seed rather than trusting a possibly stale checked-in copy
    sys.path.insert(0, HERE)
    sys.dont_write_bytecode = True
    import gen_enums
    with open(gen_enums.SEED, encoding="utf-8") as f:
        enum_values = gen_enums.parse(f.read())

    def key(rel):
        return tuple(sorted(tuple(end) for end in rel))

    have = {key(r) for r in published}
    new_rel = [r for r in NEW_RELATIONS if key(r) not in have]
    out = build(enum_values, published + new_rel)
    out["relations"] = new_rel
    with open(os.path.join(outdir, "additions.json"), "w",
              encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
