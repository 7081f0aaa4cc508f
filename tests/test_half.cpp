// bfloat16 and float16 storage: the conversions against independent references (the compiler's
// _Float16, a bfloat16 rounding written on float64), and every path against a float64
// reference computed from the same (decoded) inputs: y and dx within one unit in the last
// place of the storage type, the statistics as exact as float32's.
#include <gtest/gtest.h>

#include <cfenv>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "bnorm/distributed.hpp"
#include "element_types.hpp"
#include "support.hpp"

using namespace bnorm_test;
using bnorm::layout;
using bnorm::kernels::bfloat16;
using bnorm::kernels::float16;

namespace {

/// The bfloat16 nearest to v (ties to even), found on float64 from the two candidates around
/// it: independent of the bit trick the library uses.
std::uint16_t reference_bfloat16(float v) {
  if (std::isnan(v)) return 0x7FC0;
  std::uint32_t bits;
  std::memcpy(&bits, &v, 4);
  const std::uint32_t down = bits & 0xFFFF0000u, up = down + 0x10000u;
  float lo, hi;
  std::memcpy(&lo, &down, 4);
  std::memcpy(&hi, &up, 4);
  const double d_lo = std::fabs(static_cast<double>(v) - lo);
  const double d_hi = std::isinf(hi) ? INFINITY : std::fabs(static_cast<double>(hi) - v);
  // Past the largest finite bfloat16 (up is an infinity's bits or beyond): round as the
  // format defines, to infinity from half an ulp above the largest.
  if ((up & 0x7F800000u) == 0x7F800000u) {
    const double largest = lo, half_ulp = std::ldexp(1.0, 127 - 8);
    return std::fabs(static_cast<double>(v)) - std::fabs(largest) >= half_ulp
               ? static_cast<std::uint16_t>((bits & 0x80000000u) >> 16 | 0x7F80)
               : static_cast<std::uint16_t>(down >> 16);
  }
  if (d_lo < d_hi) return static_cast<std::uint16_t>(down >> 16);
  if (d_hi < d_lo) return static_cast<std::uint16_t>(up >> 16);
  return static_cast<std::uint16_t>(((down >> 16) & 1) ? up >> 16 : down >> 16);
}

// The public conversion rounds to nearest even whatever the caller's rounding mode: float16's
// subnormal range included (its units of 2^-24, where a float's scaled value was once rounded
// by the current mode). Every float of magnitude [2^-26, 2^-14) and a little beyond, both
// signs, against the results in the default mode.
TEST(HalfConversions, Float16RoundsToNearestInEveryRoundingMode) {
  std::vector<std::uint32_t> inputs;
  for (std::uint32_t bits = 0x32800000u; bits < 0x38900000u; bits += 7) {
    inputs.push_back(bits);
    inputs.push_back(bits | 0x80000000u);
  }
  std::vector<std::uint16_t> nearest(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    float v;
    std::memcpy(&v, &inputs[i], 4);
    nearest[i] = bnorm::float16::from_float(v).bits;
  }
  for (const int mode : {FE_UPWARD, FE_DOWNWARD, FE_TOWARDZERO}) {
    ASSERT_EQ(std::fesetround(mode), 0);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      float v;
      std::memcpy(&v, &inputs[i], 4);
      differ += bnorm::float16::from_float(v).bits != nearest[i];
    }
    std::fesetround(FE_TONEAREST);
    EXPECT_EQ(differ, 0u) << "rounding mode " << mode;
  }
  // Ties in the subnormal range go to even: 1.5 and 2.5 units of 2^-24.
  EXPECT_EQ(bnorm::float16::from_float(0x1.8p-24f).bits, 2);
  EXPECT_EQ(bnorm::float16::from_float(0x1.4p-23f).bits, 2);
  EXPECT_EQ(bnorm::float16::from_float(0x1p-25f).bits, 0);
  EXPECT_EQ(bnorm::float16::from_float(0x1.000002p-25f).bits, 1);
}

TEST(HalfConversions, Float16MatchesTheCompilersFloat16) {
  // Every float16 to float and back, and floats around every float16 boundary.
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    _Float16 reference;
    const std::uint16_t bits = static_cast<std::uint16_t>(h);
    std::memcpy(&reference, &bits, 2);
    const float widened = bnorm::kernels::to_float(float16{bits});
    if (std::isnan(static_cast<float>(reference))) {
      ASSERT_TRUE(std::isnan(widened)) << h;
      continue;
    }
    ASSERT_EQ(widened, static_cast<float>(reference)) << h;
    ASSERT_EQ(bnorm::kernels::to_float16(widened).bits, bits) << h;
  }
  auto rng = make_rng(11);
  std::uniform_int_distribution<std::uint32_t> any;
  for (int i = 0; i < 2000000; ++i) {
    std::uint32_t bits = any(rng);
    if (i % 2) bits = (bits & 0x80000000u) | (0x33000000u + bits % 0x14800000u);  // near range
    float v;
    std::memcpy(&v, &bits, 4);
    const _Float16 reference = static_cast<_Float16>(v);
    std::uint16_t want;
    std::memcpy(&want, &reference, 2);
    const std::uint16_t got = bnorm::kernels::to_float16(v).bits;
    if (std::isnan(v)) {
      ASSERT_EQ(got & 0x7C00, 0x7C00) << bits;
      ASSERT_NE(got & 0x3FF, 0) << bits;
      continue;
    }
    ASSERT_EQ(got, want) << std::hex << bits;
  }
}

TEST(HalfConversions, BFloat16RoundsToNearestEven) {
  auto rng = make_rng(12);
  std::uniform_int_distribution<std::uint32_t> any;
  const std::uint32_t edges[] = {0x00000000u, 0x80000000u, 0x00008000u, 0x00018000u, 0x3F808000u,
                                 0x3F818000u, 0x7F7F7FFFu, 0x7F7F8000u, 0x7F7FFFFFu, 0xFF7F8000u,
                                 0x7F800000u, 0x7FC00001u, 0x00000001u, 0x807FFFFFu};
  for (int i = 0; i < 4000000; ++i) {
    const std::uint32_t bits = i < 14 ? edges[i] : any(rng);
    float v;
    std::memcpy(&v, &bits, 4);
    const std::uint16_t got = bnorm::kernels::to_bfloat16(v).bits;
    ASSERT_EQ(got, reference_bfloat16(v)) << std::hex << bits;
    if (!std::isnan(v) && std::fabs(v) >= FLT_MIN) {  // subnormal floats may round to zero
      const float back = bnorm::kernels::to_float(bfloat16{got});
      ASSERT_TRUE(std::isinf(back) || std::fabs(back - v) <= std::fabs(v) * std::ldexp(1.0f, -8))
          << std::hex << bits;
    }
  }
}

/// One unit in the last place of the storage type at v (its subnormal spacing below).
double ulp_of(bnorm::dtype d, double v) {
  const int fraction_bits = d == bnorm::dtype::bf16 ? 7 : 10;
  const int min_exponent = d == bnorm::dtype::bf16 ? -126 : -14;
  int exponent = 0;
  std::frexp(std::fabs(v), &exponent);  // |v| in [2^(e-1), 2^e)
  return std::ldexp(1.0, std::max(exponent - 1, min_exponent) - fraction_bits);
}

struct half_tensor {
  bnorm::dtype d;
  std::vector<std::uint16_t> bits;
  std::vector<double> values;  // decoded

  half_tensor(bnorm::dtype type, const std::vector<double>& wanted) : d(type) {
    for (const double v : wanted) {
      const float f = static_cast<float>(v);
      bits.push_back(d == bnorm::dtype::bf16 ? bnorm::kernels::to_bfloat16(f).bits
                                             : bnorm::kernels::to_float16(f).bits);
    }
    decode();
  }
  void decode() {
    values.clear();
    for (const std::uint16_t b : bits) {
      values.push_back(d == bnorm::dtype::bf16 ? bnorm::kernels::to_float(bfloat16{b})
                                               : bnorm::kernels::to_float(float16{b}));
    }
  }
};

struct half_case {
  const char* name;
  bnorm::tensor_shape shape;
  layout l;
  double mean;
};

