#!/usr/bin/env bash
# A stock PostgreSQL for running the test suite against a server the tests did not configure:
# Debian's PostgreSQL 15 binaries, a fresh cluster made by initdb with default settings
# (max_connections = 100), password authentication (scram-sha-256) over TCP on a loopback port,
# run by a non-root user.
#
#   scripts/stock-postgres.sh start   initdb when needed, start, print the DATABASE_URL
#   scripts/stock-postgres.sh stop    stop the server and remove its folder
#   scripts/stock-postgres.sh url     print the DATABASE_URL
#
# Settings (environment): STOCK_PG_BIN (default /usr/lib/postgresql/15/bin), STOCK_PG_DIR (default
# /tmp/taskmill-stock-pg), STOCK_PG_PORT (default 54315), STOCK_PG_PASSWORD (default taskmill).
# Run as root, the server runs as the system user `postgres` (created by Debian's package); otherwise
# as the calling user. Nothing else needs this script: the tests only read DATABASE_URL.
set -euo pipefail

BIN=${STOCK_PG_BIN:-/usr/lib/postgresql/15/bin}
DIR=${STOCK_PG_DIR:-/tmp/taskmill-stock-pg}
PORT=${STOCK_PG_PORT:-54315}
PASSWORD=${STOCK_PG_PASSWORD:-taskmill}
SUPERUSER=postgres
DATA="$DIR/data"
URL="postgres://$SUPERUSER:$PASSWORD@127.0.0.1:$PORT/postgres"

if [ "$(id -u)" = 0 ]; then
  RUN_AS=postgres
  if ! id "$RUN_AS" >/dev/null 2>&1; then
    echo "stock-postgres: the system user '$RUN_AS' does not exist (install Debian's postgresql-15)" >&2
    exit 1
  fi
  as_user() { runuser -u "$RUN_AS" -- "$@"; }
else
  RUN_AS=$(id -un)
  as_user() { "$@"; }
fi

start() {
  if [ ! -x "$BIN/initdb" ]; then
    echo "stock-postgres: no PostgreSQL in $BIN (apt-get install postgresql-15, or set STOCK_PG_BIN)" >&2
    exit 1
  fi
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown "$RUN_AS" "$DIR"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    local pwfile="$DIR/pwfile"
    (umask 077 && printf '%s\n' "$PASSWORD" >"$pwfile")
    [ "$(id -u)" = 0 ] && chown "$RUN_AS" "$pwfile"
    as_user "$BIN/initdb" -D "$DATA" -U "$SUPERUSER" --pwfile="$pwfile" \
      --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log"
    rm -f "$pwfile"
  fi
  if as_user "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    echo "$URL"
    return
  fi
  # Only where it listens differs from the defaults: TCP on the loopback port, its socket in its folder.
  as_user "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$DIR" start >/dev/null
  echo "$URL"
}

stop() {
  if [ -f "$DATA/PG_VERSION" ]; then
    as_user "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "$URL" ;;
  *)
    echo "usage: $0 start|stop|url" >&2
    exit 2
    ;;
esac
