#include "worker/engine/umt5_weights.h"

#include <cmath>
#include <limits>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/config_presets.h"

namespace zoetrope {
namespace {

Umt5Config Umt5Xxl() {
  Umt5Config config;
  config.name = "umt5-xxl";
  config.vocab_size = 256384;
  config.model_dim = 4096;
  config.num_heads = 64;
  config.head_dim = 64;
  config.ffn_dim = 10240;
  config.num_layers = 24;
  return config;
}

Umt5Config Tiny() {
  Umt5Config config;
  config.name = "tiny";
  config.vocab_size = 1024;
  config.model_dim = 64;
  config.num_heads = 4;
  config.head_dim = 16;
  config.ffn_dim = 128;
  config.num_layers = 2;
  return config;
}

constexpr ConfigPreset<Umt5Config> kPresets[] = {{"tiny", Tiny}, {"umt5-xxl", Umt5Xxl}};

// Block-local renames (after "blocks.{i}.") from Wan's to HF's names (spec §3.5).
const std::vector<std::pair<std::string, std::string>>& BlockRenames() {
  static const auto* renames = new std::vector<std::pair<std::string, std::string>>{
      {"norm1.weight", "layer.0.layer_norm.weight"},
      {"attn.q.weight", "layer.0.SelfAttention.q.weight"},
      {"attn.k.weight", "layer.0.SelfAttention.k.weight"},
      {"attn.v.weight", "layer.0.SelfAttention.v.weight"},
      {"attn.o.weight", "layer.0.SelfAttention.o.weight"},
      {"pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"},
      {"norm2.weight", "layer.1.layer_norm.weight"},
      {"ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"},
      {"ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"},
      {"ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"},
  };
  return *renames;
}

constexpr char kHfEmbedding[] = "shared.weight";
constexpr char kHfEmbeddingAlternative[] = "encoder.embed_tokens.weight";

// The key of `wan_name` in a checkpoint of `naming` (the embedding may have either HF name).
std::string KeyIn(const WeightSource& source, Umt5Naming naming, const std::string& wan_name) {
  if (naming == Umt5Naming::kWan) return wan_name;
  if (wan_name == "token_embedding.weight" && !source.Contains(kHfEmbedding) &&
      source.Contains(kHfEmbeddingAlternative)) {
    return kHfEmbeddingAlternative;
  }
  return Umt5HuggingFaceName(wan_name);
}

absl::StatusOr<TensorInfo> InfoOf(const WeightSource& source, const std::string& key, int rank) {
  if (!source.Contains(key)) {
    return absl::NotFoundError(absl::StrCat(source.description(), ": missing tensor \"", key, "\""));
  }
  absl::StatusOr<TensorInfo> info = source.Info(key);
  if (!info.ok()) return info.status();
  if (static_cast<int>(info->shape.size()) != rank) {
    return absl::InvalidArgumentError(absl::StrCat(source.FileOf(key), ": tensor \"", key, "\" has shape ",
                                                    ShapeToString(info->shape), ", expected rank ", rank));
  }
  return info;
}

}  // namespace

absl::Status Umt5Config::Validate() const {
  auto positive = [&](absl::string_view field, int64_t value) -> absl::Status {
    if (value > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("umT5 config ", name, ": ", field, " must be > 0, got ", value));
  };
  for (const auto& [field, value] : std::vector<std::pair<absl::string_view, int64_t>>{
           {"vocab_size", vocab_size},
           {"model_dim", model_dim},
           {"num_heads", num_heads},
           {"head_dim", head_dim},
           {"ffn_dim", ffn_dim},
           {"num_layers", num_layers},
           {"max_distance", max_distance}}) {
    if (absl::Status status = positive(field, value); !status.ok()) return status;
  }
  // Bidirectional buckets: half per direction, and half of those exact, so at least 4 and even.
  if (num_buckets < 4 || num_buckets % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("umT5 config ", name, ": num_buckets must be even and ≥ 4, got ", num_buckets));
  }
  if (max_distance <= num_buckets / 4) {
    return absl::InvalidArgumentError(absl::StrCat("umT5 config ", name, ": max_distance (", max_distance,
                                                   ") must exceed num_buckets / 4 (", num_buckets / 4, ")"));
  }
  if (!(eps > 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat("umT5 config ", name, ": eps must be > 0, got ", eps));
  }
  if (vocab_size > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("umT5 config ", name, ": vocab_size must fit in int32"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Umt5Config> Umt5ConfigByName(absl::string_view name) {
  return FindPreset(kPresets, name, "text encoder config");
}

std::vector<std::string> Umt5ConfigNames() { return PresetNames(kPresets); }

int RelativePositionBucket(int64_t relative_position, int64_t num_buckets, int64_t max_distance) {
  const int64_t half = num_buckets / 2;
  const int64_t exact = half / 2;
  const int64_t base = relative_position > 0 ? half : 0;
  const int64_t distance = relative_position < 0 ? -relative_position : relative_position;
  if (distance < exact) return static_cast<int>(base + distance);
  // float32, operation by operation, as torch evaluates it on a float tensor (the scalars round to float).
  const float ratio = static_cast<float>(distance) / static_cast<float>(exact);
  const float scale = static_cast<float>(std::log(static_cast<double>(max_distance) / static_cast<double>(exact)));
  const float large = std::log(ratio) / scale * static_cast<float>(half - exact);
  const int64_t bucket = std::min<int64_t>(exact + static_cast<int64_t>(large), half - 1);
  return static_cast<int>(base + bucket);
}

std::vector<ParameterSpec> Umt5Parameters(const Umt5Config& config) {
  const int64_t d = config.model_dim, a = config.attention_dim(), f = config.ffn_dim;
  std::vector<ParameterSpec> specs;
  specs.push_back({"token_embedding.weight", {config.vocab_size, d}, true});
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string block = absl::StrCat("blocks.", i, ".");
    specs.push_back({block + "norm1.weight", {d}, false});
    specs.push_back({block + "attn.q.weight", {a, d}, true});
    specs.push_back({block + "attn.k.weight", {a, d}, true});
    specs.push_back({block + "attn.v.weight", {a, d}, true});
    specs.push_back({block + "attn.o.weight", {d, a}, true});
    specs.push_back({block + "pos_embedding.embedding.weight", {config.num_buckets, config.num_heads}, false});
    specs.push_back({block + "norm2.weight", {d}, false});
    specs.push_back({block + "ffn.gate.0.weight", {f, d}, true});
    specs.push_back({block + "ffn.fc1.weight", {f, d}, true});
    specs.push_back({block + "ffn.fc2.weight", {d, f}, true});
  }
  specs.push_back({"norm.weight", {d}, false});
  return specs;
}

std::string Umt5HuggingFaceName(const std::string& wan_name) {
  if (wan_name == "token_embedding.weight") return kHfEmbedding;
  if (wan_name == "norm.weight") return "encoder.final_layer_norm.weight";
  if (absl::StartsWith(wan_name, "blocks.")) {
    const size_t dot = wan_name.find('.', 7);
    const std::string index = wan_name.substr(7, dot - 7);
    const std::string rest = wan_name.substr(dot + 1);
    for (const auto& [wan, hugging_face] : BlockRenames()) {
      if (rest == wan) return absl::StrCat("encoder.block.", index, ".", hugging_face);
    }
  }
  return wan_name;
}

absl::StatusOr<Umt5Naming> DetectUmt5Naming(const WeightSource& source) {
  if (source.Contains("token_embedding.weight")) return Umt5Naming::kWan;
  if (source.Contains(kHfEmbedding) || source.Contains(kHfEmbeddingAlternative)) return Umt5Naming::kHuggingFace;
  return absl::NotFoundError(absl::StrCat(source.description(),
                                          ": not a umT5 encoder checkpoint: found neither \"token_embedding.weight\" "
                                          "(Wan T5Encoder) nor \"shared.weight\" / \"encoder.embed_tokens.weight\" "
                                          "(HF UMT5EncoderModel)"));
}

absl::StatusOr<Umt5Config> InferUmt5Config(const WeightSource& source) {
  absl::StatusOr<Umt5Naming> naming = DetectUmt5Naming(source);
  if (!naming.ok()) return naming.status();
  auto info = [&](const std::string& wan_name, int rank) { return InfoOf(source, KeyIn(source, *naming, wan_name), rank); };
  Umt5Config config;
  config.name = absl::StrCat("inferred from ", source.description());
  absl::StatusOr<TensorInfo> embedding = info("token_embedding.weight", 2);
  if (!embedding.ok()) return embedding.status();
  config.vocab_size = embedding->shape[0];
  config.model_dim = embedding->shape[1];
  while (source.Contains(KeyIn(source, *naming, absl::StrCat("blocks.", config.num_layers, ".norm1.weight")))) {
    ++config.num_layers;
  }
  if (config.num_layers == 0) {
    return absl::NotFoundError(absl::StrCat(source.description(), ": no encoder layers (missing \"",
                                            KeyIn(source, *naming, "blocks.0.norm1.weight"), "\")"));
  }
  absl::StatusOr<TensorInfo> bias = info("blocks.0.pos_embedding.embedding.weight", 2);
  if (!bias.ok()) return bias.status();
  config.num_buckets = bias->shape[0];
  config.num_heads = bias->shape[1];
  absl::StatusOr<TensorInfo> query = info("blocks.0.attn.q.weight", 2);
  if (!query.ok()) return query.status();
  if (config.num_heads <= 0 || query->shape[0] % config.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source.description(), ": attention width ", query->shape[0],
                                                   " is not a multiple of the ", config.num_heads,
                                                   " heads of the position-bias table"));
  }
  config.head_dim = query->shape[0] / config.num_heads;
  absl::StatusOr<TensorInfo> ffn = info("blocks.0.ffn.fc1.weight", 2);
  if (!ffn.ok()) return ffn.status();
  config.ffn_dim = ffn->shape[0];
  for (const std::string& preset : Umt5ConfigNames()) {
    const Umt5Config known = *Umt5ConfigByName(preset);
    if (known.vocab_size == config.vocab_size && known.model_dim == config.model_dim &&
        known.num_heads == config.num_heads && known.head_dim == config.head_dim && known.ffn_dim == config.ffn_dim &&
        known.num_layers == config.num_layers && known.num_buckets == config.num_buckets) {
      config.name = preset;
    }
  }
  if (absl::Status valid = config.Validate(); !valid.ok()) return valid;
  return config;
}

