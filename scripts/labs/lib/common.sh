# shellcheck shell=bash
#
# lib/common.sh — logging, value helpers, plan bodies and the JSON helpers of the labs.
# Sourced by run_cli_audit_lab.sh (with lib/cp.sh, lib/client.sh, lib/report.sh and the labs).

# The checked-in Python helpers (scripts/labs/py/NAME.py; Python 3 stdlib only).
LAB_PY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../py" && pwd)
readonly LAB_PY_DIR

# py NAME ARGS...: runs scripts/labs/py/NAME.py.
py() {
  local name=$1
  shift
  python3 "$LAB_PY_DIR/$name.py" "$@"
}

# pyj FILE EXPR [DEFAULT]: evaluates EXPR with the file's JSON as `d`; DEFAULT on any error
# (py/pyj.py).
pyj() { py pyj "$1" "$2" "${3-}"; }

# cargo_bin PACKAGE: `cargo build -p PACKAGE` in the repo (bounded by BUILD_TIMEOUT); prints
# the path of its debug binary, under ${CARGO_TARGET_DIR:-<repo>/target}. Fails when the build
# does.
cargo_bin() {
  local target=${CARGO_TARGET_DIR:-target}
  if [[ $target != /* ]]; then target="$REPO_ROOT/$target"; fi
  say "building: cargo build -p $1 (in $REPO_ROOT)"
  (cd "$REPO_ROOT" && timeout "$BUILD_TIMEOUT" cargo build -p "$1" >&2) || return 1
  printf '%s/debug/%s\n' "$target" "$1"
}

say() { printf '[lab %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
utc_now() { date -u +%Y-%m-%dT%H:%M:%S.%6NZ; }
now_ms() { date +%s%3N; }

# bool CMD...: prints true when CMD succeeds, else false.
bool() {
  if "$@"; then echo true; else echo false; fi
}

# chk A OP B [A OP B]...: every comparison holds (OP is = or !=).
chk() {
  while (($# >= 3)); do
    case $2 in
      =) [[ $1 == "$3" ]] || return 1 ;;
      !=) [[ $1 != "$3" ]] || return 1 ;;
      *) return 2 ;;
    esac
    shift 3
  done
  (($# == 0))
}

# one_line FILE: the file's text on one line (at most 400 characters), for a report value.
one_line() {
  if [[ -f $1 ]]; then
    tr '\n\t\r' '   ' <"$1" | cut -c1-400
  fi
}

# kv_from FILE KEY: the value of the first logfmt KEY=value in FILE (quotes removed).
kv_from() {
  local file=$1 key=$2 v=""
  if [[ -f $file ]]; then
    v=$(grep -oE "(^|[[:space:]])${key}=(\"[^\"]*\"|[^[:space:]]*)" "$file" 2>/dev/null | head -n1) || true
  fi
  v=${v#"${v%%[![:space:]]*}"}
  v=${v#"$key="}
  v=${v#\"}
  v=${v%\"}
  printf '%s' "$v"
}

# kv_get KEY KV...: the value of KEY in a list of KEY=VALUE words ("" when absent).
kv_get() {
  local key=$1 kv
  shift
  for kv in "$@"; do
    if [[ $kv == "$key="* ]]; then
      printf '%s' "${kv#*=}"
      return 0
    fi
  done
}

# kv_omit KEY KV...: the KEY=VALUE words whose key is not KEY, one per line.
kv_omit() {
  local key=$1 kv
  shift
  for kv in "$@"; do
    if [[ ${kv%%=*} != "$key" ]]; then printf '%s\n' "$kv"; fi
  done
}

# ids_csv ID...: the ids joined by commas ("none" when there are none).
ids_csv() {
  if (($# == 0)); then
    echo none
  else
    local IFS=,
    echo "$*"
  fi
}

# A well-formed 64-hex digest for artifact refs and fingerprints.
LAB_DIGEST=$(printf '%s' 'autonomyops-lab-artifact' | sha256sum | cut -c1-64)
readonly LAB_DIGEST

# plan_body ID DRAFT(true|false) ARTIFACT_REF FINGERPRINT LABEL_LAB LABEL_PURPOSE
plan_body() {
  printf '{"metadata":{"id":"%s","labels":{"lab":"%s","purpose":"%s"}},"spec":{"artifact_ref":"%s","target_lock_fingerprint":"%s"},"draft":%s}' \
    "$1" "$5" "$6" "$3" "$4" "$2"
}

good_artifact() { printf 'oci://registry.lab.local/%s/app@sha256:%s' "$1" "$LAB_DIGEST"; }
good_fingerprint() { printf 'blake3:%s' "$LAB_DIGEST"; }
