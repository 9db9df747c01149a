#!/usr/bin/env bash
# Installs, from Debian's packages, what the live-MTA test suite
# (milter-tests/live/) needs: Postfix, and the Cyrus SASL tools and plugins
# used for AUTH on the private instances' submission port; then two test
# users for the local-door test (see the local-door section); then Redis, for
# the fleet scenarios (see the Redis section); then rspamd, for the content
# verdicts (see the rspamd section); then Dovecot, for the Dovecot
# SASL test (see the Dovecot section); then Sendmail, unpacked into
# a private root (see the Sendmail section); then, for the package boot
# test of milter-tests/package.sh, systemd-nspawn, debootstrap and a cached
# minimal Debian root (see the last section); and Chromium with its
# WebDriver, for the review desk's browser test (see the Chromium section).
#
# Idempotent: exits 0 quickly when everything is already there. Must run as
# root to install anything. Postfix is installed non-interactively ("No
# configuration"), Redis, rspamd and Dovecot as they come, all with a temporary
# /usr/sbin/policy-rc.d that forbids starting services, so the install never
# starts a system-wide Postfix that would hold port 25, a system Redis on
# port 6379 nor a system Dovecot on the IMAP and POP3 ports; that file is
# removed again on every exit path.
#
# Usage: bash milter-tests/install-deps.sh [all|boot]
#   all (the default): everything; boot: only what the package boot test needs.
set -euo pipefail

packages=(postfix sasl2-bin libsasl2-modules)

say() { printf 'install-deps: %s\n' "$*"; }

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# Sets the caller's `missing` to those of the packages named that are not
# installed. Returns 1 (after saying so) when none is missing, so that the
# caller can return; exits when some are missing and this is not root.
find_missing() {
    missing=()
    local pkg
    for pkg in "$@"; do
        installed "$pkg" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "already installed: $*"
        return 1
    fi
    if [ "$(id -u)" != 0 ]; then
        say "must run as root to install: ${missing[*]}" >&2
        exit 1
    fi
}

# A "No configuration" install leaves no /etc/postfix/main.cf. The private
# instances bring their own, but postfix-script also asks the default
# instance for multi_instance_directories (postconf -c /etc/postfix), which
# fails loudly without one; an empty main.cf is enough and configures nothing
# (the local-door section below adds one line to it).
ensure_default_main_cf() {
    if [ -d /etc/postfix ] && [ ! -e /etc/postfix/main.cf ]; then
        if [ "$(id -u)" = 0 ]; then
            say "creating empty /etc/postfix/main.cf"
            : >/etc/postfix/main.cf
        else
            say "warning: /etc/postfix/main.cf is missing (run as root to create it)" >&2
        fi
    fi
}

# Forbid invoke-rc.d to start any daemon during an install, unless the
# machine already has a policy of its own (then leave that one alone).
# allow_service_starts removes ours again; so does the EXIT trap, on every
# path out of the script.
policy=/usr/sbin/policy-rc.d
own_policy=0
allow_service_starts() {
    if [ "$own_policy" = 1 ]; then
        rm -f "$policy"
        own_policy=0
        say "removed temporary $policy"
    fi
}
trap allow_service_starts EXIT
forbid_service_starts() {
    if [ ! -e "$policy" ]; then
        say "writing temporary $policy (exit 101: no service starts)"
        own_policy=1
        printf '#!/bin/sh\n# temporary, from egress-milter milter-tests/install-deps.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
    fi
}

# ---------------------------------------------------------------- Postfix
install_postfix() {
missing=()
for pkg in "${packages[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
    ensure_default_main_cf
    say "already installed: ${packages[*]}"
    return 0
fi

if [ "$(id -u)" != 0 ]; then
    say "must run as root to install: ${missing[*]}" >&2
    exit 1
fi

say "missing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

forbid_service_starts

if [[ " ${missing[*]} " == *" postfix "* ]]; then
    say "preseeding debconf: postfix main_mailer_type = No configuration"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
fi

# Refresh the package lists only when they do not know Postfix (fresh machine).
candidate=$(apt-cache policy postfix 2>/dev/null || true)
if [[ "$candidate" != *"Candidate: "[0-9]* ]]; then
    say "apt-get update"
    apt-get update -q
fi

say "apt-get install ${missing[*]}"
apt-get install -y -q --no-install-recommends "${missing[@]}"

# What the harness runs or loads.
for file in /usr/sbin/postfix /usr/sbin/postconf /usr/sbin/postqueue /usr/sbin/postsuper /usr/sbin/saslpasswd2; do
    if [ ! -x "$file" ]; then
        say "error: $file is missing after the install" >&2
        exit 1
    fi
done
if ! compgen -G '/usr/lib/*/sasl2/libplain.so*' >/dev/null; then
    say "error: the Cyrus SASL PLAIN plugin (libsasl2-modules) is missing" >&2
    exit 1
fi
ensure_default_main_cf
allow_service_starts
}

