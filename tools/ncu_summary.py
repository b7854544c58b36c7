#!/usr/bin/env python3
"""Summarises `ncu --csv --page details` output (SpeedOfLight and Occupancy sections) as a markdown table: per kernel,
the launches profiled, mean duration, and the throughputs that say what bounds it. Used by tools/gpu_check.sh.

    python3 tools/ncu_summary.py ncu.csv
"""
import csv
import sys
from collections import defaultdict

WANTED = [
    ("Duration", "duration"),
    ("Compute (SM) Throughput", "SM %"),
    ("Memory Throughput", "memory %"),
    ("DRAM Throughput", "DRAM %"),
    ("Achieved Occupancy", "occupancy %"),
]
TO_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}


def main(path):
    with open(path, newline="") as f:
        # ncu prints its own ==PROF== lines and the program's output around the CSV; keep the CSV rows.
        lines = [l for l in f if l.startswith('"')]
    if not lines:
        print(f"ncu_summary: no CSV rows in {path}", file=sys.stderr)
        return 1
    rows = list(csv.DictReader(lines))
    needed = {"Kernel Name", "ID", "Metric Name", "Metric Value"}
    if not rows or not needed <= set(rows[0]):
        print(f"ncu_summary: unexpected columns {list(rows[0]) if rows else []}", file=sys.stderr)
        return 1
    values = defaultdict(lambda: defaultdict(list))  # kernel -> metric -> values
    launches = defaultdict(set)
    for r in rows:
        name = r["Kernel Name"].split("(")[0].strip()
        launches[name].add(r["ID"])
        for metric, _ in WANTED:
            if r["Metric Name"] == metric:
                try:
                    v = float(r["Metric Value"].replace(",", ""))
                except ValueError:
                    continue
                if metric == "Duration":
                    v *= TO_US.get(r.get("Metric Unit", "usecond"), 1.0)
                values[name][metric].append(v)
    print("| kernel | launches | " + " | ".join(label if label != "duration" else "mean duration (us)"
                                             for _, label in WANTED) + " |")
    print("| --- " * (len(WANTED) + 2) + "|")
    order = sorted(values, key=lambda k: -sum(values[k]["Duration"]))
    for k in order:
        cells = []
        for metric, _ in WANTED:
            v = values[k][metric]
            cells.append(f"{sum(v) / len(v):.1f}" if v else "")
        short = k if len(k) <= 60 else k[:57] + "..."
        print(f"| `{short}` | {len(launches[k])} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
