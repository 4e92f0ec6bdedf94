#!/usr/bin/env bash
# Installs the Debian 12 packages race2mqtt needs to build, run and test, and
# only touches apt when one of them is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libpaho-mqtt-dev libmicrohttpd-dev libjson-c-dev libinih-dev zlib1g-dev libcurl4-openssl-dev
  libcmocka-dev libsystemd-dev
  mosquitto mosquitto-clients
  python3 python3-paho-mqtt python3-jinja2 curl ca-certificates openssl util-linux
  chromium python3-websocket
  nats-server
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
