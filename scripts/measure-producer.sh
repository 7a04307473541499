#!/usr/bin/env bash
# What the API's publishing costs: the release coupon-api under `couponctl load --scenario max`
# (API CPU per accepted request from /proc, split into librdkafka's broker threads and the rest)
# and under the seed's rate (p50/p99), once per setting, in one run; each load on a campaign of
# its own with a consumer draining into PostgreSQL, and its books verified.
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

# serve CAMPAIGN [NAME=VALUE...]: a fresh campaign, its consumer, and the API with the settings.
serve() {
    local campaign=$1
    shift
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
    consumer=$!
    env "$@" RUST_LOG=warn "$bin/coupon-api" --campaign "$campaign" --listen 127.0.0.1:18083 &
    api=$!
    pids+=("$consumer" "$api")
    until curl -fsS http://127.0.0.1:18083/readyz >/dev/null 2>&1; do sleep 0.1; done
}

stop() {
    kill -TERM "$api" "$consumer"
    wait "$api" "$consumer" 2>/dev/null || true
}

# CPU ticks of the API's threads: "broker rest".
ticks() {
    local broker=0 rest=0 t v
    for t in /proc/"$api"/task/*; do
        v=$(awk '{print $14+$15}' "$t/stat")
        if [[ $(cat "$t/comm") == rdk:broker* ]]; then broker=$((broker + v)); else rest=$((rest + v)); fi
    done
    echo "$broker $rest"
}

# run LABEL [NAME=VALUE...]
run() {
    local label=$1
    shift
    serve "prod-$stamp-$label-max" "$@"
    read -r b0 r0 < <(ticks)
    "$bin/couponctl" load --target http://127.0.0.1:18083 --campaign "prod-$stamp-$label-max" \
        --scenario max --connections "$connections" --duration "${duration}s" --quiet --json >"$work/max.json" || true
    read -r b1 r1 < <(ticks)
    stop
    serve "prod-$stamp-$label-seed" "$@"
    "$bin/couponctl" load --target http://127.0.0.1:18083 --campaign "prod-$stamp-$label-seed" \
        --scenario seed --time-scale "$seed_scale" --quiet --json >"$work/seed.json" || true
    # The API's own histograms of that run: how much of a request's time is the broker's ack.
    curl -fsS http://127.0.0.1:18083/metrics >"$work/seed.metrics" || true
    stop
    python3 - "$work/max.json" "$work/seed.json" "$label" "$((b1 - b0))" "$((r1 - r0))" "$work/seed.metrics" <<'PY'
import json, re, sys
mx, seed, label = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
broker, rest = int(sys.argv[4]), int(sys.argv[5])

def quantile(q, name, match=""):
    """histogram_quantile over one histogram's cumulative buckets (linear within a bucket)."""
    buckets = []
    for line in open(sys.argv[6]):
        if line.startswith(name + "_bucket") and match in line:
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank, (lo, below) = q * buckets[-1][1], (0.0, 0.0)
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lo * 1000
            return (lo + (le - lo) * (rank - below) / (count - below)) * 1000
        lo, below = le, count
    return float("nan")

server = quantile(0.99, "coupon_api_request_duration_seconds", 'outcome="accepted"')
publish = quantile(0.99, "coupon_api_publish_duration_seconds")
accepted = mx.get("outcomes", {}).get("accepted", 0) or 1
us = lambda ticks: ticks * 1e4 / accepted
failed = [f"{name}: {c['id']} {c.get('detail', '')[:120]}" for name, r in (("max", mx), ("seed", seed))
          for c in r["integrity"].get("checks", []) if c.get("status") == "fail"]
books = "books ok" if mx["passed"] and seed["passed"] else "BOOKS FAILED " + "; ".join(failed)
print(f"{label:<10} max: {mx['throughput']:>6,.0f} req/s p50 {mx['latencyMs']['p50']:>5.1f} ms p99 {mx['latencyMs']['p99']:>6.1f} ms"
      f"  api cpu {us(broker + rest):>4.0f} µs/accepted (broker threads {us(broker):>3.0f}, rest {us(rest):>3.0f})"
      f"  | seed: {seed['throughput']:>4.1f} req/s p50 {seed['latencyMs']['p50']:>5.2f} ms p99 {seed['latencyMs']['p99']:>5.2f} ms"
      f" (in the API, accepted p99 ~{server:.1f} ms, broker ack p99 ~{publish:.1f} ms)  {books}")
PY
}

echo "== coupon-api publishing: max load ${duration}s x ${connections} connections, then the seed scenario at time scale ${seed_scale} (machine: $(nproc) cores)"
# immediate: one producer, linger 0, up to 5 requests in flight (librdkafka's idempotent maximum)
# adaptive:  a second producer lingering 20 ms above 16 publishes in flight
# group:     group commit: one producer, linger 0, one produce request in flight per broker, so
#            events accumulate only while a request is out and the batch grows with the load
for round in $(seq 1 "${ROUNDS:-2}"); do
    run "immediate$round" BATCH_ABOVE_IN_FLIGHT=0 KAFKA_CLIENT_MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION=5
    run "adaptive$round" BATCH_ABOVE_IN_FLIGHT=16 KAFKA_CLIENT_MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION=5
    run "group$round" BATCH_ABOVE_IN_FLIGHT=0 KAFKA_CLIENT_MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION=1
done
