#!/usr/bin/env bash
# What the API's producer settings cost: the release coupon-api under `couponctl load --scenario
# max` (API CPU per accepted request, from /proc) and under the seed's rate (p99), once per
# setting, in one run, on one campaign per setting, with a consumer draining into PostgreSQL.
# Settings are librdkafka properties passed as KAFKA_CLIENT_* variables, as a user would.
# Usage: scripts/measure-producer.sh [SECONDS] [CONNECTIONS] [SEED-TIME-SCALE]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-15}
connections=${2:-100}
seed_scale=${3:-0.05}
eval "$(scripts/services.sh up)"
cargo build --release --locked -p coupon-api -p coupon-consumer -p couponctl >&2
bin=target/release
stamp=$(date +%s)
work=$(mktemp -d)
pids=()
cleanup() {
    kill -TERM "${pids[@]}" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# run LABEL [NAME=VALUE...]: the settings are exported to the API only.
run() {
    local label=$1
    shift
    local campaign=prod-$stamp-$label
    cat >"$work/campaign.yaml" <<YAML
apiVersion: coupons.fcfs.dev/v1alpha1
kind: CouponCampaign
metadata: {name: $campaign}
spec:
  topic: {partitions: 3}
  coupons:
    - {ids: "1-100", name: "coupon {id}", discount: 1000, quantity: 10000000}
YAML
    "$bin/couponctl" provision -f "$work/campaign.yaml" >/dev/null
    RUST_LOG=warn "$bin/coupon-consumer" --campaign "$campaign" --metrics-listen 127.0.0.1:0 &
    local consumer=$!
    pids+=("$consumer")
    env "$@" RUST_LOG=warn "$bin/coupon-api" --campaign "$campaign" --listen 127.0.0.1:18083 &
    local api=$!
    pids+=("$api")
    until curl -fsS http://127.0.0.1:18083/readyz >/dev/null 2>&1; do sleep 0.1; done
    local before after
    before=$(awk '{print $14+$15}' "/proc/$api/stat")
    "$bin/couponctl" load --target http://127.0.0.1:18083 --campaign "$campaign" --scenario max \
        --connections "$connections" --duration "${duration}s" --quiet --json >"$work/max.json" || true
    after=$(awk '{print $14+$15}' "/proc/$api/stat")
    "$bin/couponctl" load --target http://127.0.0.1:18083 --campaign "$campaign" --scenario seed \
        --time-scale "$seed_scale" --quiet --json >"$work/seed.json" || true
    kill -TERM "$api" "$consumer"
    wait "$api" "$consumer" 2>/dev/null || true
    python3 - "$work/max.json" "$work/seed.json" "$label" "$((after - before))" <<'PY'
import json, sys
mx, seed, label, ticks = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3], int(sys.argv[4])
accepted = mx.get("outcomes", {}).get("accepted", 0) or 1
books = "books ok" if mx["passed"] and seed["passed"] else "BOOKS FAILED"
print(f"{label:<16} max: {mx['throughput']:>7,.0f} req/s  p99 {mx['latencyMs']['p99']:>7.2f} ms"
      f"  api cpu {ticks * 1e4 / accepted:>5.0f} µs/accepted   seed rate: {seed['throughput']:>5.1f} req/s"
      f"  p50 {seed['latencyMs']['p50']:>5.2f} ms  p99 {seed['latencyMs']['p99']:>5.2f} ms  {books}")
PY
}

echo "== coupon-api producer settings: max load ${duration}s x ${connections} connections, then the seed scenario at time scale ${seed_scale} (machine: $(nproc) cores)"
run lz4-linger0 KAFKA_CLIENT_COMPRESSION_TYPE=lz4 KAFKA_CLIENT_LINGER_MS=0
run none-linger0 KAFKA_CLIENT_COMPRESSION_TYPE=none KAFKA_CLIENT_LINGER_MS=0
run none-linger1 KAFKA_CLIENT_COMPRESSION_TYPE=none KAFKA_CLIENT_LINGER_MS=1
run none-linger2 KAFKA_CLIENT_COMPRESSION_TYPE=none KAFKA_CLIENT_LINGER_MS=2
run default
