"""val08_stats.py MODE ...: the VAL08 load's results, as KEY=VALUE lines ending in pass=...

  unique CODES_FILE      the unique creates (lines: KIND ID CODE SECONDS): all 201, latencies
  shared CODES_FILE      the contended ids: exactly one 201 each, the rest 409, no 5xx
  list LISTED CREATED    the ids the paginated list gave (one a line, in order) against the
                         201'd ids: every one exactly once
"""

import collections
import sys

from labutil import csv, lower, read_lines


def codes(mode, path):
    rows = [line.split() for line in read_lines(path)]
    rows = [r for r in rows if len(r) >= 3 and r[0] == mode]
    count = collections.Counter(r[2] for r in rows)
    print(f"requests={len(rows)}")
    print("codes=" + csv([f"{c}:{n}" for c, n in sorted(count.items())]))
    print(f"count_201={count.get('201', 0)}")
    fivexx = sum(n for c, n in count.items() if c.startswith("5"))
    print(f"count_5xx={fivexx}")
    print(f"count_no_answer={count.get('000', 0)}")
    if mode == "unique":
        t = sorted(float(r[3]) for r in rows if len(r) > 3)

        def pct(p):
            return t[min(len(t) - 1, int(p * len(t)))] if t else 0.0

        print(f"latency_p50_ms={pct(0.50) * 1000:.1f}")
        print(f"latency_p95_ms={pct(0.95) * 1000:.1f}")
        print(f"latency_max_ms={(t[-1] if t else 0) * 1000:.1f}")
        print("pass=" + lower(len(rows) > 0 and count.get("201", 0) == len(rows)))
    else:
        per = collections.defaultdict(collections.Counter)
        for r in rows:
            per[r[1]][r[2]] += 1
        winners = {i: c.get("201", 0) for i, c in per.items()}
        bad = sorted(i for i, c in per.items()
                     if c.get("201", 0) != 1 or c.get("201", 0) + c.get("409", 0) != sum(c.values()))
        print(f"ids={len(per)}")
        print("winners_per_id=" + ",".join(f"{i}:{n}" for i, n in sorted(winners.items())))
        print("ids_not_exactly_one_201_rest_409=" + csv(bad))
        print("pass=" + lower(len(per) > 0 and not bad and fivexx == 0))


def listed(listed_path, created_path):
    got = read_lines(listed_path)
    created = set(read_lines(created_path))
    dups = sorted(i for i, n in collections.Counter(got).items() if n > 1)
    missing = sorted(created - set(got))
    extra = sorted(set(got) - created)
    print(f"list_count={len(got)}")
    print(f"unique_listed={len(set(got))}")
    print(f"created_201={len(created)}")
    print("duplicates=" + csv(dups[:20]))
    print("missing=" + csv(missing[:20]))
    print("unexpected=" + csv(extra[:20]))
    print("pass=" + lower(len(created) > 0 and not dups and not missing and not extra
                          and len(got) == len(created)))


if __name__ == "__main__":
    if sys.argv[1] == "list":
        listed(sys.argv[2], sys.argv[3])
    else:
        codes(sys.argv[1], sys.argv[2])
