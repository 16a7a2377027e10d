// Block-sparse layouts of the sparse attention modes (contracts in sparse_layout.h).
//
// Radial attention, as built here. Tokens are frame-major with s = height·width tokens per frame; a query
// token in frame i at in-frame index k and a key token in frame j at in-frame index l (d = |i − j|) are
// kept under the rule of the reference implementation (mit-han-lab/radial-attention, model type wan):
//  * key frame j = 0 is the attention sink: always kept;
//  * frequency rule: with w(d) = 2^bitlen(s) / 2^bitlen(d), when w(d) < 128 the pair survives only when
//    d is a multiple of ⌊128 / w(d)⌋. The spec writes the threshold as Bk; the reference fixes it at 128
//    tokens whatever the block size, and we do the same so that the masks agree at block 64 as well.
//    The reference applies it to d = 1 too, which only bites for frames of fewer than 128 tokens (the
//    spec's "d ≤ 1 is kept" holds for every frame of 128 tokens or more, i.e. every Wan resolution);
//  * d ≤ 1: the whole frame pair is kept;
//  * otherwise the band |k − l| ≤ max(Bk, w(d)·decay).
// The reference builds this token mask per frame pair and reduces each pair on its own: a Bq×Bk block is
// kept when more than 60 % of its non-empty key columns have a column density (kept query rows / Bq)
// above 1/3. That only works when every frame is a whole number of blocks; on Wan's 480p and 720p grids
// (1,560 and 3,600 tokens per frame) blocks straddle frames and the reference fails.
//
// Generalisation: the reduction is applied to the token mask of the whole sequence, block by block,
// counting only tokens that exist: a key column's density is (kept query rows of the block) / (query
// rows of the block), which is Bq except in the last, shorter query block, and only key columns of the
// block that exist are candidates. A block kept iff 5·(columns with 3·count > rows) > 3·(columns with
// count > 0), i.e. the same two thresholds in exact integer arithmetic (the reference's float32
// comparisons agree with these: no column count or share lies within float32 rounding of 1/3 or 0.6 other
// than exact equality, which both reject). When every frame is a whole number of blocks each block lies
// in one frame pair and this is the reference's mask. One addition: the key blocks overlapping the query
// block's own tokens are always kept, so that no query row is left without keys. The rule above already
// keeps them whenever frames hold at least 128 tokens and at least one block of each side (such a block
// spans at most two adjacent frames, and d ≤ 1 pairs are then full), so this changes nothing on real
// grids; it matters only for toy frames, where the frequency rule also drops adjacent frames.
//
// Cost: per block pair the query and key token ranges split into at most a few frame segments; each pair
// of segments is classified as empty, full or banded, so most blocks are decided without looking at
// columns, and the rest count per key column in O(segments) (no L×L mask).
#include "parallel/sparse_layout.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/check.h"

namespace zoetrope {
namespace {

// The reference's fixed token threshold of the radial frequency rule (see the comment at the top).
constexpr double kRadialFrequencyThreshold = 128.0;

int64_t CeilDivide(int64_t numerator, int64_t denominator) { return (numerator + denominator - 1) / denominator; }

absl::Status ValidateGrid(const TokenGrid& grid) {
  if (grid.frames < 1) return absl::InvalidArgumentError(absl::StrCat("grid.frames must be ≥ 1, got ", grid.frames));
  if (grid.height < 1) return absl::InvalidArgumentError(absl::StrCat("grid.height must be ≥ 1, got ", grid.height));
  if (grid.width < 1) return absl::InvalidArgumentError(absl::StrCat("grid.width must be ≥ 1, got ", grid.width));
  // Positions and block products must stay far inside int64 and the CSR inside int32.
  if (grid.frames > (int64_t{1} << 20) || grid.height > (int64_t{1} << 20) || grid.width > (int64_t{1} << 20) ||
      grid.tokens() > (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("grid ", grid.frames, "x", grid.height, "x", grid.width, " is too large"));
  }
  return absl::OkStatus();
}

absl::Status ValidateBlocks(const TokenGrid& grid, const BlockShape& blocks) {
  if (blocks.query_block < 1) {
    return absl::InvalidArgumentError(absl::StrCat("query_block must be ≥ 1, got ", blocks.query_block));
  }
  if (blocks.key_block < 1) {
    return absl::InvalidArgumentError(absl::StrCat("key_block must be ≥ 1, got ", blocks.key_block));
  }
  // row_offsets are I32: every (query block, key block) pair must be countable.
  const int64_t pairs = CeilDivide(grid.tokens(), blocks.query_block) * CeilDivide(grid.tokens(), blocks.key_block);
  if (pairs > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("grid of ", grid.tokens(), " tokens has ", pairs,
                                                   " block pairs at query_block ", blocks.query_block, " key_block ",
                                                   blocks.key_block, ", more than an I32 layout can index"));
  }
  return absl::OkStatus();
}

// Collects CSR rows in order and turns them into the layout's host tensors.
class LayoutWriter {
 public:
  explicit LayoutWriter(const BlockShape& blocks) : blocks_(blocks) { offsets_.push_back(0); }
  void Add(int32_t key_block) { columns_.push_back(key_block); }
  void EndRow() { offsets_.push_back(static_cast<int32_t>(columns_.size())); }

