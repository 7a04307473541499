#!/usr/bin/env bash
# Faults under a hot load against the local stack, for a user to watch: the real coupon-api and
# coupon-consumer on Redis (a private redis-server, so restarting it touches nothing else), the
# Apache Kafka broker of services.sh (a private node for kill-broker; librdkafka's mock cluster
# for the injected broker faults) and a database; a timeline of the faults, then the books after
# healing. Exits 1 when a promise is broken.
#
#   scripts/chaos.sh                                  every fault, on PostgreSQL
#   scripts/chaos.sh --fault kill-api,hang-ups        some of them
#   scripts/chaos.sh --fault kill-broker                 the broker kill -9'd and restarted
#   scripts/chaos.sh --fault broker-down,broker-slow,broker-refuses,producer-fatal
#   DB=mysql scripts/chaos.sh                         on MariaDB/MySQL
#
#   scripts/chaos.sh --html chaos.html --json chaos.json   also the run as a page and as JSON
#
# Faults: hang-ups, kill-api, kill-consumer, cut-database, restart-redis (all = these five),
# kill-broker; broker-down, broker-refuses, broker-slow, producer-fatal (not with kill-broker). Other flags: --seconds, --rounds,
# --clients (see target/release/coupon-chaos --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

eval "$(scripts/services.sh up)"
cargo build --release --locked -p coupon-api -p coupon-consumer -p coupon-e2e --bins
case "${DB:-postgres}" in
    postgres) database_url=${DATABASE_URL:?} ;;
    mysql | mariadb) database_url=${MYSQL_DATABASE_URL:?} ;;
    *) echo "DB must be postgres or mysql" >&2; exit 2 ;;
esac
exec target/release/coupon-chaos --database-url "$database_url" --brokers "$KAFKA_BROKERS" "$@"
