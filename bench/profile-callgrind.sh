#!/bin/sh
# Profiles egress-milter under valgrind's callgrind (perf may be missing on
# shared machines): (a) normal traffic with the bench config, (b) a small lock
# storm with the lock-storm config. Prints the top functions by inclusive cost.
#
# Usage: bench/profile-callgrind.sh   (needs valgrind; MESSAGES=5000 STORM_IDS=1000)
# SPDX-License-Identifier: GPL-3.0-or-later
. "$(dirname "$0")/lib/common.sh"

WORK=${WORK:-$(mktemp -d /tmp/egress-prof.XXXXXX)}
MESSAGES=${MESSAGES:-5000}
STORM_IDS=${STORM_IDS:-1000}
SOCKET=inet:127.0.0.1:17055
mkdir -p "$WORK"
echo "scratch directory: $WORK" >&2
[ "${NO_BUILD:-0}" = 1 ] || build_all

profile() { # NAME CONFIG MILTER-BENCH-ARGS...
    label=$1 config=$2; shift 2
    rm -f "$WORK/locks.toml"
    egress_config "$ROOT/bench/configs/$config.toml" "$WORK/$label.toml" "$SOCKET"
    start prof valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.$label" \
        "$BIN/egress-milter" -c "$WORK/$label.toml" run
    for _ in $(seq 1 100); do
        timeout 30 "$BIN/milter-bench" --socket "$SOCKET" --messages 1 --warmup 0 --concurrency 1 \
            --strict --json >/dev/null 2>&1 && break
        sleep 0.5
    done
    timeout 900 "$BIN/milter-bench" --socket "$SOCKET" --warmup 0 --max-time 800 --io-timeout 60 "$@" >&2
    pid=$PID_prof
    kill "$pid"
    # valgrind writes its profile on a clean exit: give it time.
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "### callgrind: $label (inclusive, top 40)"
    callgrind_annotate --inclusive=yes "$WORK/callgrind.$label" 2>/dev/null | head -60 | cut -c1-220
}

profile normal bench --messages "$MESSAGES" --concurrency 8
profile storm lockstorm --messages $((STORM_IDS * 7)) --distribution sequential --burst 7 \
    --per-connection 7 --identities "$STORM_IDS" --concurrency 8 --identity-prefix storm
