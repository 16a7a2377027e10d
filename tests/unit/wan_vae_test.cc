// Wan2.1 VAE decoder: parameter inventory, numerics against the independent float64 PyTorch reference
// (tests/reference/wan_vae_reference.py, which runs the reference's own chunked decode), chunk-size
// invariance, both key namings, and loader errors.
#include "worker/engine/wan_vae.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/numerics.h"
#include "worker/engine/random.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/wan_vae_random_weights.h"

#ifndef ZOETROPE_REFERENCE_PYTHON
#error "ZOETROPE_REFERENCE_PYTHON must name the python with torch (set by tests/CMakeLists.txt)"
#endif
#ifndef ZOETROPE_VAE_REFERENCE_SCRIPT
#error "ZOETROPE_VAE_REFERENCE_SCRIPT must name tests/reference/wan_vae_reference.py"
#endif

namespace zoetrope {
namespace {

using test::RelativeL2;

namespace fs = std::filesystem;

Tensor RandomLatent(const Shape& shape, uint64_t seed) {
  Tensor latent = Tensor::Host(shape, DType::kF32);
  FillStandardNormal(StreamKey(seed, "vae-test-latent"), 0, latent.data<float>(), latent.numel());
  return latent;
}

double FractionClamped(const Tensor& video) {
  const std::vector<float> values = ToFloatVector(video);
  int64_t clamped = 0;
  for (float value : values) clamped += std::fabs(value) >= 1.0f ? 1 : 0;
  return static_cast<double>(clamped) / static_cast<double>(values.size());
}

class WanVaeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    directory_ = new fs::path(fs::path(::testing::TempDir()) / absl::StrCat("wan_vae_test_", ::getpid()));
    fs::create_directories(*directory_);
    const WanVaeConfig config = *WanVaeConfigByName("tiny");
    RandomWeightsOptions options;
    options.seed = 7;
    ASSERT_TRUE(WriteRandomWanVaeWeights(config, options, OriginalPath()).ok());
    options.naming = WeightNaming::kDiffusers;
    ASSERT_TRUE(WriteRandomWanVaeWeights(config, options, DiffusersPath()).ok());
  }
  static void TearDownTestSuite() {
    std::error_code ignored;
    fs::remove_all(*directory_, ignored);
    delete directory_;
  }
  static std::string OriginalPath() { return (*directory_ / "tiny-vae.safetensors").string(); }
  static std::string DiffusersPath() { return (*directory_ / "tiny-vae-diffusers.safetensors").string(); }
  static std::string PathOf(const std::string& name) { return (*directory_ / name).string(); }

  std::unique_ptr<WanVae> LoadOrDie(const std::string& path) {
    absl::StatusOr<std::unique_ptr<WanVae>> vae = WanVae::Load(path, *backend_);
    EXPECT_TRUE(vae.ok()) << vae.status();
    return vae.ok() ? *std::move(vae) : nullptr;
  }

  static fs::path* directory_;
  std::unique_ptr<Backend> backend_ = CreateCpuBackend();
};

fs::path* WanVaeTest::directory_ = nullptr;

// The operator contracts of kernels/backend.h beyond what the decoder exercises (back padding, kernel
// shapes that differ per axis, the 1×1×1 path), against direct sums written from the contract.
TEST(VideoVaeOps, Conv3dFollowsThePaddingContract) {
  std::unique_ptr<Backend> backend = CreateCpuBackend();
  struct Case {
    Shape x, weight;
    int front, back, pad_h, pad_w;
  };
  for (const Case& c :
       {Case{{3, 2, 5, 4}, {3, 2, 2, 3, 1}, 1, 1, 1, 0}, Case{{2, 3, 4, 6}, {4, 3, 3, 3, 3}, 2, 0, 1, 1},
        Case{{2, 3, 2, 3}, {5, 3, 1, 1, 1}, 1, 2, 0, 0}, Case{{1, 2, 3, 3}, {2, 2, 1, 3, 3}, 0, 0, 2, 1}}) {
    const Tensor x = RandomLatent(c.x, 21), weight = RandomLatent(c.weight, 22), bias = RandomLatent({c.weight[0]}, 23);
    const Tensor y = backend->Conv3d(x, weight, &bias, c.front, c.back, c.pad_h, c.pad_w);
    const int64_t frames = c.x[0] + c.front + c.back - c.weight[2] + 1;
    const int64_t height = c.x[2] + 2 * c.pad_h - c.weight[3] + 1, width = c.x[3] + 2 * c.pad_w - c.weight[4] + 1;
    ASSERT_EQ(y.shape(), (Shape{frames, c.weight[0], height, width}));
    auto at_x = [&](int64_t t, int64_t ch, int64_t i, int64_t j) -> double {
      if (t < 0 || t >= c.x[0] || i < 0 || i >= c.x[2] || j < 0 || j >= c.x[3]) return 0.0;
      return x.data<float>()[((t * c.x[1] + ch) * c.x[2] + i) * c.x[3] + j];
    };
    std::vector<float> expected;
    for (int64_t t = 0; t < frames; ++t)
      for (int64_t o = 0; o < c.weight[0]; ++o)
        for (int64_t i = 0; i < height; ++i)
          for (int64_t j = 0; j < width; ++j) {
            double sum = bias.data<float>()[o];
            for (int64_t ch = 0; ch < c.x[1]; ++ch)
              for (int64_t a = 0; a < c.weight[2]; ++a)
                for (int64_t p = 0; p < c.weight[3]; ++p)
                  for (int64_t q = 0; q < c.weight[4]; ++q) {
                    const int64_t w_index = (((o * c.x[1] + ch) * c.weight[2] + a) * c.weight[3] + p) * c.weight[4] + q;
                    sum += weight.data<float>()[w_index] * at_x(t + a - c.front, ch, i + p - c.pad_h, j + q - c.pad_w);
                  }
            expected.push_back(static_cast<float>(sum));
          }
    EXPECT_LE(RelativeL2(HostTensorFromFloats(expected, y.shape()), y), 1e-6);
  }
}

