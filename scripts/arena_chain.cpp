// Two chained passes on two threads, as a layer and the next: the first reads x and writes y in
// halves, the second reads y and writes z in the same halves. Run in one oneTBB arena, or each
// pass in an arena of its own (as two plans each capped by plan_options::max_threads made
// before stop 52), and with y's stores cached or non-temporal. Prints the median µs of a pair
// of passes and how often each half ran on the same CPU in both passes.
//
//   g++ -std=c++17 -O2 -march=native scripts/arena_chain.cpp -ltbb -o /tmp/arena_chain
//   /tmp/arena_chain [FLOATS]        (default 200,704: 784 KiB, (1,1024,14,14) float32)
#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>

namespace {

struct aligned_floats {
  explicit aligned_floats(std::size_t n)
      : data(static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64))) {}
  ~aligned_floats() { std::free(data); }
  float* data;
};

/// dst = src·a + b over the half [begin, end) of n floats (whole 8-float vectors).
void map_half(const float* src, float* dst, std::size_t begin, std::size_t end, bool stream) {
  const __m256 a = _mm256_set1_ps(1.5f), b = _mm256_set1_ps(0.25f);
  for (std::size_t i = begin; i < end; i += 8) {
    const __m256 v = _mm256_fmadd_ps(_mm256_load_ps(src + i), a, b);
    if (stream) {
      _mm256_stream_ps(dst + i, v);
    } else {
      _mm256_store_ps(dst + i, v);
    }
  }
  if (stream) _mm_sfence();
}

void run(std::size_t n, bool two_arenas, bool stream_y) {
  aligned_floats x(n), y(n), z(n);
  for (std::size_t i = 0; i < n; ++i) x.data[i] = static_cast<float>(i % 7);
  tbb::task_arena first(2), second(2);
  std::vector<double> us;
  long same = 0, pairs = 0;
  const auto halves = [&](const float* src, float* dst, bool stream, int* cpu) {
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, 2, 1),
                      [&](const tbb::blocked_range<std::size_t>& r) {
                        cpu[r.begin()] = sched_getcpu();
                        map_half(src, dst, r.begin() * n / 2, r.end() * n / 2, stream);
                      });
  };
  first.execute([&] {
    for (int round = 0; round < 300; ++round) {
      constexpr int calls = 20;
      const auto start = std::chrono::steady_clock::now();
      for (int k = 0; k < calls; ++k) {
        int cpu_first[2], cpu_second[2];
        halves(x.data, y.data, stream_y, cpu_first);
        const auto next = [&] { halves(y.data, z.data, false, cpu_second); };
        if (two_arenas) {
          second.execute(next);
        } else {
          next();
        }
        same += (cpu_first[0] == cpu_second[0]) + (cpu_first[1] == cpu_second[1]);
        pairs += 2;
      }
      const std::chrono::duration<double, std::micro> took =
          std::chrono::steady_clock::now() - start;
      us.push_back(took.count() / calls);
    }
  });
  std::sort(us.begin(), us.end());
  std::printf("%-10s y %-9s %8.1f us a pair; a half on the same CPU in both passes %ld of %ld\n",
              two_arenas ? "two arenas" : "one arena", stream_y ? "streamed" : "cached",
              us[us.size() / 2], same, pairs);
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t n = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 200704) / 16 * 16;
  for (bool two_arenas : {false, true}) {
    for (bool stream_y : {false, true}) run(n, two_arenas, stream_y);
  }
}
