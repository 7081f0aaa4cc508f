// The backward paths against a float64 (long double) reference computed from the same inputs,
// against central finite differences of the forward (independent of both), and their contract:
// masks, in place, determinism, empty tensors, errors that write nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>

#include "support.hpp"

using namespace bnorm_test;
using bnorm::layout;

namespace {

/// The largest error of `got` relative to its reference's magnitude (per channel).
template <class T>
double worst_relative(const std::vector<T>& got, const std::vector<double>& want,
                      const std::vector<double>& magnitude) {
  double worst = 0.0;
  for (std::size_t c = 0; c < got.size(); ++c) {
    const double e =
        std::fabs(static_cast<double>(got[c]) - want[c]) / std::max(1e-30, magnitude[c]);
    if (!(e <= worst)) worst = e;
  }
  return worst;
}

/// |dx − dx_ref| / max(1, max|dx_ref|).
double dx_error(const std::vector<float>& got, const std::vector<double>& want) {
  double largest = 1.0;
  for (double v : want) largest = std::max(largest, std::fabs(v));
  return max_abs_error(got, want) / largest;
}
double dx_error(const std::vector<double>& got, const std::vector<double>& want) {
  double largest = 1.0;
  for (double v : want) largest = std::max(largest, std::fabs(v));
  return max_abs_error(got, want) / largest;
}

/// A forward_training call's saved statistics for x (batch mean, 1/std, biased variance).
template <class T>
struct saved_statistics {
  std::vector<T> mean, inv_std, variance;
};

template <class T>
saved_statistics<T> forward_statistics(const bnorm::plan& plan, const std::vector<T>& x,
                                       std::size_t channels) {
  saved_statistics<T> s{std::vector<T>(channels), std::vector<T>(channels),
                        std::vector<T>(channels)};
  std::vector<T> y(x.size());
  bnorm::training_args args;
  args.src = x.data();
  args.dst = y.data();
  args.batch_mean = out(s.mean);
  args.batch_inv_std = out(s.inv_std);
  EXPECT_TRUE(plan.forward_training(args).ok());
  for (std::size_t c = 0; c < channels; ++c) {
    const double inv = static_cast<double>(s.inv_std[c]);
    s.variance[c] = static_cast<T>(1.0 / (inv * inv) - 1e-5);
  }
  return s;
}

/// The gradients of a full backward.
template <class T>
struct gradients {
  std::vector<T> dx, dgamma, dbeta;
};

/// Which statistics a full backward takes: the training backward's saved mean with its 1/std
/// or its variance, or the frozen backward's running mean and variance.
enum class statistics { saved_inv_std, saved_variance, running };

/// The gradients of a full backward (dx, dγ, dβ); gamma may be empty; `spread` is the 1/std or
/// the variance, as `kind` says.
template <class T>
gradients<T> all_gradients(const bnorm::plan& plan, statistics kind, const std::vector<T>& x,
                           const std::vector<T>& dy, const std::vector<T>& gamma,
                           const std::vector<T>& mean, const std::vector<T>& spread) {
  // A sentinel no gradient here takes: an output left unwritten fails its comparison, also
  // where the expected gradient is 0.
  const T unwritten = T(-7.25);
  gradients<T> g{std::vector<T>(x.size(), unwritten), std::vector<T>(mean.size(), unwritten),
                 std::vector<T>(mean.size(), unwritten)};
  bnorm::backward_args args;
  args.src = x.data();
  args.diff_dst = dy.data();
  args.diff_src = g.dx.data();
  args.scale = in(gamma);
  args.mean = in(mean);
  (kind == statistics::saved_inv_std ? args.inv_std : args.var) = in(spread);
  args.diff_scale = out(g.dgamma);
  args.diff_shift = out(g.dbeta);
  const bnorm::status st =
      kind == statistics::running ? plan.backward_frozen(args) : plan.backward_training(args);
  EXPECT_TRUE(st.ok()) << st.message();
  return g;
}

/// The training backward from the forward's saved mean and 1/std.
template <class T>
gradients<T> training_gradients(const bnorm::plan& plan, const std::vector<T>& x,
                                const std::vector<T>& dy, const std::vector<T>& gamma,
                                const saved_statistics<T>& saved) {
  return all_gradients(plan, statistics::saved_inv_std, x, dy, gamma, saved.mean, saved.inv_std);
}

/// A training backward from the given mean and 1/std, beside the float64 reference's.
struct gradients_and_reference {
  gradients<float> got;
  reference_gradients want;
};
gradients_and_reference against_reference(const bnorm::plan& plan, const bnorm::tensor_shape& shape,
                                          bnorm::layout l, const std::vector<float>& x,
                                          const std::vector<float>& dy,
                                          const std::vector<float>& gamma,
                                          const std::vector<float>& mean,
                                          const std::vector<float>& inv_std) {
  const std::vector<double> inv(inv_std.begin(), inv_std.end());
  return {all_gradients(plan, statistics::saved_inv_std, x, dy, gamma, mean, inv_std),
          reference_backward(x, dy, shape, l, mean, inv, gamma, true)};
}

/// Σ w·y: the loss whose gradient with respect to y is w.
double weighted_sum(const std::vector<double>& w, const std::vector<double>& y) {
  long double sum = 0;
  for (std::size_t i = 0; i < y.size(); ++i) sum += static_cast<long double>(w[i]) * y[i];
  return static_cast<double>(sum);
}

/// d loss / d v by central differences at steps s and s/2, s = h·max(1, |v|), combined by
/// Richardson extrapolation: the truncation error falls from O(s²) to O(s⁴). A channel of
/// three values bends the loss sharply, and a plain central difference missed the bound of
/// 1e-6 by up to 1.3e-4 (7 of 10,500 random seeds); with the extrapolation none of 20,000
/// seeds does. v is restored.
template <class Loss>
double central_difference(double& v, const Loss& loss, double h = 1e-5) {
  const double keep = v;
  const auto difference = [&](double step) {
    v = keep + step;
    const double up = loss();
    v = keep - step;
    const double down = loss();
    return (up - down) / (2 * step);
  };
  const double step = h * std::max(1.0, std::fabs(keep));
  const double coarse = difference(step), fine = difference(step / 2);
  v = keep;
  return (4 * fine - coarse) / 3;
}

struct backward_case {
  bnorm::tensor_shape shape;
  layout l;
  double offset;  // mean of x, in standard deviations
  double dx_bound;
};

const backward_case accuracy_cases[] = {
    {{64, 32}, layout::channels_last, 0.0, 1e-6},
    {{4, 16, 100}, layout::channels_first, 0.0, 1e-6},
    {{4, 16, 100}, layout::channels_last, 0.0, 1e-6},
    {{8, 64, 28, 28}, layout::channels_first, 0.0, 1e-6},
    {{8, 64, 28, 28}, layout::channels_last, 0.0, 1e-6},
    {{2, 8, 5, 7, 9}, layout::channels_first, 0.0, 1e-6},
    {{2, 8, 5, 7, 9}, layout::channels_last, 0.0, 1e-6},
    {{1, 1024, 7, 7}, layout::channels_first, 0.0, 1e-6},
    {{1, 1024, 7, 7}, layout::channels_last, 0.0, 1e-6},
    // Rows of 1000 channels, too narrow for column blocks: one block of every channel, whose
    // last vector is partial.
    {{1, 1000, 7, 7}, layout::channels_last, 0.0, 1e-6},
    {{32, 3, 130, 130}, layout::channels_first, 0.0, 1e-6},  // channels larger than a unit
    {{2, 3, 200, 300}, layout::channels_first, 0.0, 1e-6},  // 469 KiB channels, fused from 1 MiB L2
    // 4 MiB (from memory where the last level is 32 MiB): fused planes fetching the next block
    {{16, 64, 32, 32}, layout::channels_first, 0.0, 1e-6},
    {{4096, 64}, layout::channels_last, 0.0, 1e-6},
    // 4 MiB rows of 512 channels, from memory where the last level is 32 MiB: the sums in row
    // order, the map fetching ahead as it streams dx
    {{2048, 512}, layout::channels_last, 0.0, 1e-6},
    {{2048, 512}, layout::channels_last, 1e5, 1e-5},
    {{8, 64, 28, 28}, layout::channels_first, 1e5, 1e-5},
    {{8, 64, 28, 28}, layout::channels_last, 1e5, 1e-5},
    {{4096, 64}, layout::channels_last, 1e5, 1e-5},
};

std::string case_name(const backward_case& k) {
  return shape_name(k.shape) + (k.l == layout::channels_first ? "_nchw" : "_nhwc") + "_offset" +
         std::to_string(static_cast<long>(k.offset));
}

class Backward : public testing::TestWithParam<bnorm::isa> {
 protected:
  bnorm::plan make(const bnorm::tensor_shape& shape, layout l, bnorm::dtype d,
                   int threads = 0) const {
    bnorm::plan_options opts;
    opts.max_isa = GetParam();
    opts.update_running_stats = false;
    opts.max_threads = threads;
    bnorm::plan plan = make_plan_or_fail({shape, l, d, 1e-5}, opts);
    EXPECT_EQ(plan.isa(), GetParam());
    return plan;
  }
};

// The targets: dx within 1e-6·max(1, max|dx_ref|) on standard-normal x and dy (1e-5
// when the mean of x is 1e5 × its std); dγ, dβ within 1e-6 of Σ|dy·x̂| and Σ|dy|.
TEST_P(Backward, TrainingMeetsTheTargets) {
  for (const backward_case& k : accuracy_cases) {
    const geometry g(k.shape);
    const auto x = normal_data<float>(g.elements(), k.offset, 1.0, 1);
    const auto dy = normal_data<float>(g.elements(), 0.0, 1.0, 2);
    const auto gamma = normal_data<float>(g.c, 1.0, 0.5, 3);
    const bnorm::plan plan = make(k.shape, k.l, bnorm::dtype::f32);
    const saved_statistics<float> saved = forward_statistics(plan, x, g.c);
    for (const bool with_variance : {false, true}) {
      const auto [dx, dgamma, dbeta] = all_gradients(
          plan, with_variance ? statistics::saved_variance : statistics::saved_inv_std, x, dy,
          gamma, saved.mean, with_variance ? saved.variance : saved.inv_std);
      std::vector<double> inv(g.c);
      for (std::size_t c = 0; c < g.c; ++c) {
        inv[c] = with_variance ? 1.0 / std::sqrt(static_cast<double>(saved.variance[c]) + 1e-5)
                               : static_cast<double>(saved.inv_std[c]);
      }
      const reference_gradients ref =
          reference_backward(x, dy, k.shape, k.l, saved.mean, inv, gamma, true);
      const double e_dx = dx_error(dx, ref.dx);
      const double e_dgamma = worst_relative(dgamma, ref.dgamma, ref.abs_dgamma);
      const double e_dbeta = worst_relative(dbeta, ref.dbeta, ref.abs_dbeta);
      const std::string name = case_name(k) + (with_variance ? "_var" : "_invstd");
      std::cout << "[ backward accuracy ] " << bnorm::to_string(GetParam()) << " " << name << " dx "
                << e_dx << " dgamma " << e_dgamma << " dbeta " << e_dbeta << "\n";
      EXPECT_LE(e_dx, k.dx_bound) << name;
      EXPECT_LE(e_dgamma, 1e-6) << name;
      EXPECT_LE(e_dbeta, 1e-6) << name;
    }
  }
}

// With the forward's mean residual the backward is the gradient of the forward itself: against
// a float64 reference from x's own statistics, not the saved float32 ones, where the saved mean's
// rounding alone moves x̂ by up to |mean|·2^-24/std, and dx by as much times dy's mean over its
// spread. Without the residual the same calls miss by far (checked, so that the test shows it).
TEST_P(Backward, MeanResidualGivesTheForwardsOwnGradient) {
  struct residual_case {
    bnorm::tensor_shape shape;
    layout l;
    double x_offset, dy_offset;  // in standard deviations
    double dx_bound;
  };
  const residual_case cases[] = {
      {{8, 64, 28, 28}, layout::channels_first, 1e5, 100.0, 1e-5},
      {{8, 64, 28, 28}, layout::channels_last, 1e5, 100.0, 1e-5},
      {{4096, 64}, layout::channels_last, 1e5, 100.0, 1e-5},
      {{1, 1024, 7, 7}, layout::channels_first, 1e3, 100.0, 1e-5},
      {{2, 8, 5, 7, 9}, layout::channels_last, 1e4, 10.0, 1e-6},
  };
  for (const residual_case& k : cases) {
    const geometry g(k.shape);
    const auto x = normal_data<float>(g.elements(), k.x_offset, 1.0, 11);
    const auto dy = normal_data<float>(g.elements(), k.dy_offset, 1.0, 12);
    const auto gamma = normal_data<float>(g.c, 1.0, 0.5, 13);
    const bnorm::plan plan = make(k.shape, k.l, bnorm::dtype::f32);
    std::vector<float> mean(g.c), residual(g.c), inv_std(g.c), y(x.size());
    bnorm::training_args fwd;
    fwd.src = x.data();
    fwd.dst = y.data();
    fwd.scale = in(gamma);
    fwd.batch_mean = out(mean);
    fwd.batch_mean_residual = out(residual);
    fwd.batch_inv_std = out(inv_std);
    ASSERT_TRUE(plan.forward_training(fwd).ok());
    // x's own statistics, in long double.
    std::vector<double> exact_mean(g.c), exact_inv(g.c);
    for (std::size_t c = 0; c < g.c; ++c) {
      long double sum = 0, squares = 0;
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t s = 0; s < g.spatial; ++s) sum += x[g.offset(k.l, n, c, s)];
      const long double m = sum / static_cast<long double>(g.n * g.spatial);
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t s = 0; s < g.spatial; ++s) {
          const long double d = x[g.offset(k.l, n, c, s)] - m;
          squares += d * d;
        }
      exact_mean[c] = static_cast<double>(m);
      exact_inv[c] = static_cast<double>(
          1.0L / std::sqrt(squares / static_cast<long double>(g.n * g.spatial) + 1e-5L));
      // The residual is the mean less its rounding: mean + residual is the mean to ~2^-48.
      EXPECT_NEAR(static_cast<double>(mean[c]) + residual[c], exact_mean[c],
                  1e-12 * std::fabs(exact_mean[c]) + 1e-12)
          << c;
    }
    const std::vector<double> xd(x.begin(), x.end()), dyd(dy.begin(), dy.end()),
        gammad(gamma.begin(), gamma.end());
    const reference_gradients ref =
        reference_backward(xd, dyd, k.shape, k.l, exact_mean, exact_inv, gammad, true);
    const auto dx_of = [&](bool with_residual) {
      std::vector<float> dx(x.size());
      bnorm::backward_args b;
      b.src = x.data();
      b.diff_dst = dy.data();
      b.diff_src = dx.data();
      b.scale = in(gamma);
      b.mean = in(mean);
      if (with_residual) b.mean_residual = in(residual);
      b.inv_std = in(inv_std);
      const bnorm::status st = plan.backward_training(b);
      EXPECT_TRUE(st.ok()) << st.message();
      return dx_error(dx, ref.dx);
    };
    const double with = dx_of(true), without = dx_of(false);
    const std::string name =
        shape_name(k.shape) + (k.l == layout::channels_first ? "_nchw" : "_nhwc");
    std::cout << "[ mean residual ] " << bnorm::to_string(GetParam()) << " " << name << " dx "
              << with << " (without the residual " << without << ")\n";
    EXPECT_LE(with, k.dx_bound) << name;
    EXPECT_GT(without, 10 * k.dx_bound) << name;
  }
}

