#!/bin/sh
# Fleet benchmark (issue 11), protocol level: egress-milter with the memory
# backend against egress-milter with the Redis backend, same configuration,
# milter-bench (the MTA side of the milter protocol) straight at each daemon.
#
#   memory  bench/configs/bench.toml + [store] backend = "memory"
#   redis   bench/configs/bench.toml + [store] backend = "redis" on a private
#           redis-server (loopback, no RDB, no AOF), timeout REDIS_TIMEOUT,
#           fleet_size = 1
# Both daemons also get the same [status] listener (on its own port), so
# that the daemon's own decision time is read from its
# egress_milter_decision_seconds histograms. The script checks that the two
# configuration files are identical but for `socket`, `[locks] file`,
# `[status] listen` and the `[store]` section ($WORK/config.diff).
#
# Parts (PARTS, in this order), per transport of TRANSPORTS (the pair of
# daemons is started for each transport on an emptied Redis):
#   idle        (first transport) Redis commands with no mail: the lock sync
#               of the Redis daemon (every 100 ms), over IDLE_S seconds.
#   peak        RUNS runs, each memory then redis, closed loop: CONCURRENCY
#               connections x PER_CONNECTION messages, RECIPIENTS recipients,
#               IDENTITIES identities picked uniformly, WARMUP unmeasured
#               messages then MESSAGES measured. Per run: milter-bench's report
#               (msg/s; latency per message = MAIL written -> final EOM reply
#               read, and per stage = command written -> its reply read), the
#               daemon's decision_seconds (scraped before and after: every
#               message of the run, warm-up included), CPU of the milter and
#               of redis-server, and for redis INFO commandstats after
#               CONFIG RESETSTAT.
#   latency     (first transport) RUNS runs, memory then redis, open loop at
#               RATE msg/s (default: half of the memory backend's median
#               peak), RATE x LAT_SECONDS measured messages.
#   roundtrips  (first transport) Redis MONITOR while RT_MESSAGES messages go
#               through the Redis daemon (not timed): commands sent by the
#               milter, and commands run inside its scripts.
#   memory      (first transport) FLUSHALL, then one message each for
#               MEM_IDENTITIES new identities (milter-bench --distribution
#               sequential) through the Redis daemon: used_memory and DBSIZE
#               before and after, MEMORY USAGE of a sample of the keys.
# Prints markdown tables (bench/lib/fleet_protocol.py render); raw JSON lines
# in $WORK/results.jsonl, milter-bench reports, scrapes and commandstats in
# $WORK/runs/.
#
# Usage: bench/run-fleet-protocol.sh
#   RUNS=5 MESSAGES=30000 WARMUP=2000 CONCURRENCY=32 IDENTITIES=10000
#   PER_CONNECTION=10 RECIPIENTS=1 TRANSPORTS="inet unix"
#   PARTS="idle peak latency roundtrips memory" RATE=(half of peak)
#   LAT_SECONDS=5 RT_MESSAGES=1000 MEM_IDENTITIES=10000 IDLE_S=2
#   REDIS_TIMEOUT=200ms REDIS_LINK=tcp|unix BASE_PORT=17190 (17190-17194 are used) NO_BUILD=1 WORK=dir
# Needs redis-server and redis-cli (Debian: redis-server redis-tools), curl, jq.
# SPDX-License-Identifier: GPL-3.0-or-later
. "$(dirname "$0")/lib/common.sh"

RUNS=${RUNS:-5}
MESSAGES=${MESSAGES:-30000}
WARMUP=${WARMUP:-2000}
CONCURRENCY=${CONCURRENCY:-32}
IDENTITIES=${IDENTITIES:-10000}
PER_CONNECTION=${PER_CONNECTION:-10}
RECIPIENTS=${RECIPIENTS:-1}
TRANSPORTS=${TRANSPORTS:-inet unix}
PARTS=${PARTS:-idle peak latency roundtrips memory}
RATE=${RATE:-}
LAT_SECONDS=${LAT_SECONDS:-5}
RT_MESSAGES=${RT_MESSAGES:-1000}
MEM_IDENTITIES=${MEM_IDENTITIES:-10000}
IDLE_S=${IDLE_S:-2}
REDIS_TIMEOUT=${REDIS_TIMEOUT:-200ms}
# How the milter reaches Redis: tcp (127.0.0.1:BASE_PORT) or unix (its socket).
REDIS_LINK=${REDIS_LINK:-tcp}
BASE_PORT=${BASE_PORT:-17190}
PREFIX=egress-bench:
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
# The interpreter itself, not a wrapper (pyenv's shim costs ~0.1 s a start).
PYTHON=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}
LIB=$ROOT/bench/lib/fleet_protocol.py
REDIS_PORT=$BASE_PORT
WORK=${WORK:-$(mktemp -d /tmp/egress-fleet-proto.XXXXXX)}
RESULTS=$WORK/results.jsonl
mkdir -p "$WORK/runs"
: >"$RESULTS"
echo "scratch directory: $WORK" >&2

