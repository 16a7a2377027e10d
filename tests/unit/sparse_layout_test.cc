// The block-sparse layouts of parallel/sparse_layout.h against token-level constructions written here
// straight from shared spec/sparse-attention.md (O(L²) on small grids), against an independent Python
// model of the radial reference implementation (tests/reference/radial_mask_reference.py), and through
// the CPU block-sparse attention kernel against attention computed in double.
#include "parallel/sparse_layout.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/numerics.h"

#ifndef ZOETROPE_REFERENCE_PYTHON
#error "ZOETROPE_REFERENCE_PYTHON must name the python with numpy (set by tests/CMakeLists.txt)"
#endif
#ifndef ZOETROPE_RADIAL_REFERENCE_SCRIPT
#error "ZOETROPE_RADIAL_REFERENCE_SCRIPT must name tests/reference/radial_mask_reference.py"
#endif

namespace zoetrope {
namespace {

// A dense 0/1 block mask, row-major [query_blocks, key_blocks].
struct BlockMask {
  int64_t rows = 0;
  int64_t columns = 0;
  std::vector<char> kept;
  bool at(int64_t row, int64_t column) const { return kept[row * columns + column] != 0; }
  double density() const {
    return static_cast<double>(std::count(kept.begin(), kept.end(), 1)) / static_cast<double>(kept.size());
  }
};

int64_t Blocks(int64_t tokens, int block) { return (tokens + block - 1) / block; }

// Checks the CSR contract of sparse_layout.h and expands the layout into a block mask.
BlockMask ExpandChecked(const BlockSparseLayout& layout, int64_t tokens, int query_block, int key_block) {
  BlockMask mask;
  EXPECT_EQ(layout.query_block, query_block);
  EXPECT_EQ(layout.key_block, key_block);
  mask.rows = Blocks(tokens, query_block);
  mask.columns = Blocks(tokens, key_block);
  mask.kept.assign(mask.rows * mask.columns, 0);
  EXPECT_EQ(layout.row_offsets.dtype(), DType::kI32);
  EXPECT_EQ(layout.column_indices.dtype(), DType::kI32);
  EXPECT_EQ(layout.row_offsets.shape(), (Shape{1, mask.rows + 1}));
  if (layout.row_offsets.shape() != Shape{1, mask.rows + 1} || layout.column_indices.rank() != 2) return mask;
  const int32_t* offsets = layout.row_offsets.data<int32_t>();
  const int32_t* columns = layout.column_indices.data<int32_t>();
  EXPECT_EQ(offsets[0], 0);
  EXPECT_EQ(offsets[mask.rows], layout.column_indices.dim(1));
  for (int64_t row = 0; row < mask.rows; ++row) {
    EXPECT_LT(offsets[row], offsets[row + 1]) << "query block " << row << " lists no key block";
    for (int32_t entry = offsets[row]; entry < offsets[row + 1]; ++entry) {
      if (entry >= layout.column_indices.dim(1)) {
        ADD_FAILURE() << "row " << row << " entry " << entry << " past the end";
        return mask;
      }
      EXPECT_TRUE(columns[entry] >= 0 && columns[entry] < mask.columns) << "row " << row << ": " << columns[entry];
      if (entry > offsets[row]) {
        EXPECT_LT(columns[entry - 1], columns[entry]) << "row " << row << " not increasing";
      }
      if (columns[entry] >= 0 && columns[entry] < mask.columns) mask.kept[row * mask.columns + columns[entry]] = 1;
    }
  }
  return mask;
}

BlockMask ExpandOrDie(const absl::StatusOr<BlockSparseLayout>& layout, int64_t tokens, int query_block, int key_block) {
  EXPECT_TRUE(layout.ok()) << layout.status();
  if (!layout.ok()) return {};
  return ExpandChecked(*layout, tokens, query_block, key_block);
}

void ExpectSameMask(const BlockMask& expected, const BlockMask& actual) {
  ASSERT_EQ(expected.rows, actual.rows);
  ASSERT_EQ(expected.columns, actual.columns);
  int64_t differences = 0;
  for (int64_t row = 0; row < expected.rows; ++row) {
    for (int64_t column = 0; column < expected.columns; ++column) {
      if (expected.at(row, column) != actual.at(row, column) && ++differences <= 5) {
        ADD_FAILURE() << "block (" << row << ", " << column << "): expected " << expected.at(row, column) << " got "
                      << actual.at(row, column);
      }
    }
  }
  EXPECT_EQ(differences, 0);
}

// ---- token-level rules, straight from the spec -----------------------------------------------

int BinaryLength(int64_t value) {  // Python's int.bit_length()
  int length = 0;
  for (; value > 0; value /= 2) ++length;
  return length;
}

// Spec §1 with the reference's details: the frequency threshold is 128 tokens and applies at d = 1 too.
bool RadialTokenKept(int64_t query, int64_t key, int64_t tokens_per_frame, double decay, int key_block) {
  const int64_t query_frame = query / tokens_per_frame, key_frame = key / tokens_per_frame;
  if (key_frame == 0) return true;  // attention sink
  const int64_t distance = std::abs(query_frame - key_frame);
  const double length = std::pow(2.0, BinaryLength(tokens_per_frame)) / std::pow(2.0, BinaryLength(distance));
  if (length < 128.0 && distance % static_cast<int64_t>(128.0 / length) != 0) return false;
  if (distance <= 1) return true;
  const int64_t gap = std::abs(query % tokens_per_frame - key % tokens_per_frame);
  return static_cast<double>(gap) <= std::max(static_cast<double>(key_block), length * decay);
}

// The reference's block reduction over the tokens that exist, plus the blocks of the query block's own
// tokens (sparse_layout.cc keeps them so that no query row goes without keys).
BlockMask ReduceByDensity(int64_t tokens, int query_block, int key_block,
                          const std::function<bool(int64_t, int64_t)>& kept) {
  BlockMask mask;
  mask.rows = Blocks(tokens, query_block);
  mask.columns = Blocks(tokens, key_block);
  mask.kept.assign(mask.rows * mask.columns, 0);
  for (int64_t row = 0; row < mask.rows; ++row) {
    const int64_t query_begin = row * query_block, query_end = std::min(tokens, query_begin + query_block);
    for (int64_t column = 0; column < mask.columns; ++column) {
      const int64_t key_begin = column * key_block, key_end = std::min(tokens, key_begin + key_block);
      int64_t non_empty = 0, dense = 0;
      for (int64_t key = key_begin; key < key_end; ++key) {
        int64_t count = 0;
        for (int64_t query = query_begin; query < query_end; ++query) count += kept(query, key) ? 1 : 0;
        const double density = static_cast<double>(count) / static_cast<double>(query_end - query_begin);
        if (density > 0) ++non_empty;
        if (density > 1.0 / 3.0) ++dense;
      }
      const bool own_tokens = key_begin < query_end && query_begin < key_end;
      const bool by_density = non_empty > 0 && static_cast<double>(dense) / static_cast<double>(non_empty) > 0.6;
      mask.kept[row * mask.columns + column] = own_tokens || by_density;
    }
  }
  return mask;
}

// Any kept token pair keeps its block; `position` maps a frame-major token to its position in the
// kernel's order (identity unless the mode permutes).
BlockMask ReduceByAny(int64_t tokens, int query_block, int key_block, const std::function<bool(int64_t, int64_t)>& kept,
                      const std::function<int64_t(int64_t)>& position) {
  BlockMask mask;
  mask.rows = Blocks(tokens, query_block);
  mask.columns = Blocks(tokens, key_block);
  mask.kept.assign(mask.rows * mask.columns, 0);
  for (int64_t query = 0; query < tokens; ++query) {
    for (int64_t key = 0; key < tokens; ++key) {
      if (kept(query, key)) mask.kept[position(query) / query_block * mask.columns + position(key) / key_block] = 1;
    }
  }
  return mask;
}

int64_t Identity(int64_t token) { return token; }

// Spec §2: reference frames ⌊m·F/k⌋.
std::function<bool(int64_t, int64_t)> AttentionTileRule(const TokenGrid& grid, int64_t references) {
  std::vector<bool> is_reference(grid.frames, false);
  for (int64_t m = 0; m < references; ++m) is_reference[m * grid.frames / references] = true;
  const int64_t tokens_per_frame = grid.height * grid.width;
  return [is_reference, tokens_per_frame](int64_t query, int64_t key) {
    const int64_t query_frame = query / tokens_per_frame, key_frame = key / tokens_per_frame;
    return query_frame == key_frame || is_reference[query_frame] || is_reference[key_frame];
  };
}

// Spec §3 on one axis: the query tile's centre clamped to [W/2, n − 1 − W/2] (the whole axis when
// there are fewer than W tiles); odd windows only.
bool InSlidingWindow(int64_t query_tile, int64_t key_tile, int64_t window, int64_t tile_count) {
  if (tile_count <= window) return true;
  const int64_t centre = std::clamp(query_tile, window / 2, tile_count - 1 - window / 2);
  return std::abs(key_tile - centre) <= window / 2;
}

std::function<bool(int64_t, int64_t)> SlidingTileRule(const TokenGrid& grid, const SlidingTileParameters& parameters) {
  const auto tiles = [&](int64_t extent, int64_t tile) { return (extent + tile - 1) / tile; };
  const int64_t tile_frames = tiles(grid.frames, parameters.tile.frames);
  const int64_t tile_rows = tiles(grid.height, parameters.tile.height);
  const int64_t tile_columns = tiles(grid.width, parameters.tile.width);
  return [=](int64_t query, int64_t key) {
    const int64_t plane = grid.height * grid.width;
    const int64_t qf = query / plane / parameters.tile.frames, kf = key / plane / parameters.tile.frames;
    const int64_t qh = query % plane / grid.width / parameters.tile.height;
    const int64_t kh = key % plane / grid.width / parameters.tile.height;
    const int64_t qw = query % grid.width / parameters.tile.width, kw = key % grid.width / parameters.tile.width;
    return InSlidingWindow(qf, kf, parameters.window.frames, tile_frames) &&
           InSlidingWindow(qh, kh, parameters.window.height, tile_rows) &&
           InSlidingWindow(qw, kw, parameters.window.width, tile_columns);
  };
}

// The tile-major order by sorting tokens on (tile coordinates, coordinates inside the tile).
std::vector<int64_t> SortedTileOrder(const TokenGrid& grid, const Extent3& tile) {
  std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>> keyed;
  for (int64_t f = 0; f < grid.frames; ++f) {
    for (int64_t h = 0; h < grid.height; ++h) {
      for (int64_t w = 0; w < grid.width; ++w) {
        keyed.emplace_back(f / tile.frames, h / tile.height, w / tile.width, f, h, w,
                           (f * grid.height + h) * grid.width + w);
      }
    }
  }
  std::sort(keyed.begin(), keyed.end());
  std::vector<int64_t> order;
  for (const auto& entry : keyed) order.push_back(std::get<6>(entry));
  return order;
}

// ---- radial ----------------------------------------------------------------------------------

struct RadialCase {
  TokenGrid grid;
  double decay;
  int query_block;
  int key_block;
};

TEST(RadialLayoutTest, MatchesTheTokenRuleReducedToBlocks) {
  const std::vector<RadialCase> cases = {
      {{10, 8, 16}, 0.2, 128, 128},  // 128 tokens per frame: whole blocks
      {{12, 8, 20}, 0.2, 64, 64},    // 160 per frame: blocks straddle frames
      {{7, 9, 13}, 0.5, 64, 64},     // 819 tokens: a partial last block
      {{9, 20, 30}, 0.2, 128, 128},  // 600 per frame: banded pairs, partial last block (5,400 tokens)
      {{21, 6, 13}, 0.2, 128, 128},  // 78 per frame: the frequency rule at many distances
      {{6, 10, 10}, 0.3, 64, 32},    // rectangular blocks
      {{33, 4, 8}, 0.2, 128, 128},   // 32-token frames: blocks span many frames
      {{5, 3, 3}, 1.0, 128, 128},    // one partial block
  };
  for (const RadialCase& test_case : cases) {
    const TokenGrid& grid = test_case.grid;
    SCOPED_TRACE(absl::StrCat(grid.frames, "x", grid.height, "x", grid.width, " decay ", test_case.decay, " blocks ",
                              test_case.query_block, "x", test_case.key_block));
    const int64_t tokens_per_frame = grid.height * grid.width;
    const BlockMask expected =
        ReduceByDensity(grid.tokens(), test_case.query_block, test_case.key_block, [&](int64_t query, int64_t key) {
          return RadialTokenKept(query, key, tokens_per_frame, test_case.decay, test_case.key_block);
        });
    const BlockMask actual =
        ExpandOrDie(BuildRadialLayout(grid, {test_case.decay}, {test_case.query_block, test_case.key_block}),
                    grid.tokens(), test_case.query_block, test_case.key_block);
    ExpectSameMask(expected, actual);
    std::printf("radial %lldx%lldx%lld decay %g blocks %dx%d: density %.4f\n", static_cast<long long>(grid.frames),
                static_cast<long long>(grid.height), static_cast<long long>(grid.width), test_case.decay,
                test_case.query_block, test_case.key_block, actual.density());
  }
}

double TimedRadialDensity(const TokenGrid& grid, double* seconds) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<BlockSparseLayout> layout = BuildRadialLayout(grid, {0.2});
  *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(layout.ok()) << layout.status();
  if (!layout.ok()) return -1;
  ExpandChecked(*layout, grid.tokens(), 128, 128);
  return BlockDensity(*layout, grid.tokens());
}

TEST(RadialLayoutTest, DensityOfTheReferenceGrid) {
  // 768×1280, 69 frames: 18×48×80 = 69,120 tokens; the reference gives 0.2871 (shared anchors.md).
  double seconds = 0;
  const double density = TimedRadialDensity({18, 48, 80}, &seconds);
  std::printf("radial 18x48x80 decay 0.2: block density %.6f (built in %.3f s)\n", density, seconds);
  EXPECT_NEAR(density, 0.2871, 0.00005);
}

TEST(RadialLayoutTest, WanGridsWhoseFramesAreNotWholeBlocks) {
  // 480p (1,560 tokens per frame) and 720p (3,600 per frame), where the reference fails.
  for (const TokenGrid& grid : {TokenGrid{21, 30, 52}, TokenGrid{21, 45, 80}}) {
    double seconds = 0;
    const double density = TimedRadialDensity(grid, &seconds);
    std::printf("radial %lldx%lldx%lld (%lld tokens) decay 0.2: block density %.6f (built in %.3f s)\n",
                static_cast<long long>(grid.frames), static_cast<long long>(grid.height),
                static_cast<long long>(grid.width), static_cast<long long>(grid.tokens()), density, seconds);
    EXPECT_GT(density, 0.05);
    EXPECT_LT(density, 0.9);
    EXPECT_LT(seconds, 10.0);
  }
}

// Reads the file radial_mask_reference.py writes: per case a header and rows of '0'/'1'.
std::vector<BlockMask> ReadReferenceMasks(const std::string& path) {
  std::vector<BlockMask> masks;
  std::ifstream input(path);
  std::string line;
  while (std::getline(input, line)) {
    std::istringstream header(line);
    std::string word, frames, height, width, decay, block;
    BlockMask mask;
    header >> word >> frames >> height >> width >> decay >> block >> mask.rows >> mask.columns;
    EXPECT_EQ(word, "case");
    for (int64_t row = 0; row < mask.rows && std::getline(input, line); ++row) {
      EXPECT_EQ(static_cast<int64_t>(line.size()), mask.columns);
      for (char bit : line) mask.kept.push_back(bit == '1');
    }
    masks.push_back(std::move(mask));
  }
  return masks;
}

TEST(RadialLayoutTest, MatchesThePythonModelOfTheReference) {
  const std::vector<RadialCase> cases = {
      {{18, 48, 80}, 0.2, 128, 128}, {{33, 16, 16}, 0.2, 128, 128}, {{40, 8, 16}, 0.5, 128, 128},
      {{70, 16, 16}, 0.3, 128, 128}, {{30, 16, 48}, 0.2, 128, 128}, {{25, 12, 16}, 0.2, 64, 64},
      {{17, 8, 8}, 1.0, 64, 64},     {{12, 8, 8}, 0.2, 64, 64},
  };
  const std::string output = absl::StrCat(::testing::TempDir(), "radial_reference_", getpid(), ".txt");
  std::string command =
      absl::StrCat(ZOETROPE_REFERENCE_PYTHON, " ", ZOETROPE_RADIAL_REFERENCE_SCRIPT, " --output ", output);
  for (const RadialCase& test_case : cases) {
    absl::StrAppend(&command, " --case ", test_case.grid.frames, " ", test_case.grid.height, " ", test_case.grid.width,
                    " ", test_case.decay, " ", test_case.query_block);
  }
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  const std::vector<BlockMask> reference = ReadReferenceMasks(output);
  std::remove(output.c_str());
  ASSERT_EQ(reference.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const RadialCase& test_case = cases[i];
    SCOPED_TRACE(absl::StrCat(test_case.grid.frames, "x", test_case.grid.height, "x", test_case.grid.width, " decay ",
                              test_case.decay, " block ", test_case.query_block));
    const BlockMask ours =
        ExpandOrDie(BuildRadialLayout(test_case.grid, {test_case.decay}, {test_case.query_block, test_case.key_block}),
                    test_case.grid.tokens(), test_case.query_block, test_case.key_block);
    ExpectSameMask(reference[i], ours);
    std::printf("radial %lldx%lldx%lld decay %g block %d: C++ density %.6f, Python reference %.6f\n",
                static_cast<long long>(test_case.grid.frames), static_cast<long long>(test_case.grid.height),
                static_cast<long long>(test_case.grid.width), test_case.decay, test_case.query_block, ours.density(),
                reference[i].density());
  }
}

// ---- attention tile --------------------------------------------------------------------------

TEST(AttentionTileLayoutTest, MatchesTheFrameTileRuleReducedToBlocks) {
  struct Case {
    TokenGrid grid;
    int64_t references;
    int query_block;
    int key_block;
  };
  const std::vector<Case> cases = {
      {{12, 4, 8}, 3, 64, 64}, {{9, 5, 7}, 2, 64, 64},     {{9, 5, 7}, 0, 32, 32},
      {{9, 5, 7}, 9, 32, 32},  {{21, 3, 13}, 3, 128, 128}, {{16, 2, 5}, 4, 64, 16},
  };
  for (const Case& test_case : cases) {
    SCOPED_TRACE(absl::StrCat(test_case.grid.frames, "x", test_case.grid.height, "x", test_case.grid.width, " k ",
                              test_case.references));
    const BlockMask expected = ReduceByAny(test_case.grid.tokens(), test_case.query_block, test_case.key_block,
                                           AttentionTileRule(test_case.grid, test_case.references), Identity);
    const BlockMask actual = ExpandOrDie(
        BuildAttentionTileLayout(test_case.grid, {test_case.references}, {test_case.query_block, test_case.key_block}),
        test_case.grid.tokens(), test_case.query_block, test_case.key_block);
    ExpectSameMask(expected, actual);
  }
}

TEST(AttentionTileLayoutTest, DensityOfWan480p) {
  const TokenGrid grid{21, 30, 52};
  absl::StatusOr<BlockSparseLayout> layout = BuildAttentionTileLayout(grid, AttentionTileParameters{});
  ASSERT_TRUE(layout.ok()) << layout.status();
  ExpandChecked(*layout, grid.tokens(), 128, 128);
  const double density = BlockDensity(*layout, grid.tokens());
  std::printf("attention tile 3:18 at 21x30x52: block density %.6f\n", density);
  // Frame pairs kept: 2kF − k² + F − k of F² (0.306 at F = 21, k = 3); blocks straddling frames add some.
  EXPECT_GT(density, 0.3);
  EXPECT_LT(density, 0.5);
}

// ---- sliding tile ----------------------------------------------------------------------------

TEST(SlidingTileLayoutTest, TileOrderIsTheSortedTileMajorOrder) {
  const std::vector<std::pair<TokenGrid, Extent3>> cases = {
      {{6, 8, 8}, {3, 4, 4}}, {{7, 10, 11}, {3, 4, 4}}, {{21, 30, 52}, {6, 8, 8}}, {{5, 3, 2}, {6, 8, 8}}};
  for (const auto& [grid, tile] : cases) {
    SCOPED_TRACE(absl::StrCat(grid.frames, "x", grid.height, "x", grid.width));
    absl::StatusOr<SlidingTileOrder> order = BuildSlidingTileOrder(grid, tile);
    ASSERT_TRUE(order.ok()) << order.status();
    EXPECT_EQ(order->token_at, SortedTileOrder(grid, tile));
    ASSERT_EQ(order->position_of.size(), order->token_at.size());
    for (size_t position = 0; position < order->token_at.size(); ++position) {
      ASSERT_EQ(order->position_of[order->token_at[position]], static_cast<int64_t>(position));
    }
    const int64_t tiles = order->tiles.frames * order->tiles.height * order->tiles.width;
    EXPECT_EQ(tiles, ((grid.frames + tile.frames - 1) / tile.frames) * ((grid.height + tile.height - 1) / tile.height) *
                         ((grid.width + tile.width - 1) / tile.width));
    ASSERT_EQ(static_cast<int64_t>(order->tile_begin.size()), tiles + 1);
    EXPECT_EQ(order->tile_begin.back(), grid.tokens());
  }
}

TEST(SlidingTileLayoutTest, MatchesTheTileWindowRuleReducedToBlocks) {
  struct Case {
    TokenGrid grid;
    SlidingTileParameters parameters;
    int query_block;
    int key_block;
  };
  const std::vector<Case> cases = {
      {{12, 8, 8}, {{3, 4, 4}, {3, 3, 3}}, 48, 48},   // divisible, whole tiles per block
      {{7, 10, 11}, {{3, 4, 4}, {3, 3, 3}}, 32, 32},  // boundary tiles of variable size
      {{7, 10, 11}, {{2, 3, 3}, {1, 3, 5}}, 64, 16},  // other windows, rectangular blocks
      {{4, 6, 6}, {{2, 2, 2}, {5, 5, 5}}, 32, 32},    // window wider than the tile grid
      {{9, 9, 13}, {{3, 3, 4}, {3, 3, 3}}, 128, 128},
  };
  for (const Case& test_case : cases) {
    const TokenGrid& grid = test_case.grid;
    SCOPED_TRACE(absl::StrCat(grid.frames, "x", grid.height, "x", grid.width));
    absl::StatusOr<SlidingTileOrder> order = BuildSlidingTileOrder(grid, test_case.parameters.tile);
    ASSERT_TRUE(order.ok()) << order.status();
    const std::vector<int64_t> position_of = order->position_of;
    const BlockMask expected =
        ReduceByAny(grid.tokens(), test_case.query_block, test_case.key_block,
                    SlidingTileRule(grid, test_case.parameters), [&](int64_t token) { return position_of[token]; });
    const BlockMask actual =
        ExpandOrDie(BuildSlidingTileLayout(grid, test_case.parameters, {test_case.query_block, test_case.key_block}),
                    grid.tokens(), test_case.query_block, test_case.key_block);
    ExpectSameMask(expected, actual);
  }
}

TEST(SlidingTileLayoutTest, DensityOfWan480p) {
  const TokenGrid grid{21, 30, 52};
  absl::StatusOr<BlockSparseLayout> layout = BuildSlidingTileLayout(grid, SlidingTileParameters{});
  ASSERT_TRUE(layout.ok()) << layout.status();
  ExpandChecked(*layout, grid.tokens(), 128, 128);
  const double density = BlockDensity(*layout, grid.tokens());
  std::printf("sliding tile (6,8,8) window (3,3,3) at 21x30x52: block density %.6f\n", density);
  // 27 of 4·4·7 = 112 tiles at most, plus boundary tiles sharing blocks.
  EXPECT_GT(density, 0.1);
  EXPECT_LT(density, 0.4);
}

// ---- dense, density, errors, cache -----------------------------------------------------------

TEST(DenseLayoutTest, ListsEveryBlock) {
  const TokenGrid grid{3, 7, 11};  // 231 tokens
  const BlockMask mask = ExpandOrDie(BuildDenseLayout(grid, {64, 32}), grid.tokens(), 64, 32);
  EXPECT_EQ(mask.rows, 4);
  EXPECT_EQ(mask.columns, 8);
  EXPECT_EQ(mask.density(), 1.0);
  absl::StatusOr<BlockSparseLayout> layout = BuildDenseLayout(grid, {64, 32});
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(BlockDensity(*layout, grid.tokens()), 1.0);
}

TEST(BlockDensityTest, CountsOverGroups) {
  BlockSparseLayout layout;
  layout.query_block = layout.key_block = 10;
  // Two groups over 30 keys (3 key blocks), 2 query blocks: 3 + 1 = 4 and 2 + 2 = 4 of 6 each.
  layout.row_offsets = Tensor::Host({2, 3}, DType::kI32);
  layout.column_indices = Tensor::Host({2, 4}, DType::kI32);
  const int32_t offsets[] = {0, 3, 4, 0, 2, 4};
  const int32_t columns[] = {0, 1, 2, 1, 0, 2, 1, 2};
  std::copy(std::begin(offsets), std::end(offsets), layout.row_offsets.data<int32_t>());
  std::copy(std::begin(columns), std::end(columns), layout.column_indices.data<int32_t>());
  EXPECT_DOUBLE_EQ(BlockDensity(layout, 30), 8.0 / 12.0);
}

void ExpectInvalid(const absl::Status& status, const std::string& parameter) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(parameter), std::string::npos) << status;
}