// float64 data's residual is 0 (its mean is the kernels' own float64): it changes nothing, where
// Σdy overflows too (0·inf would make dγ NaN). dy of 1e306 on a constant x: dγ = Σdy·x̂ = 0.
TEST_P(Backward, AZeroResidualChangesNothing) {
  const bnorm::tensor_shape shape{1000, 2};
  const bnorm::plan plan = make(shape, layout::channels_last, bnorm::dtype::f64);
  std::vector<double> x(2000), dy(2000);
  for (std::size_t n = 0; n < 1000; ++n) {
    x[2 * n] = 5.0;
    x[2 * n + 1] = n % 2 ? 6.0 : 4.0;
    dy[2 * n] = 1e306;
    dy[2 * n + 1] = n % 2 ? 1.0 : -1.0;
  }
  std::vector<double> mean(2), residual(2, 7.0), inv_std(2), y(2000);
  bnorm::training_args f;
  f.src = x.data();
  f.dst = y.data();
  f.batch_mean = out(mean);
  f.batch_mean_residual = out(residual);
  f.batch_inv_std = out(inv_std);
  ASSERT_TRUE(plan.forward_training(f).ok());
  EXPECT_EQ(residual, std::vector<double>(2, 0.0));
  for (const bool with_residual : {false, true}) {
    std::vector<double> dgamma(2, -7.0), dbeta(2, -7.0);
    bnorm::backward_args b;
    b.src = x.data();
    b.diff_dst = dy.data();
    b.mean = in(mean);
    if (with_residual) b.mean_residual = in(residual);
    b.inv_std = in(inv_std);
    b.diff_scale = out(dgamma);
    b.diff_shift = out(dbeta);
    ASSERT_TRUE(plan.backward_training(b).ok());
    EXPECT_EQ(dgamma[0], 0.0) << with_residual;
    EXPECT_EQ(dbeta[0], INFINITY) << with_residual;
    EXPECT_NEAR(dgamma[1], 1000.0 * inv_std[1], 1e-9) << with_residual;
  }
}

