// CUDA backend parity: every operator against the CPU reference backend on random inputs, the attention
// kernel against a float64 reference (dense and block-sparse, lengths on and off the block grid), the
// Wan DiT forward on CUDA against CPU, and the allocator's promise that a repeated forward calls
// cudaMalloc zero times.
//
// Every test that needs a GPU skips when none is visible (CI and the development machine compile these
// tests but have no device); the GPU machine runs them (ctest -L gpu).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "kernels/backend_factory.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "tests/unit/numerics.h"
#include "worker/engine/denoise.h"
#include "worker/engine/wan_dit.h"
#include "worker/engine/wan_random_weights.h"

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

// Rounds a host F32 tensor through `dtype` (what the device sees after Upload), staying F32.
Tensor RoundedThrough(const Tensor& host, DType dtype) { return ConvertHost(ConvertHost(host, dtype), DType::kF32); }

std::vector<double> ToDoubles(const Tensor& host) {
  const std::vector<float> values = ToFloatVector(host);
  return std::vector<double>(values.begin(), values.end());
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) {
      // The GPU scripts set ZOETROPE_REQUIRE_GPU=1: there a missing device (or a driver mismatch, which
      // also reads as no device) is a failure, not a skip.
      const char* required = std::getenv("ZOETROPE_REQUIRE_GPU");
      if (required != nullptr && std::string(required) == "1") FAIL() << "ZOETROPE_REQUIRE_GPU=1 but no CUDA device";
      GTEST_SKIP() << "no CUDA device";
    }
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(0);
    ASSERT_TRUE(backend.ok()) << backend.status();
    gpu_ = *std::move(backend);
    cpu_ = CreateCpuBackend();
  }

  std::vector<float> Fetch(const Tensor& device_tensor, Backend* backend = nullptr) {
    return ToFloatVector((backend != nullptr ? backend : gpu_.get())->ToHost(device_tensor));
  }
  double Compare(const Tensor& cpu_result, const Tensor& gpu_result) {
    EXPECT_EQ(cpu_result.shape(), gpu_result.shape());
    return RelativeL2(ToDoubles(cpu_result), Fetch(gpu_result));
  }
  // Leaves NaN-filled blocks of `bytes` in the allocator cache, so a kernel that skips an element of a
  // fresh output of that size is caught by the NaN check.
  void PoisonCache(size_t bytes, int copies = 2, Backend* backend = nullptr) {
    Backend& target = backend != nullptr ? *backend : *gpu_;
    const int64_t count = static_cast<int64_t>(bytes / sizeof(float));
    std::vector<Tensor> poisoned;
    for (int i = 0; i < copies; ++i) {
      Tensor host = Tensor::Host({count}, DType::kF32);
      for (int64_t j = 0; j < count; ++j) host.data<float>()[j] = std::numeric_limits<float>::quiet_NaN();
      poisoned.push_back(target.Upload(host, DType::kF32));
    }
    target.Synchronize();
  }

  std::unique_ptr<Backend> gpu_;
  std::unique_ptr<Backend> cpu_;
};

TEST(CudaAllocator, SizeClassesWasteAtMostAQuarter) {
  EXPECT_EQ(CudaAllocator::RoundToSizeClass(1), 512u);
  EXPECT_EQ(CudaAllocator::RoundToSizeClass(1024), 1024u);
  EXPECT_EQ(CudaAllocator::RoundToSizeClass(777), 1024u);
  EXPECT_EQ(CudaAllocator::RoundToSizeClass(4097), 5120u);
  for (size_t bytes : {size_t{5000}, size_t{1} << 20, (size_t{3} << 20) + 1, size_t{123456789}}) {
    const size_t rounded = CudaAllocator::RoundToSizeClass(bytes);
    EXPECT_GE(rounded, bytes);
    EXPECT_LE(rounded, bytes + bytes / 4 + 1);
    EXPECT_EQ(rounded % 256, 0u);
  }
}

