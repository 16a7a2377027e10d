#include "cli/generate_command.h"

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/preview_files.h"
#include "cli/service_flags.h"
#include "common/progress_bar.h"
#include "parallel/sparsity_plan.h"
#include "worker/engine/pipeline_devices.h"
#include "worker/engine/latent_rgb_fit.h"
#include "worker/engine/preview_image.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/text_to_video.h"
#include "worker/engine/video_writer.h"

ABSL_FLAG(std::string, model, "models/tiny", "model folder: DiT, text encoder, VAE and tokenizer (original or diffusers layout)");
ABSL_FLAG(std::string, prompt, "a paper boat drifting down a rainy street", "text prompt");
ABSL_FLAG(int64_t, width, 832, "video width in pixels (multiple of 16)");
ABSL_FLAG(int64_t, height, 480, "video height in pixels (multiple of 16)");
ABSL_FLAG(int64_t, frames, 81, "number of frames (4n+1)");
ABSL_FLAG(int32_t, steps, 50, "denoising steps (≥ 1)");
ABSL_FLAG(double, guidance, 5.0, "classifier-free guidance scale (≥ 0; 1 skips the negative pass)");
ABSL_FLAG(double, shift, 5.0, "flow shift of the sigma schedule (> 0)");
ABSL_FLAG(std::string, sampler, "unipc", "sampler: unipc, dpm++ or euler");
ABSL_FLAG(uint64_t, seed, 0, "noise seed: the same seed gives the same video");
ABSL_FLAG(std::string, output, "out/video.mp4", "output: an .mp4 file, a folder of PNG frames, or a .safetensors file");
ABSL_FLAG(std::string, format, "", "output format: mp4, png, raw (decoded frames) or latent (skip the VAE; default: from the output name)");
ABSL_FLAG(std::string, device, "cpu", "compute device: cpu, cuda or cuda:N");
ABSL_FLAG(int32_t, threads, 0, "CPU threads for the cpu device (0 = all cores)");
ABSL_FLAG(std::string, attention, "",
          "self-attention sparsity plan: a preset (dense, radial, attention-tile, sliding-tile) or a plan YAML file "
          "(empty: dense for generate and serve, the worker's default for submit)");
ABSL_FLAG(int64_t, vae_chunk_frames, 1, "latent frames per VAE decode chunk (bounds memory; 0 = all at once)");
ABSL_FLAG(int32_t, sp, 1,
          "sequence-parallel (Ulysses) degree: ranks that split the tokens (CPU: threads; CUDA: GPUs of --gpus, or "
          "ranks on one GPU with --loopback)");
ABSL_FLAG(bool, cfg_parallel, false,
          "run the conditional and unconditional passes on two groups of --sp ranks at once (2 x sp ranks in all)");
ABSL_FLAG(std::string, gpus, "", "CUDA: the GPUs of the group, one rank each, e.g. 0,1,2,3 (default: --device's)");
ABSL_FLAG(bool, loopback, false, "CUDA: run every rank on the first GPU (tests and measures the parallel paths)");
ABSL_FLAG(int32_t, ulysses_chunks, 1,
          "with --sp > 1: head chunks whose all-to-alls overlap the attention of the previous chunk (1 = no overlap)");

ABSL_FLAG(std::string, preview, "",
          "live previews: save a JPEG contact sheet of the predicted video every --preview_every steps to this folder "
          "(DIR/step-NNN.jpg; generate, and submit/watch with the job's previews)");
ABSL_FLAG(std::string, preview_factors, "",
          "live previews: latent-to-RGB factors JSON (zoetrope-fit-preview-factors; default: the Wan2.1 factors)");
ABSL_FLAG(int32_t, preview_every, 0,
          "live previews every this many denoising steps (0: none, or 5 when --preview is given)");