for tool in /usr/bin/redis-server /usr/bin/redis-cli curl jq; do
    command -v "$tool" >/dev/null 2>&1 ||
        { echo "$tool missing (Debian: apt-get install redis-server redis-tools curl jq)" >&2; exit 1; }
done
[ "${NO_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release -q -p egress-milter -p milter-bench)

port_of() { # BACKEND: the milter's TCP port
    case $1 in memory) echo $((BASE_PORT + 1)) ;; redis) echo $((BASE_PORT + 2)) ;; esac
}
status_of() { # BACKEND: its status listener
    case $1 in memory) echo "127.0.0.1:$((BASE_PORT + 3))" ;; redis) echo "127.0.0.1:$((BASE_PORT + 4))" ;; esac
}
socket_of() { # BACKEND TRANSPORT
    case $2 in
        inet) echo "inet:127.0.0.1:$(port_of "$1")" ;;
        unix) echo "unix:$WORK/$1-unix/egress.sock" ;;
        *) echo "unknown transport $2 (inet or unix)" >&2; exit 1 ;;
    esac
}
conf_of() { echo "$WORK/$1-$2/egress.toml"; }

# make_conf BACKEND TRANSPORT: bench/configs/bench.toml with socket and lock
# list moved (egress_config), then the same [status] block for both and the
# backend's [store] block, appended (bench.toml has neither section).
make_conf() {
    dir=$WORK/$1-$2
    mkdir -p "$dir"
    conf=$dir/egress.toml
    egress_config "$ROOT/bench/configs/bench.toml" "$conf" "$(socket_of "$1" "$2")"
    if grep -q '^\[store\]\|^\[status\]' "$conf"; then
        echo "bench/configs/bench.toml has a [store] or [status] section: this script appends its own" >&2
        exit 1
    fi
    printf '\n# --- appended by bench/run-fleet-protocol.sh ---\n[status]\nlisten = "%s"\n' "$(status_of "$1")" >>"$conf"
    case $1 in
        memory) printf '\n[store]\nbackend = "memory"\n' >>"$conf" ;;
        redis) printf '\n[store]\nbackend = "redis"\nurl = "%s"\nprefix = "%s"\ntimeout = "%s"\nfleet_size = 1\n' \
            "$REDIS_URL" "$PREFIX" "$REDIS_TIMEOUT" >>"$conf" ;;
    esac
}
# same_but_store TRANSPORT: the two files, with the per-daemon lines (socket,
# lock file, status port) blanked and everything from [store] on cut, must
# be byte for byte the same.
same_but_store() {
    norm() { sed -e '/^\[store\]$/,$d' -e 's/^socket = .*/socket = X/' -e 's/^file = .*/file = X/' \
        -e 's/^listen = .*/listen = X/' "$1"; }
    norm "$(conf_of memory "$1")" >"$WORK/memory-$1.norm"
    norm "$(conf_of redis "$1")" >"$WORK/redis-$1.norm"
    if ! cmp -s "$WORK/memory-$1.norm" "$WORK/redis-$1.norm"; then
        echo "the memory and redis configurations differ outside [store]:" >&2
        diff "$WORK/memory-$1.norm" "$WORK/redis-$1.norm" >&2
        exit 1
    fi
    diff "$(conf_of memory "$1")" "$(conf_of redis "$1")" >"$WORK/config-$1.diff" || true
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
now() { date +%s.%N; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
scrape() { curl -sf --max-time 5 "http://$1/metrics" >"$2" || echo "scrape of $1 failed" >&2; }

start_pair() { # TRANSPORT
    rcli flushall >/dev/null
    for b in memory redis; do
        make_conf "$b" "$1"
        "$BIN/egress-milter" -c "$(conf_of "$b" "$1")" check-config >"$WORK/check-$b-$1.log" 2>&1 ||
            { echo "check-config refuses $(conf_of "$b" "$1"):" >&2; cat "$WORK/check-$b-$1.log" >&2; exit 1; }
    done
    same_but_store "$1"
    for b in memory redis; do start "egress_${b}_$1" "$BIN/egress-milter" -c "$(conf_of "$b" "$1")" run; done
    for b in memory redis; do wait_ready "$(socket_of "$b" "$1")"; done
    health=$(curl -s --max-time 5 "http://$(status_of redis)/healthz" || true)
    case $health in
        ok*) ;;
        *) echo "the redis daemon is not on Redis (healthz: $health); $WORK/egress_redis_$1.log:" >&2
           tail -n 20 "$WORK/egress_redis_$1.log" >&2; exit 1 ;;
    esac
}
stop_pair() { # TRANSPORT
    for b in memory redis; do eval "stop_pid \$PID_egress_${b}_$1"; done
}
pid_of() { eval "echo \$PID_egress_$1_$2"; }

