// Wan2.1 DiT configurations (spec/wan21.md §1): named presets, config.json in the original or diffusers
// format, and validation of everything the model code relies on.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace zoetrope {

// Key and config naming of a checkpoint: the official Wan2.1 release or diffusers' WanTransformer3DModel.
enum class WeightNaming { kOriginal, kDiffusers };

struct WanDitConfig {
  std::string name = "custom";
  int64_t dim = 0;
  int64_t ffn_dim = 0;
  int64_t freq_dim = 256;
  int64_t num_heads = 0;
  int64_t num_layers = 0;
  int64_t in_dim = 16;
  int64_t out_dim = 16;
  int64_t text_dim = 4096;
  int64_t text_len = 512;
  double eps = 1e-6;
  int patch_t = 1;
  int patch_h = 2;
  int patch_w = 2;

  int64_t head_dim() const { return num_heads > 0 ? dim / num_heads : 0; }
  int64_t patch_volume() const { return int64_t{patch_t} * patch_h * patch_w; }
  // RoPE split of head_dim into (frame, height, width) real dims: d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋.
  int64_t rope_frame_dims() const { return head_dim() - 4 * (head_dim() / 6); }
  int64_t rope_spatial_dims() const { return 2 * (head_dim() / 6); }

  // Every rule the model relies on; the message names the field and the rule.
  absl::Status Validate() const;
};

// "tiny", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b".
absl::StatusOr<WanDitConfig> WanDitConfigByName(absl::string_view name);
std::vector<std::string> WanDitConfigNames();

// Parses config.json text in the original (`dim`, `num_heads`, ...) or diffusers (`num_attention_heads`,
// `attention_head_dim`, ...) format. `source` names the file in error messages.
absl::StatusOr<WanDitConfig> ParseWanDitConfigJson(absl::string_view json_text, absl::string_view source);
absl::StatusOr<WanDitConfig> LoadWanDitConfigFile(const std::string& path);
// config.json text in the given format (the reference constructor's fields for kOriginal).
std::string WanDitConfigToJson(const WanDitConfig& config, WeightNaming naming);

}  // namespace zoetrope
