// What the backward's two passes over channels-last rows of 1,024 float32 slots cost against
// plain passes over the same bytes, without bnorm: the map dx = dy·a + (x − c)·b + e with its
// four coefficient arrays read again at every row (as interleaved_gradient does), with the
// coefficients interleaved into one array, or with x and dy fetched ahead; and the sums Σdy,
// Σdy·x walked as the column walk does (16 rows × 4 vectors, then the next 4), with its fetches,
// or in row order with the partials in the L1. One thread, 16 MiB tensors (4,096 rows), medians
// of 15 rounds of 5 calls, µs a call; AVX-512 (docs/design.md, "The backward over rows from
// memory (stop 53)").
//
//   g++ -std=c++17 -O2 scripts/row_walks.cpp -o /tmp/row_walks && /tmp/row_walks [width]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

std::size_t width = 1024, rows = 4096, n = width * rows;
constexpr std::size_t block_rows = 16;  // reduce.hpp's rows_per_block
float *x, *dy, *dx, *coefficient[4], *interleaved, *sums;
volatile float sink;

// A hint for the line `bytes` past p, its address computed as an integer (it may lie past the
// tensor's end).
inline void fetch(const float* p, std::size_t bytes) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(p) + bytes),
               _MM_HINT_T0);
}

#define AVX512 __attribute__((target("avx512f"), noinline))
#define AVX512_INLINE __attribute__((target("avx512f"), always_inline)) inline

// dx = 1.5·dy − 0.5·x + 0.25 in one streamed pass: the map's roofline.
AVX512 void map_roofline() {
  const __m512 a = _mm512_set1_ps(1.5f), b = _mm512_set1_ps(-0.5f), c = _mm512_set1_ps(0.25f);
  for (std::size_t i = 0; i < n; i += 16) {
    _mm512_stream_ps(dx + i, _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(a, _mm512_loadu_ps(dy + i)),
                                                         _mm512_mul_ps(b, _mm512_loadu_ps(x + i))),
                                           c));
  }
  _mm_sfence();
}

// The coefficient vectors of slots j..j+15: from four arrays (as interleaved_gradient reads
// them), or side by side in one.
struct four_arrays {
  AVX512_INLINE static void load(std::size_t j, __m512& c, __m512& a, __m512& b, __m512& e) {
    c = _mm512_loadu_ps(coefficient[0] + j);
    a = _mm512_loadu_ps(coefficient[1] + j);
    b = _mm512_loadu_ps(coefficient[2] + j);
    e = _mm512_loadu_ps(coefficient[3] + j);
  }
};
struct side_by_side {
  AVX512_INLINE static void load(std::size_t j, __m512& c, __m512& a, __m512& b, __m512& e) {
    const float* k = interleaved + 4 * j;
    c = _mm512_load_ps(k);
    a = _mm512_load_ps(k + 16);
    b = _mm512_load_ps(k + 32);
    e = _mm512_load_ps(k + 48);
  }
};

// A row at a time, x and dy fetched `Ahead` bytes on (0: not at all).
template <class Coefficients, std::size_t Ahead>
AVX512 void map_rows() {
  for (std::size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * width;
    const float* gr = dy + r * width;
    float* out = dx + r * width;
    for (std::size_t j = 0; j < width; j += 16) {
      if (Ahead != 0) {
        fetch(xr + j, Ahead);
        fetch(gr + j, Ahead);
      }
      __m512 c, a, b, e;
      Coefficients::load(j, c, a, b, e);
      const __m512 centered = _mm512_sub_ps(c, _mm512_loadu_ps(xr + j));
      _mm512_stream_ps(
          out + j, _mm512_fmadd_ps(_mm512_loadu_ps(gr + j), a, _mm512_fnmadd_ps(centered, b, e)));
    }
  }
  _mm_sfence();
}

// Σdy and Σdy·x in memory order: the sums' roofline.
AVX512 void sums_roofline() {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, q0 = s0, q1 = s0;
  for (std::size_t i = 0; i < n; i += 32) {
    const __m512 g0 = _mm512_loadu_ps(dy + i), g1 = _mm512_loadu_ps(dy + i + 16);
    s0 = _mm512_add_ps(s0, g0);
    s1 = _mm512_add_ps(s1, g1);
    q0 = _mm512_fmadd_ps(g0, _mm512_loadu_ps(x + i), q0);
    q1 = _mm512_fmadd_ps(g1, _mm512_loadu_ps(x + i + 16), q1);
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(q0, q1)));
  sink = lanes[0] + lanes[15];
}

