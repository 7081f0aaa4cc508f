// A model of how far a pivot may sit from its channel's mean before y's float32 error passes
// 1e-6 of max(1, |y|), for the choices in src/kernels/reduce.hpp (row_pivot_samples) and
// src/kernels/kernels.hpp (max_pivot_offset_squared). It replays, in scalar code, what the
// channels-last kernels do for one channel of 98 values (a (2, C, 7, 7) batch; another count
// as the argument): float32 sums of
// d = x − pivot and fma(d, d, q) over blocks of 16 rows flushed into float64, the moments in
// float64, the coefficients rounded to float32 and y = fma(x − center, scale, shift). Data as
// the engine tests draw it: x ~ N(0.5, 2), gamma ~ N(1, 0.5), beta ~ N(0, 1), eps 1e-3.
//
//   g++ -O2 -std=c++17 -ffp-contract=off scripts/pivot_error_model.cpp -o /tmp/pivot_model
//   /tmp/pivot_model            # 98 values: ordinary data and far pivots, about a minute
//   /tmp/pivot_model 1568       # far pivots only, for channels of 1,568 values
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

int values = 98;
constexpr int rows_per_block = 16;

struct channel {
  std::vector<float> x;
  float gamma = 1, beta = 0;
  double mean = 0, variance = 0;  // float64 reference
};

void draw(std::mt19937_64& rng, channel& c) {
  std::normal_distribution<double> x(0.5, 2.0), gamma(1.0, 0.5), beta(0.0, 1.0);
  c.x.resize(values);
  for (auto& v : c.x) v = static_cast<float>(x(rng));
  c.gamma = static_cast<float>(gamma(rng));
  c.beta = static_cast<float>(beta(rng));
  double sum = 0, squares = 0;
  for (float v : c.x) sum += v;
  c.mean = sum / values;
  for (float v : c.x) squares += (v - c.mean) * (v - c.mean);
  c.variance = squares / values;
}

/// The worst |y − y_ref| / max(1, |y_ref|) of the channel normalized from statistics summed
/// around `pivot` (moved to the mean and summed again when farther than `bound` standard
/// deviations).
double y_error(const channel& c, float pivot, double bound) {
  const double eps = 1e-3;
  double mean = 0, variance = 0;
  for (int pass = 0; pass < 2; ++pass) {
    double s64 = 0, q64 = 0;
    for (int first = 0; first < values; first += rows_per_block) {
      float s = 0, q = 0;
      for (int r = first; r < std::min(values, first + rows_per_block); ++r) {
        const float d = c.x[r] - pivot;
        s += d;
        q = std::fmaf(d, d, q);
      }
      s64 += s;
      q64 += q;
    }
    const double offset = s64 / values;
    variance = std::max(0.0, (q64 - s64 * offset) / values);
    mean = static_cast<double>(pivot) + offset;
    if (pass == 0 && offset * offset > bound * bound * variance) {
      pivot = static_cast<float>(mean);
      continue;
    }
    break;
  }
  const double inv_std = 1 / std::sqrt(variance + eps), scale = c.gamma * inv_std;
  const float center = std::fabs(mean) * inv_std <= 0.25 ? 0.f : static_cast<float>(mean);
  const float shift = static_cast<float>(c.beta - (mean - center) * scale);
  const float scale32 = static_cast<float>(scale);
  const double ref_inv_std = 1 / std::sqrt(c.variance + eps);
  double worst = 0;
  for (float v : c.x) {
    const float y = std::fmaf(v - center, scale32, shift);
    const double want = (v - c.mean) * ref_inv_std * c.gamma + c.beta;
    worst = std::max(worst, std::fabs(y - want) / std::max(1.0, std::fabs(want)));
  }
  return worst;
}

/// The mean of `samples` rows spread evenly, as row_pivots takes it.
float spread_pivot(const channel& c, int samples) {
  double differences = 0;
  for (int i = 1; i < samples; ++i) differences += c.x[i * values / samples] - c.x[0];
  return static_cast<float>(c.x[0] + differences / samples);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) values = std::atoi(argv[1]);
  std::mt19937_64 rng(2026);
  channel c;
  if (values == 98) {
    std::printf(
        "Ordinary data, pivot from spread rows, 1.5 sd bound: channels with y error > 1e-6\n");
    const long ordinary = 10'000'000;
    for (int samples : {4, 8}) {
      long failed = 0;
      double worst = 0;
      for (long i = 0; i < ordinary; ++i) {
        draw(rng, c);
        const double e = y_error(c, spread_pivot(c, samples), 1.5);
        worst = std::max(worst, e);
        failed += e > 1e-6;
      }
      std::printf("  %d rows: %ld of %ld, worst %.3g\n", samples, failed, ordinary, worst);
    }
  }
  std::printf(
      "%d values, a pivot t standard deviations from the mean, never moved: channels with y "
      "error > 1e-6\n",
      values);
  const long adversarial = 300'000;
  for (double t : {0.5, 1.0, 1.5, 2.0, 2.5, 3.0}) {
    long failed = 0;
    double worst = 0;
    for (long i = 0; i < adversarial; ++i) {
      draw(rng, c);
      const double e = y_error(c, static_cast<float>(c.mean + t * std::sqrt(c.variance)), INFINITY);
      worst = std::max(worst, e);
      failed += e > 1e-6;
    }
    std::printf("  t = %.1f: %ld of %ld, worst %.3g\n", t, failed, adversarial, worst);
  }
}
