#!/usr/bin/env bash
# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer, and the concurrency tests
# under ThreadSanitizer (Debian's g++). Exits non-zero on any finding or failed test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh cmake g++ make pkgconf libxsimd-dev libtbb-dev libgtest-dev libbenchmark-dev \
  libopenmpi-dev openmpi-bin
jobs=$(nproc)
# Line tables only (-g1): sanitizer reports keep their file:line frames, and the kernels'
# translation units compile about a fifth faster than with full debug information.
debug=(-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG"
       -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG")

# ASan + UBSan: every test but the package consumer (an uninstrumented build of its own).
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo "${debug[@]}" -DBNORM_BUILD_BENCHMARKS=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
  -DCMAKE_C_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
cmake --build build/asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  LSAN_OPTIONS=suppressions=$PWD/tests/sanitizers/lsan.supp \
  ctest --test-dir build/asan --output-on-failure -j"$jobs" \
  -E package_consumer -LE big

# TSan: host threads sharing plans and running modules. Only without oneTBB workers: Debian's
# oneTBB is not built with TSan, which then reports its joins as races.
cmake -S . -B build/tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo "${debug[@]}" -DBNORM_BUILD_BENCHMARKS=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread -fno-omit-frame-pointer" \
  -DCMAKE_C_FLAGS="-fsanitize=thread -fno-omit-frame-pointer"
cmake --build build/tsan -j"$jobs" --target bnorm_tests
TSAN_OPTIONS="halt_on_error=1" build/tsan/tests/bnorm_tests --gtest_filter='Concurrency.HostThreadsOnly'
