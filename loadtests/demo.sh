#!/usr/bin/env bash
# Runs Switchyard on config/demo.toml in front of the bundled mock upstream: no provider keys,
# loopback only. The mock listens on 127.0.0.1:9100 with three routes:
#   ""       (openai-a, anthropic-mock)  steady, ~40 ms
#   steady   (openai-b)                  steady, ~60 ms
#   flaky    (openai-flaky)              40% of answers are HTTP 500
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p switchyard -p switchyard-loadtests --bins

target/release/mock-upstream --listen 127.0.0.1:9100 --workers 1 \
  --latency-ms 40 --chunk-delay-ms 15 \
  --route steady:latency_ms=60 \
  --route flaky:fail_rate=0.4 &
mock_pid=$!
trap 'kill "$mock_pid" 2>/dev/null || true' EXIT INT TERM

target/release/switchyard --config config/demo.toml
