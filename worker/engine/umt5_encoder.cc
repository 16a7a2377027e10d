#include "worker/engine/umt5_encoder.h"

#include "absl/strings/str_cat.h"

namespace zoetrope {

absl::StatusOr<std::unique_ptr<Umt5Encoder>> Umt5Encoder::Load(const std::string& weights_path, Backend& backend,
                                                               const std::string& config_name) {
  absl::StatusOr<std::unique_ptr<WeightSource>> source = WeightSource::Open(weights_path);
  if (!source.ok()) return source.status();
  absl::StatusOr<Umt5Config> config =
      config_name.empty() ? InferUmt5Config(**source) : Umt5ConfigByName(config_name);
  if (!config.ok()) return config.status();
  absl::StatusOr<Umt5Weights> weights = LoadUmt5Weights(**source, *config, backend);
  if (!weights.ok()) return weights.status();
  return std::make_unique<Umt5Encoder>(*std::move(config), *std::move(weights), backend);
}

Umt5Encoder::Umt5Encoder(Umt5Config config, Umt5Weights weights, Backend& backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(backend) {}

Tensor Umt5Encoder::BiasRows(int64_t positions, int64_t real_keys) {
  const int64_t heads = config_.num_heads, buckets = config_.num_buckets;
  // Buckets depend on key − query only: one per distance, shared by every head and layer.
  std::vector<int32_t> bucket_of_distance(static_cast<size_t>(2 * positions - 1));
  for (int64_t distance = -(positions - 1); distance < positions; ++distance) {
    bucket_of_distance[distance + positions - 1] =
        RelativePositionBucket(distance, config_.num_buckets, config_.max_distance);
  }
  const auto masked_row = static_cast<int32_t>(heads * buckets);
  Tensor rows = Tensor::Host({heads * positions * positions}, DType::kI32);
  int32_t* out = rows.data<int32_t>();
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < positions; ++i) {
      int32_t* row = out + (h * positions + i) * positions;
      for (int64_t j = 0; j < positions; ++j) {
        row[j] = j < real_keys ? static_cast<int32_t>(h * buckets) + bucket_of_distance[j - i + positions - 1]
                               : masked_row;
      }
    }
  }
  return backend_.Upload(rows, DType::kI32);
}

absl::StatusOr<Tensor> Umt5Encoder::Encode(const std::vector<int32_t>& ids, int64_t length, PaddingMode mode) {
  const auto sequence = static_cast<int64_t>(ids.size());
  if (length < 1 || length > sequence) {
    return absl::InvalidArgumentError(absl::StrCat("text encoder: real token count ", length,
                                                   " must be in [1, ", sequence, "] (the sequence length)"));
  }
  for (int64_t i = 0; i < sequence; ++i) {
    if (ids[i] < 0 || ids[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("text encoder: token id ", ids[i], " at position ", i, " is outside the vocabulary of ",
                       config_.vocab_size, " (config ", config_.name,
                       "): the tokenizer does not belong to these encoder weights"));
    }
  }
  const int64_t positions = mode == PaddingMode::kPadded ? sequence : length;
  const int64_t heads = config_.num_heads, head_dim = config_.head_dim, width = config_.model_dim;
  const DType compute = backend_.compute_dtype();
  const float eps = static_cast<float>(config_.eps);
  const Shape heads_shape = {positions, heads, head_dim};
  auto to_compute = [&](const Tensor& tensor) {
    return tensor.dtype() == compute ? tensor : backend_.Cast(tensor, compute);
  };

  Tensor host_ids = Tensor::Host({positions}, DType::kI32);
  std::copy(ids.begin(), ids.begin() + positions, host_ids.data<int32_t>());
  // The residual stream is F32 on every backend.
  const Tensor x = backend_.GatherRows(weights_.token_embedding, backend_.Upload(host_ids, DType::kI32), DType::kF32);
  const Tensor bias_rows = BiasRows(positions, length);
  for (const Umt5LayerWeights& layer : weights_.layers) {
    {  // self-attention with the layer's relative-position bias, unscaled logits
      const Tensor h = to_compute(backend_.RmsNorm(x, layer.norm1, eps));
      const Tensor q = backend_.Linear(h, layer.q, nullptr, Activation::kNone).View(heads_shape);
      const Tensor k = backend_.Linear(h, layer.k, nullptr, Activation::kNone).View(heads_shape);
      const Tensor v = backend_.Linear(h, layer.v, nullptr, Activation::kNone).View(heads_shape);
      const Tensor bias =
          backend_.GatherRows(layer.position_bias, bias_rows, DType::kF32).View({heads, positions, positions});
      const Tensor attended = backend_.AttentionWithBias(q, k, v, bias, /*scale=*/1.0f);
      const Tensor projected =
          backend_.Linear(attended.View({positions, config_.attention_dim()}), layer.o, nullptr, Activation::kNone);
      backend_.AddGated(x, projected, /*gate=*/nullptr);
    }
    {  // gated-GELU feed-forward
      const Tensor h = to_compute(backend_.RmsNorm(x, layer.norm2, eps));
      const Tensor gate = backend_.Linear(h, layer.gate, nullptr, Activation::kGeluTanh);
      const Tensor linear = backend_.Linear(h, layer.fc1, nullptr, Activation::kNone);
      const Tensor output = backend_.Linear(backend_.Multiply(linear, gate), layer.fc2, nullptr, Activation::kNone);
      backend_.AddGated(x, output, /*gate=*/nullptr);
    }
  }
  const Tensor normalized = backend_.RmsNorm(x, weights_.final_norm, eps);
  return normalized.Rows(0, length).View({length, width});
}

}  // namespace zoetrope