TEST(SparseLayoutErrorsTest, BadParametersNameThemselves) {
  ExpectInvalid(BuildDenseLayout({0, 4, 4}).status(), "grid.frames");
  ExpectInvalid(BuildRadialLayout({4, -1, 4}, {}).status(), "grid.height");
  ExpectInvalid(BuildAttentionTileLayout({4, 4, 0}, {}).status(), "grid.width");
  ExpectInvalid(BuildDenseLayout({4, 4, 4}, {0, 128}).status(), "query_block");
  ExpectInvalid(BuildRadialLayout({4, 4, 4}, {}, {128, 0}).status(), "key_block");
  ExpectInvalid(BuildRadialLayout({4, 4, 4}, {-0.5}).status(), "decay");
  ExpectInvalid(BuildRadialLayout({4, 4, 4}, {std::nan("")}).status(), "decay");
  ExpectInvalid(BuildAttentionTileLayout({4, 4, 4}, {5}).status(), "reference_frames");
  ExpectInvalid(BuildAttentionTileLayout({4, 4, 4}, {-1}).status(), "reference_frames");
  ExpectInvalid(BuildSlidingTileOrder({4, 4, 4}, {0, 2, 2}).status(), "tile");
  ExpectInvalid(BuildSlidingTileLayout({4, 4, 4}, {{2, 2, 2}, {3, 0, 3}}).status(), "window");
  ExpectInvalid(BuildDenseLayout({1 << 20, 1 << 10, 1 << 10}).status(), "grid");
}

