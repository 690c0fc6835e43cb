#!/usr/bin/env bash
# The benchmark that answers getgov's ADR 22 question (pool or not, which pool) under a registry
# model with a session cap, a login cost and WAN round trips. Release builds of eppmux, its mock
# registry and the eppmux-load generator, all on loopback, in one run:
#
#   the registry model   eppmux mock-registry --rtt R --latency 10ms --login-latency 100ms
#                        --session-cap C: every frame takes R/2 each way, TCP and TLS a round
#                        trip each before the greeting leaves, 10 ms of serial processing per
#                        command (login and logout too), 100 ms more per login, 2502 beyond C
#   the architectures    no-pool      connect + TLS + login + command + logout per command, 2502
#                                     retried with getgov's backoff (attempt × 50 ms, 4 attempts)
#                        worker-pool  W workers × P sessions each (W×P ≤ C), LIFO, borrow timeout
#                                     10 s; a recycled worker logs out and logs in P fresh ones
#                        eppmux       S sessions shared by every worker's clients (queue_wait
#                                     10 s); a recycled worker's clients reconnect to eppmux
#   the workloads        steady       W workers × K clients, each sending back to back
#                        burst        B checks at once on one worker (the next one each time)
#   the grid             RTT 20 ms and 80 ms × C = 10 (W=3, P=3) and C = 100 (W=5, P=20)
#                        workers recycled every R=200 of their commands (getgov: ~1,000 requests,
#                        not all of them EPP commands; 200 makes every worker recycle within a
#                        10 s window at 80 ms)
# plus the 0 ms RTT overhead runs (1 and 50 clients) and a scale run with 2,000 idle TLS clients.
# Prints one table per scenario and the targets; writes every result as JSON lines, which
# scripts/bench-report.py turns into the tables of docs/benchmarks.md.
#
# Usage: scripts/bench.sh [--smoke]      (--smoke: a few seconds, for CI, to keep it working)
# Env:   BENCH_SECONDS (steady window, default 10), BENCH_OUT (default target/bench/results.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
window=${BENCH_SECONDS:-10}s
idle=2000
rtts="20ms 80ms"
caps="10 100"
RECYCLE=200
PROCESSING=10ms
LOGIN=100ms
# The smoke run keeps every mode and workload but scales the model's times down by ten.
if [ $smoke = 1 ]; then
  window=500ms; idle=50; rtts="2ms"; caps="10"; RECYCLE=50; PROCESSING=1ms; LOGIN=10ms
fi

cargo build --release --locked --workspace --bins -q
bin=target/release
out=${BENCH_OUT:-target/bench/results.jsonl}
mkdir -p "$(dirname "$out")"
: > "$out"
ulimit -n 20000 2>/dev/null || true
logs=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

CA=certs-example/ca.pem
CERT=certs-example/client.pem
KEY=certs-example/client-key.pem
REG=127.0.0.1:17799
PROXY=127.0.0.1:17700
ADMIN=127.0.0.1:17790

