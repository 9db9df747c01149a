#!/usr/bin/env python3
# Renders milter-bench JSON lines (with scenario/milter/transport/run added)
# as markdown tables of medians, with throughput ratios to the null milters
# measured in the same session.
# SPDX-License-Identifier: GPL-3.0-or-later
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
groups = defaultdict(list)
for r in rows:
    groups[(r["scenario"], r["milter"], r["transport"], r["label"])].append(r)


def med(rs, f):
    return statistics.median(f(r) for r in rs)


def summary(rs):
    return {
        "n": len(rs),
        "tps": med(rs, lambda r: r["tps"]),
        "p50": med(rs, lambda r: r["latency"]["p50_us"]),
        "p99": med(rs, lambda r: r["latency"]["p99_us"]),
        "p999": med(rs, lambda r: r["latency"]["p999_us"]),
        "acc": med(rs, lambda r: r["accepted"]),
        "tmp": med(rs, lambda r: r["tempfail"]),
        "rej": med(rs, lambda r: r["reject"]),
        "err": sum(r["errors"] for r in rs),
    }


S = {k: summary(v) for k, v in groups.items()}


def find(scenario, milter, transport):
    for (s, m, t, _), v in S.items():
        if s == scenario and m == milter and t == transport:
            return v
    return None


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


for scenario in ["peak", "peak-header"]:
    keys = sorted({k for k in S if k[0] == scenario}, key=lambda k: (k[2], k[1]))
    if not keys:
        continue
    print(f"\n### {scenario} (closed loop, medians of runs)\n")
    print("| transport | milter | runs | msg/s | vs null-rs | vs null-c | p50 us | p99 us | p99.9 us | accepted | tempfail | reject | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        v = S[k]
        nrs = find("peak", "null-rs", k[2])
        nc = find("peak", "null-c", k[2])
        if scenario == "peak-header":
            nrs = find("peak-header", "null-rs", k[2])
        print(
            f"| {k[2]} | {k[3]} | {v['n']} | {v['tps']:.0f} | {ratio(v['tps'], nrs['tps'] if nrs else 0)} | "
            f"{ratio(v['tps'], nc['tps'] if nc else 0)} | {v['p50']:.0f} | {v['p99']:.0f} | {v['p999']:.0f} | "
            f"{v['acc']:.0f} | {v['tmp']:.0f} | {v['rej']:.0f} | {v['err']} |"
        )

for scenario, title in [("refusals", "cost of refusals (inet)"), ("half-peak", "latency at half of egress peak (inet, open loop)")]:
    keys = sorted(k for k in S if k[0] == scenario)
    if not keys:
        continue
    base = [v for k, v in S.items() if k[0] == scenario and k[1] == "null-rs"]
    print(f"\n### {title}\n")
    print("| run | runs | msg/s | vs null-rs | p50 us | p99 us | p99.9 us | accepted | tempfail | reject | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        v = S[k]
        print(
            f"| {k[3]} | {v['n']} | {v['tps']:.0f} | {ratio(v['tps'], base[0]['tps'] if base else 0)} | "
            f"{v['p50']:.0f} | {v['p99']:.0f} | {v['p999']:.0f} | {v['acc']:.0f} | {v['tmp']:.0f} | {v['rej']:.0f} | {v['err']} |"
        )
