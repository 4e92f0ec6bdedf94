# shellcheck shell=bash
# bench/lib.sh - shell functions shared by bench/run.sh and bench/compare.sh.
#
# Sourced, not run. The caller sets ROOT (the tree) and ME (its own name, for
# messages) before, and later:
#   TMP        its temp dir (configs, logs)
#   STOP_ON_EXIT names of the variables holding pids to stop on exit
# and gets: stop_pid, free_port, owns_port, cleanup (the EXIT trap),
# start_server, start_broker (MQTT_PORT, BROKER_PID), start_gateway NAME
# (HTTP_PORT, GW_PID), gateway_metrics, stop_gateway NAME.

# The environment both scripts take, with their defaults (see bench/README.md).
BIN=${RACE2MQTT_BIN:-build/race2mqtt}
[[ $BIN = /* ]] || BIN=$ROOT/$BIN
BENCH=${RACE2MQTT_BENCH:-$(dirname "$BIN")/race2mqtt-bench}
[[ $BENCH = /* ]] || BENCH=$ROOT/$BENCH
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
CONNS=${CONNS:-32}
RATE_SECONDS=${RATE_SECONDS:-10}
WARMUP=${WARMUP:-2000}
GRACE_MS=${GRACE_MS:-3000}

# The gateway reads RACE2MQTT_<SECTION>_<KEY> from the environment: it is run
# with the temp config only (the binaries' paths were read above).
for v in $(compgen -e | grep '^RACE2MQTT_' || true); do unset "$v"; done

stop_pid() { # pid, seconds before SIGKILL
  local pid=$1 t=$2
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq $((t * 10))); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "$ME: pid $pid did not stop in ${t}s, killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

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
  echo "$ME: no free port" >&2
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

# EXIT trap of the scripts: stops what they started (the pids in the variables
# named by STOP_ON_EXIT, in that order) and removes TMP unless the run failed
# or KEEP_TMP=1.
cleanup() {
  local rc=$? v
  for v in ${STOP_ON_EXIT:-}; do
    stop_pid "${!v:-}" 10
  done
  if [ "${KEEP_TMP:-0}" = 1 ] || [ $rc -ne 0 ]; then
    echo "$ME: logs and configs kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit $rc
}

# Starts a server on a free loopback port and waits until it is usable;
# tries another port when someone else took the one picked meanwhile.
#   launch PORT DIR   writes its config into DIR (empty), starts the server in
#                     the background with its output in DIR/LOG, sets SERVER_PID
#   ready PORT        true once the server does its job on PORT
#   IN_USE            what the server logs when the port is taken (grep -E)
# Sets SERVER_PORT and SERVER_PID.
start_server() { # what dir log launch ready in_use seconds
  local what=$1 dir=$2 log=$2/$3 launch=$4 ready=$5 in_use=$6 secs=$7 attempt end
  for attempt in 1 2 3 4 5; do
    SERVER_PORT=$(free_port)
    [ "$SERVER_PORT" != "${MQTT_PORT:-}" ] || continue
    rm -rf "$dir"
    mkdir -p "$dir"
    "$launch" "$SERVER_PORT" "$dir"
    end=$((SECONDS + secs))
    while [ $SECONDS -lt $end ]; do
      if owns_port "$SERVER_PID" "$SERVER_PORT" && "$ready" "$SERVER_PORT"; then
        return 0
      fi
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "$ME: $what not ready after $secs s:" >&2
      tail -n 20 "$log" >&2
      stop_pid "$SERVER_PID" 5
      exit 1
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    if ! grep -qE "$in_use" "$log"; then
      echo "$ME: $what exited during start-up:" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
    echo "$ME: port $SERVER_PORT taken meanwhile, retrying ($attempt)" >&2
  done
  echo "$ME: $what could not listen on any port tried" >&2
  exit 1
}

launch_broker() { # port dir
  cat >"$2/mosquitto.conf" <<EOC
listener $1 127.0.0.1
allow_anonymous true
persistence false
# No per-client queue or in-flight limits: the bench subscriber must not lose
# QoS 1 messages to broker limits (0 = unlimited in mosquitto 2.0).
max_queued_messages 0
max_inflight_messages 0
log_dest stderr
log_type error
log_type warning
EOC
  "$MOSQUITTO" -c "$2/mosquitto.conf" >"$2/mosquitto.log" 2>&1 &
  SERVER_PID=$!
}

listening() { # port: owns_port already said so
  return 0
}

start_broker() {
  start_server mosquitto "$TMP/broker" mosquitto.log launch_broker listening 'in use' 5
  MQTT_PORT=$SERVER_PORT
  # shellcheck disable=SC2034 # read through STOP_ON_EXIT and by the callers
  BROKER_PID=$SERVER_PID
}

launch_gateway() { # port dir
  mkdir -p "$2/var"
  cat >"$2/race2mqtt.conf" <<EOC
[mqtt]
url = mqtt://127.0.0.1:$MQTT_PORT
client_id = race2mqtt-bench-$$
[http]
bind = 127.0.0.1
port = $1
max_connections = 256
[store]
dir = $2/var
[log]
level = warn
[raceresult]
enabled = false
EOC
  "$BIN" -c "$2/race2mqtt.conf" >"$2/gateway.log" 2>&1 &
  SERVER_PID=$!
}

gateway_ready() { # port: the broker is connected
  curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$1/readyz"
}

start_gateway() { # name
  start_server gateway "$TMP/$1" gateway.log launch_gateway gateway_ready 'cannot listen' 15
  HTTP_PORT=$SERVER_PORT
  GW_PID=$SERVER_PID
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
