// The least-squares fit of preview factors: it recovers a known linear decoder exactly, gives a finite
// residual on the tiny random VAE, and its JSON reads back to the same factors.
#include "worker/engine/latent_rgb_fit.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "worker/engine/wan_vae.h"
#include "worker/engine/wan_vae_random_weights.h"

namespace zoetrope {
namespace {

// A made-up linear map, nothing like Wan's, so that recovering it proves the fit rather than a prior.
LatentRgbFactors KnownFactors() {
  LatentRgbFactors known;
  for (int c = 0; c < 16; ++c) {
    for (int k = 0; k < 3; ++k) known.factors[c][k] = static_cast<float>(0.05 * std::sin(1.3 * c + 2.1 * k));
  }
  known.bias = {0.1f, -0.2f, 0.05f};
  return known;
}

// A "decoder" that is exactly linear: every latent pixel becomes an 8 × 8 block of A·x + b.
absl::StatusOr<Tensor> LinearDecode(const Tensor& latent, const LatentRgbFactors& map) {
  const int64_t h = latent.dim(2), w = latent.dim(3);
  Tensor frames = Tensor::Host({1, 3, 8 * h, 8 * w}, DType::kF32);
  const float* x = latent.data<float>();
  float* out = frames.data<float>();
  for (int64_t y = 0; y < 8 * h; ++y) {
    for (int64_t xx = 0; xx < 8 * w; ++xx) {
      for (int k = 0; k < 3; ++k) {
        double value = map.bias[k];
        for (int c = 0; c < 16; ++c) value += double(map.factors[c][k]) * x[(c * h + y / 8) * w + xx / 8];
        out[(k * 8 * h + y) * 8 * w + xx] = static_cast<float>(value);
      }
    }
  }
  return frames;
}

TEST(LatentRgbFitTest, RecoversAKnownLinearDecoder) {
  const LatentRgbFactors known = KnownFactors();
  LatentRgbFitOptions options;
  options.latents = 4;
  options.height = 8;
  options.width = 8;
  absl::StatusOr<LatentRgbFit> fit =
      FitLatentRgbFactors([&](const Tensor& latent) { return LinearDecode(latent, known); }, options);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(fit->samples, 4 * 8 * 8);
  for (int c = 0; c < 16; ++c) {
    for (int k = 0; k < 3; ++k) EXPECT_NEAR(fit->factors.factors[c][k], known.factors[c][k], 1e-5) << c << "," << k;
  }
  for (int k = 0; k < 3; ++k) {
    EXPECT_NEAR(fit->factors.bias[k], known.bias[k], 1e-5);
    EXPECT_LT(fit->residual_rms[k], 1e-5);
    EXPECT_GT(fit->r_squared[k], 0.99999);
  }
}

TEST(LatentRgbFitTest, TooFewSamplesIsAnError) {
  LatentRgbFitter fitter;
  EXPECT_FALSE(fitter.Solve().ok());
  Tensor latent = Tensor::Host({16, 1, 2, 2}, DType::kF32);
  Tensor wrong = Tensor::Host({1, 3, 16, 8}, DType::kF32);  // not 8× in both directions
  EXPECT_FALSE(fitter.Add(latent, wrong).ok());
}

TEST(LatentRgbFitTest, TinyVaeFitHasAFiniteResidual) {
  const std::string directory = (std::filesystem::temp_directory_path() / "zoetrope-latent-rgb-fit").string();
  std::filesystem::create_directories(directory);
  const std::string weights = directory + "/vae.safetensors";
  absl::StatusOr<WanVaeConfig> config = WanVaeConfigByName("tiny");
  ASSERT_TRUE(config.ok());
  ASSERT_TRUE(WriteRandomWanVaeWeights(*config, RandomWeightsOptions(), weights).ok());
  std::unique_ptr<Backend> backend = CreateCpuBackend(1);
  absl::StatusOr<std::unique_ptr<WanVae>> vae = WanVae::Load(weights, *backend);
  ASSERT_TRUE(vae.ok()) << vae.status();
  LatentRgbFitOptions options;
  options.latents = 3;
  options.height = 6;
  options.width = 6;
  absl::StatusOr<LatentRgbFit> fit = FitLatentRgbFactors(
      [&](const Tensor& latent) -> absl::StatusOr<Tensor> {
        absl::StatusOr<Tensor> frames = (*vae)->Decode(latent);
        if (!frames.ok()) return frames.status();
        return backend->ToHost(*frames);
      },
      options);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(fit->samples, 3 * 6 * 6);
  for (int k = 0; k < 3; ++k) {
    EXPECT_TRUE(std::isfinite(fit->residual_rms[k]));
    // The decoded video is in [−1, 1]: so is any residual of a fit at least as good as the mean.
    EXPECT_LE(fit->residual_rms[k], 2.0);
    EXPECT_LE(fit->r_squared[k], 1.0 + 1e-9);
    EXPECT_GE(fit->r_squared[k], -1e-9) << "least squares with a bias never does worse than the mean";
  }
  std::filesystem::remove_all(directory);
}

TEST(LatentRgbFitTest, JsonReadsBackAndBadFilesAreRefused) {
  LatentRgbFit fit;
  fit.factors = KnownFactors();
  fit.samples = 10;
  const std::string path = (std::filesystem::temp_directory_path() / "zoetrope-preview-factors.json").string();
  {
    std::ofstream file(path);
    file << LatentRgbFactorsToJson(fit);
  }
  absl::StatusOr<LatentRgbFactors> read = ReadLatentRgbFactors(path);
  ASSERT_TRUE(read.ok()) << read.status();
  for (int c = 0; c < 16; ++c) {
    for (int k = 0; k < 3; ++k) EXPECT_FLOAT_EQ(read->factors[c][k], fit.factors.factors[c][k]);
  }
  EXPECT_FLOAT_EQ(read->bias[1], -0.2f);
  {
    std::ofstream file(path);
    file << R"({"factors": [[1, 2, 3]], "bias": [0, 0, 0]})";
  }
  EXPECT_FALSE(ReadLatentRgbFactors(path).ok());
  std::filesystem::remove(path);
  EXPECT_FALSE(ReadLatentRgbFactors(path).ok());
}

}  // namespace
}  // namespace zoetrope