TEST(SparseLayoutCacheTest, SameRequestSameLayoutOtherGridOtherLayout) {
  SparseLayoutCache cache(/*capacity=*/3);
  SparseLayoutRequest request;
  request.mode = SparseLayoutMode::kRadial;
  request.grid = {8, 16, 24};
  auto first = cache.Get(request);
  auto again = cache.Get(request);
  ASSERT_TRUE(first.ok() && again.ok());
  EXPECT_EQ(first->get(), again->get());  // the same object: no rebuild
  EXPECT_EQ(cache.size(), 1u);

  // Parameters of other modes do not matter for this mode's key.
  SparseLayoutRequest unrelated = request;
  unrelated.sliding_tile.tile = {1, 1, 1};
  EXPECT_EQ(SparseLayoutCache::Key(unrelated), SparseLayoutCache::Key(request));

  // A different grid with the same token count (8·16·24 = 12·16·16) and a different decay get their own
  // layouts. (Radial masks depend on the frame count and the tokens per frame only.)
  SparseLayoutRequest other_grid = request;
  other_grid.grid = {12, 16, 16};
  SparseLayoutRequest other_decay = request;
  other_decay.radial.decay = 0.2000001;
  auto by_grid = cache.Get(other_grid);
  auto by_decay = cache.Get(other_decay);
  ASSERT_TRUE(by_grid.ok() && by_decay.ok());
  EXPECT_NE(by_grid->get(), first->get());
  EXPECT_NE(by_decay->get(), first->get());
  const BlockMask first_mask = ExpandChecked(**first, request.grid.tokens(), 128, 128);
  const BlockMask grid_mask = ExpandChecked(**by_grid, other_grid.grid.tokens(), 128, 128);
  EXPECT_NE(first_mask.kept, grid_mask.kept);
  // The cached layouts equal fresh builds.
  ExpectSameMask(ExpandOrDie(BuildRadialLayout(other_grid.grid, other_grid.radial), other_grid.grid.tokens(), 128, 128),
                 grid_mask);
  ExpectSameMask(ExpandOrDie(BuildRadialLayout(request.grid, request.radial), request.grid.tokens(), 128, 128),
                 first_mask);

  // Capacity 3: a fourth layout evicts the least recently used (the radial one just looked up stays).
  ASSERT_TRUE(cache.Get(request).ok());
  SparseLayoutRequest dense = request;
  dense.mode = SparseLayoutMode::kDense;
  ASSERT_TRUE(cache.Get(dense).ok());
  EXPECT_EQ(cache.size(), 3u);
  auto still = cache.Get(request);
  ASSERT_TRUE(still.ok());
  EXPECT_EQ(still->get(), first->get());
  auto rebuilt = cache.Get(other_grid);  // evicted, so built again: a new object with the same blocks
  ASSERT_TRUE(rebuilt.ok());
  EXPECT_NE(rebuilt->get(), by_grid->get());
  ExpectSameMask(grid_mask, ExpandChecked(**rebuilt, other_grid.grid.tokens(), 128, 128));

  // Errors are returned, not cached.
  SparseLayoutRequest bad = request;
  bad.grid.frames = 0;
  ExpectInvalid(cache.Get(bad).status(), "grid.frames");
}

