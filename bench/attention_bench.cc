// zoetrope-attention-bench: times Zoetrope's attention kernel (kernels/cuda/attention_kernel.cuh) on one
// shape and optionally writes its output, so bench/attention_baseline.py can check it against PyTorch's
// SDPA on the same inputs and time the PyTorch kernels in the same run.
//
//   zoetrope-attention-bench --heads 12 --queries 32760 --keys 32760 --dim 128
//       [--inputs DIR (q.bin k.bin v.bin: bf16 [L, H, d])] [--output FILE] [--density 0.3 | --layout FILE]
//       [--kernel mma]
// --layout reads the CSR that `zoetrope-attention-plan --dump` writes (safetensors, I32 row_offsets
// [groups, query_blocks + 1] and column_indices [groups, max_entries], groups 1 or --heads) and runs the
// kernel on exactly that layout.
// Prints one JSON object: shape, median/min/max milliseconds and every sample over --iterations timed
// launches (CUDA events around each launch, after --warmup launches), density = block density (computed
// blocks / all blocks, over the layout's groups), TFLOP/s = 4·Lq·Lk·H·d·density / time, and effective
// TFLOP/s = 4·d·(computed query-key pairs, summed over heads) / time, the pairs counted exactly from the
// CSR with the partial last blocks' real sizes (= TFLOP/s when dense).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "kernels/cuda/attention_kernel.cuh"
#include "kernels/dtype.h"
#include "worker/engine/safetensors.h"

ABSL_FLAG(int, heads, 12, "attention heads");
ABSL_FLAG(int, queries, 32760, "query tokens");
ABSL_FLAG(int, keys, -1, "key tokens (default: = queries)");
ABSL_FLAG(int, dim, 128, "head dim (64 or 128)");
ABSL_FLAG(std::string, inputs, "", "directory with q.bin, k.bin, v.bin (bf16 [L, H, d]); random when empty");
ABSL_FLAG(std::string, output, "", "write the output (bf16 [Lq, H, d]) to this file");
ABSL_FLAG(int, warmup, 5, "untimed launches");
ABSL_FLAG(int, iterations, 20, "timed launches");
ABSL_FLAG(double, density, 1.0, "< 1: random block-sparse layout (128x128 blocks, shared by all heads)");
ABSL_FLAG(std::string, layout, "",
          "safetensors CSR written by zoetrope-attention-plan --dump (row_offsets, column_indices; padding -1)");
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

// A CSR layout on the host, as the kernel reads it: row_offsets [groups, row_length], column_indices
// [groups, max_entries].
struct HostLayout {
  int groups = 1;
  int row_length = 0;
  int max_entries = 0;
  int key_block = 128;
  std::vector<int32_t> row_offsets;
  std::vector<int32_t> column_indices;
};

[[noreturn]] void LayoutError(const std::string& path, const std::string& message) {
  std::fprintf(stderr, "zoetrope-attention-bench: --layout %s: %s\n", path.c_str(), message.c_str());
  std::exit(2);
}

