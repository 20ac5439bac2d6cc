"""audit_events.py MODE ...: checks on the JSON of `autonomy -o json audit query`.

  created PATH START EXPECTED_IDS ACTOR   the plan.created events are exactly EXPECTED_IDS
                                          (comma-separated), all by ACTOR, after START, with
                                          hash fields (audit lab, AUDIT-06)
  executed PATH START ACTOR EXPECTED_N    rollback.executed events: EXPECTED_N successes (at
                                          least 1), all by ACTOR, at or after START (VAL11-10)
  resources PATH IDS_FILE                 true when the events' resources are exactly the ids
                                          of IDS_FILE (one a line) (VAL08-06)
  by-resource PATH REASON...              one line per resource of the events with one of the
                                          REASONs: RESOURCE COUNT OUTCOMES (VAL10)

created and executed print KEY=VALUE lines, the last pass=... (pass_events=... for executed).
"""

import collections
import sys

from labutil import csv, load_json, lower, read_lines


def items_or_none(path):
    try:
        return load_json(path)["items"]
    except Exception:
        return None


def common(items, start, actor):
    """What both event checks measure: (the success events, all by ACTOR, all at or after START)."""
    ok = [e for e in items if e.get("outcome") == "success"]
    all_actor = all(e.get("actor") == actor for e in items)
    in_time = all(e.get("time", "") >= start for e in items)
    return ok, all_actor, in_time


def created(path, start, want, actor):
    want = want.split(",") if want else []
    items = items_or_none(path)
    if items is None:
        print("events=unreadable")
        print("pass=false")
        return
    ok, all_actor, in_time = common(items, start, actor)
    res = sorted(e.get("resource") for e in ok)
    print(f"events={len(items)}")
    print(f"success_events={len(ok)}")
    print("resources=" + csv(res))
    print("expected=" + csv(sorted(want)))
    chained = all(e.get("hash") and e.get("prev_hash") is not None for e in items)
    print(f"all_actor_{actor}={lower(all_actor)}")
    print(f"all_after_start={lower(in_time)}")
    print(f"hash_fields_present={lower(chained)}")
    print("event_ids=" + ",".join(e.get("id", "?") for e in items))
    print("pass=" + lower(res == sorted(want) and all_actor and in_time and chained))


def executed(path, start, actor, expected):
    expected = int(expected)
    items = items_or_none(path)
    if items is None:
        print("events=unreadable")
        print("success_events=0")
        print("pass=false")
        return
    ok, all_actor, in_time = common(items, start, actor)
    print(f"events={len(items)}")
    print(f"success_events={len(ok)}")
    print(f"expected_success_events={expected}")
    print("resources=" + csv([f"{e.get('resource')}:{e.get('outcome')}" for e in items]))
    print(f"all_actor_{actor}=" + lower(all_actor))
    print("all_at_or_after_start=" + lower(in_time))
    print("pass_events=" + lower(len(ok) >= 1 and len(ok) == expected))


def resources(path, ids_file):
    ev = load_json(path)["items"]
    print(lower(sorted(e["resource"] for e in ev) == sorted(read_lines(ids_file))))


def by_resource(path, *reasons):
    by = collections.defaultdict(list)
    for e in load_json(path)["items"]:
        by[(e["resource"], e.get("reason"))].append(e["outcome"])
    for (res, reason), outs in sorted(by.items()):
        if reason in reasons:
            print(res, len(outs), ",".join(outs))


MODES = {"created": created, "executed": executed, "resources": resources,
         "by-resource": by_resource}

if __name__ == "__main__":
    MODES[sys.argv[1]](*sys.argv[2:])
