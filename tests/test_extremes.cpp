// The edges of both dtypes: where the exact result is finite in the dtype, bnorm's is finite
// and within the accuracy target (1e-6 of max(1, |y|) for float32, 1e-12 for float64), even
// with values at the largest finite value, a center from which x − center overflows, a scale
// below the normal range, or float64 squares beyond the double range. The reference is long
// double (x86: 64-bit significand, range to 1e4932), from the same input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "support.hpp"

using namespace bnorm_test;
using bnorm::layout;

namespace {

using real = long double;

template <class T>
constexpr double tolerance() {
  return std::is_same<T, float>::value ? 1e-6 : 1e-12;
}

template <class T>
struct channel_reference {
  real mean = 0, variance = 0;  // biased
};

template <class T>
std::vector<channel_reference<T>> long_double_moments(const std::vector<T>& x,
                                                      const bnorm::tensor_shape& shape, layout l) {
  const geometry g(shape);
  std::vector<channel_reference<T>> r(g.c);
  const real count = static_cast<real>(g.n * g.spatial);
  for (std::size_t c = 0; c < g.c; ++c) {
    real sum = 0;
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t s = 0; s < g.spatial; ++s) sum += x[g.offset(l, n, c, s)];
    r[c].mean = sum / count;
    real squares = 0;
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t s = 0; s < g.spatial; ++s) {
        const real d = x[g.offset(l, n, c, s)] - r[c].mean;
        squares += d * d;
      }
    r[c].variance = squares / count;
  }
  return r;
}

/// |got − want| within the target of max(1, |want|), and finite where want is.
template <class T>
void expect_close(T got, real want, const char* what, std::size_t index) {
  const real limit = std::numeric_limits<T>::max();
  if (std::fabs(want) > limit) {
    EXPECT_TRUE(std::isinf(got)) << what << " " << index << ": " << got << " for " << (double)want;
    return;
  }
  ASSERT_TRUE(std::isfinite(got)) << what << " " << index << ": " << got << " for " << (double)want;
  const real error = std::fabs(static_cast<real>(got) - want);
  EXPECT_LE(static_cast<double>(error / std::fmax(1.0L, std::fabs(want))), tolerance<T>())
      << what << " " << index << ": got " << got << ", want " << static_cast<double>(want);
}

/// Relative to |want| itself: for outputs far below 1, where max(1, |y|) would hide a scale
/// rounded to a few bits. A subnormal output holds fewer bits than the target: there, within
/// a few units of the last place.
template <class T>
void expect_relative(T got, real want, const char* what, std::size_t index) {
  const real error = std::fabs(static_cast<real>(got) - want);
  if (std::fabs(want) < std::numeric_limits<T>::min()) {
    EXPECT_LE(static_cast<double>(error), 4 * std::numeric_limits<T>::denorm_min())
        << what << " " << index << ": got " << got << ", want " << static_cast<double>(want);
    return;
  }
  EXPECT_LE(static_cast<double>(error / std::fabs(want)), tolerance<T>())
      << what << " " << index << ": got " << got << ", want " << static_cast<double>(want);
}

class Edges : public testing::TestWithParam<bnorm::isa> {
 protected:
  template <class T>
  bnorm::plan plan(const bnorm::tensor_shape& shape, layout l, double eps = 1e-5) {
    bnorm::plan_options opts;
    opts.max_isa = GetParam();
    opts.momentum = 0.5;
    return make_plan_or_fail({shape, l, dtype_of<T>(), eps}, opts);
  }