# ------------------------------------------------------------- local door
# For milter-tests/live/local_door.rs: two unprivileged Unix users, with no
# home and no login shell, whose mail the test submits with Postfix's
# sendmail command against a private instance; and the default instance's
# permission for that. A sendmail run by a user other than root (and the
# set-gid postdrop it starts) accepts a configuration directory other than
# /etc/postfix only if /etc/postfix/main.cf lists it in
# alternate_config_directories. The test makes $LOCAL_DOOR_CONFIG a
# symbolic link to its instance's etc/ (under a file lock, one test at a
# time), so one fixed entry is enough. The entry only lets those commands
# read a main.cf there; nothing listens or runs because of it.
local_door_users=(egress-web1 egress-web2)
LOCAL_DOOR_CONFIG=/run/egress-milter-tests/local-door/etc

local_door_ready() {
    local user
    for user in "${local_door_users[@]}"; do
        id "$user" >/dev/null 2>&1 || return 1
    done
    [ -e /etc/postfix/main.cf ] || return 1
    local dirs
    dirs=$(postconf -c /etc/postfix -h alternate_config_directories 2>/dev/null) || return 1
    [[ " $dirs " == *" $LOCAL_DOOR_CONFIG "* ]]
}

install_local_door() {
    if local_door_ready; then
        say "local-door test users and alternate_config_directories already set up"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        say "must run as root to create ${local_door_users[*]} and edit /etc/postfix/main.cf" >&2
        exit 1
    fi
    local user
    for user in "${local_door_users[@]}"; do
        if ! id "$user" >/dev/null 2>&1; then
            say "creating the system user $user (no home, no login)"
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin --comment "egress-milter live tests" "$user"
        fi
    done
    ensure_default_main_cf
    local dirs
    dirs=$(postconf -c /etc/postfix -h alternate_config_directories)
    if [[ " $dirs " != *" $LOCAL_DOOR_CONFIG "* ]]; then
        say "adding $LOCAL_DOOR_CONFIG to alternate_config_directories in /etc/postfix/main.cf"
        postconf -c /etc/postfix -e "alternate_config_directories = ${dirs:+$dirs }$LOCAL_DOOR_CONFIG"
    fi
}

# ------------------------------------------------------------------ Redis
# For the fleet scenarios (milter-tests/live/fleet.rs): every test starts
# its own redis-server (milter-tests/live/redis.rs) on a free port of
# 127.0.0.1 with a directory of its own and no persistence, so only the
# binaries are needed. Debian's redis-server package enables and starts a
# system Redis on 127.0.0.1:6379: the install runs under the temporary
# policy-rc.d (nothing starts), then the service is disabled, so that it
# does not come up at the next boot either, and stopped, should a
# policy-rc.d of the machine's own have let it start. A redis-server that
# was installed before is the admin's and left as it is, running or not.
# redis-sentinel: for the failover test (milter-tests/fleet.rs); its
# service is disabled the same way.
redis_packages=(redis-server redis-tools redis-sentinel)

install_redis() {
    local missing=()
    find_missing "${redis_packages[@]}" || return 0
    say "missing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local had_server=0
    if installed redis-server; then had_server=1; fi

    forbid_service_starts
    local candidate
    candidate=$(apt-cache policy redis-server 2>/dev/null || true)
    if [[ "$candidate" != *"Candidate: "[0-9]* ]]; then
        say "apt-get update"
        apt-get update -q
    fi
    say "apt-get install ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    allow_service_starts

    if [ "$had_server" = 0 ]; then
        disable_system_redis
    fi
    local file
    for file in /usr/bin/redis-server /usr/bin/redis-cli /usr/bin/redis-sentinel; do
        if [ ! -x "$file" ]; then
            say "error: $file is missing after the install" >&2
            exit 1
        fi
    done
}

