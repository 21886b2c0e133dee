#!/usr/bin/env bash
# Publish throughput of two builds of the broker, alternated in one run: one producer,
# one partition, fsync never, publish only (no consumer), 1 KiB and 100 B records; medians
# with their B/A ratios, and the broker's CPU per record (`--broker-pid`). With CONSUME=1,
# also a consumer group's throughput (one member, per-message acks) over 2M preloaded
# 100 B records.
#
#   benches/publish_ab.sh DIR_A DIR_B [ROUNDS]
#
# DIR_A and DIR_B each hold a release `herald` (e.g. copies of target/release/herald of two
# commits); herald-load comes from DIR_B. A fresh broker and data directory per run, the
# topic deleted after it (so no run competes with the write-back of the one before).
set -euo pipefail
A=$1 B=$2 ROUNDS=${3:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOAD=$B/herald-load
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

serve() { # serve DIR MODE PORT
  rm -rf "$WORK/data-$2"
  : >"$WORK/serve-$2.log"
  "$1/herald" serve --data-dir "$WORK/data-$2" --listen "127.0.0.1:$3" --metrics-listen 127.0.0.1:0 \
    2>>"$WORK/serve-$2.log" &
  PID=$!
  for _ in $(seq 100); do grep -q "herald is serving" "$WORK/serve-$2.log" && return; sleep 0.1; done
  echo "broker did not start"; cat "$WORK/serve-$2.log"; exit 1
}

for round in $(seq "$ROUNDS"); do
  for mode in a b; do
    dir=$A; [ "$mode" = b ] && dir=$B
    port=$((52000 + RANDOM % 1000))
    serve "$dir" "$mode" "$port"
    for size in 1024 100; do
      records=2000000; [ "$size" = 100 ] && records=10000000
      "$LOAD" --target "herald://127.0.0.1:$port" --quiet --json "$WORK/s$size-$mode-$round.json" \
        --partitions 1 --record-size "$size" --records "$records" --fsync never \
        --producers 1 --consumers 0 --batch-size 1000 --broker-pid "$PID" \
        --topic "p$size-$round" --cleanup >/dev/null
    done
    if [ -n "${CONSUME:-}" ]; then
      # Group consume with per-message acks: 2M x 100 B preloaded, then one member.
      "$LOAD" --target "herald://127.0.0.1:$port" --quiet --json "$WORK/c100-$mode-$round.json" \
        --partitions 1 --record-size 100 --preload 2000000 --fsync never \
        --producers 1 --consumers 1 --batch-size 1000 --broker-pid "$PID" \
        --topic "c100-$round" --cleanup >/dev/null
    fi
    kill "$PID"; wait "$PID" 2>/dev/null || true
  done
done

python3 "$ROOT/benches/ab_table.py" "$WORK" "$ROUNDS" a:A b:B \
  '1 KiB publish (MB/s)|s1024|produced.mb_per_s' \
  '1 KiB broker CPU (µs/record)|s1024|broker_cpu.produce_us_per_record' \
  '100 B publish (records/s)|s100|produced.msgs_per_s' \
  '100 B broker CPU (µs/record)|s100|broker_cpu.produce_us_per_record' \
  ${CONSUME:+'100 B group consume, acked (records/s)|c100|consumed.msgs_per_s'} \
  ${CONSUME:+'100 B consume broker CPU (µs/record)|c100|broker_cpu.consume_us_per_record'}
