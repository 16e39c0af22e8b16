#!/usr/bin/env bash
# The whole test suite. Starts (or installs) the local services the suite
# uses, then runs every crate's unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh
ensure_services

cargo test --workspace --locked "$@"
