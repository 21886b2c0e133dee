#!/usr/bin/env bash
# The idle cost of partition replicas: three release nodes on loopback, first with no
# topic, then with PARTITIONS partitions of replication factor 3 (every node holds every
# partition's replica, a third of them as leader). CPU (from /proc/PID/stat, user +
# system), RSS and threads are read over WINDOW seconds in each state; the difference,
# divided by the replicas a node holds, is the cost of one idle replica.
#
#   timeout 300 benches/idle_cost.sh [HERALD_BINARY]     (default target/release/herald)
#   PARTITIONS=30 WINDOW=20 benches/idle_cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HERALD=${1:-target/release/herald}
PARTITIONS=${PARTITIONS:-30}
WINDOW=${WINDOW:-20}
[ -x "$HERALD" ] || { echo "build it first: cargo build --release -p herald-cli" >&2; exit 1; }

ROOT=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$ROOT"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a CLIENT PEER
for i in 1 2 3; do CLIENT[$i]=$(port); PEER[$i]=$(port); done
MEMBERS="1=127.0.0.1:${CLIENT[1]}@127.0.0.1:${PEER[1]},2=127.0.0.1:${CLIENT[2]}@127.0.0.1:${PEER[2]},3=127.0.0.1:${CLIENT[3]}@127.0.0.1:${PEER[3]}"
for i in 1 2 3; do
    # Stopped by the trap on exit (run the script under `timeout` to bound it).
    "$HERALD" serve --data-dir "$ROOT/n$i" --listen "127.0.0.1:${CLIENT[$i]}" \
        --metrics-listen 127.0.0.1:0 --node-id "$i" --peer-listen "127.0.0.1:${PEER[$i]}" \
        --initial-members "$MEMBERS" > "$ROOT/n$i.log" 2>&1 &
    PIDS+=($!)
done

# CPU seconds (user + system; USER_HZ 100), RSS (KiB) and threads of one process.
cpu_of() { python3 - "$1" <<'EOF'
import sys
stat = open(f"/proc/{sys.argv[1]}/stat").read()
fields = stat[stat.rfind(")") + 2:].split()
print((int(fields[11]) + int(fields[12])) / 100)
EOF
}
rss_of() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
threads_of() { awk '/Threads/ {print $2}' "/proc/$1/status"; }

measure() {
    local label=$1
    local -a before
    for i in 0 1 2; do before[$i]=$(cpu_of "${PIDS[$i]}"); done
    sleep "$WINDOW"
    for i in 0 1 2; do
        local after used
        after=$(cpu_of "${PIDS[$i]}")
        used=$(python3 -c "print(f'{($after - ${before[$i]}) / $WINDOW * 100:.2f}')")
        echo "$label node $((i + 1)): cpu ${used}% of a core, rss $(rss_of "${PIDS[$i]}") KiB, threads $(threads_of "${PIDS[$i]}")"
    done
}

# Wait for the metadata group.
for _ in $(seq 1 100); do
    "$HERALD" cluster status --server "127.0.0.1:${CLIENT[1]}" 2>/dev/null | grep -q "metadata leader [1-3]" && break
    sleep 0.2
done
sleep 3
measure "no topic      " | tee "$ROOT/idle0"
"$HERALD" topic create idle --partitions "$PARTITIONS" --replication-factor 3 --server "127.0.0.1:${CLIENT[1]}" > /dev/null
# Every group elected a leader (preferred ones at once, others after 3 s).
sleep 10
measure "$PARTITIONS replicas  " | tee "$ROOT/idle1"
python3 - "$ROOT/idle0" "$ROOT/idle1" "$PARTITIONS" <<'EOF'
import re, sys
def read(path):
    out = []
    for line in open(path):
        cpu = float(re.search(r"cpu ([0-9.]+)%", line).group(1))
        rss = int(re.search(r"rss ([0-9]+) KiB", line).group(1))
        threads = int(re.search(r"threads ([0-9]+)", line).group(1))
        out.append((cpu, rss, threads))
    return out
before, after, replicas = read(sys.argv[1]), read(sys.argv[2]), int(sys.argv[3])
cpu = sum(a[0] - b[0] for a, b in zip(after, before)) / 3 / replicas
rss = sum(a[1] - b[1] for a, b in zip(after, before)) / 3 / replicas
threads = sum(a[2] - b[2] for a, b in zip(after, before)) / 3 / replicas
print(f"per idle replica (mean over the 3 nodes, {replicas} replicas each): "
      f"{cpu * 10:.2f} ms of CPU per second ({cpu:.3f}% of a core), {rss:.0f} KiB RSS, {threads:.2f} threads")
EOF