TEST_P(Backward, FrozenMeetsTheTargets) {
  for (const backward_case& k : accuracy_cases) {
    const geometry g(k.shape);
    const auto x = normal_data<float>(g.elements(), k.offset, 1.0, 4);
    const auto dy = normal_data<float>(g.elements(), 0.0, 1.0, 5);
    const auto gamma = normal_data<float>(g.c, 1.0, 0.5, 6);
    const auto running_mean = normal_data<float>(g.c, k.offset, 0.1, 7);
    const auto running_var = normal_data<float>(g.c, 1.0, 0.1, 8);
    const bnorm::plan plan = make(k.shape, k.l, bnorm::dtype::f32);
    const auto [dx, dgamma, dbeta] =
        all_gradients(plan, statistics::running, x, dy, gamma, running_mean, running_var);
    std::vector<double> inv(g.c);
    for (std::size_t c = 0; c < g.c; ++c) {
      inv[c] = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + 1e-5);
    }
    const reference_gradients ref =
        reference_backward(x, dy, k.shape, k.l, running_mean, inv, gamma, false);
    const std::string name = case_name(k);
    EXPECT_LE(dx_error(dx, ref.dx), 1e-6) << name;
    EXPECT_LE(worst_relative(dgamma, ref.dgamma, ref.abs_dgamma), 1e-6) << name;
    EXPECT_LE(worst_relative(dbeta, ref.dbeta, ref.abs_dbeta), 1e-6) << name;
  }
}

TEST_P(Backward, Float64MeetsTighterBounds) {
  for (const backward_case& k : accuracy_cases) {
    const geometry g(k.shape);
    const auto x = normal_data<double>(g.elements(), k.offset, 1.0, 9);
    const auto dy = normal_data<double>(g.elements(), 0.0, 1.0, 10);
    const bnorm::plan plan = make(k.shape, k.l, bnorm::dtype::f64);
    const saved_statistics<double> saved = forward_statistics(plan, x, g.c);
    const auto [dx, dgamma, dbeta] = training_gradients(plan, x, dy, std::vector<double>{}, saved);
    const std::vector<double> inv(saved.inv_std.begin(), saved.inv_std.end());
    const reference_gradients ref =
        reference_backward(x, dy, k.shape, k.l, saved.mean, inv, std::vector<double>{}, true);
    const std::string name = case_name(k);
    EXPECT_LE(dx_error(dx, ref.dx), k.offset > 0 ? 1e-10 : 1e-13) << name;
    EXPECT_LE(worst_relative(dgamma, ref.dgamma, ref.abs_dgamma), 1e-13) << name;
    EXPECT_LE(worst_relative(dbeta, ref.dbeta, ref.abs_dbeta), 1e-13) << name;
  }
}

// Gradients of L = Σ w·y(x, γ, β) in float64 against central differences of the forward: the
// forward's own statistics move with x, so this checks the training formula itself.
TEST_P(Backward, MatchesFiniteDifferencesOfTheForward) {
  const struct {
    bnorm::tensor_shape shape;
    layout l;
  } cases[] = {{{3, 4}, layout::channels_last},
               {{2, 3, 5}, layout::channels_first},
               {{2, 3, 5}, layout::channels_last},
               {{2, 2, 3, 3}, layout::channels_first},
               {{2, 2, 3, 3}, layout::channels_last}};
  for (const auto& k : cases) {
    const geometry g(k.shape);
    auto x = normal_data<double>(g.elements(), 0.5, 2.0, 11);
    const auto w = normal_data<double>(g.elements(), 0.0, 1.0, 12);
    auto gamma = normal_data<double>(g.c, 1.0, 0.5, 13);
    auto beta = normal_data<double>(g.c, 0.0, 0.5, 14);
    const bnorm::plan plan = make(k.shape, k.l, bnorm::dtype::f64);
    const auto loss = [&] {
      std::vector<double> y(x.size());
      bnorm::training_args args;
      args.src = x.data();
      args.dst = y.data();
      args.scale = in(gamma);
      args.shift = in(beta);
      EXPECT_TRUE(plan.forward_training(args).ok());
      return weighted_sum(w, y);
    };
    const auto derivative = [&](double& v) { return central_difference(v, loss); };
    const saved_statistics<double> saved = forward_statistics(plan, x, g.c);
    const auto [dx, dgamma, dbeta] = training_gradients(plan, x, w, gamma, saved);
    const std::string name = shape_name(k.shape);
    for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(dx[i], derivative(x[i]), 1e-6) << name;
    for (std::size_t c = 0; c < g.c; ++c) {
      EXPECT_NEAR(dgamma[c], derivative(gamma[c]), 1e-6) << name;
      EXPECT_NEAR(dbeta[c], derivative(beta[c]), 1e-6) << name;
    }
  }
}

