#!/usr/bin/env bash
# SyncBatchNorm's cost: bench/bench_mpi.cpp under `mpirun -np 2` and `-np 3` (3 oversubscribe a
# 2-core machine), one thread a rank. Writes bench/results/mpi.md. Extra arguments go to the
# benchmark (--repetitions=K).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh cmake g++ make pkgconf libxsimd-dev libtbb-dev libgtest-dev libbenchmark-dev \
  libopenmpi-dev openmpi-bin
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DBNORM_BUILD_BENCHMARKS=ON
cmake --build build/release -j"$(nproc)" --target bnorm_bench_mpi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=bench/results/mpi.md
{
  echo "# SyncBatchNorm over MPI: the cost of synchronisation"
  echo
  echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
       "Open MPI $(mpirun --version | head -1 | awk '{print $NF}'), shared memory; $(date -u +%FT%TZ)."
  echo "Command: \`bash scripts/bench_mpi.sh\`. One training step (forward and backward), one thread a"
  echo "rank, the slowest rank's time, median of 31; plain is bnorm on each rank's share alone."
  for ranks in 2 3; do
    echo
    mpirun -np "$ranks" --oversubscribe build/release/bench/bnorm_bench_mpi "$@"
  done
} > "$out"
cat "$out"
