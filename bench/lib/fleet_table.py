#!/usr/bin/env python3
# Renders the JSON lines of bench/run-fleet-e2e.sh as markdown tables:
# the limit check, Redis round trips (MONITOR), throughput (medians over the
# rounds; ratios to "none" taken within each round, then their median) with
# Redis commands per message (INFO commandstats), and Redis memory per
# identity. Prints warnings for measurements that did not go as planned.
# SPDX-License-Identifier: GPL-3.0-or-later
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
PREFERRED = ["none", "rspamd", "rspamd-unix", "egress", "egress-unix", "rspamd-low", "egress-low"]
warnings = []


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec, suffix=""):
    return "n/a" if value is None else format(value, spec) + suffix


def order(configs):
    configs = set(configs)
    return [c for c in PREFERRED if c in configs] + sorted(configs - set(PREFERRED))


def calls(r):
    """Redis calls of a measurement: net of the idle background if measured."""
    return r.get("redis_calls_net") or r.get("redis_calls") or {}


def per_msg(r, value):
    n = r.get("sent")
    return value / n if value is not None and n else None


meta = next((r for r in rows if r["part"] == "meta"), None)
if meta:
    print(f"rspamd {meta['rspamd']}, redis {meta['redis']}, egress-milter: "
          f"{meta['egress_bin'] if meta['have_egress'] else 'skipped'}; {meta['identities']} SASL users, "
          f"{meta['messages']} messages per measurement, {meta['senders']} x {meta['sessions']} sessions")
    print()

limit = [r for r in rows if r["part"] in ("limit", "limit-parallel")]
if limit:
    print("### Limit check (3 messages an hour per user)")
    print()
    print("| milter | how sent | sent | accepted | refused (stage:code) | expected | Redis commands (all, incl. inside scripts) | reply |")
    print("|---|---|---|---|---|---|---|---|")
    for r in limit:
        how = "one after the other" if r["part"] == "limit" else "all at once"
        ok = r["accepted"] == 3 and r["errors"] == 0
        cs = ", ".join(f"{k} {v}" for k, v in sorted(r.get("redis_calls", {}).items(), key=lambda kv: -kv[1]))
        refused = ", ".join(f"{k} x{v}" for k, v in sorted(r["refused"].items())) or "none"
        text = (r["refusal_texts"] or [""])[0].replace("|", "\\|")
        print(f"| {r['config']} | {how} | {r['sent']} | {r['accepted']} | {refused} | 3 | {cs or 'none'} | {text} |")
        if not r.get("redis_calls"):
            warnings.append(f"limit check {r['config']} ({how}): no Redis command seen: is it using Redis at all?")
        if not ok:
            warnings.append(f"limit check {r['config']} ({how}): {r['accepted']} accepted, expected 3"
                            f"{'; errors: ' + '; '.join(r['error_texts']) if r['errors'] else ''}")
    print()

mon = [r for r in rows if r["part"] == "roundtrips-monitor"]
if mon:
    print("### Redis round trips per message (MONITOR)")
    print()
    print("Commands the milter under test sent (each one a round trip unless pipelined) and the commands its "
          "Lua scripts ran inside Redis, per message sent.")
    print()
    print("| configuration | messages | commands sent by the milter / msg | of which | inside scripts / msg "
          "| other processes / msg |")
    print("|---|---|---|---|---|---|")
    for r in sorted(mon, key=lambda r: order([r["config"]])[0]):
        own_label = r["config"].split("-")[0] if r["config"].startswith("rspamd") else r["config"]
        own = r["by_process"].get(own_label, {})
        others = sum(sum(v.values()) for k, v in r["by_process"].items() if k != own_label)
        n = r["sent"]
        detail = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(own.items(), key=lambda kv: -kv[1]))
        print(f"| {r['config']} | {n} | {sum(own.values()) / n:.2f} | {detail or '-'} "
              f"| {sum(r['inside_scripts'].values()) / n:.2f} | {others / n:.2f} |")
        if sum(own.values()) / n < 0.5:
            warnings.append(f"round trips {r['config']}: {sum(own.values()) / n:.2f} Redis commands per message "
                            f"from the milter: is it using Redis at all (degraded mode)?")
    print()

