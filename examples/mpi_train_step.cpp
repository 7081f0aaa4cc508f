// One training step of a batch-norm layer over MPI, data-parallel: every rank holds its own
// share of the batch (here ranks hold different batch sizes) and normalizes it with the
// statistics of the whole batch. Run by ctest as `mpirun -np 2 example_mpi_train_step`.
#include <mpi.h>
#include <bnorm/mpi.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);

  // This rank's share: 4 + rank images of 16 channels of 8×8, channels-last.
  const std::int64_t batch = 4 + rank, channels = 16;
  bnorm::plan plan;
  bnorm::status s = bnorm::make_plan(
      {{batch, channels, 8, 8}, bnorm::layout::channels_last, bnorm::dtype::f32}, {}, &plan);
  std::vector<float> x(static_cast<std::size_t>(batch * channels * 64)), y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.1f * i + rank);
  std::vector<float> gamma(channels, 1.f), beta(channels, 0.f);
  std::vector<float> running_mean(channels, 0.f), running_var(channels, 1.f);
  std::vector<float> mean(channels), inv_std(channels);

  // Forward: statistics of every rank's values (one all-gather of 1 + 2C doubles a rank).
  bnorm::training_args train;
  train.src = x.data();
  train.dst = y.data();
  train.scale = {gamma.data(), gamma.size()};
  train.shift = {beta.data(), beta.size()};
  train.batch_mean = {mean.data(), mean.size()};
  train.batch_inv_std = {inv_std.data(), inv_std.size()};
  train.running_mean = {running_mean.data(), running_mean.size()};
  train.running_var = {running_var.data(), running_var.size()};
  if (s) s = bnorm::mpi::forward_training(plan, train, MPI_COMM_WORLD);

  // Backward: dx from the gradient sums of every rank; dγ, dβ of this rank's share, to be
  // all-reduced with the other parameters' gradients as data-parallel training does.
  std::vector<float> dy(x.size()), dx(x.size()), dgamma(channels), dbeta(channels);
  for (std::size_t i = 0; i < dy.size(); ++i) dy[i] = std::cos(0.05f * i);
  bnorm::backward_args back;
  back.src = x.data();
  back.diff_dst = dy.data();
  back.diff_src = dx.data();
  back.scale = train.scale;
  back.mean = {mean.data(), mean.size()};
  back.inv_std = {inv_std.data(), inv_std.size()};
  back.diff_scale = {dgamma.data(), dgamma.size()};
  back.diff_shift = {dbeta.data(), dbeta.size()};
  if (s) s = bnorm::mpi::backward_training(plan, back, MPI_COMM_WORLD);

  // The module does the same: bnorm::mpi::SyncBatchNorm(16, opts) as torch.nn.SyncBatchNorm.
  std::printf("rank %d of %d: %s; running_var[0] = %.6f (the same on every rank)\n", rank, ranks,
              s ? "ok" : s.message(), running_var[0]);
  MPI_Finalize();
  return s ? 0 : 1;
}
