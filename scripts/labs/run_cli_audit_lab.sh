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

readonly VAL12_PORT=18997 VAL12_PORT2=18998
readonly VAL12_WRITERS=16          # concurrent writers during the kill cycles
readonly VAL12_KILL_CYCLES=20      # SIGKILL + restart cycles under load
readonly VAL12_KILL_MIN_MS=300     # each kill comes a random 0.3 ...
readonly VAL12_KILL_SPAN_MS=1200   # ... to 1.5 s after the CP got ready
readonly VAL12_TAIL_MS=1000        # load after the last restart, before the writers stop
readonly VAL12_WRITER_MAX_S=300    # hard deadline of the writer process (it is stopped earlier)
readonly VAL12_HUNG_TIMEOUT=2      # the CLI's --timeout against the SIGSTOPped CP ...
readonly VAL12_HUNG_NET=10         # ... and the safety net (`timeout`) around that CLI call
readonly VAL12_FS_SIZE=4m          # the tmpfs the full-disk CP runs on
readonly VAL12_DISK_MAX=100        # padded creates at most, while the disk fills
readonly VAL12_PAD_BYTES=4096      # spec.targets padding per padded create
readonly VAL12_START_FAIL_MS=5000  # a CP on a corrupt store must refuse within this
VAL12_SEED_USED=0                  # the seed of this run's kill moments (run_val12_lab sets it)

# The load of the SIGKILL scenario: VAL12_WRITERS threads, each creating plans and executing
# retries on its own acknowledged plans without pause, over keep-alive connections. Before
# each request the thread logs `attempt`, then `ack` (2xx success; with the generation the CP
# answered), `answer` (any other HTTP answer) or `noanswer` (transport error: the CP is down or
# was killed mid-request; it may or may not have applied it). While the CP is down it retries
# with a small bounded backoff, like an operator's automation. Stops when the stop file
# appears (or at the deadline). Ledger lines: EPOCH EVENT KIND ID [CODE] [GENERATION|ERROR].
PY_VAL12_WRITERS=$(
  cat <<'PY'
import http.client, json, os, random, sys, threading, time
port, ledger_dir, stop_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
writers, max_s, op = int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
art, fp, seed = sys.argv[7], sys.argv[8], int(sys.argv[9])
deadline = time.monotonic() + max_s
HDRS = {"Content-Type": "application/json", "X-Autonomy-Operator": op}
totals = {}
lock = threading.Lock()

def run(w):
    rnd = random.Random(seed * 1000 + w)
    fd = os.open(os.path.join(ledger_dir, "ledger-w%02d.txt" % w),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    def log(*fields):
        os.write(fd, ("%.6f %s\n" % (time.time(), " ".join(str(f) for f in fields))).encode())
    conn, acked, n, fails = None, [], 0, 0
    count = {"attempt": 0, "ack": 0, "answer": 0, "noanswer": 0}
    try:
        while time.monotonic() < deadline and not os.path.exists(stop_file):
            if acked and rnd.random() < 0.5:
                kind, pid, url = "retry", rnd.choice(acked), "/v1/rollback/execute"
                body = {"target": "rollout_plan", "resource": pid, "strategy": "retry",
                        "reason": "val12-kill-load"}
            else:
                n += 1
                kind, pid, url = "create", "val12-kill-w%02d-%05d" % (w, n), "/v1/rollouts"
                body = {"metadata": {"id": pid, "labels": {"lab": "val12", "writer": "w%02d" % w}},
                        "spec": {"artifact_ref": art, "target_lock_fingerprint": fp}, "draft": False}
            log("attempt", kind, pid)
            count["attempt"] += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("POST", url, body=json.dumps(body), headers=HDRS)
                resp = conn.getresponse()
                raw, code = resp.read(), resp.status
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                    conn = None
                log("noanswer", kind, pid, type(e).__name__)
                count["noanswer"] += 1
                fails += 1
                time.sleep(min(0.2, 0.005 * 2 ** min(fails, 6)))
                continue
            fails = 0
            try:
                d = json.loads(raw)
            except ValueError:
                d = {}
            if not isinstance(d, dict):
                d = {}
            if kind == "create" and code == 201:
                log("ack", kind, pid, code, d.get("plan", {}).get("metadata", {}).get("generation"))
                count["ack"] += 1
                acked.append(pid)
            elif kind == "retry" and code == 200 and d.get("outcome") == "success":
                log("ack", kind, pid, code, d.get("generation"))
                count["ack"] += 1
            else:
                err = (d.get("error") or {}).get("code") or d.get("outcome") or "-"
                log("answer", kind, pid, code, err)
                count["answer"] += 1
                if code == 503:
                    time.sleep(0.05)
    finally:
        if conn is not None:
            conn.close()
        os.close(fd)
        with lock:
            totals["w%02d" % w] = count

threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(1, writers + 1)]
for t in threads:
    t.start()
for t in threads:
    t.join(max(0.0, deadline - time.monotonic()) + 10)
alive = sum(1 for t in threads if t.is_alive())
print(json.dumps({"writers": writers, "threads_still_running": alive, "per_writer": totals},
                 sort_keys=True))
sys.exit(1 if alive else 0)
PY
)
readonly PY_VAL12_WRITERS

# PY_VAL12_PLANS OUT_JSON PAGE...: every plan of the listed pages as {id: {generation, phase,
# history}} in OUT_JSON; prints listed=, unique=, duplicates=.
PY_VAL12_PLANS=$(
  cat <<'PY'
import collections, json, sys
out, pages = sys.argv[1], sys.argv[2:]
plans, seen = {}, collections.Counter()
for p in pages:
    for i in json.load(open(p, encoding="utf-8"))["items"]:
        pid = i["plan"]["metadata"]["id"]
        seen[pid] += 1
        plans[pid] = {"generation": i["plan"]["metadata"]["generation"],
                      "phase": i["status"]["phase"], "history": len(i["status"].get("history", []))}
dups = sorted(k for k, n in seen.items() if n > 1)
json.dump({"plans": plans, "duplicates": dups}, open(out, "w", encoding="utf-8"), indent=1, sort_keys=True)
print(f"listed={sum(seen.values())}")
print(f"unique={len(plans)}")
print("duplicates=" + (",".join(dups[:20]) or "none"))
PY
)
readonly PY_VAL12_PLANS