  /// Training on x; y, the batch statistics and the running statistics (from mean 0, var 1)
  /// checked against the long double reference.
  template <class T>
  void check_training(const std::vector<T>& x, const bnorm::tensor_shape& shape, layout l,
                      double eps = 1e-5) {
    const geometry g(shape);
    // Outputs start as NaN: one left unwritten fails, also where its reference is near 0.
    const T unwritten = std::numeric_limits<T>::quiet_NaN();
    std::vector<T> y(x.size(), unwritten), mean(g.c, unwritten), inv_std(g.c, unwritten),
        running_mean(g.c, T(0)), running_var(g.c, T(1));
    bnorm::training_args args;
    args.src = x.data();
    args.dst = y.data();
    args.batch_mean = out(mean);
    args.batch_inv_std = out(inv_std);
    args.running_mean = out(running_mean);
    args.running_var = out(running_var);
    const bnorm::status s = plan<T>(shape, l, eps).forward_training(args);
    ASSERT_TRUE(s.ok()) << s.message();
    const auto ref = long_double_moments(x, shape, l);
    const real count = static_cast<real>(g.n * g.spatial);
    for (std::size_t c = 0; c < g.c; ++c) {
      const real inv = 1 / std::sqrt(ref[c].variance + static_cast<real>(eps));
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t sp = 0; sp < g.spatial; ++sp) {
          const std::size_t i = g.offset(l, n, c, sp);
          expect_close<T>(y[i], (x[i] - ref[c].mean) * inv, "y", i);
        }
      // Relative: tiny data's means (2e-160) are far below expect_close's absolute bound.
      expect_relative<T>(mean[c], ref[c].mean, "batch mean", c);
      expect_relative<T>(inv_std[c], inv, "batch inv_std", c);
      expect_relative<T>(running_mean[c], ref[c].mean / 2, "running mean", c);
      expect_close<T>(running_var[c], (ref[c].variance * count / (count - 1) + 1) / 2,
                      "running var", c);
    }
  }

  /// The float64 training backward, eps 0, from the forward's saved statistics: dx against the
  /// float64 reference of the same statistics, relative to its largest value. Its coefficient
  /// of x − mean grows as inv_std³, beyond float64 where the spread is below ~1e-154 and dx is
  /// not (it was inf there).
  void check_backward(const std::vector<double>& x, const bnorm::tensor_shape& shape, layout l) {
    const geometry g(shape);
    const bnorm::plan p = plan<double>(shape, l, 0.0);
    std::vector<double> y(x.size()), mean(g.c), inv_std(g.c);
    bnorm::training_args f;
    f.src = x.data();
    f.dst = y.data();
    f.batch_mean = out(mean);
    f.batch_inv_std = out(inv_std);
    std::vector<double> running_mean(g.c, 0.0), running_var(g.c, 1.0);
    f.running_mean = out(running_mean);
    f.running_var = out(running_var);
    ASSERT_TRUE(p.forward_training(f).ok());
    std::vector<double> dy(x.size());
    for (std::size_t i = 0; i < dy.size(); ++i) dy[i] = static_cast<double>(i % 3) - 0.7 + 0.1 * i;
    std::vector<double> dx(x.size(), std::numeric_limits<double>::quiet_NaN());
    bnorm::backward_args b;
    b.src = x.data();
    b.diff_dst = dy.data();
    b.diff_src = dx.data();
    b.mean = in(mean);
    b.inv_std = in(inv_std);
    const bnorm::status s = p.backward_training(b);
    ASSERT_TRUE(s.ok()) << s.message();
    const reference_gradients ref =
        reference_backward(x, dy, shape, l, mean, inv_std, std::vector<double>{}, true);
    double largest_dx = 0.0, worst = 0.0;
    for (const double v : ref.dx) largest_dx = std::max(largest_dx, std::fabs(v));
    ASSERT_TRUE(std::isfinite(largest_dx) && largest_dx > 0.0);
    for (std::size_t i = 0; i < dx.size(); ++i) {
      ASSERT_TRUE(std::isfinite(dx[i])) << "dx " << i << ": " << dx[i] << " for " << ref.dx[i];
      worst = std::max(worst, std::fabs(dx[i] - ref.dx[i]) / largest_dx);
    }
    EXPECT_LE(worst, 1e-12) << "dx, relative to max |dx|";
  }
};

template <class T>
constexpr T largest = std::numeric_limits<T>::max();

/// Four channels, each a pattern over its values: {M, M, M, −M} (a center from which x − center
/// overflows), ±M alternating (a scale below the normal range), M/2 plus a small spread (a
/// huge center, a normal scale), and ordinary data.
template <class T>
std::vector<T> edge_channels(const bnorm::tensor_shape& shape, layout l) {
  const geometry g(shape);
  std::vector<T> x(g.elements());
  const std::vector<T> ordinary = normal_data<T>(g.elements(), 3.0, 2.0, 7);
  const T m = largest<T>;
  for (std::size_t n = 0; n < g.n; ++n)
    for (std::size_t s = 0; s < g.spatial; ++s) {
      const std::size_t k = n * g.spatial + s;
      for (std::size_t c = 0; c < g.c; ++c) {
        const std::size_t i = g.offset(l, n, c, s);
        switch (c % 4) {
          case 0: x[i] = k % 4 == 3 ? -m : m; break;
          case 1: x[i] = k % 2 ? -m : m; break;
          case 2: x[i] = m / 2 - static_cast<T>(k % 5) * (m / 1024); break;
          default: x[i] = ordinary[i]; break;
        }
      }
    }
  return x;
}

