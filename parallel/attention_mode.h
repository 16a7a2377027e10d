// The attention modes of shared spec/sparse-attention.md and their parameters: plain data, with no tensor
// or kernel types, so that the sparsity plan format (sparsity_plan.h) can be parsed and checked by processes
// that never run a model (the scheduler validates the plans that requests carry).
#pragma once

#include <cstdint>

namespace zoetrope {

enum class SparseLayoutMode { kDense, kRadial, kAttentionTile, kSlidingTile };

// Sizes along (frames, height, width) of the latent token grid, in tokens or in tiles.
struct Extent3 {
  int64_t frames = 0;
  int64_t height = 0;
  int64_t width = 0;
};

// Radial attention (spec §1). `decay` scales the log-decaying band widths (0.2 for Wan).
struct RadialParameters {
  double decay = 0.2;
};

// Attention tile k:(F − k) (spec §2): `reference_frames` = k global reference frames, 0 ≤ k ≤ F.
struct AttentionTileParameters {
  int64_t reference_frames = 3;
};

// Sliding tile attention 3D (spec §3): tile size in tokens and window size in tiles, per axis.
struct SlidingTileParameters {
  Extent3 tile{6, 8, 8};
  Extent3 window{3, 3, 3};
};

}  // namespace zoetrope