# The system Redis (and Sentinel) the packages set up: not started at
# boot, not running.
disable_system_redis() {
    local svc
    for svc in redis-server redis-sentinel; do
        if [ -e "/lib/systemd/system/$svc.service" ] && command -v deb-systemd-helper >/dev/null; then
            say "disabling $svc.service (the tests run their own)"
            deb-systemd-helper disable "$svc.service" >/dev/null 2>&1 || true
        fi
        if [ -e "/etc/init.d/$svc" ] && command -v update-rc.d >/dev/null; then
            update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
        if [ -d /run/systemd/system ]; then
            systemctl stop "$svc.service" >/dev/null 2>&1 || true
        elif [ -x "/etc/init.d/$svc" ] && "/etc/init.d/$svc" status >/dev/null 2>&1; then
            say "stopping the system $svc the package started"
            "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
    done
}

# ---------------------------------------------------------------- Dovecot
# For the Dovecot SASL test of milter-tests/live/trust.rs: the test starts
# its own dovecot (dovecot -F -c FILE, a configuration in the Postfix
# instance's directory, no protocol but auth), so only the binaries, the
# users dovecot and dovenull the package creates and its default
# configuration (which its postinst writes; the test does not read it) are
# needed. The install runs under the temporary policy-rc.d (nothing
# starts); then the system Dovecot, which would listen on the IMAP and POP3
# ports, is disabled for the next boot and stopped should a policy-rc.d of
# the machine's own have let it start. A dovecot-core installed before is
# the admin's and left as it is. Its postinst makes a self-signed
# certificate (ssl-cert): harmless, the test's dovecot runs with ssl = no.
dovecot_packages=(dovecot-core)

install_dovecot() {
    local missing=()
    find_missing "${dovecot_packages[@]}" || return 0
    say "missing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive

    forbid_service_starts
    local candidate
    candidate=$(apt-cache policy dovecot-core 2>/dev/null || true)
    if [[ "$candidate" != *"Candidate: "[0-9]* ]]; then
        say "apt-get update"
        apt-get update -q
    fi
    say "apt-get install ${missing[*]} (for the Dovecot SASL test)"
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    allow_service_starts

    disable_system_dovecot
    if [ ! -x /usr/sbin/dovecot ]; then
        say "error: /usr/sbin/dovecot is missing after the install" >&2
        exit 1
    fi
    local user
    for user in dovecot dovenull; do
        if ! id "$user" >/dev/null 2>&1; then
            say "error: the user $user (made by dovecot-core's postinst) is missing" >&2
            exit 1
        fi
    done
}

# The system Dovecot the package sets up (dovecot.service and its socket
# units, or the init script): not started at boot, not running.
disable_system_dovecot() {
    local unit
    if command -v deb-systemd-helper >/dev/null; then
        for unit in dovecot.service dovecot.socket; do
            if [ -e "/lib/systemd/system/$unit" ]; then
                say "disabling $unit (the test runs its own dovecot)"
                deb-systemd-helper disable "$unit" >/dev/null 2>&1 || true
            fi
        done
    fi
    if [ -e /etc/init.d/dovecot ] && command -v update-rc.d >/dev/null; then
        update-rc.d dovecot disable >/dev/null 2>&1 || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl stop dovecot.socket dovecot.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/dovecot ] && /etc/init.d/dovecot status >/dev/null 2>&1; then
        say "stopping the system dovecot the package started"
        /etc/init.d/dovecot stop >/dev/null 2>&1 || true
    fi
}

# --------------------------------------------------------------- Sendmail
# For milter-tests/live/sendmail.rs. Debian's sendmail-bin conflicts with
# postfix (both provide mail-transport-agent), so installing it would remove
# Postfix. Instead its packages are downloaded (apt-get download, into
# $SENDMAIL_CACHE) and unpacked with dpkg-deb -x into a private root,
# $SENDMAIL_ROOT: no maintainer script runs, nothing is registered with dpkg,
# nothing is started, /etc/mail is not touched. Only what the unpacked
# binary links against (the "lib*" dependencies of sendmail-bin) is
# installed as packages, plus m4, which builds sendmail.cf from the .mc.
# To refresh: rm -rf "$SENDMAIL_ROOT" and run this script again.
SENDMAIL_ROOT=${EGRESS_MILTER_SENDMAIL_ROOT:-/opt/egress-milter-tests/sendmail-root}
SENDMAIL_CACHE=${EGRESS_MILTER_SENDMAIL_CACHE:-/var/cache/egress-milter-tests/sendmail}
sendmail_debs=(sendmail-bin sendmail-base sendmail-cf)
# m4 builds sendmail.cf; unshare and mount (util-linux, mount) give each test
# instance its private host name, /etc/hosts, resolv.conf and SASL config.
sendmail_tools=(m4 util-linux mount sasl2-bin libsasl2-modules)
sendmail_bin=$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail
sendmail_stamp=$SENDMAIL_ROOT/.egress-milter-tests

