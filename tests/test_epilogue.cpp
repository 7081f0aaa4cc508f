// Fused activations (plan_options::activation): the fused forward gives the same bits as the
// plain forward followed by the activation, on every ISA, layout and rank, float32 and float64,
// in both paths (half storage: test_half.cpp, against its float64 reference); add+ReLU in place
// over its residual; NaN stays NaN; and the rules of the residual.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "support.hpp"

using namespace bnorm_test;
using bnorm::activation;
using bnorm::layout;

namespace {

struct epilogue_case {
  bnorm::tensor_shape shape;
  layout l;
};

const epilogue_case cases[] = {
    {{64, 48}, layout::channels_last},
    {{3, 5, 37}, layout::channels_first},
    {{3, 5, 37}, layout::channels_last},
    {{2, 64, 7, 7}, layout::channels_first},
    {{2, 64, 7, 7}, layout::channels_last},
    {{1, 1024, 7, 7}, layout::channels_last},
    {{2, 3, 4, 9, 11}, layout::channels_first},
    {{2, 3, 4, 9, 11}, layout::channels_last},
    {{8, 16, 64, 64}, layout::channels_first},
    {{4, 96, 20, 20}, layout::channels_last},
    {{1, 2048, 7, 7}, layout::channels_last},  // inference in row tasks, training in column blocks
    // 4 MiB of 8 KiB planes: the fused planes fetch add+ReLU's residual ahead (a 32 MiB L3).
    {{32, 16, 32, 64}, layout::channels_first},
};

/// The activation applied to the plain forward's output, in T, as the fused one must give it.
template <class T>
T activate(activation a, T y, T z, double lo, double hi) {
  switch (a) {
    case activation::none: return y;
    case activation::relu: return y < T(0) ? T(0) : y;
    case activation::clamp:
      return y < static_cast<T>(lo)   ? static_cast<T>(lo)
             : y > static_cast<T>(hi) ? static_cast<T>(hi)
                                      : y;
    case activation::add_relu: {
      const T sum = y + z;
      return sum < T(0) ? T(0) : sum;
    }
  }
  return y;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

class Epilogue : public testing::TestWithParam<bnorm::isa> {
 protected:
  template <class T>
  void check(const epilogue_case& k, activation a, bool training) {
    const geometry g(k.shape);
    std::vector<T> x = normal_data<T>(g.elements(), 0.3, 1.5, 70);
    x[g.elements() / 3] = std::numeric_limits<T>::quiet_NaN();  // its channel goes NaN
    const std::vector<T> z = normal_data<T>(g.elements(), 0.0, 1.0, 71);
    const auto gamma = normal_data<T>(g.c, 1.0, 0.5, 72), beta = normal_data<T>(g.c, 0.1, 0.5, 73);
    const auto mean = normal_data<T>(g.c, 0.2, 0.3, 74);
    std::vector<T> var(g.c, T(1.3));
    const double lo = -0.5, hi = 0.7;
    const auto run = [&](activation which, T* dst, const T* residual) {
      bnorm::plan_options opts;
      opts.max_isa = GetParam();
      opts.update_running_stats = false;
      opts.activation = which;
      opts.clamp_min = lo;
      opts.clamp_max = hi;
      const bnorm::plan plan = make_plan_or_fail({k.shape, k.l, dtype_of<T>(), 1e-5}, opts);
      bnorm::status st;
      if (training) {
        bnorm::training_args args;
        args.src = x.data();
        args.dst = dst;
        args.scale = in(gamma);
        args.shift = in(beta);
        args.residual = residual;
        st = plan.forward_training(args);
      } else {
        bnorm::inference_args args;
        args.src = x.data();
        args.dst = dst;
        args.scale = in(gamma);
        args.shift = in(beta);
        args.mean = in(mean);
        args.var = in(var);
        args.residual = residual;
        st = plan.forward_inference(args);
      }
      EXPECT_TRUE(st.ok()) << st.message();
    };
    std::vector<T> plain(x.size()), fused(x.size());
    run(activation::none, plain.data(), nullptr);
    const T* residual = a == activation::add_relu ? z.data() : nullptr;
    run(a, fused.data(), residual);
    std::vector<T> want(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) want[i] = activate(a, plain[i], z[i], lo, hi);
    const std::string name = shape_name(k.shape) +
                             (k.l == layout::channels_first ? " nchw " : " nhwc ") +
                             bnorm::to_string(a) + (training ? " train" : " infer");
    ASSERT_TRUE(same_bits(fused, want)) << name;
    std::size_t nan = 0;
    for (const T v : fused) nan += std::isnan(v);
    // Training: the NaN's whole channel (its statistics are NaN); inference: the NaN alone.
    EXPECT_EQ(nan, training ? g.n * g.spatial : 1u) << name << ": NaN stays NaN";
    if (a == activation::add_relu) {  // y written over z
      std::vector<T> over = z;
      run(a, over.data(), over.data());
      EXPECT_TRUE(same_bits(over, want)) << name << " in place over the residual";
    }
  }
};

TEST_P(Epilogue, FusedEqualsPlainThenActivationToTheBit) {
  for (const epilogue_case& k : cases) {
    for (const activation a : {activation::relu, activation::clamp, activation::add_relu}) {
      for (const bool training : {false, true}) {
        check<float>(k, a, training);
        check<double>(k, a, training);
      }
    }
  }
}

// The backward of a fused activation: dy through the mask of the forward's output (into dz
// for add+ReLU), then the plain backward: the same bits as the plain plan's backward of the
// masked dy, computed here; every output mask, dz in place over dy.
TEST_P(Epilogue, BackwardIsThePlainBackwardOfTheMaskedGradient) {
  const epilogue_case backward_cases[] = {cases[1], cases[4], cases[5], cases[8]};
  for (const epilogue_case& k : backward_cases) {
    const geometry g(k.shape);
    const auto x = normal_data<float>(g.elements(), 0.3, 1.5, 80);
    const auto z = normal_data<float>(g.elements(), 0.0, 1.0, 81);
    const auto dy = normal_data<float>(g.elements(), 0.0, 1.0, 82);
    const auto gamma = normal_data<float>(g.c, 1.0, 0.5, 83);
    const double lo = -0.5, hi = 0.7;
    for (const activation a : {activation::relu, activation::clamp, activation::add_relu}) {
      for (const bool frozen : {false, true}) {
        bnorm::plan_options opts;
        opts.max_isa = GetParam();
        opts.update_running_stats = false;
        opts.clamp_min = lo;
        opts.clamp_max = hi;
        const bnorm::plan plain = make_plan_or_fail({k.shape, k.l, bnorm::dtype::f32, 1e-5}, opts);
        opts.activation = a;
        const bnorm::plan fused = make_plan_or_fail({k.shape, k.l, bnorm::dtype::f32, 1e-5}, opts);
        // The forward (fused) and its saved statistics.
        std::vector<float> y(x.size()), mean(g.c), inv_std(g.c), var(g.c, 1.25f);
        bnorm::training_args fwd;
        fwd.src = x.data();
        fwd.dst = y.data();
        fwd.scale = in(gamma);
        fwd.batch_mean = out(mean);
        fwd.batch_inv_std = out(inv_std);
        if (a == activation::add_relu) fwd.residual = z.data();
        ASSERT_TRUE(fused.forward_training(fwd).ok());
        std::vector<float> masked(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) {
          const double low = a == activation::clamp ? lo : 0.0;
          const double high = a == activation::clamp ? hi : INFINITY;
          masked[i] =
              y[i] > static_cast<float>(low) && y[i] < static_cast<float>(high) ? dy[i] : 0.0f;
        }
        const auto call = [&](const bnorm::plan& p, const std::vector<float>& grad, bool with_y,
                              float* dz) {
          std::vector<float> dx(x.size(), -3.0f), dgamma(g.c, -3.0f), dbeta(g.c, -3.0f);
          bnorm::backward_args args;
          args.src = x.data();
          args.diff_dst = grad.data();
          args.diff_src = dx.data();
          args.scale = in(gamma);
          args.mean = in(mean);
          (frozen ? args.var : args.inv_std) = in(frozen ? var : inv_std);
          args.diff_scale = out(dgamma);
          args.diff_shift = out(dbeta);
          if (with_y) args.dst = y.data();
          args.diff_residual = dz;
          const bnorm::status st = frozen ? p.backward_frozen(args) : p.backward_training(args);
          EXPECT_TRUE(st.ok()) << st.message();
          return std::make_tuple(dx, dgamma, dbeta);
        };
        const std::string name =
            shape_name(k.shape) + " " + bnorm::to_string(a) + (frozen ? " frozen" : " training");
        const auto want = call(plain, masked, false, nullptr);
        std::vector<float> dz(x.size(), -5.0f);
        const auto got = call(fused, dy, true, a == activation::add_relu ? dz.data() : nullptr);
        EXPECT_TRUE(same_bits(std::get<0>(got), std::get<0>(want))) << name << " dx";
        EXPECT_TRUE(same_bits(std::get<1>(got), std::get<1>(want))) << name << " dgamma";
        EXPECT_TRUE(same_bits(std::get<2>(got), std::get<2>(want))) << name << " dbeta";
        if (a != activation::add_relu) continue;
        EXPECT_TRUE(same_bits(dz, masked)) << name << " dz";
        // dz alone, in place over dy.
        std::vector<float> over = dy;
        bnorm::backward_args only;
        only.diff_dst = over.data();
        only.diff_residual = over.data();
        only.dst = y.data();
        ASSERT_TRUE((frozen ? fused.backward_frozen(only) : fused.backward_training(only)).ok());
        EXPECT_TRUE(same_bits(over, masked)) << name << " dz alone, in place";
        // dz and dx may not share memory: both are written.
        std::vector<float> shared(x.size(), 4.0f);
        only.diff_dst = dy.data();
        only.diff_residual = shared.data();
        only.diff_src = shared.data();
        only.src = x.data();
        only.scale = in(gamma);
        only.mean = in(mean);
        (frozen ? only.var : only.inv_std) = in(frozen ? var : inv_std);
        const bnorm::status refused =
            frozen ? fused.backward_frozen(only) : fused.backward_training(only);
        EXPECT_NE(std::string(refused.message()).find("expected memory of its own"),
                  std::string::npos)
            << refused.message();
        EXPECT_EQ(shared, std::vector<float>(x.size(), 4.0f));
      }
    }
  }
}

// Clamp bounds that are one infinity, [+inf, +inf] or [−inf, −inf]: every output is the bound,
// whatever x, so every gradient is 0 (as PyTorch's clamp passes dy only where min ≤ x ≤ max).
// The mask took an infinite bound for one that clamps nothing: dx, dγ and dβ came back from the
// unclamped gradient, as ok. Both backwards, vectors and a tail on every ISA.
TEST_P(Epilogue, ClampBoundsOfOneInfinityMaskEveryOutput) {
  const bnorm::tensor_shape shape{3, 2, 13};
  const geometry g(shape);
  std::vector<float> x = normal_data<float>(g.elements(), 1.0, 2.0, 4);
  std::vector<float> dy = normal_data<float>(g.elements(), 0.5, 1.0, 5);
  const std::vector<float> gamma{1.5f, -0.5f}, running_mean{0.25f, -1.0f}, running_var{2.0f, 0.5f};
  for (const float bound : {INFINITY, -INFINITY}) {
    SCOPED_TRACE(bound > 0 ? "[+inf, +inf]" : "[-inf, -inf]");
    bnorm::plan_options opts;
    opts.max_isa = GetParam();
    opts.activation = activation::clamp;
    opts.clamp_min = bound;
    opts.clamp_max = bound;
    opts.update_running_stats = false;
    const bnorm::plan plan =
        make_plan_or_fail({shape, layout::channels_first, bnorm::dtype::f32}, opts);
    std::vector<float> y(x.size()), mean(g.c), inv_std(g.c);
    bnorm::training_args fwd;
    fwd.src = x.data();
    fwd.dst = y.data();
    fwd.scale = in(gamma);
    fwd.batch_mean = out(mean);
    fwd.batch_inv_std = out(inv_std);
    ASSERT_TRUE(plan.forward_training(fwd).ok());
    for (const float v : y) ASSERT_EQ(v, bound);
    for (const bool frozen : {false, true}) {
      SCOPED_TRACE(frozen ? "frozen" : "training");
      std::vector<float> dx(x.size(), 7.0f), dgamma(g.c, 7.0f), dbeta(g.c, 7.0f);
      bnorm::backward_args back;
      back.src = x.data();
      back.diff_dst = dy.data();
      back.dst = y.data();
      back.diff_src = dx.data();
      back.scale = in(gamma);
      back.diff_scale = out(dgamma);
      back.diff_shift = out(dbeta);
      if (frozen) {
        back.mean = in(running_mean);
        back.var = in(running_var);
      } else {
        back.mean = in(mean);
        back.inv_std = in(inv_std);
      }
      const bnorm::status s = frozen ? plan.backward_frozen(back) : plan.backward_training(back);
      ASSERT_TRUE(s.ok()) << s.message();
      for (std::size_t i = 0; i < dx.size(); ++i) ASSERT_EQ(dx[i], 0.0f) << i;
      EXPECT_EQ(dgamma, std::vector<float>(g.c, 0.0f));
      EXPECT_EQ(dbeta, std::vector<float>(g.c, 0.0f));
    }
  }
}

// An output of +inf (a finite x times a large γ) passes the ReLU's mask as any y > 0 does, and
// an infinite clamp bound clamps nothing on its side, ±inf included: y = +inf once zeroed dy
// there, so dx, dz, dγ and dβ lost those values. Vectors and a tail on every ISA.
TEST_P(Epilogue, MaskPassesInfiniteOutputsWhereNoBoundClampsThem) {
  const bnorm::tensor_shape shape{1, 1, 37};
  const std::size_t n = 37;
  std::vector<float> x(n), dy(n), zeros(n, 0.0f);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = i % 3 == 0 ? 10.0f : i % 3 == 1 ? -10.0f : 0.5f;
    dy[i] = static_cast<float>(1 + i) / 64.0f;
  }
  const std::vector<float> gamma{1e38f}, mean{0.0f}, var{1.0f};
  for (const activation a : {activation::relu, activation::add_relu, activation::clamp}) {
    bnorm::plan_options opts;
    opts.max_isa = GetParam();
    opts.activation = a;
    opts.clamp_min = -INFINITY;
    opts.clamp_max = INFINITY;
    const bnorm::plan plan =
        make_plan_or_fail({shape, layout::channels_first, bnorm::dtype::f32, 0.0}, opts);
    std::vector<float> y(n);
    bnorm::inference_args fwd;
    fwd.src = x.data();
    fwd.dst = y.data();
    fwd.scale = in(gamma);
    fwd.mean = in(mean);
    fwd.var = in(var);
    if (a == activation::add_relu) fwd.residual = zeros.data();
    ASSERT_TRUE(plan.forward_inference(fwd).ok());
    std::vector<float> dx(n, -3.0f), dz(n, -3.0f);
    bnorm::backward_args back;
    back.src = x.data();
    back.diff_dst = dy.data();
    back.diff_src = dx.data();
    back.scale = in(gamma);
    back.mean = in(mean);
    back.var = in(var);
    back.dst = y.data();
    if (a == activation::add_relu) back.diff_residual = dz.data();
    ASSERT_TRUE(plan.backward_frozen(back).ok());
    const std::string name = bnorm::to_string(a);
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_EQ(y[i], i % 3 == 0   ? INFINITY
                      : i % 3 == 1 ? (a == activation::clamp ? -INFINITY : 0.0f)
                                   : 5e37f)
          << name << " y at " << i;
      const bool passes = a == activation::clamp || i % 3 != 1;  // y > 0, or no bound at all
      const float want = passes ? dy[i] * 1e38f : 0.0f;          // dy·γ/sqrt(1 + 0)
      EXPECT_NEAR(dx[i], want, 1e-6 * std::fabs(want)) << name << " dx at " << i;
      if (a == activation::add_relu) {
        EXPECT_EQ(dz[i], passes ? dy[i] : 0.0f) << "dz at " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, Epilogue, testing::ValuesIn(isas_under_test()), isa_param_name);

TEST(EpilogueContract, ResidualRulesAndBounds) {
  const bnorm::tensor_shape shape{2, 4, 3, 3};
  const geometry g(shape);
  std::vector<float> x(g.elements(), 1.0f), y(g.elements(), 7.0f), z(g.elements() + 4, 0.5f),
      mean(4, 0.0f), var(4, 1.0f);
  const auto plan_with = [&](activation a) {
    bnorm::plan_options opts;
    opts.activation = a;
    return make_plan_or_fail({shape, layout::channels_first, bnorm::dtype::f32, 1e-5}, opts);
  };
  bnorm::inference_args args;
  args.src = x.data();
  args.dst = y.data();
  args.mean = in(mean);
  args.var = in(var);
  const auto refused = [&](const bnorm::plan& plan, const char* expected) {
    const bnorm::status st = plan.forward_inference(args);
    ASSERT_FALSE(st.ok()) << expected;
    EXPECT_NE(std::string(st.message()).find(expected), std::string::npos) << st.message();
    EXPECT_EQ(y, std::vector<float>(g.elements(), 7.0f)) << expected;
  };
  refused(plan_with(activation::add_relu),
          "residual: expected 72 elements of shape [2, 4, 3, 3], got a null pointer (required by "
          "the activation add_relu)");
  args.residual = z.data();
  refused(plan_with(activation::relu), "residual: expected none (the plan's activation is relu)");
  args.residual = y.data() + 1;
  refused(plan_with(activation::add_relu), "expected memory of its own");
  args.residual = reinterpret_cast<const char*>(z.data()) + 1;
  refused(plan_with(activation::add_relu), "residual: expected an address aligned to 4 bytes");

  bnorm::plan plan;
  bnorm::plan_options opts;
  opts.activation = activation::clamp;
  opts.clamp_min = 1;
  opts.clamp_max = 0;
  const bnorm::status bad =
      bnorm::make_plan({shape, layout::channels_first, bnorm::dtype::f32, 1e-5}, opts, &plan);
  EXPECT_NE(std::string(bad.message())
                .find("clamp_min, clamp_max: expected clamp_min <= clamp_max "
                      "(neither NaN), got 1 and 0"),
            std::string::npos)
      << bad.message();

  // A backward of a plan with an activation needs the forward's output to mask dy.
  const bnorm::plan relu = plan_with(activation::relu);
  bnorm::backward_args back;
  back.src = x.data();
  back.diff_dst = x.data();
  back.diff_src = y.data();
  back.mean = in(mean);
  back.var = in(var);
  bnorm::status st = relu.backward_training(back);
  EXPECT_NE(std::string(st.message())
                .find("dst: expected 72 elements of shape [2, 4, 3, 3], got "
                      "a null pointer (required by the fused relu"),
            std::string::npos)
      << st.message();
  back.dst = z.data();
  back.diff_residual = z.data() + 1;
  st = relu.backward_training(back);
  EXPECT_NE(std::string(st.message())
                .find("diff_residual: expected none (the plan's activation "
                      "is relu)"),
            std::string::npos)
      << st.message();
  EXPECT_EQ(y, std::vector<float>(g.elements(), 7.0f));
  EXPECT_NE(std::string(relu.describe()).find("fused relu"), std::string::npos) << relu.describe();

  // With add+ReLU, dz alone is an output: the refusal of none names it too (it did not).
  back.diff_src = nullptr;
  back.diff_residual = nullptr;
  st = plan_with(activation::add_relu).backward_training(back);
  EXPECT_STREQ(st.message(),
               "diff_src, diff_scale, diff_shift, diff_residual: expected at least one output to "
               "compute, got none");
}

}  // namespace
