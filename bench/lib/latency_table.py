#!/usr/bin/env python3
# Renders the JSON lines of bench/run-latency.sh as markdown tables: peak and
# latency medians per milter and placement, and the in-daemon decision time
# from the egress_milter_decision_seconds histograms scraped before and after
# each run (the difference is that run's traffic, warm-up included).
# SPDX-License-Identifier: GPL-3.0-or-later
import json
import re
import statistics
import sys
from collections import defaultdict

STAGES = ["mail", "rcpt", "eoh", "eom"]
LINE = re.compile(r'^egress_milter_decision_seconds_(bucket|count|sum)\{(.*)\} (\S+)$')


def parse(path):
    """stage -> {"count", "sum", "buckets": [(le_seconds, cumulative)]} of one scrape."""
    out = defaultdict(lambda: {"count": 0.0, "sum": 0.0, "buckets": {}})
    for line in open(path):
        m = LINE.match(line.strip())
        if not m:
            continue
        kind, labels, value = m.groups()
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        h = out[lab["stage"]]
        if kind == "bucket":
            h["buckets"][float(lab["le"])] = float(value)
        else:
            h[kind] = float(value)
    return out


def diff(before, after):
    d = {}
    # "message" (the sum of the stages of one message) exists from commit
    # "decision_seconds{stage=message}" on; older scrapes lack it.
    for st in STAGES + (["message"] if "message" in after else []):
        a, b = after[st], before[st]
        d[st] = {
            "count": a["count"] - b["count"],
            "sum": a["sum"] - b["sum"],
            "buckets": sorted((le, a["buckets"][le] - b["buckets"].get(le, 0.0)) for le in a["buckets"]),
        }
    return d


def quantile(h, q):
    """(lower, upper) bounds in seconds of the bucket holding quantile q."""
    target = q * h["count"]
    lo = 0.0
    for le, cum in h["buckets"]:
        if cum >= target:
            return lo, le
        lo = le
    return lo, float("inf")


def us(x):
    if x == float("inf"):
        return "inf"
    v = x * 1e6
    return f"{v:.0f}" if v >= 1000 else f"{v:.4g}"


def message_bound(hists, q):
    """Smallest sum of one bucket bound per stage such that the shares of
    observations above each stage's bound add up to at most 1 - q. A message
    whose decision time (the sum of its stages) exceeds that sum has at least
    one stage above its bound, so at most 1 - q of the messages do: the sum
    bounds the message's q-quantile without assuming the stages independent."""
    options = []
    for h in hists:
        n = h["count"] or 1
        options.append([(le, (n - cum) / n) for le, cum in h["buckets"]])
    best = float("inf")

    def walk(i, total, share):
        nonlocal best
        if share > 1 - q + 1e-12 or total >= best:
            return
        if i == len(options):
            best = total
            return
        for le, above in options[i]:
            walk(i + 1, total + le, share + above)

    walk(0, 0.0, 0.0)
    return best


def bucket(b):
    return f"{us(b[0])}–{us(b[1])}"


def med(xs):
    return statistics.median(xs)


rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
groups = defaultdict(list)
for r in rows:
    groups[(r["scenario"], r["milter"], r["placement"])].append(r)


def loads(rs):
    ones = [float(r[k].split()[0]) for r in rs for k in ("load_before", "load_after")]
    return f"{min(ones):.2f}–{max(ones):.2f}"


def per_msg_us(seconds, r):
    """CPU seconds of a run as microseconds per message sent (warm-up included)."""
    return seconds * 1e6 / (r["messages"] + r.get("warmup", 2000))


ORDER = {"egress": 0, "egress-status": 1, "null-rs": 2, "egress-2w": 3}


def other_pct(r):
    """CPU used by everything but this milter and the generator, in % of one CPU."""
    other = r.get("machine_busy_s", 0) - r["milter_cpu_s"] - r.get("generator_cpu_s", 0)
    return 100 * max(other, 0) / r["elapsed_s"]


