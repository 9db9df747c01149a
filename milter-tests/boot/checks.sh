#!/bin/bash
# egress-milter – stop hijacked mail accounts from flooding the internet
# Copyright © 2026 The egress-milter developers
# SPDX-License-Identifier: GPL-3.0-or-later
#
# The package under a real systemd: run inside a minimal Debian 12 root
# (debootstrap --variant=minbase, plus systemd) booted with systemd-nspawn,
# by the oneshot unit egress-milter-boot-test.service, which powers the
# container off when this script ends. milter-tests/package.sh builds the
# root, boots it and reads the results.
#
# In:  /mnt/boot-test/egress-milter.deb, milter-client.pl (read-only)
# Out: /mnt/boot-results/results: one "ok: ..." or "FAIL: ..." line per
#      check, then "done"; journal.txt: the unit's journal.
#
# Postfix itself is not installed: its user, group and queue directory are
# made as the postfix package makes them, which is all the socket's access
# control depends on. The milter protocol is spoken by milter-client.pl.
set -uo pipefail

in=/mnt/boot-test
out=/mnt/boot-results
results=$out/results
: >"$results"
ok() { printf 'ok: %s\n' "$*" | tee -a "$results"; }
bad() { printf 'FAIL: %s\n' "$*" | tee -a "$results"; }
# check DESCRIPTION COMMAND...: one check, passed when COMMAND succeeds.
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
note() { printf '  %s\n' "$*" | tee -a "$results"; }
# The end is "done" whatever happened, so package.sh can tell a finished
# run from a container that died.
finish() {
    journalctl -u egress-milter --no-pager -o short-monotonic >"$out/journal.txt" 2>&1
    # Seconds since the container's PID 1 started (/proc/uptime is the
    # host's), and how long the checks ran.
    local up start
    up=$(cut -d' ' -f1 /proc/uptime)
    start=$(awk '{ print $22 }' /proc/1/stat)
    awk -v u="$up" -v s="$start" -v t="$(getconf CLK_TCK)" -v c="$SECONDS" \
        'BEGIN { printf "seconds: %.1f %d\n", u - s / t, c }' >>"$results"
    echo done >>"$results"
}
trap finish EXIT

unit=egress-milter.service
conf=/etc/egress-milter/egress-milter.toml
spool=/var/spool/postfix/egress-milter
sock=$spool/milter.sock
client() { perl "$in/milter-client.pl" "$@"; }
# as USER ARGS...: the milter client as USER.
as() {
    local user=$1
    shift
    runuser -u "$user" -- perl "$in/milter-client.pl" "$@"
}
main_pid() { systemctl show -P MainPID "$unit"; }
# wait_for SECONDS COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}
# journal_has TEXT: the unit's journal (this boot) contains TEXT.
journal_has() { journalctl -u egress-milter --no-pager -o cat | grep -qF -- "$1"; }
# expect OUTPUT COMMAND...: COMMAND prints OUTPUT (its first line); else
# shows what it printed.
expect() {
    local want=$1 got
    shift
    got=$("$@" 2>&1 | head -n 1)
    [[ "$got" == "$want"* ]] || { note "expected \"$want\", got \"$got\""; return 1; }
}

# ---------------------------------------------------------------- the root

check "systemd is PID 1 ($(systemctl is-system-running 2>/dev/null || true))" \
    test "$(cat /proc/1/comm)" = systemd
check "minimal root: no /bin/kill, no /usr/bin/kill (procps is not installed)" \
    eval '! [ -e /bin/kill ] && ! [ -e /usr/bin/kill ] && ! dpkg-query -W procps >/dev/null 2>&1'

# dpkg without fsync: the container is thrown away after the run.
echo force-unsafe-io >/etc/dpkg/dpkg.cfg.d/egress-milter-boot-test

# What the postfix package sets up (its postinst): a system user and group
# postfix, and the queue directory, owned by root.
adduser --system --group --quiet --no-create-home --home /var/spool/postfix postfix
install -d -o root -g root -m 0755 /var/spool/postfix

# ---------------------------------------------------------------- install

# No policy-rc.d here: postinst starts the daemon, as on a real host.
if out_apt=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$in/egress-milter.deb" 2>&1); then
    ok "apt-get install ./egress-milter.deb (offline: its dependencies are in the root)"
