#!/bin/sh
# Fleet benchmark (issue 11), end to end through a private Postfix:
# authenticated SMTP load (bench/lib/smtp_auth_load.py, SASL PLAIN against a
# sasldb of the instance) -> Postfix smtpd (+ milter) -> queue -> Postfix
# smtp -> smtp-sink, with ONE private redis-server shared by
#   none         no milter (the baseline: Postfix and the load generator)
#   rspamd       rspamd 3.x as milter (proxy worker, milter = yes,
#                self_scan), nothing but its ratelimit module, one bucket per
#                SASL user, on that Redis (bench/configs/rspamd/rspamd.conf),
#                over TCP as rspamd's documentation wires it
#   rspamd-unix  the same rspamd process, over its unix socket
#   egress       egress-milter with [store] backend = "redis" on that Redis
#                (bench/configs/fleet-egress.toml), over TCP
#   egress-unix  a second egress-milter on the same Redis and prefix (the
#                two form a fleet of 2), over a unix socket
# Every configuration has its own smtpd port in the one Postfix instance
# (smtpd_milters per service in master.cf, the wiring of
# conf/postfix/master.cf.submission; the other milter_* lines of
# conf/postfix/main.cf.milter in main.cf), so nothing is restarted between
# measurements; every milter runs for the whole run.
#
# Parts (PARTS, in this order):
#   limit       is each limiter really limiting? A second rspamd and a second
#               egress-milter, with a limit of 3 messages an hour per user,
#               get LIMIT_MESSAGES messages from one user, first one after
#               the other, then all at once (LIMIT_MESSAGES sessions in
#               parallel). Expect 3 accepted and the rest refused with 451
#               (rspamd: at the end of DATA; egress-milter: at MAIL). The
#               Redis commands seen are recorded too.
#   warmup      (always, before roundtrips/throughput) every user sends one
#               message through every configuration, so that buckets and
#               counters exist and the measurements see the steady state.
#   roundtrips  Redis MONITOR during RT_MESSAGES messages through each
#               Redis-backed configuration: commands per message sent by the
#               milter itself (= round trips; a pipeline would count each
#               command) and those run inside its Lua scripts, attributed to
#               the process by the connection's port (ss -tnp). Not timed.
#   throughput  ROUNDS rounds, each measuring every configuration of CONFIGS
#               in turn (order rotated by one every round, so noise hits all
#               alike): SENDERS load processes x SESSIONS threads, one message
#               per SMTP session, MESSAGES in all, users drawn uniformly from
#               IDENTITIES. Per measurement: messages/s at the sink
#               (start -> queue empty), SMTP transaction latency (MAIL ->
#               reply to ".") p50/p99, CPU of the milter, of Redis, of
#               Postfix and of the load (cgroup v1 cpuacct), and Redis'
#               INFO commandstats (CONFIG RESETSTAT first): calls per message
#               per command. The calls seen in an idle window of IDLE_S
#               seconds just before (other milters' background traffic) are
#               recorded and subtracted pro rata ("net").
#   memory      Redis memory per tracked identity: milter-bench (the MTA
#               side of the milter protocol, bench/milter-bench) sends one
#               message for each of MEM_IDENTITIES new identities straight to
#               the milter's unix socket; used_memory and DBSIZE before and
#               after, and the milter's own RSS.
# bench/lib/fleet_table.py renders the JSON lines (medians over rounds,
# ratios to "none" taken within a round).
#
# egress-milter: EGRESS=auto (default) runs its configurations only if
# `egress-milter check-config` accepts bench/configs/fleet-egress.toml (the
# binary knows [store] backend = "redis"); EGRESS=0 skips them; EGRESS=1
# fails if the binary cannot. EGRESS_BIN (default target/release/egress-
# milter of this checkout) and MILTER_BENCH choose the binaries.
#
# Needs root (Postfix's master; rspamd drops to _rspamd), Debian's postfix
# (run milter-tests/install-deps.sh once). Installs rspamd, redis-server,
# redis-tools, sasl2-bin and libsasl2-modules from Debian if missing, with a
# policy-rc.d that keeps their packaged daemons from starting, and disables
# those services; only private instances on loopback ports run here.
#
# Usage: bench/run-fleet-e2e.sh
#   ROUNDS=5 MESSAGES=2000 SENDERS=4 SESSIONS=4 IDENTITIES=200 MSG_SIZE=1024
#   PARTS="limit roundtrips throughput memory" CONFIGS="none rspamd rspamd-unix egress egress-unix"
#   LIMIT_MESSAGES=10 RT_MESSAGES=200 IDLE_S=1 MEM_IDENTITIES=10000
#   RSPAMD_WORKERS=2 RSPAMD_HS_CACHE=/var/cache/egress-milter-bench/rspamd-hs
#   EGRESS=auto|0|1 EGRESS_BIN=... MILTER_BENCH=... NO_BUILD=1
#   BASE_PORT=17160 (17160-17176 are used) KEEP=1 OUT=file.jsonl
# SPDX-License-Identifier: GPL-3.0-or-later
. "$(dirname "$0")/lib/common.sh"

