# shellcheck shell=bash
#
# lib/val09.sh — VAL09 (run_val09_lab): stuck detection, port 18994.

# val09_scan OUT THRESHOLD: GET /v1/rollouts/stuck?threshold_seconds=THRESHOLD; prints the code.
val09_scan() {
  http_req --query "threshold_seconds=$2" GET "$LAB_BASE/v1/rollouts/stuck" "$1"
}

run_val09_lab() {
  local op=val09-stuck-op
  lab_begin val09 18994 "$op" "$WORK_DIR/val09/data" "$WORK_DIR/val09/audit"
  local d=$LAB_DIR log="$LAB_DIR/val09-cp.log" code pass id
  local setup="$d/val09-setup.txt"
  : >"$setup"

  if ! lab_start_check VAL09-01 "CP starts and answers health" "$log" \
    "$d/val09-health.json" "val09-health.json val09-cp.log"; then
    lab_aborted "VAL09 — stuck detection"
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
  c2=$(val09_scan "$d/val09-scan-t2.json" 2)
  c25=$(val09_scan "$d/val09-scan-t2.5.json" 2.5)
  c0=$(val09_scan "$d/val09-scan-t0.json" 0)
  c3600=$(val09_scan "$d/val09-scan-t3600.json" 3600)
  cp_cli "$d/val09-cli-stuck-t2.json" "$d/val09-cli-stuck-t2.err" -o json rollout stuck --threshold-seconds 2
  local cli_json_rc=$CLI_RC
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
  mapfile -t k < <(py stuck_scan set "$d/val09-scan-t2.json" "$c2" "$stale_csv" "$excl_csv" 2 "$phases")
  check_done VAL09-03 "threshold 2s: exactly the stale published/active plans, with diagnosis + actions" - \
    "val09-scan-t2.json val09-setup.txt" "${k[@]}"
  mapfile -t k < <(py stuck_scan set "$d/val09-scan-t2.5.json" "$c25" "$stale_csv" "$excl_csv" 2.5 "$phases")
  check_done VAL09-04 "fractional threshold 2.5s: same set" - "val09-scan-t2.5.json" "${k[@]}"
  mapfile -t k < <(py stuck_scan set "$d/val09-scan-t0.json" "$c0" "$live_csv" "$(ids_csv "${excluded[@]}")" 0 "$phases")
  check_done VAL09-05 "threshold 0: every published/active plan, never draft/paused/terminal" - \
    "val09-scan-t0.json" "${k[@]}"
  mapfile -t k < <(py stuck_scan set "$d/val09-scan-t3600.json" "$c3600" "" "$(ids_csv "${all_ids[@]}")" 3600 "$phases")
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
    bc=$(val09_scan "$d/val09-scan-bad-$v.json" "$v")
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
  pass=$(bool chk "$cli_json_rc" = 0 "$cli_ids" = "$api_ids" "$cli_text_rc" = 0 "$text_count" = "${#stale[@]}")
  check_done VAL09-09 "CLI rollout stuck (json + text) agrees with the API" - \
    "val09-cli-stuck-t2.json val09-cli-stuck-t2.txt" \
    "cli_json_exit=$cli_json_rc" "cli_ids=$cli_ids" "api_ids=$api_ids" "cli_text_exit=$cli_text_rc" \
    "cli_text_stuck_count=$text_count" "pass=$pass"

  lab_end "VAL09 — stuck detection"
}
