// The neon64 instantiation of the kernels; built with its own flags (see CMakeLists.txt).
#include "kernels/kernels_impl.hpp"

namespace bnorm::kernels {

const kernel_table& neon64_kernels() noexcept {
  static constexpr kernel_table table = make_kernel_table<xsimd::neon64>(isa::neon64);
  return table;
}

}  // namespace bnorm::kernels
