#!/usr/bin/env bash
#
# run_cli_audit_lab.sh — the AutonomyOps acceptance labs (SPEC §6).
#
# Every lab starts its own control plane (CP) on its own port with a fresh data dir under
# $WORK_DIR, drives it with curl and the `autonomy` CLI, writes its evidence and a report
# (<lab>-report.txt / <lab>-report.json) under $EVIDENCE_DIR/<lab>/, and stops its CP.
#
#   audit  run_cli_audit_lab    baseline CLI + audit store                 port 18991 (+18992)
#   val08  run_val08_lab        concurrent creates under load              port 18993
#   val09  run_val09_lab        stuck detection                            port 18994
#   val10  run_val10_lab        rollback reliability on clean plans        port 18995
#   val11  run_chaos_val11_lab  VAL11 chaos test pack (the seed, exactly)  port 18996
#   val12  run_val12_lab        chaos beyond the plan: SIGKILL under load, hung CP, full disk,
#                               corrupt store at start-up                  port 18997 (+18998)
#
# Run `run_cli_audit_lab.sh --help` for usage.

set -euo pipefail

SCRIPT_NAME=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
readonly SCRIPT_NAME SCRIPT_DIR REPO_ROOT

readonly ALL_LABS=(audit val08 val09 val10 val11 val12)

# Bounds: every wait in this script is bounded by one of these.
readonly HTTP_MAX_TIME=15       # seconds per curl request
readonly CLI_TIMEOUT=60         # seconds per CLI invocation (killed after that)
readonly CP_READY_POLLS=100     # health polls after a CP start ...
readonly CP_POLL_INTERVAL=0.1   # ... this far apart (10 s in all)
readonly CP_STOP_POLLS=100      # polls for a CP to exit after SIGTERM (10 s), then SIGKILL
readonly PROBE_TIMEOUT=10       # seconds a second-CP probe may run before it is killed
readonly BUILD_TIMEOUT=3600     # seconds for `cargo build -p autonomy`

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [all|audit|val08|val09|val10|val11|val12]...
       $SCRIPT_NAME -h | --help

Runs the AutonomyOps acceptance labs against a real \`autonomy\` binary (default: all, in
the order ${ALL_LABS[*]}). Each lab starts its own control plane (CP) on its own port
with a fresh data dir, writes evidence plus <lab>-report.txt and <lab>-report.json under
\$EVIDENCE_DIR/<lab>/, and stops its CP.

Labs:
  audit  run_cli_audit_lab    baseline: CLI create/get/list/transitions, audit query
                              (direct and via the CP), audit verify and tamper detection,
                              SIGTERM exit, single-instance guards     port 18991 (+18992)
  val08  run_val08_lab        8 workers x 25 concurrent creates (+ contended ids); every
                              201'd id listed exactly once via pagination; no 5xx   port 18993
  val09  run_val09_lab        stuck detection: thresholds 0/2/2.5/3600, diagnosis and
                              suggested actions, draft/paused/terminal/fresh plans excluded
                                                                        port 18994
  val10  run_val10_lab        retry/rollback/abort from draft, published, active, paused,
                              aborted, rolled_back: exit code, outcome, phase, audit event
                                                                        port 18995
  val11  run_chaos_val11_lab  the VAL11 chaos test pack (SIGTERM kill/restart, durability,
                              stuck proxy, artifact corruption, cascade, audit)  port 18996
  val12  run_val12_lab        chaos beyond the plan: 16 writers x 20 SIGKILL/restart cycles
                              (no acknowledged write lost, audit 1:1), a SIGSTOPped CP (CLI
                              --timeout, Idempotency-Key retry), a full 4 MiB tmpfs (503,
                              reads work, recovery; needs root to mount), corrupt stores at
                              start-up (refuse, naming the file)       port 18997 (+18998)

Environment:
  AUTONOMY_BIN  the autonomy binary; default: \`cargo build -p autonomy\` in the repo, then
                \${CARGO_TARGET_DIR:-<repo>/target}/debug/autonomy
  EVIDENCE_DIR  where the evidence goes (default: <repo>/lab-evidence/<UTC timestamp>/);
                it is kept after the run
  TMPDIR        parent of the scratch \$WORK_DIR, which is removed on exit
  VAL12_SEED    seed (a number) for val12's SIGKILL moments, to replay a run's pauses

Every CP the script starts is stopped on exit (SIGTERM, then SIGKILL after 10 s), and every
filesystem it mounted (val12) is unmounted.
Exit status: 0 only if every selected lab passes every check; 1 otherwise; 2 on a usage
error.
EOF
}

# ------------------------------------------------------------------------------------------
# State and cleanup
# ------------------------------------------------------------------------------------------

WORK_DIR=""
EVIDENCE_DIR=${EVIDENCE_DIR:-}
AUTONOMY_BIN=${AUTONOMY_BIN:-}
CP_PIDS=()      # every CP this script started and has not yet reaped
BG_PIDS=()      # load workers (val08, val12) still running
MOUNTS=()       # filesystems this script mounted (val12), unmounted on exit
CUR_CP_PID=""   # the CP of the running lab ("" = none running)
CP_START_ERROR=""
CP_READY_MS=""
STOP_RC=""
STOP_MS=""
STOP_FORCED=false
CLI_RC=0
CLI_MS=0
LAB=""
LAB_DIR=""
LAB_WORK=""
LAB_PORT=""
LAB_BASE=""
LAB_CHECKS=""
LAB_STARTED_AT=""
LAB_T0=0
LAB_DATA_DIR=""
LAB_AUDIT_DIR=""
LAB_NOTES=()
declare -A MV=()          # measured values of the current lab: MV[CHECK.key]=value
declare -A LAB_RESULT=()  # lab -> PASS|FAIL
declare -A LAB_LINE=()    # lab -> one-line summary

cleanup() {
  local rc=$? pid mnt
  trap - EXIT INT TERM
  for pid in "${BG_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${CP_PIDS[@]}"; do
    stop_cp "$pid" || true
  done
  for mnt in "${MOUNTS[@]}"; do
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  done
  if [[ -n $WORK_DIR && -d $WORK_DIR ]]; then
    rm -rf -- "$WORK_DIR"
  fi
  exit "$rc"
}

# ------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------

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

# JSON extraction (python3 -c, as the VAL11 plan prescribes).
PYJ=$(
  cat <<'PY'
import json, sys
def out(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return " ".join(out(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)
def ids(d):
    return [i["plan"]["metadata"]["id"] for i in d.get("items", [])]
path, expr, default = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    print(out(eval(expr)))
except Exception:
    print(default)
PY
)
readonly PYJ

# pyj FILE EXPR [DEFAULT]: evaluates EXPR with the file's JSON as `d`; DEFAULT on any error.
pyj() { python3 -c "$PYJ" "$1" "$2" "${3-}"; }

# ------------------------------------------------------------------------------------------
# Processes: start, probe and stop a CP
# ------------------------------------------------------------------------------------------

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
  local pid=$1 stat=""
  if ! kill -0 "$pid" 2>/dev/null; then
    return 1
  fi
  if [[ -d /proc/self ]]; then
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || stat=""
    # No entry right after kill -0 succeeded: the process was reaped in between.
    if [[ -z $stat ]]; then
      return 1
    fi
    stat=${stat##*) }
    if [[ ${stat:0:1} == Z || ${stat:0:1} == X ]]; then
      return 1
    fi
  fi
  return 0
}

cp_alive() {
  [[ -n $CUR_CP_PID ]] && pid_alive "$CUR_CP_PID"
}

# port_in_use PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
  local rc=0
  curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/" 2>/dev/null || rc=$?
  # 7 = could not connect: nothing listens there.
  [[ $rc -ne 7 ]]
}

forget_cp_pid() {
  local pid=$1 p keep=()
  for p in "${CP_PIDS[@]}"; do
    if [[ $p != "$pid" ]]; then
      keep+=("$p")
    fi
  done
  CP_PIDS=("${keep[@]}")
}

# start_cp PORT DATA_DIR AUDIT_DIR LOG: starts `autonomy serve` (stdout and stderr appended
# to LOG) and waits, bounded, until it prints `listening on http://127.0.0.1:PORT` and
# GET /v1/health answers 200. Sets CUR_CP_PID and CP_READY_MS. Returns 0 when ready, 1 when
# the CP exited or never got ready (CP_START_ERROR says why), 2 when the port was taken
# before the start (nothing is started then).
start_cp() {
  local port=$1 data=$2 audit=$3 log=$4 pid i code t0 offset rc
  CUR_CP_PID=""
  CP_START_ERROR=""
  CP_READY_MS=""
  touch "$log"
  if port_in_use "$port"; then
    CP_START_ERROR="port 127.0.0.1:$port is already in use by another process; no CP was started"
    printf '# lab %s: NOT starting a CP: %s\n' "$(utc_now)" "$CP_START_ERROR" >>"$log"
    return 2
  fi
  offset=$(wc -c <"$log")
  printf '# lab %s: starting: %s serve --listen 127.0.0.1:%s --data-dir %s --audit-dir %s\n' \
    "$(utc_now)" "$AUTONOMY_BIN" "$port" "$data" "$audit" >>"$log"
  t0=$(now_ms)
  "$AUTONOMY_BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" --audit-dir "$audit" \
    >>"$log" 2>&1 &
  pid=$!
  CP_PIDS+=("$pid")
  for ((i = 0; i < CP_READY_POLLS; i++)); do
    if ! pid_alive "$pid"; then
      rc=0
      wait "$pid" 2>/dev/null || rc=$?
      forget_cp_pid "$pid"
      CP_START_ERROR="the CP exited during startup with code $rc: $(tail -c +"$((offset + 1))" "$log" | grep -v '^# lab' | tail -n 3 | tr '\n' ' ')"
      printf '# lab %s: start failed: %s\n' "$(utc_now)" "$CP_START_ERROR" >>"$log"
      return 1
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/v1/health" 2>/dev/null) || true
    if [[ $code == 200 ]] && tail -c +"$((offset + 1))" "$log" | grep -qF "listening on http://127.0.0.1:$port"; then
      CUR_CP_PID=$pid
      CP_READY_MS=$(($(now_ms) - t0))
      printf '# lab %s: CP pid %s ready after %s ms\n' "$(utc_now)" "$pid" "$CP_READY_MS" >>"$log"
      return 0
    fi
    sleep "$CP_POLL_INTERVAL"
  done
  CP_START_ERROR="the CP (pid $pid) was not healthy after $CP_READY_POLLS polls of ${CP_POLL_INTERVAL}s"
  printf '# lab %s: start failed: %s\n' "$(utc_now)" "$CP_START_ERROR" >>"$log"
  stop_cp "$pid" || true
  return 1
}

# stop_cp PID: SIGTERM, poll (bounded) until the process is gone, SIGKILL if it is not;
# reaps it. Sets STOP_RC (its exit status; 143 = died of SIGTERM, 137 = SIGKILL), STOP_MS
# and STOP_FORCED. Returns 0 when the process is confirmed gone.
stop_cp() {
  local pid=$1 i t0 rc=0
  STOP_FORCED=false
  STOP_RC=""
  t0=$(now_ms)
  if pid_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    # A SIGSTOPped CP (val12) only acts on the SIGTERM once it is continued.
    kill -CONT "$pid" 2>/dev/null || true
    for ((i = 0; i < CP_STOP_POLLS; i++)); do
      if ! pid_alive "$pid"; then
        break
      fi
      sleep 0.1
    done
    if pid_alive "$pid"; then
      STOP_FORCED=true
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        if ! pid_alive "$pid"; then
          break
        fi
        sleep 0.1
      done
    fi
  fi
  STOP_MS=$(($(now_ms) - t0))
  if pid_alive "$pid"; then
    STOP_RC=alive
    return 1
  fi
  wait "$pid" 2>/dev/null || rc=$?
  STOP_RC=$rc
  forget_cp_pid "$pid"
  if [[ $CUR_CP_PID == "$pid" ]]; then
    CUR_CP_PID=""
  fi
  return 0
}

stop_all_cps() {
  local pid
  for pid in "${CP_PIDS[@]}"; do
    stop_cp "$pid" || true
  done
  CUR_CP_PID=""
}

# lab_cp_start LOG: start_cp for the current lab.
lab_cp_start() {
  local rc=0
  start_cp "$LAB_PORT" "$LAB_DATA_DIR" "$LAB_AUDIT_DIR" "$1" || rc=$?
  if ((rc == 0)); then
    say "$LAB: CP pid $CUR_CP_PID ready on 127.0.0.1:$LAB_PORT after ${CP_READY_MS} ms"
  else
    say "$LAB: CP start failed: $CP_START_ERROR"
  fi
  return "$rc"
}

# lab_cp_stop: SIGTERM the lab's CP; returns 0 when it is confirmed gone.
lab_cp_stop() {
  if [[ -z $CUR_CP_PID ]]; then
    STOP_RC=not-running
    STOP_MS=0
    STOP_FORCED=false
    return 1
  fi
  local pid=$CUR_CP_PID
  if stop_cp "$pid"; then
    say "$LAB: CP pid $pid stopped (exit $STOP_RC, ${STOP_MS} ms, forced=$STOP_FORCED)"
    return 0
  fi
  return 1
}

# ------------------------------------------------------------------------------------------
# HTTP and CLI
# ------------------------------------------------------------------------------------------

