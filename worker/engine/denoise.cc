#include "worker/engine/denoise.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "parallel/ulysses_attention.h"
#include "worker/engine/random.h"

namespace zoetrope {

bool StopAgreement::ShouldStop(int rank, int step, const std::atomic<bool>* cancelled) {
  absl::MutexLock lock(&mutex_);
  if (rank == 0) {
    if (static_cast<int>(decisions_.size()) == step) {
      decisions_.push_back(cancelled != nullptr && cancelled->load());
      decided_.SignalAll();
    }
    return decisions_[step];
  }
  while (static_cast<int>(decisions_.size()) <= step) decided_.Wait(&mutex_);
  return decisions_[step];
}

Shape LatentShapeFor(int64_t width, int64_t height, int64_t frames, int64_t latent_channels) {
  return {latent_channels, (frames - 1) / 4 + 1, height / 8, width / 8};
}

namespace {

Tensor HostNoise(const Shape& latent_shape, uint64_t seed) {
  Tensor noise = Tensor::Host(latent_shape, DType::kF32);
  FillStandardNormal(StreamKey(seed, "initial_noise"), 0, noise.data<float>(), noise.numel());
  return noise;
}

// Token shards (head order) of every sequence rank -> the latent F32 [C, F, H, W], on every rank.
absl::StatusOr<Tensor> GatherLatent(WanDit& model, const Tensor& shard, const Shape& latent_shape,
                                    Communicator* sequence) {
  if (sequence == nullptr || sequence->size() == 1) return model.Unpatchify(shard, latent_shape);
  Backend& backend = model.backend();
  const TokenGrid grid = model.GridOf(latent_shape);
  const int ranks = sequence->size();
  const Tensor tokens = backend.Empty({grid.tokens(), shard.dim(1)}, DType::kF32);
  std::vector<Tensor> parts;
  for (int p = 0; p < ranks; ++p) {
    const ShardRange part = TokenShard(grid.tokens(), ranks, p);
    parts.push_back(tokens.Rows(part.begin, part.count));
  }
  if (absl::Status gathered = sequence->AllGather(backend, shard, parts); !gathered.ok()) {
    return absl::Status(gathered.code(), absl::StrCat("gathering the latent: ", gathered.message()));
  }
  return model.Unpatchify(tokens, latent_shape);
}

}  // namespace

Tensor InitialNoise(Backend& backend, const Shape& latent_shape, uint64_t seed) {
  return backend.Upload(HostNoise(latent_shape, seed), DType::kF32);
}

Tensor InitialNoiseTokens(Backend& backend, const Shape& latent_shape, uint64_t seed, int patch_t, int patch_h,
                          int patch_w, int64_t begin, int64_t count) {
  const Tensor noise = HostNoise(latent_shape, seed);
  const int64_t channels = latent_shape[0], frames = latent_shape[1], height = latent_shape[2], width = latent_shape[3];
  const int64_t grid_h = height / patch_h, grid_w = width / patch_w;
  const int64_t columns = channels * patch_t * patch_h * patch_w;
  Tensor tokens = Tensor::Host({count, columns}, DType::kF32);
  const float* from = noise.data<float>();
  float* to = tokens.data<float>();
  for (int64_t row = 0; row < count; ++row) {
    const int64_t token = begin + row;
    const int64_t f = token / (grid_h * grid_w), h = (token / grid_w) % grid_h, w = token % grid_w;
    for (int64_t t = 0; t < patch_t; ++t) {
      for (int64_t y = 0; y < patch_h; ++y) {
        for (int64_t x = 0; x < patch_w; ++x) {
          for (int64_t c = 0; c < channels; ++c) {
            const int64_t column = ((t * patch_h + y) * patch_w + x) * channels + c;
            const int64_t source = ((c * frames + f * patch_t + t) * height + h * patch_h + y) * width + w * patch_w + x;
            to[row * columns + column] = from[source];
          }
        }
      }
    }
  }
  return backend.Upload(tokens, DType::kF32);
}

absl::StatusOr<Tensor> Denoise(WanDit& model, SequenceAttention& attention, const WanDit::PromptConditioning& positive,
                               const WanDit::PromptConditioning* negative, const DenoiseOptions& options,
                               const std::function<void(const DenoiseProgress&)>& progress,
                               const std::atomic<bool>* cancelled, const DenoiseGroup& group) {
  if (absl::Status valid = model.ValidateLatentShape(options.latent_shape); !valid.ok()) return valid;
  if (!(options.guidance >= 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat("guidance must be ≥ 0 (got ", options.guidance, ")"));
  }
  const bool guided = options.guidance != 1.0;
  if (guided && negative == nullptr) {
    return absl::InvalidArgumentError("guidance ≠ 1 needs a negative prompt conditioning");
  }
  if (group.cfg != nullptr && group.cfg->size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("a CFG-parallel pair has 2 ranks, not ", group.cfg->size()));
  }
  absl::StatusOr<std::unique_ptr<Sampler>> sampler = Sampler::Create(options.sampler, options.steps, options.shift);
  if (!sampler.ok()) return sampler.status();
  Backend& backend = model.backend();
  const FlowSchedule& schedule = (*sampler)->schedule();
  const WanDitConfig& config = model.config();
  const TokenGrid grid = model.GridOf(options.latent_shape);
  const int ranks = group.sequence != nullptr ? group.sequence->size() : 1;
  const ShardRange shard = TokenShard(grid.tokens(), ranks, group.sequence != nullptr ? group.sequence->rank() : 0);
  const int64_t columns = config.out_dim * config.patch_t * config.patch_h * config.patch_w;
  // CFG parallelism: which pass this rank runs (0 conditional, 1 unconditional); −1 runs both.
  const int cfg_pass = group.cfg != nullptr ? group.cfg->rank() : -1;