// Frozen: the forward is inference, y = (x − rm)/sqrt(rv + eps)·γ + β.
TEST_P(Backward, FrozenMatchesFiniteDifferencesOfInference) {
  const bnorm::tensor_shape shape{2, 3, 4, 5};
  for (const layout l : {layout::channels_first, layout::channels_last}) {
    const geometry g(shape);
    auto x = normal_data<double>(g.elements(), 0.0, 1.0, 15);
    const auto w = normal_data<double>(g.elements(), 0.0, 1.0, 16);
    auto gamma = normal_data<double>(g.c, 1.0, 0.5, 17);
    auto beta = normal_data<double>(g.c, 0.0, 0.5, 18);
    const auto rm = normal_data<double>(g.c, 0.0, 0.5, 19);
    // Log-normal: a running variance is positive (a normal draw around 2 went negative on seed
    // 26021, and the loss with it).
    auto rv = normal_data<double>(g.c, 0.5, 0.5, 20);
    for (double& v : rv) v = std::exp(v);
    const bnorm::plan plan = make(shape, l, bnorm::dtype::f64);
    const auto loss = [&] {
      std::vector<double> y(x.size());
      bnorm::inference_args args;
      args.src = x.data();
      args.dst = y.data();
      args.scale = in(gamma);
      args.shift = in(beta);
      args.mean = in(rm);
      args.var = in(rv);
      EXPECT_TRUE(plan.forward_inference(args).ok());
      return weighted_sum(w, y);
    };
    const auto derivative = [&](double& v) { return central_difference(v, loss); };
    const auto [dx, dgamma, dbeta] = all_gradients(plan, statistics::running, x, w, gamma, rm, rv);
    for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(dx[i], derivative(x[i]), 1e-7);
    for (std::size_t c = 0; c < g.c; ++c) {
      EXPECT_NEAR(dgamma[c], derivative(gamma[c]), 1e-7);
      EXPECT_NEAR(dbeta[c], derivative(beta[c]), 1e-7);
    }
  }
}

// Every mask gives the same bits as the full call for what it computes; in place too; and
// the bits are the same for 1, 2 and all threads.
TEST_P(Backward, MasksInPlaceAndThreadCountsGiveTheSameBits) {
  const backward_case cases[] = {{{8, 64, 28, 28}, layout::channels_first, 0.0, 0},
                                 {{8, 64, 28, 28}, layout::channels_last, 0.0, 0},
                                 {{1, 2048, 7, 7}, layout::channels_last, 0.0, 0},
                                 // Column blocks that stream dx on more threads (4 × 256).
                                 {{1, 1024, 14, 14}, layout::channels_last, 0.0, 0},
                                 {{64, 3, 100, 100}, layout::channels_first, 0.0, 0},
                                 {{3, 5}, layout::channels_last, 0.0, 0}};
  for (const backward_case& k : cases) {
    const geometry g(k.shape);
    const auto x = normal_data<float>(g.elements(), 3.0, 2.0, 21);
    const auto dy = normal_data<float>(g.elements(), 0.0, 1.0, 22);
    const auto gamma = normal_data<float>(g.c, 1.0, 0.5, 23);
    const std::string name = case_name(k);
    for (const bool frozen : {false, true}) {
      const bnorm::plan plan = make(k.shape, k.l, bnorm::dtype::f32, 1);
      const saved_statistics<float> saved = forward_statistics(plan, x, g.c);
      const auto call = [&](const bnorm::plan& p, bool dx_on, bool dgamma_on, bool dbeta_on,
                            bool in_place) {
        std::vector<float> dx = in_place ? dy : std::vector<float>(x.size(), -7.0f);
        std::vector<float> dgamma(g.c, -7.0f), dbeta(g.c, -7.0f);
        bnorm::backward_args args;
        args.src = x.data();
        args.diff_dst = in_place ? dx.data() : dy.data();
        args.diff_src = dx_on ? dx.data() : nullptr;
        args.scale = in(gamma);
        args.mean = in(saved.mean);
        (frozen ? args.var : args.inv_std) = in(frozen ? saved.variance : saved.inv_std);
        if (dgamma_on) args.diff_scale = out(dgamma);
        if (dbeta_on) args.diff_shift = out(dbeta);
        const bnorm::status st = frozen ? p.backward_frozen(args) : p.backward_training(args);
        EXPECT_TRUE(st.ok()) << st.message();
        return std::make_tuple(dx, dgamma, dbeta);
      };
      const auto full = call(plan, true, true, true, false);
      EXPECT_EQ(std::get<0>(call(plan, true, false, false, false)), std::get<0>(full)) << name;
      EXPECT_EQ(std::get<0>(call(plan, true, false, false, true)), std::get<0>(full)) << name;
      EXPECT_EQ(std::get<0>(call(plan, true, true, true, true)), std::get<0>(full)) << name;
      const auto params = call(plan, false, true, true, false);
      EXPECT_EQ(std::get<1>(params), std::get<1>(full)) << name;
      EXPECT_EQ(std::get<2>(params), std::get<2>(full)) << name;
      EXPECT_EQ(std::get<2>(call(plan, false, false, true, false)), std::get<2>(full)) << name;
      // dγ and dβ alone from a dy that is the buffer dx would be in place: dy left as it was.
      const auto params_in_place = call(plan, false, true, true, true);
      EXPECT_EQ(std::get<0>(params_in_place), dy) << name << ": dy written";
      EXPECT_EQ(std::get<1>(params_in_place), std::get<1>(full)) << name;
      for (const int threads : {2, 0}) {
        const bnorm::plan shared_out = make(k.shape, k.l, bnorm::dtype::f32, threads);
        EXPECT_EQ(call(shared_out, true, true, true, false), full)
            << name << " threads " << threads;
        EXPECT_EQ(std::get<0>(call(shared_out, true, true, true, true)), std::get<0>(full))
            << name << " in place, threads " << threads;
      }
    }
  }
}

