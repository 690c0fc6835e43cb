#!/usr/bin/env python3
"""Turns scripts/bench.sh's JSON lines into the tables of docs/benchmarks.md (Markdown) and checks
the targets of issue 13 against them. Every ceiling is computed twice: from the model's nominal
figures (C / (RTT + processing)) and from the command time achieved on this machine (the p50 of
one client on one session straight to the registry, the probe run first), since the mock's clock
is finer than a millisecond but the machine's load still adds to each round trip.

Usage: scripts/bench-report.py target/bench/results.jsonl
"""
import json
import sys


def ms(s):
    return float(s.rstrip("ms")) if s.endswith("ms") else float(s.rstrip("s")) * 1000


rows = [json.loads(line) for line in open(sys.argv[1])]


def find(**want):
    return [r for r in rows if all(r.get(k) == v for k, v in want.items())]


def one(**want):
    found = find(**want)
    return found[0] if found else None


def command_ms(r):
    """The model's time for one command: a round trip and the processing time."""
    return ms(r["rtt"]) + ms(r["processing"])


def achieved_ms(rtt):
    """The command time the probe measured at this RTT (p50, 1 client, 1 session), if it ran."""
    probe = next((r for r in rows if r["arch"] == "direct" and r["scenario"].startswith("probe")
                  and r["rtt"] == rtt), None)
    return probe["p50_us"] / 1000 if probe else None


def fresh_ms(r):
    """The model's time for connect + login + command + logout: TCP and TLS a round trip each, the
    greeting half of one, then three exchanges (login also its login time)."""
    rtt, p = ms(r["rtt"]), ms(r["processing"])
    return 2.5 * rtt + 3 * (rtt + p) + ms(r["login"])