# Prints the compile options of the sendmail binary $1 (sendmail -d0.1).
# Sendmail looks up its own host name before anything else (and sleeps a
# minute when it cannot qualify it), so it runs, as in the tests, in private
# namespaces where the host name is in /etc/hosts and the only name server
# is 127.0.0.1: no query leaves the machine.
sendmail_compile_options() {
    local tmp rc=0
    tmp=$(mktemp -d)
    printf '127.0.0.1\tmta.egress-test.invalid localhost\n' >"$tmp/hosts"
    printf 'nameserver 127.0.0.1\n' >"$tmp/resolv.conf"
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --uts -- /bin/sh -c '
        set -e
        hostname mta.egress-test.invalid
        mount --bind "$1" /etc/hosts
        if [ -e /etc/resolv.conf ]; then mount --bind "$2" /etc/resolv.conf; fi
        exec "$3" -d0.1 -bt -C /dev/null' sh "$tmp/hosts" "$tmp/resolv.conf" "$1" \
        </dev/null >"$tmp/out" 2>&1 || rc=$?
    cat "$tmp/out"
    rm -rf "$tmp"
    # -bt with /dev/null as sendmail.cf ends in an error (72) after printing
    # the options; unshare failing ends in 1.
    [ "$rc" = 72 ] || [ "$rc" = 0 ]
}

# The lib* packages sendmail-bin depends on, from apt's metadata (so the
# list follows the Debian release: libldap-2.5-0 on bookworm, ...).
sendmail_libraries() {
    apt-cache depends sendmail-bin 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^lib/ && $2 != "libc6" { print $2 }'
}

sendmail_ready() {
    [ -f "$sendmail_stamp" ] && [ -x "$sendmail_bin" ] &&
        [ -f "$SENDMAIL_ROOT/usr/share/sendmail/cf/m4/cf.m4" ] || return 1
    local pkg
    for pkg in "${sendmail_tools[@]}"; do
        installed "$pkg" || return 1
    done
    ! ldd "$sendmail_bin" 2>/dev/null | grep -q 'not found'
}

