// The rules of a generation request, in one place for the engine and the service (issue 12, item 3).
//
// The engine (worker/engine/text_to_video.h) can compute any shape within kEngineLimits; a service narrows
// those limits (the scheduler's API: 2048 px, 257 frames, 200 steps, 30 guidance, --max_tokens) but never
// widens them: CheckGenerationRules applies min(engine, given) to every bound, so whatever the scheduler
// accepts, the engine accepts too. The structural rules (multiples of 16, 4n+1 frames, guidance ≥ 0,
// shift > 0, finite numbers) are the engine's and are the same for everyone.
//
// Also here: the peak-memory model a worker announces and the scheduler evaluates at admission (item 2),
// because both sides must compute the same number for the same request.
//
// Error messages start with the field and a colon: "width: must be a multiple of 16 in [16, 2048] (got 100)".
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace zoetrope {

struct GenerationLimits {
  // Width and height in pixels: the DiT's RoPE table holds 1024 positions per axis, 16 pixels each.
  int64_t max_pixels = 1024 * 16;
  // Frames (4n+1): 1024 latent frames, the RoPE table's frame axis.
  int64_t max_frames = 4 * 1023 + 1;
  int64_t max_steps = 1000;
  double max_guidance = 100.0;
  double max_shift = 100.0;
  // Latent tokens ((frames−1)/4+1 · height/16 · width/16); 0: no bound beyond the per-axis ones.
  int64_t max_tokens = 0;
};

// What the engine can compute at all.
inline constexpr GenerationLimits kEngineLimits{};

// The numbers of a request that the rules constrain (defaults already resolved).
struct GenerationShape {
  int64_t width = 0;
  int64_t height = 0;
  int64_t frames = 0;
  int64_t steps = 0;
  double guidance = 0.0;
  double shift = 0.0;
};

// `limits` narrowed to the engine's: every bound is the smaller of the two; a bound ≤ 0 in `limits`
// leaves the engine's.
GenerationLimits EffectiveLimits(const GenerationLimits& limits);

// Checks every rule under EffectiveLimits(limits); INVALID_ARGUMENT naming the first field that breaks one.
// Fields are checked in the order width, height, frames, tokens ("width, height, frames"), steps, guidance,
// shift.
absl::Status CheckGenerationRules(const GenerationShape& shape, const GenerationLimits& limits = kEngineLimits);

// Latent tokens of a video: ((frames − 1)/4 + 1) · (height/16) · (width/16).
int64_t LatentTokenCount(int64_t width, int64_t height, int64_t frames);

// A worker's peak memory per job on its device, as a function of the request's shape (item 2: admission
// rejects a request whose estimate exceeds every worker's device memory, instead of letting the job crash
// workers). The worker fills it from its model's configuration (PipelineJobRunner) and announces it in
// WorkerCapabilities; all zero: unknown (no memory admission).
//
//   peak = resident_bytes + max(denoise_bytes_per_token · ⌈tokens / sequence_parallel⌉,
//                               decode_bytes_per_pixel · width · height)
//
// The denoising loop's activations grow with the tokens a rank holds (attention is tiled, so linearly);
// the VAE decodes a fixed number of frames at a time (one latent chunk and its causal caches), so its peak
// grows with the frame area, not with the frame count. The coefficients are analytic upper bounds, not
// measurements (docs/service.md, "Admission").
struct PeakMemoryModel {
  int64_t resident_bytes = 0;             // weights and fixed buffers, per device
  int64_t denoise_bytes_per_token = 0;    // per latent token a rank holds
  int64_t decode_bytes_per_pixel = 0;     // per pixel of one output frame's area
  int64_t sequence_parallel = 1;          // ranks sharing the tokens
  bool known() const { return resident_bytes > 0 || denoise_bytes_per_token > 0 || decode_bytes_per_pixel > 0; }
};

// The estimate above (0 when the model is unknown). Saturates instead of overflowing.
int64_t EstimatePeakMemoryBytes(const PeakMemoryModel& model, int64_t width, int64_t height, int64_t frames);

}  // namespace zoetrope
