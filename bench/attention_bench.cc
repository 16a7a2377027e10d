// zoetrope-attention-bench: times Zoetrope's attention kernel (kernels/cuda/attention_kernel.cuh) on one
// shape and optionally writes its output, so bench/attention_baseline.py can check it against PyTorch's
// SDPA on the same inputs and time the PyTorch kernels in the same run.
//
//   zoetrope-attention-bench --heads 12 --queries 32760 --keys 32760 --dim 128
//       [--inputs DIR (q.bin k.bin v.bin: bf16 [L, H, d])] [--output FILE] [--density 0.3] [--kernel mma]
// Prints one JSON object: shape, median/min milliseconds over --iterations timed launches (CUDA events
// around each launch, after --warmup launches), and TFLOP/s = 4·Lq·Lk·H·d / time (× density if sparse).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "kernels/cuda/attention_kernel.cuh"
#include "kernels/dtype.h"

ABSL_FLAG(int, heads, 12, "attention heads");
ABSL_FLAG(int, queries, 32760, "query tokens");
ABSL_FLAG(int, keys, -1, "key tokens (default: = queries)");
ABSL_FLAG(int, dim, 128, "head dim (64 or 128)");
ABSL_FLAG(std::string, inputs, "", "directory with q.bin, k.bin, v.bin (bf16 [L, H, d]); random when empty");
ABSL_FLAG(std::string, output, "", "write the output (bf16 [Lq, H, d]) to this file");
ABSL_FLAG(int, warmup, 5, "untimed launches");
ABSL_FLAG(int, iterations, 20, "timed launches");
ABSL_FLAG(double, density, 1.0, "< 1: random block-sparse layout (128x128 blocks, shared by all heads)");
ABSL_FLAG(uint64_t, seed, 0, "seed of random inputs and layouts");
ABSL_FLAG(std::string, kernel, "auto", "auto (Hopper wgmma kernel where it applies), wgmma3, pingpong, or mma (the mma.sync kernel)");

namespace {

#define BENCH_CHECK(call)                                                                            \
  do {                                                                                               \
    const cudaError_t bench_error = (call);                                                          \
    if (bench_error != cudaSuccess) {                                                                \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(bench_error)); \
      std::exit(1);                                                                                  \
    }                                                                                                \
  } while (0)

std::vector<uint16_t> ReadOrRandom(const std::string& directory, const char* name, size_t count, uint64_t seed) {
  std::vector<uint16_t> values(count);
  if (!directory.empty()) {
    const std::string path = directory + "/" + name;
    std::ifstream file(path, std::ios::binary);
    file.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(count * sizeof(uint16_t)));
    if (!file || file.gcount() != static_cast<std::streamsize>(count * sizeof(uint16_t))) {
      std::fprintf(stderr, "zoetrope-attention-bench: %s: expected %zu bf16 values\n", path.c_str(), count);
      std::exit(1);
    }
    return values;
  }
  std::mt19937_64 generator(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (uint16_t& value : values) value = zoetrope::FloatToBFloat16(normal(generator));
  return values;
}

