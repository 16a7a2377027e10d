#include "worker/engine/wan_weights.h"

#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace zoetrope {
namespace {

void AddLinear(std::vector<ParameterSpec>& specs, const std::string& prefix, int64_t out, int64_t in, bool matmul) {
  specs.push_back({prefix + ".weight", {out, in}, matmul});
  specs.push_back({prefix + ".bias", {out}, false});
}

// Block-local renames (after "blocks.{i}.") from the original to the diffusers name.
const std::vector<std::pair<std::string, std::string>>& BlockRenames() {
  static const auto* renames = new std::vector<std::pair<std::string, std::string>>{
      {"modulation", "scale_shift_table"},
      {"self_attn.o.", "attn1.to_out.0."},
      {"self_attn.q.", "attn1.to_q."},
      {"self_attn.k.", "attn1.to_k."},
      {"self_attn.v.", "attn1.to_v."},
      {"self_attn.norm_q.", "attn1.norm_q."},
      {"self_attn.norm_k.", "attn1.norm_k."},
      {"cross_attn.o.", "attn2.to_out.0."},
      {"cross_attn.q.", "attn2.to_q."},
      {"cross_attn.k.", "attn2.to_k."},
      {"cross_attn.v.", "attn2.to_v."},
      {"cross_attn.norm_q.", "attn2.norm_q."},
      {"cross_attn.norm_k.", "attn2.norm_k."},
      {"norm3.", "norm2."},  // the cross-attention LayerNorm: names are swapped in diffusers
      {"ffn.0.", "ffn.net.0.proj."},
      {"ffn.2.", "ffn.net.2."},
  };
  return *renames;
}

}  // namespace

std::vector<ParameterSpec> WanDitParameters(const WanDitConfig& config) {
  const int64_t d = config.dim;
  std::vector<ParameterSpec> specs;
  specs.push_back({"patch_embedding.weight", {d, config.in_dim, config.patch_t, config.patch_h, config.patch_w}, true});
  specs.push_back({"patch_embedding.bias", {d}, false});
  AddLinear(specs, "text_embedding.0", d, config.text_dim, true);
  AddLinear(specs, "text_embedding.2", d, d, true);
  AddLinear(specs, "time_embedding.0", d, config.freq_dim, false);
  AddLinear(specs, "time_embedding.2", d, d, false);
  AddLinear(specs, "time_projection.1", 6 * d, d, false);
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string block = absl::StrCat("blocks.", i, ".");
    specs.push_back({block + "modulation", {1, 6, d}, false});
    for (const char* attention : {"self_attn", "cross_attn"}) {
      for (const char* projection : {"q", "k", "v", "o"}) {
        AddLinear(specs, absl::StrCat(block, attention, ".", projection), d, d, true);
      }
      specs.push_back({absl::StrCat(block, attention, ".norm_q.weight"), {d}, false});
      specs.push_back({absl::StrCat(block, attention, ".norm_k.weight"), {d}, false});
    }
    specs.push_back({block + "norm3.weight", {d}, false});
    specs.push_back({block + "norm3.bias", {d}, false});
    AddLinear(specs, block + "ffn.0", config.ffn_dim, d, true);
    AddLinear(specs, block + "ffn.2", d, config.ffn_dim, true);
  }
  specs.push_back({"head.modulation", {1, 2, d}, false});
  AddLinear(specs, "head.head", config.out_dim * config.patch_volume(), d, false);
  return specs;
}

std::string DiffusersName(const std::string& original_name) {
  static const std::vector<std::pair<std::string, std::string>> top_level = {
      {"time_embedding.0.", "condition_embedder.time_embedder.linear_1."},
      {"time_embedding.2.", "condition_embedder.time_embedder.linear_2."},
      {"time_projection.1.", "condition_embedder.time_proj."},
      {"text_embedding.0.", "condition_embedder.text_embedder.linear_1."},
      {"text_embedding.2.", "condition_embedder.text_embedder.linear_2."},
      {"head.modulation", "scale_shift_table"},
      {"head.head.", "proj_out."},
  };
  for (const auto& [original, diffusers] : top_level) {
    if (absl::StartsWith(original_name, original)) {
      return diffusers + original_name.substr(original.size());
    }
  }
  if (absl::StartsWith(original_name, "blocks.")) {
    const size_t dot = original_name.find('.', 7);
    const std::string block_prefix = original_name.substr(0, dot + 1);
    const std::string rest = original_name.substr(dot + 1);
    for (const auto& [original, diffusers] : BlockRenames()) {
      if (absl::StartsWith(rest, original)) return block_prefix + diffusers + rest.substr(original.size());
    }
  }
  return original_name;  // patch_embedding.* keeps its name
}