TEST(VideoVaeOps, NormUpsampleSwapAndClamp) {
  std::unique_ptr<Backend> backend = CreateCpuBackend();
  // ChannelRmsNorm: F.normalize over dimension 1, a zero vector stays zero (no NaN), then SiLU.
  Tensor x = RandomLatent({2, 3, 2, 2}, 31);
  for (int64_t c = 0; c < 3; ++c) x.data<float>()[c * 4 + 1] = 0.0f;  // frame 0, position 1
  const Tensor gamma = HostTensorFromFloats({0.5f, 1.0f, 2.0f}, {3});
  const Tensor y = backend->ChannelRmsNorm(x, gamma, Activation::kSilu);
  for (int64_t t = 0; t < 2; ++t)
    for (int64_t s = 0; s < 4; ++s) {
      double norm = 0.0;
      for (int64_t c = 0; c < 3; ++c) norm += std::pow(x.data<float>()[(t * 3 + c) * 4 + s], 2);
      for (int64_t c = 0; c < 3; ++c) {
        const double v = x.data<float>()[(t * 3 + c) * 4 + s] / std::max(std::sqrt(norm), 1e-12) * std::sqrt(3.0) *
                         gamma.data<float>()[c];
        EXPECT_NEAR(y.data<float>()[(t * 3 + c) * 4 + s], v / (1.0 + std::exp(-v)), 1e-6);
      }
    }
  // UpsampleNearest2x duplicates pixels.
  const Tensor up = backend->UpsampleNearest2x(x);
  ASSERT_EQ(up.shape(), (Shape{2, 3, 4, 4}));
  EXPECT_EQ(up.data<float>()[(1 * 3 + 2) * 16 + 3 * 4 + 2], x.data<float>()[(1 * 3 + 2) * 4 + 1 * 2 + 1]);
  // SwapAxes: [b, r, c, i] -> [b, c, r, i], also for 16-bit dtypes.
  const Tensor source = ConvertHost(RandomLatent({2, 3, 4, 5}, 32), DType::kBF16);
  const Tensor swapped = backend->SwapAxes(source, 2, 3, 4, 5);
  ASSERT_EQ(swapped.shape(), (Shape{2, 4, 3, 5}));
  ASSERT_EQ(swapped.dtype(), DType::kBF16);
  const uint16_t* in = static_cast<const uint16_t*>(source.raw_data());
  const uint16_t* out = static_cast<const uint16_t*>(swapped.raw_data());
  EXPECT_EQ(out[((1 * 4 + 3) * 3 + 2) * 5 + 4], in[((1 * 3 + 2) * 4 + 3) * 5 + 4]);
  const Tensor matrix = RandomLatent({3, 70, 45}, 33);  // the tiled 2D path
  const Tensor transposed = backend->SwapAxes(matrix, 3, 70, 45, 1);
  EXPECT_EQ(transposed.data<float>()[(2 * 45 + 44) * 70 + 69], matrix.data<float>()[(2 * 70 + 69) * 45 + 44]);
  EXPECT_EQ(transposed.data<float>()[(1 * 45 + 33) * 70 + 5], matrix.data<float>()[(1 * 70 + 5) * 45 + 33]);
  // Clamp keeps NaN.
  const Tensor clamped = backend->Clamp(HostTensorFromFloats({-3.0f, 0.25f, 7.0f, std::nanf("")}, {4}), -1.0f, 1.0f);
  EXPECT_EQ(clamped.data<float>()[0], -1.0f);
  EXPECT_EQ(clamped.data<float>()[1], 0.25f);
  EXPECT_EQ(clamped.data<float>()[2], 1.0f);
  EXPECT_TRUE(std::isnan(clamped.data<float>()[3]));
}

