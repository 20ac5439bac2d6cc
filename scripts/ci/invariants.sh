#!/usr/bin/env bash
# The invariants ARCHITECTURE.md states, checked by grep over the source tree. Each check names
# the invariant; any violation prints the offending lines and fails. Run from the repo root (CI
# does: .ci/run).
set -euo pipefail
cd "$(dirname "$0")/../.."

failed=0
fail() {
  echo "invariant violated: $1" >&2
  shift
  printf '  %s\n' "$@" >&2
  failed=1
}

# Lines of Rust source under the given dirs that match an extended regex, skipping comments.
rs_grep() {
  local pattern=$1
  shift
  grep -rnE --include='*.rs' "$pattern" "$@" 2>/dev/null | grep -vE '^[^:]+:[0-9]+:\s*//' || true
}

# 1. Only the SQLite backend links rusqlite.
mapfile -t hits < <(grep -l '^rusqlite' crates/*/Cargo.toml || true)
if [ "${#hits[@]}" -ne 1 ] || [ "${hits[0]}" != "crates/autonomy-store-sqlite/Cargo.toml" ]; then
  fail "rusqlite is a dependency of exactly one crate (autonomy-store-sqlite)" "${hits[@]}"
fi

# Crate dirs (or their src dirs) except those whose name starts with $1.
crates_except() {
  local prefix=$1 sub=${2:-} d
  for d in crates/*/; do
    case "$d" in "crates/$prefix"*) continue ;; esac
    [ -d "$d$sub" ] && echo "$d$sub"
  done
}

# 2. SQL is written only in the store backends.
mapfile -t dirs < <(crates_except autonomy-store-)
# (The test kit's pg.rs administers the test cluster's databases with psql, and the bench and the
# labs keep the queries they run on PostgreSQL itself in sql/*.sql files: not the product's SQL.)
mapfile -t hits < <(rs_grep '"\s*(SELECT |INSERT INTO|UPDATE [a-z_]+ SET|DELETE FROM|CREATE (TABLE|INDEX)|PRAGMA )' "${dirs[@]}" | grep -v '^crates/autonomy-testkit/src/pg\.rs:')
[ "${#hits[@]}" -eq 0 ] || fail "SQL strings appear only in crates/autonomy-store-*" "${hits[@]}"

# 3. HTTP status codes are decided only in the server crate.
mapfile -t dirs < <(crates_except autonomy-server/ src)
mapfile -t hits < <(rs_grep 'StatusCode::|StatusCode\b.*from_u16' "${dirs[@]}")
[ "${#hits[@]}" -eq 0 ] || fail "StatusCode is used only in crates/autonomy-server" "${hits[@]}"

# 4. The wire types, the domain rules and the agent state machine do no IO and never read the
#    clock or the RNG.
mapfile -t hits < <(rs_grep 'std::(fs|net|process|thread)|SystemTime|Instant::now|now_utc|getrandom|tokio|File::' \
  crates/autonomy-api/src crates/autonomy-core/src crates/autonomy-agent/src)
[ "${#hits[@]}" -eq 0 ] || fail "autonomy-api, autonomy-core and autonomy-agent do no IO and read no clock" "${hits[@]}"
for c in autonomy-api autonomy-core autonomy-agent; do
  if grep -qE '^(tokio|rusqlite|axum|ureq|hyper)' "crates/$c/Cargo.toml"; then
    fail "$c depends on no IO crate" "crates/$c/Cargo.toml"
  fi
done

# 5. anyhow only in binaries (and dev-only support crates), thiserror in libraries.
for toml in crates/*/Cargo.toml; do
  dir=$(dirname "$toml")
  if grep -q '^anyhow' "$toml" && [ ! -f "$dir/src/main.rs" ] && ! grep -q '^publish = false' "$toml"; then
    fail "anyhow is used only by binaries and dev-only crates" "$toml"
  fi
done

# 6. The audit store never rewrites history: the only truncations of a segment are the torn-tail
#    repair at open and the rollback of an append that failed (bytes never acknowledged); the
#    third set_len empties the LOCK file before writing the holder's pid.
n=$(grep -c 'set_len(' crates/autonomy-audit/src/lib.rs || true)
[ "$n" -le 3 ] || fail "autonomy-audit truncates only in open's repair, append's rollback and the LOCK file (found $n set_len calls)" \
  "$(grep -n 'set_len(' crates/autonomy-audit/src/lib.rs)"

# 7. The server is generic over the Store trait: it names no backend.
mapfile -t hits < <(rs_grep 'autonomy_store_sqlite|rusqlite' crates/autonomy-server/src)
[ "${#hits[@]}" -eq 0 ] || fail "autonomy-server depends on the Store trait, not a backend" "${hits[@]}"

# 8. The client maps HTTP statuses to exit codes in one place (autonomy_client::exit_for_status);
#    the binary compares no status numbers.
n=$(grep -rn --include='*.rs' 'fn exit_for_status' crates | wc -l)
[ "$n" -eq 1 ] || fail "exit_for_status is defined once, in autonomy-client" "found $n"
mapfile -t hits < <(rs_grep '(status|code)\(?\)?\s*(==|!=|>=|<=|<|>)\s*[1-5][0-9][0-9]\b|=>\s*[1-5][0-9][0-9]\b|\b[1-5][0-9][0-9]\s*=>' crates/autonomy/src)
[ "${#hits[@]}" -eq 0 ] || fail "the binary maps no HTTP status by hand" "${hits[@]}"

if [ "$failed" -ne 0 ]; then
  exit 1
fi
echo "invariants: all hold"
