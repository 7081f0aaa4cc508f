// The module API against PyTorch's own outputs (tests/goldens/torch_goldens.txt, written by
// make_torch_goldens.py from Debian's python3-torch): multi-step training, momentum=None,
// track_running_stats=False, channels-last, float64, eval before and after training; and their
// gradients (autograd, checked there against aten's native_batch_norm_backward), accumulated.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "support.hpp"

namespace {

struct golden_step {
  bool train = true;
  std::vector<std::int64_t> dims;
  std::vector<double> x, y, running_mean, running_var;
  std::vector<double> dy, dx, dweight, dbias;  // autograd's gradients of the step
  bool has_running = false;
  std::int64_t nbt = 0;
};

struct golden_case {
  std::string name, kind, dtype, layout;
  std::int64_t channels = 0;
  double eps = 0;
  std::optional<double> momentum;
  bool affine = true, track = true;
  std::vector<double> weight, bias;
  std::vector<golden_step> steps;
};

std::vector<double> read_values(std::istringstream& line) {
  std::vector<double> v;
  std::string token;
  while (line >> token) v.push_back(std::stod(token));
  return v;
}

std::vector<golden_case> load_goldens() {
  std::ifstream file(BNORM_GOLDENS_PATH);
  std::vector<golden_case> cases;
  std::string text;
  while (std::getline(file, text)) {
    std::istringstream line(text);
    std::string key;
    line >> key;
    if (key == "case") {
      cases.emplace_back();
      line >> cases.back().name;
    } else if (key == "module") {
      golden_case& c = cases.back();
      std::string momentum;
      int affine = 0, track = 0;
      line >> c.kind >> c.dtype >> c.channels >> c.eps >> momentum >> affine >> track >> c.layout;
      if (momentum != "none") c.momentum = std::stod(momentum);
      c.affine = affine;
      c.track = track;
    } else if (key == "weight") {
      cases.back().weight = read_values(line);
    } else if (key == "bias") {
      cases.back().bias = read_values(line);
    } else if (key == "step") {
      golden_step s;
      std::string mode;
      std::size_t rank = 0;
      line >> mode >> rank;
      s.train = mode == "train";
      s.dims.resize(rank);
      for (auto& d : s.dims) line >> d;
      cases.back().steps.push_back(s);
    } else if (key == "x") {
      cases.back().steps.back().x = read_values(line);
    } else if (key == "y") {
      cases.back().steps.back().y = read_values(line);
    } else if (key == "dy") {
      cases.back().steps.back().dy = read_values(line);
    } else if (key == "dx") {
      cases.back().steps.back().dx = read_values(line);
    } else if (key == "dweight") {
      cases.back().steps.back().dweight = read_values(line);
    } else if (key == "dbias") {
      cases.back().steps.back().dbias = read_values(line);
    } else if (key == "running_mean" || key == "running_var") {
      golden_step& s = cases.back().steps.back();
      if (text.find("none") != std::string::npos) continue;
      s.has_running = true;
      (key == "running_mean" ? s.running_mean : s.running_var) = read_values(line);
    } else if (key == "nbt") {
      line >> cases.back().steps.back().nbt;
    }
  }
  return cases;
}

template <class T>
void run_case(const golden_case& g) {
  SCOPED_TRACE(g.name);
  bnorm::torch::options opts;
  opts.eps = g.eps;
  opts.momentum = g.momentum;
  opts.affine = g.affine;
  opts.track_running_stats = g.track;
  opts.memory_format =
      g.layout == "cl" ? bnorm::layout::channels_last : bnorm::layout::channels_first;
  auto bn = g.kind == "1d"   ? bnorm::torch::BatchNorm1d<T>(g.channels, opts)
            : g.kind == "2d" ? bnorm::torch::BatchNorm2d<T>(g.channels, opts)
                             : bnorm::torch::BatchNorm3d<T>(g.channels, opts);
  EXPECT_TRUE(bn.is_training()) << "PyTorch modules start in train mode";
  if (g.affine) {
    bn.weight().assign(g.weight.begin(), g.weight.end());
    bn.bias().assign(g.bias.begin(), g.bias.end());
  } else {
    EXPECT_TRUE(bn.weight().empty());
  }
  const double tol = sizeof(T) == 4 ? 1e-6 : 1e-12;
  std::vector<double> dweight_sum(g.weight.size(), 0.0), dbias_sum(g.bias.size(), 0.0);
  int index = 0;
  for (const golden_step& s : g.steps) {
    SCOPED_TRACE("step " + std::to_string(index++));
    bn.train(s.train);
    const std::vector<T> x(s.x.begin(), s.x.end());
    const std::vector<T> y = bn.forward(x, bnorm::tensor_shape(s.dims.data(), s.dims.size()));
    ASSERT_EQ(y.size(), s.y.size());
    for (std::size_t i = 0; i < y.size(); ++i) {
      ASSERT_NEAR(y[i], s.y[i], tol * (1 + std::fabs(s.y[i]))) << "y at " << i;
    }
    ASSERT_EQ(bn.running_mean().empty(), !s.has_running);
    for (std::size_t c = 0; s.has_running && c < s.running_mean.size(); ++c) {
      EXPECT_NEAR(bn.running_mean()[c], s.running_mean[c],
                  tol * (1 + std::fabs(s.running_mean[c])));
      EXPECT_NEAR(bn.running_var()[c], s.running_var[c], tol * (1 + std::fabs(s.running_var[c])));
    }
    EXPECT_EQ(bn.num_batches_tracked(), s.nbt);
    // The gradients of the step, with .grad accumulated over the steps as PyTorch's would be
    // without zero_grad: compared with the sum of autograd's per-step gradients. The goldens
    // are float64 throughout, while a float32 module saves its mean and 1/std in float32 (as
    // PyTorch does): their rounding moves x̂ by up to |mean|·2⁻²⁴·inv_std, which the gradients
    // carry (~4e-5 at a mean of 100 std). The bound for float32 allows that; the float64
    // reference of test_backward.cpp, from the same saved statistics, holds the 1e-6 target.
    ASSERT_EQ(s.dx.size(), x.size());
    const std::vector<T> dy(s.dy.begin(), s.dy.end());
    const std::vector<T> dx = bn.backward(x, dy);
    double largest = 1.0;
    for (double v : s.dx) largest = std::max(largest, std::fabs(v));
    const double grad_tol = sizeof(T) == 4 ? 3e-5 : 1e-11;
    for (std::size_t i = 0; i < dx.size(); ++i) {
      ASSERT_NEAR(dx[i], s.dx[i], grad_tol * largest) << "dx at " << i;
    }
    for (std::size_t c = 0; c < s.dweight.size(); ++c) {
      dweight_sum[c] += s.dweight[c];
      dbias_sum[c] += s.dbias[c];
      EXPECT_NEAR(bn.weight_grad()[c], dweight_sum[c], grad_tol * (1 + std::fabs(dweight_sum[c])));
      EXPECT_NEAR(bn.bias_grad()[c], dbias_sum[c], grad_tol * (1 + std::fabs(dbias_sum[c])));
    }
    EXPECT_EQ(bn.weight_grad().size(), g.affine ? g.weight.size() : 0u);
  }
}

TEST(TorchGoldens, ModulesReproducePyTorch) {
  const std::vector<golden_case> cases = load_goldens();
  ASSERT_GE(cases.size(), 8u) << "golden file missing or truncated: " << BNORM_GOLDENS_PATH;
  for (const golden_case& g : cases) {
    if (g.dtype == "f32") {
      run_case<float>(g);
    } else {
      run_case<double>(g);
    }
  }
}

}  // namespace