thr = [r for r in rows if r["part"] == "throughput"]
if thr:
    by = defaultdict(list)
    rounds = defaultdict(dict)
    for r in thr:
        by[r["config"]].append(r)
        rounds[r["round"]][r["config"]] = r

    def ratio(config, key, base="none"):
        out = []
        for cfgs in rounds.values():
            if config in cfgs and base in cfgs:
                a, b = key(cfgs[config]), key(cfgs[base])
                if a is not None and b:
                    out.append(a / b)
        return med(out)

    mps = lambda r: r.get("msgs_per_s")
    p50 = lambda r: r.get("txn_p50_ms")
    ms_per = lambda key: (lambda r: r[key] / r["delivered"] * 1000 if r.get(key) is not None and r.get("delivered") else None)

    print("### Throughput and latency (medians over rounds; ratios within a round)")
    print()
    print("| configuration | rounds | delivered/sent | msg/s | vs none | txn p50 ms | txn p99 ms | p50 vs none "
          "| milter CPU ms/msg | Redis CPU ms/msg | Postfix CPU ms/msg | load CPU ms/msg | load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in order(by):
        rs = by[c]
        first = sorted(float(r["loadavg"].split()[0]) for r in rs if r.get("loadavg"))
        print(f"| {c} | {len(rs)} | {sum(r.get('delivered', 0) for r in rs)}/{sum(r['sent'] for r in rs)} "
              f"| {fmt(med(mps(r) for r in rs), '.0f')} | {fmt(ratio(c, mps), '.2f', 'x')} "
              f"| {fmt(med(p50(r) for r in rs), '.2f')} | {fmt(med(r.get('txn_p99_ms') for r in rs), '.2f')} "
              f"| {fmt(ratio(c, p50), '.2f', 'x')} "
              f"| {fmt(med(ms_per('milter_cpu_s')(r) for r in rs), '.3f')} "
              f"| {fmt(med(ms_per('rediscpu_cpu_s')(r) for r in rs), '.3f')} "
              f"| {fmt(med(ms_per('postfix_cpu_s')(r) for r in rs), '.3f')} "
              f"| {fmt(med(ms_per('gencpu_cpu_s')(r) for r in rs), '.3f')} "
              f"| {f'{first[0]:.2f}-{first[-1]:.2f}' if first else 'n/a'} |")
        for r in rs:
            if r.get("delivered") != r["sent"] or r.get("left_in_queue") or r.get("errors"):
                warnings.append(f"throughput round {r['round']} {c}: delivered {r.get('delivered')} of {r['sent']}, "
                                f"{r.get('left_in_queue')} left in the queue, {r.get('errors')} errors, "
                                f"refused {r.get('refused')}")
    print()

    redis_cfgs = [c for c in order(by) if c != "none"]
    if redis_cfgs:
        print("### Redis commands per message (INFO commandstats, net of the idle background)")
        print()
        print("commandstats counts the commands run inside Lua scripts too: `evalsha` + `eval` are the "
              "round trips of a script-based limiter, the rest (hget, hset, ...) ran inside them "
              "(see the MONITOR table for who sent what).")
        print()
        names = sorted({k for c in redis_cfgs for r in by[c] for k in calls(r)},
                       key=lambda k: -max(per_msg(r, calls(r).get(k, 0)) or 0 for c in redis_cfgs for r in by[c]))
        print("| configuration | all commands / msg | evalsha + eval / msg | " + "".join(f"{k} | " for k in names) +
              "idle background calls/s |")
        print("|---|---|---|" + "---|" * len(names) + "---|")
        for c in redis_cfgs:
            rs = by[c]
            total = med(per_msg(r, sum(calls(r).values())) for r in rs)
            scripts = med(per_msg(r, calls(r).get("evalsha", 0) + calls(r).get("eval", 0)) for r in rs)
            cells = "".join(fmt(med(per_msg(r, calls(r).get(k, 0)) for r in rs), ".2f") + " | " for k in names)
            idle = med(sum(r.get("redis_idle_calls", {}).values()) / r["redis_idle_s"]
                       for r in rs if r.get("redis_idle_s"))
            print(f"| {c} | {fmt(total, '.2f')} | {fmt(scripts, '.2f')} | {cells}{fmt(idle, '.1f')} |")
            if total is not None and total < 0.5:
                warnings.append(f"{c}: {total:.2f} Redis commands per message: is it using Redis at all?")
        print()

mem = [r for r in rows if r["part"] == "memory"]
if mem:
    print("### Redis memory per tracked identity (milter-bench, one message per new identity)")
    print()
    print("| configuration | identities | accepted | Redis used_memory B/identity | of which dataset B/identity "
          "| Redis keys/identity | MEMORY USAGE B/key (sample) | milter RSS B/identity | Redis commands/msg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in mem:
        n = r["identities"]
        rss = (r["rss1"] - r["rss0"]) * 1024 / n if r.get("rss0") is not None and r.get("rss1") is not None else None
        print(f"| {r['config']} | {n} | {(r.get('bench') or {}).get('accepted', 'n/a')} "
              f"| {(r['mem1'] - r['mem0']) / n:.0f} "
              f"| {fmt((r['dataset1'] - r['dataset0']) / n if 'dataset0' in r else None, '.0f')} "
              f"| {(r['keys1'] - r['keys0']) / n:.2f} | {r.get('key_sample', 'n/a')} | {fmt(rss, '.0f')} "
              f"| {fmt(per_msg(r, r.get('redis_calls_total')), '.2f')} |")
        if r["keys1"] - r["keys0"] <= 0:
            warnings.append(f"memory {r['config']}: no new Redis keys: is it using Redis at all?")
        b = r.get("bench") or {}
        if b.get("accepted") != n:
            warnings.append(f"memory {r['config']}: milter-bench accepted {b.get('accepted')} of {n} "
                            f"(tempfail {b.get('tempfail')}, errors {b.get('errors')})")
    print()

for w in warnings:
    print("WARNING: " + w)