TEST_P(Edges, TrainingAtTheLargestFloat) {
  for (layout l : {layout::channels_first, layout::channels_last}) {
    for (const bnorm::tensor_shape& shape :
         {bnorm::tensor_shape{4, 4}, bnorm::tensor_shape{8, 4, 40},
          bnorm::tensor_shape{2, 36, 300}}) {
      SCOPED_TRACE(shape_name(shape) + (l == layout::channels_last ? " channels_last" : ""));
      check_training<float>(edge_channels<float>(shape, l), shape, l);
    }
  }
}

TEST_P(Edges, TrainingAtTheLargestDouble) {
  for (layout l : {layout::channels_first, layout::channels_last}) {
    for (const bnorm::tensor_shape& shape :
         {bnorm::tensor_shape{4, 4}, bnorm::tensor_shape{8, 4, 40}}) {
      SCOPED_TRACE(shape_name(shape) + (l == layout::channels_last ? " channels_last" : ""));
      check_training<double>(edge_channels<double>(shape, l), shape, l);
    }
  }
}

// float64 data spread beyond ~1e154 squares to infinity in float64: the whole channel turned
// NaN. Its y and 1/std are finite; its variance (1e400) is not, and neither is the reference's.
TEST_P(Edges, DoubleSpreadBeyondTheSquareRange) {
  for (layout l : {layout::channels_first, layout::channels_last}) {
    for (double spread : {1e160, 1e200, 1e300}) {
      const bnorm::tensor_shape shape{16, 3, 5};
      const geometry g(shape);
      std::vector<double> x = normal_data<double>(g.elements(), 0.5, 1.0, 9);
      for (double& v : x) v *= spread;
      SCOPED_TRACE(spread);
      check_training<double>(x, shape, l);
    }
  }
}

// float64 values within ~1e-154 of each other square below the normal range (subnormal, then
// zero): with eps 0 the variance lost its bits (y off by 4e-4 at 1e-160) or vanished (1/std
// infinite, y NaN from 1e-162), where 1/std and y are finite. Summed again exactly, and 1/std
// taken from the scaled variance.
TEST_P(Edges, DoubleSpreadBelowTheSquareRange) {
  for (layout l : {layout::channels_first, layout::channels_last}) {
    for (double spread : {1e-158, 1e-160, 1e-162, 1e-200, 1e-300}) {
      SCOPED_TRACE(spread);
      const double pattern[8] = {1, 3, 1, 3, 2, 2, 1, 3};
      std::vector<double> x(8);
      for (std::size_t i = 0; i < 8; ++i) x[i] = pattern[i] * spread;
      check_training<double>(x, {8, 1}, l, 0.0);
      check_backward(x, {8, 1}, l);
      const bnorm::tensor_shape shape{16, 3, 5};
      std::vector<double> wide = normal_data<double>(geometry(shape).elements(), 0.5, 1.0, 10);
      for (double& v : wide) v *= spread;
      check_training<double>(wide, shape, l, 0.0);
      check_backward(wide, shape, l);
    }
  }
}

