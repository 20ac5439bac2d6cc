# shellcheck shell=bash
#
# lib/val13.sh — VAL13 (run_val13_lab): a fleet rollout under chaos, port 18999.

# VAL13 is driven by the Rust lab binary `autonomy-lab val13` (crates/autonomy-lab): a CP,
# 1,000 devices simulated by `autonomy fleet simulate` (5% failing on their first attempt, 2%
# silent, 2% false-success, 1% reverting), a 4-stage plan with a manual gate before stage 3
# that survives three SIGKILLs, engine pauses resolved with retry/resume, the stuck scan
# compared with the simulator's manifest. It writes the evidence and val13-report.txt/.json
# under $EVIDENCE_DIR/val13/ and stops its CP and the simulator before it exits.
# VAL13_SEED (a number) picks the fleet's behaviours (default 13).
run_val13_lab() {
  local lab_bin=${AUTONOMY_LAB_BIN:-} lab_rc=0 res pass_count total result t0
  LAB=val13
  LAB_DIR="$EVIDENCE_DIR/val13"
  t0=$(now_ms)
  stop_all_cps
  if [[ -z $lab_bin ]]; then
    lab_bin=$(cargo_bin autonomy-lab) || lab_bin=""
  fi
  if [[ -n $lab_bin && -x $lab_bin ]]; then
    "$lab_bin" val13 --bin "$AUTONOMY_BIN" --evidence-dir "$LAB_DIR" --work-dir "$WORK_DIR/val13" || lab_rc=$?
  else
    say "$LAB: no autonomy-lab binary (AUTONOMY_LAB_BIN=${AUTONOMY_LAB_BIN:-unset}; build failed or ${lab_bin:-nothing} missing)"
    lab_rc=1
  fi
  res=$(pyj "$LAB_DIR/val13-report.json" '"%s %s %s" % (d["pass_count"], d["total"], d["result"])' "0 0 FAIL")
  read -r pass_count total result <<<"$res"
  if ((lab_rc != 0)); then result=FAIL; fi
  lab_summary "$result" "$pass_count" "$total" "$t0"
  if ((lab_rc != 0)); then say "$LAB: $result (autonomy-lab exit $lab_rc)"; fi
}
