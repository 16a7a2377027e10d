#include "parallel/planned_attention.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/check.h"
#include "parallel/sparse_layout.h"

namespace zoetrope {
namespace {

std::string GridKey(const TokenGrid& grid) { return absl::StrCat(grid.frames, "x", grid.height, "x", grid.width); }

// Names everything a site's layout depends on: the grid and, per head group, its heads and mode parameters
// (SparseLayoutCache::Key spells a mode's parameters and the grid out in full).
std::string SiteKey(const SiteAttention& attention, const TokenGrid& grid) {
  if (attention.uniform()) return SparseLayoutCache::Key(LayoutRequest(attention.uniform_mode(), grid));
  std::string key = "heads";
  for (const HeadGroup& group : attention.groups) {
    absl::StrAppend(&key, "|", group.first_head, "+", group.head_count, ":",
                    SparseLayoutCache::Key(LayoutRequest(group.attention, grid)));
  }
  return key;
}

Tensor HostIndices(const std::vector<int64_t>& values) {
  Tensor tensor = Tensor::Host({static_cast<int64_t>(values.size())}, DType::kI32);
  int32_t* data = tensor.data<int32_t>();
  for (size_t i = 0; i < values.size(); ++i) data[i] = static_cast<int32_t>(values[i]);
  return tensor;
}

// out[n] = x[order[n]] over the token axis of a [L, H, d] tensor.
Tensor GatherTokens(Backend& backend, const Tensor& x, const Tensor& order) {
  const int64_t tokens = x.dim(0), width = x.dim(1) * x.dim(2);
  return backend.GatherRows(x.View({tokens, width}), order, x.dtype()).View(x.shape());
}

}  // namespace

PlannedAttention::PlannedAttention(SparsityPlan plan, int steps) : plan_(std::move(plan)), steps_(steps) {}

double PlannedAttention::mean_block_density() const { return calls_ == 0 ? 1.0 : density_sum_ / calls_; }

const PlannedAttention::DeviceLayout& PlannedAttention::LayoutFor(Backend& backend, const SiteAttention& attention,
                                                                  const TokenGrid& grid) {
  const std::string key = SiteKey(attention, grid);
  auto found = layouts_.find(key);
  if (found != layouts_.end()) return found->second;
  // The plan was validated against this model and request, and the grid came from a validated latent shape:
  // a failure here is a bug, not bad input.
  absl::StatusOr<BlockSparseLayout> host = BuildSiteLayout(attention, grid);
  ZCHECK_MSG(host.ok(), "sparse layout for " << key << ": " << host.status().ToString());
  DeviceLayout device;
  device.density = BlockDensity(*host, grid.tokens());
  device.layout.query_block = host->query_block;
  device.layout.key_block = host->key_block;
  device.layout.row_offsets = backend.Upload(host->row_offsets, DType::kI32);
  device.layout.column_indices = backend.Upload(host->column_indices, DType::kI32);
  return layouts_.emplace(key, std::move(device)).first->second;
}

const PlannedAttention::DevicePermutation& PlannedAttention::PermutationFor(Backend& backend,
                                                                            const SlidingTileParameters& parameters,
                                                                            const TokenGrid& grid) {
  const std::string key =
      absl::StrCat(GridKey(grid), "/", parameters.tile.frames, "x", parameters.tile.height, "x", parameters.tile.width);
  auto found = permutations_.find(key);
  if (found != permutations_.end()) return found->second;
  absl::StatusOr<SlidingTileOrder> order = BuildSlidingTileOrder(grid, parameters.tile);
  ZCHECK_MSG(order.ok(), "sliding tile order for " << key << ": " << order.status().ToString());
  DevicePermutation permutation;
  permutation.to_tile_major = backend.Upload(HostIndices(order->token_at), DType::kI32);
  permutation.to_frame_major = backend.Upload(HostIndices(order->position_of), DType::kI32);
  return permutations_.emplace(key, std::move(permutation)).first->second;
}

Tensor PlannedAttention::Attend(Backend& backend, const Tensor& q, const Tensor& k, const Tensor& v,
                                const AttentionSite& site) {
  ZCHECK_MSG(q.rank() == 3 && q.dim(0) == site.grid.tokens(), "PlannedAttention needs the whole sequence: q "
                                                                  << q.DebugString() << " for " << site.grid.tokens()
                                                                  << " tokens");
  const SiteAttention attention = plan_.Resolve(site.block, site.step, steps_, static_cast<int>(q.dim(1)));
  ++calls_;
  if (attention.dense()) {
    density_sum_ += 1.0;
    return backend.Attention(q, k, v, site.scale, /*layout=*/nullptr);
  }
  const DeviceLayout& layout = LayoutFor(backend, attention, site.grid);
  density_sum_ += layout.density;
  if (!attention.tile_major()) return backend.Attention(q, k, v, site.scale, &layout.layout);
  // A validated plan runs sliding tile on every head of a site or on none, with one tile size.
  const DevicePermutation& permutation =
      PermutationFor(backend, attention.groups.front().attention.sliding_tile, site.grid);
  const Tensor out = backend.Attention(GatherTokens(backend, q, permutation.to_tile_major),
                                       GatherTokens(backend, k, permutation.to_tile_major),
                                       GatherTokens(backend, v, permutation.to_tile_major), site.scale, &layout.layout);
  return GatherTokens(backend, out, permutation.to_frame_major);
}

}  // namespace zoetrope