// Reads a zoetrope-attention-plan --dump file and checks it against the shape, so that a stale or foreign
// file fails here with a message instead of making the kernel read out of bounds.
HostLayout ReadLayout(const std::string& path, int heads, int queries, int keys) {
  absl::StatusOr<std::unique_ptr<zoetrope::SafetensorsFile>> file = zoetrope::SafetensorsFile::Open(path);
  if (!file.ok()) LayoutError(path, std::string(file.status().message()));
  absl::StatusOr<zoetrope::Tensor> offsets = (*file)->Get("row_offsets");
  absl::StatusOr<zoetrope::Tensor> columns = (*file)->Get("column_indices");
  if (!offsets.ok()) LayoutError(path, std::string(offsets.status().message()));
  if (!columns.ok()) LayoutError(path, std::string(columns.status().message()));
  if (offsets->dtype() != zoetrope::DType::kI32 || columns->dtype() != zoetrope::DType::kI32 || offsets->rank() != 2 ||
      columns->rank() != 2 || offsets->dim(0) != columns->dim(0)) {
    LayoutError(path, "expected I32 row_offsets [groups, query_blocks + 1] and column_indices [groups, entries], got " +
                          offsets->DebugString() + " and " + columns->DebugString());
  }
  // The dump records its block sizes; the kernel takes query blocks of exactly kAttentionQueryBlock rows.
  const auto& metadata = (*file)->metadata();
  const auto block_of = [&](const char* key) {
    const auto found = metadata.find(key);
    return found == metadata.end() ? 128 : std::atoi(found->second.c_str());
  };
  HostLayout layout;
  layout.key_block = block_of("key_block");
  if (block_of("query_block") != zoetrope::cuda::kAttentionQueryBlock || layout.key_block <= 0 ||
      layout.key_block % zoetrope::cuda::kAttentionKeyTile != 0) {
    LayoutError(path, "query_block must be " + std::to_string(zoetrope::cuda::kAttentionQueryBlock) +
                          " and key_block a multiple of " + std::to_string(zoetrope::cuda::kAttentionKeyTile));
  }
  layout.groups = static_cast<int>(offsets->dim(0));
  layout.row_length = static_cast<int>(offsets->dim(1));
  layout.max_entries = static_cast<int>(columns->dim(1));
  const int query_blocks = (queries + zoetrope::cuda::kAttentionQueryBlock - 1) / zoetrope::cuda::kAttentionQueryBlock;
  const int key_blocks = (keys + layout.key_block - 1) / layout.key_block;
  if (layout.groups != 1 && layout.groups != heads) {
    LayoutError(path, std::to_string(layout.groups) + " groups: expected 1 or --heads " + std::to_string(heads));
  }
  if (layout.row_length != query_blocks + 1) {
    LayoutError(path, "row_offsets rows hold " + std::to_string(layout.row_length) + " offsets; --queries " +
                          std::to_string(queries) + " needs " + std::to_string(query_blocks + 1));
  }
  // memcpy: the mapped tensor bytes need not be 4-byte aligned.
  layout.row_offsets.resize(offsets->numel());
  layout.column_indices.resize(columns->numel());
  std::memcpy(layout.row_offsets.data(), offsets->raw_data(), offsets->nbytes());
  std::memcpy(layout.column_indices.data(), columns->raw_data(), columns->nbytes());
  for (int group = 0; group < layout.groups; ++group) {
    const int32_t* row = layout.row_offsets.data() + static_cast<size_t>(group) * layout.row_length;
    const int32_t* column = layout.column_indices.data() + static_cast<size_t>(group) * layout.max_entries;
    if (row[0] < 0 || row[query_blocks] > layout.max_entries) LayoutError(path, "row_offsets out of range");
    for (int r = 0; r < query_blocks; ++r) {
      if (row[r + 1] < row[r]) LayoutError(path, "row_offsets decrease");
      for (int32_t entry = row[r]; entry < row[r + 1]; ++entry) {
        if (column[entry] < 0 || column[entry] >= key_blocks) {
          LayoutError(path, "column index " + std::to_string(column[entry]) + " outside [0, " +
                                std::to_string(key_blocks) + ") (--keys " + std::to_string(keys) + ")");
        }
      }
    }
  }
  return layout;
}

// Query-key pairs the kernel computes on a layout, summed over heads: each listed block counts its real
// rows × columns (the last query and key blocks are shorter when the length is not a multiple of the block).
double ComputedPairs(const HostLayout& layout, int heads, int queries, int keys) {
  const int query_block = zoetrope::cuda::kAttentionQueryBlock;
  double pairs = 0;
  for (int group = 0; group < layout.groups; ++group) {
    const int32_t* row = layout.row_offsets.data() + static_cast<size_t>(group) * layout.row_length;
    const int32_t* column = layout.column_indices.data() + static_cast<size_t>(group) * layout.max_entries;
    for (int r = 0; r + 1 < layout.row_length; ++r) {
      const int rows = std::min(query_block, queries - r * query_block);
      int64_t columns = 0;
      for (int32_t entry = row[r]; entry < row[r + 1]; ++entry) {
        columns += std::min(layout.key_block, keys - column[entry] * layout.key_block);
      }
      pairs += static_cast<double>(rows) * static_cast<double>(columns);
    }
  }
  // One group is shared by every head.
  return layout.groups == 1 ? pairs * heads : pairs;
}

