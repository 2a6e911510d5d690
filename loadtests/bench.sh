#!/usr/bin/env bash
# The gateway overhead benchmark: the same load straight at the mock upstream, through the
# gateway, and through nginx (if installed) as a plain reverse proxy; prints added latency,
# CPU per request, RSS and PASS/FAIL per target, and writes target/loadtests/bench-*.{md,json}.
# Loopback only; every run is bounded; stops everything it started. Flags: see --help.
#   ./loadtests/bench.sh            # 3 runs, about 11 minutes
#   ./loadtests/bench.sh --quick    # 1 run, 2 s per cell, about 2 minutes
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p switchyard -p switchyard-loadtests --bins

# Hundreds of connections in three processes: raise the open-file limit if allowed.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec "${CARGO_TARGET_DIR:-target}/release/bench" "$@"