# PY_VAL12_KILL_VERIFY LEDGER_DIR PLANS_JSON WINDOWS DETAIL_JSON: the writers' ledgers against
# the plans the CP lists after the last restart.
PY_VAL12_KILL_VERIFY=$(
  cat <<'PY'
import collections, glob, json, os, sys
ledger_dir, plans_path, windows_path, detail_path = sys.argv[1:5]
att_create, att_retry = set(), collections.Counter()
ack_create, ack_retries, ack_times = set(), [], []
answers, noanswer, malformed = collections.Counter(), collections.Counter(), 0
bad_answers = []
ledgers = sorted(glob.glob(os.path.join(ledger_dir, "ledger-w*.txt")))
for path in ledgers:
    for line in open(path, encoding="utf-8"):
        f = line.split()
        if len(f) < 4:
            malformed += 1
            continue
        ts, ev, kind, pid = float(f[0]), f[1], f[2], f[3]
        if ev == "attempt":
            if kind == "create":
                att_create.add(pid)
            else:
                att_retry[pid] += 1
        elif ev == "ack":
            ack_times.append(ts)
            answers[f"{kind}:{f[4]}"] += 1
            if kind == "create":
                ack_create.add(pid)
            else:
                gen = int(f[5]) if len(f) > 5 and f[5].isdigit() else None
                ack_retries.append((pid, gen))
        elif ev == "answer":
            code = f[4] if len(f) > 4 else "?"
            answers[f"{kind}:{code}:{f[5] if len(f) > 5 else '-'}"] += 1
            # 503 (overload / storage fault, with Retry-After) is the only non-2xx answer a
            # writer may get: creates use fresh ids, retries target acknowledged plans.
            if code != "503":
                bad_answers.append(line.strip())
        elif ev == "noanswer":
            noanswer[f[4] if len(f) > 4 else "?"] += 1
        else:
            malformed += 1
data = json.load(open(plans_path, encoding="utf-8"))
plans, dups = data["plans"], data["duplicates"]
lost_creates = sorted(i for i in ack_create if i not in plans)
lost_retries = sorted(f"{p}@{g}" for p, g in ack_retries
                      if g is None or p not in plans or plans[p]["generation"] < g
                      or plans[p]["phase"] != "active")
unattempted = sorted(i for i in plans if i not in att_create)
over_applied = sorted(i for i, p in plans.items() if p["generation"] - 1 > att_retry[i])
history_bad = sorted(i for i, p in plans.items() if p["history"] != p["generation"])
phase_bad = sorted(i for i, p in plans.items()
                   if p["phase"] != ("published" if p["generation"] == 1 else "active"))
unacked_present = sorted(i for i in att_create - ack_create if i in plans)
windows = []
for line in open(windows_path, encoding="utf-8"):
    f = line.split()
    if len(f) == 3:
        lo, hi = float(f[1]), float(f[2])
        windows.append((f[0], sum(1 for t in ack_times if lo <= t <= hi)))
checked = len(ack_create) + len(ack_retries)
lost = len(lost_creates) + len(lost_retries)
json.dump({"lost_creates": lost_creates, "lost_retries": lost_retries,
           "unattempted_plans": unattempted, "over_applied": over_applied,
           "history_mismatch": history_bad, "phase_unexpected": phase_bad,
           "unexpected_answers": bad_answers[:200], "acks_per_window": dict(windows),
           "unacknowledged_creates_present": unacked_present},
          open(detail_path, "w", encoding="utf-8"), indent=1)
def few(xs):
    return ",".join(xs[:10]) + (f",…(+{len(xs) - 10})" if len(xs) > 10 else "") if xs else "none"
print(f"ledgers={len(ledgers)}")
print(f"attempted_creates={len(att_create)}")
print(f"attempted_retries={sum(att_retry.values())}")
print(f"acknowledged_creates={len(ack_create)}")
print(f"acknowledged_retries={len(ack_retries)}")
print(f"acknowledged_writes_checked={checked}")
print(f"lost={lost}")
print(f"lost_creates={few(lost_creates)}")
print(f"lost_retries={few(lost_retries)}")
print(f"plans_listed={len(plans)}")
print(f"duplicates_listed={few(dups)}")
print(f"plans_never_attempted={few(unattempted)}")
print(f"plans_over_applied={few(over_applied)}")
print(f"history_len_ne_generation={few(history_bad)}")
print(f"phase_unexpected={few(phase_bad)}")
print(f"unacknowledged_creates_present={len(unacked_present)}")
print(f"no_answer={sum(noanswer.values())}")
print("no_answer_kinds=" + (",".join(f"{k}:{n}" for k, n in sorted(noanswer.items())) or "none"))
print("answers=" + (",".join(f"{k}:{n}" for k, n in sorted(answers.items())) or "none"))
print(f"unexpected_answers={len(bad_answers)}")
print(f"malformed_ledger_lines={malformed}")
print("acks_per_window=" + ",".join(str(n) for _, n in windows))
print(f"windows={len(windows)}")
print(f"min_acks_per_window={min((n for _, n in windows), default=0)}")
ok_durable = (checked > 0 and lost == 0 and not dups and not unattempted and not over_applied
              and not history_bad and not phase_bad and malformed == 0)
print("pass_durable=" + str(ok_durable).lower())
print("pass_answers=" + str(not bad_answers and malformed == 0).lower())
PY
)
readonly PY_VAL12_KILL_VERIFY

# PY_VAL12_AUDIT AUDIT_DIR PLANS_JSON PREFIX: the retained audit store (read directly) against
# the committed plans whose id starts with PREFIX: one plan.created success event each,
# rollback.executed success events == generation - 1 carrying generations 2..generation, no
# phase_changed events (only creates and retries ran), no success event for a plan that does
# not exist, and over the whole store no duplicate event id or seq and seqs 1..N.
PY_VAL12_AUDIT=$(
  cat <<'PY'
import collections, glob, json, os, sys
audit_dir, plans_path, prefix = sys.argv[1:4]
plans = json.load(open(plans_path, encoding="utf-8"))["plans"]
plans = {k: v for k, v in plans.items() if k.startswith(prefix)}
events, bad_lines = [], 0
segments = sorted(glob.glob(os.path.join(audit_dir, "audit-*.jsonl")))
for seg in segments:
    with open(seg, "rb") as f:
        for raw in f:
            try:
                events.append(json.loads(raw))
            except ValueError:
                bad_lines += 1
seqs = [e.get("seq") for e in events]
ids = [e.get("id") for e in events]
dup_seq = sorted(s for s, n in collections.Counter(seqs).items() if n > 1)
dup_id = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
contiguous = seqs == list(range(1, len(seqs) + 1))
created = collections.Counter()
rb = collections.defaultdict(list)
other = collections.Counter()
for e in events:
    r = e.get("resource", "")
    if not r.startswith(prefix) or e.get("outcome") != "success":
        continue
    t = e.get("event_type")
    if t == "plan.created":
        created[r] += 1
    elif t == "rollback.executed":
        rb[r].append((e.get("details") or {}).get("generation"))
    else:
        other[t] += 1
mismatch = []
for pid, p in sorted(plans.items()):
    g = p["generation"]
    if created[pid] != 1:
        mismatch.append(f"{pid}:created={created[pid]}")
    if sorted(x for x in rb[pid] if isinstance(x, int)) != list(range(2, g + 1)) or len(rb[pid]) != g - 1:
        mismatch.append(f"{pid}:rollback_success={len(rb[pid])}/gen={g}")
orphans = sorted((set(created) | set(rb)) - set(plans))
def few(xs):
    return ",".join(xs[:10]) + (f",…(+{len(xs) - 10})" if len(xs) > 10 else "") if xs else "none"
print(f"segments={len(segments)}")
print(f"events={len(events)}")
print(f"unparsable_lines={bad_lines}")
print(f"seq_contiguous_from_1={str(contiguous).lower()}")
print(f"duplicate_seqs={few([str(s) for s in dup_seq])}")
print(f"duplicate_event_ids={few(dup_id)}")
print(f"plans_checked={len(plans)}")
print(f"plan_created_success_events={sum(created.values())}")
print(f"rollback_executed_success_events={sum(len(v) for v in rb.values())}")
print(f"expected_rollback_executed={sum(p['generation'] - 1 for p in plans.values())}")
print("other_success_events=" + (",".join(f"{k}:{n}" for k, n in sorted(other.items())) or "none"))
print(f"plans_not_one_to_one={few(mismatch)}")
print(f"events_for_absent_plans={few(orphans)}")
ok = (bad_lines == 0 and contiguous and not dup_seq and not dup_id and not mismatch
      and not orphans and not other)
print("pass_audit=" + str(ok).lower())
PY
)
readonly PY_VAL12_AUDIT

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

# kv_pick REGEX KV...: the KEY=VALUE words whose KEY matches the extended REGEX, one per line.
kv_pick() {
  local re=$1 kv
  shift
  for kv in "$@"; do
    if [[ ${kv%%=*} =~ $re ]]; then printf '%s\n' "$kv"; fi
  done
}

epoch_now() { date +%s.%N; }
ms_as_s() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# proc_state PID: the process state letter (R, S, T = stopped, Z, ...), "gone" without one.
proc_state() {
  local stat=""
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || stat=""
  stat=${stat##*) }
  printf '%s' "${stat:0:1}"
  if [[ -z $stat ]]; then printf gone; fi
}

# cp_kill9 PID: SIGKILL, poll (bounded, 5 s) until the process is gone, reap it. Sets STOP_RC
# (137 = died of SIGKILL) and STOP_MS; returns 0 when the process is confirmed gone.
cp_kill9() {
  local pid=$1 i t0 krc=0 gone=false
  t0=$(now_ms)
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 250; i++)); do
    if ! pid_alive "$pid"; then
      gone=true
      break
    fi
    sleep 0.02
  done
  STOP_MS=$(($(now_ms) - t0))
  if [[ $gone != true ]]; then
    STOP_RC=alive
    return 1
  fi
  wait "$pid" 2>/dev/null || krc=$?
  STOP_RC=$krc
  forget_cp_pid "$pid"
  if [[ $CUR_CP_PID == "$pid" ]]; then CUR_CP_PID=""; fi
  return 0
}

