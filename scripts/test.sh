#!/usr/bin/env bash
# Start (or reuse) the local services and run the whole workspace's tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
env_lines="$(scripts/services.sh up)"
eval "$env_lines"
export REDIS_URL KAFKA_BROKERS DATABASE_URL MYSQL_DATABASE_URL
# The operator's schema test validates the CRD and its child objects offline with this tool.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    python3 -m pip install --quiet kubernetes-validate >&2
fi
exec cargo test --workspace --locked "$@"
