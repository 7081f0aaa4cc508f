// Two cores writing parts of the same 4 KiB pages, row after row: the measurement behind the
// planner's min_fused_block_row_bytes. Two threads compute y = 1.5·x + 0.25 over a rows × width
// float matrix, each always the same half of it: the left and right halves of every row
// ("columns"), or the first and last halves of the rows ("rows"); then one thread all of it.
// One layout a process (switching would move the lines between the cores); medians of 2,000
// calls. The matrices start where std::vector puts them, or with `page` on a 4 KiB boundary.
//
//   g++ -std=c++17 -O3 -march=native scripts/page_sharing.cpp -lpthread -o /tmp/page_sharing
//   for layout in 0 1 2; do /tmp/page_sharing 196 512 $layout; done    (then with `page`)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void affine(const float* x, float* y, std::size_t stride, std::size_t c0, std::size_t c1,
            std::size_t r0, std::size_t r1) {
  for (std::size_t r = r0; r < r1; ++r) {
    for (std::size_t c = c0; c < c1; ++c) y[r * stride + c] = 1.5f * x[r * stride + c] + 0.25f;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: %s ROWS WIDTH LAYOUT(0 columns, 1 rows, 2 one thread) [page]\n",
                 argv[0]);
    return 2;
  }
  const std::size_t rows = std::atoi(argv[1]), width = std::atoi(argv[2]);
  const int layout = std::atoi(argv[3]);
  const bool page = argc == 5;
  constexpr std::size_t page_floats = 4096 / sizeof(float);
  std::vector<float> x_storage(rows * width + page_floats), y_storage(x_storage.size());
  const auto start_of = [&](std::vector<float>& v) {
    const std::size_t past = reinterpret_cast<std::uintptr_t>(v.data()) % 4096 / sizeof(float);
    return v.data() + (page && past != 0 ? page_floats - past : 0);
  };
  float* const x = start_of(x_storage);
  float* const y = start_of(y_storage);
  for (std::size_t i = 0; i < rows * width; ++i) x[i] = static_cast<float>(i % 7);
  const auto half = [&](int which) {
    if (layout == 0) {
      affine(x, y, width, which * width / 2, (which + 1) * width / 2, 0, rows);
    } else {
      affine(x, y, width, 0, width, which * rows / 2, (which + 1) * rows / 2);
    }
  };
  std::atomic<int> go{0}, done{0};
  std::atomic<bool> quit{false};
  std::thread worker([&] {
    for (int seen = 0;;) {
      while (go.load() == seen) {
        if (quit.load()) return;
      }
      seen = go.load();
      half(1);
      done.fetch_add(1);
    }
  });
  std::vector<double> took;
  for (int call = 0; call < 2000; ++call) {
    const double start = now();
    if (layout == 2) {
      affine(x, y, width, 0, width, 0, rows);
    } else {
      const int finished = done.load();
      go.fetch_add(1);
      half(0);
      while (done.load() == finished) {
      }
    }
    took.push_back(now() - start);
  }
  quit.store(true);
  go.fetch_add(1);
  worker.join();
  std::sort(took.begin(), took.end());
  const char* names[] = {"column halves", "row halves", "one thread"};
  std::printf("%zu rows × %zu floats, %s: %.2f µs a call\n", rows, width, names[layout],
              took[took.size() / 2] * 1e6);
  return 0;
}
