// Folding an inference batch norm into the layer before it: the folded layer's output against
// the layer followed by the batch norm, both computed here in long double by small reference
// layers (linear, convolution OIHW/OHWI/HWIO, grouped and depthwise, transposed and grouped,
// 1-D and 3-D), PyTorch's own torch.nn.utils.fusion where it is right (goldens), and the
// refusals that leave the layer untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>

#include "support.hpp"

using namespace bnorm_test;
using bnorm::weight_layout;

namespace {

/// An inference batch norm's parameters over C channels.
struct batch_norm_params {
  std::vector<float> gamma, beta, mean, var;
  double eps = 1e-5;
  batch_norm_params(std::size_t c, std::uint64_t salt)
      : gamma(normal_data<float>(c, 1.0, 0.5, salt)),
        beta(normal_data<float>(c, 0.0, 1.0, salt + 1)),
        mean(normal_data<float>(c, 0.5, 2.0, salt + 2)),
        var(c) {
    const auto spread = normal_data<float>(c, 0.0, 1.0, salt + 3);
    for (std::size_t i = 0; i < c; ++i) var[i] = 0.25f + spread[i] * spread[i];
  }
  long double apply(std::size_t c, long double y) const {
    return (y - mean[c]) / std::sqrt(static_cast<long double>(var[c]) + eps) * gamma[c] + beta[c];
  }
};

/// A layer's output in [N][C][P] order (P positions per output channel), and the magnitude
/// of each output's terms (Σ|w·x| + |b|), which bounds its rounding.
struct layer_output {
  std::vector<long double> values, magnitude;
  std::size_t positions = 1;
};

using layer_fn =
    std::function<layer_output(const std::vector<float>& weight, const std::vector<float>& bias)>;

/// Folds `bn` into the layer (in place), then checks the folded layer's output against the
/// layer's followed by the batch norm.
void expect_folds(const std::string& name, const layer_fn& layer, std::vector<float> weight,
                  std::vector<float> bias, const bnorm::tensor_shape& shape, weight_layout layout,
                  std::int64_t groups, std::size_t channels) {
  SCOPED_TRACE(name);
  const batch_norm_params bn(channels, 40);
  const layer_output before = layer(weight, bias);
  bnorm::fold_problem prob;
  prob.layout = layout;
  prob.weight_shape = shape;
  prob.groups = groups;
  std::vector<float> folded_bias(channels);
  bnorm::fold_args args;
  args.weight = weight.data();
  args.folded_weight = weight.data();  // in place
  args.bias = in(bias);
  args.folded_bias = out(folded_bias);
  args.scale = in(bn.gamma);
  args.shift = in(bn.beta);
  args.mean = in(bn.mean);
  args.var = in(bn.var);
  const bnorm::status st = bnorm::fold_into_layer(prob, args);
  ASSERT_TRUE(st.ok()) << st.message();
  const layer_output after = layer(weight, folded_bias);
  ASSERT_EQ(before.values.size(), after.values.size());
  double worst = 0;
  for (std::size_t i = 0; i < before.values.size(); ++i) {
    const std::size_t o = i / before.positions % channels;
    const long double want = bn.apply(o, before.values[i]);
    const long double scale = std::fabs(bn.gamma[o] / std::sqrt((long double)bn.var[o] + bn.eps));
    // float32 rounding of the folded weights and bias: a few ulps of the terms' magnitude.
    const double bound = 1e-6 * static_cast<double>(scale * before.magnitude[i] + 1);
    const double e = std::fabs(static_cast<double>(after.values[i] - want));
    keep_worst(worst, e / bound);
    ASSERT_LE(e, bound) << "output " << i << " channel " << o;
  }
  std::cout << "[ fold ] " << name << ": worst error " << worst << " of its bound\n";
}

/// Linear [out, in] on N inputs of `in` features.
layer_fn linear(std::size_t n, std::size_t in_features, std::size_t out_features) {
  const auto x = normal_data<float>(n * in_features, 0.0, 1.0, 50);
  return [=](const std::vector<float>& w, const std::vector<float>& b) {
    layer_output y;
    for (std::size_t s = 0; s < n; ++s)
      for (std::size_t o = 0; o < out_features; ++o) {
        long double v = b.empty() ? 0.0L : b[o], m = b.empty() ? 0.0L : std::fabs(b[o]);
        for (std::size_t i = 0; i < in_features; ++i) {
          v += static_cast<long double>(w[o * in_features + i]) * x[s * in_features + i];
          m += std::fabs(static_cast<long double>(w[o * in_features + i]) * x[s * in_features + i]);
        }
        y.values.push_back(v);
        y.magnitude.push_back(m);
      }
    return y;
  };
}

/// A convolution over `dims` spatial dimensions (1 to 3) of extent `size`, kernel `k`, no
/// padding, stride 1, `groups` groups; the weight element of (o, i, kernel offset) is at
/// weight_index(o, i_in_group, kernel_offset).
layer_fn convolution(std::size_t dims, std::size_t cin, std::size_t cout, std::size_t groups,
                     std::size_t size, std::size_t k,
                     std::function<std::size_t(std::size_t, std::size_t, std::size_t)> index) {
  const std::size_t n = 2, out_size = size - k + 1;
  std::size_t in_plane = 1, out_plane = 1, taps = 1;
  for (std::size_t d = 0; d < dims; ++d) {
    in_plane *= size;
    out_plane *= out_size;
    taps *= k;
  }
  const auto x = normal_data<float>(n * cin * in_plane, 0.0, 1.0, 51);
  return [=](const std::vector<float>& w, const std::vector<float>& b) {
    layer_output y;
    y.positions = out_plane;
    const std::size_t in_per_group = cin / groups, out_per_group = cout / groups;
    for (std::size_t s = 0; s < n; ++s)
      for (std::size_t o = 0; o < cout; ++o)
        for (std::size_t p = 0; p < out_plane; ++p) {
          long double v = b.empty() ? 0.0L : b[o], m = b.empty() ? 0.0L : std::fabs(b[o]);
          const std::size_t group = o / out_per_group;
          for (std::size_t i = 0; i < in_per_group; ++i)
            for (std::size_t t = 0; t < taps; ++t) {
              // Output position p and tap t, coordinate by coordinate.
              std::size_t at = 0, pp = p, tt = t, stride = 1;
              for (std::size_t d = 0; d < dims; ++d) {
                at += (pp % out_size + tt % k) * stride;
                pp /= out_size;
                tt /= k;
                stride *= size;
              }
              const long double term = static_cast<long double>(w[index(o, i, t)]) *
                                       x[(s * cin + group * in_per_group + i) * in_plane + at];
              v += term;
              m += std::fabs(term);
            }
          y.values.push_back(v);
          y.magnitude.push_back(m);
        }
    return y;
  };
}

/// A 2-D transposed convolution, stride 2, weight [I, O/groups, k, k] (PyTorch's layout).
layer_fn transposed_convolution(std::size_t cin, std::size_t cout, std::size_t groups,
                                std::size_t size, std::size_t k) {
  const std::size_t n = 2, stride = 2, out_size = (size - 1) * stride + k;
  const auto x = normal_data<float>(n * cin * size * size, 0.0, 1.0, 52);
  return [=](const std::vector<float>& w, const std::vector<float>& b) {
    layer_output y;
    y.positions = out_size * out_size;
    y.values.assign(n * cout * y.positions, 0.0L);
    y.magnitude.assign(y.values.size(), 0.0L);
    const std::size_t in_per_group = cin / groups, out_per_group = cout / groups;
    for (std::size_t s = 0; s < n; ++s) {
      for (std::size_t o = 0; o < cout; ++o)
        for (std::size_t p = 0; p < y.positions; ++p) {
          y.values[(s * cout + o) * y.positions + p] = b.empty() ? 0.0L : b[o];
          y.magnitude[(s * cout + o) * y.positions + p] = b.empty() ? 0.0L : std::fabs(b[o]);
        }
      for (std::size_t i = 0; i < cin; ++i) {
        const std::size_t group = i / in_per_group;
        for (std::size_t ol = 0; ol < out_per_group; ++ol) {
          const std::size_t o = group * out_per_group + ol;
          for (std::size_t h = 0; h < size; ++h)
            for (std::size_t v = 0; v < size; ++v)
              for (std::size_t kh = 0; kh < k; ++kh)
                for (std::size_t kw = 0; kw < k; ++kw) {
                  const long double term =
                      static_cast<long double>(w[((i * out_per_group + ol) * k + kh) * k + kw]) *
                      x[((s * cin + i) * size + h) * size + v];
                  const std::size_t at =
                      (s * cout + o) * y.positions + (h * stride + kh) * out_size + v * stride + kw;
                  y.values[at] += term;
                  y.magnitude[at] += std::fabs(term);
                }
        }
      }
    }
    return y;
  };
}

TEST(Fold, LinearWithAndWithoutBias) {
  const std::size_t out_features = 7, in_features = 5;
  const auto w = normal_data<float>(out_features * in_features, 0.0, 1.0, 60);
  const auto b = normal_data<float>(out_features, 0.0, 1.0, 61);
  expect_folds("linear", linear(3, in_features, out_features), w, b,
               {std::int64_t(out_features), std::int64_t(in_features)}, weight_layout::output_first,
               1, out_features);
  expect_folds("linear without bias", linear(3, in_features, out_features), w, {},
               {std::int64_t(out_features), std::int64_t(in_features)}, weight_layout::output_first,
               1, out_features);
}

TEST(Fold, ConvolutionsEveryLayoutAndGrouping) {
  struct conv_case {
    std::string name;
    std::size_t dims, cin, cout, groups;
    weight_layout layout;
  };
  const conv_case cases[] = {
      {"conv2d OIHW", 2, 3, 4, 1, weight_layout::output_first},
      {"conv2d OIHW grouped", 2, 4, 6, 2, weight_layout::output_first},
      {"conv2d depthwise", 2, 3, 6, 3, weight_layout::output_first},
      {"conv2d OHWI", 2, 3, 4, 1, weight_layout::output_first},
      {"conv2d OHWI depthwise", 2, 3, 6, 3, weight_layout::output_first},
      {"conv2d HWIO", 2, 3, 4, 1, weight_layout::output_last},
      {"conv2d HWIO grouped", 2, 4, 6, 2, weight_layout::output_last},
      {"conv2d HWIO depthwise", 2, 4, 4, 4, weight_layout::output_last},
      {"conv1d OIW", 1, 3, 5, 1, weight_layout::output_first},
      {"conv3d OIDHW grouped", 3, 4, 4, 2, weight_layout::output_first},
  };
  for (const conv_case& k : cases) {
    const std::size_t kernel = 3, size = 5, in_per_group = k.cin / k.groups;
    std::size_t taps = 1;
    for (std::size_t d = 0; d < k.dims; ++d) taps *= kernel;
    const bool ohwi = k.name.find("OHWI") != std::string::npos;
    // The weight's memory order, and its shape as the layout names it.
    std::function<std::size_t(std::size_t, std::size_t, std::size_t)> index;
    std::vector<std::int64_t> dims;
    if (k.layout == weight_layout::output_last) {  // [k..., I, O]
      index = [=](std::size_t o, std::size_t i, std::size_t t) {
        return (t * in_per_group + i) * k.cout + o;
      };
      dims.assign(k.dims, std::int64_t(kernel));
      dims.push_back(std::int64_t(in_per_group));
      dims.push_back(std::int64_t(k.cout));
    } else if (ohwi) {  // [O, k..., I]
      index = [=](std::size_t o, std::size_t i, std::size_t t) {
        return (o * taps + t) * in_per_group + i;
      };
      dims = {std::int64_t(k.cout)};
      for (std::size_t d = 0; d < k.dims; ++d) dims.push_back(std::int64_t(kernel));
      dims.push_back(std::int64_t(in_per_group));
    } else {  // [O, I, k...]
      index = [=](std::size_t o, std::size_t i, std::size_t t) {
        return (o * in_per_group + i) * taps + t;
      };
      dims = {std::int64_t(k.cout), std::int64_t(in_per_group)};
      for (std::size_t d = 0; d < k.dims; ++d) dims.push_back(std::int64_t(kernel));
    }
    const auto w = normal_data<float>(k.cout * in_per_group * taps, 0.0, 1.0, 62);
    const auto b = normal_data<float>(k.cout, 0.0, 1.0, 63);
    expect_folds(k.name, convolution(k.dims, k.cin, k.cout, k.groups, size, kernel, index), w, b,
                 bnorm::tensor_shape(dims.data(), dims.size()), k.layout, std::int64_t(k.groups),
                 k.cout);
  }
}

// Grouped transposed convolutions: per group, the output channels are axis 1 (scaling axis 1
// alone, as torch.nn.utils.fusion does, is wrong for groups > 1: this test fails that way).
TEST(Fold, TransposedConvolutionsPerGroup) {
  for (const std::size_t groups : {1, 2, 3}) {
    const std::size_t cin = 6, cout = 3 * groups, k = 3;
    const auto w = normal_data<float>(cin * (cout / groups) * k * k, 0.0, 1.0, 64);
    const auto b = normal_data<float>(cout, 0.0, 1.0, 65);
    expect_folds("conv_transpose2d groups " + std::to_string(groups),
                 transposed_convolution(cin, cout, groups, 4, k), w, b,
                 {std::int64_t(cin), std::int64_t(cout / groups), std::int64_t(k), std::int64_t(k)},
                 weight_layout::transposed, std::int64_t(groups), cout);
  }
}

// A running variance beyond float16's range (65504) folds into finite values; a dead channel
// whose scale overflows float32 is refused, not folded into infinities.
TEST(Fold, LargeVariancesFoldAndOverflowIsRefused) {
  std::vector<float> w = {1.5f, -2.0f, 3.0f, 0.5f}, b = {1.0f, 2.0f}, folded_b(2, 9.0f);
  const std::vector<float> gamma = {1.0f, 2.0f}, mean = {0.0f, 1e5f}, var = {1e6f, 4e9f};
  bnorm::fold_problem prob;
  prob.weight_shape = {2, 2};
  bnorm::fold_args args;
  args.weight = w.data();
  args.folded_weight = w.data();
  args.bias = in(b);
  args.folded_bias = out(folded_b);
  args.scale = in(gamma);
  args.mean = in(mean);
  args.var = in(var);
  ASSERT_TRUE(bnorm::fold_into_layer(prob, args).ok());
  EXPECT_FLOAT_EQ(w[0], 1.5f / std::sqrt(1e6f + 1e-5f));
  EXPECT_FLOAT_EQ(folded_b[1], static_cast<float>((2.0 - 1e5) * 2.0 / std::sqrt(4e9 + 1e-5)));
  {  // a float16 layer, whose statistics stay float32: its folded weights and bias as float16
    std::vector<bnorm::float16> w16, b16, folded_b16(2, bnorm::float16::from_float(9.0f));
    for (const float v : {1.5f, -2.0f, 3.0f, 0.5f}) w16.push_back(bnorm::float16::from_float(v));
    for (const float v : {1.0f, 2.0f}) b16.push_back(bnorm::float16::from_float(v));
    bnorm::fold_problem half = prob;
    half.dtype = bnorm::dtype::f16;
    bnorm::fold_args a = args;
    a.weight = a.folded_weight = w16.data();
    a.bias = {b16.data(), 2};
    a.folded_bias = {folded_b16.data(), 2};
    ASSERT_TRUE(bnorm::fold_into_layer(half, a).ok());
    const double want_w = 1.5 / std::sqrt(1e6 + 1e-5),
                 want_b = (2.0 - 1e5) * 2.0 / std::sqrt(4e9 + 1e-5);
    EXPECT_NEAR(w16[0].to_float(), want_w, std::fabs(want_w) * 0x1p-11);
    EXPECT_NEAR(folded_b16[1].to_float(), want_b, std::fabs(want_b) * 0x1p-11);
  }

  std::vector<float> w2 = {1e30f, 1.0f}, folded_w2(2, 7.0f), folded_b2(2, 7.0f);
  const std::vector<float> tiny = {1e-30f, 1.0f}, zero_mean = {0.0f, 0.0f};
  prob.epsilon = 0;
  bnorm::fold_args dead;
  dead.weight = w2.data();
  dead.folded_weight = folded_w2.data();
  dead.folded_bias = out(folded_b2);
  dead.mean = in(zero_mean);
  dead.var = in(tiny);
  prob.weight_shape = {2, 1};
  const bnorm::status st = bnorm::fold_into_layer(prob, dead);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message())
                .find("folded_weight: expected values within the dtype's "
                      "range, got 1.0000000134619277e+45 for channel 0"),
            std::string::npos)
      << st.message();
  EXPECT_EQ(folded_w2, std::vector<float>(2, 7.0f));
  EXPECT_EQ(folded_b2, std::vector<float>(2, 7.0f));
}

