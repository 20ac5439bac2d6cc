# shellcheck shell=bash
#
# lib/val13.sh — VAL13 (run_val13_lab): a fleet rollout under chaos, port 18999.

# VAL13 is driven by the Rust lab binary `autonomy-lab val13` (crates/autonomy-lab): a CP,
# 1,000 devices on 10 sites simulated by `autonomy fleet simulate` (5% failing on their first
# attempt, 2% silent, 2% false-success, 1% reverting, 10% busy for a while), a 4-stage plan
# with a manual gate before stage 3 that survives three SIGKILLs, a disruption budget of 25
# devices in flight per site and `require: {idle: true}`, engine pauses resolved with
# retry/resume, the stuck scan compared with the simulator's manifest. It writes the evidence and val13-report.txt/.json
# under $EVIDENCE_DIR/val13/ and stops its CP and the simulator before it exits.
# VAL13_SEED (a number) picks the fleet's behaviours (default 13).
# (run_rust_lab is in lib/val12.sh.)
run_val13_lab() {
  run_rust_lab val13
}