ROUNDS=${ROUNDS:-5}
MESSAGES=${MESSAGES:-2000}
SENDERS=${SENDERS:-4}
SESSIONS=${SESSIONS:-4}
IDENTITIES=${IDENTITIES:-200}
MSG_SIZE=${MSG_SIZE:-1024}
PARTS=${PARTS:-limit roundtrips throughput memory}
CONFIGS=${CONFIGS:-none rspamd rspamd-unix egress egress-unix}
LIMIT_MESSAGES=${LIMIT_MESSAGES:-10}
RT_MESSAGES=${RT_MESSAGES:-200}
IDLE_S=${IDLE_S:-1}
MEM_IDENTITIES=${MEM_IDENTITIES:-10000}
RSPAMD_WORKERS=${RSPAMD_WORKERS:-}
RSPAMD_HS_CACHE=${RSPAMD_HS_CACHE:-/var/cache/egress-milter-bench/rspamd-hs}
EGRESS=${EGRESS:-auto}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
EGRESS_BIN=${EGRESS_BIN:-$BIN/egress-milter}
MILTER_BENCH=${MILTER_BENCH:-$BIN/milter-bench}
# The interpreter itself, not a wrapper (pyenv's shim costs ~0.1 s of CPU a start).
PYTHON=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}
BASE_PORT=${BASE_PORT:-17160}
SINK_PORT=$BASE_PORT
REDIS_PORT=$((BASE_PORT + 1))
RSPAMD_PORT=$((BASE_PORT + 2))
RSPAMD_LOW_PORT=$((BASE_PORT + 3))
EGRESS_PORT=$((BASE_PORT + 4))
EGRESS_LOW_PORT=$((BASE_PORT + 5))
# smtpd ports, one per configuration: BASE_PORT + 10 ...
SMTPD_BASE=$((BASE_PORT + 10))
ALL_SERVICES="none rspamd rspamd-unix egress egress-unix rspamd-low egress-low"
PASSWORD=bench-pw
DOMAIN=bench.example

[ "$(id -u)" = 0 ] || { echo "run-fleet-e2e.sh must run as root (Postfix's master runs as root)" >&2; exit 1; }
for tool in postfix postconf smtp-sink; do
    [ -x "/usr/sbin/$tool" ] || { echo "/usr/sbin/$tool missing: run milter-tests/install-deps.sh" >&2; exit 1; }
done

WORK=${WORK:-$(mktemp -d /tmp/egress-fleet.XXXXXX)}
mkdir -p "$WORK/sock" "$WORK/redis" "$WORK/gen"
chmod 755 "$WORK" "$WORK/sock"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
PF=$WORK/postfix
PF_RUNNING=0
CG=""

