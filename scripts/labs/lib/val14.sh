# shellcheck shell=bash
#
# lib/val14.sh — VAL14 (run_val14_lab): the seed's "Gate D", three CP replicas on PostgreSQL,
# ports 18981–18983 (PostgreSQL 18984).

# VAL14 is driven by the Rust lab binary `autonomy-lab val14` (crates/autonomy-lab): its own
# PostgreSQL cluster (scripts/ci/postgres.sh, port 18984), three replicas r1, r2 on
# 127.0.0.1:18981/18982 and r3 in a network namespace of its own (val14ns, 10.214.0.2:18983,
# PostgreSQL over the veth val14h/val14n); creates spread over the replicas; SIGKILL,
# SIGSTOP 15 s and pg_terminate_backend of the leader (a new leader under a higher epoch
# within 10 s); PostgreSQL stopped with -m immediate (503 + Retry-After, recovery without a
# restart); a 1,000-device simulated rollout with the leader disturbed every 10 s; a network
# partition of r3 while it leads; audit verify on every mirror. Needs root (ip netns, runuser).
# It writes the evidence and val14-report.txt/.json under $EVIDENCE_DIR/val14/ and removes its
# cluster, namespace and veth before it exits; should the run be cut short, cleanup() calls
# val14_cleanup. VAL14_DEVICES (20 or more, default 1000) sizes the fleet.
# (run_rust_lab is in lib/val12.sh.)

val14_cleanup() {
  if [[ -n ${VAL14_PG_DIR:-} && -d $VAL14_PG_DIR ]]; then
    bash "$REPO_ROOT/scripts/ci/postgres.sh" stop "$VAL14_PG_DIR" >/dev/null 2>&1 || true
  fi
  if command -v ip >/dev/null 2>&1; then
    ip link del val14h >/dev/null 2>&1 || true
    ip netns del val14ns >/dev/null 2>&1 || true
  fi
}

run_val14_lab() {
  export VAL14_PG_SCRIPT="$REPO_ROOT/scripts/ci/postgres.sh"
  export VAL14_PG_DIR="${TMPDIR:-/tmp}/autonomy-val14-pg.$$"
  run_rust_lab val14
}
