// The CPU backend gives the same bits at every thread count, and honours its thread count on whatever
// thread calls it (OpenMP keeps the count per thread; a worker runs jobs on a thread of its own).
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_gemm.h"
#include "tests/unit/numerics.h"

namespace zoetrope {
namespace {

std::vector<float> RandomVector(int64_t count, uint32_t seed) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(count));
  for (float& value : values) value = normal(generator);
  return values;
}

// (m, n, k): k between OpenBLAS's block depth and twice it is where its threaded and single-threaded
// drivers split k differently; m = 1 and small n take the column-tiled path.
class GemmThreadsTest : public ::testing::TestWithParam<std::tuple<int, int, int, bool>> {};

TEST_P(GemmThreadsTest, BitIdenticalAtEveryThreadCountAndCloseToDouble) {
  const auto [m, n, k, transposed] = GetParam();
  const std::vector<float> a = RandomVector(int64_t{m} * k, 1), b = RandomVector(int64_t{n} * k, 2);
  const int64_t ldb = transposed ? k : n;
  std::vector<double> expected(static_cast<size_t>(m) * n, 0.0);
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int l = 0; l < k; ++l) {
        sum += double{a[static_cast<size_t>(i) * k + l]} *
               (transposed ? b[static_cast<size_t>(j) * k + l] : b[static_cast<size_t>(l) * n + j]);
      }
      expected[static_cast<size_t>(i) * n + j] = 0.5 * sum;
    }
  }
  const int saved = omp_get_max_threads();
  std::vector<float> first;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    std::vector<float> c(static_cast<size_t>(m) * n, NAN);
    cpu::Gemm(transposed ? cpu::Transpose::kYes : cpu::Transpose::kNo, m, n, k, 0.5f, a.data(), k, b.data(), ldb,
              c.data(), n);
    EXPECT_LT(test::RelativeL2(expected, c), 1e-6) << threads << " threads";
    if (first.empty()) {
      first = c;
    } else {
      EXPECT_EQ(0, std::memcmp(first.data(), c.data(), c.size() * sizeof(float))) << threads << " threads vs 1";
    }
  }
  omp_set_num_threads(saved);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmThreadsTest,
                         ::testing::Values(std::make_tuple(1, 1536, 1536, true), std::make_tuple(33, 700, 500, true),
                                           std::make_tuple(600, 96, 700, false), std::make_tuple(1030, 520, 400, true),
                                           std::make_tuple(257, 1100, 333, false), std::make_tuple(7, 3, 5, false)));

Tensor RandomTensor(const Shape& shape, uint32_t seed) {
  Tensor tensor = Tensor::Host(shape, DType::kF32);
  const std::vector<float> values = RandomVector(tensor.numel(), seed);
  std::memcpy(tensor.raw_data(), values.data(), tensor.nbytes());
  return tensor;
}

// A backend built on one thread and used on another keeps its count there, and two counts agree bit for bit.
TEST(CpuBackendThreadsTest, HonouredOnTheCallingThreadAndBitIdentical) {
  const Tensor x = RandomTensor({700, 500}, 3), weight = RandomTensor({640, 500}, 4), bias = RandomTensor({640}, 5);
  std::vector<Tensor> outputs;
  for (int threads : {1, 2}) {
    std::unique_ptr<Backend> backend = CreateCpuBackend(threads);
    int observed_threads = 0;
    Tensor y;
    std::thread job([&] {
      y = backend->Linear(x, weight, &bias, Activation::kGeluTanh);
      observed_threads = omp_get_max_threads();
    });
    job.join();
    EXPECT_EQ(observed_threads, threads);
    outputs.push_back(y);
  }
  ASSERT_EQ(outputs[0].nbytes(), outputs[1].nbytes());
  EXPECT_EQ(0, std::memcmp(outputs[0].raw_data(), outputs[1].raw_data(), outputs[0].nbytes()));
}

}  // namespace
}  // namespace zoetrope
