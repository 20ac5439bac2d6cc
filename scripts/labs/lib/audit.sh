# shellcheck shell=bash
#
# lib/audit.sh — the audit lab (run_cli_audit_lab): baseline CLI + audit store, port 18991
# (+18992 probe).

run_cli_audit_lab() {
  local op=lab-audit-op
  lab_begin audit 18991 "$op" "$WORK_DIR/audit/data" "$WORK_DIR/audit/audit-store"
  local d=$LAB_DIR w=$LAB_WORK log="$LAB_DIR/audit-cp.log" start code status
  local i id pass
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
    lab_aborted "AUDIT — baseline CLI and audit store"
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
  mapfile -t q_kv < <(py audit_events created "$d/audit/plan-created-direct.json" "$start" \
    "lab-audit-1,lab-audit-2,lab-audit-3,lab-audit-4" "$op")
  # The same query answered by the CP (GET /v1/audit/events): no AUTONOMY_AUDIT_DIR.
  unset AUTONOMY_AUDIT_DIR
  cp_cli "$d/audit/plan-created-api.json" "$d/audit/plan-created-api.err" -o json audit query \
    --event-type plan.created --actor "$op" --start-time "$start"
  export AUTONOMY_AUDIT_DIR=$LAB_AUDIT_DIR
  local api_rc=$CLI_RC
  local direct_ids api_ids
  direct_ids=$(pyj "$d/audit/plan-created-direct.json" '",".join(e["id"] for e in d["items"])' direct-unreadable)
  api_ids=$(pyj "$d/audit/plan-created-api.json" '",".join(e["id"] for e in d["items"])' api-unreadable)
  cli "$d/audit/phase-changed-direct.json" "$d/audit/phase-changed-direct.err" -o json audit query \
    --event-type rollout.phase_changed --actor "$op" --outcome success --start-time "$start"
  local pc_rc=$CLI_RC pc_1 pc_3
  pc_1=$(pyj "$d/audit/phase-changed-direct.json" 'sum(1 for e in d["items"] if e["resource"] == "lab-audit-1")' -1)
  pc_3=$(pyj "$d/audit/phase-changed-direct.json" 'sum(1 for e in d["items"] if e["resource"] == "lab-audit-3")' -1)
  pass=$(bool chk "$q_rc" = 0 "$(kv_get pass "${q_kv[@]}")" = true "$api_rc" = 0 \
    "$direct_ids" = "$api_ids" "$pc_rc" = 0 "$pc_1" = 3 "$pc_3" = 1)
  local -a q_meas=()
  mapfile -t q_meas < <(kv_omit pass "${q_kv[@]}")
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
  edit_info=$(py tamper_audit "$t_edit" edit lab-audit-2) || true
  del_info=$(py tamper_audit "$t_del" delete lab-audit-2) || true
  local edit_seq=none del_seq=none
  if [[ $edit_info =~ seq=([^[:space:]]+) ]]; then edit_seq=${BASH_REMATCH[1]}; fi
  if [[ $del_info =~ seq=([^[:space:]]+) ]]; then del_seq=${BASH_REMATCH[1]}; fi
  printf '%s\n' "tampered (edit): $edit_info" >"$d/audit/tamper-edit-verify.txt"
  cli "+$d/audit/tamper-edit-verify.txt" - audit verify --audit-dir "$t_edit"
  local e_rc=$CLI_RC
  printf '%s\n' "tampered (delete): $del_info" >"$d/audit/tamper-delete-verify.txt"
  cli "+$d/audit/tamper-delete-verify.txt" - audit verify --audit-dir "$t_del"
  local dl_rc=$CLI_RC
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
  local restarted=false persisted sec_rc port_rc probe_free
  if lab_cp_start "$log"; then restarted=true; fi
  persisted=$(plan_phase lab-audit-1)
  if port_in_use 18992; then probe_free=false; else probe_free=true; fi
  probe_serve "$d/second-cp-same-data-dir.txt" 18992 "$LAB_DATA_DIR" "$LAB_AUDIT_DIR"
  sec_rc=$PROBE_RC
  mkdir -p "$w/other-data" "$w/other-audit"
  probe_serve "$d/second-cp-taken-port.txt" "$LAB_PORT" "$w/other-data" "$w/other-audit"
  port_rc=$PROBE_RC
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
