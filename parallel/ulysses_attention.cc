#include "parallel/ulysses_attention.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/check.h"

namespace zoetrope {
namespace {

Tensor UploadOrder(Backend& backend, const std::vector<int64_t>& order) {
  ZCHECK_MSG(order.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
             "Ulysses row order of " << order.size() << " rows does not fit I32");
  Tensor host = Tensor::Host({static_cast<int64_t>(order.size())}, DType::kI32);
  int32_t* data = host.data<int32_t>();
  for (size_t i = 0; i < order.size(); ++i) data[i] = static_cast<int32_t>(order[i]);
  return backend.Upload(host, DType::kI32);
}

// out[n, :] = rows[order[n], :] for rows of `width` elements; an empty order gives an empty result without
// a kernel call.
Tensor GatherRowsOf(Backend& backend, const Tensor& rows, const Tensor& order, int64_t width) {
  const int64_t count = order.numel();
  if (count == 0) return backend.Empty({0, width}, rows.dtype());
  return backend.GatherRows(rows.View({rows.numel() / width, width}), order, rows.dtype());
}

void CheckCollective(const absl::Status& status, const char* what) {
  ZCHECK_MSG(status.ok(), "Ulysses " << what << ": " << status.ToString());
}

}  // namespace

ShardRange BalancedSplit(int64_t total, int parts, int index) {
  ZCHECK_MSG(total >= 0 && parts >= 1 && index >= 0 && index < parts,
             "split of " << total << " into " << parts << " parts, part " << index);
  const int64_t base = total / parts, larger = total % parts;
  ShardRange range;
  range.count = base + (index < larger ? 1 : 0);
  range.begin = index * base + std::min<int64_t>(index, larger);
  return range;
}

SparsityPlan PlanForHeads(const SparsityPlan& plan, ShardRange heads) {
  ZCHECK_MSG(heads.count >= 1, "PlanForHeads needs at least one head");
  SparsityPlan local = plan;
  local.rules.clear();
  const int64_t first = heads.begin, last = heads.begin + heads.count - 1;
  for (const SparsityRule& rule : plan.rules) {
    SparsityRule shifted = rule;
    if (rule.heads) {
      const int64_t begin = std::max<int64_t>(rule.heads->first, first);
      const int64_t end = std::min<int64_t>(rule.heads->last, last);
      if (begin > end) continue;
      shifted.heads = IndexRange{static_cast<int>(begin - first), static_cast<int>(end - first)};
    }
    local.rules.push_back(std::move(shifted));
  }
  return local;
}

UlyssesAttention::UlyssesAttention(Communicator& communicator, int head_chunks)
    : communicator_(communicator), head_chunks_(head_chunks) {
  ZCHECK_MSG(head_chunks >= 1, "Ulysses head chunks must be ≥ 1, got " << head_chunks);
}

UlyssesAttention::UlyssesAttention(Communicator& communicator, SparsityPlan plan, int steps, int head_chunks)
    : communicator_(communicator), plan_(std::move(plan)), steps_(steps), head_chunks_(head_chunks) {
  ZCHECK_MSG(head_chunks >= 1, "Ulysses head chunks must be ≥ 1, got " << head_chunks);
}

UlyssesAttention::~UlyssesAttention() = default;

double UlyssesAttention::mean_block_density() const {
  double weighted = 0.0;
  int64_t heads = 0;
  for (size_t c = 0; c < inner_.size(); ++c) {
    if (!inner_[c]) continue;
    weighted += static_cast<double>(inner_heads_[c]) * inner_[c]->mean_block_density();
    heads += inner_heads_[c];
  }
  return heads > 0 ? weighted / static_cast<double>(heads) : 1.0;
}

int64_t UlyssesAttention::LocalHeads() const {
  if (heads_ == 0) return 0;
  const int ranks = communicator_.size(), rank = communicator_.rank();
  const int chunks = static_cast<int>(std::min<int64_t>(head_chunks_, heads_));
  int64_t local = 0;
  for (int c = 0; c < chunks; ++c) local += HeadShard(BalancedSplit(heads_, chunks, c).count, ranks, rank).count;
  return local;
}

absl::StatusOr<double> UlyssesAttention::GroupMeanBlockDensity(Backend& backend) {
  const int64_t local_heads = LocalHeads();
  Tensor sums = Tensor::Host({2}, DType::kF32);
  sums.data<float>()[0] = static_cast<float>(local_heads * mean_block_density());
  sums.data<float>()[1] = static_cast<float>(local_heads);
  const Tensor device = backend.Upload(sums, DType::kF32);
  if (absl::Status status = communicator_.AllReduceSum(backend, device); !status.ok()) return status;
  const std::vector<float> total = ToFloatVector(backend.ToHost(device));
  return total[1] > 0 ? total[0] / total[1] : 1.0;
}

const UlyssesAttention::Orders& UlyssesAttention::OrdersFor(Backend& backend, int64_t tokens, int64_t heads) {
  const auto key = std::make_pair(tokens, heads);
  auto found = orders_.find(key);
  if (found != orders_.end()) return found->second;
  const int ranks = communicator_.size(), rank = communicator_.rank();
  const int chunks = static_cast<int>(std::min<int64_t>(head_chunks_, heads));
  std::vector<ShardRange> token_shards;
  for (int p = 0; p < ranks; ++p) token_shards.push_back(TokenShard(tokens, ranks, p));
  const int64_t local_tokens = token_shards[rank].count;

  Orders orders;
  std::vector<std::vector<ShardRange>> chunk_head_shards;  // [chunk][peer], chunk-relative
  for (int c = 0; c < chunks; ++c) {
    Chunk chunk;
    chunk.heads = BalancedSplit(heads, chunks, c);
    std::vector<ShardRange> head_shards;
    for (int p = 0; p < ranks; ++p) head_shards.push_back(HeadShard(chunk.heads.count, ranks, p));
    chunk.own = head_shards[rank];
    const int64_t local_heads = chunk.own.count;
    // Pack: peer p's piece is [3, L_r, H_c,p] (q, k, v; own tokens; p's heads of the chunk), taken from
    // the stacked [3, L_r, H] rows, pieces in peer order.
    std::vector<int64_t> pack;
    pack.reserve(static_cast<size_t>(3 * local_tokens * chunk.heads.count));
    for (int p = 0; p < ranks; ++p) {
      for (int64_t i = 0; i < 3; ++i) {
        for (int64_t t = 0; t < local_tokens; ++t) {
          for (int64_t h = 0; h < head_shards[p].count; ++h) {
            pack.push_back((i * local_tokens + t) * heads + chunk.heads.begin + head_shards[p].begin + h);
          }
        }
      }
    }
    // Unpack: peer p's piece [3, L_p, H_c,r] sits at row 3·b_p·H_c,r of the receive buffer (pieces in peer
    // order, so the offset is 3·H_c,r times the tokens before p); target [3, L, H_c,r] in token order.
    std::vector<int64_t> unpack;
    unpack.reserve(static_cast<size_t>(3 * tokens * local_heads));
    for (int64_t i = 0; i < 3; ++i) {
      for (int p = 0; p < ranks; ++p) {
        const int64_t offset = 3 * token_shards[p].begin * local_heads;
        for (int64_t t = 0; t < token_shards[p].count; ++t) {
          for (int64_t h = 0; h < local_heads; ++h) {
            unpack.push_back(offset + (i * token_shards[p].count + t) * local_heads + h);
          }
        }
      }
    }
    chunk.pack = UploadOrder(backend, pack);
    chunk.unpack = UploadOrder(backend, unpack);
    orders.chunks.push_back(std::move(chunk));
    chunk_head_shards.push_back(std::move(head_shards));
  }
  // Assemble: chunk c's pieces start at row L_r·b_c (chunk-major); peer p returns [L_r, H_c,p] (own tokens,
  // p's heads of the chunk) at row L_r·h0_p within it; target [L_r, H] in global head order.
  std::vector<int64_t> assemble;
  assemble.reserve(static_cast<size_t>(local_tokens * heads));
  for (int64_t t = 0; t < local_tokens; ++t) {
    for (int c = 0; c < chunks; ++c) {
      const int64_t base = local_tokens * orders.chunks[c].heads.begin;
      for (const ShardRange& shard : chunk_head_shards[c]) {
        for (int64_t h = 0; h < shard.count; ++h) {
          assemble.push_back(base + local_tokens * shard.begin + t * shard.count + h);
        }
      }
    }
  }
  orders.assemble = UploadOrder(backend, assemble);
  return orders_.emplace(key, std::move(orders)).first->second;
}

Tensor UlyssesAttention::Attend(Backend& backend, const Tensor& q, const Tensor& k, const Tensor& v,
                                const AttentionSite& site) {
  const int ranks = communicator_.size(), rank = communicator_.rank();
  const int64_t tokens = site.grid.tokens();
  ZCHECK_MSG(q.rank() == 3 && k.shape() == q.shape() && v.shape() == q.shape() && k.dtype() == q.dtype() &&
                 v.dtype() == q.dtype(),
             "Ulysses q " << q.DebugString() << ", k " << k.DebugString() << ", v " << v.DebugString());
  const int64_t local_tokens = q.dim(0), heads = q.dim(1), head_dim = q.dim(2);
  const ShardRange own_tokens = TokenShard(tokens, ranks, rank);
  ZCHECK_MSG(local_tokens == own_tokens.count, "Ulysses rank " << rank << " of " << ranks << " holds " << local_tokens
                                                               << " tokens, its shard of " << tokens << " has "
                                                               << own_tokens.count);
  ZCHECK_MSG(heads_ == 0 || heads_ == heads, "Ulysses head count changed from " << heads_ << " to " << heads);
  heads_ = heads;
  const DType dtype = q.dtype();
  const Orders& orders = OrdersFor(backend, tokens, heads);
  const int chunks = static_cast<int>(orders.chunks.size());
  if (inner_.empty()) {
    inner_.resize(chunks);
    inner_heads_.assign(chunks, 0);
    for (int c = 0; c < chunks; ++c) {
      const Chunk& chunk = orders.chunks[c];
      inner_heads_[c] = chunk.own.count;
      if (plan_ && chunk.own.count > 0) {
        inner_[c] = std::make_unique<PlannedAttention>(
            PlanForHeads(*plan_, {chunk.heads.begin + chunk.own.begin, chunk.own.count}), steps_);
      }
    }
  }
  ++calls_;

  // Stack q, k, v ([3, L_r, H, d]) so that one gather packs all three per peer and one all-to-all per
  // chunk moves them: one rendezvous per direction and chunk instead of three.
  const int64_t slab = local_tokens * heads * head_dim;
  const Tensor stacked = backend.Empty({3, slab}, dtype);
  if (slab > 0) {
    backend.CopyInto(stacked.Rows(0, 1), q);
    backend.CopyInto(stacked.Rows(1, 1), k);
    backend.CopyInto(stacked.Rows(2, 1), v);
  }
  // Every buffer a started collective reads or writes lives until the end of the call.
  std::vector<Tensor> packed(chunks), received(chunks), outputs(chunks);
  std::vector<std::unique_ptr<PendingCollective>> inbound(chunks), outbound(chunks);
  const Tensor returned = backend.Empty({local_tokens * heads, head_dim}, dtype);
  auto start_inbound = [&](int c) {
    const Chunk& chunk = orders.chunks[c];
    packed[c] = GatherRowsOf(backend, stacked, chunk.pack, head_dim);
    received[c] = backend.Empty({3 * tokens * chunk.own.count, head_dim}, dtype);
    std::vector<Tensor> send, receive;
    for (int p = 0; p < ranks; ++p) {
      const ShardRange their_heads = HeadShard(chunk.heads.count, ranks, p);
      const ShardRange their_tokens = TokenShard(tokens, ranks, p);
      send.push_back(packed[c].Rows(3 * local_tokens * their_heads.begin, 3 * local_tokens * their_heads.count));
      receive.push_back(
          received[c].Rows(3 * their_tokens.begin * chunk.own.count, 3 * their_tokens.count * chunk.own.count));
    }
    absl::StatusOr<std::unique_ptr<PendingCollective>> started = communicator_.StartAllToAll(backend, send, receive);
    CheckCollective(started.status(), "all-to-all of q, k, v");
    inbound[c] = *std::move(started);
  };

  start_inbound(0);
  for (int c = 0; c < chunks; ++c) {
    const Chunk& chunk = orders.chunks[c];
    // The next chunk's transfer goes out before this chunk's attention, so the two can overlap.
    if (c + 1 < chunks) start_inbound(c + 1);
    CheckCollective(inbound[c]->Wait(backend), "all-to-all of q, k, v");
    // Whole-sequence attention for the rank's heads of the chunk.
    if (chunk.own.count == 0) {
      outputs[c] = backend.Empty({tokens, 0, head_dim}, dtype);
    } else {
      const Tensor full = GatherRowsOf(backend, received[c], chunk.unpack, head_dim).View({3, -1});
      const Shape local_shape = {tokens, chunk.own.count, head_dim};
      const Tensor full_q = full.Rows(0, 1).View(local_shape);
      const Tensor full_k = full.Rows(1, 1).View(local_shape);
      const Tensor full_v = full.Rows(2, 1).View(local_shape);
      outputs[c] = inner_[c] ? inner_[c]->Attend(backend, full_q, full_k, full_v, site)
                             : backend.Attention(full_q, full_k, full_v, site.scale, /*layout=*/nullptr);
    }
    // Back to the token shards: peer p's tokens of the output are a contiguous row range, sent as is, into
    // the chunk's section of `returned`.
    std::vector<Tensor> send, receive;
    const int64_t base = local_tokens * chunk.heads.begin;
    for (int p = 0; p < ranks; ++p) {
      const ShardRange their_heads = HeadShard(chunk.heads.count, ranks, p);
      const ShardRange their_tokens = TokenShard(tokens, ranks, p);
      send.push_back(outputs[c].Rows(their_tokens.begin, their_tokens.count));
      receive.push_back(returned.Rows(base + local_tokens * their_heads.begin, local_tokens * their_heads.count));
    }
    absl::StatusOr<std::unique_ptr<PendingCollective>> started = communicator_.StartAllToAll(backend, send, receive);
    CheckCollective(started.status(), "all-to-all of the output");
    outbound[c] = *std::move(started);
  }
  for (int c = 0; c < chunks; ++c) CheckCollective(outbound[c]->Wait(backend), "all-to-all of the output");
  return GatherRowsOf(backend, returned, orders.assemble, head_dim).View({local_tokens, heads, head_dim});
}

}  // namespace zoetrope
