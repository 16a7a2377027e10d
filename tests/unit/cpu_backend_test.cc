// CPU backend operators against plain double-precision loops written here from the contracts in
// kernels/backend.h.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <random>

#include <gtest/gtest.h>

#include "tests/unit/numerics.h"

namespace zoetrope {
namespace {

using test::RelativeL2;

Tensor Random(const Shape& shape, uint32_t seed, float scale = 1.0f) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  Tensor tensor = Tensor::Host(shape, DType::kF32);
  for (int64_t i = 0; i < tensor.numel(); ++i) tensor.data<float>()[i] = normal(generator);
  return tensor;
}

class CpuBackendTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend_ = CreateCpuBackend();
};

TEST_F(CpuBackendTest, LinearWithBiasAndActivations) {
  const Tensor x = Random({5, 7}, 1), weight = Random({3, 7}, 2), bias = Random({3}, 3);
  for (Activation activation : {Activation::kNone, Activation::kGeluTanh, Activation::kSilu}) {
    std::vector<double> expected;
    for (int r = 0; r < 5; ++r) {
      for (int o = 0; o < 3; ++o) {
        double sum = bias.data<float>()[o];
        for (int i = 0; i < 7; ++i) sum += double{x.data<float>()[r * 7 + i]} * weight.data<float>()[o * 7 + i];
        if (activation == Activation::kGeluTanh) {
          sum = 0.5 * sum * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (sum + 0.044715 * sum * sum * sum)));
        } else if (activation == Activation::kSilu) {
          sum = sum / (1.0 + std::exp(-sum));
        }
        expected.push_back(sum);
      }
    }
    EXPECT_LT(RelativeL2(expected, backend_->Linear(x, weight, &bias, activation)), 1e-6);
  }
}

TEST_F(CpuBackendTest, LayerNormWithModulationAndAffine) {
  const int64_t rows = 4, width = 33;
  const Tensor x = Random({rows, width}, 4, 3.0f);
  const Tensor scale = Random({width}, 5), shift = Random({width}, 6), weight = Random({width}, 7),
               bias = Random({width}, 8);
  NormParams modulated{1e-6f, Tensor(), Tensor(), scale, shift};
  NormParams affine{1e-6f, weight, bias, Tensor(), Tensor()};
  for (const NormParams* params : {&modulated, &affine}) {
    std::vector<double> expected;
    for (int r = 0; r < rows; ++r) {
      double mean = 0, variance = 0;
      for (int c = 0; c < width; ++c) mean += x.data<float>()[r * width + c];
      mean /= width;
      for (int c = 0; c < width; ++c) variance += std::pow(x.data<float>()[r * width + c] - mean, 2);
      variance /= width;
      for (int c = 0; c < width; ++c) {
        double value = (x.data<float>()[r * width + c] - mean) / std::sqrt(variance + 1e-6);
        if (params->weight.defined()) value = value * weight.data<float>()[c] + bias.data<float>()[c];
        if (params->scale.defined()) value = value * (1.0 + scale.data<float>()[c]) + shift.data<float>()[c];
        expected.push_back(value);
      }
    }
    EXPECT_LT(RelativeL2(expected, backend_->LayerNorm(x, *params, DType::kF32)), 1e-6);
  }
}

TEST_F(CpuBackendTest, RmsNormOverTheWholeWidth) {
  const Tensor x = Random({3, 16}, 9, 2.0f), weight = Random({16}, 10);
  std::vector<double> expected;
  for (int r = 0; r < 3; ++r) {
    double squares = 0;
    for (int c = 0; c < 16; ++c) squares += std::pow(x.data<float>()[r * 16 + c], 2);
    const double inverse = 1.0 / std::sqrt(squares / 16 + 1e-6);
    for (int c = 0; c < 16; ++c) expected.push_back(x.data<float>()[r * 16 + c] * inverse * weight.data<float>()[c]);
  }
  EXPECT_LT(RelativeL2(expected, backend_->RmsNorm(x, weight, 1e-6f)), 1e-6);
}

