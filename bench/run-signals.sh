#!/bin/sh
# The cost of the signals (docs/detection.md): egress-milter with the
# volume rules only (bench/configs/bench.toml) against the same with the
# shipped signal rules added, logging only (bench/configs/bench-signals.toml),
# side by side over unix sockets, runs interleaved. Every recipient is new
# (--fresh-recipients, a blast to a bought list), so the distinct sets grow:
# "typical" spreads the messages over 10 000 identities, "full sets" over
# 100, whose sets reach their counts (150 and 600 domains) and are scanned
# whole at every recipient. Prints a markdown table of medians.
#
# Usage: bench/run-signals.sh            (RUNS=5 MESSAGES=30000 CONCURRENCY=32)
# SPDX-License-Identifier: GPL-3.0-or-later
. "$(dirname "$0")/lib/common.sh"

RUNS=${RUNS:-5}
MESSAGES=${MESSAGES:-30000}
CONCURRENCY=${CONCURRENCY:-32}
WORK=${WORK:-$(mktemp -d /tmp/egress-bench.XXXXXX)}
RESULTS=$WORK/results.jsonl
mkdir -p "$WORK/volume" "$WORK/signals"
: >"$RESULTS"
echo "scratch directory: $WORK" >&2

[ "${NO_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release -q -p egress-milter -p milter-bench)

egress_config "$ROOT/bench/configs/bench.toml" "$WORK/volume/egress.toml" "unix:$WORK/volume.sock"
egress_config "$ROOT/bench/configs/bench-signals.toml" "$WORK/signals/egress.toml" "unix:$WORK/signals.sock"
start volume "$BIN/egress-milter" -c "$WORK/volume/egress.toml" run
start signals "$BIN/egress-milter" -c "$WORK/signals/egress.toml" run
for m in volume signals; do wait_ready "unix:$WORK/$m.sock"; done

bench() { # SCENARIO MILTER RUN ARGS...
    scenario=$1 milter=$2 run=$3; shift 3
    timeout 300 "$BIN/milter-bench" --socket "unix:$WORK/$milter.sock" --json \
        --concurrency "$CONCURRENCY" --max-time 240 --fresh-recipients --recipients 2 "$@" |
        jq -c --arg s "$scenario" --arg m "$milter" --argjson r "$run" \
            '. + {scenario: $s, milter: $m, transport: "unix", run: $r}' >>"$RESULTS" ||
        echo "run failed: $scenario $milter $run" >&2
}

for run in $(seq 1 "$RUNS"); do
    for m in volume signals; do
        bench typical "$m" "$run" --messages "$MESSAGES" --identities 10000 --label "$m"
        bench full-sets "$m" "$run" --messages "$MESSAGES" --identities 100 --identity-prefix "full$run-" --label "$m"
    done
done
rss_volume=$(rss_kb "$PID_volume") rss_signals=$(rss_kb "$PID_signals")
cleanup

jq -rs --arg rv "$rss_volume" --arg rs "$rss_signals" '
  def median: sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
  group_by(.scenario) | map(
    . as $g | ($g | map(select(.milter=="volume") | .tps) | median) as $base |
    ["volume", "signals"] | map(. as $m |
      ($g | map(select(.milter==$m))) as $rs |
      "| \($g[0].scenario) | \($m) | \($rs | length) | \($rs | map(.tps) | median | floor) | \((($rs | map(.tps) | median) / $base * 100 | floor) / 100) | \($rs | map(.latency.p50_us) | median) | \($rs | map(.latency.p99_us) | median) |")
  ) | flatten |
  (["| scenario | rules | runs | msg/s (median) | ratio to volume | p50 µs | p99 µs |", "| --- | --- | --- | --- | --- | --- | --- |"] + .) | .[]
' "$RESULTS"
echo
echo "RSS at the end: volume ${rss_volume} kB, signals ${rss_signals} kB"
