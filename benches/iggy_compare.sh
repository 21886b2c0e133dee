#!/usr/bin/env bash
# Herald against Apache Iggy on this machine: the same workloads through each broker's own
# benchmark client (herald-load for Herald, iggy-bench for Iggy), a fresh broker with its
# own temporary data directory for every run, Iggy and Herald alternated in each round
# (which goes first swaps every round), medians printed with their Herald/Iggy ratios by
# benches/ab_table.py. Not run by CI.
#
#   benches/iggy_compare.sh IGGY_SERVER IGGY_BENCH [ROUNDS]     (default 3 rounds)
#
# IGGY_SERVER and IGGY_BENCH are release builds of Iggy's `iggy-server` and `iggy-bench`
# (docs/benchmarks.md says how they were built). Herald's side needs release builds of
# `herald` and `herald-load` in ${CARGO_TARGET_DIR:-target}/release. Iggy runs with its
# built-in default configuration (the script runs it from a temporary directory, so no
# core/server/config.toml is found), TCP on a loopback port, HTTP/QUIC/WebSocket off.
#
# Workloads (1 partition, 1 producer, 1 consumer unless said; Herald topics fsync `never`,
# like Iggy's default of leaving writes to the page cache, except in the fsync rows):
#   s100 / s1k  publish RECORDS_100 x 100 B / RECORDS_1K x 1 KiB records, then consume them.
#               Iggy: `pinned-producer` (requests of 1,000 records), then `pinned-consumer`
#               (polls of 1,000 records by offset, no consumer group, nothing committed)
#               on the same server. Herald: `herald-load --preload` (the client's default
#               batching: 1 MiB / 5 ms linger), then one group consumer acking every
#               message, group ordering `none`.
#   k100 / k1k  Herald only: the same with group ordering `key` (1,000 keys). The Iggy
#               figures in these rows are the s100 / s1k runs' (copied, not re-run).
#   kp100 / kp1k  Herald only: k100 / k1k with each consumer's max_in_flight_per_key at
#               16 (up to 16 unacked messages of a key, in order). Iggy figures as k100.
#   fe100 / fe1k  offset reads on both sides: Herald `herald-load --preload
#               --consume-mode fetch` (one following Fetch call on the partition from the
#               earliest offset, no group, nothing acked), against Iggy's `pinned-consumer`
#               above. The Iggy figures are the s100 / s1k runs' when those rows run in
#               the same round, else Iggy runs its s100 / s1k workload for this row.
#   f1          publish RECORDS_FSYNC x 1 KiB, fsync on every write: Iggy `--enforce-fsync`
#               (a topic option), Herald topic fsync `always` (the ack waits for the flush).
#   f8          the same with 8 producers and 2 partitions: iggy-bench cannot put 8
#               producers on 1 partition (`pinned-producer` needs a stream per producer,
#               `balanced-producer` at least 2 partitions), so both use 2.
#
# ROWS (default all: "s100 k100 s1k k1k fe100 fe1k f1 f8") selects the workloads, e.g.
# ROWS="fe100 fe1k" benches/iggy_compare.sh ... for the offset-read rows alone.
#
# Broker CPU per record: the broker's threads' CPU time (first field of
# /proc/PID/task/*/schedstat, ns, summed) before and after the measured phase, divided by
# the records. For Herald herald-load samples it around its produce and consume phases
# (--broker-pid); for Iggy this script samples it around each iggy-bench run (which also
# covers that run's login and stream setup).
#
# Records per publish request: Iggy's is the -P 1000 the script asks for; Herald's is
# herald_publish_records_total / herald_publish_requests_total from the broker's metrics.
# Disk flushes per 1,000 records (fsync rows): the disk's completed cache flushes around the
# publish run, counted machine-wide, so other processes' flushes are included.
#
# Sizes: RECORDS_100 (default 5000000), RECORDS_1K (1000000), RECORDS_FSYNC (800000),
# multiples of 1,000 (of 8,000 for f8, rounded down). Per-run JSON and logs are kept in
# OUT (default a new temporary directory, printed at the end).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n 2,10p "$0" | cut -c3-
  exit 2
