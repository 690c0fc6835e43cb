#!/usr/bin/env bash
# The benchmark: release builds of eppmux, its mock registry and the eppmux-load generator, all on
# loopback, every scenario against the same mock in one run:
#   direct-fresh       connect + TLS + login + command + logout per command, straight to the registry
#   direct-persistent  one long-lived session per client, straight to the registry
#   proxy              clients keep a TLS session to eppmux, which uses S upstream sessions
#   proxy-fresh        clients reconnect to eppmux for every command
# at 0 ms RTT (overhead) and at 20 ms RTT (a realistic registry), plus a scale run with 2,000 idle
# TLS clients. Prints one table and the ratios that matter; writes every result as JSON lines.
#
# Usage: scripts/bench.sh [--smoke]      (--smoke: a few seconds, for CI, to keep it working)
# Env:   BENCH_SECONDS (default 5), BENCH_OUT (default target/bench/results.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
secs=${BENCH_SECONDS:-5}
idle=2000
clients=50
if [ $smoke = 1 ]; then secs=1; idle=50; clients=10; fi

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

registry_pid=""
start_registry() { # rtt [processing]
  [ -n "$registry_pid" ] && { kill "$registry_pid"; wait "$registry_pid" 2>/dev/null || true; }
  "$bin/eppmux" mock-registry --listen $REG --rtt "$1" --latency "${2:-0ms}" --session-cap 100000 > "$logs/registry.log" 2>&1 &
  registry_pid=$!; pids+=("$registry_pid")
  wait_for_log "$logs/registry.log" "mock registry ready"
}

