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
#   val13  run_val13_lab        a fleet rollout under chaos: 1,000 simulated devices,
#                               gates, engine pauses, SIGKILLs             port 18999
#   val14  run_val14_lab        Gate D: three replicas on PostgreSQL, leader kills, freezes,
#                               a PostgreSQL restart, a partition (root)   ports 18981-18984
#
# This file is the entry point: usage, cleanup, the VAL11 lab and main. The shared helpers are
# in lib/ (common.sh: logging, values, JSON; cp.sh: CP start/stop; client.sh: curl and CLI;
# report.sh: checks and reports), the other labs in lib/<lab>.sh, and the Python they run in
# py/ (Python 3 stdlib only).
#
# Run `run_cli_audit_lab.sh --help` for usage.

# shellcheck source-path=SCRIPTDIR
set -euo pipefail

SCRIPT_NAME=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
readonly SCRIPT_NAME SCRIPT_DIR REPO_ROOT

readonly ALL_LABS=(audit val08 val09 val10 val11 val12 val13 val14)

# Bounds: every wait in this script is bounded by one of these. They are read by the sourced
# lib/*.sh, so SC2034 is off for each: shellcheck follows the sources only with -x (as CI runs it).
# shellcheck disable=SC2034
readonly HTTP_MAX_TIME=15       # seconds per curl request
# shellcheck disable=SC2034
readonly CLI_TIMEOUT=60         # seconds per CLI invocation (killed after that)
# shellcheck disable=SC2034
readonly CP_READY_POLLS=100     # health polls after a CP start ...
# shellcheck disable=SC2034
readonly CP_POLL_INTERVAL=0.1   # ... this far apart (10 s in all)
# shellcheck disable=SC2034
readonly CP_STOP_POLLS=100      # polls for a CP to exit after SIGTERM (10 s), then SIGKILL
# shellcheck disable=SC2034
readonly PROBE_TIMEOUT=10       # seconds a second-CP probe may run before it is killed
# shellcheck disable=SC2034
readonly BUILD_TIMEOUT=3600     # seconds for `cargo build -p autonomy`

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [all|audit|val08|val09|val10|val11|val12|val13|val14]...
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
  val13  run_val13_lab        a fleet rollout under chaos: 1,000 devices simulated by
                              \`autonomy fleet simulate\` (failing, silent, false-success,
                              reverting), a 4-stage plan with a manual gate that survives
                              three SIGKILLs, the stuck scan against the manifest, retry,
                              final states, audit verify                 port 18999
  val14  run_val14_lab        Gate D: its own PostgreSQL cluster (port 18984) and three
                              replicas, one in a network namespace; creates spread over
                              them; SIGKILL, SIGSTOP 15 s and pg_terminate_backend of the
                              leader (new leader, higher epoch, within 10 s; promoter epochs
                              never decrease); PostgreSQL -m immediate (503 + Retry-After,
                              recovery without restart); 1,000 simulated devices through 4
                              stages with the leader disturbed every 10 s; a partition of
                              the leader (it stops leading, 503, rejoins); audit verify on
                              every mirror. Needs root             ports 18981-18983 (+18984)

Environment:
  AUTONOMY_BIN  the autonomy binary; default: \`cargo build -p autonomy\` in the repo, then
                \${CARGO_TARGET_DIR:-<repo>/target}/debug/autonomy
  EVIDENCE_DIR  where the evidence goes (default: <repo>/lab-evidence/<UTC timestamp>/);
                it is kept after the run
  TMPDIR        parent of the scratch \$WORK_DIR, which is removed on exit
  VAL12_SEED    seed (a number) for val12's SIGKILL moments, to replay a run's pauses
  VAL13_SEED    seed (a number) of val13's fleet behaviours (default 13)
  VAL14_DEVICES devices of val14's fleet rollout (default 1000)

Every CP the script starts is stopped on exit (SIGTERM, then SIGKILL after 10 s), every
filesystem it mounted (val12) is unmounted, and val14's PostgreSQL cluster, network namespace
and veth are removed.
Exit status: 0 only if every selected lab passes every check; 1 otherwise; 2 on a usage
error.
EOF
}

# ------------------------------------------------------------------------------------------
# State, libraries and cleanup
# ------------------------------------------------------------------------------------------

WORK_DIR=""
EVIDENCE_DIR=${EVIDENCE_DIR:-}
AUTONOMY_BIN=${AUTONOMY_BIN:-}
BG_PIDS=()      # load workers (val08) still running
MOUNTS=()       # filesystems this script mounted (val12), unmounted on exit

# shellcheck source=lib/common.sh
source "$SCRIPT_DIR/lib/common.sh"
# shellcheck source=lib/cp.sh
source "$SCRIPT_DIR/lib/cp.sh"
# shellcheck source=lib/client.sh
source "$SCRIPT_DIR/lib/client.sh"
# shellcheck source=lib/report.sh
source "$SCRIPT_DIR/lib/report.sh"
# shellcheck source=lib/audit.sh
source "$SCRIPT_DIR/lib/audit.sh"
# shellcheck source=lib/val08.sh
source "$SCRIPT_DIR/lib/val08.sh"
# shellcheck source=lib/val09.sh
source "$SCRIPT_DIR/lib/val09.sh"
# shellcheck source=lib/val10.sh
source "$SCRIPT_DIR/lib/val10.sh"
# shellcheck source=lib/val12.sh
source "$SCRIPT_DIR/lib/val12.sh"
# shellcheck source=lib/val13.sh
source "$SCRIPT_DIR/lib/val13.sh"
# shellcheck source=lib/val14.sh
source "$SCRIPT_DIR/lib/val14.sh"

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
  val14_cleanup
  if [[ -n $WORK_DIR && -d $WORK_DIR ]]; then
    rm -rf -- "$WORK_DIR"
  fi
  exit "$rc"
}

# ------------------------------------------------------------------------------------------
# val11 — the VAL11 chaos test pack (seed 000_1cf83b525a29892c), exactly
# ------------------------------------------------------------------------------------------

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
  mapfile -t k < <(py stuck_scan val11 "$ev/val11-scan-stuck.json" "$code" \
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
  mapfile -t k < <(py val11_durable "$ev/val11-durability-list.json" \
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
  mapfile -t k < <(py audit_events executed "$ev/val11-audit-executed.json" "$val11_start_time" \
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
# Main
# ------------------------------------------------------------------------------------------

resolve_binary() {
  if [[ -n $AUTONOMY_BIN ]]; then
    if [[ ! -x $AUTONOMY_BIN ]]; then
      echo "error: AUTONOMY_BIN=$AUTONOMY_BIN is not an executable file" >&2
      return 1
    fi
  else
    if ! AUTONOMY_BIN=$(cargo_bin autonomy); then
      echo "error: cargo build -p autonomy failed" >&2
      return 1
    fi
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
      audit | val08 | val09 | val10 | val11 | val12 | val13 | val14) selected+=("$arg") ;;
      *)
        echo "error: unknown lab '$arg' (expected all, audit, val08, val09, val10, val11, val12, val13 or val14)" >&2
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
      val13) run_val13_lab ;;
      val14) run_val14_lab ;;
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
