#!/usr/bin/env bash
# Runs Switchyard on config/demo.toml in front of the bundled mock upstream: no provider keys,
# loopback only. The mock listens on 127.0.0.1:9100 with three routes:
#   ""       (openai-a, anthropic-mock)  steady, ~40 ms
#   steady   (openai-b)                  steady, ~60 ms
#   flaky    (openai-flaky)              40% of answers are HTTP 500
# Ctrl-C, or SIGTERM/SIGINT to this script, stops both; if either exits, the other is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p switchyard -p switchyard-loadtests --bins

pids=()
stop() {
  trap - INT TERM EXIT
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

target/release/mock-upstream --listen 127.0.0.1:9100 --workers 1 \
  --latency-ms 40 --chunk-delay-ms 15 \
  --route steady:latency_ms=60 \
  --route flaky:fail_rate=0.4 &
pids+=($!)
target/release/switchyard --config config/demo.toml &
pids+=($!)

# Return as soon as either process exits (the EXIT trap stops the other).
wait -n
