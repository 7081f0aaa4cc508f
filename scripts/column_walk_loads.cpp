// The backward's sums Σdy and Σdy·(x − k) over whole channels-last rows in the cache, without
// bnorm: the column walk (reduce.hpp's interleaved_sums: a block of 16 rows, four vectors of
// slots down them, the partials in registers, then widened into float64 sums) as GCC compiles
// it, with dy's load folded into both the addition and the FMA (12 loads a row of four vectors),
// and with dy held in a register (8 loads); the same sums in row order with the partials in the
// L1 (row_order_sums); and a plain read of x and dy. One thread, AVX-512, medians of 31 rounds,
// ns a call (docs/design.md, "Tried and not kept (stop 66)").
//
//   g++ -std=c++17 -O3 scripts/column_walk_loads.cpp -o /tmp/column_walk_loads
//   /tmp/column_walk_loads WIDTH ROWS     (WIDTH a multiple of 64, ROWS of 16; e.g. 256 16)
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

#define AVX512 __attribute__((target("avx512f,fma"), noinline))

std::size_t width, rows;
float *x, *dy, *k;
double *sum, *sum_q;
alignas(64) float s_part[4096], q_part[4096];

// A float32 vector's sums added to the float64 sums at `at`.
AVX512 void flush(double* at, __m512 partial) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(partial));
  const __m512d hi =
      _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(partial), 1)));
  _mm512_storeu_pd(at, _mm512_add_pd(_mm512_loadu_pd(at), lo));
  _mm512_storeu_pd(at + 8, _mm512_add_pd(_mm512_loadu_pd(at + 8), hi));
}

template <bool InRegister>
AVX512 void column_walk() {
  for (std::size_t first = 0; first < rows; first += 16) {
    for (std::size_t j = 0; j + 64 <= width; j += 64) {
      __m512 s[4], q[4], centers[4];
      for (int g = 0; g < 4; ++g) {
        s[g] = q[g] = _mm512_setzero_ps();
        centers[g] = _mm512_loadu_ps(k + j + 16 * g);
      }
      for (std::size_t r = 0; r < 16; ++r) {
        const std::size_t row = (first + r) * width + j;
        for (int g = 0; g < 4; ++g) {
          __m512 g_v = _mm512_loadu_ps(dy + row + 16 * g);
          if (InRegister) asm("" : "+v"(g_v));  // no memory operand to fold twice
          s[g] = _mm512_add_ps(s[g], g_v);
          q[g] = _mm512_fnmadd_ps(g_v, _mm512_sub_ps(centers[g], _mm512_loadu_ps(x + row + 16 * g)),
                                  q[g]);
        }
      }
      for (int g = 0; g < 4; ++g) {
        flush(sum + j + 16 * g, s[g]);
        flush(sum_q + j + 16 * g, q[g]);
      }
    }
  }
}

AVX512 void row_order() {
  for (std::size_t first = 0; first < rows; first += 16) {
    for (std::size_t r = 0; r < 16; ++r) {
      const std::size_t row = (first + r) * width;
      for (std::size_t j = 0; j < width; j += 16) {
        __m512 g_v = _mm512_loadu_ps(dy + row + j);
        asm("" : "+v"(g_v));
        const __m512 s = r ? _mm512_load_ps(s_part + j) : _mm512_setzero_ps();
        const __m512 q = r ? _mm512_load_ps(q_part + j) : _mm512_setzero_ps();
        _mm512_store_ps(s_part + j, _mm512_add_ps(s, g_v));
        _mm512_store_ps(
            q_part + j,
            _mm512_fnmadd_ps(
                g_v, _mm512_sub_ps(_mm512_loadu_ps(k + j), _mm512_loadu_ps(x + row + j)), q));
      }
    }
    for (std::size_t j = 0; j < width; j += 16) {
      flush(sum + j, _mm512_load_ps(s_part + j));
      flush(sum_q + j, _mm512_load_ps(q_part + j));
    }
  }
}

AVX512 void plain_read() {
  __m512 a = _mm512_setzero_ps(), b = a, c = a, d = a;
  for (std::size_t i = 0; i < width * rows; i += 32) {
    a = _mm512_add_ps(a, _mm512_load_ps(dy + i));
    b = _mm512_add_ps(b, _mm512_load_ps(x + i));
    c = _mm512_add_ps(c, _mm512_load_ps(dy + i + 16));
    d = _mm512_add_ps(d, _mm512_load_ps(x + i + 16));
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
  sum[0] += lanes[0];
}

float* filled(std::size_t count) {
  auto* p = static_cast<float*>(std::aligned_alloc(64, (count * sizeof(float) + 63) / 64 * 64));
  for (std::size_t i = 0; i < count; ++i) p[i] = static_cast<float>(i % 97) * 0.01f;
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  if (!__builtin_cpu_supports("avx512f") || argc < 3) {
    std::puts("usage (AVX-512): column_walk_loads WIDTH ROWS");
    return 0;
  }
  width = std::max<std::size_t>(64, std::strtoul(argv[1], nullptr, 10) / 64 * 64);
  width = std::min<std::size_t>(width, 4096);
  rows = std::max<std::size_t>(16, std::strtoul(argv[2], nullptr, 10) / 16 * 16);
  x = filled(width * rows);
  dy = filled(width * rows);
  k = filled(width);
  sum = static_cast<double*>(std::aligned_alloc(64, width * sizeof(double)));
  sum_q = static_cast<double*>(std::aligned_alloc(64, width * sizeof(double)));
  std::fill(sum, sum + width, 0.0);
  std::fill(sum_q, sum_q + width, 0.0);
  void (*const variants[])() = {column_walk<false>, column_walk<true>, row_order, plain_read};
  const char* names[] = {"column walk, dy folded twice", "column walk, dy in a register",
                         "row order", "plain read of x and dy"};
  std::vector<double> ns[4];
  const int calls = static_cast<int>(std::max<std::size_t>(1, 20000000 / (width * rows)));
  for (int round = 0; round < 31; ++round) {
    for (int v = 0; v < 4; ++v) {
      const auto start = std::chrono::steady_clock::now();
      for (int call = 0; call < calls; ++call) variants[v]();
      const std::chrono::duration<double, std::nano> took =
          std::chrono::steady_clock::now() - start;
      ns[v].push_back(took.count() / calls);
    }
  }
  std::printf("%zu rows of %zu float32 slots\n", rows, width);
  for (int v = 0; v < 4; ++v) {
    std::sort(ns[v].begin(), ns[v].end());
    std::printf("%-32s %10.0f ns\n", names[v], ns[v][15]);
  }
}