TEST(BackendFactory, NamesAndErrors) {
  absl::StatusOr<std::unique_ptr<Backend>> cpu = CreateBackend("cpu");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ((*cpu)->name(), "cpu");
  EXPECT_EQ(CreateBackend("gpu").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateBackend("cuda:x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateBackend("cuda:99").status().code(),
            BuiltWithCuda() ? absl::StatusCode::kNotFound : absl::StatusCode::kUnimplemented);
}

TEST_F(CudaBackendTest, UploadCastCopyAndToHostRoundTrip) {
  for (int64_t count : {int64_t{5}, int64_t{3000}, int64_t{100000}}) {  // parameter path and memcpy path
    const Tensor host = Random({count}, 1);
    EXPECT_EQ(Fetch(gpu_->Upload(host, DType::kF32)), ToFloatVector(host));
    const Tensor as_bf16 = gpu_->Upload(host, DType::kBF16);
    EXPECT_EQ(as_bf16.dtype(), DType::kBF16);
    EXPECT_EQ(Fetch(as_bf16), ToFloatVector(ConvertHost(host, DType::kBF16)));
    EXPECT_EQ(Fetch(gpu_->Cast(gpu_->Upload(host, DType::kF32), DType::kF16)),
              ToFloatVector(ConvertHost(host, DType::kF16)));
  }
  // CopyInto a Rows() view, converting F32 -> BF16.
  const Tensor rows = Random({3, 40}, 2);
  Tensor destination = gpu_->Upload(Tensor::Host({5, 40}, DType::kF32), DType::kBF16);
  gpu_->CopyInto(destination.Rows(1, 3), gpu_->Upload(rows, DType::kF32));
  const std::vector<float> copied = Fetch(destination);
  const std::vector<float> expected = ToFloatVector(ConvertHost(rows, DType::kBF16));
  for (int i = 0; i < 40; ++i) EXPECT_EQ(copied[i], 0.0f);
  for (int i = 0; i < 120; ++i) EXPECT_EQ(copied[40 + i], expected[i]);
  // I32 tensors (sparse layouts) upload unchanged.
  Tensor indices = Tensor::Host({4}, DType::kI32);
  for (int i = 0; i < 4; ++i) indices.data<int32_t>()[i] = 1000 * i - 7;
  const Tensor back = gpu_->ToHost(gpu_->Upload(indices, DType::kI32));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(back.data<int32_t>()[i], 1000 * i - 7);
}

TEST_F(CudaBackendTest, LinearBf16MatchesCpu) {
  struct Case {
    int64_t rows, inputs, outputs;
  };
  for (const Case& shape : {Case{77, 96, 136}, Case{300, 1536, 512}, Case{1, 256, 64}, Case{5, 7, 3}}) {
    const Tensor x = Random({shape.rows, shape.inputs}, 3), weight = Random({shape.outputs, shape.inputs}, 4, 0.05f);
    const Tensor bias = Random({shape.outputs}, 5);
    const Tensor gpu_weight = gpu_->Upload(weight, DType::kBF16);
    const Tensor gpu_x = gpu_->Upload(x, DType::kF32);  // F32 input: cast to bf16 inside Linear
    const Tensor gpu_bias = gpu_->Upload(bias, DType::kF32);
    const Tensor cpu_x = RoundedThrough(x, DType::kBF16), cpu_weight = RoundedThrough(weight, DType::kBF16);
    for (Activation activation : {Activation::kNone, Activation::kGeluTanh, Activation::kSilu}) {
      for (bool with_bias : {true, false}) {
        const Tensor gpu_y = gpu_->Linear(gpu_x, gpu_weight, with_bias ? &gpu_bias : nullptr, activation);
        EXPECT_EQ(gpu_y.dtype(), DType::kBF16);
        const Tensor cpu_y = cpu_->Linear(cpu_x, cpu_weight, with_bias ? &bias : nullptr, activation);
        EXPECT_LT(Compare(cpu_y, gpu_y), 5e-3) << shape.rows << "x" << shape.inputs << "x" << shape.outputs
                                               << " activation " << static_cast<int>(activation) << " bias "
                                               << with_bias;
      }
    }
  }
}

TEST_F(CudaBackendTest, LinearF32IsTrueFp32WithTanhGelu) {
  // TF32 (10-bit mantissa) would give ~1e-4; an erf GELU epilogue would differ by ~1e-4 as well.
  const Tensor x = Random({129, 300}, 6), weight = Random({200, 300}, 7, 0.1f), bias = Random({200}, 8);
  const Tensor gpu_weight = gpu_->Upload(weight, DType::kF32), gpu_x = gpu_->Upload(x, DType::kF32);
  const Tensor gpu_bias = gpu_->Upload(bias, DType::kF32);
  for (Activation activation : {Activation::kNone, Activation::kGeluTanh, Activation::kSilu}) {
    const Tensor gpu_y = gpu_->Linear(gpu_x, gpu_weight, &gpu_bias, activation);
    EXPECT_EQ(gpu_y.dtype(), DType::kF32);
    EXPECT_LT(Compare(cpu_->Linear(x, weight, &bias, activation), gpu_y), 2e-6) << static_cast<int>(activation);
  }
}

// Head widths the tiled kernel does not cover (the VAE's single-head 384-channel attention, the tiny
// VAE's 32) take the plain kernel; the result must still match the CPU backend.
TEST_F(CudaBackendTest, AttentionOfOtherHeadWidthsMatchesCpu) {
  for (int64_t width : {32, 384}) {
    const Tensor q = Random({300, 1, width}, 40), k = Random({300, 1, width}, 41), v = Random({300, 1, width}, 42);
    const float scale = 1.0f / std::sqrt(static_cast<float>(width));
    const Tensor expected = cpu_->Attention(q, k, v, scale, nullptr);
    const Tensor actual = gpu_->Attention(gpu_->Upload(q, DType::kF32), gpu_->Upload(k, DType::kF32),
                                          gpu_->Upload(v, DType::kF32), scale, nullptr);
    EXPECT_LT(Compare(expected, actual), 1e-5) << "head width " << width;
  }
}

TEST_F(CudaBackendTest, ElementwiseOpsMatchCpu) {
  const Tensor x = Random({37, 64}, 9, 2.0f);
  for (Activation activation : {Activation::kGeluTanh, Activation::kSilu}) {
    EXPECT_LT(Compare(cpu_->Activate(x, activation), gpu_->Activate(gpu_->Upload(x, DType::kF32), activation)), 1e-6);
  }
  // Combine: ten terms (more than one kernel's worth), mixed dtypes.
  std::vector<Tensor> host_terms, gpu_terms;
  for (int i = 0; i < 10; ++i) {
    host_terms.push_back(RoundedThrough(Random({37, 64}, 10 + i), i % 2 == 0 ? DType::kF32 : DType::kBF16));
    gpu_terms.push_back(gpu_->Upload(host_terms.back(), i % 2 == 0 ? DType::kF32 : DType::kBF16));
  }
  std::vector<Term> cpu_combination, gpu_combination;
  for (int i = 0; i < 10; ++i) {
    cpu_combination.push_back({0.3 * i - 1.1, &host_terms[i]});
    gpu_combination.push_back({0.3 * i - 1.1, &gpu_terms[i]});
  }
  EXPECT_LT(Compare(cpu_->Combine(cpu_combination), gpu_->Combine(gpu_combination)), 1e-6);

  // AddGated with an F32 gate and a bf16 update, and without a gate.
  const Tensor residual = Random({37, 64}, 30), update = RoundedThrough(Random({37, 64}, 31), DType::kBF16);
  const Tensor gate = Random({64}, 32);
  Tensor cpu_x = ConvertHost(residual, DType::kF32);
  Tensor gpu_x = gpu_->Upload(residual, DType::kF32);
  const Tensor gpu_update = gpu_->Upload(update, DType::kBF16), gpu_gate = gpu_->Upload(gate, DType::kF32);
  cpu_->AddGated(cpu_x, update, &gate);
  gpu_->AddGated(gpu_x, gpu_update, &gpu_gate);
  cpu_->AddGated(cpu_x, update, nullptr);
  gpu_->AddGated(gpu_x, gpu_update, nullptr);
  EXPECT_LT(Compare(cpu_x, gpu_x), 1e-6);
}

TEST_F(CudaBackendTest, NormsMatchCpu) {
  for (int64_t width : {int64_t{64}, int64_t{1536}, int64_t{1000}, int64_t{33}}) {  // 33: the scalar kernels
    const Tensor x = Random({41, width}, 40, 3.0f);
    // A large common offset: two-pass statistics must not cancel.
    Tensor shifted = ConvertHost(x, DType::kF32);
    for (int64_t i = 0; i < shifted.numel(); ++i) shifted.data<float>()[i] += 50.0f;
    NormParams cpu_modulation, gpu_modulation;
    const Tensor scale = Random({width}, 41, 0.5f), shift = Random({width}, 42);
    cpu_modulation.scale = scale;
    cpu_modulation.shift = shift;
    gpu_modulation.scale = gpu_->Upload(scale, DType::kF32);
    gpu_modulation.shift = gpu_->Upload(shift, DType::kF32);
    const Tensor gpu_shifted = gpu_->Upload(shifted, DType::kF32);
    EXPECT_LT(Compare(cpu_->LayerNorm(shifted, cpu_modulation, DType::kF32),
                      gpu_->LayerNorm(gpu_shifted, gpu_modulation, DType::kF32)),
              1e-5);
    const Tensor gpu_bf16_out = gpu_->LayerNorm(gpu_shifted, gpu_modulation, DType::kBF16);
    EXPECT_EQ(gpu_bf16_out.dtype(), DType::kBF16);
    EXPECT_LT(Compare(cpu_->LayerNorm(shifted, cpu_modulation, DType::kF32), gpu_bf16_out), 5e-3);

    NormParams cpu_affine, gpu_affine;
    const Tensor weight = Random({width}, 43), bias = Random({width}, 44);
    cpu_affine.weight = weight;
    cpu_affine.bias = bias;
    gpu_affine.weight = gpu_->Upload(weight, DType::kF32);
    gpu_affine.bias = gpu_->Upload(bias, DType::kF32);
    EXPECT_LT(Compare(cpu_->LayerNorm(x, cpu_affine, DType::kF32),
                      gpu_->LayerNorm(gpu_->Upload(x, DType::kF32), gpu_affine, DType::kF32)),
              1e-5);

    const Tensor x16 = RoundedThrough(x, DType::kBF16);
    const Tensor rms_weight = Random({width}, 45);
    const Tensor gpu_rms = gpu_->RmsNorm(gpu_->Upload(x16, DType::kBF16), gpu_->Upload(rms_weight, DType::kF32), 1e-6f);
    EXPECT_EQ(gpu_rms.dtype(), DType::kBF16);
    EXPECT_LT(Compare(cpu_->RmsNorm(x16, rms_weight, 1e-6f), gpu_rms), 5e-3);
    EXPECT_LT(Compare(cpu_->RmsNorm(x, rms_weight, 1e-6f),
                      gpu_->RmsNorm(gpu_->Upload(x, DType::kF32), gpu_->Upload(rms_weight, DType::kF32), 1e-6f)),
              1e-5);
  }
}

TEST_F(CudaBackendTest, RopeMatchesCpu) {
  const int64_t tokens = 19, heads = 3, head_dim = 128;
  const Tensor x = Random({tokens, heads, head_dim}, 50);
  Tensor cos = Tensor::Host({tokens, head_dim / 2}, DType::kF32), sin = Tensor::Host({tokens, head_dim / 2}, DType::kF32);
  for (int64_t i = 0; i < cos.numel(); ++i) {
    cos.data<float>()[i] = std::cos(0.37 * i);
    sin.data<float>()[i] = std::sin(0.37 * i);
  }
  Tensor cpu_x = ConvertHost(x, DType::kF32);
  cpu_->ApplyRope(cpu_x, cos, sin);
  const Tensor gpu_cos = gpu_->Upload(cos, DType::kF32), gpu_sin = gpu_->Upload(sin, DType::kF32);
  Tensor gpu_x = gpu_->Upload(x, DType::kF32);
  gpu_->ApplyRope(gpu_x, gpu_cos, gpu_sin);
  EXPECT_LT(Compare(cpu_x, gpu_x), 1e-6);
  Tensor gpu_x16 = gpu_->Upload(x, DType::kBF16);
  gpu_->ApplyRope(gpu_x16, gpu_cos, gpu_sin);
  Tensor cpu_x16 = RoundedThrough(x, DType::kBF16);
  cpu_->ApplyRope(cpu_x16, cos, sin);
  EXPECT_LT(Compare(cpu_x16, gpu_x16), 5e-3);
}

TEST_F(CudaBackendTest, PatchifyAndUnpatchifyMatchCpuExactly) {
  const Tensor latent = Random({16, 3, 6, 10}, 60);
  const Tensor gpu_tokens = gpu_->Patchify(gpu_->Upload(latent, DType::kF32), 1, 2, 2);
  const Tensor cpu_tokens = cpu_->Patchify(latent, 1, 2, 2);
  EXPECT_EQ(Fetch(gpu_tokens), ToFloatVector(cpu_tokens));
  const Tensor head = Random({3 * 3 * 5, 64}, 61);
  EXPECT_EQ(Fetch(gpu_->Unpatchify(gpu_->Upload(head, DType::kF32), 16, 3, 3, 5, 1, 2, 2)),
            ToFloatVector(cpu_->Unpatchify(head, 16, 3, 3, 5, 1, 2, 2)));
}

// Conv3d in double, from the contract in kernels/backend.h.
std::vector<double> NaiveConv3d(const Tensor& x, const Tensor& weight, const Tensor* bias, int pad_front, int pad_back,
                                int pad_height, int pad_width) {
  const int64_t frames = x.dim(0), cin = x.dim(1), height = x.dim(2), width = x.dim(3);
  const int64_t cout = weight.dim(0), kt = weight.dim(2), kh = weight.dim(3), kw = weight.dim(4);
  const int64_t out_t = frames + pad_front + pad_back - kt + 1, out_h = height + 2 * pad_height - kh + 1,
                out_w = width + 2 * pad_width - kw + 1;
  const float* xs = x.data<float>();
  const float* ws = weight.data<float>();
  std::vector<double> y(static_cast<size_t>(out_t * cout * out_h * out_w));
  for (int64_t t = 0; t < out_t; ++t)
    for (int64_t o = 0; o < cout; ++o)
      for (int64_t i = 0; i < out_h; ++i)
        for (int64_t j = 0; j < out_w; ++j) {
          double sum = bias != nullptr ? bias->data<float>()[o] : 0.0;
          for (int64_t c = 0; c < cin; ++c)
            for (int64_t a = 0; a < kt; ++a) {
              const int64_t f = t + a - pad_front;
              if (f < 0 || f >= frames) continue;
              for (int64_t p = 0; p < kh; ++p) {
                const int64_t r = i + p - pad_height;
                if (r < 0 || r >= height) continue;
                for (int64_t q = 0; q < kw; ++q) {
                  const int64_t col = j + q - pad_width;
                  if (col < 0 || col >= width) continue;
                  sum += double{ws[(((o * cin + c) * kt + a) * kh + p) * kw + q]} *
                         xs[((f * cin + c) * height + r) * width + col];
                }
              }
            }
          y[static_cast<size_t>(((t * cout + o) * out_h + i) * out_w + j)] = sum;
        }
  return y;
}

// Every Conv3d precision (CudaBackendOptions::conv_precision) against the fp64 loop, at VAE-like channel
// counts. Bounds: fp32 is a true fp32 product; TF32 rounds both operands to 10 explicit mantissa bits
// (relative error per product ≈ 2^-11·√(2/3) RMS ≈ 4e-4) and bf16 to 7 bits (≈ 1.6e-3); bounds are 2.5×.
TEST_F(CudaBackendTest, Conv3dPrecisionsMatchFloat64Reference) {
  const Tensor x = Random({5, 64, 12, 20}, 74);
  const Tensor weight = Random({48, 64, 3, 3, 3}, 75, 0.05f), bias = Random({48}, 76);
  const std::vector<double> causal = NaiveConv3d(x, weight, &bias, 2, 0, 1, 1);
  const std::vector<double> asymmetric = NaiveConv3d(x, weight, nullptr, 0, 1, 0, 2);
  // The im2col path at every precision, and cuDNN (one 2D convolution per temporal tap) at tf32 and fp32.
  struct Case {
    const char* algorithm;
    const char* precision;
    double bound;
  };
  for (const Case& test_case : {Case{"im2col", "fp32", 1e-5}, Case{"im2col", "tf32", 1e-3}, Case{"im2col", "bf16", 4e-3},
                                Case{"cudnn", "fp32", 1e-5}, Case{"cudnn", "tf32", 1e-3}}) {
    const std::string precision = std::string(test_case.algorithm) + " " + test_case.precision;
    const double bound = test_case.bound;
    CudaBackendOptions options;
    options.conv_precision = test_case.precision;
    options.conv_algorithm = test_case.algorithm;
    absl::StatusOr<std::unique_ptr<Backend>> made = CreateCudaBackend(0, options);
    ASSERT_TRUE(made.ok()) << made.status();
    Backend& gpu = **made;
    const Tensor gpu_x = gpu.Upload(x, DType::kF32), gpu_weight = gpu.Upload(weight, DType::kF32);
    const Tensor gpu_bias = gpu.Upload(bias, DType::kF32);
    EXPECT_LT(RelativeL2(causal, Fetch(gpu.Conv3d(gpu_x, gpu_weight, &gpu_bias, 2, 0, 1, 1), &gpu)), bound) << precision;
    EXPECT_LT(RelativeL2(asymmetric, Fetch(gpu.Conv3d(gpu_x, gpu_weight, nullptr, 0, 1, 0, 2), &gpu)), bound)
        << precision;
  }
}

// The tiled attention for head widths without a flash kernel at the size that used to abort: a 2048×2048
// one-frame request's 256×256 latent gives 65,536 keys of width 384 (the old path built a [L, L] bias).
// A few query rows against fp64; the rest of the rows go through the same tiles.
TEST_F(CudaBackendTest, AttentionOver65536KeysOfWidth384MatchesFloat64Reference) {
  constexpr int64_t kKeys = 65536, kWidth = 384;
  const Tensor q = Random({kKeys, 1, kWidth}, 77), k = Random({kKeys, 1, kWidth}, 78), v = Random({kKeys, 1, kWidth}, 79);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(kWidth)));
  const std::vector<float> out = Fetch(gpu_->Attention(gpu_->Upload(q, DType::kF32), gpu_->Upload(k, DType::kF32),
                                                       gpu_->Upload(v, DType::kF32), scale, nullptr));
  ASSERT_EQ(out.size(), static_cast<size_t>(kKeys * kWidth));
  for (int64_t row : {int64_t{0}, int64_t{1023}, int64_t{40000}, kKeys - 1}) {
    Tensor one = Tensor::Host({1, 1, kWidth}, DType::kF32);
    std::copy_n(q.data<float>() + row * kWidth, kWidth, one.data<float>());
    const std::vector<double> expected = ToDoubles(cpu_->Attention(one, k, v, scale, nullptr));
    const std::vector<float> actual(out.begin() + row * kWidth, out.begin() + (row + 1) * kWidth);
    EXPECT_LT(RelativeL2(expected, actual), 1e-4) << "query row " << row;
  }
}