absl::StatusOr<Umt5Weights> LoadUmt5Weights(const WeightSource& source, const Umt5Config& config, Backend& backend) {
  if (absl::Status valid = config.Validate(); !valid.ok()) return valid;
  absl::StatusOr<Umt5Naming> naming = DetectUmt5Naming(source);
  if (!naming.ok()) return naming.status();
  std::map<std::string, Tensor> loaded;
  for (const ParameterSpec& spec : Umt5Parameters(config)) {
    const std::string key = KeyIn(source, *naming, spec.name);
    if (!source.Contains(key)) {
      return absl::NotFoundError(absl::StrCat(source.description(), ": missing tensor \"", key, "\" (expected shape ",
                                              ShapeToString(spec.shape), " for text encoder config ", config.name,
                                              ")"));
    }
    absl::StatusOr<Tensor> host = source.Get(key);
    if (!host.ok()) return host.status();
    if (host->shape() != spec.shape) {
      return absl::InvalidArgumentError(absl::StrCat(source.FileOf(key), ": tensor \"", key, "\" has shape ",
                                                     ShapeToString(host->shape()), ", expected ",
                                                     ShapeToString(spec.shape), " for text encoder config ",
                                                     config.name));
    }
    if (host->dtype() != DType::kF32 && host->dtype() != DType::kBF16 && host->dtype() != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat(source.FileOf(key), ": tensor \"", key, "\" has dtype ",
                                                     DTypeName(host->dtype()), ", expected F32, BF16 or F16"));
    }
    if (absl::EndsWith(spec.name, "pos_embedding.embedding.weight")) {
      // Head-major with a masked-key sentinel row, so one row gather builds the [H, Lq, Lk] bias.
      const std::vector<float> table = ToFloatVector(*host);
      const int64_t buckets = config.num_buckets, heads = config.num_heads;
      std::vector<float> flattened(static_cast<size_t>(heads * buckets + 1));
      for (int64_t b = 0; b < buckets; ++b) {
        for (int64_t h = 0; h < heads; ++h) flattened[h * buckets + b] = table[b * heads + h];
      }
      flattened.back() = std::numeric_limits<float>::lowest();
      loaded[spec.name] = backend.Upload(HostTensorFromFloats(flattened, {heads * buckets + 1, 1}), DType::kF32);
      continue;
    }
    loaded[spec.name] = backend.Upload(*host, spec.matmul_weight ? backend.compute_dtype() : DType::kF32);
  }
  auto take = [&](const std::string& name) { return loaded.at(name); };
  Umt5Weights weights;
  weights.token_embedding = take("token_embedding.weight");
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string block = absl::StrCat("blocks.", i, ".");
    Umt5LayerWeights layer;
    layer.norm1 = take(block + "norm1.weight");
    layer.q = take(block + "attn.q.weight");
    layer.k = take(block + "attn.k.weight");
    layer.v = take(block + "attn.v.weight");
    layer.o = take(block + "attn.o.weight");
    layer.position_bias = take(block + "pos_embedding.embedding.weight");
    layer.norm2 = take(block + "norm2.weight");
    layer.gate = take(block + "ffn.gate.0.weight");
    layer.fc1 = take(block + "ffn.fc1.weight");
    layer.fc2 = take(block + "ffn.fc2.weight");
    weights.layers.push_back(std::move(layer));
  }
  weights.final_norm = take("norm.weight");
  return weights;
}

}  // namespace zoetrope
