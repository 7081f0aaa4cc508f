// SyncBatchNorm over MPI, run by ctest under `mpirun -np 1, 2, 3`. Every rank builds the same
// whole batch (same seeds), takes its share along N (unequal shares, rank 1 holds none when
// there are three), and checks its part of the results against a float64 reference of the
// whole batch; the statistics of every rank are gathered and compared bit for bit.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "bnorm/mpi.hpp"
#include "replaced_new.hpp"
#include "support.hpp"

using namespace bnorm_test;
using bnorm::layout;

namespace {
// One rank runs out of memory at one buffer of a collective step: the allocation of exactly
// `failing_size` bytes fails while it is not 0 (replaced_new.hpp).
std::atomic<std::size_t> failing_size{0};
}  // namespace

bool fail_this_allocation(std::size_t size) {
  return size != 0 && size == failing_size.load();
}
bool fail_this_nothrow_allocation(std::size_t) {
  return false;  // a call's own scratch is not what these tests fail
}

namespace {

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int world_size() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

/// Rank r's batch size: 3, 0, 5, 2, ... (rank 1 empty when there are more than two ranks).
std::int64_t share_of(int r, int ranks) {
  if (ranks > 2 && r == 1) return 0;
  return 3 + 2 * (r % 2) - (r >= 2 ? 1 : 0);
}

template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// Whether every rank holds the same bytes as this one.
template <class T>
bool same_on_every_rank(const std::vector<T>& values) {
  const int ranks = world_size();
  const int bytes = static_cast<int>(values.size() * sizeof(T));
  std::vector<unsigned char> all(static_cast<std::size_t>(bytes) * ranks);
  MPI_Allgather(values.data(), bytes, MPI_BYTE, all.data(), bytes, MPI_BYTE, MPI_COMM_WORLD);
  for (int r = 0; r < ranks; ++r) {
    if (std::memcmp(all.data() + static_cast<std::size_t>(r) * bytes, values.data(), bytes) != 0) {
      return false;
    }
  }
  return true;
}

/// Σ over the ranks, in rank order.
std::vector<double> sum_over_ranks(const std::vector<double>& values) {
  std::vector<double> sum(values.size());
  MPI_Allreduce(values.data(), sum.data(), static_cast<int>(values.size()), MPI_DOUBLE, MPI_SUM,
                MPI_COMM_WORLD);
  return sum;
}

struct sync_case {
  const char* name;
  std::vector<std::int64_t> dims;  // N is each rank's share
  layout l;
  double mean;           // of the data, std 1
  bool zero_first_rows;  // the whole batch's first two samples are zero padding
};

const sync_case sync_cases[] = {
    {"planes", {0, 6, 5, 7}, layout::channels_first, 0.5, false},
    {"rows", {0, 6, 5, 7}, layout::channels_last, 0.5, false},
    {"vectors", {0, 40}, layout::channels_first, -2.0, false},
    {"mean_1e5_std", {0, 5, 33}, layout::channels_first, 1e5, false},
    {"zero_padding_rows", {0, 8, 3, 3}, layout::channels_last, 1e4, true},
    {"zero_padding_planes", {0, 8, 3, 3}, layout::channels_first, 1e4, true},
};

/// One step over every rank, with `threads` per rank; this rank's results.
template <class T>
struct step_result {
  std::vector<T> y, dx, mean, inv_std, running_mean, running_var, dgamma, dbeta;
};

template <class T>
step_result<T> sync_step(const bnorm::plan& plan, const T* x, const T* dy, std::size_t elements,
                         std::size_t channels, const std::vector<T>& gamma,
                         const std::vector<T>& beta) {
  step_result<T> r;
  r.y.assign(elements, T(0));
  r.dx.assign(elements, T(0));
  r.mean.assign(channels, T(0));
  r.inv_std.assign(channels, T(0));
  r.running_mean.assign(channels, T(0));
  r.running_var.assign(channels, T(1));
  r.dgamma.assign(channels, T(0));
  r.dbeta.assign(channels, T(0));
  bnorm::training_args a;
  a.src = x;
  a.dst = r.y.data();
  a.scale = in(gamma);
  a.shift = in(beta);
  a.batch_mean = out(r.mean);
  a.batch_inv_std = out(r.inv_std);
  a.running_mean = out(r.running_mean);
  a.running_var = out(r.running_var);
  const bnorm::status forward = bnorm::mpi::forward_training(plan, a, MPI_COMM_WORLD);
  EXPECT_TRUE(forward) << forward.message();
  bnorm::backward_args b;
  b.src = x;
  b.diff_dst = dy;
  b.diff_src = r.dx.data();
  b.scale = in(gamma);
  b.mean = in(r.mean);
  b.inv_std = in(r.inv_std);
  b.diff_scale = out(r.dgamma);
  b.diff_shift = out(r.dbeta);
  const bnorm::status backward = bnorm::mpi::backward_training(plan, b, MPI_COMM_WORLD);
  EXPECT_TRUE(backward) << backward.message();
  return r;
}

class SyncBatchNorm : public testing::TestWithParam<std::size_t> {
 protected:
  template <class T>
  void check(double tolerance) {
    const sync_case& k = sync_cases[GetParam()];
    const int ranks = world_size(), rank = world_rank();
    std::vector<std::int64_t> whole_dims = k.dims, local_dims = k.dims;
    std::int64_t before = 0, total = 0;
    for (int r = 0; r < ranks; ++r) {
      if (r < rank) before += share_of(r, ranks);
      total += share_of(r, ranks);
    }
    whole_dims[0] = total;
    local_dims[0] = share_of(rank, ranks);
    const bnorm::tensor_shape whole(whole_dims.data(), whole_dims.size());
    const bnorm::tensor_shape local(local_dims.data(), local_dims.size());
    const geometry g(whole);
    std::vector<T> x = normal_data<T>(g.elements(), k.mean, 1.0, 91);
    if (k.zero_first_rows) std::fill(x.begin(), x.begin() + 2 * g.c * g.spatial, T(0));
    const std::vector<T> dy = normal_data<T>(g.elements(), 0.0, 1.0, 92);
    const std::vector<T> gamma = normal_data<T>(g.c, 1.0, 0.5, 93);
    const std::vector<T> beta = normal_data<T>(g.c, 0.0, 1.0, 94);
    const std::size_t offset = static_cast<std::size_t>(before) * g.c * g.spatial;
    const std::size_t elements = static_cast<std::size_t>(local_dims[0]) * g.c * g.spatial;

    bnorm::plan_options opts;
    bnorm::plan plan;
    ASSERT_TRUE(bnorm::make_plan({local, k.l, dtype_of<T>()}, opts, &plan));
    const step_result<T> r =
        sync_step(plan, x.data() + offset, dy.data() + offset, elements, g.c, gamma, beta);
    // Every rank: the same statistics, to the bit.
    EXPECT_TRUE(same_on_every_rank(r.mean));
    EXPECT_TRUE(same_on_every_rank(r.inv_std));
    EXPECT_TRUE(same_on_every_rank(r.running_mean));
    EXPECT_TRUE(same_on_every_rank(r.running_var));
    // This rank's part of the whole batch's results, against float64.
    const reference_stats ref = reference_moments(x, whole, k.l);
    const std::vector<double> y_ref =
        reference_normalize(x, whole, k.l, ref.mean, ref.variance, 1e-5, gamma, beta);
    double worst_y = 0.0;
    for (std::size_t i = 0; i < elements; ++i) {
      const double want = y_ref[offset + i];
      keep_worst(worst_y, std::fabs(r.y[i] - want) / std::max(1.0, std::fabs(want)));
    }
    EXPECT_LE(worst_y, tolerance);
    const double count = static_cast<double>(g.n * g.spatial);
    for (std::size_t c = 0; c < g.c; ++c) {
      const double inv = 1.0 / std::sqrt(ref.variance[c] + 1e-5);
      EXPECT_NEAR(r.inv_std[c], inv, tolerance * inv) << c;
      const double running_var = 0.9 + 0.1 * ref.variance[c] * count / (count - 1.0);
      EXPECT_NEAR(r.running_var[c], running_var, tolerance * running_var) << c;
    }
    std::vector<double> inv(g.c);
    for (std::size_t c = 0; c < g.c; ++c) inv[c] = static_cast<double>(r.inv_std[c]);
    const reference_gradients grads =
        reference_backward(x, dy, whole, k.l, r.mean, inv, gamma, true);
    double dx_scale = 1.0;
    for (const double v : grads.dx) dx_scale = std::max(dx_scale, std::fabs(v));
    // Within the tolerance of max(1, max|dx|), or of a few roundings in T of the terms that
    // dx sums where they cancel: a batch of three samples a channel can hold three nearly
    // equal ones (x̂ then large), whose dx is a small difference of large terms in any T
    // evaluation (seed 11: 1.7e-6 of max|dx|, 6.9e-6 against terms of 210).
    const double rounding = std::numeric_limits<T>::epsilon() / 2;
    double worst_dx = 0.0;
    for (std::size_t i = 0; i < elements; ++i) {
      const double error = std::fabs(r.dx[i] - grads.dx[offset + i]);
      keep_worst(worst_dx, error);
      EXPECT_LE(error, tolerance * dx_scale + 4 * rounding * grads.dx_terms[offset + i]) << i;
    }
    const std::vector<double> dgamma =
        sum_over_ranks(std::vector<double>(r.dgamma.begin(), r.dgamma.end()));
    const std::vector<double> dbeta =
        sum_over_ranks(std::vector<double>(r.dbeta.begin(), r.dbeta.end()));
    for (std::size_t c = 0; c < g.c; ++c) {
      EXPECT_NEAR(dgamma[c], grads.dgamma[c], tolerance * grads.abs_dgamma[c]) << c;
      EXPECT_NEAR(dbeta[c], grads.dbeta[c], tolerance * grads.abs_dbeta[c]) << c;
    }
    // The same bits again, and with one thread a rank.
    opts.max_threads = 1;
    bnorm::plan serial;
    ASSERT_TRUE(bnorm::make_plan({local, k.l, dtype_of<T>()}, opts, &serial));
    for (const bnorm::plan* p : {&plan, &serial}) {
      const step_result<T> again =
          sync_step(*p, x.data() + offset, dy.data() + offset, elements, g.c, gamma, beta);
      EXPECT_TRUE(same_bytes(again.y, r.y));
      EXPECT_TRUE(same_bytes(again.dx, r.dx));
      EXPECT_TRUE(same_bytes(again.running_var, r.running_var));
      EXPECT_TRUE(same_bytes(again.dgamma, r.dgamma));
    }
    if (rank == 0) {
      std::printf("[ sync ] %s %s, %d ranks: y %.2g, dx %.2g of max(1, |dx|)\n", k.name,
                  sizeof(T) == 4 ? "f32" : "f64", ranks, worst_y, worst_dx / dx_scale);
    }
  }
};

TEST_P(SyncBatchNorm, MatchesTheWholeBatchOnEveryRankF32) {
  check<float>(1e-6);
}

TEST_P(SyncBatchNorm, MatchesTheWholeBatchOnEveryRankF64) {
  check<double>(1e-12 * std::max(1.0, std::fabs(sync_cases[GetParam()].mean) / 1e3));
}

INSTANTIATE_TEST_SUITE_P(Cases, SyncBatchNorm,
                         testing::Range<std::size_t>(0, std::size(sync_cases)),
                         [](const testing::TestParamInfo<std::size_t>& info) {
                           return std::string(sync_cases[info.param].name);
                         });

TEST(SyncBatchNormErrors, RanksThatDisagreeFailOnEveryRankWithNothingWritten) {
  const int rank = world_rank(), ranks = world_size();
  // The last rank asks for one channel more than the others.
  const std::int64_t channels = rank == ranks - 1 && ranks > 1 ? 5 : 4;
  bnorm::plan plan;
  ASSERT_TRUE(bnorm::make_plan({{3, channels, 2}}, {}, &plan));
  std::vector<float> x = normal_data<float>(static_cast<std::size_t>(6 * channels), 0.0, 1.0, 3);
  std::vector<float> y(x.size(), 7.0f), rm(channels, 7.0f), rv(channels, 7.0f);
  bnorm::training_args a;
  a.src = x.data();
  a.dst = y.data();
  a.running_mean = out(rm);
  a.running_var = out(rv);
  const bnorm::status s = bnorm::mpi::forward_training(plan, a, MPI_COMM_WORLD);
  if (ranks > 1) {
    EXPECT_FALSE(s);
    EXPECT_NE(std::string(s.message()).find("the channels (C)"), std::string::npos) << s.message();
    for (const float v : y) ASSERT_EQ(v, 7.0f);
    for (const float v : rv) ASSERT_EQ(v, 7.0f);
  } else {
    EXPECT_TRUE(s) << s.message();
  }
}

// A rank in the backward while the others are in the forward: the two steps' blocks are alike
// in size, so without the step in the header each would merge the other's as its own.
TEST(SyncBatchNormErrors, RanksInDifferentStepsFailOnEveryRank) {
  const int rank = world_rank(), ranks = world_size();
  if (ranks == 1) GTEST_SKIP() << "needs two ranks";
  const bool odd_one = rank == ranks - 1;
  bnorm::plan plan;
  ASSERT_TRUE(bnorm::make_plan({{3, 4, 2}}, {}, &plan));
  const std::vector<float> x = normal_data<float>(24, 0.0, 1.0, 5), dy(24, 1.0f);
  std::vector<float> y(24, 7.0f), dx(24, 7.0f), rm(4, 7.0f), rv(4, 7.0f);
  const std::vector<float> mean(4, 0.0f), inv(4, 1.0f);
  bnorm::status s;
  if (odd_one) {
    bnorm::backward_args b;
    b.src = x.data();
    b.diff_dst = dy.data();
    b.diff_src = dx.data();
    b.mean = in(mean);
    b.inv_std = in(inv);
    s = bnorm::mpi::backward_training(plan, b, MPI_COMM_WORLD);
  } else {
    bnorm::training_args a;
    a.src = x.data();
    a.dst = y.data();
    a.running_mean = out(rm);
    a.running_var = out(rv);
    s = bnorm::mpi::forward_training(plan, a, MPI_COMM_WORLD);
  }
  EXPECT_FALSE(s);
  EXPECT_NE(std::string(s.message()).find("the step"), std::string::npos) << s.message();
  for (const float v : y) ASSERT_EQ(v, 7.0f);
  for (const float v : dx) ASSERT_EQ(v, 7.0f);
  for (const float v : rm) ASSERT_EQ(v, 7.0f);
  for (const float v : rv) ASSERT_EQ(v, 7.0f);
}

TEST(SyncBatchNormErrors, LayoutDtypeAndOptionsMustAgree) {
  const int rank = world_rank(), ranks = world_size();
  const bool odd_one = rank == ranks - 1 && ranks > 1;
  struct variant {
    const char* named;   // what the message names; null: no refusal
    const char* values;  // the odd one's value, as the message on the other ranks names it
    bnorm::layout l;
    bnorm::dtype d;
    double momentum;
    double clamp_min;  // not used by these plans (no clamp): not compared
  };
  const variant variants[] = {
      {"the layout", "channels_first here, channels_last on rank",
       odd_one ? layout::channels_last : layout::channels_first, bnorm::dtype::f32, 0.1, 0.0},
      {"the dtype", "f32 here, f64 on rank", layout::channels_first,
       odd_one ? bnorm::dtype::f64 : bnorm::dtype::f32, 0.1, 0.0},
      {"momentum", "0.10000000000000001 here, 0.20000000000000001 on rank", layout::channels_first,
       bnorm::dtype::f32, odd_one ? 0.2 : 0.1, 0.0},
      {nullptr, nullptr, layout::channels_first, bnorm::dtype::f32, 0.1, odd_one ? -1.0 : 0.0},
  };
  for (const variant& v : variants) {
    SCOPED_TRACE(v.named ? v.named : "clamp_min");
    bnorm::plan_options opts;
    opts.momentum = v.momentum;
    opts.clamp_min = v.clamp_min;
    bnorm::plan plan;
    ASSERT_TRUE(bnorm::make_plan({{3, 4, 2}, v.l, v.d}, opts, &plan));
    std::vector<double> x = normal_data<double>(24, 0.0, 1.0, 6), y(24, 7.0), rv(4, 7.0);
    std::vector<double> rm(4, 7.0);
    std::vector<float> xf(x.begin(), x.end()), yf(24, 7.0f), rvf(4, 7.0f), rmf(4, 7.0f);
    const bool f64 = v.d == bnorm::dtype::f64;
    bnorm::training_args a;
    a.src = f64 ? static_cast<const void*>(x.data()) : xf.data();
    a.dst = f64 ? static_cast<void*>(y.data()) : yf.data();
    a.running_mean =
        f64 ? bnorm::channel_output{rm.data(), 4} : bnorm::channel_output{rmf.data(), 4};
    a.running_var =
        f64 ? bnorm::channel_output{rv.data(), 4} : bnorm::channel_output{rvf.data(), 4};
    const bnorm::status s = bnorm::mpi::forward_training(plan, a, MPI_COMM_WORLD);
    if (ranks == 1 || v.named == nullptr) {
      EXPECT_TRUE(s) << s.message();
      continue;
    }
    EXPECT_FALSE(s);
    EXPECT_NE(std::string(s.message()).find(v.named), std::string::npos) << s.message();
    if (!odd_one) {
      EXPECT_NE(std::string(s.message()).find(v.values), std::string::npos) << s.message();
    }
    for (const double d : y) ASSERT_EQ(d, 7.0);
    for (const float f : yf) ASSERT_EQ(f, 7.0f);
    for (const float f : rvf) ASSERT_EQ(f, 7.0f);
    for (const double d : rv) ASSERT_EQ(d, 7.0);
  }
}

TEST(SyncBatchNormErrors, OneRankRefusedMeansEveryRankFails) {
  const int rank = world_rank();
  bnorm::plan plan;
  ASSERT_TRUE(bnorm::make_plan({{3, 4, 2}}, {}, &plan));
  std::vector<float> x = normal_data<float>(24, 0.0, 1.0, 4), y(24, 7.0f);
  std::vector<float> rm(4, 7.0f), rv(4, 7.0f);
  bnorm::training_args a;
  a.src = x.data();
  a.dst = rank == 0 ? nullptr : y.data();  // rank 0's dst is missing
  a.running_mean = out(rm);
  a.running_var = out(rv);
  const bnorm::status s = bnorm::mpi::forward_training(plan, a, MPI_COMM_WORLD);
  EXPECT_FALSE(s);
  const std::string why = s.message();
  if (rank == 0) {
    EXPECT_NE(why.find("dst: expected 24 elements"), std::string::npos) << why;
  } else {  // the reason reaches every rank
    EXPECT_NE(why.find("rank 0 refused its arguments (dst: expected 24 elements"),
              std::string::npos)
        << why;
  }
  for (const float v : y) ASSERT_EQ(v, 7.0f);
  for (const float v : rm) ASSERT_EQ(v, 7.0f);
  // The backward too: rank 0 asks for nothing.
  std::vector<float> dy(24, 1.0f), dx(24, 7.0f), mean(4, 0.0f), inv(4, 1.0f);
  bnorm::backward_args b;
  b.src = x.data();
  b.diff_dst = dy.data();
  b.diff_src = rank == 0 ? nullptr : dx.data();
  b.mean = in(mean);
  b.inv_std = in(inv);
  const bnorm::status sb = bnorm::mpi::backward_training(plan, b, MPI_COMM_WORLD);
  EXPECT_FALSE(sb);
  const std::string why_backward = sb.message();
  const char* reason = "expected at least one output to compute, got none";
  EXPECT_NE(why_backward.find(reason), std::string::npos) << why_backward;
  if (rank != 0) {
    EXPECT_NE(why_backward.find("rank 0 refused"), std::string::npos) << why_backward;
  }
  for (const float v : dx) ASSERT_EQ(v, 7.0f);
}

// A rank that runs out of memory for a step's buffers fails every rank, with nothing written:
// it returned at once while the others waited for it in the next gather, for ever.
TEST(SyncBatchNormErrors, ARankOutOfMemoryFailsEveryRankWithoutWaiting) {
  const int rank = world_rank(), ranks = world_size();
  constexpr std::int64_t channels = 37;  // blocks of a size no other buffer of the call has
  bnorm::plan plan;
  ASSERT_TRUE(bnorm::make_plan({{3, channels, 2}}, {}, &plan));
  std::vector<float> x = normal_data<float>(3 * channels * 2, 0.0, 1.0, 6);
  std::vector<float> y(x.size(), 7.0f), rm(channels, 7.0f), rv(channels, 7.0f);
  std::vector<float> dy(x.size(), 1.0f), dx(x.size(), 7.0f), mean(channels, 0.0f);
  std::vector<float> inv(channels, 1.0f), dgamma(channels, 7.0f);
  bnorm::training_args a;
  a.src = x.data();
  a.dst = y.data();
  a.running_mean = out(rm);
  a.running_var = out(rv);
  bnorm::backward_args b;
  b.src = x.data();
  b.diff_dst = dy.data();
  b.diff_src = dx.data();
  b.diff_scale = out(dgamma);
  b.mean = in(mean);
  b.inv_std = in(inv);
  // Every rank's blocks together: ranks × (1 + 2C) doubles, on the last rank only.
  const std::size_t blocks_bytes =
      static_cast<std::size_t>(ranks) * bnorm::statistics_exchange_size(channels) * sizeof(double);
  const std::string expected = "bnorm::mpi: rank " + std::to_string(ranks - 1) +
                               " could not allocate the exchange's buffers; nothing was written "
                               "on any rank";
  for (const bool forward : {true, false}) {
    SCOPED_TRACE(forward ? "forward" : "backward");
    if (rank == ranks - 1) failing_size = blocks_bytes;
    const bnorm::status s = forward ? bnorm::mpi::forward_training(plan, a, MPI_COMM_WORLD)
                                    : bnorm::mpi::backward_training(plan, b, MPI_COMM_WORLD);
    failing_size = 0;
    EXPECT_EQ(s.code(), bnorm::status_code::out_of_memory) << s.message();
    EXPECT_EQ(std::string(s.message()), expected);
  }
  for (const float v : y) ASSERT_EQ(v, 7.0f);
  for (const float v : rm) ASSERT_EQ(v, 7.0f);
  for (const float v : rv) ASSERT_EQ(v, 7.0f);
  for (const float v : dx) ASSERT_EQ(v, 7.0f);
  for (const float v : dgamma) ASSERT_EQ(v, 7.0f);

  // A rank that refuses for want of memory of its own: every rank's status carries its code
  // (the other ranks said invalid_argument).
  const bnorm::status refused =
      rank == 0 ? bnorm::mpi::refuse(
                      bnorm::status(bnorm::status_code::out_of_memory, "no memory for the step"),
                      MPI_COMM_WORLD)
                : bnorm::mpi::forward_training(plan, a, MPI_COMM_WORLD);
  EXPECT_EQ(refused.code(), bnorm::status_code::out_of_memory) << refused.message();
  for (const float v : y) ASSERT_EQ(v, 7.0f);
}

// A communicator that is not one is refused on the calling rank, before any exchange: a null
// one, an intercommunicator (whose collectives gather the other group's blocks), MPI stopped.
TEST(SyncBatchNormErrors, CommunicatorsThatAreNotOneAreRefused) {
  bnorm::plan plan;
  ASSERT_TRUE(bnorm::make_plan({{3, 4, 2}}, {}, &plan));
  std::vector<float> x = normal_data<float>(24, 0.0, 1.0, 5), y(24, 7.0f);
  bnorm::training_args a;
  a.src = x.data();
  a.dst = y.data();
  bnorm::status s = bnorm::mpi::forward_training(plan, a, MPI_COMM_NULL);
  EXPECT_EQ(s.code(), bnorm::status_code::invalid_argument);
  EXPECT_STREQ(s.message(), "comm: expected a communicator, got MPI_COMM_NULL");
  if (world_size() >= 2) {
    const int rank = world_rank();
    MPI_Comm group = MPI_COMM_NULL, inter = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, rank == 0 ? 0 : 1, rank, &group);
    MPI_Intercomm_create(group, 0, MPI_COMM_WORLD, rank == 0 ? 1 : 0, 77, &inter);
    s = bnorm::mpi::forward_training(plan, a, inter);
    EXPECT_NE(std::string(s.message()).find("comm: expected an intracommunicator"),
              std::string::npos)
        << s.message();
    MPI_Comm_free(&inter);
    MPI_Comm_free(&group);
  }
  for (const float v : y) ASSERT_EQ(v, 7.0f);
}