TEST_F(CudaBackendTest, VideoVaeOpsMatchCpu) {
  const Tensor x = Random({4, 6, 9, 11}, 70);
  const Tensor weight = Random({5, 6, 3, 3, 3}, 71, 0.2f), bias = Random({5}, 72);
  const Tensor gpu_x = gpu_->Upload(x, DType::kF32), gpu_weight = gpu_->Upload(weight, DType::kF32);
  const Tensor gpu_bias = gpu_->Upload(bias, DType::kF32);
  // Causal 3x3x3, a 1x3x3 per-frame conv, and asymmetric temporal padding, with the fp32 product (the
  // default bf16 product's accuracy is bounded in Conv3dPrecisionsMatchFloat64Reference).
  CudaBackendOptions fp32_options;
  fp32_options.conv_precision = "fp32";
  absl::StatusOr<std::unique_ptr<Backend>> fp32_made = CreateCudaBackend(0, fp32_options);
  ASSERT_TRUE(fp32_made.ok()) << fp32_made.status();
  Backend& fp32 = **fp32_made;
  const Tensor fp32_x = fp32.Upload(x, DType::kF32), fp32_weight = fp32.Upload(weight, DType::kF32);
  const Tensor fp32_bias = fp32.Upload(bias, DType::kF32);
  EXPECT_LT(RelativeL2(ToDoubles(cpu_->Conv3d(x, weight, &bias, 2, 0, 1, 1)),
                       Fetch(fp32.Conv3d(fp32_x, fp32_weight, &fp32_bias, 2, 0, 1, 1), &fp32)),
            1e-5);
  EXPECT_LT(RelativeL2(ToDoubles(cpu_->Conv3d(x, weight, nullptr, 0, 1, 0, 2)),
                       Fetch(fp32.Conv3d(fp32_x, fp32_weight, nullptr, 0, 1, 0, 2), &fp32)),
            1e-5);
  const Tensor gamma = Random({6}, 73);
  for (Activation activation : {Activation::kNone, Activation::kSilu}) {
    EXPECT_LT(Compare(cpu_->ChannelRmsNorm(x, gamma, activation),
                      gpu_->ChannelRmsNorm(gpu_x, gpu_->Upload(gamma, DType::kF32), activation)),
              1e-5);
  }
  EXPECT_EQ(Fetch(gpu_->UpsampleNearest2x(gpu_x)), ToFloatVector(cpu_->UpsampleNearest2x(x)));
  EXPECT_EQ(Fetch(gpu_->SwapAxes(gpu_x, 2, 3, 4, 99)), ToFloatVector(cpu_->SwapAxes(x, 2, 3, 4, 99)));
  const Tensor x16 = ConvertHost(x, DType::kBF16);
  EXPECT_EQ(Fetch(gpu_->SwapAxes(gpu_->Upload(x16, DType::kBF16), 1, 24, 99, 1)),
            ToFloatVector(cpu_->SwapAxes(x16, 1, 24, 99, 1)));
  Tensor with_nan = ConvertHost(x, DType::kF32);
  with_nan.data<float>()[5] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> clamped = Fetch(gpu_->Clamp(gpu_->Upload(with_nan, DType::kF32), -0.5f, 0.75f));
  EXPECT_TRUE(std::isnan(clamped[5]));
  const std::vector<float> expected = ToFloatVector(cpu_->Clamp(with_nan, -0.5f, 0.75f));
  for (size_t i = 0; i < clamped.size(); ++i) {
    if (i != 5) {
      EXPECT_EQ(clamped[i], expected[i]) << i;
    }
  }
}

