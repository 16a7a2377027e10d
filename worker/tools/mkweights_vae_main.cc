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
  const std::string output = absl::GetFlag(FLAGS_o);
  if (output.empty()) {
    std::fprintf(stderr, "zoetrope-mkweights-vae: -o FILE is required\n");
    return 2;
  }
  absl::StatusOr<zoetrope::WanVaeConfig> config = zoetrope::WanVaeConfigByName(absl::GetFlag(FLAGS_config));
  if (!config.ok()) {
    std::fprintf(stderr, "zoetrope-mkweights-vae: --config: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  zoetrope::RandomWeightsOptions options;
  options.seed = absl::GetFlag(FLAGS_seed);
  options.naming =
      absl::GetFlag(FLAGS_diffusers) ? zoetrope::WeightNaming::kDiffusers : zoetrope::WeightNaming::kOriginal;
  absl::StatusOr<zoetrope::DType> dtype = zoetrope::ParseStoredDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) {
    std::fprintf(stderr, "zoetrope-mkweights-vae: %s\n", std::string(dtype.status().message()).c_str());
    return 2;
  }
  options.dtype = *dtype;
  if (absl::Status created = zoetrope::CreateParentDirectory(output); !created.ok()) {
    std::fprintf(stderr, "zoetrope-mkweights-vae: %s\n", std::string(created.message()).c_str());
    return 1;
  }
  if (absl::Status status = zoetrope::WriteRandomWanVaeWeights(*config, options, output); !status.ok()) {
    std::fprintf(stderr, "zoetrope-mkweights-vae: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  std::printf("%s\n", output.c_str());
  return 0;
}