install_sendmail() {
    if sendmail_ready; then
        say "sendmail already unpacked in $SENDMAIL_ROOT ($(head -n1 "$sendmail_stamp"))"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        say "must run as root to unpack Sendmail into $SENDMAIL_ROOT" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive

    # Refresh the package lists only when they do not know sendmail-bin.
    local candidate
    candidate=$(apt-cache policy sendmail-bin 2>/dev/null || true)
    if [[ "$candidate" != *"Candidate: "[0-9]* ]]; then
        say "apt-get update"
        apt-get update -q
    fi

    local missing=() pkg
    for pkg in "${sendmail_tools[@]}" $(sendmail_libraries); do
        installed "$pkg" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "apt-get install ${missing[*]} (for the unpacked Sendmail)"
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi

    # The .deb files, downloaded once.
    mkdir -p "$SENDMAIL_CACHE"
    local debs=() deb
    for pkg in "${sendmail_debs[@]}"; do
        deb=$(find "$SENDMAIL_CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n1)
        if [ -z "$deb" ]; then
            say "apt-get download $pkg into $SENDMAIL_CACHE"
            # apt drops to the _apt user for downloads when it can write there.
            if id _apt >/dev/null 2>&1; then chown _apt "$SENDMAIL_CACHE"; fi
            (cd "$SENDMAIL_CACHE" && apt-get download -q "$pkg")
            deb=$(find "$SENDMAIL_CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n1)
            if [ -z "$deb" ]; then
                say "error: apt-get download $pkg left no .deb in $SENDMAIL_CACHE" >&2
                exit 1
            fi
        fi
        debs+=("$deb")
    done

    # Unpack into a fresh directory beside the root, check, then swap.
    mkdir -p "$(dirname "$SENDMAIL_ROOT")"
    local staging
    staging=$(mktemp -d "$SENDMAIL_ROOT.new.XXXXXX")
    for deb in "${debs[@]}"; do
        say "unpacking $(basename "$deb")"
        dpkg-deb -x "$deb" "$staging"
    done
    # Sendmail's file-safety checks want no group- or world-writable
    # directory on its paths.
    chmod 755 "$staging"

    local unresolved
    unresolved=$(ldd "$staging/usr/libexec/sendmail/sendmail" 2>&1 | grep 'not found' || true)
    if [ -n "$unresolved" ]; then
        rm -rf "$staging"
        say "error: the unpacked sendmail lacks libraries:" >&2
        printf '%s\n' "$unresolved" >&2
        exit 1
    fi
    local options
    if ! options=$(sendmail_compile_options "$staging/usr/libexec/sendmail/sendmail"); then
        rm -rf "$staging"
        say "error: the unpacked sendmail does not run in private namespaces (unshare --mount --uts needs" \
            "root with CAP_SYS_ADMIN):" >&2
        printf '%s\n' "$options" >&2
        exit 1
    fi
    local option
    for option in MILTER SASLv2; do
        if ! grep -qw "$option" <<<"$options"; then
            rm -rf "$staging"
            say "error: the unpacked sendmail is built without $option:" >&2
            printf '%s\n' "$options" >&2
            exit 1
        fi
    done

    {
        head -n1 <<<"$options"
        for deb in "${debs[@]}"; do dpkg-deb -f "$deb" Package Version | paste -sd' '; done
    } >"$staging/.egress-milter-tests"
    rm -rf "$SENDMAIL_ROOT"
    mv "$staging" "$SENDMAIL_ROOT"
    say "sendmail unpacked in $SENDMAIL_ROOT ($(head -n1 "$sendmail_stamp"))"
}

# --------------------------------------------------------------- Chromium
# For the review desk's browser test (milter-tests/live/desk.rs): headless
# Chromium driven through chromedriver's WebDriver HTTP API. Debian's
# packages; no browser download of its own (the machines have no internet
# but the package mirror). Nothing starts at install.
chromium_packages=(chromium chromium-driver)

install_chromium() {
    local missing=()
    find_missing "${chromium_packages[@]}" || return 0
    export DEBIAN_FRONTEND=noninteractive
    local candidate
    candidate=$(apt-cache policy chromium 2>/dev/null || true)
    if [[ "$candidate" != *"Candidate: "[0-9]* ]]; then
        say "apt-get update"
        apt-get update -q
    fi
    say "apt-get install ${missing[*]} (for the review desk's browser test)"
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    for file in /usr/bin/chromium /usr/bin/chromedriver; do
        if [ ! -x "$file" ]; then
            say "error: $file is missing after the install" >&2
            exit 1
        fi
    done
}

# ------------------------------------------------------ package boot test
# For the boot test of milter-tests/package.sh: systemd-nspawn (package
# systemd-container) boots a minimal Debian 12 root, made once by
# debootstrap --variant=minbase with systemd added (minbase has no init),
# from the mirror apt uses here, and kept in $BOOT_ROOT (about 200 MB). The
# test boots a copy; the cached root is never changed. The root has no
# procps (so no /bin/kill), as a minimal Debian does not.
# To refresh: rm -rf "$BOOT_ROOT" and run this script again.
BOOT_ROOT=${EGRESS_MILTER_BOOT_ROOT:-/var/cache/egress-milter-tests/boot-root-bookworm}
boot_suite=bookworm
boot_include=systemd,systemd-sysv
boot_tools=(systemd-container debootstrap)
boot_stamp=$BOOT_ROOT/.egress-milter-tests

# The archive apt uses for $boot_suite main (deb822 or one-line sources
# alike); EGRESS_MILTER_BOOT_MIRROR overrides it.
boot_mirror() {
    if [ -n "${EGRESS_MILTER_BOOT_MIRROR:-}" ]; then
        echo "$EGRESS_MILTER_BOOT_MIRROR"
        return
    fi
    local site
    # shellcheck disable=SC2016 # apt's own placeholders
    site=$(apt-get indextargets --format '$(SITE) $(RELEASE) $(COMPONENT)' 'Identifier: Packages' 2>/dev/null |
        awk -v suite="$boot_suite" '$2 == suite && $3 == "main" { print $1; exit }')
    echo "${site:-http://deb.debian.org/debian}"
}

boot_ready() {
    [ -f "$boot_stamp" ] && [ -x "$BOOT_ROOT/lib/systemd/systemd" ] || return 1
    local pkg
    for pkg in "${boot_tools[@]}"; do
        installed "$pkg" || return 1
    done
}

install_boot_root() {
    if boot_ready; then
        say "boot-test root ready in $BOOT_ROOT ($(head -n1 "$boot_stamp"))"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        say "must run as root to install ${boot_tools[*]} and make the root $BOOT_ROOT" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive

    local missing=() pkg
    for pkg in "${boot_tools[@]}"; do
        installed "$pkg" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        local candidate
        candidate=$(apt-cache policy "${missing[0]}" 2>/dev/null || true)
        if [[ "$candidate" != *"Candidate: "[0-9]* ]]; then
            say "apt-get update"
            apt-get update -q
        fi
        say "apt-get install ${missing[*]} (for the package boot test)"
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi

    # Made beside the root, checked, then swapped in.
    local mirror staging
    mirror=$(boot_mirror)
    mkdir -p "$(dirname "$BOOT_ROOT")"
    rm -rf "$BOOT_ROOT".new.*
    staging=$(mktemp -d "$BOOT_ROOT.new.XXXXXX")
    # The container's / (mktemp made it 0700: no user but root could use it).
    chmod 755 "$staging"
    say "debootstrap --variant=minbase --include=$boot_include $boot_suite from $mirror (about a minute)"
    if ! debootstrap --variant=minbase --include="$boot_include" "$boot_suite" "$staging" "$mirror" \
        >"$staging.log" 2>&1; then
        say "error: debootstrap failed; the end of its log ($staging.log):" >&2
        tail -n 20 "$staging.log" >&2
        rm -rf "$staging"
        exit 1
    fi
    rm -f "$staging.log"
    # The downloaded .debs are not needed to boot; the copy is smaller.
    rm -f "$staging"/var/cache/apt/archives/*.deb
    if [ ! -x "$staging/lib/systemd/systemd" ]; then
        rm -rf "$staging"
        say "error: the debootstrap root has no /lib/systemd/systemd" >&2
        exit 1
    fi
    {
        echo "$boot_suite, minbase + $boot_include, from $mirror, $(date -u +%Y-%m-%d)"
        chroot "$staging" dpkg-query -W -f='${Package} ${Version}\n' systemd
    } >"$staging/.egress-milter-tests"
    rm -rf "$BOOT_ROOT"
    mv "$staging" "$BOOT_ROOT"
    say "boot-test root made in $BOOT_ROOT ($(head -n1 "$boot_stamp"))"
}

# ----------------------------------------------------------------- rspamd
# For the content-verdict test (milter-tests/live/scanner.rs): the test starts
# its own rspamd (the normal worker only) on a free loopback port with a
# minimal top-level configuration it writes itself, so only the binaries are
# needed. Debian's rspamd package enables and starts a system rspamd (ports
# 11332-11334): the install runs under the temporary policy-rc.d (nothing
# starts), then the service is disabled and stopped, as for Redis. An rspamd
# installed before is the admin's and left as it is.
install_rspamd() {
    if installed rspamd; then
        say "already installed: rspamd"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        say "must run as root to install: rspamd" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    forbid_service_starts
    local candidate
    candidate=$(apt-cache policy rspamd 2>/dev/null || true)
    if [[ "$candidate" != *"Candidate: "[0-9]* ]]; then
        say "apt-get update"
        apt-get update -q
    fi
    say "apt-get install rspamd"
    apt-get install -y -q --no-install-recommends rspamd
    allow_service_starts
    if [ -e /lib/systemd/system/rspamd.service ] && command -v deb-systemd-helper >/dev/null; then
        say "disabling rspamd.service (the tests run their own)"
        deb-systemd-helper disable rspamd.service >/dev/null 2>&1 || true
    fi
    if [ -e /etc/init.d/rspamd ] && command -v update-rc.d >/dev/null; then
        update-rc.d rspamd disable >/dev/null 2>&1 || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl stop rspamd.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/rspamd ] && /etc/init.d/rspamd status >/dev/null 2>&1; then
        say "stopping the system rspamd the package started"
        /etc/init.d/rspamd stop >/dev/null 2>&1 || true
    fi
    if [ ! -x /usr/bin/rspamd ]; then
        say "error: /usr/bin/rspamd is missing after the install" >&2
        exit 1
    fi
}

case "${1:-all}" in
all)
    install_postfix
    install_local_door
    install_redis
    install_rspamd
    install_dovecot
    install_chromium
    install_sendmail
    install_boot_root
    ;;
boot) install_boot_root ;;
*)
    say "usage: install-deps.sh [all|boot]" >&2
    exit 2
    ;;
esac
say "done"
