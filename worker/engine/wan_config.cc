#include "worker/engine/wan_config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/config_presets.h"

namespace zoetrope {
namespace {

WanDitConfig Tiny() {
  WanDitConfig config;
  config.name = "tiny";
  config.dim = 128;
  config.ffn_dim = 256;
  config.num_heads = 2;
  config.num_layers = 2;
  config.text_dim = 64;
  config.text_len = 32;
  return config;
}

WanDitConfig Wan13B() {
  WanDitConfig config;
  config.name = "wan2.1-t2v-1.3b";
  config.dim = 1536;
  config.ffn_dim = 8960;
  config.num_heads = 12;
  config.num_layers = 30;
  return config;
}

WanDitConfig Wan14B() {
  WanDitConfig config;
  config.name = "wan2.1-t2v-14b";
  config.dim = 5120;
  config.ffn_dim = 13824;
  config.num_heads = 40;
  config.num_layers = 40;
  return config;
}

constexpr ConfigPreset<WanDitConfig> kPresets[] = {
    {"tiny", Tiny}, {"wan2.1-t2v-1.3b", Wan13B}, {"wan2.1-t2v-14b", Wan14B}};

absl::Status Rule(bool holds, absl::string_view field, absl::string_view rule, int64_t value) {
  if (holds) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("Wan DiT config: ", field, " must ", rule, " (got ", value, ")"));
}

}  // namespace

absl::Status WanDitConfig::Validate() const {
  absl::Status status;
  status.Update(Rule(dim > 0, "dim", "be positive", dim));
  status.Update(Rule(ffn_dim > 0, "ffn_dim", "be positive", ffn_dim));
  status.Update(Rule(freq_dim > 0 && freq_dim % 2 == 0, "freq_dim", "be positive and even", freq_dim));
  status.Update(Rule(num_heads > 0, "num_heads", "be positive", num_heads));
  status.Update(Rule(num_layers >= 0, "num_layers", "be non-negative", num_layers));
  status.Update(Rule(in_dim > 0, "in_dim", "be positive", in_dim));
  status.Update(Rule(out_dim > 0, "out_dim", "be positive", out_dim));
  status.Update(Rule(text_dim > 0, "text_dim", "be positive", text_dim));
  status.Update(Rule(text_len > 0, "text_len", "be positive", text_len));
  if (!status.ok()) return status;
  status.Update(Rule(dim % num_heads == 0, "dim", absl::StrCat("be a multiple of num_heads (", num_heads, ")"), dim));
  if (!status.ok()) return status;
  status.Update(Rule(head_dim() % 2 == 0 && head_dim() >= 6, "dim / num_heads",
                     "be even and at least 6 (RoPE splits the head into three axes of pairs)", head_dim()));
  status.Update(Rule(patch_t == 1 && patch_h == 2 && patch_w == 2, "patch_size", "be (1, 2, 2) for Wan2.1",
                     patch_t * 100 + patch_h * 10 + patch_w));
  if (!(eps > 0)) return absl::InvalidArgumentError(absl::StrCat("Wan DiT config: eps must be positive (got ", eps, ")"));
  return status;
}

absl::StatusOr<WanDitConfig> WanDitConfigByName(absl::string_view name) {
  return FindPreset(kPresets, name, "model config");
}

std::vector<std::string> WanDitConfigNames() { return PresetNames(kPresets); }

