#!/usr/bin/env bash
# Quick start, main job: installs what the build needs, builds (Release) and runs the benchmark
# that compares the training and inference paths over the suite of shapes, both layouts, one
# thread and all cores. Results: the console, build/release/bench.json and the markdown table
# build/release/bench.md.
# Extra arguments go to the benchmark (e.g. --benchmark_filter=r50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh cmake g++ make libxsimd-dev libtbb-dev libgtest-dev libbenchmark-dev
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DBNORM_BUILD_BENCHMARKS=ON
cmake --build build/release -j"$(nproc)" --target bnorm_bench
build/release/bench/bnorm_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
  --benchmark_min_time=0.05 --benchmark_out=build/release/bench.json --benchmark_out_format=json "$@"
python3 bench/report.py build/release/bench.json | tee build/release/bench.md
