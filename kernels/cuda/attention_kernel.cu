// The tiled attention kernel (see attention_kernel.cuh for the contract).
//
// Layout of one thread block: kWarps = 8 warps, warp w owns query rows [16w, 16w + 16) of the block.
// Q stays in registers as mma.sync A fragments for the whole key loop; K and V tiles of 64 rows stream
// through shared memory with cp.async, two stages deep, so the next tile loads while this one is
// multiplied. Each tile: S = Q·Kᵀ (m16n8k16, fp32 accumulators), online softmax in registers (row max
// and sum per thread, reduced across the 4 threads that share a row), P converted to bf16 A fragments
// in place, O += P·V with V read through ldmatrix.trans.
//
// Shared-memory rows are d bf16 = d/8 chunks of 16 bytes; chunk c of row r is stored at chunk
// c ^ (r mod 8), so the 8 row addresses of one ldmatrix phase fall into 8 different 16-byte bank groups.
#include "kernels/cuda/attention_kernel.cuh"

#include <cuda_bf16.h>

#include <cstring>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"

namespace zoetrope::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockM = kAttentionQueryBlock;
constexpr int kBlockN = kAttentionKeyTile;
constexpr int kStages = 2;
static_assert(kBlockM == 16 * kWarps, "one warp per 16 query rows");

__device__ __forceinline__ uint32_t SharedAddress(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16-byte asynchronous copy global -> shared; `valid` false fills the 16 bytes with zeros.
__device__ __forceinline__ void CopyAsync16(uint32_t shared_address, const void* global, bool valid) {
  const int source_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address), "l"(global),
               "r"(source_bytes));
}
__device__ __forceinline__ void CopyAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void CopyAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void LoadMatrixX4(uint32_t (&registers)[4], uint32_t shared_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(registers[0]), "=r"(registers[1]), "=r"(registers[2]), "=r"(registers[3])
               : "r"(shared_address));
}
__device__ __forceinline__ void LoadMatrixX4Transposed(uint32_t (&registers)[4], uint32_t shared_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(registers[0]), "=r"(registers[1]), "=r"(registers[2]), "=r"(registers[3])
               : "r"(shared_address));
}

// c[16x8] += a[16x16] · b[16x8], bf16 operands, fp32 accumulators.
__device__ __forceinline__ void MmaBf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t PackBf16(float low, float high) {
  __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<uint32_t*>(&pair);
}

__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Element offset of 16-byte chunk `chunk` of row `row` in a swizzled tile with rows of kHeadDim.
template <int kHeadDim>
__device__ __forceinline__ int SwizzledOffset(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
}

// Copies rows [row_begin, row_begin + kRows) of one head into a swizzled shared tile; rows at or beyond
// `row_limit` are zero-filled (their global address is never read).
template <int kHeadDim, int kRows>
__device__ __forceinline__ void LoadTile(__nv_bfloat16* tile, const __nv_bfloat16* head_base, int64_t row_stride,
                                         int row_begin, int row_limit) {
  constexpr int kChunksPerRow = kHeadDim / 8;
  constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kChunks % kThreads == 0, "tile chunks must divide evenly among threads");
#pragma unroll
  for (int i = 0; i < kChunks / kThreads; ++i) {
    const int id = threadIdx.x + i * kThreads;
    const int row = id / kChunksPerRow;
    const int chunk = id % kChunksPerRow;
    const int global_row = row_begin + row;
    const bool valid = global_row < row_limit;
    const __nv_bfloat16* source = valid ? head_base + static_cast<int64_t>(global_row) * row_stride + chunk * 8 : head_base;
    CopyAsync16(SharedAddress(tile + SwizzledOffset<kHeadDim>(row, chunk)), source, valid);
  }
}

