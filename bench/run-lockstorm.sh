#!/bin/sh
# Lock storm: 10k identities each send 7 messages back to back on one
# connection (lock rule: 5 attempts a minute), at STORM_RATE msg/s, so all
# 10k are locked within a minute, while other identities send at OTHERS_RATE
# msg/s. Measures the lock list's growth (entries, size) and the decision
# latency of the other identities in three phases on one daemon:
#   quiet  the other identities alone;
#   busy   plus the same extra traffic, spread so that nothing is locked
#          (7 messages per identity, 5 s apart: the lock bucket refills);
#   storm  plus the lock storm.
#
# Usage: bench/run-lockstorm.sh   (STORM_RATE=2000 OTHERS_RATE=1000 RUNS=3)
# SPDX-License-Identifier: GPL-3.0-or-later
. "$(dirname "$0")/lib/common.sh"

WORK=${WORK:-$(mktemp -d /tmp/egress-storm.XXXXXX)}
STORM_RATE=${STORM_RATE:-2000}
OTHERS_RATE=${OTHERS_RATE:-1000}
RUNS=${RUNS:-3}
SOCKET=inet:127.0.0.1:17045
mkdir -p "$WORK"
echo "scratch directory: $WORK" >&2
[ "${NO_BUILD:-0}" = 1 ] || build_all
storm_msgs=70000
others_msgs=$((OTHERS_RATE * storm_msgs / STORM_RATE))

others() { # LABEL RUN
    timeout 300 "$BIN/milter-bench" --socket "$SOCKET" --json --identity-prefix "other$2-$1-" \
        --identities 1000000 --messages "$others_msgs" --warmup 500 --rate "$OTHERS_RATE" \
        --concurrency 16 --max-time 200 --label "$1" |
        jq -c --argjson r "$2" '. + {run: $r}' >>"$WORK/others.jsonl"
}

# extra PHASE RUN BURST: the extra traffic, sampled every second.
extra() {
    timeout 300 "$BIN/milter-bench" --socket "$SOCKET" --json --identity-prefix "$1$2-" \
        --distribution sequential --burst "$3" --per-connection 7 --identities 10000 \
        --messages "$storm_msgs" --warmup 0 --rate "$STORM_RATE" --concurrency 16 --max-time 200 \
        --label "$1" >"$WORK/$1-$2.json" &
    gen=$!
    others "$1" "$2" &
    oth=$!
    t0=$(date +%s.%N)
    : >"$WORK/growth-$1-$2.tsv"
    while kill -0 "$gen" 2>/dev/null || kill -0 "$oth" 2>/dev/null; do
        n=$(grep -c '^\[\[lock\]\]' "$WORK/locks.toml" 2>/dev/null || true)
        size=$(stat -c %s "$WORK/locks.toml" 2>/dev/null || echo 0)
        printf '%.1f\t%s\t%s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "${n:-0}" "$size" >>"$WORK/growth-$1-$2.tsv"
        sleep 1
    done
    wait "$gen" "$oth" || true
    sleep 3
    n=$(grep -c '^\[\[lock\]\]' "$WORK/locks.toml" 2>/dev/null || true)
    printf 'final\t%s\t%s\n' "${n:-0}" "$(stat -c %s "$WORK/locks.toml" 2>/dev/null || echo 0)" >>"$WORK/growth-$1-$2.tsv"
}

: >"$WORK/others.jsonl"
for run in $(seq 1 "$RUNS"); do
    rm -f "$WORK/locks.toml"
    egress_config "$ROOT/bench/configs/lockstorm.toml" "$WORK/lockstorm.toml" "$SOCKET"
    start egress "$BIN/egress-milter" -c "$WORK/lockstorm.toml" run
    wait_ready "$SOCKET"
    others quiet "$run"
    extra busy "$run" 1
    extra storm "$run" 7
    stop_pid "$PID_egress"
done

echo "### lock storm: decision latency of other identities (${OTHERS_RATE} msg/s)"
echo
echo "| run | quiet p50 us | quiet p99 us | busy p99 us | storm p50 us | storm p99 us | storm/quiet p99 | storm/busy p99 | others refused |"
echo "|---|---|---|---|---|---|---|---|---|"
jq -rs 'group_by(.run)[] | (map(select(.label=="quiet"))[0]) as $q | (map(select(.label=="busy"))[0]) as $b
  | (map(select(.label=="storm"))[0]) as $s |
  "| \($q.run) | \($q.latency.p50_us) | \($q.latency.p99_us) | \($b.latency.p99_us) | \($s.latency.p50_us) | \($s.latency.p99_us) | \(($s.latency.p99_us / $q.latency.p99_us * 100 | round) / 100)x | \(($s.latency.p99_us / $b.latency.p99_us * 100 | round) / 100)x | \($q.tempfail + $q.reject + $b.tempfail + $b.reject + $s.tempfail + $s.reject) |"' \
    "$WORK/others.jsonl"
echo
echo "### extra traffic and lock list growth"
echo
for run in $(seq 1 "$RUNS"); do
    for phase in busy storm; do
        jq -r '"run '"$run"' \(.label): \(.messages) messages in \(.elapsed_s * 10 | round / 10) s: accepted \(.accepted), rejected \(.reject), tempfail \(.tempfail), errors \(.errors); p99 \(.latency.p99_us) us"' "$WORK/$phase-$run.json"
    done
    echo "run $run storm: seconds, [[lock]] entries, bytes (every 5 s):"
    awk 'NR % 5 == 1 || /final/' "$WORK/growth-storm-$run.tsv" | tr '\t' ' ' | paste -sd ';' -
done
