// Timestep / sigma schedules of Wan2.1's flow-matching samplers (spec/wan21.md §4.3).
//
// Flow convention: x_σ = (1−σ)·x0 + σ·ε, σ runs from (almost) 1 down to 0. The integer timesteps go to
// the model; the float32 sigmas drive the solver. Both are reproduced bit-exactly from the official
// numpy code (float64 linspace and shift, int64 truncation, float32 rounding of the sigmas).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace zoetrope {

// The sampler algorithms. Defined here (and re-exported by sampler.h together with its parser) so the
// schedule does not depend on the sampler implementation.
enum class SamplerKind { kUniPC, kDpmPlusPlus2M, kEuler };

// Upper bound on `steps`: far beyond any useful count (the model was trained on 1000 timesteps), it only
// keeps a bad request from allocating gigabytes.
inline constexpr int kMaxSamplingSteps = 10000;

struct FlowSchedule {
  // N entries, fed to the model (same integer to the cond and uncond passes).
  std::vector<int64_t> timesteps;
  // N + 1 entries, strictly decreasing; sigmas[N] == 0, all others in (0, 1].
  std::vector<float> sigmas;

  int steps() const { return static_cast<int>(timesteps.size()); }
};

// The schedule for `steps` sampling steps with flow shift `shift` (σ ↦ shift·σ / (1 + (shift−1)·σ)):
//  * kUniPC and kEuler: FlowUniPCMultistepScheduler's, s = linspace(float32(0.999), 0, N+1)[:N];
//  * kDpmPlusPlus2M: get_sampling_sigmas', s = linspace(1, 0, N+1)[:N] (starts at exactly σ = 1).
// InvalidArgument when steps is outside [1, kMaxSamplingSteps], when shift is not a finite number > 0,
// or when the float32 sigmas would not be strictly decreasing and positive (an extreme shift or step
// count collapses neighbouring sigmas, which would divide by zero in the solvers).
absl::StatusOr<FlowSchedule> MakeFlowSchedule(SamplerKind kind, int steps, double shift);

}  // namespace zoetrope