# http_req_hdr METHOD URL OUT HDR [BODY]: like http_req, and the answer's headers go to HDR.
http_req_hdr() {
  local method=$1 url=$2 out=$3 hdr=$4 body=${5-} code=""
  : >"$hdr"
  if ! cp_alive; then
    printf '{"lab_error":"request not sent: the lab control plane is not running"}\n' >"$out"
    echo 000
    return 0
  fi
  local -a args=(-sS -o "$out" -D "$hdr" -w '%{http_code}' --max-time "$HTTP_MAX_TIME"
    --connect-timeout 5 -X "$method" -H "X-Autonomy-Operator: ${AUTONOMY_OPERATOR:-anonymous}")
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

# val12_list_all BASE DIR: GET BASE/v1/rollouts?limit=1000 page by page (at most 100 pages)
# into DIR/page-NNN.json. Sets LIST_PAGES, LIST_COMPLETE (true when the last page had no
# next_cursor) and LIST_CODE (the last HTTP code).
LIST_PAGES=0
LIST_COMPLETE=false
LIST_CODE=""
val12_list_all() {
  local base=$1 dir=$2 page pf cursor=""
  LIST_PAGES=0
  LIST_COMPLETE=false
  LIST_CODE=""
  mkdir -p "$dir"
  rm -f "$dir"/page-*.json
  for ((page = 1; page <= 100; page++)); do
    pf=$(printf '%s/page-%03d.json' "$dir" "$page")
    if [[ -z $cursor ]]; then
      LIST_CODE=$(http_get "$pf" "$base/v1/rollouts" limit=1000)
    else
      LIST_CODE=$(http_get "$pf" "$base/v1/rollouts" limit=1000 "cursor=$cursor")
    fi
    LIST_PAGES=$page
    if [[ $LIST_CODE != 200 ]]; then
      rm -f "$pf"
      return 0
    fi
    cursor=$(pyj "$pf" 'd.get("next_cursor")')
    if [[ -z $cursor ]]; then
      LIST_COMPLETE=true
      return 0
    fi
  done
}

# val12_plans_json BASE DIR OUT: every plan (val12_list_all into DIR) as PY_VAL12_PLANS JSON in
# OUT; prints PY_VAL12_PLANS's lines plus pages= and pagination_complete=.
val12_plans_json() {
  local -a pages=()
  val12_list_all "$1" "$2"
  mapfile -t pages < <(find "$2" -name 'page-*.json' | sort)
  if ((${#pages[@]} > 0)) && [[ $LIST_COMPLETE == true ]]; then
    python3 -c "$PY_VAL12_PLANS" "$3" "${pages[@]}" || echo "listed=unreadable"
  else
    printf '{"plans":{},"duplicates":[]}\n' >"$3"
    echo "listed=unreadable"
  fi
  echo "pages=$LIST_PAGES"
  echo "pagination_complete=$LIST_COMPLETE"
  echo "list_code=$LIST_CODE"
}

# val12_not_run ID NAME REASON: records a check that could not run (a failure, with why).
val12_not_run() {
  check_done "$1" "$2" - "" "not_run=$3" "pass=false"
}

# ---- VAL12-01..05: SIGKILL under write load ------------------------------------------------

val12_kill_under_load() {
  local ev="$LAB_DIR/kill" log="$LAB_DIR/val12-cp.log" code status pass
  mkdir -p "$ev/ledgers"

  if ! lab_start_check VAL12-01 "CP starts on a fresh data dir and answers health" "$log" \
    "$ev/val12-health.json" "kill/val12-health.json val12-cp.log"; then
    local why="the CP did not start: $CP_START_ERROR"
    val12_not_run VAL12-02 "SIGKILL under load" "$why"
    val12_not_run VAL12-03 "no acknowledged write lost" "$why"
    val12_not_run VAL12-04 "answers under load" "$why"
    val12_not_run VAL12-05 "audit after SIGKILLs" "$why"
    return 0
  fi

  # The load, then VAL12_KILL_CYCLES x (random pause, SIGKILL, restart on the same data dir).
  local stop="$LAB_WORK/writers.stop" windows="$ev/val12-kill-windows.txt" tl="$ev/val12-kill-timeline.txt"
  rm -f "$stop"
  : >"$windows"
  printf '# VAL12 SIGKILL under load: %s writers; %s cycles of (pause %s-%s ms, SIGKILL, restart on the same data dir); seed %s\n' \
    "$VAL12_WRITERS" "$VAL12_KILL_CYCLES" "$VAL12_KILL_MIN_MS" "$((VAL12_KILL_MIN_MS + VAL12_KILL_SPAN_MS))" \
    "$VAL12_SEED_USED" >"$tl"
  python3 -c "$PY_VAL12_WRITERS" "$LAB_PORT" "$ev/ledgers" "$stop" "$VAL12_WRITERS" "$VAL12_WRITER_MAX_S" \
    "$AUTONOMY_OPERATOR" "$(good_artifact val12)" "$(good_fingerprint)" "$VAL12_SEED_USED" \
    >"$ev/val12-writers-summary.json" 2>"$ev/val12-writers.err" &
  local wpid=$!
  BG_PIDS=("$wpid")
  say "$LAB: $VAL12_WRITERS writers running (pid $wpid); $VAL12_KILL_CYCLES SIGKILL cycles"
  local win_start cyc delay kpid t_kill dead up k_rc k_ms cycles_ok=0 restart_max=0 restart_sum=0
  local -a delays=()
  win_start=$(epoch_now)
  for ((cyc = 1; cyc <= VAL12_KILL_CYCLES; cyc++)); do
    delay=$((VAL12_KILL_MIN_MS + RANDOM % (VAL12_KILL_SPAN_MS + 1)))
    delays+=("$delay")
    sleep "$(ms_as_s "$delay")"
    kpid=$CUR_CP_PID
    t_kill=$(epoch_now)
    dead=false
    up=false
    # (2>/dev/null: bash's "Killed" job notice for the CP)
    if [[ -n $kpid ]] && cp_kill9 "$kpid" 2>/dev/null; then dead=true; fi
    k_rc=$STOP_RC
    k_ms=$STOP_MS
    printf 'c%02d %s %s\n' "$cyc" "$win_start" "$t_kill" >>"$windows"
    if [[ $dead == true ]] && start_cp "$LAB_PORT" "$LAB_DATA_DIR" "$LAB_AUDIT_DIR" "$log"; then up=true; fi
    win_start=$(epoch_now)
    printf 'cycle=%s pause_ms=%s killed_pid=%s kill_epoch=%s confirmed_dead=%s exit_code=%s kill_ms=%s restarted=%s ready_ms=%s new_pid=%s error=%s\n' \
      "$cyc" "$delay" "$kpid" "$t_kill" "$dead" "$k_rc" "$k_ms" "$up" "$CP_READY_MS" "$CUR_CP_PID" \
      "${CP_START_ERROR:-none}" >>"$tl"
    if [[ $dead == true && $up == true && $k_rc == 137 ]]; then cycles_ok=$((cycles_ok + 1)); fi
    if [[ $up == true ]]; then
      restart_sum=$((restart_sum + CP_READY_MS))
      if ((CP_READY_MS > restart_max)); then restart_max=$CP_READY_MS; fi
    else
      say "$LAB: cycle $cyc: the CP did not come back: ${CP_START_ERROR:-SIGKILL not confirmed}"
      break
    fi
  done
  say "$LAB: $cycles_ok/$VAL12_KILL_CYCLES SIGKILL cycles clean (restart max ${restart_max} ms)"

  # Load after the last restart, then stop the writers (bounded: 15 s, then SIGTERM).
  sleep "$(ms_as_s "$VAL12_TAIL_MS")"
  printf 'final %s %s\n' "$win_start" "$(epoch_now)" >>"$windows"
  touch "$stop"
  local i w_rc=0 w_forced=false
  for ((i = 0; i < 150; i++)); do
    if ! pid_alive "$wpid"; then break; fi
    sleep 0.1
  done
  if pid_alive "$wpid"; then
    w_forced=true
    kill -TERM "$wpid" 2>/dev/null || true
  fi
  wait "$wpid" 2>/dev/null || w_rc=$?
  BG_PIDS=()

  # What the CP holds now, against the ledgers.
  local -a p_kv=() v_kv=() a_kv=()
  mapfile -t p_kv < <(val12_plans_json "$LAB_BASE" "$ev/list-pages" "$ev/val12-kill-plans.json")
  mapfile -t v_kv < <(python3 -c "$PY_VAL12_KILL_VERIFY" "$ev/ledgers" "$ev/val12-kill-plans.json" \
    "$windows" "$ev/val12-kill-detail.json" 2>"$LAB_WORK/kill-verify.err" || echo "pass_durable=false")
  printf '%s\n' "${p_kv[@]}" "${v_kv[@]}" >"$ev/val12-kill-verify.txt"
  local n_windows min_acks avg_ready=0
  n_windows=$(kv_get windows "${v_kv[@]}")
  min_acks=$(kv_get min_acks_per_window "${v_kv[@]}")
  if ((cycles_ok > 0)); then avg_ready=$((restart_sum / VAL12_KILL_CYCLES)); fi
  local repairs
  repairs=$(grep -c 'tail repaired' "$log" || true)
  pass=$(bool chk "$cycles_ok" = "$VAL12_KILL_CYCLES" "$w_rc" = 0 "$w_forced" = false \
    "$n_windows" = "$((VAL12_KILL_CYCLES + 1))")
  if [[ $pass == true ]] && ! ((min_acks > 0)); then pass=false; fi
  check_done VAL12-02 "$VAL12_WRITERS writers, $VAL12_KILL_CYCLES x SIGKILL at a random moment + restart; load acknowledged between every two kills" \
    "$ev/val12-kill-check.txt" \
    "kill/val12-kill-timeline.txt kill/val12-kill-windows.txt kill/ledgers/ kill/val12-writers-summary.json val12-cp.log" \
    "writers=$VAL12_WRITERS" "cycles=$VAL12_KILL_CYCLES" "cycles_ok=$cycles_ok" \
    "pause_ms=$(ids_csv "${delays[@]}")" "restart_ready_ms_max=$restart_max" \
    "restart_ready_ms_avg=$avg_ready" "writers_exit=$w_rc" "writers_forced_stop=$w_forced" \
    "acks_per_window=$(kv_get acks_per_window "${v_kv[@]}")" "min_acks_per_window=$min_acks" \
    "no_answer=$(kv_get no_answer "${v_kv[@]}")" "audit_tail_repairs_at_start=$repairs" "pass=$pass"

  local durable
  durable=$(kv_get pass_durable "${v_kv[@]}")
  pass=$(bool chk "$durable" = true "$(kv_get pagination_complete "${p_kv[@]}")" = true \
    "$(kv_get lost "${v_kv[@]}")" = 0)
  local -a m=()
  mapfile -t m < <(kv_pick '^(pages|pagination_complete|list_code|attempted_.*|acknowledged_(creates|retries)|lost_.*|plans_.*|duplicates_listed|history_.*|phase_.*|unacknowledged_.*|malformed_.*)$' \
    "${p_kv[@]}" "${v_kv[@]}")
  check_done VAL12-03 "after the last restart: every acknowledged create present, every acknowledged retry reflected, nothing never attempted" \
    "+$ev/val12-kill-check.txt" \
    "kill/val12-kill-verify.txt kill/val12-kill-detail.json kill/val12-kill-plans.json kill/list-pages/ kill/ledgers/" \
    "acknowledged_writes_checked=$(kv_get acknowledged_writes_checked "${v_kv[@]}")" \
    "lost=$(kv_get lost "${v_kv[@]}")" \
    "${m[@]}" "pass=$pass"

  local panics
  panics=$(grep -ci 'panic' "$log" || true)
  pass=$(bool chk "$(kv_get pass_answers "${v_kv[@]}")" = true "$panics" = 0)
  check_done VAL12-04 "every answer under load is a 2xx or a 503 (never a 500 or an unexpected 4xx); no panic" \
    "+$ev/val12-kill-check.txt" "kill/val12-kill-detail.json kill/ledgers/ val12-cp.log" \
    "answers=$(kv_get answers "${v_kv[@]}")" "unexpected_answers=$(kv_get unexpected_answers "${v_kv[@]}")" \
    "no_answer_kinds=$(kv_get no_answer_kinds "${v_kv[@]}")" "panic_lines=$panics" "pass=$pass"

  mapfile -t a_kv < <(python3 -c "$PY_VAL12_AUDIT" "$LAB_AUDIT_DIR" "$ev/val12-kill-plans.json" val12-kill- \
    2>"$LAB_WORK/kill-audit.err" || echo "pass_audit=false")
  printf '%s\n' "${a_kv[@]}" >"$ev/val12-kill-audit.txt"
  cli "$ev/val12-kill-audit-verify.txt" - audit verify
  local v_rc=$CLI_RC
  pass=$(bool chk "$(kv_get pass_audit "${a_kv[@]}")" = true "$v_rc" = 0)
  mapfile -t m < <(kv_pick '^[a-z_]+$' "${a_kv[@]}" | grep -v '^pass_' || true)
  check_done VAL12-05 "audit verify passes; success audit events match committed changes one to one" \
    "+$ev/val12-kill-check.txt" "kill/val12-kill-audit.txt kill/val12-kill-audit-verify.txt" \
    "${m[@]}" "verify_exit=$v_rc" \
    "verify_output=$(one_line "$ev/val12-kill-audit-verify.txt")" "pass=$pass"
}

# ---- VAL12-06..07: a hung CP (SIGSTOP) ------------------------------------------------------

PY_VAL12_EXEC_EVENTS=$(
  cat <<'PY'
import glob, json, os, sys
audit_dir, resource = sys.argv[1], sys.argv[2]
ex = []
for seg in sorted(glob.glob(os.path.join(audit_dir, "audit-*.jsonl"))):
    for raw in open(seg, "rb"):
        e = json.loads(raw)
        if e.get("resource") == resource and e.get("event_type") == "rollback.executed" and e.get("outcome") == "success":
            ex.append((e.get("details") or {}).get("execution_id", "?"))
print(f"{len(ex)} {','.join(ex) or 'none'}")
PY
)
readonly PY_VAL12_EXEC_EVENTS

val12_hung_cp() {
  local ev="$LAB_DIR/hung" id=val12-hung-1 key=val12-hung-key-1 code gen0 pid state="" pass i
  mkdir -p "$ev"
  if ! cp_alive; then
    val12_not_run VAL12-06 "hung CP: CLI exits 3 within --timeout" "no lab CP is running"
    val12_not_run VAL12-07 "hung CP: after SIGCONT the Idempotency-Key retry applies once" "no lab CP is running"
    return 0
  fi
  code=$(create_plan "$id" false "$(good_artifact val12)" "$(good_fingerprint)" hung-cp "$ev/create.json")
  gen0=$(pyj "$ev/create.json" 'd["plan"]["metadata"]["generation"]')
  pid=$CUR_CP_PID
  kill -STOP "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    state=$(proc_state "$pid")
    if [[ $state == T || $state == t ]]; then break; fi
    sleep 0.02
  done
  say "$LAB: CP pid $pid SIGSTOPped (state $state)"

  local what rc ms net names_to names_addr within ok all_ok=true limit_ms
  local -a args=() res=()
  limit_ms=$(((VAL12_HUNG_TIMEOUT + 2) * 1000))
  for what in get execute health; do
    case $what in
      get) args=(rollout get "$id") ;;
      execute) args=(rollback execute --target rollout_plan --resource "$id" --strategy retry
        --reason val12-hung-cp --idempotency-key "$key") ;;
      health) args=(health) ;;
    esac
    printf '$ timeout -k 2 %s autonomy --timeout %s %s\n' "$VAL12_HUNG_NET" "$VAL12_HUNG_TIMEOUT" "${args[*]}" \
      >"$ev/cli-$what-hung.cmd"
    rc=0
    local t0
    t0=$(now_ms)
    timeout -k 2 "$VAL12_HUNG_NET" "$AUTONOMY_BIN" --timeout "$VAL12_HUNG_TIMEOUT" "${args[@]}" \
      >"$ev/cli-$what-hung.txt" 2>&1 || rc=$?
    ms=$(($(now_ms) - t0))
    net=false
    if ((rc == 124 || rc == 137)); then net=true; fi
    names_to=$(bool grep -qiE 'timed out|timeout' "$ev/cli-$what-hung.txt")
    names_addr=$(bool grep -qF "127.0.0.1:$LAB_PORT" "$ev/cli-$what-hung.txt")
    within=$(bool test "$ms" -lt "$limit_ms")
    ok=$(bool chk "$rc" = 3 "$net" = false "$names_to" = true "$names_addr" = true "$within" = true)
    if [[ $ok != true ]]; then all_ok=false; fi
    res+=("$what:exit=$rc:ms=$ms:safety_net_fired=$net:names_timeout=$names_to:names_address=$names_addr")
  done
  pass=$(bool chk "$code" = 201 "$state" = T "$all_ok" = true)
  check_done VAL12-06 "SIGSTOPped CP: CLI get/execute/health exit 3 within --timeout $VAL12_HUNG_TIMEOUT (+2 s), naming the timeout and the address" \
    "$ev/val12-hung-check.txt" \
    "hung/cli-get-hung.txt hung/cli-execute-hung.txt hung/cli-health-hung.txt hung/create.json" \
    "plan_create_code=$code" "cp_pid=$pid" "cp_state=$state" "cli_timeout_s=$VAL12_HUNG_TIMEOUT" \
    "limit_ms=$limit_ms" "safety_net_s=$VAL12_HUNG_NET" "results=$(ids_csv "${res[@]}")" \
    "get_error=$(one_line "$ev/cli-get-hung.txt")" "pass=$pass"

  # SIGCONT: health comes back, the same rollback execute (same Idempotency-Key) is applied once.
  kill -CONT "$pid" 2>/dev/null || true
  local h_code=000 h_ms t1
  t1=$(now_ms)
  for ((i = 0; i < 100; i++)); do
    h_code=$(http_req GET "$LAB_BASE/v1/health" "$ev/health-after-cont.json")
    if [[ $h_code == 200 ]]; then break; fi
    sleep 0.1
  done
  h_ms=$(($(now_ms) - t1))
  cp_cli "$ev/retry-same-key.json" "$ev/retry-same-key.err" -o json --timeout 10 rollback execute \
    --target rollout_plan --resource "$id" --strategy retry --reason val12-hung-cp --idempotency-key "$key"
  local r_rc=$CLI_RC r_out r_ex r_gen
  r_out=$(pyj "$ev/retry-same-key.json" 'd["outcome"]')
  r_ex=$(pyj "$ev/retry-same-key.json" 'd["execution_id"]')
  r_gen=$(pyj "$ev/retry-same-key.json" 'd["generation"]')
  cp_cli "$ev/replay-same-key.json" "$ev/replay-same-key.err" -o json --timeout 10 rollback execute \
    --target rollout_plan --resource "$id" --strategy retry --reason val12-hung-cp --idempotency-key "$key"
  local p_rc=$CLI_RC p_ex
  p_ex=$(pyj "$ev/replay-same-key.json" 'd["execution_id"]')
  code=$(http_req GET "$LAB_BASE/v1/rollouts/$id" "$ev/plan-after.json")
  local g_after ph_after ev_n ev_ids
  g_after=$(pyj "$ev/plan-after.json" 'd["plan"]["metadata"]["generation"]')
  ph_after=$(pyj "$ev/plan-after.json" 'd["status"]["phase"]')
  read -r ev_n ev_ids < <(python3 -c "$PY_VAL12_EXEC_EVENTS" "$LAB_AUDIT_DIR" "$id" 2>/dev/null || echo "-1 unreadable")
  pass=$(bool chk "$h_code" = 200 "$r_rc" = 0 "$r_out" = success "$r_ex" != "" "$p_rc" = 0 \
    "$p_ex" = "$r_ex" "$code" = 200 "$g_after" = "$((gen0 + 1))" "$ph_after" = active \
    "$ev_n" = 1 "$ev_ids" = "$r_ex")
  check_done VAL12-07 "after SIGCONT: health 200; the same execute with the same Idempotency-Key succeeds and was applied exactly once" \
    "+$ev/val12-hung-check.txt" \
    "hung/health-after-cont.json hung/retry-same-key.json hung/replay-same-key.json hung/plan-after.json" \
    "health_after_cont=$h_code" "health_after_cont_ms=$h_ms" "retry_exit=$r_rc" "retry_outcome=$r_out" \
    "retry_execution_id=$r_ex" "retry_generation=$r_gen" "replay_exit=$p_rc" \
    "replay_execution_id=$p_ex" "generation_before=$gen0" "generation_after=$g_after" \
    "phase_after=$ph_after" "rollback_executed_success_events=$ev_n" "event_execution_ids=$ev_ids" \
    "pass=$pass"
}

# ---- VAL12-08..12: a full disk ----------------------------------------------------------------

VAL12_PAD=$(head -c "$VAL12_PAD_BYTES" /dev/zero | tr '\0' p)
readonly VAL12_PAD

# val12_padded_body ID: a plan with VAL12_PAD_BYTES of spec.targets padding.
val12_padded_body() {
  printf '{"metadata":{"id":"%s","labels":{"lab":"val12","purpose":"full-disk"}},"spec":{"artifact_ref":"%s","target_lock_fingerprint":"%s","targets":{"padding":"%s"}},"draft":false}' \
    "$1" "$(good_artifact val12)" "$(good_fingerprint)" "$VAL12_PAD"
}

val12_retry_body() {
  printf '{"target":"rollout_plan","resource":"%s","strategy":"retry","reason":"%s"}' "$1" "$2"
}

# hdr_retry_after HDR: the Retry-After value in a curl -D header file ("" when absent).
hdr_retry_after() {
  grep -i '^retry-after:' "$1" 2>/dev/null | head -n1 | cut -d: -f2- | tr -d ' \r' || true
}

# err_code FILE: the JSON error code of an answer ("" when there is none).
err_code() { pyj "$1" '(d.get("error") or {}).get("code")'; }

val12_full_disk() {
  local ev="$LAB_DIR/disk" mnt="$WORK_DIR/val12-fullfs" base="http://127.0.0.1:$VAL12_PORT2"
  local log="$ev/val12-fulldisk-cp.log" data audit code pass why="" i id
  mkdir -p "$ev" "$mnt"
  data="$mnt/data"
  audit="$mnt/audit"

  # VAL12-08: a size-limited tmpfs (mounted as root), a CP on it, the disk filling up.
  local mounted=false started=false
  if mount -t tmpfs -o "size=$VAL12_FS_SIZE" tmpfs "$mnt" 2>"$ev/mount.err"; then
    mounted=true
    MOUNTS+=("$mnt")
  else
    why="cannot mount the test filesystem: mount -t tmpfs -o size=$VAL12_FS_SIZE tmpfs $mnt failed as uid $(id -u) (mounting needs root): $(one_line "$ev/mount.err")"
  fi
  {
    printf '# %s\n' "mount -t tmpfs -o size=$VAL12_FS_SIZE tmpfs $mnt: mounted=$mounted"
    df -k "$mnt" 2>&1 || true
  } >"$ev/val12-fs.txt"
  if [[ $mounted == true ]]; then
    if start_cp "$VAL12_PORT2" "$data" "$audit" "$log"; then
      started=true
      say "$LAB: full-disk CP pid $CUR_CP_PID ready on 127.0.0.1:$VAL12_PORT2 (data and audit on a $VAL12_FS_SIZE tmpfs)"
    else
      why="the CP on the tmpfs did not start: $CP_START_ERROR"
    fi
  fi
  if [[ $started != true ]]; then
    check_done VAL12-08 "full disk: a CP on a $VAL12_FS_SIZE tmpfs; writes go from 201 to 503 as it fills" \
      "$ev/val12-disk-check.txt" "disk/val12-fs.txt disk/mount.err" \
      "mounted=$mounted" "cp_started=$started" "reason=$why" "pass=false"
    val12_not_run VAL12-09 "full disk: writes 503, reads work" "$why"
    val12_not_run VAL12-10 "full disk: /v1/ready 503" "$why"
    val12_not_run VAL12-11 "full disk: no half-written plan" "$why"
    val12_not_run VAL12-12 "full disk: recovery without a restart" "$why"
    return 0
  fi
  local cp_pid=$CUR_CP_PID base_ok=0
  for i in 1 2 3; do
    code=$(http_req POST "$base/v1/rollouts" "$LAB_WORK/disk-base.json" \
      "$(plan_body "val12-disk-base-$i" false "$(good_artifact val12)" "$(good_fingerprint)" "$LAB" full-disk)")
    if [[ $code == 201 ]]; then base_ok=$((base_ok + 1)); fi
  done

  # val12_disk_write KIND ID: one write while the disk fills (KIND create|padded|execute),
  # logged to val12-disk-writes.txt; sets W_CODE, W_ERR, W_RA and adds ID to ok_ids or
  # refused_ids (bash's dynamic scope: the locals of val12_full_disk).
  local writes="$ev/val12-disk-writes.txt" bad_503=0
  local -a ok_ids=() refused_ids=() other=()
  : >"$writes"
  val12_disk_write() {
    local body
    case $1 in
      create) body=$(plan_body "$2" false "$(good_artifact val12)" "$(good_fingerprint)" "$LAB" full-disk) ;;
      padded) body=$(val12_padded_body "$2") ;;
      execute) body=$(val12_retry_body "$2" val12-full-disk) ;;
    esac
    local url="$base/v1/rollouts"
    if [[ $1 == execute ]]; then url="$base/v1/rollback/execute"; fi
    W_CODE=$(http_req_hdr POST "$url" "$LAB_WORK/w.json" "$LAB_WORK/w.hdr" "$body")
    W_ERR=$(err_code "$LAB_WORK/w.json")
    W_RA=$(hdr_retry_after "$LAB_WORK/w.hdr")
    printf 'kind=%s id=%s http_code=%s error_code=%s retry_after=%s\n' "$1" "$2" "$W_CODE" \
      "${W_ERR:-none}" "${W_RA:-none}" >>"$writes"
    case $W_CODE in
      200 | 201) if [[ $1 != execute ]]; then ok_ids+=("$2"); fi ;;
      503)
        if [[ $1 != execute ]]; then refused_ids+=("$2"); fi
        if [[ $W_ERR != unavailable || -z $W_RA ]]; then bad_503=$((bad_503 + 1)); fi
        ;;
      *) other+=("$1:$2:$W_CODE") ;;
    esac
  }
  # val12_ready_codes N: N x GET /v1/ready, 0.2 s apart; prints the codes comma-separated.
  val12_ready_codes() {
    local j c rcodes=()
    for ((j = 1; j <= $1; j++)); do
      c=$(http_req GET "$base/v1/ready" "$LAB_WORK/ready.json")
      rcodes+=("$c")
      printf 'GET /v1/ready -> %s %s\n' "$c" "$(one_line "$LAB_WORK/ready.json")" >>"$writes"
      if ((j < $1)); then sleep 0.2; fi
    done
    ids_csv "${rcodes[@]}"
  }

  # 1. Fill the filesystem completely; the next write is refused.
  local dd_rc=0 enospc ready_pre ready_first first_code
  dd if=/dev/zero of="$mnt/filler" bs=64k >"$ev/fill-dd.txt" 2>&1 || dd_rc=$?
  enospc=$(bool grep -qi 'no space left' "$ev/fill-dd.txt")
  df -k "$mnt" >>"$ev/val12-fs.txt" 2>&1 || true
  printf '# 1. filesystem filled by %s/filler (dd exit %s)\n' "$mnt" "$dd_rc" >>"$writes"
  ready_pre=$(val12_ready_codes 1)
  val12_disk_write create val12-disk-first-1
  first_code=$W_CODE
  ready_first=$(val12_ready_codes 3)
  # 2. Give back a 128 KiB margin and create padded plans until three in a row are refused:
  #    the disk fills up under real writes.
  printf '# 2. 128 KiB given back; padded creates until three in a row are refused\n' >>"$writes"
  truncate -s -131072 "$mnt/filler" 2>>"$ev/fill-dd.txt" || true
  df -k "$mnt" >>"$ev/val12-fs.txt" 2>&1 || true
  local consec=0 pad_ok=0 pad_refused=0
  for ((i = 1; i <= VAL12_DISK_MAX; i++)); do
    id=$(printf 'val12-disk-pad-%03d' "$i")
    val12_disk_write padded "$id"
    case $W_CODE in
      201)
        pad_ok=$((pad_ok + 1))
        consec=0
        ;;
      503)
        pad_refused=$((pad_refused + 1))
        consec=$((consec + 1))
        ;;
      *) consec=0 ;;
    esac
    if ((consec >= 3)); then break; fi
  done
  # 3. Take the rest of the space: the disk is completely full again.
  dd if=/dev/zero of="$mnt/filler2" bs=4k >"$ev/fill2-dd.txt" 2>&1 || true
  df -k "$mnt" >>"$ev/val12-fs.txt" 2>&1 || true
  printf '# 3. the rest of the space taken by %s/filler2\n' "$mnt" >>"$writes"
  pass=$(bool chk "$base_ok" = 3 "$dd_rc" != 0 "$enospc" = true "$first_code" = 503 "$consec" = 3 \
    "${#other[@]}" = 0)
  check_done VAL12-08 "full disk: a CP on a $VAL12_FS_SIZE tmpfs; the filled disk refuses a write; padded creates go from 201 to 503 as it fills" \
    "$ev/val12-disk-check.txt" "disk/val12-fs.txt disk/fill-dd.txt disk/val12-disk-writes.txt disk/val12-fulldisk-cp.log" \
    "mounted=$mounted" "fs_size=$VAL12_FS_SIZE" "cp_pid=$cp_pid" "baseline_creates_201=$base_ok" \
    "filler_dd_exit=$dd_rc" "filler_hit_enospc=$enospc" "first_write_code=$first_code" \
    "padding_bytes=$VAL12_PAD_BYTES" "padded_creates_201=$pad_ok" "padded_creates_503=$pad_refused" \
    "consecutive_503_at_end=$consec" "other_codes=$(ids_csv "${other[@]}")" "pass=$pass"

  # VAL12-09: while full, writes are 503 unavailable with Retry-After; reads and health work.
  val12_disk_write create val12-disk-full-1
  local w1=$W_CODE w1_ec=$W_ERR w1_ra=$W_RA
  val12_disk_write execute val12-disk-base-1
  local w2=$W_CODE w2_ec=$W_ERR w2_ra=$W_RA
  local ready_full get_c get_gen list_c list_n h_c alive
  ready_full=$(val12_ready_codes 3)
  get_c=$(http_req GET "$base/v1/rollouts/val12-disk-base-1" "$ev/full-get.json")
  get_gen=$(pyj "$ev/full-get.json" 'd["plan"]["metadata"]["generation"]')
  list_c=$(http_get "$ev/full-list.json" "$base/v1/rollouts" limit=1000)
  list_n=$(pyj "$ev/full-list.json" 'len(d["items"])')
  h_c=$(http_req GET "$base/v1/health" "$ev/full-health.json")
  alive=false
  if cp_alive && [[ $CUR_CP_PID == "$cp_pid" ]]; then alive=true; fi
  pass=$(bool chk "$w1" = 503 "$w1_ec" = unavailable "${w1_ra:+set}" = set "$w2" = 503 \
    "$w2_ec" = unavailable "${w2_ra:+set}" = set "$bad_503" = 0 "$get_c" = 200 \
    "$get_gen" = 1 "$list_c" = 200 "$h_c" = 200 "$alive" = true)
  check_done VAL12-09 "disk full: writes 503 unavailable + Retry-After; GET plan, list, health 200; the CP stays up" \
    "+$ev/val12-disk-check.txt" \
    "disk/val12-disk-writes.txt disk/full-get.json disk/full-list.json disk/full-health.json" \
    "create_code=$w1" "create_error_code=$w1_ec" "create_retry_after=${w1_ra:-none}" \
    "execute_code=$w2" "execute_error_code=$w2_ec" "execute_retry_after=${w2_ra:-none}" \
    "refused_writes=$((${#refused_ids[@]} + 1))" "refusals_without_unavailable_or_retry_after=$bad_503" \
    "get_code=$get_c" "base_generation=$get_gen" "list_code=$list_c" "list_items=$list_n" \
    "health_code=$h_c" "cp_same_pid_alive=$alive" "pass=$pass"

  # VAL12-10: /v1/ready answers 503 while the disk is full, both right after the first refused
  # write and after the disk filled up under writes (while every write is being refused).
  pass=$(bool chk "$ready_first" = "503,503,503" "$ready_full" = "503,503,503")
  check_done VAL12-10 "disk full: /v1/ready answers 503 while writes are refused" \
    "+$ev/val12-disk-check.txt" "disk/val12-disk-writes.txt disk/val12-fulldisk-cp.log" \
    "ready_before_any_refused_write=$ready_pre" "ready_after_first_refused_write=$ready_first" \
    "ready_after_filling_under_writes=$ready_full" \
    "writes_refused_at_that_time=create:$w1,execute:$w2" "pass=$pass"

  # VAL12-12: space freed, no restart: ready goes back to 200 and writes succeed again.
  rm -f "$mnt/filler" "$mnt/filler2"
  df -k "$mnt" >>"$ev/val12-fs.txt" 2>&1 || true
  local rd=000 rd_ms t0 a1 a2 a2_out listens
  t0=$(now_ms)
  for ((i = 0; i < 100; i++)); do
    rd=$(http_req GET "$base/v1/ready" "$ev/recovered-ready.json")
    if [[ $rd == 200 ]]; then break; fi
    sleep 0.1
  done
  rd_ms=$(($(now_ms) - t0))
  a1=$(http_req POST "$base/v1/rollouts" "$ev/recovered-create.json" "$(val12_padded_body val12-disk-after-1)")
  a2=$(http_req POST "$base/v1/rollback/execute" "$ev/recovered-execute.json" \
    "$(val12_retry_body val12-disk-base-1 val12-after-full-disk)")
  a2_out=$(pyj "$ev/recovered-execute.json" 'd["outcome"]')
  listens=$(grep -c 'listening on' "$log" || true)
  alive=false
  if cp_alive && [[ $CUR_CP_PID == "$cp_pid" ]]; then alive=true; fi
  pass=$(bool chk "$rd" = 200 "$a1" = 201 "$a2" = 200 "$a2_out" = success "$alive" = true "$listens" = 1)
  check_done VAL12-12 "space freed: /v1/ready 200 again and writes succeed (201, retry 200) without a restart" \
    "+$ev/val12-disk-check.txt" \
    "disk/recovered-ready.json disk/recovered-create.json disk/recovered-execute.json disk/val12-fulldisk-cp.log" \
    "ready_code=$rd" "ready_after_ms=$rd_ms" "create_code=$a1" "execute_code=$a2" \
    "execute_outcome=$a2_out" "cp_same_pid_alive=$alive" "cp_starts_in_log=$listens" "pass=$pass"

  # VAL12-11: no half-written plan; the audit chain is valid and matches one to one.
  local -a p_kv=() a_kv=()
  mapfile -t p_kv < <(val12_plans_json "$base" "$ev/list-pages" "$ev/val12-disk-plans.json")
  local expected present
  expected=$(printf '%s\n' val12-disk-base-1 val12-disk-base-2 val12-disk-base-3 "${ok_ids[@]}" \
    "$(if [[ $a1 == 201 ]]; then echo val12-disk-after-1; fi)" | grep . | sort | paste -sd, -)
  present=$(pyj "$ev/val12-disk-plans.json" '",".join(sorted(k for k in d["plans"] if k.startswith("val12-disk-")))' unreadable)
  local absent_bad=() rid
  for rid in "${refused_ids[@]}"; do
    code=$(http_req GET "$base/v1/rollouts/$rid" "$LAB_WORK/absent.json")
    if [[ $code != 404 ]]; then absent_bad+=("$rid:$code"); fi
  done
  local base_gen
  base_gen=$(pyj "$ev/val12-disk-plans.json" 'd["plans"]["val12-disk-base-1"]["generation"]')
  mapfile -t a_kv < <(python3 -c "$PY_VAL12_AUDIT" "$audit" "$ev/val12-disk-plans.json" val12-disk- \
    2>"$LAB_WORK/disk-audit.err" || echo "pass_audit=false")
  printf '%s\n' "${a_kv[@]}" >"$ev/val12-disk-audit.txt"
  cli "$ev/val12-disk-audit-verify.txt" - audit verify --audit-dir "$audit"
  local v_rc=$CLI_RC
  pass=$(bool chk "$present" = "$expected" "${#absent_bad[@]}" = 0 "$base_gen" = 2 \
    "$(kv_get pass_audit "${a_kv[@]}")" = true "$v_rc" = 0)
  local -a m=()
  mapfile -t m < <(kv_pick '^(events|plans_.*|plan_created_.*|rollback_executed_.*|expected_.*|events_for_.*|duplicate_.*|seq_.*)$' "${a_kv[@]}")
  check_done VAL12-11 "no half-written plan: every plan present got a 201, every 503'd id is absent; audit verify passes, events 1:1" \
    "+$ev/val12-disk-check.txt" \
    "disk/val12-disk-plans.json disk/val12-disk-writes.txt disk/val12-disk-audit.txt disk/val12-disk-audit-verify.txt" \
    "plans_present=$(kv_get unique "${p_kv[@]}")" "plans_expected=$(tr ',' '\n' <<<"$expected" | grep -c .)" \
    "present_equals_201s=$(bool test "$present" = "$expected")" \
    "refused_ids_checked=${#refused_ids[@]}" "refused_but_present=$(ids_csv "${absent_bad[@]}")" \
    "base_1_generation=$base_gen" "base_1_expected_generation=2" \
    "${m[@]}" \
    "verify_exit=$v_rc" "verify_output=$(one_line "$ev/val12-disk-audit-verify.txt")" "pass=$pass"

  # Stop the CP and unmount.
  local s_rc=not-running
  if [[ -n $CUR_CP_PID ]] && stop_cp "$CUR_CP_PID"; then s_rc=$STOP_RC; fi
  local um=false
  if umount "$mnt" 2>>"$ev/mount.err"; then
    um=true
    MOUNTS=()
  fi
  lab_note "full-disk CP: SIGTERM exit $s_rc; tmpfs unmounted: $um"
}

