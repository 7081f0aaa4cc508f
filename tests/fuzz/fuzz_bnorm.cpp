// libFuzzer target: arbitrary ranks, dims, layouts, options, parameters and data (NaN, Inf,
// denormals, huge and tiny values) through the engine API, and calls that break the buffer
// contract (overlapping buffers, pointers misaligned for their element, step counters at their
// edges, scratch without data). Checks that nothing crashes, that every call the contract
// refuses is refused, that every rejection is a clean status that leaves every buffer
// untouched, and that every accepted call matches a float64 reference. Then a backward call
// (training or frozen, any output mask, statistics from the forward or arbitrary, some breaching
// the contract) under the same checks; last, an inference call with an activation (in every
// dtype, bf16 and f16 included) and, for float32 and float64, a backward through its mask and a
// training call through it.
//
//   scripts/fuzz.sh 60        (clang-14, ASan + UBSan, the committed seed corpus)
#include <fuzzer/FuzzedDataProvider.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "bnorm/bnorm.hpp"

// Without its fake stack, clang's AddressSanitizer misaligns 64-byte arguments passed by value
// (LLVM issue 91565): an AVX-512 vector among them faults on its aligned store. bnorm's kernels
// pass none (map.hpp's note on outputs), and the fuzzer runs without the fake stack so that one
// passed again faults here (the corpus's `inference_add_relu_streamed_rows` did, in stream_run).
extern "C" const char* __asan_default_options() {
  return "detect_stack_use_after_return=0";
}

namespace {

[[noreturn]] void fail(const char* what, const bnorm::status& s) {
  std::fprintf(stderr, "bnorm fuzz: %s (status %s: %s)\n", what, bnorm::to_string(s.code()),
               s.message());
  std::abort();
}

/// Whether a buffer holds the same bytes as its copy made before a call (NaN-safe): a
/// rejected call must leave every buffer so.
template <class V>
bool same(const V& a, const V& b) {
  return a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
}

template <class T>
T next_value(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 0: return std::numeric_limits<T>::quiet_NaN();
    case 1: return std::numeric_limits<T>::infinity() * (in.ConsumeBool() ? 1 : -1);
    case 2: return std::numeric_limits<T>::denorm_min() * in.ConsumeIntegralInRange<int>(-9, 9);
    case 3: return static_cast<T>(in.ConsumeFloatingPointInRange<double>(-1e30, 1e30));
    case 4: return static_cast<T>(1e-30 * in.ConsumeIntegralInRange<int>(-100, 100));
    default:
      return static_cast<T>(in.ConsumeFloatingPointInRange<double>(-4, 4) +
                            in.ConsumeIntegralInRange<int>(-3, 3) * 1000.0);
  }
}

template <class T>
std::vector<T> values(FuzzedDataProvider& in, std::size_t n) {
  std::vector<T> v(n);
  for (T& x : v) x = next_value<T>(in);
  return v;
}

inline double as_double(float v) {
  return v;
}
inline double as_double(double v) {
  return v;
}
inline double as_double(bnorm::bfloat16 v) {
  return v.to_float();
}
inline double as_double(bnorm::float16 v) {
  return v.to_float();
}

struct geometry {
  std::size_t n = 0, c = 0, s = 1;
  explicit geometry(const bnorm::problem& prob)
      : n(static_cast<std::size_t>(prob.shape[0])), c(static_cast<std::size_t>(prob.shape[1])) {
    for (std::size_t d = 2; d < prob.shape.rank(); ++d)
      s *= static_cast<std::size_t>(prob.shape[d]);
  }
  std::size_t at(bnorm::layout l, std::size_t in, std::size_t ic, std::size_t is) const {
    return l == bnorm::layout::channels_first ? (in * c + ic) * s + is : (in * s + is) * c + ic;
  }
};

/// Channel c's mean and biased variance in float64 (long double sums), corrected two-pass, from
/// x as stored: the training reference.
struct reference_moments {
  double mean = 0.0, var = 0.0;
  template <class S>
  reference_moments(const std::vector<S>& x, const geometry& g, bnorm::layout l, std::size_t c) {
    long double total = 0;
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t i = 0; i < g.s; ++i) total += as_double(x[g.at(l, n, c, i)]);
    // The squares around the long double mean, less the square of their mean deviation (the
    // corrected two-pass): around a rounded mean they carry its rounding squared, which for
    // values a few float64 ulps apart is a share of the variance itself (eleven 4s and
    // 3.9999999999999885: 2.7e-4 of 1/std around the long double mean).
    const long double count = static_cast<long double>(g.n * g.s);
    const long double rounded_mean = total / count;
    mean = static_cast<double>(rounded_mean);
    long double sq = 0, deviation = 0;
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t i = 0; i < g.s; ++i) {
        const long double d = as_double(x[g.at(l, n, c, i)]) - rounded_mean;
        deviation += d;
        sq += d * d;
      }
    var = static_cast<double>((sq - deviation * deviation / count) / count);
  }
};

/// The largest |γ·inv_std| the training and inference checks take for compute type T: beyond
/// 2^127 times float's range float32 saturates, beyond double's range float64's coefficient
/// math overflows (both documented); within, a prescale brings the scale back.
template <class T>
double checked_scale_limit() {
  return std::is_same_v<T, float> ? std::ldexp(static_cast<double>(FLT_MAX), 127)
                                  : std::numeric_limits<double>::max();
}

/// Channel c's float64 training reference: the moments of x, inv = 1/sqrt(var + eps), w = γ
/// and b = β (1 and 0 where the call passes none: null).
struct reference_channel {
  double mean = 0.0, var = 0.0, inv = 0.0, w = 1.0, b = 0.0;
  template <class S, class P>
  reference_channel(const std::vector<S>& x, const geometry& g, const bnorm::problem& prob,
                    std::size_t c, const P* gamma, const P* beta) {
    const reference_moments moments(x, g, prob.layout, c);
    mean = moments.mean;
    var = moments.var;
    inv = 1.0 / std::sqrt(var + prob.epsilon);
    if (gamma) w = static_cast<double>(gamma[c]);
    if (beta) b = static_cast<double>(beta[c]);
  }
  /// Whether its outputs are checked: a finite channel whose |w·inv| is within `scale_limit`
  /// (checked_scale_limit); any output of a non-finite channel is PyTorch's answer too.
  bool checked(double scale_limit) const {
    return !(!std::isfinite(mean) || !std::isfinite(inv) || !std::isfinite(w) ||
             !std::isfinite(b) || var > 1e300 || std::fabs(w * inv) > scale_limit);
  }
};

