// The avx512bf16 instantiation of the kernels: avx512f's, built with AVX512_BF16 and
// AVX512DQ besides, which only the bfloat16 stores use (see storage.hpp).
#include "kernels/kernels_impl.hpp"

namespace bnorm::kernels {

const kernel_table& avx512bf16_kernels() noexcept {
  static constexpr kernel_table table = make_kernel_table<xsimd::avx512f>(isa::avx512bf16);
  return table;
}

}  // namespace bnorm::kernels