const half_case half_cases[] = {
    {"vectors", {64, 24}, layout::channels_first, 0.5},
    {"planes_fused", {4, 12, 9, 9}, layout::channels_first, -1.0},
    {"rows", {4, 12, 9, 9}, layout::channels_last, 2.0},
    {"planes_two_pass", {8, 3, 80000}, layout::channels_first, 0.25},  // 1.2 MiB channels
    {"rows_two_pass", {16, 40, 30, 30}, layout::channels_last, 0.0},
    {"rows_in_column_blocks", {1, 1001, 300}, layout::channels_last, -0.5},
    {"volumes", {2, 5, 3, 7, 6}, layout::channels_last, 3.0},
    {"few_wide_rows", {1, 512, 7, 7}, layout::channels_last, 1.0},
    // Rows of 2 KiB, too narrow for column blocks: training in row tasks on two threads, the
    // backward in one block (392 KiB) or in two passes (1 MiB).
    {"narrow_rows_in_row_tasks", {1, 1024, 14, 14}, layout::channels_last, -2.0},
    {"narrow_rows_in_row_tasks_1mib", {512, 1024}, layout::channels_last, 0.75},
    {"batch_one_short_planes",
     {1, 37, 7, 7},
     layout::channels_first,
     1.5},  // one image, short planes
    {"mean_far_from_zero", {16, 6, 50}, layout::channels_first, 40.0},
};

class HalfStorage
    : public testing::TestWithParam<std::tuple<bnorm::isa, bnorm::dtype, std::size_t>> {};

TEST_P(HalfStorage, EveryPathWithinOneUlpOfFloat64) {
  const auto [id, d, which] = GetParam();
  const half_case& k = half_cases[which];
  const geometry g(k.shape);
  bnorm::plan_options opts;
  opts.max_isa = id;
  const bnorm::plan plan = make_plan_or_fail({k.shape, k.l, d}, opts);
  const half_tensor x(d, normal_data<double>(g.elements(), k.mean, 1.0, 31));
  const half_tensor dy(d, normal_data<double>(g.elements(), 0.0, 1.0, 32));
  const std::vector<float> gamma = normal_data<float>(g.c, 1.0, 0.3, 33);
  const std::vector<float> beta = normal_data<float>(g.c, 0.0, 1.0, 34);
  std::vector<std::uint16_t> y(x.bits.size()), dx(x.bits.size());
  std::vector<float> mean(g.c), inv(g.c), rm(g.c, 0.0f), rv(g.c, 1.0f), dgamma(g.c), dbeta(g.c);

  bnorm::training_args a;
  a.src = x.bits.data();
  a.dst = y.data();
  a.scale = in(gamma);
  a.shift = in(beta);
  a.batch_mean = out(mean);
  a.batch_inv_std = out(inv);
  a.running_mean = out(rm);
  a.running_var = out(rv);
  ASSERT_TRUE(plan.forward_training(a));

  // The statistics, from the decoded inputs, as exact as float32's.
  const reference_stats ref = reference_moments(x.values, k.shape, k.l);
  for (std::size_t c = 0; c < g.c; ++c) {
    const double want_inv = 1.0 / std::sqrt(ref.variance[c] + 1e-5);
    EXPECT_NEAR(inv[c], want_inv, 1e-6 * want_inv) << c;
    EXPECT_NEAR(mean[c], ref.mean[c], 1e-6 * std::max(1.0, std::fabs(ref.mean[c]))) << c;
  }
  // y within one ulp of the storage type of the float64 value (float32's own rounding, 1e-6
  // of max(1, |y|), where the storage type is finer: float16's subnormals).
  const auto check = [&](const std::vector<std::uint16_t>& got_bits,
                         const std::vector<double>& want, double scale, const char* what) {
    half_tensor got(d, {});
    got.bits = got_bits;
    got.decode();
    // The worst in ulps where the ulp bound governs, and in absolute terms (of max(1, |y|))
    // where float32's own rounding does (values near zero, whose ulp in the storage type is
    // finer than float32's rounding of the computation).
    double worst_ulps = 0.0, worst_near_zero = 0.0;
    std::size_t exact = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      const double error = std::fabs(got.values[i] - want[i]);
      const double ulp = ulp_of(d, want[i]);
      const double float_rounding = 1e-6 * std::max(scale, std::fabs(want[i]));
      const double bound = std::max(ulp, float_rounding);
      keep_worst(ulp >= float_rounding ? worst_ulps : worst_near_zero,
                 ulp >= float_rounding ? error / ulp : error / std::max(scale, std::fabs(want[i])));
      if (error <= 0.5 * ulp) ++exact;
      ASSERT_LE(error, bound) << what << " at " << i << ": " << got.values[i] << " for " << want[i];
    }
    std::printf("[ %s ] %s %s %s: worst %.2f ulp, %.2f%% correctly rounded; near zero %.2g\n", what,
                bnorm::to_string(d), k.name, bnorm::to_string(id), worst_ulps,
                100.0 * static_cast<double>(exact) / static_cast<double>(want.size()),
                worst_near_zero);
  };
  const std::vector<double> gamma64(gamma.begin(), gamma.end()), beta64(beta.begin(), beta.end());
  const std::vector<double> y_ref =
      reference_normalize(x.values, k.shape, k.l, ref.mean, ref.variance, 1e-5, gamma64, beta64);
  check(y, y_ref, 1.0, "half y");

  // Inference from the running statistics.
  bnorm::inference_args i;
  i.src = x.bits.data();
  i.dst = y.data();
  i.scale = in(gamma);
  i.shift = in(beta);
  i.mean = in(rm);
  i.var = in(rv);
  ASSERT_TRUE(plan.forward_inference(i));
  std::vector<double> rm64(rm.begin(), rm.end()), rv64(rv.begin(), rv.end());
  check(y, reference_normalize(x.values, k.shape, k.l, rm64, rv64, 1e-5, gamma64, beta64), 1.0,
        "half inference");

  // The training backward, from the saved statistics.
  bnorm::backward_args b;
  b.src = x.bits.data();
  b.diff_dst = dy.bits.data();
  b.diff_src = dx.data();
  b.scale = in(gamma);
  b.mean = in(mean);
  b.inv_std = in(inv);
  b.diff_scale = out(dgamma);
  b.diff_shift = out(dbeta);
  ASSERT_TRUE(plan.backward_training(b));
  const std::vector<double> inv64(inv.begin(), inv.end()), mean64(mean.begin(), mean.end());
  const reference_gradients grads =
      reference_backward(x.values, dy.values, k.shape, k.l, mean64, inv64, gamma64, true);
  double dx_scale = 1.0;
  for (const double v : grads.dx) dx_scale = std::max(dx_scale, std::fabs(v));
  check(dx, grads.dx, dx_scale, "half dx");
  for (std::size_t c = 0; c < g.c; ++c) {
    EXPECT_NEAR(dgamma[c], grads.dgamma[c], 1e-6 * grads.abs_dgamma[c]) << c;
    EXPECT_NEAR(dbeta[c], grads.dbeta[c], 1e-6 * grads.abs_dbeta[c]) << c;
  }

  // The same bits on one thread.
  opts.max_threads = 1;
  const bnorm::plan serial = make_plan_or_fail({k.shape, k.l, d}, opts);
  std::vector<std::uint16_t> y1(y.size());
  a.dst = y1.data();
  std::vector<float> rm1(g.c, 0.0f), rv1(g.c, 1.0f);
  a.running_mean = out(rm1);
  a.running_var = out(rv1);
  ASSERT_TRUE(serial.forward_training(a));
  ASSERT_TRUE(plan.forward_training(a));
  std::vector<std::uint16_t> y2 = y1;
  ASSERT_TRUE(serial.forward_training(a));
  EXPECT_EQ(y1, y2);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, HalfStorage,
    testing::Combine(testing::ValuesIn(isas_under_test()),
                     testing::Values(bnorm::dtype::bf16, bnorm::dtype::f16),
                     testing::Range<std::size_t>(0, std::size(half_cases))),
    [](const testing::TestParamInfo<std::tuple<bnorm::isa, bnorm::dtype, std::size_t>>& info) {
      return std::string(half_cases[std::get<2>(info.param)].name) + "_" +
             bnorm::to_string(std::get<1>(info.param)) + "_" +
             bnorm::to_string(std::get<0>(info.param));
    });

TEST(HalfStorage, NanStaysNanAndOverflowBecomesInfinity) {
  for (const bnorm::dtype d : {bnorm::dtype::bf16, bnorm::dtype::f16}) {
    const bnorm::plan plan = make_plan_or_fail({{4, 2}, layout::channels_first, d}, {});
    half_tensor x(d, {1.0, 1.0, NAN, 2.0, 3.0, 0.5, 4.0, 1.0});
    std::vector<std::uint16_t> y(8);
    std::vector<float> mean{0.0f, 0.0f}, var{1.0f, 1.0f}, gamma{1.0f, 1e6f};
    bnorm::inference_args i;
    i.src = x.bits.data();
    i.dst = y.data();
    i.scale = in(gamma);
    i.mean = in(mean);
    i.var = in(var);
    ASSERT_TRUE(plan.forward_inference(i));
    half_tensor got(d, {});
    got.bits = y;
    got.decode();
    EXPECT_TRUE(std::isnan(got.values[2])) << bnorm::to_string(d);
    // channel 1 scaled by 1e6: beyond float16's range (65504), within bfloat16's.
    EXPECT_EQ(std::isinf(got.values[1]), d == bnorm::dtype::f16) << bnorm::to_string(d);
  }
}