/// A plan's activation on float64 values, its clamp bounds as the dtype T holds them (the
/// forward clamps with those): lo < y < hi is also the backward's mask (ReLU: 0 and +inf).
struct activation_reference {
  double lo = 0.0, hi = std::numeric_limits<double>::infinity();
  bool identity = true;
  bool clamps_below = true, clamps_above = false;  // ReLU's

  template <class T>
  static activation_reference of(const bnorm::plan_options& opts) {
    activation_reference a;
    a.identity = opts.activation == bnorm::activation::none;
    if (opts.activation == bnorm::activation::clamp) {
      a.lo = static_cast<double>(static_cast<T>(opts.clamp_min));
      a.hi = static_cast<double>(static_cast<T>(opts.clamp_max));
      a.clamps_below = opts.clamp_min != -HUGE_VAL;  // +inf below clamps every output
      a.clamps_above = opts.clamp_max != HUGE_VAL;
    }
    return a;
  }
  double apply(double v) const { return identity ? v : std::fmin(std::fmax(v, lo), hi); }
  /// lo < y < hi; a bound given as its side's infinity clamps nothing there (ReLU's y = +inf
  /// passes), a finite one that T holds as an infinity masks y there (the clamped outputs); a NaN y
  /// passes nothing.
  bool passes(double y) const {
    return (y > lo || (!clamps_below && y == y)) && (y < hi || !clamps_above);
  }
};

// Tolerance of a float result next to the float64 reference: a few rounding steps of the
// values involved, x − mean normalized among them (the kernels subtract a center near the mean
// before they scale, so the error does not grow with |mean|·inv_std: the cancellation that the
// center removes may not hide in the bound), and the rounding of the mean to float64 (the
// reference's, and float64 data's own in the kernels), times inv_std: values a few float64 ulps
// apart (−1001.3 with var 4.3e-24) have y off by up to 2^-53·|mean|·inv_std in either. Not for
// a constant channel (var 0): there x − mean is exactly 0 in both, and so is y.
template <class T>
double tolerance(double ref, double x, double mean, double inv_std, double var) {
  const double eps = std::numeric_limits<T>::epsilon();
  const double mean_rounding =
      var > 0.0 ? 2 * std::numeric_limits<double>::epsilon() * std::fabs(mean) * inv_std : 0.0;
  return 64 * eps * (1 + std::fabs(ref) + std::fabs(x - mean) * inv_std) + mean_rounding;
}

template <class T>
void run_backward(FuzzedDataProvider& in, const bnorm::plan& plan, const bnorm::problem& prob,
                  const std::vector<T>& x, std::vector<T> mean, std::vector<T> inv_std,
                  const std::vector<T>& y = {});

