#!/usr/bin/env python3
"""Sums an Nsight Compute CSV (`ncu --csv --metrics gpu__time_duration.sum ...`) by kernel name: launches, total and
mean GPU time, share; the longest first. Usage: ncu_summary.py FILE.csv [ROWS]"""
import csv
import sys
from collections import defaultdict


def main() -> None:
    path = sys.argv[1]
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    with open(path, newline="") as f:
        # ncu prints its own log lines before the CSV header.
        lines = [line for line in f if line.startswith('"')]
    total = defaultdict(float)
    count = defaultdict(int)
    for rec in csv.DictReader(lines):
        if rec.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = rec.get("Metric Unit", "ns")
        value = float(rec["Metric Value"].replace(",", ""))
        scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}.get(unit, 1e-3)
        name = rec["Kernel Name"][:90]
        total[name] += value * scale
        count[name] += 1
    all_us = sum(total.values())
    print(f"{sum(count.values())} launches, {all_us / 1e3:.3f} ms of GPU time\n")
    print("| kernel | launches | total µs | mean µs | share |\n|---|---|---|---|---|")
    for name, us in sorted(total.items(), key=lambda kv: -kv[1])[:rows]:
        print(f"| `{name}` | {count[name]} | {us:.1f} | {us / count[name]:.1f} | {100 * us / all_us:.1f} % |")


if __name__ == "__main__":
    main()