// dβ alone needs neither x nor the statistics.
TEST_P(Backward, ShiftGradientAloneNeedsOnlyDy) {
  const bnorm::tensor_shape shape{4, 8, 9};
  const geometry g(shape);
  const auto dy = normal_data<float>(g.elements(), 0.0, 1.0, 24);
  for (const layout l : {layout::channels_first, layout::channels_last}) {
    const bnorm::plan plan = make(shape, l, bnorm::dtype::f32);
    for (const bool frozen : {false, true}) {
      std::vector<float> dbeta(g.c);
      bnorm::backward_args args;
      args.diff_dst = dy.data();
      args.diff_shift = out(dbeta);
      ASSERT_TRUE((frozen ? plan.backward_frozen(args) : plan.backward_training(args)).ok());
      for (std::size_t c = 0; c < g.c; ++c) {
        long double want = 0;
        for (std::size_t n = 0; n < g.n; ++n)
          for (std::size_t s = 0; s < g.spatial; ++s) want += dy[g.offset(l, n, c, s)];
        EXPECT_NEAR(dbeta[c], static_cast<double>(want), 1e-5);
      }
    }
  }
}

// Data whose first values do not represent their channel (the forward's order tests): zero
// rows first in a batch around 1e4, values sorted ascending. The sums are taken around the
// saved mean, so their order cannot matter: the same targets hold.
TEST_P(Backward, OrderOfTheDataDoesNotMatter) {
  struct order_case {
    const char* name;
    bnorm::tensor_shape shape;
    layout l;
    void (*arrange)(std::vector<float>&, const geometry&, layout);
  };
  const order_case cases[] = {
      {"zero first rows",
       {4096, 8},
       layout::channels_last,
       [](std::vector<float>& x, const geometry& g, layout) {
         std::fill(x.begin(), x.begin() + 4 * g.c, 0.0f);
       }},
      {"zero first image rows",
       {16, 64, 16, 16},
       layout::channels_first,
       [](std::vector<float>& x, const geometry& g, layout l) {
         for (std::size_t c = 0; c < g.c; ++c)
           for (std::size_t s = 0; s < 3 * 16; ++s) x[g.offset(l, 0, c, s)] = 0.0f;
       }},
      {"sorted ascending",
       {8, 16, 10, 10},
       layout::channels_last,
       [](std::vector<float>& x, const geometry&, layout) { std::sort(x.begin(), x.end()); }},
  };
  for (const order_case& k : cases) {
    const geometry g(k.shape);
    std::vector<float> x = normal_data<float>(g.elements(), 1e4, 1.0, 30);
    k.arrange(x, g, k.l);
    const auto dy = normal_data<float>(g.elements(), 0.0, 1.0, 31);
    const auto gamma = normal_data<float>(g.c, 1.0, 0.5, 32);
    const bnorm::plan plan = make(k.shape, k.l, bnorm::dtype::f32);
    const saved_statistics<float> saved = forward_statistics(plan, x, g.c);
    const auto [dx, dgamma, dbeta] = training_gradients(plan, x, dy, gamma, saved);
    const std::vector<double> inv(saved.inv_std.begin(), saved.inv_std.end());
    const reference_gradients ref =
        reference_backward(x, dy, k.shape, k.l, saved.mean, inv, gamma, true);
    const double e_dx = dx_error(dx, ref.dx);
    const double e_dgamma = worst_relative(dgamma, ref.dgamma, ref.abs_dgamma);
    const double e_dbeta = worst_relative(dbeta, ref.dbeta, ref.abs_dbeta);
    std::cout << "[ backward order ] " << bnorm::to_string(GetParam()) << " " << k.name << " dx "
              << e_dx << " dgamma " << e_dgamma << " dbeta " << e_dbeta << "\n";
    EXPECT_LE(e_dx, 1e-6) << k.name;
    EXPECT_LE(e_dgamma, 1e-6) << k.name;
    EXPECT_LE(e_dbeta, 1e-6) << k.name;
  }
}

// Channels whose dx coefficient x_scale = −γ·inv_std²·Σdy·(x − mean)/M leaves float while dx
// does not, beside ordinary ones: a spread of 1e-25 (inv_std 1e25, given by the caller: x_scale
// ~1e50, dx ~1e25); a spread of 1e-5 around 4 with γ 1e32 (x_scale ~1e42/sqrt(M): times 2^127 the
// mean would overflow); a spread of 1e18 with γ 1e-5 (x_scale ~1e-41, subnormal: 13 bits left); a
// spread of 1e-10 with γ 1e30 and dy ~1e-10 (γ·inv_std ~1e40 too: dy·γ·inv_std ~1e30). Three
// values a channel can be an ulp apart: γ·inv_std ~4e38 with the 1e32, and terms dy·γ·inv_std
// beyond float that cancel to a dx within it.
// Every channel's dx within 1e-6 of its scale, max |dx| or max |γ·inv_std·dy| (its terms', which
// cancel to far less on a channel of three values), whatever the layout and schedule; a dx
// beyond float is the infinity of its sign.
TEST_P(Backward, CoefficientsBeyondFloatKeepDxExact) {
  struct spread_case {
    bnorm::tensor_shape shape;
    layout l;
  };
  const spread_case cases[] = {
      {{3, 5}, layout::channels_last},
      {{64, 8}, layout::channels_last},
      {{4, 8, 100}, layout::channels_first},
      {{4, 8, 100}, layout::channels_last},
      {{2, 8, 7, 7}, layout::channels_first},
      {{1, 48, 7, 7}, layout::channels_first},
      {{32, 5, 130, 130}, layout::channels_first},
      {{4096, 48}, layout::channels_last},
  };
  struct channel_kind {
    double mean, spread, gamma;  // gamma 0: a normal draw
    double dy;                   // dy's standard deviation
  };
  const channel_kind kinds[] = {{3.0, 1.0, 0.0, 1.0},
                                {3e-25, 1e-25, 0.0, 1.0},
                                {4.0, 1e-5, 1e32, 1.0},
                                {3e18, 1e18, 1e-5, 1.0},
                                {3e-10, 1e-10, 1e30, 1e-10}};
  constexpr std::size_t kind_count = sizeof(kinds) / sizeof(kinds[0]);
  for (const spread_case& k : cases) {
    const geometry g(k.shape);
    std::vector<float> x = normal_data<float>(g.elements(), 0.0, 1.0, 40);
    auto dy = normal_data<float>(g.elements(), 0.0, 1.0, 41);
    std::vector<float> gamma = normal_data<float>(g.c, 1.0, 0.5, 42);
    for (std::size_t c = 0; c < g.c; ++c) {
      const channel_kind& kind = kinds[c % kind_count];
      if (kind.gamma != 0.0) gamma[c] = static_cast<float>(kind.gamma);
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t i = 0; i < g.spatial; ++i) {
          const std::size_t at = g.offset(k.l, n, c, i);
          x[at] = static_cast<float>(kind.mean + x[at] * kind.spread);
          dy[at] = static_cast<float>(dy[at] * kind.dy);
        }
    }
    // The statistics in float64 from the data, rounded to float, as a caller saves them.
    std::vector<float> mean(g.c), inv_std(g.c);
    for (std::size_t c = 0; c < g.c; ++c) {
      long double sum = 0, sq = 0;
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t i = 0; i < g.spatial; ++i) sum += x[g.offset(k.l, n, c, i)];
      const long double m = sum / (g.n * g.spatial);
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t i = 0; i < g.spatial; ++i) {
          const long double d = x[g.offset(k.l, n, c, i)] - m;
          sq += d * d;
        }
      mean[c] = static_cast<float>(m);
      // (Three values 20 float steps apart at most can be equal: such a channel takes 1.)
      inv_std[c] = sq > 0 ? static_cast<float>(1 / std::sqrt(sq / (g.n * g.spatial))) : 1.0f;
    }
    const bnorm::plan plan = make(k.shape, k.l, bnorm::dtype::f32);
    const auto [dx, dgamma, dbeta] =
        all_gradients(plan, statistics::saved_inv_std, x, dy, gamma, mean, inv_std);
    const std::vector<double> inv(inv_std.begin(), inv_std.end());
    const reference_gradients ref = reference_backward(x, dy, k.shape, k.l, mean, inv, gamma, true);
    const std::string name =
        shape_name(k.shape) + (k.l == layout::channels_first ? "_nchw" : "_nhwc");
    for (std::size_t c = 0; c < g.c; ++c) {
      const double dy_scale = std::fabs(static_cast<double>(gamma[c]) * inv[c]);
      double largest = 0.0, worst = 0.0;
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t i = 0; i < g.spatial; ++i) {
          const std::size_t at = g.offset(k.l, n, c, i);
          const double want = ref.dx[at], got = dx[at], top = std::numeric_limits<float>::max();
          largest =
              std::max({largest, std::min(std::fabs(want), top), std::fabs(dy[at] * dy_scale)});
          // A dx beyond float (to 1e-6) overflows to the infinity of its sign, as it should.
          const bool overflows = std::isinf(got) && std::signbit(got) == std::signbit(want) &&
                                 std::fabs(want) >= (1 - 1e-6) * top;
          const double e = overflows ? 0.0 : std::fabs(got - want);
          if (!(e <= worst)) worst = e;
        }
      EXPECT_LE(worst, 1e-6 * largest)
          << name << " channel " << c << " spread " << kinds[c % kind_count].spread;
    }
    EXPECT_LE(worst_relative(dgamma, ref.dgamma, ref.abs_dgamma), 1e-6) << name;
    EXPECT_LE(worst_relative(dbeta, ref.dbeta, ref.abs_dbeta), 1e-6) << name;
  }
}

