// zoetrope-fit-preview-factors: fits the 16 × 3 latent → RGB factors (and bias) of live previews for a VAE
// by least squares from its decoder (worker/engine/latent_rgb_fit.h), on the CPU.
//
//   zoetrope-fit-preview-factors --model /models/wan2.1-t2v-1.3b -o preview_factors.json
//   zoetrope-fit-preview-factors --vae models/tiny/vae.safetensors --latents 8 --size 8x8
// Writes JSON {"factors": [[r, g, b] × 16], "bias": [r, g, b], "samples", "residual_rms", "r_squared"} (to
// stdout without -o), which `zoetrope generate --preview_factors` and `zoetrope-worker --preview_factors`
// read; prints the fit's residual to stderr.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "kernels/cpu/cpu_backend.h"
#include "worker/engine/latent_rgb_fit.h"
#include "worker/engine/model_folder.h"
#include "worker/engine/wan_vae.h"
#include "worker/tools/weights_tool.h"

ABSL_FLAG(std::string, model, "", "model folder whose VAE to fit (original or diffusers layout)");
ABSL_FLAG(std::string, vae, "", "VAE weights (a .safetensors file, index or folder) instead of --model");
ABSL_FLAG(int32_t, latents, 32, "random latents to decode");
ABSL_FLAG(std::string, size, "16x16", "latent height x width of each (video pixels: 8x as many)");
ABSL_FLAG(uint64_t, seed, 0, "seed of the random latents");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0: all cores)");
ABSL_FLAG(std::string, o, "", "output JSON file (default: stdout)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Fits latent-to-RGB preview factors for a VAE: --model DIR | --vae FILE [-o OUT.json]");
  absl::ParseCommandLine(argc, argv);
  constexpr absl::string_view kTool = "zoetrope-fit-preview-factors";
  std::string vae_path = absl::GetFlag(FLAGS_vae);
  if (vae_path.empty()) {
    if (absl::GetFlag(FLAGS_model).empty()) {
      return zoetrope::ReportToolError(kTool, absl::InvalidArgumentError("give --model or --vae"), 2);
    }
    absl::StatusOr<zoetrope::ModelFiles> files = zoetrope::FindModelFiles(absl::GetFlag(FLAGS_model));
    if (!files.ok()) return zoetrope::ReportToolError(kTool, files.status(), 1, "--model");
    vae_path = files->vae;
  }
  zoetrope::LatentRgbFitOptions options;
  options.latents = absl::GetFlag(FLAGS_latents);
  options.seed = absl::GetFlag(FLAGS_seed);
  const std::vector<std::string> size = absl::StrSplit(absl::GetFlag(FLAGS_size), 'x');
  if (size.size() != 2 || !absl::SimpleAtoi(size[0], &options.height) || !absl::SimpleAtoi(size[1], &options.width) ||
      options.height < 1 || options.width < 1) {
    return zoetrope::ReportToolError(kTool, absl::InvalidArgumentError("--size must be HxW, e.g. 16x16"), 2);
  }
  std::unique_ptr<zoetrope::Backend> backend = zoetrope::CreateCpuBackend(absl::GetFlag(FLAGS_threads));
  absl::StatusOr<std::unique_ptr<zoetrope::WanVae>> vae = zoetrope::WanVae::Load(vae_path, *backend);
  if (!vae.ok()) return zoetrope::ReportToolError(kTool, vae.status(), 1, "VAE");
  if ((*vae)->config().z_dim != zoetrope::kPreviewLatentChannels) {
    return zoetrope::ReportToolError(
        kTool, absl::InvalidArgumentError("the preview projection needs a VAE of 16 latent channels"), 1);
  }
  absl::StatusOr<zoetrope::LatentRgbFit> fit = zoetrope::FitLatentRgbFactors(
      [&](const zoetrope::Tensor& latent) -> absl::StatusOr<zoetrope::Tensor> {
        absl::StatusOr<zoetrope::Tensor> frames = (*vae)->Decode(latent);
        if (!frames.ok()) return frames.status();
        return backend->ToHost(*frames);
      },
      options);
  if (!fit.ok()) return zoetrope::ReportToolError(kTool, fit.status(), 1);
  std::fprintf(stderr, "%s: %lld latent pixels; residual RMS (R, G, B) %.4f %.4f %.4f; R² %.3f %.3f %.3f\n",
               vae_path.c_str(), static_cast<long long>(fit->samples), fit->residual_rms[0], fit->residual_rms[1],
               fit->residual_rms[2], fit->r_squared[0], fit->r_squared[1], fit->r_squared[2]);
  for (double value : fit->residual_rms) {
    if (!std::isfinite(value)) {
      return zoetrope::ReportToolError(kTool, absl::InternalError("the fit's residual is not finite"), 1);
    }
  }
  const std::string json = zoetrope::LatentRgbFactorsToJson(*fit) + "\n";
  const std::string output = absl::GetFlag(FLAGS_o);
  if (output.empty()) {
    std::fputs(json.c_str(), stdout);
    return 0;
  }
  std::ofstream file(output);
  file << json;
  if (!file) return zoetrope::ReportToolError(kTool, absl::InternalError("cannot write the output"), 1, output);
  std::fprintf(stderr, "%s\n", output.c_str());
  return 0;
}
