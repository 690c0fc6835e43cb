#!/usr/bin/env bash
# The `openssl` cargo feature (README: "Registries with older TLS"), which the default build
# leaves out: clippy over every target with it, then its tests — the library's unit tests (the
# OpenSSL stack's guarantees against real servers on loopback) and tests/legacy_tls.rs (a registry
# offering only TLS 1.2 with a CBC suite, reached through eppmux by `openssl s_client`). Building
# the tests builds the `eppmux` binary with the feature. Needs Debian's libssl-dev and pkg-config
# (scripts/install-test-deps.sh installs them). Ends with its duration: what the feature adds to CI.
#
# `--workspace --features eppmux/openssl` rather than `-p eppmux --features openssl`: the same
# package selection as the default clippy and scripts/test.sh, so that cargo resolves the shared
# dependencies with the same features and reuses them instead of building a second copy.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
cargo clippy --locked --workspace --all-targets --features eppmux/openssl -- -D warnings
cargo test --locked --workspace --features eppmux/openssl --lib --test legacy_tls
echo "openssl feature: clippy, build and tests in $(($(date +%s) - start)) s"
