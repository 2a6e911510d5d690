#!/usr/bin/env bash
# Resilience and load scenarios: each starts its own mock upstream and gateway, prints a
# one-line description, runs a bounded load on loopback, prints a summary and PASS/FAIL per
# criterion, stops everything it started, and exits non-zero on failure.
#   ./loadtests/scenario.sh --list
#   ./loadtests/scenario.sh outage
#   ./loadtests/scenario.sh all --scale 0.5    # every scenario, durations halved
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -eq 0 ]; then
  echo "usage: $0 NAME [--scale F] [--out DIR] [--gateway-bin PATH]   (NAME: --list to see them, or all)" >&2
  exit 2
fi

cargo build --release -p switchyard -p switchyard-loadtests --bins

# long-streams holds 2,000 streams: 2 sockets each in this process, 2 in the gateway.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec "${CARGO_TARGET_DIR:-target}/release/scenario" "$@"
