#!/usr/bin/env bash
# Starts (or stops) the real servers the scale-out tests use, on 127.0.0.1:
# PostgreSQL 15 (from /usr/lib/postgresql/15/bin, run as `postgres`) and
# nats-server with JetStream (installed from apt when missing).
#
#   scripts/servers.sh start   # prints the env to export (also in $DIR/env)
#   scripts/servers.sh stop    # stops both, by pid
#   scripts/servers.sh nats-stop / nats-start   # a broker outage (streams kept)
#   scripts/servers.sh pg-stop / pg-kill / pg-start   # a database outage
#
# Data is kept across stops and starts: the PostgreSQL data directory is
# created (initdb) only when it does not exist or is empty, never removed.
# pg-stop shuts PostgreSQL down cleanly, pg-kill as a crash would
# (`pg_ctl -m immediate`: no shutdown checkpoint, WAL recovery at the next
# start); pg-start starts it on its data, creating it if missing, and
# exits 3 when the PostgreSQL binaries are not installed (it installs
# nothing). With OUTBOX_SERVERS_DIR and OUTBOX_PG_PORT a test runs a
# server of its own.
#
# PostgreSQL also accepts TLS (ssl=on; plain connections keep working):
# at the first start a self-signed CA and a server certificate for the
# host name `localhost` are made with the `openssl` CLI in $DIR/tls (kept
# afterwards, like the data). The env gives OUTBOX_PG_TLS_URL (sslmode
# verify-full, host localhost at 127.0.0.1) and OUTBOX_PG_CA_FILE.
#
# Env: OUTBOX_SERVERS_DIR (target/servers), OUTBOX_PG_PORT (55432),
# OUTBOX_NATS_PORT (54222).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${OUTBOX_SERVERS_DIR:-$PWD/target/servers}
PG_BIN=/usr/lib/postgresql/15/bin
PG_PORT=${OUTBOX_PG_PORT:-55432}
NATS_PORT=${OUTBOX_NATS_PORT:-54222}

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

install() {
    if [ ! -x "$PG_BIN/initdb" ]; then
        sudo_or apt-get install -y postgresql-15
    fi
    if ! command -v nats-server >/dev/null; then
        sudo_or apt-get install -y nats-server
    fi
    if ! command -v openssl >/dev/null; then
        sudo_or apt-get install -y openssl
    fi
}

# make_tls: a CA and a server certificate for `localhost` (signed by the
# CA, valid for 10 years) in $DIR/tls, made once: existing files are kept.
make_tls() {
    local tls=$DIR/tls
    if [ -f "$tls/ca.crt" ] && [ -f "$tls/server.crt" ] && [ -f "$tls/server.key" ]; then
        return
    fi
    if ! command -v openssl >/dev/null; then
        echo "openssl not found: PostgreSQL starts without TLS (the tls_ tests will say SKIPPED)" >&2
        return
    fi
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=outbox test CA" \
        -keyout "$tls/ca.key" -out "$tls/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        >"$tls/openssl.log" 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$tls/server.key" -out "$tls/server.csr" >>"$tls/openssl.log" 2>&1
    printf '%s\n' "subjectAltName=DNS:localhost" "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
        -days 3650 -extfile "$tls/server.ext" -out "$tls/server.crt" >>"$tls/openssl.log" 2>&1
    # PostgreSQL refuses a key others can read.
    chmod 600 "$tls/server.key" "$tls/ca.key"
    if [ "$(id -u)" = 0 ]; then chown postgres "$tls/server.key" "$tls/server.crt"; fi
}

sudo_or() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pg_running() {
    [ -f "$DIR/pg/postmaster.pid" ] && kill -0 "$(head -1 "$DIR/pg/postmaster.pid")" 2>/dev/null
}

# start_pg: starts PostgreSQL on its data directory, running initdb first
# only when the directory is missing or empty (a stopped or killed server
# comes back with everything it had committed).
start_pg() {
    local data=$DIR/pg
    if pg_running; then
        enable_ssl_running
        return
    fi
    mkdir -p "$data" "$DIR/pg-sock" "$DIR/pg-log"
    if [ "$(id -u)" = 0 ]; then chown -R postgres "$data" "$DIR/pg-sock" "$DIR/pg-log"; chmod 755 "$DIR"; fi
    if [ -z "$(ls -A "$data")" ]; then
        as_postgres "$PG_BIN/initdb" -D "$data" -U postgres -A trust --no-sync >"$DIR/pg-init.log" 2>&1
    elif [ ! -f "$data/PG_VERSION" ]; then
        echo "$data is not empty and not a PostgreSQL data directory; move it away to start afresh" >&2
        exit 1
    fi
    local ssl=""
    if [ -f "$DIR/tls/server.key" ]; then
        if [ "$(id -u)" = 0 ]; then chmod 755 "$DIR/tls"; chown postgres "$DIR/tls/server.key" "$DIR/tls/server.crt"; fi
        ssl="-c ssl=on -c ssl_cert_file=$DIR/tls/server.crt -c ssl_key_file=$DIR/tls/server.key"
    fi
    as_postgres "$PG_BIN/pg_ctl" -D "$data" -l "$DIR/pg-log/pg.log" -w \
        -o "-k $DIR/pg-sock -h 127.0.0.1 -p $PG_PORT -c max_connections=200 -c fsync=on $ssl" start >/dev/null
}

