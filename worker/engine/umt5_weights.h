// umT5 encoder configurations and parameters (spec/wan21.md §6.1, §3.5): presets, the parameter list,
// the two key namings (Wan's `T5Encoder` and HF's `UMT5EncoderModel`), and loading onto a backend.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/backend.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/wan_weights.h"

namespace zoetrope {

struct Umt5Config {
  std::string name = "custom";
  int64_t vocab_size = 0;
  int64_t model_dim = 0;  // d_model
  int64_t num_heads = 0;
  int64_t head_dim = 0;  // d_kv; the attention width is num_heads · head_dim
  int64_t ffn_dim = 0;   // d_ff
  int64_t num_layers = 0;
  int64_t num_buckets = 32;    // relative-attention buckets (bidirectional: half per direction)
  int64_t max_distance = 128;  // relative-attention max distance
  double eps = 1e-6;

  int64_t attention_dim() const { return num_heads * head_dim; }
  // Every rule the model relies on; the message names the field and the rule.
  absl::Status Validate() const;
};

// "umt5-xxl" (Wan2.1's text encoder) and "tiny" (vocab 1024 ≥ the stand-in tokenizer's 1000 pieces,
// d_model 64 = the tiny DiT's text_dim, 4 heads × 16, d_ff 128, 2 layers, 32 buckets, distance 128).
absl::StatusOr<Umt5Config> Umt5ConfigByName(absl::string_view name);
std::vector<std::string> Umt5ConfigNames();

// Bidirectional T5 relative-position bucket of rel = key − query (spec §6.2):
// half = num_buckets / 2, exact = half / 2; bucket = (rel > 0 ? half : 0) + (n < exact ? n :
// min(half − 1, exact + ⌊ln(n / exact) / ln(max_distance / exact) · (half − exact)⌋)), n = |rel|,
// with the logarithm term in float32 as the reference computes it.
int RelativePositionBucket(int64_t relative_position, int64_t num_buckets, int64_t max_distance);

enum class Umt5Naming { kWan, kHuggingFace };

// Parameters under Wan's names (`token_embedding.weight`, `blocks.{i}.attn.q.weight`, ...), [out, in]
// for linear weights; `matmul_weight` marks those stored in the backend's compute dtype.
std::vector<ParameterSpec> Umt5Parameters(const Umt5Config& config);
// Wan name -> HF UMT5EncoderModel name (the token embedding maps to `shared.weight`; loading also
// accepts `encoder.embed_tokens.weight`).
std::string Umt5HuggingFaceName(const std::string& wan_name);
// By key presence: `token_embedding.weight` -> kWan; `shared.weight` or `encoder.embed_tokens.weight`
// -> kHuggingFace; neither is a NotFound error naming the file.
absl::StatusOr<Umt5Naming> DetectUmt5Naming(const WeightSource& source);
// The config a checkpoint's shapes describe (layers counted, widths read off the matrices); buckets
// and heads from the position-bias tables; max distance 128 and eps 1e-6 (umT5's, not stored in the
// weights). Named after the matching preset when every field equals one.
absl::StatusOr<Umt5Config> InferUmt5Config(const WeightSource& source);

struct Umt5LayerWeights {
  Tensor norm1, norm2;                          // F32 [model_dim]
  Tensor q, k, v;                               // [attention_dim, model_dim], compute dtype
  Tensor o;                                     // [model_dim, attention_dim], compute dtype
  Tensor gate, fc1;                             // [ffn_dim, model_dim], compute dtype (gate: the GELU branch)
  Tensor fc2;                                   // [model_dim, ffn_dim], compute dtype
  // The layer's relative-position table transposed to head-major and flattened, plus one sentinel row
  // holding the lowest finite float (the reference's finfo.min for masked keys):
  // F32 [num_heads · num_buckets + 1, 1], row h·num_buckets + b = table[b, h].
  Tensor position_bias;
};

struct Umt5Weights {
  Tensor token_embedding;  // [vocab_size, model_dim], compute dtype
  std::vector<Umt5LayerWeights> layers;
  Tensor final_norm;  // F32 [model_dim]
};

// Reads every parameter of `config` from `source` (either naming), checks shapes and dtypes (F32, BF16
// or F16 on disk), uploads to `backend`. Errors name the file, the key, and expected against found.
absl::StatusOr<Umt5Weights> LoadUmt5Weights(const WeightSource& source, const Umt5Config& config, Backend& backend);

}  // namespace zoetrope
