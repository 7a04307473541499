#!/usr/bin/env bash
# What identity checks, rate limits and load shedding cost: the release coupon-api under
# `couponctl load --scenario max` in one run, once per configuration, alternating, on the same
# campaign, with a consumer draining into PostgreSQL.
#   body        --identity body (the default)
#   jwt         --identity jwt, an HS256 token per request (couponctl signs them)
#   limits      body, with per-user and per-client limits configured (none is hit)
#   2x-no-shed  4x the connections, --max-in-flight 0 (queue without bound)
#   2x-shed     4x the connections, --max-in-flight 64 --shed-after-ms 20
# Usage: scripts/measure-admission.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-15}
connections=${2:-100}
eval "$(scripts/services.sh up)"
cargo build --release --locked -p coupon-api -p coupon-consumer -p couponctl >&2
bin=target/release
stamp=$(date +%s)
secret=measure-admission-hs256-secret-0123456789
work=$(mktemp -d)
pids=()
cleanup() {
    kill -TERM "${pids[@]}" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# run LABEL CONNECTIONS API-FLAGS... : a fresh campaign (so its books are this run's alone),
# one consumer, one API process, one load, one line.
run() {
    local label=$1 conns=$2
    shift 2
    local campaign
    campaign=adm-$stamp-$(tr -c 'a-z0-9' '-' <<<"$label" | tr -s '-' | sed 's/-$//')
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
    RUST_LOG=warn "$bin/coupon-api" --campaign "$campaign" --listen 127.0.0.1:18081 "$@" &
    local api=$!
    until curl -fsS http://127.0.0.1:18081/readyz >/dev/null 2>&1; do sleep 0.1; done
    local jwt=()
    [[ " $* " == *" --identity jwt "* ]] && jwt=(--jwt-hs256-secret "$secret" --jwt-audience coupons)
    "$bin/couponctl" load --target http://127.0.0.1:18081 --campaign "$campaign" --scenario max \
        --connections "$conns" --duration "${duration}s" --quiet --json "${jwt[@]}" >"$work/$label.json" || true
    local cpu
    cpu=$(awk '{print ($14+$15)/100}' "/proc/$api/stat")
    kill -TERM "$api" "$consumer"
    wait "$api" "$consumer" 2>/dev/null || true
    python3 - "$work/$label.json" "$label" "$conns" "$cpu" <<'PY'
import json, sys
report, label, conns, cpu = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], float(sys.argv[4])
lat = report["latencyMs"]
outcomes = report.get("outcomes", {})
n = sum(outcomes.values()) or 1
shed = outcomes.get("overloaded", 0)
failed = [c["id"] + " " + c["name"] + ": " + c.get("detail", "")[:160] for c in report["integrity"].get("checks", []) if c.get("status") == "fail"]
books = "books ok" if report["passed"] else "BOOKS FAILED " + "; ".join(failed)
print(f"{label:<12} c={conns:<4} {report['throughput']:>8,.0f} req/s  p50 {lat['p50']:>7.2f} ms  p99 {lat['p99']:>8.2f} ms"
      f"  accepted {outcomes.get('accepted', 0):>7,}  shed {shed:>6,}  api cpu {cpu*1e6/n:>5.0f} µs/req  {books}")
PY
}

echo "== coupon-api, couponctl load --scenario max, ${duration}s each (machine: $(nproc) cores)"
for round in 1 2; do
    stamp=$(date +%s)-$round
    echo "-- round $round"
    run body "$connections"
    run jwt "$connections" --identity jwt --jwt-hs256-secret "$secret" --jwt-audience coupons
    run limits "$connections" --rate-per-user 1000 --rate-per-client 1000000 --rate-burst 1000
    run 2x-no-shed $((connections * 4)) --max-in-flight 0
    run 2x-shed $((connections * 4)) --max-in-flight 64 --shed-after-ms 20
done
