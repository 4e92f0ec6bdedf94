#!/usr/bin/env bash
# Installs the Debian 12 packages race2mqtt needs to build, run and test, and
# only touches apt when one of them is missing.
#   deps.sh          everything (build, bundled broker, the whole test suite)
#   deps.sh --build  only what building the binaries and the .deb takes
set -euo pipefail

BUILD=(
  build-essential cmake pkg-config dpkg-dev file
  libpaho-mqtt-dev libmicrohttpd-dev libjson-c-dev libinih-dev zlib1g-dev libcurl4-openssl-dev
  libsystemd-dev
)
PACKAGES=("${BUILD[@]}"
  libcmocka-dev
  mosquitto mosquitto-clients
  python3 python3-paho-mqtt python3-jinja2 curl ca-certificates openssl util-linux
  chromium python3-websocket
  nats-server
  systemd
)
if [ "${1:-}" = --build ]; then
  PACKAGES=("${BUILD[@]}")
fi

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

# promtool (the test suite checks /metrics with it) ships only inside Debian's
# prometheus package, whose installation also enables and starts a Prometheus
# server on port 9090. Only the checker is taken out of the package.
PROMTOOL=/usr/local/lib/race2mqtt-test/promtool
if [ "${1:-}" != --build ] && [ ! -x "$PROMTOOL" ]; then
  echo "==> promtool from Debian's prometheus package (not installed)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  chmod 777 "$tmp" # apt-get download runs as the _apt user
  (cd "$tmp" && apt-get download -q prometheus) ||
    { apt-get update -q && (cd "$tmp" && apt-get download -q prometheus); }
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  install -D -m 0755 "$tmp/x/usr/bin/promtool" "$PROMTOOL"
fi
