# shellcheck shell=bash
#
# lib/val08.sh — VAL08 (run_val08_lab): concurrent creates under load, port 18993.

readonly VAL08_WORKERS=8 VAL08_PER_WORKER=25 VAL08_SHARED=5 VAL08_PAGE=37

# val08_worker W OUT: VAL08_PER_WORKER unique creates; after every fifth also one of the
# VAL08_SHARED ids every worker races for. Lines: KIND ID CODE SECONDS.
val08_worker() {
  local w=$1 out=$2 i id code body k
  local bodyf="$LAB_WORK/worker-$w.body"
  for ((i = 1; i <= VAL08_PER_WORKER; i++)); do
    for k in unique shared; do
      if [[ $k == unique ]]; then
        id=$(printf 'val08-w%02d-%03d' "$w" "$i")
      elif ((i % 5 == 0 && i / 5 <= VAL08_SHARED)); then
        id=val08-shared-$((i / 5))
      else
        continue
      fi
      body=$(plan_body "$id" false "$(good_artifact val08)" "$(good_fingerprint)" val08 "worker-$w")
      code=$(http_req --timed --errors "$LAB_WORK/worker-$w.curl.err" POST "$LAB_BASE/v1/rollouts" \
        "$bodyf" "$body")
      printf '%s %s %s\n' "$k" "$id" "$code" >>"$out"
      case "$k:${code%% *}" in
        unique:201 | shared:201 | shared:409) ;;
        *) printf '%s %s %s %s\n' "$k" "$id" "${code%% *}" "$(one_line "$bodyf")" >>"$LAB_DIR/val08-unexpected.txt" ;;
      esac
    done
  done
}

