#!/usr/bin/env bash
# bench/compare.sh - race2mqtt side by side with the Node-RED flow users would
# build instead and with the broker alone, in one run, on one machine.
#
#   bench/compare.sh
#
# One throw-away mosquitto on a free loopback port serves every run. Each
# repetition measures, with the same load generator (race2mqtt-bench):
#   race2mqtt   the real binary, fresh temp config and journal per run (lib.sh);
#   Node-RED    http in -> json -> function -> mqtt out (QoS 1), http response
#               after json (bench/nodered/), a fresh user dir per run;
#   broker      the same lap payloads published straight to mosquitto at QoS 1
#               by race2mqtt-bench --direct (full speed only);
# in four scenarios: full speed; 200 events/s; 200 events/s while a busy loop
# spins one core; 2,000 events/s. Last, race2mqtt-fsync-probe measures one
# write + fdatasync alone on the same disk at 200/s, and one hand-off between
# two threads: the floor under the gateway's CPU per event at that rate. Then it prints the medians as a table
# and checks the targets of issue 11 against them. See bench/README.md.
#
# Environment:
#   RACE2MQTT_BIN    gateway binary      (default build/race2mqtt)
#   RACE2MQTT_BENCH  bench binary        (default race2mqtt-bench next to the gateway)
#   FSYNC_PROBE      race2mqtt-fsync-probe (default next to the gateway)
#   MOSQUITTO, MOSQUITTO_SUB, NODE, NPM  (defaults in /usr/sbin, /usr/bin)
#   REPEAT=3         repetitions; the table shows medians
#   N=50000          full-speed events for race2mqtt and the broker alone
#   NR_N=10000       full-speed events for Node-RED
#   CONNS=32         HTTP connections (at most this many PUBACKs outstanding with --direct)
#   RATE_SECONDS=10  length of each paced run
#   WARMUP=2000 GRACE_MS=3000
#   NODE_RED_DIR     where node-red@NODE_RED_VERSION is (installed there by npm when
#                    missing; default ~/.cache/race2mqtt-bench/node-red)
#   NODE_RED_VERSION=3
#   SKIP_NODERED=1   leave Node-RED out
#   KEEP_TMP=1       keep the temp dir (every run's full output, configs, logs)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ME=compare.sh
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
MOSQUITTO_SUB=${MOSQUITTO_SUB:-/usr/bin/mosquitto_sub}
NODE=${NODE:-/usr/bin/node}
NPM=${NPM:-/usr/bin/npm}
REPEAT=${REPEAT:-3}
N=${N:-50000}
NR_N=${NR_N:-10000}
NODE_RED_DIR=${NODE_RED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/race2mqtt-bench/node-red}
NODE_RED_VERSION=${NODE_RED_VERSION:-3}
SKIP_NODERED=${SKIP_NODERED:-0}
LOW_RATE=200
HIGH_RATE=2000

for v in REPEAT N NR_N CONNS RATE_SECONDS WARMUP GRACE_MS; do
  if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then
    echo "compare.sh: $v must be a positive integer" >&2
    exit 2
  fi
done

FSYNC_PROBE=${FSYNC_PROBE:-$(dirname "$BIN")/race2mqtt-fsync-probe}
for f in "$BIN" "$BENCH" "$MOSQUITTO" "$MOSQUITTO_SUB" "$FSYNC_PROBE"; do
  [ -x "$f" ] || { echo "compare.sh: $f not found or not executable" >&2; exit 1; }
done
command -v curl >/dev/null || { echo "compare.sh: curl is needed" >&2; exit 1; }
if [ "$SKIP_NODERED" != 1 ]; then
  for f in "$NODE" "$NPM"; do
    [ -x "$f" ] || { echo "compare.sh: $f not found (or set SKIP_NODERED=1)" >&2; exit 1; }
  done
fi

TMP=$(mktemp -d /tmp/race2mqtt-compare.XXXXXX)
chmod 755 "$TMP"
RESULTS=$TMP/results
: >"$RESULTS"
BROKER_PID=""
GW_PID=""
NR_PID=""
HOG_PID=""
BENCH_PID=""

