// The README's module-API example, built and run by ctest.
#include <bnorm/bnorm.hpp>

#include <cstdio>
#include <vector>

int main() {
  // torch.nn.BatchNorm1d(4, affine=False): starts in train mode.
  bnorm::torch::options opts;
  opts.affine = false;
  auto bn = bnorm::torch::BatchNorm1d(4, opts);
  std::vector<float> y = bn.forward({0.7f, 0.5f, 0.5f, 0.6f, 0.5f, 0.4f, 0.6f, 0.9f}, {2, 4});
  bn.eval();

  // mindspore.nn.BatchNorm2d(64, momentum=0.9, data_format='NHWC'): starts in eval mode.
  bnorm::mindspore::options ms;
  ms.data_format = "NHWC";
  ms.gamma_init = 0.5;
  auto cell = bnorm::mindspore::BatchNorm2d(64, ms);
  cell.train();
  cell.forward(std::vector<float>(64, 1.f), {1, 64, 1, 1});  // one value per channel: y = beta

  // Refusals throw bnorm::error: PyTorch refuses to train on one value per channel.
  auto single = bnorm::torch::BatchNorm1d(4);
  try {
    single.forward(std::vector<float>(4), {1, 4});
    return 1;  // not reached
  } catch (const bnorm::error& e) {
    std::printf("%s\n", e.what());  // Expected more than 1 value per channel when training, ...
  }
  std::printf("%f %f\n", y[0], bn.running_var()[0]);

  // Backward through a module, as autograd: dx, and .grad accumulated.
  auto conv_bn = bnorm::torch::BatchNorm2d(3);
  const std::vector<float> x(2 * 3 * 4 * 4, 1.5f), dy(x.size(), 0.25f);
  std::vector<float> out = conv_bn.forward(x, {2, 3, 4, 4});
  std::vector<float> dx = conv_bn.backward(x, dy);  // the forward's input again: no copy kept
  std::printf("dx[0] %f, bias grad %f\n", dx[0], conv_bn.bias_grad()[0]);
  conv_bn.zero_grad();

  // Folding it, in eval mode, into the 1×1 convolution before it (a layer without a bias).
  conv_bn.eval();
  std::vector<float> weight(3 * 5, 1.0f), bias;
  conv_bn.fold_into(weight, bias, {3, 5, 1, 1});
  std::printf("folded bias %f\n", bias[0]);
}
