#include "worker/pipeline_job_runner.h"

#include <chrono>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "worker/engine/video_writer.h"

namespace zoetrope {
namespace {

// 720p, 81 frames: 21 · 45 · 80.
constexpr int64_t kDefaultMaxTokens = 75600;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::string ModelNameOfPath(const std::string& model_path) {
  std::filesystem::path path(model_path);
  while (!path.empty() && path.filename().empty()) path = path.parent_path();  // trailing slash
  const std::string name = path.filename().string();
  return name.empty() ? model_path : name;
}

absl::StatusOr<std::unique_ptr<PipelineJobRunner>> PipelineJobRunner::Create(const PipelineOptions& options) {
  std::unique_ptr<PipelineJobRunner> runner(new PipelineJobRunner());
  runner->options_ = options;
  DeviceRequest request;
  request.device = options.device;
  request.cpu_threads = options.threads;
  request.gpus = options.gpus;
  request.sequence_parallel = options.sequence_parallel;
  request.cfg_parallel = options.cfg_parallel;
  request.loopback = options.loopback;
  absl::StatusOr<PipelineDevices> devices = CreatePipelineDevices(request);
  if (!devices.ok()) {
    return absl::Status(devices.status().code(), absl::StrCat("device: ", devices.status().message()));
  }
  runner->devices_ = *std::move(devices);
  Backend& backend = *runner->devices_.backends.front();

  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<TextToVideoPipeline>> pipeline =
      TextToVideoPipeline::LoadGroup(options.model_path, [&] {
        PipelineGroup group = runner->devices_.group();
        group.ulysses_chunks = options.ulysses_chunks;
        return group;
      }());
  if (!pipeline.ok()) return pipeline.status();
  runner->pipeline_ = std::move(*pipeline);
  runner->load_seconds_ = SecondsSince(start);
  // A default plan that cannot serve this model is a configuration error, reported at start, not per job.
  const WanDitConfig& dit = runner->pipeline_->transformer().config();
  absl::StatusOr<SparsityPlan> plan = SparsityPlanFromPresetOrText(options.default_attention, "--attention");
  absl::Status fits = plan.ok() ? plan->Validate(static_cast<int>(dit.num_layers), static_cast<int>(dit.num_heads),
                                                 std::numeric_limits<int>::max())
                                : plan.status();
  if (!fits.ok()) return fits;

  RunnerCapabilities& capabilities = runner->capabilities_;
  capabilities.models = {options.model_name.empty() ? ModelNameOfPath(options.model_path) : options.model_name};
  capabilities.backend = backend.device().is_cpu() ? "cpu" : "cuda";
  capabilities.gpus = runner->devices_.gpu_count();
  capabilities.sequence_parallel_degree = runner->devices_.degrees.sequence;
  capabilities.cfg_parallel_degree = runner->devices_.degrees.cfg;
  // A rank holds 1/sp of the activations (attention memory is linear in the tokens), so a group's default
  // limit grows with its sequence-parallel degree.
  capabilities.max_tokens =
      options.max_tokens > 0 ? options.max_tokens : kDefaultMaxTokens * runner->devices_.degrees.sequence;
  capabilities.formats = {ResultFormat::kMp4, ResultFormat::kRawSafetensors};
  capabilities.device_name = backend.name();
  return runner;
}

PipelineJobRunner::~PipelineJobRunner() = default;

absl::StatusOr<JobOutput> PipelineJobRunner::Run(const GenerationRequest& request, ProgressSink& progress,
                                                 const std::atomic<bool>& cancelled) {
  GenerationParameters parameters;
  parameters.prompt = request.prompt;
  parameters.negative_prompt = request.negative_prompt;
  parameters.width = request.width;
  parameters.height = request.height;
  parameters.frames = request.frames;
  parameters.steps = request.steps;
  parameters.guidance = request.guidance;
  parameters.shift = request.shift;
  parameters.sampler = request.sampler;
  parameters.seed = request.seed;
  parameters.vae_chunk_frames = options_.vae_chunk_frames;
  parameters.attention = request.attention.empty() ? options_.default_attention : request.attention;
  if (absl::Status valid = ValidateGenerationParameters(parameters); !valid.ok()) return valid;

  absl::StatusOr<GenerationResult> result = pipeline_->Generate(
      parameters,
      [&progress](const GenerationProgress& update) {
        switch (update.phase) {
          case GenerationPhase::kEncodingText:
            progress.OnPhase(JobPhase::kEncodingText);
            break;
          case GenerationPhase::kDenoising:
            if (update.denoise.step == 0) {
              progress.OnPhase(JobPhase::kDenoising);
            } else {
              progress.OnStep(StepProgress{update.denoise.step, update.denoise.steps, update.denoise.step_seconds});
            }
            break;
          case GenerationPhase::kDecoding:
            progress.OnPhase(JobPhase::kDecoding);
            break;
        }
      },
      &cancelled);
  if (!result.ok()) return result.status();
  if (cancelled.load()) return absl::CancelledError("cancelled after decoding");

  // The same file `zoetrope generate` writes for these parameters.
  progress.OnPhase(JobPhase::kEncodingVideo);
  VideoOutputOptions video;
  const bool raw = request.format == ResultFormat::kRawSafetensors;
  video.format = raw ? VideoFormat::kRaw : VideoFormat::kMp4;
  video.path = request.output_path + (raw ? ".safetensors" : ".mp4");
  video.frames_per_second = request.fps;
  video.comment = absl::StrCat("prompt: ", parameters.prompt, "; seed: ", parameters.seed, "; steps: ", parameters.steps,
                               "; sampler: ", std::string(SamplerKindName(parameters.sampler)));
  if (absl::Status written = WriteVideo(result->frames, video); !written.ok()) return written;
  std::error_code error;
  const auto size = std::filesystem::file_size(video.path, error);
  if (error) return absl::InternalError(absl::StrCat(video.path, ": ", error.message()));

  JobOutput output;
  output.path = video.path;
  output.media_type = raw ? "application/x-safetensors" : "video/mp4";
  output.size_bytes = static_cast<int64_t>(size);
  output.denoise_seconds = result->denoise_seconds;
  output.attention_density = result->attention_density;
  output.gpus = capabilities_.gpus;
  return output;
}

}  // namespace zoetrope