fi
IGGY_SERVER=$(realpath "$1")
IGGY_BENCH=$(realpath "$2")
ROUNDS=${3:-3}
RECORDS_100=${RECORDS_100:-5000000}
RECORDS_1K=${RECORDS_1K:-1000000}
RECORDS_FSYNC=${RECORDS_FSYNC:-800000}
ROWS=${ROWS:-s100 k100 s1k k1k fe100 fe1k f1 f8}
for kind in $ROWS; do
  case "$kind" in s100 | k100 | kp100 | s1k | k1k | kp1k | fe100 | fe1k | f1 | f8) ;;
    *) echo "unknown row in ROWS: $kind"; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
HERALD=$BIN/herald
LOAD=$BIN/herald-load
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
for b in "$HERALD" "$LOAD" "$IGGY_SERVER" "$IGGY_BENCH"; do
  [ -x "$b" ] || { echo "missing: $b"; exit 2; }
done
BROKER=
stop() {
  if [ -n "$BROKER" ]; then
    kill "$BROKER" 2>/dev/null || true
    wait "$BROKER" 2>/dev/null || true
    BROKER=
  fi
  rm -rf "$OUT/data"
}
trap stop EXIT

# Cache flushes the disk under OUT completed (machine-wide: /sys/class/block/DEV/stat field
# 16, kernels >= 5.5), to show that the fsync rows do reach the disk; 0 where unknown.
DEV=$(basename "$(df --output=source "$OUT" | tail -1)")
flushes() {
  awk '{ print ($16 == "" ? 0 : $16) }' "/sys/class/block/$DEV/stat" 2>/dev/null || echo 0
}

cpu_ns() { # the process's CPU time so far: all its threads, ns (%.0f: mawk clamps %d at 2^31)
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'
}

wait_for() { # wait_for LOG TEXT: 0 once TEXT is in LOG, 1 if the broker exited first
  for _ in $(seq 300); do
    grep -q "$2" "$1" && return 0
    kill -0 "$BROKER" 2>/dev/null || return 1
    sleep 0.1
  done
  echo "broker did not start:"; tail -20 "$1"; exit 1
}

# A port below the ephemeral range that nothing listens on (PORT + 1000 free too).
port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 9000))
    ss -Hltn "( sport = :$p or sport = :$((p + 1000)) )" | grep -q . || break
  done
  echo "$p"
}

started() { # started LOG TEXT: after a start attempt; a port taken meanwhile is retried
  wait_for "$1" "$2" && return 0
  wait "$BROKER" 2>/dev/null || true
  BROKER=
  rm -rf "$OUT/data"
  if grep -q "in use" "$1"; then return 1; fi
  echo "broker did not start:"; tail -20 "$1"; exit 1
}

herald_start() { # herald_start NAME
  while :; do
    PORT=$(port)
    MPORT=$((PORT + 1000))
    : >"$OUT/$1.log"
    "$HERALD" serve --data-dir "$OUT/data" --listen "127.0.0.1:$PORT" \
      --metrics-listen "127.0.0.1:$MPORT" 2>"$OUT/$1.log" &
    BROKER=$!
    started "$OUT/$1.log" "herald is serving" && return
  done
}

# run_herald KIND RUN ARGS...: one herald-load run against a fresh broker.
run_herald() {
  local kind=$1 run=$2 json="$OUT/$1-herald-$2.json" flushed
  shift 2
  herald_start "$kind-herald-$run"
  flushed=$(flushes)
  timeout 900 "$LOAD" --target "herald://127.0.0.1:$PORT" --quiet --no-fail --json "$json" \
    --broker-pid "$BROKER" "$@" >>"$OUT/$kind-herald-$run.log"
  flushed=$(($(flushes) - flushed))
  curl -s "http://127.0.0.1:$MPORT/metrics" >"$OUT/$kind-herald-$run.metrics"
  stop
  python3 - "$json" "$OUT/$kind-herald-$run.metrics" "$LOADAVG" "$flushed" <<'EOF'
import json, sys
path, metrics, loadavg, flushed = sys.argv[1:]
s = json.load(open(path))
count = {"herald_publish_records_total": 0.0, "herald_publish_requests_total": 0.0}
for line in open(metrics):
    name = line.split("{")[0].split(" ")[0]
    if name in count:
        count[name] += float(line.split()[-1])
req = count["herald_publish_requests_total"]
records = count["herald_publish_records_total"]
s["requests"] = {"publish_records_per_request": records / req if req else 0,
                 "disk_flushes_per_1000_records": int(flushed) * 1000 / records if records else 0}
s["loadavg"] = loadavg
json.dump(s, open(path, "w"), indent=1)
EOF
}