def f(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


def msf(us):
    return "–" if us is None else f"{us / 1000:,.1f}"


def cells(load):
    found = {(r["rtt"], r["cap"]) for r in rows if r.get("load") == load and r.get("cap") not in (None, 100000)}
    return sorted(found, key=lambda c: (ms(c[0]), c[1]))


def cell_rows(load, rtt, cap):
    return [r for r in rows if r.get("load") == load and r["rtt"] == rtt and r.get("cap") == cap]


def pick(cell, arch, sessions=None, depth=1, scenario=None):
    for r in cell:
        if r["arch"] != arch or (scenario and r["scenario"] != scenario):
            continue
        if arch == "eppmux" and (r.get("sessions") != sessions or r.get("depth") != depth):
            continue
        return r
    return None


def per_thousand(r):
    return 1000 * r["registry_logins"] / r["commands"] if r["commands"] else None


def median(xs):
    return sorted(xs)[len(xs) // 2] if xs else None


def summary_cell(r, load):
    if r is None:
        return "–"
    if load == "steady":
        return (f"**{f(r['throughput'])}** cmd/s, p99 {msf(r['p99_us'])} / worst {msf(r['max_us'])} ms, "
                f"{f(per_thousand(r), 0)} logins/1k, {f(r['refused_2502'])} × 2502, {r['errors']} failed")
    done = median(r["burst_completion_us"])
    return (f"**{'–' if done is None else f'{done / 1e6:.2f}'} s** per burst, p99 {msf(r['p99_us'])} / "
            f"worst {msf(r['max_us'])} ms, {f(per_thousand(r), 0)} logins/1k, {f(r['refused_2502'])} × 2502, "
            f"{r['errors']} failed")


print("\n### The answer: the three architectures on the same capped registry\n")
print("Steady: commands/s over the window. Burst: median time from a burst's arrival to its last answer.")
print("Latencies in ms; logins/1k: registry logins per 1,000 commands; failed: commands that got no")
print("answer (no pool: 4 logins refused with 2502; pools: borrow timeout).\n")
print("| workload | RTT | C | no pool | per-worker pools (W × P) | eppmux S = W × P | eppmux S = C | eppmux S = C, depth 4 |")
print("|---|---|---|---|---|---|---|---|")
for load in ("steady", "burst"):
    for rtt, cap in cells(load):
        cell = cell_rows(load, rtt, cap)
        wp = pick(cell, "worker-pool")
        wxp = wp["workers"] * wp["pool"] if wp else None
        eq = pick(cell, "eppmux", wxp) if wxp != cap else None
        shape = f" ({wp['workers']} × {wp['pool']})" if wp else ""
        print(f"| {load} | {rtt} | {cap} | {summary_cell(pick(cell, 'no-pool', scenario='no-pool'), load)} "
              f"| {summary_cell(wp, load)}{shape} "
              f"| {summary_cell(eq, load) if eq else 'same as S = C'} | {summary_cell(pick(cell, 'eppmux', cap), load)} "
              f"| {summary_cell(pick(cell, 'eppmux', cap, 4), load)} |")

print("\n### The model's command time, achieved\n")
print("| RTT | processing | nominal command time | achieved (p50, 1 client) | p99 | difference |")
print("|---|---|---|---|---|---|")
for r in find(arch="direct"):
    if not r["scenario"].startswith("probe"):
        continue
    nominal = command_ms(r)
    print(f"| {r['rtt']} | {r['processing']} | {nominal:.1f} ms | {r['p50_us'] / 1000:.2f} ms | "
          f"{r['p99_us'] / 1000:.2f} ms | +{(r['p50_us'] / 1000 - nominal) / nominal * 100:.1f}% |")

for load in ("steady", "burst"):
    for rtt, cap in cells(load):
        cell = cell_rows(load, rtt, cap)
        ceiling = cap / (command_ms(cell[0]) / 1000)
        got = achieved_ms(rtt)
        real = cap / (got / 1000) if got else None
        print(f"\n### {load}, RTT {rtt}, C = {cap} (ceiling C / (RTT + processing) = {ceiling:,.0f} cmd/s nominal, "
              f"{f(real)} cmd/s from the achieved command time)\n")
        burst_cols = " burst done p50 / max (s) |" if load == "burst" else ""
        if load == "burst":
            print("cmd/s and the share of capacity run over the whole run, the idle time between bursts")
            print("included: compare the bursts' completion times.\n")
        print(f"| architecture | clients | cmd/s | share of capacity (nominal / achieved) | p50 ms | p99 ms | p99.9 ms "
              f"| worst ms | registry logins / 1,000 cmds | 2502s | recycles (registry logins each) | failed |{burst_cols}")
        print("|---|" + "---|" * (11 + (1 if load == "burst" else 0)))
        for r in cell:
            rec = r["recycles"]
            each = None
            if rec and r["arch"] in ("worker-pool", "eppmux"):
                each = r["registry_logins"] / rec
            extra = ""
            if load == "burst":
                b = sorted(r["burst_completion_us"])
                extra = f" {median(b) / 1e6:.2f} / {b[-1] / 1e6:.2f} |" if b else " – |"
            share = f"{100 * r['throughput'] / ceiling:.1f}%"
            if real:
                share += f" / {100 * r['throughput'] / real:.1f}%"
            print(f"| {r['scenario']} | {r['clients']} | {f(r['throughput'])} | {share} "
                  f"| {msf(r['p50_us'])} | {msf(r['p99_us'])} | {msf(r['p999_us'])} | {msf(r['max_us'])} "
                  f"| {f(per_thousand(r), 1)} | {f(r['refused_2502'])} | {rec} ({f(each, 1)}) | {r['errors']} |{extra}")

print("\n### Targets (80 ms RTT, C = 10 unless said otherwise)\n")


def target(name, result, met):
    print(f"- {name}: {result} — **{'met' if met else 'missed'}**")


def cell(load, rtt="80ms", cap=10):
    return [r for r in rows if r.get("load") == load and r["rtt"] == rtt and r.get("cap") == cap]


steady = cell("steady")
if steady:
    e = next((r for r in steady if r["arch"] == "eppmux" and r.get("sessions") == 10 and r.get("depth") == 1), None)
    ceiling = 10 / (command_ms(steady[0]) / 1000)
    got = achieved_ms("80ms")
    if e:
        real = 10 / (got / 1000) if got else None
        also = f"; of the achieved ceiling {real:.1f} cmd/s: {100 * e['throughput'] / real:.1f}%" if real else ""
        target("eppmux's commands/s ≥ 98% of C / (RTT + processing), nominal",
               f"{e['throughput']:.1f} of {ceiling:.1f} cmd/s = {100 * e['throughput'] / ceiling:.1f}%{also}",
               e["throughput"] >= 0.98 * ceiling)
    npc = next((r for r in steady if r["scenario"] == "no-pool (C clients)"), None)
    if e and npc:
        model = fresh_ms(npc) / command_ms(npc)
        measured = e["throughput"] / npc["throughput"]
        target("against no pool (C clients): the model's ratio (handshakes + login + command + logout) / command",
               f"model {model:.2f}×, measured {measured:.2f}× ({100 * measured / model:.0f}% of the model)",
               measured >= 0.95 * model)
    np_ = next((r for r in steady if r["arch"] == "no-pool" and r["scenario"] == "no-pool"), None)
    if e and np_:
        print(f"- against no pool with every client ({np_['clients']}, 2502s retried): "
              f"{e['throughput'] / max(np_['throughput'], 1e-9):.1f}× ({np_['refused_2502']:.0f} 2502s, {np_['errors']} failed commands)")
    wp = next((r for r in steady if r["arch"] == "worker-pool"), None)
    e9 = next((r for r in steady if r["arch"] == "eppmux" and r.get("sessions") == 9 and r.get("depth") == 1), None)
    if wp and e9:
        ratio = e9["throughput"] / wp["throughput"]
        target("steady load, 3 workers × 3 sessions vs eppmux S=9: within noise (±3%)",
               f"eppmux {e9['throughput']:.1f} vs {wp['throughput']:.1f} cmd/s = {ratio:.3f}×",
               abs(ratio - 1) <= 0.03 or ratio > 1)
    if wp and wp["recycles"]:
        ep = [r for r in steady if r["arch"] == "eppmux"]
        rec = sum(r["recycles"] for r in ep)
        logins = sum(r["registry_logins"] for r in ep)
        target("registry logins per recycle: 0 through eppmux vs P = 3 per worker",
               f"eppmux {logins:.0f} logins over {rec} recycles; worker pools {wp['registry_logins'] / wp['recycles']:.1f} per recycle",
               logins == 0 and rec > 0)
    for r in steady:
        if r["arch"] == "eppmux":
            target(f"{r['scenario']}: worst single command ≤ 2× p99",
                   f"worst {msf(r['max_us'])} ms, p99 {msf(r['p99_us'])} ms", r["max_us"] <= 2 * r["p99_us"])
    d4 = next((r for r in steady if r["arch"] == "eppmux" and r.get("depth") == 4), None)
    if e and d4:
        print(f"- pipelining depth 4 (S=10): {d4['throughput']:.1f} cmd/s = {d4['throughput'] / e['throughput']:.2f}× depth 1")
burst = cell("burst")
if burst:
    wp = next((r for r in burst if r["arch"] == "worker-pool"), None)
    e9 = next((r for r in burst if r["arch"] == "eppmux" and r.get("sessions") == 9 and r.get("depth") == 1), None)
    if wp and e9 and wp["burst_completion_us"] and e9["burst_completion_us"]:
        a, b = wp["burst_completion_us"], e9["burst_completion_us"]
        ratio = a[len(a) // 2] / b[len(b) // 2]
        target("bursts on one worker at a time: eppmux S=9 ≥ 2× faster than 3 workers × 3 sessions (median burst)",
               f"{b[len(b) // 2] / 1e6:.2f} s vs {a[len(a) // 2] / 1e6:.2f} s = {ratio:.2f}×", ratio >= 2)
    for r in burst:
        if r["arch"] == "eppmux":
            target(f"burst, {r['scenario']}: worst single command ≤ 2× p99",
                   f"worst {msf(r['max_us'])} ms, p99 {msf(r['p99_us'])} ms", r["max_us"] <= 2 * r["p99_us"])

over = [r for r in rows if r.get("cap") == 100000]
if over:
    print("\n### Overhead and scale (RTT 0, no processing, no login time)\n")
    print("| run | clients | cmd/s | p50 µs | p99 µs | p99.9 µs | max µs | eppmux CPU µs/cmd | eppmux RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in over:
        cpu = r.get("proxy_cpu_us_per_command")
        rss = r.get("proxy_rss_kib_with_idle_clients") or r.get("proxy_rss_kib")
        print(f"| {r['scenario']} | {r['clients']} + {r['idle_clients']} idle | {f(r['throughput'])} | {r['p50_us']} | "
              f"{r['p99_us']} | {r['p999_us']} | {r['max_us']} | {f(cpu, 1)} | {f(rss / 1024 if rss else None, 1)} |")
    d1, p1 = one(scenario="direct 1 client"), one(scenario="eppmux 1 client")
    if d1 and p1:
        print(f"\nadded latency at 0 ms RTT, 1 client: p50 +{p1['p50_us'] - d1['p50_us']} µs, p99 +{p1['p99_us'] - d1['p99_us']} µs")
    s = one(scenario="eppmux scale")
    if s:
        print(f"scale: {s['idle_clients']} idle TLS clients held, {s['idle_clients_served']} served afterwards")