// Computed blocks / all blocks, over the layout's groups (BlockDensity in parallel/sparse_layout.h).
double LayoutBlockDensity(const HostLayout& layout, int keys) {
  const int query_blocks = layout.row_length - 1, key_blocks = (keys + layout.key_block - 1) / layout.key_block;
  double computed = 0;
  for (int group = 0; group < layout.groups; ++group) {
    const int32_t* row = layout.row_offsets.data() + static_cast<size_t>(group) * layout.row_length;
    computed += row[query_blocks] - row[0];
  }
  return computed / (static_cast<double>(layout.groups) * query_blocks * key_blocks);
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

  // Optional block-sparse layout: read from --layout, or random (each query block keeps a `density`
  // fraction of key blocks, one group shared by all heads). Built before the inputs are read and uploaded, so
  // a layout that does not fit the shape fails at once.
  const double density = absl::GetFlag(FLAGS_density);
  const std::string layout_path = absl::GetFlag(FLAGS_layout);
  if (!layout_path.empty() && density < 1.0) {
    std::fprintf(stderr, "zoetrope-attention-bench: --layout and --density < 1 exclude each other\n");
    return 2;
  }
  const bool sparse = !layout_path.empty() || density < 1.0;
  HostLayout layout;
  double visited_fraction = 1.0;
  double computed_pairs = static_cast<double>(queries) * keys * heads;
  if (!layout_path.empty()) {
    layout = ReadLayout(layout_path, heads, queries, keys);
  } else if (sparse) {
    const int query_blocks = (queries + 127) / 128, key_blocks = (keys + 127) / 128;
    layout.row_offsets = {0};
    std::mt19937_64 generator(seed + 3);
    std::vector<int32_t> order(key_blocks);
    for (int r = 0; r < query_blocks; ++r) {
      for (int b = 0; b < key_blocks; ++b) order[b] = b;
      std::shuffle(order.begin(), order.end(), generator);
      const int keep = std::max(1, static_cast<int>(std::lround(density * key_blocks)));
      std::sort(order.begin(), order.begin() + keep);
      layout.column_indices.insert(layout.column_indices.end(), order.begin(), order.begin() + keep);
      layout.row_offsets.push_back(static_cast<int32_t>(layout.column_indices.size()));
    }
    layout.row_length = query_blocks + 1;
    layout.max_entries = static_cast<int>(layout.column_indices.size());
  }
  if (sparse) {
    visited_fraction = LayoutBlockDensity(layout, keys);
    computed_pairs = ComputedPairs(layout, heads, queries, keys);
    // On stderr (stdout holds the one JSON line): what was read, before any CUDA call can fail.
    std::fprintf(stderr, "layout %s: %d group(s), %d query blocks, key block %d, block density %.6f, %.0f pairs\n",
                 layout_path.empty() ? "random" : layout_path.c_str(), layout.groups, layout.row_length - 1,
                 layout.key_block, visited_fraction, computed_pairs);
  }

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

  void* row_offsets = nullptr;
  void* column_indices = nullptr;
  if (sparse) {
    row_offsets = ToDevice(layout.row_offsets.data(), layout.row_offsets.size() * sizeof(int32_t));
    // A layout with no entry at all still gets a valid (unread) device pointer.
    if (layout.column_indices.empty()) layout.column_indices.push_back(-1);
    column_indices = ToDevice(layout.column_indices.data(), layout.column_indices.size() * sizeof(int32_t));
    arguments.row_offsets = static_cast<const int32_t*>(row_offsets);
    arguments.column_indices = static_cast<const int32_t*>(column_indices);
    arguments.layout_groups = layout.groups;
    arguments.layout_row_length = layout.row_length;
    arguments.layout_max_entries = layout.max_entries;
    arguments.layout_key_block = layout.key_block;
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
  const std::vector<float> samples_in_order = milliseconds;
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
  std::string samples;
  for (int i = 0; i < iterations; ++i) samples += (i ? ", " : "") + std::to_string(samples_in_order[i]);
  std::printf(
      "{\"kernel\": \"zoetrope_%s\", \"device\": \"%s\", \"heads\": %d, \"queries\": %d, \"keys\": %d, \"dim\": %d, "
      "\"density\": %.4f, \"iterations\": %d, \"median_ms\": %.4f, \"min_ms\": %.4f, \"tflops\": %.1f, "
      "\"max_ms\": %.4f, \"samples_ms\": [%s], \"layout\": \"%s\", \"layout_groups\": %d, "
      "\"computed_pairs\": %.0f, \"effective_tflops\": %.1f}\n",
      kernel.c_str(), properties.name, heads, queries, keys, dim, visited_fraction, iterations, median, milliseconds[0],
      flops / (median * 1e-3) / 1e12, milliseconds[iterations - 1], samples.c_str(),
      !layout_path.empty() ? "file" : (sparse ? "random" : "dense"), sparse ? layout.groups : 0, computed_pairs,
      4.0 * dim * computed_pairs / (median * 1e-3) / 1e12);
  return 0;
}
