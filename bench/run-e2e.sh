#!/bin/sh
# End to end through a real, private Postfix instance: smtp-source (the load)
# -> Postfix smtpd (+ milter or policy service) -> queue -> Postfix smtp ->
# smtp-sink (the count). Everything on 127.0.0.1, nothing of the machine's
# own Postfix is used or touched.
#
# Parts (PARTS, default all three):
#   throughput  several senders at once; messages/s counted at the sink and
#               CPU per message of the filter and of Postfix, for CONFIGS:
#                 none     no milter, no policy service
#                 null-c   libmilter null milter (bench/null-milter-c), inet
#                 null-rs  indymilter null milter (null-milter), inet
#                 egress   egress-milter, bench/configs/e2e.toml, inet
#                 postfwd  postfwd2 as check_policy_service, a per-sender
#                          rate() rule that never triggers
#                 null-c-unix, egress-unix  the same milters on unix sockets
#   refusal     egress-milter against bench/configs/e2e-throttle.toml: one of
#               the senders is throttled (451) and then locked (550)
#   latency     ONE SMTP session sending LAT_MESSAGES messages (smtp-source
#               -s 1 -d): milliseconds per message, egress-milter over inet
#               with tcp_quickack on and off and over a unix socket, the
#               libmilter null milter over inet and unix, and no milter
# Configurations are interleaved round by round (ROUNDS rounds, the order
# rotated each round); bench/lib/e2e_table.py prints medians and ratios.
#
# The milter wiring is the documented one: conf/postfix/main.cf.milter is
# appended to the instance's main.cf with only the smtpd_milters socket
# replaced. CPU is read from per-process-group cgroups (cgroup v1 cpuacct:
# utime+stime of every process of the group, exited ones included) and, for
# single-process filters, also from /proc/PID/stat.
#
# Needs root (Postfix's master), Debian's postfix (smtp-source, smtp-sink),
# libmilter-dev and postfwd (installed here if missing, with a policy-rc.d
# that keeps the packaged daemon from starting).
#
# Usage: bench/run-e2e.sh
#   ROUNDS=5 MESSAGES=2000 SENDERS=4 SESSIONS=4 MSG_SIZE=1024 LAT_MESSAGES=300 (≈13 min)
#   PARTS="throughput refusal latency" CONFIGS="none null-c null-rs egress postfwd"
#   BASE_PORT=17120 KEEP=1 (keep the scratch directory) NO_BUILD=1 OUT=file.jsonl
# SPDX-License-Identifier: GPL-3.0-or-later
. "$(dirname "$0")/lib/common.sh"

ROUNDS=${ROUNDS:-5}
MESSAGES=${MESSAGES:-2000}
SENDERS=${SENDERS:-4}
SESSIONS=${SESSIONS:-4}
MSG_SIZE=${MSG_SIZE:-1024}
LAT_MESSAGES=${LAT_MESSAGES:-300}
PARTS=${PARTS:-throughput refusal latency}
CONFIGS=${CONFIGS:-none null-c null-rs egress postfwd null-c-unix egress-unix}
LAT_CONFIGS=${LAT_CONFIGS:-none null-c-inet null-c-unix egress-inet egress-inet-noquickack egress-unix}
BASE_PORT=${BASE_PORT:-17120}
SMTPD_PORT=$BASE_PORT
SINK_PORT=$((BASE_PORT + 1))
PFW_PORT=$((BASE_PORT + 2))
PFW_CACHE_PORT=$((BASE_PORT + 3))
NULLC_PORT=$((BASE_PORT + 4))
NULLRS_PORT=$((BASE_PORT + 5))
EGRESS_PORT=$((BASE_PORT + 6))
NOQA_PORT=$((BASE_PORT + 7))
THROTTLE_PORT=$((BASE_PORT + 8))

[ "$(id -u)" = 0 ] || { echo "run-e2e.sh must run as root (Postfix's master runs as root)" >&2; exit 1; }
for tool in postfix postconf smtp-source smtp-sink; do
    [ -x "/usr/sbin/$tool" ] || { echo "/usr/sbin/$tool missing: apt-get install postfix" >&2; exit 1; }
done

WORK=${WORK:-$(mktemp -d /tmp/egress-e2e.XXXXXX)}
mkdir -p "$WORK/sock" "$WORK/postfwd"
chmod 755 "$WORK" "$WORK/sock"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
PF=$WORK/postfix
PF_RUNNING=0
CG=""

