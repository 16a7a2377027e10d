// zoetrope-mkweights: deterministic random Wan2.1 DiT weights for any config, with config.json beside.
//
//   zoetrope-mkweights --config tiny --seed 0 -o models/tiny/diffusion_pytorch_model.safetensors
//   zoetrope-mkweights --config wan2.1-t2v-1.3b --dtype bf16 --diffusers -o /data/wan13b/transformer/model.safetensors
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/wan_random_weights.h"
#include "worker/tools/weights_tool.h"

ABSL_FLAG(std::string, config, "tiny", "model config: tiny, wan2.1-t2v-1.3b or wan2.1-t2v-14b");
ABSL_FLAG(uint64_t, seed, 0, "random seed; the same seed gives the same weights everywhere");
ABSL_FLAG(std::string, o, "", "output .safetensors path (config.json is written beside it)");
ABSL_FLAG(bool, diffusers, false, "use diffusers key names and config format instead of the original Wan ones");
ABSL_FLAG(int64_t, num_layers, -1, "override the number of transformer blocks (e.g. a 2-block slice)");
ABSL_FLAG(std::string, dtype, "f32", "stored dtype: f32, bf16 or f16");
ABSL_FLAG(int64_t, num_heads, -1,
          "override the number of attention heads, keeping the head width (dim and ffn_dim scale with it): "
          "models whose head count a parallel degree does not divide");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Writes deterministic random Wan2.1 DiT weights: --config NAME --seed S -o FILE");
  absl::ParseCommandLine(argc, argv);
  constexpr absl::string_view kTool = "zoetrope-mkweights";
  absl::StatusOr<zoetrope::WanDitConfig> config = zoetrope::WanDitConfigByName(absl::GetFlag(FLAGS_config));
  if (!config.ok()) return zoetrope::ReportToolError(kTool, config.status(), 2, "--config");
  if (absl::GetFlag(FLAGS_num_layers) >= 0) config->num_layers = absl::GetFlag(FLAGS_num_layers);
  if (const int64_t heads = absl::GetFlag(FLAGS_num_heads); heads >= 0) {
    const int64_t head_dim = config->head_dim();
    config->ffn_dim = config->ffn_dim * heads / config->num_heads;
    config->dim = heads * head_dim;
    config->num_heads = heads;
    config->name = absl::StrCat(config->name, "-", heads, "-heads");
    if (absl::Status valid = config->Validate(); !valid.ok()) {
      return zoetrope::ReportToolError(kTool, valid, 2, "--num_heads");
    }
  }
  const std::string output = absl::GetFlag(FLAGS_o);
  return zoetrope::RunWeightsWriter(
      kTool, absl::StrCat("mkweights ", config->name), output, absl::GetFlag(FLAGS_dtype),
      [&](zoetrope::DType dtype, const zoetrope::WeightsProgress& progress) {
        zoetrope::RandomWeightsOptions options;
        options.seed = absl::GetFlag(FLAGS_seed);
        options.naming =
            absl::GetFlag(FLAGS_diffusers) ? zoetrope::WeightNaming::kDiffusers : zoetrope::WeightNaming::kOriginal;
        options.dtype = dtype;
        return zoetrope::WriteRandomWanDitWeights(*config, options, output, progress);
      });
}
