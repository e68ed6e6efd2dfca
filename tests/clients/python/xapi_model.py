"""The vendored XenAPI datamodel (vendor/xenapi/datamodel.json + optional additions.json)
and a checker for values as the python XML-RPC client decodes them."""

from __future__ import annotations

import json
import re
import xmlrpc.client
from functools import cached_property
from pathlib import Path

from xapid_harness import REPO

INT_RE = re.compile(r"^-?[0-9]+$")


class Model:
    def __init__(self, vendor_dir: Path | None = None):
        vendor = vendor_dir or (REPO / "vendor" / "xenapi")
        self.classes: list[dict] = json.loads((vendor / "datamodel.json").read_text())
        self.sources = [str(vendor / "datamodel.json")]
        add_path = vendor / "additions.json"
        if add_path.exists():
            self.sources.append(str(add_path))
            self._apply_additions(json.loads(add_path.read_text()))
        self.by_name = {c["name"]: c for c in self.classes}
        self.extra_enums: dict[str, list[str]] = {}
        enums_path = vendor / "enums.json"  # {enum name: [values]}, if present
        if enums_path.exists():
            self.sources.append(str(enums_path))
            self.extra_enums = json.loads(enums_path.read_text())

    def _apply_additions(self, add: dict) -> None:
        by_name = {c["name"]: c for c in self.classes}
        for c in add.get("classes", []):
            c = {"fields": [], "messages": [], "enums": [], **c}
            if c["name"] in by_name:
                old = by_name[c["name"]]
                old["fields"] += [f for f in c["fields"] if f["name"] not in {x["name"] for x in old["fields"]}]
                old["messages"] += [m for m in c["messages"] if m["name"] not in {x["name"] for x in old["messages"]}]
                old["enums"] += c["enums"]
            else:
                self.classes.append(c)
                by_name[c["name"]] = c
        for entry in add.get("fields", []):
            cls = by_name[entry["class"]]
            f = entry["field"]
            if f["name"] not in {x["name"] for x in cls["fields"]}:
                cls["fields"].append(f)
            for m in entry.get("messages", []):  # the field's accessors
                if m["name"] not in {x["name"] for x in cls["messages"]}:
                    cls["messages"].append(m)
        for entry in add.get("messages", []):
            cls = by_name[entry["class"]]
            m = entry.get("message") or entry.get("msg")
            if m and m["name"] not in {x["name"] for x in cls["messages"]}:
                cls["messages"].append(m)
        for entry in add.get("enums", []):
            if "class" in entry and ("enum" in entry):
                by_name[entry["class"]]["enums"].append(entry["enum"])

    # -- queries -----------------------------------------------------------
    def field_names(self, cls: str) -> list[str]:
        return [f["name"] for f in self.by_name[cls]["fields"]]

    def fields(self, cls: str) -> dict[str, dict]:
        return {f["name"]: f for f in self.by_name[cls]["fields"]}

    def has_message(self, cls: str, msg: str) -> bool:
        return any(m["name"] == msg for m in self.by_name[cls]["messages"])

    def classes_with(self, msg: str) -> list[str]:
        return [c["name"] for c in self.classes if self.has_message(c["name"], msg)]

    def create_required(self, cls: str) -> list[str]:
        """Fields a `<cls>.create` record must carry: RW or RO/constructor without a default."""
        return [f["name"] for f in self.by_name[cls]["fields"]
                if f["qualifier"] in ("RW", "RO/constructor") and f.get("default") is None]

    def create_allowed(self, cls: str) -> list[str]:
        return [f["name"] for f in self.by_name[cls]["fields"]
                if f["qualifier"] in ("RW", "RO/constructor")]

    @cached_property
    def enums(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for c in self.classes:
            for e in c.get("enums", []):
                out.setdefault(e["name"], set()).update(e["values"])
        for name, values in self.extra_enums.items():
            out.setdefault(name, set()).update(values)
        return out

    # -- value checking (XML-RPC as decoded by xmlrpc.client) ---------------
    def check_value(self, ty: str, v, path: str, errors: list[str]) -> None:
        """Append to `errors` every way `v` does not look like XAPI's XML-RPC encoding of `ty`."""
        ty = ty.strip()

        def bad(why: str):
            errors.append(f"{path}: {why} (type {ty!r}, got {v!r:.120})")

        if ty.startswith("(") and ty.endswith(") map"):
            inner = ty[1:-len(") map")]
            k_ty, v_ty = _split_arrow(inner)
            if not isinstance(v, dict):
                return bad("not a struct")
            for k, x in v.items():
                # XML-RPC struct keys are always strings: int keys travel as decimal strings.
                if k_ty == "int" and not INT_RE.match(str(k)):
                    bad(f"map key {k!r} is not a decimal int")
                self.check_value(v_ty, x, f"{path}[{k!r}]", errors)
            return
        if ty.endswith(" set"):
            if not isinstance(v, list):
                return bad("not an array")
            for i, x in enumerate(v):
                self.check_value(ty[:-4], x, f"{path}[{i}]", errors)
            return
        if ty.endswith(" record"):
            if not isinstance(v, dict):
                bad("not a struct")
            return
        if ty.endswith(" ref"):
            if not (isinstance(v, str) and v.startswith("OpaqueRef:")):
                bad("not an OpaqueRef string")
            return
        if ty.startswith("enum "):
            name = ty[5:]
            if not isinstance(v, str):
                return bad("enum not a string")
            values = self.enums.get(name)
            if values and v not in values:
                bad(f"not a value of enum {name} {sorted(values)}")
            return
        if ty == "string":
            if not isinstance(v, str):
                bad("not a string")
        elif ty == "int":
            # XAPI sends ints as <value>N</value> (i.e. strings), never <int>/<i4>/<i8>.
            if isinstance(v, bool) or not isinstance(v, str) or not INT_RE.match(v):
                bad("int must travel as a decimal string")
        elif ty == "float":
            if not isinstance(v, float):
                bad("not a <double>")
        elif ty == "bool":
            if not isinstance(v, bool):
                bad("not a <boolean>")
        elif ty == "datetime":
            if not isinstance(v, xmlrpc.client.DateTime):
                bad("not a <dateTime.iso8601>")
            elif not re.match(r"^\d{8}T\d{2}:\d{2}:\d{2}Z$", v.value):
                bad(f"datetime {v.value!r} not YYYYMMDDTHH:MM:SSZ")
        # unknown type spellings are not checked


def _split_arrow(inner: str) -> tuple[str, str]:
    depth = 0
    for i in range(len(inner)):
        ch = inner[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and inner.startswith(" -> ", i):
            return inner[:i], inner[i + 4:]
    raise ValueError(f"bad map type {inner!r}")
