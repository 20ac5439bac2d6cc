# shellcheck shell=bash
#
# lib/report.sh — a lab's life: lab_begin (fresh dirs and environment), check_done (one check
# and its measured values), lab_end (stop the CP, write <lab>-report.json/.txt via
# py/report.py, the summary line).

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
LAB_SECS=""               # how long the last lab took (lab_summary)
declare -A MV=()          # measured values of the current lab: MV[CHECK.key]=value
declare -A LAB_RESULT=()  # lab -> PASS|FAIL
declare -A LAB_LINE=()    # lab -> one-line summary

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

# lab_aborted TITLE: a lab whose CP did not start ends here (CP_START_ERROR says why).
lab_aborted() {
  lab_note "lab aborted: the CP did not start ($CP_START_ERROR)"
  lab_end "$1"
}

# lab_summary RESULT PASS_COUNT TOTAL T0_MS: records the current lab's result and its line of
# the summary main prints; LAB_SECS is the seconds since T0_MS.
# shellcheck disable=SC2034 # LAB_RESULT and LAB_LINE are read by main
lab_summary() {
  LAB_SECS=$(awk -v ms="$(($(now_ms) - $4))" 'BEGIN { printf "%.1f", ms / 1000 }')
  LAB_RESULT[$LAB]=$1
  LAB_LINE[$LAB]=$(printf '%-5s %-5s %s/%s checks  %6ss  report: %s' "$LAB" "$1" "$2" "$3" \
    "$LAB_SECS" "$LAB_DIR/$LAB-report.txt")
}

# lab_end TITLE [KEY=VALUE]...: stops the lab's CP, writes <lab>-report.json/.txt and the
# summary line.
lab_end() {
  local title=$1 finished res pass_count total result env="" kv notes=""
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
  res=$(py report "$LAB" "$title" "$LAB_CHECKS" "$LAB_DIR/$LAB-report.json" \
    "$LAB_DIR/$LAB-report.txt" "$LAB_STARTED_AT" "$finished" "$env" "$notes") || res="0 0 FAIL"
  read -r pass_count total result <<<"$res"
  lab_summary "$result" "$pass_count" "$total" "$LAB_T0"
  say "$LAB: $result ($pass_count/$total checks, ${LAB_SECS}s)"
}