TEST_F(CudaBackendTest, TextEncoderOpsMatchCpu) {
  // GatherRows: bf16 table to F32 (exact) and F32 table to BF16 (rounded like Cast).
  const Tensor table = Random({50, 24}, 100);
  Tensor ids = Tensor::Host({7}, DType::kI32);
  for (int i = 0; i < 7; ++i) ids.data<int32_t>()[i] = (i * 13 + 5) % 50;
  const Tensor gpu_ids = gpu_->Upload(ids, DType::kI32);
  const Tensor table16 = ConvertHost(table, DType::kBF16);
  EXPECT_EQ(Fetch(gpu_->GatherRows(gpu_->Upload(table16, DType::kBF16), gpu_ids, DType::kF32)),
            ToFloatVector(cpu_->GatherRows(table16, ids, DType::kF32)));
  EXPECT_EQ(Fetch(gpu_->GatherRows(gpu_->Upload(table, DType::kF32), gpu_ids, DType::kBF16)),
            ToFloatVector(cpu_->GatherRows(table, ids, DType::kBF16)));

  // AttentionWithBias: masked keys at the lowest float, one row fully −inf (must give zeros).
  const int64_t queries = 9, keys = 13, heads = 3, dim = 64;
  const Tensor q = Random({queries, heads, dim}, 101), k = Random({keys, heads, dim}, 102);
  const Tensor v = Random({keys, heads, dim}, 103);
  Tensor bias = Random({heads, queries, keys}, 104);
  for (int64_t j = 10; j < keys; ++j) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < queries; ++i) bias.data<float>()[(h * queries + i) * keys + j] = -3.4028235e38f;
    }
  }
  for (int64_t j = 0; j < keys; ++j) bias.data<float>()[(1 * queries + 4) * keys + j] = -INFINITY;
  const Tensor gpu_out = gpu_->AttentionWithBias(gpu_->Upload(q, DType::kF32), gpu_->Upload(k, DType::kF32),
                                                 gpu_->Upload(v, DType::kF32), gpu_->Upload(bias, DType::kF32), 1.0f);
  const Tensor cpu_out = cpu_->AttentionWithBias(q, k, v, bias, 1.0f);
  EXPECT_LT(Compare(cpu_out, gpu_out), 1e-5);
  const std::vector<float> values = Fetch(gpu_out);
  for (int64_t c = 0; c < dim; ++c) EXPECT_EQ(values[(4 * heads + 1) * dim + c], 0.0f);

  const Tensor a = Random({33, 17}, 105), b = RoundedThrough(Random({33, 17}, 106), DType::kBF16);
  const Tensor gpu_product = gpu_->Multiply(gpu_->Upload(a, DType::kF32), gpu_->Upload(b, DType::kBF16));
  EXPECT_EQ(gpu_product.dtype(), DType::kF32);
  EXPECT_LT(Compare(cpu_->Multiply(a, b), gpu_product), 1e-7);
}

