// zoetrope-mkweights-vae: deterministic random Wan2.1 VAE decoder weights (conv2 + decoder.*).
//
//   zoetrope-mkweights-vae --config tiny --seed 0 -o models/tiny/vae.safetensors
//   zoetrope-mkweights-vae --config wan2.1-vae --diffusers -o /data/wan13b/vae/diffusion_pytorch_model.safetensors
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "worker/engine/wan_vae_random_weights.h"
#include "worker/tools/weights_tool.h"

ABSL_FLAG(std::string, config, "tiny", "VAE config: tiny or wan2.1-vae");
ABSL_FLAG(uint64_t, seed, 0, "random seed; the same seed gives the same weights everywhere");
ABSL_FLAG(std::string, o, "", "output .safetensors path");
ABSL_FLAG(bool, diffusers, false, "use diffusers (AutoencoderKLWan) key names instead of the original Wan ones");
ABSL_FLAG(std::string, dtype, "f32", "stored dtype: f32 (as released), bf16 or f16");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Writes deterministic random Wan2.1 VAE decoder weights: --config NAME --seed S -o FILE");
  absl::ParseCommandLine(argc, argv);
  constexpr absl::string_view kTool = "zoetrope-mkweights-vae";
  absl::StatusOr<zoetrope::WanVaeConfig> config = zoetrope::WanVaeConfigByName(absl::GetFlag(FLAGS_config));
  if (!config.ok()) return zoetrope::ReportToolError(kTool, config.status(), 2, "--config");
  const std::string output = absl::GetFlag(FLAGS_o);
  // The VAE decoder is small (a few hundred MB at full size): written without a progress bar.
  return zoetrope::RunWeightsWriter(kTool, "mkweights-vae", output, absl::GetFlag(FLAGS_dtype),
                                    [&](zoetrope::DType dtype, const zoetrope::WeightsProgress&) {
                                      zoetrope::RandomWeightsOptions options;
                                      options.seed = absl::GetFlag(FLAGS_seed);
                                      options.naming = absl::GetFlag(FLAGS_diffusers)
                                                           ? zoetrope::WeightNaming::kDiffusers
                                                           : zoetrope::WeightNaming::kOriginal;
                                      options.dtype = dtype;
                                      return zoetrope::WriteRandomWanVaeWeights(*config, options, output);
                                    });
}
