// The one attention entry point of the model's self-attention.
//
// The model computes q, k, v for the tokens of its sequence shard and hands them here; what happens
// between (nothing on one GPU; all-to-all over heads with Ulysses; a sparse block layout chosen by a
// sparsity plan) is this layer's business, not the model's. One GPU is the SP = 1 case of the same call.
#pragma once

#include <cstdint>

#include "kernels/backend.h"

namespace zoetrope {

// The latent token grid (after patchify) and where the caller's shard sits in it. Tokens are
// frame-major: n = f·height·width + h·width + w.
struct TokenGrid {
  int64_t frames = 0;
  int64_t height = 0;
  int64_t width = 0;
  int64_t tokens() const { return frames * height * width; }
};

// Which self-attention call this is, so plans can choose per block and per denoising step.
struct AttentionSite {
  int block = 0;
  int step = 0;
  TokenGrid grid;
  float scale = 1.0f;  // softmax scale, 1/√head_dim
};

class SequenceAttention {
 public:
  virtual ~SequenceAttention() = default;
  // q, k, v: this rank's contiguous token shard [tokens, heads, head_dim] (RoPE already applied),
  // in the backend's compute dtype. Returns the attention output for the same shard and shape.
  virtual Tensor Attend(Backend& backend, const Tensor& q, const Tensor& k, const Tensor& v,
                        const AttentionSite& site) = 0;
  // Mean block density of what the calls so far computed (computed blocks / all blocks, every head of
  // every call weighted equally): 1 for dense attention.
  virtual double mean_block_density() const { return 1.0; }
};

// Single device, dense: the whole sequence is local.
class LocalDenseAttention final : public SequenceAttention {
 public:
  Tensor Attend(Backend& backend, const Tensor& q, const Tensor& k, const Tensor& v,
                const AttentionSite& site) override {
    return backend.Attention(q, k, v, site.scale, /*layout=*/nullptr);
  }
};

}  // namespace zoetrope