# ---------------------------------------------------------------- cleanup
fleet_cleanup() {
    set +e
    [ "$PF_RUNNING" = 1 ] && pf_stop
    cleanup
    if [ -n "$CG" ]; then
        for group in "$CG"/*/; do
            [ -f "$group/tasks" ] || continue
            for pid in $(cat "$group/tasks"); do kill "$pid" 2>/dev/null; done
        done
        sleep 0.5
        for group in "$CG"/*/; do
            [ -f "$group/tasks" ] || continue
            for pid in $(cat "$group/tasks"); do kill -9 "$pid" 2>/dev/null; done
        done
        sleep 0.2
        for group in "$CG"/*/; do rmdir "$group" 2>/dev/null; done
        rmdir "$CG" 2>/dev/null
    fi
    if [ -n "${OUT:-}" ] && [ -s "$RESULTS" ]; then cp "$RESULTS" "$OUT"; fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap fleet_cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------ packages (Debian's own)
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]; }
need=""
for pkg in rspamd redis-server redis-tools sasl2-bin libsasl2-modules; do
    installed "$pkg" || need="$need $pkg"
done
if [ -n "$need" ]; then
    echo "installing from Debian:$need" >&2
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # The packaged daemons must not start (they would take port 6379 and
        # rspamd's 11332-11334 and eat CPU): invoke-rc.d obeys exit 101.
        printf '#!/bin/sh\n# temporary, from egress-milter bench/run-fleet-e2e.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=300 $need >"$WORK/apt.log" 2>&1 || {
        [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
        echo "apt-get install failed; end of $WORK/apt.log:" >&2
        tail -n 20 "$WORK/apt.log" >&2
        exit 1
    }
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    # Not at boot either, under systemd or sysvinit.
    for svc in rspamd redis-server; do
        case " $need " in *" $svc "*) ;; *) continue ;; esac
        if command -v systemctl >/dev/null 2>&1; then systemctl disable "$svc.service" >/dev/null 2>&1 || true; fi
        update-rc.d "$svc" disable >/dev/null 2>&1 || true
    done
    # Had the install started them anyway (no policy-rc.d honoured), stop them.
    for svc_pid in rspamd:/run/rspamd/rspamd.pid redis-server:/run/redis/redis-server.pid; do
        svc=${svc_pid%%:*} pidfile=${svc_pid#*:}
        case " $need " in *" $svc "*) ;; *) continue ;; esac
        if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "stopping the packaged $svc the install started" >&2
            "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
    done
fi
for svc_pid in rspamd:/run/rspamd/rspamd.pid redis-server:/run/redis/redis-server.pid; do
    svc=${svc_pid%%:*} pidfile=${svc_pid#*:}
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "note: the system's $svc is running (pid $(cat "$pidfile")); left alone, it shares the CPUs" >&2
    fi
done
for f in /usr/bin/rspamd /usr/bin/rspamadm /usr/bin/redis-server /usr/bin/redis-cli /usr/sbin/saslpasswd2; do
    [ -x "$f" ] || { echo "$f missing after the install" >&2; exit 1; }
done

if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -q -p egress-milter -p milter-bench)
fi

# --------------------------------------------------------------- cgroups
if [ -d /sys/fs/cgroup/cpuacct ] && mkdir "/sys/fs/cgroup/cpuacct/egress-fleet-$$" 2>/dev/null; then
    CG=/sys/fs/cgroup/cpuacct/egress-fleet-$$
    for group in postfix gen sink redis rspamd rspamd-low egress egress-unix egress-low; do
        mkdir "$CG/$group"
    done
else
    echo "no cgroup v1 cpuacct: CPU figures will be missing" >&2
fi
cat >"$WORK/in-cg" <<'SH'
#!/bin/sh
[ -n "$1" ] && echo $$ >"$1/tasks"
shift
exec "$@"
SH
chmod 755 "$WORK/in-cg"
IN_CG=$WORK/in-cg
cgdir() { echo "${CG:+$CG/$1}"; }
cg_ns() { if [ -n "$CG" ] && [ "$1" != - ]; then cat "$CG/$1/cpuacct.usage"; fi; }
# cg_rss_kb GROUP: summed VmRSS of the group's processes.
cg_rss_kb() {
    [ -n "$CG" ] || return 0
    for pid in $(cat "$CG/$1/cgroup.procs" 2>/dev/null); do
        awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null
    done | awk '{s += $1} END {print s + 0}'
}
now() { date +%s.%N; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
listening() {
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'NR > 1 && $4 == "0A" && ($2 == "0100007F" p || $2 == "00000000" p) {found=1} END {exit !found}' /proc/net/tcp
}
wait_listening() { # PORT WHAT [SECONDS]
    for _ in $(seq 1 $((${3:-30} * 10))); do listening "$1" && return 0; sleep 0.1; done
    echo "$2 does not listen on 127.0.0.1:$1" >&2
    return 1
}
wait_socket() { # PATH WHAT [SECONDS]
    for _ in $(seq 1 $((${3:-30} * 10))); do [ -S "$1" ] && return 0; sleep 0.1; done
    echo "$2: no socket $1" >&2
    return 1
}

# ----------------------------------------------------------------- Redis
# Private, in memory only (no RDB, no AOF), loopback (redis_start in
# bench/lib/common.sh; rcli talks to it).
redis_start "$REDIS_PORT" "$WORK/redis" "$IN_CG" "$(cgdir redis)" || exit 1

# ------------------------------------------------------------------ sink
start sink "$IN_CG" "$(cgdir sink)" /usr/sbin/smtp-sink -c -u postfix "127.0.0.1:$SINK_PORT" 1024
wait_listening "$SINK_PORT" smtp-sink
sink_count() { tail -c 300 "$WORK/sink.log" | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -n 1 | grep . || echo 0; }

# ---------------------------------------------------------------- rspamd
mkdir -p "$RSPAMD_HS_CACHE"
chown _rspamd:_rspamd "$RSPAMD_HS_CACHE"
RSPAMD_CONF=$ROOT/bench/configs/rspamd/rspamd.conf
RSPAMD_VERSION=$(rspamd --version 2>/dev/null | sed -n 's/.*version \([^ ]*\).*/\1/p')
# rspamd_vars DIR MILTER BURST: the --var options of one instance but the
# rate (it has spaces); the values have none (mktemp paths, numbers).
rspamd_vars() {
    printf -- '--var=%s ' "BENCH_DIR=$1" "BENCH_HS_CACHE=$RSPAMD_HS_CACHE" "BENCH_MILTER=$2" \
        "BENCH_REDIS=127.0.0.1:$REDIS_PORT" "BENCH_BURST=$3"
}
# start_rspamd NAME GROUP DIR MILTER BURST RATE
start_rspamd() {
    name=$1 group=$2 dir=$3 milter=$4 burst=$5 rate=$6
    mkdir -p "$dir"
    chown _rspamd:_rspamd "$dir"
    chmod 755 "$dir"
    if [ -n "$RSPAMD_WORKERS" ]; then echo "count = $RSPAMD_WORKERS;" >"$dir/worker-proxy.override.inc"; fi
    # What is enabled: exactly the ratelimit module, or stop here.
    # shellcheck disable=SC2046
    rspamadm $(rspamd_vars "$dir" "$milter" "$burst") "--var=BENCH_RATE=$rate" \
        configdump -m -c "$RSPAMD_CONF" >"$dir/modules.txt" 2>&1 || true
    if ! grep -qx 'Modules enabled: ratelimit' "$dir/modules.txt"; then
        echo "rspamd ($name) does not run the ratelimit module alone; rspamadm configdump -m says:" >&2
        cat "$dir/modules.txt" >&2
        exit 1
    fi
    # shellcheck disable=SC2046
    start "$name" "$IN_CG" "$(cgdir "$group")" /usr/bin/rspamd -f -u _rspamd -g _rspamd -c "$RSPAMD_CONF" \
        $(rspamd_vars "$dir" "$milter" "$burst") "--var=BENCH_RATE=$rate"
    # The first start compiles rspamd's hyperscan databases (15-40 s of CPU);
    # later ones load them from RSPAMD_HS_CACHE.
    wait_listening "${milter##*:}" "rspamd ($name)" 180 || { tail -n 20 "$dir/rspamd.log" >&2; exit 1; }
    wait_socket "$dir/milter.sock" "rspamd ($name)" 30
}
# The 100 000 000 a burst and an hour: far above any load here (the
# throughput part sends a few thousand messages per user and hour).
start_rspamd rspamd rspamd "$WORK/rspamd" "127.0.0.1:$RSPAMD_PORT" 100000000 "100000000 / 1h"
RSPAMD_SOCK=$WORK/rspamd/milter.sock

# ---------------------------------------------------------- egress-milter
# fleet_conf SRC DEST SOCKET LOCKFILE [PREFIX]: bench/configs/fleet-egress.toml
# with socket, lock list, Redis URL (and prefix) replaced.
fleet_conf() {
    sed -e "s#^socket = .*#socket = \"$3\"#" -e "s#^file = .*#file = \"$4\"#" \
        -e "s#^url = .*#url = \"redis://127.0.0.1:$REDIS_PORT/0\"#" "$1" >"$2"
    if [ -n "${5:-}" ]; then sed -i "s#^prefix = .*#prefix = \"$5\"#" "$2"; fi
}
have_egress=0
if [ "$EGRESS" != 0 ]; then
    fleet_conf "$ROOT/bench/configs/fleet-egress.toml" "$WORK/egress.toml" "inet:127.0.0.1:$EGRESS_PORT" \
        "$WORK/locks-egress.toml"
    fleet_conf "$ROOT/bench/configs/fleet-egress.toml" "$WORK/egress-unix.toml" "unix:$WORK/sock/egress.sock" \
        "$WORK/locks-egress-unix.toml"
    # The limit check: messages-per-hour at 3, its own key prefix.
    fleet_conf "$ROOT/bench/configs/fleet-egress.toml" "$WORK/egress-low.toml" "inet:127.0.0.1:$EGRESS_LOW_PORT" \
        "$WORK/locks-egress-low.toml" "egress-milter-limit:"
    sed -i 's#^rate = "30000000/1h"$#rate = "3/1h"#' "$WORK/egress-low.toml"
    [ "$(grep -c '^rate = "3/1h"$' "$WORK/egress-low.toml")" = 1 ] ||
        { echo "bench/configs/fleet-egress.toml: messages-per-hour is no longer 30000000/1h" >&2; exit 1; }
    if [ ! -x "$EGRESS_BIN" ]; then
        why="$EGRESS_BIN not found"
    elif "$EGRESS_BIN" -c "$WORK/egress.toml" check-config >"$WORK/egress-check.log" 2>&1; then
        have_egress=1
    else
        why="$EGRESS_BIN check-config refuses bench/configs/fleet-egress.toml ($(tail -n 3 "$WORK/egress-check.log" | tr '\n' ' '))"
    fi
    if [ "$have_egress" = 0 ]; then
        [ "$EGRESS" = 1 ] && { echo "EGRESS=1 but $why" >&2; exit 1; }
        echo "egress-milter configurations skipped: $why" >&2
    fi
fi
if [ "$have_egress" = 1 ]; then
    start egress "$IN_CG" "$(cgdir egress)" "$EGRESS_BIN" -c "$WORK/egress.toml" run
    start egress_unix "$IN_CG" "$(cgdir egress-unix)" "$EGRESS_BIN" -c "$WORK/egress-unix.toml" run
    wait_listening "$EGRESS_PORT" egress-milter || { tail -n 20 "$WORK/egress.log" >&2; exit 1; }
    wait_socket "$WORK/sock/egress.sock" egress-milter || { tail -n 20 "$WORK/egress_unix.log" >&2; exit 1; }
fi

# ----------------------------------------------------- the private Postfix
# smtpd_port SERVICE, milter_of SERVICE (Postfix notation, empty for none),
# group_of SERVICE (cgroup of its milter, - for none).
smtpd_port() {
    i=0
    for s in $ALL_SERVICES; do
        [ "$s" = "$1" ] && { echo $((SMTPD_BASE + i)); return; }
        i=$((i + 1))
    done
    echo "unknown configuration $1" >&2
    exit 1
}
milter_of() {
    case $1 in
        none) echo "" ;;
        rspamd) echo "inet:127.0.0.1:$RSPAMD_PORT" ;;
        rspamd-unix) echo "unix:$RSPAMD_SOCK" ;;
        rspamd-low) echo "inet:127.0.0.1:$RSPAMD_LOW_PORT" ;;
        egress) echo "inet:127.0.0.1:$EGRESS_PORT" ;;
        egress-unix) echo "unix:$WORK/sock/egress.sock" ;;
        egress-low) echo "inet:127.0.0.1:$EGRESS_LOW_PORT" ;;
    esac
}
group_of() {
    case $1 in
        none) echo - ;;
        rspamd | rspamd-unix) echo rspamd ;;
        *) echo "$1" ;;
    esac
}
uses_redis() { [ "$1" != none ]; }

