// Wan2.1 DiT parameters: the list of tensors a config needs (original key names, spec/wan21.md §2.1),
// the diffusers renaming (§3.3), and loading a checkpoint onto a backend with the precision policy of §2.5.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/wan_config.h"

namespace zoetrope {

struct ParameterSpec {
  std::string name;  // original Wan key
  Shape shape;
  // Large matmul weights are stored in the backend's compute dtype; everything else stays F32.
  bool matmul_weight = false;
};

std::vector<ParameterSpec> WanDitParameters(const WanDitConfig& config);
// Original key -> diffusers key (a pure rename; shapes are identical).
std::string DiffusersName(const std::string& original_name);
// Looks at which keys a checkpoint holds.
WeightNaming DetectNaming(const WeightSource& source);

struct WanAttentionWeights {
  Tensor q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, o_weight, o_bias;
  Tensor norm_q, norm_k;  // F32 [D]
};

struct WanBlockWeights {
  Tensor modulation;  // F32 [6, D]
  WanAttentionWeights self_attention;
  WanAttentionWeights cross_attention;
  Tensor norm3_weight, norm3_bias;  // cross-attention LayerNorm, F32 [D]
  Tensor ffn_in_weight, ffn_in_bias, ffn_out_weight, ffn_out_bias;
};

// Matmul weights are [out, in] in the backend's compute dtype; biases, norms, modulation, the time MLPs
// and the head are F32. The patch embedding is flattened to [D, in_dim·1·2·2].
struct WanDitWeights {
  Tensor patch_weight, patch_bias;
  Tensor text_in_weight, text_in_bias, text_out_weight, text_out_bias;
  Tensor time_in_weight, time_in_bias, time_out_weight, time_out_bias;
  Tensor time_projection_weight, time_projection_bias;
  std::vector<WanBlockWeights> blocks;
  Tensor head_modulation;  // F32 [2, D]
  Tensor head_weight, head_bias;
};

// Reads every parameter of `config` from `source` (either naming), checks shapes and dtypes, and uploads
// to `backend`. Errors name the file, the key, and the expected against the found shape or dtype.
absl::StatusOr<WanDitWeights> LoadWanDitWeights(const WeightSource& source, const WanDitConfig& config,
                                                Backend& backend);

}  // namespace zoetrope
