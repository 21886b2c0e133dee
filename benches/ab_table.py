#!/usr/bin/env python3
"""Medians of A/B benchmark runs, printed as a table with the B/A ratio and every run.

    benches/ab_table.py WORK ROUNDS A_MODE:A_LABEL B_MODE:B_LABEL 'NAME|KIND|PATH' ...

Reads WORK/KIND-MODE-RUN.json for RUN in 1..ROUNDS (herald-load's --json summaries, or
files a script wrote in the same shape). PATH is a dotted path into the JSON (e.g.
produced.msgs_per_s). A run whose summary says "ok": false is listed at the end. Used by
the benches/*.sh scripts that compare two set-ups run alternately in one session.
"""
import json
import statistics
import sys


def value(summary, path):
    for part in path.split("."):
        summary = summary[part]
    return summary


def main():
    work, rounds = sys.argv[1], int(sys.argv[2])
    (mode_a, label_a), (mode_b, label_b) = (s.split(":", 1) for s in sys.argv[3:5])
    rows = [r.split("|") for r in sys.argv[5:]]
    width = max(len(name) for name, _, _ in rows) + 1

    def runs(kind, mode):
        return [json.load(open(f"{work}/{kind}-{mode}-{r}.json")) for r in range(1, rounds + 1)]

    print(f"{'metric':{width}} {label_a:>12} {label_b:>12} {'ratio':>7}   runs {label_a} | {label_b}")
    bad = set()
    for name, kind, path in rows:
        seen = {}
        for mode in (mode_a, mode_b):
            summaries = runs(kind, mode)
            bad.update(f"{kind}-{mode}-{r}" for r, s in enumerate(summaries, 1) if not s.get("ok", True))
            seen[mode] = [value(s, path) for s in summaries]
        a, b = statistics.median(seen[mode_a]), statistics.median(seen[mode_b])
        fmt = (lambda v: f"{v:,.2f}") if a < 100 else (lambda v: f"{v:,.0f}")
        ratio = f"{b / a:.2f}" if a else "-"
        print(f"{name:{width}} {fmt(a):>12} {fmt(b):>12} {ratio:>7}   "
              f"{' / '.join(map(fmt, seen[mode_a]))} | {' / '.join(map(fmt, seen[mode_b]))}")
    if bad:
        print("runs with errors or lost records:", ", ".join(sorted(bad)))


if __name__ == "__main__":
    main()
