#!/usr/bin/env python3
"""Tables for the open-set experiments (README, "A model that can say 'not a digit'"): from the results.csv of
nudge optimize jobs, per job: the share of rows toward digits 0-9 that reached the goal within 4, 10, 20 and 50
steps, the median steps of those that did, and the judge's agreement (nudge's definition: the judge gives the
target class p >= 0.5) over all of them.

    python3 tools/open_set_report.py NAME=out/open/noise_plain NAME2=out/open/noise_open ...

Needs only the Python standard library. Rows toward "not a digit" (target 10) are reported on their own line.
"""

import csv
import statistics
import sys


def report(name, folder):
    rows = list(csv.DictReader(open(f"{folder}/results.csv")))
    out = []
    for label, keep in (("digits 0-9", lambda t: t < 10), ('"not a digit"', lambda t: t == 10)):
        sel = [r for r in rows if r["target"].isdigit() and keep(int(r["target"]))]
        if not sel:
            continue
        ok = [r for r in sel if r["success"] == "1"]
        steps = [int(r["steps_to_success"]) for r in ok]
        within = [sum(s <= k for s in steps) / len(sel) for k in (4, 10, 20, 50)]
        judged = [r for r in sel if r.get("judge_p_target", "") != ""]
        agree = (sum(float(r["judge_p_target"]) >= 0.5 for r in judged) / len(judged)) if judged else None
        med = statistics.median(steps) if steps else None
        out.append(f"| {name} | {label} | {len(sel)} | " + " | ".join(f"{100 * w:.1f}%" for w in within) +
                   f" | {med if med is not None else '-'} | " + (f"{100 * agree:.1f}%" if agree is not None else "-") + " |")
    return out


def main(args):
    print("| job | targets | rows | within 4 | within 10 | within 20 | within 50 | median steps | judge agrees |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for a in args:
        name, folder = a.split("=", 1)
        for line in report(name, folder):
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
