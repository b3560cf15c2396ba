#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: starts what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
export HUBEE_TEST_PG_URL="${HUBEE_TEST_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
cargo test --locked --workspace
