# shellcheck shell=bash
#
# lib/cp.sh — the labs' control-plane (CP) processes: start one and poll it healthy (start_cp),
# stop one (stop_cp) and poll, bounded, until a process is gone (wait_gone, the one kill loop),
# run a start that must be refused (probe_serve). Every CP started here is in CP_PIDS until it
# is reaped (reap_cp); cleanup() stops what is left.

CP_PIDS=()      # every CP the labs started and have not yet reaped
CUR_CP_PID=""   # the CP of the running lab ("" = none running)
CP_START_ERROR=""
CP_READY_MS=""
STOP_RC=""      # the last stopped CP's exit status (143 = SIGTERM, 137 = SIGKILL; alive)
STOP_MS=""
STOP_FORCED=false
PROBE_RC=""     # the last probe_serve's exit status ...
PROBE_MS=""     # ... and how long it ran

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
  local pid=$1 stat=""
  if ! kill -0 "$pid" 2>/dev/null; then
    return 1
  fi
  if [[ -d /proc/self ]]; then
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || stat=""
    # No entry right after kill -0 succeeded: the process was reaped in between.
    if [[ -z $stat ]]; then
      return 1
    fi
    stat=${stat##*) }
    if [[ ${stat:0:1} == Z || ${stat:0:1} == X ]]; then
      return 1
    fi
  fi
  return 0
}

cp_alive() {
  [[ -n $CUR_CP_PID ]] && pid_alive "$CUR_CP_PID"
}

# port_in_use PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
  local rc=0
  probe_http "http://127.0.0.1:$1/" 2 >/dev/null || rc=$?
  # 7 = could not connect: nothing listens there.
  [[ $rc -ne 7 ]]
}

forget_cp_pid() {
  local pid=$1 p keep=()
  for p in "${CP_PIDS[@]}"; do
    if [[ $p != "$pid" ]]; then
      keep+=("$p")
    fi
  done
  CP_PIDS=("${keep[@]}")
}

# wait_gone PID POLLS INTERVAL: polls (at most POLLS times, INTERVAL seconds apart) until the
# process is gone; returns 0 when it is.
wait_gone() {
  local pid=$1 polls=$2 interval=$3 i
  for ((i = 0; i < polls; i++)); do
    if ! pid_alive "$pid"; then
      return 0
    fi
    sleep "$interval"
  done
  ! pid_alive "$pid"
}

# reap_cp PID: once the CP is gone, reaps it: STOP_RC is its exit status, and it is no longer
# the lab's CP. Returns 1 (STOP_RC=alive) when it is still running.
reap_cp() {
  local pid=$1 rc=0
  if pid_alive "$pid"; then
    STOP_RC=alive
    return 1
  fi
  wait "$pid" 2>/dev/null || rc=$?
  STOP_RC=$rc
  forget_cp_pid "$pid"
  if [[ $CUR_CP_PID == "$pid" ]]; then
    CUR_CP_PID=""
  fi
  return 0
}

