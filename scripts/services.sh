#!/usr/bin/env bash
# Local backing services for tests, on loopback: Redis, a three-master Redis Cluster (ports
# 7100-7102), PostgreSQL 15 and MariaDB (Debian's packages, installed with apt-get when missing),
# and Apache Kafka 4 (one KRaft node, scripts/kafka.sh; jars resolved by Maven into a cache outside
# the checkout) with three listeners: PLAINTEXT 9092, SSL 9093, SASL_SSL/SCRAM-SHA-512 9094.
#
#   eval "$(scripts/services.sh up)"   install and start what is missing, print `export` lines
#   scripts/services.sh down           stop the Kafka node started by `up` (nothing else)
#   scripts/services.sh status         show what is listening
#
# Variables already set in the environment (REDIS_URL, REDIS_CLUSTER_URL, KAFKA_BROKERS,
# DATABASE_URL, MYSQL_DATABASE_URL) are kept as they are and the matching service is left alone.
# Besides those, `up` exports the secured Kafka listeners of the node it started:
# KAFKA_SSL_BROKERS, KAFKA_SASL_BROKERS, KAFKA_CA_FILE (the CA that signed the node),
# KAFKA_USERS_FILE (user=password lines of its SCRAM users), KAFKA_DIR (for scripts/kafka.sh) and
# KAFKA_POD_BROKERS (the plaintext listener that pods on scripts/cluster.sh's node reach).
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
# Kafka's listener for the pods of `scripts/cluster.sh up --node`, advertised at their gateway
KAFKA_PODS_PORT=9096
POD_GATEWAY=10.244.0.1
DB_NAME=coupons
SCRIPTS="$REPO/scripts"
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# need COMMAND PACKAGE...: install Debian's packages when COMMAND is missing (once, quietly).
APT_UPDATED=
need() {
    local cmd=$1
    shift
    command -v "$cmd" >/dev/null && return 0
    command -v apt-get >/dev/null || die "$cmd is missing and this is not a Debian machine: install $*"
    [[ $(id -u) == 0 ]] || die "$cmd is missing: install $* (apt-get needs root)"
    log "installing $* with apt-get"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "$@")
    if ! "${apt[@]}" >"$STATE/apt.log" 2>&1; then
        [[ -z $APT_UPDATED ]] || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install $* failed"; }
        apt-get update -qq >>"$STATE/apt.log" 2>&1 || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get update failed"; }
        APT_UPDATED=1
        "${apt[@]}" >>"$STATE/apt.log" 2>&1 || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install $* failed"; }
    fi
    command -v "$cmd" >/dev/null || die "installed $* but $cmd is still missing"
}

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
    need redis-server redis-server
    log "starting redis"
    redis-server --daemonize yes --bind "$HOST" --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "$STATE" --logfile "$STATE/redis.log" >&2 9>&-
    wait_port redis "$REDIS_PORT" "$STATE/redis.log"
}

CLUSTER_BASE_PORT=7100
CLUSTER_MASTERS=3

# A Redis Cluster of CLUSTER_MASTERS masters (and as many replicas with
# REDIS_CLUSTER_REPLICAS=1), nothing on disk; formed once with redis-cli --cluster create.
# A cluster node saves its config (nodes.conf, in its --dir) at every slot or role change and
# exits when it cannot: a node whose directory was removed under it (the checkout that started it
# deleted and cloned again at the same path) dies at the next migration. True if one runs so.
orphaned_cluster() {
    local n=$1 i port dir
    for ((i = 0; i < n; i++)); do
        port=$((CLUSTER_BASE_PORT + i))
        port_open "$port" || continue
        # an empty answer: the node's working directory no longer exists
        dir=$(redis-cli -h "$HOST" -p "$port" config get dir 2>/dev/null | sed -n 2p)
        [[ -z $dir || ! -f $dir/nodes.conf ]] && return 0
    done
    return 1
}

# Stops every node of the cluster (their data is the tests' only), so it is formed again.
restart_cluster() {
    local n=$1 i port
    log "the Redis Cluster runs from a removed directory; starting it afresh"
    for ((i = 0; i < n; i++)); do
        port=$((CLUSTER_BASE_PORT + i))
        redis-cli -h "$HOST" -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    for ((i = 0; i < n; i++)); do
        port=$((CLUSTER_BASE_PORT + i))
        local deadline=$((SECONDS + TIMEOUT))
        while port_open "$port"; do
            ((SECONDS < deadline)) || die "redis cluster node $port did not stop"
            sleep 0.2
        done
    done
}

