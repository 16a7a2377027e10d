// Flow-matching samplers of Wan2.1 (spec/wan21.md §4.4–§4.6): UniPC (bh2, order 2, with the UniC
// corrector, the official default), DPM++ 2M (midpoint) and plain Euler.
//
// Usage, one Sampler per generation (it holds the multistep history):
//   auto sampler = Sampler::Create(kind, steps, shift);
//   Tensor x = noise;                                       // F32, the latent shape
//   for (int i = 0; i < steps; ++i) {
//     int64_t t = sampler->schedule().timesteps[i];         // to both model passes
//     Tensor v = ApplyGuidance(backend, v_cond, v_uncond, guidance);
//     x = sampler->Step(backend, i, v, x);
//   }
//
// The scalar coefficients are computed in double on the host from the float32 sigmas; every tensor
// operation goes through Backend::Combine, so the samplers run unchanged on every backend.
#pragma once

#include <memory>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/tensor.h"
#include "worker/engine/flow_schedule.h"

namespace zoetrope {

// Accepts "unipc", "dpm++" / "dpmpp" and "euler" (case-sensitive, as on the command line).
absl::StatusOr<SamplerKind> ParseSamplerKind(std::string_view name);
// The canonical spelling: "unipc", "dpm++" or "euler".
std::string_view SamplerKindName(SamplerKind kind);

// Classifier-free guidance, v = uncond + guidance·(cond − uncond). cond and uncond have one shape (any
// float dtypes); the result is a new F32 tensor of that shape on `backend`'s device.
Tensor ApplyGuidance(Backend& backend, const Tensor& cond, const Tensor& uncond, double guidance);

class Sampler {
 public:
  // InvalidArgument for the parameter errors MakeFlowSchedule reports.
  static absl::StatusOr<std::unique_ptr<Sampler>> Create(SamplerKind kind, int steps, double shift);

  virtual ~Sampler() = default;
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  SamplerKind kind() const { return kind_; }
  int steps() const { return schedule_.steps(); }
  const FlowSchedule& schedule() const { return schedule_; }

  // One solver step: `sample` is x_i (the noise at step 0, then the previous Step's result) and
  // `velocity` the guided model output for timesteps[step_index]; both have one shape, any float dtype,
  // on `backend`'s device. Returns x_{i+1} as a new F32 tensor of that shape; the last step returns the
  // clean latent (σ_N = 0). Must be called for step_index = 0, 1, ..., steps() − 1 in order, once each,
  // with one backend and one shape throughout (checked: a violation is a programming error). The sampler
  // keeps no reference to `velocity` or `sample` (its history is its own tensors), so callers may reuse
  // or overwrite their buffers after the call.
  Tensor Step(Backend& backend, int step_index, const Tensor& velocity, const Tensor& sample);

 protected:
  Sampler(SamplerKind kind, FlowSchedule schedule) : kind_(kind), schedule_(std::move(schedule)) {}
  // Called by Step after the order and shape checks.
  virtual Tensor StepImpl(Backend& backend, int step_index, const Tensor& velocity, const Tensor& sample) = 0;

 private:
  SamplerKind kind_;
  FlowSchedule schedule_;
  int next_step_ = 0;
  Shape sample_shape_;
};

}  // namespace zoetrope
