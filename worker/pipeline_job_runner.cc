#include "worker/pipeline_job_runner.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "worker/engine/latent_rgb_fit.h"
#include "worker/engine/preview_image.h"
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

// Bytes of a checkpoint path: a file, or every file under a folder (sharded checkpoints).
int64_t CheckpointBytes(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_regular_file(path, error)) return static_cast<int64_t>(std::filesystem::file_size(path, error));
  int64_t bytes = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(path, error)) {
    if (entry.is_regular_file(error)) bytes += static_cast<int64_t>(entry.file_size(error));
  }
  return bytes;
}

// Physical memory of this machine (the CPU backend's device memory), 0 when unknown.
int64_t PhysicalMemoryBytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page_size > 0 ? static_cast<int64_t>(pages) * page_size : 0;
}

}  // namespace

PeakMemoryModel PipelineMemoryModel(const TextToVideoPipeline& pipeline, bool cpu, int sequence_parallel,
                                    int64_t vae_chunk_frames) {
  const WanDitConfig& dit = pipeline.transformer().config();
  const WanVaeConfig& vae = pipeline.vae().config();
  // The CPU computes in F32 (checkpoints of BF16 double in size); CUDA keeps BF16 weights and activations.
  const int64_t element = cpu ? 4 : 2;
  const int64_t weight_growth = cpu ? 2 : 1;
  PeakMemoryModel model;
  const ModelFiles& files = pipeline.files();
  // Every device holds the DiT; rank 0 also the text encoder and the VAE: costed on every device (an upper
  // bound). Plus the cross-attention keys and values of both prompts for every block.
  model.resident_bytes = weight_growth * (CheckpointBytes(files.transformer) + CheckpointBytes(files.text_encoder) +
                                          CheckpointBytes(files.vae)) +
                         2 * 2 * dit.num_layers * dit.text_len * dit.dim * element;
  // Per token of a block's forward, live at once: the hidden state and its residual copy, the normalised
  // input, q, k, v, the attention output and its projection, the modulated copies (≈ 12 rows of `dim`),
  // the FFN's hidden layer and its activation (2 rows of `ffn_dim`), plus the attention score tile (the CPU
  // keeps 256 query rows × all keys in F32: 1 KiB per key).
  model.denoise_bytes_per_token = element * (12 * dit.dim + 2 * dit.ffn_dim) + (cpu ? 256 * 4 : 0);
  // Per pixel of the output frame area, at full resolution (the largest stage): the frames of one decode
  // chunk (temporal_scale per latent frame) in about 4 live tensors, and the causal caches (2 frames for
  // each of the full-resolution stage's 2·(num_res_blocks+1) convolutions), F32, at the last stage's width.
  const int64_t chunk_latent_frames = vae_chunk_frames > 0 ? vae_chunk_frames : (257 - 1) / 4 + 1;
  const int64_t chunk_frames = vae.temporal_scale() * chunk_latent_frames;
  const int64_t cache_frames = 2 * 2 * (vae.num_res_blocks + 1);
  const std::vector<int64_t> widths = vae.DecoderDims();
  const int64_t full_resolution_width = widths.empty() ? vae.dim : widths.back();
  model.decode_bytes_per_pixel = 4 * full_resolution_width * (4 * chunk_frames + cache_frames);
  model.sequence_parallel = std::max(1, sequence_parallel);
  return model;
}

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
  if (!options.preview_factors.empty()) {
    absl::StatusOr<LatentRgbFactors> factors = ReadLatentRgbFactors(options.preview_factors);
    if (!factors.ok()) return factors.status();
    runner->preview_factors_ = *factors;
  }

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
  capabilities.device_memory_bytes = options.device_memory_bytes > 0 ? options.device_memory_bytes
                                     : backend.device().is_cpu() ? PhysicalMemoryBytes()
                                                                 : 0;
  capabilities.memory = PipelineMemoryModel(*runner->pipeline_, backend.device().is_cpu(),
                                            runner->devices_.degrees.sequence, options.vae_chunk_frames);
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
  // On CUDA without --device_memory_gib: the GPUs' memory as NVML reports it (0, no admission, without NVML).
  if (capabilities.device_memory_bytes == 0) capabilities.device_memory_bytes = runner->energy_->gpu_memory_bytes();
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
  parameters.preview_every = request.preview_every;
  if (absl::Status valid = ValidateGenerationParameters(parameters); !valid.ok()) return valid;

  // Live previews: the predicted clean latent → a JPEG contact sheet, on this thread between two steps
  // (a host copy of the latent and a few milliseconds of CPU; the sink only queues the bytes).
  Backend& preview_backend = pipeline_->backend();
  bool preview_failed = false;
  auto preview = [&](int step, const Tensor& predicted_latent) {
    PreviewOptions preview_options;
    preview_options.factors = &preview_factors_;
    absl::StatusOr<EncodedPreview> image = RenderLatentPreview(preview_backend, predicted_latent, preview_options);
    if (!image.ok()) {
      // A preview is never worth failing the job for; say so once.
      if (!preview_failed) Log("worker", "job ", request.job_id, ": no preview: ", image.status().message());
      preview_failed = true;
      return;
    }
    PreviewUpdate update;
    update.step = step;
    update.steps = request.steps;
    update.media_type = image->media_type;
    update.data = std::move(image->bytes);
    update.width = image->width;
    update.height = image->height;
    update.columns = image->columns;
    update.rows = image->rows;
    for (int latent_frame : image->latent_frames) update.frame_indices.push_back(4 * latent_frame);
    progress.OnPreview(update);
  };
  // The scheduler admits only jobs whose estimate fits (docs/service.md, "Admission"); checked again here so
  // that a job sent by an older scheduler, or one without the memory model, fails with a clear error rather
  // than exhausting the device.
  const int64_t peak = EstimatePeakMemoryBytes(capabilities_.memory, request.width, request.height, request.frames);
  if (capabilities_.device_memory_bytes > 0 && peak > capabilities_.device_memory_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "width, height, frames: the estimated peak memory ", peak >> 20, " MiB exceeds this worker's device memory ",
        capabilities_.device_memory_bytes >> 20, " MiB"));
  }

  // Energy and wall time per phase: the meter is read at every phase boundary and the difference goes to
  // the phase that ended.
  // The same file `zoetrope generate` writes for these parameters, written while the VAE decodes (each
  // chunk is encoded while the next is decoded), so the decoding phase's time and energy include the
  // overlapped encoding and the encoding phase is only the tail (the last chunk, the file's index).
  VideoOutputOptions video;
  const bool raw = request.format == ResultFormat::kRawSafetensors;
  video.format = raw ? VideoFormat::kRaw : VideoFormat::kMp4;
  video.path = request.output_path + (raw ? ".safetensors" : ".mp4");
  video.frames_per_second = request.fps;
  video.comment = absl::StrCat("prompt: ", parameters.prompt, "; seed: ", parameters.seed, "; steps: ", parameters.steps,
                               "; sampler: ", std::string(SamplerKindName(parameters.sampler)));
  absl::StatusOr<std::unique_ptr<VideoStreamWriter>> writer =
      VideoStreamWriter::Open(video, parameters.height, parameters.width);
  if (!writer.ok()) return writer.status();

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
      &cancelled, /*attention=*/nullptr,
      parameters.preview_every > 0 ? std::function<void(int, const Tensor&)>(preview) : nullptr,
      [&writer](const Tensor& frames) { return (*writer)->Append(frames); });
  if (!result.ok()) return result.status();
  if (cancelled.load()) return absl::CancelledError("cancelled after decoding");

  ledger.Enter(JobPhase::kEncodingVideo);
  progress.OnPhase(JobPhase::kEncodingVideo);
  if (absl::Status written = (*writer)->Finish(); !written.ok()) return written;
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