TEST(WanVaeConfig, DecoderInventoryMatchesTheSpec) {
  const WanVaeConfig config = *WanVaeConfigByName("wan2.1-vae");
  int64_t count = 0;
  std::map<std::string, WanVaeParameterSpec> by_name;
  for (const WanVaeParameterSpec& spec : WanVaeDecoderParameters(config)) {
    count += NumElements(spec.shape);
    by_name[spec.name] = spec;
  }
  EXPECT_EQ(count, 73'295'603);  // spec §3.2: decoder + conv2
  EXPECT_EQ(by_name.at("decoder.conv1.weight").shape, (Shape{384, 16, 3, 3, 3}));
  EXPECT_EQ(by_name.at("decoder.upsamples.3.time_conv.weight").shape, (Shape{768, 384, 3, 1, 1}));
  EXPECT_EQ(by_name.at("decoder.upsamples.4.residual.2.weight").shape, (Shape{384, 192, 3, 3, 3}));
  EXPECT_EQ(by_name.at("decoder.upsamples.4.shortcut.weight").diffusers_name,
            "decoder.up_blocks.1.resnets.0.conv_shortcut.weight");
  EXPECT_EQ(by_name.at("decoder.upsamples.11.resample.1.weight").shape, (Shape{96, 192, 3, 3}));
  EXPECT_EQ(by_name.count("decoder.upsamples.11.time_conv.weight"), 0u);  // upsample2d: no time_conv
  EXPECT_EQ(by_name.at("decoder.upsamples.7.time_conv.bias").diffusers_name,
            "decoder.up_blocks.1.upsamplers.0.time_conv.bias");
  EXPECT_EQ(by_name.at("decoder.upsamples.13.residual.3.gamma").diffusers_name,
            "decoder.up_blocks.3.resnets.1.norm2.gamma");
  EXPECT_EQ(by_name.at("decoder.middle.2.residual.6.weight").diffusers_name,
            "decoder.mid_block.resnets.1.conv2.weight");
  EXPECT_EQ(by_name.at("decoder.middle.1.to_qkv.weight").diffusers_name,
            "decoder.mid_block.attentions.0.to_qkv.weight");
  EXPECT_EQ(by_name.at("decoder.head.0.gamma").diffusers_name, "decoder.norm_out.gamma");
  EXPECT_EQ(by_name.at("decoder.head.2.weight").diffusers_name, "decoder.conv_out.weight");
  EXPECT_EQ(by_name.at("conv2.weight").diffusers_name, "post_quant_conv.weight");
  EXPECT_EQ(config.OutputFrames(21), 81);
  EXPECT_EQ(config.spatial_scale(), 8);
}

TEST_F(WanVaeTest, MatchesTheChunkedPythonReference) {
  std::unique_ptr<WanVae> vae = LoadOrDie(OriginalPath());
  ASSERT_NE(vae, nullptr);
  EXPECT_EQ(vae->config().name, "tiny");  // inferred from the conv_in shape
  // Several frame counts (1 has no temporal upsampling at all) and non-square latents.
  const std::vector<std::pair<std::string, Shape>> cases = {
      {"latent.f1", {16, 1, 3, 5}}, {"latent.f2", {16, 2, 4, 3}}, {"latent.f5", {16, 5, 4, 6}}};
  std::vector<std::pair<std::string, Tensor>> latents;
  for (size_t i = 0; i < cases.size(); ++i) latents.emplace_back(cases[i].first, RandomLatent(cases[i].second, i + 1));
  const std::string latent_path = PathOf("latents.safetensors");
  const std::string output_path = PathOf("reference-video.safetensors");
  ASSERT_TRUE(WriteSafetensors(latent_path, latents).ok());
  const std::string command = absl::StrCat(ZOETROPE_REFERENCE_PYTHON, " ", ZOETROPE_VAE_REFERENCE_SCRIPT, " --weights ",
                                           OriginalPath(), " --latent ", latent_path, " -o ", output_path);
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> reference = SafetensorsFile::Open(output_path);
  ASSERT_TRUE(reference.ok()) << reference.status();
  for (const auto& [name, latent] : latents) {
    SCOPED_TRACE(name);
    absl::StatusOr<Tensor> ours = vae->Decode(latent, /*chunk_frames=*/1);
    ASSERT_TRUE(ours.ok()) << ours.status();
    const std::string video_name = "video" + name.substr(std::string("latent").size());
    absl::StatusOr<Tensor> expected = (*reference)->Get(video_name);
    ASSERT_TRUE(expected.ok()) << expected.status();
    EXPECT_EQ(ours->shape(), (Shape{1 + 4 * (latent.dim(1) - 1), 3, 8 * latent.dim(2), 8 * latent.dim(3)}));
    EXPECT_EQ(ours->shape(), expected->shape());
    const double error = RelativeL2(*expected, *ours);
    EXPECT_LE(error, 1e-4);
    std::printf("%s: relative L2 vs reference %.3g\n", name.c_str(), error);
    // The random weights must give a real picture: mostly inside (−1, 1), not a constant.
    EXPECT_LT(FractionClamped(*expected), 0.25);
  }
}