template <int kHeadDim>
__global__ void __launch_bounds__(kThreads, 1) AttentionKernel(const AttentionArguments arguments) {
  constexpr int kSteps = kHeadDim / 16;     // k16 steps over the head dim (S = Q·Kᵀ)
  constexpr int kKeySteps = kBlockN / 16;   // k16 steps over the keys of a tile (O += P·V)
  constexpr int kScoreTiles = kBlockN / 8;  // n8 tiles of S per warp
  constexpr int kOutputTiles = kHeadDim / 8;
  constexpr int kTileElements = kBlockN * kHeadDim;

  extern __shared__ __align__(128) unsigned char shared_bytes[];
  __nv_bfloat16* shared_q = reinterpret_cast<__nv_bfloat16*>(shared_bytes);
  __nv_bfloat16* shared_k = shared_q + kBlockM * kHeadDim;
  __nv_bfloat16* shared_v = shared_k + kStages * kTileElements;

  const int query_block = blockIdx.x;
  const int head = blockIdx.y;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int group = lane / 4;           // row within an 8-row half of the m16 tile
  const int thread_in_group = lane % 4;  // column pair

  const auto* q_head = static_cast<const __nv_bfloat16*>(arguments.q) + static_cast<int64_t>(head) * kHeadDim;
  const auto* k_head = static_cast<const __nv_bfloat16*>(arguments.k) + static_cast<int64_t>(head) * kHeadDim;
  const auto* v_head = static_cast<const __nv_bfloat16*>(arguments.v) + static_cast<int64_t>(head) * kHeadDim;
  const int query_begin = query_block * kBlockM;

  // Which key tiles this block visits: all of them, or the CSR row of (query block, head).
  int tile_count;
  int entry_begin = 0;
  int tiles_per_entry = 1;
  const int32_t* columns = nullptr;
  if (arguments.row_offsets == nullptr) {
    tile_count = (arguments.key_count + kBlockN - 1) / kBlockN;
  } else {
    const int layout_group = arguments.layout_groups == 1 ? 0 : head;
    const int32_t* offsets = arguments.row_offsets + static_cast<int64_t>(layout_group) * arguments.layout_row_length;
    entry_begin = offsets[query_block];
    tiles_per_entry = arguments.layout_key_block / kBlockN;
    tile_count = (offsets[query_block + 1] - entry_begin) * tiles_per_entry;
    columns = arguments.column_indices + static_cast<int64_t>(layout_group) * arguments.layout_max_entries;
  }
  auto tile_key_begin = [&](int tile) -> int {
    if (columns == nullptr) return tile * kBlockN;
    const int entry = entry_begin + tile / tiles_per_entry;
    return columns[entry] * arguments.layout_key_block + (tile % tiles_per_entry) * kBlockN;
  };

  // Prologue: Q and the first K/V tile in one commit group.
  LoadTile<kHeadDim, kBlockM>(shared_q, q_head, arguments.q_row_stride, query_begin, arguments.query_count);
  int next_key_begin = tile_count > 0 ? tile_key_begin(0) : 0;
  if (tile_count > 0) {
    LoadTile<kHeadDim, kBlockN>(shared_k, k_head, arguments.k_row_stride, next_key_begin, arguments.key_count);
    LoadTile<kHeadDim, kBlockN>(shared_v, v_head, arguments.v_row_stride, next_key_begin, arguments.key_count);
  }
  CopyAsyncCommit();

  float output[kOutputTiles][4];
#pragma unroll
  for (int j = 0; j < kOutputTiles; ++j) output[j][0] = output[j][1] = output[j][2] = output[j][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};  // rows `group` and `group + 8`, raw score units
  float row_sum[2] = {0.0f, 0.0f};            // this thread's part of the row sums
  uint32_t q_fragments[kSteps][4];
  const float scale_log2 = arguments.scale * 1.4426950408889634f;

  for (int tile = 0; tile < tile_count; ++tile) {
    const int stage = tile % kStages;
    const int key_begin = next_key_begin;
    if (tile + 1 < tile_count) {
      next_key_begin = tile_key_begin(tile + 1);
      const int next_stage = (tile + 1) % kStages;
      LoadTile<kHeadDim, kBlockN>(shared_k + next_stage * kTileElements, k_head, arguments.k_row_stride,
                                  next_key_begin, arguments.key_count);
      LoadTile<kHeadDim, kBlockN>(shared_v + next_stage * kTileElements, v_head, arguments.v_row_stride,
                                  next_key_begin, arguments.key_count);
    }
    CopyAsyncCommit();
    CopyAsyncWait<1>();
    __syncthreads();

    if (tile == 0) {
#pragma unroll
      for (int step = 0; step < kSteps; ++step) {
        const int row = warp * 16 + (lane & 15);
        const int chunk = step * 2 + (lane >> 4);
        LoadMatrixX4(q_fragments[step], SharedAddress(shared_q + SwizzledOffset<kHeadDim>(row, chunk)));
      }
    }

    // S = Q·Kᵀ for this warp's 16 rows and the tile's 64 keys.
    const __nv_bfloat16* tile_k = shared_k + stage * kTileElements;
    float scores[kScoreTiles][4];
#pragma unroll
    for (int j = 0; j < kScoreTiles; ++j) scores[j][0] = scores[j][1] = scores[j][2] = scores[j][3] = 0.0f;
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
#pragma unroll
      for (int pair = 0; pair < kScoreTiles / 2; ++pair) {
        const int row = pair * 16 + (lane & 7) + (lane >> 4) * 8;
        const int chunk = step * 2 + ((lane >> 3) & 1);
        uint32_t b[4];
        LoadMatrixX4(b, SharedAddress(tile_k + SwizzledOffset<kHeadDim>(row, chunk)));
        MmaBf16(scores[2 * pair], q_fragments[step], b[0], b[1]);
        MmaBf16(scores[2 * pair + 1], q_fragments[step], b[2], b[3]);
      }
    }

    // Keys at or beyond key_count (the partial last tile, or a listed block past the end) get −∞.
    if (key_begin + kBlockN > arguments.key_count) {
#pragma unroll
      for (int j = 0; j < kScoreTiles; ++j) {
        const int key = key_begin + j * 8 + thread_in_group * 2;
        if (key >= arguments.key_count) scores[j][0] = scores[j][2] = -INFINITY;
        if (key + 1 >= arguments.key_count) scores[j][1] = scores[j][3] = -INFINITY;
      }
    }

    // Online softmax: new row maxima, rescale of what was accumulated, probabilities.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kScoreTiles; ++j) tile_max = fmaxf(tile_max, fmaxf(scores[j][2 * half], scores[j][2 * half + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max[half], tile_max);
      // A row that has seen only masked keys keeps max −∞; use 0 so that exp2 gives 0, not NaN.
      const float reference = new_max == -INFINITY ? 0.0f : new_max * scale_log2;
      const float correction = FastExp2(row_max[half] * scale_log2 - reference);
      row_max[half] = new_max;
      row_sum[half] *= correction;
#pragma unroll
      for (int j = 0; j < kOutputTiles; ++j) {
        output[j][2 * half] *= correction;
        output[j][2 * half + 1] *= correction;
      }
#pragma unroll
      for (int j = 0; j < kScoreTiles; ++j) {
        scores[j][2 * half] = FastExp2(fmaf(scores[j][2 * half], scale_log2, -reference));
        scores[j][2 * half + 1] = FastExp2(fmaf(scores[j][2 * half + 1], scale_log2, -reference));
        row_sum[half] += scores[j][2 * half] + scores[j][2 * half + 1];
      }
    }

    // O += P·V: the S accumulators of two adjacent n8 tiles form one k16 A fragment.
    const __nv_bfloat16* tile_v = shared_v + stage * kTileElements;