// A rank asking for dβ alone gives no Σdy·(x − mean) for the others' dx: its local step refuses
// it, and every rank's call fails.
TEST(SyncBatchNormErrors, ARankWithoutXFailsEveryRank) {
  const int rank = world_rank(), last = world_size() - 1;
  bnorm::plan plan;
  ASSERT_TRUE(bnorm::make_plan({{3, 4, 2}}, {}, &plan));
  std::vector<float> x = normal_data<float>(24, 0.0, 1.0, 6), dy(24, 1.0f), dx(24, 7.0f);
  std::vector<float> mean(4, 0.0f), inv(4, 1.0f), db(4, 7.0f);
  bnorm::backward_args b;
  b.diff_dst = dy.data();
  b.diff_shift = out(db);
  if (rank != last) {
    b.src = x.data();
    b.diff_src = dx.data();
    b.mean = in(mean);
    b.inv_std = in(inv);
  }
  const bnorm::status s = bnorm::mpi::backward_training(plan, b, MPI_COMM_WORLD);
  EXPECT_FALSE(s);
  const std::string why = s.message();
  EXPECT_NE(why.find("local_gradient_sums: its block carries"), std::string::npos) << why;
  if (rank != last) {
    EXPECT_NE(why.find("rank " + std::to_string(last) + " refused its arguments"),
              std::string::npos)
        << why;
  }
  for (const float v : dx) ASSERT_EQ(v, 7.0f);
  for (const float v : db) ASSERT_EQ(v, 7.0f);
}

