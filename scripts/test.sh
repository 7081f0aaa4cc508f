#!/usr/bin/env bash
# Quick start, tests: installs what the build needs, builds (Release), runs every test with ctest.
# Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh cmake g++ make binutils libxsimd-dev libtbb-dev libgtest-dev \
  libbenchmark-dev
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DBNORM_BUILD_TESTS=ON \
  -DBNORM_BUILD_BENCHMARKS=ON
cmake --build build/release -j"$(nproc)"
ctest --test-dir build/release --output-on-failure -j"$(nproc)"