namespace zoetrope {
namespace {

absl::StatusOr<VideoFormat> OutputFormat(const std::string& output) {
  const std::string requested = absl::GetFlag(FLAGS_format);
  if (!requested.empty()) {
    absl::StatusOr<VideoFormat> format = ParseVideoFormat(requested);
    if (!format.ok()) return absl::InvalidArgumentError(absl::StrCat("--format: ", format.status().message()));
    return format;
  }
  if (absl::EndsWith(output, ".mp4")) return VideoFormat::kMp4;
  if (absl::EndsWith(output, ".safetensors")) return VideoFormat::kRaw;
  return VideoFormat::kPng;
}

std::string AttentionFlagOr(const std::string& default_plan) {
  const std::string value = absl::GetFlag(FLAGS_attention);
  return value.empty() ? default_plan : value;
}

absl::Status Generate() {
  GenerationParameters parameters;
  parameters.prompt = absl::GetFlag(FLAGS_prompt);
  parameters.negative_prompt = absl::GetFlag(FLAGS_negative_prompt);
  parameters.width = absl::GetFlag(FLAGS_width);
  parameters.height = absl::GetFlag(FLAGS_height);
  parameters.frames = absl::GetFlag(FLAGS_frames);
  parameters.steps = absl::GetFlag(FLAGS_steps);
  parameters.guidance = absl::GetFlag(FLAGS_guidance);
  parameters.shift = absl::GetFlag(FLAGS_shift);
  parameters.seed = absl::GetFlag(FLAGS_seed);
  parameters.vae_chunk_frames = absl::GetFlag(FLAGS_vae_chunk_frames);
  absl::StatusOr<SamplerKind> sampler = ParseSamplerKind(absl::GetFlag(FLAGS_sampler));
  if (!sampler.ok()) return absl::InvalidArgumentError(absl::StrCat("--sampler: ", sampler.status().message()));
  parameters.sampler = *sampler;
  absl::StatusOr<SparsityPlanText> attention = ReadSparsityPlanText(AttentionFlagOr("dense"));
  if (!attention.ok()) return absl::InvalidArgumentError(absl::StrCat("--attention: ", attention.status().message()));
  parameters.attention = attention->text;
  parameters.attention_source = attention->source;
  if (absl::Status valid = ValidateGenerationParameters(parameters); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", valid.message()));
  }
  const std::string preview_directory = absl::GetFlag(FLAGS_preview);
  parameters.preview_every = absl::GetFlag(FLAGS_preview_every);
  if (parameters.preview_every == 0 && !preview_directory.empty()) parameters.preview_every = kDefaultPreviewEvery;
  if (parameters.preview_every < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--preview_every: must be ≥ 0 (got ", parameters.preview_every, ")"));
  }
  const std::string output = absl::GetFlag(FLAGS_output);
  const bool latent_only = absl::GetFlag(FLAGS_format) == "latent";
  parameters.decode = !latent_only;
  absl::StatusOr<VideoFormat> format = latent_only ? VideoFormat::kRaw : OutputFormat(output);
  if (!format.ok()) return format.status();

  DeviceRequest request;
  request.device = absl::GetFlag(FLAGS_device);
  request.cpu_threads = absl::GetFlag(FLAGS_threads);
  request.sequence_parallel = absl::GetFlag(FLAGS_sp);
  request.cfg_parallel = absl::GetFlag(FLAGS_cfg_parallel);
  request.loopback = absl::GetFlag(FLAGS_loopback);
  absl::StatusOr<std::vector<int>> gpus = ParseGpuList(absl::GetFlag(FLAGS_gpus));
  if (!gpus.ok()) return gpus.status();
  request.gpus = *gpus;
  absl::StatusOr<PipelineDevices> devices = CreatePipelineDevices(request);
  if (!devices.ok()) {
    return absl::Status(devices.status().code(), absl::StrCat("--device/--sp: ", devices.status().message()));
  }

  const auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<TextToVideoPipeline>> pipeline =
      TextToVideoPipeline::LoadGroup(absl::GetFlag(FLAGS_model), [&] {
        PipelineGroup group = devices->group();
        group.ulysses_chunks = absl::GetFlag(FLAGS_ulysses_chunks);
        return group;
      }());
  if (!pipeline.ok()) return pipeline.status();
  Backend* backend = devices->backends.front().get();
  const WanDitConfig& config = (*pipeline)->transformer().config();
  std::fprintf(stderr, "loaded %s (%s layout; DiT %s: %lld blocks, dim %lld) in %.2f s on %s (%s)\n",
               absl::GetFlag(FLAGS_model).c_str(), (*pipeline)->files().diffusers_layout ? "diffusers" : "original",
               config.name.c_str(), static_cast<long long>(config.num_layers), static_cast<long long>(config.dim),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count(),
               backend->name().c_str(), devices->degrees.ToString().c_str());

  // Previews (--preview_every without --preview renders them too, so their cost can be measured alone).
  PreviewOptions preview_options;
  LatentRgbFactors preview_factors = Wan21LatentRgbFactors();
  if (!absl::GetFlag(FLAGS_preview_factors).empty()) {
    absl::StatusOr<LatentRgbFactors> factors = ReadLatentRgbFactors(absl::GetFlag(FLAGS_preview_factors));
    if (!factors.ok()) return absl::InvalidArgumentError(absl::StrCat("--preview_factors: ", factors.status().message()));
    preview_factors = *factors;
  }
  preview_options.factors = &preview_factors;
  int previews_written = 0;
  double preview_seconds = 0.0;
  absl::Status preview_status;
  auto preview = [&](int step, const Tensor& predicted_latent) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<EncodedPreview> image = RenderLatentPreview(*backend, predicted_latent, preview_options);
    if (image.ok() && !preview_directory.empty()) {
      absl::StatusOr<std::string> path = WritePreviewFile(preview_directory, step, image->media_type, image->bytes);
      if (!path.ok()) image = path.status();
    }
    preview_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!image.ok()) {
      if (preview_status.ok()) preview_status = image.status();
      return;
    }
    ++previews_written;
  };
  // The video is written while it is decoded (VideoStreamWriter encodes each chunk as the VAE produces the
  // next); opened before the run so that a bad output path fails before any GPU time is spent.
  std::unique_ptr<VideoStreamWriter> writer;
  std::function<absl::Status(const Tensor&)> frames_sink;
  if (!latent_only) {
    VideoOutputOptions video;
    video.format = *format;
    video.path = output;
    video.frames_per_second = absl::GetFlag(FLAGS_fps);
    video.comment = absl::StrCat("prompt: ", parameters.prompt, "; seed: ", parameters.seed, "; steps: ",
                                 parameters.steps, "; sampler: ", std::string(SamplerKindName(parameters.sampler)));
    absl::StatusOr<std::unique_ptr<VideoStreamWriter>> opened =
        VideoStreamWriter::Open(video, parameters.height, parameters.width);
    if (!opened.ok()) return opened.status();
    writer = *std::move(opened);
    frames_sink = [&writer](const Tensor& frames) { return writer->Append(frames); };
  }
  std::unique_ptr<ProgressBar> bar;
  absl::StatusOr<GenerationResult> result = (*pipeline)->Generate(parameters, [&](const GenerationProgress& progress) {
    switch (progress.phase) {
      case GenerationPhase::kEncodingText:
        std::fprintf(stderr, "encoding prompt\n");
        break;
      case GenerationPhase::kDenoising:
        if (!bar) bar = std::make_unique<ProgressBar>("denoise", parameters.steps, "steps");
        if (progress.denoise.step > 0) {
          bar->Update(progress.denoise.step,
                      absl::StrFormat("t=%d  %.3f s/step", progress.denoise.timestep, progress.denoise.step_seconds));
        }
        break;
      case GenerationPhase::kDecoding:
        if (bar) bar->Finish();
        std::fprintf(stderr, "decoding %lld frames\n", static_cast<long long>(parameters.frames));
        break;
    }
  }, /*cancelled=*/nullptr, /*attention=*/nullptr,
     parameters.preview_every > 0 ? std::function<void(int, const Tensor&)>(preview) : nullptr, frames_sink);
  if (!result.ok()) return result.status();
  if (!preview_status.ok()) std::fprintf(stderr, "preview failed: %s\n", std::string(preview_status.message()).c_str());
  if (parameters.preview_every > 0) {
    std::fprintf(stderr, "previews: %d every %d steps%s, %.3f s in all\n", previews_written, parameters.preview_every,
                 preview_directory.empty() ? "" : absl::StrCat(" in ", preview_directory).c_str(), preview_seconds);
  }

  if (latent_only) {
    if (absl::Status written = WriteSafetensors(output, {{"latent", result->latent}}); !written.ok()) return written;
    std::fprintf(stderr, "attention %s: mean block density %.4f\n", attention->source.c_str(),
                 result->attention_density);
    std::fprintf(stderr, "text %.2f s, denoise %.2f s (%.3f s/step)\n", result->text_seconds, result->denoise_seconds,
                 result->denoise_seconds / parameters.steps);
    std::printf("%s\n", output.c_str());
    return absl::OkStatus();
  }
  // The frames went to the writer while the VAE decoded; what is left is the last chunk and the file's end.
  const auto write_start = std::chrono::steady_clock::now();
  if (absl::Status written = writer->Finish(); !written.ok()) return written;
  const double write_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - write_start).count();
  std::fprintf(stderr, "attention %s: mean block density %.4f\n", attention->source.c_str(), result->attention_density);
  std::fprintf(stderr, "text %.2f s, denoise %.2f s (%.3f s/step), decode + overlapped write %.2f s, write tail %.2f s\n",
               result->text_seconds, result->denoise_seconds, result->denoise_seconds / parameters.steps,
               result->decode_seconds, write_seconds);
  std::printf("%s\n", output.c_str());
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
