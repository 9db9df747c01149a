#!/bin/sh
# Decision latency at half of peak, with the milter and the load generator
# on separate CPUs or sharing both, and the time the daemon itself spends
# deciding (from its egress_milter_decision_seconds histograms).
#
# Milters (TCP, Nagle on in the client, as in bench/run-protocol.sh):
#   egress         bench/configs/bench.toml, no status listener
#   egress-status  the same plus [status] (metrics and activity registry on)
#   null-rs        the indymilter null milter
#   egress-2w      egress, pinned only, with TOKIO_WORKER_THREADS=2 (two
#                  runtime workers on one CPU, as a daemon gets when its
#                  affinity is narrowed after it started)
# each started twice: "pinned" under `taskset -c $MILTER_CPU` (the generator
# then runs under `taskset -c $GEN_CPU`) and "shared" without affinity (both
# float over all CPUs, as in bench/run-protocol.sh). A tokio runtime sizes its
# worker pool from the CPUs it may run on (available_parallelism, which reads
# the affinity mask), so a pinned milter runs 1 worker thread, a shared one
# one per CPU; TOKIO_WORKER_THREADS, if set in the environment, overrides
# both. milter-bench runs 1 worker thread (--threads) either way.
#
# 1. Peak, closed loop: egress and null-rs, pinned and shared, PEAK_RUNS
#    rounds (tells what fraction of the peak RATE is).
# 2. Latency at RATE msg/s, open loop: all seven, RUNS rounds, interleaved
#    with the order rotated each round. Around every run: the load average,
#    the milter's CPU time (/proc/PID/stat), the generator's (/usr/bin/time),
#    the whole machine's busy and steal time (/proc/stat; busy minus milter
#    minus generator = everything else that ran) and, for egress-status,
#    /metrics before and after.
# bench/lib/latency_table.py renders the medians.
#
# Usage: bench/run-latency.sh
#   RUNS=5 RATE=5462 (half of the inet peak of docs/benchmarks.md section 1)
#   PEAK_RUNS=3 MESSAGES=30000 CONCURRENCY=32 IDENTITIES=10000 WARMUP=2000
#   MILTER_CPU=0 GEN_CPU=1 NO_BUILD=1 WORK=dir
# Ports: 17310-17316 (milters), 17320-17321 (status listeners).
# SPDX-License-Identifier: GPL-3.0-or-later
. "$(dirname "$0")/lib/common.sh"

RUNS=${RUNS:-5}
PEAK_RUNS=${PEAK_RUNS:-3}
RATE=${RATE:-5462}
MESSAGES=${MESSAGES:-30000}
CONCURRENCY=${CONCURRENCY:-32}
IDENTITIES=${IDENTITIES:-10000}
WARMUP=${WARMUP:-2000}
MILTER_CPU=${MILTER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
WORK=${WORK:-$(mktemp -d /tmp/egress-latency.XXXXXX)}
RESULTS=$WORK/results.jsonl
mkdir -p "$WORK"
: >"$RESULTS"
echo "scratch directory: $WORK" >&2
[ "${NO_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release -q -p egress-milter -p milter-bench)
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time (Debian package time) is needed" >&2; exit 1; }

# placement prefix: the command prefix that places a process.
milter_prefix() { [ "$1" = pinned ] && echo "taskset -c $MILTER_CPU" || true; }
gen_prefix() { [ "$1" = pinned ] && echo "taskset -c $GEN_CPU" || true; }

port_of() { # MILTER PLACEMENT
    case "$1/$2" in
        egress/pinned) echo 17310 ;; egress/shared) echo 17311 ;;
        egress-status/pinned) echo 17312 ;; egress-status/shared) echo 17313 ;;
        null-rs/pinned) echo 17314 ;; null-rs/shared) echo 17315 ;;
        egress-2w/pinned) echo 17316 ;;
    esac
}
status_of() { # PLACEMENT: status listener of egress-status
    [ "$1" = pinned ] && echo 127.0.0.1:17320 || echo 127.0.0.1:17321
}

for p in pinned shared; do
    d=$WORK/$p
    mkdir -p "$d/egress" "$d/egress-status"
    egress_config "$ROOT/bench/configs/bench.toml" "$d/egress/egress.toml" "inet:127.0.0.1:$(port_of egress $p)"
    egress_config "$ROOT/bench/configs/bench.toml" "$d/egress-status/egress.toml" \
        "inet:127.0.0.1:$(port_of egress-status $p)"
    printf '\n[status]\nlisten = "%s"\n' "$(status_of $p)" >>"$d/egress-status/egress.toml"
    # shellcheck disable=SC2046
    start "egress_$p" $(milter_prefix $p) "$BIN/egress-milter" -c "$d/egress/egress.toml" run
    # shellcheck disable=SC2046
    start "egress_status_$p" $(milter_prefix $p) "$BIN/egress-milter" -c "$d/egress-status/egress.toml" run
    # shellcheck disable=SC2046
    start "nullrs_$p" $(milter_prefix $p) "$BIN/null-milter" --socket "inet:127.0.0.1:$(port_of null-rs $p)"