run_val08_lab() {
  local op=val08-load-op
  lab_begin val08 18993 "$op" "$WORK_DIR/val08/data" "$WORK_DIR/val08/audit"
  local d=$LAB_DIR log="$LAB_DIR/val08-cp.log" code pass start pf
  start=$(utc_now)

  if ! lab_start_check VAL08-01 "CP starts and answers health" "$log" \
    "$d/val08-health.json" "val08-health.json val08-cp.log"; then
    lab_aborted "VAL08 — concurrent creates under load"
    return 0
  fi

  # The load: VAL08_WORKERS workers in parallel, every one awaited.
  local codes="$d/val08-create-codes.txt" w t0 load_ms pid
  : >"$codes"
  : >"$d/val08-unexpected.txt"
  BG_PIDS=()
  t0=$(now_ms)
  for ((w = 1; w <= VAL08_WORKERS; w++)); do
    val08_worker "$w" "$LAB_WORK/worker-$w.codes" &
    BG_PIDS+=("$!")
  done
  local workers_failed=0
  for pid in "${BG_PIDS[@]}"; do
    wait "$pid" || workers_failed=$((workers_failed + 1))
  done
  BG_PIDS=()
  load_ms=$(($(now_ms) - t0))
  cat "$LAB_WORK"/worker-*.codes >"$codes"

  local -a u_kv=() s_kv=()
  mapfile -t u_kv < <(py val08_stats unique "$codes")
  mapfile -t s_kv < <(py val08_stats shared "$codes")
  local rps
  rps=$(awk -v n="$(grep -c . "$codes" || true)" -v ms="$load_ms" 'BEGIN { if (ms > 0) printf "%.1f", n * 1000 / ms; else print 0 }')
  check_done VAL08-02 "$((VAL08_WORKERS * VAL08_PER_WORKER)) concurrent unique creates: all 201, no 5xx" - \
    "val08-create-codes.txt val08-unexpected.txt" \
    "workers=$VAL08_WORKERS" "creates_per_worker=$VAL08_PER_WORKER" "workers_failed=$workers_failed" \
    "load_ms=$load_ms" "requests_per_second=$rps" "${u_kv[@]}"
  check_done VAL08-03 "contended ids ($VAL08_WORKERS workers each): exactly one 201, the rest 409" - \
    "val08-create-codes.txt val08-unexpected.txt" "${s_kv[@]}"

  # Every 201'd id, read back through the paginated list.
  local created="$LAB_WORK/created-ids.txt" listed="$LAB_WORK/listed-ids.txt"
  awk '$3 == 201 { print $2 }' "$codes" >"$created"
  : >"$listed"
  list_pages "$LAB_BASE" "$d/list-pages" "$VAL08_PAGE" 200
  for pf in "${LIST_FILES[@]}"; do
    pyj "$pf" '"\n".join(ids(d))' >>"$listed"
  done
  local -a l_kv=() l_meas=()
  mapfile -t l_kv < <(py val08_stats list "$listed" "$created")
  cp "$listed" "$d/val08-listed-ids.txt"
  mapfile -t l_meas < <(kv_omit pass "${l_kv[@]}")
  pass=$(bool chk "$(kv_get pass "${l_kv[@]}")" = true "$LIST_COMPLETE" = true)
  check_done VAL08-04 "paginated list (limit=$VAL08_PAGE): every 201'd id exactly once" - \
    "list-pages/ val08-listed-ids.txt val08-create-codes.txt" \
    "page_size=$VAL08_PAGE" "pages=$LIST_PAGES" "pagination_complete=$LIST_COMPLETE" "last_code=$LIST_CODE" \
    "${l_meas[@]}" "pass=$pass"

  # Phase filter and limit bounds.
  local n201 fp_n lim0 lim1001 lim1000
  n201=$(grep -c . "$created" || true)
  code=$(http_req --query phase=published --query limit=1000 GET "$LAB_BASE/v1/rollouts" \
    "$d/val08-list-published.json")
  fp_n=$(pyj "$d/val08-list-published.json" 'len(d["items"]) if not d.get("next_cursor") else -1' -1)
  lim1000=$code
  lim0=$(http_req --query limit=0 GET "$LAB_BASE/v1/rollouts" "$LAB_WORK/lim0.json")
  lim1001=$(http_req --query limit=1001 GET "$LAB_BASE/v1/rollouts" "$d/val08-list-limit-1001.json")
  pass=$(bool chk "$lim1000" = 200 "$fp_n" = "$n201" "$lim0" = 400 "$lim1001" = 400)
  check_done VAL08-05 "list ?phase=published&limit=1000 counts all; limit 0 and 1001 are 400" - \
    "val08-list-published.json val08-list-limit-1001.json" \
    "limit_1000_code=$lim1000" "published_count=$fp_n" "created_201=$n201" \
    "limit_0_code=$lim0" "limit_1001_code=$lim1001" "pass=$pass"

  # One plan.created audit event per acknowledged create; the chain verifies.
  cli "$d/val08-audit-created.json" "$d/val08-audit-created.err" -o json audit query \
    --event-type plan.created --actor "$op" --outcome success --start-time "$start" --limit 10000
  local a_rc=$CLI_RC a_n a_set_ok
  a_n=$(pyj "$d/val08-audit-created.json" 'len(d["items"])' -1)
  a_set_ok=$(py audit_events resources "$d/val08-audit-created.json" "$created" 2>/dev/null) || a_set_ok=false
  cli "$d/val08-audit-verify.txt" - audit verify
  local v_rc=$CLI_RC
  pass=$(bool chk "$a_rc" = 0 "$a_n" = "$n201" "$a_set_ok" = true "$v_rc" = 0)
  check_done VAL08-06 "one plan.created audit event per 201; audit verify passes" - \
    "val08-audit-created.json val08-audit-verify.txt" \
    "query_exit=$a_rc" "plan_created_events=$a_n" "created_201=$n201" "resources_match=$a_set_ok" \
    "verify_exit=$v_rc" "verify_output=$(one_line "$d/val08-audit-verify.txt")" "pass=$pass"

  # The CP is healthy after the load, never panicked, and stops cleanly.
  code=$(http_req GET "$LAB_BASE/v1/health" "$LAB_WORK/health-after.json")
  lab_cp_stop || true
  local panics
  panics=$(grep -ci 'panic' "$log" || true)
  pass=$(bool chk "$code" = 200 "$panics" = 0 "$STOP_RC" = 0 "$STOP_FORCED" = false)
  check_done VAL08-07 "CP healthy after load, no panic in its log, SIGTERM exits 0" - "val08-cp.log" \
    "health_after_load=$code" "panic_lines=$panics" "sigterm_exit=$STOP_RC" \
    "sigterm_forced_kill=$STOP_FORCED" "pass=$pass"

  lab_end "VAL08 — concurrent creates under load"
}
