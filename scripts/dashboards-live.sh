#!/usr/bin/env bash
# The dashboards' queries on live data, without a cluster: the release coupon-api and
# coupon-consumer on the local services (scripts/services.sh), a real Prometheus (unpacked by
# scripts/tools.sh) scraping them every second, `couponctl load --scenario hot` for
# DURATION (default 20s), then every dashboard query evaluated and printed per panel as
# "series:first values". The operator's panels need a cluster (they print "operator").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/services.sh up)"
eval "$(scripts/tools.sh)"
export REDIS_URL KAFKA_BROKERS DATABASE_URL
cargo build --release --locked -q -p coupon-api -p coupon-consumer -p couponctl
work="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
name="live$(date +%s)"
sed "s/^  name: seed$/  name: $name/" examples/seed-campaign.yaml >"$work/campaign.yaml"
target/release/couponctl provision -f "$work/campaign.yaml" >/dev/null
target/release/coupon-api --campaign "$name" --listen 127.0.0.1:18080 2>"$work/api.log" &
pids+=($!)
target/release/coupon-consumer --campaign "$name" --metrics-listen 127.0.0.1:19090 2>"$work/consumer.log" &
pids+=($!)
cat >"$work/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: coupon
    static_configs: [{targets: ["127.0.0.1:18080", "127.0.0.1:19090"]}]
YAML
"$(dirname "$(readlink -f "$(command -v promtool)")")/prometheus" --config.file="$work/prometheus.yml" \
    --storage.tsdb.path="$work/data" --web.listen-address=127.0.0.1:19091 2>"$work/prometheus.log" &
pids+=($!)
sleep 3
target/release/couponctl load --target http://127.0.0.1:18080 --campaign "$name" \
    --scenario hot --duration "${DURATION:-20s}" --connections 20 --quiet >"$work/load.txt" || true
sleep 5
python3 - "$name" <<'PY'
import glob, json, sys, urllib.parse, urllib.request

name = sys.argv[1]

def exprs(v, out):
    if isinstance(v, dict):
        if isinstance(v.get("expr"), str):
            out.append(v["expr"])
        for x in v.values():
            exprs(x, out)
    elif isinstance(v, list):
        for x in v:
            exprs(x, out)

for path in sorted(glob.glob("dashboards/*.json")):
    dashboard = json.load(open(path))
    for panel in dashboard["panels"]:
        found = []
        exprs(panel.get("targets", []), found)
        shown = []
        for e in found:
            if "coupon_operator" in e:
                shown.append("operator")
                continue
            e = e.replace("$campaign", name).replace("$__rate_interval", "1m").replace("$__range", "5m")
            url = "http://127.0.0.1:19091/api/v1/query?" + urllib.parse.urlencode({"query": e})
            result = json.load(urllib.request.urlopen(url))["data"]["result"]
            shown.append(f"{len(result)}:" + ",".join(r["value"][1][:8] for r in result[:3]))
        print(f"{dashboard['uid']:16} {panel['title'][:44]:44} {' | '.join(shown)}")
PY
