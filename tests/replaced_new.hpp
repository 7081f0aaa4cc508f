// The throwing operator new and its deletes over malloc and free, for a test binary that fails
// allocations on demand. Include it in one file of the binary, which defines
// fail_this_allocation(size): true makes that allocation throw std::bad_alloc. The deletes
// are replaced too, so that they match (a sanitizer's own delete would report a mismatch).
#pragma once

#include <cstdlib>
#include <new>

bool fail_this_allocation(std::size_t size);

void* operator new(std::size_t size) {
  if (fail_this_allocation(size)) throw std::bad_alloc();
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  return ::operator new(size);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
