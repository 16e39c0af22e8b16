#!/usr/bin/env bash
# The whole test suite. Starts (or installs) the local services the suite
# uses, then runs every crate's unit and integration tests, and the server's
# integration tests a second time on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh
ensure_services

# The crate boundaries of docs/architecture.md.
python3 scripts/check-boundaries.py

cargo test --workspace --locked "$@"

# The server's integration tests again, every node on PostgreSQL instead of SQLite.
echo "== keygate-server integration tests on PostgreSQL (KEYGATE_TEST_STORE=postgres)"
# `--workspace` keeps the feature set of the first run, so nothing is rebuilt.
KEYGATE_TEST_STORE=postgres cargo test --workspace --locked --test it "$@"

# keygate-client's embedded layer (feature `embedded`, off by default so a
# service using only the remote layer does not build keygate's server).
# `--workspace` keeps every other crate's features as in the first run, so
# only keygate-client is built again (`-p` alone rebuilt the server: 3.5 min).
echo "== keygate-client with the embedded layer"
cargo test --workspace --locked --features keygate-client/embedded --test client "$@"