STOP_ON_EXIT="BENCH_PID HOG_PID NR_PID GW_PID BROKER_PID"
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------- Node-RED

NR_JS=$NODE_RED_DIR/node_modules/node-red/red.js

install_nodered() {
  [ -f "$NR_JS" ] && return 0
  echo "compare.sh: installing node-red@$NODE_RED_VERSION into $NODE_RED_DIR (npm)" >&2
  mkdir -p "$NODE_RED_DIR"
  if ! timeout --kill-after=10 600 "$NPM" install --prefix "$NODE_RED_DIR" --no-audit --no-fund \
         --loglevel=error "node-red@$NODE_RED_VERSION" >"$TMP/npm.log" 2>&1; then
    echo "compare.sh: npm install failed:" >&2
    tail -n 20 "$TMP/npm.log" >&2
    exit 1
  fi
  [ -f "$NR_JS" ] || { echo "compare.sh: $NR_JS missing after npm install" >&2; exit 1; }
}

nodered_version() {
  "$NODE" -p "require(process.argv[1]).version" "$NODE_RED_DIR/node_modules/node-red/package.json"
}

# True once a POST has gone all the way to the broker: the flow answered and a
# subscriber saw the message (Node-RED's broker connection is up). The probes
# use controller "ready", a topic the bench does not subscribe to.
nodered_ready() { # port
  local sub ok=1
  timeout 5 "$MOSQUITTO_SUB" -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -C 1 \
    -t smartrace/lap/ready >/dev/null 2>&1 &
  sub=$!
  for _ in $(seq 20); do
    curl -sf -o /dev/null --max-time 1 -H 'Content-Type: application/json' \
      --data '{"time":0,"event_type":"ui.lap_update","event_data":{"controller_id":"ready"}}' \
      "http://127.0.0.1:$1/" || true
    sleep 0.2
    kill -0 "$sub" 2>/dev/null || break
  done
  wait "$sub" 2>/dev/null && ok=0
  return $ok
}

launch_nodered() { # port dir
  cp "$ROOT/bench/nodered/flow.json" "$2/flow.json"
  R2M_NR_USERDIR=$2 R2M_NR_PORT=$1 R2M_MQTT_PORT=$MQTT_PORT \
    "$NODE" "$NR_JS" --settings "$ROOT/bench/nodered/settings.js" >"$2/nodered.log" 2>&1 &
  SERVER_PID=$!
}

start_nodered() { # name
  start_server Node-RED "$TMP/$1" nodered.log launch_nodered nodered_ready EADDRINUSE 60
  NR_PORT=$SERVER_PORT
  NR_PID=$SERVER_PID
}

stop_nodered() {
  stop_pid "$NR_PID" 10
  NR_PID=""
}

# ----------------------------------------------------------------- the hog

# Another process loading one core for the length of one run (bounded by
# timeout in case this script dies without its trap).
start_hog() {
  timeout --kill-after=2 $((RATE_SECONDS + 120)) bash -c 'while :; do :; done' &
  HOG_PID=$!
}

stop_hog() {
  stop_pid "$HOG_PID" 2
  HOG_PID=""
}

# ------------------------------------------------------------------- runs

# An integer with thousands separators (12,345), whatever the locale.
group() { # number
  awk -v v="$1" 'BEGIN {
    s = sprintf("%.0f", v); o = ""
    for (i = 1; i <= length(s); i++) {
      o = o substr(s, i, 1)
      if ((length(s) - i) % 3 == 0 && i < length(s)) o = o ","
    }
    print o }'
}

declare -A TARGET_NAME=([r2m]="race2mqtt" [nr]="Node-RED" [broker]="broker alone")
declare -A SCEN_NAME=([full]="full speed" [low]="$LOW_RATE/s" [lowload]="$LOW_RATE/s + load"
                      [high]="$(group $HIGH_RATE)/s")

# Value of key in a RESULT line ("nan" when absent).
result_get() { # line key
  awk -v k="$2" '{ for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) { print substr($i, length(k) + 2); exit } }' <<<"$1" |
    grep . || echo nan
}