template <class T>
void run(FuzzedDataProvider& in, const bnorm::plan& plan, const bnorm::problem& prob) {
  const geometry g(prob);
  const std::size_t count = g.n * g.c * g.s;
  const std::vector<T> x = values<T>(in, count);
  const std::vector<T> gamma = values<T>(in, g.c), beta = values<T>(in, g.c);
  std::vector<T> running_mean = values<T>(in, g.c), running_var = values<T>(in, g.c);
  running_mean.push_back(T(0));  // room for a batch mean placed one value into it
  std::vector<T> y(count, T(-7)), mean(g.c, T(-8)), inv_std(g.c, T(-9));
  std::int64_t tracked = in.ConsumeIntegralInRange<std::int64_t>(0, 5);
  // A copy of x one element longer, to misalign within: the bytes at an odd offset.
  std::vector<unsigned char> shifted_bytes((count + 1) * sizeof(T));
  std::vector<unsigned char> shifted_gamma((g.c + 1) * sizeof(T));

  bnorm::training_args args;
  args.src = in.ConsumeIntegralInRange<int>(0, 20) == 0 ? nullptr : x.data();
  args.dst = in.ConsumeIntegralInRange<int>(0, 20) == 0 ? nullptr : y.data();
  const auto size = [&](std::size_t c) {
    return in.ConsumeIntegralInRange<int>(0, 10) == 0 ? c + 1 : c;  // sometimes wrong
  };
  if (in.ConsumeBool()) args.scale = {gamma.data(), size(g.c)};
  if (in.ConsumeBool()) args.shift = {beta.data(), size(g.c)};
  if (in.ConsumeBool()) args.batch_mean = {mean.data(), size(g.c)};
  if (in.ConsumeBool()) args.batch_inv_std = {inv_std.data(), size(g.c)};
  if (in.ConsumeIntegralInRange<int>(0, 10) != 0) {
    args.running_mean = {running_mean.data(), size(g.c)};
    args.running_var = {running_var.data(), size(g.c)};
  }
  if (in.ConsumeIntegralInRange<int>(0, 10) != 0) args.num_batches_tracked = &tracked;

  // Breaches of the buffer contract (plan.hpp), each refused whatever else the call holds.
  const bool updates = plan.options().update_running_stats;
  bool must_refuse = false;
  std::vector<T> x_in_place;  // dst == src: the reference reads this copy
  switch (in.ConsumeIntegralInRange<int>(0, 14)) {
    case 0:  // in place: allowed
      if (args.src && args.dst) {
        x_in_place = x;
        y = x;
        args.src = args.dst = y.data();
      }
      break;
    case 1:  // dst overlaps src without being it
      if (args.src && args.dst && count >= 2) {
        y = x;
        args.src = y.data();
        args.dst = y.data() + in.ConsumeIntegralInRange<std::size_t>(1, count - 1);
        must_refuse = true;
      }
      break;
    case 2:  // the batch mean inside the running mean
      if (args.running_mean.data && g.c >= 2) {
        args.batch_mean = {running_mean.data() + 1, g.c};
        must_refuse = updates || args.running_mean.size != g.c;
      }
      break;
    case 3:  // src misaligned by 1 to 3 bytes
      if (args.src && count > 0) {
        const std::size_t offset = in.ConsumeIntegralInRange<std::size_t>(1, 3);
        std::memcpy(shifted_bytes.data() + offset, x.data(), count * sizeof(T));
        args.src = shifted_bytes.data() + offset;
        must_refuse = true;
      }
      break;
    case 4:  // gamma misaligned
      if (args.scale.data) {
        const std::size_t offset = in.ConsumeIntegralInRange<std::size_t>(1, sizeof(T) - 1);
        std::memcpy(shifted_gamma.data() + offset, gamma.data(), g.c * sizeof(T));
        args.scale.data = shifted_gamma.data() + offset;
        must_refuse = true;
      }
      break;
    case 5:  // a step counter at its edges
      if (args.num_batches_tracked) {
        tracked = in.ConsumeBool() ? -1 : std::numeric_limits<std::int64_t>::max();
        must_refuse = updates;
      }
      break;
    case 6:  // scratch without data
      args.scratch = nullptr;
      args.scratch_size = in.ConsumeIntegralInRange<std::size_t>(1, 1 << 20);
      must_refuse = true;
      break;
    default: break;
  }
  const std::vector<T> x0 = x, y0 = y, rm0 = running_mean, rv0 = running_var, mean0 = mean,
                       inv_std0 = inv_std;
  const std::int64_t tracked0 = tracked;

  const bnorm::status s = plan.forward_training(args);
  if (!s.ok()) {
    if (s.message()[0] == '\0') fail("a rejection without a message", s);
    if (!same(running_mean, rm0) || !same(running_var, rv0) || tracked != tracked0 ||
        !same(y, y0) || !same(x, x0) || !same(mean, mean0) || !same(inv_std, inv_std0)) {
      fail("a rejected call wrote to a buffer", s);
    }
    return;
  }
  if (must_refuse) fail("a call that breaks the buffer contract was accepted", s);
  if (count == 0) return;
  const std::vector<T>& x_read = x_in_place.empty() ? x : x_in_place;
  // A backward on the forward's input and, where it saved them, its statistics.
  if (in.ConsumeBool() && !must_refuse) run_backward<T>(in, plan, prob, x_read, mean, inv_std);
  // The float64 reference, two-pass, on the same values.
  for (std::size_t c = 0; c < g.c; ++c) {
    const reference_channel ref_c(x_read, g, prob, c, args.scale.data ? gamma.data() : nullptr,
                                  args.shift.data ? beta.data() : nullptr);
    if (!ref_c.checked(checked_scale_limit<T>())) continue;
    const double ref_mean = ref_c.mean, var = ref_c.var, inv = ref_c.inv, w = ref_c.w, b = ref_c.b;
    // The saved statistics: the mean within a few roundings of |mean| + std (its float32 sums
    // are taken around a pivot near it) and its rounding to T, 1/std within a few roundings of
    // itself where T holds it; both also within float64's rounding of sums of M values (float64
    // data's sums are float64's own).
    const double eps = std::numeric_limits<T>::epsilon() +
                       static_cast<double>(g.n * g.s) * std::numeric_limits<double>::epsilon() / 64;
    if (args.batch_mean.data == mean.data() &&
        !(std::fabs(static_cast<double>(mean[c]) - ref_mean) <=
          64 * eps * (std::fabs(ref_mean) + std::sqrt(var)) +
              std::numeric_limits<T>::denorm_min())) {  // T's spacing at the least values
      std::fprintf(stderr, "channel %zu: batch mean %.17g, float64 reference %.17g (var %.9g)\n", c,
                   static_cast<double>(mean[c]), ref_mean, var);
      fail("an accepted call's batch mean differs from the float64 reference", s);
    }
    const double largest = static_cast<double>(std::numeric_limits<T>::max());
    const double least = static_cast<double>(std::numeric_limits<T>::min());
    if (args.batch_inv_std.data == inv_std.data() && inv < largest / 2 && inv > least &&
        !(std::fabs(static_cast<double>(inv_std[c]) - inv) <= 64 * eps * inv)) {
      std::fprintf(stderr, "channel %zu: batch 1/std %.17g, float64 reference %.17g (var %.9g)\n",
                   c, static_cast<double>(inv_std[c]), inv, var);
      fail("an accepted call's batch 1/std differs from the float64 reference", s);
    }
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t i = 0; i < g.s; ++i) {
        const std::size_t at = g.at(prob.layout, n, c, i);
        const double ref = (static_cast<double>(x_read[at]) - ref_mean) * inv * w + b;
        if (!std::isfinite(ref) || std::fabs(ref) > 0.5 * std::numeric_limits<T>::max()) continue;
        const double tol = tolerance<T>(ref, x_read[at], ref_mean, inv, var) * (1 + std::fabs(w));
        if (!(std::fabs(static_cast<double>(y[at]) - ref) <= tol)) {
          std::fprintf(stderr,
                       "channel %zu element %zu: got %.9g, float64 reference %.9g (x %.9g, mean "
                       "%.9g, var %.9g, eps %g, gamma %g, beta %g, N %zu C %zu S %zu layout %d)\n",
                       c, at, static_cast<double>(y[at]), ref, static_cast<double>(x_read[at]),
                       ref_mean, var, prob.epsilon, w, b, g.n, g.c, g.s,
                       static_cast<int>(prob.layout));
          fail("an accepted call differs from the float64 reference", s);
        }
      }
  }
}

