// The avx512f instantiation of the kernels; built with its own flags (see CMakeLists.txt).
#include "kernels/kernels_impl.hpp"

namespace bnorm::kernels {

const kernel_table& avx512f_kernels() noexcept {
  static constexpr kernel_table table = make_kernel_table<xsimd::avx512f>(isa::avx512f);
  return table;
}

}  // namespace bnorm::kernels