// float64 constant channels whose var + eps is below the resum threshold (eps of a subnormal):
// summed again exactly, each channel's mean must still be its value exactly, so that y is
// exactly 0. Found by the fuzzer (twelve copies of -5.7e-29 with eps 4.9e-324: every y was 1,
// the resum's mean an ulp away from the value), `training_f64_constant_channel_resummed`.
TEST_P(Edges, DoubleConstantChannelsSummedAgainGiveZero) {
  const bnorm::tensor_shape shape{1, 5, 12};
  const geometry g(shape);
  const double values[5] = {-5.7e-29, 3.0, 1e-140, 7e200, -0.1};
  for (layout l : {layout::channels_first, layout::channels_last}) {
    for (double eps : {std::numeric_limits<double>::denorm_min(), 1e-300}) {
      const std::vector<double> x =
          g.tensor<double>(l, [&](std::size_t, std::size_t c, std::size_t) { return values[c]; });
      std::vector<double> y(x.size(), -7.0), mean(g.c), running_mean(g.c, 0.0),
          running_var(g.c, 1.0);
      bnorm::training_args args;
      args.src = x.data();
      args.dst = y.data();
      args.batch_mean = out(mean);
      args.running_mean = out(running_mean);
      args.running_var = out(running_var);
      const bnorm::status s = plan<double>(shape, l, eps).forward_training(args);
      ASSERT_TRUE(s.ok()) << s.message();
      for (std::size_t c = 0; c < g.c; ++c) EXPECT_EQ(mean[c], values[c]) << c;
      for (std::size_t i = 0; i < y.size(); ++i) {
        ASSERT_EQ(y[i], 0.0) << "element " << i << ", eps " << eps;
      }
    }
  }
}

// Data built against the pivot bound: the eight rows the pivots come from sit 2.98 standard
// deviations above the mean, the others alternate in runs of 64 rows between two values, so
// that every float32 block of 16 rows rounds its squares alike. With the bound at 3 standard
// deviations for long channels, 1/std was off by 1.26e-6 and y by 1.27e-6; at 2, the pivot
// moves to the mean.
TEST_P(Edges, PivotsBuiltToSitThreeDeviationsOff) {
  const bnorm::tensor_shape shape{8192, 16};
  std::vector<float> x(8192 * 16);
  for (std::size_t r = 0; r < 8192; ++r)
    for (std::size_t c = 0; c < 16; ++c) {
      x[r * 16 + c] =
          r % 1024 == 0 ? 2002.4123535156f : ((r / 64) % 2 ? 1997.0688476562f : 1999.7540283203f);
    }
  check_training<float>(x, shape, layout::channels_last);
}

/// Inference with the given per-channel statistics on x; y against the long double formula.
template <class T>
void check_inference(const bnorm::plan& plan, const std::vector<T>& x,
                     const bnorm::tensor_shape& shape, layout l, const std::vector<T>& mean,
                     const std::vector<T>& var, const std::vector<T>& gamma, bool relative,
                     real eps = 1e-5L) {
  const geometry g(shape);
  std::vector<T> y(x.size());
  bnorm::inference_args args;
  args.src = x.data();
  args.dst = y.data();
  args.mean = in(mean);
  args.var = in(var);
  args.scale = in(gamma);
  const bnorm::status s = plan.forward_inference(args);
  ASSERT_TRUE(s.ok()) << s.message();
  for (std::size_t c = 0; c < g.c; ++c) {
    const real scale = static_cast<real>(gamma[c]) / std::sqrt(static_cast<real>(var[c]) + eps);
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t sp = 0; sp < g.spatial; ++sp) {
        const std::size_t i = g.offset(l, n, c, sp);
        const real want = (static_cast<real>(x[i]) - mean[c]) * scale;
        if (relative && want != 0) {
          expect_relative<T>(y[i], want, "y", i);
        } else {
          expect_close<T>(y[i], want, "y", i);
        }
      }
  }
}

template <class T>
void inference_at_the_edges(const Edges& test, bnorm::isa isa) {
  const T m = largest<T>;
  const T subnormal_gamma = std::numeric_limits<T>::min() / 64;
  for (layout l : {layout::channels_first, layout::channels_last}) {
    // Channels: mean M/2 and var M/4 (x = −M is 3.7e19 standard deviations away, float32);
    // mean −M/2, var M; a scale below T's normal range; and ordinary.
    const bnorm::tensor_shape shape{6, 4, 9};
    const geometry g(shape);
    std::vector<T> x(g.elements());
    const std::vector<T> values = {-m, m, m / 2, -m / 2, T(0), T(1), m / 3, -m / 7, T(-3)};
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = values[(i * 7 + i / 9) % values.size()];
    const std::vector<T> mean = {m / 2, -m / 2, T(2), T(0.5)};
    const std::vector<T> var = {m / 4, m, T(4), T(2)};
    const std::vector<T> gamma = {T(1), T(3), subnormal_gamma, T(-2)};
    bnorm::plan_options opts;
    opts.max_isa = isa;
    const bnorm::plan plan = make_plan_or_fail({shape, l, dtype_of<T>()}, opts);
    SCOPED_TRACE(l == layout::channels_last ? "channels_last" : "channels_first");
    check_inference<T>(plan, x, shape, l, mean, var, gamma, false);
    // A scale below the normal range in every channel, relative to |y| (x up to M makes y
    // normal): without a prescale the scale keeps a few bits.
    const std::vector<T> tiny_gamma(4, subnormal_gamma);
    check_inference<T>(plan, x, shape, l, {T(2), T(-3), T(0.5), T(0)}, {T(4), T(1), T(9), T(0.25)},
                       tiny_gamma, true);
  }
  (void)test;
}