// The range is what the layer's type holds after rounding: a float16 weight of 65504 times a
// scale of 1.0001 is 65510.6, which rounds to 65504 (refused before); 65520 and beyond round to
// an infinity, refused.
TEST(Fold, HalfValuesThatRoundIntoTheRangeFold) {
  using bnorm::float16;
  bnorm::fold_problem prob;
  prob.weight_shape = {2, 1};
  prob.dtype = bnorm::dtype::f16;
  prob.epsilon = 0;
  std::vector<float16> w = {float16::from_float(65504.0f), float16::from_float(65504.0f)};
  std::vector<float16> folded_w(2, float16::from_float(7.0f)),
      folded_b(2, float16::from_float(7.0f));
  const std::vector<float> gamma = {1.0001f, 1.0f}, zero = {0.0f, 0.0f}, one = {1.0f, 1.0f};
  bnorm::fold_args args;
  args.weight = w.data();
  args.folded_weight = folded_w.data();
  args.folded_bias = out(folded_b);
  args.scale = in(gamma);
  args.mean = in(zero);
  args.var = in(one);
  ASSERT_TRUE(bnorm::fold_into_layer(prob, args).ok());
  EXPECT_EQ(folded_w[0].to_float(), 65504.0f);
  EXPECT_EQ(folded_w[1].to_float(), 65504.0f);
  const std::vector<float> over = {1.0003f, 1.0f};  // 65523.7: an infinity in float16
  args.scale = in(over);
  folded_w.assign(2, float16::from_float(7.0f));
  const bnorm::status st = bnorm::fold_into_layer(prob, args);
  EXPECT_NE(std::string(st.message())
                .find("folded_weight: expected values within the dtype's range, got 65523."),
            std::string::npos)
      << st.message();
  EXPECT_EQ(folded_w[0].to_float(), 7.0f);
}

