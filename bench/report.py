#!/usr/bin/env python3
"""Turns a bnorm_bench JSON file (--benchmark_out) into the README's markdown table.

  python3 bench/report.py build/release/bench.json

Medians of the repetitions, in µs, for 1 thread and all threads, with the training/inference
ratio at all threads.
"""
import json
import re
import sys
from collections import defaultdict


def main(path):
    with open(path) as f:
        data = json.load(f)
    times = defaultdict(dict)  # (shape, layout, mode) -> {threads: µs}
    threads_seen = set()
    for b in data["benchmarks"]:
        if b.get("aggregate_name", "median") != "median" or b.get("error_occurred"):
            continue
        m = re.match(r"([^/]+)/(nchw|nhwc)/(train|infer)/threads:(\d+)", b["name"])
        if not m:
            continue
        shape, layout, mode, threads = m.group(1), m.group(2), m.group(3), int(m.group(4))
        scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b["time_unit"]]
        times[(shape, layout, mode)][threads] = b["real_time"] * scale
        threads_seen.add(threads)
    most = max(threads_seen)
    ctx = data["context"]
    print(f"{ctx.get('num_cpus')} CPUs at {ctx.get('mhz_per_cpu')} MHz, {ctx.get('date')}; "
          f"median of {data['benchmarks'][0].get('repetitions', 1)} repetitions, µs\n")
    print(f"| shape | layout | train 1 thr | train {most} thr | infer 1 thr | infer {most} thr "
          f"| train/infer |")
    print("|---|---|---|---|---|---|---|")
    shapes = []
    for key in times:
        if key[0] not in shapes:
            shapes.append(key[0])
    for shape in shapes:
        for layout in ("nchw", "nhwc"):
            tr = times.get((shape, layout, "train"), {})
            inf = times.get((shape, layout, "infer"), {})
            if not tr:
                continue
            def cell(d, t):
                v = d.get(t)
                return "-" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}")
            ratio = (f"{tr[most] / inf[most]:.2f}" if most in tr and most in inf else "-")
            print(f"| {shape} | {layout} | {cell(tr, 1)} | {cell(tr, most)} | {cell(inf, 1)} "
                  f"| {cell(inf, most)} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/release/bench.json")
