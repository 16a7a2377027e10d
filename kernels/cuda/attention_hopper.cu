// Hopper (sm_90a) version of the attention kernel for head dim 128: TMA loads into 128-byte-swizzled
// shared memory, completion on mbarriers, and warpgroup MMAs (wgmma) with fp32 accumulators.
//
// Thread block: 2 warpgroups (256 threads), 128 query rows (64 per warpgroup), key/value tiles of 128
// rows, two stages (a three-stage variant is kept for comparison). Thread 0 also acts as the producer:
// it issues the TMA copies of Q, and of K/V tile j + 2 into the stage that tile j occupied once both
// warpgroups released it ("empty" barrier).
//
// Per warpgroup and tile j, the tensor cores run back to back: O += P_j·V_j (A = P from registers) and
// S_{j+1} = Q·K_{j+1}ᵀ (both operands in shared memory) are issued together; while the warpgroup then
// does the softmax of S_{j+1} on its CUDA cores, the other warpgroup's products keep the tensor cores
// busy. The online softmax itself is the same as in the mma.sync kernel (attention_kernel.cu).
//
// Shared-memory layout: every tile is stored as two column halves (head dims 0–63 and 64–127), each
// [rows][128 bytes] with the 128-byte swizzle (16-byte chunk c of row r at chunk c ^ (r mod 8)); that is
// what the TMA writes with CU_TENSOR_MAP_SWIZZLE_128B and what the wgmma descriptors below describe.
//
// Written for this project from the PTX ISA (wgmma, cp.async.bulk.tensor, mbarrier) and the published
// FlashAttention-2/3 algorithms; no code is taken from other implementations.
#include <cuda.h>
#include <cuda_bf16.h>


#include "kernels/check.h"
#include "kernels/cuda/attention_kernel.cuh"
#include "kernels/cuda/cuda_check.h"

namespace zoetrope::cuda {
namespace {

constexpr int kHeadDim = 128;
constexpr int kBlockM = 128;      // query rows per thread block
constexpr int kBlockN = 128;      // keys per tile
constexpr int kThreads = 256;     // two warpgroups
constexpr int kHalfBytes = 128;   // one swizzled row of a column half: 64 bf16
constexpr int kTileHalfBytes = kBlockN * kHalfBytes;  // 16 KB
constexpr int kTileBytes = 2 * kTileHalfBytes;        // 32 KB per K or V tile
constexpr int kQueryBytes = kBlockM * kHeadDim * 2;   // 32 KB

template <int kStages>
struct SharedStorage {
  alignas(1024) unsigned char q[kQueryBytes];  // two halves of [128][128 B]; reused for the output
  alignas(1024) unsigned char k[kStages][kTileBytes];
  alignas(1024) unsigned char v[kStages][kTileBytes];
  alignas(8) uint64_t q_full;
  alignas(8) uint64_t k_full[kStages];
  alignas(8) uint64_t v_full[kStages];
  alignas(8) uint64_t empty[kStages];
};

__device__ __forceinline__ uint32_t SharedAddress(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// ---- mbarrier ----
__device__ __forceinline__ void BarrierInit(uint64_t* barrier, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(SharedAddress(barrier)), "r"(count));
}
__device__ __forceinline__ void BarrierExpectBytes(uint64_t* barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(SharedAddress(barrier)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void BarrierArrive(uint64_t* barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(SharedAddress(barrier)) : "memory");
}
__device__ __forceinline__ void BarrierWait(uint64_t* barrier, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(SharedAddress(barrier)), "r"(parity)
        : "memory");
  } while (done == 0);
}

// ---- TMA ----
// Box {64 head dims, 1 head, 128 rows} at (dim, head, row) -> shared, completing on `barrier`.
__device__ __forceinline__ void TmaLoad(void* destination, const CUtensorMap* map, int dim, int head, int row,
                                        uint64_t* barrier) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::
          "r"(SharedAddress(destination)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(dim), "r"(head), "r"(row), "r"(SharedAddress(barrier))
      : "memory");
}

// A [128 rows x 128 dims] tile (both halves) into `destination`.
__device__ __forceinline__ void TmaLoadTile(unsigned char* destination, const CUtensorMap* map, int head, int row,
                                            uint64_t* barrier) {
  TmaLoad(destination, map, 0, head, row, barrier);
  TmaLoad(destination + kBlockM * kHalfBytes, map, 64, head, row, barrier);
}

