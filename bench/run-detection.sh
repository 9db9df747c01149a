#!/bin/sh
# The detection benchmark (docs/benchmarks.md, "Detection"): honest senders
# and attackers through a real, private Postfix to egress-milter with the
# shipped example configuration (plus milter-tests/live/fixtures/
# detection-site.toml), every window compressed; per style what left before
# the lock, the time to lock, and refusals and locks of honest senders.
# It is the live test milter-tests/live/detection/ (the `live` test target);
# this script runs its full form (windows and Postfix's retry schedule
# compressed 6x, 90 minutes of real time in 15) and prints the table. The
# test, and so the script, fails when an attacker style is not locked or an
# honest sender is refused or locked.
#
# Needs root and what the live suite needs (milter-tests/install-deps.sh).
#
# Usage: bench/run-detection.sh           (≈17 min, most of it the 15 min of traffic)
#   FORM=short   the CI form instead (30x, 60 minutes in 2; ≈2.5 min)
#   OUT=FILE     where the table goes (default: a file in /tmp, printed)
#   KEEP=1       keep the instance directories (Postfix's and the daemon's)
# SPDX-License-Identifier: GPL-3.0-or-later
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FORM=${FORM:-full}
OUT=${OUT:-$(mktemp /tmp/egress-detection-XXXXXX.md)}

[ "$(id -u)" = 0 ] || { echo "run-detection.sh must run as root (Postfix's master runs as root)" >&2; exit 1; }
case $FORM in
    full) FULL=1 ;;
    short) FULL=0 ;;
    *) echo "FORM must be full or short" >&2; exit 2 ;;
esac

cd "$ROOT"
status=0
EGRESS_MILTER_LIVE=1 EGRESS_DETECTION_FULL=$FULL EGRESS_DETECTION_OUT=$OUT \
    EGRESS_MILTER_LIVE_KEEP=${KEEP:-0} \
    timeout 3600 cargo test --locked --test live detection::detection_benchmark -- \
    --exact --nocapture --test-threads=1 || status=$?
echo
if [ -s "$OUT" ]; then
    cat "$OUT"
    echo "(table written to $OUT)"
fi
exit $status