# --- cleanup: Postfix, postfwd, every process of our cgroups, the scratch dir
e2e_cleanup() {
    set +e
    [ "$PF_RUNNING" = 1 ] && pf_stop
    [ -s "$WORK/postfwd/postfwd.pid" ] &&
        timeout 20 /usr/sbin/postfwd2 --pidfile "$WORK/postfwd/postfwd.pid" --kill >/dev/null 2>&1
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
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM

# --- cgroups (cpuacct, v1) for CPU accounting of whole process groups
if [ -d /sys/fs/cgroup/cpuacct ] && mkdir "/sys/fs/cgroup/cpuacct/egress-e2e-$$" 2>/dev/null; then
    CG=/sys/fs/cgroup/cpuacct/egress-e2e-$$
    for group in postfix gen sink null-c null-c-unix null-rs egress egress-noqa egress-unix egress-throttle postfwd; do
        mkdir "$CG/$group"
    done
else
    echo "no cgroup v1 cpuacct: Postfix and postfwd CPU figures will be missing" >&2
fi

# in_cg GROUP CMD...: runs CMD inside cgroup GROUP. A helper script that
# execs CMD, so that "$!" of "in_cg ... &" is CMD's own pid.
cat >"$WORK/in-cg" <<'SH'
#!/bin/sh
[ -n "$1" ] && echo $$ >"$1/tasks"
shift
exec "$@"
SH
chmod 755 "$WORK/in-cg"
in_cg() { _cg=$1; shift; "$WORK/in-cg" "${CG:+$CG/$_cg}" "$@"; }
IN_CG=$WORK/in-cg
cgdir() { echo "${CG:+$CG/$1}"; }

# cg_ns GROUP: CPU nanoseconds used so far by the group (empty without cgroups).
cg_ns() { if [ -n "$CG" ]; then cat "$CG/$1/cpuacct.usage"; fi; }

# proc_ticks PID: utime+stime of one process (all its threads), in clock ticks.
proc_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }

now() { date +%s.%N; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# listening PORT: true if something listens on 127.0.0.1:PORT (no probe
# connection: it would reach smtpd and its milter).
listening() {
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'NR > 1 && $4 == "0A" && ($2 == "0100007F" p || $2 == "00000000" p) {found=1} END {exit !found}' /proc/net/tcp
}
wait_listening() { # PORT WHAT
    for _ in $(seq 1 150); do listening "$1" && return 0; sleep 0.1; done
    echo "$2 does not listen on 127.0.0.1:$1" >&2
    return 1
}

# --- build and packages
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -q -p egress-milter -p milter-bench)
    if [ ! -f /usr/include/libmilter/mfapi.h ] || [ ! -x /usr/sbin/postfwd2 ]; then
        # The packaged postfwd must not start a daemon of its own.
        made_policy=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            made_policy=1
        fi
        timeout 600 apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
            libmilter-dev postfwd >"$WORK/apt.log" 2>&1 || echo "apt-get install failed: see $WORK/apt.log" >&2
        [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    fi
    "$ROOT/bench/null-milter-c/build.sh" "$BIN/null-milter-c" >/dev/null
fi

# --- the sink: counts what Postfix delivers
start sink "$IN_CG" "$(cgdir sink)" /usr/sbin/smtp-sink -c -u postfix "127.0.0.1:$SINK_PORT" 1024
wait_listening "$SINK_PORT" smtp-sink
sink_count() { tail -c 300 "$WORK/sink.log" | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -n 1 | grep . || echo 0; }

# --- the filters
egress_conf() { # SRC DEST SOCKET LOCKFILE [QUICKACK]
    sed -e "s#^socket = .*#socket = \"$3\"#" -e "s#^file = .*#file = \"$4\"#" "$1" >"$2"
    if [ -n "${5:-}" ]; then
        sed -i "s#^socket = .*#&\ntcp_quickack = $5#" "$2"
    fi
}
egress_conf "$ROOT/bench/configs/e2e.toml" "$WORK/egress.toml" "inet:127.0.0.1:$EGRESS_PORT" "$WORK/locks-egress.toml"
egress_conf "$ROOT/bench/configs/e2e.toml" "$WORK/egress-noqa.toml" "inet:127.0.0.1:$NOQA_PORT" \
    "$WORK/locks-noqa.toml" false
egress_conf "$ROOT/bench/configs/e2e.toml" "$WORK/egress-unix.toml" "unix:$WORK/sock/egress.sock" \
    "$WORK/locks-unix.toml"
egress_conf "$ROOT/bench/configs/e2e-throttle.toml" "$WORK/egress-throttle.toml" \
    "inet:127.0.0.1:$THROTTLE_PORT" "$WORK/locks-throttle.toml"

start null_c "$IN_CG" "$(cgdir null-c)" "$BIN/null-milter-c" "inet:$NULLC_PORT@127.0.0.1"
start null_c_unix "$IN_CG" "$(cgdir null-c-unix)" "$BIN/null-milter-c" "unix:$WORK/sock/null-c.sock"
start null_rs "$IN_CG" "$(cgdir null-rs)" "$BIN/null-milter" --socket "inet:127.0.0.1:$NULLRS_PORT"
start egress "$IN_CG" "$(cgdir egress)" "$BIN/egress-milter" -c "$WORK/egress.toml" run
start egress_noqa "$IN_CG" "$(cgdir egress-noqa)" "$BIN/egress-milter" -c "$WORK/egress-noqa.toml" run
start egress_unix "$IN_CG" "$(cgdir egress-unix)" "$BIN/egress-milter" -c "$WORK/egress-unix.toml" run
for port in $NULLC_PORT $NULLRS_PORT $EGRESS_PORT $NOQA_PORT; do wait_listening "$port" "milter"; done
for _ in $(seq 1 100); do
    [ -S "$WORK/sock/null-c.sock" ] && [ -S "$WORK/sock/egress.sock" ] && break
    sleep 0.1
done
# libmilter creates its socket with the umask: let smtpd (user postfix) in.
chmod 666 "$WORK/sock/null-c.sock"

# postfwd2: a per-sender rate limit that never triggers.
have_postfwd=0
if [ -x /usr/sbin/postfwd2 ]; then
    chown postfw "$WORK/postfwd" 2>/dev/null || true
    cat >"$WORK/postfwd/postfwd.cf" <<'CF'
# One rate limit per envelope sender, far above the benchmark's load.
id=RATE01; action=rate(sender/100000000/3600/450 4.7.1 sender rate exceeded)
CF
    # Debian's default arguments (/etc/default/postfwd) without the summary
    # log; --perfmon: no logging at all; --nodns: no DNS tests exist here.
    in_cg postfwd /usr/sbin/postfwd2 --daemon --file "$WORK/postfwd/postfwd.cf" \
        --server_socket "tcp:127.0.0.1:$PFW_PORT" --cache_socket "tcp:127.0.0.1:$PFW_CACHE_PORT" \
        --user postfw --group postfw --pidfile "$WORK/postfwd/postfwd.pid" --nodns --perfmon \
        --cache=600 --cache-rdomain-only --cache-no-size >"$WORK/postfwd.log" 2>&1 &&
        wait_listening "$PFW_PORT" postfwd2 && have_postfwd=1
fi
[ "$have_postfwd" = 1 ] || echo "postfwd2 not running: its rows will be missing" >&2

# --- the private Postfix
mkdir -p "$PF/etc" "$PF/spool"
chmod 755 "$PF" "$PF/etc"
cat >"$PF/etc/master.cf" <<CF
# Written by bench/run-e2e.sh. Nothing is chrooted.
127.0.0.1:$SMTPD_PORT inet n - n - - smtpd
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

# pf_config FILTER: writes main.cf for one configuration.
#   none | milter:SOCKET (Postfix notation) | postfwd
pf_config() {
    cat >"$PF/etc/main.cf" <<CF
# Written by bench/run-e2e.sh: configuration "$1".
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.e2e-bench.invalid
mydomain = e2e-bench.invalid
myorigin = \$myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:$SINK_PORT
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
# Refusals are part of the refusal run: no tarpit, no error disconnects.
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 10000
smtpd_hard_error_limit = 10000
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
biff = no
CF
    case $1 in
        milter:*)
            echo "" >>"$PF/etc/main.cf"
            echo "# --- conf/postfix/main.cf.milter, socket replaced ---" >>"$PF/etc/main.cf"
            awk -v sock="${1#milter:}" '/^smtpd_milters[ \t]*=/ {print "smtpd_milters = " sock; n++; next} {print}
                END {if (n != 1) exit 1}' "$ROOT/conf/postfix/main.cf.milter" >>"$PF/etc/main.cf" ||
                { echo "conf/postfix/main.cf.milter must set smtpd_milters exactly once" >&2; exit 1; }
            ;;
        postfwd)
            echo "smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:$PFW_PORT, permit" \
                >>"$PF/etc/main.cf"
            ;;
    esac
    # Postfix waits for a main.cf modified within the last second to settle.
    touch -d '-1 min' "$PF/etc/main.cf" "$PF/etc/master.cf"
}