mkdir -p "$PF/etc/sasl" "$PF/spool"
chmod 755 "$PF" "$PF/etc" "$PF/etc/sasl"
# SASL users user0..user<IDENTITIES+3>@bench.example (the last four for the
# limit checks), in the instance's sasldb (milter-tests/live/README.md,
# "Gotchas": Debian's smtpd reads $config_directory/sasl/smtpd.conf).
cat >"$PF/etc/sasl/smtpd.conf" <<CF
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: $PF/etc/sasl/sasldb2
CF
echo "creating $((IDENTITIES + 4)) SASL users" >&2
for k in $(seq 0 $((IDENTITIES + 3))); do
    echo "$PASSWORD" | saslpasswd2 -f "$PF/etc/sasl/sasldb2" -c -p -u "$DOMAIN" "user$k"
done
chmod 644 "$PF/etc/sasl/sasldb2"

{
    echo "# Written by bench/run-fleet-e2e.sh. Nothing is chrooted. One submission"
    echo "# smtpd per configuration, each with its own smtpd_milters."
    for s in $ALL_SERVICES; do
        cat <<CF
127.0.0.1:$(smtpd_port "$s") inet n - n - - smtpd
  -o syslog_name=postfix/$s
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=no
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o milter_macro_daemon_name=ORIGINATING
  -o smtpd_milters=$(milter_of "$s")
CF
    done
    cat <<'CF'
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
CF
} >"$PF/etc/master.cf"