# curl_error_json OUT: curl's error message as a JSON object in OUT.
curl_error_json() {
  local t
  t=$(one_line "$WORK_DIR/curl.err")
  t=${t//\\/}
  t=${t//\"/}
  printf '{"lab_error":"no HTTP answer: %s"}\n' "$t" >"$1"
}

# http_req METHOD URL OUT [BODY]: prints the HTTP code (000: no answer). The body goes to
# OUT. Nothing is sent unless the lab's own CP is running, so a foreign process on the port
# can never answer for it.
http_req() {
  local method=$1 url=$2 out=$3 body=${4-} code=""
  if ! cp_alive; then
    printf '{"lab_error":"request not sent: the lab control plane is not running"}\n' >"$out"
    echo 000
    return 0
  fi
  local -a args=(-sS -o "$out" -w '%{http_code}' --max-time "$HTTP_MAX_TIME" --connect-timeout 5
    -X "$method" -H "X-Autonomy-Operator: ${AUTONOMY_OPERATOR:-anonymous}")
  if [[ -n $body ]]; then
    args+=(-H 'Content-Type: application/json' --data-binary "$body")
  fi
  code=$(curl "${args[@]}" "$url" 2>"$WORK_DIR/curl.err") || true
  if [[ -z $code || $code == 000 ]]; then
    code=000
    curl_error_json "$out"
  fi
  echo "$code"
}

# http_get OUT URL [NAME=VALUE]...: GET with url-encoded query parameters; prints the code.
http_get() {
  local out=$1 url=$2 code="" kv
  shift 2
  if ! cp_alive; then
    printf '{"lab_error":"request not sent: the lab control plane is not running"}\n' >"$out"
    echo 000
    return 0
  fi
  local -a args=(-sS -G -o "$out" -w '%{http_code}' --max-time "$HTTP_MAX_TIME" --connect-timeout 5
    -H "X-Autonomy-Operator: ${AUTONOMY_OPERATOR:-anonymous}")
  for kv in "$@"; do
    args+=(--data-urlencode "$kv")
  done
  code=$(curl "${args[@]}" "$url" 2>"$WORK_DIR/curl.err") || true
  if [[ -z $code || $code == 000 ]]; then
    code=000
    curl_error_json "$out"
  fi
  echo "$code"
}

# create_plan ID DRAFT ARTIFACT FINGERPRINT PURPOSE OUT: POST /v1/rollouts; prints the code.
create_plan() {
  http_req POST "$LAB_BASE/v1/rollouts" "$6" "$(plan_body "$1" "$2" "$3" "$4" "$LAB" "$5")"
}

# plan_phase ID: the plan's current phase via GET (empty when it cannot be read).
plan_phase() {
  local f="$WORK_DIR/phase.json" code
  code=$(http_req GET "$LAB_BASE/v1/rollouts/$1" "$f")
  if [[ $code == 200 ]]; then
    pyj "$f" 'd["status"]["phase"]'
  fi
}

# cli OUT ERR ARGS...: runs the CLI (bounded by CLI_TIMEOUT); stdout to OUT, stderr to ERR
# ("-": into OUT as well). Sets CLI_RC and CLI_MS.
cli() {
  local out=$1 err=$2 rc=0 t0
  shift 2
  t0=$(now_ms)
  if [[ $err == - ]]; then
    timeout -k 5 "$CLI_TIMEOUT" "$AUTONOMY_BIN" "$@" >"$out" 2>&1 || rc=$?
  else
    timeout -k 5 "$CLI_TIMEOUT" "$AUTONOMY_BIN" "$@" >"$out" 2>"$err" || rc=$?
  fi
  CLI_RC=$rc
  CLI_MS=$(($(now_ms) - t0))
}

# cp_cli OUT ERR ARGS...: like cli, but only when the lab's own CP is running (CLI_RC=125
# and a note in OUT otherwise).
cp_cli() {
  if ! cp_alive; then
    printf 'lab_error: command not run (autonomy %s): the lab control plane is not running\n' "$*" >"$1"
    CLI_RC=125
    CLI_MS=0
    return 0
  fi
  cli "$@"
}

# ------------------------------------------------------------------------------------------
# Checks and reports
# ------------------------------------------------------------------------------------------

# check_done ID NAME CHECKFILE EVIDENCE KEY=VALUE...: records one check of the current lab.
# The values (one must be pass=true|false) go to the report and, one per line, to CHECKFILE
# ("-": no file; "+FILE": appended). EVIDENCE: the check's files, relative to the lab dir.
check_done() {
  local id=$1 name=$2 file=$3 evidence=$4 kv k v pass=false meas=""
  shift 4
  local -a lines=()
  for kv in "$@"; do
    k=${kv%%=*}
    v=${kv#*=}
    v=${v//$'\n'/ }
    v=${v//$'\t'/ }
    v=${v//$'\r'/ }
    if [[ $k == pass ]]; then
      pass=$v
    fi
    MV["$id.$k"]=$v
    meas+="$k=$v"$'\x1f'
    lines+=("$k=$v")
  done
  if [[ $pass != true ]]; then
    pass=false
  fi
  if [[ $file == +* ]]; then
    printf '%s\n' "${lines[@]}" >>"${file#+}"
  elif [[ $file != - ]]; then
    printf '%s\n' "${lines[@]}" >"$file"
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$name" "$pass" "$evidence" "$meas" >>"$LAB_CHECKS"
  if [[ $pass == true ]]; then
    say "$LAB: PASS $id $name"
  else
    say "$LAB: FAIL $id $name"
  fi
}

# lab_start_check ID NAME LOG HEALTH_FILE EVIDENCE: starts the lab's CP (logging to LOG), GETs
# /v1/health into HEALTH_FILE and records check ID. Returns non-zero when the CP did not start.
lab_start_check() {
  local id=$1 name=$2 log=$3 health=$4 evidence=$5 started=false code status pass
  if lab_cp_start "$log"; then started=true; fi
  code=$(http_req GET "$LAB_BASE/v1/health" "$health")
  status=$(pyj "$health" 'd.get("status")')
  pass=$(bool chk "$started" = true "$code" = 200 "$status" = ok)
  check_done "$id" "$name" - "$evidence" \
    "cp_started=$started" "cp_ready_ms=$CP_READY_MS" "cp_start_error=$CP_START_ERROR" \
    "http_code=$code" "status=$status" "pass=$pass"
  [[ $started == true ]]
}

# mval KEY: a measured value of the current lab ("" when not measured).
mval() { printf '%s' "${MV[$1]-}"; }

PY_REPORT=$(
  cat <<'PY'
import json, re, sys
lab, title, tsv, out_json, out_txt, started, finished = sys.argv[1:8]
env_kv, notes = sys.argv[8], sys.argv[9]
def conv(v):
    if v in ("true", "false"):
        return v == "true"
    if re.fullmatch(r"-?(0|[1-9][0-9]{0,15})", v):
        return int(v)
    if re.fullmatch(r"-?(0|[1-9][0-9]*)\.[0-9]+", v):
        return float(v)
    return v
def kvs(s):
    out = {}
    for kv in s.split("\x1f"):
        if kv:
            k, _, v = kv.partition("=")
            if k != "pass":
                out[k] = conv(v)
    return out
checks = []
with open(tsv, encoding="utf-8") as f:
    for line in f:
        line = line.rstrip("\n")
        if not line:
            continue
        cid, name, p, ev, meas = (line.split("\t") + [""] * 5)[:5]
        checks.append({"id": cid, "name": name, "pass": p == "true",
                       "evidence": [e for e in ev.split(" ") if e], "measured": kvs(meas)})
checks.sort(key=lambda c: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", c["id"])])
pass_count = sum(1 for c in checks if c["pass"])
total = len(checks)
ok = total > 0 and pass_count == total
notes_list = [n for n in notes.split("\x1f") if n]
report = {"lab": lab, "title": title, "result": "PASS" if ok else "FAIL",
          "pass_count": pass_count, "total": total,
          "started_at": started, "finished_at": finished,
          "environment": kvs(env_kv), "notes": notes_list, "checks": checks}
with open(out_json, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
lines = [title, "=" * len(title), "",
         f"lab={lab} started_at={started} finished_at={finished}"]
lines += [f"{k}={v}" for k, v in report["environment"].items()]
lines.append("")
for c in checks:
    mark = "PASS" if c["pass"] else "FAIL"
    lines.append(f"[{mark}] {c['id']} {c['name']}")
    meas = " ".join(f"{k}={json.dumps(v) if isinstance(v, bool) else v}"
                    for k, v in c["measured"].items())
    lines.append(f"       measured: {meas}")
    lines.append(f"       evidence: {' '.join(c['evidence'])}")
if notes_list:
    lines.append("")
    lines += [f"note: {n}" for n in notes_list]
lines += ["", f"pass_count={pass_count} total={total} result={report['result']}"]
with open(out_txt, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
print(f"{pass_count} {total} {report['result']}")
PY
)
readonly PY_REPORT

# lab_begin LAB PORT OPERATOR DATA_DIR AUDIT_DIR: fresh evidence dir, fresh data and audit
# dirs, and the environment every CLI call and CP start of the lab uses.
lab_begin() {
  LAB=$1
  LAB_PORT=$2
  LAB_BASE="http://127.0.0.1:$2"
  LAB_DATA_DIR=$4
  LAB_AUDIT_DIR=$5
  LAB_DIR="$EVIDENCE_DIR/$LAB"
  LAB_WORK="$WORK_DIR/$LAB-work"
  LAB_CHECKS="$WORK_DIR/$LAB-checks.tsv"
  LAB_STARTED_AT=$(utc_now)
  LAB_T0=$(now_ms)
  LAB_NOTES=()
  MV=()
  stop_all_cps
  rm -rf -- "$LAB_DIR" "$LAB_WORK" "$LAB_DATA_DIR" "$LAB_AUDIT_DIR"
  mkdir -p "$LAB_DIR" "$LAB_WORK" "$LAB_DATA_DIR" "$LAB_AUDIT_DIR"
  : >"$LAB_CHECKS"
  export AUTONOMY_RBAC_ENFORCEMENT=0
  export AUTONOMY_OPERATOR=$3
  export AUTONOMY_AUDIT_DIR=$LAB_AUDIT_DIR
  export AUTONOMY_SERVER=$LAB_BASE
  say "$LAB: starting (evidence: $LAB_DIR)"
}

lab_note() { LAB_NOTES+=("$*"); }

# lab_end TITLE [KEY=VALUE]...: stops the lab's CP, writes <lab>-report.json/.txt and the
# summary line.
lab_end() {
  local title=$1 finished res pass_count total result secs env="" kv notes=""
  shift
  if [[ -n $CUR_CP_PID ]]; then
    lab_cp_stop || true
  fi
  finished=$(utc_now)
  for kv in "environment=local-SQLite" "port=$LAB_PORT" "operator=$AUTONOMY_OPERATOR" \
    "rbac_enforcement=0" "data_dir=$LAB_DATA_DIR" "audit_dir=$LAB_AUDIT_DIR" \
    "autonomy_bin=$AUTONOMY_BIN" "evidence_dir=$LAB_DIR" "$@"; do
    env+="$kv"$'\x1f'
  done
  for kv in "${LAB_NOTES[@]}"; do
    notes+="${kv//$'\n'/ }"$'\x1f'
  done
  res=$(python3 -c "$PY_REPORT" "$LAB" "$title" "$LAB_CHECKS" "$LAB_DIR/$LAB-report.json" \
    "$LAB_DIR/$LAB-report.txt" "$LAB_STARTED_AT" "$finished" "$env" "$notes") || res="0 0 FAIL"
  read -r pass_count total result <<<"$res"
  secs=$(awk -v ms="$(($(now_ms) - LAB_T0))" 'BEGIN { printf "%.1f", ms / 1000 }')
  LAB_RESULT[$LAB]=$result
  LAB_LINE[$LAB]=$(printf '%-5s %-5s %s/%s checks  %6ss  report: %s' "$LAB" "$result" \
    "$pass_count" "$total" "$secs" "$LAB_DIR/$LAB-report.txt")
  say "$LAB: $result ($pass_count/$total checks, ${secs}s)"
}

# ------------------------------------------------------------------------------------------
# audit — baseline CLI + audit store
# ------------------------------------------------------------------------------------------

PY_AUDIT_EVENTS=$(
  cat <<'PY'
import json, sys
path, start = sys.argv[1], sys.argv[2]
want = sys.argv[3].split(",") if sys.argv[3] else []
actor = sys.argv[4]
try:
    items = json.load(open(path, encoding="utf-8"))["items"]
except Exception:
    items = None
if items is None:
    print("events=unreadable"); print("pass=false"); sys.exit()
ok = [e for e in items if e.get("outcome") == "success"]
res = sorted(e.get("resource") for e in ok)
print(f"events={len(items)}")
print(f"success_events={len(ok)}")
print("resources=" + (",".join(res) or "none"))
print(f"expected={','.join(sorted(want)) or 'none'}")
all_actor = all(e.get("actor") == actor for e in items)
in_time = all(e.get("time", "") >= start for e in items)
chained = all(e.get("hash") and e.get("prev_hash") is not None for e in items)
print(f"all_actor_{actor}={str(all_actor).lower()}")
print(f"all_after_start={str(in_time).lower()}")
print(f"hash_fields_present={str(chained).lower()}")
print("event_ids=" + ",".join(e.get("id", "?") for e in items))
print("pass=" + str(res == sorted(want) and all_actor and in_time and chained).lower())
PY
)
readonly PY_AUDIT_EVENTS

PY_TAMPER=$(
  cat <<'PY'
import json, os, sys
root, mode, resource = sys.argv[1], sys.argv[2], sys.argv[3]
for dirpath, _, files in sorted(os.walk(root)):
    for name in sorted(files):
        path = os.path.join(dirpath, name)
        try:
            lines = open(path, encoding="utf-8").read().split("\n")
        except Exception:
            continue
        for i, line in enumerate(lines):
            try:
                e = json.loads(line)
            except Exception:
                continue
            if isinstance(e, dict) and e.get("event_type") == "plan.created" and e.get("resource") == resource:
                if mode == "edit":
                    lines[i] = line.replace('"actor":"%s"' % e["actor"], '"actor":"mallory"', 1)
                    if lines[i] == line:
                        e["actor"] = "mallory"
                        lines[i] = json.dumps(e, separators=(",", ":"))
                else:
                    del lines[i]
                open(path, "w", encoding="utf-8").write("\n".join(lines))
                print(f"seq={e.get('seq')} id={e.get('id')} file={os.path.relpath(path, root)}")
                sys.exit(0)
print("seq=none id=none file=none")
sys.exit(1)
PY
)
readonly PY_TAMPER

run_cli_audit_lab() {
  local op=lab-audit-op
  lab_begin audit 18991 "$op" "$WORK_DIR/audit/data" "$WORK_DIR/audit/audit-store"
  local d=$LAB_DIR w=$LAB_WORK log="$LAB_DIR/audit-cp.log" start code status
  local i id rc pass
  start=$(utc_now)

  # AUDIT-01: the CP starts, answers health, and `autonomy health` agrees.
  local started=false
  if lab_cp_start "$log"; then started=true; fi
  code=$(http_req GET "$LAB_BASE/v1/health" "$d/audit-health.json")
  status=$(pyj "$d/audit-health.json" 'd.get("status")')
  cp_cli "$d/audit-cli-health.txt" - health
  pass=$(bool chk "$started" = true "$code" = 200 "$status" = ok "$CLI_RC" = 0)
  check_done AUDIT-01 "CP starts and answers health (HTTP and CLI)" - \
    "audit-health.json audit-cli-health.txt audit-cp.log" \
    "cp_started=$started" "cp_ready_ms=$CP_READY_MS" "cp_start_error=$CP_START_ERROR" \
    "http_code=$code" "status=$status" "cli_health_exit=$CLI_RC" \
    "cli_health_output=$(one_line "$d/audit-cli-health.txt")" "pass=$pass"
  if [[ $started != true ]]; then
    lab_note "lab aborted: the CP did not start ($CP_START_ERROR)"
    lab_end "AUDIT — baseline CLI and audit store"
    return 0
  fi

  # AUDIT-02: create via the CLI (json and text output), then a duplicate id.
  mkdir -p "$d/cli"
  local created_ok=0 bad=()
  for i in 1 2 3; do
    id=lab-audit-$i
    local -a extra=()
    local want=published
    if ((i == 3)); then extra=(--draft); want=draft; fi
    cp_cli "$d/cli/create-$id.json" "$d/cli/create-$id.err" -o json rollout create --id "$id" \
      --artifact-ref "$(good_artifact audit)" --fingerprint "$(good_fingerprint)" \
      --label lab=audit "${extra[@]}"
    if [[ $CLI_RC == 0 &&
      "$(pyj "$d/cli/create-$id.json" 'd["plan"]["metadata"]["id"]')" == "$id" &&
      "$(pyj "$d/cli/create-$id.json" 'd["status"]["phase"]')" == "$want" &&
      "$(pyj "$d/cli/create-$id.json" 'd["plan"]["metadata"]["created_by"]')" == "$op" ]]; then
      created_ok=$((created_ok + 1))
    else
      bad+=("$id:exit=$CLI_RC")
    fi
  done
  cp_cli "$d/cli/create-lab-audit-4.txt" - rollout create --id lab-audit-4 \
    --artifact-ref "$(good_artifact audit)" --fingerprint "$(good_fingerprint)"
  local text_rc=$CLI_RC text_id text_phase
  text_id=$(kv_from "$d/cli/create-lab-audit-4.txt" id)
  text_phase=$(kv_from "$d/cli/create-lab-audit-4.txt" phase)
  if [[ $text_rc == 0 && $text_id == lab-audit-4 && $text_phase == published ]]; then
    created_ok=$((created_ok + 1))
  else
    bad+=("lab-audit-4:exit=$text_rc")
  fi
  cp_cli "$d/cli/create-duplicate.txt" - rollout create --id lab-audit-1 \
    --artifact-ref "$(good_artifact audit)"
  local dup_rc=$CLI_RC dup_err
  dup_err=$(bool grep -q '^error: ' "$d/cli/create-duplicate.txt")
  pass=$(bool chk "$created_ok" = 4 "$dup_rc" = 5 "$dup_err" = true)
  check_done AUDIT-02 "CLI create (json + text output); duplicate id exits 5" - \
    "cli/create-lab-audit-1.json cli/create-lab-audit-2.json cli/create-lab-audit-3.json cli/create-lab-audit-4.txt cli/create-duplicate.txt" \
    "created_ok=$created_ok" "expected=4" "failed=$(ids_csv "${bad[@]}")" \
    "text_output=$(one_line "$d/cli/create-lab-audit-4.txt")" \
    "duplicate_exit=$dup_rc" "duplicate_error_line=$dup_err" "pass=$pass"

  # AUDIT-03: get (json and text) and a missing plan (exit 4).
  cp_cli "$d/cli/get-lab-audit-1.json" "$d/cli/get-lab-audit-1.err" -o json rollout get lab-audit-1
  local get_rc=$CLI_RC get_id get_phase get_by get_gen
  get_id=$(pyj "$d/cli/get-lab-audit-1.json" 'd["plan"]["metadata"]["id"]')
  get_phase=$(pyj "$d/cli/get-lab-audit-1.json" 'd["status"]["phase"]')
  get_by=$(pyj "$d/cli/get-lab-audit-1.json" 'd["plan"]["metadata"]["created_by"]')
  get_gen=$(pyj "$d/cli/get-lab-audit-1.json" 'd["plan"]["metadata"]["generation"]')
  cp_cli "$d/cli/get-lab-audit-2.txt" - rollout get lab-audit-2
  local gt_rc=$CLI_RC gt_id
  gt_id=$(kv_from "$d/cli/get-lab-audit-2.txt" id)
  cp_cli "$d/cli/get-missing.txt" - rollout get lab-audit-missing
  local miss_rc=$CLI_RC
  pass=$(bool chk "$get_rc" = 0 "$get_id" = lab-audit-1 "$get_phase" = published \
    "$get_by" = "$op" "$get_gen" = 1 "$gt_rc" = 0 "$gt_id" = lab-audit-2 "$miss_rc" = 4)
  check_done AUDIT-03 "CLI get (json + text); missing plan exits 4" - \
    "cli/get-lab-audit-1.json cli/get-lab-audit-2.txt cli/get-missing.txt" \
    "json_exit=$get_rc" "id=$get_id" "phase=$get_phase" "created_by=$get_by" "generation=$get_gen" \
    "text_exit=$gt_rc" "text_id=$gt_id" "missing_exit=$miss_rc" \
    "missing_output=$(one_line "$d/cli/get-missing.txt")" "pass=$pass"

  # AUDIT-04: list (all, by phase, a page of 2, text table).
  cp_cli "$d/cli/list.json" "$d/cli/list.err" -o json rollout list
  local l_rc=$CLI_RC l_ids
  l_ids=$(pyj "$d/cli/list.json" '",".join(sorted(ids(d)))')
  cp_cli "$d/cli/list-draft.json" "$d/cli/list-draft.err" -o json rollout list --phase draft
  local ld_rc=$CLI_RC ld_ids
  ld_ids=$(pyj "$d/cli/list-draft.json" '",".join(sorted(ids(d)))')
  cp_cli "$d/cli/list-limit2.json" "$d/cli/list-limit2.err" -o json rollout list --limit 2
  local lp_rc=$CLI_RC lp_n lp_cursor
  lp_n=$(pyj "$d/cli/list-limit2.json" 'len(d["items"])')
  lp_cursor=$(pyj "$d/cli/list-limit2.json" 'bool(d.get("next_cursor"))' false)
  cp_cli "$d/cli/list.txt" - rollout list
  local lt_rc=$CLI_RC lt_rows
  lt_rows=$(grep -cE '^lab-audit-[1-4][[:space:]]' "$d/cli/list.txt") || lt_rows=0
  pass=$(bool chk "$l_rc" = 0 "$l_ids" = "lab-audit-1,lab-audit-2,lab-audit-3,lab-audit-4" \
    "$ld_rc" = 0 "$ld_ids" = lab-audit-3 "$lp_rc" = 0 "$lp_n" = 2 \
    "$lp_cursor" = true "$lt_rc" = 0 "$lt_rows" = 4)
  check_done AUDIT-04 "CLI list: all, --phase draft, --limit 2 page, text table" - \
    "cli/list.json cli/list-draft.json cli/list-limit2.json cli/list.txt" \
    "list_exit=$l_rc" "list_ids=$l_ids" "draft_exit=$ld_rc" "draft_ids=$ld_ids" \
    "page_exit=$lp_rc" "page_items=$lp_n" "page_has_next_cursor=$lp_cursor" \
    "table_exit=$lt_rc" "table_rows=$lt_rows" "pass=$pass"

  # AUDIT-05: operator transitions via the CLI; an invalid one exits 5 and changes nothing.
  local tr_ok=0 tr_bad=() step verb tid want
  for step in publish:lab-audit-3:published start:lab-audit-1:active pause:lab-audit-1:paused resume:lab-audit-1:active; do
    IFS=: read -r verb tid want <<<"$step"
    cp_cli "$d/cli/$verb-$tid.txt" - rollout "$verb" "$tid"
    if [[ $CLI_RC == 0 && "$(plan_phase "$tid")" == "$want" ]]; then
      tr_ok=$((tr_ok + 1))
    else
      tr_bad+=("$verb:$tid:exit=$CLI_RC")
    fi
  done
  cp_cli "$d/cli/resume-lab-audit-2-invalid.txt" - rollout resume lab-audit-2
  local inv_rc=$CLI_RC inv_phase
  inv_phase=$(plan_phase lab-audit-2)
  pass=$(bool chk "$tr_ok" = 4 "$inv_rc" = 5 "$inv_phase" = published)
  check_done AUDIT-05 "CLI publish/start/pause/resume; invalid resume exits 5, phase unchanged" - \
    "cli/publish-lab-audit-3.txt cli/start-lab-audit-1.txt cli/pause-lab-audit-1.txt cli/resume-lab-audit-1.txt cli/resume-lab-audit-2-invalid.txt" \
    "transitions_ok=$tr_ok" "expected=4" "failed=$(ids_csv "${tr_bad[@]}")" \
    "invalid_resume_exit=$inv_rc" "phase_after_invalid=$inv_phase" "pass=$pass"

  # AUDIT-06: audit query finds the plan.created events (read directly and via the CP).
  mkdir -p "$d/audit"
  cli "$d/audit/plan-created-direct.json" "$d/audit/plan-created-direct.err" -o json audit query \
    --event-type plan.created --actor "$op" --start-time "$start"
  local q_rc=$CLI_RC
  local -a q_kv=()
  mapfile -t q_kv < <(python3 -c "$PY_AUDIT_EVENTS" "$d/audit/plan-created-direct.json" "$start" \
    "lab-audit-1,lab-audit-2,lab-audit-3,lab-audit-4" "$op")
  # The same query answered by the CP (GET /v1/audit/events): no AUTONOMY_AUDIT_DIR.
  local api_rc=125
  if cp_alive; then
    api_rc=0
    timeout -k 5 "$CLI_TIMEOUT" env -u AUTONOMY_AUDIT_DIR "$AUTONOMY_BIN" -o json audit query \
      --event-type plan.created --actor "$op" --start-time "$start" \
      >"$d/audit/plan-created-api.json" 2>"$d/audit/plan-created-api.err" || api_rc=$?
  fi
  local direct_ids api_ids
  direct_ids=$(pyj "$d/audit/plan-created-direct.json" '",".join(e["id"] for e in d["items"])' direct-unreadable)
  api_ids=$(pyj "$d/audit/plan-created-api.json" '",".join(e["id"] for e in d["items"])' api-unreadable)
  cli "$d/audit/phase-changed-direct.json" "$d/audit/phase-changed-direct.err" -o json audit query \
    --event-type rollout.phase_changed --actor "$op" --outcome success --start-time "$start"
  local pc_rc=$CLI_RC pc_1 pc_3
  pc_1=$(pyj "$d/audit/phase-changed-direct.json" 'sum(1 for e in d["items"] if e["resource"] == "lab-audit-1")' -1)
  pc_3=$(pyj "$d/audit/phase-changed-direct.json" 'sum(1 for e in d["items"] if e["resource"] == "lab-audit-3")' -1)
  local q_pass=false
  for kv in "${q_kv[@]}"; do
    if [[ $kv == pass=true ]]; then q_pass=true; fi
  done
  pass=$(bool chk "$q_rc" = 0 "$q_pass" = true "$api_rc" = 0 "$direct_ids" = "$api_ids" \
    "$pc_rc" = 0 "$pc_1" = 3 "$pc_3" = 1)
  local -a q_meas=()
  for kv in "${q_kv[@]}"; do
    if [[ $kv != pass=* ]]; then q_meas+=("$kv"); fi
  done
  check_done AUDIT-06 "audit query: plan.created events (direct == via CP), phase_changed events" - \
    "audit/plan-created-direct.json audit/plan-created-api.json audit/phase-changed-direct.json" \
    "direct_exit=$q_rc" "${q_meas[@]}" "api_exit=$api_rc" "api_matches_direct=$(bool test "$direct_ids" = "$api_ids")" \
    "phase_changed_exit=$pc_rc" "phase_changed_lab_audit_1=$pc_1" "phase_changed_lab_audit_3=$pc_3" \
    "pass=$pass"

  # AUDIT-07: audit verify passes while the CP runs.
  cli "$d/audit/verify-live.txt" - audit verify
  local v_rc=$CLI_RC
  pass=$(bool test "$v_rc" = 0)
  check_done AUDIT-07 "audit verify passes on the live store" - "audit/verify-live.txt" \
    "verify_exit=$v_rc" "verify_output=$(one_line "$d/audit/verify-live.txt")" "pass=$pass"

  # AUDIT-08: SIGTERM exits 0; with the CP down the CLI exits 3 naming the address, and the
  # audit store is still readable and verifiable.
  lab_cp_stop || true
  local term_rc=$STOP_RC term_forced=$STOP_FORCED term_ms=$STOP_MS
  cli "$d/cli/get-cp-down.txt" - rollout get lab-audit-1
  local down_rc=$CLI_RC down_refused down_addr
  down_refused=$(bool grep -qi 'connection refused' "$d/cli/get-cp-down.txt")
  down_addr=$(bool grep -qF "127.0.0.1:$LAB_PORT" "$d/cli/get-cp-down.txt")
  cli "$d/audit/plan-created-cp-down.json" "$d/audit/plan-created-cp-down.err" -o json audit query \
    --event-type plan.created --actor "$op" --start-time "$start"
  local off_rc=$CLI_RC off_ids
  off_ids=$(pyj "$d/audit/plan-created-cp-down.json" '",".join(e["id"] for e in d["items"])' offline-unreadable)
  cli "$d/audit/verify-cp-down.txt" - audit verify
  local offv_rc=$CLI_RC
  pass=$(bool chk "$term_rc" = 0 "$term_forced" = false "$down_rc" = 3 "$down_refused" = true \
    "$down_addr" = true "$off_rc" = 0 "$off_ids" = "$direct_ids" "$offv_rc" = 0)
  check_done AUDIT-08 "SIGTERM exits 0; CP down: CLI exit 3 names address; audit readable offline" - \
    "audit-cp.log cli/get-cp-down.txt audit/plan-created-cp-down.json audit/verify-cp-down.txt" \
    "sigterm_exit=$term_rc" "sigterm_forced_kill=$term_forced" "sigterm_stop_ms=$term_ms" \
    "cp_down_get_exit=$down_rc" "has_connection_refused=$down_refused" "names_address=$down_addr" \
    "cp_down_output=$(one_line "$d/cli/get-cp-down.txt")" \
    "offline_query_exit=$off_rc" "offline_matches_live=$(bool test "$off_ids" = "$direct_ids")" \
    "offline_verify_exit=$offv_rc" "pass=$pass"

  # AUDIT-09: tampering is detected (an edited event, a deleted event); the original verifies.
  local t_edit="$w/tampered-edit" t_del="$w/tampered-delete" edit_info del_info
  cp -a "$LAB_AUDIT_DIR" "$t_edit"
  cp -a "$LAB_AUDIT_DIR" "$t_del"
  edit_info=$(python3 -c "$PY_TAMPER" "$t_edit" edit lab-audit-2) || true
  del_info=$(python3 -c "$PY_TAMPER" "$t_del" delete lab-audit-2) || true
  local edit_seq=none del_seq=none
  if [[ $edit_info =~ seq=([^[:space:]]+) ]]; then edit_seq=${BASH_REMATCH[1]}; fi
  if [[ $del_info =~ seq=([^[:space:]]+) ]]; then del_seq=${BASH_REMATCH[1]}; fi
  printf '%s\n' "tampered (edit): $edit_info" >"$d/audit/tamper-edit-verify.txt"
  timeout -k 5 "$CLI_TIMEOUT" "$AUTONOMY_BIN" audit verify --audit-dir "$t_edit" \
    >>"$d/audit/tamper-edit-verify.txt" 2>&1 || true
  local e_rc=0
  timeout -k 5 "$CLI_TIMEOUT" "$AUTONOMY_BIN" audit verify --audit-dir "$t_edit" >/dev/null 2>&1 || e_rc=$?
  printf '%s\n' "tampered (delete): $del_info" >"$d/audit/tamper-delete-verify.txt"
  local dl_rc=0
  timeout -k 5 "$CLI_TIMEOUT" "$AUTONOMY_BIN" audit verify --audit-dir "$t_del" \
    >>"$d/audit/tamper-delete-verify.txt" 2>&1 || dl_rc=$?
  local e_names
  e_names=$(bool grep -qE "seq[ =:]*$edit_seq([^0-9]|$)" "$d/audit/tamper-edit-verify.txt")
  cli "$d/audit/verify-original.txt" - audit verify
  local o_rc=$CLI_RC
  pass=$(bool chk "$edit_seq" != none "$edit_seq" != "" "$e_rc" != 0 "$e_names" = true \
    "$del_seq" != none "$del_seq" != "" "$dl_rc" != 0 "$o_rc" = 0)
  check_done AUDIT-09 "audit verify detects an edited and a deleted event" - \
    "audit/tamper-edit-verify.txt audit/tamper-delete-verify.txt audit/verify-original.txt" \
    "edited_seq=$edit_seq" "edit_verify_exit=$e_rc" "edit_names_bad_seq=$e_names" \
    "deleted_seq=$del_seq" "delete_verify_exit=$dl_rc" "original_verify_exit=$o_rc" \
    "edit_output=$(one_line "$d/audit/tamper-edit-verify.txt")" "pass=$pass"

  # AUDIT-10: restart on the same data dir keeps the plans; a second CP on that data dir and
  # a CP on a taken port both refuse to start.
  local restarted=false persisted sec_rc=0 port_rc=0 probe_free
  if lab_cp_start "$log"; then restarted=true; fi
  persisted=$(plan_phase lab-audit-1)
  if port_in_use 18992; then probe_free=false; else probe_free=true; fi
  timeout -k 2 "$PROBE_TIMEOUT" "$AUTONOMY_BIN" serve --listen 127.0.0.1:18992 \
    --data-dir "$LAB_DATA_DIR" --audit-dir "$LAB_AUDIT_DIR" >"$d/second-cp-same-data-dir.txt" 2>&1 || sec_rc=$?
  mkdir -p "$w/other-data" "$w/other-audit"
  timeout -k 2 "$PROBE_TIMEOUT" "$AUTONOMY_BIN" serve --listen "127.0.0.1:$LAB_PORT" \
    --data-dir "$w/other-data" --audit-dir "$w/other-audit" >"$d/second-cp-taken-port.txt" 2>&1 || port_rc=$?
  local port_msg sec_out
  sec_out=$(bool test -s "$d/second-cp-same-data-dir.txt")
  port_msg=$(bool grep -qiE "$LAB_PORT|in use" "$d/second-cp-taken-port.txt")
  pass=$(bool chk "$restarted" = true "$persisted" = active "$probe_free" = true \
    "$sec_rc" != 0 "$sec_rc" != 124 "$sec_out" = true \
    "$port_rc" != 0 "$port_rc" != 124 "$port_msg" = true)
  check_done AUDIT-10 "restart keeps plans; second CP on same data dir / taken port refuses" - \
    "audit-cp.log second-cp-same-data-dir.txt second-cp-taken-port.txt" \
    "restarted=$restarted" "lab_audit_1_phase_after_restart=$persisted" \
    "probe_port_18992_free=$probe_free" \
    "same_data_dir_exit=$sec_rc" "same_data_dir_output=$(one_line "$d/second-cp-same-data-dir.txt")" \
    "taken_port_exit=$port_rc" "taken_port_names_port=$port_msg" \
    "taken_port_output=$(one_line "$d/second-cp-taken-port.txt")" "pass=$pass"

  lab_end "AUDIT — baseline CLI and audit store"
}

# ------------------------------------------------------------------------------------------
# val08 — concurrent creates under load
# ------------------------------------------------------------------------------------------

readonly VAL08_WORKERS=8 VAL08_PER_WORKER=25 VAL08_SHARED=5 VAL08_PAGE=37

# val08_worker W OUT: VAL08_PER_WORKER unique creates; after every fifth also one of the
# VAL08_SHARED ids every worker races for. Lines: KIND ID CODE SECONDS.
val08_worker() {
  local w=$1 out=$2 i id code body k
  local bodyf="$LAB_WORK/worker-$w.body"
  for ((i = 1; i <= VAL08_PER_WORKER; i++)); do
    for k in unique shared; do
      if [[ $k == unique ]]; then
        id=$(printf 'val08-w%02d-%03d' "$w" "$i")
      elif ((i % 5 == 0 && i / 5 <= VAL08_SHARED)); then
        id=val08-shared-$((i / 5))
      else
        continue
      fi
      body=$(plan_body "$id" false "$(good_artifact val08)" "$(good_fingerprint)" val08 "worker-$w")
      code=$(curl -s -o "$bodyf" -w '%{http_code} %{time_total}' --max-time "$HTTP_MAX_TIME" \
        --connect-timeout 5 -X POST -H 'Content-Type: application/json' \
        -H "X-Autonomy-Operator: $AUTONOMY_OPERATOR" --data-binary "$body" \
        "$LAB_BASE/v1/rollouts" 2>/dev/null) || true
      if [[ -z $code ]]; then code="000 0"; fi
      printf '%s %s %s\n' "$k" "$id" "$code" >>"$out"
      case "$k:${code%% *}" in
        unique:201 | shared:201 | shared:409) ;;
        *) printf '%s %s %s %s\n' "$k" "$id" "${code%% *}" "$(one_line "$bodyf")" >>"$LAB_DIR/val08-unexpected.txt" ;;
      esac
    done
  done
}

PY_VAL08_CODES=$(
  cat <<'PY'
import collections, sys
mode, path = sys.argv[1], sys.argv[2]
rows = [l.split() for l in open(path, encoding="utf-8") if l.strip()]
rows = [r for r in rows if len(r) >= 3 and r[0] == mode]
codes = collections.Counter(r[2] for r in rows)
print(f"requests={len(rows)}")
print("codes=" + (",".join(f"{c}:{n}" for c, n in sorted(codes.items())) or "none"))
print(f"count_201={codes.get('201', 0)}")
fivexx = sum(n for c, n in codes.items() if c.startswith("5"))
print(f"count_5xx={fivexx}")
print(f"count_no_answer={codes.get('000', 0)}")
if mode == "unique":
    t = sorted(float(r[3]) for r in rows if len(r) > 3)
    def pct(p):
        return t[min(len(t) - 1, int(p * len(t)))] if t else 0.0
    print(f"latency_p50_ms={pct(0.50) * 1000:.1f}")
    print(f"latency_p95_ms={pct(0.95) * 1000:.1f}")
    print(f"latency_max_ms={(t[-1] if t else 0) * 1000:.1f}")
    print("pass=" + str(len(rows) > 0 and codes.get("201", 0) == len(rows)).lower())
else:
    per = collections.defaultdict(collections.Counter)
    for r in rows:
        per[r[1]][r[2]] += 1
    winners = {i: c.get("201", 0) for i, c in per.items()}
    bad = sorted(i for i, c in per.items() if c.get("201", 0) != 1 or c.get("201", 0) + c.get("409", 0) != sum(c.values()))
    print(f"ids={len(per)}")
    print("winners_per_id=" + ",".join(f"{i}:{n}" for i, n in sorted(winners.items())))
    print("ids_not_exactly_one_201_rest_409=" + (",".join(bad) or "none"))
    print("pass=" + str(len(per) > 0 and not bad and fivexx == 0).lower())
PY
)
readonly PY_VAL08_CODES

PY_VAL08_LIST=$(
  cat <<'PY'
import collections, sys
listed = [l.strip() for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
created = {l.strip() for l in open(sys.argv[2], encoding="utf-8") if l.strip()}
dups = sorted(i for i, n in collections.Counter(listed).items() if n > 1)
missing = sorted(created - set(listed))
extra = sorted(set(listed) - created)
print(f"list_count={len(listed)}")
print(f"unique_listed={len(set(listed))}")
print(f"created_201={len(created)}")
print("duplicates=" + (",".join(dups[:20]) or "none"))
print("missing=" + (",".join(missing[:20]) or "none"))
print("unexpected=" + (",".join(extra[:20]) or "none"))
print("pass=" + str(len(created) > 0 and not dups and not missing and not extra and len(listed) == len(created)).lower())
PY
)
readonly PY_VAL08_LIST

run_val08_lab() {
  local op=val08-load-op
  lab_begin val08 18993 "$op" "$WORK_DIR/val08/data" "$WORK_DIR/val08/audit"
  local d=$LAB_DIR log="$LAB_DIR/val08-cp.log" code status pass start kv
  start=$(utc_now)

  if ! lab_start_check VAL08-01 "CP starts and answers health" "$log" \
    "$d/val08-health.json" "val08-health.json val08-cp.log"; then
    lab_note "lab aborted: the CP did not start ($CP_START_ERROR)"
    lab_end "VAL08 — concurrent creates under load"
    return 0
  fi

  # The load: VAL08_WORKERS workers in parallel, every one awaited.
  local codes="$d/val08-create-codes.txt" w t0 load_ms pid
  : >"$codes"
  : >"$d/val08-unexpected.txt"
  BG_PIDS=()
  t0=$(now_ms)
  for ((w = 1; w <= VAL08_WORKERS; w++)); do
    val08_worker "$w" "$LAB_WORK/worker-$w.codes" &
    BG_PIDS+=("$!")
  done
  local workers_failed=0
  for pid in "${BG_PIDS[@]}"; do
    wait "$pid" || workers_failed=$((workers_failed + 1))
  done
  BG_PIDS=()
  load_ms=$(($(now_ms) - t0))
  cat "$LAB_WORK"/worker-*.codes >"$codes"

  local -a u_kv=() s_kv=()
  mapfile -t u_kv < <(python3 -c "$PY_VAL08_CODES" unique "$codes")
  mapfile -t s_kv < <(python3 -c "$PY_VAL08_CODES" shared "$codes")
  local rps
  rps=$(awk -v n="$(grep -c . "$codes" || true)" -v ms="$load_ms" 'BEGIN { if (ms > 0) printf "%.1f", n * 1000 / ms; else print 0 }')
  check_done VAL08-02 "$((VAL08_WORKERS * VAL08_PER_WORKER)) concurrent unique creates: all 201, no 5xx" - \
    "val08-create-codes.txt val08-unexpected.txt" \
    "workers=$VAL08_WORKERS" "creates_per_worker=$VAL08_PER_WORKER" "workers_failed=$workers_failed" \
    "load_ms=$load_ms" "requests_per_second=$rps" "${u_kv[@]}"
  check_done VAL08-03 "contended ids ($VAL08_WORKERS workers each): exactly one 201, the rest 409" - \
    "val08-create-codes.txt val08-unexpected.txt" "${s_kv[@]}"

  # Every 201'd id, read back through the paginated list.
  local created="$LAB_WORK/created-ids.txt" listed="$LAB_WORK/listed-ids.txt" page cursor="" pages=0 complete=false
  awk '$3 == 201 { print $2 }' "$codes" >"$created"
  : >"$listed"
  mkdir -p "$d/list-pages"
  for ((page = 1; page <= 200; page++)); do
    local pf
    pf=$(printf '%s/list-pages/page-%03d.json' "$d" "$page")
    if [[ -z $cursor ]]; then
      code=$(http_get "$pf" "$LAB_BASE/v1/rollouts" "limit=$VAL08_PAGE")
    else
      code=$(http_get "$pf" "$LAB_BASE/v1/rollouts" "limit=$VAL08_PAGE" "cursor=$cursor")
    fi
    pages=$page
    if [[ $code != 200 ]]; then
      break
    fi
    pyj "$pf" '"\n".join(ids(d))' >>"$listed"
    cursor=$(pyj "$pf" 'd.get("next_cursor")')
    if [[ -z $cursor ]]; then
      complete=true
      break
    fi
  done
  local -a l_kv=()
  mapfile -t l_kv < <(python3 -c "$PY_VAL08_LIST" "$listed" "$created")
  cp "$listed" "$d/val08-listed-ids.txt"
  local l_pass=false
  for kv in "${l_kv[@]}"; do
    if [[ $kv == pass=true ]]; then l_pass=true; fi
  done
  local -a l_meas=()
  for kv in "${l_kv[@]}"; do
    if [[ $kv != pass=* ]]; then l_meas+=("$kv"); fi
  done
  pass=$(bool chk "$l_pass" = true "$complete" = true)
  check_done VAL08-04 "paginated list (limit=$VAL08_PAGE): every 201'd id exactly once" - \
    "list-pages/ val08-listed-ids.txt val08-create-codes.txt" \
    "page_size=$VAL08_PAGE" "pages=$pages" "pagination_complete=$complete" "last_code=$code" \
    "${l_meas[@]}" "pass=$pass"

  # Phase filter and limit bounds.
  local n201 fp_n lim0 lim1001 lim1000
  n201=$(grep -c . "$created" || true)
  code=$(http_get "$d/val08-list-published.json" "$LAB_BASE/v1/rollouts" phase=published limit=1000)
  fp_n=$(pyj "$d/val08-list-published.json" 'len(d["items"]) if not d.get("next_cursor") else -1' -1)
  lim1000=$code
  lim0=$(http_get "$LAB_WORK/lim0.json" "$LAB_BASE/v1/rollouts" limit=0)
  lim1001=$(http_get "$d/val08-list-limit-1001.json" "$LAB_BASE/v1/rollouts" limit=1001)
  pass=$(bool chk "$lim1000" = 200 "$fp_n" = "$n201" "$lim0" = 400 "$lim1001" = 400)
  check_done VAL08-05 "list ?phase=published&limit=1000 counts all; limit 0 and 1001 are 400" - \
    "val08-list-published.json val08-list-limit-1001.json" \
    "limit_1000_code=$lim1000" "published_count=$fp_n" "created_201=$n201" \
    "limit_0_code=$lim0" "limit_1001_code=$lim1001" "pass=$pass"

  # One plan.created audit event per acknowledged create; the chain verifies.
  cli "$d/val08-audit-created.json" "$d/val08-audit-created.err" -o json audit query \
    --event-type plan.created --actor "$op" --outcome success --start-time "$start" --limit 10000
  local a_rc=$CLI_RC a_n a_set_ok
  a_n=$(pyj "$d/val08-audit-created.json" 'len(d["items"])' -1)
  a_set_ok=$(python3 -c '
import json, sys
ev = json.load(open(sys.argv[1]))["items"]
created = sorted(l.strip() for l in open(sys.argv[2]) if l.strip())
print(str(sorted(e["resource"] for e in ev) == created).lower())' "$d/val08-audit-created.json" "$created" 2>/dev/null) || a_set_ok=false
  cli "$d/val08-audit-verify.txt" - audit verify
  local v_rc=$CLI_RC
  pass=$(bool chk "$a_rc" = 0 "$a_n" = "$n201" "$a_set_ok" = true "$v_rc" = 0)
  check_done VAL08-06 "one plan.created audit event per 201; audit verify passes" - \
    "val08-audit-created.json val08-audit-verify.txt" \
    "query_exit=$a_rc" "plan_created_events=$a_n" "created_201=$n201" "resources_match=$a_set_ok" \
    "verify_exit=$v_rc" "verify_output=$(one_line "$d/val08-audit-verify.txt")" "pass=$pass"

  # The CP is healthy after the load, never panicked, and stops cleanly.
  code=$(http_req GET "$LAB_BASE/v1/health" "$LAB_WORK/health-after.json")
  lab_cp_stop || true
  local panics
  panics=$(grep -ci 'panic' "$log" || true)
  pass=$(bool chk "$code" = 200 "$panics" = 0 "$STOP_RC" = 0 "$STOP_FORCED" = false)
  check_done VAL08-07 "CP healthy after load, no panic in its log, SIGTERM exits 0" - "val08-cp.log" \
    "health_after_load=$code" "panic_lines=$panics" "sigterm_exit=$STOP_RC" \
    "sigterm_forced_kill=$STOP_FORCED" "pass=$pass"

  lab_end "VAL08 — concurrent creates under load"
}

# ------------------------------------------------------------------------------------------
# val09 — stuck detection
# ------------------------------------------------------------------------------------------

PY_STUCK_SET=$(
  cat <<'PY'
import json, sys
path, code, expected, excluded, thr, phases = sys.argv[1:7]
expected = set(filter(None, expected.split(",")))
excluded = set(filter(None, excluded.split(",")))
phases = dict(kv.split("=", 1) for kv in phases.split(",") if kv)
thr = float(thr)
try:
    d = json.load(open(path, encoding="utf-8"))
    items = d["items"]
    count = d["stuck_count"]
except Exception:
    print(f"http_code={code}"); print("readable=false"); print("pass=false"); sys.exit()
ids = [i.get("id") for i in items]
got = set(ids)
missing = sorted(expected - got)
unexpected = sorted(got - expected)
wrongly = sorted(got & excluded)
diag = all(isinstance(i.get("diagnosis"), str) and i["diagnosis"].strip() for i in items)
acts = all(isinstance(i.get("suggested_actions"), list) and i["suggested_actions"]
           and all(isinstance(a, str) and a.strip().startswith("autonomy ") for a in i["suggested_actions"])
           and any(i.get("id", "\0") in a for a in i["suggested_actions"]) for i in items)
stale = all(float(i.get("stale_seconds", -1)) >= thr for i in items)
phase_ok = all(i.get("phase") in ("published", "active") and phases.get(i.get("id"), i.get("phase")) == i.get("phase") for i in items)
print(f"http_code={code}")
print(f"threshold_seconds={thr:g}")
print(f"stuck_count={count}")
print(f"items={len(items)}")
print(f"count_consistent={str(count == len(items)).lower()}")
print("reported=" + (",".join(sorted(got)) or "none"))
print("missing=" + (",".join(missing) or "none"))
print("unexpected=" + (",".join(unexpected) or "none"))
print("excluded_but_reported=" + (",".join(wrongly) or "none"))
print(f"diagnosis_non_empty={str(diag).lower()}")
print(f"suggested_actions_ok={str(acts).lower()}")
print(f"stale_seconds_ge_threshold={str(stale).lower()}")
print(f"phases_match={str(phase_ok).lower()}")
if items:
    print("sample_diagnosis=" + items[0].get("diagnosis", "").replace("\n", " ")[:200])
    print("sample_action=" + (items[0].get("suggested_actions") or [""])[0].replace("\n", " ")[:200])
ok = code == "200" and count == len(items) and not missing and not unexpected and not wrongly and diag and acts and stale and phase_ok and len(ids) == len(got)
print("pass=" + str(ok).lower())
PY
)
readonly PY_STUCK_SET

run_val09_lab() {
  local op=val09-stuck-op
  lab_begin val09 18994 "$op" "$WORK_DIR/val09/data" "$WORK_DIR/val09/audit"
  local d=$LAB_DIR log="$LAB_DIR/val09-cp.log" code status pass id
  local setup="$d/val09-setup.txt"
  : >"$setup"

  if ! lab_start_check VAL09-01 "CP starts and answers health" "$log" \
    "$d/val09-health.json" "val09-health.json val09-cp.log"; then
    lab_note "lab aborted: the CP did not start ($CP_START_ERROR)"
    lab_end "VAL09 — stuck detection"
    return 0
  fi

  # Plans that age past the threshold, in every phase an operator can reach.
  local -a stale=(val09-stale-1 val09-stale-2 val09-stale-3 val09-stale-active-1)
  local -a excluded=(val09-draft-1 val09-paused-1 val09-aborted-1 val09-rolled-back-1)
  local -a fresh=(val09-fresh-1 val09-fresh-2)
  local setup_fail=()
  local spec
  for spec in val09-stale-1:false val09-stale-2:false val09-stale-3:false val09-stale-active-1:false \
    val09-retried-1:false val09-draft-1:true val09-paused-1:false val09-aborted-1:false \
    val09-rolled-back-1:false; do
    id=${spec%%:*}
    code=$(create_plan "$id" "${spec#*:}" "$(good_artifact val09)" "$(good_fingerprint)" stuck "$LAB_WORK/create.json")
    printf 'create id=%s http_code=%s\n' "$id" "$code" >>"$setup"
    if [[ $code != 201 ]]; then setup_fail+=("create:$id:$code"); fi
  done
  local step verb tid
  for step in start:val09-stale-active-1 start:val09-paused-1 pause:val09-paused-1; do
    verb=${step%%:*}
    tid=${step#*:}
    cp_cli "$LAB_WORK/verb.txt" - rollout "$verb" "$tid"
    printf '%s id=%s exit=%s %s\n' "$verb" "$tid" "$CLI_RC" "$(one_line "$LAB_WORK/verb.txt")" >>"$setup"
    if [[ $CLI_RC != 0 ]]; then setup_fail+=("$verb:$tid:$CLI_RC"); fi
  done
  for step in abort:val09-aborted-1 rollback:val09-rolled-back-1; do
    cp_cli "$LAB_WORK/exec.txt" - rollback execute --target rollout_plan --resource "${step#*:}" \
      --strategy "${step%%:*}" --reason val09-setup
    printf 'execute %s id=%s exit=%s %s\n' "${step%%:*}" "${step#*:}" "$CLI_RC" "$(one_line "$LAB_WORK/exec.txt")" >>"$setup"
    if [[ $CLI_RC != 0 ]]; then setup_fail+=("${step%%:*}:${step#*:}:$CLI_RC"); fi
  done

  sleep 3 # ages every plan above past the 2 s threshold

  # Re-dispatch resets the stuck clock; plans created now are fresh.
  cp_cli "$LAB_WORK/exec.txt" - rollback execute --target rollout_plan --resource val09-retried-1 \
    --strategy retry --reason val09-reset-stuck-clock
  printf 'execute retry id=val09-retried-1 exit=%s %s\n' "$CLI_RC" "$(one_line "$LAB_WORK/exec.txt")" >>"$setup"
  if [[ $CLI_RC != 0 ]]; then setup_fail+=("retry:val09-retried-1:$CLI_RC"); fi
  for id in "${fresh[@]}"; do
    code=$(create_plan "$id" false "$(good_artifact val09)" "$(good_fingerprint)" fresh "$LAB_WORK/create.json")
    printf 'create id=%s http_code=%s\n' "$id" "$code" >>"$setup"
    if [[ $code != 201 ]]; then setup_fail+=("create:$id:$code"); fi
  done
  # The scans, right away (the fresh plans are well under 2 s old).
  local c2 c25 c3600 c0
  c2=$(http_get "$d/val09-scan-t2.json" "$LAB_BASE/v1/rollouts/stuck" threshold_seconds=2)
  c25=$(http_get "$d/val09-scan-t2.5.json" "$LAB_BASE/v1/rollouts/stuck" threshold_seconds=2.5)
  c0=$(http_get "$d/val09-scan-t0.json" "$LAB_BASE/v1/rollouts/stuck" threshold_seconds=0)
  c3600=$(http_get "$d/val09-scan-t3600.json" "$LAB_BASE/v1/rollouts/stuck" threshold_seconds=3600)
  cp_cli "$d/val09-cli-stuck-t2.json" "$d/val09-cli-stuck-t2.err" -o json rollout stuck --threshold-seconds 2
  local cli_rc=$CLI_RC
  cp_cli "$d/val09-cli-stuck-t2.txt" - rollout stuck --threshold-seconds 2
  local cli_text_rc=$CLI_RC

  # Actual phases (for the phase check, and the setup evidence).
  local phases="" all_ids=("${stale[@]}" val09-retried-1 "${excluded[@]}" "${fresh[@]}") ph
  for id in "${all_ids[@]}"; do
    ph=$(plan_phase "$id")
    phases+="$id=$ph,"
    printf 'phase id=%s phase=%s\n' "$id" "$ph" >>"$setup"
  done
  local want_phases="val09-stale-1=published,val09-stale-2=published,val09-stale-3=published,val09-stale-active-1=active,val09-retried-1=active,val09-draft-1=draft,val09-paused-1=paused,val09-aborted-1=aborted,val09-rolled-back-1=rolled_back,val09-fresh-1=published,val09-fresh-2=published,"
  pass=$(bool chk "${#setup_fail[@]}" = 0 "$phases" = "$want_phases")
  check_done VAL09-02 "setup: plans in published, active, paused, draft, aborted, rolled_back" - \
    "val09-setup.txt" "setup_failures=$(ids_csv "${setup_fail[@]}")" "phases=$phases" "pass=$pass"

  local excl_csv stale_csv live_csv
  excl_csv=$(ids_csv "${excluded[@]}" "${fresh[@]}" val09-retried-1)
  stale_csv=$(ids_csv "${stale[@]}")
  live_csv=$(ids_csv "${stale[@]}" "${fresh[@]}" val09-retried-1)
  local -a k=()
  mapfile -t k < <(python3 -c "$PY_STUCK_SET" "$d/val09-scan-t2.json" "$c2" "$stale_csv" "$excl_csv" 2 "$phases")
  check_done VAL09-03 "threshold 2s: exactly the stale published/active plans, with diagnosis + actions" - \
    "val09-scan-t2.json val09-setup.txt" "${k[@]}"
  mapfile -t k < <(python3 -c "$PY_STUCK_SET" "$d/val09-scan-t2.5.json" "$c25" "$stale_csv" "$excl_csv" 2.5 "$phases")
  check_done VAL09-04 "fractional threshold 2.5s: same set" - "val09-scan-t2.5.json" "${k[@]}"
  mapfile -t k < <(python3 -c "$PY_STUCK_SET" "$d/val09-scan-t0.json" "$c0" "$live_csv" "$(ids_csv "${excluded[@]}")" 0 "$phases")
  check_done VAL09-05 "threshold 0: every published/active plan, never draft/paused/terminal" - \
    "val09-scan-t0.json" "${k[@]}"
  mapfile -t k < <(python3 -c "$PY_STUCK_SET" "$d/val09-scan-t3600.json" "$c3600" "" "$(ids_csv "${all_ids[@]}")" 3600 "$phases")
  check_done VAL09-06 "threshold 3600s: nothing reported" - "val09-scan-t3600.json" "${k[@]}"

  # The retried plan is active and not stuck: retry reset its clock.
  local r_rep
  r_rep=$(pyj "$d/val09-scan-t2.json" '"val09-retried-1" in [i["id"] for i in d["items"]]' unknown)
  local r_phase
  r_phase=$(plan_phase val09-retried-1)
  pass=$(bool chk "$r_rep" = false "$r_phase" = active)
  check_done VAL09-07 "retry resets the stuck clock (retried plan not reported at 2s)" - \
    "val09-scan-t2.json val09-setup.txt" "retried_reported=$r_rep" "retried_phase=$r_phase" "pass=$pass"

  # Bad thresholds are a 400 naming the field.
  local bad_ok=0 bad_res=() v bc bm
  for v in -1 abc; do
    bc=$(http_get "$d/val09-scan-bad-$v.json" "$LAB_BASE/v1/rollouts/stuck" "threshold_seconds=$v")
    bm=$(pyj "$d/val09-scan-bad-$v.json" 'd["error"]["code"] == "invalid_request" and "threshold_seconds" in d["error"]["message"]' false)
    bad_res+=("$v:$bc:$bm")
    if [[ $bc == 400 && $bm == true ]]; then bad_ok=$((bad_ok + 1)); fi
  done
  pass=$(bool test "$bad_ok" = 2)
  check_done VAL09-08 "invalid thresholds (-1, abc): 400 invalid_request naming threshold_seconds" - \
    "val09-scan-bad--1.json val09-scan-bad-abc.json" "results=$(ids_csv "${bad_res[@]}")" "pass=$pass"

  # The CLI scan agrees with the API.
  local cli_ids api_ids text_count
  cli_ids=$(pyj "$d/val09-cli-stuck-t2.json" '",".join(sorted(i["id"] for i in d["items"]))' cli-unreadable)
  api_ids=$(pyj "$d/val09-scan-t2.json" '",".join(sorted(i["id"] for i in d["items"]))' api-unreadable)
  text_count=$(kv_from "$d/val09-cli-stuck-t2.txt" stuck_count)
  pass=$(bool chk "$cli_rc" = 0 "$cli_ids" = "$api_ids" "$cli_text_rc" = 0 "$text_count" = "${#stale[@]}")
  check_done VAL09-09 "CLI rollout stuck (json + text) agrees with the API" - \
    "val09-cli-stuck-t2.json val09-cli-stuck-t2.txt" \
    "cli_json_exit=$cli_rc" "cli_ids=$cli_ids" "api_ids=$api_ids" "cli_text_exit=$cli_text_rc" \
    "cli_text_stuck_count=$text_count" "pass=$pass"

  lab_end "VAL09 — stuck detection"
}

# ------------------------------------------------------------------------------------------
# val10 — rollback reliability on clean plans
# ------------------------------------------------------------------------------------------

# val10_expect PHASE STRATEGY: "OUTCOME FINAL_PHASE" (SPEC §2). Retry of an active plan is a
# re-dispatch; the SPEC's noop rule could also be read to cover it, so both are accepted.
val10_expect() {
  case "$1:$2" in
    draft:retry) echo "rejected draft" ;;
    published:retry | paused:retry) echo "success active" ;;
    active:retry) echo "success|noop active" ;;
    aborted:retry) echo "rejected aborted" ;;
    rolled_back:retry) echo "rejected rolled_back" ;;
    draft:rollback | published:rollback | active:rollback | paused:rollback) echo "success rolled_back" ;;
    aborted:rollback) echo "rejected aborted" ;;
    rolled_back:rollback) echo "noop rolled_back" ;;
    draft:abort | published:abort | active:abort | paused:abort) echo "success aborted" ;;
    aborted:abort) echo "noop aborted" ;;
    rolled_back:abort) echo "rejected rolled_back" ;;
    *) echo "unknown unknown" ;;
  esac
}

