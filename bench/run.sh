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
N=${1:-200000}
BIN=${RACE2MQTT_BIN:-build/race2mqtt}
[[ $BIN = /* ]] || BIN=$ROOT/$BIN
BENCH=${RACE2MQTT_BENCH:-$(dirname "$BIN")/race2mqtt-bench}
[[ $BENCH = /* ]] || BENCH=$ROOT/$BENCH
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
CONNS=${CONNS:-32}
RATE=${RATE:-2000}
RATE_SECONDS=${RATE_SECONDS:-10}
WARMUP=${WARMUP:-2000}
GRACE_MS=${GRACE_MS:-3000}
read -r -a EXTRA <<<"${BENCH_ARGS:-}"

# The gateway reads RACE2MQTT_<SECTION>_<KEY> from the environment: run it with
# the temp config only.
for v in $(compgen -e | grep '^RACE2MQTT_' || true); do unset "$v"; done

for f in "$BIN" "$BENCH" "$MOSQUITTO"; do
  [ -x "$f" ] || { echo "run.sh: $f not found or not executable" >&2; exit 1; }
done
command -v curl >/dev/null || { echo "run.sh: curl is needed" >&2; exit 1; }

TMP=$(mktemp -d /tmp/race2mqtt-bench.XXXXXX)
chmod 755 "$TMP"
BROKER_PID=""
GW_PID=""

stop_pid() { # pid, seconds before SIGKILL
  local pid=$1 t=$2
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq $((t * 10))); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "run.sh: pid $pid did not stop in ${t}s, killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  stop_pid "$GW_PID" 10
  stop_pid "$BROKER_PID" 5
  if [ "${KEEP_TMP:-0}" = 1 ] || [ $rc -ne 0 ]; then
    echo "run.sh: logs and configs kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A TCP port no socket uses (any state, /proc/net/tcp{,6}), picked at random
# below the ephemeral range so that client connections cannot take it between
# the pick and the bind. Other users may still race us: starts are retried.
read -r EPH_LO _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPH_LO=32768
[ "$EPH_LO" -gt 12000 ] || EPH_LO=61000
free_port() {
  local p hex
  for _ in $(seq 200); do
    p=$((10000 + RANDOM % (EPH_LO - 10000)))
    hex=$(printf ':%04X' "$p")
    if ! awk -v h="$hex" 'NR > 1 && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }' \
         /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "run.sh: no free port" >&2
  return 1
}

# True when pid has a socket listening on 127.0.0.1:port (so that a broker or
# server someone else runs on the same port is never mistaken for ours).
owns_port() { # pid port
  local pid=$1 hex inodes
  hex=$(printf '%04X' "$2")
  inodes=$(find "/proc/$pid/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null |
           sed -n 's/^socket:\[\([0-9]*\)\]$/\1/p' | tr '\n' ' ')
  [ -n "$inodes" ] || return 1
  awk -v h="0100007F:$hex" -v inos=" $inodes" \
    'NR > 1 && $2 == h && $4 == "0A" && index(inos, " " $10 " ") { f = 1 } END { exit !f }' \
    /proc/net/tcp
}

start_broker() {
  local attempt
  for attempt in 1 2 3 4 5; do
    MQTT_PORT=$(free_port)
    cat >"$TMP/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
# No per-client queue or in-flight limits: the bench subscriber must not lose
# QoS 1 messages to broker limits (0 = unlimited in mosquitto 2.0).
max_queued_messages 0
max_inflight_messages 0
log_dest stderr
log_type error
log_type warning
EOF
    "$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 50); do
      owns_port "$BROKER_PID" "$MQTT_PORT" && return 0
      kill -0 "$BROKER_PID" 2>/dev/null || break
      sleep 0.1
    done
    stop_pid "$BROKER_PID" 2
    BROKER_PID=""
    grep -q 'in use' "$TMP/mosquitto.log" || break
    echo "run.sh: port $MQTT_PORT taken meanwhile, retrying ($attempt)" >&2
  done
  echo "run.sh: mosquitto did not start:" >&2
  cat "$TMP/mosquitto.log" >&2
  exit 1
}

start_gateway() { # name
  local dir=$TMP/$1 attempt
  for attempt in 1 2 3 4 5; do
    HTTP_PORT=$(free_port)
    [ "$HTTP_PORT" != "$MQTT_PORT" ] || continue
    rm -rf "$dir"
    mkdir -p "$dir/var"
    cat >"$dir/race2mqtt.conf" <<EOF
[mqtt]
url = mqtt://127.0.0.1:$MQTT_PORT
client_id = race2mqtt-bench-$$
[http]
bind = 127.0.0.1
port = $HTTP_PORT
max_connections = 256
[store]
dir = $dir/var
[log]
level = warn
[raceresult]
enabled = false
EOF
    "$BIN" -c "$dir/race2mqtt.conf" >"$dir/gateway.log" 2>&1 &
    GW_PID=$!
    for _ in $(seq 150); do
      if owns_port "$GW_PID" "$HTTP_PORT" &&
         curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$HTTP_PORT/readyz"; then
        return 0
      fi
      kill -0 "$GW_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$GW_PID" 2>/dev/null; then
      echo "run.sh: /readyz not 200 after 15 s:" >&2
      tail -n 20 "$dir/gateway.log" >&2
      exit 1
    fi
    wait "$GW_PID" 2>/dev/null || true
    GW_PID=""
    if ! grep -q 'cannot listen' "$dir/gateway.log"; then
      echo "run.sh: the gateway exited during start-up:" >&2
      tail -n 20 "$dir/gateway.log" >&2
      exit 1
    fi
    echo "run.sh: port $HTTP_PORT taken meanwhile, retrying ($attempt)" >&2
  done
  echo "run.sh: the gateway could not listen on any port tried" >&2
  exit 1
}

gateway_metrics() {
  curl -sf --max-time 2 "http://127.0.0.1:$HTTP_PORT/metrics" |
    grep -E '^race2mqtt_(queue_depth|mqtt_reconnects_total|events_rejected_total|events_refused_total|mqtt_publish_failed_total|journal_bytes) ' |
    sed 's/^race2mqtt_/  gateway metric: /' || true
}

stop_gateway() { # name
  stop_pid "$GW_PID" 10
  GW_PID=""
  if grep -qiE 'error|warn' "$TMP/$1/gateway.log"; then
    echo "--- gateway log ($1), warnings and errors:"
    grep -iE 'error|warn' "$TMP/$1/gateway.log" | head -n 20
  fi
}

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
