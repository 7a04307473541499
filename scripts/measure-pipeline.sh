#!/usr/bin/env bash
# Measures the pipeline on this machine: API throughput and latency at 100 connections (wrk),
# then the consumer's drain rate into PostgreSQL and into MariaDB from a backlog the API built.
# Usage: scripts/measure-pipeline.sh [SECONDS]   (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-20}
eval "$(scripts/services.sh up)"
cargo build --release --locked -p coupon-api -p coupon-consumer -p couponctl >&2
bin=target/release
campaign=measure-$(date +%s)
manifest=$(mktemp)
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true; rm -f "$manifest"' EXIT
cat >"$manifest" <<YAML
apiVersion: coupons.fcfs.dev/v1alpha1
kind: CouponCampaign
metadata: {name: $campaign}
spec:
  topic: {partitions: 3}
  coupons:
    - {ids: "1-100", name: "coupon {id}", discount: 1000, quantity: 1000000}
YAML
DATABASE_URL=$DATABASE_URL "$bin/couponctl" provision -f "$manifest" >&2
DATABASE_URL=$MYSQL_DATABASE_URL "$bin/couponctl" provision -f "$manifest" >&2
RUST_LOG=warn "$bin/coupon-api" --campaign "$campaign" --listen 127.0.0.1:18080 & pids+=($!)
until curl -fsS http://127.0.0.1:18080/readyz >/dev/null 2>&1; do sleep 0.2; done

echo "== API: wrk -t2 -c100 -d${duration}s (no consumer running: every 202 waited for the broker's ack)"
wrk -t2 -c100 -d"${duration}s" -s loadtest/wrk-issue.lua http://127.0.0.1:18080 | tail -n 1
curl -fsS http://127.0.0.1:18080/metrics | grep -E '^coupon_api_requests_total' | sed 's/{campaign="[^"]*",/{/'

lag() { # group
    "$bin/couponctl" --database-url "$DATABASE_URL" verify --campaign "$campaign" --wait-drain 0 --json 2>/dev/null |
        python3 -c 'import json,sys; print(sum(p["lag"] for p in json.load(sys.stdin)["partitions"]))'
}
drain() { # label url group
    local label=$1 url=$2 group=$3 start end n
    n=$(curl -fsS http://127.0.0.1:18080/metrics | sed -n 's/^coupon_api_requests_total{.*outcome="accepted"} //p')
    start=$(date +%s.%N)
    RUST_LOG=warn "$bin/coupon-consumer" --campaign "$campaign" --database-url "$url" --group "$group" \
        --metrics-listen 127.0.0.1:0 --batch-max "${BATCH_MAX:-1000}" & local pid=$!
    pids+=("$pid")
    until python3 - "$url" "$campaign" "$n" <<'PY'
import subprocess, sys
url, campaign, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if url.startswith("postgres"):
    out = subprocess.run(["psql", url, "-Atc", f"select count(*) from user_coupons where campaign='{campaign}'"], capture_output=True, text=True).stdout
else:
    out = subprocess.run(["mariadb", "--protocol=TCP", "-h127.0.0.1", "-uroot", "coupons", "-N", "-e", f"select count(*) from user_coupons where campaign='{campaign}'"], capture_output=True, text=True).stdout
sys.exit(0 if out.strip() and int(out.strip()) >= n else 1)
PY
    do sleep 0.2; done
    end=$(date +%s.%N)
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    python3 -c "import sys; n=$n; t=$end-$start; print(f'== consumer into $label: {n} events in {t:.2f} s = {n/t:,.0f} events/s (batch max ${BATCH_MAX:-1000}, process start included)')"
}
drain PostgreSQL "$DATABASE_URL" "coupon-consumer.$campaign"
drain MariaDB "$MYSQL_DATABASE_URL" "measure-mariadb.$campaign"
