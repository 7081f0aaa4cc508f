// The storage layer: how the kernels load and store a tensor's elements, of the storage type S,
// in the type they compute in, compute_t<S>. float and double compute in themselves; a new
// storage type (bfloat16, float16) is a specialization here and its loads and stores, not new
// kernels. Part of the kernels compiled once per ISA: include only from the kernel headers.
#pragma once

#include <cstddef>

#include "kernels/xsimd_compat.hpp"

namespace bnorm::kernels {
namespace {

template <class S>
struct storage;

template <>
struct storage<float> {
  using compute = float;
};

template <>
struct storage<double> {
  using compute = double;
};

/// The type a kernel computes in for elements stored as S.
template <class S>
using compute_t = typename storage<S>::compute;

/// One vector of compute_t<S> from batch<compute_t<S>>::size consecutive elements.
template <class Arch, class S>
xsimd::batch<compute_t<S>, Arch> load_elements(const S* p) noexcept {
  return xsimd::batch<compute_t<S>, Arch>::load_unaligned(p);
}

/// One vector into consecutive elements, rounded to S.
template <class Arch, class S>
void store_elements(S* p, const xsimd::batch<compute_t<S>, Arch>& v) noexcept {
  v.store_unaligned(p);
}

/// As store_elements, with a non-temporal store: p is aligned to the vector's bytes.
template <class Arch, class S>
void stream_elements(S* p, const xsimd::batch<compute_t<S>, Arch>& v) noexcept {
  store_stream(p, v);
}

/// batch<double, Arch>::size consecutive elements as float64 (pivots, per-channel values).
template <class Arch, class S>
xsimd::batch<double, Arch> load_elements_as_f64(const S* p) noexcept {
  return load_as_f64<Arch>(p);
}

/// One element, for the scalar edges of the vector code.
template <class S>
compute_t<S> to_compute(S v) noexcept {
  return static_cast<compute_t<S>>(v);
}

template <class S>
S from_compute(compute_t<S> v) noexcept {
  return static_cast<S>(v);
}

}  // namespace
}  // namespace bnorm::kernels