TEST_F(WanVaeTest, ChunkSizesGiveTheWholeSequenceDecode) {
  std::unique_ptr<WanVae> vae = LoadOrDie(OriginalPath());
  ASSERT_NE(vae, nullptr);
  const Tensor latent = RandomLatent({16, 5, 3, 4}, 11);
  absl::StatusOr<Tensor> whole = vae->Decode(latent, /*chunk_frames=*/0);
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_EQ(whole->dim(0), 17);
  for (int64_t chunk : {1, 2, 3}) {
    SCOPED_TRACE(absl::StrCat("chunk_frames ", chunk));
    absl::StatusOr<Tensor> chunked = vae->Decode(latent, chunk);
    ASSERT_TRUE(chunked.ok()) << chunked.status();
    EXPECT_LE(RelativeL2(*whole, *chunked), 1e-5);
  }
  // Streaming hands over 1 + 4·(2 − 1) = 5 frames first, then 8, then 4, at the right offsets.
  std::vector<std::pair<int64_t, int64_t>> pieces;
  ASSERT_TRUE(vae->DecodeStreaming(latent, 2,
                                   [&](const Tensor& frames, int64_t first) {
                                     pieces.emplace_back(first, frames.dim(0));
                                     return absl::OkStatus();
                                   })
                  .ok());
  EXPECT_EQ(pieces, (std::vector<std::pair<int64_t, int64_t>>{{0, 5}, {5, 8}, {13, 4}}));
  // Causality: decoding a prefix of the latent gives a prefix of the video.
  Tensor prefix = Tensor::Host({16, 2, 3, 4}, DType::kF32);
  for (int64_t c = 0; c < 16; ++c) {
    std::memcpy(prefix.data<float>() + c * 2 * 12, latent.data<float>() + c * 5 * 12, sizeof(float) * 2 * 12);
  }
  absl::StatusOr<Tensor> prefix_video = vae->Decode(prefix, 1);
  ASSERT_TRUE(prefix_video.ok()) << prefix_video.status();
  EXPECT_LE(RelativeL2(whole->Rows(0, 5), *prefix_video), 1e-5);
  // ...and a different latent frame 1 changes every frame from 1 on (the test can fail).
  prefix.data<float>()[12] += 1.0f;
  absl::StatusOr<Tensor> changed = vae->Decode(prefix, 1);
  ASSERT_TRUE(changed.ok());
  EXPECT_EQ(RelativeL2(prefix_video->Rows(0, 1), changed->Rows(0, 1)), 0.0);
  EXPECT_GT(RelativeL2(prefix_video->Rows(1, 4), changed->Rows(1, 4)), 1e-3);
}

TEST_F(WanVaeTest, BothKeyNamingsDecodeIdentically) {
  std::unique_ptr<WanVae> original = LoadOrDie(OriginalPath());
  std::unique_ptr<WanVae> diffusers = LoadOrDie(DiffusersPath());
  ASSERT_NE(original, nullptr);
  ASSERT_NE(diffusers, nullptr);
  absl::StatusOr<std::unique_ptr<WeightSource>> source = WeightSource::Open(DiffusersPath());
  ASSERT_TRUE(source.ok());
  EXPECT_EQ(DetectWanVaeNaming(**source), WeightNaming::kDiffusers);
  const Tensor latent = RandomLatent({16, 3, 2, 3}, 5);
  absl::StatusOr<Tensor> a = original->Decode(latent), b = diffusers->Decode(latent);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(RelativeL2(*b, *a), 0.0);
}