  BlockSparseLayout Finish() const {
    BlockSparseLayout layout;
    layout.query_block = blocks_.query_block;
    layout.key_block = blocks_.key_block;
    layout.row_offsets = Tensor::Host({1, static_cast<int64_t>(offsets_.size())}, DType::kI32);
    std::copy(offsets_.begin(), offsets_.end(), layout.row_offsets.data<int32_t>());
    layout.column_indices = Tensor::Host({1, static_cast<int64_t>(columns_.size())}, DType::kI32);
    std::copy(columns_.begin(), columns_.end(), layout.column_indices.data<int32_t>());
    return layout;
  }

 private:
  BlockShape blocks_;
  std::vector<int32_t> offsets_;
  std::vector<int32_t> columns_;
};

// ---- radial ----------------------------------------------------------------------------------

enum class PairKind : uint8_t { kEmpty, kFull, kBand };

struct FramePairRule {
  PairKind kind = PairKind::kEmpty;
  int64_t window = 0;  // for kBand: keep |k − l| ≤ window
};

FramePairRule RadialFramePairRule(int64_t query_frame, int64_t key_frame, int64_t tokens_per_frame, double decay,
                                  int key_block) {
  if (key_frame == 0) return {PairKind::kFull, 0};
  const int64_t distance = std::llabs(query_frame - key_frame);
  // 2^bitlen(s) / 2^bitlen(d), a power of two (possibly below 1), exact in double.
  const double undecayed = std::ldexp(
      1.0, std::bit_width(static_cast<uint64_t>(tokens_per_frame)) - std::bit_width(static_cast<uint64_t>(distance)));
  if (undecayed < kRadialFrequencyThreshold) {
    const auto period = static_cast<int64_t>(std::floor(kRadialFrequencyThreshold / undecayed));
    if (distance % period != 0) return {PairKind::kEmpty, 0};
  }
  if (distance <= 1) return {PairKind::kFull, 0};
  // |k − l| is an integer, so |k − l| ≤ width  ⇔  |k − l| ≤ ⌊width⌋.
  const double width = std::max(static_cast<double>(key_block), undecayed * decay);
  if (width >= static_cast<double>(tokens_per_frame - 1)) return {PairKind::kFull, 0};
  return {PairKind::kBand, static_cast<int64_t>(std::floor(width))};
}

// The part of a block's token range inside one frame: in-frame indices [begin, end).
struct FrameSegment {
  int64_t frame;
  int64_t begin;
  int64_t end;
};

void SplitIntoFrames(int64_t token_begin, int64_t token_end, int64_t tokens_per_frame,
                     std::vector<FrameSegment>* segments) {
  segments->clear();
  for (int64_t frame = token_begin / tokens_per_frame; frame * tokens_per_frame < token_end; ++frame) {
    const int64_t frame_start = frame * tokens_per_frame;
    segments->push_back({frame, std::max(token_begin, frame_start) - frame_start,
                         std::min(token_end, frame_start + tokens_per_frame) - frame_start});
  }
}

// The rule of a frame pair restricted to the rectangle of two segments: a band that misses the rectangle
// is empty, one that covers it is full.
PairKind RestrictToSegments(const FramePairRule& rule, const FrameSegment& query, const FrameSegment& key) {
  if (rule.kind != PairKind::kBand) return rule.kind;
  // Smallest and largest |k − l| over k ∈ [query.begin, query.end), l ∈ [key.begin, key.end).
  int64_t nearest = 0;
  if (query.end - 1 < key.begin) nearest = key.begin - (query.end - 1);
  if (key.end - 1 < query.begin) nearest = query.begin - (key.end - 1);
  const int64_t farthest = std::max(std::llabs(query.end - 1 - key.begin), std::llabs(key.end - 1 - query.begin));
  if (nearest > rule.window) return PairKind::kEmpty;
  if (farthest <= rule.window) return PairKind::kFull;
  return PairKind::kBand;
}

class RadialBlockRule {
 public:
  RadialBlockRule(const TokenGrid& grid, double decay, int key_block)
      : frames_(grid.frames), tokens_per_frame_(grid.height * grid.width), rules_(frames_ * frames_) {
    for (int64_t i = 0; i < frames_; ++i) {
      for (int64_t j = 0; j < frames_; ++j) {
        rules_[i * frames_ + j] = RadialFramePairRule(i, j, tokens_per_frame_, decay, key_block);
      }
    }
  }

