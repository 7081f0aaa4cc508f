#!/usr/bin/env bash
# The report's path through the harness, small: two rounds of bnorm_bench on the seed cases,
# merged by report.py as scripts/bench.sh merges its rounds. Speed is not asserted.
#   bench_report_smoke.sh BNORM_BENCH REPORT_PY WORK_DIR PYTHON
set -euo pipefail
bench=$1 report=$2 work=$3 python=${4:-python3}
mkdir -p "$work"
rounds=()
for round in 1 2; do
  "$bench" --benchmark_filter='seed_1d_2x4/' --benchmark_min_time=0.001 \
    --benchmark_repetitions=2 --benchmark_display_aggregates_only=true \
    --benchmark_out_format=json --benchmark_out="$work/main.$round.json" > /dev/null
  rounds+=(--main "$work/main.$round.json")
done
"$python" "$report" "${rounds[@]}" --markdown "$work/report.md"
# Every seed case has a row with a bnorm time and a roofline percentage, and the targets ran.
for row in "nchw train" "nchw infer" "nhwc train" "nhwc infer" "nchw backward" "nhwc frozen" \
  "nchw train_relu" "nhwc train_add_relu"; do
  grep -Eq "^\| seed_1d_2x4 $row \| [0-9.]+ \| [0-9.,]+ \|.*\| [0-9]+% \|" "$work/report.md" ||
    { echo "no complete row for seed_1d_2x4 $row in the report"; cat "$work/report.md"; exit 1; }
done
grep -q "^## Targets" "$work/report.md" || { echo "no targets section"; exit 1; }
