"""Every class of the vendored datamodel answers get_all_records with exactly its fields."""

import XenAPI


def _all_records(xapi, model):
    """{class: records} for every class with a get_all_records message; failures in `errors`."""
    out, errors = {}, []
    for cls in model.classes_with("get_all_records"):
        try:
            recs = getattr(xapi, cls).get_all_records()
        except XenAPI.Failure as e:
            errors.append(f"{cls}.get_all_records -> Failure {e.details}")
            continue
        except Exception as e:  # transport / unmarshalling problems
            errors.append(f"{cls}.get_all_records -> {type(e).__name__}: {e}")
            continue
        if not isinstance(recs, dict):
            errors.append(f"{cls}.get_all_records -> not a struct: {recs!r:.200}")
            continue
        out[cls] = recs
    return out, errors


def test_every_class_get_all_records_keys(xapi, model):
    classes = model.classes_with("get_all_records")
    assert len(classes) > 50, f"datamodel from {model.sources} has only {len(classes)} such classes"
    got, problems = _all_records(xapi, model)
    for cls, recs in got.items():
        want = set(model.field_names(cls))
        for ref, rec in recs.items():
            if not (isinstance(ref, str) and ref.startswith("OpaqueRef:")):
                problems.append(f"{cls}: key {ref!r} is not an OpaqueRef")
            if not isinstance(rec, dict):
                problems.append(f"{cls} {ref}: record is not a struct")
                continue
            have = set(rec)
            if have != want:
                problems.append(f"{cls} {ref}: missing {sorted(want - have)} extra {sorted(have - want)}")
    summary = {c: len(r) for c, r in got.items() if r}
    print("objects per class:", summary)
    assert not problems, (f"{len(problems)} problem(s) against {model.sources}:\n  "
                          + "\n  ".join(problems))


def test_every_record_value_has_its_wire_type(xapi, model):
    got, problems = _all_records(xapi, model)
    for cls, recs in got.items():
        fields = model.fields(cls)
        for ref, rec in recs.items():
            if not isinstance(rec, dict):
                continue
            for name, value in rec.items():
                if name in fields:
                    model.check_value(fields[name]["type"], value, f"{cls}[{ref}].{name}", problems)
    assert not problems, f"{len(problems)} value(s) off their datamodel type:\n  " + "\n  ".join(problems[:200])


def test_get_record_matches_get_all_records(xapi, model):
    problems = []
    for cls in ("pool", "host", "VM", "SR", "PBD", "network", "PIF"):
        recs = getattr(xapi, cls).get_all_records()
        assert recs, f"a fresh state dir has no {cls}"
        for ref, rec in recs.items():
            one = getattr(xapi, cls).get_record(ref)
            if one != rec:
                diff = sorted(k for k in set(one) | set(rec) if one.get(k) != rec.get(k))
                problems.append(f"{cls} {ref}: differs in {diff}")
            uuid = rec.get("uuid")
            if uuid is not None and getattr(xapi, cls).get_by_uuid(uuid) != ref:
                problems.append(f"{cls}.get_by_uuid({uuid}) != {ref}")
    assert not problems, "\n".join(problems)
