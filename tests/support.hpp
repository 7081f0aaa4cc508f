// Test support: replicable random data, a float64 reference batch norm, and engine helpers.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "aligned64.hpp"
#include "bnorm/bnorm.hpp"

namespace bnorm_test {

using bnorm_bench::aligned_vector;

/// Seeded from --gtest_random_seed so that a failure can be replayed.
inline std::mt19937_64 make_rng(std::uint64_t salt = 0) {
  const int seed = testing::UnitTest::GetInstance()->random_seed();
  return std::mt19937_64(static_cast<std::uint64_t>(seed) * 0x9E3779B97F4A7C15ull + salt);
}

/// Prints the data seed before the tests: without --gtest_random_seed it comes from the clock,
/// and a failure in ctest's output is only replayable with it.
struct seed_report : testing::Environment {
  void SetUp() override {
    const int seed = testing::UnitTest::GetInstance()->random_seed();
    std::printf("Test data seed %d (replay with --gtest_random_seed=%d)\n", seed, seed);
  }
};
inline testing::Environment* const seed_report_environment =
    testing::AddGlobalTestEnvironment(new seed_report);

template <class T>
std::vector<T> normal_data(std::size_t count, double mean, double stddev, std::uint64_t salt) {
  auto rng = make_rng(salt);
  std::normal_distribution<double> dist(mean, stddev);
  std::vector<T> out(count);
  for (auto& v : out) v = static_cast<T>(dist(rng));
  return out;
}

struct geometry {
  std::size_t n = 0, c = 0, spatial = 1;
  explicit geometry(const bnorm::tensor_shape& shape)
      : n(static_cast<std::size_t>(shape[0])), c(static_cast<std::size_t>(shape[1])) {
    for (std::size_t d = 2; d < shape.rank(); ++d) spatial *= static_cast<std::size_t>(shape[d]);
  }
  std::size_t elements() const { return n * c * spatial; }
  std::size_t offset(bnorm::layout l, std::size_t in, std::size_t ic, std::size_t is) const {
    return l == bnorm::layout::channels_first ? (in * c + ic) * spatial + is
                                              : (in * spatial + is) * c + ic;
  }
  /// A tensor of this shape in layout l whose element (n, c, s) is value(n, c, s).
  template <class T, class Value>
  std::vector<T> tensor(bnorm::layout l, const Value& value) const {
    std::vector<T> out(elements());
    for (std::size_t in = 0; in < n; ++in)
      for (std::size_t ic = 0; ic < c; ++ic)
        for (std::size_t is = 0; is < spatial; ++is) out[offset(l, in, ic, is)] = value(in, ic, is);
    return out;
  }
};

struct reference_stats {
  std::vector<double> mean, variance;  // biased
};

/// Two-pass float64 statistics of the same (possibly float32) input.
template <class T>
reference_stats reference_moments(const std::vector<T>& x, const bnorm::tensor_shape& shape,
                                  bnorm::layout l) {
  const geometry g(shape);
  reference_stats r{std::vector<double>(g.c, 0.0), std::vector<double>(g.c, 0.0)};
  const double count = static_cast<double>(g.n * g.spatial);
  for (std::size_t c = 0; c < g.c; ++c) {
    long double sum = 0;
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t s = 0; s < g.spatial; ++s) sum += x[g.offset(l, n, c, s)];
    const double mean = static_cast<double>(sum / count);
    long double sq = 0;
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t s = 0; s < g.spatial; ++s) {
        const long double d = static_cast<long double>(x[g.offset(l, n, c, s)]) - mean;
        sq += d * d;
      }
    r.mean[c] = mean;
    r.variance[c] = static_cast<double>(sq / count);
  }
  return r;
}

/// y = (x - mean)/sqrt(var + eps)·gamma + beta in float64 (gamma, beta may be empty).
template <class T>
std::vector<double> reference_normalize(const std::vector<T>& x, const bnorm::tensor_shape& shape,
                                        bnorm::layout l, const std::vector<double>& mean,
                                        const std::vector<double>& variance, double eps,
                                        const std::vector<T>& gamma, const std::vector<T>& beta) {
  const geometry g(shape);
  std::vector<double> y(x.size());
  for (std::size_t c = 0; c < g.c; ++c) {
    const double inv = 1.0 / std::sqrt(variance[c] + eps);
    const double w = gamma.empty() ? 1.0 : static_cast<double>(gamma[c]);
    const double b = beta.empty() ? 0.0 : static_cast<double>(beta[c]);
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t s = 0; s < g.spatial; ++s) {
        const std::size_t i = g.offset(l, n, c, s);
        y[i] = (static_cast<double>(x[i]) - mean[c]) * inv * w + b;
      }
  }
  return y;
}

/// worst = max(worst, error), a NaN error kept (std::max(worst, NaN) would drop it): a
/// result that is NaN must fail the bound that the worst error is checked against.
inline void keep_worst(double& worst, double error) {
  if (!(error <= worst)) worst = error;
}

