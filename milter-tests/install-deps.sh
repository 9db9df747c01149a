#!/usr/bin/env bash
# Installs, from Debian's packages, what the live-MTA test suite
# (milter-tests/live/) needs: Postfix, and the Cyrus SASL tools and plugins
# used for AUTH on the private instances' submission port.
#
# Idempotent: exits 0 at once when everything is already there. Must run as
# root to install anything. Postfix is installed non-interactively ("No
# configuration") with a temporary /usr/sbin/policy-rc.d that forbids
# starting services, so the install never starts a system-wide Postfix that
# would hold port 25; that file is removed again on every exit path.
#
# Usage: bash milter-tests/install-deps.sh
set -euo pipefail

packages=(postfix sasl2-bin libsasl2-modules)

say() { printf 'install-deps: %s\n' "$*"; }

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# A "No configuration" install leaves no /etc/postfix/main.cf. The private
# instances bring their own, but postfix-script also asks the default
# instance for multi_instance_directories (postconf -c /etc/postfix), which
# fails loudly without one; an empty main.cf is enough and configures nothing.
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

missing=()
for pkg in "${packages[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
    ensure_default_main_cf
    say "already installed: ${packages[*]}"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    say "must run as root to install: ${missing[*]}" >&2
    exit 1
fi

say "missing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# Forbid invoke-rc.d to start any daemon during the install, unless the
# machine already has a policy of its own (then leave that one alone).
policy=/usr/sbin/policy-rc.d
own_policy=0
cleanup() {
    if [ "$own_policy" = 1 ]; then
        rm -f "$policy"
        say "removed temporary $policy"
    fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
    say "writing temporary $policy (exit 101: no service starts)"
    own_policy=1
    printf '#!/bin/sh\n# temporary, from egress-milter milter-tests/install-deps.sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
fi

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

say "done"
