// Kernel definitions, written once over xsimd and instantiated per ISA by kernels_<isa>.cpp.
// Include only from those units: each is compiled with its own -m flags. The kernels by kind:
// reduce.hpp (statistics and gradient sums), map.hpp (normalization), gradient_map.hpp (the
// backward's dx), channel.hpp (per-channel float64).
#pragma once

#include "kernels/channel.hpp"
#include "kernels/gradient_map.hpp"
#include "kernels/kernels.hpp"
#include "kernels/map.hpp"
#include "kernels/reduce.hpp"

#include <type_traits>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace bnorm::kernels {
namespace {

/// `Kernel` as the table holds it: returning with the upper halves of the vector registers
/// zeroed. GCC zeroes them only after the instructions it sees writing them, and a VEX.256 or
/// EVEX instruction that reads a wide memory operand into a narrow register (vcvtpd2ps from
/// 32 bytes to 16) is not one of them; the engine's SSE code after such a return, and the next
/// kernel, then paid an AVX–SSE transition, most of a small call's time (docs/design.md,
/// "Measurements behind the choices"). One vzeroupper a kernel call is cheap next to it.
template <auto Kernel>
struct returns_clean;

template <class R, class... Args, R (*Kernel)(Args...) noexcept>
struct returns_clean<Kernel> {
  static R call(Args... args) noexcept {
    if constexpr (std::is_void_v<R>) {
      Kernel(args...);
      zero_upper();
    } else {
      const R result = Kernel(args...);
      zero_upper();
      return result;
    }
  }
  static void zero_upper() noexcept {
#if defined(__AVX__)
    _mm256_zeroupper();
#endif
  }
};

template <auto Kernel>
constexpr auto clean = &returns_clean<Kernel>::call;

/// The kernels of storage type S: the data kernels load and store S, the per-channel ones are
/// those of its compute type (float for the half types).
template <class Arch, class S, class T = compute_t<S>>
constexpr kernel_set<S> make_kernel_set() noexcept {
  return {clean<&plane_pivots<half_width_arch<Arch>, S>>,
          clean<&row_pivots<Arch, S>>,
          clean<&plane_stats<Arch, S>>,
          clean<&plane_normalize<Arch, S>>,
          clean<&interleaved_stats<Arch, S>>,
          clean<&interleaved_normalize<Arch, S>>,
          clean<&channel_moments<Arch, T>>,
          clean<&channel_coefficients<Arch, T>>,
          clean<&inference_coefficients<Arch, T>>,
          clean<&plane_gradient_sums<Arch, S>>,
          clean<&interleaved_gradient_sums<Arch, S>>,
          clean<&plane_gradient_sums_f64<Arch, S>>,
          clean<&interleaved_gradient_sums_f64<Arch, S>>,
          clean<&plane_gradient<Arch, S>>,
          clean<&interleaved_gradient<Arch, S>>,
          clean<&activation_mask<Arch, S>>,
          clean<&channel_gradients<Arch, T>>,
          clean<&narrow<Arch, T>>,
          clean<&commit_statistics<Arch, T>>};
}

template <class Arch>
constexpr kernel_table make_kernel_table(bnorm::isa id) noexcept {
  return {id,
          xsimd::batch<float, Arch>::size,
          xsimd::batch<double, Arch>::size,
          lane_channels<Arch>::exists,
          make_kernel_set<Arch, float>(),
          make_kernel_set<Arch, double>(),
          make_kernel_set<Arch, bfloat16>(),
          make_kernel_set<Arch, float16>()};
}

}  // namespace
}  // namespace bnorm::kernels
