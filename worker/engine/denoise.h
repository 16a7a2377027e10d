// The denoising loop: initial noise, N sampler steps of the DiT with classifier-free guidance.
// Text encoding and VAE decoding sit outside: this takes prompt conditionings and returns latents.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "parallel/sequence_attention.h"
#include "worker/engine/sampler.h"
#include "worker/engine/wan_dit.h"

namespace zoetrope {

struct DenoiseOptions {
  Shape latent_shape;  // [16, F, H/8, W/8]
  int steps = 50;
  double shift = 5.0;
  double guidance = 5.0;  // 1 runs the conditional pass only (identical result, half the work)
  SamplerKind sampler = SamplerKind::kUniPC;
  uint64_t seed = 0;
};

struct DenoiseProgress {
  int step = 0;  // steps completed
  int steps = 0;
  int64_t timestep = 0;  // timestep of the step just completed
  double step_seconds = 0.0;
};

// Latent shape for a pixel size: [16, (frames − 1)/4 + 1, height/8, width/8] (spec §4.2).
Shape LatentShapeFor(int64_t width, int64_t height, int64_t frames, int64_t latent_channels = 16);

// The initial noise of a seed: standard normal, identical on every backend and machine.
Tensor InitialNoise(Backend& backend, const Shape& latent_shape, uint64_t seed);

// Runs the loop. `progress` is called after every step (may be null); `cancelled` (may be null) is
// checked before each step and the loop returns CANCELLED when it is set. Returns F32 latents.
absl::StatusOr<Tensor> Denoise(WanDit& model, SequenceAttention& attention, const WanDit::PromptConditioning& positive,
                               const WanDit::PromptConditioning* negative, const DenoiseOptions& options,
                               const std::function<void(const DenoiseProgress&)>& progress = nullptr,
                               const std::atomic<bool>* cancelled = nullptr);

}  // namespace zoetrope
