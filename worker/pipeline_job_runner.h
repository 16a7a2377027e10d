// The JobRunner that runs the text-to-video pipeline: the models are loaded once, each job runs what
// `zoetrope generate` runs (cli/generate_command.cc): TextToVideoPipeline::Generate (umT5, the
// DiT sampling loop with CFG, VAE decode) and WriteVideo. For the same request, seed and model folder
// the result is the same file `zoetrope generate` writes.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/engine/latent_preview.h"
#include "worker/engine/pipeline_devices.h"
#include "worker/engine/text_to_video.h"
#include "worker/energy_meter.h"
#include "worker/job_runner.h"

namespace zoetrope {

struct PipelineOptions {
  // Model folder: DiT, text encoder, VAE and tokenizer (original or diffusers layout; model_folder.h).
  std::string model_path;
  // Name announced to the scheduler; empty: the folder's name.
  std::string model_name;
  // "cpu", "cuda" or "cuda:N".
  std::string device = "cpu";
  int threads = 0;  // CPU threads (0: all cores)
  // The parallel group (docs/parallel.md): CUDA GPUs, one rank each (empty: `device`'s), the Ulysses
  // degree, CFG parallelism, and loopback (every rank on the first GPU).
  std::vector<int> gpus;
  int sequence_parallel = 1;
  bool cfg_parallel = false;
  bool loopback = false;
  int ulysses_chunks = 1;  // head chunks overlapping the all-to-alls (parallel/ulysses_attention.h)
  // Largest latent token count accepted; 0 picks the default (720p, 81 frames).
  int64_t max_tokens = 0;
  // Latent frames per VAE decode chunk (memory bound; 0 = all at once).
  int64_t vae_chunk_frames = 1;
  // Memory of one device, announced for admission (RunnerCapabilities::device_memory_bytes); 0: the
  // physical RAM on the CPU, the GPU's total memory from NVML on CUDA (unknown, no memory admission, without
  // NVML).
  int64_t device_memory_bytes = 0;
  // The sparsity plan of requests that name none: a preset name or plan YAML text (checked against the
  // model when the runner is created).
  std::string default_attention = "dense";
  // Live previews: a JSON file of latent → RGB factors (zoetrope-fit-preview-factors); empty: Wan2.1's.
  std::string preview_factors;
};

class PipelineJobRunner final : public JobRunner {
 public:
  // Loads the models (errors name the file and the key).
  static absl::StatusOr<std::unique_ptr<PipelineJobRunner>> Create(const PipelineOptions& options);
  ~PipelineJobRunner() override;

  RunnerCapabilities capabilities() const override { return capabilities_; }
  absl::StatusOr<JobOutput> Run(const GenerationRequest& request, ProgressSink& progress,
                                const std::atomic<bool>& cancelled) override;

  double load_seconds() const { return load_seconds_; }

 private:
  PipelineJobRunner() = default;

  PipelineOptions options_;
  PipelineDevices devices_;
  std::unique_ptr<TextToVideoPipeline> pipeline_;
  RunnerCapabilities capabilities_;
  double load_seconds_ = 0.0;
  LatentRgbFactors preview_factors_ = Wan21LatentRgbFactors();
  // The GPUs' energy (unavailable on the CPU, or where NVML cannot be loaded).
  std::unique_ptr<EnergyMeter> energy_;
};

// The peak-memory model of a loaded pipeline (common/generation_rules.h): analytic upper bounds from the
// model's shapes, the checkpoint sizes and the backend's element size. `vae_chunk_frames` 0 (the whole
// video at once) is costed as the longest video the API accepts (257 frames).
PeakMemoryModel PipelineMemoryModel(const TextToVideoPipeline& pipeline, bool cpu, int sequence_parallel,
                                    int64_t vae_chunk_frames);

// The model name a folder announces: its last path component ("models/tiny" -> "tiny").
std::string ModelNameOfPath(const std::string& model_path);

}  // namespace zoetrope