// float64 variances near its largest: var + eps overflows, 1/sqrt of it does not.
TEST(Fold, Float64VarianceNearItsLargestFolds) {
  const double big = std::numeric_limits<double>::max();
  std::vector<double> w = {1e300}, folded_w = {7.0}, folded_b = {7.0};
  const std::vector<double> mean = {0.0}, var = {big};
  bnorm::fold_problem prob;
  prob.dtype = bnorm::dtype::f64;
  prob.weight_shape = {1, 1};
  prob.epsilon = big;
  bnorm::fold_args args;
  args.weight = w.data();
  args.folded_weight = folded_w.data();
  args.folded_bias = out(folded_b);
  args.mean = in(mean);
  args.var = in(var);
  ASSERT_TRUE(bnorm::fold_into_layer(prob, args).ok());
  // 1e300 / sqrt(2 · DBL_MAX), from long double (whose range holds 2 · DBL_MAX).
  const double expected = static_cast<double>(1e300L / std::sqrt(2.0L * big));
  EXPECT_NEAR(folded_w[0], expected, 1e-15 * expected);
  EXPECT_EQ(folded_b[0], 0.0);
}

// float64 intermediates beyond its range where the folded values are not: γ/sqrt(var + eps) =
// 1e300/1e-150 and a layer bias less the mean of 2e308. They were refused ("got -nan", "got
// inf"); a folded value that is beyond the range is still refused, naming the scale as inf.
// Scales below its normal range fold too.
TEST(Fold, Float64IntermediatesBeyondItsRangeFold) {
  bnorm::fold_problem prob;
  prob.dtype = bnorm::dtype::f64;
  prob.weight_shape = {2, 1};
  prob.epsilon = 0;
  const std::vector<double> gamma = {1e300, 0.25}, var = {1e-300, 1.0}, mean = {-1e-200, -1e308};
  std::vector<double> w = {1e-200, 1.0}, b = {0.0, 1e308}, folded_w(2, 7.0), folded_b(2, 7.0);
  bnorm::fold_args args;
  args.weight = w.data();
  args.folded_weight = folded_w.data();
  args.bias = in(b);
  args.folded_bias = out(folded_b);
  args.scale = in(gamma);
  args.mean = in(mean);
  args.var = in(var);
  const bnorm::status s = bnorm::fold_into_layer(prob, args);
  ASSERT_TRUE(s.ok()) << s.message();
  // From long double, whose range holds every intermediate.
  const long double scale0 = 1e300L / std::sqrt(1e-300L);
  const double want_w = static_cast<double>(1e-200L * scale0);
  const double want_b = static_cast<double>(1e-200L * scale0);
  EXPECT_NEAR(folded_w[0], want_w, 1e-15 * want_w);  // 1e250
  EXPECT_NEAR(folded_b[0], want_b, 1e-15 * want_b);
  EXPECT_EQ(folded_w[1], 0.25);
  EXPECT_EQ(folded_b[1], 5e307);  // (1e308 + 1e308)·0.25

  std::vector<double> one = {1.0, 1.0};
  args.weight = one.data();
  args.folded_weight = folded_w.data();
  folded_w.assign(2, 7.0);
  folded_b.assign(2, 7.0);
  const bnorm::status beyond = bnorm::fold_into_layer(prob, args);
  ASSERT_FALSE(beyond.ok());
  EXPECT_STREQ(beyond.message(),
               "folded_weight: expected values within the dtype's range, got inf for channel 0 "
               "(gamma/sqrt(var + eps) = inf)");
  EXPECT_EQ(folded_w, std::vector<double>(2, 7.0));
  EXPECT_EQ(folded_b, std::vector<double>(2, 7.0));

  // Subnormal weights and bias times a scale beyond the range (1e308 / 0.5): each rounded once,
  // not first to the subnormal grid (105 ulps off, 4.8e-5 of 3e-320's).
  prob.weight_shape = {1, 2};
  const std::vector<double> big_gamma = {1e308}, quarter = {0.25}, zero = {0.0};
  std::vector<double> tiny_w = {1e-310, 3e-320}, tiny_b = {1e-310};
  args.weight = tiny_w.data();
  args.bias = in(tiny_b);
  args.scale = in(big_gamma);
  args.mean = in(zero);
  args.var = in(quarter);
  folded_b.assign(1, 7.0);
  args.folded_bias = out(folded_b);
  const bnorm::status sub = bnorm::fold_into_layer(prob, args);
  ASSERT_TRUE(sub.ok()) << sub.message();
  for (std::size_t i = 0; i < 2; ++i) {
    const double want = static_cast<double>(static_cast<long double>(tiny_w[i]) * 2e308L);
    EXPECT_NEAR(folded_w[i], want, 1e-15 * want) << i;
  }
  const double want_bias = static_cast<double>(static_cast<long double>(tiny_b[0]) * 2e308L);
  EXPECT_NEAR(folded_b[0], want_bias, 1e-15 * want_bias);

  // Scales below float64's normal range where the folded values are normal: γ/sqrt(var + eps)
  // = 1e-300/1e150 and 1e-300/1e10. They folded to 0 and to 9.9999999999999688e-301 (the scale
  // rounded to the subnormal grid first), and said ok.
  prob.weight_shape = {2, 1};
  const std::vector<double> tiny_gamma = {1e-300, 1e-300}, big_var = {1e300, 1e20};
  const std::vector<double> zeros = {0.0, 0.0};
  std::vector<double> big_w = {1e300, 1e10}, big_b = {1e300, 0.0};
  args.weight = big_w.data();
  args.bias = in(big_b);
  args.scale = in(tiny_gamma);
  args.mean = in(zeros);
  args.var = in(big_var);
  folded_b.assign(2, 7.0);
  args.folded_bias = out(folded_b);
  const bnorm::status small = bnorm::fold_into_layer(prob, args);
  ASSERT_TRUE(small.ok()) << small.message();
  for (std::size_t c = 0; c < 2; ++c) {
    const long double scale =
        static_cast<long double>(tiny_gamma[c]) / std::sqrt(static_cast<long double>(big_var[c]));
    const double want_w = static_cast<double>(big_w[c] * scale);
    const double want_b = static_cast<double>(big_b[c] * scale);
    EXPECT_NEAR(folded_w[c], want_w, 1e-15 * want_w) << c;  // 1e-150, 1e-300
    EXPECT_NEAR(folded_b[c], want_b, 1e-15 * want_b) << c;  // 1e-150, 0
  }
}

