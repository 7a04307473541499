#!/usr/bin/env bash
# One Apache Kafka node (KRaft: broker and controller in one JVM) on loopback, for the tests,
# the chaos harness and local runs. The jars come from scripts/kafka/pom.xml through Maven, once,
# into a cache outside the checkout keyed by that file ($FCFS_CACHE, default ~/.cache/fcfs-coupons).
#
#   scripts/kafka.sh jars              resolve the jars (once); print their directory
#   scripts/kafka.sh start DIR PORT    format DIR on first start, start the node, wait until it serves;
#                                      prints the pid. Listeners: PLAINTEXT PORT, SSL PORT+1,
#                                      SASL_SSL (SCRAM-SHA-512) PORT+2, controller PORT+3;
#                                      with KAFKA_PODS_PORT also PODS there (plaintext, advertised
#                                      as $POD_GATEWAY, where scripts/cluster.sh's node relays it).
#   scripts/kafka.sh stop DIR          stop the node started on DIR (SIGTERM, then SIGKILL)
#   scripts/kafka.sh pid DIR           print its pid if it runs
#   scripts/kafka.sh tool CLASS ARGS   run a Kafka tool, e.g. org.apache.kafka.tools.AclCommand
#
# DIR keeps everything: data/, tls/ (a CA and the node's certificate, made with openssl),
# users.properties (the SCRAM users created at format time and their passwords: admin, a super
# user, and coupon-api, coupon-consumer, coupon-operator, which only get what ACLs grant),
# server.properties, kafka.log, kafka.pid. KAFKA_TIMEOUT (seconds, default 90) bounds the wait.
#
# data/ is a link into /dev/shm (KAFKA_DATA_ROOT): KRaft fsyncs its metadata log on every write,
# and on a disk busy with the databases' own fsyncs the controller stalled for seconds, the
# broker missed its heartbeats and was fenced. A tmpfs keeps the log across a SIGKILL of the
# broker, which is what the tests kill; it does not survive a reboot, and need not.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/kafka/pom.xml"
HOST=127.0.0.1
# where the pods of scripts/cluster.sh's node reach this machine (its relays forward to loopback)
POD_GATEWAY="${POD_GATEWAY:-10.244.0.1}"
TIMEOUT="${KAFKA_TIMEOUT:-90}"
USERS=(admin coupon-api coupon-consumer coupon-operator)

