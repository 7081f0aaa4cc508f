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

  // The backward of the training step, from the statistics it saved.
  std::vector<float> dy(x.size(), 0.5f), dx(x.size()), dgamma(64), dbeta(64);
  bnorm::backward_args back;
  back.src = x.data();
  back.diff_dst = dy.data();
  back.diff_src = dx.data();  // null: dx not computed; may equal diff_dst
  back.scale = train.scale;
  back.mean = {saved_mean.data(), saved_mean.size()};
  back.inv_std = {saved_inv_std.data(), saved_inv_std.size()};
  back.diff_scale = {dgamma.data(), dgamma.size()};
  back.diff_shift = {dbeta.data(), dbeta.size()};
  s = plan.backward_training(back);
  std::printf("backward %s: dbeta[0] = %g\n", s ? "ok" : s.message(), dbeta[0]);

  // Folding the inference batch norm into a 3×3 convolution before it (OIHW, in place).
  std::vector<float> weight(64 * 32 * 3 * 3, 0.1f), bias(64, 0.f);
  bnorm::fold_problem fold;
  fold.weight_shape = {64, 32, 3, 3};
  bnorm::fold_args folding;
  folding.weight = weight.data();
  folding.folded_weight = weight.data();
  folding.bias = {bias.data(), bias.size()};
  folding.folded_bias = {bias.data(), bias.size()};
  folding.scale = infer.scale;
  folding.shift = infer.shift;
  folding.mean = infer.mean;
  folding.var = infer.var;
  s = bnorm::fold_into_layer(fold, folding);
  std::printf("fold %s\n", s ? "ok" : s.message());
  return s ? 0 : 1;
}
