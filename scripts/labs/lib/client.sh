# shellcheck shell=bash
#
# lib/client.sh — talking to the lab's CP: the one curl wrapper (http_req; probe_http for a CP
# that is not yet the lab's), the one pagination helper (list_pages), and the `autonomy` CLI
# under a timeout (cli, cp_cli).

CLI_RC=0      # the last cli/cp_cli exit status ...
CLI_MS=0      # ... and how long it ran
LIST_FILES=() # list_pages: the pages answered 200, in order
LIST_PAGES=0  # list_pages: the pages requested
LIST_COMPLETE=false
LIST_CODE=""

# http_req [--query NAME=VALUE]... [--timed] [--errors FILE] METHOD URL OUT [BODY]: one HTTP
# request; prints the HTTP code (000: no answer; with --timed "CODE SECONDS"). The body goes to
# OUT (on no answer: a JSON object with curl's error). --query parameters are url-encoded onto
# the URL. curl's errors go to FILE (default $WORK_DIR/curl.err; concurrent callers pass their
# own). Nothing is sent unless the lab's own CP is running, so a foreign process on the port can
# never answer for it.
http_req() {
  local fmt='%{http_code}' none=000 res="" err="$WORK_DIR/curl.err" t
  local -a opt=()
  while (($# > 0)); do
    case $1 in
      --query)
        opt+=(-G --data-urlencode "$2")
        shift 2
        ;;
      --timed)
        fmt='%{http_code} %{time_total}'
        none="000 0"
        shift
        ;;
      --errors)
        err=$2
        shift 2
        ;;
      *) break ;;
    esac
  done
  local method=$1 url=$2 out=$3 body=${4-}
  if ! cp_alive; then
    printf '{"lab_error":"request not sent: the lab control plane is not running"}\n' >"$out"
    echo "$none"
    return 0
  fi
  if [[ -n $body ]]; then
    opt+=(-H 'Content-Type: application/json' --data-binary "$body")
  fi
  res=$(curl -sS -o "$out" -w "$fmt" --max-time "$HTTP_MAX_TIME" --connect-timeout 5 -X "$method" \
    -H "X-Autonomy-Operator: ${AUTONOMY_OPERATOR:-anonymous}" "${opt[@]}" "$url" 2>"$err") || true
  if [[ -z $res || ${res%% *} == 000 ]]; then
    res=$none
    t=$(one_line "$err")
    t=${t//\\/}
    t=${t//\"/}
    printf '{"lab_error":"no HTTP answer: %s"}\n' "$t" >"$out"
  fi
  echo "$res"
}

# probe_http URL MAX_TIME: one GET that bypasses the lab checks of http_req, for a CP that is
# not (yet) the lab's: prints the HTTP code (000: no answer), returns curl's exit status
# (7: nothing listens).
probe_http() {
  curl -s -o /dev/null -w '%{http_code}' --max-time "$2" "$1" 2>/dev/null
}

# create_plan ID DRAFT ARTIFACT FINGERPRINT PURPOSE OUT: POST /v1/rollouts; prints the code.
create_plan() {
  http_req POST "$LAB_BASE/v1/rollouts" "$6" "$(plan_body "$1" "$2" "$3" "$4" "$LAB" "$5")"
}

# plan_phase ID: the plan's current phase via GET (empty when it cannot be read).
plan_phase() {
  local f="$WORK_DIR/phase.json" code
  code=$(http_req GET "$LAB_BASE/v1/rollouts/$1" "$f")
  if [[ $code == 200 ]]; then
    pyj "$f" 'd["status"]["phase"]'
  fi
}

# list_pages BASE DIR LIMIT MAX_PAGES: GET BASE/v1/rollouts?limit=LIMIT, following
# next_cursor, page by page (at most MAX_PAGES) into DIR/page-NNN.json. Sets LIST_FILES (the
# pages answered 200), LIST_PAGES (pages requested), LIST_COMPLETE (true when the last page
# had no next_cursor) and LIST_CODE (the last HTTP code).
# shellcheck disable=SC2034 # LIST_* are this function's results, read by the labs
list_pages() {
  local base=$1 dir=$2 limit=$3 max=$4 page pf cursor=""
  local -a q=()
  LIST_FILES=()
  LIST_PAGES=0
  LIST_COMPLETE=false
  LIST_CODE=""
  mkdir -p "$dir"
  for ((page = 1; page <= max; page++)); do
    pf=$(printf '%s/page-%03d.json' "$dir" "$page")
    q=(--query "limit=$limit")
    if [[ -n $cursor ]]; then q+=(--query "cursor=$cursor"); fi
    LIST_CODE=$(http_req "${q[@]}" GET "$base/v1/rollouts" "$pf")
    LIST_PAGES=$page
    if [[ $LIST_CODE != 200 ]]; then
      return 0
    fi
    LIST_FILES+=("$pf")
    cursor=$(pyj "$pf" 'd.get("next_cursor")')
    if [[ -z $cursor ]]; then
      LIST_COMPLETE=true
      return 0
    fi
  done
}

# cli OUT ERR ARGS...: runs the CLI (bounded by CLI_TIMEOUT); stdout to OUT, stderr to ERR
# ("-": into OUT as well). OUT "+FILE": appended to FILE. Sets CLI_RC and CLI_MS.
cli() {
  local out=$1 err=$2 rc=0 t0
  shift 2
  if [[ $out == +* ]]; then out=${out#+}; else : >"$out"; fi
  t0=$(now_ms)
  if [[ $err == - ]]; then
    timeout -k 5 "$CLI_TIMEOUT" "$AUTONOMY_BIN" "$@" >>"$out" 2>&1 || rc=$?
  else
    timeout -k 5 "$CLI_TIMEOUT" "$AUTONOMY_BIN" "$@" >>"$out" 2>"$err" || rc=$?
  fi
  CLI_RC=$rc
  CLI_MS=$(($(now_ms) - t0))
}

# cp_cli OUT ERR ARGS...: like cli, but only when the lab's own CP is running (CLI_RC=125
# and a note in OUT otherwise).
# shellcheck disable=SC2034 # CLI_RC and CLI_MS are read by the labs
cp_cli() {
  if ! cp_alive; then
    local out=$1
    if [[ $out == +* ]]; then out=${out#+}; else : >"$out"; fi
    printf 'lab_error: command not run (autonomy %s): the lab control plane is not running\n' "$*" >>"$out"
    CLI_RC=125
    CLI_MS=0
    return 0
  fi
  cli "$@"
}
