// The sse2 instantiation of the kernels; built with its own flags (see CMakeLists.txt).
#include "kernels/kernels_impl.hpp"

namespace bnorm::kernels {

const kernel_table& sse2_kernels() noexcept {
  static constexpr kernel_table table = make_kernel_table<xsimd::sse2>(isa::sse2);
  return table;
}

}  // namespace bnorm::kernels
