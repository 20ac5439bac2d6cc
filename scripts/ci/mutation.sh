#!/usr/bin/env bash
# Mutation check (issue 13): do the durability tests notice a writer that answers before
# COMMIT? First `storage_faults.rs::sqlite_only_a_full_database_disk_…` (deterministic: a
# COMMIT that fails on a full disk must leave no 201 behind), then the SIGKILL ledger test
# `durability.rs::sigkill_under_concurrent_writes_loses_no_acknowledged_write` (probabilistic:
# a SIGKILL loses only what was not yet written, a window of microseconds).
#
# Copies the working tree (tracked and untracked, not ignored files) to a work dir, rewrites
# the SQLite writer's `run_batch` so that every job of a batch is answered before the batch's
# COMMIT (the answers the real code sends after COMMIT and the audit append go to nobody),
# builds it, and runs the ledger test up to MUTATION_RUNS times. Exit 0 when the mutant is
# killed (a run of the test failed), 1 when it survived every run, 2 when the check could not
# be made (the mutation no longer applies to writer.rs, the build failed, a timeout).
#
# Environment: MUTATION_WORK_DIR (default target/mutation: the copy and its cargo target dir,
# kept between runs so that later runs rebuild only the mutated crates), MUTATION_TARGET_DIR
# (another cargo target dir for the copy), MUTATION_SEED_DIR (below), MUTATION_RUNS (default 20), MUTATION_TIMEOUT (seconds
# for the build, default 1800, and for each test run, 300).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

work=${MUTATION_WORK_DIR:-$repo/target/mutation}
target=${MUTATION_TARGET_DIR:-$work/target}
runs=${MUTATION_RUNS:-20}
build_limit=${MUTATION_TIMEOUT:-1800}
src=$work/src
writer=crates/autonomy-store-sqlite/src/writer.rs
test_name=sigkill_under_concurrent_writes_loses_no_acknowledged_write
started=$(date +%s)

elapsed() { echo "$(($(date +%s) - started)) s"; }
inconclusive() {
  echo "mutation: inconclusive after $(elapsed): $*" >&2
  exit 2
}

case $runs in
  '' | *[!0-9]*) inconclusive "MUTATION_RUNS must be a number, not '$runs'" ;;
esac

# MUTATION_SEED_DIR (e.g. target/debug of a finished build, as .ci/run passes): a target dir
# that does not exist yet is seeded with hard links to its deps/, build/ and .fingerprint/, so
# the copy rebuilds only the mutated crate and what depends on it (cargo names a workspace
# crate's artifacts by its path relative to the workspace, so the copy's names are the seed's;
# rustc writes each artifact to a new file and renames it into place, so the seed's linked
# files are never written: checked by inode after a run, 34 s in all with the seed).
if [ -n "${MUTATION_SEED_DIR:-}" ] && [ ! -d "$target/debug" ]; then
  mkdir -p "$target/debug"
  for d in deps build .fingerprint; do
    if [ -d "$MUTATION_SEED_DIR/$d" ]; then
      cp -al "$MUTATION_SEED_DIR/$d" "$target/debug/$d"
    fi
  done
  echo "mutation: seeded $target/debug from $MUTATION_SEED_DIR (hard links)" >&2
fi

# A fresh copy each run. tar keeps the files' modification times, so cargo rebuilds only what
# the mutation touched (and what depends on it) when the work dir is kept between runs.
rm -rf "$src"
mkdir -p "$src" "$target"
git -C "$repo" ls-files -z --cached --others --exclude-standard |
  tar -C "$repo" --null -T - -cf - | tar -C "$src" -xf -

# The mutant: right before `let committed = self.flush_shifts()…` (the batch's COMMIT) in
# run_batch, every job is
# answered with its result, and the real answers after COMMIT go to throwaway channels.
perl -0pi -e '
  s/fn run_batch\(&mut self, batch: Vec<Job>\)/fn run_batch(&mut self, mut batch: Vec<Job>)/;
  s/\n(        let committed = self\.flush_shifts\(\))/
        \/\/ MUTANT (scripts\/ci\/mutation.sh): every answer goes out before COMMIT.
        let results: Vec<Result<Reply>> = batch
            .iter_mut()
            .zip(results)
            .map(|(job, result)| {
                let (early, _) = oneshot::channel();
                let _ = std::mem::replace(&mut job.reply, early).send(result);
                Err(StoreError::Internal("answered before COMMIT".into()))
            })
            .collect();
$1/;
' "$src/$writer"
if ! grep -q 'MUTANT (scripts/ci/mutation.sh)' "$src/$writer" ||
  ! grep -q 'fn run_batch(&mut self, mut batch: Vec<Job>)' "$src/$writer"; then
  inconclusive "the mutation does not apply to $writer any more (run_batch or its COMMIT line changed): update this script"
fi

echo "mutation: building the mutant in $src (target dir $target)" >&2
if ! (cd "$src" && CARGO_TARGET_DIR=$target timeout "$build_limit" \
  cargo nextest run -p autonomy --test durability --test storage_faults --no-run >&2); then
  inconclusive "the mutant did not build"
fi

# First the deterministic test: the database's disk fills, a batch's COMMIT fails, and a create
# that was answered 201 must exist. It needs root (a tmpfs); without root it skips and passes,
# so only its failure counts here.
full_disk_test=sqlite_only_a_full_database_disk_refuses_the_batch_and_keeps_every_acknowledged_create
echo "mutation: full-database-disk test" >&2
status=0
(cd "$src" && CARGO_TARGET_DIR=$target timeout 300 \
  cargo nextest run -p autonomy --test storage_faults --no-fail-fast -E "test($full_disk_test)" >&2) ||
  status=$?
case $status in
  0) echo "mutation: the full-database-disk test passed against the mutant (not root?); on to the ledger test" >&2 ;;
  124) inconclusive "the full-database-disk test timed out" ;;
  *)
    echo "mutation: KILLED — the full-database-disk test failed against a writer that answers before COMMIT ($(elapsed))"
    exit 0
    ;;
esac

# The SIGKILL lands at a different moment in every run, so one run catches this mutant only
# sometimes (3 of 11 runs when it was written): stop at the first run that does.
for run in $(seq 1 "$runs"); do
  echo "mutation: ledger test, run $run of $runs" >&2
  status=0
  (cd "$src" && CARGO_TARGET_DIR=$target timeout 300 \
    cargo nextest run -p autonomy --test durability --no-fail-fast -E "test($test_name)" >&2) ||
    status=$?
  case $status in
    0) ;;
    124) inconclusive "the ledger test timed out" ;;
    *)
      echo "mutation: KILLED — the ledger test failed (run $run of at most $runs) against a writer that answers before COMMIT ($(elapsed))"
      exit 0
      ;;
  esac
done

echo "mutation: SURVIVED — the ledger test passed $runs of $runs runs against a writer that answers before COMMIT ($(elapsed))"
exit 1
