// Hashes of every output of training and the training backward (y, batch and running
// statistics, dx, dγ, dβ) over shapes, layouts and storage types: a change that claims "the
// same bits" is checked by building this against the library before and after it, on every ISA.
//
//   g++ -std=c++17 -O2 -Iinclude -Ibuild/release/include scripts/output_hash.cpp
//       build/release/libbnorm.a -ltbb -lpthread -o /tmp/output_hash     (one line)
//   for isa in sse2 avx2 avx512f avx512bf16; do BNORM_MAX_ISA=$isa /tmp/output_hash | tail -1; done
#include <bnorm/bnorm.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

std::uint64_t fnv1a(const void* data, std::size_t bytes, std::uint64_t h) {
  const auto* b = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

/// float to the storage type's bytes (bf16: truncated; the values only need to be fixed).
void store(float v, bnorm::dtype d, unsigned char* out) {
  if (d == bnorm::dtype::f32) {
    std::memcpy(out, &v, 4);
    return;
  }
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  const auto top = static_cast<std::uint16_t>(u >> 16);
  std::memcpy(out, &top, 2);
}

}  // namespace

int main() {
  const std::vector<std::vector<std::int64_t>> shapes = {
      {4096, 1024},     {65536, 4}, {1, 2048, 7, 7},   {3, 37, 11, 13}, {64, 128, 33},
      {2, 256, 20, 20}, {5, 7},     {1, 1024, 14, 14}, {2, 1003, 300}};
  std::uint64_t total = 1469598103934665603ull;
  for (const auto& dims : shapes) {
    for (auto l : {bnorm::layout::channels_first, bnorm::layout::channels_last}) {
      for (auto d : {bnorm::dtype::f32, bnorm::dtype::bf16}) {
        const bnorm::problem prob{bnorm::tensor_shape(dims.data(), dims.size()), l, d, 1e-5};
        bnorm::plan plan;
        if (bnorm::status s = bnorm::make_plan(prob, {}, &plan); !s) {
          std::fprintf(stderr, "%s\n", s.message());
          return 1;
        }
        std::size_t n = 1;
        for (std::int64_t v : dims) n *= static_cast<std::size_t>(v);
        const std::size_t c = static_cast<std::size_t>(dims[1]);
        const std::size_t size = d == bnorm::dtype::f32 ? 4 : 2;
        std::mt19937 gen(42);
        std::normal_distribution<float> normal(3.f, 2.f);
        std::vector<unsigned char> x(n * size), y(n * size), dy(n * size), dx(n * size);
        for (std::size_t i = 0; i < n; ++i) {
          store(normal(gen) + 1000.f, d, &x[i * size]);
          store(normal(gen), d, &dy[i * size]);
        }
        std::vector<float> gamma(c, 1.5f), beta(c, 0.25f), running_mean(c, 0.f),
            running_var(c, 1.f), mean(c), inv_std(c), dgamma(c), dbeta(c);
        bnorm::training_args t;
        t.src = x.data();
        t.dst = y.data();
        t.scale = {gamma.data(), c};
        t.shift = {beta.data(), c};
        t.batch_mean = {mean.data(), c};
        t.batch_inv_std = {inv_std.data(), c};
        t.running_mean = {running_mean.data(), c};
        t.running_var = {running_var.data(), c};
        bnorm::backward_args b;
        b.src = x.data();
        b.diff_dst = dy.data();
        b.diff_src = dx.data();
        b.scale = t.scale;
        b.mean = {mean.data(), c};
        b.inv_std = {inv_std.data(), c};
        b.diff_scale = {dgamma.data(), c};
        b.diff_shift = {dbeta.data(), c};
        for (bnorm::status s : {plan.forward_training(t), plan.backward_training(b)}) {
          if (!s) {
            std::fprintf(stderr, "%s\n", s.message());
            return 1;
          }
        }
        std::uint64_t h = 1469598103934665603ull;
        h = fnv1a(y.data(), y.size(), h);
        h = fnv1a(dx.data(), dx.size(), h);
        for (const std::vector<float>* v :
             {&mean, &inv_std, &running_mean, &running_var, &dgamma, &dbeta}) {
          h = fnv1a(v->data(), v->size() * sizeof(float), h);
        }
        std::printf("%016llx  %s\n", static_cast<unsigned long long>(h), plan.describe());
        total = fnv1a(&h, sizeof h, total);
      }
    }
  }
  std::printf("%016llx  all\n", static_cast<unsigned long long>(total));
}
