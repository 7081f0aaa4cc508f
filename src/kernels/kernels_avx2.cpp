// The avx2 instantiation of the kernels; built with its own flags (see CMakeLists.txt).
#include "kernels/kernels_impl.hpp"

namespace bnorm::kernels {

const kernel_table& avx2_kernels() noexcept {
  static constexpr kernel_table table = make_kernel_table<xsimd::fma3<xsimd::avx2>>(isa::avx2);
  return table;
}

}  // namespace bnorm::kernels