iggy_start() { # iggy_start NAME
  while :; do
    PORT=$(port)
    : >"$OUT/$1.log"
    (cd "$OUT" && IGGY_SYSTEM_PATH="$OUT/data" IGGY_TCP_ADDRESS="127.0.0.1:$PORT" \
      IGGY_HTTP_ENABLED=false IGGY_QUIC_ENABLED=false IGGY_WEBSOCKET_ENABLED=false \
      exec "$IGGY_SERVER" --fresh --with-default-root-credentials >"$OUT/$1.log" 2>&1) &
    BROKER=$!
    started "$OUT/$1.log" "Client listener (TCP) accepting on" && return
  done
}

# iggy_bench NAME ACTORS BATCHES ARGS...: one iggy-bench run (ARGS: options and benchmark
# up to the transport), its report and the broker CPU it cost in OUT/NAME.{json,cpu}.
iggy_bench() {
  local name=$1 actors=$2 batches=$3 before after flushed rc=0
  shift 3
  flushed=$(flushes)
  before=$(cpu_ns "$BROKER")
  timeout 900 "$IGGY_BENCH" -P 1000 -b "$batches" "$@" tcp --server-address "127.0.0.1:$PORT" \
    output -o "$OUT/$name" >"$OUT/$name.out" 2>&1 || rc=$?
  after=$(cpu_ns "$BROKER")
  flushed=$(($(flushes) - flushed))
  echo "$rc $((after - before)) $((actors * batches * 1000)) $flushed" >"$OUT/$name.cpu"
}

# run_iggy KIND RUN SIZE PRODUCERS BATCHES CONSUME [ARGS...]: a fresh Iggy, a producer run
# and, with CONSUME=1, a consumer run of the same records; one summary in herald-load's
# shape (produced / consumed msgs_per_s, broker_cpu, requests, ok).
run_iggy() {
  local kind=$1 run=$2 size=$3 producers=$4 batches=$5 consume=$6
  shift 6
  iggy_start "$kind-iggy-$run"
  iggy_bench "$kind-iggy-$run-produce" "$producers" "$batches" -m "$size" "$@"
  if [ "$consume" = 1 ]; then
    iggy_bench "$kind-iggy-$run-consume" 1 "$batches" -m "$size" --reuse-streams \
      pinned-consumer --streams 1 --consumers 1
  fi
  stop
  python3 - "$OUT" "$kind-iggy-$run" "$LOADAVG" <<'EOF'
import glob, json, os, sys
out, name, loadavg = sys.argv[1:]
s = {"target": "iggy", "ok": True, "loadavg": loadavg,
     "requests": {"publish_records_per_request": 1000}, "broker_cpu": {}}
for phase, key in (("produce", "produced"), ("consume", "consumed")):
    if not os.path.exists(f"{out}/{name}-{phase}.cpu"):
        continue
    rc, ns, records, flushed = map(int, open(f"{out}/{name}-{phase}.cpu").read().split())
    reports = glob.glob(f"{out}/{name}-{phase}/*/report.json")
    if rc or not reports:
        s["ok"] = False
        s[key] = {"msgs_per_s": 0, "mb_per_s": 0}
        continue
    summary = json.load(open(reports[0]))["group_metrics"][0]["summary"]
    s[key] = {"records": records,
              "msgs_per_s": summary["total_throughput_messages_per_second"],
              "mb_per_s": summary["total_throughput_megabytes_per_second"]}
    s["broker_cpu"][f"{phase}_us_per_record"] = ns / 1000 / records
    if phase == "produce":
        s["requests"]["disk_flushes_per_1000_records"] = flushed * 1000 / records
json.dump(s, open(f"{out}/{name}.json", "w"), indent=1)
EOF
}

