#!/usr/bin/env python3
"""What group commit can gain at best on this disk, measured without Herald.

One writer under fsync `always` pays one flush per 100 KiB batch; eight writers sharing a
flush pay one flush per eight batches (800 KiB). If appends cost nothing, eight writers
reach at most 8 * t(100 KiB) / t(800 KiB) times the records/s of one. This times
`pwrite` + `fdatasync` (the median of hundreds) in a file fallocated like a fresh Herald
segment and in one already written once like a reused segment.

    python3 benches/flush_bound.py [file on the disk to measure]   # default ./flush_bound.bin
"""
import os, time, statistics, sys

path = sys.argv[1] if len(sys.argv) > 1 else "flush_bound.bin"
SIZE = 512 << 20


def run(chunk, rounds, prewritten):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.posix_fallocate(fd, 0, SIZE)
    if prewritten:
        buf = b"\0" * (8 << 20)
        for off in range(0, SIZE, len(buf)):
            os.pwrite(fd, buf, off)
    os.fsync(fd)
    data = os.urandom(chunk)
    times = []
    off = 0
    for _ in range(rounds):
        t = time.perf_counter()
        os.pwrite(fd, data, off)
        os.fdatasync(fd)
        times.append(time.perf_counter() - t)
        off += chunk
    os.close(fd)
    os.unlink(path)
    return statistics.median(times) * 1e6


for prewritten in (False, True):
    t1 = run(100 << 10, 400, prewritten)
    t8 = run(800 << 10, 200, prewritten)
    kind = "reused" if prewritten else "fresh "
    print(f"{kind} 100 KiB: {t1:7.0f} us  800 KiB: {t8:7.0f} us  bound 8*t100/t800 = {8 * t1 / t8:.2f}x")
