#!/usr/bin/env bash
# Fuzzes every parser of untrusted input with libFuzzer for a bounded time.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]   (default 60 s; every target)
#
# Builds build-fuzz/ with clang (-DRACE2MQTT_FUZZ=ON: ASan + UBSan + coverage),
# then runs each target on a temporary copy of its seeds: tests/fuzz/corpus/<name>,
# tests/fuzz/regressions/<name>, our fixtures and ../shared/fixtures/<name> when
# present. The grown corpus is thrown away. A crash (or leak, timeout, OOM, or
# a broken invariant, see tests/fuzz/fuzz.h) is copied to
# tests/fuzz/regressions/<name>/, where ctest replays it from then on, and the
# script exits 1 after the remaining targets have run.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(smartrace raceresult config command recording)
jobs=$(nproc)

# clang's libFuzzer runtime (libclang-rt-14-dev on Debian 12) only here, not in
# scripts/deps.sh: the quick start does not need it.
fuzzer_works() {
  command -v clang >/dev/null || return 1
  local t
  t=$(mktemp -d)
  printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$t/t.c"
  clang -fsanitize=fuzzer,address,undefined "$t/t.c" -o "$t/t" 2>/dev/null
  local rc=$?
  rm -rf "$t"
  return $rc
}
if ! fuzzer_works; then
  echo "==> installing clang and its libFuzzer runtime"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends clang libclang-rt-14-dev
  fuzzer_works || { echo "fuzz: clang cannot build a libFuzzer program" >&2; exit 2; }
fi

echo "==> build fuzz targets (clang, libFuzzer + ASan + UBSan)"
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DRACE2MQTT_FUZZ=ON -DRACE2MQTT_TESTS=OFF >/dev/null
cmake --build build-fuzz -j"$jobs" --target "${targets[@]/#/fuzz_}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
failed=()
summary=()

for name in "${targets[@]}"; do
  corpus="$work/$name/corpus"
  artifacts="$work/$name/artifacts/"
  mkdir -p "$corpus" "$artifacts"
  for src in "tests/fuzz/corpus/$name" "tests/fuzz/regressions/$name" "tests/fixtures/$name" \
             "../shared/fixtures/$name"; do
    [ -d "$src" ] && find "$src" -maxdepth 1 -type f ! -name '.*' -exec cp -t "$corpus" {} +
  done
  [ "$name" = config ] && cp config/race2mqtt.conf "$corpus/"
  max_len=65536
  [ "$name" = config ] && max_len=8192
  log="$work/$name/log"

  echo "==> fuzz $name for ${secs}s ($(find "$corpus" -type f | wc -l) seeds)"
  rc=0
  # stdin from /dev/null: a config naming /dev/stdin as a secret file must not block.
  "build-fuzz/tests/fuzz/fuzz_$name" "$corpus" -max_total_time="$secs" -max_len="$max_len" \
    -dict="tests/fuzz/dict/$name.dict" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts" -print_final_stats=1 </dev/null >"$log" 2>&1 || rc=$?

  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -aEo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
  result=ok
  if [ "$rc" -ne 0 ]; then
    result="FAILED (exit $rc)"
    failed+=("$name")
    # Name the reproducer after what it found: sanitizer summary or broken invariant.
    what=$(sed -n -e 's/^fuzz-invariant: \([^:]*\)$/\1/p' \
                  -e 's/^[^ ]*\/\([^/ ]*\.c\):\([0-9]*\):[0-9]*: runtime error: \(.*\)/\1-\2-\3/p' \
                  -e 's/^SUMMARY: AddressSanitizer: \([a-z-]*\) .* in \([A-Za-z0-9_]*\).*/\1-\2/p' \
                  -e 's/^SUMMARY: AddressSanitizer: .* leaked .*/memory-leak/p' \
                  -e 's/^SUMMARY: libFuzzer: \(.*\)/\1/p' "$log" | head -1 |
           cut -c1-70 | tr -c 'A-Za-z0-9_.\n-' '-' | tr -s '-')
    for f in "$artifacts"*; do
      [ -f "$f" ] || continue
      sum=$(sha1sum <"$f" | cut -c1-40)
      known=""
      for r in "tests/fuzz/regressions/$name"/*; do
        [ -f "$r" ] && [ "$(sha1sum <"$r" | cut -c1-40)" = "$sum" ] && known=$r
      done
      if [ -n "$known" ]; then
        result="$result; known regression still fails: $known"
        continue
      fi
      base=$(basename "$f")
      dest="tests/fuzz/regressions/$name/${base%%-*}-${what:-unknown}-${sum:0:8}"
      cp "$f" "$dest"
      result="$result; reproducer: $dest"
    done
    echo "---- $name: last 60 lines of the fuzzer's log"
    tail -n 60 "$log"
  fi
  line=$(printf '%-11s execs %-10s (%s/s)  %-18s %s' "$name" "${execs:-?}" "${rate:-?}" \
         "${cov:-cov: ?}" "$result")
  echo "$line"
  summary+=("$line")
done

echo "==> fuzz summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (reproducers in tests/fuzz/regressions/; replay with" \
       "build/tests/fuzz/fuzz_<name>_replay FILE)" >&2
  exit 1
fi