done
mkdir -p "$WORK/pinned/egress-2w"
egress_config "$ROOT/bench/configs/bench.toml" "$WORK/pinned/egress-2w/egress.toml" "inet:127.0.0.1:$(port_of egress-2w pinned)"
start egress_2w_pinned env TOKIO_WORKER_THREADS=2 taskset -c "$MILTER_CPU" "$BIN/egress-milter" \
    -c "$WORK/pinned/egress-2w/egress.toml" run
pid_of() { # MILTER PLACEMENT
    case $1 in egress) eval "echo \$PID_egress_$2" ;; egress-status) eval "echo \$PID_egress_status_$2" ;;
        null-rs) eval "echo \$PID_nullrs_$2" ;; egress-2w) eval "echo \$PID_egress_2w_$2" ;; esac
}
for p in pinned shared; do
    for m in egress egress-status null-rs egress-2w; do
        [ "$m/$p" = egress-2w/shared ] && continue
        wait_ready "inet:127.0.0.1:$(port_of $m $p)"
        pid=$(pid_of $m $p)
        echo "$m/$p: pid $pid, affinity $(taskset -cp "$pid" | sed 's/.*: //'), threads:" \
            "$(cat /proc/"$pid"/task/*/comm | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}')" >&2
    done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Busy (user, nice, system, irq, softirq) and steal ticks of the whole machine.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
steal_ticks() { awk '/^cpu / {print $9}' /proc/stat; }
scrape() { curl -sf --max-time 5 "http://$1/metrics" >"$2" || echo "scrape of $1 failed" >&2; }

# bench SCENARIO MILTER PLACEMENT RUN ARGS...: one milter-bench run, appended to results.
bench() {
    scenario=$1 milter=$2 place=$3 run=$4; shift 4
    pid=$(pid_of "$milter" "$place")
    tag=$WORK/$scenario-$milter-$place-$run
    if [ "$milter" = egress-status ]; then scrape "$(status_of "$place")" "$tag.before.prom"; fi
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    c0=$(cpu_ticks "$pid") b0=$(busy_ticks) s0=$(steal_ticks)
    # shellcheck disable=SC2046
    timeout 300 /usr/bin/time -f '%U %S' -o "$tag.gen-cpu" $(gen_prefix "$place") "$BIN/milter-bench" \
        --socket "inet:127.0.0.1:$(port_of "$milter" "$place")" --json --concurrency "$CONCURRENCY" \
        --identities "$IDENTITIES" --warmup "$WARMUP" --max-time 240 "$@" >"$tag.json" ||
        echo "run failed: $scenario $milter $place $run" >&2
    c1=$(cpu_ticks "$pid") b1=$(busy_ticks) s1=$(steal_ticks)
    load1=$(cut -d' ' -f1-3 /proc/loadavg)
    gen=$(tail -n 1 "$tag.gen-cpu" 2>/dev/null | awk '{print $1 + $2}')
    if [ "$milter" = egress-status ]; then scrape "$(status_of "$place")" "$tag.after.prom"; fi
    [ -s "$tag.json" ] || return 0
    jq -c --arg s "$scenario" --arg m "$milter" --arg p "$place" --argjson r "$run" \
        --arg l0 "$load" --arg l1 "$load1" --argjson cpu "$((c1 - c0))" --arg tag "$tag" \
        --argjson hz "$(getconf CLK_TCK)" --argjson busy "$((b1 - b0))" --argjson steal "$((s1 - s0))" \
        --argjson gen "${gen:-0}" --argjson warmup "$WARMUP" \
        '. + {scenario: $s, milter: $m, placement: $p, run: $r, warmup: $warmup, load_before: $l0, load_after: $l1,
              milter_cpu_s: ($cpu / $hz), generator_cpu_s: $gen, machine_busy_s: ($busy / $hz),
              steal_s: ($steal / $hz), metrics: (if $m == "egress-status" then $tag else null end)}' \
        "$tag.json" >>"$RESULTS"
}

# rotate N WORDS...: the words rotated left by N.
rotate() {
    n=$1; shift
    i=0
    while [ "$i" -lt "$n" ]; do first=$1; shift; set -- "$@" "$first"; i=$((i + 1)); done
    echo "$@"
}

echo "start $(date -u '+%Y-%m-%d %H:%M:%S') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# 1. Peak, closed loop.
for run in $(seq 1 "$PEAK_RUNS"); do
    for c in $(rotate $((run - 1)) egress/pinned null-rs/pinned egress/shared null-rs/shared); do
        bench peak "${c%/*}" "${c#*/}" "$run" --messages "$MESSAGES" --label "${c%/*}"
    done
done
# 2. Latency at RATE, open loop (RATE x 5 measured messages after WARMUP).
for run in $(seq 1 "$RUNS"); do
    for c in $(rotate $(((run - 1) % 7)) egress/pinned egress-status/pinned null-rs/pinned \
        egress/shared egress-status/shared null-rs/shared egress-2w/pinned); do
        bench latency "${c%/*}" "${c#*/}" "$run" --messages $((RATE * 5)) --rate "$RATE" --label "${c%/*}"
    done
done
echo "end $(date -u '+%Y-%m-%d %H:%M:%S') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

cleanup
python3 "$ROOT/bench/lib/latency_table.py" "$RESULTS"
