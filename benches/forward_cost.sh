#!/usr/bin/env bash
# What forwarding costs in cluster mode: the same herald-load workloads sent to the node
# that serves the partition (direct) and to another node, which forwards every publish
# and read to it over the peer port (forwarded). One 3-node cluster on loopback, runs
# alternated, medians printed with their forwarded/direct ratios.
#
#   benches/forward_cost.sh [ROUNDS]     (default 3; release builds of herald and herald-load)
#   COMPARE=replication benches/forward_cost.sh [ROUNDS]
#
# COMPARE=forward (the default) compares one-copy topics (replication factor 1) sent to
# the partition's node (direct) and to another node (forwarded). COMPARE=replication
# compares replication factor 1 (rf1) with 3 (rf3, a publish acknowledged once two of
# the three replicas have it fsynced), both sent to the partition's leader.
#
# Workloads, each on a fresh 1-partition topic with 100 B records, fsync never, one
# producer and no consumer (herald-load consumes through a group, which runs only on a
# node that holds every partition): (1) publish throughput, 300,000 records; (2) publish
# latency at a fixed 10,000 records/s for 10 s (2 s warm-up).
set -euo pipefail
ROUNDS=${1:-3}
COMPARE=${COMPARE:-forward}
case "$COMPARE" in
  forward) MODES=(direct forwarded) ;;
  replication) MODES=(rf1 rf3) ;;
  *) echo "COMPARE is forward or replication, not $COMPARE"; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
HERALD=$BIN/herald
LOAD=$BIN/herald-load
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

BASE=$((52000 + RANDOM % 2000))
MEMBERS=""
for i in 1 2 3; do
  MEMBERS="$MEMBERS${MEMBERS:+,}$i=127.0.0.1:$((BASE + i))@127.0.0.1:$((BASE + 10 + i))"
done
for i in 1 2 3; do
  "$HERALD" serve --data-dir "$WORK/n$i" --listen "127.0.0.1:$((BASE + i))" --metrics-listen 127.0.0.1:0 \
    --fsync never --node-id "$i" --peer-listen "127.0.0.1:$((BASE + 10 + i))" \
    --initial-members "$MEMBERS" 2>"$WORK/serve-$i.log" &
done
for i in 1 2 3; do
  for _ in $(seq 100); do grep -q "herald is serving" "$WORK/serve-$i.log" && break; sleep 0.1; done
done
PIDS=()
for pid in $(jobs -p); do PIDS+=(--broker-pid "$pid"); done

# The node that takes a topic's only partition's publishes, from `cluster status` on node
# 1: any node names a one-copy partition's node, and node 1 holds a replica of every
# three-copy partition, so it knows its group's leader (0 while one is being elected).
home() {
  for _ in $(seq 100); do
    local leader
    leader=$("$HERALD" cluster status --json --server "127.0.0.1:$((BASE + 1))" |
      python3 -c "import json,sys; s=json.load(sys.stdin); print([t for t in s['topics'] if t['name']=='$1'][0]['partitions'][0]['leader'])")
    if [ "$leader" != 0 ]; then echo "$leader"; return; fi
    sleep 0.1
  done
  echo "no leader for $1" >&2; exit 1
}

run=0
load() { # load KIND MODE TOPIC ARGS...
  local kind=$1 mode=$2 topic=$3; shift 3
  local node
  node=$(home "$topic")
  if [ "$mode" = forwarded ]; then node=$((node % 3 + 1)); fi
  "$LOAD" --target "herald://127.0.0.1:$((BASE + node))" --topic "$topic" --reuse --quiet \
    --json "$WORK/$kind-$mode-$run.json" --partitions 1 --record-size 100 --producers 1 \
    "${PIDS[@]}" "$@" >/dev/null
}

create() { # create TOPIC MODE
  local factor=1
  if [ "$2" = rf3 ]; then factor=3; fi
  for _ in $(seq 100); do
    "$HERALD" topic create "$1" --partitions 1 --replication-factor "$factor" \
      --server "127.0.0.1:$((BASE + 1))" >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "could not create $1"; exit 1
}

for round in $(seq "$ROUNDS"); do
  run=$round
  for mode in "${MODES[@]}"; do
    create "thr-$mode-$round" "$mode"
    load thr "$mode" "thr-$mode-$round" --batch-size 1000 --records 300000 --consumers 0
    create "lat-$mode-$round" "$mode"
    load lat "$mode" "lat-$mode-$round" --batch-size 10 --rate 10000 --duration 10 --warmup 2 \
      --linger-ms 0 --consumers 0
  done
done

python3 "$ROOT/benches/ab_table.py" "$WORK" "$ROUNDS" "${MODES[0]}:${MODES[0]}" "${MODES[1]}:${MODES[1]}" \
  'publish throughput (records/s)|thr|produced.msgs_per_s' \
  'CPU of the 3 nodes (µs/record)|thr|broker_cpu.produce_us_per_record' \
  'publish p50 at 10k/s (µs)|lat|publish_latency_us.p50' \
  'publish p99 at 10k/s (µs)|lat|publish_latency_us.p99'