/// A backward call on the same plan: arbitrary dy, output mask and statistics (the forward's
/// where it saved them, else arbitrary), some calls breaking the contract. A plan with an
/// activation takes y, the forward's output, whose mask dy passes first (and add+ReLU's dz,
/// the masked dy, when asked).
template <class T>
void run_backward(FuzzedDataProvider& in, const bnorm::plan& plan, const bnorm::problem& prob,
                  const std::vector<T>& x, std::vector<T> mean, std::vector<T> inv_std,
                  const std::vector<T>& y) {
  const geometry g(prob);
  const std::size_t count = x.size();
  const bool frozen = in.ConsumeBool();
  const std::vector<T> dy = values<T>(in, count), gamma = values<T>(in, g.c);
  std::vector<T> var = values<T>(in, g.c);
  if (in.ConsumeBool()) mean = values<T>(in, g.c);
  if (in.ConsumeBool()) inv_std = values<T>(in, g.c);
  std::vector<T> dx(count, T(-5)), dgamma(g.c, T(-6)), dbeta(g.c, T(-7));
  bnorm::backward_args args;
  args.src = in.ConsumeIntegralInRange<int>(0, 20) == 0 ? nullptr : x.data();
  args.diff_dst = in.ConsumeIntegralInRange<int>(0, 20) == 0 ? nullptr : dy.data();
  if (in.ConsumeIntegralInRange<int>(0, 3) != 0) args.diff_src = dx.data();
  if (in.ConsumeBool()) args.scale = {gamma.data(), gamma.size()};
  if (in.ConsumeIntegralInRange<int>(0, 10) != 0) args.mean = {mean.data(), mean.size()};
  // Training takes 1/std or the variance; frozen the variance; sometimes both, or neither.
  const int which = in.ConsumeIntegralInRange<int>(0, 7);
  if (which == 0 || which == 2) args.inv_std = {inv_std.data(), inv_std.size()};
  if (which >= 1) args.var = {var.data(), var.size()};
  if (which == 1 && !frozen) args.var = {}, args.inv_std = {inv_std.data(), inv_std.size()};
  if (in.ConsumeBool()) args.diff_scale = {dgamma.data(), dgamma.size()};
  if (in.ConsumeBool()) args.diff_shift = {dbeta.data(), dbeta.size()};
  bool must_refuse = false;
  std::vector<T> dy_in_place;  // dx == dy (or dz == dy): the reference reads this copy
  // Only with an activation (y given), so that the committed corpus keeps its meaning.
  const bnorm::plan_options& opts = plan.options();
  std::vector<T> dz;
  if (!y.empty()) {
    args.dst = in.ConsumeIntegralInRange<int>(0, 20) == 0 ? nullptr : y.data();
    const int residual = in.ConsumeIntegralInRange<int>(0, 3);
    if (opts.activation == bnorm::activation::add_relu && residual == 1) {
      dz.assign(count, T(-4));
      args.diff_residual = dz.data();
    } else if (opts.activation == bnorm::activation::add_relu && residual == 2 && args.diff_dst) {
      dy_in_place = dy;  // dz over dy: allowed
      dz = dy;
      args.diff_dst = dz.data();
      args.diff_residual = dz.data();
    } else if (residual == 3 && opts.activation != bnorm::activation::add_relu) {
      dz.assign(count, T(-4));  // a residual gradient the activation has none of
      args.diff_residual = dz.data();
      must_refuse = true;
    }
  }
  switch (in.ConsumeIntegralInRange<int>(0, 8)) {
    case 0:  // in place: allowed
      if (args.diff_src && args.diff_dst && args.diff_dst == dy.data()) {
        dy_in_place = dy;
        dx = dy;
        args.diff_dst = dx.data();
      }
      break;
    case 1:  // dx over x
      if (args.diff_src && args.src && count >= 1) {
        args.diff_src = const_cast<T*>(x.data());
        must_refuse = true;
      }
      break;
    case 2:  // dγ over dβ
      if (args.diff_scale.data && args.diff_shift.data && g.c >= 1) {
        args.diff_scale.data = dbeta.data();
        must_refuse = true;
      }
      break;
    case 3:  // a short per-channel buffer
      if (args.mean.data) {
        args.mean.size = g.c + 1;
        must_refuse = true;
      }
      break;
    default: break;
  }
  const std::vector<T> dx0 = dx, dgamma0 = dgamma, dbeta0 = dbeta, dz0 = dz;
  const bnorm::status s = frozen ? plan.backward_frozen(args) : plan.backward_training(args);
  if (!s.ok()) {
    if (s.message()[0] == '\0') fail("a backward rejection without a message", s);
    if (!same(dx, dx0) || !same(dgamma, dgamma0) || !same(dbeta, dbeta0) || !same(dz, dz0)) {
      fail("a rejected backward wrote to a buffer", s);
    }
    return;
  }
  if (must_refuse) fail("a backward that breaks the contract was accepted", s);
  // dy through the activation's mask (y > 0; clamp: within its bounds as the forward rounded
  // them), the gradient that the rest of the backward takes.
  std::vector<T> dy_read = dy_in_place.empty() ? dy : dy_in_place;
  if (!y.empty()) {
    const activation_reference mask = activation_reference::of<T>(opts);
    for (std::size_t at = 0; at < count; ++at) {
      if (!mask.passes(static_cast<double>(y[at]))) dy_read[at] = T(0);
    }
  }
  for (std::size_t at = 0; at < count && args.diff_residual; ++at) {
    const T want = dy_read[at], got = static_cast<const T*>(args.diff_residual)[at];
    if (!(got == want || (std::isnan(got) && std::isnan(want)))) {
      std::fprintf(stderr, "dz at %zu: got %.9g, the masked dy %.9g (y %.9g)\n", at,
                   static_cast<double>(got), static_cast<double>(want), static_cast<double>(y[at]));
      fail("dz differs from dy through the mask", s);
    }
  }
  const double eps = std::numeric_limits<T>::epsilon();
  const double m = static_cast<double>(g.n * g.s);
  for (std::size_t c = 0; c < g.c && count > 0; ++c) {
    // The reference from the same inputs, with the rounding each term may carry.
    const bool have_x = args.src && args.mean.data && (args.inv_std.data || args.var.data);
    const double inv = !have_x && !args.var.data ? 0.0
                       : args.inv_std.data
                           ? static_cast<double>(inv_std[c])
                           : 1.0 / std::sqrt(static_cast<double>(var[c]) + prob.epsilon);
    const double w = args.scale.data ? static_cast<double>(gamma[c]) : 1.0;
    const double center = have_x ? static_cast<double>(mean[c]) : 0.0;
    long double s1 = 0, s2 = 0, a1 = 0, a2 = 0;
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t i = 0; i < g.s; ++i) {
        const std::size_t at = g.at(prob.layout, n, c, i);
        const long double d = have_x ? static_cast<long double>(x[at]) - center : 0.0L;
        s1 += dy_read[at];
        s2 += dy_read[at] * d;
        a1 += std::fabs(static_cast<long double>(dy_read[at]));
        a2 += std::fabs(dy_read[at] * d);
      }
    // Beyond: saturation and overflow are documented, not checked. Coefficients beyond T
    // (γ·inv_std, or the dx coefficient of x − mean, ~inv_std³) are not: prescales bring them
    // back wherever the terms of dx are within the limit.
    const double limit = 1e30;
    if (!std::isfinite(static_cast<double>(a1 + a2)) || a1 + a2 > limit || !std::isfinite(inv)) {
      continue;
    }
    if (args.diff_shift.data &&
        !(std::fabs(dbeta[c] - static_cast<double>(s1)) <= 32 * eps * (1 + (double)a1))) {
      fail("dbeta differs from the float64 reference", s);
    }
    // dγ = inv_std·Σdy·(x − mean) beyond T overflows to an infinity of its sign (near T's
    // largest value, rounding decides: not checked).
    const double dgamma_ref = static_cast<double>(s2) * inv;
    const double largest = static_cast<double>(std::numeric_limits<T>::max());
    // Where the rounding of the sum's terms (times inv_std) passes half the range, dγ is
    // rounding beyond T whatever its value, of either sign: not checked (a frozen channel of
    // products of 4e-16 that cancel, inv_std 4.5e161: float32 gives −inf, float64 +1.3e74).
    // Each product dy·(x − mean) also rounds to T's subnormal spacing where it is that small:
    // an absolute error, not a relative one, that dx's x − mean term multiplies by
    // inv_std³·d/M (1e70 with inv_std 2.7e22). float32 sums that small are summed again in
    // float64 (kernels::sums_small_products), a zero one only where Σdy is not zero too: the
    // floor holds for float64, and for float32 where Σdy may round to zero.
    const double least = static_cast<double>(std::numeric_limits<T>::denorm_min());
    const bool resummed = std::is_same_v<T, float> &&
                          std::fabs(static_cast<double>(s1)) > 64 * eps * (double)a1 + m * least;
    const double products_floor = resummed ? 0.0 : 4 * m * least;
    const double dgamma_bound =
        32 * eps * (1 + (double)a2 * std::fabs(inv)) + products_floor * std::fabs(inv);
    const bool dgamma_right =
        dgamma_bound > largest / 2 || (std::fabs(dgamma_ref) > 2 * largest
                                           ? dgamma[c] == static_cast<T>(dgamma_ref)
                                           : std::fabs(dgamma_ref) > largest / 2 ||
                                                 std::fabs(dgamma[c] - dgamma_ref) <= dgamma_bound);
    if (args.diff_scale.data && have_x && !dgamma_right) {
      std::fprintf(stderr, "dgamma at %zu: got %.9g, reference %.9g\n", c,
                   static_cast<double>(dgamma[c]), dgamma_ref);
      fail("dgamma differs from the float64 reference", s);
    }
    if (!args.diff_src) continue;
    const double k = w * inv;
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t i = 0; i < g.s; ++i) {
        const std::size_t at = g.at(prob.layout, n, c, i);
        const double d = static_cast<double>(x[at]) - center;
        const double g_at = static_cast<double>(dy_read[at]);
        double ref = k * g_at, size = std::fabs(k * g_at), floor = 0.0;
        if (!frozen) {
          const double b = k * inv * inv * static_cast<double>(s2) / m,
                       e = k * static_cast<double>(s1) / m;
          ref = k * g_at - b * d - e;
          size += std::fabs(b * d) + std::fabs(e) +
                  std::fabs(k) * inv * inv * (double)a2 / m * std::fabs(d) +
                  std::fabs(k) * (double)a1 / m;
          floor = std::fabs(k) * inv * inv * products_floor / m * std::fabs(d);
        }
        // Terms beyond the limit, even beyond T, that cancel to a dx well within T: dx is
        // still within the rounding of the terms (the terms' prescale), not an inf or a NaN.
        // Where that rounding itself passes half the range, dx is rounding beyond T whatever
        // its value, inf included: not checked (statistics that are not the data's, inv_std
        // 1.5e22 on values spread 3.9e29: T's rounding of Σdy·(x − mean), times inv_std³,
        // makes dx's x − mean term 1e73 where the exact sum cancels to 0).
        const double dx_bound = 64 * eps * (1 + size) + floor;
        if (!std::isfinite(ref) || !std::isfinite(size) || dx_bound > largest / 2) continue;
        if (size > limit && !(std::fabs(ref) <= largest / 4)) continue;
        if (!(std::fabs(static_cast<double>(dx[at]) - ref) <= dx_bound)) {
          std::fprintf(stderr,
                       "dx at %zu: got %.9g, reference %.9g (frozen %d; x %.9g, dy %.9g, mean "
                       "%.9g, inv_std %.9g, gamma %.9g, M %g, sum dy %.9g, sum dy·d %.9g)\n",
                       at, static_cast<double>(dx[at]), ref, frozen, static_cast<double>(x[at]),
                       g_at, center, inv, w, m, static_cast<double>(s1), static_cast<double>(s2));
          fail("dx differs from the float64 reference", s);
        }
      }
  }
}