void* ToDevice(const void* host, size_t bytes) {
  void* device = nullptr;
  BENCH_CHECK(cudaMalloc(&device, bytes));
  BENCH_CHECK(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
  return device;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Times Zoetrope's attention kernel on one shape; prints JSON");
  absl::ParseCommandLine(argc, argv);
  const std::string kernel = absl::GetFlag(FLAGS_kernel);
  zoetrope::cuda::AttentionImplementation kernel_choice = zoetrope::cuda::AttentionImplementation::kAuto;
  if (!zoetrope::cuda::ParseAttentionImplementation(kernel.c_str(), &kernel_choice)) {
    std::fprintf(stderr, "--kernel must be auto, mma, wgmma3 or pingpong, got '%s'\n", kernel.c_str());
    return 2;
  }
  const int heads = absl::GetFlag(FLAGS_heads), queries = absl::GetFlag(FLAGS_queries), dim = absl::GetFlag(FLAGS_dim);
  const int keys = absl::GetFlag(FLAGS_keys) < 0 ? queries : absl::GetFlag(FLAGS_keys);
  const std::string inputs = absl::GetFlag(FLAGS_inputs);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const size_t q_count = static_cast<size_t>(queries) * heads * dim, k_count = static_cast<size_t>(keys) * heads * dim;

  void* q = ToDevice(ReadOrRandom(inputs, "q.bin", q_count, seed).data(), q_count * 2);
  void* k = ToDevice(ReadOrRandom(inputs, "k.bin", k_count, seed + 1).data(), k_count * 2);
  void* v = ToDevice(ReadOrRandom(inputs, "v.bin", k_count, seed + 2).data(), k_count * 2);
  void* o = nullptr;
  BENCH_CHECK(cudaMalloc(&o, q_count * 2));

  zoetrope::cuda::AttentionArguments arguments;
  arguments.q = q;
  arguments.k = k;
  arguments.v = v;
  arguments.o = o;
  arguments.q_row_stride = arguments.k_row_stride = arguments.v_row_stride = arguments.o_row_stride =
      static_cast<int64_t>(heads) * dim;
  arguments.query_count = queries;
  arguments.key_count = keys;
  arguments.heads = heads;
  arguments.head_dim = dim;
  arguments.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
  arguments.implementation = kernel_choice;

  // Optional random block-sparse layout: each query block keeps a `density` fraction of key blocks.
  const double density = absl::GetFlag(FLAGS_density);
  double visited_fraction = 1.0;
  void* row_offsets = nullptr;
  void* column_indices = nullptr;
  if (density < 1.0) {
    const int query_blocks = (queries + 127) / 128, key_blocks = (keys + 127) / 128;
    std::vector<int32_t> offsets{0}, columns;
    std::mt19937_64 generator(seed + 3);
    std::vector<int32_t> order(key_blocks);
    for (int r = 0; r < query_blocks; ++r) {
      for (int b = 0; b < key_blocks; ++b) order[b] = b;
      std::shuffle(order.begin(), order.end(), generator);
      const int keep = std::max(1, static_cast<int>(std::lround(density * key_blocks)));
      std::sort(order.begin(), order.begin() + keep);
      columns.insert(columns.end(), order.begin(), order.begin() + keep);
      offsets.push_back(static_cast<int32_t>(columns.size()));
    }
    visited_fraction = static_cast<double>(columns.size()) / (static_cast<double>(query_blocks) * key_blocks);
    row_offsets = ToDevice(offsets.data(), offsets.size() * sizeof(int32_t));
    column_indices = ToDevice(columns.data(), columns.size() * sizeof(int32_t));
    arguments.row_offsets = static_cast<const int32_t*>(row_offsets);
    arguments.column_indices = static_cast<const int32_t*>(column_indices);
    arguments.layout_groups = 1;
    arguments.layout_row_length = query_blocks + 1;
    arguments.layout_max_entries = static_cast<int>(columns.size());
    arguments.layout_key_block = 128;
  }

  cudaStream_t stream;
  BENCH_CHECK(cudaStreamCreate(&stream));
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) zoetrope::cuda::LaunchAttention(arguments, stream);
  BENCH_CHECK(cudaStreamSynchronize(stream));
  const int iterations = std::max(1, absl::GetFlag(FLAGS_iterations));
  std::vector<cudaEvent_t> events(iterations + 1);
  for (cudaEvent_t& event : events) BENCH_CHECK(cudaEventCreate(&event));
  BENCH_CHECK(cudaEventRecord(events[0], stream));
  for (int i = 0; i < iterations; ++i) {
    zoetrope::cuda::LaunchAttention(arguments, stream);
    BENCH_CHECK(cudaEventRecord(events[i + 1], stream));
  }
  BENCH_CHECK(cudaStreamSynchronize(stream));
  BENCH_CHECK(cudaGetLastError());
  std::vector<float> milliseconds(iterations);
  for (int i = 0; i < iterations; ++i) BENCH_CHECK(cudaEventElapsedTime(&milliseconds[i], events[i], events[i + 1]));
  std::sort(milliseconds.begin(), milliseconds.end());
  const double median = milliseconds[iterations / 2];
  const double flops = 4.0 * queries * static_cast<double>(keys) * heads * dim * visited_fraction;

  const std::string output = absl::GetFlag(FLAGS_output);
  if (!output.empty()) {
    std::vector<uint16_t> host(q_count);
    BENCH_CHECK(cudaMemcpy(host.data(), o, q_count * 2, cudaMemcpyDeviceToHost));
    std::ofstream file(output, std::ios::binary);
    file.write(reinterpret_cast<const char*>(host.data()), static_cast<std::streamsize>(q_count * 2));
    if (!file) {
      std::fprintf(stderr, "zoetrope-attention-bench: cannot write %s\n", output.c_str());
      return 1;
    }
  }
  cudaDeviceProp properties{};
  BENCH_CHECK(cudaGetDeviceProperties(&properties, 0));
  std::printf(
      "{\"kernel\": \"zoetrope_%s\", \"device\": \"%s\", \"heads\": %d, \"queries\": %d, \"keys\": %d, \"dim\": %d, "
      "\"density\": %.4f, \"iterations\": %d, \"median_ms\": %.4f, \"min_ms\": %.4f, \"tflops\": %.1f}\n",
      kernel.c_str(), properties.name, heads, queries, keys, dim, visited_fraction, iterations, median, milliseconds[0],
      flops / (median * 1e-3) / 1e12);
  return 0;
}
