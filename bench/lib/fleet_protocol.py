#!/usr/bin/env python3
# Helper of bench/run-fleet-protocol.sh: the memory backend against the Redis
# backend, milter-bench straight at the milter.
#
#   fleet_protocol.py record FIELDS-JSON [--bench F] [--prom0 F --prom1 F]
#                     [--cmdstats F] [--monitor F]
#       prints one JSON line: FIELDS-JSON, plus milter-bench's report (F of
#       --bench), the difference of two /metrics scrapes (decision time
#       histograms per stage, store decisions and errors), INFO commandstats
#       (calls per command, the harness' own commands left out) and the
#       commands of a Redis MONITOR capture (by origin: sent by a client, or
#       run inside a Lua script).
#   fleet_protocol.py render RESULTS.jsonl
#       the markdown tables.
# SPDX-License-Identifier: GPL-3.0-or-later
import argparse
import json
import re
import statistics
import sys
from collections import defaultdict

STAGES = ["mail", "rcpt", "eoh", "eom", "message"]
# Commands the harness itself sends (redis-cli), never the milter: left out.
HARNESS = {"info", "ping", "dbsize", "flushall", "scan", "monitor", "type", "hlen", "memory", "config",
           "client", "command", "object"}
# What decide.lua runs inside the script (redis.call): used to classify
# commandstats when no MONITOR capture says otherwise.
DECIDE_INSIDE = {"time", "hget", "hset", "pttl", "pexpire"}
SCRIPT_CALLS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall")
PROM = re.compile(r'^egress_milter_([a-z_]+?)(_bucket|_count|_sum|_total)?\{([^}]*)\} (\S+)$')


# ------------------------------------------------------------------ record
def parse_prom(path):
    """decision_seconds histograms and store counters of one /metrics scrape."""
    hist = defaultdict(lambda: {"count": 0.0, "sum": 0.0, "buckets": {}})
    store = {}
    for line in open(path):
        m = PROM.match(line.strip())
        if not m:
            continue
        name, suffix, labels, value = m.groups()
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        v = float(value)
        if name == "decision_seconds":
            h = hist[lab["stage"]]
            if suffix == "_bucket":
                h["buckets"][lab["le"]] = v
            elif suffix == "_count":
                h["count"] = v
            elif suffix == "_sum":
                h["sum"] = v
        elif name == "store_decisions":
            store["decisions_" + lab.get("counters", "?")] = v
    for line in open(path):
        if line.startswith("egress_milter_store_errors_total "):
            store["errors"] = float(line.split()[1])
        elif line.startswith("egress_milter_store_degraded "):
            store["degraded"] = float(line.split()[1])
    return hist, store


def le_key(le):
    return float("inf") if le == "+Inf" else float(le)


def prom_diff(p0, p1):
    h0, s0 = parse_prom(p0)
    h1, s1 = parse_prom(p1)
    hist = {}
    for st in STAGES:
        if st not in h1:
            continue
        a, b = h1[st], h0.get(st, {"count": 0.0, "sum": 0.0, "buckets": {}})
        hist[st] = {
            "count": a["count"] - b["count"],
            "sum_s": a["sum"] - b["sum"],
            # cumulative counts per upper bound (seconds), ascending
            "buckets": sorted([le_key(le), a["buckets"][le] - b["buckets"].get(le, 0.0)] for le in a["buckets"]),
        }
    store = {k: s1[k] - s0.get(k, 0.0) for k in s1 if k != "degraded"}
    if "degraded" in s1:
        store["degraded_at_end"] = s1["degraded"]
    return hist, store


