#!/usr/bin/env bash
# Quick start: install what is missing, build, start the bundled mosquitto
# (unless a broker already listens on 127.0.0.1:1883) and run the gateway in
# the foreground. Ctrl-C stops both.
#
# --demo: also play the shipped race (tests/fixtures/replay/race.jsonl) into
# the gateway, over and over at twice its speed, once the gateway is ready;
# no SmartRace needed. Every other argument goes to race2mqtt.
set -euo pipefail
cd "$(dirname "$0")/.."

demo=0
args=()
for a in "$@"; do
  if [ "$a" = --demo ]; then demo=1; else args+=("$a"); fi
done
set -- ${args[@]+"${args[@]}"}

targets=(race2mqtt)
[ "$demo" = 1 ] && targets+=(race2mqtt-replay)

bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target "${targets[@]}"

broker_pid=""
demo_pid=""
# The replay goes first: it must not post into a gateway that is gone, and
# the broker outlives the gateway so that it still hears "offline".
cleanup() {
  if [ -n "$demo_pid" ]; then kill "$demo_pid" 2>/dev/null || true; fi
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

# conf_value SECTION KEY [race2mqtt args]: the value of a key in the
# effective configuration (empty when unset or the configuration is bad).
conf_value() {
  local sec=$1 key=$2
  shift 2
  build/race2mqtt -c config/race2mqtt.conf "$@" --check-config 2>/dev/null |
    awk -v sec="[$sec]" -v key="$key" '
      /^\[/ { in_sec = ($0 == sec) }
      in_sec && $1 == key && $2 == "=" && !found { found = $3 }
      END { print found }' || true
}

# The broker the configuration names (first URL, host:port).
mqtt_url=$(conf_value mqtt url "$@")
mqtt_hostport=${mqtt_url#*://}
mqtt_hostport=${mqtt_hostport%%,*}
mqtt_host=${mqtt_hostport%:*}
mqtt_port=${mqtt_hostport##*:}
[ "$mqtt_port" = "$mqtt_hostport" ] && mqtt_port=1883
mqtt_host=${mqtt_host:-127.0.0.1}

if (exec 3<>"/dev/tcp/$mqtt_host/$mqtt_port") 2>/dev/null; then
  echo "==> using the broker already listening on $mqtt_host:$mqtt_port"
elif [ "$mqtt_host:$mqtt_port" != 127.0.0.1:1883 ]; then
  echo "==> no broker answers on $mqtt_host:$mqtt_port yet; the gateway keeps trying" >&2
else
  mkdir -p mosquitto/data
  # mosquitto started as root drops to the mosquitto user: let it write here.
  if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto: mosquitto/data
    touch mosquitto/mosquitto.log && chown mosquitto: mosquitto/mosquitto.log
  fi
  # Its own session: Ctrl-C goes to the gateway only, which then still says
  # "offline" to the broker; the broker is stopped once the gateway is done.
  setsid /usr/sbin/mosquitto -c mosquitto/mosquitto.conf &
  broker_pid=$!
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break
    sleep 0.1
  done
  echo "==> bundled mosquitto running on 127.0.0.1:1883 (log: mosquitto/mosquitto.log)"
fi

if [ "$demo" = 1 ]; then
  # The demo race goes into a journal and race state of its own, so that the
  # next real start does not resume the demo's race.
  export RACE2MQTT_STORE_DIR=${RACE2MQTT_STORE_DIR:-var/demo}
  http_port=$(conf_value http port "$@")
  http_port=${http_port:-8080}
  http_host=$(conf_value http bind "$@")
  case "$http_host" in "" | 0.0.0.0 | "::" | "[::]") http_host=127.0.0.1 ;; esac
  lan_ip=$(hostname -I 2>/dev/null | awk '{print $1}')
  token_args=()
  # A configured token is masked in --check-config; the demo can only use
  # one given in the environment.
  if [ -n "${RACE2MQTT_HTTP_TOKEN:-}" ]; then token_args=(--token "$RACE2MQTT_HTTP_TOKEN"); fi
  (
    for _ in $(seq 600); do
      curl -fs -o /dev/null "http://$http_host:$http_port/readyz" && break
      sleep 0.1
    done
    if ! curl -fs -o /dev/null "http://$http_host:$http_port/readyz"; then
      echo "==> demo: the gateway did not become ready on port $http_port; no replay" >&2
      exit 1
    fi
    echo "==> demo: replaying tests/fixtures/replay/race.jsonl in a loop at speed 2"
    echo "==> demo: the page: http://${lan_ip:-127.0.0.1}:$http_port/"
    echo "==> demo: the events: mosquitto_sub -h ${mqtt_host:-127.0.0.1} -p $mqtt_port -t 'smartrace/#' -v"
    exec build/race2mqtt-replay --loop --speed 2 -q --url "http://$http_host:$http_port/" \
      ${token_args[@]+"${token_args[@]}"} tests/fixtures/replay/race.jsonl
  ) &
  demo_pid=$!
fi

echo "==> starting race2mqtt (Ctrl-C to stop)"
build/race2mqtt -c config/race2mqtt.conf "$@"
