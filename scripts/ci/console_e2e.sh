#!/usr/bin/env bash
# End-to-end test of the operator console (SPEC §11, tests/console/e2e.mjs): a real CP with
# RBAC on and a simulated fleet of 50 devices, driven through the page in headless Chromium
# (Debian's chromium, driven by playwright-core from the npm registry). Exit 0 only if every
# step passed; the last line is "N passed, M failed".
#
# Needs node + npm (playwright-core is installed with `npm ci` from the committed lock file
# when missing), chromium ($CHROMIUM, default /usr/bin/chromium; .ci/run installs it) and a
# built binary: AUTONOMY_BIN, else $CARGO_TARGET_DIR/debug/autonomy (or target/debug/autonomy).
# Screenshots go to $CONSOLE_E2E_ARTIFACTS (default ${TMPDIR:-/tmp}/autonomy-console-e2e).
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=${AUTONOMY_BIN:-${CARGO_TARGET_DIR:-target}/debug/autonomy}
[ -x "$bin" ] || { echo "console_e2e.sh: no binary at $bin (cargo build -p autonomy)" >&2; exit 1; }
chromium=${CHROMIUM:-/usr/bin/chromium}
[ -x "$chromium" ] || { echo "console_e2e.sh: no chromium at $chromium (apt-get install chromium)" >&2; exit 1; }
command -v node >/dev/null 2>&1 || { echo "console_e2e.sh: node is not installed" >&2; exit 1; }

if [ ! -f tests/console/node_modules/playwright-core/package.json ]; then
  command -v npm >/dev/null 2>&1 || { echo "console_e2e.sh: npm is not installed" >&2; exit 1; }
  echo "console_e2e.sh: npm ci (playwright-core)"
  (cd tests/console && npm ci --no-audit --no-fund --loglevel=error)
fi

bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
export AUTONOMY_BIN=$bin CHROMIUM=$chromium
export CONSOLE_E2E_ARTIFACTS=${CONSOLE_E2E_ARTIFACTS:-${TMPDIR:-/tmp}/autonomy-console-e2e}
# The whole run is bounded too (each step inside is).
exec timeout --kill-after=10 300 node tests/console/e2e.mjs
