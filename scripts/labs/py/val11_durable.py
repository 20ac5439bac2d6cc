"""val11_durable.py POST_LIST PRE_LIST HTTP_CODE INVENTORY: VAL11-03, data durability.

The plan list after the restart (POST_LIST) against the one just before the kill (PRE_LIST):
every plan of INVENTORY (ID=PHASE,...) present, at least 10 plans, none changed (phase and
generation). KEY=VALUE lines, the last pass=...
"""

import sys

from labutil import csv, load_json, lower


def load(path):
    """{id: (phase, generation)} and the next_cursor of a list page; (None, None) if unreadable."""
    try:
        d = load_json(path)
        return ({i["plan"]["metadata"]["id"]: (i["status"]["phase"], i["plan"]["metadata"]["generation"])
                 for i in d["items"]}, d.get("next_cursor"))
    except Exception:
        return None, None


def main(post, pre, code, inventory):
    inventory = dict(kv.split("=", 1) for kv in inventory.split(","))
    after, cursor = load(post)
    before, _ = load(pre)
    if after is None:
        print(f"http_code={code}")
        print("list_count=unreadable")
        print("pass=false")
        return
    missing = sorted(i for i in inventory if i not in after)
    changed = sorted(i for i in (before or {}) if after.get(i) != before[i])
    phase_unexpected = sorted(f"{i}:{after[i][0]}" for i in inventory
                              if i in after and after[i][0] != inventory[i])
    print(f"http_code={code}")
    print(f"list_count={len(after)}")
    print(f"next_cursor={cursor or ''}")
    print(f"pre_kill_count={len(before) if before is not None else 'unreadable'}")
    print("missing=" + csv(missing))
    print("changed_since_pre_kill=" + csv(changed))
    print("phases=" + ",".join(f"{i}:{after[i][0]}" for i in sorted(after)))
    print("phases_unexpected_vs_inventory=" + csv(phase_unexpected))
    ok = code == "200" and len(after) >= 10 and not missing and before is not None and not changed
    print("pass=" + lower(ok))


if __name__ == "__main__":
    main(*sys.argv[1:5])
