#!/usr/bin/env bash
# Start (or reuse) the local services and run the whole workspace's tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
env_lines="$(scripts/services.sh up)"
eval "$env_lines"
export REDIS_URL KAFKA_BROKERS DATABASE_URL MYSQL_DATABASE_URL
exec cargo test --workspace --locked "$@"
