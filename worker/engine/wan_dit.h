// The Wan2.1 diffusion transformer (spec/wan21.md §2), written once over the Backend operator
// interface: the same code runs on the CPU reference backend and on the CUDA backend.
//
// The forward pass works on a *sequence shard*: tokens [shard_begin, shard_begin + shard_count) of the
// patchified latent, with RoPE positions taken from their global grid coordinates, and self-attention
// goes through a SequenceAttention (the parallel layer's hook). One device is the shard that holds
// every token.
//
// Not thread-safe: one WanDit per device thread.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "parallel/sequence_attention.h"
#include "worker/engine/wan_config.h"
#include "worker/engine/wan_weights.h"

namespace zoetrope {

class WanDit {
 public:
  // Depends only on the timestep: computed once per denoising step and shared by the CFG passes.
  struct TimestepConditioning {
    Tensor time_embedding;    // F32 [1, D]: e, feeds the head
    Tensor block_modulation;  // F32 [6, D]: e0, feeds every block
  };
  // Depends only on the prompt: the cross-attention keys and values of every block, computed once per
  // prompt and reused by every denoising step (exact, since the context does not change).
  struct PromptConditioning {
    std::vector<Tensor> cross_keys;    // per block, [text_len, H, head_dim], compute dtype
    std::vector<Tensor> cross_values;  // per block, [text_len, H, head_dim], compute dtype
  };

  // Loads a checkpoint (file, index.json or directory; original or diffusers names). The config comes
  // from config.json beside the weights; `config_name` (a preset) is used when there is none, and an
  // error names the missing file when neither is available.
  static absl::StatusOr<std::unique_ptr<WanDit>> Load(const std::string& weights_path, Backend& backend,
                                                      const std::string& config_name = "");
  WanDit(WanDitConfig config, WanDitWeights weights, Backend& backend);

  const WanDitConfig& config() const { return config_; }
  const WanDitWeights& weights() const { return weights_; }
  Backend& backend() const { return backend_; }

  // The latent must be [in_dim, F, H, W] with H and W multiples of 2 and the grid within the RoPE table.
  absl::Status ValidateLatentShape(const Shape& latent_shape) const;
  TokenGrid GridOf(const Shape& latent_shape) const;

  // `timestep` is the scheduler's integer timestep as a number (fractional values are allowed).
  TimestepConditioning EmbedTimestep(double timestep);
  // context: host or device tensor [Lc, text_dim] (any float dtype), Lc ≤ text_len, zero-padded to
  // text_len rows here as the reference does.
  absl::StatusOr<PromptConditioning> EncodePrompt(const Tensor& context);

  // Head output of the shard's tokens: F32 [shard_count, out_dim·1·2·2], column = q·32 + r·16 + c.
  // `latent` is the full latent (every rank patchifies it and keeps its rows).
  Tensor ForwardShard(const Tensor& latent, const TimestepConditioning& timestep, const PromptConditioning& prompt,
                      int64_t shard_begin, int64_t shard_count, SequenceAttention& attention, int step);
  // The same for a shard given as *head-order tokens*: tokens F32 [shard_count, out_dim·pt·ph·pw] of the
  // grid `grid`, column ((t·ph + y)·pw + x)·C + c — the layout of the head's output and of Unpatchify's
  // input, which is what lets the sampler step token shards (velocity and sample share one layout) and
  // gather them only once at the end. Equal to ForwardShard on the same tokens up to the summation order of
  // the patch embedding (its weight's columns are permuted once into this order). Needs in_dim = out_dim.
  Tensor ForwardTokens(const Tensor& tokens, const TokenGrid& grid, int64_t shard_begin,
                       const TimestepConditioning& timestep, const PromptConditioning& prompt,
                       SequenceAttention& attention, int step);
  // One device: velocity F32 [out_dim, F, H, W].
  Tensor Forward(const Tensor& latent, const TimestepConditioning& timestep, const PromptConditioning& prompt,
                 SequenceAttention& attention, int step = 0);
  // Head tokens of the whole sequence -> velocity F32 [out_dim, F, H, W].
  Tensor Unpatchify(const Tensor& head_tokens, const Shape& latent_shape);

 private:
  struct RopeTable {
    Tensor cos, sin;  // F32 [shard_count, head_dim / 2]
  };
  const RopeTable& RopeFor(const TokenGrid& grid, int64_t shard_begin, int64_t shard_count);
  // Embedded shard (F32 [shard_count, D]) -> head output; shared by ForwardShard and ForwardTokens.
  Tensor ForwardEmbedded(const Tensor& embedded, const TokenGrid& grid, const TimestepConditioning& timestep,
                         const PromptConditioning& prompt, int64_t shard_begin, SequenceAttention& attention,
                         int step);
  // weights_.patch_weight with its columns reordered from Patchify's (c, t, y, x) to head order (t, y, x, c).
  const Tensor& HeadOrderPatchWeight();
  void RunBlock(int index, const Tensor& x, const Tensor& block_modulation, const Tensor& cross_keys,
                const Tensor& cross_values, const RopeTable& rope, SequenceAttention& attention,
                const AttentionSite& site);

  WanDitConfig config_;
  WanDitWeights weights_;
  Backend& backend_;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>, RopeTable> rope_cache_;
  Tensor head_order_patch_weight_;  // built on the first ForwardTokens
};

// The cos-first sinusoidal timestep embedding (spec §2.3), computed in float64: [cos(t·ω), sin(t·ω)],
// ω_i = 10000^(−i/half).
std::vector<double> SinusoidalEmbedding(double timestep, int64_t width);

}  // namespace zoetrope
