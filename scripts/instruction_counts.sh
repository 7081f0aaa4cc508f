#!/usr/bin/env bash
# Instructions per call of benchmark cases, the stable measure on a shared machine: for each
# case, valgrind's callgrind counts K = 10 and K = 20 calls of one thread and the difference over
# 10 is printed (the set-up of the process cancels out). valgrind runs no AVX-512: the counts are
# AVX2's. Needs valgrind (apt-get install valgrind).
#
#   bash scripts/instruction_counts.sh BENCH_BINARY CASE...
#   e.g. bash scripts/instruction_counts.sh build/release/bench/bnorm_bench \
#          r50_b1_c2048_7/nchw/train r50_b1_c2048_7/nchw/infer
#
# Prints a Markdown row per case: | case | instructions |.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 BENCH_BINARY CASE..." >&2
  exit 2
fi
bench=$1
shift
count() {  # instructions of a whole process making $2 calls of case $1
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bench" --calls="$1/threads:1" \
    --count="$2" 2>&1 | awk '/Collected/ {gsub(",", "", $4); print $4}'
}
for case in "$@"; do
  few=$(count "$case" 10)
  many=$(count "$case" 20)
  echo "| $case | $(((many - few) / 10)) |"
done
