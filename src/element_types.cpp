// The public half-precision types' conversions: the reference ones of element_types.hpp,
// compiled once in the baseline unit.
#include "element_types.hpp"

namespace bnorm {

bfloat16 bfloat16::from_float(float value) noexcept {
  return kernels::to_bfloat16(value);
}

float bfloat16::to_float() const noexcept {
  return kernels::to_float(*this);
}

float16 float16::from_float(float value) noexcept {
  return kernels::to_float16(value);
}

float float16::to_float() const noexcept {
  return kernels::to_float(*this);
}

}  // namespace bnorm
