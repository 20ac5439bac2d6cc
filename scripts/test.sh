#!/usr/bin/env bash
# Runs every test: the Rust suites (unit, in-process and black-box tests that spawn the real
# binary) and then the operator labs (VAL08-VAL12 and the CLI/audit baseline) against a
# freshly built binary. Exit 0 only if everything passes.
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

cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
AUTONOMY_BIN="${CARGO_TARGET_DIR:-target}/debug/autonomy" bash scripts/labs/run_cli_audit_lab.sh all
# Last, the operator console (SPEC §11) end to end in headless Chromium against a real CP and
# a simulated fleet of 50 devices (scripts/ci/console_e2e.sh; about a minute).
bash scripts/ci/console_e2e.sh