// The layer's own non-finite weights and biases carry through, as the layer computes with
// them; the batch norm's values must be finite (RefusalsNameTheParameterAndWriteNothing).
TEST(Fold, LayerNonFiniteValuesCarryThrough) {
  std::vector<float> w = {INFINITY, 1.0f}, b = {1.0f, std::nanf("")}, folded_b(2, 7.0f);
  const std::vector<float> mean = {0.0f, 0.0f}, var = {4.0f, 4.0f};
  bnorm::fold_problem prob;
  prob.weight_shape = {2, 1};
  prob.epsilon = 0;
  bnorm::fold_args args;
  args.weight = w.data();
  args.folded_weight = w.data();
  args.bias = in(b);
  args.folded_bias = out(folded_b);
  args.mean = in(mean);
  args.var = in(var);
  const bnorm::status st = bnorm::fold_into_layer(prob, args);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(w[0], INFINITY);
  EXPECT_EQ(w[1], 0.5f);
  EXPECT_EQ(folded_b[0], 0.5f);
  EXPECT_TRUE(std::isnan(folded_b[1]));
}

TEST(Fold, RefusalsNameTheParameterAndWriteNothing) {
  std::vector<float> w(24, 1.0f), b(4, 1.0f), folded_b(4, 5.0f), ones(4, 1.0f);
  const std::vector<float> w0 = w;
  struct row {
    const char* expected;
    std::function<void(bnorm::fold_problem&, bnorm::fold_args&)> breach;
  };
  const row rows[] = {
      {"weight_shape: expected rank 2 to 8",
       [](bnorm::fold_problem& p, bnorm::fold_args&) { p.weight_shape = {24}; }},
      {"groups: expected a divisor of the input channels (weight_shape[0] = 4",
       [](bnorm::fold_problem& p, bnorm::fold_args&) {
         p.layout = weight_layout::transposed;
         p.groups = 3;
       }},
      {"groups: expected >= 1, got 0",
       [](bnorm::fold_problem& p, bnorm::fold_args&) { p.groups = 0; }},
      {"weight_shape: expected dimensions >= 0, got -2 at dimension 1 of [4, -2, 3]",
       [](bnorm::fold_problem& p, bnorm::fold_args&) {
         p.weight_shape = {4, -2, 3};
       }},
      {"weight_shape: expected 3 dimensions, got a null pointer",
       [](bnorm::fold_problem& p, bnorm::fold_args&) {
         p.weight_shape = bnorm::tensor_shape(nullptr, 3);
       }},
      {"mean: expected 4 values, got a null pointer (required by fold_into_layer",
       [](bnorm::fold_problem&, bnorm::fold_args& a) { a.mean = {}; }},
      {"var: expected 4 values (one per channel, C = 4), got 3",
       [](bnorm::fold_problem&, bnorm::fold_args& a) { a.var.size = 3; }},
      {"var: expected var + eps > 0 and finite for every channel, got var -1 (eps 1e-05) for "
       "channel 2",
       [](bnorm::fold_problem&, bnorm::fold_args& a) {
         static std::vector<float> negative = {1, 1, -1, 1};
         a.var = in(negative);
       }},
      {"folded_bias: expected memory of its own",
       [&](bnorm::fold_problem&, bnorm::fold_args& a) {
         a.folded_bias = {w.data() + 2, 4};
         a.folded_weight = w.data();
       }},
      {"epsilon: expected", [](bnorm::fold_problem& p, bnorm::fold_args&) { p.epsilon = -1; }},
      {"groups: expected a divisor of the output channels 4, got 3",
       [](bnorm::fold_problem& p, bnorm::fold_args&) {
         p.layout = weight_layout::output_last;
         p.weight_shape = {2, 3, 4};
         p.groups = 3;
       }},
      // No input channels: any number of groups divides them, but 4 × (2^62 + 1) output
      // channels wrap around to 4 in 64 bits.
      {"groups: expected weight_shape[1] × groups output channels of at most 2^57, got "
       "4611686018427387905 groups of 4",
       [](bnorm::fold_problem& p, bnorm::fold_args&) {
         p.layout = weight_layout::transposed;
         p.weight_shape = {0, 4};
         p.groups = (std::int64_t{1} << 62) + 1;
       }},
      {"mean: expected finite values, got nan for channel 1",
       [](bnorm::fold_problem&, bnorm::fold_args& a) {
         static std::vector<float> with_nan = {0, std::nanf(""), 0, 0};
         a.mean = in(with_nan);
       }},
      {"scale: expected finite values, got inf for channel 3",
       [](bnorm::fold_problem&, bnorm::fold_args& a) {
         static std::vector<float> with_inf = {1, 1, 1, INFINITY};
         a.scale = in(with_inf);
       }},
      {"shift: expected finite values, got -inf for channel 0",
       [](bnorm::fold_problem&, bnorm::fold_args& a) {
         static std::vector<float> with_inf = {-INFINITY, 0, 0, 0};
         a.shift = in(with_inf);
       }},
  };
  for (const row& r : rows) {
    bnorm::fold_problem prob;
    prob.weight_shape = {4, 2, 3};
    bnorm::fold_args args;
    args.weight = w.data();
    args.folded_weight = w.data();
    args.bias = in(b);
    args.folded_bias = out(folded_b);
    args.mean = in(ones);
    args.var = in(ones);
    r.breach(prob, args);
    const bnorm::status st = bnorm::fold_into_layer(prob, args);
    ASSERT_FALSE(st.ok()) << r.expected;
    EXPECT_NE(std::string(st.message()).find(r.expected), std::string::npos) << st.message();
    EXPECT_EQ(w, w0) << r.expected;
    EXPECT_EQ(folded_b, std::vector<float>(4, 5.0f)) << r.expected;
  }
}