# bench PART BACKEND TRANSPORT RUN RATE ARGS...: one milter-bench run, one JSON line.
bench() {
    part=$1 backend=$2 transport=$3 run=$4 rate=$5; shift 5
    tag=$WORK/runs/$part-$backend-$transport-$run
    pid=$(pid_of "$backend" "$transport")
    scrape "$(status_of "$backend")" "$tag.before.prom"
    [ "$backend" = redis ] && rcli config resetstat >/dev/null
    la=$(loadavg)
    c0=$(cpu_ticks "$pid") r0=$(cpu_ticks "$PID_redis") t0=$(now)
    timeout 300 "$BIN/milter-bench" --socket "$(socket_of "$backend" "$transport")" --json \
        --concurrency "$CONCURRENCY" --identities "$IDENTITIES" --per-connection "$PER_CONNECTION" \
        --recipients "$RECIPIENTS" --max-time 240 --label "$backend" "$@" >"$tag.json" 2>"$tag.err" ||
        echo "run failed: $part $backend $transport $run (see $tag.err)" >&2
    t1=$(now) c1=$(cpu_ticks "$pid") r1=$(cpu_ticks "$PID_redis")
    cs=""
    if [ "$backend" = redis ]; then
        rcli info commandstats >"$tag.cmdstats"
        cs="--cmdstats $tag.cmdstats"
    fi
    scrape "$(status_of "$backend")" "$tag.after.prom"
    fields=$(jq -nc --arg p "$part" --arg b "$backend" --arg t "$transport" --argjson r "$run" \
        --argjson rate "${rate:-0}" --arg la "$la" --argjson t0 "$t0" --argjson t1 "$t1" \
        --argjson mc "$((c1 - c0))" --argjson rc "$((r1 - r0))" --argjson hz "$HZ" --arg cmd "$*" \
        --argjson w "$WARMUP" \
        '{part: $p, backend: $b, transport: $t, run: $r, rate: $rate, warmup: $w, loadavg: $la, wall_s: ($t1 - $t0),
          milter_cpu_s: ($mc / $hz), redis_cpu_s: ($rc / $hz), args: $cmd}')
    # shellcheck disable=SC2086
    "$PYTHON" "$LIB" record "$fields" --bench "$tag.json" --prom0 "$tag.before.prom" --prom1 "$tag.after.prom" \
        $cs >>"$RESULTS"
    tail -n 1 "$RESULTS" | jq -r '"  \(.part) \(.transport) \(.backend) run \(.run): " +
        (if .bench then "\(.bench.tps | floor) msg/s, client p50 \(.bench.latency.p50_us) p99 \(.bench.latency.p99_us) us, errors \(.bench.errors)" else "no report" end) +
        (if .decision.message then ", decision mean \(.decision.message.sum_s / (.decision.message.count + 1e-9) * 1e6 | . * 10 | floor / 10) us" else "" end) +
        (if .redis_calls then ", evalsha/msg \(((.redis_calls.evalsha.calls // 0) / (.sent + 1e-9)) | . * 1000 | floor / 1000)" else "" end) +
        (if .store then ", store shared \(.store.decisions_shared // 0) local \(.store.decisions_local // 0) errors \(.store.errors // 0)" else "" end) +
        "  [load \(.loadavg)]"' >&2
}

in_parts() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }

case $REDIS_LINK in
    tcp) REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0 ;;
    unix) REDIS_EXTRA="--unixsocket $WORK/redis/redis.sock --unixsocketperm 700"
          REDIS_URL=unix://$WORK/redis/redis.sock ;;
    *) echo "REDIS_LINK is tcp or unix, not $REDIS_LINK" >&2; exit 1 ;;