cat >"$PF/etc/main.cf" <<CF
# Written by bench/run-fleet-e2e.sh (as bench/run-e2e.sh, plus SASL).
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.fleet-bench.invalid
mydomain = fleet-bench.invalid
myorigin = \$myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
relayhost = [127.0.0.1]:$SINK_PORT
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
# Cyrus SASL with the sasldb of the instance (etc/sasl/smtpd.conf).
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = $PF/etc/sasl
smtpd_sasl_local_domain =
smtpd_sasl_security_options = noanonymous
# Refusals are part of the limit check: no tarpit, no error disconnects.
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 10000
smtpd_hard_error_limit = 10000
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
biff = no
CF
{
    echo ""
    echo "# --- conf/postfix/main.cf.milter; smtpd_milters is set per service in master.cf ---"
    awk '/^smtpd_milters[ \t]*=/ {print "smtpd_milters ="; n++; next} {print} END {if (n != 1) exit 1}' \
        "$ROOT/conf/postfix/main.cf.milter" ||
        { echo "conf/postfix/main.cf.milter must set smtpd_milters exactly once" >&2; exit 1; }
} >>"$PF/etc/main.cf"
# Postfix waits for a main.cf modified within the last second to settle.
touch -d '-1 min' "$PF/etc/main.cf" "$PF/etc/master.cf"

pf_stop() {
    master=$(tr -d ' ' <"$PF/spool/pid/master.pid" 2>/dev/null || true)
    timeout 30 /usr/sbin/postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
    if [ -n "$master" ]; then
        for _ in $(seq 1 150); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$master" 2>/dev/null || true
    fi
    if [ -n "$CG" ]; then
        for _ in $(seq 1 50); do [ -s "$CG/postfix/tasks" ] || break; sleep 0.1; done
        for pid in $(cat "$CG/postfix/tasks"); do kill -9 "$pid" 2>/dev/null || true; done
    fi
    PF_RUNNING=0
}
PF_RUNNING=1
"$IN_CG" "$(cgdir postfix)" /usr/sbin/postfix -c "$PF/etc" start >"$WORK/postfix-start.log" 2>&1 || {
    echo "postfix start failed; end of $PF/maillog:" >&2
    tail -n 20 "$PF/maillog" >&2
    exit 1
}
for s in $ALL_SERVICES; do wait_listening "$(smtpd_port "$s")" "postfix smtpd ($s)"; done

queued() { find "$PF/spool/maildrop" "$PF/spool/incoming" "$PF/spool/active" "$PF/spool/deferred" -type f 2>/dev/null | wc -l; }
wait_queue_empty() { for _ in $(seq 1 3000); do [ "$(queued)" = 0 ] && return 0; sleep 0.05; done; }

# --------------------------------------------------------------- the load
# load OUTPREFIX SERVICE PROCS THREADS COUNT PICK FIRST USERS SEED: starts
# PROCS generators (THREADS x COUNT messages each) and waits for them.
load() {
    out=$1 port=$(smtpd_port "$2") procs=$3 threads=$4 count=$5 pick=$6 first=$7 users=$8 seed=$9
    gens=""
    for k in $(seq 1 "$procs"); do
        "$IN_CG" "$(cgdir gen)" timeout 600 "$PYTHON" "$ROOT/bench/lib/smtp_auth_load.py" --port "$port" \
            --threads "$threads" --count "$count" --pick "$pick" --first "$first" --users "$users" \
            --seed "$((seed * 100 + k))" --size "$MSG_SIZE" --password "$PASSWORD" --domain "$DOMAIN" \
            >"$out-$k.json" 2>"$out-$k.err" &
        gens="$gens $!"
    done
    for pid in $gens; do wait "$pid" || echo "load generator exited with $? ($out)" >&2; done
}

# ------------------------------------------------------------- one record
# record JSON-FIELDS...: python3 builds one JSON line from the files named in
# its environment and appends it to $RESULTS; prints a one-line summary.
record() {
    python3 - "$@" >>"$RESULTS" <<'PY'
import glob, json, os, statistics, sys

def cmdstats(path):
    """INFO commandstats -> {command: calls}, without the harness' own commands."""
    out = {}
    if not path or not os.path.exists(path):
        return out
    for line in open(path):
        line = line.strip()
        if line.startswith("cmdstat_"):
            name, rest = line[8:].split(":", 1)
            calls = int(dict(kv.split("=") for kv in rest.split(","))["calls"])
            if name.split("|")[0] in ("info", "config", "ping", "dbsize", "memory", "monitor", "client"):
                continue
            out[name] = calls
    return out

def info_field(path, field):
    if not path or not os.path.exists(path):
        return None
    for line in open(path):
        if line.startswith(field + ":"):
            return float(line.split(":", 1)[1])
    return None

def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]

