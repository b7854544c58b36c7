#!/usr/bin/env python3
"""Per-class judge agreement of nudge visualize (or optimize) jobs: for each target class, the share of rows whose
image the job's judge gives that class with p >= 0.5 (nudge's definition of agreement), from results.csv.

    python3 tools/judge_by_class.py NAME=out/vis_mlp NAME2=out/vis_cnn ...

Prints a markdown table, one row per job: the mean and each class 0-9. Standard library only.
"""

import csv
import sys


def by_class(folder):
    agree, total = [0] * 10, [0] * 10
    for r in csv.DictReader(open(f"{folder}/results.csv")):
        t = r["target"]
        if not t.isdigit() or int(t) > 9 or r.get("judge_p_target", "") == "":
            continue
        total[int(t)] += 1
        agree[int(t)] += float(r["judge_p_target"]) >= 0.5
    return agree, total


def main(args):
    print("| job | mean | " + " | ".join(str(c) for c in range(10)) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in range(10)) + " |")
    for a in args:
        name, folder = a.split("=", 1)
        agree, total = by_class(folder)
        mean = sum(agree) / max(1, sum(total))
        cells = [f"{100 * agree[c] / total[c]:.0f}%" if total[c] else "-" for c in range(10)]
        print(f"| {name} | {100 * mean:.1f}% | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