run_one() { # target scenario repetition
  local target=$1 scen=$2 rep=$3 name=$1-$2-$3
  local n rate warmup pid args=() out=$TMP/$1-$2-$3.txt
  case $scen in
    full) rate=0; warmup=$WARMUP; n=$N; [ "$target" != nr ] || n=$NR_N ;;
    low | lowload) rate=$LOW_RATE; warmup=$LOW_RATE; n=$((LOW_RATE * RATE_SECONDS)) ;;
    high) rate=$HIGH_RATE; warmup=$HIGH_RATE; n=$((HIGH_RATE * RATE_SECONDS)) ;;
  esac
  case $target in
    r2m)
      start_gateway "$name"
      pid=$GW_PID
      args=(--http "127.0.0.1:$HTTP_PORT") ;;
    nr)
      start_nodered "$name"
      pid=$NR_PID
      args=(--http "127.0.0.1:$NR_PORT" --match id) ;;
    broker)
      pid=$BROKER_PID
      args=(--direct) ;;
  esac
  [ "$scen" != lowload ] || start_hog
  # A full-speed run of a slow target can take long: the bench's own limit is
  # generous, the outer timeout catches a hung bench. In the background, so
  # that a signal to this script ends the run at once (the trap stops it).
  local limit=$((RATE_SECONDS + 120))
  [ "$rate" != 0 ] || limit=300
  timeout --kill-after=5 $((limit + 30)) "$BENCH" "${args[@]}" \
    --broker "tcp://127.0.0.1:$MQTT_PORT" --n "$n" --conns "$CONNS" --rate "$rate" \
    --warmup "$warmup" --grace-ms "$GRACE_MS" --pid "$pid" --timeout-s "$limit" \
    --label "$name" >"$out" 2>&1 &
  BENCH_PID=$!
  if ! wait "$BENCH_PID"; then
    BENCH_PID=""
    echo "compare.sh: the bench failed in $name:" >&2
    tail -n 30 "$out" >&2
    exit 1
  fi
  BENCH_PID=""
  [ "$scen" != lowload ] || stop_hog
  case $target in
    r2m) gateway_metrics >>"$out"; stop_gateway "$name" >>"$out" ;;
    nr) stop_nodered ;;
  esac
  local line
  line=$(grep '^RESULT ' "$out" | tail -n 1) || { echo "compare.sh: no RESULT in $out" >&2; exit 1; }
  echo "$target $scen $rep $line" >>"$RESULTS"

  printf '  [%d/%d] %-12s %-16s %6s ev  %7s/s  e2e p50 %7s  p99 %8s ms  lost %s' \
    "$rep" "$REPEAT" "${TARGET_NAME[$target]}" "${SCEN_NAME[$scen]}" "$(result_get "$line" sent)" \
    "$(result_get "$line" delivered_per_s)" "$(result_get "$line" sched_p50_ms)" \
    "$(result_get "$line" sched_p99_ms)" "$(result_get "$line" lost)"
  printf '  CPU %s%% %s us/ev' "$(result_get "$line" cpu_pct)" \
    "$(result_get "$line" cpu_us_per_event)"
  if [ "$target" != broker ]; then
    printf '  RSS %s (PSS %s) MiB' "$(result_get "$line" hwm_mib)" \
      "$(result_get "$line" pss_peak_mib)"
  fi
  echo
  local anomalies dups
  anomalies=$(result_get "$line" anomalies)
  dups=$(result_get "$line" dups)
  if [ "$anomalies" != 0 ] || [ "$dups" != 0 ] || [ "$(result_get "$line" sub_lost)" != 0 ] ||
     [ "$(result_get "$line" sent)" != "$(result_get "$line" accepted)" ]; then
    echo "         ^ not clean (rejected, duplicates, anomalies or subscriber loss), full output:"
    sed -n '/^=== race2mqtt bench/,/^=== end/p' "$out" | sed 's/^/         /'
  fi
}

# ---------------------------------------------------------------- summary

