#!/usr/bin/env bash
# Runs every test of egress-milter: formatting, lints, unit tests, protocol
# tests against the daemon, and the live-MTA suite through real Postfix and
# Sendmail. As root it first installs what the live suite needs from Debian's
# packages (milter-tests/install-deps.sh); otherwise the live suite runs only
# if those are already installed, and says so when it cannot.
#
# Usage: bash milter-tests/run-all.sh          (from anywhere)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" = 0 ]; then
    step "installing live-test dependencies (Debian packages)"
    bash milter-tests/install-deps.sh
fi

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

live=0
if command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ]; then
    if [ "$(id -u)" = 0 ]; then
        live=1
    else
        echo "note: the live-MTA suite needs root (it runs private Postfix instances); skipped"
    fi
else
    echo "note: Postfix is not installed; run as root to install it and run the live-MTA suite"
fi

if [ "$(id -u)" = 0 ]; then
    # Before cargo test, so that cargo test's summary stays the last word.
    step "Debian package: build, inspect, install, purge (milter-tests/package.sh)"
    bash milter-tests/package.sh
fi

step "cargo test (unit, protocol$( [ $live = 1 ] && echo ", live MTA"))"
EGRESS_MILTER_LIVE=$live cargo test --locked --all-targets -- --test-threads="${EGRESS_MILTER_TEST_THREADS:-4}"
