#!/usr/bin/env bash
# Herald vs NATS JetStream vs Redis Streams, with the same load generator (herald-load).
#
#   benches/compare.sh                 # SCALE=full: 1M x 100 B and 250k x 1 KiB records
#   SCALE=small benches/compare.sh     # 100k x 100 B and 25k x 1 KiB, for a quick check
#
# Installs nats-server and redis-server with apt-get if they are missing (needs root),
# builds herald-load and the broker in release, starts all three servers on loopback with
# fresh temporary data directories, runs every workload against each target REPEATS times
# (interleaved, so background noise spreads over all targets), and writes the medians as
# a markdown table to $OUT/results.md (also printed). Raw JSON summaries go to $OUT/raw/.
# Not run in CI.
#
# Workloads: publish only, and publish + consume at the same time (a consumer group of
# $CONSUMERS members, per-message acks), each with 100 B and 1 KiB records, as fast as
# possible (open loop: latencies there are mostly queueing); and `paced`: publish +
# consume of 100 B records at a fixed $RATE records/s for 10 s (5 s at SCALE=small),
# where the latencies compare the brokers at the same load.
#
# Durability (DURABILITY=interval, the default; or never). Matched as closely as the
# servers allow:
#   Herald: topic fsync policy `interval:1000` (flush at most 1 s after an append; acks do
#           not wait for it) or `never` (the OS decides).
#   Redis:  `appendonly yes` with `appendfsync everysec` (a background fsync every second)
#           or `appendfsync no` (the OS decides); RDB snapshots off.
#   NATS:   a JetStream stream with file storage. nats-server 2.9 (Debian bookworm ships
#           2.9.10) has no fsync setting at all: its file store hands messages to the OS
#           with write() and acks them without waiting for the disk; the `sync_interval`
#           and `sync_always` options exist only from 2.10 (2.9.10 rejects
#           `sync_interval` as an unknown field).
#           Under strace, nats-server 2.9.10 made no fsync/fdatasync/msync call at all
#           while ~100 MB were published and for 10 s after. So for NATS both profiles
#           are "the OS decides", like Herald's `never`: NATS gets the weaker durability.
# No target fsyncs before acking in these profiles; none of the three is "always".
#
# Settings (environment): SCALE, REPEATS (3), DURABILITY, PRODUCERS (2), CONSUMERS (2),
# PARTITIONS (4), KEYS (1000), BATCH (100), RATE (paced workload: 50000/s, 20000 at
# SCALE=small), LINGER_MS (Herald producer linger, 5 like the client's default; it is most
# of Herald's publish latency in the paced workload), TARGETS ("herald nats redis"), OUT
# (target/compare), CARGO_TARGET_DIR (target).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SCALE=${SCALE:-full}
REPEATS=${REPEATS:-3}
DURABILITY=${DURABILITY:-interval}
PRODUCERS=${PRODUCERS:-2}
CONSUMERS=${CONSUMERS:-2}
PARTITIONS=${PARTITIONS:-4}
KEYS=${KEYS:-1000}
BATCH=${BATCH:-100}
LINGER_MS=${LINGER_MS:-5}
TARGETS=${TARGETS:-herald nats redis}
OUT=${OUT:-$ROOT/target/compare}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

case $SCALE in
small) RECORDS_100=100000 RECORDS_1K=25000 RATE=${RATE:-20000} ;;
full) RECORDS_100=1000000 RECORDS_1K=250000 RATE=${RATE:-50000} ;;
*) echo "SCALE must be small or full" >&2; exit 2 ;;
esac
case $DURABILITY in
interval) HERALD_FSYNC=interval:1000 REDIS_FSYNC=everysec ;;
never) HERALD_FSYNC=never REDIS_FSYNC=no ;;
*) echo "DURABILITY must be interval or never" >&2; exit 2 ;;
esac

HERALD_PORT=${HERALD_PORT:-50071}
HERALD_METRICS_PORT=${HERALD_METRICS_PORT:-59471}
NATS_PORT=${NATS_PORT:-4299}
REDIS_PORT=${REDIS_PORT:-6399}

