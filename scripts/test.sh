#!/usr/bin/env bash
# The whole test suite: install what is missing, build, run every unit and
# integration test with ctest (real mosquitto, real binary), then the same
# suite again on an AddressSanitizer + UndefinedBehaviorSanitizer build.
# CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
jobs=$(nproc)

echo "==> build and test (RelWithDebInfo)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRACE2MQTT_TESTS=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" "$@")

echo "==> build and test again with ASan + UBSan"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DRACE2MQTT_SANITIZE=ON -DRACE2MQTT_TESTS=ON >/dev/null
cmake --build build-asan -j"$jobs"
cd build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -j"$jobs" "$@"