TEST_F(CpuBackendTest, RopeRotatesInterleavedPairs) {
  const int64_t tokens = 3, heads = 2, head_dim = 8;
  Tensor x = Random({tokens, heads, head_dim}, 11);
  const Tensor original = ConvertHost(x, DType::kF32);
  Tensor cos = Tensor::Host({tokens, head_dim / 2}, DType::kF32);
  Tensor sin = Tensor::Host({tokens, head_dim / 2}, DType::kF32);
  std::vector<double> angles;
  for (int i = 0; i < tokens * head_dim / 2; ++i) {
    angles.push_back(0.37 * i - 1.0);
    cos.data<float>()[i] = static_cast<float>(std::cos(angles.back()));
    sin.data<float>()[i] = static_cast<float>(std::sin(angles.back()));
  }
  backend_->ApplyRope(x, cos, sin);
  std::vector<double> expected;
  for (int n = 0; n < tokens; ++n)
    for (int h = 0; h < heads; ++h)
      for (int p = 0; p < head_dim / 2; ++p) {
        const float* v = original.data<float>() + (n * heads + h) * head_dim;
        const double angle = angles[n * head_dim / 2 + p];
        expected.push_back(v[2 * p] * std::cos(angle) - v[2 * p + 1] * std::sin(angle));
        expected.push_back(v[2 * p] * std::sin(angle) + v[2 * p + 1] * std::cos(angle));
      }
  EXPECT_LT(RelativeL2(expected, x), 1e-6);
}

// Attention in double with an optional per-key-block mask (block size `block`).
std::vector<double> NaiveAttention(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                   const std::vector<std::vector<bool>>* visited, int block) {
  const int64_t lq = q.dim(0), lk = k.dim(0), heads = q.dim(1), d = q.dim(2);
  std::vector<double> out(static_cast<size_t>(lq * heads * d), 0.0);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < lq; ++i) {
      std::vector<double> scores(lk);
      double maximum = -INFINITY;
      for (int64_t j = 0; j < lk; ++j) {
        if (visited != nullptr && !(*visited)[i / block][j / block]) {
          scores[j] = -INFINITY;
          continue;
        }
        double dot = 0;
        for (int64_t c = 0; c < d; ++c) dot += double{q.data<float>()[(i * heads + h) * d + c]} * k.data<float>()[(j * heads + h) * d + c];
        scores[j] = dot * scale;
        maximum = std::max(maximum, scores[j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < lk; ++j) sum += scores[j] == -INFINITY ? 0.0 : std::exp(scores[j] - maximum);
      for (int64_t j = 0; j < lk; ++j) {
        if (scores[j] == -INFINITY) continue;
        const double p = std::exp(scores[j] - maximum) / sum;
        for (int64_t c = 0; c < d; ++c) out[(i * heads + h) * d + c] += p * v.data<float>()[(j * heads + h) * d + c];
      }
    }
  }
  return out;
}

TEST_F(CpuBackendTest, DenseAttentionMatchesDoubleReference) {
  // 300 queries span two tiles of the CPU kernel, the second partial; keys differ in length.
  const Tensor q = Random({300, 3, 16}, 12), k = Random({77, 3, 16}, 13), v = Random({77, 3, 16}, 14);
  const double scale = 0.25;
  EXPECT_LT(RelativeL2(NaiveAttention(q, k, v, scale, nullptr, 1), backend_->Attention(q, k, v, 0.25f, nullptr)),
            1e-5);
}

// The VAE's mid-block attention: one head whose width is the channel count (384 for Wan2.1).
TEST_F(CpuBackendTest, VaeHeadWidthAttentionMatchesDoubleReference) {
  const Tensor q = Random({270, 1, 384}, 21), k = Random({190, 1, 384}, 22), v = Random({190, 1, 384}, 23);
  const float scale = static_cast<float>(1.0 / std::sqrt(384.0));
  EXPECT_LT(RelativeL2(NaiveAttention(q, k, v, scale, nullptr, 1), backend_->Attention(q, k, v, scale, nullptr)),
            1e-5);
}

// 65,536 keys of width 384: the one-frame 2048×2048 request (a 256×256 latent) whose attention used to
// build an [L, L] bias and abort above ~50,800 keys. The CPU kernel holds one [256, keys] score tile at a
// time (memory O(keys · 256), not O(keys²)); queries are kept to two tiles (the second partial) so the
// test stays fast, and rows on both sides of the tile boundary are checked against fp64.
TEST_F(CpuBackendTest, AttentionOver65536KeysMatchesDoubleReference) {
  constexpr int64_t kKeys = 65536, kQueries = 260, kWidth = 384;
  const Tensor q = Random({kQueries, 1, kWidth}, 31), k = Random({kKeys, 1, kWidth}, 32),
               v = Random({kKeys, 1, kWidth}, 33);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(kWidth)));
  const Tensor out = backend_->Attention(q, k, v, scale, nullptr);
  ASSERT_EQ(out.shape(), q.shape());
  for (int64_t row : {int64_t{0}, int64_t{255}, int64_t{256}, kQueries - 1}) {
    Tensor one = Tensor::Host({1, 1, kWidth}, DType::kF32);
    std::copy_n(q.data<float>() + row * kWidth, kWidth, one.data<float>());
    const std::vector<double> expected = NaiveAttention(one, k, v, scale, nullptr, 1);
    const std::vector<float> actual(out.data<float>() + row * kWidth, out.data<float>() + (row + 1) * kWidth);
    EXPECT_LT(RelativeL2(expected, actual), 1e-4) << "query row " << row;
  }
}

