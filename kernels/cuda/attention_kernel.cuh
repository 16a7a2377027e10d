// Zoetrope's attention kernel: FlashAttention-style tiled online softmax on tensor cores.
//
// o[Lq, H, d] = softmax(q kᵀ · scale) v per head, non-causal, bf16 in and out, fp32 accumulation and
// softmax statistics. Head dims 64 and 128. Any lengths: the partial last query block is loaded with
// zero fill and not stored; keys beyond Lk are masked to −∞ inside the kernel (never padded into the
// softmax).
//
// Work split: one thread block per (query block of kQueryBlock rows, head). It visits either every key
// tile (dense) or the key blocks that a CSR layout lists for its query block (block-sparse; see
// BlockSparseLayout in kernels/backend.h). A query row that visits no key gets o = 0.
//
// Written for this project from the published algorithm (online softmax, Milakov & Gimelshein 2018;
// FlashAttention-2's work split); no code is taken from other implementations.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace zoetrope::cuda {

// Query rows per thread block and keys per inner tile; a sparse layout's query block must equal
// kAttentionQueryBlock and its key block must be a multiple of kAttentionKeyTile.
inline constexpr int kAttentionQueryBlock = 128;
inline constexpr int kAttentionKeyTile = 64;

// Which implementation LaunchAttention runs. The product uses kAuto; tests and benchmarks compare the
// others. The choice travels with each launch (the CUDA backend fixes it when it is created), so no
// launch reads the environment.
enum class AttentionImplementation {
  kAuto,               // the two-stage Hopper kernel where it applies, else mma.sync
  kMma,                // the mma.sync kernel (attention_kernel.cu)
  kHopperThreeStage,   // the three-stage Hopper variant
  kHopperPingPong,     // the three-stage Hopper variant whose warpgroups alternate
};

// "auto", "mma", "wgmma3", "pingpong" (the names the benchmarks and ZOETROPE_ATTENTION_KERNEL use);
// false, and `implementation` untouched, for anything else.
bool ParseAttentionImplementation(const char* name, AttentionImplementation* implementation);

struct AttentionArguments {
  // Device pointers to bf16 (__nv_bfloat16) data. Row n of head h starts at base + n·row_stride + h·d.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  int64_t q_row_stride = 0;  // elements between consecutive tokens (H·d for [L, H, d])
  int64_t k_row_stride = 0;
  int64_t v_row_stride = 0;
  int64_t o_row_stride = 0;
  int query_count = 0;
  int key_count = 0;
  int heads = 0;
  int head_dim = 0;  // 64 or 128
  float scale = 1.0f;

  // Optional CSR layout (device I32 arrays); row_offsets == nullptr means dense.
  const int32_t* row_offsets = nullptr;     // [groups, query_blocks + 1]
  const int32_t* column_indices = nullptr;  // [groups, max_entries]
  int layout_groups = 1;                    // 1 (shared) or heads
  int layout_row_length = 0;                // query_blocks + 1
  int layout_max_entries = 0;
  int layout_key_block = kAttentionKeyTile;  // tokens per listed key block

  AttentionImplementation implementation = AttentionImplementation::kAuto;
};

// True when `head_dim` is one the kernel is built for.
bool AttentionSupportsHeadDim(int head_dim);

// Enqueues the kernel on `stream`; no host synchronisation. Aborts on an invalid argument (ZCHECK).
//
// Two implementations compute the same function: a Hopper one (TMA + wgmma, attention_hopper.cu) for
// head dim 128 and layouts with key blocks that are multiples of 128, and the mma.sync one
// (attention_kernel.cu) for everything else; `arguments.implementation` may force one of them.
void LaunchAttention(const AttentionArguments& arguments, cudaStream_t stream);

// The Hopper kernel alone; returns false (and launches nothing) for arguments it does not handle.
bool LaunchAttentionHopper(const AttentionArguments& arguments, cudaStream_t stream);

}  // namespace zoetrope::cuda
