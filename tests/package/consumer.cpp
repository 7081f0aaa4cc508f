// Built against the installed package by the package_consumer test.
#include <bnorm/bnorm.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  auto bn = bnorm::torch::BatchNorm1d(2);
  const std::vector<float> y = bn.forward({1.f, 10.f, 3.f, 30.f}, {2, 2});
  const bool ok = std::fabs(y[0] + 1.f) < 1e-3f && std::fabs(y[3] - 1.f) < 1e-3f;
  std::printf("bnorm %s on %s: %s\n", BNORM_VERSION_STRING, bnorm::to_string(bn.isa()),
              ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
