// The memory roofline of a case: plain streaming passes over the same bytes with the same
// threads, measured in the same process as the case. Inference: y = a·x + b. Training: a
// read-only sum over x, then y = a·x + b. Backward: a read-only sum over x and dy, then
// dx = a·dy + b·x + c (its one-pass bound: the second pass alone). Frozen backward: dx = a·dy.
// The output passes write through the cache or around it (non-temporal stores); which is faster
// depends on the machine and the size, and bnorm's planner chooses either: the case's roofline
// is the faster of the two (bench_bnorm.cpp, `faster_stores`).
#pragma once

#include <cstddef>

namespace bnorm_bench {

enum class stores { cached, streamed };

/// Runs on `threads` threads (a oneTBB arena of that size; 1 = the calling thread).
void stream_affine(const float* x, float* y, std::size_t n, int threads,
                   stores kind = stores::cached);
double stream_sum(const float* x, std::size_t n, int threads);
double stream_sum2(const float* x, const float* dy, std::size_t n, int threads);
void stream_combine(const float* x, const float* dy, float* dx, std::size_t n, int threads,
                    stores kind = stores::cached);
/// The separate activation pass an engine runs without fusion: y = max(y, 0), or
/// y = max(y + z, 0), in place.
void stream_relu(float* y, std::size_t n, int threads);
void stream_add_relu(float* y, const float* z, std::size_t n, int threads);

}  // namespace bnorm_bench