  // Whether the block of query tokens [query_begin, query_end) × key tokens [key_begin, key_end) is kept.
  bool Keep(int64_t query_begin, int64_t query_end, int64_t key_begin, int64_t key_end) {
    SplitIntoFrames(query_begin, query_end, tokens_per_frame_, &query_segments_);
    SplitIntoFrames(key_begin, key_end, tokens_per_frame_, &key_segments_);
    const int64_t rows = query_end - query_begin;
    int64_t non_empty_columns = 0, dense_columns = 0;
    for (const FrameSegment& key : key_segments_) {
      bool all_empty = true, all_full = true;
      for (const FrameSegment& query : query_segments_) {
        const PairKind kind = RestrictToSegments(Rule(query.frame, key.frame), query, key);
        all_empty = all_empty && kind == PairKind::kEmpty;
        all_full = all_full && kind == PairKind::kFull;
      }
      const int64_t columns = key.end - key.begin;
      if (all_empty) continue;
      if (all_full) {  // every column has density 1
        non_empty_columns += columns;
        dense_columns += columns;
        continue;
      }
      for (int64_t l = key.begin; l < key.end; ++l) {
        int64_t count = 0;
        for (const FrameSegment& query : query_segments_) {
          const FramePairRule& rule = Rule(query.frame, key.frame);
          if (rule.kind == PairKind::kFull) {
            count += query.end - query.begin;
          } else if (rule.kind == PairKind::kBand) {
            const int64_t low = std::max(query.begin, l - rule.window), high = std::min(query.end, l + rule.window + 1);
            if (high > low) count += high - low;
          }
        }
        if (count > 0) ++non_empty_columns;
        if (3 * count > rows) ++dense_columns;
      }
    }
    return 5 * dense_columns > 3 * non_empty_columns;
  }

 private:
  const FramePairRule& Rule(int64_t query_frame, int64_t key_frame) const {
    return rules_[query_frame * frames_ + key_frame];
  }

