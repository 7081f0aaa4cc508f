// The floating-point environment bnorm computes in, whatever the caller's: round to nearest
// even, subnormals kept (no flush-to-zero, no denormals-are-zero), every exception masked. A
// caller's FTZ/DAZ, rounding mode or unmasked trap would otherwise change bits, or fault, and
// differently on the calling thread and on oneTBB's workers, which keep their own environment.
// The scope sets it for one call on one thread and restores the thread's own modes when it
// ends (the exception flags stay raised, as after any floating-point code); when the thread
// already computes in this environment it costs one read of the control register.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace bnorm::detail {

class fp_environment_scope {
 public:
  fp_environment_scope() noexcept : saved_(read() & mode_mask), outer_(innermost_) {
    if (saved_ != computing) write((read() & ~mode_mask) | computing);
    innermost_ = this;
  }
  ~fp_environment_scope() {
    innermost_ = outer_;
    if (saved_ != computing) write((read() & ~mode_mask) | saved_);
  }
  fp_environment_scope(const fp_environment_scope&) = delete;
  fp_environment_scope& operator=(const fp_environment_scope&) = delete;

 private:
#if defined(__x86_64__) || defined(_M_X64)
  // MXCSR: FTZ (bit 15), rounding (14:13), exception masks (12:7), DAZ (bit 6); flags 5:0.
  using word = std::uint32_t;
  static constexpr word mode_mask = 0xFFC0;
  static constexpr word computing = 0x1F80;  // all masked, round to nearest, no FTZ/DAZ
  static word read() noexcept {
    return _mm_getcsr();
  }
  static void write(word value) noexcept {
    _mm_setcsr(value);
  }
#elif defined(__aarch64__)
  // FPCR: AHP (26), DN (25), FZ (24), rounding (23:22), FZ16 (19), trap enables (15, 12:8),
  // and FEAT_AFP's NEP, AH and FIZ (2:0).
  using word = std::uint64_t;
  static constexpr word mode_mask = 0x07C89F07;
  static constexpr word computing = 0;  // round to nearest, no flush, no traps
  static word read() noexcept {
    word value;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(value));
    return value;
  }
  static void write(word value) noexcept {
    __asm__ __volatile__("msr fpcr, %0" : : "r"(value));
  }
#else
#error "bnorm: no floating-point environment control for this architecture"
#endif
 public:
  /// For the span of a call into oneTBB: the thread's own modes again, as they were before
  /// bnorm's outermost scope on it. oneTBB records a thread's modes when it first meets it (an
  /// arena's creation, the thread's first parallel loop) and gives them to the tasks it runs
  /// there later: it must record the caller's, not bnorm's, or the caller's own oneTBB work
  /// would lose its FTZ/DAZ or rounding mode for good. No-op outside any scope.
  class callers_modes {
   public:
    callers_modes() noexcept : modes_(outermost_saved()) {
      if (modes_ != computing) write((read() & ~mode_mask) | modes_);
    }
    ~callers_modes() {
      if (modes_ != computing) write((read() & ~mode_mask) | computing);
    }
    callers_modes(const callers_modes&) = delete;
    callers_modes& operator=(const callers_modes&) = delete;

   private:
    word modes_;
  };

 private:
  /// The modes saved by the outermost scope alive on this thread; `computing` without one.
  static word outermost_saved() noexcept {
    const fp_environment_scope* scope = innermost_;
    if (scope == nullptr) return computing;
    while (scope->outer_ != nullptr) scope = scope->outer_;
    return scope->saved_;
  }

  word saved_;
  const fp_environment_scope* outer_;  // the scope this one is nested in, on this thread
  inline static thread_local const fp_environment_scope* innermost_ = nullptr;
};

}  // namespace bnorm::detail