#pragma unroll
    for (int key_step = 0; key_step < kKeySteps; ++key_step) {
      uint32_t p[4];
      p[0] = PackBf16(scores[2 * key_step][0], scores[2 * key_step][1]);
      p[1] = PackBf16(scores[2 * key_step][2], scores[2 * key_step][3]);
      p[2] = PackBf16(scores[2 * key_step + 1][0], scores[2 * key_step + 1][1]);
      p[3] = PackBf16(scores[2 * key_step + 1][2], scores[2 * key_step + 1][3]);
#pragma unroll
      for (int pair = 0; pair < kOutputTiles / 2; ++pair) {
        const int row = key_step * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int chunk = pair * 2 + (lane >> 4);
        uint32_t b[4];
        LoadMatrixX4Transposed(b, SharedAddress(tile_v + SwizzledOffset<kHeadDim>(row, chunk)));
        MmaBf16(output[2 * pair], p, b[0], b[1]);
        MmaBf16(output[2 * pair + 1], p, b[2], b[3]);
      }
    }
    // Every warp is done with this stage before the next iteration's loads overwrite it.
    __syncthreads();
  }
  CopyAsyncWait<0>();

  // Normalise and stage the bf16 rows in this warp's part of shared_q (its own Q rows, already in
  // registers), then store 16-byte chunks.
  float inverse[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = row_sum[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    inverse[half] = sum > 0.0f ? 1.0f / sum : 0.0f;
  }
  if (tile_count == 0) __syncthreads();  // the Q tile was never waited for: keep its copies from landing late
  const int row_top = warp * 16 + group;
#pragma unroll
  for (int j = 0; j < kOutputTiles; ++j) {
    const int offset = thread_in_group * 2;
    *reinterpret_cast<uint32_t*>(shared_q + SwizzledOffset<kHeadDim>(row_top, j) + offset) =
        PackBf16(output[j][0] * inverse[0], output[j][1] * inverse[0]);
    *reinterpret_cast<uint32_t*>(shared_q + SwizzledOffset<kHeadDim>(row_top + 8, j) + offset) =
        PackBf16(output[j][2] * inverse[1], output[j][3] * inverse[1]);
  }
  __syncwarp();
  constexpr int kChunksPerRow = kHeadDim / 8;
  auto* o_head = static_cast<__nv_bfloat16*>(arguments.o) + static_cast<int64_t>(head) * kHeadDim;
#pragma unroll
  for (int i = 0; i < 16 * kChunksPerRow / 32; ++i) {
    const int id = lane + i * 32;
    const int row = warp * 16 + id / kChunksPerRow;
    const int chunk = id % kChunksPerRow;
    const int global_row = query_begin + row;
    if (global_row < arguments.query_count) {
      *reinterpret_cast<uint4*>(o_head + static_cast<int64_t>(global_row) * arguments.o_row_stride + chunk * 8) =
          *reinterpret_cast<const uint4*>(shared_q + SwizzledOffset<kHeadDim>(row, chunk));
    }
  }
}