# val10_setup ID PHASE LOG: a clean plan brought to PHASE with operator verbs.
val10_setup() {
  local id=$1 phase=$2 log=$3 step
  local -a draft=() steps=()
  if [[ $phase == draft ]]; then draft=(--draft); fi
  cp_cli "$LAB_WORK/setup.txt" - rollout create --id "$id" --artifact-ref "$(good_artifact val10)" \
    --fingerprint "$(good_fingerprint)" --label lab=val10 "${draft[@]}"
  printf 'create exit=%s %s\n' "$CLI_RC" "$(one_line "$LAB_WORK/setup.txt")" >>"$log"
  if [[ $CLI_RC != 0 ]]; then return 1; fi
  case $phase in
    active) steps=(verb:start) ;;
    paused) steps=(verb:start verb:pause) ;;
    aborted) steps=(exec:abort) ;;
    rolled_back) steps=(exec:rollback) ;;
  esac
  for step in "${steps[@]}"; do
    if [[ $step == verb:* ]]; then
      cp_cli "$LAB_WORK/setup.txt" - rollout "${step#verb:}" "$id"
    else
      cp_cli "$LAB_WORK/setup.txt" - rollback execute --target rollout_plan --resource "$id" \
        --strategy "${step#exec:}" --reason val10-setup
    fi
    printf '%s exit=%s %s\n' "$step" "$CLI_RC" "$(one_line "$LAB_WORK/setup.txt")" >>"$log"
    if [[ $CLI_RC != 0 ]]; then return 1; fi
  done
  local got
  got=$(plan_phase "$id")
  printf 'phase=%s want=%s\n' "$got" "$phase" >>"$log"
  [[ $got == "$phase" ]]
}