// A scale beyond T (γ = largest/64 over sqrt(eps): 4.9 times T's largest) around means from
// 1/2 to 1000, x within a few ulps of the mean: y = (x − mean)·scale is finite (up to 2.6e35)
// though the scale is not, and the mean times the power of two that brings the scale back
// would overflow; each y within the relative bound, none saturated. Float only: float64
// coefficients are computed in float64, where such a scale overflows (as in PyTorch).
template <class T>
void inference_scale_beyond_the_range(bnorm::isa isa) {
  const T gamma_value = largest<T> / 64;
  const std::vector<T> mean = {T(4), T(-2), T(0.5), T(1000)};
  const std::vector<T> var(4, T(0)), gamma(4, gamma_value);
  for (layout l : {layout::channels_first, layout::channels_last}) {
    const bnorm::tensor_shape shape{3, 4, 9};
    const geometry g(shape);
    std::vector<T> x(g.elements());
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t c = 0; c < g.c; ++c)
        for (std::size_t i = 0; i < g.spatial; ++i) {
          T v = mean[c];
          const int ulps = static_cast<int>((n * g.spatial + i) % 9) - 4;
          for (int k = 0; k < std::abs(ulps); ++k) {
            v = std::nextafter(v, ulps > 0 ? largest<T> : -largest<T>);
          }
          x[g.offset(l, n, c, i)] = v;
        }
    bnorm::plan_options opts;
    opts.max_isa = isa;
    const bnorm::plan plan = make_plan_or_fail({shape, l, dtype_of<T>()}, opts);
    SCOPED_TRACE(l == layout::channels_last ? "channels_last" : "channels_first");
    check_inference<T>(plan, x, shape, l, mean, var, gamma, true);
  }
}

TEST_P(Edges, InferenceScaleBeyondTheFloatRange) {
  inference_scale_beyond_the_range<float>(GetParam());
}

TEST_P(Edges, InferenceAtTheLargestFloat) {
  inference_at_the_edges<float>(*this, GetParam());
}
TEST_P(Edges, InferenceAtTheLargestDouble) {
  inference_at_the_edges<double>(*this, GetParam());
}

// float64 variances and an eps whose sum passes the largest double, each finite: 1/std is still
// finite (about 1e-154), and was 0, with y and the frozen dx 0, returned as ok. Eleven channels:
// a vector of them and a tail on every ISA.
TEST_P(Edges, DoubleVarianceAndEpsilonSummingBeyondTheRange) {
  const double eps = 1e308;
  const bnorm::tensor_shape shape{6, 11, 5};
  const geometry g(shape);
  for (layout l : {layout::channels_first, layout::channels_last}) {
    SCOPED_TRACE(l == layout::channels_last ? "channels_last" : "channels_first");
    std::vector<double> x(g.elements());
    const std::vector<double> ordinary = normal_data<double>(g.elements(), 3.0, 2.0, 9);
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t s = 0; s < g.spatial; ++s)
        for (std::size_t c = 0; c < g.c; ++c) {
          const std::size_t i = g.offset(l, n, c, s);
          const double spread = 1e154 * (1 + c / 64.0);  // variances 1e308 to 1.34e308
          x[i] = c % 3 == 2 ? ordinary[i] : ((n * g.spatial + s) % 2 ? -spread : spread);
        }
    check_training<double>(x, shape, l, eps);
    bnorm::plan_options opts;
    opts.max_isa = GetParam();
    const bnorm::plan plan = make_plan_or_fail({shape, l, bnorm::dtype::f64, eps}, opts);
    std::vector<double> mean(g.c), var(g.c), gamma(g.c);
    for (std::size_t c = 0; c < g.c; ++c) {
      mean[c] = c % 2 ? 1e153 : -2.0;
      var[c] = c % 4 == 0 ? largest<double> : c % 4 == 1 ? 1e308 : c % 4 == 2 ? 7e307 : 1.0;
      gamma[c] = c % 2 ? 1.5 : -0.5;
    }
    check_inference<double>(plan, x, shape, l, mean, var, gamma, false, eps);
    // The frozen backward's dx = dy·γ/sqrt(var + eps), dy = x / 1e154.
    std::vector<double> dy(x.size()), dx(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) dy[i] = x[i] / 1e154;
    bnorm::backward_args back;
    back.src = x.data();
    back.diff_dst = dy.data();
    back.diff_src = dx.data();
    back.scale = in(gamma);
    back.mean = in(mean);
    back.var = in(var);
    ASSERT_TRUE(plan.backward_frozen(back).ok());
    for (std::size_t c = 0; c < g.c; ++c) {
      const real scale = static_cast<real>(gamma[c]) /
                         std::sqrt(static_cast<real>(var[c]) + static_cast<real>(eps));
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t s = 0; s < g.spatial; ++s) {
          const std::size_t i = g.offset(l, n, c, s);
          const real want = static_cast<real>(dy[i]) * scale;
          if (want != 0) expect_relative<double>(dx[i], want, "frozen dx", i);
        }
    }
  }
}

