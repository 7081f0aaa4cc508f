// 64-byte aligned std::vector storage, as engines allocate tensors (streaming stores want
// aligned rows). Shared by the benchmarks and the tests (support/: code both use).
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace bnorm_bench {

template <class T>
struct aligned64 {
  using value_type = T;
  aligned64() = default;
  template <class U>
  aligned64(const aligned64<U>&) {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const aligned64<U>&) const {
    return true;
  }
  template <class U>
  bool operator!=(const aligned64<U>&) const {
    return false;
  }
};

template <class T>
using aligned_vector = std::vector<T, aligned64<T>>;

}  // namespace bnorm_bench
