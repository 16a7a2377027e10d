// The narrow interface between the worker's service side (stream, heartbeats, uploads) and the
// generation pipeline. The service side never sees tensors or models; the pipeline never sees gRPC.
//
// PipelineJobRunner (worker/pipeline_job_runner.h) is the implementation that runs the engine; tests may
// substitute their own.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/generation_rules.h"
#include "worker/engine/sampler.h"

namespace zoetrope {

enum class JobPhase { kLoading, kEncodingText, kDenoising, kDecoding, kEncodingVideo };

enum class ResultFormat {
  kNative,          // what the runner produces by default (MP4 for the pipeline)
  kMp4,             // H.264 in MP4
  kRawSafetensors,  // the decoded frames, F32 `video` [T, 3, H, W] in [−1, 1], in safetensors
};

// One generation, every default already resolved by the scheduler.
struct GenerationRequest {
  std::string job_id;  // for logs and file names only
  std::string model;
  std::string prompt;
  std::string negative_prompt;
  int64_t width = 0;
  int64_t height = 0;
  int64_t frames = 0;  // 4n+1
  int fps = 16;
  int steps = 0;
  double guidance = 5.0;
  double shift = 5.0;
  SamplerKind sampler = SamplerKind::kUniPC;
  uint64_t seed = 0;
  // Sparsity plan: a preset name or plan YAML text; empty: the runner's default.
  std::string attention;
  ResultFormat format = ResultFormat::kNative;
  // Live previews every this many denoising steps (0: none), the worker's cap already applied.
  int preview_every = 0;
  // Where the result goes, without extension: the runner appends one (".mp4", ".safetensors") and
  // reports the file in JobOutput::path. The caller owns the folder and deletes the file after upload.
  std::string output_path;
};

struct StepProgress {
  int step = 0;   // steps completed, 1..steps
  int steps = 0;  // steps in all
  double step_seconds = 0.0;
};

// A live preview (docs/previews.md): an encoded contact sheet of a few frames of the sampler's prediction
// of the clean video after `step` of `steps` steps.
struct PreviewUpdate {
  int step = 0;
  int steps = 0;
  std::string media_type;  // "image/jpeg"
  std::string data;        // at most 64 KiB
  int width = 0;
  int height = 0;
  int columns = 0;
  int rows = 0;
  std::vector<int> frame_indices;  // the video frame of each tile
};

// Receives progress from the runner's thread. Implementations must be cheap (they run between steps).
class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual void OnPhase(JobPhase phase) = 0;
  virtual void OnStep(const StepProgress& step) = 0;
  // Best effort: an implementation may drop previews (and must not block on delivering one).
  virtual void OnPreview(const PreviewUpdate& preview) {}
};

struct JobOutput {
  std::string path;        // the result file (GenerationRequest::output_path)
  std::string media_type;  // "video/mp4", "application/x-safetensors"
  int64_t size_bytes = 0;
  double denoise_seconds = 0.0;
  double attention_density = 1.0;  // mean block density of the self-attention that ran (1 = dense)
  double gpu_energy_joules = 0.0;  // 0 where no energy counter is available (CPU)
  int gpus = 0;                    // GPUs the job ran on (0 on the CPU backend)
  // Where the energy figures come from (EnergySourceName in worker/energy_meter.h): "unavailable" means
  // they are not measurements. Per GPU: joules by GPU label (the CUDA ordinal), for per-GPU counters.
  std::string energy_source = "unavailable";
  std::vector<std::pair<std::string, double>> energy_per_gpu;
  // Wall seconds and GPU joules per phase (text encoder, denoising, VAE decode, video encode).
  double text_seconds = 0.0;
  double decode_seconds = 0.0;
  double video_encode_seconds = 0.0;
  double text_energy_joules = 0.0;
  double denoise_energy_joules = 0.0;
  double decode_energy_joules = 0.0;
  double video_encode_energy_joules = 0.0;
};

// What a runner can do, announced to the scheduler.
struct RunnerCapabilities {
  std::vector<std::string> models;
  std::string backend;  // "cpu" or "cuda"
  int gpus = 0;
  int sequence_parallel_degree = 1;
  int cfg_parallel_degree = 1;
  // Memory of one device (the CPU: physical RAM) and the job's peak on it (common/generation_rules.h);
  // 0 / unknown: the scheduler checks no memory for this worker.
  int64_t device_memory_bytes = 0;
  PeakMemoryModel memory;
  int64_t max_tokens = 0;  // largest latent token count (F_latent · H/16 · W/16)
  std::vector<ResultFormat> formats;
  std::string device_name;
  // How GPU energy is measured (EnergySourceName in worker/energy_meter.h).
  std::string energy_source = "unavailable";
  // The GPU product ("NVIDIA H200"; "cpu" on the CPU backend).
  std::string gpu_kind;
  // Labels of the GPUs whose energy is measured (JobOutput::energy_per_gpu), empty without energy.
  std::vector<std::string> energy_gpu_labels;
};

class JobRunner {
 public:
  virtual ~JobRunner() = default;

  virtual RunnerCapabilities capabilities() const = 0;

  // Runs one job on the calling thread; one job at a time. Checks `cancelled` at least once per denoising
  // step and then returns CANCELLED (leaving no result file). Requests the runner cannot run (shape, model)
  // are INVALID_ARGUMENT; anything else that fails is reported with its cause.
  virtual absl::StatusOr<JobOutput> Run(const GenerationRequest& request, ProgressSink& progress,
                                        const std::atomic<bool>& cancelled) = 0;
};

}  // namespace zoetrope