// PyTorch's torch.nn.utils.fusion on the same values (tests/goldens/torch_fold_goldens.txt).
TEST(Fold, ReproducesPyTorchFusion) {
  std::ifstream file(BNORM_FOLD_GOLDENS_PATH);
  std::string text;
  int cases = 0;
  while (std::getline(file, text)) {
    std::istringstream line(text);
    std::string key, name;
    line >> key;
    if (key != "fold") continue;
    std::string layout;
    std::int64_t groups = 1;
    std::size_t rank = 0;
    line >> name >> layout >> groups >> rank;
    std::vector<std::int64_t> dims(rank);
    for (auto& d : dims) line >> d;
    std::map<std::string, std::vector<double>> values;
    while (std::getline(file, text) && text != "end") {
      std::istringstream row(text);
      std::string field;
      row >> field;
      double v = 0;
      while (row >> v) values[field].push_back(v);
    }
    SCOPED_TRACE(name);
    const auto as_float = [&](const char* field) {
      return std::vector<float>(values[field].begin(), values[field].end());
    };
    std::vector<float> w = as_float("weight"), b = as_float("bias");
    const std::vector<float> gamma = as_float("gamma"), beta = as_float("beta"),
                             mean = as_float("mean"), var = as_float("var");
    std::vector<float> folded_b(gamma.size());
    bnorm::fold_problem prob;
    prob.layout = layout == "transposed" ? weight_layout::transposed : weight_layout::output_first;
    prob.groups = groups;
    prob.weight_shape = bnorm::tensor_shape(dims.data(), dims.size());
    prob.epsilon = values["eps"].at(0);
    bnorm::fold_args args;
    args.weight = w.data();
    args.folded_weight = w.data();
    args.bias = in(b);
    args.folded_bias = out(folded_b);
    args.scale = in(gamma);
    args.shift = in(beta);
    args.mean = in(mean);
    args.var = in(var);
    ASSERT_TRUE(bnorm::fold_into_layer(prob, args).ok());
    const std::vector<double>& want_w = values["folded_weight"];
    const std::vector<double>& want_b = values["folded_bias"];
    ASSERT_EQ(w.size(), want_w.size());
    for (std::size_t i = 0; i < w.size(); ++i) {
      EXPECT_NEAR(w[i], want_w[i], 1e-6 * (1 + std::fabs(want_w[i]))) << "weight " << i;
    }
    for (std::size_t c = 0; c < folded_b.size(); ++c) {
      EXPECT_NEAR(folded_b[c], want_b[c], 1e-6 * (1 + std::fabs(want_b[c]))) << "bias " << c;
    }
    ++cases;
  }
  EXPECT_GE(cases, 4) << "golden file missing or truncated: " << BNORM_FOLD_GOLDENS_PATH;
}