// dy of a few least subnormals times x − mean of ~1,000 (products below float's normal range,
// which keep only some of their bits in float32) and a caller's inv_std of 1e22, which brings
// them back into dγ and dx: dγ within 1e-6 of Σ|dy·x̂|, dx within 1e-6 of its terms' scale.
TEST_P(Backward, SubnormalProductsKeepTheirBits) {
  for (const layout l : {layout::channels_first, layout::channels_last}) {
    const bnorm::tensor_shape shape{16, 4, 9};
    const geometry g(shape);
    const auto x = normal_data<float>(g.elements(), -700.0, 1000.0, 50);
    std::vector<float> dy = normal_data<float>(g.elements(), 0.0, 4.0, 51);
    for (float& v : dy) v = std::round(v) * std::numeric_limits<float>::denorm_min();
    const std::vector<float> gamma(g.c, 1.0f), mean(g.c, -749.5f), inv_std(g.c, 1e22f);
    const bnorm::plan plan = make(shape, l, bnorm::dtype::f32);
    const auto [dx, dgamma, dbeta] =
        all_gradients(plan, statistics::saved_inv_std, x, dy, gamma, mean, inv_std);
    const std::vector<double> inv(inv_std.begin(), inv_std.end());
    const reference_gradients ref = reference_backward(x, dy, shape, l, mean, inv, gamma, true);
    const std::string name = l == layout::channels_first ? "nchw" : "nhwc";
    EXPECT_LE(worst_relative(dgamma, ref.dgamma, ref.abs_dgamma), 1e-6) << name;
    EXPECT_LE(worst_relative(dbeta, ref.dbeta, ref.abs_dbeta), 1e-6) << name;
    // The x − mean term's scale: γ·inv_std·x̂·Σ|dy·x̂|/M with |x − mean| up to ~4,000.
    for (std::size_t c = 0; c < g.c; ++c) {
      const double scale = 1e22 * (1e22 * 4000.0) * ref.abs_dgamma[c] / (g.n * g.spatial);
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t i = 0; i < g.spatial; ++i) {
          const std::size_t at = g.offset(l, n, c, i);
          ASSERT_NEAR(dx[at], ref.dx[at], 1e-6 * scale) << name << " at " << at;
        }
    }
  }
}

// Products dy·(x − mean) in float32's subnormal range that cancel to exactly zero (x of ±1e-23
// and ±3e-23 with their own statistics, dy of 1e-22 and 0.95e-22 at the ends: −2.8e-45 and
// +2.8e-45 once rounded, −1.5e-46 exactly), in two channels of three (the third's values 1e20
// times larger, its products normal): those zero sums are summed again, dγ and dx within 1e-6 of
// the float64 reference (before, dγ came out 0 for −6.7e-24 and dx 4.6% off). Shapes whose planes
// are shorter than a vector or end in a partial one, and rows of more channels than the float64
// sums take at once.
TEST_P(Backward, SubnormalProductsThatCancelToZero) {
  const float xs[4] = {-3e-23f, -1e-23f, 1e-23f, 3e-23f}, dys[4] = {1e-22f, 0, 0, 0.95e-22f};
  const auto scaled = [](std::size_t c) { return c % 3 == 2 ? 1e20f : 1.0f; };
  for (const bnorm::tensor_shape& shape :
       {bnorm::tensor_shape{4, 19}, bnorm::tensor_shape{4, 300}, bnorm::tensor_shape{4, 19, 7},
        bnorm::tensor_shape{4, 5, 3, 11}}) {
    for (const layout l : {layout::channels_first, layout::channels_last}) {
      const geometry g(shape);
      const std::vector<float> x = g.tensor<float>(
          l, [&](std::size_t n, std::size_t c, std::size_t) { return xs[n] * scaled(c); });
      const std::vector<float> dy = g.tensor<float>(
          l, [&](std::size_t n, std::size_t c, std::size_t) { return dys[n] * scaled(c); });
      double var = 0.0;
      for (const float v : xs) var += static_cast<double>(v) * v / 4;
      const std::vector<float> gamma(g.c, 1.0f), mean(g.c, 0.0f);
      std::vector<float> inv_std(g.c);
      for (std::size_t c = 0; c < g.c; ++c) {
        inv_std[c] = static_cast<float>(1 / (std::sqrt(var) * scaled(c)));
      }
      const bnorm::plan plan = make(shape, l, bnorm::dtype::f32);
      const auto [got, ref] = against_reference(plan, shape, l, x, dy, gamma, mean, inv_std);
      const std::string name = plan.describe();
      for (std::size_t c = 0; c < g.c; c += 3) ASSERT_LT(ref.dgamma[c], -6e-24) << name;
      EXPECT_LE(worst_relative(got.dgamma, ref.dgamma, ref.abs_dgamma), 1e-6) << name;
      EXPECT_LE(worst_relative(got.dbeta, ref.dbeta, ref.abs_dbeta), 1e-6) << name;
      EXPECT_LE(dx_error(got.dx, ref.dx), 1e-6) << name;
    }
  }
}