def cmdstats(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("cmdstat_"):
            continue
        name, rest = line[8:].split(":", 1)
        if name.split("|")[0] in HARNESS:
            continue
        fields = dict(kv.split("=") for kv in rest.split(","))
        out[name] = {"calls": int(fields["calls"]), "usec": int(fields["usec"]),
                     "failed": int(fields.get("failed_calls", 0)), "rejected": int(fields.get("rejected_calls", 0))}
    return out


MONITOR_LINE = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?')


def monitor(path):
    """{"client": {cmd: n}, "lua": {cmd: n}} of a MONITOR capture."""
    out = {"client": {}, "lua": {}}
    for line in open(path, errors="replace"):
        m = MONITOR_LINE.match(line)
        if not m:
            continue
        who, cmd, arg = m.group(1), m.group(2).lower(), (m.group(3) or "").lower()
        if cmd in HARNESS:
            continue
        if cmd == "script":
            cmd = "script|" + arg
        side = out["lua" if who == "lua" else "client"]
        side[cmd] = side.get(cmd, 0) + 1
    return out


def record(argv):
    ap = argparse.ArgumentParser(prog="fleet_protocol.py record")
    ap.add_argument("fields")
    ap.add_argument("--bench")
    ap.add_argument("--prom0")
    ap.add_argument("--prom1")
    ap.add_argument("--cmdstats")
    ap.add_argument("--monitor")
    a = ap.parse_args(argv)
    rec = json.loads(a.fields)
    if a.bench:
        try:
            rec["bench"] = json.load(open(a.bench))
        except (OSError, ValueError) as e:
            rec["bench_error"] = str(e)
        b = rec.get("bench")
        if b:
            # Every message the daemon saw: the measured ones and the warm-up.
            rec["sent"] = b["messages"] + rec.get("warmup", 0)
            # Decision stages the client drove per measured message (those
            # the milter negotiated away are not sent, so not counted).
            n = sum(st.get("count", 0) for name, st in b.get("stages", {}).items() if name != "message")
            rec["stages_per_msg"] = n / b["messages"] if b["messages"] else None
    if a.prom0 and a.prom1:
        try:
            rec["decision"], rec["store"] = prom_diff(a.prom0, a.prom1)
        except (OSError, KeyError, ValueError) as e:
            rec["metrics_error"] = str(e)
    if a.cmdstats:
        rec["redis_calls"] = cmdstats(a.cmdstats)
    if a.monitor:
        rec["monitor"] = monitor(a.monitor)
    print(json.dumps(rec, sort_keys=True))


# ------------------------------------------------------------------ render
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{x:,.{nd}f}".replace(",", " ")


def us(seconds):
    if seconds == float("inf"):
        return "∞"
    v = seconds * 1e6
    return f"{v:.0f}" if v >= 10 else f"{v:.3g}"


def pooled(hists):
    """The sum of several histogram differences (same bounds)."""
    if not hists:
        return None
    out = {"count": 0.0, "sum_s": 0.0, "buckets": None}
    for h in hists:
        out["count"] += h["count"]
        out["sum_s"] += h["sum_s"]
        if out["buckets"] is None:
            out["buckets"] = [[le, c] for le, c in h["buckets"]]
        else:
            for b, (le, c) in zip(out["buckets"], h["buckets"]):
                b[1] += c
    return out


def bucket_of(h, q):
    """The bucket (lower, upper] in seconds holding quantile q."""
    if not h or not h["count"]:
        return None
    target = q * h["count"]
    lo = 0.0
    for le, cum in h["buckets"]:
        if cum >= target - 1e-9:
            return lo, le
        lo = le
    return lo, float("inf")


def rng(b):
    if b is None:
        return "–"
    lo, hi = b
    return f"{us(lo)}–{us(hi)}"


def p99_ok(h, limit_s=0.001):
    b = bucket_of(h, 0.99)
    if b is None:
        return "–"
    return "yes" if b[1] <= limit_s else "no"


def render(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    meta = next((r for r in rows if r.get("part") == "meta"), {})
    if meta:
        print(f"Redis {meta.get('redis')} at {meta.get('redis_url')} (store.timeout {meta.get('redis_timeout')}), "
              f"egress-milter {meta.get('egress_bin')} ({meta.get('commit')}), {meta.get('date')}, "
              f"load average at start {meta.get('loadavg')}; "
              f"{meta.get('messages')} messages + {meta.get('warmup')} warm-up per run, "
              f"{meta.get('concurrency')} connections, {meta.get('identities')} identities, "
              f"{meta.get('recipients')} recipient(s), {meta.get('runs')} runs.\n")

    for part, title in [("peak", "Peak, closed loop"), ("latency", "Fixed rate, open loop")]:
        prs = [r for r in rows if r.get("part") == part and "bench" in r]
        if not prs:
            continue
        print(f"### {title} (medians of runs; ratio = median of the per-run redis/memory ratios)\n")
        print("| transport | backend | runs | msg/s | redis/memory | client p50 µs | client p99 µs "
              "| client p99.9 µs | decision mean µs | decision p50 in µs | decision p99 in µs | p99 ≤ 1 ms "
              "| milter CPU µs/msg | redis CPU µs/msg | shared / local decisions per msg | errors |")
        print("|" + "---|" * 16)
        keys = sorted({(r["transport"], r.get("rate") or 0) for r in prs})
        for transport, rate in keys:
            for backend in ("memory", "redis"):
                rs = [r for r in prs if r["transport"] == transport and (r.get("rate") or 0) == rate
                      and r["backend"] == backend]
                if not rs:
                    continue
                ratios = []
                for r in rs:
                    mem = [m for m in prs if m["transport"] == transport and m["run"] == r["run"]
                           and (m.get("rate") or 0) == rate and m["backend"] == "memory"]
                    if mem and mem[0]["bench"]["tps"]:
                        ratios.append(r["bench"]["tps"] / mem[0]["bench"]["tps"])
                h = pooled([r["decision"]["message"] for r in rs if "message" in r.get("decision", {})])
                sent = [r["sent"] for r in rs]
                mcpu = med([r["milter_cpu_s"] * 1e6 / r["sent"] for r in rs if r.get("sent")])
                rcpu = med([r["redis_cpu_s"] * 1e6 / r["sent"] for r in rs if r.get("sent")]) if backend == "redis" else None
                dec = "–"
                if backend == "redis" and all("store" in r for r in rs):
                    sh = sum(r["store"].get("decisions_shared", 0) for r in rs)
                    lo = sum(r["store"].get("decisions_local", 0) for r in rs)
                    dec = f"{sh / sum(sent):.2f} / {lo / sum(sent):.2f}"
                label = transport + (f" @ {rate}/s" if rate else "")
                print(f"| {label} | {backend} | {len(rs)} | {fmt(med([r['bench']['tps'] for r in rs]))} "
                      f"| {fmt(med(ratios), 2) + 'x' if backend == 'redis' and ratios else '1.00x' if backend == 'memory' else '–'} "
                      f"| {fmt(med([r['bench']['latency']['p50_us'] for r in rs]))} "
                      f"| {fmt(med([r['bench']['latency']['p99_us'] for r in rs]))} "
                      f"| {fmt(med([r['bench']['latency']['p999_us'] for r in rs]))} "
                      f"| {fmt(h['sum_s'] / h['count'] * 1e6, 1) if h and h['count'] else '–'} "
                      f"| {rng(bucket_of(h, 0.5))} | {rng(bucket_of(h, 0.99))} | {p99_ok(h)} "
                      f"| {fmt(mcpu, 1)} | {fmt(rcpu, 1)} | {dec} "
                      f"| {sum(r['bench']['errors'] for r in rs)} |")
        print()
        # Per stage, pooled over runs.
        print(f"Decision time in the daemon per stage ({title.lower()}, all runs pooled; "
              "egress_milter_decision_seconds, buckets 1, 2.5, 5, 10, 25, 50, 100, 200, 500 µs, 1, 10, 100 ms):\n")
        print("| transport | backend | stage | decisions | mean µs | p50 in µs | p99 in µs | p99.9 in µs | "
              "p99 of each run ≤ µs | client p99 µs (median of runs) |")
        print("|" + "---|" * 10)
        for transport, rate in keys:
            for backend in ("memory", "redis"):
                rs = [r for r in prs if r["transport"] == transport and (r.get("rate") or 0) == rate
                      and r["backend"] == backend]
                if not rs:
                    continue
                for st in STAGES:
                    hs = [r["decision"][st] for r in rs if st in r.get("decision", {})]
                    h = pooled(hs)
                    if not h or not h["count"]:
                        continue
                    per_run = " ".join(us(bucket_of(x, 0.99)[1]) for x in hs if x["count"])
                    client = med([r["bench"]["stages"].get(st, {}).get("p99_us") for r in rs]) if st != "message" \
                        else med([r["bench"]["latency"]["p99_us"] for r in rs])
                    label = transport + (f" @ {rate}/s" if rate else "")
                    print(f"| {label} | {backend} | {'**message**' if st == 'message' else st} | {fmt(h['count'])} "
                          f"| {h['sum_s'] / h['count'] * 1e6:.1f} | {rng(bucket_of(h, 0.5))} | {rng(bucket_of(h, 0.99))} "
                          f"| {rng(bucket_of(h, 0.999))} | {per_run} | {fmt(client)} |")
        print()

    # Redis commands per message, peak runs of the Redis backend.
    prs = [r for r in rows if r.get("part") == "peak" and r.get("backend") == "redis" and "redis_calls" in r]
    idle = next((r for r in rows if r.get("part") == "idle"), None)
    mon = next((r for r in rows if r.get("part") == "roundtrips"), None)
    inside = set(DECIDE_INSIDE)
    if mon:
        inside = {c for c, n in mon["monitor"]["lua"].items()} - set(mon["monitor"]["client"])
    if prs:
        print("### Redis commands per message and per decision stage (INFO commandstats, peak runs, "
              "CONFIG RESETSTAT before each; warm-up messages included in the count of messages)\n")
        print("| transport | runs | messages sent | stages/msg | EVALSHA+EVAL /msg | EVALSHA+EVAL /stage "
              "| other commands sent /msg (lock sync etc.) | of which background (idle rate × run time) "
              "| commands inside scripts /msg | all commands /msg |")
        print("|" + "---|" * 10)
        for transport in sorted({r["transport"] for r in prs}):
            rs = [r for r in prs if r["transport"] == transport]
            tot = defaultdict(float)
            for r in rs:
                for c, v in r["redis_calls"].items():
                    tot[c] += v["calls"]
            sent = sum(r["sent"] for r in rs)
            stages = med([r["stages_per_msg"] for r in rs])
            scripts = sum(v for c, v in tot.items() if c in SCRIPT_CALLS)
            nested = sum(v for c, v in tot.items() if c in inside)
            other = sum(v for c, v in tot.items() if c not in SCRIPT_CALLS and c not in inside)
            background = 0.0
            if idle and idle.get("idle_s"):
                rate = sum(v["calls"] for c, v in idle["redis_calls"].items()) / idle["idle_s"]
                background = rate * sum(r["wall_s"] for r in rs)
            print(f"| {transport} | {len(rs)} | {fmt(sent)} | {fmt(stages, 2)} | {scripts / sent:.3f} "
                  f"| {scripts / sent / stages:.3f} | {other / sent:.4f} | {background / sent:.4f} "
                  f"| {nested / sent:.3f} | {sum(tot.values()) / sent:.3f} |")
        print()
        print("Per command (all peak runs of the Redis backend pooled):\n")
        print("| command | calls / msg | µs per call (Redis) | failed | sent by |")
        print("|---|---|---|---|---|")
        tot = defaultdict(lambda: [0, 0, 0])
        sent = sum(r["sent"] for r in prs)
        for r in prs:
            for c, v in r["redis_calls"].items():
                tot[c][0] += v["calls"]
                tot[c][1] += v["usec"]
                tot[c][2] += v["failed"]
        for c, (calls, usec, failed) in sorted(tot.items(), key=lambda kv: -kv[1][0]):
            who = "the milter (script call)" if c in SCRIPT_CALLS else "inside the script" if c in inside \
                else "the milter"
            if mon and c in mon["monitor"]["client"] and c in mon["monitor"]["lua"]:
                who = "both"
            print(f"| {c} | {calls / sent:.4f} | {usec / calls:.1f} | {failed} | {who} |")
        print()
        if idle:
            calls = ", ".join(f"{c} {v['calls'] / idle['idle_s']:.1f}/s" for c, v in sorted(idle["redis_calls"].items()))
            print(f"With no mail ({idle['idle_s']:.1f} s, both daemons up): {calls or 'nothing'}.\n")
    if mon:
        n = mon["sent"]
        print(f"### Round trips, by Redis MONITOR ({n} messages, not timed, warm-up 0)\n")
        print("| origin | command | count | per message |")
        print("|---|---|---|---|")
        for side, label in (("client", "sent by the milter"), ("lua", "inside scripts")):
            for c, k in sorted(mon["monitor"][side].items(), key=lambda kv: -kv[1]):
                print(f"| {label} | {c} | {k} | {k / n:.3f} |")
        sent_total = sum(mon["monitor"]["client"].values())
        print(f"\nCommands sent by the milter: {sent_total / n:.3f} per message over {mon.get('stages_per_msg', 0):.0f} "
              f"stages ({sent_total / n / (mon.get('stages_per_msg') or 1):.3f} per stage); "
              f"store decisions (metrics) {mon.get('store', {}).get('decisions_shared', 0) / n:.3f} per message.\n")

    mems = [r for r in rows if r.get("part") == "memory"]
    if mems:
        print("### Redis memory per tracked identity\n")
        print("| identities | used_memory before → after | B / identity | used_memory_dataset B / identity "
              "| keys before → after | keys / identity | identity keys | domain keys "
              "| MEMORY USAGE B per identity key (mean of sample) | MEMORY USAGE B per domain key | encoding, fields, PTTL of a sample |")
        print("|" + "---|" * 11)
        for r in mems:
            n = r["identities"]
            print(f"| {fmt(n)} | {fmt(r['mem0'])} → {fmt(r['mem1'])} | {(r['mem1'] - r['mem0']) / n:.0f} "
                  f"| {(r['dataset1'] - r['dataset0']) / n:.0f} | {r['keys0']} → {r['keys1']} "
                  f"| {(r['keys1'] - r['keys0']) / n:.3f} | {r.get('identity_keys')} | {r.get('domain_keys')} "
                  f"| {fmt(r.get('usage_identity_key'))} | {fmt(r.get('usage_domain_key'))} "
                  f"| {r.get('sample_encoding')}, {r.get('sample_fields')} fields, {r.get('sample_pttl_ms')} ms |")
        print()


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "record":
        record(sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "render":
        render(sys.argv[2])
    else:
        print(__doc__ or "usage: fleet_protocol.py record ... | render RESULTS.jsonl", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
