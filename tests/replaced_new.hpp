// Every non-aligned operator new and delete over malloc and free, for a test binary that fails
// allocations on demand. Include it in one file of the binary, which defines
//   fail_this_allocation(size): true makes that throwing new throw std::bad_alloc;
//   fail_this_nothrow_allocation(size): true makes that nothrow new return nullptr.
// All the forms are replaced together so that every new meets its own delete: a sanitizer's
// new freed by a replaced delete is reported as a mismatch (alloc-dealloc-mismatch).
#pragma once

#include <cstdlib>
#include <new>

bool fail_this_allocation(std::size_t size);
bool fail_this_nothrow_allocation(std::size_t size);

namespace replaced_new_detail {
inline void* allocate(std::size_t size) noexcept {
  return std::malloc(size ? size : 1);
}
}  // namespace replaced_new_detail

void* operator new(std::size_t size) {
  if (fail_this_allocation(size)) throw std::bad_alloc();
  if (void* p = replaced_new_detail::allocate(size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  return ::operator new(size);
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  return fail_this_nothrow_allocation(size) ? nullptr : replaced_new_detail::allocate(size);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  return ::operator new(size, std::nothrow);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
