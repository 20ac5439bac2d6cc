"""tamper_audit.py ROOT MODE RESOURCE: tampers with a copy of an audit store.

Finds the plan.created event of RESOURCE under ROOT and edits it (MODE edit: the actor becomes
mallory) or deletes its line (MODE delete). Prints "seq=S id=I file=F" (all none and exit 1
when there is no such event).
"""

import json
import os
import sys


def tamper(root, mode, resource):
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            try:
                with open(path, encoding="utf-8") as f:
                    lines = f.read().split("\n")
            except Exception:
                continue
            for i, line in enumerate(lines):
                try:
                    e = json.loads(line)
                except Exception:
                    continue
                if (isinstance(e, dict) and e.get("event_type") == "plan.created"
                        and e.get("resource") == resource):
                    if mode == "edit":
                        lines[i] = line.replace('"actor":"%s"' % e["actor"], '"actor":"mallory"', 1)
                        if lines[i] == line:
                            e["actor"] = "mallory"
                            lines[i] = json.dumps(e, separators=(",", ":"))
                    else:
                        del lines[i]
                    with open(path, "w", encoding="utf-8") as f:
                        f.write("\n".join(lines))
                    print(f"seq={e.get('seq')} id={e.get('id')} file={os.path.relpath(path, root)}")
                    return 0
    print("seq=none id=none file=none")
    return 1


if __name__ == "__main__":
    sys.exit(tamper(*sys.argv[1:4]))