# ---- VAL12-13..17: a corrupt store at start-up ------------------------------------------------

# val12_damage MODE DIR: damages the copy DIR/data + DIR/audit one way; prints what it did and
# sets DAMAGE_NAMES (a |-separated list: the refusal must name one of them).
DAMAGE_NAMES=""
DAMAGE_OK=false
val12_damage() {
  local mode=$1 dir=$2 db="$2/data/autonomy.db" seg size
  size=$(stat -c %s "$db" 2>/dev/null || echo 0)
  DAMAGE_OK=true
  printf 'mode=%s\n' "$mode"
  printf 'before: autonomy.db=%s bytes, -wal=%s bytes\n' "$(stat -c %s "$db" 2>/dev/null || echo none)" \
    "$(stat -c %s "$db-wal" 2>/dev/null || echo none)"
  case $mode in
    truncated-db)
      # Only a cut if the database (checkpointed on the clean stop) is larger than that.
      if ((size <= 8192)); then DAMAGE_OK=false; fi
      truncate -s 8192 "$db"
      rm -f "$db-wal" "$db-shm"
      DAMAGE_NAMES="autonomy.db"
      ;;
    garbage-db)
      python3 -c 'import random, sys; n = 65536; open(sys.argv[1], "wb").write(random.Random(12).getrandbits(8 * n).to_bytes(n, "little"))' "$db" || DAMAGE_OK=false
      rm -f "$db-wal" "$db-shm"
      DAMAGE_NAMES="autonomy.db"
      ;;
    garbage-audit-segment)
      seg=$(find "$dir/audit" -name 'audit-*.jsonl' | sort | tail -n1)
      if [[ -z $seg ]]; then
        DAMAGE_OK=false
        seg="$dir/audit/audit-00000001.jsonl"
      fi
      # 64 lines of 120 random non-newline bytes, each ending in a newline.
      python3 -c 'import random, sys; r = random.Random(13); open(sys.argv[1], "wb").write(b"".join(bytes(r.choice([b for b in range(256) if b != 10]) for _ in range(120)) + b"\n" for _ in range(64)))' "$seg" || DAMAGE_OK=false
      DAMAGE_NAMES=$(basename "$seg")
      printf 'segment=%s\n' "$DAMAGE_NAMES"
      ;;
    empty-db)
      : >"$db"
      rm -f "$db-wal" "$db-shm"
      DAMAGE_NAMES="autonomy.db|$dir/audit"
      ;;
  esac
  printf 'after: autonomy.db=%s bytes, -wal=%s bytes, audit segments=%s\n' \
    "$(stat -c %s "$db" 2>/dev/null || echo none)" "$(stat -c %s "$db-wal" 2>/dev/null || echo none)" \
    "$(find "$dir/audit" -name 'audit-*.jsonl' | wc -l)"
  printf 'the refusal must name one of: %s\ndamage_applied=%s\n' "$DAMAGE_NAMES" "$DAMAGE_OK"
}