// ---- wgmma ----
// Shared-memory matrix descriptor (sm_90): start address, leading and stride byte offsets (all >> 4),
// 128-byte swizzle.
__device__ __forceinline__ uint64_t MatrixDescriptor(const void* start, uint32_t leading_bytes, uint32_t stride_bytes) {
  uint64_t descriptor = 0;
  descriptor |= static_cast<uint64_t>((SharedAddress(start) >> 4) & 0x3FFF);
  descriptor |= static_cast<uint64_t>((leading_bytes >> 4) & 0x3FFF) << 16;
  descriptor |= static_cast<uint64_t>((stride_bytes >> 4) & 0x3FFF) << 32;
  descriptor |= uint64_t{1} << 62;
  return descriptor;
}

__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving reads or writes of registers across the asynchronous MMAs.
__device__ __forceinline__ void FenceRegisters(float (&values)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(values[i])::"memory");
}
__device__ __forceinline__ void FenceRegisters(uint32_t (&values)[8][4]) {
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(values[i][j])::"memory");
  }
}

// d[64 x 128] (+)= A[64 x 16] · B[16 x 128]; A and B from shared memory (both K-major).
__device__ __forceinline__ void WgmmaQK(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
      ", "
      "%64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// d[64 x 128] += A[64 x 16] · B[16 x 128]; A from registers, B from shared memory, MN-major (transposed).
__device__ __forceinline__ void WgmmaPV(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
      ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
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

struct HopperArguments {
  int query_count, key_count, heads;
  float scale_log2;
  void* o;
  int64_t o_row_stride;
  const int32_t* row_offsets;
  const int32_t* column_indices;
  int layout_groups, layout_row_length, layout_max_entries, layout_key_block;
};

// kStages = 2 without kLazyRefill (the default): tile j + 2 goes into the stage of tile j as soon as both
// warpgroups released it. kStages = 3 with kLazyRefill: tile j + 2 goes into the stage of tile j − 1.
// kPingPong: the warpgroups alternate issuing their products (below).
template <int kStages, bool kLazyRefill, bool kPingPong>
__global__ void __launch_bounds__(kThreads, 1)
    AttentionHopperKernel(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap k_map,
                          const __grid_constant__ CUtensorMap v_map, const HopperArguments arguments) {
  extern __shared__ unsigned char shared_raw[];
  // The dynamic shared window is only 16-byte aligned by contract: align to 1024 for the swizzle atoms.
  static_assert(!kLazyRefill || kStages >= 3, "lazy refill keeps two tiles resident");
  SharedStorage<kStages>& shared = *reinterpret_cast<SharedStorage<kStages>*>(
      (reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~static_cast<uintptr_t>(1023));

  const int query_block = blockIdx.x;
  const int head = blockIdx.y;
  const int warpgroup = threadIdx.x / 128;
  const int thread_in_group = threadIdx.x % 128;
  const int warp_in_group = thread_in_group / 32;
  const int lane = threadIdx.x % 32;
  const int query_begin = query_block * kBlockM;

  // Key tiles to visit: all, or the CSR row of (query block, head).
  int tile_count;
  int entry_begin = 0;
  int tiles_per_entry = 1;
  const int32_t* columns = nullptr;
  if (arguments.row_offsets == nullptr) {
    tile_count = (arguments.key_count + kBlockN - 1) / kBlockN;
  } else {
    const int group = arguments.layout_groups == 1 ? 0 : head;
    const int32_t* offsets = arguments.row_offsets + static_cast<int64_t>(group) * arguments.layout_row_length;
    entry_begin = offsets[query_block];
    tiles_per_entry = arguments.layout_key_block / kBlockN;
    tile_count = (offsets[query_block + 1] - entry_begin) * tiles_per_entry;
    columns = arguments.column_indices + static_cast<int64_t>(group) * arguments.layout_max_entries;
  }
  auto tile_key_begin = [&](int tile) -> int {
    if (columns == nullptr) return tile * kBlockN;
    const int entry = entry_begin + tile / tiles_per_entry;
    return columns[entry] * arguments.layout_key_block + (tile % tiles_per_entry) * kBlockN;
  };

  const bool producer = threadIdx.x == 0;
  if (producer) {
    BarrierInit(&shared.q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      BarrierInit(&shared.k_full[s], 1);
      BarrierInit(&shared.v_full[s], 1);
      BarrierInit(&shared.empty[s], kThreads);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  if (producer) {
    BarrierExpectBytes(&shared.q_full, kQueryBytes);
    TmaLoadTile(shared.q, &q_map, head, query_begin, &shared.q_full);
    for (int tile = 0; tile < kStages && tile < tile_count; ++tile) {
      const int key_begin = tile_key_begin(tile);
      BarrierExpectBytes(&shared.k_full[tile], kTileBytes);
      TmaLoadTile(shared.k[tile], &k_map, head, key_begin, &shared.k_full[tile]);
      BarrierExpectBytes(&shared.v_full[tile], kTileBytes);
      TmaLoadTile(shared.v[tile], &v_map, head, key_begin, &shared.v_full[tile]);
    }
  }

  const int group_row = warp_in_group * 16 + lane / 4;  // this thread's first row within the warpgroup
  const int pair_column = (lane % 4) * 2;
  float output[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) output[i] = 0.0f;
  float scores[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) scores[i] = 0.0f;
  uint32_t probabilities[8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};
  const float scale_log2 = arguments.scale_log2;

  // This warpgroup's 64 query rows inside each column half of the Q tile.
  const unsigned char* q_rows = shared.q + warpgroup * 64 * kHalfBytes;
  auto issue_scores = [&](int stage) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int step = 0; step < 4; ++step) {
        const uint64_t a = MatrixDescriptor(q_rows + half * kBlockM * kHalfBytes + step * 32, 16, 1024);
        const uint64_t b = MatrixDescriptor(shared.k[stage] + half * kTileHalfBytes + step * 32, 16, 1024);
        WgmmaQK(scores, a, b, half + step > 0 ? 1 : 0);
      }
    }
  };
  // Masks keys at or beyond key_count, then updates the running max/sum, rescales O, and packs P.
  auto softmax = [&](int key_begin) {
    if (key_begin + kBlockN > arguments.key_count) {
#pragma unroll
      for (int i = 0; i < 64; ++i) {
        const int key = key_begin + (i / 4) * 8 + pair_column + (i % 2);
        if (key >= arguments.key_count) scores[i] = -INFINITY;
      }
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < 16; ++j) tile_max = fmaxf(tile_max, fmaxf(scores[4 * j + 2 * half], scores[4 * j + 2 * half + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max[half], tile_max);
      const float reference = new_max == -INFINITY ? 0.0f : new_max * scale_log2;
      const float correction = FastExp2(row_max[half] * scale_log2 - reference);
      row_max[half] = new_max;
      row_sum[half] *= correction;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        output[4 * j + 2 * half] *= correction;
        output[4 * j + 2 * half + 1] *= correction;
        const float p0 = FastExp2(fmaf(scores[4 * j + 2 * half], scale_log2, -reference));
        const float p1 = FastExp2(fmaf(scores[4 * j + 2 * half + 1], scale_log2, -reference));
        scores[4 * j + 2 * half] = p0;
        scores[4 * j + 2 * half + 1] = p1;
        row_sum[half] += p0 + p1;
      }
    }
#pragma unroll
    for (int step = 0; step < 8; ++step) {
      probabilities[step][0] = PackBf16(scores[8 * step + 0], scores[8 * step + 1]);
      probabilities[step][1] = PackBf16(scores[8 * step + 2], scores[8 * step + 3]);
      probabilities[step][2] = PackBf16(scores[8 * step + 4], scores[8 * step + 5]);
      probabilities[step][3] = PackBf16(scores[8 * step + 6], scores[8 * step + 7]);
    }
  };

  BarrierWait(&shared.q_full, 0);
  if (tile_count > 0) {
    BarrierWait(&shared.k_full[0], 0);
    WgmmaFence();
    issue_scores(0);
    WgmmaCommit();
    WgmmaWait<0>();
    FenceRegisters(scores);
    softmax(tile_key_begin(0));
  }
  // Ping-pong: the two warpgroups take turns issuing their products (named barriers 3 and 4), so one's
  // softmax runs while the other's matrix products occupy the tensor cores. Warpgroup 1 lets warpgroup 0
  // go first; warpgroup 0 takes one extra turn after the loop to balance that arrival.
  const int my_turn = 3 + warpgroup, other_turn = 4 - warpgroup;
  if (kPingPong && warpgroup == 1 && tile_count > 0) asm volatile("bar.arrive 3, 256;\n" ::: "memory");
  for (int tile = 0; tile < tile_count; ++tile) {
    const int stage = tile % kStages;
    const uint32_t parity = (tile / kStages) & 1;
    const bool more = tile + 1 < tile_count;
    // S for the next tile. After the last tile this recomputes S of the current (loaded) tile and
    // discards it: one extra Q·Kᵀ per block, which keeps every wgmma out of divergent code (ptxas would
    // otherwise serialise all of them, C7520).
    const int score_tile = more ? tile + 1 : tile;  // the current tile's barrier phase has completed
    const int score_stage = score_tile % kStages;
    BarrierWait(&shared.v_full[stage], parity);
    if constexpr (kPingPong) {
      // Wait for both tiles before taking the turn, so a turn is never held while waiting for a copy.
      BarrierWait(&shared.k_full[score_stage], (score_tile / kStages) & 1);
      asm volatile("bar.sync %0, 256;\n" ::"r"(my_turn) : "memory");
    }
    FenceRegisters(output);
    WgmmaFence();
#pragma unroll
    for (int step = 0; step < 8; ++step) {
      // 16 keys per step = two 8-row groups of 1024 bytes; the second column half is 16 KB further (LBO).
      const uint64_t b = MatrixDescriptor(shared.v[stage] + step * 2048, kTileHalfBytes, 1024);
      WgmmaPV(output, probabilities[step], b);
    }
    WgmmaCommit();
    // Without ping-pong, O += P·V already runs while this waits for the next K tile.
    if constexpr (!kPingPong) BarrierWait(&shared.k_full[score_stage], (score_tile / kStages) & 1);
    FenceRegisters(scores);
    WgmmaFence();
    issue_scores(score_stage);
    WgmmaCommit();
    if (kPingPong) asm volatile("bar.arrive %0, 256;\n" ::"r"(other_turn) : "memory");
    WgmmaWait<0>();
    FenceRegisters(output);
    FenceRegisters(scores);
    FenceRegisters(probabilities);
    // K and V of this tile are no longer read by this thread's warpgroup.
    BarrierArrive(&shared.empty[stage]);
    const int freed = kLazyRefill ? tile - 1 : tile;  // the tile whose stage is refilled
    const int refill = freed + kStages;
    if (producer && freed >= 0 && refill < tile_count) {
      const int free_stage = freed % kStages;
      BarrierWait(&shared.empty[free_stage], (freed / kStages) & 1);
      const int key_begin = tile_key_begin(refill);
      BarrierExpectBytes(&shared.k_full[free_stage], kTileBytes);
      TmaLoadTile(shared.k[free_stage], &k_map, head, key_begin, &shared.k_full[free_stage]);
      BarrierExpectBytes(&shared.v_full[free_stage], kTileBytes);
      TmaLoadTile(shared.v[free_stage], &v_map, head, key_begin, &shared.v_full[free_stage]);
    }
    if (more) softmax(tile_key_begin(tile + 1));
  }

  if (kPingPong && warpgroup == 0 && tile_count > 0) asm volatile("bar.sync 3, 256;\n" ::: "memory");

  // Normalise, stage this warpgroup's 64 rows as bf16 in its part of the Q tile (same swizzled layout),
  // then 16-byte stores of the rows that exist.
  float inverse[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = row_sum[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    inverse[half] = sum > 0.0f ? 1.0f / sum : 0.0f;
  }
  unsigned char* staging = shared.q;
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const int column = j * 8 + pair_column;
    const int half = column / 64;
    const int chunk = (column % 64) / 8;
#pragma unroll
    for (int row_half = 0; row_half < 2; ++row_half) {
      const int row = warpgroup * 64 + group_row + 8 * row_half;
      unsigned char* address =
          staging + half * kBlockM * kHalfBytes + row * kHalfBytes + ((chunk ^ (row % 8)) << 4) + (column % 8) * 2;
      *reinterpret_cast<uint32_t*>(address) =
          PackBf16(output[4 * j + 2 * row_half] * inverse[row_half], output[4 * j + 2 * row_half + 1] * inverse[row_half]);
    }
  }
  asm volatile("bar.sync %0, 128;\n" ::"r"(1 + warpgroup) : "memory");
  auto* o_head = static_cast<__nv_bfloat16*>(arguments.o) + static_cast<int64_t>(head) * kHeadDim;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int id = thread_in_group + i * 128;  // 64 rows x 16 chunks
    const int row = warpgroup * 64 + id / 16;
    const int chunk = id % 16;
    const int half = chunk / 8;
    const int global_row = query_begin + row;
    if (global_row < arguments.query_count) {
      const unsigned char* address = staging + half * kBlockM * kHalfBytes + row * kHalfBytes +
                                     (((chunk % 8) ^ (row % 8)) << 4);
      *reinterpret_cast<uint4*>(o_head + static_cast<int64_t>(global_row) * arguments.o_row_stride + chunk * 8) =
          *reinterpret_cast<const uint4*>(address);
    }
  }
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiled TensorMapEncoder() {
  static EncodeTiled encoder = [] {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult result{};
    ZCUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function, 12000, cudaEnableDefault,
                                                 &result));
    ZCHECK_MSG(result == cudaDriverEntryPointSuccess && function != nullptr, "cuTensorMapEncodeTiled not available");
    return reinterpret_cast<EncodeTiled>(function);
  }();
  return encoder;
}