TEST_F(CpuBackendTest, BlockSparseAttentionVisitsOnlyListedBlocks) {
  const int block = 16;
  const Tensor q = Random({40, 2, 8}, 15), k = Random({40, 2, 8}, 16), v = Random({40, 2, 8}, 17);
  // Three query blocks (the last partial) over three key blocks; a shared layout.
  const std::vector<std::vector<int32_t>> rows = {{0, 2}, {1}, {0, 1, 2}};
  std::vector<int32_t> offsets = {0}, columns;
  std::vector<std::vector<bool>> visited(3, std::vector<bool>(3, false));
  for (size_t r = 0; r < rows.size(); ++r) {
    for (int32_t column : rows[r]) {
      columns.push_back(column);
      visited[r][column] = true;
    }
    offsets.push_back(static_cast<int32_t>(columns.size()));
  }
  BlockSparseLayout layout;
  layout.query_block = block;
  layout.key_block = block;
  layout.row_offsets = Tensor::Host({1, 4}, DType::kI32);
  layout.column_indices = Tensor::Host({1, static_cast<int64_t>(columns.size())}, DType::kI32);
  std::copy(offsets.begin(), offsets.end(), layout.row_offsets.data<int32_t>());
  std::copy(columns.begin(), columns.end(), layout.column_indices.data<int32_t>());
  const Tensor sparse = backend_->Attention(q, k, v, 0.3f, &layout);
  EXPECT_LT(RelativeL2(NaiveAttention(q, k, v, 0.3, &visited, block), sparse), 1e-5);
  // And it is not the dense result.
  EXPECT_GT(RelativeL2(NaiveAttention(q, k, v, 0.3, nullptr, block), sparse), 1e-2);
}

TEST_F(CpuBackendTest, PatchifyColumnsAreChannelMajorAndUnpatchifyIsChannelMinor) {
  const Tensor latent = Random({3, 2, 4, 6}, 18);
  const Tensor tokens = backend_->Patchify(latent, 1, 2, 2);
  ASSERT_EQ(tokens.shape(), (Shape{2 * 2 * 3, 12}));
  // Token (f=1, h=1, w=2), column c·4 + q·2 + r holds latent[c, 1, 2 + q, 4 + r].
  const int64_t token = (1 * 2 + 1) * 3 + 2;
  for (int c = 0; c < 3; ++c)
    for (int q = 0; q < 2; ++q)
      for (int r = 0; r < 2; ++r)
        EXPECT_EQ(tokens.data<float>()[token * 12 + c * 4 + q * 2 + r],
                  latent.data<float>()[((c * 2 + 1) * 4 + 2 + q) * 6 + 4 + r]);
  // Unpatchify reads column q·(2·C) + r·C + c: reorder and invert.
  Tensor head_layout = Tensor::Host(tokens.shape(), DType::kF32);
  for (int64_t n = 0; n < tokens.dim(0); ++n)
    for (int c = 0; c < 3; ++c)
      for (int q = 0; q < 2; ++q)
        for (int r = 0; r < 2; ++r)
          head_layout.data<float>()[n * 12 + q * 6 + r * 3 + c] = tokens.data<float>()[n * 12 + c * 4 + q * 2 + r];
  const Tensor back = backend_->Unpatchify(head_layout, 3, 2, 2, 3, 1, 2, 2);
  EXPECT_EQ(ToFloatVector(back), ToFloatVector(latent));
}

TEST_F(CpuBackendTest, CombineAndGatedAdd) {
  const Tensor a = Random({4, 5}, 19), b = Random({4, 5}, 20), gate = Random({5}, 21);
  const Tensor combined = backend_->Combine({{2.0, &a}, {-0.5, &b}});
  std::vector<double> expected;
  for (int i = 0; i < 20; ++i) expected.push_back(2.0 * a.data<float>()[i] - 0.5 * b.data<float>()[i]);
  EXPECT_LT(RelativeL2(expected, combined), 1e-7);

  Tensor x = ConvertHost(a, DType::kF32);
  backend_->AddGated(x, b, &gate);
  expected.clear();
  for (int i = 0; i < 20; ++i) expected.push_back(a.data<float>()[i] + b.data<float>()[i] * gate.data<float>()[i % 5]);
  EXPECT_LT(RelativeL2(expected, x), 1e-7);
}

}  // namespace
}  // namespace zoetrope
