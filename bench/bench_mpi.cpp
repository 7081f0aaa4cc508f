// What SyncBatchNorm costs: one training step (forward and backward) of each suite shape,
// split along N across the ranks of MPI_COMM_WORLD (a rank holds max(1, N / ranks) samples,
// two for (N, C)), over MPI (bnorm::mpi) against plain bnorm on the same share, every rank at
// once, one thread a rank. Run by scripts/bench_mpi.sh under `mpirun -np 2` and `-np 3`; rank 0
// prints a Markdown table. A step's time is the slowest rank's (a barrier before each); repetitions
// of the two alternate, so a slow spell of the machine weighs on both; medians.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bnorm/mpi.hpp"
#include "shapes.hpp"

namespace {

struct layer {
  bnorm::plan plan;
  std::vector<float> x, y, dy, dx, gamma, beta, mean, inv_std, running_mean, running_var, dgamma,
      dbeta;
  bnorm::training_args forward;
  bnorm::backward_args backward;

  layer(const bnorm::tensor_shape& shape, bnorm::layout l, std::size_t elements,
        std::size_t channels) {
    bnorm::plan_options opts;
    opts.max_threads = 1;
    if (bnorm::status s = bnorm::make_plan({shape, l, bnorm::dtype::f32}, opts, &plan); !s) {
      std::fprintf(stderr, "%s\n", s.message());
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    x.resize(elements);
    dy.resize(elements);
    for (std::size_t i = 0; i < elements; ++i) {
      x[i] = std::sin(0.37f * static_cast<float>(i % 4099));
      dy[i] = std::cos(0.11f * static_cast<float>(i % 3001));
    }
    y.resize(elements);
    dx.resize(elements);
    for (auto* v : {&gamma, &mean, &inv_std, &running_var}) v->assign(channels, 1.0f);
    for (auto* v : {&beta, &running_mean, &dgamma, &dbeta}) v->assign(channels, 0.0f);
    forward.src = x.data();
    forward.dst = y.data();
    forward.scale = {gamma.data(), channels};
    forward.shift = {beta.data(), channels};
    forward.batch_mean = {mean.data(), channels};
    forward.batch_inv_std = {inv_std.data(), channels};
    forward.running_mean = {running_mean.data(), channels};
    forward.running_var = {running_var.data(), channels};
    backward.src = x.data();
    backward.diff_dst = dy.data();
    backward.diff_src = dx.data();
    backward.scale = forward.scale;
    backward.mean = {mean.data(), channels};
    backward.inv_std = {inv_std.data(), channels};
    backward.diff_scale = {dgamma.data(), channels};
    backward.diff_shift = {dbeta.data(), channels};
  }
};

/// One step's seconds on the slowest rank.
template <class Step>
double timed(const Step& step) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double start = MPI_Wtime();
  if (!step()) MPI_Abort(MPI_COMM_WORLD, 1);
  double elapsed = MPI_Wtime() - start, slowest = 0.0;
  MPI_Allreduce(&elapsed, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  int repetitions = 31;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--repetitions=", 14) == 0) repetitions = std::atoi(argv[i] + 14);
  }
  if (rank == 0) {
    std::printf(
        "| case | ranks | rank's share | plain µs | sync µs | sync cost µs | cost | "
        "bytes exchanged a step |\n|---|---|---|---|---|---|---|---|\n");
  }
  for (const bnorm_bench::bench_shape& s : bnorm_bench::suite()) {
    bnorm_bench::bench_shape share = s;
    // At least two values per channel on a rank: plain bnorm refuses one.
    share.n = std::max<std::int64_t>(s.rank == 2 ? 2 : 1, s.n / ranks);
    const std::size_t elements = static_cast<std::size_t>(share.elements());
    const std::size_t channels = static_cast<std::size_t>(s.c);
    for (const bnorm::layout l : {bnorm::layout::channels_first, bnorm::layout::channels_last}) {
      layer plain(share.shape(), l, elements, channels), sync(share.shape(), l, elements, channels);
      std::vector<double> plain_times, sync_times;
      for (int r = 0; r < repetitions + 2; ++r) {  // the first two warm up
        const double t_plain = timed([&] {
          return plain.plan.forward_training(plain.forward) &&
                 plain.plan.backward_training(plain.backward);
        });
        const double t_sync = timed([&] {
          return bnorm::mpi::forward_training(sync.plan, sync.forward, MPI_COMM_WORLD) &&
                 bnorm::mpi::backward_training(sync.plan, sync.backward, MPI_COMM_WORLD);
        });
        if (r < 2) continue;
        plain_times.push_back(t_plain * 1e6);
        sync_times.push_back(t_sync * 1e6);
      }
      if (rank != 0) continue;
      const double p = median(plain_times), q = median(sync_times);
      // Two calls, each gathering every rank's header (13 words) and block (1 + 2C doubles).
      const std::size_t bytes = 2 * static_cast<std::size_t>(ranks) *
                                (13 * 8 + bnorm::statistics_exchange_size(channels) * 8);
      std::printf("| %s %s | %d | N = %lld | %.1f | %.1f | %.1f | %+.0f%% | %zu |\n", s.name,
                  l == bnorm::layout::channels_first ? "nchw" : "nhwc", ranks,
                  static_cast<long long>(share.n), p, q, q - p, 100.0 * (q - p) / p, bytes);
    }
  }
  MPI_Finalize();
  return 0;
}