for scenario, title in [("peak", "Peak, closed loop"), ("latency", "Open loop at a fixed rate")]:
    keys = sorted((k for k in groups if k[0] == scenario), key=lambda k: (k[2], ORDER.get(k[1], 9)))
    if not keys:
        continue
    print(f"\n#### {title}\n")
    print("| placement | milter | runs | msg/s | vs null-rs | p50 us | p99 us | p99.9 us | p99 us per run | client p99 per stage us (mail/rcpt/eoh/eom) | milter CPU us/msg | generator CPU us/msg | others' CPU % | errors | load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        rs = sorted(groups[k], key=lambda r: r["run"])
        base = groups.get((scenario, "null-rs", k[2]))
        tps = med([r["tps"] for r in rs])
        vs = f"{tps / med([r['tps'] for r in base]):.2f}x" if base else "n/a"
        stages = "/".join(f"{med([r['stages'][s]['p99_us'] for r in rs]):.0f}" for s in STAGES)
        per_run = " ".join(f"{r['latency']['p99_us']:.0f}" for r in rs)
        gen = med([per_msg_us(r.get("generator_cpu_s", 0), r) for r in rs])
        print(
            f"| {k[2]} | {k[1]} | {len(rs)} | {tps:.0f} | {vs} | {med([r['latency']['p50_us'] for r in rs]):.0f} | "
            f"{med([r['latency']['p99_us'] for r in rs]):.0f} | {med([r['latency']['p999_us'] for r in rs]):.0f} | "
            f"{per_run} | {stages} | {med([per_msg_us(r['milter_cpu_s'], r) for r in rs]):.1f} | {gen:.1f} | "
            f"{med([other_pct(r) for r in rs]):.0f} | {sum(r['errors'] for r in rs)} | {loads(rs)} |"
        )

# In-daemon decision time, per stage, pooled over the runs of each placement.
for scenario in ["latency", "peak"]:
    keys = sorted(k for k in groups if k[0] == scenario and k[1] == "egress-status")
    if not keys:
        continue
    print(f"\n#### In-daemon decision time, egress-status, {scenario} runs (histogram buckets, µs)\n")
    print("| placement | stage | observations | mean us | p50 in | p99 in | p99.9 in | max in | p99 per run (upper bounds) |")
    # The per-message row gives bounds (see message_bound), not buckets.
    print("|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        per_run = [diff(parse(r["metrics"] + ".before.prom"), parse(r["metrics"] + ".after.prom")) for r in groups[k]]
        mean_msg = 0.0
        pooled_all = []
        for st in STAGES:
            pooled = {"count": sum(d[st]["count"] for d in per_run), "sum": sum(d[st]["sum"] for d in per_run)}
            les = [le for le, _ in per_run[0][st]["buckets"]]
            pooled["buckets"] = [(le, sum(dict(d[st]["buckets"])[le] for d in per_run)) for le in les]
            mean = pooled["sum"] / pooled["count"] if pooled["count"] else 0.0
            mean_msg += mean
            top = max((le for le, c in pooled["buckets"] if c > 0 and (les.index(le) == 0 or
                       c > dict(pooled["buckets"])[les[les.index(le) - 1]])), default=0.0)
            top_lo = les[les.index(top) - 1] if top in les and les.index(top) > 0 else 0.0
            runs = " ".join(us(quantile(d[st], 0.99)[1]) for d in per_run)
            pooled_all.append(pooled)
            print(
                f"| {k[2]} | {st} | {pooled['count']:.0f} | {mean * 1e6:.1f} | {bucket(quantile(pooled, 0.5))} | "
                f"{bucket(quantile(pooled, 0.99))} | {bucket(quantile(pooled, 0.999))} | {bucket((top_lo, top))} | {runs} |"
            )
        print(
            f"| {k[2]} | **per message** (sum of the 4 stages) | | {mean_msg * 1e6:.1f} | | "
            f"**≤ {us(message_bound(pooled_all, 0.99))}** | **≤ {us(message_bound(pooled_all, 0.999))}** | | |"
        )
        if all("message" in d for d in per_run):
            les = [le for le, _ in per_run[0]["message"]["buckets"]]
            pooled = {
                "count": sum(d["message"]["count"] for d in per_run),
                "sum": sum(d["message"]["sum"] for d in per_run),
                "buckets": [(le, sum(dict(d["message"]["buckets"])[le] for d in per_run)) for le in les],
            }
            mean = pooled["sum"] / pooled["count"] if pooled["count"] else 0.0
            runs = " ".join(us(quantile(d["message"], 0.99)[1]) for d in per_run)
            print(
                f"| {k[2]} | **message, measured** (`stage=\"message\"`) | {pooled['count']:.0f} | {mean * 1e6:.1f} | "
                f"{bucket(quantile(pooled, 0.5))} | **{bucket(quantile(pooled, 0.99))}** | {bucket(quantile(pooled, 0.999))} | | {runs} |"
            )