B100=$((RECORDS_100 / 1000))
B1K=$((RECORDS_1K / 1000))
ONE=(--partitions 1 --producers 1)
BF1=$((RECORDS_FSYNC / 1000))
BF8=$((RECORDS_FSYNC / 8000))
one() { # one SYSTEM KIND RUN: the workload KIND on SYSTEM
  LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "round $3 $2 $1 (load average $LOADAVG)" >>"$OUT/loadavg.txt"
  case "$1-$2" in
    iggy-s100) run_iggy s100 "$3" 100 1 "$B100" 1 pinned-producer --streams 1 --producers 1 ;;
    iggy-s1k) run_iggy s1k "$3" 1024 1 "$B1K" 1 pinned-producer --streams 1 --producers 1 ;;
    iggy-k100) cp "$OUT/s100-iggy-$3.json" "$OUT/k100-iggy-$3.json" ;;
    iggy-k1k) cp "$OUT/s1k-iggy-$3.json" "$OUT/k1k-iggy-$3.json" ;;
    iggy-kp100) cp "$OUT/s100-iggy-$3.json" "$OUT/kp100-iggy-$3.json" ;;
    iggy-kp1k) cp "$OUT/s1k-iggy-$3.json" "$OUT/kp1k-iggy-$3.json" ;;
    iggy-fe100) run_iggy fe100 "$3" 100 1 "$B100" 1 pinned-producer --streams 1 --producers 1 ;;
    iggy-fe1k) run_iggy fe1k "$3" 1024 1 "$B1K" 1 pinned-producer --streams 1 --producers 1 ;;
    iggy-f1) run_iggy f1 "$3" 1024 1 "$BF1" 0 --enforce-fsync \
      pinned-producer --streams 1 --producers 1 ;;
    iggy-f8) run_iggy f8 "$3" 1024 8 "$BF8" 0 --enforce-fsync \
      balanced-producer --streams 1 --partitions 2 --producers 8 ;;
    herald-s100) run_herald s100 "$3" "${ONE[@]}" --record-size 100 --fsync never \
      --preload "$RECORDS_100" --consumers 1 --ordering none ;;
    herald-k100) run_herald k100 "$3" "${ONE[@]}" --record-size 100 --fsync never \
      --preload "$RECORDS_100" --consumers 1 --ordering key --keys 1000 ;;
    herald-s1k) run_herald s1k "$3" "${ONE[@]}" --record-size 1024 --fsync never \
      --preload "$RECORDS_1K" --consumers 1 --ordering none ;;
    herald-kp100) run_herald kp100 "$3" "${ONE[@]}" --record-size 100 --fsync never \
      --preload "$RECORDS_100" --consumers 1 --ordering key --keys 1000 --per-key 16 ;;
    herald-kp1k) run_herald kp1k "$3" "${ONE[@]}" --record-size 1024 --fsync never \
      --preload "$RECORDS_1K" --consumers 1 --ordering key --keys 1000 --per-key 16 ;;
    herald-k1k) run_herald k1k "$3" "${ONE[@]}" --record-size 1024 --fsync never \
      --preload "$RECORDS_1K" --consumers 1 --ordering key --keys 1000 ;;
    herald-fe100) run_herald fe100 "$3" "${ONE[@]}" --record-size 100 --fsync never \
      --preload "$RECORDS_100" --consumers 1 --consume-mode fetch ;;
    herald-fe1k) run_herald fe1k "$3" "${ONE[@]}" --record-size 1024 --fsync never \
      --preload "$RECORDS_1K" --consumers 1 --consume-mode fetch ;;
    herald-f1) run_herald f1 "$3" "${ONE[@]}" --record-size 1024 --fsync always \
      --records "$((BF1 * 1000))" --consumers 0 ;;
    herald-f8) run_herald f8 "$3" --partitions 2 --producers 8 --record-size 1024 --fsync always \
      --records "$((BF8 * 8000))" --consumers 0 ;;
  esac
}