e = os.environ
rec = json.loads(sys.argv[1])
gens = [json.load(open(f)) for f in sorted(glob.glob(e["GEN"] + "-*.json")) if os.path.getsize(f)]
if gens:
    rec["sent"] = sum(g["sent"] for g in gens)
    rec["accepted"] = sum(g["accepted"] for g in gens)
    refused = {}
    for g in gens:
        for k, v in g["refused"].items():
            refused[k] = refused.get(k, 0) + v
    rec["refused"] = refused
    rec["errors"] = sum(g["errors"] for g in gens)
    rec["refusal_texts"] = sorted({t for g in gens for t in g["refusal_texts"]})[:5]
    rec["error_texts"] = sorted({t for g in gens for t in g["error_texts"]})[:5]
    txn = [v for g in gens for v in g.get("txn_ms", [])]
    sess = [v for g in gens for v in g.get("session_ms", [])]
    rec.update(txn_p50_ms=pct(txn, 0.5), txn_p99_ms=pct(txn, 0.99),
               session_p50_ms=pct(sess, 0.5), session_p99_ms=pct(sess, 0.99))
num = lambda k: float(e[k]) if e.get(k) else None
if e.get("T_START"):
    elapsed = num("T_END") - num("T_START")
    rec["elapsed_s"] = elapsed
    rec["inject_s"] = num("T_INJ") - num("T_START")
    if e.get("S0"):
        rec["delivered"] = int(e["S1"]) - int(e["S0"])
        rec["msgs_per_s"] = rec["delivered"] / elapsed if elapsed > 0 else None
    rec["left_in_queue"] = int(e.get("LEFT") or 0)
for name in ("MILTER", "POSTFIX", "GENCPU", "REDISCPU"):
    a, b = e.get(name + "0"), e.get(name + "1")
    rec[name.lower() + "_cpu_s"] = (int(b) - int(a)) / 1e9 if a and b else None
load_cs = cmdstats(e.get("CS_LOAD"))
if e.get("CS_LOAD"):
    rec["redis_calls"] = load_cs
    rec["redis_calls_total"] = sum(load_cs.values())
    idle_cs = cmdstats(e.get("CS_IDLE"))
    if e.get("CS_IDLE"):
        idle_s = num("IDLE_END") - num("IDLE_START")
        rec["redis_idle_calls"] = idle_cs
        rec["redis_idle_s"] = idle_s
        scale = rec.get("elapsed_s", 0) / idle_s if idle_s > 0 else 0
        rec["redis_calls_net"] = {k: max(0.0, v - idle_cs.get(k, 0) * scale) for k, v in load_cs.items()}
        rec["redis_calls_net_total"] = sum(rec["redis_calls_net"].values())
for key in ("MEM0", "MEM1", "DATASET0", "DATASET1", "KEYS0", "KEYS1", "RSS0", "RSS1", "KEY_SAMPLE"):
    if e.get(key):
        rec[key.lower()] = int(float(e[key]))
if e.get("BENCH_JSON") and os.path.exists(e["BENCH_JSON"]) and os.path.getsize(e["BENCH_JSON"]):
    b = json.load(open(e["BENCH_JSON"]))
    rec["bench"] = {k: b.get(k) for k in ("messages", "accepted", "tempfail", "reject", "errors", "tps")}
rec["loadavg"] = e.get("LA", "")
print(json.dumps(rec, sort_keys=True))
PY
    tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.load(sys.stdin)
msg = "  %-10s %-3s %-12s" % (r["part"], r.get("round", ""), r["config"])
if "accepted" in r:
    msg += " %d/%d accepted, refused %s, errors %d" % (r["accepted"], r["sent"], r["refused"] or "none", r["errors"])
if r.get("msgs_per_s"):
    msg += ", %.1f msg/s, txn p50 %.1f ms p99 %.1f ms" % (r["msgs_per_s"], r["txn_p50_ms"] or 0, r["txn_p99_ms"] or 0)
n = r.get("delivered") or r.get("accepted") or r.get("sent") or 0
if r.get("redis_calls_total") is not None and r.get("sent"):
    calls = r.get("redis_calls_net") or r["redis_calls"]
    top = ", ".join("%s %.2f" % (k, v / r["sent"]) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:4])
    msg += "; Redis calls/msg %.2f (%s)" % (sum(calls.values()) / r["sent"], top or "-")
if r.get("mem1") is not None:
    msg += "; used_memory +%d B, keys +%d" % (r["mem1"] - r["mem0"], r["keys1"] - r["keys0"])
print(msg + "  [load %s]" % r["loadavg"])' >&2
}

