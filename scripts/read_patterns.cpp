// How fast one core reads a 25.7 MB float32 tensor ((8,256,56,56): 25,088 rows of 256) in the
// orders bnorm's reduce passes read it, with and without software prefetches: the measure behind
// partition.cpp's read_ahead_bytes (docs/design.md, "Reads ahead (stop 44)"). AVX-512 only.
// Prints the median of 11 passes of each, µs.
//
//   g++ -O2 -march=native scripts/read_patterns.cpp -o /tmp/read_patterns && /tmp/read_patterns
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

constexpr std::size_t rows = 25088, width = 256, elements = rows * width;
float* x;
float* y;
double sums[width];
volatile float sink;

/// A plain pass summing 8 vectors at a time, each line fetched `ahead` bytes on (0: none).
void in_order(std::size_t ahead) {
  __m512 s[8];
  for (auto& v : s) v = _mm512_setzero_ps();
  for (std::size_t i = 0; i < elements; i += 128) {
    for (std::size_t l = 0; ahead != 0 && l < 8; ++l) {
      _mm_prefetch(reinterpret_cast<const char*>(x + i + 16 * l) + ahead, _MM_HINT_T0);
    }
    for (int g = 0; g < 8; ++g) s[g] = _mm512_add_ps(s[g], _mm512_load_ps(x + i + 16 * g));
  }
  sink = _mm512_reduce_add_ps(s[0]);
}

/// The interleaved sums' walk: blocks of 16 rows, 4 vectors of columns at a time over the block's
/// rows, then the next 4; each group fetching the lines of its share of the run `ahead` bytes on
/// (0: none), or the next block's rows at its own columns (`own_columns`).
void column_groups(std::size_t ahead, bool own_columns) {
  for (std::size_t r0 = 0; r0 < rows; r0 += 16) {
    for (std::size_t j = 0; j < width; j += 64) {
      __m512 s[4], q[4];
      for (int g = 0; g < 4; ++g) s[g] = q[g] = _mm512_setzero_ps();
      for (std::size_t r = 0; r < 16; ++r) {
        const float* row = x + (r0 + r) * width + j;
        const float* share = x + r0 * width + j * 16 + r * 64;  // in order
        for (int g = 0; ahead != 0 && g < 4; ++g) {
          const char* line = reinterpret_cast<const char*>(own_columns ? row : share) + 64 * g;
          _mm_prefetch(line + ahead, _MM_HINT_T0);
        }
        for (int g = 0; g < 4; ++g) {
          const __m512 v = _mm512_load_ps(row + 16 * g);
          s[g] = _mm512_add_ps(s[g], v);
          q[g] = _mm512_fmadd_ps(v, v, q[g]);
        }
      }
      for (int g = 0; g < 4; ++g) {
        sums[j + 16 * g] += _mm512_reduce_add_ps(s[g]) + _mm512_reduce_add_ps(q[g]);
      }
    }
  }
}

/// A one-pass schedule that was not built: each strip of 16 channels summed over all the rows,
/// then normalized from the cache (streamed stores), the rows' lines fetched 8 rows on.
void column_strips() {
  for (std::size_t j = 0; j < width; j += 16) {
    __m512 s = _mm512_setzero_ps();
    for (std::size_t r = 0; r < rows; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(x + (r + 8) * width + j), _MM_HINT_T0);
      s = _mm512_add_ps(s, _mm512_load_ps(x + r * width + j));
    }
    const __m512 a = _mm512_set1_ps(1.0f / rows), b = _mm512_mul_ps(s, a);
    for (std::size_t r = 0; r < rows; ++r) {
      _mm512_stream_ps(y + r * width + j, _mm512_fmsub_ps(_mm512_load_ps(x + r * width + j), a, b));
    }
  }
}

/// The two passes the strips would replace: a read pass, then a streamed map pass.
void two_passes() {
  in_order(16384);
  const __m512 a = _mm512_set1_ps(0.5f), b = _mm512_set1_ps(0.25f);
  for (std::size_t i = 0; i < elements; i += 16) {
    _mm512_stream_ps(y + i, _mm512_fmadd_ps(_mm512_load_ps(x + i), a, b));
  }
}

template <class F>
double median_us(F pass) {
  std::vector<double> t;
  for (int k = 0; k < 11; ++k) {
    const auto start = std::chrono::steady_clock::now();
    pass();
    t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                    .count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main() {
  x = static_cast<float*>(std::aligned_alloc(64, elements * sizeof(float)));
  y = static_cast<float*>(std::aligned_alloc(64, elements * sizeof(float)));
  for (std::size_t i = 0; i < elements; ++i) x[i] = y[i] = static_cast<float>(i % 97) * 0.01f;
  for (int round = 0; round < 2; ++round) {
    std::printf("in order: plain %.0f, 4 KiB ahead %.0f, 16 KiB ahead %.0f\n",
                median_us([] { in_order(0); }), median_us([] { in_order(4096); }),
                median_us([] { in_order(16384); }));
    std::printf("column groups: plain %.0f, next block's own columns %.0f, in order 16 KiB %.0f\n",
                median_us([] { column_groups(0, false); }),
                median_us([] { column_groups(16 * width * sizeof(float), true); }),
                median_us([] { column_groups(16384, false); }));
    std::printf("one pass in column strips %.0f, two passes %.0f\n", median_us(column_strips),
                median_us(two_passes));
  }
  std::free(x);
  std::free(y);
  return 0;
}
