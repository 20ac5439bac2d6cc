#!/usr/bin/env bash
# Runs every test: the Rust suites (unit, in-process and black-box tests that spawn the real
# binary) and then the operator labs (VAL08-VAL12 and the CLI/audit baseline) against a
# freshly built binary. Exit 0 only if everything passes.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
AUTONOMY_BIN="${CARGO_TARGET_DIR:-target}/debug/autonomy" bash scripts/labs/run_cli_audit_lab.sh all