val12_corrupt_store() {
  local src_rc=$1 src_forced=$2 ev="$LAB_DIR/corrupt" work="$LAB_WORK/corrupt" base="http://127.0.0.1:$VAL12_PORT2"
  local code pass
  mkdir -p "$ev"
  rm -rf "$work"
  mkdir -p "$work"

  # VAL12-13 (control): an undamaged copy of the stopped store starts and serves its plans.
  cp -a "$LAB_DATA_DIR" "$work/control-data"
  cp -a "$LAB_AUDIT_DIR" "$work/control-audit"
  local c_up=false c_get=000 c_stop=not-running
  if start_cp "$VAL12_PORT2" "$work/control-data" "$work/control-audit" "$ev/control-serve.log"; then
    c_up=true
    c_get=$(http_req GET "$base/v1/rollouts/val12-hung-1" "$ev/control-get.json")
    if stop_cp "$CUR_CP_PID"; then c_stop=$STOP_RC; fi
  fi
  pass=$(bool chk "$src_rc" = 0 "$src_forced" = false "$c_up" = true "$c_get" = 200 "$c_stop" = 0)
  check_done VAL12-13 "control: the store SIGTERM-stopped (exit 0); an undamaged copy starts and serves its plans" \
    "$ev/val12-corrupt-check.txt" "corrupt/control-serve.log corrupt/control-get.json" \
    "source_sigterm_exit=$src_rc" "source_forced_kill=$src_forced" "control_started=$c_up" \
    "control_ready_ms=$CP_READY_MS" "control_start_error=${CP_START_ERROR:-none}" \
    "control_get_code=$c_get" "control_sigterm_exit=$c_stop" "pass=$pass"

  local mode n=14 dir attempt rc ms t0 free listened names errline ok all_ok res
  for mode in truncated-db garbage-db garbage-audit-segment empty-db; do
    dir="$work/$mode"
    mkdir -p "$dir"
    cp -a "$LAB_DATA_DIR" "$dir/data"
    cp -a "$LAB_AUDIT_DIR" "$dir/audit"
    val12_damage "$mode" "$dir" >"$ev/$mode-damage.txt"
    all_ok=$DAMAGE_OK
    res=()
    for attempt in 1 2; do
      local out="$ev/$mode-serve-$attempt.txt"
      printf '$ timeout -k 2 %s autonomy serve --listen 127.0.0.1:%s --data-dir %s --audit-dir %s\n' \
        "$PROBE_TIMEOUT" "$VAL12_PORT2" "$dir/data" "$dir/audit" >>"$ev/$mode-damage.txt"
      rc=125
      : >"$out"
      if port_in_use "$VAL12_PORT2"; then
        free=false
        printf 'lab_error: not run: port %s is in use, so a refusal would prove nothing\n' "$VAL12_PORT2" >"$out"
        ms=0
      else
        free=true
        rc=0
        t0=$(now_ms)
        timeout -k 2 "$PROBE_TIMEOUT" "$AUTONOMY_BIN" serve --listen "127.0.0.1:$VAL12_PORT2" \
          --data-dir "$dir/data" --audit-dir "$dir/audit" >"$out" 2>&1 || rc=$?
        ms=$(($(now_ms) - t0))
      fi
      listened=$(bool grep -qF 'listening on' "$out")
      names=false
      local nm
      local -a nms=()
      IFS='|' read -r -a nms <<<"$DAMAGE_NAMES"
      for nm in "${nms[@]}"; do
        if grep -qF -- "$nm" "$out"; then names=true; fi
      done
      errline=$(bool grep -q '^error: ' "$out")
      ok=$(bool chk "$free" = true "$rc" != 0 "$rc" != 124 "$rc" != 137 "$listened" = false \
        "$names" = true "$errline" = true)
      if [[ $ok == true ]] && ((ms >= VAL12_START_FAIL_MS)); then ok=false; fi
      if [[ $ok != true ]]; then all_ok=false; fi
      res+=("attempt$attempt:exit=$rc:ms=$ms:listening=$listened:names_file=$names")
    done
    check_done "VAL12-$n" "corrupt store ($mode): serve refuses fast, twice, naming the file; never listens" \
      "+$ev/val12-corrupt-check.txt" "corrupt/$mode-damage.txt corrupt/$mode-serve-1.txt corrupt/$mode-serve-2.txt" \
      "mode=$mode" "damage_applied=$DAMAGE_OK" "damage=$(head -n 3 "$ev/$mode-damage.txt" | tr '\n' ' ')" \
      "must_name=$DAMAGE_NAMES" \
      "limit_ms=$VAL12_START_FAIL_MS" "results=$(ids_csv "${res[@]}")" \
      "message=$(one_line "$ev/$mode-serve-1.txt")" "pass=$all_ok"
    n=$((n + 1))
  done
}

