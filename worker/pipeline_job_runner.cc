#include "worker/pipeline_job_runner.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "worker/engine/video_writer.h"

namespace zoetrope {
namespace {

// 720p, 81 frames: 21 · 45 · 80.
constexpr int64_t kDefaultMaxTokens = 75600;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Wall seconds and GPU joules of each phase of one job, from the energy meter read at phase boundaries.
class PhaseLedger {
 public:
  explicit PhaseLedger(EnergyMeter& meter) : meter_(meter) { meter_.Start(); }
  ~PhaseLedger() { meter_.Stop(); }

  void Enter(JobPhase phase) {
    Close();
    phase_ = phase;
  }

  void Finish(JobOutput& output) {
    Close();
    const EnergySnapshot total = meter_.Stop();
    output.energy_source = EnergySourceName(meter_.source());
    if (meter_.available()) {
      output.gpu_energy_joules = total.total();
      for (size_t gpu = 0; gpu < total.joules_per_gpu.size(); ++gpu) {
        output.energy_per_gpu.emplace_back(meter_.gpu_label(static_cast<int>(gpu)), total.joules_per_gpu[gpu]);
      }
    }
    output.text_seconds = seconds_[Index(JobPhase::kEncodingText)];
    output.decode_seconds = seconds_[Index(JobPhase::kDecoding)];
    output.video_encode_seconds = seconds_[Index(JobPhase::kEncodingVideo)];
    output.text_energy_joules = joules_[Index(JobPhase::kEncodingText)];
    output.denoise_energy_joules = joules_[Index(JobPhase::kDenoising)];
    output.decode_energy_joules = joules_[Index(JobPhase::kDecoding)];
    output.video_encode_energy_joules = joules_[Index(JobPhase::kEncodingVideo)];
  }

 private:
  static size_t Index(JobPhase phase) { return static_cast<size_t>(phase); }
  void Close() {
    const auto now = std::chrono::steady_clock::now();
    const double joules = meter_.Read().total();
    seconds_[Index(phase_)] += std::chrono::duration<double>(now - since_).count();
    joules_[Index(phase_)] += joules - joules_read_;
    since_ = now;
    joules_read_ = joules;
  }

  EnergyMeter& meter_;
  JobPhase phase_ = JobPhase::kLoading;  // before the first phase: parameter checks, plan
  std::chrono::steady_clock::time_point since_ = std::chrono::steady_clock::now();
  double joules_read_ = 0.0;
  std::array<double, 5> seconds_{};
  std::array<double, 5> joules_{};
};

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
  // Energy on every distinct GPU of the group (loopback puts every rank on one GPU).
  std::unique_ptr<GpuPowerReader> power;
  if (!backend.device().is_cpu()) {
    std::vector<int> gpus = runner->devices_.gpus;
    std::sort(gpus.begin(), gpus.end());
    gpus.erase(std::unique(gpus.begin(), gpus.end()), gpus.end());
    absl::StatusOr<std::unique_ptr<GpuPowerReader>> opened = OpenNvmlPowerReader(gpus);
    if (opened.ok()) {
      power = std::move(*opened);
    } else {
      Log("worker", "GPU energy unavailable: ", opened.status().message());
    }
  }
  runner->energy_ = std::make_unique<EnergyMeter>(std::move(power));
  capabilities.energy_source = EnergySourceName(runner->energy_->source());
  capabilities.gpu_kind = backend.device().is_cpu() ? "cpu" : runner->energy_->gpu_kind();
  if (capabilities.gpu_kind.empty()) capabilities.gpu_kind = "gpu";
  for (int gpu = 0; gpu < runner->energy_->gpu_count(); ++gpu) {
    capabilities.energy_gpu_labels.push_back(runner->energy_->gpu_label(gpu));
  }
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

  // Energy and wall time per phase: the meter is read at every phase boundary and the difference goes to
  // the phase that ended.
  PhaseLedger ledger(*energy_);
  absl::StatusOr<GenerationResult> result = pipeline_->Generate(
      parameters,
      [&progress, &ledger](const GenerationProgress& update) {
        switch (update.phase) {
          case GenerationPhase::kEncodingText:
            ledger.Enter(JobPhase::kEncodingText);
            progress.OnPhase(JobPhase::kEncodingText);
            break;
          case GenerationPhase::kDenoising:
            if (update.denoise.step == 0) {
              ledger.Enter(JobPhase::kDenoising);
              progress.OnPhase(JobPhase::kDenoising);
            } else {
              progress.OnStep(StepProgress{update.denoise.step, update.denoise.steps, update.denoise.step_seconds});
            }
            break;
          case GenerationPhase::kDecoding:
            ledger.Enter(JobPhase::kDecoding);
            progress.OnPhase(JobPhase::kDecoding);
            break;
        }
      },
      &cancelled);
  if (!result.ok()) return result.status();
  if (cancelled.load()) return absl::CancelledError("cancelled after decoding");

  // The same file `zoetrope generate` writes for these parameters.
  ledger.Enter(JobPhase::kEncodingVideo);
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
  ledger.Finish(output);
  return output;
}

}  // namespace zoetrope