pf_start() { # FILTER
    pf_config "$1"
    PF_RUNNING=1
    in_cg postfix /usr/sbin/postfix -c "$PF/etc" start >>"$WORK/postfix-start.log" 2>&1 || {
        echo "postfix start failed; end of $PF/maillog:" >&2
        tail -n 20 "$PF/maillog" >&2
        exit 1
    }
    wait_listening "$SMTPD_PORT" "postfix smtpd"
}

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

queued() { find "$PF/spool/maildrop" "$PF/spool/incoming" "$PF/spool/active" "$PF/spool/deferred" -type f 2>/dev/null | wc -l; }

# Filter of each configuration: main.cf setting, cgroup, pid (for /proc).
filter_of() {
    case $1 in
        none) echo "none - -" ;;
        null-c | null-c-inet) echo "milter:inet:127.0.0.1:$NULLC_PORT null-c $PID_null_c" ;;
        null-c-unix) echo "milter:unix:$WORK/sock/null-c.sock null-c-unix $PID_null_c_unix" ;;
        null-rs) echo "milter:inet:127.0.0.1:$NULLRS_PORT null-rs $PID_null_rs" ;;
        egress | egress-inet) echo "milter:inet:127.0.0.1:$EGRESS_PORT egress $PID_egress" ;;
        egress-inet-noquickack) echo "milter:inet:127.0.0.1:$NOQA_PORT egress-noqa $PID_egress_noqa" ;;
        egress-unix) echo "milter:unix:$WORK/sock/egress.sock egress-unix $PID_egress_unix" ;;
        egress-throttle) echo "milter:inet:127.0.0.1:$THROTTLE_PORT egress-throttle $PID_egress_throttle" ;;
        postfwd) echo "postfwd postfwd -" ;;
    esac
}

