// Sequence- and CFG-parallel generation on CPU ranks (threads with in-process communicators) against one
// device: the whole pipeline — text on rank 0, the sampler on token shards, Ulysses attention, one
// exchange per step between CFG groups, the latent gathered once — must give the one-device latent within
// 1e-6 relative L2 (only the row blocking of the kernels differs), for token counts the rank count does
// not divide and the tiny model's 2 heads on up to 5 ranks (ranks without heads).
#include <atomic>
#include <memory>

#include <gtest/gtest.h>

#include "tests/unit/numerics.h"
#include "worker/engine/pipeline_devices.h"
#include "worker/engine/text_to_video.h"

namespace zoetrope {
namespace {

const std::string kModel = ZOETROPE_TEST_MODEL_DIR "/diffusers";

GenerationParameters Request(int64_t width, int64_t height, int64_t frames) {
  GenerationParameters parameters;
  parameters.prompt = "a lighthouse in a storm, waves breaking";
  parameters.width = width;
  parameters.height = height;
  parameters.frames = frames;
  parameters.steps = 4;
  parameters.seed = 5;
  parameters.decode = false;
  return parameters;
}

struct Outcome {
  Tensor latent;
  Tensor frames;
  double density = 0.0;
};

Outcome Generate(int sequence, bool cfg_parallel, const GenerationParameters& parameters) {
  DeviceRequest request;
  request.sequence_parallel = sequence;
  request.cfg_parallel = cfg_parallel;
  request.cpu_threads = 2;
  absl::StatusOr<PipelineDevices> devices = CreatePipelineDevices(request);
  EXPECT_TRUE(devices.ok()) << devices.status();
  if (!devices.ok()) return {};
  absl::StatusOr<std::unique_ptr<TextToVideoPipeline>> pipeline =
      TextToVideoPipeline::LoadGroup(kModel, devices->group());
  EXPECT_TRUE(pipeline.ok()) << pipeline.status();
  if (!pipeline.ok()) return {};
  absl::StatusOr<GenerationResult> result = (*pipeline)->Generate(parameters);
  EXPECT_TRUE(result.ok()) << result.status();
  if (!result.ok()) return {};
  return {result->latent, result->frames, result->attention_density};
}

// 48×112 pixels, 9 frames: a 3×3×7 grid of 63 tokens (2, 4 and 5 do not divide it); 80×112, 5 frames:
// 2×5×7 = 70 tokens (3 does not divide it).
TEST(ParallelGeneration, SequenceParallelDenseEqualsOneDevice) {
  const GenerationParameters odd = Request(112, 48, 9), other = Request(112, 80, 5);
  const Outcome one_odd = Generate(1, false, odd), one_other = Generate(1, false, other);
  ASSERT_TRUE(one_odd.latent.defined() && one_other.latent.defined());
  for (int ranks : {2, 3, 4, 5}) {
    const GenerationParameters& parameters = ranks == 3 ? other : odd;
    const Outcome& reference = ranks == 3 ? one_other : one_odd;
    const Outcome parallel = Generate(ranks, false, parameters);
    ASSERT_TRUE(parallel.latent.defined()) << ranks << " ranks";
    const double error = test::RelativeL2(ToFloatVector(reference.latent), parallel.latent);
    EXPECT_LE(error, 1e-6) << ranks << " ranks";
    EXPECT_EQ(parallel.density, 1.0);
  }
}

// 33 frames at 256×256: a 9×16×16 grid of 2,304 tokens, where the radial plan skips blocks after its
// dense steps; 5 does not divide it.
TEST(ParallelGeneration, SequenceParallelRadialEqualsOneDeviceWithTheSameDensity) {
  GenerationParameters parameters = Request(256, 256, 33);
  parameters.attention = "radial";
  parameters.guidance = 1.0;  // one pass per step is enough here
  const Outcome one = Generate(1, false, parameters);
  ASSERT_TRUE(one.latent.defined());
  ASSERT_LT(one.density, 1.0);
  for (int ranks : {2, 5}) {
    const Outcome parallel = Generate(ranks, false, parameters);
    ASSERT_TRUE(parallel.latent.defined()) << ranks << " ranks";
    EXPECT_LE(test::RelativeL2(ToFloatVector(one.latent), parallel.latent), 1e-6) << ranks << " ranks";
    EXPECT_NEAR(parallel.density, one.density, 1e-6) << ranks << " ranks";
  }
}

TEST(ParallelGeneration, CfgParallelEqualsSequentialGuidance) {
  const GenerationParameters parameters = Request(112, 48, 9);
  const Outcome one = Generate(1, false, parameters);
  ASSERT_TRUE(one.latent.defined());
  // Two groups of one rank, then the 2 × 2 mesh of four ranks.
  for (int sequence : {1, 2}) {
    const Outcome parallel = Generate(sequence, true, parameters);
    ASSERT_TRUE(parallel.latent.defined()) << "sp=" << sequence;
    EXPECT_LE(test::RelativeL2(ToFloatVector(one.latent), parallel.latent), 1e-6) << "sp=" << sequence;
  }
  // Unguided (guidance 1), the unconditional group has nothing to run and takes the conditional pass.
  GenerationParameters unguided = parameters;
  unguided.guidance = 1.0;
  const Outcome one_unguided = Generate(1, false, unguided), parallel_unguided = Generate(1, true, unguided);
  ASSERT_TRUE(one_unguided.latent.defined() && parallel_unguided.latent.defined());
  EXPECT_LE(test::RelativeL2(ToFloatVector(one_unguided.latent), parallel_unguided.latent), 1e-6);
}

TEST(ParallelGeneration, DecodedFramesMatchOneDevice) {
  GenerationParameters parameters = Request(112, 48, 9);
  parameters.decode = true;
  const Outcome one = Generate(1, false, parameters), parallel = Generate(3, true, parameters);
  ASSERT_TRUE(one.frames.defined() && parallel.frames.defined());
  EXPECT_LE(test::RelativeL2(ToFloatVector(one.frames), parallel.frames), 1e-5);
}

TEST(ParallelGeneration, CancellationStopsEveryRank) {
  DeviceRequest request;
  request.sequence_parallel = 3;
  request.cfg_parallel = true;
  absl::StatusOr<PipelineDevices> devices = CreatePipelineDevices(request);
  ASSERT_TRUE(devices.ok()) << devices.status();
  auto pipeline = TextToVideoPipeline::LoadGroup(kModel, devices->group());
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  std::atomic<bool> cancelled{false};
  int last_step = 0;
  auto result = (*pipeline)->Generate(
      Request(112, 48, 9),
      [&](const GenerationProgress& progress) {
        last_step = progress.denoise.step;
        if (progress.denoise.step == 1) cancelled = true;
      },
      &cancelled);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
  EXPECT_EQ(last_step, 1);
  // The group is usable again after a cancelled generation.
  EXPECT_TRUE((*pipeline)->Generate(Request(112, 48, 9)).ok());
}

// The preview hook gets the predicted clean latent x̂0 = x_t − σ_t·v every K steps, on rank 0 only, the same
// on a group as on one device; the last step is never previewed (the result follows).
TEST(ParallelGeneration, PreviewsOfThePredictedLatentOnOneDeviceAndOnAGroup) {
  GenerationParameters parameters = Request(112, 48, 9);
  parameters.steps = 5;
  parameters.preview_every = 2;
  std::vector<std::pair<int, std::vector<float>>> previews[2];
  for (int sequence : {1, 3}) {
    DeviceRequest request;
    request.sequence_parallel = sequence;
    request.cfg_parallel = sequence > 1;
    absl::StatusOr<PipelineDevices> devices = CreatePipelineDevices(request);
    ASSERT_TRUE(devices.ok()) << devices.status();
    auto pipeline = TextToVideoPipeline::LoadGroup(kModel, devices->group());
    ASSERT_TRUE(pipeline.ok()) << pipeline.status();
    auto& seen = previews[sequence > 1];
    Backend& backend = *devices->backends[0];
    auto result = (*pipeline)->Generate(parameters, nullptr, nullptr, nullptr, [&](int step, const Tensor& latent) {
      seen.emplace_back(step, ToFloatVector(backend.ToHost(latent)));
    });
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(seen.size(), 2u) << sequence;
    EXPECT_EQ(seen[0].first, 2);
    EXPECT_EQ(seen[1].first, 4);
    EXPECT_EQ(seen[1].second.size(), static_cast<size_t>(result->latent.numel()));
    // Late previews approach the final latent: the prediction at step 4 of 5 is closer than at step 2.
    const double early = test::RelativeL2(ToFloatVector(result->latent), seen[0].second);
    const double late = test::RelativeL2(ToFloatVector(result->latent), seen[1].second);
    EXPECT_LT(late, early) << sequence;
  }
  for (int i = 0; i < 2; ++i) {
    EXPECT_LE(test::RelativeL2(previews[0][i].second, previews[1][i].second), 1e-6) << "preview " << i;
  }
}

TEST(ParallelGeneration, ImpossibleConfigurationsAreClearErrors) {
  DeviceRequest request;
  request.sequence_parallel = 0;
  EXPECT_EQ(CreatePipelineDevices(request).status().code(), absl::StatusCode::kInvalidArgument);
  request.sequence_parallel = 2;
  request.gpus = {0, 1};
  absl::Status status = CreatePipelineDevices(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("--gpus"), std::string::npos) << status;
  request.gpus.clear();
  request.loopback = true;
  status = CreatePipelineDevices(request).status();
  EXPECT_NE(status.message().find("--loopback"), std::string::npos) << status;
  EXPECT_EQ(ParseGpuList("0,1,1").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseGpuList("0,x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseGpuList(" 2, 0 "), (std::vector<int>{2, 0}));
  // CUDA groups are checked before any device is touched (so these hold without a GPU, in any build):
  // one GPU per rank unless --loopback, which takes at most one GPU.
  request = DeviceRequest();
  request.device = "cuda";
  request.sequence_parallel = 2;
  request.cfg_parallel = true;
  request.gpus = {0, 1};
  status = CreatePipelineDevices(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("need 4 GPUs"), std::string::npos) << status;
  request.gpus.clear();
  status = CreatePipelineDevices(request).status();
  EXPECT_NE(status.message().find("--loopback"), std::string::npos) << status;
  request.loopback = true;
  request.gpus = {0, 1};
  status = CreatePipelineDevices(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("at most one GPU"), std::string::npos) << status;
  request.gpus.clear();
  request.device = "cuda:x";
  status = CreatePipelineDevices(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("cuda:N"), std::string::npos) << status;
  // A group whose backends do not match its degrees.
  request = DeviceRequest();
  absl::StatusOr<PipelineDevices> one = CreatePipelineDevices(request);
  ASSERT_TRUE(one.ok());
  PipelineGroup group = one->group();
  group.degrees.sequence = 2;
  status = TextToVideoPipeline::LoadGroup(kModel, group).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("need 2 devices"), std::string::npos) << status;
}

}  // namespace
}  // namespace zoetrope