start_redis_cluster() {
    local replicas=${REDIS_CLUSTER_REPLICAS:-0} n port nodes=()
    need redis-server redis-server
    need redis-cli redis-tools
    n=$((CLUSTER_MASTERS * (1 + replicas)))
    orphaned_cluster "$n" && restart_cluster "$n"
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
        need pg_lsclusters postgresql postgresql-contrib
        local cluster
        cluster=$(pg_lsclusters --no-header | awk -v p="$PG_PORT" '$3 == p { print $1, $2; exit }')
        if [[ -z $cluster ]]; then
            local version
            version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
            [[ -n $version ]] || die "no PostgreSQL server installed"
            log "creating postgresql cluster $version main on port $PG_PORT"
            pg_createcluster "$version" main --port "$PG_PORT" >&2 9>&-
            cluster="$version main"
        fi
        log "starting postgresql cluster $cluster"
        # shellcheck disable=SC2086
        pg_ctlcluster --skip-systemctl-redirect $cluster start >&2 9>&- || true
        wait_port postgresql "$PG_PORT" "$(pg_lsclusters --no-header | awk -v p="$PG_PORT" '$3 == p { print $7; exit }')"
    fi
    local user=${PGUSER:-postgres} auth=
    local pg=(psql -h "$HOST" -p "$PG_PORT" -U "$user" -d postgres -v ON_ERROR_STOP=1 -qAt)
    local deadline=$((SECONDS + TIMEOUT)) err
    until err=$("${pg[@]}" -c 'select 1' 2>&1 >/dev/null); do
        if [[ $err == *"password authentication failed"* || $err == *"no password supplied"* ]] &&
            [[ $(id -u) == 0 && -z ${PGUSER:-} ]]; then
            # Debian asks for a password over TCP: make a test role through the local socket
            # (peer authentication for the postgres OS user), as for MariaDB below.
            log "postgresql: password required over TCP; using role 'ci' created through the socket"
            # from / : the postgres user may not enter the checkout's directory
            (cd / && runuser -u postgres -- psql -qAt -v ON_ERROR_STOP=1 -c "do \$\$ begin
                if not exists (select 1 from pg_roles where rolname = 'ci') then
                    create role ci login superuser password 'ci'; end if; end \$\$" >&2 9>&-) ||
                die "postgresql: could not create the role ci through the socket"
            user=ci auth=ci:ci
            pg=(env PGPASSWORD=ci psql -h "$HOST" -p "$PG_PORT" -U ci -d postgres -v ON_ERROR_STOP=1 -qAt)
            continue
        fi
        ((SECONDS < deadline)) || { log "$err"; die "cannot connect to postgresql"; }
        sleep 0.5
    done
    if [[ -z $("${pg[@]}" -c "select 1 from pg_database where datname = '$DB_NAME'") ]]; then
        log "creating postgresql database $DB_NAME"
        "${pg[@]}" -c "create database $DB_NAME" >&2
    fi
    DATABASE_URL="postgres://${auth:-$user}@$HOST:$PG_PORT/$DB_NAME"
}

start_mariadb() {
    if ! port_open "$MYSQL_PORT"; then
        local bin
        command -v mysqld >/dev/null || need mariadbd mariadb-server
        bin=$(command -v mariadbd || command -v mysqld) || die "MariaDB is not running and mariadbd is missing"
        log "starting mariadb ($bin)"
        if [[ $(id -u) == 0 ]] && id mysql >/dev/null 2>&1; then
            local sockpath
            sockpath=$(my_print_defaults --mysqld 2>/dev/null | sed -n 's/^--socket=//p' | tail -n 1)
            [[ -z $sockpath ]] || { mkdir -p "$(dirname "$sockpath")"; chown mysql: "$(dirname "$sockpath")"; }
        fi
        local as=()
        [[ $(id -u) != 0 ]] || as=(--user=mysql)
        setsid nohup "$bin" "${as[@]}" >>"$STATE/mariadb.log" 2>&1 </dev/null 9>&- &
        local pid=$!
        wait_port mariadb "$MYSQL_PORT" "$STATE/mariadb.log" "$pid"
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

KAFKA_DIR="$STATE/kafka"

start_kafka() {
    if ! "$SCRIPTS/kafka.sh" pid "$KAFKA_DIR" >/dev/null && port_open "$KAFKA_PORT"; then
        die "something else listens on $HOST:$KAFKA_PORT; stop it or set KAFKA_BROKERS"
    fi
    need openssl openssl
    KAFKA_PODS_PORT=$KAFKA_PODS_PORT POD_GATEWAY=$POD_GATEWAY "$SCRIPTS/kafka.sh" start "$KAFKA_DIR" "$KAFKA_PORT" >/dev/null 9>&-
    # read by cmd_up's export loop through ${!v}
    # shellcheck disable=SC2034
    KAFKA_BROKERS="$HOST:$KAFKA_PORT" KAFKA_SSL_BROKERS="$HOST:$((KAFKA_PORT + 1))" \
        KAFKA_SASL_BROKERS="$HOST:$((KAFKA_PORT + 2))" KAFKA_CA_FILE="$KAFKA_DIR/tls/ca.pem" \
        KAFKA_USERS_FILE="$KAFKA_DIR/users.properties" KAFKA_POD_BROKERS="$POD_GATEWAY:$KAFKA_PODS_PORT"
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
    [[ -n ${KAFKA_BROKERS:-} ]] || start_kafka

    local v
    for v in REDIS_URL REDIS_CLUSTER_URL KAFKA_BROKERS DATABASE_URL MYSQL_DATABASE_URL \
        KAFKA_SSL_BROKERS KAFKA_SASL_BROKERS KAFKA_CA_FILE KAFKA_USERS_FILE KAFKA_POD_BROKERS; do
        [[ -n ${!v:-} ]] && printf 'export %s=%q\n' "$v" "${!v}"
    done
    [[ -z ${KAFKA_SSL_BROKERS:-} ]] || printf 'export KAFKA_DIR=%q\n' "$KAFKA_DIR"
}

cmd_down() {
    mkdir -p "$STATE"
    exec 9>"$STATE/up.lock"
    flock -w 1800 9 || die "could not lock $STATE/up.lock"
    "$SCRIPTS/kafka.sh" stop "$KAFKA_DIR" 9>&-
}

cmd_status() {
    local name port
    for name in redis:$REDIS_PORT postgresql:$PG_PORT mariadb:$MYSQL_PORT kafka:$KAFKA_PORT \
        kafka-ssl:$((KAFKA_PORT + 1)) kafka-sasl-ssl:$((KAFKA_PORT + 2)); do
        port=${name#*:}
        if port_open "$port"; then echo "${name%%:*} up ($HOST:$port)"; else echo "${name%%:*} down ($HOST:$port)"; fi
    done
    if pid=$("$SCRIPTS/kafka.sh" pid "$KAFKA_DIR"); then echo "kafka started by this script: pid $pid ($KAFKA_DIR)"; fi
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
