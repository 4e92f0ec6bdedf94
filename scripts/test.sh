#!/usr/bin/env bash
# The whole test suite: install what is missing, build, run every unit and
# integration test with ctest (real mosquitto, real binary), fuzz every parser
# of untrusted input for 30 s each (scripts/fuzz.sh), then the same suite again
# on an AddressSanitizer + UndefinedBehaviorSanitizer build, last, so that the
# run ends with ctest's summary. CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
jobs=$(nproc)

echo "==> build and test (RelWithDebInfo)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRACE2MQTT_TESTS=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" "$@")

# A crash fails the run, but only after the ASan suite has run too; its
# reproducer is then in tests/fuzz/regressions/ and replayed by both suites.
fuzz_rc=0
bash scripts/fuzz.sh 30 || fuzz_rc=$?

echo "==> build and test again with ASan + UBSan"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DRACE2MQTT_SANITIZE=ON -DRACE2MQTT_TESTS=ON >/dev/null
cmake --build build-asan -j"$jobs"
cd build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -j"$jobs" "$@"
exit "$fuzz_rc"
