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

template <class Arch, class T>
constexpr kernel_set<T> make_kernel_set() noexcept {
  return {&plane_pivots<Arch, T>,
          &row_pivots<Arch, T>,
          &plane_stats<Arch, T>,
          &plane_normalize<Arch, T>,
          &interleaved_stats<Arch, T>,
          &interleaved_normalize<Arch, T>,
          &channel_moments<Arch, T>,
          &channel_coefficients<Arch, T>,
          &inference_coefficients<Arch, T>,
          &plane_gradient_sums<Arch, T>,
          &interleaved_gradient_sums<Arch, T>,
          &plane_gradient<Arch, T>,
          &interleaved_gradient<Arch, T>,
          &activation_mask<Arch, T>,
          &channel_gradients<Arch, T>,
          &narrow<Arch, T>,
          &blend_running<Arch, T>};
}

template <class Arch>
constexpr kernel_table make_kernel_table(bnorm::isa id) noexcept {
  return {id, xsimd::batch<float, Arch>::size, xsimd::batch<double, Arch>::size,
          make_kernel_set<Arch, float>(), make_kernel_set<Arch, double>()};
}

}  // namespace
}  // namespace bnorm::kernels