run_val12_lab() {
  lab_begin val12 "$VAL12_PORT" val12-chaos-op "$WORK_DIR/val12/data" "$WORK_DIR/val12/audit"
  local seed=${VAL12_SEED:-}
  if [[ ! $seed =~ ^[0-9]{1,9}$ ]]; then seed=$((RANDOM * 32768 + RANDOM)); fi
  VAL12_SEED_USED=$seed
  RANDOM=$seed

  val12_kill_under_load
  val12_hung_cp
  # The store the first two scenarios wrote, stopped cleanly: the source of the corrupt copies.
  local term_rc=not-running term_forced=false
  if [[ -n $CUR_CP_PID ]] && lab_cp_stop; then
    term_rc=$STOP_RC
    term_forced=$STOP_FORCED
  fi
  val12_full_disk
  val12_corrupt_store "$term_rc" "$term_forced"

  lab_note "a write that got no HTTP answer (the CP was SIGKILLed mid-request or down) is unacknowledged: it may or may not have been applied, and the checks allow both; every acknowledged one must be there"
  lab_note "kill moments come from bash \$RANDOM seeded with val12_seed (set VAL12_SEED to replay the same pauses; the CP's timing still varies)"
  lab_end "VAL12 — chaos beyond the plan: SIGKILL under load, hung CP, full disk, corrupt store" \
    "val12_seed=$seed" "writers=$VAL12_WRITERS" "kill_cycles=$VAL12_KILL_CYCLES" \
    "second_port=$VAL12_PORT2" "fs_size=$VAL12_FS_SIZE"
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
      AUTONOMY_BIN) ;;
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
