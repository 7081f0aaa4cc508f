// A downstream engine's SyncBatchNorm step over MPI, built against the installed package.
#include <bnorm/mpi.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  auto bn = bnorm::mpi::SyncBatchNorm(4);
  const std::vector<float> y = bn.forward(std::vector<float>(2 * 4 * 3, 1.0f), {2, 4, 3});
  std::printf("consumer_mpi: %zu outputs, running_var[0] = %g\n", y.size(), bn.running_var()[0]);
  MPI_Finalize();
  return y.size() == 24 ? 0 : 1;
}