absl::StatusOr<WanDitConfig> ParseWanDitConfigJson(absl::string_view json_text, absl::string_view source) {
  nlohmann::json json = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  WanDitConfig config;
  config.name = std::string(source);
  // Reads an integer field when present; wrong types are errors naming the field.
  absl::Status status;
  auto read_int = [&](const char* key, int64_t* target) {
    if (!json.contains(key) || json[key].is_null()) return false;
    if (!json[key].is_number_integer()) {
      status.Update(absl::InvalidArgumentError(absl::StrCat(source, ": \"", key, "\" must be an integer")));
      return false;
    }
    *target = json[key].get<int64_t>();
    return true;
  };
  auto read_double = [&](const char* key, double* target) {
    if (!json.contains(key) || json[key].is_null()) return;
    if (!json[key].is_number()) {
      status.Update(absl::InvalidArgumentError(absl::StrCat(source, ": \"", key, "\" must be a number")));
      return;
    }
    *target = json[key].get<double>();
  };

  const bool diffusers = json.contains("num_attention_heads") || json.contains("attention_head_dim");
  if (diffusers) {
    int64_t head_dim = 0;
    bool has_heads = read_int("num_attention_heads", &config.num_heads);
    bool has_head_dim = read_int("attention_head_dim", &head_dim);
    if (status.ok() && !(has_heads && has_head_dim)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": diffusers config needs both \"num_attention_heads\" and \"attention_head_dim\""));
    }
    config.dim = config.num_heads * head_dim;
    read_int("in_channels", &config.in_dim);
    read_int("out_channels", &config.out_dim);
    read_int("text_len", &config.text_len);
    if (json.contains("patch_size")) {
      const auto& patch = json["patch_size"];
      if (!patch.is_array() || patch.size() != 3 || !patch[0].is_number_integer() || !patch[1].is_number_integer() ||
          !patch[2].is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": \"patch_size\" must be three integers"));
      }
      config.patch_t = patch[0].get<int>();
      config.patch_h = patch[1].get<int>();
      config.patch_w = patch[2].get<int>();
    }
  } else {
    for (const char* required : {"dim", "num_heads", "num_layers", "ffn_dim"}) {
      if (!json.contains(required)) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": missing \"", required, "\""));
      }
    }
    read_int("dim", &config.dim);
    read_int("num_heads", &config.num_heads);
    read_int("in_dim", &config.in_dim);
    read_int("out_dim", &config.out_dim);
    read_int("text_len", &config.text_len);
  }
  if (!read_int("num_layers", &config.num_layers) && status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": missing \"num_layers\""));
  }
  if (!read_int("ffn_dim", &config.ffn_dim) && status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": missing \"ffn_dim\""));
  }
  read_int("freq_dim", &config.freq_dim);
  read_int("text_dim", &config.text_dim);
  read_double("eps", &config.eps);
  if (!status.ok()) return status;
  if (absl::Status valid = config.Validate(); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", valid.message()));
  }
  return config;
}

absl::StatusOr<WanDitConfig> LoadWanDitConfigFile(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot open config file"));
  std::stringstream text;
  text << file.rdbuf();
  return ParseWanDitConfigJson(text.str(), path);
}

std::string WanDitConfigToJson(const WanDitConfig& config, WeightNaming naming) {
  nlohmann::ordered_json json;
  if (naming == WeightNaming::kOriginal) {
    json["_class_name"] = "WanModel";
    json["_diffusers_version"] = "0.30.0";
    json["dim"] = config.dim;
    json["eps"] = config.eps;
    json["ffn_dim"] = config.ffn_dim;
    json["freq_dim"] = config.freq_dim;
    json["in_dim"] = config.in_dim;
    json["model_type"] = "t2v";
    json["num_heads"] = config.num_heads;
    json["num_layers"] = config.num_layers;
    json["out_dim"] = config.out_dim;
    json["text_dim"] = config.text_dim;
    json["text_len"] = config.text_len;
  } else {
    json["_class_name"] = "WanTransformer3DModel";
    json["added_kv_proj_dim"] = nullptr;
    json["attention_head_dim"] = config.head_dim();
    json["cross_attn_norm"] = true;
    json["eps"] = config.eps;
    json["ffn_dim"] = config.ffn_dim;
    json["freq_dim"] = config.freq_dim;
    json["in_channels"] = config.in_dim;
    json["num_attention_heads"] = config.num_heads;
    json["num_layers"] = config.num_layers;
    json["out_channels"] = config.out_dim;
    json["patch_size"] = {config.patch_t, config.patch_h, config.patch_w};
    json["qk_norm"] = "rms_norm_across_heads";
    json["text_dim"] = config.text_dim;
    json["text_len"] = config.text_len;
  }
  return json.dump(2) + "\n";
}

}  // namespace zoetrope
