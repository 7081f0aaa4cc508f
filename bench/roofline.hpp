// The memory roofline of a case: plain streaming passes over the same bytes with the same
// threads, measured in the same process as the case. Inference: y = a·x + b. Training: a
// read-only sum over x, then y = a·x + b. Backward: a read-only sum over x and dy, then
// dx = a·dy + b·x + c (its one-pass bound: the second pass alone). Frozen backward: dx = a·dy.
#pragma once

#include <cstddef>

namespace bnorm_bench {

/// Runs on `threads` threads (a oneTBB arena of that size; 1 = the calling thread).
void stream_affine(const float* x, float* y, std::size_t n, int threads);
double stream_sum(const float* x, std::size_t n, int threads);
double stream_sum2(const float* x, const float* dy, std::size_t n, int threads);
void stream_combine(const float* x, const float* dy, float* dx, std::size_t n, int threads);
/// The separate activation pass an engine runs without fusion: y = max(y, 0), or
/// y = max(y + z, 0), in place.
void stream_relu(float* y, std::size_t n, int threads);
void stream_add_relu(float* y, const float* z, std::size_t n, int threads);

}  // namespace bnorm_bench
