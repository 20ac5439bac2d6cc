#!/usr/bin/env bash
# Runs every test: the Rust suites (unit, in-process and black-box tests that spawn the real
# binary), the black-box suite again over PostgreSQL (the conformance run, SPEC §7: a
# throwaway cluster from scripts/ci/postgres.sh unless AUTONOMY_TEST_DATABASE_URL names one),
# and then the operator labs (VAL08-VAL14 and the CLI/audit baseline) against a freshly built
# binary. Exit 0 only if everything passes.
set -euo pipefail
cd "$(dirname "$0")/.."

# The console's end-to-end test needs Debian's chromium and node + npm.
need=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${need[*]} (the console's end-to-end test needs them)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test.sh: the console's end-to-end test needs ${need[*]}; install them and run again" >&2
    exit 1
  fi
fi

# The labs drive the CP with curl; a fresh machine may not have it.
if ! command -v curl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing curl (the labs need it)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
  else
    echo "test.sh: the labs need curl; install it (e.g. apt-get install curl) and run again" >&2
    exit 1
  fi
fi

# The SQLite run first: a database URL from the caller is kept for the conformance run.
pg_url=${AUTONOMY_TEST_DATABASE_URL:-}
unset AUTONOMY_TEST_DATABASE_URL
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast -E 'not test(/postgres_only_/)'

# The conformance run: every black-box test again, each CP on a fresh PostgreSQL database;
# only tests of SQLite-only facts (named `sqlite_only_*`) are left out, and the
# PostgreSQL-only ones (`postgres_only_*`) run here.
if [ -z "$pg_url" ]; then
  pg_dir="${TMPDIR:-/tmp}/autonomy-test-pg.$$"
  pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  trap 'bash scripts/ci/postgres.sh stop "$pg_dir"' EXIT
  pg_url=$(bash scripts/ci/postgres.sh start "$pg_dir" "$pg_port")
fi
AUTONOMY_TEST_DATABASE_URL=$pg_url cargo nextest run -p autonomy -p autonomy-store-postgres \
  --no-fail-fast -E 'not test(/sqlite_only_/)'
AUTONOMY_BIN="${CARGO_TARGET_DIR:-target}/debug/autonomy" bash scripts/labs/run_cli_audit_lab.sh all
# Last, the operator console (SPEC §11) end to end in headless Chromium against a real CP and
# a simulated fleet of 50 devices (scripts/ci/console_e2e.sh; about a minute).
bash scripts/ci/console_e2e.sh