// float64 attention over bf16-rounded inputs; `visible(h, query, key)` says which keys a query sees.
template <typename Visible>
std::vector<double> ReferenceAttention(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                       Visible visible) {
  const int64_t queries = q.dim(0), keys = k.dim(0), heads = q.dim(1), dim = q.dim(2);
  const float* qd = q.data<float>();
  const float* kd = k.data<float>();
  const float* vd = v.data<float>();
  std::vector<double> out(static_cast<size_t>(queries * heads * dim), 0.0);
  std::vector<double> scores(static_cast<size_t>(keys));
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < queries; ++i) {
      double maximum = -INFINITY;
      for (int64_t j = 0; j < keys; ++j) {
        if (!visible(h, i, j)) {
          scores[j] = -INFINITY;
          continue;
        }
        double dot = 0.0;
        for (int64_t c = 0; c < dim; ++c) dot += double{qd[(i * heads + h) * dim + c]} * kd[(j * heads + h) * dim + c];
        scores[j] = dot * scale;
        maximum = std::max(maximum, scores[j]);
      }
      if (maximum == -INFINITY) continue;  // no visible key: zeros
      double sum = 0.0;
      for (int64_t j = 0; j < keys; ++j) {
        scores[j] = scores[j] == -INFINITY ? 0.0 : std::exp(scores[j] - maximum);
        sum += scores[j];
      }
      double* row = out.data() + (i * heads + h) * dim;
      for (int64_t j = 0; j < keys; ++j) {
        if (scores[j] == 0.0) continue;
        const double weight = scores[j] / sum;
        for (int64_t c = 0; c < dim; ++c) row[c] += weight * vd[(j * heads + h) * dim + c];
      }
    }
  }
  return out;
}

