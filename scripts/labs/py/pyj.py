"""pyj.py FILE EXPR [DEFAULT]: evaluates EXPR with the file's JSON as `d` and prints the result.

Booleans print as true/false, None as nothing, lists space-separated, dicts as sorted JSON.
`ids(d)` gives the plan ids of a rollout list page. Prints DEFAULT on any error.
"""

import json
import sys


def out(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return " ".join(out(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def ids(d):
    return [i["plan"]["metadata"]["id"] for i in d.get("items", [])]


def main():
    path, expr = sys.argv[1], sys.argv[2]
    default = sys.argv[3] if len(sys.argv) > 3 else ""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        print(out(eval(expr, {"ids": ids, "d": d})))
    except Exception:
        print(default)


if __name__ == "__main__":
    main()