for round in $(seq "$ROUNDS"); do
  start=$SECONDS
  order=(iggy herald)
  if [ $((round % 2)) = 0 ]; then order=(herald iggy); fi
  for kind in $ROWS; do
    for system in "${order[@]}"; do
      case "$system-$kind" in
        iggy-k*) continue ;;
        # The same Iggy workload as s100 / s1k: copied when that row ran this round.
        iggy-fe*) if [ -f "$OUT/s${kind#fe}-iggy-$round.json" ]; then continue; fi ;;
      esac
      one "$system" "$kind" "$round"
    done
  done
  for kind in $ROWS; do
    case "$kind" in
      k*) one iggy "$kind" "$round" ;;
      fe*) [ -f "$OUT/$kind-iggy-$round.json" ] ||
        cp "$OUT/s${kind#fe}-iggy-$round.json" "$OUT/$kind-iggy-$round.json" ;;
    esac
  done
  echo "round $round took $((SECONDS - start)) s" >>"$OUT/loadavg.txt"
done

# The table's rows (NAME|KIND|PATH, see benches/ab_table.py), those of the ROWS run.
TABLE=(
  'publish 100 B (records/s)|s100|produced.msgs_per_s'
  '  broker CPU (µs/record)|s100|broker_cpu.produce_us_per_record'
  '  records per request|s100|requests.publish_records_per_request'
  'publish 1 KiB (records/s)|s1k|produced.msgs_per_s'
  '  broker CPU (µs/record)|s1k|broker_cpu.produce_us_per_record'
  '  records per request|s1k|requests.publish_records_per_request'
  'consume 100 B, Herald ordering none (records/s)|s100|consumed.msgs_per_s'
  '  broker CPU (µs/record)|s100|broker_cpu.consume_us_per_record'
  'consume 100 B, Herald ordering key (records/s)|k100|consumed.msgs_per_s'
  '  broker CPU (µs/record)|k100|broker_cpu.consume_us_per_record'
  'consume 100 B, Herald key, 16 per key (records/s)|kp100|consumed.msgs_per_s'
  '  broker CPU (µs/record)|kp100|broker_cpu.consume_us_per_record'
  'consume 1 KiB, Herald ordering none (records/s)|s1k|consumed.msgs_per_s'
  '  broker CPU (µs/record)|s1k|broker_cpu.consume_us_per_record'
  'consume 1 KiB, Herald ordering key (records/s)|k1k|consumed.msgs_per_s'
  '  broker CPU (µs/record)|k1k|broker_cpu.consume_us_per_record'
  'consume 1 KiB, Herald key, 16 per key (records/s)|kp1k|consumed.msgs_per_s'
  '  broker CPU (µs/record)|kp1k|broker_cpu.consume_us_per_record'
  'offset reads 100 B, Herald Fetch (records/s)|fe100|consumed.msgs_per_s'
  '  broker CPU (µs/record)|fe100|broker_cpu.consume_us_per_record'
  'offset reads 1 KiB, Herald Fetch (records/s)|fe1k|consumed.msgs_per_s'
  '  broker CPU (µs/record)|fe1k|broker_cpu.consume_us_per_record'
  'publish 1 KiB fsync, 1 producer (records/s)|f1|produced.msgs_per_s'
  '  broker CPU (µs/record)|f1|broker_cpu.produce_us_per_record'
  '  records per request|f1|requests.publish_records_per_request'
  '  disk flushes per 1,000 records|f1|requests.disk_flushes_per_1000_records'
  'publish 1 KiB fsync, 8 producers (records/s)|f8|produced.msgs_per_s'
  '  broker CPU (µs/record)|f8|broker_cpu.produce_us_per_record'
  '  records per request|f8|requests.publish_records_per_request'
  '  disk flushes per 1,000 records|f8|requests.disk_flushes_per_1000_records'
)
SELECTED=()
for row in "${TABLE[@]}"; do
  kind=${row#*|}
  kind=${kind%%|*}
  case " $ROWS " in *" $kind "*) SELECTED+=("$row") ;; esac
done
python3 "$ROOT/benches/ab_table.py" "$OUT" "$ROUNDS" iggy:Iggy herald:Herald "${SELECTED[@]}"
echo
cat "$OUT/loadavg.txt"
echo "per-run JSON and logs: $OUT"