// Every attention implementation: the mma.sync kernel, the Hopper variants (three-stage, ping-pong), and
// "auto" (the default two-stage Hopper kernel where it applies).
constexpr const char* kAttentionKernels[] = {"mma", "wgmma3", "pingpong", "auto"};

// A backend on device 0 whose attention runs `kernel` (kernels/cuda/attention_kernel.cuh).
std::unique_ptr<Backend> BackendWithAttentionKernel(const char* kernel) {
  CudaBackendOptions options;
  options.attention_kernel = kernel;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(0, options);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

// Option values are checked before any device is touched, so this runs (and must pass) without a GPU too.
TEST(CudaBackendOptionsTest, UnknownValuesAreRejectedByName) {
  CudaBackendOptions options;
  options.attention_kernel = "fastest";
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(0, options);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(backend.status().message().find("ZOETROPE_ATTENTION_KERNEL"), std::string::npos) << backend.status();
  options = CudaBackendOptions();
  options.linear_bias = "fp8";
  backend = CreateCudaBackend(0, options);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(backend.status().message().find("ZOETROPE_LINEAR_BIAS"), std::string::npos) << backend.status();
  options = CudaBackendOptions();
  options.conv_precision = "fp16";
  backend = CreateCudaBackend(0, options);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(backend.status().message().find("ZOETROPE_CONV_PRECISION"), std::string::npos) << backend.status();
  options = CudaBackendOptions();
  options.conv_algorithm = "winograd";
  backend = CreateCudaBackend(0, options);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(backend.status().message().find("ZOETROPE_CONV_ALGORITHM"), std::string::npos) << backend.status();
  options = CudaBackendOptions();
  options.conv_algorithm = "cudnn";  // with the default bf16 precision
  backend = CreateCudaBackend(0, options);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument);
}

struct AttentionInputs {
  Tensor q, k, v;           // host F32, bf16-rounded
  Tensor gpu_q, gpu_k, gpu_v;  // device bf16
};

AttentionInputs MakeAttentionInputs(Backend& gpu, int64_t queries, int64_t keys, int64_t heads, int64_t dim,
                                    uint32_t seed) {
  AttentionInputs inputs;
  // q scaled up so the softmax is peaked (exercises the running maximum), not near-uniform.
  inputs.q = RoundedThrough(Random({queries, heads, dim}, seed, 2.0f), DType::kBF16);
  inputs.k = RoundedThrough(Random({keys, heads, dim}, seed + 1), DType::kBF16);
  inputs.v = RoundedThrough(Random({keys, heads, dim}, seed + 2), DType::kBF16);
  inputs.gpu_q = gpu.Upload(inputs.q, DType::kBF16);
  inputs.gpu_k = gpu.Upload(inputs.k, DType::kBF16);
  inputs.gpu_v = gpu.Upload(inputs.v, DType::kBF16);
  return inputs;
}

TEST_F(CudaBackendTest, DenseAttentionMatchesFloat64Reference) {
  struct Case {
    int64_t queries, keys, heads, dim;
  };
  // On the 128/64 block grid, off it, shorter than a block, and the cross-attention shape (512 keys).
  for (const Case& shape : {Case{256, 256, 2, 128}, Case{200, 333, 3, 128}, Case{77, 50, 2, 64}, Case{1000, 512, 2, 128},
                            Case{130, 1025, 1, 64}, Case{1, 7, 2, 128}, Case{300, 1500, 2, 128}}) {
    const AttentionInputs inputs = MakeAttentionInputs(*gpu_, shape.queries, shape.keys, shape.heads, shape.dim, 80);
    const double scale = 1.0 / std::sqrt(static_cast<double>(shape.dim));
    const std::vector<double> expected =
        ReferenceAttention(inputs.q, inputs.k, inputs.v, scale, [](int64_t, int64_t, int64_t) { return true; });
    gpu_->Synchronize();  // the inputs were uploaded on gpu_'s stream; each kernel runs on its own backend's
    for (const char* kernel : kAttentionKernels) {
      std::unique_ptr<Backend> backend = BackendWithAttentionKernel(kernel);
      ASSERT_NE(backend, nullptr);
      PoisonCache(static_cast<size_t>(shape.queries * shape.heads * shape.dim) * 2, 2, backend.get());
      const Tensor out =
          backend->Attention(inputs.gpu_q, inputs.gpu_k, inputs.gpu_v, static_cast<float>(scale), nullptr);
      EXPECT_EQ(out.dtype(), DType::kBF16);
      EXPECT_EQ(out.shape(), inputs.q.shape());
      const double error = RelativeL2(expected, Fetch(out, backend.get()));
      EXPECT_LT(error, 5e-3) << kernel << " " << shape.queries << "x" << shape.keys << " heads " << shape.heads
                             << " d " << shape.dim;
      std::printf("attention %s %lldx%lld heads %lld d %lld: relative L2 %.2e\n", kernel,
                  static_cast<long long>(shape.queries), static_cast<long long>(shape.keys),
                  static_cast<long long>(shape.heads), static_cast<long long>(shape.dim), error);
    }
  }
}

