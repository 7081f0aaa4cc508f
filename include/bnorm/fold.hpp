// Folding an inference batch norm into the layer before it (linear, convolution, transposed
// convolution): the pair becomes one layer, w' = w·s and b' = (b − mean)·s + beta per output
// channel, s = gamma/sqrt(var + eps), computed in float64 and rounded once.
//
//   bnorm::fold_problem prob;
//   prob.weight_shape = {64, 32, 3, 3};                       // a convolution, OIHW
//   bnorm::fold_args args;
//   args.weight = w;  args.folded_weight = w;                 // in place
//   args.bias = {b, 64};  args.folded_bias = {b, 64};         // no bias: omit args.bias
//   args.scale = {gamma, 64};  args.shift = {beta, 64};
//   args.mean = {running_mean, 64};  args.var = {running_var, 64};
//   bnorm::status s = bnorm::fold_into_layer(prob, args);
#pragma once

#include <cstdint>

#include "bnorm/plan.hpp"

namespace bnorm {

/// Where a layer's weight keeps its output channels (the batch norm's channels).
enum class weight_layout {
  /// Axis 0: linear [out, in]; convolution OIW, OIHW, OIDHW and channels-last filters OHWI,
  /// ODHWI; grouped and depthwise ones too ([C·m, 1, k...]).
  output_first,
  /// The last axis: HWIO (TensorFlow) and depthwise 1HWO (XNNPACK, TFLite).
  output_last,
  /// Transposed convolution, [I, O/groups, k...] (PyTorch and ONNX ConvTranspose): input
  /// channel i belongs to group i / (I/groups), whose output channels are group·(O/groups) +
  /// axis 1. (Scaling axis 1 alone, as torch.nn.utils.fusion does, is right for groups = 1
  /// only.)
  transposed,
};

BNORM_API const char* to_string(weight_layout value) noexcept;

/// The layer's weight and the arithmetic: which axes, which element type.
struct fold_problem {
  bnorm::weight_layout layout = weight_layout::output_first;
  tensor_shape weight_shape;  ///< rank 2 to 8 (linear [out, in], convolutions [O, I, k...])
  /// Groups of a transposed convolution (its I must be a multiple). Other layouts keep their
  /// output channels on one axis whatever their groups: 1 or their groups (O a multiple).
  std::int64_t groups = 1;
  /// Of the layer's weight and bias; the batch norm's parameters and running statistics are of
  /// the same type for f32 and f64, float32 for bf16 and f16 (the forward's mixed types). The
  /// arithmetic is float64 whatever the type; each folded value is rounded once to it.
  bnorm::dtype dtype = dtype::f32;
  double epsilon = 1e-5;  ///< the batch norm's
};

/// The buffers: C = the weight's output channels (see weight_layout), per-channel ones of C
/// values: the layer's of the problem's dtype, the batch norm's of its parameter type.
struct fold_args {
  const void* weight = nullptr;   ///< weight_shape's elements, contiguous
  void* folded_weight = nullptr;  ///< as many; may equal weight (in place)
  channel_input bias;             ///< the layer's bias; omitted: 0 (a layer without one)
  channel_output folded_bias;     ///< required; may equal bias (in place)
  channel_input scale;            ///< gamma; omitted: 1
  channel_input shift;            ///< beta; omitted: 0
  channel_input mean;             ///< the running mean (required)
  channel_input var;              ///< the running variance (required)
};

/// Writes the folded weight and bias. Refused before anything is written: a bad problem or
/// buffer (named, with what was expected and what came); a channel whose var + eps is not
/// positive, or whose var, scale, shift or mean is not finite; and a folded value beyond the
/// dtype's range (a dead channel, tiny var and eps, would otherwise fold into infinities,
/// silently). The layer's own infinities and NaNs in weight and bias carry through, as the
/// layer would compute with them.
BNORM_API status fold_into_layer(const fold_problem& prob, const fold_args& args) noexcept;

}  // namespace bnorm
