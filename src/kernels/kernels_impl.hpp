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

namespace bnorm::kernels {
namespace {

/// The kernels of storage type S: the data kernels load and store S, the per-channel ones are
/// those of its compute type (float for the half types).
template <class Arch, class S, class T = compute_t<S>>
constexpr kernel_set<S> make_kernel_set() noexcept {
  return {&plane_pivots<Arch, S>,
          &row_pivots<Arch, S>,
          &plane_stats<Arch, S>,
          &plane_normalize<Arch, S>,
          &interleaved_stats<Arch, S>,
          &interleaved_normalize<Arch, S>,
          &channel_moments<Arch, T>,
          &channel_coefficients<Arch, T>,
          &inference_coefficients<Arch, T>,
          &plane_gradient_sums<Arch, S>,
          &interleaved_gradient_sums<Arch, S>,
          &plane_gradient<Arch, S>,
          &interleaved_gradient<Arch, S>,
          &activation_mask<Arch, S>,
          &channel_gradients<Arch, T>,
          &narrow<Arch, T>,
          &blend_running<Arch, T>};
}

template <class Arch>
constexpr kernel_table make_kernel_table(bnorm::isa id) noexcept {
  return {id,
          xsimd::batch<float, Arch>::size,
          xsimd::batch<double, Arch>::size,
          make_kernel_set<Arch, float>(),
          make_kernel_set<Arch, double>(),
          make_kernel_set<Arch, bfloat16>(),
          make_kernel_set<Arch, float16>()};
}

}  // namespace
}  // namespace bnorm::kernels