WeightNaming DetectNaming(const WeightSource& source) {
  return source.Contains("condition_embedder.time_proj.weight") || source.Contains("proj_out.weight")
             ? WeightNaming::kDiffusers
             : WeightNaming::kOriginal;
}

absl::StatusOr<WanDitWeights> LoadWanDitWeights(const WeightSource& source, const WanDitConfig& config,
                                                Backend& backend) {
  if (absl::Status valid = config.Validate(); !valid.ok()) return valid;
  const WeightNaming naming = DetectNaming(source);
  std::map<std::string, Tensor> loaded;
  for (const ParameterSpec& spec : WanDitParameters(config)) {
    const std::string key = naming == WeightNaming::kDiffusers ? DiffusersName(spec.name) : spec.name;
    if (!source.Contains(key)) {
      return absl::NotFoundError(absl::StrCat(source.description(), ": missing tensor \"", key, "\" (expected shape ",
                                              ShapeToString(spec.shape), ")"));
    }
    absl::StatusOr<Tensor> host = source.Get(key);
    if (!host.ok()) return host.status();
    if (host->shape() != spec.shape) {
      return absl::InvalidArgumentError(absl::StrCat(source.FileOf(key), ": tensor \"", key, "\" has shape ",
                                                     ShapeToString(host->shape()), ", expected ",
                                                     ShapeToString(spec.shape), " for config ", config.name));
    }
    if (host->dtype() != DType::kF32 && host->dtype() != DType::kBF16 && host->dtype() != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat(source.FileOf(key), ": tensor \"", key, "\" has dtype ",
                                                     DTypeName(host->dtype()), ", expected F32, BF16 or F16"));
    }
    const DType dtype = spec.matmul_weight ? backend.compute_dtype() : DType::kF32;
    loaded[spec.name] = backend.Upload(*host, dtype);
  }
  auto take = [&](const std::string& name) { return loaded.at(name); };
  const int64_t d = config.dim;
  WanDitWeights weights;
  weights.patch_weight = take("patch_embedding.weight").View({d, -1});
  weights.patch_bias = take("patch_embedding.bias");
  weights.text_in_weight = take("text_embedding.0.weight");
  weights.text_in_bias = take("text_embedding.0.bias");
  weights.text_out_weight = take("text_embedding.2.weight");
  weights.text_out_bias = take("text_embedding.2.bias");
  weights.time_in_weight = take("time_embedding.0.weight");
  weights.time_in_bias = take("time_embedding.0.bias");
  weights.time_out_weight = take("time_embedding.2.weight");
  weights.time_out_bias = take("time_embedding.2.bias");
  weights.time_projection_weight = take("time_projection.1.weight");
  weights.time_projection_bias = take("time_projection.1.bias");
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string block = absl::StrCat("blocks.", i, ".");
    WanBlockWeights b;
    b.modulation = take(block + "modulation").View({6, d});
    auto attention = [&](const std::string& prefix) {
      WanAttentionWeights a;
      a.q_weight = take(prefix + "q.weight");
      a.q_bias = take(prefix + "q.bias");
      a.k_weight = take(prefix + "k.weight");
      a.k_bias = take(prefix + "k.bias");
      a.v_weight = take(prefix + "v.weight");
      a.v_bias = take(prefix + "v.bias");
      a.o_weight = take(prefix + "o.weight");
      a.o_bias = take(prefix + "o.bias");
      a.norm_q = take(prefix + "norm_q.weight");
      a.norm_k = take(prefix + "norm_k.weight");
      return a;
    };
    b.self_attention = attention(block + "self_attn.");
    b.cross_attention = attention(block + "cross_attn.");
    b.norm3_weight = take(block + "norm3.weight");
    b.norm3_bias = take(block + "norm3.bias");
    b.ffn_in_weight = take(block + "ffn.0.weight");
    b.ffn_in_bias = take(block + "ffn.0.bias");
    b.ffn_out_weight = take(block + "ffn.2.weight");
    b.ffn_out_bias = take(block + "ffn.2.bias");
    weights.blocks.push_back(std::move(b));
  }
  weights.head_modulation = take("head.modulation").View({2, d});
  weights.head_weight = take("head.head.weight");
  weights.head_bias = take("head.head.bias");
  return weights;
}

}  // namespace zoetrope
