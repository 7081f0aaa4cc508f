// The arithmetic of channel_moments over 2,048 channels in AVX2 vectors of four doubles:
// quotients by the count against products by its reciprocal, in alternating batches in one
// process (docs/design.md, "Measurements behind the choices"). Prints the median ns a channel.
//
//   g++ -O2 -mavx2 -mfma scripts/moments_divider.cpp -o /tmp/moments_divider &&
//   /tmp/moments_divider
#include <immintrin.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>
constexpr int C = 2048;
alignas(64) double s_[C], q_[C], mean_[C], var_[C], inv_[C];
template <bool Divide>
__attribute__((noinline)) void moments(double count) {
  const __m256d n = _mm256_set1_pd(Divide ? count : 1.0 / count), e = _mm256_set1_pd(1e-5),
                one = _mm256_set1_pd(1.0);
  for (int c = 0; c < C; c += 4) {
    __m256d s = _mm256_load_pd(s_ + c), q = _mm256_load_pd(q_ + c);
    __m256d off = Divide ? _mm256_div_pd(s, n) : _mm256_mul_pd(s, n);
    __m256d v = _mm256_sub_pd(q, _mm256_mul_pd(s, off));
    v = Divide ? _mm256_div_pd(v, n) : _mm256_mul_pd(v, n);
    _mm256_store_pd(mean_ + c, off);
    _mm256_store_pd(var_ + c, v);
    _mm256_store_pd(inv_ + c, _mm256_div_pd(one, _mm256_sqrt_pd(_mm256_add_pd(v, e))));
  }
}
int main() {
  for (int c = 0; c < C; ++c) {
    s_[c] = c * 0.001;
    q_[c] = 49.0 + c;
  }
  std::vector<double> t[2];
  for (int r = 0; r < 2000; ++r) {
    for (int k = 0; k < 2; ++k) {
      auto a = std::chrono::steady_clock::now();
      for (int i = 0; i < 20; ++i) k ? moments<false>(49.0) : moments<true>(49.0);
      t[k].push_back(
          std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - a).count() /
          (20.0 * C));
    }
  }
  for (int k = 0; k < 2; ++k) {
    std::sort(t[k].begin(), t[k].end());
    std::printf("%s: %.2f ns a channel (median)\n", k ? "products" : "quotients",
                t[k][t[k].size() / 2]);
  }
}