// [rows, heads, 128] bf16 with `row_stride` elements between rows, read in boxes of 64 x 1 x 128.
CUtensorMap MakeTensorMap(const void* base, int rows, int heads, int64_t row_stride) {
  CUtensorMap map;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(kHeadDim), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(kHeadDim) * 2, static_cast<cuuint64_t>(row_stride) * 2};
  const cuuint32_t box[3] = {64, 1, 128};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult result = TensorMapEncoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims,
                                             strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  ZCHECK_MSG(result == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed with " << static_cast<int>(result));
  return map;
}

}  // namespace

bool LaunchAttentionHopper(const AttentionArguments& arguments, cudaStream_t stream) {
  if (arguments.head_dim != kHeadDim) return false;
  if (arguments.row_offsets != nullptr && arguments.layout_key_block % kBlockN != 0) return false;
  // TMA needs 16-byte aligned bases and strides; the kernel assumes Q/K/V rows share the head layout.
  if (arguments.q_row_stride % 8 != 0 || arguments.k_row_stride % 8 != 0 || arguments.v_row_stride % 8 != 0) {
    return false;
  }
  if (arguments.key_count == 0 || arguments.query_count == 0) return false;
  const CUtensorMap q_map = MakeTensorMap(arguments.q, arguments.query_count, arguments.heads, arguments.q_row_stride);
  const CUtensorMap k_map = MakeTensorMap(arguments.k, arguments.key_count, arguments.heads, arguments.k_row_stride);
  const CUtensorMap v_map = MakeTensorMap(arguments.v, arguments.key_count, arguments.heads, arguments.v_row_stride);
  HopperArguments hopper;
  hopper.query_count = arguments.query_count;
  hopper.key_count = arguments.key_count;
  hopper.heads = arguments.heads;
  hopper.scale_log2 = arguments.scale * 1.4426950408889634f;
  hopper.o = arguments.o;
  hopper.o_row_stride = arguments.o_row_stride;
  hopper.row_offsets = arguments.row_offsets;
  hopper.column_indices = arguments.column_indices;
  hopper.layout_groups = arguments.layout_groups;
  hopper.layout_row_length = arguments.layout_row_length;
  hopper.layout_max_entries = arguments.layout_max_entries;
  hopper.layout_key_block = arguments.layout_key_block;
  const dim3 grid((arguments.query_count + kBlockM - 1) / kBlockM, arguments.heads);
  auto launch = [&](auto kernel, size_t storage_bytes) {
    const size_t shared_bytes = storage_bytes + 1024;  // + alignment slack
    ZCUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)));
    kernel<<<grid, kThreads, shared_bytes, stream>>>(q_map, k_map, v_map, hopper);
    ZCUDA_CHECK_LAUNCH();
  };
  // Default: two stages, eager refill. On H100 the three variants were within run-to-run noise of each
  // other (±5 %); the two-stage one was ahead in the latest comparison (bench/README.md).
  if (arguments.implementation == AttentionImplementation::kHopperThreeStage) {
    launch(AttentionHopperKernel<3, true, false>, sizeof(SharedStorage<3>));
  } else if (arguments.implementation == AttentionImplementation::kHopperPingPong) {
    launch(AttentionHopperKernel<3, true, true>, sizeof(SharedStorage<3>));
  } else {
    launch(AttentionHopperKernel<2, false, false>, sizeof(SharedStorage<2>));
  }
  return true;
}

}  // namespace zoetrope::cuda
