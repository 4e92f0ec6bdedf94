#!/usr/bin/env bash
# The whole test suite: install what is missing, build, run every unit and
# integration test with ctest (real mosquitto, real binary). CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRACE2MQTT_TESTS=ON
cmake --build build -j"$(nproc)"
cd build
ctest --output-on-failure --timeout 600 "$@"
