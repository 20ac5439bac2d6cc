# shellcheck shell=bash
#
# lib/val10.sh — VAL10 (run_val10_lab): rollback reliability on clean plans, port 18995.

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
  local d=$LAB_DIR log="$LAB_DIR/val10-cp.log" pass start
  start=$(utc_now)

  if ! lab_start_check VAL10-01 "CP starts and answers health" "$log" \
    "$d/val10-health.json" "val10-health.json val10-cp.log"; then
    lab_aborted "VAL10 — rollback reliability on clean plans"
    return 0
  fi

  mkdir -p "$d/setup" "$d/exec" "$d/phase"
  local -a phases=(draft published active paused aborted rolled_back) strategies=(retry rollback abort)
  local ph s id
  declare -A setup_ok=() exit_rc=() cli_out=() final=()
  for ph in "${phases[@]}"; do
    for s in "${strategies[@]}"; do
      id="val10-${ph//_/-}-$s"
      : >"$d/setup/$id.txt"
      if val10_setup "$id" "$ph" "$d/setup/$id.txt"; then setup_ok[$id]=true; else setup_ok[$id]=false; fi
      cp_cli "$d/exec/$id.txt" - rollback execute --target rollout_plan --resource "$id" \
        --strategy "$s" --reason val10-matrix
      exit_rc[$id]=$CLI_RC
      cli_out[$id]=$(kv_from "$d/exec/$id.txt" outcome)
      http_req GET "$LAB_BASE/v1/rollouts/$id" "$d/phase/$id.json" >/dev/null
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
  done < <(py audit_events by-resource "$d/val10-audit-executed.json" val10-matrix val10-dryrun \
    2>/dev/null || true)

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
      pass=$(bool chk "${setup_ok[$id]}" = true "${exit_rc[$id]}" = "$want_rc" "$out_ok" = true \
        "${final[$id]}" = "$exp_phase" "$ac" = 1 "$ao" = "$got_out")
      if [[ $pass == true ]]; then ok_cells=$((ok_cells + 1)); fi
      check_done "VAL10-$(printf '%02d' "$n_check")" "$s on $ph → $exp_out, exit $want_rc, phase $exp_phase" - \
        "setup/$id.txt exec/$id.txt phase/$id.json val10-audit-executed.json" \
        "resource=$id" "setup_ok=${setup_ok[$id]}" "exit_code=${exit_rc[$id]}" "expected_exit=$want_rc" \
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