// dy constant in each channel (1, 2 or 3) on integer-valued x whose batch mean is exact (a
// power of two of values a channel): Σdy·(x − mean) is exactly zero where Σdy is not, in every
// channel, and every channel's sums are taken again in float64 (kernels::sums_small_products),
// across the finalize tasks of 512 channels and the column chunks of channels-last rows. dγ and
// dx are zero and dβ the sum of dy, as the float64 reference's.
TEST_P(Backward, ExactlyZeroSumsInEveryChannel) {
  for (const bnorm::tensor_shape& shape :
       {bnorm::tensor_shape{8, 1100}, bnorm::tensor_shape{2, 300, 4, 4},
        bnorm::tensor_shape{4, 37, 2, 4}}) {
    for (const layout l : {layout::channels_first, layout::channels_last}) {
      const geometry g(shape);
      const std::vector<float> x =
          g.tensor<float>(l, [](std::size_t n, std::size_t c, std::size_t s) {
            return static_cast<float>((n * 7 + s * 3 + c) % 5);
          });
      const std::vector<float> dy = g.tensor<float>(
          l, [](std::size_t, std::size_t c, std::size_t) { return static_cast<float>(1 + c % 3); });
      const reference_stats stats = reference_moments(x, shape, l);
      std::vector<float> mean(g.c), inv_std(g.c);
      for (std::size_t c = 0; c < g.c; ++c) {
        mean[c] = static_cast<float>(stats.mean[c]);
        ASSERT_EQ(static_cast<double>(mean[c]), stats.mean[c]) << "an exact mean";
        inv_std[c] = static_cast<float>(1 / std::sqrt(stats.variance[c] + 1e-5));
      }
      const std::vector<float> gamma(g.c, 1.5f);
      const bnorm::plan plan = make(shape, l, bnorm::dtype::f32);
      const auto [got, ref] = against_reference(plan, shape, l, x, dy, gamma, mean, inv_std);
      const std::string name = plan.describe();
      for (std::size_t c = 0; c < g.c; ++c) {
        ASSERT_EQ(ref.dgamma[c], 0.0) << name;
        ASSERT_EQ(got.dgamma[c], 0.0f) << name << " channel " << c;
        ASSERT_EQ(got.dbeta[c], static_cast<float>(ref.dbeta[c])) << name << " channel " << c;
      }
      EXPECT_LE(dx_error(got.dx, ref.dx), 1e-6) << name;
    }
  }
}

// dy constant in a channel: dx is then the remainder of terms of the size of γ·inv_std·dy
// (a mean loss under a loss scale gives dy ≡ scale/count). On data whose sums are exact (x =
// mean ± d, 16 values a channel, dy of few significant bits) the exact dγ and dx are 0: dy
// centered on its mean gives exactly that, where the terms dy·γ·inv_std and −γ·inv_std·Σdy/M,
// each rounded on its own, left their rounding (2^-24 of γ·inv_std·dy) in dx.
template <class T>
void expect_zero_dx_for_constant_dy(const bnorm::plan& plan, const bnorm::tensor_shape& shape,
                                    layout l) {
  const geometry g(shape);
  const std::vector<T> x = g.tensor<T>(l, [&](std::size_t n, std::size_t c, std::size_t s) {
    const double sign = (n * g.spatial + s + c) % 2 ? 1.0 : -1.0;
    return static_cast<T>(1.5 + 0.25 * static_cast<double>(c) + sign * 0.375);
  });
  const std::vector<T> dy = g.tensor<T>(l, [](std::size_t, std::size_t c, std::size_t) {
    return static_cast<T>(65600.0 * static_cast<double>(c + 1));
  });
  const std::vector<T> gamma(g.c, static_cast<T>(1.3));
  const saved_statistics<T> saved = forward_statistics(plan, x, g.c);
  const gradients<T> got = training_gradients(plan, x, dy, gamma, saved);
  for (std::size_t c = 0; c < g.c; ++c) {
    ASSERT_EQ(saved.mean[c], static_cast<T>(1.5 + 0.25 * static_cast<double>(c))) << c;
    EXPECT_EQ(got.dgamma[c], T(0)) << c;
    EXPECT_EQ(got.dbeta[c], static_cast<T>(16 * 65600.0 * static_cast<double>(c + 1))) << c;
  }
  for (std::size_t i = 0; i < got.dx.size(); ++i) {
    ASSERT_EQ(got.dx[i], T(0)) << "element " << i << ", " << plan.describe();
  }
}

TEST_P(Backward, ConstantDyGivesZeroDxWhereTheSumsAreExact) {
  for (const layout l : {layout::channels_first, layout::channels_last}) {
    for (const bnorm::tensor_shape& shape :
         {bnorm::tensor_shape{8, 5, 2}, bnorm::tensor_shape{16, 37},
          bnorm::tensor_shape{1, 40, 4, 4}}) {
      expect_zero_dx_for_constant_dy<float>(make(shape, l, bnorm::dtype::f32), shape, l);
      expect_zero_dx_for_constant_dy<double>(make(shape, l, bnorm::dtype::f64), shape, l);
    }
  }
}

// Two values a channel, close together (1/std of 194), dy close together too (standard-normal
// draws): dx within 1e-6 of its largest value (3.9e-5 with the terms rounded apart).
TEST_P(Backward, TwoCloseValuesAChannel) {
  const bnorm::tensor_shape pair{2, 1};
  const std::vector<float> x = {0.79267019f, 0.784501612f}, dy = {-1.10871899f, -1.10402668f};
  const std::vector<float> gamma = {-2.5032382f};
  const bnorm::plan plan = make(pair, layout::channels_first, bnorm::dtype::f32);
  const saved_statistics<float> saved = forward_statistics(plan, x, 1);
  const gradients<float> got = training_gradients(plan, x, dy, gamma, saved);
  const reference_gradients ref = reference_backward(
      x, dy, pair, layout::channels_first, saved.mean,
      std::vector<double>(saved.inv_std.begin(), saved.inv_std.end()), gamma, true);
  EXPECT_LE(dx_error(got.dx, ref.dx), 1e-6) << got.dx[0] << " for " << ref.dx[0];
}

