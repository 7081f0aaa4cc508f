// ISA detection and selection. This unit is compiled with baseline flags only.
#include "cpu_isa.hpp"

#include <cstdlib>
#include <cstring>

#include <xsimd/config/xsimd_cpuid.hpp>

#include "validation.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace bnorm {

const char* to_string(isa value) noexcept {
  switch (value) {
    case isa::sse2: return "sse2";
    case isa::avx2: return "avx2";
    case isa::avx512f: return "avx512f";
    case isa::neon64: return "neon64";
    case isa::avx512bf16: return "avx512bf16";
  }
  return "unknown";
}

std::optional<isa> parse_isa(const char* name) noexcept {
  if (name == nullptr) return std::nullopt;
  for (isa candidate : {isa::sse2, isa::avx2, isa::avx512f, isa::avx512bf16, isa::neon64}) {
    if (std::strcmp(name, to_string(candidate)) == 0) return candidate;
  }
  return std::nullopt;
}

namespace {

#if defined(__x86_64__) || defined(_M_X64)
/// F16C (CPUID leaf 1, ECX bit 29): float16 conversions in AVX registers, whose state the
/// AVX2 check already requires the OS to save.
bool has_f16c() noexcept {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
}
#endif

// Dispatch order, best first, of the ISAs this build compiles.
#if defined(__x86_64__) || defined(_M_X64)
constexpr isa compiled_isas[] = {isa::avx512bf16, isa::avx512f, isa::avx2, isa::sse2};
#elif defined(__aarch64__)
constexpr isa compiled_isas[] = {isa::neon64};
#else
#error "bnorm: no kernels for this architecture"
#endif

// The rank of an ISA within the compiled family; -1 when it is not compiled here.
int rank_of(isa value) noexcept {
  constexpr int count = sizeof(compiled_isas) / sizeof(compiled_isas[0]);
  for (int i = 0; i < count; ++i) {
    if (compiled_isas[i] == value) return count - i;
  }
  return -1;
}

}  // namespace

std::vector<isa> available_isas() {
  std::vector<isa> result;
  for (auto it = std::rbegin(compiled_isas); it != std::rend(compiled_isas); ++it) {
    if (detail::cpu_supports(*it)) result.push_back(*it);
  }
  return result;
}

namespace detail {

const kernels::kernel_table& table_for(isa value) noexcept {
  switch (value) {
#if defined(__x86_64__) || defined(_M_X64)
    case isa::avx512bf16: return kernels::avx512bf16_kernels();
    case isa::avx512f: return kernels::avx512f_kernels();
    case isa::avx2: return kernels::avx2_kernels();
    default: return kernels::sse2_kernels();
#else
    default: return kernels::neon64_kernels();
#endif
  }
}

bool cpu_supports(isa value) noexcept {
  if (rank_of(value) < 0) return false;
#if defined(__x86_64__) || defined(_M_X64)
  // xsimd 8.1.0 reads CPUID only and never checks that the OS saves the YMM/ZMM state (XCR0;
  // fixed in xsimd 13.1.0). GCC's __builtin_cpu_supports does check it, so require both.
  const auto cpu = xsimd::available_architectures();
  switch (value) {
    case isa::sse2: return true;
    case isa::avx2:  // its kernels convert float16 with F16C
      return cpu.fma3_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             has_f16c();
    // AVX512VL: the AVX-512 units' 256-bit kernels (half_width_arch) use all 32 registers.
    case isa::avx512f:
      return cpu.avx512f && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512vl") && has_f16c();
    case isa::avx512bf16:
      return cpu.avx512f && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512vl") && has_f16c() &&
             __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bf16");
    default: return false;
  }
#else
  return value == isa::neon64;
#endif
}

bool isa_capped(std::optional<isa> cap) noexcept {
  const char* env = std::getenv("BNORM_MAX_ISA");
  return cap.has_value() || (env != nullptr && *env != '\0');
}

const kernels::kernel_table& kernels_for(const problem& prob, const kernels::kernel_table& best,
                                         std::size_t short_plane) noexcept {
#if defined(__x86_64__) || defined(_M_X64)
  if ((best.id == isa::avx512f || best.id == isa::avx512bf16) && cpu_supports(isa::avx2)) {
    const std::size_t channels = static_cast<std::size_t>(prob.shape[1]);
    std::size_t spatial = 1;
    for (std::size_t d = 2; d < prob.shape.rank(); ++d) {
      spatial *= static_cast<std::size_t>(prob.shape[d]);
    }
    const std::size_t elements = static_cast<std::size_t>(prob.shape[0]) * channels * spatial;
    if (elements <= tiny_tensor_elements && channels < best.f64_lanes) return table_for(isa::avx2);
    // One image's planes short enough for channel groups run those on AVX-512 (docs/design.md).
    const bool grouped = kernels::in_channel_groups(
        best.f32_channel_groups, static_cast<std::size_t>(prob.shape[0]), spatial, best.f32_lanes);
    if (prob.dtype == dtype::f32 && prob.layout == layout::channels_first && spatial > 1 &&
        spatial < short_plane && !grouped) {
      return table_for(isa::avx2);
    }
  }
#else
  (void)prob;
  (void)short_plane;
#endif
  return best;
}

status select_kernels(std::optional<isa> cap, const kernels::kernel_table** out) noexcept {
  int limit = cap ? rank_of(*cap) : 1 << 20;
  if (cap && !parse_isa(to_string(*cap))) {  // not one of the named ISAs at all
    return status::failure(status_code::invalid_argument,
                           "max_isa: expected sse2, avx2, avx512f, avx512bf16 or neon64, got %s",
                           detail::enum_text(*cap).text);
  }
  if (cap && limit < 0) {
    return status::failure(status_code::unsupported,
                           "max_isa: expected an ISA of this build's architecture, got %s",
                           to_string(*cap));
  }
  if (const char* env = std::getenv("BNORM_MAX_ISA"); env != nullptr && *env != '\0') {
    const std::optional<isa> env_cap = parse_isa(env);
    if (!env_cap) {
      return status::failure(
          status_code::invalid_argument,
          "BNORM_MAX_ISA: expected sse2, avx2, avx512f, avx512bf16 or neon64, got "
          "'%.64s'",
          env);
    }
    const int env_limit = rank_of(*env_cap);
    if (env_limit < 0) {
      return status::failure(status_code::unsupported,
                             "BNORM_MAX_ISA: expected an ISA of this build's architecture, got %s",
                             env);
    }
    if (env_limit < limit) limit = env_limit;
  }
  for (isa candidate : compiled_isas) {
    if (rank_of(candidate) <= limit && cpu_supports(candidate)) {
      *out = &table_for(candidate);
      return {};
    }
  }
  return status::failure(status_code::unsupported, "max_isa: no ISA at or below the cap runs here");
}

}  // namespace detail
}  // namespace bnorm