# measure PART ROUND CONFIG MODE: one measurement, one JSON line.
#   MODE many: SENDERS smtp-source processes, SESSIONS sessions each, one
#              message per SMTP session, MESSAGES in all;
#   MODE one:  one smtp-source session sending LAT_MESSAGES messages (-d).
measure() {
    part=$1 round=$2 config=$3 mode=$4
    set -- $(filter_of "$config")
    setting=$1 group=$2 fpid=$3
    pf_start "$setting"
    log0=$(stat -c %s "$PF/maillog" 2>/dev/null || echo 0)
    la=$(loadavg)
    s0=$(sink_count)
    p0=$(cg_ns postfix) g0=$(cg_ns gen)
    f0=""; [ "$group" != - ] && f0=$(cg_ns "$group")
    t0=""; [ "$fpid" != - ] && t0=$(proc_ticks "$fpid")
    start_s=$(now)
    gens=""
    if [ "$mode" = many ]; then
        per=$((MESSAGES / SENDERS / SESSIONS * SESSIONS))
        sent=$((per * SENDERS))
        for k in $(seq 1 "$SENDERS"); do
            if [ "$part" = refusal ] && [ "$k" = "$SENDERS" ]; then
                # smtp-source gives up at the first refused MAIL or RCPT:
                # the throttled sender is played by bench/lib/smtp_send.py
                # (SESSIONS clients in parallel, in both configurations).
                for _ in $(seq 1 "$SESSIONS"); do
                    "$IN_CG" "$(cgdir gen)" timeout 600 python3 "$ROOT/bench/lib/smtp_send.py" 127.0.0.1 \
                        "$SMTPD_PORT" "$((per / SESSIONS))" throttled@bench.example "rcpt$k@remote.example" \
                        "$MSG_SIZE" >>"$WORK/smtp-source.log" 2>&1 &
                    gens="$gens $!"
                done
                continue
            fi
            "$IN_CG" "$(cgdir gen)" timeout 600 /usr/sbin/smtp-source -s "$SESSIONS" -m "$per" -l "$MSG_SIZE" \
                -f "sender$k@bench.example" -t "rcpt$k@remote.example" "127.0.0.1:$SMTPD_PORT" \
                >>"$WORK/smtp-source.log" 2>&1 &
            gens="$gens $!"
        done
    else
        sent=$LAT_MESSAGES
        "$IN_CG" "$(cgdir gen)" timeout 600 /usr/sbin/smtp-source -s 1 -d -m "$LAT_MESSAGES" -l "$MSG_SIZE" \
            -f latency@bench.example -t rcpt@remote.example "127.0.0.1:$SMTPD_PORT" \
            >>"$WORK/smtp-source.log" 2>&1 &
        gens=$!
    fi
    for pid in $gens; do wait "$pid" || echo "smtp-source exited with $? ($part $config)" >&2; done
    injected_s=$(now)
    # Delivered when the queue is empty (the sink counts a message at its
    # final "." before Postfix deletes the queue file), bounded.
    for _ in $(seq 1 3000); do [ "$(queued)" = 0 ] && break; sleep 0.05; done
    end_s=$(now)
    s1=$(sink_count)
    p1=$(cg_ns postfix) g1=$(cg_ns gen)
    f1=""; [ "$group" != - ] && f1=$(cg_ns "$group")
    t1=""; [ "$fpid" != - ] && t1=$(proc_ticks "$fpid")
    left=$(queued)
    sleep 1 # let postlogd write the last lines
    refused_4xx=$(tail -c +$((log0 + 1)) "$PF/maillog" | grep -Ec 'milter-reject: (MAIL|RCPT) from .*: 4' || true)
    refused_5xx=$(tail -c +$((log0 + 1)) "$PF/maillog" | grep -Ec 'milter-reject: (MAIL|RCPT) from .*: 5' || true)
    pf_stop
    python3 - "$part" "$round" "$config" "$mode" "$sent" "$s0" "$s1" "$start_s" "$injected_s" "$end_s" \
        "${f0:-}" "${f1:-}" "${t0:-}" "${t1:-}" "${p0:-}" "${p1:-}" "${g0:-}" "${g1:-}" "$la" "$left" \
        "$refused_4xx" "$refused_5xx" >>"$RESULTS" <<'PY'
import json, os, sys
(part, rnd, config, mode, sent, s0, s1, t_start, t_inj, t_end, f0, f1, k0, k1, p0, p1, g0, g1, la, left,
 r4, r5) = sys.argv[1:]
tick = os.sysconf("SC_CLK_TCK")
ns = lambda a, b: (int(b) - int(a)) / 1e9 if a and b else None
delivered = int(s1) - int(s0)
elapsed = float(t_end) - float(t_start)
print(json.dumps({
    "part": part, "round": int(rnd), "config": config, "mode": mode, "sent": int(sent),
    "delivered": delivered, "left_in_queue": int(left), "refused_4xx": int(r4), "refused_5xx": int(r5),
    "elapsed_s": elapsed, "inject_s": float(t_inj) - float(t_start),
    "msgs_per_s": delivered / elapsed if elapsed > 0 else None,
    "filter_cpu_s": ns(f0, f1),
    "filter_cpu_proc_s": (int(k1) - int(k0)) / tick if k0 and k1 else None,
    "postfix_cpu_s": ns(p0, p1), "gen_cpu_s": ns(g0, g1), "loadavg": la,
}))
PY
    tail -n 1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %-8s round %d %-24s %5d/%d delivered %7.1f msg/s in %5.1f s (inject %5.1f s) load %s" % (r["part"], r["round"], r["config"], r["delivered"], r["sent"], r["msgs_per_s"] or 0, r["elapsed_s"], r["inject_s"], r["loadavg"]))' >&2
}

# rotate N LIST...: LIST rotated left by N (so each round starts elsewhere).
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
    [ "$c" = postfwd ] && [ "$have_postfwd" != 1 ] && continue
    configs="$configs $c"
done

echo "scratch directory: $WORK (load average at start: $(loadavg))" >&2
for part in $PARTS; do
    echo "== $part" >&2
    for round in $(seq 1 "$ROUNDS"); do
        case $part in
            throughput)
                for c in $(rotate "$((round - 1))" $configs); do measure throughput "$round" "$c" many; done
                ;;
            refusal)
                # A fresh throttled instance each round: the sender is locked anew.
                rm -f "$WORK/locks-throttle.toml"
                start egress_throttle "$IN_CG" "$(cgdir egress-throttle)" "$BIN/egress-milter" -c "$WORK/egress-throttle.toml" run
                wait_listening "$THROTTLE_PORT" "egress-milter (throttle)"
                for c in $(rotate "$((round - 1))" egress egress-throttle); do measure refusal "$round" "$c" many; done
                locked=$(grep -c 'throttled@bench.example' "$WORK/locks-throttle.toml" 2>/dev/null || true)
                echo "  refusal  round $round: throttled@bench.example in the lock list: ${locked:-0}" >&2
                stop_pid "$PID_egress_throttle"
                ;;
            latency)
                for c in $(rotate "$((round - 1))" $LAT_CONFIGS); do measure latency "$round" "$c" one; done
                ;;
        esac
    done
done

python3 "$ROOT/bench/lib/e2e_table.py" "$RESULTS"
