// The README's engine-API example, built and run by ctest.
#include <bnorm/bnorm.hpp>

#include <cstdio>
#include <vector>

int main() {
  // Once per layer: validate the problem and bind it to the best ISA of this CPU.
  bnorm::problem prob{{32, 64, 56, 56}, bnorm::layout::channels_last, bnorm::dtype::f32, 1e-5};
  bnorm::plan_options opts;  // PyTorch convention, momentum 0.1, the caller's oneTBB arena
  bnorm::plan plan;
  if (bnorm::status s = bnorm::make_plan(prob, opts, &plan); !s) {
    std::fprintf(stderr, "%s\n", s.message());
    return 1;
  }

  std::vector<float> x(32 * 64 * 56 * 56, 1.f), y(x.size());
  std::vector<float> gamma(64, 1.f), beta(64, 0.f), mean(64, 0.f), var(64, 1.f);
  std::vector<float> saved_mean(64), saved_inv_std(64);
  std::int64_t steps = 0;

  // Every training step: batch statistics, normalize, update the running statistics.
  bnorm::training_args train;
  train.src = x.data();
  train.dst = y.data();  // or x.data(): in place
  train.scale = {gamma.data(), gamma.size()};
  train.shift = {beta.data(), beta.size()};
  train.batch_mean = {saved_mean.data(), saved_mean.size()};  // optional, for backward
  train.batch_inv_std = {saved_inv_std.data(), saved_inv_std.size()};
  train.running_mean = {mean.data(), mean.size()};
  train.running_var = {var.data(), var.size()};
  train.num_batches_tracked = &steps;
  if (bnorm::status s = plan.forward_training(train); !s) std::fprintf(stderr, "%s\n", s.message());

  // Inference: the running statistics, one pass.
  bnorm::inference_args infer;
  infer.src = x.data();
  infer.dst = y.data();
  infer.scale = train.scale;
  infer.shift = train.shift;
  infer.mean = {mean.data(), mean.size()};
  infer.var = {var.data(), var.size()};
  bnorm::status s = plan.forward_inference(infer);
  std::printf("%s: %s\n", s ? "ok" : s.message(), plan.describe());  // ISA and schedule
}