// ---- the CPU block-sparse kernel -------------------------------------------------------------

Tensor Random(const Shape& shape, uint32_t seed) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor tensor = Tensor::Host(shape, DType::kF32);
  for (int64_t i = 0; i < tensor.numel(); ++i) tensor.data<float>()[i] = normal(generator);
  return tensor;
}

// o[i] = Σ_j softmax_j(scale · q_i·k_j over the keys j with visible(i, j)) v_j, in double, [L, H, d].
std::vector<double> MaskedAttention(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                    const std::function<bool(int64_t, int64_t)>& visible) {
  const int64_t tokens = q.dim(0), heads = q.dim(1), head_dim = q.dim(2);
  const float *qd = q.data<float>(), *kd = k.data<float>(), *vd = v.data<float>();
  std::vector<double> out(tokens * heads * head_dim, 0.0), logits(tokens);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < tokens; ++i) {
      double maximum = -INFINITY;
      for (int64_t j = 0; j < tokens; ++j) {
        logits[j] = -INFINITY;
        if (!visible(i, j)) continue;
        double dot = 0;
        for (int64_t c = 0; c < head_dim; ++c) {
          dot += double{qd[(i * heads + h) * head_dim + c]} * kd[(j * heads + h) * head_dim + c];
        }
        logits[j] = dot * scale;
        maximum = std::max(maximum, logits[j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < tokens; ++j) sum += std::isinf(logits[j]) ? 0.0 : std::exp(logits[j] - maximum);
      for (int64_t j = 0; j < tokens; ++j) {
        if (std::isinf(logits[j])) continue;
        const double weight = std::exp(logits[j] - maximum) / sum;
        for (int64_t c = 0; c < head_dim; ++c) {
          out[(i * heads + h) * head_dim + c] += weight * vd[(j * heads + h) * head_dim + c];
        }
      }
    }
  }
  return out;
}