template <class Vector>
double max_abs_error(const Vector& got, const std::vector<double>& want) {
  double worst = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    keep_worst(worst, e);
  }
  return worst;
}

/// The reference gradients, and the magnitudes the targets are relative to.
struct reference_gradients {
  std::vector<double> dx, dgamma, dbeta;
  std::vector<double> abs_dgamma, abs_dbeta;  // Σ|dy·x̂|, Σ|dy|
  /// Per element, |γ·inv|·(|dy| + |dβ|/M + |x̂·dγ|/M): the size of the terms whose sum dx is.
  /// Where they cancel (a channel of a few nearly equal samples), a T evaluation of dx errs by
  /// a few roundings of them, not of dx.
  std::vector<double> dx_terms;
};

/// With x̂ = (x − mean)·inv_std: dβ = Σdy, dγ = Σdy·x̂; training dx = γ·inv·(dy − dβ/M −
/// x̂·dγ/M), frozen dx = γ·inv·dy. mean and inv_std as the call takes them (rounded to T).
template <class T>
reference_gradients reference_backward(const std::vector<T>& x, const std::vector<T>& dy,
                                       const bnorm::tensor_shape& shape, bnorm::layout l,
                                       const std::vector<T>& mean, const std::vector<double>& inv,
                                       const std::vector<T>& gamma, bool training) {
  const geometry g(shape);
  reference_gradients r;
  r.dx.assign(x.size(), 0.0);
  r.dx_terms.assign(x.size(), 0.0);
  r.dgamma.assign(g.c, 0.0);
  r.dbeta.assign(g.c, 0.0);
  r.abs_dgamma.assign(g.c, 0.0);
  r.abs_dbeta.assign(g.c, 0.0);
  const double count = static_cast<double>(g.n * g.spatial);
  for (std::size_t c = 0; c < g.c; ++c) {
    long double s1 = 0, s2 = 0, a1 = 0, a2 = 0;
    const auto xhat = [&](std::size_t i) {
      return (static_cast<long double>(x[i]) - static_cast<long double>(mean[c])) * inv[c];
    };
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t s = 0; s < g.spatial; ++s) {
        const std::size_t i = g.offset(l, n, c, s);
        s1 += dy[i];
        s2 += dy[i] * xhat(i);
        a1 += std::fabs(static_cast<long double>(dy[i]));
        a2 += std::fabs(dy[i] * xhat(i));
      }
    r.dbeta[c] = static_cast<double>(s1);
    r.dgamma[c] = static_cast<double>(s2);
    r.abs_dbeta[c] = static_cast<double>(a1);
    r.abs_dgamma[c] = static_cast<double>(a2);
    const long double k = (gamma.empty() ? 1.0L : gamma[c]) * static_cast<long double>(inv[c]);
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t s = 0; s < g.spatial; ++s) {
        const std::size_t i = g.offset(l, n, c, s);
        const long double v =
            training ? k * (dy[i] - s1 / count - xhat(i) * s2 / count) : k * dy[i];
        r.dx[i] = static_cast<double>(v);
        const long double terms =
            std::fabs(static_cast<long double>(dy[i])) +
            (training ? std::fabs(s1 / count) + std::fabs(xhat(i) * s2 / count) : 0.0L);
        r.dx_terms[i] = static_cast<double>(std::fabs(k) * terms);
      }
  }
  return r;
}

template <class T>
constexpr bnorm::dtype dtype_of() {
  return sizeof(T) == sizeof(float) ? bnorm::dtype::f32 : bnorm::dtype::f64;
}

template <class T>
bnorm::channel_input in(const std::vector<T>& v) {
  return v.empty() ? bnorm::channel_input{} : bnorm::channel_input{v.data(), v.size()};
}
template <class T>
bnorm::channel_output out(std::vector<T>& v) {
  return v.empty() ? bnorm::channel_output{} : bnorm::channel_output{v.data(), v.size()};
}

inline bnorm::plan make_plan_or_fail(const bnorm::problem& prob, const bnorm::plan_options& opts) {
  bnorm::plan p;
  const bnorm::status s = bnorm::make_plan(prob, opts, &p);
  EXPECT_TRUE(s.ok()) << s.message();
  return p;
}

inline std::string shape_name(const bnorm::tensor_shape& s) {
  std::string out;
  for (std::size_t i = 0; i < s.rank(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
  return out;
}

/// The ISAs under test: every one the CPU has.
inline std::vector<bnorm::isa> isas_under_test() {
  return bnorm::available_isas();
}

inline std::string isa_param_name(const testing::TestParamInfo<bnorm::isa>& info) {
  return bnorm::to_string(info.param);
}

/// The message of the bnorm::error `call` throws; a test failure (and "") if it throws none.
template <class Call>
std::string error_message(Call&& call) {
  try {
    call();
  } catch (const bnorm::error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a bnorm::error";
  return "";
}

/// Whether `text` contains `part` (for EXPECT_TRUE with the text in its message).
inline bool contains(const std::string& text, const char* part) {
  return text.find(part) != std::string::npos;
}

}  // namespace bnorm_test
