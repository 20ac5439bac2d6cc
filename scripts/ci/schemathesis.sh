#!/usr/bin/env bash
# Fuzzes a live control plane against its own OpenAPI document (SPEC §3, issue 15): starts
# `autonomy serve` on 127.0.0.1 (a free port, RBAC off, a temp data dir), runs schemathesis
# with `not_a_server_error` and `response_schema_conformance` and a bounded number of examples
# per operation, stops the CP. Exit 0 only if schemathesis found nothing.
#
# Needs schemathesis (`python3 -m pip install schemathesis`; .ci/run installs it) and a built
# binary: AUTONOMY_BIN, else $CARGO_TARGET_DIR/debug/autonomy (or target/debug/autonomy).
# ST_MAX_EXAMPLES (default 40) bounds the examples per operation.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=${AUTONOMY_BIN:-${CARGO_TARGET_DIR:-target}/debug/autonomy}
[ -x "$bin" ] || { echo "schemathesis.sh: no binary at $bin (cargo build -p autonomy)" >&2; exit 1; }
command -v schemathesis >/dev/null 2>&1 || { echo "schemathesis.sh: schemathesis is not installed" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/autonomy-schemathesis.XXXXXX")
cp_pid=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ -n "$cp_pid" ] && kill -0 "$cp_pid" 2>/dev/null; then
    kill -TERM "$cp_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$cp_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$cp_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Port 0: the CP prints the address it bound as its first stdout line.
: >"$work/stdout"
AUTONOMY_RBAC_ENFORCEMENT=0 "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
  >"$work/stdout" 2>"$work/cp.log" &
cp_pid=$!
url=
for _ in $(seq 1 100); do
  url=$(sed -n 's/^listening on \(http:\/\/127\.0\.0\.1:[0-9]*\)$/\1/p' "$work/stdout")
  [ -n "$url" ] && break
  kill -0 "$cp_pid" 2>/dev/null || { cat "$work/cp.log" >&2; echo "schemathesis.sh: the CP did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "schemathesis.sh: the CP printed no address within 10 s" >&2; exit 1; }
echo "schemathesis.sh: CP at $url"

# From the temp dir: schemathesis keeps its cache (.schemathesis/) in the working directory.
cd "$work"
status=0
schemathesis --no-color run "$url/v1/openapi.json" \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples "${ST_MAX_EXAMPLES:-40}" \
  --seed 1 \
  --request-timeout 10 \
  --suppress-health-check all || status=$?

if [ "$status" -ne 0 ]; then
  echo "schemathesis.sh: failures (exit $status); the CP's last log lines:" >&2
  tail -n 20 "$work/cp.log" >&2
fi
exit "$status"