// Rows of x [L, H, d] in the order `token_at` (row p of the result is row token_at[p] of x).
Tensor GatherTokens(const Tensor& x, const std::vector<int64_t>& token_at) {
  Tensor result = Tensor::Host(x.shape(), DType::kF32);
  const int64_t row = x.dim(1) * x.dim(2);
  for (size_t p = 0; p < token_at.size(); ++p) {
    std::copy_n(x.data<float>() + token_at[p] * row, row, result.data<float>() + p * row);
  }
  return result;
}

class BlockSparseAttentionTest : public ::testing::Test {
 protected:
  // Runs the kernel with `layout` over q, k, v in the kernel's order (`token_at`, identity when empty)
  // and compares with MaskedAttention in frame-major order, a key visible when its block is kept.
  void Check(const TokenGrid& grid, const BlockSparseLayout& layout, const BlockMask& mask,
             const std::vector<int64_t>& token_at) {
    const int64_t tokens = grid.tokens(), heads = 2, head_dim = 16;
    const Tensor q = Random({tokens, heads, head_dim}, 1), k = Random({tokens, heads, head_dim}, 2),
                 v = Random({tokens, heads, head_dim}, 3);
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    std::vector<int64_t> position_of(tokens);
    for (int64_t n = 0; n < tokens; ++n) position_of[n] = n;
    for (size_t p = 0; p < token_at.size(); ++p) position_of[token_at[p]] = static_cast<int64_t>(p);
    const std::vector<double> expected = MaskedAttention(q, k, v, scale, [&](int64_t query, int64_t key) {
      return mask.at(position_of[query] / layout.query_block, position_of[key] / layout.key_block);
    });
    Tensor actual;
    if (token_at.empty()) {
      actual = backend_->Attention(q, k, v, scale, &layout);
    } else {
      const Tensor permuted = backend_->Attention(GatherTokens(q, token_at), GatherTokens(k, token_at),
                                                  GatherTokens(v, token_at), scale, &layout);
      actual = GatherTokens(permuted, position_of);  // back to frame-major
    }
    const double error = test::RelativeL2(expected, actual);
    EXPECT_LT(error, 1e-5);
    // The mask must matter: a dense reference differs.
    const std::vector<double> dense = MaskedAttention(q, k, v, scale, [](int64_t, int64_t) { return true; });
    if (mask.density() < 1.0) {
      EXPECT_GT(test::RelativeL2(dense, actual), 1e-3);
    }
    std::printf("%lld tokens, blocks %dx%d, density %.3f: relative L2 vs double %.3g\n", static_cast<long long>(tokens),
                layout.query_block, layout.key_block, mask.density(), error);
  }