  const int64_t frames_;
  const int64_t tokens_per_frame_;
  std::vector<FramePairRule> rules_;
  std::vector<FrameSegment> query_segments_, key_segments_;
};

// ---- sliding tile ----------------------------------------------------------------------------

// Tile index along one axis of `extent` tokens cut into tiles of `tile` tokens, and its bounds.
struct AxisTiling {
  int64_t extent;
  int64_t tile;
  int64_t count() const { return CeilDivide(extent, tile); }
  int64_t begin(int64_t index) const { return index * tile; }
  int64_t size(int64_t index) const { return std::min(tile, extent - index * tile); }
};

// First tile of the window of `window` tiles around tile `index` on an axis of `count` tiles.
int64_t WindowStart(int64_t index, int64_t window, int64_t count) {
  return std::clamp(index - window / 2, int64_t{0}, std::max<int64_t>(0, count - window));
}

absl::Status ValidateExtent(const Extent3& extent, const char* name) {
  if (extent.frames < 1 || extent.height < 1 || extent.width < 1) {
    return absl::InvalidArgumentError(absl::StrCat(name, " must be ≥ 1 on every axis, got (", extent.frames, ", ",
                                                   extent.height, ", ", extent.width, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BlockSparseLayout> BuildDenseLayout(const TokenGrid& grid, const BlockShape& blocks) {
  if (absl::Status status = ValidateGrid(grid); !status.ok()) return status;
  if (absl::Status status = ValidateBlocks(grid, blocks); !status.ok()) return status;
  const int64_t query_blocks = CeilDivide(grid.tokens(), blocks.query_block);
  const int64_t key_blocks = CeilDivide(grid.tokens(), blocks.key_block);
  LayoutWriter writer(blocks);
  for (int64_t row = 0; row < query_blocks; ++row) {
    for (int64_t column = 0; column < key_blocks; ++column) writer.Add(static_cast<int32_t>(column));
    writer.EndRow();
  }
  return writer.Finish();
}

absl::StatusOr<BlockSparseLayout> BuildRadialLayout(const TokenGrid& grid, const RadialParameters& parameters,
                                                    const BlockShape& blocks) {
  if (absl::Status status = ValidateGrid(grid); !status.ok()) return status;
  if (absl::Status status = ValidateBlocks(grid, blocks); !status.ok()) return status;
  if (!(parameters.decay > 0.0) || !std::isfinite(parameters.decay)) {
    return absl::InvalidArgumentError(absl::StrCat("radial decay must be finite and > 0, got ", parameters.decay));
  }
  const int64_t tokens = grid.tokens();
  const int64_t query_blocks = CeilDivide(tokens, blocks.query_block);
  const int64_t key_blocks = CeilDivide(tokens, blocks.key_block);
  RadialBlockRule rule(grid, parameters.decay, blocks.key_block);
  LayoutWriter writer(blocks);
  for (int64_t row = 0; row < query_blocks; ++row) {
    const int64_t query_begin = row * blocks.query_block;
    const int64_t query_end = std::min(tokens, query_begin + blocks.query_block);
    // Key blocks overlapping this query block's own tokens (kept unconditionally, see the top comment).
    const int64_t own_first = query_begin / blocks.key_block, own_last = (query_end - 1) / blocks.key_block;
    for (int64_t column = 0; column < key_blocks; ++column) {
      const int64_t key_begin = column * blocks.key_block;
      const int64_t key_end = std::min(tokens, key_begin + blocks.key_block);
      if ((column >= own_first && column <= own_last) || rule.Keep(query_begin, query_end, key_begin, key_end)) {
        writer.Add(static_cast<int32_t>(column));
      }
    }
    writer.EndRow();
  }
  return writer.Finish();
}

int64_t RadialFramePairWindow(const TokenGrid& grid, const RadialParameters& parameters, int key_block,
                              int64_t query_frame, int64_t key_frame) {
  ZCHECK_MSG(ValidateGrid(grid).ok() && key_block >= 1 && parameters.decay > 0.0 && std::isfinite(parameters.decay) &&
                 query_frame >= 0 && query_frame < grid.frames && key_frame >= 0 && key_frame < grid.frames,
             "RadialFramePairWindow(" << grid.frames << "x" << grid.height << "x" << grid.width << ", decay "
                                      << parameters.decay << ", key_block " << key_block << ", frames " << query_frame
                                      << " -> " << key_frame << ")");
  const int64_t tokens_per_frame = grid.height * grid.width;
  const FramePairRule rule = RadialFramePairRule(query_frame, key_frame, tokens_per_frame, parameters.decay, key_block);
  switch (rule.kind) {
    case PairKind::kEmpty:
      return -1;
    case PairKind::kFull:
      return tokens_per_frame - 1;
    case PairKind::kBand:
      return std::min(rule.window, tokens_per_frame - 1);
  }
  return -1;
}

absl::StatusOr<int64_t> RadialTokenMaskEntries(const TokenGrid& grid, const RadialParameters& parameters,
                                               int key_block) {
  if (absl::Status status = ValidateGrid(grid); !status.ok()) return status;
  if (key_block < 1) return absl::InvalidArgumentError(absl::StrCat("key_block must be ≥ 1, got ", key_block));
  if (!(parameters.decay > 0.0) || !std::isfinite(parameters.decay)) {
    return absl::InvalidArgumentError(absl::StrCat("radial decay must be finite and > 0, got ", parameters.decay));
  }
  const int64_t frames = grid.frames, tokens_per_frame = grid.height * grid.width;
  // Pairs (k, l) of [0, s)² with |k − l| ≤ w: the diagonal plus 2·(s − g) pairs at each gap g = 1 … w.
  const auto band_pairs = [tokens_per_frame](int64_t window) -> int64_t {
    if (window < 0) return 0;
    return tokens_per_frame * (2 * window + 1) - window * (window + 1);
  };
  // The rule of a frame pair depends only on its distance d, except that key frame 0 is always whole (the
  // attention sink): that is F whole pairs, one per query frame. Of the other ordered pairs, F − 1 have
  // d = 0 and 2·(F − d) − 1 have d ≥ 1 (both orders, less the one whose key frame is 0); ask the rule
  // for a representative pair whose key frame is not 0.
  int64_t entries = frames * tokens_per_frame * tokens_per_frame;
  for (int64_t distance = 0; distance < frames; ++distance) {
    const int64_t pairs = distance == 0 ? frames - 1 : 2 * (frames - distance) - 1;
    if (pairs == 0) continue;
    const int64_t window = distance == 0 ? RadialFramePairWindow(grid, parameters, key_block, 1, 1)
                                         : RadialFramePairWindow(grid, parameters, key_block, 0, distance);
    entries += pairs * band_pairs(window);
  }
  return entries;
}

absl::StatusOr<BlockSparseLayout> BuildAttentionTileLayout(const TokenGrid& grid,
                                                           const AttentionTileParameters& parameters,
                                                           const BlockShape& blocks) {
  if (absl::Status status = ValidateGrid(grid); !status.ok()) return status;
  if (absl::Status status = ValidateBlocks(grid, blocks); !status.ok()) return status;
  if (parameters.reference_frames < 0 || parameters.reference_frames > grid.frames) {
    return absl::InvalidArgumentError(absl::StrCat("attention tile reference_frames must be in [0, ", grid.frames,
                                                   "] (the frame count), got ", parameters.reference_frames));
  }
  // Reference frames ⌊m·F/k⌋, m = 0 … k − 1: evenly spread, the first frame always among them, and
  // distinct because F/k ≥ 1. references_before[f] counts reference frames below f.
  const int64_t frames = grid.frames, references = parameters.reference_frames;
  std::vector<char> is_reference(frames, 0);
  for (int64_t m = 0; m < references; ++m) is_reference[m * frames / references] = 1;
  std::vector<int64_t> references_before(frames + 1, 0);
  for (int64_t f = 0; f < frames; ++f) references_before[f + 1] = references_before[f] + is_reference[f];
  const auto any_reference = [&](int64_t first, int64_t last) {
    return references_before[last + 1] - references_before[first] > 0;
  };

  const int64_t tokens = grid.tokens(), tokens_per_frame = grid.height * grid.width;
  const int64_t query_blocks = CeilDivide(tokens, blocks.query_block);
  const int64_t key_blocks = CeilDivide(tokens, blocks.key_block);
  LayoutWriter writer(blocks);
  for (int64_t row = 0; row < query_blocks; ++row) {
    const int64_t query_begin = row * blocks.query_block;
    const int64_t query_end = std::min(tokens, query_begin + blocks.query_block);
    const int64_t query_first = query_begin / tokens_per_frame, query_last = (query_end - 1) / tokens_per_frame;
    // A reference query frame attends to every frame: the whole row.
    const bool query_has_reference = any_reference(query_first, query_last);
    for (int64_t column = 0; column < key_blocks; ++column) {
      const int64_t key_begin = column * blocks.key_block;
      const int64_t key_end = std::min(tokens, key_begin + blocks.key_block);
      const int64_t key_first = key_begin / tokens_per_frame, key_last = (key_end - 1) / tokens_per_frame;
      const bool shares_a_frame = key_first <= query_last && query_first <= key_last;  // diagonal tiles
      if (query_has_reference || shares_a_frame || any_reference(key_first, key_last)) {
        writer.Add(static_cast<int32_t>(column));
      }
    }
    writer.EndRow();
  }
  return writer.Finish();
}

absl::StatusOr<SlidingTileOrder> BuildSlidingTileOrder(const TokenGrid& grid, const Extent3& tile) {
  if (absl::Status status = ValidateGrid(grid); !status.ok()) return status;
  if (absl::Status status = ValidateExtent(tile, "sliding tile size"); !status.ok()) return status;
  const AxisTiling frames{grid.frames, tile.frames}, rows{grid.height, tile.height}, columns{grid.width, tile.width};
  SlidingTileOrder order;
  order.tiles = {frames.count(), rows.count(), columns.count()};
  order.token_at.reserve(grid.tokens());
  order.tile_begin.reserve(order.tiles.frames * order.tiles.height * order.tiles.width + 1);
  for (int64_t tile_frame = 0; tile_frame < frames.count(); ++tile_frame) {
    for (int64_t tile_row = 0; tile_row < rows.count(); ++tile_row) {
      for (int64_t tile_column = 0; tile_column < columns.count(); ++tile_column) {
        order.tile_begin.push_back(static_cast<int64_t>(order.token_at.size()));
        for (int64_t f = frames.begin(tile_frame); f < frames.begin(tile_frame) + frames.size(tile_frame); ++f) {
          for (int64_t h = rows.begin(tile_row); h < rows.begin(tile_row) + rows.size(tile_row); ++h) {
            for (int64_t w = columns.begin(tile_column); w < columns.begin(tile_column) + columns.size(tile_column);
                 ++w) {
              order.token_at.push_back((f * grid.height + h) * grid.width + w);
            }
          }
        }
      }
    }
  }
  order.tile_begin.push_back(static_cast<int64_t>(order.token_at.size()));
  ZCHECK(static_cast<int64_t>(order.token_at.size()) == grid.tokens());
  order.position_of.assign(order.token_at.size(), 0);
  for (size_t position = 0; position < order.token_at.size(); ++position) {
    order.position_of[order.token_at[position]] = static_cast<int64_t>(position);
  }
  return order;
}

absl::StatusOr<BlockSparseLayout> BuildSlidingTileLayout(const TokenGrid& grid, const SlidingTileParameters& parameters,
                                                         const BlockShape& blocks) {
  if (absl::Status status = ValidateBlocks(grid, blocks); !status.ok()) return status;
  if (absl::Status status = ValidateExtent(parameters.window, "sliding tile window"); !status.ok()) return status;
  absl::StatusOr<SlidingTileOrder> order = BuildSlidingTileOrder(grid, parameters.tile);
  if (!order.ok()) return order.status();
  const Extent3 tiles = order->tiles;
  const std::vector<int64_t>& tile_begin = order->tile_begin;
  const int64_t tokens = grid.tokens();
  const int64_t query_blocks = CeilDivide(tokens, blocks.query_block);
  const int64_t key_blocks = CeilDivide(tokens, blocks.key_block);
  // Per query block: mark the key blocks touched by the window of each of its query tiles. Tiles are
  // contiguous in tile-major order, so a block's tiles are a contiguous range of tile indices.
  std::vector<char> marked(key_blocks, 0);
  LayoutWriter writer(blocks);
  int64_t first_tile = 0;  // the tile holding the query block's first position
  for (int64_t row = 0; row < query_blocks; ++row) {
    const int64_t query_begin = row * blocks.query_block;
    const int64_t query_end = std::min(tokens, query_begin + blocks.query_block);
    while (tile_begin[first_tile + 1] <= query_begin) ++first_tile;
    std::fill(marked.begin(), marked.end(), 0);
    // tile_begin ends with L ≥ query_end, so the loop stops after the last tile.
    for (int64_t tile = first_tile; tile_begin[tile] < query_end; ++tile) {
      const int64_t tile_frame = tile / (tiles.height * tiles.width);
      const int64_t tile_row = tile / tiles.width % tiles.height, tile_column = tile % tiles.width;
      const int64_t frame_start = WindowStart(tile_frame, parameters.window.frames, tiles.frames);
      const int64_t row_start = WindowStart(tile_row, parameters.window.height, tiles.height);
      const int64_t column_start = WindowStart(tile_column, parameters.window.width, tiles.width);
      for (int64_t f = frame_start; f < std::min(tiles.frames, frame_start + parameters.window.frames); ++f) {
        for (int64_t h = row_start; h < std::min(tiles.height, row_start + parameters.window.height); ++h) {
          for (int64_t w = column_start; w < std::min(tiles.width, column_start + parameters.window.width); ++w) {
            const int64_t key_tile = (f * tiles.height + h) * tiles.width + w;
            const int64_t first_block = tile_begin[key_tile] / blocks.key_block;
            const int64_t last_block = (tile_begin[key_tile + 1] - 1) / blocks.key_block;
            std::fill(marked.begin() + first_block, marked.begin() + last_block + 1, 1);
          }
        }
      }
    }
    for (int64_t column = 0; column < key_blocks; ++column) {
      if (marked[column]) writer.Add(static_cast<int32_t>(column));
    }
    writer.EndRow();
  }
  return writer.Finish();
}

double BlockDensity(const BlockSparseLayout& layout, int64_t key_tokens) {
  ZCHECK_MSG(layout.row_offsets.defined() && layout.row_offsets.rank() == 2 && layout.row_offsets.dim(1) >= 1 &&
                 layout.row_offsets.dtype() == DType::kI32 && layout.key_block >= 1 && key_tokens >= 1,
             "BlockDensity of a malformed layout " << layout.row_offsets.DebugString() << " keys " << key_tokens);
  const int64_t groups = layout.row_offsets.dim(0), row_length = layout.row_offsets.dim(1);
  const int64_t query_blocks = row_length - 1, key_blocks = CeilDivide(key_tokens, layout.key_block);
  if (query_blocks == 0) return 0.0;
  int64_t computed = 0;
  for (int64_t group = 0; group < groups; ++group) {
    const int32_t* offsets = layout.row_offsets.data<int32_t>() + group * row_length;
    computed += offsets[query_blocks] - offsets[0];
  }
  return static_cast<double>(computed) / static_cast<double>(groups * query_blocks * key_blocks);
}

absl::StatusOr<BlockSparseLayout> BuildSparseLayout(const SparseLayoutRequest& request) {
  switch (request.mode) {
    case SparseLayoutMode::kDense:
      return BuildDenseLayout(request.grid, request.blocks);
    case SparseLayoutMode::kRadial:
      return BuildRadialLayout(request.grid, request.radial, request.blocks);
    case SparseLayoutMode::kAttentionTile:
      return BuildAttentionTileLayout(request.grid, request.attention_tile, request.blocks);
    case SparseLayoutMode::kSlidingTile:
      return BuildSlidingTileLayout(request.grid, request.sliding_tile, request.blocks);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown sparse layout mode ", static_cast<int>(request.mode)));
}

std::string SparseLayoutCache::Key(const SparseLayoutRequest& request) {
  std::string key =
      absl::StrCat(SparsityPlanModeName(request.mode), " grid ", request.grid.frames, "x", request.grid.height, "x",
                   request.grid.width, " blocks ", request.blocks.query_block, "x", request.blocks.key_block);
  switch (request.mode) {
    case SparseLayoutMode::kDense:
      break;
    case SparseLayoutMode::kRadial:
      // The bit pattern, so two decays that print alike never share a mask.
      absl::StrAppend(&key, " decay ", std::bit_cast<uint64_t>(request.radial.decay));
      break;
    case SparseLayoutMode::kAttentionTile:
      absl::StrAppend(&key, " references ", request.attention_tile.reference_frames);
      break;
    case SparseLayoutMode::kSlidingTile: {
      const SlidingTileParameters& sliding = request.sliding_tile;
      absl::StrAppend(&key, " tile ", sliding.tile.frames, "x", sliding.tile.height, "x", sliding.tile.width,
                      " window ", sliding.window.frames, "x", sliding.window.height, "x", sliding.window.width);
      break;
    }
  }
  return key;
}

absl::StatusOr<std::shared_ptr<const BlockSparseLayout>> SparseLayoutCache::Get(const SparseLayoutRequest& request) {
  const std::string key = Key(request);
  {
    absl::MutexLock lock(&mutex_);
    for (auto entry = entries_.begin(); entry != entries_.end(); ++entry) {
      if (entry->first != key) continue;
      auto found = *entry;  // move to the most recently used end
      entries_.erase(entry);
      entries_.push_back(found);
      return found.second;
    }
  }
  // Built outside the lock so that a long build never blocks lookups of other layouts.
  absl::StatusOr<BlockSparseLayout> built = BuildSparseLayout(request);
  if (!built.ok()) return built.status();
  auto layout = std::make_shared<const BlockSparseLayout>(*std::move(built));
  absl::MutexLock lock(&mutex_);
  for (const auto& entry : entries_) {
    if (entry.first == key) return entry.second;  // another thread built it meanwhile: share one copy
  }
  if (entries_.size() >= capacity_) entries_.erase(entries_.begin());
  entries_.emplace_back(key, layout);
  return std::shared_ptr<const BlockSparseLayout>(layout);
}

size_t SparseLayoutCache::size() const {
  absl::MutexLock lock(&mutex_);
  return entries_.size();
}

SparseLayoutRequest LayoutRequest(const AttentionMode& attention, const TokenGrid& grid, const BlockShape& blocks) {
  SparseLayoutRequest request;
  request.mode = attention.mode;
  request.grid = grid;
  request.blocks = blocks;
  request.radial = attention.radial;
  request.attention_tile = attention.attention_tile;
  request.sliding_tile = attention.sliding_tile;
  return request;
}

absl::StatusOr<BlockSparseLayout> BuildSiteLayout(const SiteAttention& site, const TokenGrid& grid,
                                                  const BlockShape& blocks) {
  if (site.groups.empty()) return absl::InvalidArgumentError("a site without head groups has no layout");
  if (site.uniform()) return BuildSparseLayout(LayoutRequest(site.uniform_mode(), grid, blocks));
  if (site.tile_major()) {
    return absl::InvalidArgumentError(
        "sliding-tile cannot share a site with another mode: it re-orders the tokens of every head");
  }
  std::vector<BlockSparseLayout> group_layouts;
  int64_t heads = 0, max_entries = 0;
  for (const HeadGroup& group : site.groups) {
    absl::StatusOr<BlockSparseLayout> layout = BuildSparseLayout(LayoutRequest(group.attention, grid, blocks));
    if (!layout.ok()) return layout.status();
    max_entries = std::max(max_entries, layout->column_indices.dim(1));
    heads += group.head_count;
    group_layouts.push_back(*std::move(layout));
  }
  const int64_t row_length = group_layouts.front().row_offsets.dim(1);
  BlockSparseLayout combined;
  combined.query_block = blocks.query_block;
  combined.key_block = blocks.key_block;
  combined.row_offsets = Tensor::Host({heads, row_length}, DType::kI32);
  combined.column_indices = Tensor::Host({heads, max_entries}, DType::kI32);
  int32_t* offsets = combined.row_offsets.data<int32_t>();
  int32_t* columns = combined.column_indices.data<int32_t>();
  std::fill(columns, columns + heads * max_entries, -1);
  int64_t head = 0;
  for (size_t index = 0; index < site.groups.size(); ++index) {
    const BlockSparseLayout& layout = group_layouts[index];
    const int32_t* group_offsets = layout.row_offsets.data<int32_t>();
    const int32_t* group_columns = layout.column_indices.data<int32_t>();
    const int64_t entries = layout.column_indices.dim(1);
    for (int count = 0; count < site.groups[index].head_count; ++count, ++head) {
      std::copy(group_offsets, group_offsets + row_length, offsets + head * row_length);
      std::copy(group_columns, group_columns + entries, columns + head * max_entries);
    }
  }
  return combined;
}

}  // namespace zoetrope