/// The storage types' conversions and limits: float and double as themselves, bf16 and f16
/// through float (rounded to nearest even once, as bnorm rounds its float32 results).
template <class S>
std::vector<S> stored(const std::vector<typename bnorm::element_traits<S>::parameter_type>& v) {
  if constexpr (std::is_floating_point_v<S>) {
    return v;
  } else {
    std::vector<S> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = S::from_float(v[i]);
    return out;
  }
}

/// largest: the largest finite value; rounding: the relative step of one more rounding to S
/// (none for float and double, whose results are not rounded again); least_step: the spacing
/// of S's subnormals, the absolute step of that rounding near 0.
template <class S>
struct storage_limits {
  static constexpr double largest = static_cast<double>(std::numeric_limits<S>::max());
  static constexpr double rounding = 0.0, least_step = 0.0;
};
template <>
struct storage_limits<bnorm::bfloat16> {
  static constexpr double largest = 3.3895313892515355e38;  // 0x7F7F
  static constexpr double rounding = 0x1p-8, least_step = 0x1p-133;
};
template <>
struct storage_limits<bnorm::float16> {
  static constexpr double largest = 65504.0;
  static constexpr double rounding = 0x1p-11, least_step = 0x1p-24;
};

/// A training call under a plan with an activation (the inference call's), on the same x, γ,
/// β and z: batch statistics, then y through the activation, against the float64 reference.
template <class T>
void run_training_activation(FuzzedDataProvider& in, const bnorm::plan& plan,
                             const bnorm::problem& prob, const std::vector<T>& x,
                             const std::vector<T>& gamma, const std::vector<T>& beta,
                             const std::vector<T>& z) {
  const geometry g(prob);
  const std::size_t count = x.size();
  const bnorm::plan_options& opts = plan.options();
  const bool adds = opts.activation == bnorm::activation::add_relu;
  std::vector<T> y(count, T(-7)), running_mean(g.c, T(0)), running_var(g.c, T(1));
  std::int64_t tracked = 0;
  bnorm::training_args args;
  args.src = x.data();
  args.dst = y.data();
  args.residual = adds ? z.data() : nullptr;
  if (in.ConsumeBool()) args.scale = {gamma.data(), g.c};
  if (in.ConsumeBool()) args.shift = {beta.data(), g.c};
  args.running_mean = {running_mean.data(), g.c};
  args.running_var = {running_var.data(), g.c};
  args.num_batches_tracked = &tracked;
  std::vector<T> z_in_place;  // y over z: the reference reads this copy
  if (adds && in.ConsumeBool()) {
    z_in_place = z;
    y = z;
    args.residual = args.dst = y.data();
  }
  const std::vector<T> y0 = y;
  const bnorm::status s = plan.forward_training(args);
  if (!s.ok()) {
    if (s.message()[0] == '\0') fail("a training rejection without a message", s);
    if (std::memcmp(y.data(), y0.data(), count * sizeof(T)) != 0) {
      fail("a rejected training call wrote to y", s);
    }
    return;
  }
  const std::vector<T>& z_read = z_in_place.empty() ? z : z_in_place;
  const double eps = std::numeric_limits<T>::epsilon();
  const double largest = static_cast<double>(std::numeric_limits<T>::max());
  const activation_reference activation = activation_reference::of<T>(opts);
  for (std::size_t c = 0; c < g.c; ++c) {
    const reference_channel ref_c(x, g, prob, c, args.scale.data ? gamma.data() : nullptr,
                                  args.shift.data ? beta.data() : nullptr);
    if (!ref_c.checked(checked_scale_limit<T>())) continue;  // as in run
    const double mean = ref_c.mean, var = ref_c.var, inv = ref_c.inv, w = ref_c.w, b = ref_c.b;
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t i = 0; i < g.s; ++i) {
        const std::size_t at = g.at(prob.layout, n, c, i);
        const double xv = static_cast<double>(x[at]);
        const double zv = adds ? static_cast<double>(z_read[at]) : 0.0;
        const double got = static_cast<double>(y[at]);
        const double normalized = (xv - mean) * inv * w + b;
        if (std::isnan(zv)) {
          if (!std::isnan(got)) fail("a training activation dropped a NaN residual", s);
          continue;
        }
        if (!std::isfinite(normalized) || !std::isfinite(zv) ||
            std::fabs(normalized) > largest / 2 || std::fabs(zv) > largest / 2) {
          continue;
        }
        const double ref = activation.apply(normalized + zv);
        const double tol = tolerance<T>(normalized, xv, mean, inv, var) * (1 + std::fabs(w)) +
                           64 * eps * std::fabs(zv);
        if (!(std::isinf(ref) ? got == ref : std::fabs(got - ref) <= tol)) {
          std::fprintf(stderr,
                       "training at %zu: got %.9g, reference %.9g (x %.9g, mean %.9g, var %.9g, "
                       "gamma %g, beta %g, z %.9g, activation %s [%g, %g])\n",
                       at, got, ref, xv, mean, var, w, b, zv, bnorm::to_string(opts.activation),
                       activation.lo, activation.hi);
          fail("an accepted training call with an activation differs from the reference", s);
        }
      }
  }
}