// The module folds as inference runs it, and refuses in train mode ("Fusion only for eval").
TEST(Fold, ModuleFoldsInEvalModeOnly) {
  auto bn = bnorm::torch::BatchNorm2d(3);
  bn.running_mean() = {0.5f, -1.0f, 2.0f};
  bn.running_var() = {4.0f, 0.25f, 1.0f};
  bn.weight() = {2.0f, 1.0f, 0.5f};
  bn.bias() = {0.0f, 1.0f, -1.0f};
  std::vector<float> w(3 * 2, 1.0f), b;  // a 1×1 convolution without a bias
  {
    const std::string m = error_message([&] { bn.fold_into(w, b, {3, 2, 1, 1}); });
    EXPECT_TRUE(
        contains(m, "fold_into: expected a module that normalizes with its running statistics"))
        << m;
  }
  EXPECT_EQ(w, std::vector<float>(6, 1.0f));
  EXPECT_TRUE(b.empty());
  bn.eval();
  // A layer of other output channels, or a shape fold_into_layer refuses, named as the caller
  // passed it (not the module's staged bias, nor an element count of a shape never taken).
  const auto refused = [&](const bnorm::tensor_shape& shape, const char* expected) {
    try {
      bn.fold_into(w, b, shape);
      ADD_FAILURE() << "expected bnorm::error: " << expected;
    } catch (const bnorm::error& e) {
      EXPECT_STREQ(e.what(), expected);
    }
    EXPECT_EQ(w, std::vector<float>(6, 1.0f));
    EXPECT_TRUE(b.empty());
  };
  refused({6, 1, 1, 1},
          "weight_shape: expected a layer of 3 output channels (num_features), got 6 ([6, 1, 1, "
          "1], output_first)");
  refused({3, 1, 1, 1, 1, 1, 1, 1, 2},
          "weight_shape: expected rank 2 to 8 (linear [out, in], convolutions [O, I, k...]), got "
          "rank 9 [3, 1, 1, 1, 1, 1, 1, 1, …]");
  // The engine's refusals in the module's words: its parameters and statistics as it names
  // them, the layer's weight and bias as fold_into's arguments (the engine's folded_bias is
  // staged).
  const auto refused_as = [&](auto& module, const char* expected) {
    try {
      module.fold_into(w, b, {3, 2, 1, 1});
      ADD_FAILURE() << "expected bnorm::error: " << expected;
    } catch (const bnorm::error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(expected, 0), 0u) << e.what();
    }
    EXPECT_EQ(w, std::vector<float>(6, 1.0f));
    EXPECT_TRUE(b.empty());
  };
  bn.running_var()[1] = -1.0f;
  refused_as(bn,
             "running_var: expected running_var + eps > 0 and finite for every channel, got "
             "running_var -1 ");
  bn.running_var()[1] = 0.25f;
  bn.weight()[2] = INFINITY;
  refused_as(bn, "the module's weight: expected finite values, got inf for channel 2");
  bn.weight()[2] = 1e38f;
  bn.running_var()[2] = 1e-30f;
  refused_as(bn, "bias: expected values within the dtype's range, got ");
  bn.weight()[2] = 0.5f;
  bn.running_var()[2] = 1.0f;
  auto cell = bnorm::mindspore::BatchNorm2d(3);
  cell.eval();
  cell.moving_variance()[0] = NAN;
  refused_as(cell, "moving_variance: expected moving_variance + eps > 0 and finite");
  cell.moving_variance()[0] = 1.0f;
  cell.beta()[1] = NAN;
  refused_as(cell, "beta: expected finite values, got nan for channel 1");
  cell.beta()[1] = 0.0f;
  cell.moving_mean()[0] = -INFINITY;
  refused_as(cell, "moving_mean: expected finite values, got -inf for channel 0");

  bn.fold_into(w, b, {3, 2, 1, 1});
  ASSERT_EQ(b.size(), 3u);
  for (std::size_t c = 0; c < 3; ++c) {
    const double s = bn.weight()[c] / std::sqrt(bn.running_var()[c] + 1e-5);
    EXPECT_FLOAT_EQ(w[c * 2], static_cast<float>(s));
    EXPECT_FLOAT_EQ(b[c], static_cast<float>(-bn.running_mean()[c] * s + bn.bias()[c]));
  }
}

}  // namespace
