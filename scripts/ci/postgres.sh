#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests (SPEC §7 "CI"): `start DIR PORT` initialises a
# cluster in DIR owned by the postgres user, listening on 127.0.0.1:PORT only, with a private
# socket dir, and prints the superuser URL the tests take as AUTONOMY_TEST_DATABASE_URL;
# `stop DIR` stops it with `-m fast` and removes DIR. Installs postgresql-15 when missing.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

install_if_missing() {
  if [ ! -x "$PG_BIN/initdb" ]; then
    echo "postgres.sh: installing postgresql-15" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
    # The package starts Debian's own cluster; the tests use their own.
    pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
  fi
}

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

start() {
  local dir=$1 port=$2
  install_if_missing
  mkdir -p "$dir"
  chown postgres: "$dir"
  chmod 700 "$dir"
  as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1
  mkdir -p "$dir/sock"
  chown postgres: "$dir/sock"
  cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
max_connections = 400
shared_buffers = 128MB
fsync = on
synchronous_commit = on
log_min_messages = warning
CONF
  as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

stop() {
  local dir=$1
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start "$2" "$3" ;;
  stop) stop "$2" ;;
  *) echo "usage: postgres.sh start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
