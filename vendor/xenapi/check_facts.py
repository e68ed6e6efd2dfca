#!/usr/bin/env python3
"""Consistency check of the vendored XenAPI facts (python3 stdlib only).

Checks, over datamodel.json + additions.json:
  - additions.json parses and has the expected shape;
  - no added class, field or message collides with a published one, and
    every message added to an existing class names a class that exists;
  - every class named in a type ("C ref", "C record") exists;
  - every enum named in a type ("enum E") exists in enums.json or in the
    enums listed by the classes;
  - every error code a message names exists in errors.json;
  - both ends of every relation (relations.json + additions.json) exist,
    and each end's type refers to the other end's class (ends that only
    the published files name, e.g. internal fields, are noted, not failed).
Exit status 1 on any problem.
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return json.load(f)


def main():
    problems = []
    dm = load("datamodel.json")
    add = load("additions.json")
    enums = load("enums.json")
    errors = load("errors.json")
    rels = load("relations.json")

    if sorted(add) != ["classes", "fields", "messages", "relations"]:
        problems.append("additions.json keys: %s" % sorted(add))
    class_keys = ["enums", "fields", "messages", "name"]
    msg_keys = ["errors", "implicit", "name", "params", "result", "roles"]
    for c in add["classes"]:
        if sorted(c) != class_keys:
            problems.append("class %s keys: %s" % (c.get("name"), sorted(c)))
        for m in c["messages"]:
            if sorted(m) != msg_keys:
                problems.append("%s.%s keys" % (c["name"], m.get("name")))
    for e in add["fields"]:
        if sorted(e) != ["class", "field", "messages"]:
            problems.append("field entry keys: %s" % sorted(e))
    for e in add["messages"]:
        if sorted(e) != ["class", "messages"]:
            problems.append("message entry keys: %s" % sorted(e))
        for m in e.get("messages", []):
            if sorted(m) != msg_keys:
                problems.append("%s.%s keys" % (e.get("class"), m.get("name")))

    classes = {}
    for c in dm:
        classes[c["name"]] = {
            "fields": {f["name"]: f for f in c["fields"]},
            "messages": list(c["messages"]), "enums": c["enums"]}
    for c in add["classes"]:
        if c["name"] in classes:
            problems.append("added class %s already published" % c["name"])
        classes[c["name"]] = {
            "fields": {f["name"]: f for f in c["fields"]},
            "messages": list(c["messages"]), "enums": c["enums"]}
    for e in add["fields"]:
        cls = classes.get(e["class"])
        if cls is None:
            problems.append("field entry for unknown class %s" % e["class"])
            continue
        if e["field"]["name"] in cls["fields"]:
            problems.append("added field %s.%s already present"
                            % (e["class"], e["field"]["name"]))
        cls["fields"][e["field"]["name"]] = e["field"]
        names = {m["name"] for m in cls["messages"]}
        for m in e["messages"]:
            if m["name"] in names:
                problems.append("added message %s.%s already present"
                                % (e["class"], m["name"]))
            cls["messages"].append(m)
    for e in add["messages"]:
        cls = classes.get(e["class"])
        if cls is None:
            problems.append("message entry for unknown class %s" % e["class"])
            continue
        names = {m["name"] for m in cls["messages"]}
        for m in e["messages"]:
            if m["name"] in names:
                problems.append("added message %s.%s already present"
                                % (e["class"], m["name"]))
            names.add(m["name"])
            cls["messages"].append(m)

    known_enums = set(enums)
    for c in classes.values():
        known_enums.update(en["name"] for en in c["enums"])

    def check_type(where, ty):
        for cname in re.findall(r"([A-Za-z0-9_]+) (?:ref|record)\b", ty):
            if cname not in classes:
                problems.append("%s: unknown class %s in %r" % (where, cname,
                                                                ty))
        for ename in re.findall(r"\benum ([A-Za-z0-9_]+)", ty):
            if ename not in known_enums:
                problems.append("%s: unknown enum %s" % (where, ename))

    for cname, c in classes.items():
        for f in c["fields"].values():
            check_type("%s.%s" % (cname, f["name"]), f["type"])
        for m in c["messages"]:
            where = "%s.%s" % (cname, m["name"])
            check_type(where, m["result"])
            for p in m["params"]:
                check_type(where, p["type"])
            for err in m["errors"]:
                if err not in errors:
                    problems.append("%s: unknown error %s" % (where, err))

    # Ends that the published files name but do not list (internal fields
    # such as task.session or PCI.attached_VMs) are only warned about; an
    # end that involves an added class or field must exist.
    added = {c["name"] for c in add["classes"]}
    added_fields = {(e["class"], e["field"]["name"]) for e in add["fields"]}
    warnings = []
    for rel in rels + add["relations"]:
        ends = [tuple(x) for x in rel]
        new_rel = any(c in added or (c, f) in added_fields for c, f in ends)
        new_rel = new_rel or rel in add["relations"]
        for cname, fname in ends:
            if cname not in classes or fname not in classes[cname]["fields"]:
                (problems if new_rel else warnings).append(
                    "relation end %s.%s not listed" % (cname, fname))
        if ends[0] == ends[1]:
            continue
        if all(c in classes and f in classes[c]["fields"] for c, f in ends):
            (c1, f1), (c2, f2) = ends
            t1 = classes[c1]["fields"][f1]["type"]
            t2 = classes[c2]["fields"][f2]["type"]
            if not t1.startswith(c2 + " ref") or not t2.startswith(c1 + " ref"):
                problems.append("relation %s.%s (%s) <-> %s.%s (%s) types "
                                "do not point at each other"
                                % (c1, f1, t1, c2, f2, t2))

    for w in warnings:
        print("check_facts: note (published files): " + w, file=sys.stderr)
    for p in problems:
        print("check_facts: " + p, file=sys.stderr)
    n_msgs = sum(len(c["messages"]) for c in classes.values())
    n_fields = sum(len(c["fields"]) for c in classes.values())
    print("check_facts: %d classes, %d fields, %d messages, %d enums, "
          "%d relations, %d problems"
          % (len(classes), n_fields, n_msgs, len(enums),
             len(rels) + len(add["relations"]), len(problems)))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
