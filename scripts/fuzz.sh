#!/usr/bin/env bash
# Fuzzes the engine API for SECONDS (default 60) with libFuzzer under ASan + UBSan (clang-14),
# starting from the committed seed corpus. Fails on any crash or failed check; the input that
# found it is left in build/fuzz/ (crash-*): keep it as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
bash scripts/install-deps.sh cmake make clang-14 libclang-rt-14-dev libxsimd-dev libtbb-dev
cmake -S . -B build/fuzz -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DBNORM_BUILD_TESTS=OFF -DBNORM_BUILD_BENCHMARKS=OFF -DBNORM_BUILD_FUZZERS=ON \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=all"
cmake --build build/fuzz -j"$(nproc)" --target bnorm_fuzz
mkdir -p build/fuzz/corpus
build/fuzz/bnorm_fuzz build/fuzz/corpus tests/fuzz/corpus -max_total_time="$seconds" \
  -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix=build/fuzz/
