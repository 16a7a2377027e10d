// The latent preview's projection against an independent computation: the same factors applied in
// double precision, in a different loop order (per channel over the whole plane), then converted with
// the reference's pixel rule. Values may differ by one step of 255 where float and double round apart.
#include "worker/engine/latent_preview.h"

#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace zoetrope {
namespace {

TEST(LatentPreviewTest, ProjectionMatchesIndependentComputation) {
  const int channels = 16, frames = 5, height = 6, width = 7;
  const size_t plane = static_cast<size_t>(height) * width;
  std::vector<float> latent(static_cast<size_t>(channels) * frames * plane);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  for (float& v : latent) v = normal(rng);

  const LatentRgbFactors& factors = Wan21LatentRgbFactors();
  const std::vector<int> indices = {0, 2, 4};
  auto projected = ProjectLatentFrames(latent.data(), channels, frames, height, width, indices, factors);
  ASSERT_TRUE(projected.ok()) << projected.status();
  ASSERT_EQ(projected->size(), indices.size());

  double diff_sq = 0, ref_sq = 0;
  int mismatches_over_one = 0;
  for (size_t i = 0; i < indices.size(); ++i) {
    for (int k = 0; k < 3; ++k) {
      std::vector<double> acc(plane, factors.bias[k]);
      for (int c = 0; c < channels; ++c) {
        const float* src = latent.data() + (static_cast<size_t>(c) * frames + indices[i]) * plane;
        for (size_t p = 0; p < plane; ++p) acc[p] += static_cast<double>(factors.factors[c][k]) * src[p];
      }
      for (size_t p = 0; p < plane; ++p) {
        const double clamped = std::fmin(1.0, std::fmax(-1.0, acc[p]));
        const double expected = std::floor((clamped + 1.0) / 2.0 * 255.0);
        const double got = (*projected)[i].rgb[p * 3 + k];
        diff_sq += (got - expected) * (got - expected);
        ref_sq += expected * expected;
        if (std::abs(got - expected) > 1.0) ++mismatches_over_one;
      }
    }
  }
  EXPECT_EQ(mismatches_over_one, 0);
  EXPECT_LT(std::sqrt(diff_sq / ref_sq), 1e-2);
}

TEST(LatentPreviewTest, RejectsBadShapeAndIndex) {
  std::vector<float> latent(16 * 2 * 2 * 2, 0.0f);
  EXPECT_FALSE(ProjectLatentFrames(latent.data(), 8, 2, 2, 2, {0}, Wan21LatentRgbFactors()).ok());
  EXPECT_FALSE(ProjectLatentFrames(latent.data(), 16, 2, 2, 2, {2}, Wan21LatentRgbFactors()).ok());
}

TEST(LatentPreviewTest, FrameIndicesSpreadOverTheVideo) {
  EXPECT_EQ(PreviewFrameIndices(21, 4), (std::vector<int>{0, 6, 13, 20}));
  EXPECT_EQ(PreviewFrameIndices(3, 8), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(PreviewFrameIndices(0, 4), std::vector<int>{});
}

}  // namespace
}  // namespace zoetrope