# start_cp PORT DATA_DIR AUDIT_DIR LOG: starts `autonomy serve` (stdout and stderr appended
# to LOG) and waits, bounded, until it prints `listening on http://127.0.0.1:PORT` and
# GET /v1/health answers 200. Sets CUR_CP_PID and CP_READY_MS. Returns 0 when ready, 1 when
# the CP exited or never got ready (CP_START_ERROR says why), 2 when the port was taken
# before the start (nothing is started then).
start_cp() {
  local port=$1 data=$2 audit=$3 log=$4 pid i code t0 offset
  CUR_CP_PID=""
  CP_START_ERROR=""
  CP_READY_MS=""
  touch "$log"
  if port_in_use "$port"; then
    CP_START_ERROR="port 127.0.0.1:$port is already in use by another process; no CP was started"
    printf '# lab %s: NOT starting a CP: %s\n' "$(utc_now)" "$CP_START_ERROR" >>"$log"
    return 2
  fi
  offset=$(wc -c <"$log")
  printf '# lab %s: starting: %s serve --listen 127.0.0.1:%s --data-dir %s --audit-dir %s\n' \
    "$(utc_now)" "$AUTONOMY_BIN" "$port" "$data" "$audit" >>"$log"
  t0=$(now_ms)
  "$AUTONOMY_BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" --audit-dir "$audit" \
    >>"$log" 2>&1 &
  pid=$!
  CP_PIDS+=("$pid")
  for ((i = 0; i < CP_READY_POLLS; i++)); do
    if ! pid_alive "$pid"; then
      reap_cp "$pid" || true
      CP_START_ERROR="the CP exited during startup with code $STOP_RC: $(tail -c +"$((offset + 1))" "$log" | grep -v '^# lab' | tail -n 3 | tr '\n' ' ')"
      printf '# lab %s: start failed: %s\n' "$(utc_now)" "$CP_START_ERROR" >>"$log"
      return 1
    fi
    code=$(probe_http "http://127.0.0.1:$port/v1/health" 1) || true
    if [[ $code == 200 ]] && tail -c +"$((offset + 1))" "$log" | grep -qF "listening on http://127.0.0.1:$port"; then
      CUR_CP_PID=$pid
      CP_READY_MS=$(($(now_ms) - t0))
      printf '# lab %s: CP pid %s ready after %s ms\n' "$(utc_now)" "$pid" "$CP_READY_MS" >>"$log"
      return 0
    fi
    sleep "$CP_POLL_INTERVAL"
  done
  CP_START_ERROR="the CP (pid $pid) was not healthy after $CP_READY_POLLS polls of ${CP_POLL_INTERVAL}s"
  printf '# lab %s: start failed: %s\n' "$(utc_now)" "$CP_START_ERROR" >>"$log"
  stop_cp "$pid" || true
  return 1
}

# stop_cp PID: SIGTERM, poll (bounded) until the process is gone, SIGKILL if it is not;
# reaps it. Sets STOP_RC (its exit status; 143 = died of SIGTERM, 137 = SIGKILL), STOP_MS
# and STOP_FORCED. Returns 0 when the process is confirmed gone.
stop_cp() {
  local pid=$1 t0
  STOP_FORCED=false
  STOP_RC=""
  t0=$(now_ms)
  if pid_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    # A SIGSTOPped CP (val12) only acts on the SIGTERM once it is continued.
    kill -CONT "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$CP_STOP_POLLS" 0.1; then
      STOP_FORCED=true
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 50 0.1 || true
    fi
  fi
  STOP_MS=$(($(now_ms) - t0))
  reap_cp "$pid"
}

stop_all_cps() {
  local pid
  for pid in "${CP_PIDS[@]}"; do
    stop_cp "$pid" || true
  done
  CUR_CP_PID=""
}

# lab_cp_start LOG: start_cp for the current lab.
lab_cp_start() {
  local rc=0
  start_cp "$LAB_PORT" "$LAB_DATA_DIR" "$LAB_AUDIT_DIR" "$1" || rc=$?
  if ((rc == 0)); then
    say "$LAB: CP pid $CUR_CP_PID ready on 127.0.0.1:$LAB_PORT after ${CP_READY_MS} ms"
  else
    say "$LAB: CP start failed: $CP_START_ERROR"
  fi
  return "$rc"
}

# lab_cp_stop: SIGTERM the lab's CP; returns 0 when it is confirmed gone.
lab_cp_stop() {
  if [[ -z $CUR_CP_PID ]]; then
    STOP_RC=not-running
    STOP_MS=0
    STOP_FORCED=false
    return 1
  fi
  local pid=$CUR_CP_PID
  if stop_cp "$pid"; then
    say "$LAB: CP pid $pid stopped (exit $STOP_RC, ${STOP_MS} ms, forced=$STOP_FORCED)"
    return 0
  fi
  return 1
}

# probe_serve OUT PORT DATA_DIR AUDIT_DIR: runs `autonomy serve` in the foreground (stdout and
# stderr to OUT), killed after PROBE_TIMEOUT seconds: for starts that must be refused. Sets
# PROBE_RC (124 or 137: it was still running) and PROBE_MS.
# shellcheck disable=SC2034 # PROBE_RC and PROBE_MS are read by the labs
probe_serve() {
  local out=$1 port=$2 data=$3 audit=$4 t0
  PROBE_RC=0
  t0=$(now_ms)
  timeout -k 2 "$PROBE_TIMEOUT" "$AUTONOMY_BIN" serve --listen "127.0.0.1:$port" \
    --data-dir "$data" --audit-dir "$audit" >"$out" 2>&1 || PROBE_RC=$?
  PROBE_MS=$(($(now_ms) - t0))
}