/// An inference call in the problem's dtype (bf16, f16 too), under a plan of its own with an
/// activation (none, ReLU, clamp with arbitrary bounds, add+ReLU with a residual that may be dst or
/// src), arbitrary running statistics and parameters, some calls breaking the contract; the same
/// checks as training's. Its inputs come after everything the training call reads, so that the
/// committed corpus keeps its meaning.
template <class S>
void run_inference(FuzzedDataProvider& in, const bnorm::problem& prob, bnorm::plan_options opts) {
  opts.activation = static_cast<bnorm::activation>(in.ConsumeIntegralInRange<int>(0, 4));
  if (opts.activation == bnorm::activation::clamp) {
    opts.clamp_min = in.ConsumeBool() ? 0.0 : next_value<double>(in);
    opts.clamp_max = in.ConsumeBool() ? 6.0 : next_value<double>(in);
  }
  const bool bad_options =
      static_cast<int>(opts.activation) > 3 ||
      (opts.activation == bnorm::activation::clamp && !(opts.clamp_min <= opts.clamp_max));
  bnorm::plan plan;
  const bnorm::status made = bnorm::make_plan(prob, opts, &plan);
  if (!made.ok()) {
    if (made.message()[0] == '\0' || plan.valid()) fail("a bad make_plan rejection", made);
    return;
  }
  if (bad_options)
    fail("make_plan accepted an unknown activation or clamp bounds out of order", made);
  const geometry g(prob);
  const std::size_t count = g.n * g.c * g.s;
  using T = typename bnorm::element_traits<S>::parameter_type;  // the compute type too
  const std::vector<S> x = stored<S>(values<T>(in, count));
  const std::vector<T> gamma = values<T>(in, g.c), beta = values<T>(in, g.c);
  const std::vector<T> mean = values<T>(in, g.c), var = values<T>(in, g.c);
  const bool adds = opts.activation == bnorm::activation::add_relu;
  std::vector<S> z = adds ? stored<S>(values<T>(in, count)) : std::vector<S>();
  std::vector<S> y = stored<S>(std::vector<T>(count, T(-7)));
  std::vector<S> buffer;  // src, dst and z where some of them share one
  bnorm::inference_args args;
  args.src = x.data();
  args.dst = y.data();
  args.residual = adds ? z.data() : nullptr;
  if (in.ConsumeBool()) args.scale = {gamma.data(), g.c};
  if (in.ConsumeBool()) args.shift = {beta.data(), g.c};
  args.mean = {mean.data(), g.c};
  args.var = {var.data(), g.c};
  bool must_refuse = false;
  switch (in.ConsumeIntegralInRange<int>(0, 9)) {
    case 0:  // in place, y over x: allowed
      buffer = x;
      args.src = args.dst = buffer.data();
      break;
    case 1:  // y over z: allowed
      if (adds) {
        buffer = z;
        args.residual = args.dst = buffer.data();
      }
      break;
    case 2:  // z overlapping y without being it
      if (adds && count >= 2) {
        buffer = z;
        buffer.resize(2 * count);
        args.residual = buffer.data();
        args.dst = buffer.data() + in.ConsumeIntegralInRange<std::size_t>(1, count - 1);
        must_refuse = true;
      }
      break;
    case 3:  // a residual the activation does not take, or none where it does
      if (count > 0) {
        args.residual = adds ? nullptr : x.data();
        must_refuse = true;
      }
      break;
    case 4:  // no running variance
      args.var = {};
      must_refuse = true;
      break;
    default: break;
  }
  const std::vector<S> y0 = y, buffer0 = buffer;
  const bnorm::status s = plan.forward_inference(args);
  if (!s.ok()) {
    if (s.message()[0] == '\0') fail("an inference rejection without a message", s);
    if (!same(y, y0) || !same(buffer, buffer0)) fail("a rejected inference wrote to a buffer", s);
    return;
  }
  if (must_refuse) fail("an inference that breaks the contract was accepted", s);
  const S* out = static_cast<const S*>(args.dst);
  const double eps = std::numeric_limits<T>::epsilon();
  const double largest = storage_limits<S>::largest;
  const double scale_limit = checked_scale_limit<T>();
  const activation_reference activation = activation_reference::of<T>(opts);
  for (std::size_t c = 0; c < g.c; ++c) {
    const double m = static_cast<double>(mean[c]);
    const double inv = 1.0 / std::sqrt(static_cast<double>(var[c]) + prob.epsilon);
    const double scale = (args.scale.data ? static_cast<double>(gamma[c]) : 1.0) * inv;
    const double b = args.shift.data ? static_cast<double>(beta[c]) : 0.0;
    if (!std::isfinite(m) || !std::isfinite(scale) || !std::isfinite(b) ||
        std::fabs(scale) > scale_limit) {
      continue;  // a non-finite channel: any output is PyTorch's answer too
    }
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t i = 0; i < g.s; ++i) {
        const std::size_t at = g.at(prob.layout, n, c, i);
        const double xv = as_double(x[at]);
        const double zv = adds ? as_double(z[at]) : 0.0;
        const double got = as_double(out[at]);
        if (std::isnan(xv) || std::isnan(zv)) {
          // A NaN stays NaN through every activation (PyTorch's relu and clamp).
          if (!std::isnan(got)) {
            std::fprintf(stderr, "inference at %zu: got %.9g from a NaN (activation %s)\n", at, got,
                         bnorm::to_string(opts.activation));
            fail("an inference activation dropped a NaN", s);
          }
          continue;
        }
        const double normalized = (xv - m) * scale + b;
        // Beyond half of T, y (before the residual) overflows or rounds at T's edge: not checked.
        if (!std::isfinite(normalized) || !std::isfinite(zv) ||
            std::fabs(normalized) > largest / 2 || std::fabs(zv) > largest / 2) {
          continue;
        }
        const double ref = activation.apply(normalized + zv);
        // The rounding of x − mean, of the scale, of the product and of the sums; a mean within
        // a quarter of the standard deviation folds into the shift, x·scale + (β − mean·scale),
        // at the cost of the rounding of mean·scale, at most a quarter of γ and at most 16384
        // (bnorm's fold_limit; twice it here, for a decision at the edge; PyTorch folds every
        // mean, and float16 output once held that rounding, 1e11 at γ 2e29, as an infinity).
        const double folded =
            std::fmin(std::fmin(std::fabs(m * scale), 0.25 * std::fabs(scale) / inv), 32768.0);
        // bf16 and f16 round the float32 result once more, to their own precision.
        const double tol = 64 * eps *
                               (1 + std::fabs(normalized) + std::fabs(xv - m) * std::fabs(scale) +
                                folded + std::fabs(b) + std::fabs(zv)) +
                           storage_limits<S>::rounding * std::fabs(ref) +
                           storage_limits<S>::least_step;
        // (Infinite clamp bounds give an infinite ref: then exactly that.) A clamp bound beyond
        // half of S's range (1e29 held in f16) is a result S holds at its edge: its largest
        // value or, once rounding passes it, an infinity, of the reference's sign.
        const bool at_edge = std::isfinite(ref) && std::fabs(ref) > largest / 2;
        const bool within =
            std::isinf(ref) ? got == ref
            : at_edge ? std::signbit(got) == std::signbit(ref) && std::fabs(got) >= largest / 2
                      : std::fabs(got - ref) <= tol;
        if (!within) {
          std::fprintf(stderr,
                       "inference at %zu: got %.9g, reference %.9g (x %.9g, mean %.9g, var %.9g, "
                       "eps %g, scale %.9g, beta %.9g, z %.9g, activation %s [%g, %g])\n",
                       at, got, ref, xv, m, static_cast<double>(var[c]), prob.epsilon, scale, b, zv,
                       bnorm::to_string(opts.activation), activation.lo, activation.hi);
          fail("an accepted inference differs from the float64 reference", s);
        }
      }
  }
  // A backward through the activation's mask, with this call's output as the forward's.
  if (count > 0 && in.ConsumeBool()) {
    if constexpr (std::is_same_v<S, T>) {  // (the backward of halves: tests/test_half.cpp)
      const std::vector<T> y_out(out, out + count);
      const bool masks = opts.activation != bnorm::activation::none;
      run_backward<T>(in, plan, prob, x, mean, var, masks ? y_out : std::vector<T>());
    }
  }
  // A training call through the same activation.
  if constexpr (std::is_same_v<S, T>) {
    if (count > 0 && in.ConsumeBool())
      run_training_activation<T>(in, plan, prob, x, gamma, beta, z);
  }
}

}  // namespace