/// Values in a storage type (float32, float64, or bfloat16/float16 bits) and back to double.
struct stored_values {
  bnorm::dtype d;
  std::vector<float> f32;
  std::vector<double> f64;
  std::vector<std::uint16_t> half;

  stored_values(bnorm::dtype type, const std::vector<double>& values) : d(type) {
    for (const double v : values) {
      const float f = static_cast<float>(v);
      f32.push_back(f);
      f64.push_back(v);
      half.push_back(d == bnorm::dtype::bf16 ? bnorm::bfloat16::from_float(f).bits
                                             : bnorm::float16::from_float(f).bits);
    }
  }
  void* data() {
    return d == bnorm::dtype::f32   ? static_cast<void*>(f32.data())
           : d == bnorm::dtype::f64 ? static_cast<void*>(f64.data())
                                    : static_cast<void*>(half.data());
  }
  double at(std::size_t i) const {
    switch (d) {
      case bnorm::dtype::f32: return f32[i];
      case bnorm::dtype::f64: return f64[i];
      case bnorm::dtype::bf16: return bnorm::bfloat16{half[i]}.to_float();
      case bnorm::dtype::f16: break;
    }
    return bnorm::float16{half[i]}.to_float();
  }
};

const bnorm::dtype every_dtype[] = {bnorm::dtype::f32, bnorm::dtype::f64, bnorm::dtype::bf16,
                                    bnorm::dtype::f16};

/// Per-channel parameters as the dtype takes them (float32 for the half types).
bnorm::channel_input parameters(bnorm::dtype d, const std::vector<double>& f64,
                                std::vector<float>& f32) {
  f32.assign(f64.begin(), f64.end());
  return d == bnorm::dtype::f64 ? in(f64) : in(f32);
}