proxy_pid=""
start_proxy() { # sessions [pipeline-depth]
  [ -n "$proxy_pid" ] && { kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; }
  EPPMUX_PASSWORD=s3cret-Pw "$bin/eppmux" --listen-tls $PROXY --pipeline-depth "${2:-1}" \
    --tls-cert certs-example/server.pem --tls-key certs-example/server-key.pem \
    --upstream $REG --upstream-server-name localhost --upstream-ca $CA \
    --upstream-cert $CERT --upstream-key $KEY --clid registrar1 \
    --pool-min "$1" --pool-max "$1" --queue-wait 10s --max-clients 10000 \
    --admin $ADMIN --log-level warn > "$logs/proxy.log" 2>&1 &
  proxy_pid=$!; pids+=("$proxy_pid")
  for _ in $(seq 1 200); do
    if "$bin/eppmux" healthcheck --admin $ADMIN >/dev/null 2>&1 && \
       [ "$(python3 -c 'import json,sys,urllib.request; print(json.load(urllib.request.urlopen("http://'$ADMIN'/status"))["accounts"][0]["live"])')" = "$1" ]; then
      return 0
    fi
    sleep 0.05
  done
  echo "eppmux did not open $1 sessions" >&2; cat "$logs/proxy.log" >&2; exit 1
}

load() { # label rtt extra-args...
  local label=$1 rtt=$2; shift 2
  "$bin/eppmux-load" --duration "${secs}s" --tls "$@" --scenario "$label" 2> "$logs/load.err" | sed 's/^/  /'
  grep '^JSON ' "$logs/load.err" | sed "s/^JSON {/{\"rtt\":\"$rtt\",/" >> "$out"
  grep -v '^JSON ' "$logs/load.err" | head -3 >&2 || true
}
direct() { load "$1" "$2" --target $REG --cert $CERT --key $KEY "${@:3}"; }
via_proxy() { load "$1" "$2" --target $PROXY --pid "$proxy_pid" --admin $ADMIN "${@:3}"; }

echo "scenario                clients   cmds    cmd/s   p50 µs   p90 µs   p99 µs  p99.9 µs    max µs errors"
S=10
for rtt in 0ms 20ms; do
  echo "-- RTT $rtt, S=$S upstream sessions for the proxy"
  start_registry $rtt
  start_proxy $S
  if [ $rtt = 0ms ]; then
    direct "direct-persistent" $rtt --clients 1
    via_proxy "proxy" $rtt --clients 1
  fi
  direct "direct-fresh" $rtt --clients $clients --mode fresh
  direct "direct-persistent" $rtt --clients $clients
  via_proxy "proxy" $rtt --clients $clients
  via_proxy "proxy-fresh" $rtt --clients $clients --mode fresh
done

echo "-- pipelining: RTT 20ms, 1 ms processing per command, S=2 upstream sessions"
start_registry 20ms 1ms
for depth in 1 4; do
  start_proxy 2 $depth
  via_proxy "proxy-depth$depth" 20ms --clients $clients
done

echo "-- scale: $idle idle TLS clients + 10 active on 4 upstream sessions, RTT 0"
start_registry 0ms
start_proxy 4
via_proxy "proxy-scale" 0ms --clients 10 --idle-clients $idle

python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def get(rtt, scenario, clients=None):
    for r in rows:
        if r["rtt"] == rtt and r["scenario"] == scenario and (clients is None or r["clients"] == clients):
            return r
print()
p1, d1 = get("0ms", "proxy", 1), get("0ms", "direct-persistent", 1)
if p1 and d1:
    print(f"added latency at 0 ms RTT, 1 client: p50 +{p1['p50_us'] - d1['p50_us']} µs, p99 +{p1['p99_us'] - d1['p99_us']} µs (targets: ≤ 60 µs, ≤ 300 µs)")
for rtt in ("0ms", "20ms"):
    fresh, proxy = get(rtt, "direct-fresh"), get(rtt, "proxy", None if rtt == "20ms" else max(r["clients"] for r in rows if r["rtt"] == rtt and r["scenario"] == "proxy"))
    if fresh and proxy:
        print(f"RTT {rtt}: proxy {proxy['throughput']:.0f} cmd/s vs direct-fresh {fresh['throughput']:.0f} cmd/s = {proxy['throughput'] / fresh['throughput']:.1f}x (target at 20 ms: ≥ 20x)")
p20 = get("20ms", "proxy")
if p20:
    ceiling = 10 / 0.020
    print(f"RTT 20ms: proxy {p20['throughput']:.0f} cmd/s = {100 * p20['throughput'] / ceiling:.1f}% of S/RTT = {ceiling:.0f} cmd/s (target ≥ 97%)")
    dp = get("20ms", "direct-persistent")
    if dp:
        measured = 10 / (dp['p50_us'] / 1e6)
        print(f"RTT 20ms: one command through the mock takes {dp['p50_us'] / 1000:.1f} ms (p50, direct): S/that = {measured:.0f} cmd/s, proxy at {100 * p20['throughput'] / measured:.1f}% of it")
    print(f"RTT 20ms: upstream logins during the proxy run: {p20['upstream_logins']:.0f}; client logins direct-fresh: {get('20ms', 'direct-fresh')['client_logins']}")
d1, d4 = get("20ms", "proxy-depth1"), get("20ms", "proxy-depth4")
if d1 and d4:
    print(f"pipelining (RTT 20 ms, 1 ms processing, S=2): depth 4 {d4['throughput']:.0f} cmd/s vs depth 1 {d1['throughput']:.0f} cmd/s = {d4['throughput'] / d1['throughput']:.1f}x (target ≥ 3x)")
cpu = [r["proxy_cpu_us_per_command"] for r in rows if r.get("proxy_cpu_us_per_command") and r["scenario"] == "proxy"]
if cpu:
    print(f"proxy CPU per forwarded command: {min(cpu):.1f}–{max(cpu):.1f} µs (target ≤ 30 µs)")
peak = max((r["proxy_peak_rss_kib"] or 0) for r in rows if r["scenario"].startswith("proxy"))
print(f"proxy peak RSS over all runs: {peak / 1024:.1f} MiB")
s = get("0ms", "proxy-scale")
if s:
    rss = s["proxy_rss_kib_with_idle_clients"] / 1024
    print(f"scale: {s['idle_clients']} idle TLS clients held, {s['idle_clients_served']} served afterwards; proxy RSS {rss:.1f} MiB "
          f"({1024 * rss / max(s['idle_clients'], 1):.1f} KiB per connection; target ≤ 150 MiB for 2,000)")
PY
echo "results: $out"