# Median over the repetitions of one figure ("nan" when there is none).
median() { # target scenario key
  awk -v t="$1" -v s="$2" -v k="$3" '
    $1 == t && $2 == s {
      for (i = 4; i <= NF; i++)
        if (index($i, k "=") == 1) {
          v = substr($i, length(k) + 2)
          if (v != "nan" && v != "-nan") x[n++] = v + 0
        }
    }
    END {
      if (n == 0) { print "nan"; exit }
      for (i = 1; i < n; i++)
        for (j = i; j > 0 && x[j - 1] > x[j]; j--) { y = x[j]; x[j] = x[j - 1]; x[j - 1] = y }
      m = n % 2 ? x[(n - 1) / 2] : (x[n / 2 - 1] + x[n / 2]) / 2
      print m
    }' "$RESULTS"
}

fmt() { # printf format, value: "—" for nan
  # shellcheck disable=SC2059 # the format is the caller's
  if [ "$2" = nan ]; then printf '—'; else LC_ALL=C printf "$1" "$2"; fi
}

cell_rate() { # target scenario
  local v
  v=$(median "$1" "$2" delivered_per_s)
  [ "$v" = nan ] && { printf '—'; return; }
  printf '%s/s' "$(group "$v")"
}

# Two medians in one cell, e.g. p50 / p99 ("—" when there are none).
cell_pair() { # target scenario key1 format1 key2 format2 template
  local a b
  a=$(median "$1" "$2" "$3")
  b=$(median "$1" "$2" "$5")
  [ "$a" = nan ] && { printf '—'; return; }
  # shellcheck disable=SC2059 # the template is the caller's
  printf "$7" "$(fmt "$4" "$a")" "$(fmt "$6" "$b")"
}

cell_lat() { # target scenario
  cell_pair "$1" "$2" sched_p50_ms %.2f sched_p99_ms %.2f '%s / %s ms'
}

cell_cpu() { # target scenario
  cell_pair "$1" "$2" cpu_pct %.1f cpu_us_per_event %.0f '%s%%, %s µs'
}

cell_mem() { # target scenario
  cell_pair "$1" "$2" hwm_mib %.1f pss_peak_mib %.1f '%s MiB (%s MiB)'
}

# One target line: name, measured ratio or value, comparison, limit.
check() { # text value op limit unit
  local verdict
  if [ "$2" = nan ]; then
    verdict="n/a"
  elif awk -v v="$2" -v l="$4" -v op="$3" \
         'BEGIN { exit !((op == "<=" && v <= l) || (op == ">=" && v >= l)) }'; then
    verdict="met"
  else
    verdict="NOT met"
  fi
  printf '  %-52s %10s  (target %s %s%s)  %s\n' "$1" "$(fmt "%.2f$5" "$2")" "$3" "$4" "$5" \
    "$verdict"
}

ratio() { # a b: a / b, nan if either is missing or b is 0
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "nan" || b == "nan" || b + 0 == 0) print "nan"; else printf "%.4f\n", a / b }'
}