  std::unique_ptr<Backend> backend_ = CreateCpuBackend();
};

TEST_F(BlockSparseAttentionTest, RadialEqualsMaskedAttentionInDouble) {
  for (const auto& [grid, blocks] : {std::pair{TokenGrid{8, 10, 13}, BlockShape{128, 128}},  // 1,040 tokens
                                     std::pair{TokenGrid{9, 7, 11}, BlockShape{64, 32}}}) {  // 693 tokens
    SCOPED_TRACE(absl::StrCat(grid.frames, "x", grid.height, "x", grid.width));
    absl::StatusOr<BlockSparseLayout> layout = BuildRadialLayout(grid, {0.2}, blocks);
    ASSERT_TRUE(layout.ok()) << layout.status();
    Check(grid, *layout, ExpandChecked(*layout, grid.tokens(), blocks.query_block, blocks.key_block), {});
  }
}

TEST_F(BlockSparseAttentionTest, AttentionTileEqualsMaskedAttentionInDouble) {
  const TokenGrid grid{12, 6, 11};  // 792 tokens
  absl::StatusOr<BlockSparseLayout> layout = BuildAttentionTileLayout(grid, {2}, {64, 64});
  ASSERT_TRUE(layout.ok()) << layout.status();
  Check(grid, *layout, ExpandChecked(*layout, grid.tokens(), 64, 64), {});
}

