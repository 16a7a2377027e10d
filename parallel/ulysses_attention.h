// Ulysses sequence parallelism (DeepSpeed-Ulysses) for the DiT's self-attention, one instance per rank.
//
// Every rank holds a contiguous token shard of the sequence (TokenShard) and computes q, k, v for its own
// tokens and every head. Attention needs every token, so Attend
//   1. all-to-alls q, k, v from [L_r, H, d] (own tokens, all heads) to [L, H_r, d] (all tokens, the
//      rank's heads: the contiguous global head range HeadShard(H, P, rank)),
//   2. runs the inner attention on the whole sequence for those heads: the dense kernel, or the sparsity
//      plan's layout for its heads (spec/sparse-attention.md §8: after the first all-to-all every mode
//      applies unchanged, only the head subset differs, so a per-head plan is split with the heads),
//   3. all-to-alls the output back from [L, H_r, d] to [L_r, H, d].
// The result is the one-device attention of the rank's shard: the collectives and gathers only move bytes
// and every head still sees every key in the same order (the whole DiT forward on P CPU ranks differs from
// one device by ~2e-7 relative, from the other kernels' row blocking over shards of another size).
//
// Uneven splits, and why: the token count rarely divides by P (9×16×16 = 2304 tokens on 5 ranks) and
// Wan's head counts (12, 40) do not divide by every P (12 heads on 5 ranks). Shards and head groups are
// both the balanced split of BalancedSplit (the first total mod P parts one larger), and the all-to-alls
// carry a different size per peer (Communicator::AllToAll is the variable "v" form). That is exact for
// every (tokens, heads, P), needs no padding tokens (which would change the softmax unless masked) and no
// padded heads (which would cost ⌈H/P⌉·P − H heads of compute and traffic on every call for nothing);
// the load imbalance, ⌈H/P⌉ heads on the busiest rank, is the same as padding's. With P > H some ranks get
// no heads: they still take part in both all-to-alls (sending their tokens, receiving their share of the
// output) and skip the kernel.
//
// Overlap (head chunks): with head_chunks = C > 1 the heads are split into C contiguous chunks, each an
// independent Ulysses problem, and the chunks are pipelined: chunk c+1's all-to-all is started before
// chunk c's attention runs, and chunk c's output all-to-all runs while chunk c+1 computes. On a
// communicator with its own stream (NCCL, CUDA loopback) the transfers then overlap the attention kernels;
// on the in-process CPU one they simply run in turn. Results are the same for every C (each head still
// sees every key; only the ranks' head assignment changes).
//
// Not thread-safe: one instance per rank thread, called in the same order on every rank of the group
// (it issues two collectives per call). A failed collective is a broken group, not bad input: it aborts
// with the communicator's error.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <utility>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/planned_attention.h"
#include "parallel/sequence_attention.h"
#include "parallel/sparsity_plan.h"

namespace zoetrope {

// A contiguous range [begin, begin + count) of tokens or heads.
struct ShardRange {
  int64_t begin = 0;
  int64_t count = 0;
};

// Part `index` of `total` items split into `parts` ≥ 1 contiguous parts in order, the first total mod parts
// parts one item larger than the others. Preconditions: total ≥ 0, 0 ≤ index < parts.
ShardRange BalancedSplit(int64_t total, int parts, int index);
// The token shard of `rank` among `ranks`: what ForwardShard gets as (shard_begin, shard_count).
inline ShardRange TokenShard(int64_t tokens, int ranks, int rank) { return BalancedSplit(tokens, ranks, rank); }
// The global heads whose whole-sequence attention `rank` computes.
inline ShardRange HeadShard(int64_t heads, int ranks, int rank) { return BalancedSplit(heads, ranks, rank); }

// The plan as seen by the heads [heads.begin, heads.begin + heads.count) renumbered from 0: head ranges
// are intersected with those heads and shifted, and rules whose heads all lie outside are dropped (they
// can never match a local head, so first-match order is unchanged for the others). Resolving the result
// with heads.count heads gives the rank's slice of resolving `plan` with all heads. heads.count ≥ 1.
SparsityPlan PlanForHeads(const SparsityPlan& plan, ShardRange heads);

class UlyssesAttention final : public SequenceAttention {
 public:
  // Dense attention. `communicator` is this rank's and must outlive the instance; head_chunks ≥ 1 (above).
  explicit UlyssesAttention(Communicator& communicator, int head_chunks = 1);
  // Plan-driven attention: `plan` and `steps` as for PlannedAttention (validated against the model's
  // global head count); each rank runs its heads' part of it.
  UlyssesAttention(Communicator& communicator, SparsityPlan plan, int steps, int head_chunks = 1);
  ~UlyssesAttention() override;

  // q, k, v: this rank's token shard [TokenShard(site.grid.tokens(), P, rank).count, H, d] (RoPE applied),
  // the same H and dtype on every rank. Returns the attention output of the shard, same shape and dtype.
  Tensor Attend(Backend& backend, const Tensor& q, const Tensor& k, const Tensor& v,
                const AttentionSite& site) override;

  // Mean block density over this rank's heads of every call so far (1 before the first call, for dense
  // attention and for a rank without heads).
  double mean_block_density() const override;
  // The group's figure, every global head of every call weighted equally: Σ_r H_r·density_r / H. A
  // collective (one all-reduce): every rank must call it at the same point.
  absl::StatusOr<double> GroupMeanBlockDensity(Backend& backend);
  int64_t calls() const { return calls_; }

 private:
  // One head chunk: global heads [heads.begin, +count), of which peer p computes the chunk-relative
  // HeadShard(heads.count, P, p).
  struct Chunk {
    ShardRange heads;
    ShardRange own;   // this rank's heads, chunk-relative
    Tensor pack;      // I32 [3·L_r·H_c]: stacked q|k|v [3, L_r, H] -> peer pieces [P][3, L_r, H_c,p]
    Tensor unpack;    // I32 [3·L·H_c,r]: received pieces [P][3, L_p, H_c,r] -> [3, L, H_c,r]
  };
  // Row orders of the GatherRows of a call, over rows of d elements (so any head dim shares them),
  // uploaded once per (tokens, heads).
  struct Orders {
    std::vector<Chunk> chunks;
    Tensor assemble;  // I32 [L_r·H]: returned pieces, chunk-major then [P][L_r, H_c,p] -> [L_r, H]
  };
  const Orders& OrdersFor(Backend& backend, int64_t tokens, int64_t heads);
  // This rank's heads over all chunks.
  int64_t LocalHeads() const;

  Communicator& communicator_;
  std::optional<SparsityPlan> plan_;
  int steps_ = 0;
  int head_chunks_ = 1;
  int64_t heads_ = 0;  // global head count, fixed by the first call
  // Per chunk, for the rank's heads of that chunk, when there is a plan and heads.
  std::vector<std::unique_ptr<PlannedAttention>> inner_;
  std::vector<int64_t> inner_heads_;  // their head counts
  std::map<std::pair<int64_t, int64_t>, Orders> orders_;
  int64_t calls_ = 0;
};

}  // namespace zoetrope
