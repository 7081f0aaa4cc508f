// The benchmark suite of ../shared/research/measured-peers.md (name N C D H W).
#pragma once

#include <cstdint>
#include <vector>

#include "bnorm/plan.hpp"

namespace bnorm_bench {

struct bench_shape {
  const char* name;
  std::int64_t n, c, d, h, w;
  std::size_t rank;  // 2 for (N,C), 3 for (N,C,L), 4, 5

  bnorm::tensor_shape shape() const {
    switch (rank) {
      case 2: return {n, c};
      case 3: return {n, c, w};
      case 4: return {n, c, h, w};
      default: return {n, c, d, h, w};
    }
  }
  std::int64_t elements() const { return n * c * d * h * w; }
};

inline const std::vector<bench_shape>& suite() {
  static const std::vector<bench_shape> shapes = {
      {"seed_1d_2x4", 2, 4, 1, 1, 1, 2},
      {"bn1d_4096x1024", 4096, 1024, 1, 1, 1, 2},
      {"bn1d_64x128x1024", 64, 128, 1, 1, 1024, 3},
      {"bn1d_smallC_65536x4", 65536, 4, 1, 1, 1, 2},
      {"r50_b1_c64_112", 1, 64, 1, 112, 112, 4},
      {"r50_b1_c256_56", 1, 256, 1, 56, 56, 4},
      {"r50_b1_c1024_14", 1, 1024, 1, 14, 14, 4},
      {"r50_b1_c2048_7", 1, 2048, 1, 7, 7, 4},
      {"r50_b32_c64_56", 32, 64, 1, 56, 56, 4},
      {"r50_b8_c256_56", 8, 256, 1, 56, 56, 4},
      {"bn3d_b2_c32_16x56x56", 2, 32, 16, 56, 56, 5},
  };
  return shapes;
}

}  // namespace bnorm_bench