# measure PART ROUND CONFIG MESSAGES PICK FIRST USERS PROCS THREADS: one
# measured batch through CONFIG's smtpd.
measure() {
    part=$1 round=$2 config=$3 total=$4 pick=$5 first=$6 users=$7 procs=$8 threads=$9
    count=$((total / procs / threads))
    [ "$count" -ge 1 ] || count=1
    group=$(group_of "$config")
    gen=$WORK/gen/$part-$round-$config
    rm -f "$gen"-*.json
    export GEN=$gen LA CS_IDLE="" CS_LOAD="" IDLE_START="" IDLE_END=""
    if uses_redis "$config"; then
        # What Redis sees with nothing sent: the other milters' background.
        rcli config resetstat >/dev/null
        IDLE_START=$(now)
        sleep "$IDLE_S"
        rcli info commandstats >"$gen.idle"
        IDLE_END=$(now)
        CS_IDLE=$gen.idle
    fi
    rcli config resetstat >/dev/null
    LA=$(loadavg)
    export S0 S1 T_START T_INJ T_END LEFT MILTER0 MILTER1 POSTFIX0 POSTFIX1 GENCPU0 GENCPU1 REDISCPU0 REDISCPU1
    S0=$(sink_count)
    MILTER0=$(cg_ns "$group") POSTFIX0=$(cg_ns postfix) GENCPU0=$(cg_ns gen) REDISCPU0=$(cg_ns redis)
    T_START=$(now)
    load "$gen" "$config" "$procs" "$threads" "$count" "$pick" "$first" "$users" "$round"
    T_INJ=$(now)
    wait_queue_empty
    T_END=$(now)
    S1=$(sink_count)
    MILTER1=$(cg_ns "$group") POSTFIX1=$(cg_ns postfix) GENCPU1=$(cg_ns gen) REDISCPU1=$(cg_ns redis)
    LEFT=$(queued)
    if uses_redis "$config"; then
        # A milter may still be talking to Redis after Postfix has its reply
        # (rspamd updates its buckets after the scan): give it a moment.
        sleep 0.3
        rcli info commandstats >"$gen.load"
        CS_LOAD=$gen.load
    fi
    record "{\"part\": \"$part\", \"round\": $round, \"config\": \"$config\"}"
}

rotate() {
    n=$1; shift
    count=$#
    i=0
    for _ in "$@"; do
        idx=$(((i + n) % count + 1))
        eval "printf '%s ' \"\${$idx}\""
        i=$((i + 1))
    done
}

configs=""
for c in $CONFIGS; do
    case $c in egress*) [ "$have_egress" = 1 ] || continue ;; esac
    configs="$configs $c"
done

echo "scratch directory: $WORK; rspamd $RSPAMD_VERSION, redis $REDIS_VERSION; configurations:$configs" \
    "(load average at start: $(loadavg))" >&2
printf '{"part": "meta", "config": "-", "rspamd": "%s", "redis": "%s", "egress_bin": "%s", "have_egress": %s, "identities": %s, "messages": %s, "senders": %s, "sessions": %s}\n' \
    "$RSPAMD_VERSION" "$REDIS_VERSION" "$EGRESS_BIN" "$have_egress" "$IDENTITIES" "$MESSAGES" "$SENDERS" "$SESSIONS" \
    >>"$RESULTS"

# ------------------------------------------------------------ limit check
limit_check() { # CONFIG FIRST-USER
    measure limit 1 "$1" "$LIMIT_MESSAGES" fixed "$2" 1 1 1
    measure limit-parallel 1 "$1" "$LIMIT_MESSAGES" same "$(($2 + 2))" 1 1 "$LIMIT_MESSAGES"
}
case " $PARTS " in *" limit "*)
    echo "== limit (3 messages an hour per user; $LIMIT_MESSAGES sent one after the other, then at once)" >&2
    start_rspamd rspamd_low rspamd-low "$WORK/rspamd-low" "127.0.0.1:$RSPAMD_LOW_PORT" 3 "3 / 1h"
    limit_check rspamd-low "$IDENTITIES"
    stop_pid "$PID_rspamd_low"
    if [ "$have_egress" = 1 ]; then
        start egress_low "$IN_CG" "$(cgdir egress-low)" "$EGRESS_BIN" -c "$WORK/egress-low.toml" run
        wait_listening "$EGRESS_LOW_PORT" "egress-milter (limit check)"
        limit_check egress-low "$((IDENTITIES + 1))"
        stop_pid "$PID_egress_low"
    fi
    ;;
esac

# ---------------------------------------------------------------- warm-up
case " $PARTS " in *" roundtrips "* | *" throughput "*)
    echo "== warm-up: every user once through each configuration" >&2
    for c in $configs; do
        measure warmup 0 "$c" "$IDENTITIES" cycle 0 "$IDENTITIES" 1 "$SESSIONS"
    done
    ;;
esac

# ------------------------------------------------------------- round trips
case " $PARTS " in *" roundtrips "*)
    echo "== round trips (Redis MONITOR, $RT_MESSAGES messages each)" >&2
    for c in $configs; do
        uses_redis "$c" || continue
        mon=$WORK/monitor-$c.txt
        ss -Htnp state established "( dport = :$REDIS_PORT )" >"$mon.ss0" 2>/dev/null || true
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" monitor >"$mon" 2>&1 &
        mon_pid=$!
        PIDS="$PIDS $mon_pid"
        sleep 0.5
        measure roundtrips 0 "$c" "$RT_MESSAGES" uniform 0 "$IDENTITIES" 1 "$SESSIONS"
        sleep 0.5
        ss -Htnp state established "( dport = :$REDIS_PORT )" >"$mon.ss1" 2>/dev/null || true
        stop_pid "$mon_pid"
        PIDMAP="${PID_rspamd:-}=rspamd ${PID_egress:-}=egress ${PID_egress_unix:-}=egress-unix" \
            python3 - "$c" "$mon" "$RT_MESSAGES" >>"$RESULTS" <<'PY'
import json, os, re, sys
config, path, sent = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Which daemon each connection to Redis belongs to: the client port -> pid
# (ss -tnp) -> the daemon we started, or its parent (rspamd's workers).
labels = dict(kv.split("=", 1) for kv in os.environ.get("PIDMAP", "").split() if not kv.startswith("="))
def ppid(pid):
    try:
        return open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()[1]
    except OSError:
        return None
