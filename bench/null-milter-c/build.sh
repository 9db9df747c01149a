#!/bin/sh
# Builds the libmilter null milter (Debian: apt-get install libmilter-dev).
# Usage: bench/null-milter-c/build.sh [OUTPUT]   (default: target/release/null-milter-c)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/release/null-milter-c}
mkdir -p "$(dirname "$out")"
cc -O2 -Wall -Wextra -o "$out" "$here/null-milter.c" -lmilter -lpthread
echo "$out"