// A mean within a quarter of the standard deviation may fold into the shift, x·a + (β − mean·a),
// at the cost of the rounding of mean·a; with γ 2.2e29 that rounding is 1e11, which float16
// holds as an infinity. Such a channel keeps its center: x at the mean gives β exactly (found by
// the fuzzer: float16 inference gave inf against a reference of 1.4e-45, which float16 holds
// as 0). Nine channels: a vector of them and one alone, on every ISA and layout.
TEST(HalfStorage, AHugeGammaKeepsItsCenter) {
  for (const bnorm::isa isa : bnorm::available_isas()) {
    for (const bnorm::dtype d : {bnorm::dtype::bf16, bnorm::dtype::f16}) {
      for (const layout l : {layout::channels_first, layout::channels_last}) {
        const bnorm::tensor_shape shape{3, 9, 5};
        const geometry g(shape);
        bnorm::plan_options opts;
        opts.max_isa = isa;
        const bnorm::plan plan = make_plan_or_fail({shape, l, d}, opts);
        const half_tensor x(d, std::vector<double>(g.elements(), -2996.0));
        const std::vector<float> mean(g.c, static_cast<float>(x.values[0]));
        const std::vector<float> var(g.c, 1.5294118e29f), gamma(g.c, -2.2352e29f), beta(g.c, 0.0f);
        std::vector<std::uint16_t> y(x.bits.size(), 0x1234);  // not ±0: y must be written
        bnorm::inference_args i;
        i.src = x.bits.data();
        i.dst = y.data();
        i.scale = in(gamma);
        i.shift = in(beta);
        i.mean = in(mean);
        i.var = in(var);
        ASSERT_TRUE(plan.forward_inference(i));
        for (std::size_t k = 0; k < y.size(); ++k) {
          ASSERT_EQ(y[k] & 0x7fffu, 0u)
              << bnorm::to_string(isa) << " " << bnorm::to_string(d) << " "
              << (l == layout::channels_last ? "nhwc" : "nchw") << " at " << k;
        }
      }
    }
  }
}

}  // namespace

