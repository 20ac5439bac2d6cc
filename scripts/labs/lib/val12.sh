# shellcheck shell=bash
#
# lib/val12.sh — VAL12 (run_val12_lab): chaos beyond the plan, ports 18997 (+18998).

# VAL12 is driven by the Rust lab binary `autonomy-lab val12` (crates/autonomy-lab, on
# crates/autonomy-testkit): 16 writers x 20 SIGKILL/restart cycles with a ledger of every
# acknowledged write, a SIGSTOPped CP, a full 4 MiB tmpfs (mounting needs root), corrupt stores
# at start-up; ports 18997 (+18998). It writes the evidence and val12-report.txt/.json under
# $EVIDENCE_DIR/val12/ (the same check ids and file names as ever) and stops every CP and
# unmounts its tmpfs before it exits. VAL12_SEED (a number) replays the kill moments.
# The binary: $AUTONOMY_LAB_BIN, else `cargo build -p autonomy-lab` and
# ${CARGO_TARGET_DIR:-<repo>/target}/debug/autonomy-lab.
# run_rust_lab NAME: runs `autonomy-lab NAME` (evidence into $EVIDENCE_DIR/NAME, scratch under
# $WORK_DIR/NAME) and records its report's result as the lab's summary. VAL12, VAL13 and VAL14 use it.
run_rust_lab() {
  local name=$1 lab_bin=${AUTONOMY_LAB_BIN:-} lab_rc=0 res pass_count total result t0
  LAB=$name
  LAB_DIR="$EVIDENCE_DIR/$name"
  t0=$(now_ms)
  stop_all_cps
  if [[ -z $lab_bin ]]; then
    lab_bin=$(cargo_bin autonomy-lab) || lab_bin=""
  fi
  if [[ -n $lab_bin && -x $lab_bin ]]; then
    "$lab_bin" "$name" --bin "$AUTONOMY_BIN" --evidence-dir "$LAB_DIR" --work-dir "$WORK_DIR/$name" || lab_rc=$?
  else
    say "$LAB: no autonomy-lab binary (AUTONOMY_LAB_BIN=${AUTONOMY_LAB_BIN:-unset}; build failed or ${lab_bin:-nothing} missing)"
    lab_rc=1
  fi
  res=$(pyj "$LAB_DIR/$name-report.json" '"%s %s %s" % (d["pass_count"], d["total"], d["result"])' "0 0 FAIL")
  read -r pass_count total result <<<"$res"
  if ((lab_rc != 0)); then result=FAIL; fi
  lab_summary "$result" "$pass_count" "$total" "$t0"
  if ((lab_rc != 0)); then say "$LAB: $result (autonomy-lab exit $lab_rc)"; fi
}

run_val12_lab() {
  # Unmounted on exit should the run be cut short (nothing happens if it is not mounted).
  MOUNTS+=("$WORK_DIR/val12/work/val12-fullfs")
  run_rust_lab val12
}
