#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests: a fresh cluster in a temporary folder, trust auth, a unix
# socket in that folder and 127.0.0.1 on a free port (no clash with a server already running),
# one database; NAS_BERT_TEST_POSTGRES_URL points at it. Stopped and deleted at the end.
#
#   bash .ci/postgres.sh pytest -q -k postgres      # runs the command against it, then removes it
#   . .ci/postgres.sh && pg_throwaway_start && trap pg_throwaway_stop EXIT    # what .ci/run does
#
# Debian's `postgresql` is installed (apt-get) when no initdb/pg_ctl is found. initdb refuses to run
# as root: as root the server runs as the `postgres` user (else `nobody`). Any failure is one line
# on stderr and a non-zero status: the PostgreSQL tests must run in CI, never skip silently.

_pg_fail() {
  echo "postgres.sh: no PostgreSQL for the tests: $*" >&2
  return 1
}

# The folder holding initdb and pg_ctl: PATH first, then Debian's /usr/lib/postgresql/<version>/bin.
_pg_bindir() {
  local d
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    d=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

_pg_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || _pg_fail "PostgreSQL is not installed and neither root nor sudo is available to apt-get install postgresql" || return 1
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || _pg_fail "PostgreSQL is not installed and there is no apt-get to install it (install postgresql, or set NAS_BERT_TEST_POSTGRES_URL)" || return 1
  echo "postgres.sh: installing Debian's postgresql" >&2
  { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >/dev/null \
    || _pg_fail "apt-get install postgresql failed" || return 1
}

# Runs a command as the server's user (the invoking user, or an unprivileged one under root).
_pg_as() {
  if [ -z "$_PG_RUNAS" ]; then
    "$@"
  elif command -v runuser >/dev/null 2>&1; then
    runuser -u "$_PG_RUNAS" -- "$@"
  else
    su -s /bin/sh "$_PG_RUNAS" -c "$(printf '%q ' "$@")"
  fi
}

_pg_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_throwaway_start() {
  local bin port db=nas_bert_test user=nas_bert attempt
  if ! bin=$(_pg_bindir); then
    _pg_install || return 1
    bin=$(_pg_bindir) || _pg_fail "postgresql was installed but no initdb/pg_ctl is found" || return 1
  fi
  _PG_RUNAS=""
  if [ "$(id -u)" -eq 0 ]; then
    if id postgres >/dev/null 2>&1; then _PG_RUNAS=postgres; else _PG_RUNAS=nobody; fi
  fi
  # /tmp, not $TMPDIR: a unix socket's path must stay under ~100 characters.
  _PG_DIR=$(mktemp -d /tmp/nas-bert-pg.XXXXXX) || _pg_fail "cannot create a temporary folder" || return 1
  _PG_BIN=$bin
  [ -z "$_PG_RUNAS" ] || chown "$_PG_RUNAS" "$_PG_DIR" || _pg_fail "cannot chown $_PG_DIR to $_PG_RUNAS" || return 1
  # cd: the server's user may not be allowed into the caller's folder.
  (cd "$_PG_DIR" && _pg_as "$bin/initdb" -D "$_PG_DIR/data" -U "$user" -A trust -E UTF8 --locale=C --no-sync \
     >"$_PG_DIR/initdb.log" 2>&1) \
    || _pg_fail "initdb failed: $(tail -n 1 "$_PG_DIR/initdb.log")" || return 1
  for attempt in 1 2 3; do  # a free port can be taken between the check and the start: try another
    port=$(_pg_free_port) || _pg_fail "python3 is needed to find a free port" || return 1
    if (cd "$_PG_DIR" && _pg_as "$bin/pg_ctl" -D "$_PG_DIR/data" -l "$_PG_DIR/server.log" -w -t 60 -s start \
          -o "-c listen_addresses=127.0.0.1 -p $port -k $_PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
          >/dev/null 2>&1); then
      break
    fi
    port=""
  done
  [ -n "$port" ] || _pg_fail "the server did not start: $(tail -n 1 "$_PG_DIR/server.log" 2>/dev/null)" || return 1
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U "$user" "$db" >"$_PG_DIR/createdb.log" 2>&1 \
    || _pg_fail "createdb failed: $(tail -n 1 "$_PG_DIR/createdb.log")" || return 1
  export NAS_BERT_TEST_POSTGRES_URL="postgresql+psycopg://$user@127.0.0.1:$port/$db"
  echo "postgres.sh: PostgreSQL $("$bin/pg_ctl" --version | awk '{print $3}') at $NAS_BERT_TEST_POSTGRES_URL" >&2
}

pg_throwaway_stop() {
  [ -n "${_PG_DIR:-}" ] || return 0
  if [ -f "$_PG_DIR/data/postmaster.pid" ]; then
    (cd "$_PG_DIR" && _pg_as "$_PG_BIN/pg_ctl" -D "$_PG_DIR/data" -m fast -w -s stop >/dev/null 2>&1) \
      || echo "postgres.sh: could not stop the server in $_PG_DIR" >&2
  fi
  rm -rf "$_PG_DIR"
  _PG_DIR=""
  unset NAS_BERT_TEST_POSTGRES_URL
}

# Executed (not sourced): start, run the command, stop whatever happens.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  [ "$#" -gt 0 ] || { echo "usage: bash .ci/postgres.sh COMMAND [ARG...]" >&2; exit 2; }
  trap pg_throwaway_stop EXIT
  trap 'exit 130' INT TERM
  pg_throwaway_start || exit 1
  "$@"
fi
