"""Helpers for the lab scripts in this directory (imported, never run)."""

import json


def lower(b):
    """A boolean as the labs print it: true / false."""
    return str(bool(b)).lower()


def csv(xs):
    """The items comma-separated, "none" when there are none."""
    return ",".join(xs) or "none"


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_lines(path):
    """The file's non-blank lines, stripped."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