// An infinite running mean is y = ∓inf, an infinite γ y = ±inf wherever x is not the mean (as
// stored: a mean that T does not hold gives NaN at its rounding), as (x − mean)·γ/sqrt(var +
// eps) + β is: the whole channel was NaN (inf − inf in the mean's
// rounding, 0·inf in the shift). Nine channels (a vector of them and one more on every ISA),
// the last ordinary: an extreme channel sends the call through the scalar coefficients, which
// give the ordinary one its usual value.
TEST_P(Edges, InfiniteMeansAndGammasGiveInfinitiesNotNan) {
  const double inf = std::numeric_limits<double>::infinity();
  const bnorm::tensor_shape shape{3, 9, 5};
  const geometry g(shape);
  std::vector<double> mean(g.c), var(g.c, 1.0), gamma(g.c, 1.0), beta(g.c, 0.25);
  for (std::size_t c = 0; c < 8; ++c) {
    mean[c] = c % 4 == 0 ? inf : c % 4 == 1 ? -inf : 0.5;
    if (c % 4 >= 2) gamma[c] = c % 4 == 2 ? inf : -inf;
  }
  mean[8] = 0.25;
  var[8] = 2.0;
  gamma[8] = 1.5;
  for (const bnorm::dtype d : every_dtype) {
    for (layout l : {layout::channels_first, layout::channels_last}) {
      SCOPED_TRACE(std::string(bnorm::to_string(d)) +
                   (l == layout::channels_last ? " channels_last" : " channels_first"));
      std::vector<double> xs(g.elements());
      for (std::size_t i = 0; i < xs.size(); ++i) {
        xs[i] = static_cast<double>(static_cast<int>(i * 7 % 13) - 6) / 4 + 0.125;  // not 0.5
      }
      stored_values x(d, xs), y(d, std::vector<double>(xs.size(), 0.0));
      bnorm::plan_options opts;
      opts.max_isa = GetParam();
      const bnorm::plan plan = make_plan_or_fail({shape, l, d}, opts);
      std::vector<float> mean32, var32, gamma32, beta32;
      bnorm::inference_args args;
      args.src = x.data();
      args.dst = y.data();
      args.mean = parameters(d, mean, mean32);
      args.var = parameters(d, var, var32);
      args.scale = parameters(d, gamma, gamma32);
      args.shift = parameters(d, beta, beta32);
      const bnorm::status s = plan.forward_inference(args);
      ASSERT_TRUE(s.ok()) << s.message();
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t c = 0; c < g.c; ++c)
          for (std::size_t sp = 0; sp < g.spatial; ++sp) {
            const std::size_t i = g.offset(l, n, c, sp);
            const double got = y.at(i), xi = x.at(i);
            if (c == 8) {
              // The ordinary channel: within about half an ulp of the storage type (bf16 2^-8,
              // f16 2^-11, relative to max(1, |y|)).
              const double want = (xi - 0.25) * 1.5 / std::sqrt(2.0 + 1e-5) + 0.25;
              const double bound = d == bnorm::dtype::f64    ? 1e-12
                                   : d == bnorm::dtype::f32  ? 1e-6
                                   : d == bnorm::dtype::bf16 ? 4e-3
                                                             : 5e-4;
              EXPECT_NEAR(got, want, bound * std::max(1.0, std::fabs(want))) << i;
            } else if (c % 4 < 2) {
              EXPECT_EQ(got, c % 4 == 0 ? -inf : inf) << "channel " << c << " at " << i;
            } else {
              EXPECT_EQ(got, (xi > 0.5) == (c % 4 == 2) ? inf : -inf)
                  << "channel " << c << " x " << xi;
            }
          }
    }
  }
}

// Training with γ = ±inf: y = ±inf by the side of the batch mean x is on (the values {0, 1, 2,
// 4} a channel: the mean 1.75 is no value's), where the shift's share of the mean's rounding
// was 0·inf or an infinity that cancelled x − center's into NaN.
TEST_P(Edges, TrainingWithAnInfiniteGammaGivesInfinities) {
  const double inf = std::numeric_limits<double>::infinity();
  const bnorm::tensor_shape shape{2, 9, 2};
  const geometry g(shape);
  const double values[] = {0.0, 1.0, 2.0, 4.0};
  std::vector<double> gamma(g.c, inf);
  for (std::size_t c = 1; c < g.c; c += 2) gamma[c] = -inf;
  for (const bnorm::dtype d : every_dtype) {
    for (layout l : {layout::channels_first, layout::channels_last}) {
      SCOPED_TRACE(std::string(bnorm::to_string(d)) +
                   (l == layout::channels_last ? " channels_last" : " channels_first"));
      std::vector<double> xs(g.elements());
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t c = 0; c < g.c; ++c)
          for (std::size_t sp = 0; sp < g.spatial; ++sp) {
            xs[g.offset(l, n, c, sp)] = values[(n * g.spatial + sp + c) % 4];
          }
      stored_values x(d, xs), y(d, std::vector<double>(xs.size(), 0.0));
      bnorm::plan_options opts;
      opts.max_isa = GetParam();
      opts.update_running_stats = false;
      const bnorm::plan plan = make_plan_or_fail({shape, l, d}, opts);
      std::vector<float> gamma32;
      bnorm::training_args args;
      args.src = x.data();
      args.dst = y.data();
      args.scale = parameters(d, gamma, gamma32);
      const bnorm::status s = plan.forward_training(args);
      ASSERT_TRUE(s.ok()) << s.message();
      for (std::size_t n = 0; n < g.n; ++n)
        for (std::size_t c = 0; c < g.c; ++c)
          for (std::size_t sp = 0; sp < g.spatial; ++sp) {
            const std::size_t i = g.offset(l, n, c, sp);
            EXPECT_EQ(y.at(i), (xs[i] > 1.75) == (c % 2 == 0) ? inf : -inf) << c << " " << i;
          }
    }
  }
}