namespace {

/// y of an inference call of a half-storage plan without γ and β (statistics in float32),
/// decoded; z the residual of add+ReLU, if any.
half_tensor infer_half(const bnorm::plan& plan, const half_tensor& x,
                       const std::vector<float>& mean, const std::vector<float>& var,
                       const half_tensor* z = nullptr) {
  std::vector<std::uint16_t> y(x.bits.size(), 0x7FC1);  // a NaN in both types: y must be written
  bnorm::inference_args i;
  i.src = x.bits.data();
  i.dst = y.data();
  i.mean = in(mean);
  i.var = in(var);
  if (z != nullptr) i.residual = z->bits.data();
  const bnorm::status st = plan.forward_inference(i);
  EXPECT_TRUE(st.ok()) << st.message();
  half_tensor got(x.d, {});
  got.bits = y;
  got.decode();
  return got;
}

// ReLU, clamp and add+ReLU fused into a half-storage inference, on every ISA and layout: each
// output within an ulp of the storage type of the activation of the float64 reference.
TEST(HalfStorage, FusedActivationsReadAndWriteTheStorageType) {
  const double lo = -0.5, hi = 0.7;
  for (const bnorm::isa isa : isas_under_test()) {
    for (const bnorm::activation a :
         {bnorm::activation::relu, bnorm::activation::clamp, bnorm::activation::add_relu}) {
      for (const bnorm::dtype d : {bnorm::dtype::bf16, bnorm::dtype::f16}) {
        for (const layout l : {layout::channels_first, layout::channels_last}) {
          const bnorm::tensor_shape shape{3, 5, 4, 7};
          const geometry g(shape);
          bnorm::plan_options opts;
          opts.max_isa = isa;
          opts.activation = a;
          opts.clamp_min = lo;
          opts.clamp_max = hi;
          const bnorm::plan plan = make_plan_or_fail({shape, l, d}, opts);
          const half_tensor x(d, normal_data<double>(g.elements(), 1.0, 2.0, 41));
          const half_tensor z(d, normal_data<double>(g.elements(), 0.0, 1.0, 42));
          const std::vector<float> mean = normal_data<float>(g.c, 1.0, 0.5, 43);
          const std::vector<float> var(g.c, 3.0f);
          const bool add = a == bnorm::activation::add_relu;
          const half_tensor got = infer_half(plan, x, mean, var, add ? &z : nullptr);
          for (std::size_t e = 0; e < x.values.size(); ++e) {
            const std::size_t c = l == layout::channels_first ? e / g.spatial % g.c : e % g.c;
            const double y = (x.values[e] - mean[c]) / std::sqrt(3.0 + 1e-5);
            const double want = a == bnorm::activation::clamp
                                    ? std::min(hi, std::max(lo, y))
                                    : std::max(0.0, y + (add ? z.values[e] : 0.0));
            ASSERT_LE(std::fabs(got.values[e] - want), std::max(ulp_of(d, want), 1e-6))
                << bnorm::to_string(isa) << " " << bnorm::to_string(a) << " " << bnorm::to_string(d)
                << " " << e;
          }
        }
      }
    }
  }
}

// Clamp bounds are given in float; one beyond the storage type's range gives what storing it
// gives, the type's own rounding of it: f16 holds 65519 as 65504 and 65520 or 1e29 as
// infinities, bf16 holds 3.38e38 as 3.3895e38 and 3.4e38 as infinity.
TEST(HalfStorage, ClampBoundsBeyondTheStorageRangeRoundAsStoredValues) {
  const double bounds[] = {65519.0, 65520.0, -1e5, -1e29, 3.38e38, -3.4e38};
  for (const bnorm::dtype d : {bnorm::dtype::bf16, bnorm::dtype::f16}) {
    for (const double bound : bounds) {
      const bnorm::tensor_shape shape{2, 3, 5, 7};
      const geometry g(shape);
      bnorm::plan_options opts;
      opts.activation = bnorm::activation::clamp;
      opts.clamp_min = opts.clamp_max = bound;  // every output is the bound, as stored
      const bnorm::plan plan = make_plan_or_fail({shape, layout::channels_last, d}, opts);
      const half_tensor x(d, normal_data<double>(g.elements(), 1.0, 2.0, 44));
      const std::vector<float> mean(g.c, 0.5f), var(g.c, 2.0f);
      const half_tensor y = infer_half(plan, x, mean, var);
      const float f = static_cast<float>(bound);
      std::uint16_t want = reference_bfloat16(f);
      if (d == bnorm::dtype::f16) {
        const _Float16 h = static_cast<_Float16>(f);
        std::memcpy(&want, &h, 2);
      }
      for (const std::uint16_t got : y.bits) {
        ASSERT_EQ(got, want) << bnorm::to_string(d) << " clamp bound " << bound;
      }
    }
  }
}

// The clamp's backward with half storage: a clamped output holds its bound rounded to the
// storage type, which may lie inside the float bounds (bfloat16's 0.1 is 0.10009765625); the
// gradient through it is still 0, as PyTorch's hardtanh_backward gives where the input lay
// beyond a bound. Inputs far from the bounds, the reference from them in float64.
TEST(HalfStorage, ClampBackwardMasksEveryClampedOutput) {
  struct bounds {
    bnorm::dtype d;
    double lo, hi;
  };
  for (const bounds b : {bounds{bnorm::dtype::bf16, 0.1, 0.3}, bounds{bnorm::dtype::f16, -0.1, 0.1},
                         bounds{bnorm::dtype::bf16, -0.3, -0.1}}) {
    SCOPED_TRACE(std::string(bnorm::to_string(b.d)) + " [" + std::to_string(b.lo) + ", " +
                 std::to_string(b.hi) + "]");
    bnorm::plan_options opts;
    opts.activation = bnorm::activation::clamp;
    opts.clamp_min = b.lo;
    opts.clamp_max = b.hi;
    const bnorm::tensor_shape shape{8, 1};
    const bnorm::plan plan = make_plan_or_fail({shape, layout::channels_first, b.d, 0.0}, opts);
    const double mid = (b.lo + b.hi) / 2;
    const half_tensor x(b.d, {-1.0, 0.0, b.lo - 0.05, mid, mid + 0.01, b.hi + 0.05, 1.0, mid});
    const std::vector<float> mean = {0.0f}, var = {1.0f};
    const half_tensor y = infer_half(plan, x, mean, var);
    const half_tensor dy(b.d, std::vector<double>(8, 1.0));
    std::vector<std::uint16_t> dx(8, 0x1234);
    bnorm::backward_args a;
    a.diff_dst = dy.bits.data();
    a.dst = y.bits.data();
    a.diff_src = dx.data();
    a.var = in(var);
    const bnorm::status st = plan.backward_frozen(a);
    ASSERT_TRUE(st.ok()) << st.message();
    const half_tensor one(b.d, {1.0}), zero(b.d, {0.0});
    for (std::size_t e = 0; e < 8; ++e) {
      const bool inside = x.values[e] > b.lo && x.values[e] < b.hi;
      EXPECT_EQ(dx[e], inside ? one.bits[0] : zero.bits[0]) << "x = " << x.values[e];
    }
  }
}

// A finite clamp bound that the storage type holds as an infinity (float16's 1e5, float32's
// 3.5e38) still clamps: the outputs clamped to it, stored as +inf, pass no gradient, where a
// bound given as infinite would pass them (dβ = Σ masked dy, dγ = Σ masked dy·x̂ of the frozen
// backward, mean 0, variance 1, eps 0: x̂ = x). Every ISA.
TEST(HalfStorage, FiniteClampBoundsHeldAsInfinityStillClamp) {
  struct bound_case {
    bnorm::dtype d;
    double clamp_max;
    float gamma;
  };
  for (const bound_case k :
       {bound_case{bnorm::dtype::f16, 1e5, 2e4f}, bound_case{bnorm::dtype::f32, 3.5e38, 1e38f}}) {
    for (const bnorm::isa id : isas_under_test()) {
      SCOPED_TRACE(std::string(bnorm::to_string(k.d)) + " " + bnorm::to_string(id));
      bnorm::plan_options opts;
      opts.max_isa = id;
      opts.activation = bnorm::activation::clamp;
      opts.clamp_min = -INFINITY;
      opts.clamp_max = k.clamp_max;
      const bnorm::plan plan = make_plan_or_fail({{4, 1}, layout::channels_first, k.d, 0.0}, opts);
      // x̂ = -1, 0, 2, 8: γ·x̂ below, inside and (the last) beyond clamp_max.
      const std::vector<double> xs = {-1.0, 0.0, 2.0, 8.0};
      const std::vector<float> gamma = {k.gamma}, mean = {0.0f}, var = {1.0f};
      std::vector<std::uint16_t> x16, y16(4), dy16;
      std::vector<float> x32(xs.begin(), xs.end()), y32(4), dy32(4, 1.0f);
      const bool half = k.d == bnorm::dtype::f16;
      if (half) {
        x16 = half_tensor(k.d, xs).bits;
        dy16 = half_tensor(k.d, {1.0, 1.0, 1.0, 1.0}).bits;
      }
      bnorm::inference_args i;
      i.src = half ? static_cast<const void*>(x16.data()) : x32.data();
      i.dst = half ? static_cast<void*>(y16.data()) : y32.data();
      i.scale = in(gamma);
      i.mean = in(mean);
      i.var = in(var);
      ASSERT_TRUE(plan.forward_inference(i).ok());
      std::vector<float> dgamma(1, 7.0f), dbeta(1, 7.0f);
      bnorm::backward_args b;
      b.src = i.src;
      b.diff_dst = half ? static_cast<const void*>(dy16.data()) : dy32.data();
      b.dst = i.dst;
      b.scale = in(gamma);
      b.mean = in(mean);
      b.var = in(var);
      b.diff_scale = out(dgamma);
      b.diff_shift = out(dbeta);
      const bnorm::status st = plan.backward_frozen(b);
      ASSERT_TRUE(st.ok()) << st.message();
      EXPECT_EQ(dbeta[0], 3.0f);   // the last output clamped: no gradient
      EXPECT_EQ(dgamma[0], 1.0f);  // -1 + 0 + 2
    }
  }
}

// A mean's residual is kept in float32 or float64 parameters: half-type ones are refused by
// name, in the forward and the backward, before anything is written.
TEST(HalfStorage, MeanResidualsWantFloatParameters) {
  bnorm::plan_options opts;
  opts.parameter_dtype = bnorm::dtype::bf16;
  opts.update_running_stats = false;
  const bnorm::plan plan =
      make_plan_or_fail({{4, 2}, layout::channels_first, bnorm::dtype::bf16}, opts);
  const half_tensor x(bnorm::dtype::bf16, {1, 2, 3, 4, 5, 6, 7, 8});
  std::vector<std::uint16_t> y(8, 0x1234), mean(2, 0x1234), residual(2, 0x1234);
  bnorm::training_args a;
  a.src = x.bits.data();
  a.dst = y.data();
  a.batch_mean = {mean.data(), 2};
  a.batch_mean_residual = {residual.data(), 2};
  bnorm::status s = plan.forward_training(a);
  EXPECT_NE(
      std::string(s.message()).find("batch_mean_residual: expected none with bf16 parameters"),
      std::string::npos)
      << s.message();
  EXPECT_EQ(y, std::vector<std::uint16_t>(8, 0x1234));
  EXPECT_EQ(mean, std::vector<std::uint16_t>(2, 0x1234));
  std::vector<std::uint16_t> dx(8, 0x1234), inv(2, 0x3F80);
  bnorm::backward_args b;
  b.src = x.bits.data();
  b.diff_dst = x.bits.data();
  b.diff_src = dx.data();
  b.mean = {mean.data(), 2};
  b.mean_residual = {residual.data(), 2};
  b.inv_std = {inv.data(), 2};
  s = plan.backward_training(b);
  EXPECT_NE(std::string(s.message()).find("mean_residual: expected none with bf16 parameters"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(dx, std::vector<std::uint16_t>(8, 0x1234));
}

// Where the add+ReLU mask passes dy, dz is dy through float32 and back at every position, the
// vectors' and the scalar tail's alike: a signaling NaN leaves as the format's conversions leave
// it (bfloat16's canonical 0x7FC0; float16 quieted with its payload), not as raw bits in some
// positions and converted in others.
TEST(HalfStorage, MaskedGradientNansLeaveAlikeAtEveryPosition) {
  struct nan_case {
    bnorm::dtype d;
    std::uint16_t signaling, converted;
  };
  for (const nan_case c :
       {nan_case{bnorm::dtype::bf16, 0x7F81, 0x7FC0}, nan_case{bnorm::dtype::bf16, 0xFF81, 0x7FC0},
        nan_case{bnorm::dtype::f16, 0x7C01, 0x7E01}, nan_case{bnorm::dtype::f16, 0xFC05, 0xFE05}}) {
    for (const bnorm::isa id : isas_under_test()) {
      SCOPED_TRACE(std::string(bnorm::to_string(c.d)) + " " + bnorm::to_string(id));
      bnorm::plan_options opts;
      opts.max_isa = id;
      opts.activation = bnorm::activation::add_relu;
      const std::size_t n = 37;  // whole vectors and a tail on every ISA
      const bnorm::plan plan = make_plan_or_fail(
          {{1, 1, static_cast<std::int64_t>(n)}, layout::channels_first, c.d, 0.0}, opts);
      const half_tensor x(c.d, std::vector<double>(n, 1.0)), z(c.d, std::vector<double>(n, 0.0));
      const std::vector<float> mean = {0.0f}, var = {1.0f};
      const half_tensor y = infer_half(plan, x, mean, var, &z);
      const std::vector<std::uint16_t> dy(n, c.signaling);
      std::vector<std::uint16_t> dx(n, 0x1234), dz(n, 0x1234);
      bnorm::backward_args a;
      a.diff_dst = dy.data();
      a.dst = y.bits.data();
      a.diff_src = dx.data();
      a.diff_residual = dz.data();
      a.var = in(var);
      const bnorm::status st = plan.backward_frozen(a);
      ASSERT_TRUE(st.ok()) << st.message();
      for (std::size_t e = 0; e < n; ++e) {
        EXPECT_EQ(dz[e], c.converted) << "at " << e;
      }
    }
  }
}

}  // namespace

namespace {

/// Per-channel values rounded to a half type, as its bits and as floats.
struct half_channels {
  std::vector<std::uint16_t> bits;
  std::vector<float> values;
  half_channels(bnorm::dtype d, const std::vector<double>& wanted) {
    const half_tensor t(d, wanted);
    bits = t.bits;
    values.assign(t.values.begin(), t.values.end());
  }
};

// Half-type per-channel buffers that a call does not write keep their bits (signaling NaNs
// as sentinels: a round trip through float32 would quiet them): the running statistics of a
// plan that does not update them, and every output of the distributed local steps, which
// write their exchange block alone.
TEST(HalfStorage, ParametersACallDoesNotWriteKeepTheirBits) {
  for (const bnorm::dtype d : {bnorm::dtype::bf16, bnorm::dtype::f16}) {
    SCOPED_TRACE(bnorm::to_string(d));
    const std::uint16_t sentinel = d == bnorm::dtype::bf16 ? 0x7f81 : 0x7c01;
    const bnorm::tensor_shape shape{8, 4};
    const geometry g(shape);
    bnorm::plan_options opts;
    opts.parameter_dtype = d;
    opts.update_running_stats = false;
    const bnorm::plan plan = make_plan_or_fail({shape, layout::channels_last, d}, opts);
    const half_tensor x(d, normal_data<double>(g.elements(), 2.0, 1.5, 61));
    const half_tensor dy(d, normal_data<double>(g.elements(), 0.0, 1.0, 62));
    std::vector<std::uint16_t> y(x.bits.size()), mean(g.c, sentinel), inv(g.c, sentinel),
        rm(g.c, sentinel), rv(g.c, sentinel);
    bnorm::training_args a;
    a.src = x.bits.data();
    a.dst = y.data();
    a.batch_mean = {mean.data(), g.c};
    a.batch_inv_std = {inv.data(), g.c};
    a.running_mean = {rm.data(), g.c};
    a.running_var = {rv.data(), g.c};
    ASSERT_TRUE(plan.forward_training(a));
    EXPECT_NE(mean, std::vector<std::uint16_t>(g.c, sentinel));  // written
    EXPECT_EQ(rm, std::vector<std::uint16_t>(g.c, sentinel));
    EXPECT_EQ(rv, std::vector<std::uint16_t>(g.c, sentinel));

    std::fill(mean.begin(), mean.end(), sentinel);
    std::fill(inv.begin(), inv.end(), sentinel);
    std::vector<double> exchange(bnorm::statistics_exchange_size(g.c));
    ASSERT_TRUE(plan.local_statistics(a, exchange.data(), exchange.size()));
    EXPECT_EQ(exchange[0], 8.0);
    for (const auto* buffer : {&mean, &inv, &rm, &rv}) {
      EXPECT_EQ(*buffer, std::vector<std::uint16_t>(g.c, sentinel));
    }

    half_channels saved_mean(d, std::vector<double>(g.c, 2.0));
    half_channels saved_inv(d, std::vector<double>(g.c, 0.5));
    std::vector<std::uint16_t> dgamma(g.c, sentinel), dbeta(g.c, sentinel);
    bnorm::backward_args b;
    b.src = x.bits.data();
    b.diff_dst = dy.bits.data();
    b.mean = {saved_mean.bits.data(), g.c};
    b.inv_std = {saved_inv.bits.data(), g.c};
    b.diff_scale = {dgamma.data(), g.c};
    b.diff_shift = {dbeta.data(), g.c};
    std::vector<double> sums(bnorm::gradient_exchange_size(g.c));
    ASSERT_TRUE(plan.local_gradient_sums(b, sums.data(), sums.size()));
    EXPECT_EQ(dgamma, std::vector<std::uint16_t>(g.c, sentinel));
    EXPECT_EQ(dbeta, std::vector<std::uint16_t>(g.c, sentinel));
  }
}

// Half-type per-channel outputs are the float64 values rounded once: values just past a half
// tie whose float32 rounding lands on the tie (and from there went to the even side, 0.5 ulp
// and a little off). Batch mean 1 + 2^-8 + 2^-24 (bfloat16 0x3F81, float16 exact) from 2^17
// values; dβ = Σdy = 1 + 2^-8 + 2^-24 (bfloat16) and 1 + 2^-11 + 2^-24 (float16 0x3C01) from
// three (2^-24 half a float32 ulp of 1: a float32 tie too, to the even side); every ISA.
TEST(HalfStorage, ParametersRoundOnceFromFloat64) {
  for (const bnorm::isa id : isas_under_test()) {
    SCOPED_TRACE(bnorm::to_string(id));
    bnorm::plan_options opts;
    opts.max_isa = id;
    opts.parameter_dtype = bnorm::dtype::bf16;
    const std::size_t n = std::size_t{1} << 17;
    std::vector<std::uint16_t> x(n, 0x3F80), y(n), mean(1), inv_std(1), rm(1, 0), rv(1, 0x3F80);
    for (std::size_t i = 0; i <= n / 2; ++i) x[2 * i % n + (i == n / 2)] = 0x3F81;  // 1 + 2^-7
    bnorm::training_args a;
    a.src = x.data();
    a.dst = y.data();
    a.batch_mean = {mean.data(), 1};
    a.batch_inv_std = {inv_std.data(), 1};
    a.running_mean = {rm.data(), 1};
    a.running_var = {rv.data(), 1};
    opts.momentum = 1.0;  // the running mean is the batch mean
    const bnorm::plan train = make_plan_or_fail(
        {{static_cast<std::int64_t>(n), 1}, layout::channels_first, bnorm::dtype::bf16}, opts);
    ASSERT_TRUE(train.forward_training(a));
    EXPECT_EQ(mean[0], 0x3F81);
    EXPECT_EQ(rm[0], 0x3F81);
    for (const bnorm::dtype d : {bnorm::dtype::bf16, bnorm::dtype::f16}) {
      const bool bf16 = d == bnorm::dtype::bf16;
      const half_tensor dy(d, {1.0, bf16 ? 0x1p-8 : 0x1p-11, 0x1p-24});
      const half_tensor x3(d, {0.5, -1.0, 2.0});
      ASSERT_EQ(dy.values[2], 0x1p-24) << "exact in the half type";
      half_channels m(d, {0.0}), inv(d, {1.0});
      std::vector<std::uint16_t> dgamma(1), dbeta(1);
      bnorm::backward_args b;
      b.src = x3.bits.data();
      b.diff_dst = dy.bits.data();
      b.mean = {m.bits.data(), 1};
      b.inv_std = {inv.bits.data(), 1};
      b.diff_scale = {dgamma.data(), 1};
      b.diff_shift = {dbeta.data(), 1};
      bnorm::plan_options back_opts;
      back_opts.max_isa = id;
      back_opts.parameter_dtype = d;
      const bnorm::plan back = make_plan_or_fail({{3, 1}, layout::channels_first, d}, back_opts);
      ASSERT_TRUE(back.backward_training(b));
      EXPECT_EQ(dbeta[0], bf16 ? 0x3F81 : 0x3C01) << bnorm::to_string(d);
    }
  }
}

TEST(HalfStorage, ParametersInTheStorageTypeAreTheFloatOnesRounded) {
  for (const bnorm::dtype d : {bnorm::dtype::bf16, bnorm::dtype::f16}) {
    const bnorm::tensor_shape shape{6, 5, 3, 4};
    const geometry g(shape);
    bnorm::plan_options as_float, as_storage;
    as_storage.parameter_dtype = d;
    const bnorm::plan plan_f = make_plan_or_fail({shape, layout::channels_first, d}, as_float);
    const bnorm::plan plan_h = make_plan_or_fail({shape, layout::channels_first, d}, as_storage);
    const half_tensor x(d, normal_data<double>(g.elements(), 2.0, 1.5, 51));
    const half_tensor dy(d, normal_data<double>(g.elements(), 0.0, 1.0, 52));
    half_channels gamma(d, normal_data<double>(g.c, 1.0, 0.3, 53));
    half_channels beta(d, normal_data<double>(g.c, 0.0, 1.0, 54));
    half_channels running(d, std::vector<double>(g.c, 1.0));
    // Float parameters (exactly the half values), then half ones: the same y, and the
    // per-channel outputs the float ones rounded, wherever the float is no half-type tie (at a
    // tie, the float64 value's side decides: HalfStorage.ParametersRoundOnceFromFloat64).
    std::vector<std::uint16_t> y_f(x.bits.size()), y_h(x.bits.size());
    std::vector<float> mean_f(g.c), inv_f(g.c), rm_f(g.c, 0.0f), rv_f = running.values;
    std::vector<std::uint16_t> mean_h(g.c), inv_h(g.c), rm_h(g.c, 0), rv_h = running.bits;
    bnorm::training_args a;
    a.src = x.bits.data();
    a.dst = y_f.data();
    a.scale = in(gamma.values);
    a.shift = in(beta.values);
    a.batch_mean = out(mean_f);
    a.batch_inv_std = out(inv_f);
    a.running_mean = out(rm_f);
    a.running_var = out(rv_f);
    ASSERT_TRUE(plan_f.forward_training(a));
    a.dst = y_h.data();
    a.scale = {gamma.bits.data(), g.c};
    a.shift = {beta.bits.data(), g.c};
    a.batch_mean = {mean_h.data(), g.c};
    a.batch_inv_std = {inv_h.data(), g.c};
    a.running_mean = {rm_h.data(), g.c};
    a.running_var = {rv_h.data(), g.c};
    const bnorm::status s = plan_h.forward_training(a);
    ASSERT_TRUE(s) << s.message();
    EXPECT_EQ(y_f, y_h);
    const auto rounded_bits = [d](float v) {
      return d == bnorm::dtype::bf16 ? bnorm::kernels::to_bfloat16(v).bits
                                     : bnorm::kernels::to_float16(v).bits;
    };
    // The float's rounding, or (at or next to a tie, where its neighbours round apart) the bits
    // the half output has: checked elsewhere.
    const auto rounded = [&](float v, std::uint16_t got) {
      const bool near_tie =
          rounded_bits(std::nextafter(v, -INFINITY)) != rounded_bits(std::nextafter(v, INFINITY));
      return near_tie ? got : rounded_bits(v);
    };
    for (std::size_t c = 0; c < g.c; ++c) {
      EXPECT_EQ(mean_h[c], rounded(mean_f[c], mean_h[c])) << c;
      EXPECT_EQ(inv_h[c], rounded(inv_f[c], inv_h[c])) << c;
      EXPECT_EQ(rm_h[c], rounded(rm_f[c], rm_h[c])) << c;
      EXPECT_EQ(rv_h[c], rounded(rv_f[c], rv_h[c])) << c;
    }
    // The backward's dγ, dβ likewise, from the same (half-exact) statistics.
    half_channels mean(d, std::vector<double>(mean_f.begin(), mean_f.end()));
    half_channels inv(d, std::vector<double>(inv_f.begin(), inv_f.end()));
    std::vector<std::uint16_t> dx_f(x.bits.size()), dx_h(x.bits.size());
    std::vector<float> dgamma_f(g.c), dbeta_f(g.c);
    std::vector<std::uint16_t> dgamma_h(g.c), dbeta_h(g.c);
    bnorm::backward_args b;
    b.src = x.bits.data();
    b.diff_dst = dy.bits.data();
    b.diff_src = dx_f.data();
    b.scale = in(gamma.values);
    b.mean = in(mean.values);
    b.inv_std = in(inv.values);
    b.diff_scale = out(dgamma_f);
    b.diff_shift = out(dbeta_f);
    ASSERT_TRUE(plan_f.backward_training(b));
    b.diff_src = dx_h.data();
    b.scale = {gamma.bits.data(), g.c};
    b.mean = {mean.bits.data(), g.c};
    b.inv_std = {inv.bits.data(), g.c};
    b.diff_scale = {dgamma_h.data(), g.c};
    b.diff_shift = {dbeta_h.data(), g.c};
    ASSERT_TRUE(plan_h.backward_training(b));
    EXPECT_EQ(dx_f, dx_h);
    for (std::size_t c = 0; c < g.c; ++c) {
      EXPECT_EQ(dgamma_h[c], rounded(dgamma_f[c], dgamma_h[c])) << c;
      EXPECT_EQ(dbeta_h[c], rounded(dbeta_f[c], dbeta_h[c])) << c;
    }
  }
  // Only the data's own half type, or float32.
  bnorm::plan_options wrong;
  wrong.parameter_dtype = bnorm::dtype::f16;
  bnorm::plan plan;
  const bnorm::status s =
      bnorm::make_plan({{2, 3}, layout::channels_first, bnorm::dtype::bf16}, wrong, &plan);
  EXPECT_STREQ(s.message(),
               "parameter_dtype: expected f32 or bf16 (the per-channel buffers of bf16 data), got "
               "f16");
}

}  // namespace

namespace {

/// One record of torch_half_goldens.txt (make_torch_goldens.py): PyTorch's bfloat16 batch norm.
struct half_golden {
  std::string name, layout_name, mode;
  std::vector<std::int64_t> dims;
  std::map<std::string, std::vector<double>> values;
};

std::vector<half_golden> read_half_goldens() {
  std::ifstream file(BNORM_HALF_GOLDENS_PATH);
  std::vector<half_golden> cases;
  std::string line;
  while (std::getline(file, line)) {
    std::istringstream in(line);
    std::string key;
    in >> key;
    if (key == "half") {
      half_golden g;
      std::size_t rank = 0;
      in >> g.name >> g.layout_name >> g.mode >> rank;
      g.dims.resize(rank);
      for (auto& d : g.dims) in >> d;
      cases.push_back(g);
    } else if (!cases.empty() && key != "end" && !key.empty() && key[0] != '#') {
      std::vector<double>& v = cases.back().values[key];
      for (double d; in >> d;) v.push_back(d);
    }
  }
  return cases;
}

TEST(HalfGoldens, BFloat16MatchesPyTorchWithinAnUlp) {
  const std::vector<half_golden> cases = read_half_goldens();
  ASSERT_GE(cases.size(), 6u) << "golden file missing or truncated: " << BNORM_HALF_GOLDENS_PATH;
  for (const bnorm::isa id : isas_under_test()) {
    for (const half_golden& g : cases) {
      const bnorm::tensor_shape shape(g.dims.data(), g.dims.size());
      bnorm::plan_options opts;
      opts.max_isa = id;
      const bnorm::plan plan = make_plan_or_fail(
          {shape, g.layout_name == "cl" ? layout::channels_last : layout::channels_first,
           bnorm::dtype::bf16},
          opts);
      const half_tensor x(bnorm::dtype::bf16, g.values.at("x"));
      ASSERT_EQ(x.values, g.values.at("x")) << g.name << ": the inputs are bfloat16 values";
      const auto floats = [&](const char* key) {
        const std::vector<double>& v = g.values.at(key);
        return std::vector<float>(v.begin(), v.end());
      };
      const std::vector<float> weight = floats("weight"), bias = floats("bias");
      std::vector<float> rm = floats("running_mean"), rv = floats("running_var");
      std::vector<std::uint16_t> y(x.bits.size());
      bnorm::status s;
      if (g.mode == "train") {
        bnorm::training_args a;
        a.src = x.bits.data();
        a.dst = y.data();
        a.scale = in(weight);
        a.shift = in(bias);
        a.running_mean = out(rm);
        a.running_var = out(rv);
        s = plan.forward_training(a);
      } else {
        bnorm::inference_args i;
        i.src = x.bits.data();
        i.dst = y.data();
        i.scale = in(weight);
        i.shift = in(bias);
        i.mean = in(rm);
        i.var = in(rv);
        s = plan.forward_inference(i);
      }
      ASSERT_TRUE(s) << s.message();
      half_tensor got(bnorm::dtype::bf16, {});
      got.bits = y;
      got.decode();
      const std::vector<double>& want = g.values.at("y");
      std::size_t same = 0;
      for (std::size_t e = 0; e < want.size(); ++e) {
        EXPECT_LE(std::fabs(got.values[e] - want[e]), ulp_of(bnorm::dtype::bf16, want[e]))
            << g.name << " " << e;
        same += got.values[e] == want[e];
      }
      const std::vector<double>& rm_want = g.values.at("running_mean_after");
      const std::vector<double>& rv_want = g.values.at("running_var_after");
      for (std::size_t c = 0; c < rm.size(); ++c) {
        EXPECT_NEAR(rm[c], rm_want[c], 1e-6 * std::max(1.0, std::fabs(rm_want[c]))) << g.name;
        EXPECT_NEAR(rv[c], rv_want[c], 1e-6 * std::max(1.0, std::fabs(rv_want[c]))) << g.name;
      }
      std::printf("[ torch bf16 ] %s %s: %zu of %zu values the same bits as PyTorch's\n",
                  g.name.c_str(), bnorm::to_string(id), same, want.size());
    }
  }
}

}  // namespace

namespace {

/// Every ISA under test with cached stores, then with streaming ones.
std::vector<std::pair<bnorm::isa, bnorm::store_policy>> isas_and_store_policies() {
  std::vector<std::pair<bnorm::isa, bnorm::store_policy>> out;
  for (const bnorm::store_policy stores :
       {bnorm::store_policy::cached, bnorm::store_policy::streaming}) {
    for (const bnorm::isa id : isas_under_test()) out.emplace_back(id, stores);
  }
  return out;
}

TEST(HalfStorage, EveryIsaRoundsToTheSameBits) {
  // y = 1·gamma (epsilon 0, variance 1): each channel's gamma reaches the vector stores as it
  // is: subnormal floats, NaNs of both signs, values that round to infinity, ties.
  std::vector<float> gamma = {1e-40f,      -3e-39f,     NAN,  -NAN,    3.3961776e38f,  -3.4e38f,
                              1.00390625f, 1.01171875f, 0.0f, -1e-45f, 1.17549435e-38f};
  for (int i = static_cast<int>(gamma.size()); i < 96; ++i) {
    gamma.push_back(std::ldexp(1.0f + static_cast<float>(i) / 1024.0f, 2 * i - 64));
  }
  std::vector<float> mean(gamma.size(), 0.0f), var(gamma.size(), 1.0f);
  // Planes of one AVX-512 vector and of four (stored in pairs where the ISA converts two
  // vectors at once); rows of the 96 channels (three cache lines; the subnormal gammas make the
  // prescaled form, which takes the wide rows' walk), sixteen and sixty-four of them. Through
  // ordinary stores and streaming ones (their own instances of the conversions: the AVX512_BF16
  // pair conversion streamed, among others), into an aligned y: streamed rows of whole lines go
  // four at a time.
  for (const auto& [l, spatial] : {std::pair<layout, std::size_t>{layout::channels_first, 16},
                                   {layout::channels_first, 64},
                                   {layout::channels_last, 16},
                                   {layout::channels_last, 64}}) {
    const std::vector<std::uint16_t> ones(gamma.size() * spatial, 0x3F80);
    for (const auto& [id, stores] : isas_and_store_policies()) {
      bnorm::plan_options opts;
      opts.max_isa = id;
      opts.stores = stores;
      bnorm::problem prob{
          {1, static_cast<std::int64_t>(gamma.size()), static_cast<std::int64_t>(spatial)},
          l,
          bnorm::dtype::bf16,
          0.0};
      const bnorm::plan plan = make_plan_or_fail(prob, opts);
      aligned_vector<std::uint16_t> y(ones.size());
      bnorm::inference_args i;
      i.src = ones.data();
      i.dst = y.data();
      i.scale = in(gamma);
      i.mean = in(mean);
      i.var = in(var);
      ASSERT_TRUE(plan.forward_inference(i));
      for (std::size_t c = 0; c < gamma.size(); ++c) {
        for (std::size_t e = 0; e < spatial; ++e) {
          const std::size_t at =
              l == layout::channels_first ? c * spatial + e : e * gamma.size() + c;
          ASSERT_EQ(y[at], reference_bfloat16(gamma[c]))
              << bnorm::to_string(id) << " " << bnorm::to_string(l) << " spatial " << spatial
              << (stores == bnorm::store_policy::streaming ? " streamed" : " cached") << " channel "
              << c << " (" << gamma[c] << ")";
        }
      }
    }
  }
}

/// The element of dtype d nearest to v (ties to the even one), searched among the neighbours of
/// a first guess by their decoded values: independent of the library's rounding.
std::uint16_t reference_nearest(bnorm::dtype d, double v) {
  const auto decode = [&](std::uint16_t b) {
    return d == bnorm::dtype::bf16 ? static_cast<double>(bnorm::kernels::to_float(bfloat16{b}))
                                   : static_cast<double>(bnorm::kernels::to_float(float16{b}));
  };
  const float guess = static_cast<float>(v);
  const std::uint16_t start = d == bnorm::dtype::bf16 ? bnorm::kernels::to_bfloat16(guess).bits
                                                      : bnorm::kernels::to_float16(guess).bits;
  std::uint16_t best = start;
  for (const int step : {-2, -1, 1, 2}) {
    const auto candidate = static_cast<std::uint16_t>(start + step);
    if ((candidate ^ start) & 0x8000) continue;  // same sign only
    const double distance = std::fabs(decode(candidate) - v), current = std::fabs(decode(best) - v);
    if (std::isnan(distance)) continue;
    if (distance < current || (distance == current && (candidate & 1) == 0)) best = candidate;
  }
  return best;
}

std::uint16_t from_double_bits(bnorm::dtype d, double v) {
  return d == bnorm::dtype::bf16 ? bnorm::kernels::from_double<bfloat16>(v).bits
                                 : bnorm::kernels::from_double<float16>(v).bits;
}

// Folding writes half-precision layers from float64 values: rounded once. Values within a
// float's rounding of a midpoint between two half values are where rounding to float first
// (then to the half type) goes wrong half of the time.
TEST(HalfConversions, FromDoubleRoundsOnce) {
  auto rng = make_rng(12);
  for (const bnorm::dtype d : {bnorm::dtype::bf16, bnorm::dtype::f16}) {
    std::uniform_int_distribution<int> pick(d == bnorm::dtype::bf16 ? 0x0080 : 0x0001,
                                            d == bnorm::dtype::bf16 ? 0x7F7E : 0x7BFE);
    std::uniform_real_distribution<double> unit(-1.0, 1.0);
    for (int i = 0; i < 200000; ++i) {
      const auto low = static_cast<std::uint16_t>(pick(rng));
      const double a = d == bnorm::dtype::bf16 ? bnorm::kernels::to_float(bfloat16{low})
                                               : bnorm::kernels::to_float(float16{low});
      const double b = d == bnorm::dtype::bf16
                           ? bnorm::kernels::to_float(bfloat16{static_cast<std::uint16_t>(low + 1)})
                           : bnorm::kernels::to_float(float16{static_cast<std::uint16_t>(low + 1)});
      const double midpoint = 0.5 * (a + b);
      const double v = i % 2 ? midpoint + (b - a) * std::ldexp(unit(rng), -30)  // near a tie
                             : a + (b - a) * (0.5 + 0.5 * unit(rng));           // anywhere between
      for (const double signed_v : {v, -v}) {
        ASSERT_EQ(from_double_bits(d, signed_v), reference_nearest(d, signed_v))
            << bnorm::to_string(d) << " " << std::hexfloat << signed_v;
      }
    }
  }
}

// A layer stored in bfloat16 or float16 folds in float64 with the batch norm's float32
// parameters: every folded value is the float64 one rounded once; a running variance beyond
// float16's range folds; a folded value beyond the layer's type is refused, nothing written.
TEST(HalfStorage, FoldsIntoHalfLayersRoundedOnce) {
  for (const bnorm::dtype d : {bnorm::dtype::bf16, bnorm::dtype::f16}) {
    SCOPED_TRACE(bnorm::to_string(d));
    const std::size_t out_features = 5, in_features = 7;
    half_tensor w(d, normal_data<double>(out_features * in_features, 0.0, 1.0, 70));
    half_tensor b(d, normal_data<double>(out_features, 0.0, 1.0, 71));
    const std::vector<float> gamma = {1.5f, -0.5f, 2.0f, 1.0f, 0.75f};
    const std::vector<float> beta = {0.0f, 1.0f, -1.0f, 0.5f, 2.0f};
    const std::vector<float> mean = {0.25f, -1.0f, 1e5f, 3.0f, 0.0f};
    const std::vector<float> var = {1.0f, 0.25f, 4e9f, 1e6f, 2.0f};  // 4e9: beyond float16
    const double eps = 1e-5;
    bnorm::fold_problem prob;
    prob.weight_shape = {static_cast<std::int64_t>(out_features),
                         static_cast<std::int64_t>(in_features)};
    prob.dtype = d;
    prob.epsilon = eps;
    std::vector<std::uint16_t> folded_w(w.bits.size()), folded_b(out_features);
    bnorm::fold_args args;
    args.weight = w.bits.data();
    args.folded_weight = folded_w.data();
    args.bias = {b.bits.data(), out_features};
    args.folded_bias = {folded_b.data(), out_features};
    args.scale = in(gamma);
    args.shift = in(beta);
    args.mean = in(mean);
    args.var = in(var);
    const bnorm::status st = bnorm::fold_into_layer(prob, args);
    ASSERT_TRUE(st.ok()) << st.message();
    for (std::size_t o = 0; o < out_features; ++o) {
      const long double scale = gamma[o] / std::sqrt(static_cast<long double>(var[o]) + eps);
      for (std::size_t i = 0; i < in_features; ++i) {
        const std::size_t at = o * in_features + i;
        EXPECT_EQ(folded_w[at], reference_nearest(d, static_cast<double>(w.values[at] * scale)))
            << at;
      }
      const long double bias = (b.values[o] - mean[o]) * scale + beta[o];
      EXPECT_EQ(folded_b[o], reference_nearest(d, static_cast<double>(bias))) << o;
    }

    // 1000 · 100 / sqrt(1): beyond float16 (refused); within bfloat16 (folded).
    const std::vector<std::uint16_t> big = {from_double_bits(d, 1000.0)};
    std::vector<std::uint16_t> out_w = {7}, out_b = {7};
    const std::vector<float> hundred = {100.0f}, zero = {0.0f}, one = {1.0f};
    bnorm::fold_problem single = prob;
    single.weight_shape = {1, 1};
    single.epsilon = 0.0;
    bnorm::fold_args dead;
    dead.weight = big.data();
    dead.folded_weight = out_w.data();
    dead.folded_bias = {out_b.data(), 1};
    dead.scale = in(hundred);
    dead.mean = in(zero);
    dead.var = in(one);
    const bnorm::status refused = bnorm::fold_into_layer(single, dead);
    if (d == bnorm::dtype::f16) {
      ASSERT_FALSE(refused.ok());
      EXPECT_NE(std::string(refused.message()).find("folded_weight: expected values within"),
                std::string::npos)
          << refused.message();
      EXPECT_EQ(out_w[0], 7);
      EXPECT_EQ(out_b[0], 7);
    } else {
      ASSERT_TRUE(refused.ok()) << refused.message();
      EXPECT_EQ(out_w[0], reference_nearest(d, 1e5));
    }
  }
}

/// A module's tensor of T from float64 values, and back.
template <class T>
std::vector<T> to_elements(const half_tensor& t) {
  std::vector<T> v(t.bits.size());
  std::memcpy(v.data(), t.bits.data(), t.bits.size() * 2);
  return v;
}

template <class T>
std::vector<double> decoded(const std::vector<T>& v) {
  std::vector<double> out;
  for (const T e : v) out.push_back(e.to_float());
  return out;
}

// The modules over bfloat16 and float16 tensors (float32 parameters): PyTorch's train step and
// backward, eval mode and folding; MindSpore's NHWC cell; against float64 from the same inputs.
template <class T>
void expect_module_matches_float64() {
  constexpr bnorm::dtype d = bnorm::dtype_of<T>;
  SCOPED_TRACE(bnorm::to_string(d));
  static_assert(std::is_same<typename bnorm::batch_norm<T>::parameter_type, float>::value,
                "half modules keep float32 parameters");
  const bnorm::tensor_shape shape{4, 6, 5, 5};
  const geometry g(shape);
  const half_tensor x_half(d, normal_data<double>(g.elements(), 3.0, 2.0, 80));
  const half_tensor dy_half(d, normal_data<double>(g.elements(), 0.0, 1.0, 81));
  const std::vector<T> x = to_elements<T>(x_half), dy = to_elements<T>(dy_half);
  const auto within_ulp = [&](const std::vector<T>& got, const std::vector<double>& want,
                              double scale, const char* what) {
    const std::vector<double> values = decoded(got);
    for (std::size_t i = 0; i < want.size(); ++i) {
      const double bound = std::max(ulp_of(d, want[i]), 1e-6 * std::max(scale, std::fabs(want[i])));
      ASSERT_LE(std::fabs(values[i] - want[i]), bound) << what << " at " << i;
    }
  };

  auto bn = bnorm::torch::BatchNorm2d<T>(6);
  bn.weight() = normal_data<float>(6, 1.0, 0.3, 82);
  bn.bias() = normal_data<float>(6, 0.0, 1.0, 83);
  const std::vector<double> gamma(bn.weight().begin(), bn.weight().end());
  const std::vector<double> beta(bn.bias().begin(), bn.bias().end());
  const std::vector<T> y = bn.forward(x, shape);
  const reference_stats ref = reference_moments(x_half.values, shape, layout::channels_first);
  within_ulp(y,
             reference_normalize(x_half.values, shape, layout::channels_first, ref.mean,
                                 ref.variance, 1e-5, gamma, beta),
             1.0, "train y");
  const double n = static_cast<double>(g.n * g.spatial);
  for (std::size_t c = 0; c < 6; ++c) {
    EXPECT_NEAR(bn.running_mean()[c], 0.1 * ref.mean[c], 1e-6 * std::fabs(ref.mean[c])) << c;
    const double unbiased = ref.variance[c] * n / (n - 1);
    EXPECT_NEAR(bn.running_var()[c], 0.9 + 0.1 * unbiased, 1e-6 * (0.9 + 0.1 * unbiased)) << c;
    EXPECT_NEAR(bn.saved_inv_std()[c], 1.0 / std::sqrt(ref.variance[c] + 1e-5),
                1e-6 / std::sqrt(ref.variance[c] + 1e-5))
        << c;
  }

  const std::vector<T> dx = bn.backward(x, dy);
  const std::vector<double> mean64(bn.saved_mean().begin(), bn.saved_mean().end());
  const std::vector<double> inv64(bn.saved_inv_std().begin(), bn.saved_inv_std().end());
  const reference_gradients grads = reference_backward(
      x_half.values, dy_half.values, shape, layout::channels_first, mean64, inv64, gamma, true);
  double dx_scale = 1.0;
  for (const double v : grads.dx) dx_scale = std::max(dx_scale, std::fabs(v));
  within_ulp(dx, grads.dx, dx_scale, "dx");
  for (std::size_t c = 0; c < 6; ++c) {
    EXPECT_NEAR(bn.weight_grad()[c], grads.dgamma[c], 1e-6 * grads.abs_dgamma[c]) << c;
    EXPECT_NEAR(bn.bias_grad()[c], grads.dbeta[c], 1e-6 * grads.abs_dbeta[c]) << c;
  }

  bn.eval();
  const std::vector<double> rm(bn.running_mean().begin(), bn.running_mean().end());
  const std::vector<double> rv(bn.running_var().begin(), bn.running_var().end());
  within_ulp(
      bn.forward(x, shape),
      reference_normalize(x_half.values, shape, layout::channels_first, rm, rv, 1e-5, gamma, beta),
      1.0, "eval y");
  // Folding into a 1×1 convolution stored as T: the folded bias is the float64 one rounded once.
  const half_tensor w_half(d, normal_data<double>(6 * 3, 0.0, 1.0, 84));
  std::vector<T> w = to_elements<T>(w_half), b;
  bn.fold_into(w, b, {6, 3, 1, 1});
  ASSERT_EQ(b.size(), 6u);
  for (std::size_t c = 0; c < 6; ++c) {
    const double scale = gamma[c] / std::sqrt(rv[c] + 1e-5);
    EXPECT_EQ(b[c].bits, reference_nearest(d, beta[c] - rm[c] * scale)) << c;
    EXPECT_EQ(w[c * 3].bits, reference_nearest(d, w_half.values[c * 3] * scale)) << c;
  }

  // MindSpore's cell in NHWC, eval mode (its default): the running statistics as given.
  bnorm::mindspore::options opts;
  opts.data_format = "NHWC";
  opts.moving_mean_init = std::vector<double>{1.0, 2.0, 3.0, -1.0, 0.5, 0.0};
  opts.moving_var_init = 4.0;
  auto cell = bnorm::mindspore::BatchNorm2d<T>(6, opts);
  const std::vector<double> ms_mean = {1.0, 2.0, 3.0, -1.0, 0.5, 0.0}, ms_var(6, 4.0);
  within_ulp(cell.forward(x, shape),
             reference_normalize(x_half.values, shape, layout::channels_last, ms_mean, ms_var, 1e-5,
                                 std::vector<double>(6, 1.0), std::vector<double>(6, 0.0)),
             1.0, "mindspore NHWC y");
}

TEST(HalfStorage, ModulesTakeBFloat16AndFloat16Tensors) {
  expect_module_matches_float64<bnorm::bfloat16>();
  expect_module_matches_float64<bnorm::float16>();
}

// The public types' conversions are the reference ones.
TEST(HalfConversions, PublicTypesConvertAsTheReference) {
  auto rng = make_rng(13);
  std::uniform_int_distribution<std::uint32_t> any;
  for (int i = 0; i < 100000; ++i) {
    const std::uint32_t bits = any(rng);
    float v;
    std::memcpy(&v, &bits, 4);
    EXPECT_EQ(bnorm::bfloat16::from_float(v).bits, reference_bfloat16(v)) << std::hex << bits;
    const _Float16 h = static_cast<_Float16>(v);
    std::uint16_t h_bits;
    std::memcpy(&h_bits, &h, 2);
    if (!std::isnan(v)) {
      EXPECT_EQ(bnorm::float16::from_float(v).bits, h_bits) << std::hex << bits;
    }
    const auto half_bits = static_cast<std::uint16_t>(bits);
    const float widened = bnorm::float16{half_bits}.to_float();
    _Float16 reference;
    std::memcpy(&reference, &half_bits, 2);
    if (!std::isnan(widened)) {
      EXPECT_EQ(widened, static_cast<float>(reference)) << half_bits;
    }
    const float bf = bnorm::bfloat16{half_bits}.to_float();
    std::uint32_t bf_bits;
    std::memcpy(&bf_bits, &bf, 4);
    EXPECT_EQ(bf_bits, static_cast<std::uint32_t>(half_bits) << 16);
  }
}

}  // namespace
