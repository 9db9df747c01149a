# Shared helpers for the bench/run-*.sh scripts (sourced, not run).
# SPDX-License-Identifier: GPL-3.0-or-later

set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
PEER_ROOT=${PEER_ROOT:-/tmp/peer}
PEER_BIN=$PEER_ROOT/bin/postfix_ratelimit
PIDS=""

cleanup() {
    for pid in $PIDS; do kill "$pid" 2>/dev/null || true; done
    for pid in $PIDS; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    done
    PIDS=""
}
trap cleanup EXIT INT TERM

build_all() {
    (cd "$ROOT" && cargo build --release -q -p egress-milter -p milter-bench)
    "$ROOT/bench/null-milter-c/build.sh" "$BIN/null-milter-c" >/dev/null
    if [ ! -x "$PEER_BIN" ]; then
        echo "installing the peer postfix_ratelimit into $PEER_ROOT" >&2
        timeout 900 cargo install -q postfix_ratelimit --root "$PEER_ROOT" ||
            echo "peer install failed; its rows will be missing" >&2
    fi
}

# egress_config SRC DEST SOCKET: copies a bench config with its socket and lock list moved.
egress_config() {
    dir=$(dirname "$2")
    sed -e "s#^socket = .*#socket = \"$3\"#" -e "s#^file = .*#file = \"$dir/locks.toml\"#" "$1" >"$2"
}

# start NAME CMD...: starts a milter in the background, remembering its pid in PID_<NAME>.
start() {
    name=$1; shift
    "$@" >"$WORK/$name.log" 2>&1 &
    pid=$!
    PIDS="$PIDS $pid"
    eval "PID_$name=$pid"
}

# wait_ready SOCKET: waits up to 10 s until a milter answers a smoke run.
wait_ready() {
    for _ in $(seq 1 50); do
        if timeout 20 "$BIN/milter-bench" --socket "$1" --messages 1 --warmup 0 --concurrency 1 \
            --strict --json >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "milter on $1 did not come up" >&2
    return 1
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# stop_pid PID: stops one milter we started.
stop_pid() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
}

# redis_start PORT DIR [WRAPPER...]: a private redis-server on 127.0.0.1:PORT,
# in memory only (no RDB snapshots, no AOF), one database, its log in
# DIR/redis.log; started through WRAPPER (e.g. a cgroup helper) if given, as
# "redis" (PID_redis). Sets REDIS_PORT (for rcli) and REDIS_VERSION; fails
# if it does not answer PING within 10 s. REDIS_EXTRA: more redis-server
# options (split on blanks), e.g. "--unixsocket PATH --unixsocketperm 700".
redis_start() {
    REDIS_PORT=$1 redis_dir=$2; shift 2
    mkdir -p "$redis_dir"
    # shellcheck disable=SC2086
    start redis "$@" /usr/bin/redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --protected-mode yes --save "" --appendonly no --dir "$redis_dir" --daemonize no \
        --logfile "$redis_dir/redis.log" --databases 1 ${REDIS_EXTRA:-}
    for _ in $(seq 1 100); do rcli ping >/dev/null 2>&1 && break; sleep 0.1; done
    rcli ping >/dev/null 2>&1 || {
        echo "redis-server did not start; $redis_dir/redis.log:" >&2
        tail "$redis_dir/redis.log" >&2
        return 1
    }
    REDIS_VERSION=$(redis_info server redis_version)
}

# rcli ARGS...: redis-cli against the private Redis of redis_start.
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# redis_info SECTION FIELD: one field of INFO SECTION.
redis_info() { rcli info "$1" | tr -d '\r' | sed -n "s/^$2:\(.*\)/\1/p"; }