run_val10_lab() {
  local op=val10-recovery-op
  lab_begin val10 18995 "$op" "$WORK_DIR/val10/data" "$WORK_DIR/val10/audit"
  local d=$LAB_DIR log="$LAB_DIR/val10-cp.log" code status pass start
  start=$(utc_now)

  if ! lab_start_check VAL10-01 "CP starts and answers health" "$log" \
    "$d/val10-health.json" "val10-health.json val10-cp.log"; then
    lab_note "lab aborted: the CP did not start ($CP_START_ERROR)"
    lab_end "VAL10 — rollback reliability on clean plans"
    return 0
  fi

  mkdir -p "$d/setup" "$d/exec" "$d/phase"
  local -a phases=(draft published active paused aborted rolled_back) strategies=(retry rollback abort)
  local ph s id
  declare -A setup_ok=() rc=() cli_out=() final=()
  for ph in "${phases[@]}"; do
    for s in "${strategies[@]}"; do
      id="val10-${ph//_/-}-$s"
      : >"$d/setup/$id.txt"
      if val10_setup "$id" "$ph" "$d/setup/$id.txt"; then setup_ok[$id]=true; else setup_ok[$id]=false; fi
      cp_cli "$d/exec/$id.txt" - rollback execute --target rollout_plan --resource "$id" \
        --strategy "$s" --reason val10-matrix
      rc[$id]=$CLI_RC
      cli_out[$id]=$(kv_from "$d/exec/$id.txt" outcome)
      code=$(http_req GET "$LAB_BASE/v1/rollouts/$id" "$d/phase/$id.json")
      final[$id]=$(pyj "$d/phase/$id.json" 'd["status"]["phase"]')
    done
  done

  # Dry run: reports the move, changes nothing, writes no rollback.executed event.
  local dry=val10-dryrun-1 gen_before gen_after
  : >"$d/setup/$dry.txt"
  local dry_setup=false
  if val10_setup "$dry" published "$d/setup/$dry.txt"; then dry_setup=true; fi
  http_req GET "$LAB_BASE/v1/rollouts/$dry" "$LAB_WORK/dry-before.json" >/dev/null
  gen_before=$(pyj "$LAB_WORK/dry-before.json" 'd["plan"]["metadata"]["generation"]')
  cp_cli "$d/exec/$dry.txt" - rollback execute --target rollout_plan --resource "$dry" \
    --strategy retry --reason val10-dryrun --dry-run
  local dry_rc=$CLI_RC dry_out dry_to dry_flag
  dry_out=$(kv_from "$d/exec/$dry.txt" outcome)
  dry_to=$(kv_from "$d/exec/$dry.txt" to_phase)
  dry_flag=$(kv_from "$d/exec/$dry.txt" dry_run)
  http_req GET "$LAB_BASE/v1/rollouts/$dry" "$d/phase/$dry.json" >/dev/null
  gen_after=$(pyj "$d/phase/$dry.json" 'd["plan"]["metadata"]["generation"]')
  local dry_phase
  dry_phase=$(pyj "$d/phase/$dry.json" 'd["status"]["phase"]')

  # Not found and bad usage.
  cp_cli "$d/exec/val10-missing.txt" - rollback execute --target rollout_plan --resource val10-missing-1 \
    --strategy retry --reason val10-missing
  local nf_rc=$CLI_RC
  cli "$d/exec/val10-bad-strategy.txt" - rollback execute --target rollout_plan --resource val10-published-retry \
    --strategy reboot --reason val10-bad-usage
  local bs_rc=$CLI_RC

  # Every execution's audit event, read from the retained store.
  cli "$d/val10-audit-executed.json" "$d/val10-audit-executed.err" -o json audit query \
    --event-type rollback.executed --actor "$op" --start-time "$start" --limit 10000
  local a_rc=$CLI_RC
  declare -A a_count=() a_outcome=()
  local rid n outs
  while read -r rid n outs; do
    a_count[$rid]=$n
    a_outcome[$rid]=$outs
  done < <(python3 -c '
import collections, json, sys
ev = json.load(open(sys.argv[1]))["items"]
by = collections.defaultdict(list)
for e in ev:
    by[(e["resource"], e.get("reason"))].append(e["outcome"])
for (res, reason), outs in sorted(by.items()):
    if reason in ("val10-matrix", "val10-dryrun"):
        print(res, len(outs), ",".join(outs))' "$d/val10-audit-executed.json" 2>/dev/null || true)

  local n_check=2 exp_out exp_phase out_ok got_out want_rc ok_cells=0
  for ph in "${phases[@]}"; do
    for s in "${strategies[@]}"; do
      id="val10-${ph//_/-}-$s"
      read -r exp_out exp_phase <<<"$(val10_expect "$ph" "$s")"
      got_out=${cli_out[$id]:-none}
      if [[ $exp_out == rejected ]]; then want_rc=5; else want_rc=0; fi
      out_ok=false
      if [[ "|$exp_out|" == *"|$got_out|"* ]]; then out_ok=true; fi
      local ac=${a_count[$id]:-0} ao=${a_outcome[$id]:-none}
      pass=$(bool chk "${setup_ok[$id]}" = true "${rc[$id]}" = "$want_rc" "$out_ok" = true \
        "${final[$id]}" = "$exp_phase" "$ac" = 1 "$ao" = "$got_out")
      if [[ $pass == true ]]; then ok_cells=$((ok_cells + 1)); fi
      check_done "VAL10-$(printf '%02d' "$n_check")" "$s on $ph → $exp_out, exit $want_rc, phase $exp_phase" - \
        "setup/$id.txt exec/$id.txt phase/$id.json val10-audit-executed.json" \
        "resource=$id" "setup_ok=${setup_ok[$id]}" "exit_code=${rc[$id]}" "expected_exit=$want_rc" \
        "outcome=$got_out" "expected_outcome=$exp_out" "phase_after=${final[$id]}" \
        "expected_phase=$exp_phase" "audit_events=$ac" "audit_outcome=$ao" \
        "output=$(one_line "$d/exec/$id.txt")" "pass=$pass"
      n_check=$((n_check + 1))
    done
  done

  local dry_events=${a_count[$dry]:-0}
  pass=$(bool chk "$dry_setup" = true "$dry_rc" = 0 "$dry_out" = success "$dry_to" = active \
    "$dry_flag" = true "$dry_phase" = published "$gen_before" = "$gen_after" "$dry_events" = 0)
  check_done VAL10-20 "dry-run retry: reports published→active, changes nothing, no audit event" - \
    "setup/$dry.txt exec/$dry.txt phase/$dry.json val10-audit-executed.json" \
    "exit_code=$dry_rc" "outcome=$dry_out" "to_phase=$dry_to" "dry_run=$dry_flag" \
    "phase_after=$dry_phase" "generation_before=$gen_before" "generation_after=$gen_after" \
    "audit_events=$dry_events" "pass=$pass"

  pass=$(bool chk "$nf_rc" = 4 "$bs_rc" = 2)
  check_done VAL10-21 "unknown plan exits 4; unknown strategy exits 2 (usage)" - \
    "exec/val10-missing.txt exec/val10-bad-strategy.txt" \
    "missing_plan_exit=$nf_rc" "missing_output=$(one_line "$d/exec/val10-missing.txt")" \
    "bad_strategy_exit=$bs_rc" "pass=$pass"

  cli "$d/val10-audit-verify.txt" - audit verify
  local v_rc=$CLI_RC total_events
  total_events=$(pyj "$d/val10-audit-executed.json" 'sum(1 for e in d["items"] if e.get("reason") == "val10-matrix")' -1)
  pass=$(bool chk "$a_rc" = 0 "$total_events" = 18 "$v_rc" = 0)
  check_done VAL10-22 "18 matrix executions → 18 rollback.executed events; audit verify passes" - \
    "val10-audit-executed.json val10-audit-verify.txt" \
    "query_exit=$a_rc" "matrix_events=$total_events" "matrix_cells_passed=$ok_cells" \
    "verify_exit=$v_rc" "pass=$pass"

  lab_end "VAL10 — rollback reliability on clean plans"
}

# ------------------------------------------------------------------------------------------
# val11 — the VAL11 chaos test pack (seed 000_1cf83b525a29892c), exactly
# ------------------------------------------------------------------------------------------

PY_VAL11_STUCK=$(
  cat <<'PY'
import json, sys
path, code = sys.argv[1], sys.argv[2]
dev = sys.argv[3].split(",")
try:
    d = json.load(open(path, encoding="utf-8"))
    items, count = d["items"], d["stuck_count"]
except Exception:
    print(f"http_code={code}"); print("stuck_count=unreadable"); print("diagnosis_ok=false"); print("pass=false"); sys.exit()
ids = [i.get("id") for i in items]
diag = bool(items) and all(isinstance(i.get("diagnosis"), str) and i["diagnosis"].strip() for i in items)
acts = bool(items) and all(isinstance(i.get("suggested_actions"), list) and i["suggested_actions"] for i in items)
dev_n = sum(1 for x in dev if x in ids)
print(f"http_code={code}")
print("threshold_seconds=2")
print("sleep_seconds=3")
print(f"stuck_count={count}")
print("stuck_ids=" + (",".join(ids) or "none"))
print(f"diagnosis_ok={str(diag).lower()}")
print(f"suggested_actions_ok={str(acts).lower()}")
print(f"dev_plans_reported={dev_n}")
if items:
    print("sample_diagnosis=" + items[0].get("diagnosis", "").replace("\n", " ")[:200])
print("pass=" + str(code == "200" and isinstance(count, int) and count >= 3 and diag and dev_n == len(dev)).lower())
PY
)
readonly PY_VAL11_STUCK

PY_VAL11_DURABLE=$(
  cat <<'PY'
import json, sys
post, pre, code = sys.argv[1], sys.argv[2], sys.argv[3]
inventory = dict(kv.split("=", 1) for kv in sys.argv[4].split(","))
def load(p):
    try:
        d = json.load(open(p, encoding="utf-8"))
        return {i["plan"]["metadata"]["id"]: (i["status"]["phase"], i["plan"]["metadata"]["generation"]) for i in d["items"]}, d.get("next_cursor")
    except Exception:
        return None, None
after, cursor = load(post)
before, _ = load(pre)
if after is None:
    print(f"http_code={code}"); print("list_count=unreadable"); print("pass=false"); sys.exit()
missing = sorted(i for i in inventory if i not in after)
changed = sorted(i for i in (before or {}) if after.get(i) != before[i])
phase_unexpected = sorted(f"{i}:{after[i][0]}" for i in inventory if i in after and after[i][0] != inventory[i])
print(f"http_code={code}")
print(f"list_count={len(after)}")
print(f"next_cursor={cursor or ''}")
print(f"pre_kill_count={len(before) if before is not None else 'unreadable'}")
print("missing=" + (",".join(missing) or "none"))
print("changed_since_pre_kill=" + (",".join(changed) or "none"))
print("phases=" + ",".join(f"{i}:{after[i][0]}" for i in sorted(after)))
print("phases_unexpected_vs_inventory=" + (",".join(phase_unexpected) or "none"))
ok = code == "200" and len(after) >= 10 and not missing and before is not None and not changed
print("pass=" + str(ok).lower())
PY
)
readonly PY_VAL11_DURABLE

PY_VAL11_AUDIT=$(
  cat <<'PY'
import json, sys
path, start, actor, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
try:
    items = json.load(open(path, encoding="utf-8"))["items"]
except Exception:
    print("events=unreadable"); print("success_events=0"); print("pass=false"); sys.exit()
ok = [e for e in items if e.get("outcome") == "success"]
print(f"events={len(items)}")
print(f"success_events={len(ok)}")
print(f"expected_success_events={expected}")
print("resources=" + (",".join(f"{e.get('resource')}:{e.get('outcome')}" for e in items) or "none"))
print(f"all_actor_{actor}=" + str(all(e.get("actor") == actor for e in items)).lower())
print("all_at_or_after_start=" + str(all(e.get("time", "") >= start for e in items)).lower())
print("pass_events=" + str(len(ok) >= 1 and len(ok) == expected).lower())
PY
)
readonly PY_VAL11_AUDIT

run_chaos_val11_lab() {
  # All prior CPs are torn down before this lab (lab_begin stops them); the data dir is
  # $WORK_DIR/val11, removed and recreated, and reused across the restarts.
  lab_begin val11 18996 val11-chaos-op "$WORK_DIR/val11" "$WORK_DIR/val11-audit"
  export AUTONOMY_RBAC_ENFORCEMENT=0
  export AUTONOMY_OPERATOR=val11-chaos-op
  export AUTONOMY_AUDIT_DIR="$WORK_DIR/val11-audit"
  local ev=$LAB_DIR log="$LAB_DIR/val11-cp.log" base=$LAB_BASE
  local val11_start_time val11_chaos_sleep=3 code pass id kv
  val11_start_time=$(utc_now)
  mkdir -p "$ev/cascade"
  : >"$log"

  # Start CP → VAL11-01 (health).
  local started=false start_rc=0 status
  lab_cp_start "$log" || start_rc=$?
  if ((start_rc == 0)); then started=true; fi
  code=$(http_req GET "$base/v1/health" "$LAB_WORK/health.json")
  if [[ $started == true ]]; then
    status=$(pyj "$LAB_WORK/health.json" 'd.get("status")' unreadable)
  else
    status=unreachable
  fi
  pass=$(bool chk "$started" = true "$code" = 200 "$status" = ok)
  check_done VAL11-01 "Control-plane baseline reachable" "$ev/val11-health.txt" \
    "val11-health.txt val11-cp.log" \
    "url=$base/v1/health" "http_code=$code" "status=$status" "cp_pid=$CUR_CP_PID" \
    "cp_ready_ms=$CP_READY_MS" "cp_start_error=$CP_START_ERROR" \
    "body=$(one_line "$LAB_WORK/health.json")" "pass=$pass"

  # Create plans (dur-1..5, gate-1, corrupt-1, dev-1..3).
  local -a inventory=(val11-dur-1 val11-dur-2 val11-dur-3 val11-dur-4 val11-dur-5
    val11-gate-1 val11-corrupt-1 val11-dev-1 val11-dev-2 val11-dev-3)
  local created_ok=0 corrupt_code=000 art fp purpose
  : >"$ev/val11-plans-created.txt"
  for id in "${inventory[@]}"; do
    art=$(good_artifact val11)
    fp=$(good_fingerprint)
    case $id in
      val11-dur-*) purpose=durability ;;
      val11-gate-*) purpose=gate-wait ;;
      val11-dev-*) purpose=device-unresponsive ;;
      val11-corrupt-*)
        purpose=artifact-corruption
        art='corrupt://chaos/artifact@sha256:deadbeefcorrupt'
        fp='blake3:0000000000000000corruption'
        ;;
    esac
    code=$(create_plan "$id" false "$art" "$fp" "$purpose" "$LAB_WORK/create-$id.json")
    printf 'id=%s http_code=%s\n' "$id" "$code" >>"$ev/val11-plans-created.txt"
    if [[ $code == 201 ]]; then created_ok=$((created_ok + 1)); fi
    if [[ $id == val11-corrupt-1 ]]; then
      corrupt_code=$code
      {
        printf 'request=POST %s/v1/rollouts id=val11-corrupt-1 artifact_ref=%s target_lock_fingerprint=%s\n' "$base" "$art" "$fp"
        printf 'http_code=%s\n' "$code"
        printf 'body=%s\n' "$(one_line "$LAB_WORK/create-$id.json")"
      } >"$ev/val11-corrupt-plan-create.txt"
    fi
  done
  printf 'created_ok=%s total=%s\n' "$created_ok" "${#inventory[@]}" >>"$ev/val11-plans-created.txt"

  # Sleep 3s (dev plans exceed threshold=2s) → VAL11-06 (stuck scan).
  sleep "$val11_chaos_sleep"
  code=$(http_req GET "$base/v1/rollouts/stuck?threshold_seconds=2" "$ev/val11-scan-stuck.json")
  local -a k=()
  mapfile -t k < <(python3 -c "$PY_VAL11_STUCK" "$ev/val11-scan-stuck.json" "$code" \
    "val11-dev-1,val11-dev-2,val11-dev-3")
  check_done VAL11-06 "Device-unresponsive detection (stuck proxy)" "$ev/val11-stuck-check.txt" \
    "val11-scan-stuck.json val11-stuck-check.txt" "${k[@]}"

  # VAL11-07 (corrupt plan GET).
  code=$(http_req GET "$base/v1/rollouts/val11-corrupt-1" "$ev/val11-corrupt-plan.json")
  local c_id c_art c_warn c_phase get_ok
  c_id=$(pyj "$ev/val11-corrupt-plan.json" 'd["plan"]["metadata"]["id"]')
  c_art=$(pyj "$ev/val11-corrupt-plan.json" 'd["plan"]["spec"]["artifact_ref"]')
  c_warn=$(pyj "$ev/val11-corrupt-plan.json" '"; ".join(d["status"].get("warnings", []))')
  c_phase=$(pyj "$ev/val11-corrupt-plan.json" 'd["status"]["phase"]')
  get_ok=$(bool chk "$code" = 200 "$c_id" = val11-corrupt-1)
  pass=$(bool chk "$corrupt_code" = 201 "$get_ok" = true)
  check_done VAL11-07 "Artifact corruption proxy: plan accepted" "$ev/val11-corrupt-check.txt" \
    "val11-corrupt-plan-create.txt val11-corrupt-plan.json val11-corrupt-check.txt" \
    "create_code=$corrupt_code" "get_code=$code" "get_ok=$get_ok" "plan_id=$c_id" \
    "artifact_ref=$c_art" "phase=$c_phase" "warnings=${c_warn:-none}" "pass=$pass"

  # VAL11-08 (rollback execute corrupt).
  cp_cli "$ev/val11-execute-rollback-corrupt.txt" - rollback execute --target rollout_plan \
    --resource val11-corrupt-1 --strategy rollback --reason chaos-artifact-corruption
  local rb_rc=$CLI_RC rb_out rb_from rb_to rb_phase expected_success=0
  rb_out=$(kv_from "$ev/val11-execute-rollback-corrupt.txt" outcome)
  rb_from=$(kv_from "$ev/val11-execute-rollback-corrupt.txt" from_phase)
  rb_to=$(kv_from "$ev/val11-execute-rollback-corrupt.txt" to_phase)
  rb_phase=$(plan_phase val11-corrupt-1)
  if [[ $rb_rc == 0 && $rb_out == success ]]; then expected_success=$((expected_success + 1)); fi
  pass=$(bool chk "$rb_rc" = 0 "$rb_out" = success)
  check_done VAL11-08 "Artifact corruption proxy: rollback succeeds" "$ev/val11-rollback-corrupt-check.txt" \
    "val11-execute-rollback-corrupt.txt val11-rollback-corrupt-check.txt" \
    "exit_code=$rb_rc" "outcome=${rb_out:-none}" "from_phase=$rb_from" "to_phase=$rb_to" \
    "phase_after=$rb_phase" "pass=$pass"

  # VAL11-09 (cascade retry dev-1..3).
  local n cascade_ok=0 cascade_fail=0 c_rc c_out
  local -a per=()
  for n in 1 2 3; do
    cp_cli "$ev/cascade/execute-retry-dev-$n.txt" - rollback execute --target rollout_plan \
      --resource "val11-dev-$n" --strategy retry --reason chaos-cascade-recovery
    c_rc=$CLI_RC
    c_out=$(kv_from "$ev/cascade/execute-retry-dev-$n.txt" outcome)
    if [[ $c_rc == 0 ]]; then cascade_ok=$((cascade_ok + 1)); else cascade_fail=$((cascade_fail + 1)); fi
    if [[ $c_rc == 0 && $c_out == success ]]; then expected_success=$((expected_success + 1)); fi
    per+=("val11-dev-$n:exit=$c_rc:outcome=${c_out:-none}:$(kv_from "$ev/cascade/execute-retry-dev-$n.txt" from_phase)->$(plan_phase "val11-dev-$n")")
  done
  pass=$(bool chk "$cascade_ok" = 3 "$cascade_fail" = 0)
  check_done VAL11-09 "Bulk cascade recovery" "$ev/val11-cascade-check.txt" \
    "cascade/execute-retry-dev-1.txt cascade/execute-retry-dev-2.txt cascade/execute-retry-dev-3.txt val11-cascade-check.txt" \
    "cascade_ok=$cascade_ok" "cascade_fail=$cascade_fail" "results=$(ids_csv "${per[@]}")" "pass=$pass"

  # Evidence captured before the kill: every plan and its phase and generation.
  code=$(http_req GET "$base/v1/rollouts" "$ev/val11-prekill-list.json")

  # Kill CP (SIGTERM; confirmed dead by polling the pid, bounded) → VAL11-02 (client error).
  local was_running=false kill_pid=$CUR_CP_PID dead=false port_closed
  if cp_alive; then was_running=true; fi
  if [[ $was_running == true ]] && lab_cp_stop; then dead=true; fi
  local kill_rc=$STOP_RC kill_forced=$STOP_FORCED kill_ms=$STOP_MS
  if port_in_use "$LAB_PORT"; then port_closed=false; else port_closed=true; fi
  if [[ $was_running == true ]]; then
    cli "$ev/val11-kill-client-error.txt" - rollback execute --target rollout_plan \
      --resource val11-dur-1 --strategy retry --reason chaos-test
  else
    # No CP of ours was killed: whatever answers on the port is not a VAL11-02 observation.
    printf 'lab_error: command not run: no lab CP was running to kill (%s)\n' "${CP_START_ERROR:-unknown}" \
      >"$ev/val11-kill-client-error.txt"
    CLI_RC=125
    CLI_MS=0
  fi
  local ke_rc=$CLI_RC has_conn names_addr
  has_conn=$(bool grep -qiE 'connection refused|dial|connect' "$ev/val11-kill-client-error.txt")
  names_addr=$(bool grep -qF "127.0.0.1:$LAB_PORT" "$ev/val11-kill-client-error.txt")
  pass=$(bool chk "$was_running" = true "$dead" = true "$port_closed" = true "$ke_rc" != 0 \
    "$has_conn" = true)
  check_done VAL11-02 "CP kill → client error" "$ev/val11-kill-check.txt" \
    "val11-kill-client-error.txt val11-kill-check.txt" \
    "cp_pid=$kill_pid" "signal=SIGTERM" "cp_was_running=$was_running" "cp_confirmed_dead=$dead" \
    "cp_exit_code=$kill_rc" "cp_forced_kill=$kill_forced" "cp_stop_ms=$kill_ms" \
    "port_closed=$port_closed" "exit_code=$ke_rc" "exit_code_is_3_unreachable=$(bool test "$ke_rc" = 3)" \
    "has_connection_error=$has_conn" "names_address=$names_addr" \
    "error_text=$(one_line "$ev/val11-kill-client-error.txt")" "cli_ms=$CLI_MS" "pass=$pass"

  # Restart CP → VAL11-03 (durability list).
  local restarted=false
  if lab_cp_start "$log"; then restarted=true; fi
  code=$(http_req GET "$base/v1/rollouts" "$ev/val11-durability-list.json")
  local inv_phases="val11-dur-1=published,val11-dur-2=published,val11-dur-3=published,val11-dur-4=published,val11-dur-5=published,val11-gate-1=published,val11-corrupt-1=rolled_back,val11-dev-1=active,val11-dev-2=active,val11-dev-3=active"
  mapfile -t k < <(python3 -c "$PY_VAL11_DURABLE" "$ev/val11-durability-list.json" \
    "$ev/val11-prekill-list.json" "$code" "$inv_phases")
  check_done VAL11-03 "Data durability post-restart" "$ev/val11-durability-check.txt" \
    "val11-durability-list.json val11-durability-check.txt val11-prekill-list.json val11-plans-created.txt" \
    "restarted=$restarted" "restart_ready_ms=$CP_READY_MS" "${k[@]}"

  # VAL11-05 (gate plan phase).
  code=$(http_req GET "$base/v1/rollouts/val11-gate-1" "$ev/val11-gate-plan.json")
  local g_id g_phase
  g_id=$(pyj "$ev/val11-gate-plan.json" 'd["plan"]["metadata"]["id"]')
  g_phase=$(pyj "$ev/val11-gate-plan.json" 'd["status"]["phase"]')
  pass=$(bool chk "$code" = 200 "$g_id" = val11-gate-1 "$g_phase" = published)
  check_done VAL11-05 "Gate-wait plan survives CP restart" "$ev/val11-gate-check.txt" \
    "val11-gate-plan.json val11-gate-check.txt" \
    "http_code=$code" "plan_id=$g_id" "phase=$g_phase" "expected_phase=published" "pass=$pass"

  # Kill + restart CP × 3 → VAL11-04 (rapid restart: list + new create).
  local rr="$ev/val11-rapid-restart.txt" before after cyc cycles_ok=0 post_code after_create
  code=$(http_req GET "$base/v1/rollouts" "$LAB_WORK/rr-before.json")
  before=$(pyj "$LAB_WORK/rr-before.json" 'len(d["items"])' unreadable)
  {
    printf '# VAL11-04 rapid restart resilience: 3 x (SIGTERM, confirm dead, restart on the same data dir)\n'
    printf 'list_count_before=%s (http_code=%s)\n' "$before" "$code"
  } >"$rr"
  for cyc in 1 2 3; do
    local c_dead=false c_up=false
    if lab_cp_stop; then c_dead=true; fi
    local s_rc=$STOP_RC s_forced=$STOP_FORCED s_ms=$STOP_MS
    if lab_cp_start "$log"; then c_up=true; fi
    printf 'cycle=%s stop_exit_code=%s stop_forced=%s stop_ms=%s confirmed_dead=%s restarted=%s ready_ms=%s pid=%s error=%s\n' \
      "$cyc" "$s_rc" "$s_forced" "$s_ms" "$c_dead" "$c_up" "$CP_READY_MS" "$CUR_CP_PID" "${CP_START_ERROR:-none}" >>"$rr"
    if [[ $c_dead == true && $c_up == true && $s_rc == 0 ]]; then cycles_ok=$((cycles_ok + 1)); fi
  done
  code=$(http_req GET "$base/v1/rollouts" "$LAB_WORK/rr-after.json")
  after=$(pyj "$LAB_WORK/rr-after.json" 'len(d["items"])' unreadable)
  post_code=$(create_plan val11-post-chaos-1 false "$(good_artifact val11)" "$(good_fingerprint)" post-chaos \
    "$LAB_WORK/post-chaos.json")
  http_req GET "$base/v1/rollouts" "$LAB_WORK/rr-after-create.json" >/dev/null
  after_create=$(pyj "$LAB_WORK/rr-after-create.json" 'len(d["items"])' unreadable)
  pass=$(bool chk "$before" != unreadable "$after" = "$before" "$post_code" = 201 "$cycles_ok" = 3)
  check_done VAL11-04 "Rapid restart resilience" "+$rr" "val11-rapid-restart.txt val11-cp.log" \
    "restart_cycles_ok=$cycles_ok" "list_count_before=$before" "list_count_final=$after" \
    "new_plan_id=val11-post-chaos-1" "new_plan_code=$post_code" \
    "list_count_after_create=$after_create" "pass=$pass"

  # VAL11-10 (audit integrity), from the retained store the CLI reads directly.
  cli "$ev/val11-audit-executed.json" "$LAB_WORK/audit-query.err" audit query \
    --event-type rollback.executed --actor val11-chaos-op --start-time "$val11_start_time" --output json
  local aq_rc=$CLI_RC aq_err
  aq_err=$(one_line "$LAB_WORK/audit-query.err")
  mapfile -t k < <(python3 -c "$PY_VAL11_AUDIT" "$ev/val11-audit-executed.json" "$val11_start_time" \
    val11-chaos-op "$expected_success")
  cli "$LAB_WORK/audit-verify.txt" - audit verify
  local av_rc=$CLI_RC av_out ev_ok=false
  av_out=$(one_line "$LAB_WORK/audit-verify.txt")
  for kv in "${k[@]}"; do
    if [[ $kv == pass_events=true ]]; then ev_ok=true; fi
  done
  pass=$(bool chk "$aq_rc" = 0 "$ev_ok" = true "$av_rc" = 0)
  check_done VAL11-10 "Chaos audit integrity" "$ev/val11-audit-check.txt" \
    "val11-audit-executed.json val11-audit-check.txt" \
    "audit_dir=$AUTONOMY_AUDIT_DIR" "start_time=$val11_start_time" "query_exit=$aq_rc" \
    "query_stderr=${aq_err:-none}" "${k[@]}" "verify_exit=$av_rc" "verify_output=$av_out" "pass=$pass"

  # Kill CP (cleanup).
  local final_rc=not-running
  if lab_cp_stop; then final_rc=$STOP_RC; fi
  lab_note "final SIGTERM of the CP: exit code $final_rc"
  lab_note "the plan's evidence table says 9 plan create codes but lists 10 plans (dur-1..5, gate-1, corrupt-1, dev-1..3); all 10 are created and recorded"
  lab_note "val11-prekill-list.json is extra evidence (GET /v1/rollouts just before the first kill) that VAL11-03 compares phase and generation against"

  lab_end "VAL11 — Fleet Rollout Chaos Test Pack" "val11_start_time=$val11_start_time" \
    "val11_chaos_sleep=$val11_chaos_sleep"
  val11_recommendations >>"$ev/val11-report.txt"
}

