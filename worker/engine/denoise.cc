#include "worker/engine/denoise.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "worker/engine/random.h"

namespace zoetrope {

Shape LatentShapeFor(int64_t width, int64_t height, int64_t frames, int64_t latent_channels) {
  return {latent_channels, (frames - 1) / 4 + 1, height / 8, width / 8};
}

Tensor InitialNoise(Backend& backend, const Shape& latent_shape, uint64_t seed) {
  Tensor noise = Tensor::Host(latent_shape, DType::kF32);
  FillStandardNormal(StreamKey(seed, "initial_noise"), 0, noise.data<float>(), noise.numel());
  return backend.Upload(noise, DType::kF32);
}

absl::StatusOr<Tensor> Denoise(WanDit& model, SequenceAttention& attention, const WanDit::PromptConditioning& positive,
                               const WanDit::PromptConditioning* negative, const DenoiseOptions& options,
                               const std::function<void(const DenoiseProgress&)>& progress,
                               const std::atomic<bool>* cancelled) {
  if (absl::Status valid = model.ValidateLatentShape(options.latent_shape); !valid.ok()) return valid;
  if (!(options.guidance >= 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat("guidance must be ≥ 0 (got ", options.guidance, ")"));
  }
  const bool guided = options.guidance != 1.0;
  if (guided && negative == nullptr) {
    return absl::InvalidArgumentError("guidance ≠ 1 needs a negative prompt conditioning");
  }
  absl::StatusOr<std::unique_ptr<Sampler>> sampler = Sampler::Create(options.sampler, options.steps, options.shift);
  if (!sampler.ok()) return sampler.status();
  Backend& backend = model.backend();
  const FlowSchedule& schedule = (*sampler)->schedule();

  Tensor sample = InitialNoise(backend, options.latent_shape, options.seed);
  for (int i = 0; i < options.steps; ++i) {
    if (cancelled != nullptr && cancelled->load()) {
      return absl::CancelledError(absl::StrCat("cancelled before step ", i + 1, " of ", options.steps));
    }
    const auto start = std::chrono::steady_clock::now();
    const int64_t timestep = schedule.timesteps[i];
    const WanDit::TimestepConditioning conditioning = model.EmbedTimestep(static_cast<double>(timestep));
    Tensor velocity = model.Forward(sample, conditioning, positive, attention, i);
    if (guided) {
      const Tensor unconditional = model.Forward(sample, conditioning, *negative, attention, i);
      velocity = ApplyGuidance(backend, velocity, unconditional, options.guidance);
    }
    sample = (*sampler)->Step(backend, i, velocity, sample);
    if (progress) {
      backend.Synchronize();  // so the reported step time is the device's, not the launch time
      DenoiseProgress report;
      report.step = i + 1;
      report.steps = options.steps;
      report.timestep = timestep;
      report.step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      progress(report);
    }
  }
  return sample;
}

}  // namespace zoetrope