esac
redis_start "$REDIS_PORT" "$WORK/redis" || exit 1
printf '{"part": "meta", "redis": "%s", "egress_bin": "%s", "commit": "%s", "date": "%s", "nproc": %s, "runs": %s, "messages": %s, "warmup": %s, "concurrency": %s, "identities": %s, "per_connection": %s, "recipients": %s, "transports": "%s", "redis_timeout": "%s", "redis_url": "%s", "loadavg": "%s"}\n' \
    "$REDIS_VERSION" "$BIN/egress-milter" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$(nproc)" "$RUNS" "$MESSAGES" "$WARMUP" "$CONCURRENCY" "$IDENTITIES" \
    "$PER_CONNECTION" "$RECIPIENTS" "$TRANSPORTS" "$REDIS_TIMEOUT" "$REDIS_URL" "$(loadavg)" >>"$RESULTS"
echo "redis $REDIS_VERSION, the milter at $REDIS_URL; load average at start $(loadavg)" >&2

first=1
for t in $TRANSPORTS; do
    echo "== $t: starting the memory and redis daemons" >&2
    start_pair "$t"

    if [ "$first" = 1 ] && in_parts idle; then
        rcli config resetstat >/dev/null
        i0=$(now)
        sleep "$IDLE_S"
        rcli info commandstats >"$WORK/runs/idle.cmdstats"
        i1=$(now)
        "$PYTHON" "$LIB" record "$(jq -nc --argjson a "$i0" --argjson b "$i1" '{part: "idle", idle_s: ($b - $a)}')" \
            --cmdstats "$WORK/runs/idle.cmdstats" >>"$RESULTS"
        tail -n 1 "$RESULTS" | jq -r '"  idle \(.idle_s | . * 10 | floor / 10) s: " +
            ([.redis_calls | to_entries[] | "\(.key) \(.value.calls)"] | join(", "))' >&2
    fi

    if in_parts peak; then
        echo "== $t: peak, $RUNS runs (memory, redis), $MESSAGES messages + $WARMUP warm-up" >&2
        for run in $(seq 1 "$RUNS"); do
            for b in memory redis; do
                bench peak "$b" "$t" "$run" 0 --messages "$MESSAGES" --warmup "$WARMUP"
            done
        done
    fi

    if [ "$first" = 1 ] && in_parts latency; then
        rate=$RATE
        if [ -z "$rate" ]; then
            peak=$(jq -s --arg t "$t" '[.[] | select(.part == "peak" and .backend == "memory" and .transport == $t
                and .bench != null) | .bench.tps] | sort | if length > 0 then .[length / 2 | floor] else 0 end' "$RESULTS")
            rate=$(echo "$peak" | awk '{printf "%d", $1 / 2}')
        fi
        if [ "${rate:-0}" -gt 0 ]; then
            echo "== $t: latency at $rate msg/s (open loop), $RUNS runs (memory, redis)" >&2
            for run in $(seq 1 "$RUNS"); do
                for b in memory redis; do
                    bench latency "$b" "$t" "$run" "$rate" --messages $((rate * LAT_SECONDS)) --warmup "$WARMUP" \
                        --rate "$rate"
                done
            done
        else
            echo "latency part skipped: no RATE and no memory peak to halve" >&2
        fi
    fi

    if [ "$first" = 1 ] && in_parts roundtrips; then
        echo "== $t: round trips (Redis MONITOR, $RT_MESSAGES messages through the redis daemon, not timed)" >&2
        tag=$WORK/runs/roundtrips
        scrape "$(status_of redis)" "$tag.before.prom"
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" monitor >"$tag.monitor" 2>&1 &
        mon_pid=$!
        PIDS="$PIDS $mon_pid"
        sleep 0.3
        timeout 120 "$BIN/milter-bench" --socket "$(socket_of redis "$t")" --json --concurrency "$CONCURRENCY" \
            --identities "$IDENTITIES" --per-connection "$PER_CONNECTION" --recipients "$RECIPIENTS" \
            --messages "$RT_MESSAGES" --warmup 0 --max-time 100 --label roundtrips >"$tag.json" 2>"$tag.err" ||
            echo "round-trip run failed (see $tag.err)" >&2
        sleep 0.3
        stop_pid "$mon_pid"
        scrape "$(status_of redis)" "$tag.after.prom"
        "$PYTHON" "$LIB" record "$(jq -nc --arg t "$t" '{part: "roundtrips", backend: "redis", transport: $t, warmup: 0}')" \
            --bench "$tag.json" --prom0 "$tag.before.prom" --prom1 "$tag.after.prom" --monitor "$tag.monitor" >>"$RESULTS"
        tail -n 1 "$RESULTS" | jq -r '"  sent by the milter: " + ([.monitor.client | to_entries[] |
            "\(.key) \(.value)"] | join(", ")) + "; inside scripts: " + ([.monitor.lua | to_entries[] |
            "\(.key) \(.value)"] | join(", ")) + " (\(.sent) messages)"' >&2
    fi

    if [ "$first" = 1 ] && in_parts memory; then
        echo "== $t: Redis memory, $MEM_IDENTITIES new identities, one message each (redis daemon)" >&2
        tag=$WORK/runs/memory
        rcli flushall >/dev/null
        sleep 0.5 # the lock sync re-creates its keys ({locks}:epoch) within 100 ms
        rcli memory purge >/dev/null 2>&1 || true
        mem0=$(redis_info memory used_memory) ds0=$(redis_info memory used_memory_dataset) keys0=$(rcli dbsize)
        timeout 300 "$BIN/milter-bench" --socket "$(socket_of redis "$t")" --json --concurrency 8 \
            --identities "$MEM_IDENTITIES" --messages "$MEM_IDENTITIES" --distribution sequential \
            --identity-prefix mem- --per-connection "$PER_CONNECTION" --warmup 0 --max-time 240 \
            --label memory >"$tag.json" 2>"$tag.err" || echo "memory run failed (see $tag.err)" >&2
        sleep 0.5
        mem1=$(redis_info memory used_memory) ds1=$(redis_info memory used_memory_dataset) keys1=$(rcli dbsize)
        rcli --scan --pattern "${PREFIX}*:i:mem-*" >"$tag.identity-keys"
        rcli --scan --pattern "${PREFIX}*:d:*" >"$tag.domain-keys"
        # MEMORY USAGE (key, value, allocator rounding; not the main and
        # expires dictionaries' own slots) of up to 50 identity keys.
        usage_id=$(head -n 50 "$tag.identity-keys" | while read -r key; do rcli memory usage "$key" samples 0; done |
            awk '{s += $1; n++} END {if (n) printf "%.0f", s / n; else print "null"}')
        sample=$(head -n 1 "$tag.identity-keys")
        dsample=$(head -n 1 "$tag.domain-keys")
        usage_dom=null enc="" fields=null pttl=null
        [ -n "$dsample" ] && usage_dom=$(rcli memory usage "$dsample" samples 0)
        if [ -n "$sample" ]; then
            enc=$(rcli object encoding "$sample") fields=$(rcli hlen "$sample") pttl=$(rcli pttl "$sample")
            rcli hgetall "$sample" >"$tag.sample"
            echo "$sample" >>"$tag.sample"
        fi
        "$PYTHON" "$LIB" record "$(jq -nc --arg t "$t" --argjson n "$MEM_IDENTITIES" --argjson m0 "$mem0" \
            --argjson m1 "$mem1" --argjson d0 "$ds0" --argjson d1 "$ds1" --argjson k0 "$keys0" --argjson k1 "$keys1" \
            --argjson ik "$(wc -l <"$tag.identity-keys")" --argjson dk "$(wc -l <"$tag.domain-keys")" \
            --argjson ui "${usage_id:-null}" --argjson ud "${usage_dom:-null}" --arg enc "$enc" \
            --argjson f "${fields:-null}" --argjson pttl "${pttl:-null}" --arg key "$sample" \
            '{part: "memory", backend: "redis", transport: $t, identities: $n, mem0: $m0, mem1: $m1,
              dataset0: $d0, dataset1: $d1, keys0: $k0, keys1: $k1, identity_keys: $ik, domain_keys: $dk,
              usage_identity_key: $ui, usage_domain_key: $ud, sample_key: $key, sample_encoding: $enc,
              sample_fields: $f, sample_pttl_ms: $pttl, warmup: 0}')" --bench "$tag.json" >>"$RESULTS"
        tail -n 1 "$RESULTS" | jq -r '"  used_memory \(.mem0) -> \(.mem1) (\((.mem1 - .mem0) / .identities | floor) B/identity), keys \(.keys0) -> \(.keys1), MEMORY USAGE \(.usage_identity_key) B per identity key"' >&2
    fi

    stop_pair "$t"
    first=0
done

cleanup
"$PYTHON" "$LIB" render "$RESULTS" | tee "$WORK/tables.md"