wait_for_log() { # file needle
  for _ in $(seq 1 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

stop() { # pid
  [ -n "$1" ] && { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
  return 0
}

# A fresh registry for every run: no session of the previous run counts against the cap.
registry_pid=""
start_registry() { # rtt cap [processing] [login]
  stop "$proxy_pid"; proxy_pid=""
  stop "$registry_pid"
  "$bin/eppmux" mock-registry --listen $REG --rtt "$1" --session-cap "$2" \
    --latency "${3:-$PROCESSING}" --login-latency "${4:-$LOGIN}" > "$logs/registry.log" 2>&1 &
  registry_pid=$!; pids+=("$registry_pid")
  wait_for_log "$logs/registry.log" "mock registry ready"
}

proxy_pid=""
start_proxy() { # sessions [pipeline-depth]
  stop "$proxy_pid"
  EPPMUX_PASSWORD=s3cret-Pw "$bin/eppmux" --listen-tls $PROXY --pipeline-depth "${2:-1}" \
    --tls-cert certs-example/server.pem --tls-key certs-example/server-key.pem \
    --upstream $REG --upstream-server-name localhost --upstream-ca $CA \
    --upstream-cert $CERT --upstream-key $KEY --clid registrar1 \
    --pool-min "$1" --pool-max "$1" --queue-wait 10s --queue-max 100000 --max-clients 10000 \
    --max-clients-per-source 10000 --admin $ADMIN --log-level warn > "$logs/proxy.log" 2>&1 &
  proxy_pid=$!; pids+=("$proxy_pid")
  for _ in $(seq 1 400); do
    if "$bin/eppmux" healthcheck --admin $ADMIN >/dev/null 2>&1 && \
       [ "$(python3 -c 'import json,sys,urllib.request; print(json.load(urllib.request.urlopen("http://'$ADMIN'/status"))["accounts"][0]["live"])')" = "$1" ]; then
      return 0
    fi
    sleep 0.05
  done
  echo "eppmux did not open $1 sessions" >&2; cat "$logs/proxy.log" >&2; exit 1
}

# load LABEL TAGS ARGS...: one eppmux-load run; TAGS (JSON members) are added to its JSON line.
load() {
  local label=$1 tags=$2; shift 2
  "$bin/eppmux-load" --tls --scenario "$label" "$@" 2> "$logs/load.err" | sed 's/^/  /'
  grep '^JSON ' "$logs/load.err" | sed "s/^JSON {/{$tags,/" >> "$out"
  grep -v '^JSON ' "$logs/load.err" | head -3 >&2 || true
}
direct() { load "$1" "$2" --target $REG --cert $CERT --key $KEY "${@:3}"; }
via_proxy() { load "$1" "$2" --target $PROXY --pid "$proxy_pid" --admin $ADMIN "${@:3}"; }

header() {
  echo "-- $1"
  echo "  scenario                 clients    cmds     cmd/s    p50 µs    p99 µs  p99.9 µs     max µs  reg.logins  2502s errors"
}

# One scenario: every architecture on the same registry model.
scenario() { # rtt cap workers pool clients-per-worker load [burst-every bursts burst]
  local rtt=$1 cap=$2 w=$3 p=$4 k=$5 kind=$6
  local shape=(--load "$kind" --workers "$w" --clients "$k" --recycle $RECYCLE)
  if [ "$kind" = steady ]; then
    shape+=(--duration "$window")
  else
    shape+=(--burst-every "$7" --bursts "$8" --burst "$9")
  fi
  local tags="\"rtt\":\"$rtt\",\"cap\":$cap,\"processing\":\"$PROCESSING\",\"login\":\"$LOGIN\""
  header "RTT $rtt, cap C=$cap, $kind: W=$w workers × K=$k clients (worker pools P=$p), recycled every $RECYCLE"
  if [ "$kind" = steady ]; then
    # The model's no-pool figure: C clients, so the cap is never hit.
    start_registry "$rtt" "$cap"
    direct "no-pool (C clients)" "$tags,\"depth\":1" --arch no-pool --load steady --workers 1 \
      --clients "$cap" --duration "$window" --warmup 1
  fi
  start_registry "$rtt" "$cap"
  direct "no-pool" "$tags,\"depth\":1" --arch no-pool "${shape[@]}" --warmup 1
  start_registry "$rtt" "$cap"
  direct "worker-pool ${w}x$p" "$tags,\"depth\":1" --arch worker-pool --pool "$p" "${shape[@]}"
  start_registry "$rtt" "$cap"
  start_proxy "$cap"
  via_proxy "eppmux S=$cap" "$tags,\"depth\":1,\"sessions\":$cap" --arch eppmux "${shape[@]}"
  if [ $((w * p)) != "$cap" ]; then
    start_registry "$rtt" "$cap"
    start_proxy $((w * p))
    via_proxy "eppmux S=$((w * p))" "$tags,\"depth\":1,\"sessions\":$((w * p))" --arch eppmux "${shape[@]}"
  fi
  start_registry "$rtt" "$cap"
  start_proxy "$cap" 4
  via_proxy "eppmux S=$cap depth 4" "$tags,\"depth\":4,\"sessions\":$cap" --arch eppmux "${shape[@]}"
}

started=$(date +%s)
echo "== the model's command time, achieved (1 client, one session straight to the registry)"
for rtt in $rtts; do
  start_registry "$rtt" 10
  direct "probe $rtt" "\"rtt\":\"$rtt\",\"processing\":\"$PROCESSING\",\"login\":\"$LOGIN\"" \
    --arch direct --workers 1 --clients 1 --commands $([ $smoke = 1 ] && echo 20 || echo 100) --duration 60s --warmup 3
done

for rtt in $rtts; do
  every=$([ "$rtt" = 80ms ] && echo 4s || echo 2s)
  for cap in $caps; do
    if [ "$cap" = 10 ]; then w=3; p=3; k=20; else w=5; p=20; k=100; fi
    if [ $smoke = 1 ]; then
      scenario "$rtt" "$cap" "$w" "$p" "$k" steady
      scenario "$rtt" "$cap" "$w" "$p" "$k" burst 300ms 2 30
    else
      scenario "$rtt" "$cap" "$w" "$p" "$k" steady
      scenario "$rtt" "$cap" "$w" "$p" "$k" burst "$([ "$cap" = 10 ] && echo "$every" || echo 2s)" 6 300
    fi
  done
done

echo "-- overhead: RTT 0, no processing or login time, S=10 (cap 100000)"
header "overhead"
start_registry 0ms 100000 0ms 0ms
start_proxy 10
tags='"rtt":"0ms","cap":100000,"processing":"0ms","login":"0ms"'
direct "direct 1 client" "$tags" --arch direct --clients 1 --duration "$window"
via_proxy "eppmux 1 client" "$tags,\"sessions\":10" --arch eppmux --clients 1 --duration "$window"
direct "direct 50 clients" "$tags" --arch direct --clients 50 --duration "$window"
via_proxy "eppmux 50 clients" "$tags,\"sessions\":10" --arch eppmux --clients 50 --duration "$window"
start_proxy 4
via_proxy "eppmux scale" "$tags,\"sessions\":4" --arch eppmux --clients 10 --idle-clients $idle --duration "$window"

echo "wall time: $(( $(date +%s) - started )) s"
python3 scripts/bench-report.py "$out"
echo "results: $out"
