#!/usr/bin/env bash
# A CPU figure that does not depend on a quiet machine: user-space instructions counted by
# valgrind's callgrind on fixed workloads.
#   forwarded command  eppmux (release build) under callgrind, its plain-TCP listener in front of a
#                      TLS upstream session to the mock registry (RTT 0), one client (eppmux-load)
#                      sending domain check/info/create one at a time
#   sniffed frame      the EPP sniffer on a <domain:check> command and on its 1000 response
#                      (crates/eppmux-wire/examples/sniff_loop.rs)
# Each workload runs twice, with N1 and N2 commands (or sniffs); (I2 - I1) / (N2 - N1) is the cost
# of one, without start-up, TLS handshakes, login and shutdown. valgrind comes from Debian through
# scripts/install-test-deps.sh.
#
# Usage: scripts/callgrind.sh [--smoke]     (--smoke: smaller N, a few seconds more than the build;
#                                             CI runs it and prints the figures)
# Env:   CALLGRIND_KEEP=DIR keeps the callgrind output files there, for callgrind_annotate (the
#        profile in docs/benchmarks.md comes from them).
set -euo pipefail
cd "$(dirname "$0")/.."
n1=200; n2=1200; s1=1000; s2=11000
if [ "${1:-}" = "--smoke" ]; then n1=50; n2=250; s1=200; s2=2200; fi

command -v valgrind >/dev/null || scripts/install-test-deps.sh
cargo build --release --locked --workspace --bins -q
cargo build --release --locked -p eppmux-wire --example sniff_loop -q
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  if [ -n "${CALLGRIND_KEEP:-}" ]; then mkdir -p "$CALLGRIND_KEEP"; cp "$work"/*.callgrind "$CALLGRIND_KEEP"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

REG=127.0.0.1:17899
PLAIN=127.0.0.1:17801
CA=certs-example/ca.pem

# Whether something listens on a local TCP port (from /proc: no connection, no extra work for eppmux).
listening() { awk -v p=":$(printf '%04X' "$1")" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' /proc/net/tcp; }

# The instructions (Ir) a callgrind output file counted.
total() { awk '/^(summary|totals):/ { print $2; exit }' "$1"; }

"$bin/eppmux" mock-registry --listen $REG --session-cap 100000 > "$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do grep -q "mock registry ready" "$work/registry.log" && break; sleep 0.05; done

forwarded() { # commands → instructions of eppmux for the whole run
  local out="$work/eppmux.$1.callgrind"
  EPPMUX_PASSWORD=s3cret-Pw valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin/eppmux" --listen $PLAIN --upstream $REG --upstream-server-name localhost \
    --upstream-ca $CA --upstream-cert certs-example/client.pem \
    --upstream-key certs-example/client-key.pem --clid registrar1 --pool-min 1 --pool-max 1 \
    --keepalive 0s --greeting-wait 120s --log-level warn > "$work/eppmux.log" 2>&1 &
  local pid=$!
  pids+=($pid)
  # Listening is enough: the first client waits for the registry's greeting (--greeting-wait).
  # Nothing else talks to eppmux, so both runs do the same work apart from the commands.
  for _ in $(seq 1 600); do listening "${PLAIN##*:}" && break; sleep 0.1; done
  "$bin/eppmux-load" --target $PLAIN --arch eppmux --clients 1 --warmup 0 --commands "$1" \
    --duration 600s > /dev/null 2> "$work/load.err" || { cat "$work/load.err" "$work/eppmux.log" >&2; exit 1; }
  kill -TERM $pid
  wait $pid || true
  total "$out"
}

sniffed() { # frame n → instructions
  local out="$work/sniff.$2.callgrind"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin/examples/sniff_loop" "$1" "$2" \
    > /dev/null 2>&1
  total "$out"
}

i1=$(forwarded $n1); i2=$(forwarded $n2)
echo "callgrind: eppmux, plain listener → TLS upstream, 1 client: $(( (i2 - i1) / (n2 - n1) )) instructions per forwarded command ($n1 and $n2 commands: $i1 and $i2)"
for frame in domain-check.xml response-1000-check.xml; do
  f=crates/eppmux-wire/tests/frames/$frame
  j1=$(sniffed "$f" $s1); j2=$(sniffed "$f" $s2)
  echo "callgrind: sniffer: $(( (j2 - j1) / (s2 - s1) )) instructions per $frame ($(wc -c < "$f") bytes)"
done
