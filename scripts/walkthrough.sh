#!/usr/bin/env bash
# The local walk-through: services, provision the seed campaign, run the API and the consumer,
# send a few requests (accepted, duplicate, unknown coupon, bad body), then verify the books.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/services.sh up)"
cargo build --release --locked -p coupon-api -p coupon-consumer -p couponctl
bin=target/release
campaign=seed
api=127.0.0.1:${API_PORT:-8080}

step() { printf '\n== %s\n' "$*"; }

step "provision examples/seed-campaign.yaml (idempotent: live stock is never reset)"
"$bin/couponctl" provision -f examples/seed-campaign.yaml

step "start coupon-api on $api and coupon-consumer"
"$bin/coupon-api" --campaign "$campaign" --listen "$api" &
api_pid=$!
"$bin/coupon-consumer" --campaign "$campaign" --metrics-listen "127.0.0.1:${CONSUMER_METRICS_PORT:-9091}" &
consumer_pid=$!
trap 'kill -TERM $api_pid $consumer_pid 2>/dev/null; wait $api_pid $consumer_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
    curl -fsS "http://$api/readyz" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -fsS "http://$api/readyz" >/dev/null

issue() { # coupon body
    printf '%-44s -> ' "POST /api/coupons/$1/issue $2"
    curl -sS -X POST -H 'content-type: application/json' -d "$2" -w ' (HTTP %{http_code})\n' "http://$api/api/coupons/$1/issue"
}
user=$(( (RANDOM << 15 | RANDOM) % 1000000 + 1 ))
step "requests"
issue 1 "{\"userId\": $user}"
issue 1 "{\"userId\": $user}"
issue 81 "{\"userId\": $user}"
issue 999 "{\"userId\": $user}"
issue 1 '{"userId": "abc"}'
printf '%-44s -> %s\n' "GET /api/coupons/1" "$(curl -sS "http://$api/api/coupons/1")"

step "verify: invariants I1-I6 across the spec, Redis, the ledger and the topic"
"$bin/couponctl" verify --campaign "$campaign" -f examples/seed-campaign.yaml
