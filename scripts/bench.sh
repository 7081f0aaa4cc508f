#!/usr/bin/env bash
# Quick start, main job: installs what it needs, builds (Release), and runs the benchmark harness:
# bnorm's training and inference paths over the suite of shapes, both layouts, one thread and all
# cores, each next to its memory roofline and oneDNN (same binary, same run), PyTorch (same
# shapes, bench/bench_torch.py), and bnorm capped at sse2 and avx2. Writes the report:
# bench/results/report.md and bench/results/roofline.png. Extra arguments go to bnorm_bench.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh cmake g++ make pkgconf libxsimd-dev libtbb-dev libgtest-dev libbenchmark-dev \
  libdnnl-dev ocl-icd-opencl-dev opencl-c-headers python3-torch python3-numpy python3-matplotlib
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DBNORM_BUILD_BENCHMARKS=ON
cmake --build build/release -j"$(nproc)" --target bnorm_bench

out=build/release/bench/results
mkdir -p "$out" bench/results
rm -f "$out"/main.*.json "$out"/torch.*.json
bench=build/release/bench/bnorm_bench
threads=$(nproc)
# Three rounds of three repetitions: bnorm_bench (bnorm, its roofline and oneDNN, repetitions
# interleaved at random), then PyTorch, and again. PyTorch runs in a process of its own; in
# rounds it is measured over the same span of time as the rest, so a slow spell of this shared
# machine weighs on every column alike. The report takes each case's median over the rounds.
rounds=3
common=(--benchmark_repetitions=3 --benchmark_enable_random_interleaving=true
        --benchmark_display_aggregates_only=true --benchmark_min_time=0.05
        --benchmark_out_format=json)

"$bench" --samples_out="$out/samples.json"
"$bench" --benchmark_list_tests > "$out/order.txt"
main_args=() torch_args=()
for round in $(seq "$rounds"); do
  "$bench" "${common[@]}" --benchmark_out="$out/main.$round.json" "$@"
  /usr/bin/python3 bench/bench_torch.py --samples "$out/samples.json" \
    --out "$out/torch.$round.json" --threads "1,$threads" --repetitions 3
  main_args+=(--main "$out/main.$round.json")
  torch_args+=(--torch "$out/torch.$round.json")
done
isa_args=()
for isa in sse2 avx2; do
  if BNORM_MAX_ISA=$isa "$bench" --benchmark_filter="seed_1d_2x4/nchw/train/threads:1/bnorm" \
      --benchmark_min_time=0.001 2>/dev/null | grep -q " $isa"; then
    BNORM_MAX_ISA=$isa "$bench" "${common[@]}" --benchmark_filter="/threads:$threads/bnorm/" \
      --benchmark_out="$out/$isa.json" > /dev/null
    isa_args+=(--isa "$isa=$out/$isa.json")
  fi
done
/usr/bin/python3 bench/report.py "${main_args[@]}" "${torch_args[@]}" "${isa_args[@]}" \
  --order "$out/order.txt" \
  --markdown bench/results/report.md --chart bench/results/roofline.png
cat bench/results/report.md
