#!/usr/bin/env bash
# The kind walk-through: a local three-node cluster with the dev backends (deploy/dev), the
# monitoring stack, the operator chart and the seed campaign, then a compressed seed load
# and a verification, both run as Jobs inside the cluster. Development only.
#
#   scripts/kind-e2e.sh            CLUSTER (default coupons) is kept at the end
#   KEEP=0 scripts/kind-e2e.sh     delete the cluster at the end (also after a failure)
#
# Needs kind, kubectl, helm, docker and curl. Every wait is bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER=${CLUSTER:-coupons}
KEEP=${KEEP:-1}
IMAGE=ghcr.io/fcfs-coupons/coupon:dev
CTX=kind-$CLUSTER
NS=coupons
OP_NS=coupon-system
cluster_up=0

step() { printf '\n== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# Always the kind cluster's context, never whatever kubectl currently points at.
k() { kubectl --context "$CTX" "$@"; }
h() { helm --kube-context "$CTX" "$@"; }

on_exit() {
    local rc=$?
    if ((rc != 0 && cluster_up)); then
        printf '\n== FAILED (exit %d): pods and the operator log\n' "$rc" >&2
        k get pods -A -o wide >&2 || true
        k -n "$NS" get couponcampaign,jobs >&2 || true
        k -n "$OP_NS" logs -l app.kubernetes.io/instance=coupon-operator \
            --all-containers --prefix --tail=60 >&2 || true
    fi
    if [[ $KEEP == 0 && $cluster_up == 1 ]]; then
        step "KEEP=0: deleting kind cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER" || true
    fi
}
trap on_exit EXIT

# run_job NAME FILE TIMEOUT_SECONDS: recreate the Job, wait until Complete or Failed, print its log.
run_job() {
    local job=$1 file=$2 deadline=$((SECONDS + $3)) state
    k -n "$NS" delete job "$job" --ignore-not-found --wait=true --timeout=60s
    k apply -f "$file"
    while :; do
        state=$(k -n "$NS" get job "$job" \
            -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}') || state=
        case " $state" in
            *" Complete "*) k -n "$NS" logs "job/$job" --tail=-1 || echo "(log unavailable)"; return 0 ;;
            *" Failed "*) break ;;
        esac
        if ((SECONDS >= deadline)); then
            echo "job $job: neither Complete nor Failed within $3 s" >&2
            break
        fi
        sleep 5
    done
    k -n "$NS" logs "job/$job" --tail=-1 || true
    k -n "$NS" describe job "$job" | tail -n 20 || true
    die "job $job did not complete"
}

step "1. prerequisites"
for tool in kind kubectl helm docker curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH (needed: kind, kubectl, helm, docker, curl)"
done
[[ -f Dockerfile ]] || die "no Dockerfile at the repository root"
[[ -d charts/coupon-operator ]] || die "no charts/coupon-operator"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"

step "2. kind cluster $CLUSTER"
clusters=$(kind get clusters 2>/dev/null)
if grep -qx "$CLUSTER" <<<"$clusters"; then
    echo "cluster $CLUSTER exists, reusing it"
else
    kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 5m
fi
cluster_up=1
kind export kubeconfig --name "$CLUSTER"
k wait --for=condition=Ready nodes --all --timeout=5m

step "3. build $IMAGE and load it into the nodes"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "4. monitoring: kube-prometheus-stack in namespace monitoring"
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
helm repo update prometheus-community
h upgrade --install monitoring prometheus-community/kube-prometheus-stack \
    -n monitoring --create-namespace -f deploy/dev/monitoring-values.yaml --wait --timeout 10m

step "5. dev backends in namespace $NS: Redis, Kafka, MySQL and the Secret coupon-backends"
k apply -f deploy/dev/namespace.yaml
k apply -f deploy/dev/redis.yaml -f deploy/dev/kafka.yaml -f deploy/dev/mysql.yaml \
    -f deploy/dev/backends-secret.yaml
k -n "$NS" rollout status deployment/redis --timeout=5m
k -n "$NS" rollout status statefulset/kafka --timeout=5m
k -n "$NS" rollout status deployment/mysql --timeout=5m

step "6. operator chart in namespace $OP_NS"
h upgrade --install coupon-operator charts/coupon-operator -n "$OP_NS" --create-namespace \
    --set image.tag=dev --set metrics.serviceMonitor.enabled=true \
    --set metrics.podMonitor.enabled=true --set prometheusRule.enabled=true \
    --wait --timeout 5m

step "7. seed campaign and its NodePort; wait for phase Live"
k apply -n "$NS" -f examples/seed-campaign.yaml
k apply -f deploy/dev/seed-api-nodeport.yaml
# A loop rather than `kubectl wait --for=jsonpath`: older kubectl fails at once while
# .status.phase is not set yet.
deadline=$((SECONDS + 300))
phase='' last=''
until [[ $phase == Live ]]; do
    ((SECONDS < deadline)) || die "couponcampaign/seed not Live within 300 s (phase: ${phase:-unset})"
    sleep 5
    phase=$(k -n "$NS" get couponcampaign seed -o jsonpath='{.status.phase}') || phase=
    [[ $phase == "$last" ]] || echo "phase: ${phase:-unset}"
    last=$phase
done

step "8. smoke check from the host: http://127.0.0.1:8080/readyz"
deadline=$((SECONDS + 60))
until curl -fsS --max-time 5 http://127.0.0.1:8080/readyz; do
    ((SECONDS < deadline)) || die "http://127.0.0.1:8080/readyz did not answer within 60 s"
    sleep 2
done
echo

step "9. load: couponctl load (seed scenario, one minute) as Job couponctl-load"
run_job couponctl-load deploy/dev/couponctl-load-job.yaml 660

step "10. verify: couponctl verify as Job couponctl-verify"
run_job couponctl-verify deploy/dev/couponctl-verify-job.yaml 360

step "11. done"
k -n "$NS" get couponcampaign
cat <<EOF

API         http://127.0.0.1:8080   (e.g. curl http://127.0.0.1:8080/api/coupons/1)
Grafana     http://127.0.0.1:3000   admin / admin; dashboards "Coupon campaign: issuance"
                                    and "Coupon campaign: pipeline and lag"
Prometheus  http://127.0.0.1:9090
EOF
[[ $KEEP == 0 ]] || echo "Cluster $CLUSTER (context $CTX) is kept; delete it with: kind delete cluster --name $CLUSTER"