// Subnormal dy times subnormal x − mean: every float32 product rounds to zero, and a variance of
// 0 with eps 1e-200 gives an inv_std of 1e100, which makes dγ ~1e12 of them: the zero sums are
// summed again, dγ within 1e-6 of Σ|dy·x̂| (each rank's sums before a distributed exchange:
// DistributedBackward.ProductsThatAllRoundToZero).
TEST_P(Backward, ProductsThatAllRoundToZero) {
  for (const layout l : {layout::channels_first, layout::channels_last}) {
    const bnorm::tensor_shape shape{16, 4, 9};
    const geometry g(shape);
    std::vector<float> x = normal_data<float>(g.elements(), 0.0, 4.0, 52);
    std::vector<float> dy = normal_data<float>(g.elements(), 0.0, 4.0, 53);
    for (float& v : x) v = std::round(v) * std::numeric_limits<float>::denorm_min();
    for (float& v : dy) v = std::round(v) * std::numeric_limits<float>::denorm_min();
    const std::vector<float> gamma(g.c, 1.0f), mean(g.c, 0.0f), var(g.c, 0.0f);
    bnorm::plan_options opts;
    opts.max_isa = GetParam();
    opts.update_running_stats = false;
    const bnorm::plan plan = make_plan_or_fail({shape, l, bnorm::dtype::f32, 1e-200}, opts);
    const auto [dx, dgamma, dbeta] =
        all_gradients(plan, statistics::saved_variance, x, dy, gamma, mean, var);
    const std::vector<double> inv(g.c, 1e100);
    const reference_gradients ref = reference_backward(x, dy, shape, l, mean, inv, gamma, true);
    const std::string name = l == layout::channels_first ? "nchw" : "nhwc";
    for (std::size_t c = 0; c < g.c; ++c) ASSERT_GT(ref.abs_dgamma[c], 1e6) << name;
    EXPECT_LE(worst_relative(dgamma, ref.dgamma, ref.abs_dgamma), 1e-6) << name;
    EXPECT_LE(worst_relative(dbeta, ref.dbeta, ref.abs_dbeta), 1e-6) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, Backward, testing::ValuesIn(isas_under_test()), isa_param_name);

// As PyTorch: an empty batch gives an empty dx and zero dγ, dβ.
TEST(BackwardContract, EmptyBatchGivesZeroParameterGradients) {
  const bnorm::plan plan =
      make_plan_or_fail({{0, 3, 4}, layout::channels_first, bnorm::dtype::f32, 1e-5}, {});
  std::vector<float> mean(3, 0.0f), inv(3, 1.0f), dgamma(3, 5.0f), dbeta(3, 5.0f);
  bnorm::backward_args args;
  args.mean = in(mean);
  args.inv_std = in(inv);
  args.diff_scale = out(dgamma);
  args.diff_shift = out(dbeta);
  ASSERT_TRUE(plan.backward_training(args).ok());
  EXPECT_EQ(dgamma, std::vector<float>(3, 0.0f));
  EXPECT_EQ(dbeta, std::vector<float>(3, 0.0f));
}

struct backward_error {
  const char* name;
  void (*mutate)(bnorm::backward_args&, std::vector<float>& x);
  bool frozen;
  const char* expected;  // a part of the message
};

const backward_error backward_errors[] = {
    {"nothing_asked",
     [](bnorm::backward_args& a, std::vector<float>&) {
       a.diff_src = nullptr;
       a.diff_scale = {};
       a.diff_shift = {};
     },
     false, "expected at least one output to compute, got none"},
    {"missing_dy", [](bnorm::backward_args& a, std::vector<float>&) { a.diff_dst = nullptr; },
     false, "diff_dst: expected 720 elements of shape [4, 5, 6, 6], got a null pointer"},
    {"missing_src", [](bnorm::backward_args& a, std::vector<float>&) { a.src = nullptr; }, false,
     "src: expected 720 elements"},
    {"missing_mean", [](bnorm::backward_args& a, std::vector<float>&) { a.mean = {}; }, false,
     "mean: expected 5 values, got a null pointer"},
    {"missing_std", [](bnorm::backward_args& a, std::vector<float>&) { a.inv_std = {}; }, false,
     "inv_std or var: expected 5 values, got a null pointer"},
    {"both_std", [](bnorm::backward_args& a, std::vector<float>&) { a.var = a.inv_std; }, false,
     "inv_std, var: expected one of the two"},
    {"frozen_inv_std", [](bnorm::backward_args& a, std::vector<float>&) { a.var = {}; }, true,
     "inv_std: expected none (backward_frozen takes the running variance in var)"},
    {"frozen_mean_residual",
     [](bnorm::backward_args& a, std::vector<float>&) {
       a.var = a.inv_std;  // the frozen backward's running variance
       a.inv_std = {};
       a.mean_residual = a.mean;
     },
     true,
     "mean_residual: expected none (backward_frozen takes the running mean as it is), got a "
     "buffer"},
    {"residual_without_mean",
     [](bnorm::backward_args& a, std::vector<float>&) {
       a.mean_residual = a.mean;
       a.mean = {};
     },
     false, "mean_residual: expected none without mean (it is the residual of mean)"},
    {"short_mean_residual",
     [](bnorm::backward_args& a, std::vector<float>&) {
       a.mean_residual = a.mean;
       a.mean_residual.size = 4;
     },
     false, "mean_residual: expected 5 values"},
    {"short_mean", [](bnorm::backward_args& a, std::vector<float>&) { a.mean.size = 4; }, false,
     "mean: expected 5 values (one per channel, C = 5), got 4"},
    {"long_dgamma", [](bnorm::backward_args& a, std::vector<float>&) { a.diff_scale.size = 6; },
     false, "diff_scale: expected 5 values"},
    {"dx_overlaps_x",
     [](bnorm::backward_args& a, std::vector<float>& x) { a.diff_src = x.data() + 1; }, false,
     "diff_src: expected memory of its own"},
    {"dgamma_in_dbeta",  // the same five floats (a partial overlap would reach past dβ's)
     [](bnorm::backward_args& a, std::vector<float>&) { a.diff_scale.data = a.diff_shift.data; },
     false, "expected memory of its own"},
    {"misaligned_dy",
     [](bnorm::backward_args& a, std::vector<float>&) {
       a.diff_dst = reinterpret_cast<const char*>(a.diff_dst) + 2;
     },
     false, "diff_dst: expected an address aligned to 4 bytes"},
};

class BackwardErrors : public testing::TestWithParam<backward_error> {};

// Each refused call names the parameter, what was expected and what came, and writes nothing.
TEST_P(BackwardErrors, AreReportedBeforeAnythingIsWritten) {
  const backward_error& e = GetParam();
  const bnorm::tensor_shape shape{4, 5, 6, 6};
  const geometry g(shape);
  const bnorm::plan plan =
      make_plan_or_fail({shape, layout::channels_first, bnorm::dtype::f32, 1e-5}, {});
  std::vector<float> x = normal_data<float>(g.elements() + 8, 0.0, 1.0, 25);
  const auto dy = normal_data<float>(g.elements(), 0.0, 1.0, 26);
  std::vector<float> dx(g.elements(), 9.0f), mean(5, 0.0f), inv(5, 1.0f), dgamma(5, 9.0f),
      dbeta(5, 9.0f);
  bnorm::backward_args args;
  args.src = x.data();
  args.diff_dst = dy.data();
  args.diff_src = dx.data();
  args.mean = in(mean);
  args.inv_std = in(inv);
  args.diff_scale = out(dgamma);
  args.diff_shift = out(dbeta);
  const std::vector<float> x_before = x;
  e.mutate(args, x);
  const bnorm::status st = e.frozen ? plan.backward_frozen(args) : plan.backward_training(args);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), bnorm::status_code::invalid_argument);
  EXPECT_NE(std::string(st.message()).find(e.expected), std::string::npos) << st.message();
  EXPECT_EQ(dx, std::vector<float>(g.elements(), 9.0f));
  EXPECT_EQ(dgamma, std::vector<float>(5, 9.0f));
  EXPECT_EQ(dbeta, std::vector<float>(5, 9.0f));
  EXPECT_EQ(x, x_before);
}

INSTANTIATE_TEST_SUITE_P(Rows, BackwardErrors, testing::ValuesIn(backward_errors),
                         [](const testing::TestParamInfo<backward_error>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
