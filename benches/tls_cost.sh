#!/usr/bin/env bash
# What TLS costs: the same herald-load workloads against a plaintext broker and a TLS one
# (certificate from `herald cert init`, token authentication and an ACL on), alternated
# in one run, medians printed with their TLS/plaintext ratios.
#
#   benches/tls_cost.sh [ROUNDS]     (default 3; release builds of herald and herald-load)
#
# Workloads, each with 100 B records, fsync never, 4 partitions, one producer and one
# consumer: (1) throughput, producer and consumer together as fast as they go, 1 M
# records; (2) latency at a fixed 10,000 records/s for 15 s (2 s warm-up): publish p99
# and publish-to-delivery p99.
set -euo pipefail
ROUNDS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
HERALD=$BIN/herald
LOAD=$BIN/herald-load
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$HERALD" cert init --dir "$WORK/certs" >/dev/null
"$HERALD" auth hash-token --principal load >"$WORK/token.toml"
TOKEN=$(sed -n 2p "$WORK/token.toml" | cut -c3-)
printf 'superusers = ["load"]\n' >"$WORK/acl.toml"
{ echo "acl_file = \"$WORK/acl.toml\""; grep -v '^#' "$WORK/token.toml"; } >"$WORK/secure.toml"

serve() { # serve MODE PORT
  local extra=()
  if [ "$1" = tls ]; then
    extra=(--config "$WORK/secure.toml" --tls-cert "$WORK/certs/server.pem" --tls-key "$WORK/certs/server.key")
  fi
  rm -rf "$WORK/data-$1"
  : >"$WORK/serve-$1.log"
  "$HERALD" serve --data-dir "$WORK/data-$1" --listen "127.0.0.1:$2" --metrics-listen 127.0.0.1:0 \
    "${extra[@]}" 2>>"$WORK/serve-$1.log" &
  for _ in $(seq 100); do grep -q "herald is serving" "$WORK/serve-$1.log" && return; sleep 0.1; done
  echo "broker did not start"; cat "$WORK/serve-$1.log"; exit 1
}

load() { # load MODE PORT OUT ARGS...
  local mode=$1 port=$2 out=$3; shift 3
  local target=(--target "herald://127.0.0.1:$port")
  if [ "$mode" = tls ]; then
    target=(--target "herald://localhost:$port" --tls-ca "$WORK/certs/ca.pem" --token "$TOKEN")
  fi
  "$LOAD" "${target[@]}" --quiet --json "$out" --partitions 4 --record-size 100 --fsync never \
    --producers 1 --consumers 1 --cleanup "$@" >/dev/null
}

for round in $(seq "$ROUNDS"); do
  for mode in plain tls; do
    port=$((51000 + RANDOM % 1000))
    serve "$mode" "$port"
    load "$mode" "$port" "$WORK/thr-$mode-$round.json" --topic "thr$round" --batch-size 1000 \
      --records 1000000 --consumer-window 10000 --ordering none
    load "$mode" "$port" "$WORK/lat-$mode-$round.json" --topic "lat$round" --batch-size 10 \
      --rate 10000 --duration 15 --warmup 2 --linger-ms 0
    kill %1; wait %1 2>/dev/null || true
  done
done

python3 "$ROOT/benches/ab_table.py" "$WORK" "$ROUNDS" plain:plaintext tls:TLS+token \
  'publish throughput (records/s)|thr|produced.msgs_per_s' \
  'consume throughput (records/s)|thr|consumed.msgs_per_s' \
  'publish p99 at 10k/s (µs)|lat|publish_latency_us.p99' \
  'publish-to-delivery p99 at 10k/s (µs)|lat|e2e_latency_us.p99'