  Tensor sample = InitialNoiseTokens(backend, options.latent_shape, options.seed, config.patch_t, config.patch_h,
                                     config.patch_w, shard.begin, shard.count);
  for (int i = 0; i < options.steps; ++i) {
    const bool stop = group.stop != nullptr ? group.stop->ShouldStop(group.rank, i, cancelled)
                                            : cancelled != nullptr && cancelled->load();
    if (stop) return absl::CancelledError(absl::StrCat("cancelled before step ", i + 1, " of ", options.steps));
    const auto start = std::chrono::steady_clock::now();
    const int64_t timestep = schedule.timesteps[i];
    const WanDit::TimestepConditioning conditioning = model.EmbedTimestep(static_cast<double>(timestep));
    auto forward = [&](const WanDit::PromptConditioning& prompt) {
      return model.ForwardTokens(sample, grid, shard.begin, conditioning, prompt, attention, i);
    };
    Tensor velocity;
    if (cfg_pass < 0) {
      velocity = forward(positive);
      if (guided) velocity = ApplyGuidance(backend, velocity, forward(*negative), options.guidance);
    } else {
      // Unguided, the unconditional rank has nothing to compute: it sends nothing and takes rank 0's pass.
      Tensor mine;
      if (cfg_pass == 0) mine = forward(positive);
      if (cfg_pass == 1 && guided) mine = forward(*negative);
      const std::vector<Tensor> passes = {backend.Empty({shard.count, columns}, DType::kF32),
                                          backend.Empty({guided ? shard.count : 0, columns}, DType::kF32)};
      if (absl::Status exchanged = group.cfg->AllGather(backend, mine, passes); !exchanged.ok()) {
        return absl::Status(exchanged.code(), absl::StrCat("CFG exchange at step ", i + 1, ": ", exchanged.message()));
      }
      velocity = guided ? ApplyGuidance(backend, passes[0], passes[1], options.guidance) : passes[0];
    }
    const bool preview_now = options.preview_every > 0 && (i + 1) % options.preview_every == 0 && i + 1 < options.steps;
    // The prediction uses this step's input sample and velocity: x̂0 = x_i − σ_i·v_i.
    const Tensor predicted =
        preview_now ? backend.Combine({{1.0, &sample}, {-static_cast<double>(schedule.sigmas[i]), &velocity}}) : Tensor();
    sample = (*sampler)->Step(backend, i, velocity, sample);
    // The unconditional CFG group holds the same sample as the conditional one: only group 0 gathers.
    if (preview_now && (cfg_pass <= 0)) {
      absl::StatusOr<Tensor> latent = GatherLatent(model, predicted, options.latent_shape, group.sequence);
      if (!latent.ok()) return latent.status();
      if (group.rank == 0 && options.preview) options.preview(i + 1, *latent);
    }
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
  // The shards become the whole token matrix once, then the latent.
  return GatherLatent(model, sample, options.latent_shape, group.sequence);
}

}  // namespace zoetrope
