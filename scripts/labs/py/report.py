"""report.py LAB TITLE CHECKS_TSV OUT_JSON OUT_TXT STARTED FINISHED ENV NOTES

Writes a lab's report (<lab>-report.json and <lab>-report.txt) from the checks the lab
recorded (one TSV line a check: id, name, pass, evidence, measured) and prints
"PASS_COUNT TOTAL RESULT". ENV and NOTES are \\x1f-separated (ENV as KEY=VALUE).
"""

import json
import re
import sys


def conv(v):
    if v in ("true", "false"):
        return v == "true"
    if re.fullmatch(r"-?(0|[1-9][0-9]{0,15})", v):
        return int(v)
    if re.fullmatch(r"-?(0|[1-9][0-9]*)\.[0-9]+", v):
        return float(v)
    return v


def kvs(s):
    out = {}
    for kv in s.split("\x1f"):
        if kv:
            k, _, v = kv.partition("=")
            if k != "pass":
                out[k] = conv(v)
    return out


def read_checks(tsv):
    checks = []
    with open(tsv, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            cid, name, p, ev, meas = (line.split("\t") + [""] * 5)[:5]
            checks.append({"id": cid, "name": name, "pass": p == "true",
                           "evidence": [e for e in ev.split(" ") if e], "measured": kvs(meas)})
    checks.sort(key=lambda c: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", c["id"])])
    return checks


def main():
    lab, title, tsv, out_json, out_txt, started, finished = sys.argv[1:8]
    env_kv, notes = sys.argv[8], sys.argv[9]
    checks = read_checks(tsv)
    pass_count = sum(1 for c in checks if c["pass"])
    total = len(checks)
    ok = total > 0 and pass_count == total
    notes_list = [n for n in notes.split("\x1f") if n]
    report = {"lab": lab, "title": title, "result": "PASS" if ok else "FAIL",
              "pass_count": pass_count, "total": total,
              "started_at": started, "finished_at": finished,
              "environment": kvs(env_kv), "notes": notes_list, "checks": checks}
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    lines = [title, "=" * len(title), "",
             f"lab={lab} started_at={started} finished_at={finished}"]
    lines += [f"{k}={v}" for k, v in report["environment"].items()]
    lines.append("")
    for c in checks:
        mark = "PASS" if c["pass"] else "FAIL"
        lines.append(f"[{mark}] {c['id']} {c['name']}")
        meas = " ".join(f"{k}={json.dumps(v) if isinstance(v, bool) else v}"
                        for k, v in c["measured"].items())
        lines.append(f"       measured: {meas}")
        lines.append(f"       evidence: {' '.join(c['evidence'])}")
    if notes_list:
        lines.append("")
        lines += [f"note: {n}" for n in notes_list]
    lines += ["", f"pass_count={pass_count} total={total} result={report['result']}"]
    with open(out_txt, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{pass_count} {total} {report['result']}")


if __name__ == "__main__":
    main()