else
    bad "apt-get install ./egress-milter.deb"
    printf '%s\n' "$out_apt" | tail -n 20 | sed 's/^/  /' | tee -a "$results"
    exit 0
fi
check "postinst started the unit: active, and the socket is there" \
    wait_for 10 eval 'systemctl is-active --quiet $unit && [ -S $sock ]'
check "$spool: egress-milter:postfix, mode 2750 (made by the unit's ExecStartPre)" \
    expect "egress-milter:postfix 2750" stat -c '%U:%G %a' "$spool"
check "$sock: egress-milter:postfix, mode 0660" \
    expect "egress-milter:postfix 660 socket" stat -c '%U:%G %a %F' "$sock"
check "journal: started on the packaged socket" \
    journal_has "egress-milter started socket=unix:$sock"
exposure=$(systemd-analyze security "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
check "systemd-analyze security: exposure ${exposure:-?} (at most 2.0)" \
    awk -v e="${exposure:-99}" 'BEGIN { exit !(e + 0 <= 2.0) }'

# ---------------------------------------------------------------- the socket

check "as user postfix: a message through the socket is accepted" \
    expect accepted as postfix "$sock" send alice@example.com
check "journal: the message was counted for alice@example.com" \
    journal_has "identity=alice@example.com source=auth"
check "as user nobody: connecting to the socket fails with EACCES" \
    expect "error: EACCES" as nobody "$sock" connect
check "as user nobody: the socket cannot even be looked up in its directory" \
    eval '! runuser -u nobody -- test -e $sock'
useradd --no-create-home mallory
check "as a local user (mallory, no groups): connecting fails with EACCES" \
    expect "error: EACCES" as mallory "$sock" connect

# ---------------------------------------------------------------- reload

pid=$(main_pid)
check "before the reload: bob sends 2 messages (packaged limits)" \
    eval 'expect accepted as postfix $sock send bob@example.com && expect accepted as postfix $sock send bob@example.com'
packaged=$(cat "$conf")
# The same socket as packaged; one rule, 1 message an hour.
small_limit() {
    grep -E '^socket(_mode)? *=' <<<"$packaged"
    cat <<'EOF'

[[rule]]
name = "boot-test"
rate = "1/1h"
action = "tempfail"

[locks]
file = "/var/lib/egress-milter/locks.toml"
EOF
}
small_limit >"$conf"
check "systemctl reload with a changed limit succeeds" systemctl reload "$unit"
check "after the reload: same main PID, journal says configuration reloaded" \
    eval '[ "$(main_pid)" = "$pid" ] && wait_for 5 journal_has "configuration reloaded"'
check "the changed limit is in force: carol's first message accepted, second refused by rule boot-test" \
    eval 'expect accepted as postfix $sock send carol@example.com &&
        expect "refused at data: reply 451 4.7.1 Rate limit \"boot-test\"" as postfix $sock send carol@example.com'

# A broken file: check-config fails the reload, the daemon keeps running
# on what it had.
{ small_limit; printf '\n[[rule]]\nname = "broken"\nrate = "lots"\naction = "tempfail"\n'; } >"$conf"
if reload_out=$(systemctl reload "$unit" 2>&1); then
    bad "systemctl reload with a broken config fails"
else
    ok "systemctl reload with a broken config fails"
fi
check "the reload's failure names the error (journal: invalid rate \"lots\")" \
    wait_for 5 journal_has 'invalid rate "lots"'
check "after the refused reload: active, same main PID" \
    eval 'systemctl is-active --quiet $unit && [ "$(main_pid)" = "$pid" ]'
# SIGHUP without the unit's check (systemctl kill): the daemon refuses the
# file itself.
check "systemctl kill -s HUP --kill-whom=main with the broken config: the daemon keeps its configuration" \
    eval 'systemctl kill -s HUP --kill-whom=main $unit &&
        wait_for 5 journal_has "configuration not reloaded, keeping the running one" &&
        systemctl is-active --quiet $unit && [ "$(main_pid)" = "$pid" ]'
check "still the 1/1h limit after both: dave's first accepted, second refused" \
    eval 'expect accepted as postfix $sock send dave@example.com &&
        expect "refused at data: reply 451" as postfix $sock send dave@example.com'

# ---------------------------------------------------------------- /run (Sendmail)

run_sock=/run/egress-milter/milter.sock
{ small_limit | sed "s|^socket *=.*|socket = \"unix:$run_sock\"|"; } >"$conf"
check "restart on unix:$run_sock (the Sendmail setup)" \
    eval 'systemctl restart $unit && wait_for 10 test -S $run_sock'
check "/run/egress-milter: egress-milter:egress-milter, mode 750" \
    expect "egress-milter:egress-milter 750" stat -c '%U:%G %a' /run/egress-milter
check "as root (as Sendmail's daemon runs): a message is accepted" \
    expect accepted client "$run_sock" send erin@example.com
check "as users nobody and postfix (not in group egress-milter): EACCES" \
    eval 'expect "error: EACCES" as nobody $run_sock connect && expect "error: EACCES" as postfix $run_sock connect'
check "restart: the old socket in $spool was removed at stop" test ! -e "$sock"

# ---------------------------------------------------------------- stop, purge

printf '%s\n' "$packaged" >"$conf"
check "systemctl stop: inactive, socket removed" \
    eval 'systemctl stop $unit && ! systemctl is-active --quiet $unit && ! [ -e $run_sock ]'
if out_apt=$(DEBIAN_FRONTEND=noninteractive apt-get purge -y -q egress-milter 2>&1); then
    ok "apt-get purge egress-milter"
else
    bad "apt-get purge egress-milter"
    printf '%s\n' "$out_apt" | tail -n 20 | sed 's/^/  /' | tee -a "$results"
fi
check "purge: /etc/egress-milter, /var/lib/egress-milter and $spool gone, /var/spool/postfix kept" \
    eval '! [ -e /etc/egress-milter ] && ! [ -e /var/lib/egress-milter ] && ! [ -e $spool ] && [ -d /var/spool/postfix ]'
check "purge: unit gone and not enabled, dpkg forgets the package" \
    eval '! [ -e /usr/lib/systemd/system/$unit ] && ! [ -e /etc/systemd/system/multi-user.target.wants/$unit ] &&
        [ "$(systemctl show -P LoadState $unit)" = not-found ] &&
        ! dpkg-query -W -f="\${db:Status-Status}" egress-milter 2>/dev/null | grep -qv not-installed'

# ---------------------------------------------------------------- Postfix later

# Without Postfix the packaged socket's directory cannot be made: the
# install still succeeds, the daemon says why it does not run, and once
# Postfix is there a restart is all it takes (docs/install.md, step 2).
deluser --quiet --system postfix >/dev/null 2>&1
rm -rf /var/spool/postfix
if out_apt=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$in/egress-milter.deb" 2>&1); then
    ok "without Postfix: apt-get install succeeds"
else
    bad "without Postfix: apt-get install succeeds"
    printf '%s\n' "$out_apt" | tail -n 20 | sed 's/^/  /' | tee -a "$results"
fi
check "without Postfix: the daemon does not run and says why (cannot listen on unix:$sock)" \
    eval '! [ -e /var/spool/postfix ] && wait_for 10 journal_has "cannot listen on unix:$sock: the socket'"'"'s directory $spool does not exist: is Postfix installed?"'
# Exit status 78 (EX_CONFIG), which RestartPreventExitStatus= keeps the
# unit from restarting every RestartSec= (with 1 it looped until systemd's
# start limit).
unit_failed() { [ "$(systemctl show -P ActiveState "$unit")" = failed ]; }
check "without Postfix: exit status 78 and no restart loop" \
    eval 'wait_for 10 unit_failed && expect 78 systemctl show -P ExecMainStatus $unit &&
        sleep 3 && expect 0 systemctl show -P NRestarts $unit && unit_failed'
adduser --system --group --quiet --no-create-home --home /var/spool/postfix postfix
install -d -o root -g root -m 0755 /var/spool/postfix
check "Postfix installed later: systemctl restart makes the directory and listens" \
    eval 'systemctl reset-failed $unit; systemctl restart $unit && wait_for 10 test -S $sock &&
        expect "egress-milter:postfix 2750" stat -c "%U:%G %a" $spool &&
        expect accepted as postfix $sock send frank@example.com'
check "apt-get purge again" eval 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -q egress-milter >/dev/null 2>&1 && ! [ -e $spool ]'
