#!/usr/bin/env bash
# bench/run.sh - self-contained ingest benchmark of race2mqtt on 127.0.0.1.
#
#   bench/run.sh [N]            N events for the full-speed run (default 200000)
#
# Starts a throw-away mosquitto and a fresh gateway (temp config, temp journal)
# on free loopback ports, then runs race2mqtt-bench twice:
#   1. full speed, N events over CONNS keep-alive connections;
#   2. paced at RATE events/s for RATE_SECONDS seconds (fresh gateway again,
#      so its peak RSS is that of the paced run alone).
# Everything is stopped on exit; every step has a timeout.
#
# Environment:
#   RACE2MQTT_BIN    gateway binary        (default build/race2mqtt)
#   RACE2MQTT_BENCH  bench binary          (default race2mqtt-bench next to the gateway)
#   MOSQUITTO        broker binary         (default /usr/sbin/mosquitto)
#   CONNS=32 RATE=2000 RATE_SECONDS=10 WARMUP=2000 GRACE_MS=3000
#   BENCH_ARGS       extra race2mqtt-bench options for both runs, e.g. --mqtt5
#   KEEP_TMP=1       keep the temp dir (configs, logs) for inspection
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ME=run.sh
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
N=${1:-200000}
RATE=${RATE:-2000}
read -r -a EXTRA <<<"${BENCH_ARGS:-}"

for f in "$BIN" "$BENCH" "$MOSQUITTO"; do
  [ -x "$f" ] || { echo "run.sh: $f not found or not executable" >&2; exit 1; }
done
command -v curl >/dev/null || { echo "run.sh: curl is needed" >&2; exit 1; }

TMP=$(mktemp -d /tmp/race2mqtt-bench.XXXXXX)
chmod 755 "$TMP"
GW_PID=""

STOP_ON_EXIT="GW_PID BROKER_PID"
trap cleanup EXIT
trap 'exit 130' INT TERM

start_broker

echo "race2mqtt bench: $(date -u '+%Y-%m-%d %H:%M:%SZ'), $(nproc) CPUs, $(uname -r)"
echo "gateway: $BIN ($("$BIN" --version 2>/dev/null | head -n 1 || true))"
echo "broker:  $("$MOSQUITTO" -h 2>/dev/null | head -n 1 || true), 127.0.0.1:$MQTT_PORT"
echo

# 1. Full speed.
start_gateway full
timeout --kill-after=5 330 "$BENCH" \
  --http "127.0.0.1:$HTTP_PORT" --broker "tcp://127.0.0.1:$MQTT_PORT" \
  --n "$N" --conns "$CONNS" --rate 0 --warmup "$WARMUP" --grace-ms "$GRACE_MS" \
  --pid "$GW_PID" --timeout-s 300 --label "run 1" ${EXTRA[@]+"${EXTRA[@]}"}
gateway_metrics
stop_gateway full
echo

# 2. Paced.
start_gateway paced
timeout --kill-after=5 $((RATE_SECONDS + 90)) "$BENCH" \
  --http "127.0.0.1:$HTTP_PORT" --broker "tcp://127.0.0.1:$MQTT_PORT" \
  --n $((RATE * RATE_SECONDS)) --conns "$CONNS" --rate "$RATE" \
  --warmup $((RATE / 2)) --grace-ms "$GRACE_MS" \
  --pid "$GW_PID" --timeout-s $((RATE_SECONDS + 60)) --label "run 2" ${EXTRA[@]+"${EXTRA[@]}"}
gateway_metrics
stop_gateway paced
