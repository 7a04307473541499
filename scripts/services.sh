#!/usr/bin/env bash
# Local backing services for tests: Redis, a three-master Redis Cluster (Debian's redis-server
# on loopback ports 7100-7102), PostgreSQL, MariaDB and a Kafka-compatible broker (tansu,
# sqlite storage).
#
#   eval "$(scripts/services.sh up)"   start what is missing, print `export` lines on stdout
#   scripts/services.sh down           stop the tansu broker started by `up` (nothing else)
#   scripts/services.sh status         show what is listening
#
# Variables already set in the environment (REDIS_URL, REDIS_CLUSTER_URL, KAFKA_BROKERS,
# DATABASE_URL, MYSQL_DATABASE_URL) are kept as they are and the matching service is left alone.
# REDIS_CLUSTER_REPLICAS=1 gives every master a replica (ports 7103-7105).
# SERVICES_TIMEOUT (seconds, default 60) bounds every wait. State lives in $REPO/.services/.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$REPO/.services"
TIMEOUT="${SERVICES_TIMEOUT:-60}"
HOST=127.0.0.1
REDIS_PORT=6379
PG_PORT=5432
MYSQL_PORT=3306
KAFKA_PORT=9092
DB_NAME=coupons
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

# wait_port NAME PORT [LOGFILE [PID]]  (gives up early if PID exits)
wait_port() {
    local name=$1 port=$2 logfile=${3:-} pid=${4:-} deadline=$((SECONDS + TIMEOUT))
    until port_open "$port"; do
        local dead=
        [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null || dead=1
        if [[ -n $dead ]] || ((SECONDS >= deadline)); then
            if [[ -n $dead ]]; then log "$name (pid $pid) exited"; else log "$name did not answer on $HOST:$port within ${TIMEOUT}s"; fi
            if [[ -n $logfile && -r $logfile ]]; then
                log "last lines of $logfile:"
                tail -n 40 "$logfile" >&2
            fi
            exit 1
        fi
        sleep 0.5
    done
    log "$name is up on $HOST:$port"
}

start_redis() {
    port_open "$REDIS_PORT" && return 0
    command -v redis-server >/dev/null || die "redis-server not found"
    log "starting redis"
    redis-server --daemonize yes --bind "$HOST" --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "$STATE" --logfile "$STATE/redis.log" >&2 9>&-
    wait_port redis "$REDIS_PORT" "$STATE/redis.log"
}

CLUSTER_BASE_PORT=7100
CLUSTER_MASTERS=3

# A Redis Cluster of CLUSTER_MASTERS masters (and as many replicas with
# REDIS_CLUSTER_REPLICAS=1), nothing on disk; formed once with redis-cli --cluster create.
start_redis_cluster() {
    local replicas=${REDIS_CLUSTER_REPLICAS:-0} n port nodes=()
    command -v redis-cli >/dev/null || die "redis-cli not found"
    n=$((CLUSTER_MASTERS * (1 + replicas)))
    for ((i = 0; i < n; i++)); do
        port=$((CLUSTER_BASE_PORT + i))
        nodes+=("$HOST:$port")
        port_open "$port" && continue
        mkdir -p "$STATE/redis-cluster/$port"
        rm -f "$STATE/redis-cluster/$port/nodes.conf"
        redis-server --daemonize yes --bind "$HOST" --port "$port" --save "" --appendonly no \
            --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 3000 \
            --dir "$STATE/redis-cluster/$port" --logfile "$STATE/redis-cluster/$port/redis.log" >&2 9>&-
        wait_port "redis cluster node" "$port" "$STATE/redis-cluster/$port/redis.log"
    done
    if ! redis-cli -h "$HOST" -p "$CLUSTER_BASE_PORT" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
        log "forming the Redis Cluster on ${nodes[*]}"
        redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes >&2
        local deadline=$((SECONDS + TIMEOUT))
        until redis-cli -h "$HOST" -p "$CLUSTER_BASE_PORT" cluster info | grep -q 'cluster_state:ok'; do
            ((SECONDS < deadline)) || die "the Redis Cluster did not reach cluster_state:ok"
            sleep 0.5
        done
    fi
    local IFS=,
    REDIS_CLUSTER_URL="redis+cluster://${nodes[*]:0:CLUSTER_MASTERS}"
}

start_postgres() {
    if ! port_open "$PG_PORT"; then
        command -v pg_lsclusters >/dev/null || die "PostgreSQL is not running and pg_lsclusters is missing"
        local cluster
        cluster=$(pg_lsclusters --no-header | awk -v p="$PG_PORT" '$3 == p { print $1, $2; exit }')
        [[ -n $cluster ]] || die "no PostgreSQL cluster configured on port $PG_PORT"
        log "starting postgresql cluster $cluster"
        # shellcheck disable=SC2086
        pg_ctlcluster --skip-systemctl-redirect $cluster start >&2 9>&- || true
        wait_port postgresql "$PG_PORT" "$(pg_lsclusters --no-header | awk -v p="$PG_PORT" '$3 == p { print $7; exit }')"
    fi
    local pg=(psql -h "$HOST" -p "$PG_PORT" -U "${PGUSER:-postgres}" -d postgres -v ON_ERROR_STOP=1 -qAt)
    local deadline=$((SECONDS + TIMEOUT))
    until "${pg[@]}" -c 'select 1' >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { "${pg[@]}" -c 'select 1' >&2 || true; die "cannot connect to postgresql"; }
        sleep 0.5
    done
    if [[ -z $("${pg[@]}" -c "select 1 from pg_database where datname = '$DB_NAME'") ]]; then
        log "creating postgresql database $DB_NAME"
        "${pg[@]}" -c "create database $DB_NAME" >&2
    fi
    DATABASE_URL="postgres://${PGUSER:-postgres}@$HOST:$PG_PORT/$DB_NAME"
}

start_mariadb() {
    if ! port_open "$MYSQL_PORT"; then
        local bin
        bin=$(command -v mariadbd || command -v mysqld) || die "MariaDB is not running and mariadbd is missing"
        log "starting mariadb ($bin)"
        if [[ $(id -u) == 0 ]] && id mysql >/dev/null 2>&1; then
            local sockpath
            sockpath=$(my_print_defaults --mysqld 2>/dev/null | sed -n 's/^--socket=//p' | tail -n 1)
            [[ -z $sockpath ]] || { mkdir -p "$(dirname "$sockpath")"; chown mysql: "$(dirname "$sockpath")"; }
        fi
        if command -v start-stop-daemon >/dev/null; then
            start-stop-daemon --start --oknodo --background --exec "$bin" >&2 9>&-
        else
            setsid nohup "$bin" >>"$STATE/mariadb.log" 2>&1 </dev/null 9>&- &
        fi
        wait_port mariadb "$MYSQL_PORT" "$STATE/mariadb.log"
    fi
    local my=(mariadb --protocol=TCP -h "$HOST" -P "$MYSQL_PORT" -u root)
    command -v mariadb >/dev/null || my[0]=mysql
    local deadline=$((SECONDS + TIMEOUT)) err
    until err=$("${my[@]}" -e 'select 1' 2>&1 >/dev/null); do
        if [[ $err == *"Access denied"* ]]; then
            # root over TCP needs a password here: create a test user through the local
            # socket instead (unix_socket auth for the OS root user).
            local sock=("${my[0]}" -u root)
            "${sock[@]}" -e 'select 1' >/dev/null ||
                die "mariadb: root over TCP needs a password and the local socket does not work either: $err"
            log "mariadb: root over TCP refused; using user 'ci' created through the socket"
            "${sock[@]}" -e "CREATE DATABASE IF NOT EXISTS $DB_NAME;
                CREATE USER IF NOT EXISTS 'ci'@'$HOST' IDENTIFIED BY 'ci';
                GRANT ALL ON *.* TO 'ci'@'$HOST';" >&2
            MYSQL_DATABASE_URL="mysql://ci:ci@$HOST:$MYSQL_PORT/$DB_NAME"
            return 0
        fi
        ((SECONDS < deadline)) || die "cannot connect to mariadb: $err"
        sleep 0.5
    done
    "${my[@]}" -e "CREATE DATABASE IF NOT EXISTS $DB_NAME" >&2
    MYSQL_DATABASE_URL="mysql://root@$HOST:$MYSQL_PORT/$DB_NAME"
}

tansu_pid() {
    local pid
    [[ -r $STATE/tansu.pid ]] || return 1
    pid=$(<"$STATE/tansu.pid")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && grep -q tansu "/proc/$pid/cmdline" 2>/dev/null &&
        echo "$pid"
}

# tansu 0.6's storage task can panic (its idempotent-producer check, "more or less than one
# row"); the process then accepts connections but answers nothing. Ours is restarted on a fresh
# database (the old one kept aside): restarted on the same data it would panic again.
heal_tansu() {
    local pid
    pid=$(tansu_pid) || return 0
    grep -q "panicked" "$STATE/tansu.log" 2>/dev/null || return 0
    log "tansu (pid $pid) panicked (see $STATE/tansu.log); restarting it on a fresh database"
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$STATE/tansu.pid"
    local aside
    aside="$STATE/broken-$(date +%Y%m%d%H%M%S)"
    mkdir -p "$aside"
    mv "$STATE"/tansu.db* "$STATE/tansu.log" "$aside/" 2>/dev/null || true
    for _ in $(seq 1 50); do port_open "$KAFKA_PORT" || break; sleep 0.2; done
}

start_tansu() {
    heal_tansu
    port_open "$KAFKA_PORT" && return 0
    if ! command -v tansu >/dev/null; then
        log "tansu not found; installing it with cargo (takes several minutes)"
        cargo install --locked tansu --features libsql >&2
    fi
    if tansu_pid >/dev/null; then
        log "tansu (pid $(tansu_pid)) is running but not answering yet"
    else
        log "starting tansu (log: $STATE/tansu.log)"
        (
            cd "$STATE"
            # the sqlite path is relative to the working directory
            setsid nohup tansu broker \
                --listener-url "tcp://$HOST:$KAFKA_PORT" \
                --advertised-listener-url "tcp://$HOST:$KAFKA_PORT" \
                --storage-engine "sqlite://tansu.db" \
                >>"$STATE/tansu.log" 2>&1 </dev/null 9>&- &
            echo $! >"$STATE/tansu.pid"
        )
    fi
    wait_port tansu "$KAFKA_PORT" "$STATE/tansu.log" "$(<"$STATE/tansu.pid")"
}

cmd_up() {
    mkdir -p "$STATE"
    # serialise concurrent `up`s; every process started below gets `9>&-` so that
    # long-lived services do not inherit (and hold) this lock
    exec 9>"$STATE/up.lock"
    flock -w 1800 9 || die "could not lock $STATE/up.lock"

    [[ -n ${REDIS_URL:-} ]] || { start_redis; REDIS_URL="redis://$HOST:$REDIS_PORT"; }
    [[ -n ${REDIS_CLUSTER_URL:-} ]] || start_redis_cluster
    [[ -n ${DATABASE_URL:-} ]] || start_postgres
    [[ -n ${MYSQL_DATABASE_URL:-} ]] || start_mariadb
    [[ -n ${KAFKA_BROKERS:-} ]] || { start_tansu; KAFKA_BROKERS="$HOST:$KAFKA_PORT"; }

    local v
    for v in REDIS_URL REDIS_CLUSTER_URL KAFKA_BROKERS DATABASE_URL MYSQL_DATABASE_URL; do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
}

cmd_down() {
    local pid
    mkdir -p "$STATE"
    exec 9>"$STATE/up.lock"
    flock -w 1800 9 || die "could not lock $STATE/up.lock"
    if pid=$(tansu_pid); then
        log "stopping tansu (pid $pid)"
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && { log "tansu did not exit, killing it"; kill -9 "$pid"; }
    else
        log "no tansu broker started by this script is running"
    fi
    rm -f "$STATE/tansu.pid"
}

cmd_status() {
    local name port
    for name in redis:$REDIS_PORT postgresql:$PG_PORT mariadb:$MYSQL_PORT kafka:$KAFKA_PORT; do
        port=${name#*:}
        if port_open "$port"; then echo "${name%%:*} up ($HOST:$port)"; else echo "${name%%:*} down ($HOST:$port)"; fi
    done
    if pid=$(tansu_pid); then echo "tansu started by this script: pid $pid"; fi
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