template <int kHeadDim>
void Launch(const AttentionArguments& arguments, cudaStream_t stream) {
  constexpr size_t kSharedBytes = (kBlockM + 2 * kStages * kBlockN) * kHeadDim * sizeof(__nv_bfloat16);
  ZCUDA_CHECK(cudaFuncSetAttribute(AttentionKernel<kHeadDim>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(kSharedBytes)));
  const dim3 grid((arguments.query_count + kBlockM - 1) / kBlockM, arguments.heads);
  AttentionKernel<kHeadDim><<<grid, kThreads, kSharedBytes, stream>>>(arguments);
  ZCUDA_CHECK_LAUNCH();
}

}  // namespace

bool AttentionSupportsHeadDim(int head_dim) { return head_dim == 64 || head_dim == 128; }

bool ParseAttentionImplementation(const char* name, AttentionImplementation* implementation) {
  static constexpr struct {
    const char* name;
    AttentionImplementation implementation;
  } kNames[] = {{"auto", AttentionImplementation::kAuto},
                {"mma", AttentionImplementation::kMma},
                {"wgmma3", AttentionImplementation::kHopperThreeStage},
                {"pingpong", AttentionImplementation::kHopperPingPong}};
  for (const auto& entry : kNames) {
    if (std::strcmp(name, entry.name) == 0) {
      *implementation = entry.implementation;
      return true;
    }
  }
  return false;
}

void LaunchAttention(const AttentionArguments& arguments, cudaStream_t stream) {
  ZCHECK_MSG(AttentionSupportsHeadDim(arguments.head_dim), "attention head dim " << arguments.head_dim);
  ZCHECK(arguments.query_count >= 0 && arguments.key_count >= 0 && arguments.heads > 0);
  ZCHECK(arguments.heads <= 65535);
  if (arguments.row_offsets != nullptr) {
    ZCHECK(arguments.column_indices != nullptr);
    ZCHECK_MSG(arguments.layout_key_block > 0 && arguments.layout_key_block % kBlockN == 0,
               "sparse layout key block " << arguments.layout_key_block << " must be a multiple of " << kBlockN);
    ZCHECK(arguments.layout_groups == 1 || arguments.layout_groups == arguments.heads);
    ZCHECK(arguments.layout_row_length == (arguments.query_count + kBlockM - 1) / kBlockM + 1);
  }
  // 16-byte loads and stores need 16-byte aligned rows.
  for (const void* pointer : {arguments.q, arguments.k, arguments.v, static_cast<const void*>(arguments.o)}) {
    ZCHECK_MSG(reinterpret_cast<uintptr_t>(pointer) % 16 == 0, "attention operands must be 16-byte aligned");
  }
  ZCHECK(arguments.q_row_stride % 8 == 0 && arguments.k_row_stride % 8 == 0 && arguments.v_row_stride % 8 == 0 &&
         arguments.o_row_stride % 8 == 0);
  if (arguments.query_count == 0) return;
  if (arguments.implementation != AttentionImplementation::kMma && LaunchAttentionHopper(arguments, stream)) return;
  if (arguments.head_dim == 128) {
    Launch<128>(arguments, stream);
  } else {
    Launch<64>(arguments, stream);
  }
}

}  // namespace zoetrope::cuda
