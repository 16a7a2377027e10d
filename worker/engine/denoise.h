// The denoising loop: initial noise, N sampler steps of the DiT with classifier-free guidance.
// Text encoding and VAE decoding sit outside: this takes prompt conditionings and returns latents.
//
// The loop works in token space: the sample is kept as head-order patch tokens (WanDit::ForwardTokens),
// the layout of the DiT's output, so the sampler steps whatever token shard a rank holds and the latent
// is assembled once, after the last step. One device holds every token; a rank of a parallel group
// (DenoiseGroup) holds its sequence shard and gathers the shards at the end.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "parallel/communicator.h"
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
  // Live previews: after every `preview_every`-th step (0: never; never after the last step), `preview` is
  // called with the step count and the sampler's current prediction of the clean latent,
  // x̂0 = x_t − σ_t·v (flow matching), F32 [16, F, H, W] on the model's device. On a group the shards are
  // gathered for it and only rank 0 calls it (every rank of the group must pass the same preview_every).
  int preview_every = 0;
  std::function<void(int step, const Tensor& predicted_latent)> preview;
};

struct DenoiseProgress {
  int step = 0;  // steps completed
  int steps = 0;
  int64_t timestep = 0;  // timestep of the step just completed
  double step_seconds = 0.0;
};

// Cancellation agreed by the ranks of one process: every rank must stop before the same step, or the
// ones that go on wait forever in their next collective. Rank 0 reads the cancel flag once per step and
// publishes its decision; the other ranks wait for it. Thread-safe.
class StopAgreement {
 public:
  // Rank 0 decides whether to stop before step `step` (0, 1, … in order) from `cancelled` (may be null);
  // any other rank waits for that decision. Every rank gets the same answer for a step.
  bool ShouldStop(int rank, int step, const std::atomic<bool>* cancelled);

 private:
  absl::Mutex mutex_;
  absl::CondVar decided_;
  std::vector<bool> decisions_ ABSL_GUARDED_BY(mutex_);  // decisions_[step]
};

// One rank's place in a parallel group. The defaults are one device running every pass on every token.
struct DenoiseGroup {
  // Sequence parallelism: the ranks that split the tokens (this rank holds TokenShard(tokens, size, rank)
  // and `attention` must be the group's, e.g. UlyssesAttention over this communicator). Null: every token.
  Communicator* sequence = nullptr;
  // CFG parallelism: a pair of ranks holding the same token shard; rank 0 runs the conditional pass, rank
  // 1 the unconditional one, and one all-gather per step gives both the two velocities, so both step the
  // sampler identically. Null: this rank runs both passes.
  Communicator* cfg = nullptr;
  // Shared by every rank of the process; null for a group of one.
  StopAgreement* stop = nullptr;
  int rank = 0;  // this rank's index in the whole group (rank 0 decides on cancellation)
};

// Latent shape for a pixel size: [16, (frames − 1)/4 + 1, height/8, width/8] (spec §4.2).
Shape LatentShapeFor(int64_t width, int64_t height, int64_t frames, int64_t latent_channels = 16);

// The initial noise of a seed: standard normal, identical on every backend and machine.
Tensor InitialNoise(Backend& backend, const Shape& latent_shape, uint64_t seed);

// The initial noise of a seed as head-order patch tokens [count, C·pt·ph·pw] (WanDit::ForwardTokens'
// layout), rows [begin, begin + count) of the whole grid's tokens, on `backend`.
Tensor InitialNoiseTokens(Backend& backend, const Shape& latent_shape, uint64_t seed, int patch_t, int patch_h,
                          int patch_w, int64_t begin, int64_t count);

// Runs the loop. `progress` is called after every step (may be null); `cancelled` (may be null) is
// checked before each step and the loop returns CANCELLED when it is set. Returns F32 latents. For a
// rank of a group, every rank of the group calls this with the same options and prompts (and its own
// model, attention and group); every rank returns the whole latent, and progress is best reported by one.
absl::StatusOr<Tensor> Denoise(WanDit& model, SequenceAttention& attention, const WanDit::PromptConditioning& positive,
                               const WanDit::PromptConditioning* negative, const DenoiseOptions& options,
                               const std::function<void(const DenoiseProgress&)>& progress = nullptr,
                               const std::atomic<bool>* cancelled = nullptr, const DenoiseGroup& group = {});

}  // namespace zoetrope