// The column walk: per block of 16 rows, four vectors of slots down the 16 rows, then the next
// four. Fetch: 0 none; 1 the block's run in memory order, 8 KiB ahead of each source (as
// reduce.hpp's whole rows); 2 the same run one block ahead.
template <int Fetch>
AVX512 void sums_column_walk() {
  for (std::size_t first = 0; first < rows; first += block_rows) {
    const std::size_t block = first * width;
    for (std::size_t j = 0; j + 64 <= width; j += 64) {
      __m512 s[4], q[4];
      for (int g = 0; g < 4; ++g) s[g] = q[g] = _mm512_setzero_ps();
      for (std::size_t r = 0; r < block_rows; ++r) {
        const std::size_t row = block + r * width + j;
        if (Fetch != 0) {
          const std::size_t at = block + j * block_rows + r * 64;
          const std::size_t ahead = Fetch == 1 ? 8192 : block_rows * width * sizeof(float);
          for (int e = 0; e < 64; e += 16) {
            fetch(x + at + e, ahead);
            fetch(dy + at + e, ahead);
          }
        }
        for (int g = 0; g < 4; ++g) {
          const __m512 gv = _mm512_loadu_ps(dy + row + 16 * g);
          s[g] = _mm512_add_ps(s[g], gv);
          q[g] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(x + row + 16 * g), q[g]);
        }
      }
      for (int g = 0; g < 4; ++g) {
        float* at = sums + j + 16 * g;
        _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), s[g]));
        _mm512_storeu_ps(at + width, _mm512_add_ps(_mm512_loadu_ps(at + width), q[g]));
      }
    }
  }
}

// Row order: every row into the sums in the L1.
AVX512 void sums_row_order() {
  for (std::size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * width;
    const float* gr = dy + r * width;
    for (std::size_t j = 0; j < width; j += 16) {
      const __m512 gv = _mm512_loadu_ps(gr + j);
      _mm512_storeu_ps(sums + j, _mm512_add_ps(_mm512_loadu_ps(sums + j), gv));
      _mm512_storeu_ps(sums + width + j, _mm512_fmadd_ps(gv, _mm512_loadu_ps(xr + j),
                                                         _mm512_loadu_ps(sums + width + j)));
    }
  }
}

float* filled(std::size_t count) {
  auto* p = static_cast<float*>(std::aligned_alloc(64, (count * sizeof(float) + 63) / 64 * 64));
  for (std::size_t i = 0; i < count; ++i) p[i] = static_cast<float>(i % 97) * 0.01f;
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  if (!__builtin_cpu_supports("avx512f")) {
    std::puts("needs AVX-512");
    return 0;
  }
  if (argc > 1) width = std::strtoul(argv[1], nullptr, 10) / 64 * 64;
  if (width == 0) width = 64;
  rows = 4096 * 1024 / width / block_rows * block_rows;  // whole blocks of 16 rows
  n = width * rows;
  x = filled(n);
  dy = filled(n);
  dx = filled(n);
  for (float*& c : coefficient) c = filled(width);
  interleaved = filled(4 * width);
  sums = filled(2 * width);
  struct variant {
    const char* name;
    void (*run)();
  };
  const variant variants[] = {{"map roofline", map_roofline},
                              {"map, four arrays", map_rows<four_arrays, 0>},
                              {"map, four arrays, 4 KiB ahead", map_rows<four_arrays, 4096>},
                              {"map, four arrays, 16 KiB ahead", map_rows<four_arrays, 16384>},
                              {"map, side by side", map_rows<side_by_side, 0>},
                              {"sums roofline", sums_roofline},
                              {"sums, column walk", sums_column_walk<0>},
                              {"sums, column walk, 8 KiB ahead", sums_column_walk<1>},
                              {"sums, column walk, a block ahead", sums_column_walk<2>},
                              {"sums, row order", sums_row_order}};
  constexpr std::size_t count = sizeof(variants) / sizeof(variants[0]);
  std::vector<double> us[count];
  for (int round = 0; round < 15; ++round) {
    for (std::size_t v = 0; v < count; ++v) {
      const auto start = std::chrono::steady_clock::now();
      for (int call = 0; call < 5; ++call) variants[v].run();
      const std::chrono::duration<double, std::micro> took =
          std::chrono::steady_clock::now() - start;
      us[v].push_back(took.count() / 5);
    }
  }
  std::printf("%zu rows of %zu float32 slots\n", rows, width);
  for (std::size_t v = 0; v < count; ++v) {
    std::sort(us[v].begin(), us[v].end());
    std::printf("%-34s %8.1f us\n", variants[v].name, us[v][us[v].size() / 2]);
  }
  return 0;
}
