#!/usr/bin/env bash
# Start (or reuse) the local services and the control plane, and run the whole workspace's tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
env_lines="$(scripts/services.sh up)"
eval "$env_lines"
export REDIS_URL REDIS_CLUSTER_URL KAFKA_BROKERS DATABASE_URL MYSQL_DATABASE_URL
# The install, observability and node tests run the workspace's binaries (target/debug/coupon-*);
# `cargo test` builds a package's binaries only for that package's own integration tests.
cargo build --workspace --bins --locked
# A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, built from
# source once into a cache outside the checkout) for the operator's control-plane tests, and one
# node (containerd, kubelet, kube-scheduler) for operator/tests/on_a_node.rs, its image made by
# scripts/images.sh and preloaded. The image holds the debug binaries just built: a release
# build of the same code would add about 18 minutes to a cold run on two cores
# (IMAGES_PROFILE=release scripts/test.sh does it). The node is tainted: only namespaces that
# tolerate the taint run pods on it, every other test's pods stay Pending.
cluster_lines="$(NODE_TAINT=fcfs.dev/node-test=true:NoSchedule IMAGES_PROFILE="${IMAGES_PROFILE:-debug}" \
    scripts/cluster.sh up --node)"
eval "$cluster_lines"
export KUBECONFIG KUBECTL KUBE_AUDIT_LOG
# helm, kubernetes-validate and promtool for the chart, schema and alert tests.
eval "$(scripts/tools.sh)"
exec cargo test --workspace --locked "$@"
