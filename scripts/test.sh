#!/usr/bin/env bash
# The test command: installs the third-party test clients if missing, then runs every test
# (unit, integration on loopback with real TLS, interop with Net::EPP and an epplib-style client).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo test --locked --all-targets "$@"