TEST_F(CudaBackendTest, BlockSparseAttentionMatchesFloat64Reference) {
  const int64_t queries = 700, keys = 900, heads = 3, dim = 128;
  const AttentionInputs inputs = MakeAttentionInputs(*gpu_, queries, keys, heads, dim, 90);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  std::mt19937 generator(91);
  for (int key_block : {64, 128}) {
    for (int64_t groups : {int64_t{1}, heads}) {
      const int64_t query_blocks = (queries + 127) / 128, key_blocks = (keys + key_block - 1) / key_block;
      Tensor offsets = Tensor::Host({groups, query_blocks + 1}, DType::kI32);
      std::vector<std::vector<int32_t>> lists(static_cast<size_t>(groups * query_blocks));
      for (int64_t g = 0; g < groups; ++g) {
        for (int64_t r = 0; r < query_blocks; ++r) {
          auto& list = lists[g * query_blocks + r];
          // Query block 1 visits nothing (its rows must come out as zeros); others a random subset that
          // always includes the partial last key block.
          if (r != 1) {
            for (int64_t b = 0; b < key_blocks; ++b) {
              if (b == key_blocks - 1 || generator() % 3 == 0) list.push_back(static_cast<int32_t>(b));
            }
            std::shuffle(list.begin(), list.end(), generator);  // the kernel must not rely on order
          }
        }
      }
      for (int64_t g = 0; g < groups; ++g) {
        int32_t entry = 0;
        for (int64_t r = 0; r < query_blocks; ++r) {
          offsets.data<int32_t>()[g * (query_blocks + 1) + r] = entry;
          entry += static_cast<int32_t>(lists[g * query_blocks + r].size());
        }
        offsets.data<int32_t>()[g * (query_blocks + 1) + query_blocks] = entry;
      }
      // column_indices is [groups, max_entries]: each group's rows back to back.
      int64_t max_entries = 1;
      for (int64_t g = 0; g < groups; ++g) {
        max_entries = std::max<int64_t>(max_entries, offsets.data<int32_t>()[g * (query_blocks + 1) + query_blocks]);
      }
      Tensor packed = Tensor::Host({groups, max_entries}, DType::kI32);
      for (int64_t g = 0; g < groups; ++g) {
        int32_t entry = 0;
        for (int64_t r = 0; r < query_blocks; ++r) {
          for (int32_t b : lists[g * query_blocks + r]) packed.data<int32_t>()[g * max_entries + entry++] = b;
        }
      }
      BlockSparseLayout layout;
      layout.query_block = 128;
      layout.key_block = key_block;
      layout.row_offsets = gpu_->Upload(offsets, DType::kI32);
      layout.column_indices = gpu_->Upload(packed, DType::kI32);
      const auto visible = [&](int64_t h, int64_t i, int64_t j) {
        const auto& list = lists[(groups == 1 ? 0 : h) * query_blocks + i / 128];
        return std::find(list.begin(), list.end(), static_cast<int32_t>(j / key_block)) != list.end();
      };
      const std::vector<double> expected = ReferenceAttention(inputs.q, inputs.k, inputs.v, scale, visible);
      // The CPU backend agrees on the same layout (host copies of the CSR arrays).
      BlockSparseLayout host_layout = layout;
      host_layout.row_offsets = offsets;
      host_layout.column_indices = packed;
      const Tensor cpu_out = cpu_->Attention(inputs.q, inputs.k, inputs.v, static_cast<float>(scale), &host_layout);
      gpu_->Synchronize();  // inputs and layout were uploaded on gpu_'s stream
      for (const char* kernel : kAttentionKernels) {
        std::unique_ptr<Backend> backend = BackendWithAttentionKernel(kernel);
        ASSERT_NE(backend, nullptr);
        PoisonCache(static_cast<size_t>(queries * heads * dim) * 2, 2, backend.get());
        const Tensor out =
            backend->Attention(inputs.gpu_q, inputs.gpu_k, inputs.gpu_v, static_cast<float>(scale), &layout);
        const std::vector<float> actual = Fetch(out, backend.get());
        const double error = RelativeL2(expected, actual);
        EXPECT_LT(error, 5e-3) << kernel << " key block " << key_block << " groups " << groups;
        std::printf("sparse attention %s key block %d groups %lld: relative L2 %.2e\n", kernel, key_block,
                    static_cast<long long>(groups), error);
        // The empty query block is exactly zero.
        for (int64_t i = 128; i < 256; ++i) {
          for (int64_t c = 0; c < heads * dim; ++c) ASSERT_EQ(actual[i * heads * dim + c], 0.0f) << kernel << " " << i;
        }
        EXPECT_LT(RelativeL2(ToDoubles(cpu_out), actual), 5e-3) << kernel;
      }
    }
  }
}