// A module that refuses its input before the exchange (the wrong channels, a short gradient)
// still joins it: the call fails on every rank, none waits for the refusing one.
TEST(SyncBatchNormModule, ARankRefusingItsInputFailsEveryRank) {
  const int rank = world_rank();
  auto bn = bnorm::mpi::SyncBatchNorm<float>(4);
  const std::vector<float> x = normal_data<float>(2 * 4 * 9, 1.0, 2.0, 60 + rank);
  const std::vector<float> x5 = normal_data<float>(2 * 5 * 9, 1.0, 2.0, 70 + rank);
  try {
    if (rank == 0) {
      bn.forward(x5, {2, 5, 3, 3});
    } else {
      bn.forward(x, {2, 4, 3, 3});
    }
    ADD_FAILURE() << "a forward that rank 0 refused went through";
  } catch (const bnorm::error& e) {
    const std::string why = e.what();
    EXPECT_NE(why.find(rank == 0 ? "input: expected 4 channels"
                                 : "rank 0 refused its arguments (input: expected 4 channels"),
              std::string::npos)
        << why;
  }
  EXPECT_EQ(bn.num_batches_tracked(), 0);
  bn.forward(x, {2, 4, 3, 3});
  EXPECT_EQ(bn.num_batches_tracked(), 1);
  const std::vector<float> dy(rank == 0 ? 71 : 72, 1.0f);  // rank 0's is short
  try {
    bn.backward(x, dy);
    ADD_FAILURE() << "a backward that rank 0 refused went through";
  } catch (const bnorm::error& e) {
    const std::string why = e.what();
    EXPECT_NE(why.find(rank == 0 ? "grad_output: expected 72 values"
                                 : "rank 0 refused its arguments (grad_output: expected 72"),
              std::string::npos)
        << why;
  }
  EXPECT_TRUE(bn.weight_grad().empty());
  // And the next calls go on together.
  EXPECT_EQ(bn.backward(x, std::vector<float>(72, 1.0f)).size(), 72u);
}

