#!/bin/sh
# Memory at scale: egress-milter (release build, real daemon) fed 10k, 100k
# and 1M distinct identities (auth source, one message each), RSS from
# /proc/PID/status; then 1M new identities past a 100k cap (RSS must stay
# flat); then how long idle identities take to be evicted (short windows,
# eviction every 5 s). Prints markdown tables.
#
# Usage: bench/run-memory.sh   (TOTAL=1000000 to change the largest step)
# SPDX-License-Identifier: GPL-3.0-or-later
. "$(dirname "$0")/lib/common.sh"

WORK=${WORK:-$(mktemp -d /tmp/egress-mem.XXXXXX)}
TOTAL=${TOTAL:-1000000}
SOCKET=inet:127.0.0.1:17035
mkdir -p "$WORK"
echo "scratch directory: $WORK" >&2
[ "${NO_BUILD:-0}" = 1 ] || build_all

# feed OFFSET COUNT: COUNT new identities, numbered from OFFSET, one message each.
feed() {
    timeout 900 "$BIN/milter-bench" --socket "$SOCKET" --json --distribution sequential \
        --identity-offset "$1" --identities 100000000 --messages "$2" --warmup 0 \
        --concurrency 32 --per-connection 50 --max-time 800 >>"$WORK/feed.jsonl"
}

daemon() { # CONFIG
    egress_config "$ROOT/bench/configs/$1.toml" "$WORK/$1.toml" "$SOCKET"
    start egress "$BIN/egress-milter" -c "$WORK/$1.toml" run
    wait_ready "$SOCKET"
}

# 1. RSS against identities tracked.
daemon memory
base=$(rss_kb "$PID_egress")
echo "| identities tracked | VmRSS MiB | growth over baseline MiB | bytes per identity |"
echo "|---|---|---|---|"
echo "| 0 (after 1 probe message) | $((base / 1024)) | 0 | - |"
done_ids=0
for step in 10000 100000 $TOTAL; do
    feed "$done_ids" $((step - done_ids))
    done_ids=$step
    sleep 1
    rss=$(rss_kb "$PID_egress")
    echo "| $step | $((rss / 1024)) | $(((rss - base) / 1024)) | $(((rss - base) * 1024 / step)) |"
done
stop_pid "$PID_egress"

# 2. A flood of new identities past a 100k cap.
echo
echo "| new identities sent (cap 100k) | VmRSS MiB |"
echo "|---|---|"
daemon memory-cap
echo "| 0 | $(($(rss_kb "$PID_egress") / 1024)) |"
sent=0
for step in 100000 200000 400000 700000 1100000; do
    feed $((50000000 + sent)) $((step - sent))
    sent=$step
    echo "| $sent | $(($(rss_kb "$PID_egress") / 1024)) |"
done
grep -m1 "identity cap reached" "$WORK/egress.log" >&2 || true
stop_pid "$PID_egress"

# 3. Eviction: 100k identities, one message each, windows of 10 s.
echo
daemon memory-evict
feed 0 100000
ended=$(date +%s.%N)
rss_full=$(rss_kb "$PID_egress")
echo "| seconds after traffic | VmRSS MiB | last eviction log line |"
echo "|---|---|---|"
for i in $(seq 1 30); do
    sleep 1
    line=$(grep "idle counters evicted" "$WORK/egress.log" | tail -1 | sed 's/.*idle counters evicted//')
    now=$(date +%s.%N)
    printf '| %.0f | %d | %s |\n' "$(echo "$now - $ended" | bc)" $(($(rss_kb "$PID_egress") / 1024)) "$line"
    case "$line" in *"tracked=0"*) [ "$i" -ge 12 ] && break ;; esac
done
echo "RSS right after traffic: $((rss_full / 1024)) MiB" >&2
stop_pid "$PID_egress"
