"""Helpers shared by the lab scripts in this directory (imported, never run)."""

import glob
import json
import os


def lower(b):
    """A boolean as the labs print it: true / false."""
    return str(bool(b)).lower()


def csv(xs):
    """The items comma-separated, "none" when there are none."""
    return ",".join(xs) or "none"


def few(xs):
    """At most ten items comma-separated, with a count of the rest; "none" when empty."""
    return ",".join(xs[:10]) + (f",…(+{len(xs) - 10})" if len(xs) > 10 else "") if xs else "none"


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_lines(path):
    """The file's non-blank lines, stripped."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def audit_segments(audit_dir):
    """The audit store's segment files, in order."""
    return sorted(glob.glob(os.path.join(audit_dir, "audit-*.jsonl")))


def read_audit_store(audit_dir, strict=False):
    """Every event of the audit store read directly: (events, unparsable_lines, segments).

    strict: an unparsable line raises instead of being counted.
    """
    events, bad_lines = [], 0
    segments = audit_segments(audit_dir)
    for seg in segments:
        with open(seg, "rb") as f:
            for raw in f:
                try:
                    events.append(json.loads(raw))
                except ValueError:
                    if strict:
                        raise
                    bad_lines += 1
    return events, bad_lines, segments