TEST(SyncBatchNormModule, MirrorsTorchSyncBatchNorm) {
  const int rank = world_rank(), ranks = world_size();
  auto bn = bnorm::mpi::SyncBatchNorm<double>(3);
  // convert_sync_batchnorm: an existing module, its parameters kept, synchronised.
  auto plain = bnorm::torch::BatchNorm1d<double>(3);
  plain.weight()[0] = 2.0;
  bnorm::mpi::convert_sync_batchnorm(plain, MPI_COMM_WORLD);
  EXPECT_NE(plain.get_training_exchange(), nullptr);
  EXPECT_EQ(plain.weight()[0], 2.0);
  // One value per channel on each rank: refused on one rank (PyTorch's rule), fine over several.
  const std::vector<double> x = normal_data<double>(3 * 4, 1.0, 2.0, 50 + rank);
  if (ranks == 1) {
    try {
      bn.forward(std::vector<double>(x.begin(), x.begin() + 3), {1, 3});
      ADD_FAILURE() << "one value per channel over one rank was not refused";
    } catch (const bnorm::error& e) {
      EXPECT_NE(std::string(e.what()).find("Expected more than 1 value per channel when training"),
                std::string::npos)
          << e.what();
    }
    EXPECT_EQ(bn.num_batches_tracked(), 0);
    return;
  }
  const std::vector<double> y = bn.forward(std::vector<double>(x.begin(), x.begin() + 3), {1, 3});
  EXPECT_TRUE(same_on_every_rank(bn.running_mean()));
  EXPECT_TRUE(same_on_every_rank(bn.running_var()));
  EXPECT_EQ(bn.num_batches_tracked(), 1);
  // y and the running statistics against the formulas over every rank's values (one per
  // channel a rank): mean and biased variance over the R values, γ = 1, β = 0, eps 1e-5,
  // momentum 0.1 from running statistics 0 and 1, the unbiased variance in the running one.
  const std::vector<double> mine(x.begin(), x.begin() + 3);
  std::vector<double> mean = sum_over_ranks(mine), deviation(3);
  for (double& m : mean) m /= ranks;
  for (std::size_t c = 0; c < 3; ++c) deviation[c] = (mine[c] - mean[c]) * (mine[c] - mean[c]);
  const std::vector<double> squares = sum_over_ranks(deviation);
  for (std::size_t c = 0; c < 3; ++c) {
    const double variance = squares[c] / ranks;
    const double want = (mine[c] - mean[c]) / std::sqrt(variance + 1e-5);
    EXPECT_NEAR(y[c], want, 1e-12 * std::max(1.0, std::fabs(want))) << "channel " << c;
    EXPECT_NEAR(bn.running_mean()[c], 0.1 * mean[c], 1e-12 * std::fabs(mean[c])) << c;
    const double running_var = 0.9 + 0.1 * variance * ranks / (ranks - 1);
    EXPECT_NEAR(bn.running_var()[c], running_var, 1e-12 * running_var) << c;
  }
  const std::vector<double> dx = bn.backward(std::vector<double>(x.begin(), x.begin() + 3),
                                             std::vector<double>{1.0, 2.0, 3.0});
  // dy constant on every rank: dx is 0 (its mean is taken out over the whole batch), up to the
  // rounding of its terms γ·inv_std·dy (two close samples make 1/std large), amplified once
  // more by inv_std·|x| where the rounded mean meets x − mean.
  const std::vector<double> dy = {1.0, 2.0, 3.0};
  for (std::size_t c = 0; c < dx.size(); ++c) {
    const double inv_std = bn.saved_inv_std()[c];
    const double term = std::fabs(bn.weight()[c] * inv_std * dy[c]);
    const double bound = 1e-13 * (1.0 + term) * (1.0 + inv_std * std::fabs(x[c]));
    EXPECT_NEAR(dx[c], 0.0, bound) << "channel " << c << ", term " << term;
  }
  ASSERT_EQ(bn.bias_grad().size(), 3u);
  EXPECT_EQ(bn.bias_grad()[1], 2.0);  // this rank's Σdy
  bn.eval();                          // eval mode: this rank's running statistics, no exchange
  EXPECT_EQ(bn.forward(std::vector<double>(x.begin(), x.begin() + 3), {1, 3}).size(), 3u);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  // Every rank builds the same whole batch: rank 0's data seed (given, or from the clock).
  int seed = GTEST_FLAG_GET(random_seed);
  if (seed == 0) seed = static_cast<int>(std::time(nullptr) % 99989) + 1;
  MPI_Bcast(&seed, 1, MPI_INT, 0, MPI_COMM_WORLD);
  GTEST_FLAG_SET(random_seed, seed);
  // Only rank 0 reports passing tests; every rank reports its failures.
  if (world_rank() != 0) {
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    struct failures_only : testing::EmptyTestEventListener {
      void OnTestPartResult(const testing::TestPartResult& result) override {
        if (result.failed()) {
          std::printf("rank %d: %s:%d: %s\n", world_rank(), result.file_name(),
                      result.line_number(), result.summary());
        }
      }
    };
    listeners.Append(new failures_only);
  }
  const int failed = RUN_ALL_TESTS();
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_failed;
}
