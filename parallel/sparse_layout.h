// Block-sparse attention layouts for the sparse attention modes of shared spec/sparse-attention.md.
//
// Every mode runs on the one block-sparse attention kernel (Backend::Attention with a
// BlockSparseLayout): each builder here turns a token-level rule on the latent grid into the CSR list of
// key blocks each query block visits. The builders are deterministic CPU code; they never materialise an
// L×L token mask (Wan 720p has 75,600 tokens), they work per frame pair, per tile or per block.
//
// Contract of every layout returned here:
//  * Self-attention over the tokens of a TokenGrid (L = grid.tokens() queries and keys).
//  * Token order: frame-major (n = f·height·width + h·width + w), except the sliding tile layout, which
//    is in the tile-major order of SlidingTileOrder (permute q, k, v into it before the kernel and the
//    output back after it).
//  * query_block / key_block tokens per block; query blocks = ⌈L / query_block⌉, key blocks =
//    ⌈L / key_block⌉. The last block of each side is shorter when L is not a multiple of the block size:
//    the kernel masks it by bounds, it is never padded.
//  * row_offsets: host I32 [1, query_blocks + 1], starting at 0, non-decreasing; column_indices: host
//    I32 [1, entries], the key blocks of each row strictly increasing and in [0, key_blocks). One group
//    (shared by all heads). Every query block lists at least one key block.
//  * Layouts handed out by SparseLayoutCache are shared: callers read them, they never write into them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kernels/backend.h"
#include "parallel/attention_mode.h"
#include "parallel/sequence_attention.h"
#include "parallel/sparsity_plan.h"

