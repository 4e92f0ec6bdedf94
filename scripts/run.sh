#!/usr/bin/env bash
# Quick start: install what is missing, build, start the bundled mosquitto
# (unless a broker already listens on 127.0.0.1:1883) and run the gateway in
# the foreground. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target race2mqtt

broker_pid=""
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
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
  trap '[ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null; wait 2>/dev/null || true' EXIT
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break
    sleep 0.1
  done
  echo "==> bundled mosquitto running on 127.0.0.1:1883 (log: mosquitto/mosquitto.log)"
else
  echo "==> using the broker already listening on 127.0.0.1:1883"
fi

echo "==> starting race2mqtt (Ctrl-C to stop)"
build/race2mqtt -c config/race2mqtt.conf "$@"