// The Wan DiT, CPU vs CUDA, from the same random weights file; and the allocator on a second forward.
class CudaDitTest : public CudaBackendTest {
 protected:
  void SetUp() override {
    CudaBackendTest::SetUp();
    if (IsSkipped()) return;
    directory_ = std::filesystem::temp_directory_path() /
                 ("zoetrope_cuda_dit_test_" + std::to_string(::getpid()) + "_" +
                  ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(directory_);
  }
  void TearDown() override {
    if (!directory_.empty()) std::filesystem::remove_all(directory_);
  }

  // Velocity of one forward on both backends; returns the relative L2 of CUDA against CPU.
  double CompareForward(const std::string& config_name, int64_t layers, const Shape& latent_shape, int64_t text_tokens) {
    WanDitConfig config = *WanDitConfigByName(config_name);
    config.num_layers = layers;
    const std::string path = (directory_ / "model.safetensors").string();
    RandomWeightsOptions options;
    options.seed = 11;
    EXPECT_TRUE(WriteRandomWanDitWeights(config, options, path).ok());
    auto cpu_model = WanDit::Load(path, *cpu_);
    auto gpu_model = WanDit::Load(path, *gpu_);
    EXPECT_TRUE(cpu_model.ok()) << cpu_model.status();
    EXPECT_TRUE(gpu_model.ok()) << gpu_model.status();
    if (!cpu_model.ok() || !gpu_model.ok()) return INFINITY;
    const Tensor latent = Random(latent_shape, 12);
    const Tensor context = Random({text_tokens, config.text_dim}, 13);
    LocalDenseAttention attention;
    auto cpu_prompt = (*cpu_model)->EncodePrompt(context);
    auto gpu_prompt = (*gpu_model)->EncodePrompt(context);
    EXPECT_TRUE(cpu_prompt.ok() && gpu_prompt.ok());
    const Tensor cpu_velocity =
        (*cpu_model)->Forward(latent, (*cpu_model)->EmbedTimestep(700), *cpu_prompt, attention);
    const Tensor gpu_latent = gpu_->Upload(latent, DType::kF32);
    Tensor gpu_velocity = (*gpu_model)->Forward(gpu_latent, (*gpu_model)->EmbedTimestep(700), *gpu_prompt, attention);
    const std::vector<float> first = Fetch(gpu_velocity);
    const double error = RelativeL2(ToDoubles(cpu_velocity), first);
    gpu_velocity = Tensor();  // consumed, as the sampler consumes each step's velocity

    // Second forward (another timestep, as in the next denoising step): no cudaMalloc at all.
    const CudaMemoryStats before = CudaBackendMemoryStats(*gpu_);
    const Tensor again = (*gpu_model)->Forward(gpu_latent, (*gpu_model)->EmbedTimestep(650), *gpu_prompt, attention);
    gpu_->Synchronize();
    const CudaMemoryStats after = CudaBackendMemoryStats(*gpu_);
    EXPECT_EQ(after.device_allocations, before.device_allocations) << config_name;
    EXPECT_GT(after.cache_hits, before.cache_hits);
    EXPECT_NE(first, Fetch(again));  // the timestep matters, so the second pass really ran
    return error;
  }

  std::filesystem::path directory_;
};

TEST_F(CudaDitTest, TinyForwardMatchesCpu) {
  const double error = CompareForward("tiny", 2, {16, 3, 10, 14}, 5);
  // Measured 2.9e-3 on an H200 (bench/results/cuda_backend_test_h200.json): the bound is ~3.5x that.
  EXPECT_LT(error, 1e-2);
  RecordProperty("tiny_relative_l2", std::to_string(error));
  std::printf("tiny DiT CUDA vs CPU relative L2: %.3e\n", error);
}

TEST_F(CudaDitTest, TwoBlockSliceAt13BWidthMatchesCpu) {
  // 1536 wide, 12 heads of 128, FFN 8960, 512 text tokens; 105 video tokens (not a multiple of 128).
  const double error = CompareForward("wan2.1-t2v-1.3b", 2, {16, 3, 10, 14}, 20);
  // Measured 2.7e-3 on an H200 (bench/results/cuda_backend_test_h200.json): the bound is ~3.7x that.
  EXPECT_LT(error, 1e-2);
  RecordProperty("slice_13b_relative_l2", std::to_string(error));
  std::printf("2-block 1.3B-width DiT CUDA vs CPU relative L2: %.3e\n", error);
}

// A 4-step generation (UniPC, CFG 5) with the same seed, weights and prompt embeddings on both
// backends: the latents must agree to bf16 accuracy (the issue asks for the number; it is printed).
TEST_F(CudaDitTest, FourStepGenerationMatchesCpu) {
  const WanDitConfig config = *WanDitConfigByName("tiny");
  const std::string path = (directory_ / "model.safetensors").string();
  RandomWeightsOptions options;
  options.seed = 5;
  ASSERT_TRUE(WriteRandomWanDitWeights(config, options, path).ok());
  const Tensor positive_context = Random({9, config.text_dim}, 21);
  const Tensor negative_context = Random({4, config.text_dim}, 22);
  DenoiseOptions denoise;
  denoise.latent_shape = LatentShapeFor(128, 96, 17, config.in_dim);
  denoise.steps = 4;
  denoise.seed = 3;
  std::vector<std::vector<float>> latents;
  for (Backend* backend : {cpu_.get(), gpu_.get()}) {
    auto model = WanDit::Load(path, *backend);
    ASSERT_TRUE(model.ok()) << model.status();
    auto positive = (*model)->EncodePrompt(positive_context);
    auto negative = (*model)->EncodePrompt(negative_context);
    ASSERT_TRUE(positive.ok() && negative.ok());
    LocalDenseAttention attention;
    auto latent = Denoise(**model, attention, *positive, &*negative, denoise);
    ASSERT_TRUE(latent.ok()) << latent.status();
    latents.push_back(ToFloatVector(backend->ToHost(*latent)));
  }
  std::vector<double> expected(latents[0].begin(), latents[0].end());
  const double error = RelativeL2(expected, latents[1]);
  RecordProperty("generation_4_step_relative_l2", std::to_string(error));
  std::printf("4-step tiny generation, CUDA vs CPU latent relative L2: %.3e\n", error);
  // Measured 4.8e-3 on an H200 (bench/results/cuda_backend_test_h200.json): the bound is ~3x that.
  EXPECT_LT(error, 1.5e-2);
}

}  // namespace
}  // namespace zoetrope
