#!/bin/sh
# Protocol benchmark: egress-milter against the indymilter and libmilter null
# milters and the postfix_ratelimit peer, side by side, over TCP and unix
# sockets; then the cost of refusals and the latency at half of peak.
# Prints markdown tables; raw JSON lines go to $WORK/results.jsonl.
#
# Usage: bench/run-protocol.sh            (RUNS=5 MESSAGES=30000 CONCURRENCY=32 by default)
# SPDX-License-Identifier: GPL-3.0-or-later
. "$(dirname "$0")/lib/common.sh"

RUNS=${RUNS:-5}
MESSAGES=${MESSAGES:-30000}
CONCURRENCY=${CONCURRENCY:-32}
IDENTITIES=${IDENTITIES:-10000}
WORK=${WORK:-$(mktemp -d /tmp/egress-bench.XXXXXX)}
RESULTS=$WORK/results.jsonl
mkdir -p "$WORK"
: >"$RESULTS"
echo "scratch directory: $WORK" >&2

[ "${NO_BUILD:-0}" = 1 ] || build_all

# Milters: name, TCP socket (Postfix notation), unix socket.
egress_config "$ROOT/bench/configs/bench.toml" "$WORK/egress-inet.toml" "inet:127.0.0.1:17025"
egress_config "$ROOT/bench/configs/bench.toml" "$WORK/egress-unix.toml" "unix:$WORK/egress.sock"
# The refusal-cost run needs one locked identity.
"$BIN/egress-milter" -c "$WORK/egress-inet.toml" locks add locked@bench.example --reason benchmark >/dev/null
cat >"$WORK/peer-inet.conf" <<CONF
db_file = "$WORK/peer.db"
socket = "inet:127.0.0.1:17028"
interval = 60
limit = 1000000000
max_recipients = 100
count_recipients = true
use_sasl = true
CONF
sed "s#^socket = .*#socket = \"unix:$WORK/peer.sock\"#" "$WORK/peer-inet.conf" >"$WORK/peer-unix.conf"

start egress_inet "$BIN/egress-milter" -c "$WORK/egress-inet.toml" run
start egress_unix "$BIN/egress-milter" -c "$WORK/egress-unix.toml" run
start nullrs_inet "$BIN/null-milter" --socket inet:127.0.0.1:17026
start nullrs_unix "$BIN/null-milter" --socket "unix:$WORK/null-rs.sock"
start nullc_inet "$BIN/null-milter-c" inet:17027@127.0.0.1
start nullc_unix "$BIN/null-milter-c" "unix:$WORK/null-c.sock"
have_peer=0
if [ -x "$PEER_BIN" ]; then
    start peer_inet "$PEER_BIN" --config="$WORK/peer-inet.conf"
    start peer_unix "$PEER_BIN" --config="$WORK/peer-unix.conf" --socket="unix:$WORK/peer.sock"
    have_peer=1
fi

socket_of() { # NAME TRANSPORT
    case "$1/$2" in
        egress/unix) echo "unix:$WORK/egress.sock" ;; egress/*) echo inet:127.0.0.1:17025 ;;
        null-rs/unix) echo "unix:$WORK/null-rs.sock" ;; null-rs/*) echo inet:127.0.0.1:17026 ;;
        null-c/unix) echo "unix:$WORK/null-c.sock" ;; null-c/*) echo inet:127.0.0.1:17027 ;;
        peer/unix) echo "unix:$WORK/peer.sock" ;; peer/*) echo inet:127.0.0.1:17028 ;;
    esac
}
MILTERS="egress null-rs null-c"
[ "$have_peer" = 1 ] && MILTERS="$MILTERS peer"
for m in $MILTERS; do for t in inet unix; do wait_ready "$(socket_of "$m" "$t")"; done; done

# bench SCENARIO MILTER TRANSPORT RUN ARGS...: one milter-bench run, appended to results.
bench() {
    scenario=$1 milter=$2 transport=$3 run=$4; shift 4
    extra=""
    [ "$transport" = inet-nodelay ] && extra=--nodelay
    timeout 300 "$BIN/milter-bench" --socket "$(socket_of "$milter" "$transport")" --json \
        --concurrency "$CONCURRENCY" --identities "$IDENTITIES" --max-time 240 $extra "$@" |
        jq -c --arg s "$scenario" --arg m "$milter" --arg t "$transport" --argjson r "$run" \
            '. + {scenario: $s, milter: $m, transport: $t, run: $r}' >>"$RESULTS" ||
        echo "run failed: $scenario $milter $transport $run" >&2
}

# 1. Peak throughput, closed loop. Runs are interleaved so that noise from the
#    shared machine hits every milter alike. The client leaves Nagle on ("inet", as src/listener.rs assumes of Postfix);
#    milters that do not re-arm TCP_QUICKACK then stall ~40 ms per command, so
#    "inet-nodelay" (client without Nagle) and "unix" are measured as well.
for run in $(seq 1 "$RUNS"); do
    for t in inet inet-nodelay unix; do
        for m in $MILTERS; do
            n=$MESSAGES
            # Nagle stalls make the libmilter and peer milters ~400x slower on plain inet.
            case "$m/$t" in null-c/inet | peer/inet) [ "$run" -gt 1 ] && continue; n=2000 ;; esac
            bench peak "$m" "$t" "$run" --messages "$n" --label "$m"
        done
        bench peak-header egress "$t" "$run" --messages "$MESSAGES" --source header --label egress-header
        bench peak-header null-rs "$t" "$run" --messages "$MESSAGES" --source header --label null-rs-header
    done
done

# 2. Cost of refusals: 10% of messages from a locked identity (550 at MAIL),
#    or from a throttled one (451 at MAIL), among normal traffic.
for run in $(seq 1 "$RUNS"); do
    bench refusals egress inet "$run" --messages "$MESSAGES" --label egress-normal
    bench refusals egress inet "$run" --messages "$MESSAGES" --hot-identity locked@bench.example \
        --hot-fraction 0.1 --label egress-10pct-locked
    bench refusals egress inet "$run" --messages "$MESSAGES" --hot-identity throttled@bench.example \
        --hot-fraction 0.1 --label egress-10pct-throttled
    bench refusals null-rs inet "$run" --messages "$MESSAGES" --label null-rs
done

# 3. Latency at half of the peak (open loop at a fixed rate).
peak=$(jq -s '[.[] | select(.scenario=="peak" and .milter=="egress" and .transport=="inet") | .tps] | sort | .[length/2|floor]' "$RESULTS")
half=$(echo "$peak" | awk '{printf "%d", $1/2}')
echo "egress peak (inet, median) $peak msg/s; latency runs at $half msg/s" >&2
for run in $(seq 1 "$RUNS"); do
    for m in egress null-rs; do
        bench half-peak "$m" inet "$run" --messages $((half * 5)) --rate "$half" --label "$m@$half/s"
    done
done

cleanup
python3 "$ROOT/bench/lib/table.py" "$RESULTS"
