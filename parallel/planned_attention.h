// Self-attention that follows a sparsity plan (parallel/sparsity_plan.h) on one device.
//
// For each call (DiT block, denoising step) the plan says what every head runs. Dense sites go to the
// kernel without a layout; sparse sites get the plan's block layout for the call's grid, built once per
// (grid, site attention), uploaded once, and reused by every later block and step. Sliding tile sites
// permute q, k, v into the tile-major token order before the kernel and the output back after it (two
// row gathers each way); the layout is in that order.
//
// It also measures what it ran: the mean block density over every call and head (dense = 1), the figure
// a job reports as its attention density.
//
// Not thread-safe: one instance per generation (the denoising loop calls it from one thread).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "kernels/backend.h"
#include "parallel/sequence_attention.h"
#include "parallel/sparsity_plan.h"

namespace zoetrope {

class PlannedAttention final : public SequenceAttention {
 public:
  // `plan` must have passed plan.Validate(num_layers, num_heads, steps) for the model and request this
  // instance serves; `steps` is the request's step count (the plan's step ranges scale with it).
  PlannedAttention(SparsityPlan plan, int steps);

  // q, k, v: [L, H, d] of the whole sequence (L = site.grid.tokens()), in the backend's compute dtype.
  Tensor Attend(Backend& backend, const Tensor& q, const Tensor& k, const Tensor& v,
                const AttentionSite& site) override;

  // Over the calls so far, every head weighted equally (dense heads count 1); 1 before the first call.
  double mean_block_density() const override;
  int64_t calls() const { return calls_; }
  const SparsityPlan& plan() const { return plan_; }

 private:
  struct DeviceLayout {
    BlockSparseLayout layout;  // row_offsets and column_indices on the backend's device
    double density = 1.0;      // block density, the mean over the layout's groups
  };
  struct DevicePermutation {
    Tensor to_tile_major;   // I32 [L]: tile-major position p reads frame-major token to_tile_major[p]
    Tensor to_frame_major;  // I32 [L]: frame-major token n reads tile-major position to_frame_major[n]
  };

  const DeviceLayout& LayoutFor(Backend& backend, const SiteAttention& attention, const TokenGrid& grid);
  const DevicePermutation& PermutationFor(Backend& backend, const SlidingTileParameters& parameters,
                                          const TokenGrid& grid);

  const SparsityPlan plan_;
  const int steps_;
  std::map<std::string, DeviceLayout> layouts_;
  std::map<std::string, DevicePermutation> permutations_;
  double density_sum_ = 0.0;  // Σ over calls of the call's density
  int64_t calls_ = 0;
};

}  // namespace zoetrope
