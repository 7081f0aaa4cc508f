// The round trip of a cache line between two CPUs: one thread on each, pinned, passing a counter
// back and forth 200,000 times. What a parallel pass pays each time one core reads what the
// other wrote in the same call (a task handed over, coefficients, partial sums); hundreds of
// nanoseconds between the CPUs of the Zen 5 guest (docs/design.md, "The Zen 5 guest").
//
//   g++ -std=c++17 -O2 scripts/core_to_core.cpp -lpthread -o /tmp/core_to_core
//   /tmp/core_to_core [CPU_A CPU_B]      (default 0 1)
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace {

void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

}  // namespace

int main(int argc, char** argv) {
  const int a = argc > 2 ? std::atoi(argv[1]) : 0, b = argc > 2 ? std::atoi(argv[2]) : 1;
  constexpr int trips = 200000;
  std::atomic<int> counter{0};
  std::thread other([&] {
    pin(b);
    for (int i = 0; i < trips; ++i) {
      while (counter.load(std::memory_order_acquire) != 2 * i + 1) {
      }
      counter.store(2 * i + 2, std::memory_order_release);
    }
  });
  pin(a);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < trips; ++i) {
    counter.store(2 * i + 1, std::memory_order_release);
    while (counter.load(std::memory_order_acquire) != 2 * i + 2) {
    }
  }
  const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
  other.join();
  std::printf("CPUs %d and %d: %.0f ns a round trip\n", a, b, took.count() / trips);
  return 0;
}