log() { printf '[kafka] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

cmd_jars() {
    local version key dir
    version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
    key=$(sha256sum "$POM" | cut -c1-12)
    dir="${FCFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fcfs-coupons}/kafka-$version-$key"
    if [[ ! -f $dir/complete ]]; then
        command -v mvn >/dev/null || die "mvn not found (the tests need JDK 17 and Maven)"
        log "resolving Apache Kafka $version with Maven into $dir"
        rm -rf "$dir.tmp"
        mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DoutputDirectory="$dir.tmp/libs" >&2 ||
            die "maven could not resolve $POM"
        cp "$HERE/kafka/log4j2.properties" "$dir.tmp/"
        touch "$dir.tmp/complete"
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

java_cmd() {
    command -v java >/dev/null || die "java not found (the tests need JDK 17)"
    local jars
    jars=$(cmd_jars)
    echo java -cp "$jars/libs/*" -Dlog4j2.configurationFile="$jars/log4j2.properties"
}

cmd_tool() {
    local java
    read -r -a java <<<"$(java_cmd)"
    exec "${java[@]}" "$@"
}

node_pid() {
    local dir=$1 pid
    [[ -r $dir/kafka.pid ]] || return 1
    pid=$(<"$dir/kafka.pid")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && grep -q kafka.Kafka "/proc/$pid/cmdline" 2>/dev/null &&
        echo "$pid"
}

# A CA and a certificate for 127.0.0.1/localhost, PEM, which Kafka reads as is.
make_tls() {
    local tls=$1
    [[ -f $tls/node.pem ]] && return 0
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fcfs-coupons test CA" \
        -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$tls/node.key.pem" -out "$tls/node.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$tls/ext.cnf"
    openssl x509 -req -in "$tls/node.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
        -days 3650 -extfile "$tls/ext.cnf" -out "$tls/node.crt" 2>/dev/null
    # Kafka's PEM key store: a PKCS#8 key followed by the certificate chain
    openssl pkcs8 -topk8 -nocrypt -in "$tls/node.key.pem" -out "$tls/node.p8"
    cat "$tls/node.p8" "$tls/node.crt" "$tls/ca.pem" >"$tls/node.pem"
    rm -f "$tls/node.csr" "$tls/ext.cnf" "$tls/node.p8"
}

write_config() {
    local dir=$1 port=$2
    local ssl=$((port + 1)) sasl=$((port + 2)) ctl=$((port + 3)) pods_listener='' pods_advertised=''
    if [[ -n ${KAFKA_PODS_PORT:-} ]]; then
        pods_listener=",PODS://$HOST:$KAFKA_PODS_PORT"
        pods_advertised=",PODS://$POD_GATEWAY:$KAFKA_PODS_PORT"
    fi
    cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$ctl
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$port,SSL://$HOST:$ssl,SASL_SSL://$HOST:$sasl,CONTROLLER://$HOST:$ctl$pods_listener
advertised.listeners=PLAINTEXT://$HOST:$port,SSL://$HOST:$ssl,SASL_SSL://$HOST:$sasl$pods_advertised
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT,PODS:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# A node restarted after SIGKILL cannot register until its old registration's session expires
# (DUPLICATE_BROKER_REGISTRATION): 4 s instead of 9 s brings a killed broker back sooner.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
auto.create.topics.enable=false
ssl.keystore.type=PEM
ssl.keystore.location=$dir/tls/node.pem
ssl.truststore.type=PEM
ssl.truststore.location=$dir/tls/ca.pem
ssl.client.auth=none
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
# ACLs bind the SASL listener's users; PLAINTEXT, SSL (no client certificates) and the controller
# are ANONYMOUS, a super user, so the plain test listeners stay open.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:admin
allow.everyone.if.no.acl.found=false
EOF
}

# DIR/data -> KAFKA_DATA_ROOT/<hash of DIR>; a link whose target vanished (a reboot) is a new node.
# A DIR without the link is a new node too (a fresh checkout at a path an earlier one used): its
# stale target is wiped, or the old log would skip formatting and its SCRAM users would not match.
# <target>.owner names DIR (written before the target exists); a target whose DIR is gone is
# removed, as tmpfs is memory.
link_data() {
    local dir=$1 root=${KAFKA_DATA_ROOT:-/dev/shm} target owner
    [[ -d $root && -w $root ]] || { mkdir -p "$dir/data"; return 0; }
    target="$root/fcfs-kafka-$(printf '%s' "$dir" | sha256sum | cut -c1-12)"
    for owner in "$root"/fcfs-kafka-*.owner; do
        [[ -f $owner && $owner != "$target.owner" && ! -d $(<"$owner") ]] || continue
        rm -rf "${owner%.owner}" "$owner"
    done
    if [[ -L $dir/data && ! -d $target ]]; then
        rm -f "$dir/data"
    fi
    if [[ ! -e $dir/data ]]; then
        rm -rf "$target"
        printf '%s' "$dir" >"$target.owner"
        mkdir -p "$target"
        ln -s "$target" "$dir/data"
    fi
}

format_storage() {
    local dir=$1 java user scram=()
    link_data "$dir"
    [[ -f $dir/data/meta.properties ]] && return 0
    read -r -a java <<<"$(java_cmd)"
    if [[ ! -f $dir/users.properties ]]; then
        umask 077
        for user in "${USERS[@]}"; do
            printf '%s=%s\n' "$user" "$(openssl rand -hex 16)"
        done >"$dir/users.properties"
        umask 022
    fi
    while IFS='=' read -r user password; do
        scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$password]")
    done <"$dir/users.properties"
    log "formatting $dir/data"
    "${java[@]}" kafka.tools.StorageTool format --cluster-id "$("${java[@]}" kafka.tools.StorageTool random-uuid)" \
        --config "$dir/server.properties" "${scram[@]}" >>"$dir/kafka.log" 2>&1 ||
        { tail -n 20 "$dir/kafka.log" >&2; die "formatting $dir/data failed (log: $dir/kafka.log)"; }
}

cmd_start() {
    local dir=${1:?usage: kafka.sh start DIR PORT} port=${2:?usage: kafka.sh start DIR PORT} java pid
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local from=0
    if pid=$(node_pid "$dir"); then
        log "kafka (pid $pid) already runs on $dir"
    else
        port_open "$port" && die "port $port is taken by another process"
        make_tls "$dir/tls"
        write_config "$dir" "$port"
        format_storage "$dir"
        read -r -a java <<<"$(java_cmd)"
        from=$(stat -c %s "$dir/kafka.log" 2>/dev/null || echo 0)
        log "starting kafka on $HOST:$port (log: $dir/kafka.log)"
        KAFKA_HEAP="${KAFKA_HEAP:--Xms256m -Xmx1g}"
        # shellcheck disable=SC2086
        setsid nohup "${java[@]:0:1}" $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true "${java[@]:1}" \
            kafka.Kafka "$dir/server.properties" >>"$dir/kafka.log" 2>&1 </dev/null 9>&- &
        pid=$!
        echo "$pid" >"$dir/kafka.pid"
    fi
    wait_serving "$dir" "$port" "$pid" "$from"
    echo "$pid"
}

# Serving means this start logged "Kafka Server started" (the node caught up with its metadata
# log) and the PLAINTEXT port answers; the listener alone opens earlier.
wait_serving() {
    local dir=$1 port=$2 pid=$3 from=$4 deadline=$((SECONDS + TIMEOUT))
    # grep -c reads to the end: grep -q would quit early and fail the pipe (pipefail)
    until port_open "$port" && (($(tail -c +"$((from + 1))" "$dir/kafka.log" | grep -c "Kafka Server started") > 0)); do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            if kill -0 "$pid" 2>/dev/null; then log "kafka did not serve on $HOST:$port within ${TIMEOUT}s"; else log "kafka (pid $pid) exited"; fi
            log "last lines of $dir/kafka.log:"
            tail -n 40 "$dir/kafka.log" >&2
            exit 1
        fi
        sleep 0.3
    done
    log "kafka (pid $pid) serves on $HOST:$port"
}

cmd_stop() {
    local dir=${1:?usage: kafka.sh stop DIR} pid
    if pid=$(node_pid "$dir"); then
        log "stopping kafka (pid $pid)"
        kill "$pid"
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && { log "kafka did not exit, killing it"; kill -9 "$pid"; }
    else
        log "no kafka runs on $dir"
    fi
    rm -f "$dir/kafka.pid"
}

case "${1:-}" in
    jars) cmd_jars ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    pid) shift; node_pid "${1:?usage: kafka.sh pid DIR}" ;;
    tool) shift; cmd_tool "$@" ;;
    *) echo "usage: $0 jars | start DIR PORT | stop DIR | pid DIR | tool CLASS ARGS..." >&2; exit 2 ;;
esac
