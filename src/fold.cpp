// Folding an inference batch norm into the layer before it: validation, then two passes in
// float64, the first checking every folded value, the second writing them.
#include "bnorm/fold.hpp"

#include <cmath>
#include <limits>
#include <new>
#include <utility>
#include <vector>

#include "element_types.hpp"
#include "fp_environment.hpp"
#include "validation.hpp"

namespace bnorm {

const char* to_string(weight_layout value) noexcept {
  switch (value) {
    case weight_layout::output_first: return "output_first";
    case weight_layout::output_last: return "output_last";
    case weight_layout::transposed: return "transposed";
  }
  return "unknown";
}

namespace {

using detail::shape_text;

/// How the weight's elements map to output channels: element (outer, c, inner) of a
/// [outer, channels, inner] view. A transposed convolution's [I, O/g, k...] is g groups of
/// [I/g, O/g, k...]: its view is walked group by group (see channel_of).
struct weight_geometry {
  std::size_t channels = 0;  // C, the batch norm's
  std::size_t elements = 0;
  std::size_t outer = 1, axis = 0, inner = 1;  // [outer, axis, inner]
  std::size_t groups = 1;                      // transposed: the channel adds group·axis
  std::size_t rows_per_group = 1;              // transposed: I/g

  /// The output channel of element i.
  std::size_t channel_of(std::size_t i) const {
    const std::size_t row = i / (axis * inner);
    const std::size_t local = i / inner % axis;
    return groups == 1 ? local : row / rows_per_group * axis + local;
  }
};

status geometry_of(const fold_problem& prob, weight_geometry* out) noexcept {
  const tensor_shape& shape = prob.weight_shape;
  if (shape.rank() < 2 || shape.rank() > tensor_shape::capacity) {
    return status::failure(status_code::invalid_argument,
                           "weight_shape: expected rank 2 to 8 (linear [out, in], convolutions "
                           "[O, I, k...]), got rank %zu %s",
                           shape.rank(), shape_text(shape).text);
  }
  if (status s = detail::check_dimensions(shape, "weight_shape"); !s) return s;
  std::uint64_t elements = 0, extent = 0;
  if (!detail::element_count(shape, &elements, &extent) ||
      extent > (std::uint64_t{1} << 60) / detail::element_size(prob.dtype)) {
    return status::failure(status_code::invalid_argument,
                           "weight_shape: expected at most 2^60 bytes, got %s",
                           shape_text(shape).text);
  }
  if (prob.groups < 1) {
    return status::failure(status_code::invalid_argument, "groups: expected >= 1, got %lld",
                           static_cast<long long>(prob.groups));
  }
  weight_geometry g;
  g.elements = static_cast<std::size_t>(elements);
  const std::size_t rank = shape.rank();
  const auto dim = [&](std::size_t d) { return static_cast<std::size_t>(shape[d]); };
  const auto groups = static_cast<std::size_t>(prob.groups);
  switch (prob.layout) {
    case weight_layout::output_first:
    case weight_layout::output_last: {
      const std::size_t at = prob.layout == weight_layout::output_first ? 0 : rank - 1;
      g.axis = dim(at);
      for (std::size_t d = 0; d < at; ++d) g.outer *= dim(d);
      for (std::size_t d = at + 1; d < rank; ++d) g.inner *= dim(d);
      g.channels = g.axis;
      if (g.axis % groups != 0) {
        return status::failure(status_code::invalid_argument,
                               "groups: expected a divisor of the output channels %zu, got %lld",
                               g.axis, static_cast<long long>(prob.groups));
      }
      break;
    }
    case weight_layout::transposed: {
      if (dim(0) % groups != 0) {
        return status::failure(status_code::invalid_argument,
                               "groups: expected a divisor of the input channels (weight_shape[0] "
                               "= %zu of a transposed convolution's [I, O/groups, k...]), got %lld",
                               dim(0), static_cast<long long>(prob.groups));
      }
      g.outer = dim(0);
      g.axis = dim(1);
      for (std::size_t d = 2; d < rank; ++d) g.inner *= dim(d);
      g.groups = groups;
      g.rows_per_group = dim(0) / groups;
      // Groups of no input channels (I = 0) divide it whatever their number: their channels
      // must still be a count of values the per-channel buffers can hold.
      if (__builtin_mul_overflow(g.axis, groups, &g.channels) ||
          g.channels > (std::size_t{1} << 60) / sizeof(double)) {
        return status::failure(status_code::invalid_argument,
                               "groups: expected weight_shape[1] × groups output channels of at "
                               "most 2^57, got %lld groups of %zu (weight_shape %s)",
                               static_cast<long long>(prob.groups), g.axis, shape_text(shape).text);
      }
      break;
    }
    default:
      return status::failure(status_code::invalid_argument,
                             "layout: expected output_first, output_last or transposed, got %s",
                             detail::enum_text(prob.layout).text);
  }
  if (g.channels == 0) {
    return status::failure(status_code::invalid_argument,
                           "weight_shape: expected at least one output channel, got %s",
                           shape_text(shape).text);
  }
  *out = g;
  return {};
}

template <class T>
double at_or(const channel_input& buffer, std::size_t c, double fallback) {
  return buffer.data ? kernels::to_double(static_cast<const T*>(buffer.data)[c]) : fallback;
}

/// A folded value beyond the layer's type: refused, naming the channel.
status beyond_range(const char* name, std::size_t c, double value, double scale) {
  return status::failure(status_code::invalid_argument,
                         "%s: expected values within the dtype's range, got %s for channel %zu "
                         "(gamma/sqrt(var + eps) = %s)",
                         name, detail::number_text(value).text, c, detail::number_text(scale).text);
}

/// W: the layer's weight and bias; P: the batch norm's parameters and running statistics.
template <class W, class P>
status fold(const fold_problem& prob, const weight_geometry& g, const fold_args& args) {
  // Refused: a folded value that W holds as an infinity (or NaN): not one that rounds down to
  // W's largest (float16's 65510 is 65504; from 65520 it would be infinite).
  const auto beyond = [](double v) {
    return !std::isfinite(kernels::to_double(kernels::from_double<W>(v)));
  };
  // Channel c's gamma/sqrt(var + eps) is scale[c]·2^exponent[c]: float64's may pass its largest
  // value (γ 1e300 over sqrt(1e-300)) or fall below its smallest normal one (γ 1e-300 over
  // sqrt(1e300)) where the folded values fit; then its significand part and a power of two
  // apart (exponent 0 elsewhere: the same operations as one quotient).
  std::vector<double> scale(g.channels), bias(g.channels);
  std::vector<int> exponent(g.channels, 0);
  // v·scale: where the exponent is not 0, v's significand times scale[c] (a normal product,
  // rounded once; v itself may be subnormal), the powers of two added after.
  const auto times_scale = [&](double v, std::size_t c) {
    if (exponent[c] == 0) return v * scale[c];
    int v_exponent = 0;
    const double significand = std::frexp(v, &v_exponent);
    return std::ldexp(significand * scale[c], v_exponent + exponent[c]);
  };
  for (std::size_t c = 0; c < g.channels; ++c) {
    const double var = at_or<P>(args.var, c, 0.0);
    if (!(var + prob.epsilon > 0.0) || !std::isfinite(var)) {
      return status::failure(status_code::invalid_argument,
                             "var: expected var + eps > 0 and finite for every channel, got var "
                             "%s (eps %s) for channel %zu",
                             detail::number_text(var).text, detail::number_text(prob.epsilon).text,
                             c);
    }
    const double gamma = at_or<P>(args.scale, c, 1.0), beta = at_or<P>(args.shift, c, 0.0);
    const double mean = at_or<P>(args.mean, c, 0.0), layer_bias = at_or<W>(args.bias, c, 0.0);
    const std::pair<const char*, double> inputs[] = {
        {"scale", gamma}, {"shift", beta}, {"mean", mean}};
    for (const auto& [name, value] : inputs) {
      if (!std::isfinite(value)) {
        return status::failure(status_code::invalid_argument,
                               "%s: expected finite values, got %s for channel %zu", name,
                               detail::number_text(value).text, c);
      }
    }
    // float64 variances near its largest: var + eps may overflow where their root does not.
    const double var_eps = var + prob.epsilon;
    const double root = std::isfinite(var_eps) ? std::sqrt(var_eps)
                                               : 2.0 * std::sqrt(0.25 * var + 0.25 * prob.epsilon);
    scale[c] = gamma / root;
    if (std::isinf(scale[c]) ||
        (gamma != 0.0 && std::fabs(scale[c]) < std::numeric_limits<double>::min())) {
      scale[c] = std::frexp(gamma, &exponent[c]) / root;  // [0.5, 1) over at most 1.4e154
    }
    // (layer bias − mean)·scale + β, the difference halved where it overflows (float64's ±1e308).
    double difference = layer_bias - mean;
    int halved = 0;
    if (std::isinf(difference) && std::isfinite(layer_bias)) {
      difference = layer_bias / 2 - mean / 2;
      halved = 1;
    }
    bias[c] = std::ldexp(times_scale(difference, c), halved) + beta;
    // The layer's own non-finite values carry through, as the layer computes with them.
    if (beyond(bias[c]) && std::isfinite(layer_bias)) {
      return beyond_range("folded_bias", c, bias[c], std::ldexp(scale[c], exponent[c]));
    }
  }
  const W* w = static_cast<const W*>(args.weight);
  for (std::size_t i = 0; i < g.elements; ++i) {
    const std::size_t c = g.channel_of(i);
    const double weight = kernels::to_double(w[i]);
    const double v = times_scale(weight, c);
    if (beyond(v) && std::isfinite(weight)) {
      return beyond_range("folded_weight", c, v, std::ldexp(scale[c], exponent[c]));
    }
  }
  // Everything checked: write (in place too: each element is read before it is written).
  W* out = static_cast<W*>(args.folded_weight);
  for (std::size_t i = 0; i < g.elements; ++i) {
    out[i] = kernels::from_double<W>(times_scale(kernels::to_double(w[i]), g.channel_of(i)));
  }
  W* folded_bias = static_cast<W*>(args.folded_bias.data);
  for (std::size_t c = 0; c < g.channels; ++c) folded_bias[c] = kernels::from_double<W>(bias[c]);
  return {};
}

status fold_as(const fold_problem& prob, const weight_geometry& g, const fold_args& args) {
  switch (prob.dtype) {
    case dtype::f32: return fold<float, float>(prob, g, args);
    case dtype::f64: return fold<double, double>(prob, g, args);
    case dtype::bf16: return fold<kernels::bfloat16, float>(prob, g, args);
    case dtype::f16: return fold<kernels::float16, float>(prob, g, args);
  }
  return status(status_code::internal_error, "fold_into_layer: unknown dtype");
}

}  // namespace

status fold_into_layer(const fold_problem& prob, const fold_args& args) noexcept {
  const detail::fp_environment_scope environment;  // the same folded bits for every caller
  if (prob.dtype != dtype::f32 && prob.dtype != dtype::f64 && prob.dtype != dtype::bf16 &&
      prob.dtype != dtype::f16) {
    return status::failure(status_code::invalid_argument,
                           "dtype: expected f32, f64, bf16 or f16, got %s",
                           detail::enum_text(prob.dtype).text);
  }
  if (status s = detail::check_epsilon("epsilon", prob.epsilon); !s) return s;
  weight_geometry g;
  if (status s = geometry_of(prob, &g); !s) return s;
  if (g.elements > 0 && (args.weight == nullptr || args.folded_weight == nullptr)) {
    return status::failure(status_code::invalid_argument,
                           "%s: expected %zu elements of shape %s, got a null pointer",
                           args.weight == nullptr ? "weight" : "folded_weight", g.elements,
                           shape_text(prob.weight_shape).text);
  }
  if (status s = detail::check_alignment("weight", args.weight, prob.dtype); !s) return s;
  if (status s = detail::check_alignment("folded_weight", args.folded_weight, prob.dtype); !s) {
    return s;
  }
  // The layer's bias is of its dtype, the batch norm's values of that dtype's parameter type.
  const dtype values = detail::compute_dtype(prob.dtype);
  if (status s = detail::check_channel_buffers(
          {{"bias", args.bias.data, args.bias.size},
           {"folded_bias", args.folded_bias.data, args.folded_bias.size,
            "by fold_into_layer (the folded layer has a bias)"}},
          g.channels, prob.dtype);
      !s) {
    return s;
  }
  if (status s = detail::check_channel_buffers(
          {{"scale", args.scale.data, args.scale.size},
           {"shift", args.shift.data, args.shift.size},
           {"mean", args.mean.data, args.mean.size, "by fold_into_layer (the running mean)"},
           {"var", args.var.data, args.var.size, "by fold_into_layer (the running variance)"}},
          g.channels, values);
      !s) {
    return s;
  }
  const std::size_t size = detail::element_size(prob.dtype);
  const std::size_t weight_bytes = g.elements * size, channel_bytes = g.channels * size;
  const std::size_t value_bytes = g.channels * detail::element_size(values);
  // In place is the same buffer read and written: the read one leaves the overlap rule.
  const bool weight_in_place = args.weight == args.folded_weight;
  const bool bias_in_place = args.bias.data == args.folded_bias.data;
  if (status s = detail::check_separate(
          {{"weight", args.weight, weight_in_place ? 0 : weight_bytes, false},
           {"folded_weight", args.folded_weight, weight_bytes, true},
           {"bias", args.bias.data, bias_in_place ? 0 : channel_bytes, false},
           {"folded_bias", args.folded_bias.data, channel_bytes, true},
           {"scale", args.scale.data, value_bytes, false},
           {"shift", args.shift.data, value_bytes, false},
           {"mean", args.mean.data, value_bytes, false},
           {"var", args.var.data, value_bytes, false}});
      !s) {
    return s;
  }
  try {
    return fold_as(prob, g, args);
  } catch (const std::bad_alloc&) {
    return status(status_code::out_of_memory, "fold_into_layer: out of memory");
  }
}

namespace detail {

status fold_channels(const fold_problem& prob, std::size_t* channels) noexcept {
  weight_geometry g;
  if (status s = geometry_of(prob, &g); !s) return s;
  *channels = g.channels;
  return {};
}

}  // namespace detail
}  // namespace bnorm