# --- servers to compare against ---
missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    SUDO=""
    [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts a system redis-server on 6379 when it installs it; ours uses its own port.

# --- build ---
cargo build --release -q -p herald-cli --bin herald
cargo build --release -q -p herald --bin herald-load
HERALD=$CARGO_TARGET_DIR/release/herald
LOAD=$CARGO_TARGET_DIR/release/herald-load

# --- start the servers ---
WORK=$(mktemp -d /tmp/herald-compare.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

mkdir -p "$WORK/herald" "$WORK/nats" "$WORK/redis" "$OUT/raw"
rm -f "$OUT"/raw/*.json

"$HERALD" serve --data-dir "$WORK/herald" --listen "127.0.0.1:$HERALD_PORT" \
    --metrics-listen "127.0.0.1:$HERALD_METRICS_PORT" >"$WORK/herald.log" 2>&1 &
PIDS+=($!)

cat >"$WORK/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
jetstream {
    store_dir: "$WORK/nats"
    max_file_store: 64GB
    max_memory_store: 256MB
}
EOF
nats-server -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$WORK/redis" --save "" \
    --appendonly yes --appendfsync "$REDIS_FSYNC" --daemonize no \
    >"$WORK/redis.log" 2>&1 &
PIDS+=($!)

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1; logs in $WORK" >&2
    cat "$WORK"/*.log >&2
    exit 1
}
wait_port "$HERALD_PORT"
wait_port "$NATS_PORT"
wait_port "$REDIS_PORT"

url() {
    case $1 in
    herald) echo "herald://127.0.0.1:$HERALD_PORT" ;;
    nats) echo "nats://127.0.0.1:$NATS_PORT" ;;
    redis) echo "redis://127.0.0.1:$REDIS_PORT" ;;
    esac
}
fsync_arg() {
    case $1 in
    herald) echo "$HERALD_FSYNC" ;;
    redis) [[ $REDIS_FSYNC == everysec ]] && echo interval:1000 || echo never ;;
    nats) echo default ;;
    esac
}

# --- run ---
PACED_SECS=10
[[ $SCALE == small ]] && PACED_SECS=5
WORKLOADS=(
    "publish 100 $RECORDS_100 0 0"
    "publish 1024 $RECORDS_1K 0 0"
    "pubsub 100 $RECORDS_100 $CONSUMERS 0"
    "pubsub 1024 $RECORDS_1K $CONSUMERS 0"
    "paced 100 $((RATE * PACED_SECS)) $CONSUMERS $RATE"
)
for workload in "${WORKLOADS[@]}"; do
    read -r mode size records consumers rate <<<"$workload"
    for rep in $(seq "$REPEATS"); do
        for target in $TARGETS; do
            name="$mode-$size-$target-$rep"
            echo "== $name: $records records of $size B, $PRODUCERS producers, $consumers consumers, rate $rate/s" >&2
            "$LOAD" --target "$(url "$target")" --quiet --cleanup --no-fail \
                --producers "$PRODUCERS" --consumers "$consumers" \
                --partitions "$PARTITIONS" --keys "$KEYS" --batch-size "$BATCH" \
                --record-size "$size" --records "$records" --rate "$rate" --linger-ms "$LINGER_MS" --fsync "$(fsync_arg "$target")" \
                --json "$OUT/raw/$name.json" >"$OUT/raw/$name.txt" 2>"$OUT/raw/$name.err" ||
                echo "   failed: see $OUT/raw/$name.err" >&2
            grep -E '^(produced|consumed|errors)' "$OUT/raw/$name.txt" | sed 's/^/   /' >&2 || true
        done
    done
done

# --- medians ---
python3 - "$OUT" "$SCALE" "$DURABILITY" "$REPEATS" "$PRODUCERS" "$CONSUMERS" "$PARTITIONS" "$KEYS" "$BATCH" "$RATE" <<'EOF'
import glob, json, os, statistics, sys
out, scale, durability, repeats, producers, consumers, partitions, keys, batch, rate = sys.argv[1:]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "raw", "*.json"))):
    mode, size, target, _rep = os.path.basename(path)[:-5].split("-")
    runs.setdefault((mode, int(size), target), []).append(json.load(open(path)))

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def num(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"

def field(rs, side, key):
    return med([(r.get(side) or {}).get(key) for r in rs])

lines = [
    f"Median of {repeats} runs per cell; {producers} producers, {consumers} consumers (pubsub), "
    f"{partitions} partitions/streams, {keys} keys, batch {batch}; durability profile "
    f"`{durability}` (see benches/compare.sh); scale `{scale}`; `paced` = publish + consume "
    f"at {rate} records/s.",
    "",
    "| workload | size | target | publish msgs/s | publish MB/s | consume msgs/s | publish-ack p50 / p99 µs | e2e p50 / p99 µs | lost / dup / ooo (all runs) | ok runs |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
]
order = {"herald": 0, "nats": 1, "redis": 2}
modes = {"publish": 0, "pubsub": 1, "paced": 2}
for (mode, size, target) in sorted(runs, key=lambda k: (modes.get(k[0], 9), k[1], order.get(k[2], 9))):
    rs = runs[(mode, size, target)]
    pub = lambda q: med([(r.get("publish_latency_us") or {}).get(q) for r in rs])
    e2e = lambda q: med([(r.get("e2e_latency_us") or {}).get(q) for r in rs])
    lost = sum((r["check"].get("lost") or 0) for r in rs)
    dup = sum(r["check"]["duplicates"] for r in rs)
    ooo = sum(r["check"]["out_of_order"] for r in rs)
    ok = sum(1 for r in rs if r["ok"])
    consume = num(field(rs, "consumed", "msgs_per_s")) if mode != "publish" else "-"
    lat_e2e = f"{num(e2e('p50'))} / {num(e2e('p99'))}" if mode != "publish" else "-"
    check = f"{lost} / {dup} / {ooo}" if mode != "publish" else "-"
    lines.append(
        f"| {mode} | {size} B | {target} | {num(field(rs, 'produced', 'msgs_per_s'))} | "
        f"{num(field(rs, 'produced', 'mb_per_s'), 1)} | {consume} | "
        f"{num(pub('p50'))} / {num(pub('p99'))} | {lat_e2e} | {check} | {ok}/{len(rs)} |"
    )
text = "\n".join(lines) + "\n"
open(os.path.join(out, "results.md"), "w").write(text)
print(text)
EOF
echo "written to $OUT/results.md; raw runs in $OUT/raw/" >&2
