"""stuck_scan.py MODE ...: checks on a GET /v1/rollouts/stuck answer; KEY=VALUE lines, the
last pass=...

  set PATH HTTP_CODE EXPECTED EXCLUDED THRESHOLD PHASES
      VAL09: the reported plans are exactly EXPECTED (comma-separated ids), none of EXCLUDED,
      each with a diagnosis, `autonomy ...` suggested actions naming it, stale_seconds at or
      over THRESHOLD and the phase PHASES (ID=PHASE,...) says
  val11 PATH HTTP_CODE DEV_IDS
      VAL11-06: at least 3 stuck plans, all diagnosed, every one of DEV_IDS reported
"""

import sys

from labutil import csv, load_json, lower


def load(path):
    """(items, stuck_count) of the answer; None when it cannot be read."""
    try:
        d = load_json(path)
        return d["items"], d["stuck_count"]
    except Exception:
        return None


def diagnosed(items):
    return all(isinstance(i.get("diagnosis"), str) and i["diagnosis"].strip() for i in items)


def one_line(s):
    return s.replace("\n", " ")[:200]


def check_set(path, code, expected, excluded, thr, phases):
    expected = set(filter(None, expected.split(",")))
    excluded = set(filter(None, excluded.split(",")))
    phases = dict(kv.split("=", 1) for kv in phases.split(",") if kv)
    thr = float(thr)
    loaded = load(path)
    if loaded is None:
        print(f"http_code={code}")
        print("readable=false")
        print("pass=false")
        return
    items, count = loaded
    ids = [i.get("id") for i in items]
    got = set(ids)
    missing = sorted(expected - got)
    unexpected = sorted(got - expected)
    wrongly = sorted(got & excluded)
    diag = diagnosed(items)
    acts = all(isinstance(i.get("suggested_actions"), list) and i["suggested_actions"]
               and all(isinstance(a, str) and a.strip().startswith("autonomy ")
                       for a in i["suggested_actions"])
               and any(i.get("id", "\0") in a for a in i["suggested_actions"]) for i in items)
    stale = all(float(i.get("stale_seconds", -1)) >= thr for i in items)
    phase_ok = all(i.get("phase") in ("published", "active")
                   and phases.get(i.get("id"), i.get("phase")) == i.get("phase") for i in items)
    print(f"http_code={code}")
    print(f"threshold_seconds={thr:g}")
    print(f"stuck_count={count}")
    print(f"items={len(items)}")
    print(f"count_consistent={lower(count == len(items))}")
    print("reported=" + csv(sorted(got)))
    print("missing=" + csv(missing))
    print("unexpected=" + csv(unexpected))
    print("excluded_but_reported=" + csv(wrongly))
    print(f"diagnosis_non_empty={lower(diag)}")
    print(f"suggested_actions_ok={lower(acts)}")
    print(f"stale_seconds_ge_threshold={lower(stale)}")
    print(f"phases_match={lower(phase_ok)}")
    if items:
        print("sample_diagnosis=" + one_line(items[0].get("diagnosis", "")))
        print("sample_action=" + one_line((items[0].get("suggested_actions") or [""])[0]))
    ok = (code == "200" and count == len(items) and not missing and not unexpected and not wrongly
          and diag and acts and stale and phase_ok and len(ids) == len(got))
    print("pass=" + lower(ok))


def check_val11(path, code, dev):
    dev = dev.split(",")
    loaded = load(path)
    if loaded is None:
        print(f"http_code={code}")
        print("stuck_count=unreadable")
        print("diagnosis_ok=false")
        print("pass=false")
        return
    items, count = loaded
    ids = [i.get("id") for i in items]
    diag = bool(items) and diagnosed(items)
    acts = bool(items) and all(isinstance(i.get("suggested_actions"), list) and i["suggested_actions"]
                               for i in items)
    dev_n = sum(1 for x in dev if x in ids)
    print(f"http_code={code}")
    print("threshold_seconds=2")
    print("sleep_seconds=3")
    print(f"stuck_count={count}")
    print("stuck_ids=" + csv(ids))
    print(f"diagnosis_ok={lower(diag)}")
    print(f"suggested_actions_ok={lower(acts)}")
    print(f"dev_plans_reported={dev_n}")
    if items:
        print("sample_diagnosis=" + one_line(items[0].get("diagnosis", "")))
    print("pass=" + lower(code == "200" and isinstance(count, int) and count >= 3 and diag
                          and dev_n == len(dev)))


if __name__ == "__main__":
    {"set": check_set, "val11": check_val11}[sys.argv[1]](*sys.argv[2:])
