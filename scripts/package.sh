#!/usr/bin/env bash
# Builds the Debian package: installs what building needs, configures a
# release build for /usr without the test suite (so without its test-only
# fault switches) and runs CPack. Prints the path of the .deb.
#   bash scripts/package.sh && apt install ./build-pkg/race2mqtt_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh --build
cmake -S . -B build-pkg -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
  -DRACE2MQTT_TESTS=OFF >/dev/null
cmake --build build-pkg -j"$(nproc)"
(cd build-pkg && cpack -G DEB >/dev/null)
ls -1 "$PWD"/build-pkg/race2mqtt_*.deb