owner = {}
for ss in (path + ".ss0", path + ".ss1"):
    for line in open(ss):
        f = line.split()
        m = re.search(r'users:\(\("([^"]+)",pid=(\d+)', line)
        if len(f) >= 4 and m:
            owner[f[2]] = labels.get(m.group(2)) or labels.get(ppid(m.group(2))) or m.group(1)
line_re = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?')
direct, nested, by_client = {}, {}, {}
for line in open(path, errors="replace"):
    m = line_re.match(line)
    if not m:
        continue
    client, cmd, arg = m.group(1), m.group(2).lower(), (m.group(3) or "").lower()
    if cmd in ("info", "config", "ping", "dbsize", "memory"):
        continue  # the harness' own (redis-cli), not the milters'
    if cmd in ("script", "client", "object"):
        cmd = cmd + "|" + arg
    if client == "lua":
        nested[cmd] = nested.get(cmd, 0) + 1
    else:
        who = owner.get(client, "unknown")
        by_client.setdefault(who, {})
        by_client[who][cmd] = by_client[who].get(cmd, 0) + 1
print(json.dumps({"part": "roundtrips-monitor", "config": config, "sent": sent, "by_process": by_client,
                  "inside_scripts": nested}, sort_keys=True))
PY
        tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.load(sys.stdin)
for who, cmds in r["by_process"].items():
    print("  roundtrips %-12s from %-14s %.2f commands/msg: %s" % (r["config"], who, sum(cmds.values()) / r["sent"],
          ", ".join("%s %.2f" % (k, v / r["sent"]) for k, v in sorted(cmds.items(), key=lambda kv: -kv[1]))))
print("  roundtrips %-12s inside scripts     %.2f commands/msg" % (r["config"], sum(r["inside_scripts"].values()) / r["sent"]))' >&2
    done
    ;;
esac

# ------------------------------------------------------------- throughput
case " $PARTS " in *" throughput "*)
    echo "== throughput ($ROUNDS rounds x$configs; $MESSAGES messages, $SENDERS x $SESSIONS sessions)" >&2
    for round in $(seq 1 "$ROUNDS"); do
        for c in $(rotate "$((round - 1))" $configs); do
            measure throughput "$round" "$c" "$MESSAGES" uniform 0 "$IDENTITIES" "$SENDERS" "$SESSIONS"
        done
    done
    ;;
esac

# ----------------------------------------------------------------- memory
case " $PARTS " in *" memory "*)
    if [ ! -x "$MILTER_BENCH" ]; then
        echo "memory part skipped: $MILTER_BENCH not found (cargo build --release -p milter-bench)" >&2
    else
        echo "== memory ($MEM_IDENTITIES new identities, one message each, milter-bench on the unix socket)" >&2
        for c in rspamd-unix egress-unix; do
            case " $configs " in *" $c "*) ;; *) continue ;; esac
            case $c in rspamd-unix) sock=$RSPAMD_SOCK ;; egress-unix) sock=$WORK/sock/egress.sock ;; esac
            group=$(group_of "$c")
            rcli memory purge >/dev/null 2>&1 || true
            sleep 0.5
            export MEM0 KEYS0 RSS0 MEM1 KEYS1 RSS1 DATASET0 DATASET1 LA GEN=$WORK/gen/none CS_LOAD=$WORK/gen/mem-$c.load CS_IDLE=""
            export T_START="" S0=""
            MEM0=$(rcli info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
            DATASET0=$(rcli info memory | sed -n 's/^used_memory_dataset:\([0-9]*\).*/\1/p')
            KEYS0=$(rcli dbsize)
            RSS0=$(cg_rss_kb "$group")
            LA=$(loadavg)
            rcli config resetstat >/dev/null
            timeout 900 "$MILTER_BENCH" --socket "unix:$sock" --identities "$MEM_IDENTITIES" \
                --messages "$MEM_IDENTITIES" --distribution sequential --identity-prefix "mem-$c-" \
                --warmup 0 --concurrency 8 --per-connection 10 --max-time 800 --json \
                >"$WORK/gen/mem-$c.bench.json" 2>"$WORK/gen/mem-$c.bench.err" ||
                echo "milter-bench exited with $? ($c); see $WORK/gen/mem-$c.bench.err" >&2
            sleep 1
            rcli info commandstats >"$CS_LOAD"
            MEM1=$(rcli info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
            DATASET1=$(rcli info memory | sed -n 's/^used_memory_dataset:\([0-9]*\).*/\1/p')
            KEYS1=$(rcli dbsize)
            RSS1=$(cg_rss_kb "$group")
            # MEMORY USAGE of up to 50 of the new keys (key, value and the
            # allocator's rounding; not the main dict's and expires dict's slots).
            case $c in rspamd*) pattern='RL*' ;; *) pattern=$(sed -n 's/^prefix = "\(.*\)"/\1/p' "$WORK/$c.toml")'*' ;; esac
            export KEY_SAMPLE
            KEY_SAMPLE=$(rcli --scan --pattern "$pattern" | head -n 50 |
                while read -r key; do rcli memory usage "$key"; done | awk '{s += $1; n++} END {if (n) printf "%.0f", s / n}')
            BENCH_JSON=$WORK/gen/mem-$c.bench.json \
                record "{\"part\": \"memory\", \"config\": \"$c\", \"sent\": $MEM_IDENTITIES, \"identities\": $MEM_IDENTITIES}"
        done
    fi
    ;;
esac

python3 "$ROOT/bench/lib/fleet_table.py" "$RESULTS"