# enable_ssl_running: a server started without TLS (by an older version
# of this script) gets it by a configuration reload, not a restart.
enable_ssl_running() {
    if [ -f "$DIR/tls/server.key" ] && ! grep -q "ssl=on" "$DIR/pg/postmaster.opts" 2>/dev/null \
        && [ "$(as_postgres "$PG_BIN/psql" -h "$DIR/pg-sock" -p "$PG_PORT" -U postgres -d postgres -tAc 'SHOW ssl')" != on ]; then
        if [ "$(id -u)" = 0 ]; then chmod 755 "$DIR/tls"; chown postgres "$DIR/tls/server.key" "$DIR/tls/server.crt"; fi
        as_postgres "$PG_BIN/psql" -h "$DIR/pg-sock" -p "$PG_PORT" -U postgres -d postgres -q \
            -c "ALTER SYSTEM SET ssl_cert_file = '$DIR/tls/server.crt'" \
            -c "ALTER SYSTEM SET ssl_key_file = '$DIR/tls/server.key'" \
            -c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()" >/dev/null
    fi
}

# stop_pg [fast|immediate]: stops PostgreSQL if it runs; its data stays.
stop_pg() {
    if [ -f "$DIR/pg/postmaster.pid" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$DIR/pg" -m "${1:-fast}" -w stop >/dev/null 2>&1 || true
    fi
}

require_pg_binaries() {
    if [ ! -x "$PG_BIN/initdb" ]; then
        echo "PostgreSQL binaries not found in $PG_BIN (scripts/servers.sh start installs them)" >&2
        exit 3
    fi
}

# start_nats [keep]: starts nats-server; without `keep` its JetStream
# directory starts empty, with it the streams stored before are kept.
start_nats() {
    if [ -f "$DIR/nats.pid" ] && kill -0 "$(cat "$DIR/nats.pid")" 2>/dev/null; then
        return
    fi
    if [ "${1:-}" != keep ]; then rm -rf "$DIR/nats-js"; fi
    mkdir -p "$DIR/nats-js"
    # setsid: the server outlives the shell (and test process) that started it.
    setsid nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$DIR/nats-js" -P "$DIR/nats.pid" \
        >>"$DIR/nats.log" 2>&1 </dev/null &
    for _ in $(seq 1 100); do
        if (exec 3<>/dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "nats-server did not start; see $DIR/nats.log" >&2
    exit 1
}

stop_nats() {
    if [ -f "$DIR/nats.pid" ]; then
        local pid
        pid=$(cat "$DIR/nats.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        rm -f "$DIR/nats.pid"
    fi
}

case "${1:-}" in
start)
    mkdir -p "$DIR"
    install
    make_tls
    start_pg
    start_nats
    cat >"$DIR/env" <<ENV
export OUTBOX_PG_URL="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
export OUTBOX_NATS_URL="nats://127.0.0.1:$NATS_PORT"
export OUTBOX_NATS_PID_FILE="$DIR/nats.pid"
export OUTBOX_SERVERS_SCRIPT="$PWD/scripts/servers.sh"
ENV
    if [ -f "$DIR/tls/server.key" ]; then
        cat >>"$DIR/env" <<ENV
export OUTBOX_PG_TLS_URL="host=localhost hostaddr=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres sslmode=verify-full sslrootcert=$DIR/tls/ca.crt"
export OUTBOX_PG_CA_FILE="$DIR/tls/ca.crt"
ENV
    fi
    cat "$DIR/env"
    ;;
stop)
    stop_pg fast
    stop_nats
    ;;
pg-stop)
    # For database-outage tests: a clean shutdown, data kept.
    stop_pg fast
    ;;
pg-kill)
    # ... or as a crash would: no shutdown checkpoint, recovery at start.
    stop_pg immediate
    ;;
pg-start)
    # ... and start it again on its data (created if missing).
    require_pg_binaries
    mkdir -p "$DIR"
    make_tls
    start_pg
    ;;
nats-stop)
    # For the broker-outage test: stop NATS, keeping its streams on disk.
    stop_nats
    ;;
nats-start)
    # ... and start it again with the streams it had.
    start_nats keep
    ;;
*)
    echo "usage: $0 start|stop|nats-stop|nats-start|pg-stop|pg-kill|pg-start" >&2
    exit 2
    ;;
esac
