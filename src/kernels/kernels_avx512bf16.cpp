// The avx512bf16 instantiation of the kernels: avx512f's code under xsimd's avx512dq arch (which
// extends avx512f), built with AVX512CD, AVX512DQ and AVX512_BF16 besides; AVX512_BF16 serves
// only the bfloat16 stores (see storage.hpp). An arch of its own gives this unit's template
// instantiations names of their own: with avx512f's, the linker could take this unit's
// out-of-line copy of an xsimd operator for the avx512f unit's too, and run it on a CPU without
// these extensions (tests/check_weak_symbols.cmake).
#include "kernels/kernels_impl.hpp"

namespace bnorm::kernels {

const kernel_table& avx512bf16_kernels() noexcept {
  static constexpr kernel_table table = make_kernel_table<xsimd::avx512dq>(isa::avx512bf16);
  return table;
}

}  // namespace bnorm::kernels