namespace zoetrope {

// Tokens per query block and per key block of the kernel.
struct BlockShape {
  int query_block = 128;
  int key_block = 128;
};

// Every block of the sequence: the dense path of the block-sparse kernel.
absl::StatusOr<BlockSparseLayout> BuildDenseLayout(const TokenGrid& grid, const BlockShape& blocks = {});

// Radial attention (spec §1). Reproduces the block mask of the reference implementation
// (mit-han-lab/radial-attention, gen_log_mask_shrinked, model type wan) exactly when every frame holds
// a whole number of blocks (height·width a multiple of query_block = key_block), and generalises it to
// every grid by applying the same block reduction to the token mask of the whole sequence; see the
// comment at the top of sparse_layout.cc for the exact rule.
absl::StatusOr<BlockSparseLayout> BuildRadialLayout(const TokenGrid& grid, const RadialParameters& parameters,
                                                    const BlockShape& blocks = {});

// The token-level radial rule of one (query frame, key frame) pair, the mask BuildRadialLayout reduces to
// blocks (rule at the top of sparse_layout.cc; `key_block` is the Bk of its band max(Bk, w(d)·decay)):
// query token k and key token l of the two frames (in-frame indices) are kept iff |k − l| ≤ the returned
// window. −1 keeps no pair, height·width − 1 the whole frame pair. Exposed so that tests can measure the
// mask itself (kept entries, attention mass it drops). Arguments must be valid (frames in range, decay
// finite and > 0, key_block ≥ 1); anything else is a programming error and aborts.
int64_t RadialFramePairWindow(const TokenGrid& grid, const RadialParameters& parameters, int key_block,
                              int64_t query_frame, int64_t key_frame);

// Kept (query token, key token) pairs of that token-level mask over the whole grid, before any block
// reduction: the kind of count the radial paper's O(n log n) bound (its appendix A.1) is stated for.
// Counted per frame distance in O(frames), never materialising the L×L mask.
absl::StatusOr<int64_t> RadialTokenMaskEntries(const TokenGrid& grid, const RadialParameters& parameters,
                                               int key_block = 128);

// Attention tile k:(F − k) (spec §2), frame-major token order. Reference frames are
// r_m = ⌊m·F / k⌋ for m = 0 … k − 1 (uniform, starting at the first frame). A block is kept when any of
// its (query frame, key frame) pairs is kept.
absl::StatusOr<BlockSparseLayout> BuildAttentionTileLayout(const TokenGrid& grid,
                                                           const AttentionTileParameters& parameters,
                                                           const BlockShape& blocks = {});

// The tile-major token order of sliding tile attention. Tiles of `tile` tokens cover the grid from its
// origin; the last tile along an axis is shorter when the grid is not divisible by the tile (variable
// boundary tiles). Tiles are ordered in raster order of their tile coordinates (frames, height,
// width), tokens in raster order inside their tile.
struct SlidingTileOrder {
  Extent3 tiles;                     // tile counts per axis
  std::vector<int64_t> token_at;     // [L]: tile-major position p -> frame-major token token_at[p]
  std::vector<int64_t> position_of;  // [L]: inverse, frame-major token n -> position_of[n]
  std::vector<int64_t> tile_begin;   // [tile count + 1]: tile t holds positions [tile_begin[t], tile_begin[t + 1])
};
absl::StatusOr<SlidingTileOrder> BuildSlidingTileOrder(const TokenGrid& grid, const Extent3& tile);

// Sliding tile attention 3D (spec §3) in the tile-major order of BuildSlidingTileOrder(grid,
// parameters.tile). A query tile sees the key tiles of a window of parameters.window tiles per axis
// whose start is clamped into the grid: start = clamp(q − ⌊W/2⌋, 0, n − W) (for odd W, the spec's
// centre clamped to [⌊W/2⌋, n − 1 − ⌊W/2⌋]; with n ≤ W tiles the window is the whole axis). A block is
// kept when any of its (query token, key token) pairs is kept; blocks are fully dense or empty only when
// tiles are whole multiples of the block size.
absl::StatusOr<BlockSparseLayout> BuildSlidingTileLayout(const TokenGrid& grid, const SlidingTileParameters& parameters,
                                                         const BlockShape& blocks = {});

// Block density = computed blocks / all blocks, summed over the layout's groups, for a layout over
// `key_tokens` keys (the spec's sparsity report; sparsity = 1 − density).
double BlockDensity(const BlockSparseLayout& layout, int64_t key_tokens);

// One layout request: the mode, the parameters of that mode (the others are ignored), grid and blocks.
struct SparseLayoutRequest {
  SparseLayoutMode mode = SparseLayoutMode::kDense;
  TokenGrid grid;
  BlockShape blocks;
  RadialParameters radial;
  AttentionTileParameters attention_tile;
  SlidingTileParameters sliding_tile;
};
absl::StatusOr<BlockSparseLayout> BuildSparseLayout(const SparseLayoutRequest& request);

// Memoises BuildSparseLayout for the few (mode, parameters, grid, blocks) combinations a worker sees, so
// every DiT block and step after the first gets its layout for a lookup. The key holds every field the
// layout depends on, so a different resolution or frame count never gets a stale mask. Holds at most
// `capacity` layouts, dropping the least recently used. Thread-safe.
class SparseLayoutCache {
 public:
  explicit SparseLayoutCache(size_t capacity = 16) : capacity_(capacity == 0 ? 1 : capacity) {}

  absl::StatusOr<std::shared_ptr<const BlockSparseLayout>> Get(const SparseLayoutRequest& request);
  size_t size() const;

  // The canonical cache key of a request (only the parameters of its mode count).
  static std::string Key(const SparseLayoutRequest& request);

 private:
  const size_t capacity_;
  mutable absl::Mutex mutex_;
  // Most recently used last.
  std::vector<std::pair<std::string, std::shared_ptr<const BlockSparseLayout>>> entries_ ABSL_GUARDED_BY(mutex_);
};

// The layout request of `attention` for a grid.
SparseLayoutRequest LayoutRequest(const AttentionMode& attention, const TokenGrid& grid, const BlockShape& blocks = {});

// The layout Backend::Attention gets for a site on `grid`, exactly as the kernel reads it:
//  * uniform site: BuildSparseLayout of its mode, one group shared by all heads (for a dense site this is
//    the full layout; callers that check site.dense() pass nullptr to the kernel instead);
//  * per-head site: groups = the site's head count, group h holding head h's layout; row_offsets
//    [heads, query_blocks + 1] as built per head, column_indices [heads, max entries over heads], the
//    unused tail of a head's row of column_indices filled with -1 (never read: row_offsets bound it).
// A per-head site mixing sliding tile with another mode is an error (Validate rejects such plans).
// Token order is tile-major when site.tile_major(), frame-major otherwise.
absl::StatusOr<BlockSparseLayout> BuildSiteLayout(const SiteAttention& site, const TokenGrid& grid,
                                                  const BlockShape& blocks = {});

}  // namespace zoetrope
