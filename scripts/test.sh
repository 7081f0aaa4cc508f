#!/usr/bin/env bash
# Quick start, tests: installs what the build needs, builds (Release), runs every test with ctest.
# Exits non-zero when any test fails. BNORM_RUN_BIG=1 adds the test over more than 2^31
# elements (ctest label "big") when the machine has 12 GiB available.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh cmake g++ make binutils pkgconf clang-format libxsimd-dev libtbb-dev libgtest-dev \
  libbenchmark-dev libopenmpi-dev openmpi-bin libdnnl-dev ocl-icd-opencl-dev opencl-c-headers
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DBNORM_BUILD_TESTS=ON \
  -DBNORM_BUILD_BENCHMARKS=ON
cmake --build build/release -j"$(nproc)"
labels=(-LE big)
if [ "${BNORM_RUN_BIG:-0}" = 1 ]; then
  available_kib=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
  if [ "${available_kib:-0}" -ge $((12 * 1024 * 1024)) ]; then
    labels=()
  else
    echo "leaving out the 2^31-element test: ${available_kib} KiB available, 12 GiB needed"
  fi
fi
ctest --test-dir build/release --output-on-failure -j"$(nproc)" "${labels[@]}"
