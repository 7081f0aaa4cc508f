// Two cores writing parts of the same 4 KiB pages, row after row: the measurement behind the
// planner's min_fused_block_row_bytes. Two threads compute y = 1.5·x + 0.25 over a rows × width
// float matrix, each always the same half of it: the left and right halves of every row
// ("columns"), or the first and last halves of the rows ("rows"); then one thread all of it.
// One layout a process (switching would move the lines between the cores); medians of 2,000
// calls.
//
//   g++ -std=c++17 -O3 -march=native scripts/page_sharing.cpp -lpthread -o /tmp/page_sharing
//   for layout in 0 1 2; do /tmp/page_sharing 196 512 $layout; done
#include <algorithm>
#include <atomic>
#include <chrono>
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
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s ROWS WIDTH LAYOUT(0 columns, 1 rows, 2 one thread)\n", argv[0]);
    return 2;
  }
  const std::size_t rows = std::atoi(argv[1]), width = std::atoi(argv[2]);
  const int layout = std::atoi(argv[3]);
  std::vector<float> x(rows * width), y(rows * width);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7);
  const auto half = [&](int which) {
    if (layout == 0) {
      affine(x.data(), y.data(), width, which * width / 2, (which + 1) * width / 2, 0, rows);
    } else {
      affine(x.data(), y.data(), width, 0, width, which * rows / 2, (which + 1) * rows / 2);
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
      affine(x.data(), y.data(), width, 0, width, 0, rows);
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