/// Per-channel outputs as the dtype writes them (float32 for the half types), read as double.
struct channel_values {
  std::vector<float> f32;
  std::vector<double> f64;
  channel_values(std::size_t channels, double value)
      : f32(channels, static_cast<float>(value)), f64(channels, value) {}
  bnorm::channel_output out(bnorm::dtype d) {
    return d == bnorm::dtype::f64 ? bnorm_test::out(f64) : bnorm_test::out(f32);
  }
  double at(bnorm::dtype d, std::size_t c) const {
    return d == bnorm::dtype::f64 ? f64[c] : f32[c];
  }
};

// One infinity in a channel's values makes that infinity its batch mean and (momentum 0.1 from
// 0) its running mean, as PyTorch's sums do, its variance, 1/std and y NaN; the mean's residual
// is 0 (the mean is its own rounding). Both were NaN. Every dtype, layout and statistics path
// (tiny tensors, planes, rows, one image's short planes).
TEST_P(Edges, AnInfinityOfOneSignIsItsChannelsMean) {
  const double inf = std::numeric_limits<double>::infinity();
  for (const bnorm::tensor_shape& shape :
       {bnorm::tensor_shape{2, 5, 3}, bnorm::tensor_shape{4, 5, 300},
        bnorm::tensor_shape{1, 9, 7, 7}}) {
    const geometry g(shape);
    for (const bnorm::dtype d : every_dtype) {
      for (layout l : {layout::channels_first, layout::channels_last}) {
        for (const double bad : {inf, -inf}) {
          SCOPED_TRACE(shape_name(shape) + " " + bnorm::to_string(d) +
                       (l == layout::channels_last ? " channels_last " : " channels_first ") +
                       std::to_string(bad));
          std::vector<double> xs = normal_data<double>(g.elements(), 1.0, 2.0, 5);
          xs[g.offset(l, g.n - 1, 3, g.spatial / 2)] = bad;
          stored_values x(d, xs), y(d, std::vector<double>(xs.size(), 0.0));
          bnorm::plan_options opts;
          opts.max_isa = GetParam();
          const bnorm::plan plan = make_plan_or_fail({shape, l, d}, opts);
          channel_values mean(g.c, 7.0), residual(g.c, 7.0), inv_std(g.c, 7.0),
              running_mean(g.c, 0.0), running_var(g.c, 1.0);
          bnorm::training_args args;
          args.src = x.data();
          args.dst = y.data();
          args.batch_mean = mean.out(d);
          args.batch_mean_residual = residual.out(d);
          args.batch_inv_std = inv_std.out(d);
          args.running_mean = running_mean.out(d);
          args.running_var = running_var.out(d);
          const bnorm::status s = plan.forward_training(args);
          ASSERT_TRUE(s.ok()) << s.message();
          for (std::size_t c = 0; c < g.c; ++c) {
            if (c != 3) {
              EXPECT_TRUE(std::isfinite(mean.at(d, c)) && std::isfinite(residual.at(d, c)) &&
                          std::isfinite(running_mean.at(d, c)))
                  << c;
              continue;
            }
            EXPECT_EQ(mean.at(d, c), bad);
            EXPECT_EQ(running_mean.at(d, c), bad);
            EXPECT_EQ(residual.at(d, c), 0.0);
            EXPECT_TRUE(std::isnan(inv_std.at(d, c)));
            EXPECT_TRUE(std::isnan(running_var.at(d, c)));
            for (std::size_t n = 0; n < g.n; ++n)
              for (std::size_t sp = 0; sp < g.spatial; ++sp) {
                EXPECT_TRUE(std::isnan(y.at(g.offset(l, n, c, sp)))) << n << " " << sp;
              }
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, Edges, testing::ValuesIn(isas_under_test()), isa_param_name);

}  // namespace