TEST_F(WanVaeTest, LoaderErrorsNameTheFileAndKey) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(OriginalPath());
  ASSERT_TRUE(file.ok());
  std::vector<std::pair<std::string, Tensor>> all;
  for (const std::string& key : (*file)->Keys()) all.emplace_back(key, *(*file)->Get(key));

  const std::string missing_key = "decoder.upsamples.7.time_conv.weight";
  std::vector<std::pair<std::string, Tensor>> without;
  for (const auto& entry : all) {
    if (entry.first != missing_key) without.push_back(entry);
  }
  const std::string missing_path = PathOf("missing.safetensors");
  ASSERT_TRUE(WriteSafetensors(missing_path, without).ok());
  absl::StatusOr<std::unique_ptr<WanVae>> missing = WanVae::Load(missing_path, *backend_);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), missing_path)) << missing.status();
  EXPECT_TRUE(absl::StrContains(missing.status().message(), missing_key)) << missing.status();
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "[64, 32, 3, 1, 1]")) << missing.status();

  const std::string wrong_key = "decoder.middle.0.residual.6.weight";
  std::vector<std::pair<std::string, Tensor>> wrong = all;
  for (auto& entry : wrong) {
    if (entry.first == wrong_key) entry.second = Tensor::Host({32, 32, 3, 3, 1}, DType::kF32);
  }
  const std::string wrong_path = PathOf("wrong-shape.safetensors");
  ASSERT_TRUE(WriteSafetensors(wrong_path, wrong).ok());
  absl::StatusOr<std::unique_ptr<WanVae>> mismatched = WanVae::Load(wrong_path, *backend_);
  ASSERT_FALSE(mismatched.ok());
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kInvalidArgument);
  for (const std::string& part :
       {wrong_path, wrong_key, std::string("[32, 32, 3, 3, 1]"), std::string("expected [32, 32, 3, 3, 3]")}) {
    EXPECT_TRUE(absl::StrContains(mismatched.status().message(), part)) << mismatched.status() << " lacks " << part;
  }

  // A VAE of another width is a clear error when a preset is named.
  absl::StatusOr<std::unique_ptr<WanVae>> preset = WanVae::Load(OriginalPath(), *backend_, "wan2.1-vae");
  ASSERT_FALSE(preset.ok());
  EXPECT_TRUE(absl::StrContains(preset.status().message(), "decoder.conv1.weight")) << preset.status();
}

TEST_F(WanVaeTest, RejectsBadLatentShapes) {
  std::unique_ptr<WanVae> vae = LoadOrDie(OriginalPath());
  ASSERT_NE(vae, nullptr);
  EXPECT_FALSE(vae->Decode(Tensor::Host({8, 2, 2, 2}, DType::kF32)).ok());
  EXPECT_FALSE(vae->Decode(Tensor::Host({16, 0, 2, 2}, DType::kF32)).ok());
  EXPECT_FALSE(vae->Decode(RandomLatent({16, 2, 2, 2}, 1), -1).ok());
}

// The quick-start size: [16, 5, 16, 16] -> 17 frames of 128×128. Prints the time (the report's number).
TEST_F(WanVaeTest, TinyDecodeOfSeventeenFramesAt128) {
  std::unique_ptr<WanVae> vae = LoadOrDie(OriginalPath());
  ASSERT_NE(vae, nullptr);
  const Tensor latent = RandomLatent({16, 5, 16, 16}, 3);
  const std::clock_t cpu_begin = std::clock();
  const auto wall_begin = std::chrono::steady_clock::now();
  absl::StatusOr<Tensor> video = vae->Decode(latent, 1);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_begin).count();
  const double cpu = static_cast<double>(std::clock() - cpu_begin) / CLOCKS_PER_SEC;
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(video->shape(), (Shape{17, 3, 128, 128}));
  const std::vector<float> values = ToFloatVector(*video);
  double sum = 0.0, squares = 0.0;
  for (float value : values) {
    ASSERT_TRUE(std::isfinite(value));
    sum += value;
    squares += static_cast<double>(value) * value;
  }
  const double mean = sum / values.size();
  EXPECT_GT(std::sqrt(squares / values.size() - mean * mean), 0.05);
  EXPECT_LT(FractionClamped(*video), 0.25);
  std::printf("tiny VAE decode [16,5,16,16] -> [17,3,128,128]: wall %.3f s, cpu %.3f s\n", wall, cpu);
  RecordProperty("wall_seconds", std::to_string(wall));
  RecordProperty("cpu_seconds", std::to_string(cpu));
}

}  // namespace
}  // namespace zoetrope