/// A training call on half storage (x and y in S, parameters and statistics in float), on the
/// plan of the input's problem: y against the float64 reference from x as stored. Where y's
/// rounding may pass half of S's range, y is not checked (S holds it as an infinity); a
/// rejected call must write nothing.
template <class S>
void run_half_training(FuzzedDataProvider& in, const bnorm::plan& plan,
                       const bnorm::problem& prob) {
  const geometry g(prob);
  const std::size_t count = g.n * g.c * g.s;
  const std::vector<S> x = stored<S>(values<float>(in, count));
  const std::vector<float> gamma = values<float>(in, g.c), beta = values<float>(in, g.c);
  std::vector<float> running_mean = values<float>(in, g.c), running_var = values<float>(in, g.c);
  std::vector<float> mean(g.c, -8.0f), inv_std(g.c, -9.0f);
  std::vector<S> y = stored<S>(std::vector<float>(count, -7.0f));
  std::int64_t tracked = in.ConsumeIntegralInRange<std::int64_t>(0, 5);
  bnorm::training_args args;
  args.src = x.data();
  args.dst = y.data();
  if (in.ConsumeBool()) args.scale = {gamma.data(), g.c};
  if (in.ConsumeBool()) args.shift = {beta.data(), g.c};
  if (in.ConsumeBool()) args.batch_mean = {mean.data(), g.c};
  if (in.ConsumeBool()) args.batch_inv_std = {inv_std.data(), g.c};
  if (in.ConsumeBool()) {
    args.running_mean = {running_mean.data(), g.c};
    args.running_var = {running_var.data(), g.c};
    args.num_batches_tracked = &tracked;
  }
  const std::vector<S> y0 = y;
  const std::vector<float> rm0 = running_mean, rv0 = running_var, mean0 = mean, inv_std0 = inv_std;
  const bnorm::status s = plan.forward_training(args);
  if (!s.ok()) {
    if (s.message()[0] == '\0') fail("a half-storage rejection without a message", s);
    if (!same(y, y0) || !same(running_mean, rm0) || !same(running_var, rv0) || !same(mean, mean0) ||
        !same(inv_std, inv_std0)) {
      fail("a rejected half-storage training wrote to a buffer", s);
    }
    return;
  }
  const double largest = storage_limits<S>::largest;
  for (std::size_t c = 0; c < g.c; ++c) {
    const reference_channel ref_c(x, g, prob, c, args.scale.data ? gamma.data() : nullptr,
                                  args.shift.data ? beta.data() : nullptr);
    if (!ref_c.checked(checked_scale_limit<float>())) continue;  // as the float path
    const double ref_mean = ref_c.mean, var = ref_c.var, inv = ref_c.inv, w = ref_c.w, b = ref_c.b;
    for (std::size_t n = 0; n < g.n; ++n)
      for (std::size_t i = 0; i < g.s; ++i) {
        const std::size_t at = g.at(prob.layout, n, c, i);
        const double xv = as_double(x[at]);
        const double ref = (xv - ref_mean) * inv * w + b;
        // float32's roundings, then S's own.
        const double tol = tolerance<float>(ref, xv, ref_mean, inv, var) * (1 + std::fabs(w)) +
                           storage_limits<S>::rounding * std::fabs(ref) +
                           storage_limits<S>::least_step;
        if (!std::isfinite(ref) || std::fabs(ref) + tol > largest / 2) continue;
        const double got = as_double(y[at]);
        if (!(std::fabs(got - ref) <= tol)) {
          std::fprintf(stderr,
                       "half training at %zu: got %.9g, float64 reference %.9g (x %.9g, mean "
                       "%.9g, var %.9g, eps %g, gamma %g, beta %g, N %zu C %zu S %zu layout %d)\n",
                       at, got, ref, xv, ref_mean, var, prob.epsilon, w, b, g.n, g.c, g.s,
                       static_cast<int>(prob.layout));
          fail("an accepted half-storage training differs from the float64 reference", s);
        }
      }
  }
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  // Shapes stay small (at most 9^5 elements) so that each input runs in milliseconds.
  const std::size_t rank = in.ConsumeIntegralInRange<std::size_t>(0, 6);
  std::int64_t dims[6] = {};
  for (std::size_t d = 0; d < rank; ++d) {
    dims[d] =
        in.ConsumeIntegralInRange<int>(0, 40) == 0 ? -1 : in.ConsumeIntegralInRange<int>(0, 9);
  }
  bnorm::problem prob;
  prob.shape = bnorm::tensor_shape(dims, rank);
  prob.layout = static_cast<bnorm::layout>(in.ConsumeIntegralInRange<int>(0, 2));
  prob.dtype = static_cast<bnorm::dtype>(in.ConsumeIntegralInRange<int>(0, 4));  // 4: invalid
  prob.epsilon = in.ConsumeBool() ? 1e-5 : next_value<double>(in);
  bnorm::plan_options opts;
  opts.update_running_stats = in.ConsumeBool();
  opts.convention = static_cast<bnorm::momentum_convention>(in.ConsumeIntegralInRange<int>(0, 3));
  opts.momentum = in.ConsumeBool() ? 0.1 : next_value<double>(in);
  opts.cumulative_average = in.ConsumeIntegralInRange<int>(0, 4) == 0;
  opts.max_threads = in.ConsumeIntegralInRange<int>(-1, 3);
  opts.stores = static_cast<bnorm::store_policy>(in.ConsumeIntegralInRange<int>(0, 3));
  // Every ISA table of the CPU, capped or not (uncapped, some shapes take a narrower table),
  // chosen by the input's length, not its bytes: the corpus keeps its meaning.
  static const std::vector<bnorm::isa> isas = bnorm::available_isas();
  if (size % (isas.size() + 1) < isas.size()) opts.max_isa = isas[size % (isas.size() + 1)];
  bnorm::plan plan;
  const bnorm::status s = bnorm::make_plan(prob, opts, &plan);
  if (!s.ok()) {
    if (s.message()[0] == '\0' || plan.valid()) fail("a bad make_plan rejection", s);
    return 0;
  }
  switch (prob.dtype) {
    case bnorm::dtype::f32:
      run<float>(in, plan, prob);
      run_inference<float>(in, prob, opts);
      break;
    case bnorm::dtype::f64:
      run<double>(in, plan, prob);
      run_inference<double>(in, prob, opts);
      break;
    // bf16, f16: inference, then training (after it, so that the corpus's inference inputs
    // keep their meaning); tests/test_half.cpp checks their backward.
    case bnorm::dtype::bf16:
      run_inference<bnorm::bfloat16>(in, prob, opts);
      run_half_training<bnorm::bfloat16>(in, plan, prob);
      break;
    case bnorm::dtype::f16:
      run_inference<bnorm::float16>(in, prob, opts);
      run_half_training<bnorm::float16>(in, plan, prob);
      break;
  }
  return 0;
}
