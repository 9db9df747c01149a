#!/usr/bin/env python3
# Renders the JSON lines of bench/run-e2e.sh as markdown tables: medians over
# the rounds, and ratios taken round by round (each configuration against the
# baseline measured in the same round), then their median.
# SPDX-License-Identifier: GPL-3.0-or-later
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = defaultdict(list)
for r in rows:
    by[(r["part"], r["config"])].append(r)
rounds = defaultdict(dict)
for r in rows:
    rounds[(r["part"], r["round"])][r["config"]] = r


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec, suffix=""):
    return "n/a" if value is None else format(value, spec) + suffix


def per(r, key, count_key="delivered"):
    n = r[count_key]
    return r[key] / n * 1000 if r.get(key) is not None and n else None


def ratio(part, config, base, key):
    """Median over rounds of config's key / base's key in the same round."""
    out = []
    for (p, _), cfgs in rounds.items():
        if p == part and config in cfgs and base in cfgs:
            a, b = key(cfgs[config]), key(cfgs[base])
            if a is not None and b:
                out.append(a / b)
    return med(out)


def loads(rs):
    first = sorted(float(r["loadavg"].split()[0]) for r in rs)
    return f"{first[0]:.2f}-{first[-1]:.2f}"


def order(part, preferred):
    present = [c for (p, c) in by if p == part]
    return [c for c in preferred if c in present] + sorted(c for c in present if c not in preferred)


mps = lambda r: r["msgs_per_s"]
fcpu = lambda r: per(r, "filter_cpu_s")
pcpu = lambda r: per(r, "postfix_cpu_s")

if any(p == "throughput" for p, _ in by):
    print("### Throughput (messages/s counted at the sink)")
    print()
    print("| configuration | rounds | delivered/sent | msg/s | vs none | vs null-c | vs null-c-unix "
          "| filter CPU ms/msg | filter CPU vs null-c | vs null-c-unix | Postfix CPU ms/msg "
          "| smtp-source CPU ms/msg | load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in order("throughput", ["none", "null-c", "null-rs", "egress", "postfwd", "null-c-unix", "egress-unix"]):
        rs = by[("throughput", c)]
        print(f"| {c} | {len(rs)} | {sum(r['delivered'] for r in rs)}/{sum(r['sent'] for r in rs)} "
              f"| {fmt(med(mps(r) for r in rs), '.0f')} "
              f"| {fmt(ratio('throughput', c, 'none', mps), '.2f', 'x')} "
              f"| {fmt(ratio('throughput', c, 'null-c', mps), '.2f', 'x')} "
              f"| {fmt(ratio('throughput', c, 'null-c-unix', mps), '.2f', 'x')} "
              f"| {fmt(med(fcpu(r) for r in rs), '.3f')} "
              f"| {fmt(ratio('throughput', c, 'null-c', fcpu), '.2f', 'x')} "
              f"| {fmt(ratio('throughput', c, 'null-c-unix', fcpu), '.2f', 'x')} "
              f"| {fmt(med(pcpu(r) for r in rs), '.3f')} "
              f"| {fmt(med(per(r, 'gen_cpu_s') for r in rs), '.3f')} | {loads(rs)} |")
    print()

if any(p == "refusal" for p, _ in by):
    print("### One sender throttled, then locked (filter CPU per SMTP transaction)")
    print()
    print("| configuration | rounds | sent | delivered | 4xx refused | 5xx refused | delivered msg/s | vs egress "
          "| filter CPU ms/transaction | Postfix CPU ms/transaction | load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in order("refusal", ["egress", "egress-throttle"]):
        rs = by[("refusal", c)]
        print(f"| {c} | {len(rs)} | {sum(r['sent'] for r in rs)} | {sum(r['delivered'] for r in rs)} "
              f"| {sum(r['refused_4xx'] for r in rs)} | {sum(r['refused_5xx'] for r in rs)} "
              f"| {fmt(med(mps(r) for r in rs), '.0f')} | {fmt(ratio('refusal', c, 'egress', mps), '.2f', 'x')} "
              f"| {fmt(med(per(r, 'filter_cpu_s', 'sent') for r in rs), '.3f')} "
              f"| {fmt(med(per(r, 'postfix_cpu_s', 'sent') for r in rs), '.3f')} | {loads(rs)} |")
    print()

if any(p == "latency" for p, _ in by):
    print("### One SMTP session, messages back to back (smtp-source -s 1 -d)")
    print()
    print("| configuration | rounds | messages | ms/message (median) | min-max | vs none | filter CPU ms/msg "
          "| load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|")
    ms = lambda r: r["inject_s"] / r["sent"] * 1000
    pref = ["none", "null-c-inet", "null-c-unix", "egress-inet", "egress-inet-noquickack", "egress-unix"]
    for c in order("latency", pref):
        rs = by[("latency", c)]
        values = sorted(ms(r) for r in rs)
        print(f"| {c} | {len(rs)} | {sum(r['sent'] for r in rs)} | {med(values):.2f} "
              f"| {values[0]:.2f}-{values[-1]:.2f} | {fmt(ratio('latency', c, 'none', ms), '.2f', 'x')} "
              f"| {fmt(med(fcpu(r) for r in rs), '.3f')} | {loads(rs)} |")
    print()

bad = [r for r in rows if r["left_in_queue"] or (r["part"] != "refusal" and r["delivered"] != r["sent"])]
for r in bad:
    print(f"WARNING: {r['part']} round {r['round']} {r['config']}: delivered {r['delivered']} of "
          f"{r['sent']}, {r['left_in_queue']} left in the queue")