TEST_F(BlockSparseAttentionTest, SlidingTileInTileOrderEqualsMaskedAttentionInDouble) {
  const TokenGrid grid{7, 10, 11};                               // 770 tokens, boundary tiles on every axis
  const SlidingTileParameters parameters{{2, 3, 3}, {3, 3, 3}};  // 4×4×4 tiles
  absl::StatusOr<SlidingTileOrder> order = BuildSlidingTileOrder(grid, parameters.tile);
  ASSERT_TRUE(order.ok()) << order.status();
  absl::StatusOr<BlockSparseLayout> layout = BuildSlidingTileLayout(grid, parameters, {32, 32});
  ASSERT_TRUE(layout.ok()) << layout.status();
  Check(grid, *layout, ExpandChecked(*layout, grid.tokens(), 32, 32), order->token_at);
}

TEST_F(BlockSparseAttentionTest, DenseLayoutEqualsDenseAttentionInDouble) {
  const TokenGrid grid{3, 10, 13};  // 390 tokens
  absl::StatusOr<BlockSparseLayout> layout = BuildDenseLayout(grid);
  ASSERT_TRUE(layout.ok()) << layout.status();
  Check(grid, *layout, ExpandChecked(*layout, grid.tokens(), 128, 128), {});
}

}  // namespace
}  // namespace zoetrope
