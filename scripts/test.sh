#!/usr/bin/env bash
# Start (or reuse) the local services and the control plane, and run the whole workspace's tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
env_lines="$(scripts/services.sh up)"
eval "$env_lines"
export REDIS_URL REDIS_CLUSTER_URL KAFKA_BROKERS DATABASE_URL MYSQL_DATABASE_URL
# A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, built from
# source once into a cache outside the checkout) for the operator's control-plane tests, and one
# node (containerd, kubelet, kube-scheduler; the product's image built from the release binaries
# by scripts/images.sh and preloaded) for operator/tests/on_a_node.rs. The node is tainted: only
# namespaces that tolerate the taint run pods on it, every other test's pods stay Pending.
cluster_lines="$(NODE_TAINT=fcfs.dev/node-test=true:NoSchedule scripts/cluster.sh up --node)"
eval "$cluster_lines"
export KUBECONFIG KUBECTL KUBE_AUDIT_LOG
# helm, kubernetes-validate and promtool for the chart, schema and alert tests.
eval "$(scripts/tools.sh)"
# The install and observability tests run the workspace's binaries (target/debug/coupon-*);
# `cargo test` builds a package's binaries only for that package's own integration tests.
cargo build --workspace --bins --locked
exec cargo test --workspace --locked "$@"
