// The text-to-video pipeline (spec/wan21.md §0): prompt → tokenize → umT5 → DiT sampling loop with
// classifier-free guidance → VAE decode → frames. One object per device, models loaded once and
// reused for every request; the command line (`zoetrope generate`) and the worker's job runner both
// drive this class.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "parallel/parallel_mesh.h"
#include "parallel/sequence_attention.h"
#include "parallel/sparsity_plan.h"
#include "worker/engine/denoise.h"
#include "worker/engine/dit_group.h"
#include "worker/engine/model_folder.h"
#include "worker/engine/prompt_cache.h"
#include "worker/engine/text_tokenizer.h"
#include "worker/engine/umt5_encoder.h"
#include "worker/engine/wan_dit.h"
#include "worker/engine/wan_vae.h"

namespace zoetrope {

struct GenerationParameters {
  std::string prompt;
  std::string negative_prompt;  // empty: Wan's default negative prompt
  int64_t width = 832;
  int64_t height = 480;
  int64_t frames = 81;  // 4n + 1
  int steps = 50;
  double guidance = 5.0;
  double shift = 5.0;
  SamplerKind sampler = SamplerKind::kUniPC;
  uint64_t seed = 0;
  int64_t vae_chunk_frames = 1;  // latent frames per VAE chunk (memory bound); 0 = all at once
  bool decode = true;            // false: stop after denoising (the result has the latent, no frames)
  // The self-attention's sparsity plan: a preset name ("dense", "radial", "attention-tile",
  // "sliding-tile") or plan YAML text (parallel/sparsity_plan.h). Validated against the model and `steps`.
  std::string attention = "dense";
  // What errors about the plan call it: the plan file's path, a preset's name, or the request field.
  std::string attention_source = "attention";
  // Live previews: every this many steps Generate's `preview` callback gets the predicted clean latent
  // (DenoiseOptions::preview_every; 0 = none).
  int preview_every = 0;
};

enum class GenerationPhase { kEncodingText, kDenoising, kDecoding };
const char* GenerationPhaseName(GenerationPhase phase);

struct GenerationProgress {
  GenerationPhase phase = GenerationPhase::kEncodingText;
  DenoiseProgress denoise;  // valid in kDenoising
};

struct GenerationResult {
  Tensor latent;  // host F32 [16, F, H/8, W/8]: the denoised latent
  Tensor frames;  // host F32 [T, 3, H, W], RGB in [−1, 1] (undefined when decode is false or a frames sink took them)
  double text_seconds = 0.0;
  double denoise_seconds = 0.0;
  double decode_seconds = 0.0;
  // Mean block density of the self-attention calls that ran (1 = dense), every head of every call weighted
  // equally.
  double attention_density = 1.0;
};

// The devices of a parallel pipeline (docs/parallel.md): one rank per backend. Rank 0's backend also holds
// the text encoder and the VAE; every rank holds the DiT (ranks on one device share its weights).
struct PipelineGroup {
  std::vector<Backend*> backends;  // degrees.ranks() backends, rank order; each outlives the pipeline
  ParallelDegrees degrees;
  CommunicatorFactory communicators;  // makes the mesh's subgroups (parallel/parallel_mesh.h)
  int ulysses_chunks = 1;             // head chunks overlapping the all-to-alls (parallel/ulysses_attention.h)
};

// Every rule a request must satisfy, with the field named ("width: must ..."): the shape, steps, guidance
// and shift rules of common/generation_rules.h under kEngineLimits (the scheduler applies the same rules
// with narrower limits), vae_chunk_frames and preview_every ≥ 0, and an attention plan that parses and fits
// the step count (the plan's block and head ranges are checked against the model by Generate).
absl::Status ValidateGenerationParameters(const GenerationParameters& parameters);

class TextToVideoPipeline {
 public:
  // Loads the four parts from a model folder (see model_folder.h) onto `backend`, which must outlive
  // the pipeline, and checks that they fit together (text width, latent channels, prompt length).
  static absl::StatusOr<std::unique_ptr<TextToVideoPipeline>> Load(const std::string& model_folder, Backend& backend);
  // The same on a parallel group: the denoising loop runs on every rank, one thread each (the calling
  // thread drives rank 0), sequence-parallel and/or CFG-parallel as `group.degrees` says.
  static absl::StatusOr<std::unique_ptr<TextToVideoPipeline>> LoadGroup(const std::string& model_folder,
                                                                        PipelineGroup group);
  const ParallelDegrees& degrees() const { return degrees_; }

  const ModelFiles& files() const { return files_; }
  const WanDit& transformer() const { return *transformer_; }
  const WanVae& vae() const { return *vae_; }
  Backend& backend() const { return backend_; }
  PromptEncoder& prompt_encoder() { return *prompt_encoder_; }

  // Runs one generation. `progress` (may be null) is called at phase changes and after every
  // denoising step; `cancelled` (may be null) stops at the next step with CANCELLED. `attention` (may be
  // null) replaces the self-attention that parameters.attention describes (tools that observe or compare
  // attention pass their own; the plan in `parameters` is still validated; one device only).
  // `preview` (may be null) receives the predicted clean latent every parameters.preview_every steps
  // (F32 [16, F, H/8, W/8] on rank 0's device, valid during the call).
  // `frames_sink` (may be null) receives the decoded video as it is decoded, a chunk at a time (host F32
  // [n, 3, H, W], frames in order), instead of in GenerationResult::frames (then left undefined): a video
  // writer encodes chunk k while the VAE decodes chunk k + 1, and the whole video is never held. A sink
  // error stops the decode and is returned.
  absl::StatusOr<GenerationResult> Generate(
      const GenerationParameters& parameters, const std::function<void(const GenerationProgress&)>& progress = nullptr,
      const std::atomic<bool>* cancelled = nullptr, SequenceAttention* attention = nullptr,
      const std::function<void(int step, const Tensor& predicted_latent)>& preview = nullptr,
      const std::function<absl::Status(const Tensor& frames)>& frames_sink = nullptr);

 private:
  TextToVideoPipeline(Backend& backend) : backend_(backend) {}
  // The denoising loop on every rank of the group, from prompt contexts encoded on rank 0.
  absl::StatusOr<Tensor> DenoiseOnGroup(const GenerationParameters& parameters, const SparsityPlan& plan,
                                        const Tensor& positive_text, const Tensor* negative_text,
                                        const DenoiseOptions& options,
                                        const std::function<void(const DenoiseProgress&)>& progress,
                                        const std::atomic<bool>* cancelled, double* attention_density);

  Backend& backend_;
  ParallelDegrees degrees_;
  std::unique_ptr<DitGroup> group_;  // the DiT on every rank (null for one device)
  ModelFiles files_;
  std::unique_ptr<TextTokenizer> tokenizer_;
  std::unique_ptr<Umt5Encoder> text_encoder_;
  std::unique_ptr<PromptEncoder> prompt_encoder_;
  std::unique_ptr<WanDit> transformer_;
  std::unique_ptr<WanVae> vae_;
};

}  // namespace zoetrope
