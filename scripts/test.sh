#!/usr/bin/env bash
# The test command: installs the third-party test clients if missing, then runs every test
# (unit, integration on loopback with real TLS, interop with Net::EPP, epptools, openssl and an
# epplib-style client) and ends with one line of totals.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# --no-fail-fast: one failing test binary must not hide how the others did.
cargo test --locked --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep '^test result:' "$log" | grep -oE '[0-9]+ passed' | awk '{n += $1} END {print n + 0}')
failed=$(grep '^test result:' "$log" | grep -oE '[0-9]+ failed' | awk '{n += $1} END {print n + 0}')
# A test that cannot run (a client missing) prints "SKIPPED: name: why" and passes for cargo.
skipped=$(grep -c 'SKIPPED: ' "$log" || true)
grep -o 'SKIPPED: .*' "$log" || true
echo "$((passed - skipped)) passed, $failed failed, $skipped skipped"
exit "$status"