summary() {
  local runs=$REPEAT
  echo
  echo "Medians of $runs run(s); e2e = scheduled send -> arrival at the subscriber (p50 / p99)."
  echo
  echo "| | race2mqtt | Node-RED | broker alone |"
  echo "|---|---|---|---|"
  echo "| full speed, $CONNS connections | $(cell_rate r2m full) | $(cell_rate nr full) | $(cell_rate broker full) |"
  echo "| $LOW_RATE events/s: e2e p50 / p99 | $(cell_lat r2m low) | $(cell_lat nr low) | — |"
  echo "| $LOW_RATE events/s while another process loads one core: p50 / p99 | $(cell_lat r2m lowload) | $(cell_lat nr lowload) | — |"
  echo "| $(group $HIGH_RATE) events/s: e2e p50 / p99 | $(cell_lat r2m high) | $(cell_lat nr high) | — |"
  echo "| CPU at $LOW_RATE events/s (% of a core, µs per event) | $(cell_cpu r2m low) | $(cell_cpu nr low) | — |"
  echo "| peak RSS (PSS) at full speed | $(cell_mem r2m full) | $(cell_mem nr full) | — |"
  echo
  echo "Targets (from the medians above):"
  local s
  for s in low lowload; do
    check "${SCEN_NAME[$s]} p50, race2mqtt / Node-RED" \
      "$(ratio "$(median r2m $s sched_p50_ms)" "$(median nr $s sched_p50_ms)")" "<=" 0.6 x
    check "${SCEN_NAME[$s]} p99, race2mqtt / Node-RED" \
      "$(ratio "$(median r2m $s sched_p99_ms)" "$(median nr $s sched_p99_ms)")" "<=" 0.5 x
  done
  check "CPU per event at $LOW_RATE/s, race2mqtt" "$(median r2m low cpu_us_per_event)" "<=" 100 " µs"
  echo "    measured limit: one write + fdatasync alone on this disk at $LOW_RATE/s costs" \
    "$(result_get "$FSYNC" fsync_prealloc_cpu_us) µs of CPU preallocated" \
    "($(result_get "$FSYNC" fsync_append_cpu_us) µs appended), the pacing wake-up alone" \
    "$(result_get "$FSYNC" sleep_cpu_us) µs; latency p50 $(result_get "$FSYNC" fsync_prealloc_p50_ms)" \
    "/ p99 $(result_get "$FSYNC" fsync_prealloc_p99_ms) ms; one hand-off between two threads" \
    "$(result_get "$FSYNC" handoff_cpu_us) µs (an event crosses about six: HTTP worker, flusher," \
    "publisher, paho's send and receive threads, the HTTP worker again)"
  check "full speed, race2mqtt / Node-RED" \
    "$(ratio "$(median r2m full delivered_per_s)" "$(median nr full delivered_per_s)")" ">=" 10 x
  # Every event the gateway delivers crosses the same broker and subscriber,
  # so what they carry alone bounds this ratio for any gateway.
  echo "    measured limit: the broker alone carries" \
    "$(fmt %.2fx "$(ratio "$(median broker full delivered_per_s)" "$(median nr full delivered_per_s)")")" \
    "Node-RED's rate in this run; no gateway that publishes through it can go beyond that"
  check "full speed, race2mqtt / broker alone" \
    "$(ratio "$(median r2m full delivered_per_s)" "$(median broker full delivered_per_s)")" ">=" 0.5 x
  check "peak RSS at full speed, race2mqtt" "$(median r2m full hwm_mib)" "<=" 12 " MiB"
  local lost
  lost=$(awk '{ for (i = 4; i <= NF; i++) if ($i ~ /^lost=/ && $i != "lost=0") print "  " $1 " " $2 " run " $3 ": " $i }' "$RESULTS")
  if [ -n "$lost" ]; then
    echo
    echo "Runs that lost events (accepted but never delivered):"
    echo "$lost"
  fi
}

# ------------------------------------------------------------------- main

TARGETS="r2m"
if [ "$SKIP_NODERED" != 1 ]; then
  install_nodered
  TARGETS="r2m nr"
fi

start_broker

echo "race2mqtt compare: $(date -u '+%Y-%m-%d %H:%M:%SZ'), $(nproc) CPUs, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "race2mqtt: $BIN ($("$BIN" --version 2>/dev/null | head -n 1 || true)); scripts from tree $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "broker:    $("$MOSQUITTO" -h 2>/dev/null | head -n 1 || true), 127.0.0.1:$MQTT_PORT"
if [ "$SKIP_NODERED" != 1 ]; then
  echo "Node-RED:  $(nodered_version) on node $("$NODE" --version) ($NODE_RED_DIR)"
else
  echo "Node-RED:  skipped (SKIP_NODERED=1)"
fi
echo "runs:      REPEAT=$REPEAT, full speed N=$N (Node-RED NR_N=$NR_N), $CONNS connections, paced runs ${RATE_SECONDS} s, warmup $WARMUP"
echo

for rep in $(seq "$REPEAT"); do
  for scen in full low lowload high; do
    for target in $TARGETS; do
      run_one "$target" "$scen" "$rep"
    done
    [ "$scen" != full ] || run_one broker full "$rep"
  done
done

# In the temp dir, on the disk the gateways' journals used.
timeout --kill-after=5 60 "$FSYNC_PROBE" --dir "$TMP" --n 1000 --rate "$LOW_RATE" >"$TMP/fsync.out"
grep -v '^RESULT ' "$TMP/fsync.out" | sed 's/^/  /'
FSYNC=$(grep '^RESULT ' "$TMP/fsync.out")

summary
