#!/usr/bin/env python3
"""Per-kernel time table from an Nsight Compute CSV (scripts/gpu-profile.sh makes one).

    kernel-table.py FILE.csv [--layers N]

Splits the kernels of a `falcon-h1 bench --no-graph` run into the prompt (everything before the first
decode step) and one decode step (the kernels from the N-th `conv1d_update` launch to the 2N-th, N =
the layer count: exactly one step's launches, rotated), then prints for each phase the kernels grouped by
(name, grid) with launches, total and mean microseconds and share of the phase. Weight-init launches
(fill_uniform) are left out.
"""
import csv
import sys
from collections import OrderedDict


def load(path):
    rows = []
    with open(path, newline="") as f:
        lines = [ln for ln in f if ln.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "ns")
        ns = v * {"nsecond": 1, "ns": 1, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6}.get(unit, 1)
        rows.append((int(r["ID"]), r["Kernel Name"], r.get("Grid Size", ""), ns))
    rows.sort()
    return [r for r in rows if "fill_uniform" not in r[1]]


def table(title, rows):
    total = sum(r[3] for r in rows)
    print(f"-- {title}: {len(rows)} launches, {total / 1e3:.1f} us of kernel time")
    groups = OrderedDict()
    for _, name, grid, ns in rows:
        g = groups.setdefault((name[:90], grid), [0, 0.0])
        g[0] += 1
        g[1] += ns
    print(f"{'kernel':<92}{'grid':>16}{'n':>6}{'total us':>11}{'mean us':>9}{'share':>7}")
    for (name, grid), (n, ns) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:40]:
        print(f"{name:<92}{grid:>16}{n:>6}{ns / 1e3:>11.1f}{ns / n / 1e3:>9.2f}{100 * ns / total:>6.1f}%")


def main():
    path = sys.argv[1]
    layers = int(sys.argv[sys.argv.index("--layers") + 1]) if "--layers" in sys.argv else 0
    rows = load(path)
    marks = [i for i, r in enumerate(rows) if "conv1d_update" in r[1]]
    if layers and len(marks) >= 2 * layers:
        table("prompt (prefill)", rows[:marks[0]])
        table("one decode step", rows[marks[layers]:marks[2 * layers]])
    else:
        table("all", rows)


if __name__ == "__main__":
    main()