# val11_recommendations: the plan's operator recommendations section, filled in from the
# measured values of this run.
val11_recommendations() {
  local p
  declare -A P=()
  for p in 01 02 03 04 05 06 07 08 09 10; do
    P[$p]=$(mval "VAL11-$p.pass")
  done
  mark() {
    local x
    for x in "$@"; do
      if [[ ${P[$x]} != true ]]; then
        echo FAIL
        return 0
      fi
    done
    echo PASS
  }
  local passed=0
  for p in "${!P[@]}"; do
    if [[ ${P[$p]} == true ]]; then passed=$((passed + 1)); fi
  done
  local dur cli art cas aud
  dur=$(mark 03 04 05)
  cli=$(mark 02)
  art=$(mark 07 08)
  cas=$(mark 06 09)
  aud=$(mark 10)
  cat <<EOF

## VAL11 Chaos Run — Operator Recommendations

Date: $(date -u +%Y-%m-%dT%H:%M:%SZ)
Pass: $passed/10
Environment: local-SQLite / port 18996

### Durability
- [$dur] All pre-kill plans recovered after restart (VAL11-03, 04, 05)
- Finding: after the first restart list_count=$(mval VAL11-03.list_count) (pre-kill $(mval VAL11-03.pre_kill_count)), missing: $(mval VAL11-03.missing), changed since pre-kill: $(mval VAL11-03.changed_since_pre_kill), phases unexpected vs the plan inventory: $(mval VAL11-03.phases_unexpected_vs_inventory); 3 rapid restarts: $(mval VAL11-04.restart_cycles_ok)/3 clean cycles, list_count $(mval VAL11-04.list_count_before) before → $(mval VAL11-04.list_count_final) after, val11-post-chaos-1 create → HTTP $(mval VAL11-04.new_plan_code); val11-gate-1 phase=$(mval VAL11-05.phase).
- Recommendation: $(if [[ $dur == PASS ]]; then echo "none; committed plans, phases and generations survive SIGTERM restarts unchanged."; else echo "check WAL checkpoint settings or SQLite build (journal_mode=wal, synchronous=FULL), and val11-cp.log for startup errors."; fi)

### Client Error Handling
- [$cli] CLI exits non-zero with connection error after CP kill (VAL11-02)
- Finding: exit code $(mval VAL11-02.exit_code) (SPEC: 3 = unreachable), error text: $(mval VAL11-02.error_text); CP confirmed dead before the call: $(mval VAL11-02.cp_confirmed_dead) (SIGTERM exit code $(mval VAL11-02.cp_exit_code)).
- Recommendation: $(if [[ $cli == PASS ]]; then echo "none; scripts can branch on exit code 3 to tell an unreachable CP from a rejected request."; else echo "verify the CLI does not silently swallow dial errors."; fi)

### Artifact Corruption
- [$art] CP accepts and stores corrupt-artifact plan; rollback succeeds (VAL11-07, 08)
- Finding: create HTTP $(mval VAL11-07.create_code), GET HTTP $(mval VAL11-07.get_code), warnings: $(mval VAL11-07.warnings); rollback exit $(mval VAL11-08.exit_code) outcome=$(mval VAL11-08.outcome) ($(mval VAL11-08.from_phase) → $(mval VAL11-08.to_phase), phase now $(mval VAL11-08.phase_after)).
- Recommendation: Consider adding artifact URI scheme validation at plan-creation time (the CP already flags such plans in status.warnings; \`autonomy serve --artifact-policy strict\` rejects them with 422).

### Cascade Recovery
- [$cas] All 3 stuck (device-unresponsive proxy) plans recovered via retry (VAL11-06, 09)
- Finding: stuck_count=$(mval VAL11-06.stuck_count) at threshold 2s after ${val11_chaos_sleep:-3}s, dev plans reported $(mval VAL11-06.dev_plans_reported)/3, diagnoses non-empty: $(mval VAL11-06.diagnosis_ok); cascade_ok=$(mval VAL11-09.cascade_ok) cascade_fail=$(mval VAL11-09.cascade_fail) ($(mval VAL11-09.results)).
- Recommendation: $(if [[ $cas == PASS ]]; then echo "none; batch retry from the stuck scan's suggested actions recovers the plans."; else echo "check stuck detection threshold vs actual staleness (raise val11_chaos_sleep from 3 to 5 if the CP was slow to start)."; fi)

### Audit Integrity
- [$aud] Rollback events captured across CP kill boundary (VAL11-10)
- Finding: $(mval VAL11-10.success_events) rollback.executed events with outcome=success by val11-chaos-op since the run started (expected $(mval VAL11-10.expected_success_events): 1 rollback + 3 retries; $(mval VAL11-10.events) events in all); audit verify exit $(mval VAL11-10.verify_exit).
- Recommendation: $(if [[ $aud == PASS ]]; then echo "none; the retained store at AUTONOMY_AUDIT_DIR is shared by CP and CLI and its hash chain verifies."; else echo "if events are missing, verify AUTONOMY_AUDIT_DIR is the same path for CLI and CP."; fi)
EOF
}

# ------------------------------------------------------------------------------------------
# val12 — chaos beyond the plan: SIGKILL under write load, a hung CP, a full disk, a corrupt
# store at start-up
# ------------------------------------------------------------------------------------------

# VAL12 is driven by the Rust lab binary `autonomy-lab val12` (crates/autonomy-lab, on
# crates/autonomy-testkit): 16 writers x 20 SIGKILL/restart cycles with a ledger of every
# acknowledged write, a SIGSTOPped CP, a full 4 MiB tmpfs (mounting needs root), corrupt stores
# at start-up; ports 18997 (+18998). It writes the evidence and val12-report.txt/.json under
# $EVIDENCE_DIR/val12/ (the same check ids and file names as ever) and stops every CP and
# unmounts its tmpfs before it exits. VAL12_SEED (a number) replays the kill moments.
# The binary: $AUTONOMY_LAB_BIN, else `cargo build -p autonomy-lab` and
# ${CARGO_TARGET_DIR:-<repo>/target}/debug/autonomy-lab.
run_val12_lab() {
  local lab_bin=${AUTONOMY_LAB_BIN:-} target lab_rc=0 res pass_count total result secs t0
  LAB=val12
  LAB_DIR="$EVIDENCE_DIR/val12"
  t0=$(now_ms)
  stop_all_cps
  if [[ -z $lab_bin ]]; then
    target=${CARGO_TARGET_DIR:-target}
    if [[ $target != /* ]]; then target="$REPO_ROOT/$target"; fi
    say "building: cargo build -p autonomy-lab (in $REPO_ROOT)"
    if (cd "$REPO_ROOT" && timeout "$BUILD_TIMEOUT" cargo build -p autonomy-lab >&2); then
      lab_bin="$target/debug/autonomy-lab"
    fi
  fi
  if [[ -n $lab_bin && -x $lab_bin ]]; then
    # Unmounted on exit should the run be cut short (nothing happens if it is not mounted).
    MOUNTS+=("$WORK_DIR/val12/work/val12-fullfs")
    "$lab_bin" val12 --bin "$AUTONOMY_BIN" --evidence-dir "$LAB_DIR" --work-dir "$WORK_DIR/val12" || lab_rc=$?
  else
    say "$LAB: no autonomy-lab binary (AUTONOMY_LAB_BIN=${AUTONOMY_LAB_BIN:-unset}; build failed or ${lab_bin:-nothing} missing)"
    lab_rc=1
  fi
  res=$(pyj "$LAB_DIR/val12-report.json" '"%s %s %s" % (d["pass_count"], d["total"], d["result"])' "0 0 FAIL")
  read -r pass_count total result <<<"$res"
  if ((lab_rc != 0)); then result=FAIL; fi
  secs=$(awk -v ms="$(($(now_ms) - t0))" 'BEGIN { printf "%.1f", ms / 1000 }')
  LAB_RESULT[$LAB]=$result
  LAB_LINE[$LAB]=$(printf '%-5s %-5s %s/%s checks  %6ss  report: %s' "$LAB" "$result" \
    "$pass_count" "$total" "$secs" "$LAB_DIR/$LAB-report.txt")
  if ((lab_rc != 0)); then say "$LAB: $result (autonomy-lab exit $lab_rc)"; fi
}

# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------

resolve_binary() {
  if [[ -n $AUTONOMY_BIN ]]; then
    if [[ ! -x $AUTONOMY_BIN ]]; then
      echo "error: AUTONOMY_BIN=$AUTONOMY_BIN is not an executable file" >&2
      return 1
    fi
  else
    local target=${CARGO_TARGET_DIR:-target}
    if [[ $target != /* ]]; then target="$REPO_ROOT/$target"; fi
    say "building: cargo build -p autonomy (in $REPO_ROOT)"
    if ! (cd "$REPO_ROOT" && timeout "$BUILD_TIMEOUT" cargo build -p autonomy >&2); then
      echo "error: cargo build -p autonomy failed" >&2
      return 1
    fi
    AUTONOMY_BIN="$target/debug/autonomy"
    if [[ ! -x $AUTONOMY_BIN ]]; then
      echo "error: built, but $AUTONOMY_BIN is not there" >&2
      return 1
    fi
  fi
  AUTONOMY_BIN=$(cd "$(dirname "$AUTONOMY_BIN")" && pwd)/$(basename "$AUTONOMY_BIN")
}

main() {
  local arg lab
  local -a selected=()
  for arg in "$@"; do
    case $arg in
      -h | --help)
        usage
        return 0
        ;;
      all) selected+=("${ALL_LABS[@]}") ;;
      audit | val08 | val09 | val10 | val11 | val12) selected+=("$arg") ;;
      *)
        echo "error: unknown lab '$arg' (expected all, audit, val08, val09, val10, val11 or val12)" >&2
        usage >&2
        return 2
        ;;
    esac
  done
  if ((${#selected[@]} == 0)); then selected=("${ALL_LABS[@]}"); fi
  # In the canonical order, each lab once.
  local -a labs=()
  for lab in "${ALL_LABS[@]}"; do
    for arg in "${selected[@]}"; do
      if [[ $arg == "$lab" ]]; then
        labs+=("$lab")
        break
      fi
    done
  done

  for cmd in curl python3 timeout sha256sum; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
      echo "error: $cmd is required" >&2
      return 1
    fi
  done

  # Only the lab's own settings reach the CP and the CLI (no token, no PostgreSQL URL, no
  # output format or server from the caller's shell).
  local v
  for v in $(compgen -e); do
    case $v in
      AUTONOMY_BIN | AUTONOMY_LAB_BIN) ;;
      AUTONOMY_*) unset "$v" ;;
    esac
  done
  export AUTONOMY_RBAC_ENFORCEMENT=0

  resolve_binary || return 1

  if [[ -z $EVIDENCE_DIR ]]; then
    EVIDENCE_DIR="$REPO_ROOT/lab-evidence/$(date -u +%Y%m%dT%H%M%SZ)"
    local base=$EVIDENCE_DIR i
    for ((i = 2; i < 100; i++)); do
      if [[ ! -e $EVIDENCE_DIR ]]; then break; fi
      EVIDENCE_DIR="$base-$i"
    done
  fi
  mkdir -p "$EVIDENCE_DIR"
  EVIDENCE_DIR=$(cd "$EVIDENCE_DIR" && pwd)
  WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/autonomy-lab.XXXXXX")
  say "binary: $AUTONOMY_BIN"
  say "evidence: $EVIDENCE_DIR (scratch: $WORK_DIR)"

  for lab in "${labs[@]}"; do
    case $lab in
      audit) run_cli_audit_lab ;;
      val08) run_val08_lab ;;
      val09) run_val09_lab ;;
      val10) run_val10_lab ;;
      val11) run_chaos_val11_lab ;;
      val12) run_val12_lab ;;
    esac
    stop_all_cps
  done

  local failed=0
  echo "AutonomyOps lab results"
  for lab in "${labs[@]}"; do
    echo "  ${LAB_LINE[$lab]}"
    if [[ ${LAB_RESULT[$lab]} != PASS ]]; then failed=$((failed + 1)); fi
  done
  echo "evidence: $EVIDENCE_DIR"
  if ((failed > 0)); then
    echo "result: FAIL ($failed of ${#labs[@]} labs failed)"
    return 1
  fi
  echo "result: PASS (${#labs[@]} labs)"
  return 0
}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

main "$@"
