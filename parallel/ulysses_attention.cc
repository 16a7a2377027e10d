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

UlyssesAttention::UlyssesAttention(Communicator& communicator) : communicator_(communicator) {}

UlyssesAttention::UlyssesAttention(Communicator& communicator, SparsityPlan plan, int steps)
    : communicator_(communicator), plan_(std::move(plan)), steps_(steps) {}

UlyssesAttention::~UlyssesAttention() = default;

double UlyssesAttention::mean_block_density() const { return inner_ ? inner_->mean_block_density() : 1.0; }

absl::StatusOr<double> UlyssesAttention::GroupMeanBlockDensity(Backend& backend) {
  const int64_t local_heads = heads_ == 0 ? 0 : HeadShard(heads_, communicator_.size(), communicator_.rank()).count;
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
  std::vector<ShardRange> token_shards, head_shards;
  for (int p = 0; p < ranks; ++p) {
    token_shards.push_back(TokenShard(tokens, ranks, p));
    head_shards.push_back(HeadShard(heads, ranks, p));
  }
  const int64_t local_tokens = token_shards[rank].count, local_heads = head_shards[rank].count;

  // Pack: peer p's chunk is [3, L_r, H_p] (q, k, v; own tokens; p's heads), taken from the stacked
  // [3, L_r, H] rows, chunks in peer order.
  std::vector<int64_t> pack;
  pack.reserve(static_cast<size_t>(3 * local_tokens * heads));
  for (int p = 0; p < ranks; ++p) {
    for (int64_t i = 0; i < 3; ++i) {
      for (int64_t t = 0; t < local_tokens; ++t) {
        for (int64_t h = head_shards[p].begin; h < head_shards[p].begin + head_shards[p].count; ++h) {
          pack.push_back((i * local_tokens + t) * heads + h);
        }
      }
    }
  }
  // Unpack: peer p's chunk [3, L_p, H_r] sits at row 3·b_p·H_r of the receive buffer (chunks in peer
  // order, so the offset is 3·H_r times the tokens before p); target [3, L, H_r] in token order.
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
  // Assemble: peer p returns [L_r, H_p] (own tokens, p's heads) at row L_r·h0_p; target [L_r, H].
  std::vector<int64_t> assemble;
  assemble.reserve(static_cast<size_t>(local_tokens * heads));
  for (int64_t t = 0; t < local_tokens; ++t) {
    for (int p = 0; p < ranks; ++p) {
      for (int64_t h = 0; h < head_shards[p].count; ++h) {
        assemble.push_back(local_tokens * head_shards[p].begin + t * head_shards[p].count + h);
      }
    }
  }
  Orders orders;
  orders.pack = UploadOrder(backend, pack);
  orders.unpack = UploadOrder(backend, unpack);
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
  const ShardRange own_heads = HeadShard(heads, ranks, rank);
  const DType dtype = q.dtype();
  const Orders& orders = OrdersFor(backend, tokens, heads);
  ++calls_;

  // 1. Stack q, k, v ([3, L_r, H, d]) so that one gather packs all three per peer and one all-to-all
  //    moves them: one rendezvous per direction instead of three.
  const int64_t slab = local_tokens * heads * head_dim;
  const Tensor stacked = backend.Empty({3, slab}, dtype);
  if (slab > 0) {
    backend.CopyInto(stacked.Rows(0, 1), q);
    backend.CopyInto(stacked.Rows(1, 1), k);
    backend.CopyInto(stacked.Rows(2, 1), v);
  }
  const Tensor packed = GatherRowsOf(backend, stacked, orders.pack, head_dim);
  const Tensor received = backend.Empty({3 * tokens * own_heads.count, head_dim}, dtype);
  std::vector<Tensor> send, receive;
  for (int p = 0; p < ranks; ++p) {
    const ShardRange their_heads = HeadShard(heads, ranks, p);
    const ShardRange their_tokens = TokenShard(tokens, ranks, p);
    send.push_back(packed.Rows(3 * local_tokens * their_heads.begin, 3 * local_tokens * their_heads.count));
    receive.push_back(
        received.Rows(3 * their_tokens.begin * own_heads.count, 3 * their_tokens.count * own_heads.count));
  }
  CheckCollective(communicator_.AllToAll(backend, send, receive), "all-to-all of q, k, v");

  // 2. Whole-sequence attention for the rank's heads.
  Tensor output;
  if (own_heads.count == 0) {
    output = backend.Empty({tokens, 0, head_dim}, dtype);
  } else {
    const Tensor full = GatherRowsOf(backend, received, orders.unpack, head_dim).View({3, -1});
    const Shape local_shape = {tokens, own_heads.count, head_dim};
    const Tensor full_q = full.Rows(0, 1).View(local_shape);
    const Tensor full_k = full.Rows(1, 1).View(local_shape);
    const Tensor full_v = full.Rows(2, 1).View(local_shape);
    if (plan_) {
      if (!inner_) inner_ = std::make_unique<PlannedAttention>(PlanForHeads(*plan_, own_heads), steps_);
      output = inner_->Attend(backend, full_q, full_k, full_v, site);
    } else {
      output = backend.Attention(full_q, full_k, full_v, site.scale, /*layout=*/nullptr);
    }
  }

  // 3. Back to the token shards: peer p's tokens of the output are a contiguous row range, sent as is.
  const Tensor returned = backend.Empty({local_tokens * heads, head_dim}, dtype);
  send.clear();
  receive.clear();
  for (int p = 0; p < ranks; ++p) {
    const ShardRange their_heads = HeadShard(heads, ranks, p);
    const ShardRange their_tokens = TokenShard(tokens, ranks, p);
    send.push_back(output.Rows(their_tokens.begin, their_tokens.count));
    receive.push_back(returned.Rows(local_tokens * their_heads.begin, local_tokens * their_heads.count));
  }
  CheckCollective(communicator_.AllToAll(backend, send, receive), "all-to-all of the output");
  return GatherRowsOf(backend, returned, orders.assemble, head_dim).View({local_tokens, heads, head_dim});
}

}  // namespace zoetrope
