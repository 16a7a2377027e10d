#include "worker/cli/generate_command.h"

#include <chrono>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu/cpu_backend.h"
#include "parallel/sequence_attention.h"
#include "worker/cli/progress_bar.h"
#include "worker/engine/denoise.h"
#include "worker/engine/random.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/wan_dit.h"

ABSL_FLAG(std::string, model, "models/tiny", "model folder (or DiT checkpoint) with config.json beside the weights");
ABSL_FLAG(std::string, prompt, "a zoetrope spinning in warm light", "text prompt");
ABSL_FLAG(int64_t, width, 128, "video width in pixels (multiple of 16)");
ABSL_FLAG(int64_t, height, 128, "video height in pixels (multiple of 16)");
ABSL_FLAG(int64_t, frames, 17, "number of frames (4n+1)");
ABSL_FLAG(int32_t, steps, 10, "denoising steps (≥ 1)");
ABSL_FLAG(double, guidance, 5.0, "classifier-free guidance scale (≥ 0; 1 disables the negative pass)");
ABSL_FLAG(double, shift, 5.0, "flow shift of the sigma schedule (> 0)");
ABSL_FLAG(std::string, sampler, "unipc", "sampler: unipc, dpm++ or euler");
ABSL_FLAG(uint64_t, seed, 0, "noise seed: the same seed gives the same result");
ABSL_FLAG(std::string, output, "latents.safetensors", "output file (safetensors with `latent`)");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0 = all cores)");

namespace zoetrope {
namespace {

absl::Status ValidateRequest(int64_t width, int64_t height, int64_t frames, int steps) {
  if (width < 16 || width % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--width must be a positive multiple of 16 (got ", width, ")"));
  }
  if (height < 16 || height % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--height must be a positive multiple of 16 (got ", height, ")"));
  }
  if (frames < 1 || (frames - 1) % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--frames must be 4n+1, e.g. 17 or 81 (got ", frames, ")"));
  }
  if (steps < 1) return absl::InvalidArgumentError(absl::StrCat("--steps must be ≥ 1 (got ", steps, ")"));
  return absl::OkStatus();
}

// Stand-in for the text encoder: a fixed-length random embedding keyed by the prompt text.
Tensor StandInPromptEmbedding(const std::string& prompt, int64_t rows, int64_t width) {
  Tensor embedding = Tensor::Host({rows, width}, DType::kF32);
  FillStandardNormal(StreamKey(0, "prompt:" + prompt), 0, embedding.data<float>(), embedding.numel());
  return embedding;
}

absl::Status Generate() {
  const int64_t width = absl::GetFlag(FLAGS_width), height = absl::GetFlag(FLAGS_height);
  const int64_t frames = absl::GetFlag(FLAGS_frames);
  const int steps = absl::GetFlag(FLAGS_steps);
  if (absl::Status valid = ValidateRequest(width, height, frames, steps); !valid.ok()) return valid;
  absl::StatusOr<SamplerKind> sampler = ParseSamplerKind(absl::GetFlag(FLAGS_sampler));
  if (!sampler.ok()) return absl::InvalidArgumentError(absl::StrCat("--sampler: ", sampler.status().message()));

  std::unique_ptr<Backend> backend = CreateCpuBackend(absl::GetFlag(FLAGS_threads));
  const auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<WanDit>> model = WanDit::Load(absl::GetFlag(FLAGS_model), *backend);
  if (!model.ok()) return model.status();
  const WanDitConfig& config = (*model)->config();
  std::fprintf(stderr, "loaded %s (%lld blocks, dim %lld) in %.2f s on %s\n", config.name.c_str(),
               static_cast<long long>(config.num_layers), static_cast<long long>(config.dim),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count(),
               backend->name().c_str());

  // Text-free: a stand-in embedding for the prompt, and the empty (all-padding) context as the negative.
  const int64_t prompt_rows = std::min<int64_t>(config.text_len, 16);
  absl::StatusOr<WanDit::PromptConditioning> positive =
      (*model)->EncodePrompt(StandInPromptEmbedding(absl::GetFlag(FLAGS_prompt), prompt_rows, config.text_dim));
  if (!positive.ok()) return positive.status();
  absl::StatusOr<WanDit::PromptConditioning> negative =
      (*model)->EncodePrompt(Tensor::Host({0, config.text_dim}, DType::kF32));
  if (!negative.ok()) return negative.status();

  DenoiseOptions options;
  options.latent_shape = LatentShapeFor(width, height, frames, config.in_dim);
  options.steps = steps;
  options.shift = absl::GetFlag(FLAGS_shift);
  options.guidance = absl::GetFlag(FLAGS_guidance);
  options.sampler = *sampler;
  options.seed = absl::GetFlag(FLAGS_seed);

  LocalDenseAttention attention;
  ProgressBar bar("denoise", steps, "steps");
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Tensor> latent = Denoise(**model, attention, *positive, &*negative, options,
                                          [&](const DenoiseProgress& progress) {
                                            bar.Update(progress.step, absl::StrFormat("t=%d  %.3f s/step",
                                                                                      progress.timestep,
                                                                                      progress.step_seconds));
                                          });
  if (!latent.ok()) return latent.status();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bar.Finish(absl::StrFormat("%.3f s/step", seconds / steps));

  const std::string output = absl::GetFlag(FLAGS_output);
  if (absl::Status written = WriteSafetensors(output, {{"latent", backend->ToHost(*latent)}},
                                              {{"prompt", absl::GetFlag(FLAGS_prompt)},
                                               {"seed", absl::StrCat(options.seed)},
                                               {"steps", absl::StrCat(steps)},
                                               {"sampler", std::string(SamplerKindName(*sampler))}});
      !written.ok()) {
    return written;
  }
  std::printf("%s\n", output.c_str());
  std::fprintf(stderr, "denoised latent %s in %.2f s (%d steps, guidance %.2f) -> %s\n",
               ShapeToString(options.latent_shape).c_str(), seconds, steps, options.guidance, output.c_str());
  return absl::OkStatus();
}

}  // namespace

int RunGenerateCommand(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::Status status = Generate(); !status.ok()) {
    std::fprintf(stderr, "zoetrope generate: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace zoetrope
