#!/usr/bin/env bash
# Fuzzes the engine API for SECONDS (default 60) with libFuzzer under ASan + UBSan (clang-14),
# starting from the committed seed corpus. Fails on any crash or failed check; the input that
# found it is left in build/fuzz/ (crash-*): keep it as a regression test.
# BNORM_FUZZ_SEED and BNORM_FUZZ_RUNS fix the seed and the number of inputs instead of the time
# (.ci/run: a search bounded by time reaches further on a quiet machine than on a busy one, and
# a drawn seed takes another path on every run; the inputs kept along the way still depend on
# the process's addresses and on which thread ran what, so two runs are alike, not the same); without them libFuzzer draws a
# seed, which is what a search for new findings wants.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
bash scripts/install-deps.sh cmake make clang-14 libclang-rt-14-dev libxsimd-dev libtbb-dev
# Line tables only (-g1), as scripts/sanitize.sh: a crash's frames keep their file:line.
cmake -S . -B build/fuzz -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" \
  -DBNORM_BUILD_TESTS=OFF -DBNORM_BUILD_BENCHMARKS=OFF -DBNORM_BUILD_FUZZERS=ON \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=all"
cmake --build build/fuzz -j"$(nproc)" --target bnorm_fuzz
mkdir -p build/fuzz/corpus
bound=(-max_total_time="$seconds")
if [[ -n "${BNORM_FUZZ_RUNS:-}" ]]; then bound=(-runs="$BNORM_FUZZ_RUNS"); fi
build/fuzz/bnorm_fuzz build/fuzz/corpus tests/fuzz/corpus "${bound[@]}" \
  -seed="${BNORM_FUZZ_SEED:-0}" -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix=build/fuzz/
