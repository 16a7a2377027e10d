// Schedules (spec/wan21.md §4.3) and samplers (§4.5 UniPC, §4.6 DPM++ 2M, Euler) on the CPU backend.
#include "worker/engine/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/numerics.h"
#include "worker/engine/flow_schedule.h"

namespace zoetrope {
namespace {

using test::RelativeL2;

// Whether `status` is InvalidArgument with `fragment` in its message.
::testing::AssertionResult IsInvalidArgumentWith(const absl::Status& status, const std::string& fragment) {
  if (status.code() != absl::StatusCode::kInvalidArgument) {
    return ::testing::AssertionFailure() << "expected InvalidArgument, got " << status;
  }
  if (std::string(status.message()).find(fragment) == std::string::npos) {
    return ::testing::AssertionFailure() << "message \"" << status.message() << "\" lacks \"" << fragment << "\"";
  }
  return ::testing::AssertionSuccess();
}

FlowSchedule MustSchedule(SamplerKind kind, int steps, double shift) {
  absl::StatusOr<FlowSchedule> schedule = MakeFlowSchedule(kind, steps, shift);
  EXPECT_TRUE(schedule.ok()) << schedule.status();
  return schedule.ok() ? *schedule : FlowSchedule{};
}

std::unique_ptr<Sampler> MustSampler(SamplerKind kind, int steps, double shift) {
  absl::StatusOr<std::unique_ptr<Sampler>> sampler = Sampler::Create(kind, steps, shift);
  EXPECT_TRUE(sampler.ok()) << sampler.status();
  return sampler.ok() ? *std::move(sampler) : nullptr;
}

std::vector<int64_t> Head(const std::vector<int64_t>& values, size_t count) {
  return {values.begin(), values.begin() + count};
}
std::vector<int64_t> Tail(const std::vector<int64_t>& values, size_t count) {
  return {values.end() - count, values.end()};
}

uint32_t Bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// ---- schedules ------------------------------------------------------------------------------------

TEST(FlowScheduleTest, UniPcShift5MatchesSpecTable) {
  const FlowSchedule schedule = MustSchedule(SamplerKind::kUniPC, 50, 5.0);
  const std::vector<int64_t> expected = {
      999, 995, 991, 987, 982, 978, 973, 968, 963, 957, 952, 946, 940, 934, 927, 920, 913, 906, 898, 890,
      882, 873, 863, 854, 843, 833, 821, 809, 796, 783, 768, 753, 737, 720, 701, 681, 660, 636, 611, 584,
      555, 522, 487, 448, 405, 356, 302, 241, 172, 92};
  EXPECT_EQ(schedule.timesteps, expected);
  ASSERT_EQ(schedule.sigmas.size(), 51u);

  // The rounded values printed in the spec.
  const std::vector<float> head = {0.9998f, 0.995732f, 0.99153f, 0.987187f, 0.982696f};
  for (size_t i = 0; i < head.size(); ++i) EXPECT_NEAR(schedule.sigmas[i], head[i], 1e-6) << i;
  const std::vector<float> tail = {0.356888f, 0.302801f, 0.24174f, 0.172265f, 0.092507f, 0.0f};
  for (size_t i = 0; i < tail.size(); ++i) EXPECT_NEAR(schedule.sigmas[45 + i], tail[i], 1e-6) << 45 + i;
  EXPECT_EQ(schedule.sigmas[50], 0.0f);

  // Bit-exact float32 values of numpy's float64 linspace + shift + astype(float32).
  EXPECT_EQ(Bits(schedule.sigmas[0]), 1065349858u);   // 0.9997998476028442
  EXPECT_EQ(Bits(schedule.sigmas[1]), 1065281617u);   // 0.9957323670387268
  EXPECT_EQ(Bits(schedule.sigmas[25]), 1062552350u);  // 0.8330553770065308
  EXPECT_EQ(Bits(schedule.sigmas[48]), 1043359302u);  // 0.17226514220237732
  EXPECT_EQ(Bits(schedule.sigmas[49]), 1035826236u);  // 0.09250685572624207
}

TEST(FlowScheduleTest, UniPcShift3And8MatchSpecEnds) {
  const FlowSchedule shift3 = MustSchedule(SamplerKind::kUniPC, 50, 3.0);
  EXPECT_EQ(Head(shift3.timesteps, 6), (std::vector<int64_t>{999, 992, 985, 978, 971, 963}));
  EXPECT_EQ(Tail(shift3.timesteps, 5), (std::vector<int64_t>{249, 206, 160, 111, 57}));

  const FlowSchedule shift8 = MustSchedule(SamplerKind::kUniPC, 50, 8.0);
  EXPECT_EQ(Head(shift8.timesteps, 6), (std::vector<int64_t>{999, 997, 994, 991, 989, 986}));
  EXPECT_EQ(Tail(shift8.timesteps, 5), (std::vector<int64_t>{470, 409, 337, 249, 140}));
}

TEST(FlowScheduleTest, DpmPlusPlusMatchesSpecTable) {
  const FlowSchedule schedule = MustSchedule(SamplerKind::kDpmPlusPlus2M, 50, 5.0);
  EXPECT_EQ(Head(schedule.timesteps, 17), (std::vector<int64_t>{1000, 995, 991, 987, 982, 978, 973, 968, 963, 957,
                                                                952, 946, 940, 934, 927, 921, 913}));
  EXPECT_EQ(Tail(schedule.timesteps, 6), (std::vector<int64_t>{405, 357, 303, 241, 172, 92}));
  ASSERT_EQ(schedule.sigmas.size(), 51u);
  EXPECT_EQ(schedule.sigmas[0], 1.0f);  // exactly 1: λ_0 = −∞
  EXPECT_NEAR(schedule.sigmas[1], 0.9959349632263184, 1e-7);
  EXPECT_NEAR(schedule.sigmas[49], 0.09259258955717087, 1e-7);
  EXPECT_EQ(schedule.sigmas[50], 0.0f);
}

TEST(FlowScheduleTest, EulerUsesTheUniPcSchedule) {
  const FlowSchedule unipc = MustSchedule(SamplerKind::kUniPC, 30, 8.0);
  const FlowSchedule euler = MustSchedule(SamplerKind::kEuler, 30, 8.0);
  EXPECT_EQ(unipc.timesteps, euler.timesteps);
  EXPECT_EQ(unipc.sigmas, euler.sigmas);
}

TEST(FlowScheduleTest, ShapeAndMonotonicity) {
  for (SamplerKind kind : {SamplerKind::kUniPC, SamplerKind::kDpmPlusPlus2M, SamplerKind::kEuler}) {
    for (int steps : {1, 2, 3, 7, 50, 200}) {
      for (double shift : {0.5, 1.0, 3.0, 5.0, 12.0}) {
        const FlowSchedule schedule = MustSchedule(kind, steps, shift);
        ASSERT_EQ(schedule.timesteps.size(), static_cast<size_t>(steps));
        ASSERT_EQ(schedule.sigmas.size(), static_cast<size_t>(steps + 1));
        EXPECT_EQ(schedule.sigmas.back(), 0.0f);
        for (int i = 0; i < steps; ++i) {
          EXPECT_GT(schedule.sigmas[i], schedule.sigmas[i + 1]);
          EXPECT_GE(schedule.timesteps[i], 0);
          EXPECT_LE(schedule.timesteps[i], 1000);
        }
      }
    }
  }
  // One step: straight from the first sigma to 0.
  const FlowSchedule unipc = MustSchedule(SamplerKind::kUniPC, 1, 5.0);
  EXPECT_EQ(unipc.timesteps, (std::vector<int64_t>{999}));
  const FlowSchedule dpm = MustSchedule(SamplerKind::kDpmPlusPlus2M, 1, 5.0);
  EXPECT_EQ(dpm.timesteps, (std::vector<int64_t>{1000}));
  EXPECT_EQ(dpm.sigmas, (std::vector<float>{1.0f, 0.0f}));
}

TEST(FlowScheduleTest, RejectsInvalidParameters) {
  for (int steps : {0, -1, kMaxSamplingSteps + 1}) {
    absl::StatusOr<FlowSchedule> schedule = MakeFlowSchedule(SamplerKind::kUniPC, steps, 5.0);
    ASSERT_FALSE(schedule.ok()) << steps;
    EXPECT_TRUE(IsInvalidArgumentWith(schedule.status(), "steps must be"));
  }
  for (double shift : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    absl::StatusOr<FlowSchedule> schedule = MakeFlowSchedule(SamplerKind::kDpmPlusPlus2M, 10, shift);
    ASSERT_FALSE(schedule.ok()) << shift;
    EXPECT_TRUE(IsInvalidArgumentWith(schedule.status(), "shift must be a finite number > 0"));
  }
  // A shift so small that the float32 sigmas after the first underflow to 0.
  absl::StatusOr<FlowSchedule> degenerate = MakeFlowSchedule(SamplerKind::kUniPC, 10, 1e-300);
  ASSERT_FALSE(degenerate.ok());
  EXPECT_TRUE(IsInvalidArgumentWith(degenerate.status(), "strictly decreasing"));

  absl::StatusOr<std::unique_ptr<Sampler>> sampler = Sampler::Create(SamplerKind::kEuler, 0, 5.0);
  ASSERT_FALSE(sampler.ok());
  EXPECT_TRUE(IsInvalidArgumentWith(sampler.status(), "steps must be"));
}

TEST(SamplerKindTest, ParsesAndNames) {
  EXPECT_EQ(*ParseSamplerKind("unipc"), SamplerKind::kUniPC);
  EXPECT_EQ(*ParseSamplerKind("dpm++"), SamplerKind::kDpmPlusPlus2M);
  EXPECT_EQ(*ParseSamplerKind("dpmpp"), SamplerKind::kDpmPlusPlus2M);
  EXPECT_EQ(*ParseSamplerKind("euler"), SamplerKind::kEuler);
  for (SamplerKind kind : {SamplerKind::kUniPC, SamplerKind::kDpmPlusPlus2M, SamplerKind::kEuler}) {
    EXPECT_EQ(*ParseSamplerKind(SamplerKindName(kind)), kind);
  }
  absl::StatusOr<SamplerKind> unknown = ParseSamplerKind("ddim");
  ASSERT_FALSE(unknown.ok());
  EXPECT_TRUE(IsInvalidArgumentWith(unknown.status(), "unknown sampler 'ddim'"));
}

// ---- samplers -------------------------------------------------------------------------------------

class SamplerTest : public ::testing::Test {
 protected:
  void SetUp() override { backend_ = CreateCpuBackend(1); }

  Tensor FromDoubles(const std::vector<double>& values) {
    std::vector<float> floats(values.begin(), values.end());
    return HostTensorFromFloats(floats, {static_cast<int64_t>(floats.size())});
  }
  std::vector<float> Read(const Tensor& tensor) { return ToFloatVector(backend_->ToHost(tensor)); }

  std::vector<double> RandomNormal(size_t count, uint32_t seed, double scale = 1.0) {
    std::mt19937 generator(seed);
    std::normal_distribution<double> normal(0.0, scale);
    std::vector<double> values(count);
    for (double& value : values) value = normal(generator);
    return values;
  }

  std::unique_ptr<Backend> backend_;
};

constexpr SamplerKind kAllKinds[] = {SamplerKind::kUniPC, SamplerKind::kDpmPlusPlus2M, SamplerKind::kEuler};

TEST_F(SamplerTest, ApplyGuidance) {
  const std::vector<double> cond = {1.0, -2.0, 0.5, 3.25};
  const std::vector<double> uncond = {0.5, 1.0, -0.25, 3.0};
  Tensor guided = ApplyGuidance(*backend_, FromDoubles(cond), FromDoubles(uncond), 5.0);
  EXPECT_EQ(guided.dtype(), DType::kF32);
  EXPECT_EQ(guided.shape(), (Shape{4}));
  const std::vector<float> values = Read(guided);
  for (size_t i = 0; i < cond.size(); ++i) EXPECT_NEAR(values[i], uncond[i] + 5.0 * (cond[i] - uncond[i]), 1e-6);
  // Guidance 1 is the conditional output, 0 the unconditional one, exactly.
  EXPECT_EQ(Read(ApplyGuidance(*backend_, FromDoubles(cond), FromDoubles(uncond), 1.0)),
            std::vector<float>(cond.begin(), cond.end()));
  EXPECT_EQ(Read(ApplyGuidance(*backend_, FromDoubles(cond), FromDoubles(uncond), 0.0)),
            std::vector<float>(uncond.begin(), uncond.end()));
}

// The last step (σ_N = 0) returns the x0 prediction m = x − σ_{N−1}·v bit for bit, for every sampler.
TEST_F(SamplerTest, LastStepReturnsX0PredictionExactly) {
  for (SamplerKind kind : kAllKinds) {
    for (int steps : {1, 2, 5}) {
      std::unique_ptr<Sampler> sampler = MustSampler(kind, steps, 5.0);
      ASSERT_NE(sampler, nullptr);
      Tensor sample = FromDoubles(RandomNormal(64, 1));
      Tensor velocity;
      for (int i = 0; i < steps; ++i) {
        velocity = FromDoubles(RandomNormal(64, 100 + i));
        if (i == steps - 1) {
          const std::vector<float> x = Read(sample);
          const std::vector<float> v = Read(velocity);
          const double sigma = sampler->schedule().sigmas[i];
          Tensor last = sampler->Step(*backend_, i, velocity, sample);
          const std::vector<float> result = Read(last);
          for (size_t j = 0; j < x.size(); ++j) {
            // Combine sums in double and rounds once, like this expression.
            const float expected = static_cast<float>(1.0 * x[j] + (-sigma) * v[j]);
            ASSERT_EQ(result[j], expected) << SamplerKindName(kind) << " steps " << steps << " element " << j;
          }
        } else {
          sample = sampler->Step(*backend_, i, velocity, sample);
        }
      }
    }
  }
}

// A velocity field with a known solution: v = ε − x0 everywhere. Its x0 prediction is exact on the path
// x_σ = (1−σ)·x0 + σ·ε, so every sampler must stay on that path and end at x0.
TEST_F(SamplerTest, ConstantVelocityRecoversX0) {
  const size_t count = 257;
  const std::vector<double> x0 = RandomNormal(count, 7, 0.8);
  const std::vector<double> noise = RandomNormal(count, 8);
  std::vector<double> velocity_values(count);
  for (size_t j = 0; j < count; ++j) velocity_values[j] = noise[j] - x0[j];
  const Tensor velocity = FromDoubles(velocity_values);

  struct Case {
    int steps;
    double shift;
  };
  // Shift 1e7 with 4 steps rounds UniPC's first sigma to exactly 1 (λ_0 = −∞, as in DPM++).
  const Case cases[] = {{1, 5.0}, {2, 5.0}, {3, 5.0}, {10, 5.0}, {50, 5.0}, {50, 1.0}, {4, 1e7}};
  for (SamplerKind kind : kAllKinds) {
    for (const Case& test_case : cases) {
      const int steps = test_case.steps;
      std::unique_ptr<Sampler> sampler = MustSampler(kind, steps, test_case.shift);
      ASSERT_NE(sampler, nullptr);
      if (test_case.shift == 1e7) {
        EXPECT_EQ(sampler->schedule().sigmas[0], 1.0f);
      }
      const std::vector<float>& sigmas = sampler->schedule().sigmas;
      std::vector<double> start(count);
      for (size_t j = 0; j < count; ++j) start[j] = (1.0 - sigmas[0]) * x0[j] + sigmas[0] * noise[j];
      Tensor sample = FromDoubles(start);
      for (int i = 0; i < steps; ++i) {
        sample = sampler->Step(*backend_, i, velocity, sample);
        ASSERT_EQ(sample.dtype(), DType::kF32);
        ASSERT_EQ(sample.shape(), (Shape{static_cast<int64_t>(count)}));
        const std::vector<float> values = Read(sample);
        const double sigma = sigmas[i + 1];
        for (size_t j = 0; j < count; ++j) {
          const double expected = (1.0 - sigma) * x0[j] + sigma * noise[j];
          // About one float32 rounding per step, accumulated (measured 1.8e-6 after 50 steps).
          ASSERT_NEAR(values[j], expected, 5e-6 * std::max(1.0, std::abs(expected)))
              << SamplerKindName(kind) << " steps " << steps << " shift " << test_case.shift << " after step " << i
              << " element " << j;
        }
      }
    }
  }
}

// Gaussian data x0 ~ N(μ, s²) per element: the exact velocity is v(x, σ) = (x − E[x0 | x_σ = x]) / σ and
// the probability-flow ODE maps x(σ) = (1−σ)μ + std(σ)·z, std(σ)² = (1−σ)²s² + σ², to x0 = μ + s·z. The
// x0 prediction now changes along the path, so this checks the multistep corrections and their order.
class GaussianFlow {
 public:
  GaussianFlow(std::vector<double> mean, std::vector<double> stddev) : mean_(std::move(mean)), std_(std::move(stddev)) {}

  std::vector<double> Velocity(const std::vector<float>& x, double sigma) const {
    std::vector<double> v(x.size());
    for (size_t j = 0; j < x.size(); ++j) {
      const double variance = Variance(j, sigma);
      const double posterior_mean =
          mean_[j] + (1.0 - sigma) * std_[j] * std_[j] / variance * (x[j] - (1.0 - sigma) * mean_[j]);
      v[j] = (x[j] - posterior_mean) / sigma;
    }
    return v;
  }
  std::vector<double> PointAt(const std::vector<double>& z, double sigma) const {
    std::vector<double> x(z.size());
    for (size_t j = 0; j < z.size(); ++j) x[j] = (1.0 - sigma) * mean_[j] + std::sqrt(Variance(j, sigma)) * z[j];
    return x;
  }

 private:
  double Variance(size_t j, double sigma) const {
    return (1.0 - sigma) * (1.0 - sigma) * std_[j] * std_[j] + sigma * sigma;
  }
  std::vector<double> mean_;
  std::vector<double> std_;
};

// The multistep samplers must beat Euler clearly and converge faster. (No clean order test: the
// schedule's last steps keep a fixed ratio σ_{i+1}/σ_i, hence a fixed step in λ, whatever N is, and the
// final step returns the x0 prediction, so the error does not follow h^p.)
TEST_F(SamplerTest, GaussianFlowApproachesExactSolution) {
  const size_t count = 64;
  std::mt19937 generator(3);
  std::uniform_real_distribution<double> uniform(0.8, 1.2);
  std::vector<double> stddev(count);
  for (double& s : stddev) s = uniform(generator);
  const GaussianFlow flow(RandomNormal(count, 11), stddev);
  const std::vector<double> z = RandomNormal(count, 13);

  // Maximum error against the exact x0 after `steps` steps.
  auto final_error = [&](SamplerKind kind, int steps) {
    std::unique_ptr<Sampler> sampler = MustSampler(kind, steps, 3.0);
    const std::vector<float>& sigmas = sampler->schedule().sigmas;
    Tensor sample = FromDoubles(flow.PointAt(z, sigmas[0]));
    for (int i = 0; i < steps; ++i) {
      Tensor velocity = FromDoubles(flow.Velocity(Read(sample), sigmas[i]));
      sample = sampler->Step(*backend_, i, velocity, sample);
    }
    const std::vector<float> result = Read(sample);
    const std::vector<double> expected = flow.PointAt(z, 0.0);
    double error = 0.0;
    for (size_t j = 0; j < count; ++j) error = std::max(error, std::abs(result[j] - expected[j]));
    return error;
  };

  const double euler_coarse = final_error(SamplerKind::kEuler, 10);
  const double euler_50 = final_error(SamplerKind::kEuler, 50);
  const double euler_fine = final_error(SamplerKind::kEuler, 80);
  // First order: 8x the steps, ~8x smaller error (measured 7.5).
  EXPECT_GT(euler_coarse / euler_fine, 6.0) << euler_coarse << " -> " << euler_fine;
  EXPECT_LT(euler_coarse / euler_fine, 10.0) << euler_coarse << " -> " << euler_fine;
  EXPECT_LT(euler_50, 0.15);

  // Measured: UniPC 0.08x Euler at 50 steps and 30x from 10 to 80 steps; DPM++ 0.17x and 15x.
  const double unipc_coarse = final_error(SamplerKind::kUniPC, 10);
  const double unipc_50 = final_error(SamplerKind::kUniPC, 50);
  const double unipc_fine = final_error(SamplerKind::kUniPC, 80);
  EXPECT_LT(unipc_50, 0.15 * euler_50) << unipc_50 << " vs euler " << euler_50;
  EXPECT_GT(unipc_coarse / unipc_fine, 15.0) << unipc_coarse << " -> " << unipc_fine;

  const double dpm_coarse = final_error(SamplerKind::kDpmPlusPlus2M, 10);
  const double dpm_50 = final_error(SamplerKind::kDpmPlusPlus2M, 50);
  const double dpm_fine = final_error(SamplerKind::kDpmPlusPlus2M, 80);
  EXPECT_LT(dpm_50, 0.3 * euler_50) << dpm_50 << " vs euler " << euler_50;
  EXPECT_GT(dpm_coarse / dpm_fine, 8.0) << dpm_coarse << " -> " << dpm_fine;
}

// ---- an independent scalar transcription of spec §4.5 / §4.6, in double --------------------------

double ReferenceLambda(double sigma) { return std::log(1.0 - sigma) - std::log(sigma); }

class ReferenceUniPc {
 public:
  explicit ReferenceUniPc(const std::vector<float>& sigmas) : sigma_(sigmas.begin(), sigmas.end()) {}

  std::vector<double> Step(int i, const std::vector<double>& v, std::vector<double> x) {
    const int steps = static_cast<int>(sigma_.size()) - 1;
    const size_t n = x.size();
    std::vector<double> m(n);
    for (size_t j = 0; j < n; ++j) m[j] = x[j] - sigma_[i] * v[j];
    if (i >= 1) {
      const double h = Lambda(i) - Lambda(i - 1), hh = -h, phi1 = std::expm1(hh), b_h = std::expm1(hh);
      const double alpha = 1.0 - sigma_[i];
      double rho0 = 0.0, rho1 = 0.5, r = 1.0;
      if (order_ == 2) {
        r = (Lambda(i - 2) - Lambda(i - 1)) / h;
        const double g1 = phi1 / hh - 1.0, b1 = g1 / b_h, g2 = g1 / hh - 0.5, b2 = 2.0 * g2 / b_h;
        // Gaussian elimination of [[1, 1], [r, 1]] ρ = b.
        rho1 = (b2 - r * b1) / (1.0 - r);
        rho0 = b1 - rho1;
      }
      for (size_t j = 0; j < n; ++j) {
        const double base = sigma_[i] / sigma_[i - 1] * last_sample_[j] - alpha * phi1 * m1_[j];
        double corr = rho1 * (m[j] - m1_[j]);
        if (order_ == 2) corr += rho0 * (m2_[j] - m1_[j]) / r;
        x[j] = base - alpha * b_h * corr;
      }
    }
    const int order = std::min({2, steps - i, i + 1});
    std::vector<double> next(n);
    if (sigma_[i + 1] == 0.0) {
      next = m;
    } else {
      const double h = Lambda(i + 1) - Lambda(i), phi1 = std::expm1(-h), b_h = std::expm1(-h);
      const double alpha = 1.0 - sigma_[i + 1];
      for (size_t j = 0; j < n; ++j) {
        next[j] = sigma_[i + 1] / sigma_[i] * x[j] - alpha * phi1 * m[j];
        if (order == 2) {
          const double r = (Lambda(i - 1) - Lambda(i)) / h;
          next[j] -= alpha * b_h * 0.5 * (m1_[j] - m[j]) / r;
        }
      }
    }
    m2_ = m1_;
    m1_ = m;
    last_sample_ = x;
    order_ = order;
    return next;
  }

 private:
  double Lambda(int index) const { return ReferenceLambda(sigma_[index]); }
  std::vector<double> sigma_;
  std::vector<double> m1_, m2_, last_sample_;
  int order_ = 0;
};

class ReferenceDpm {
 public:
  explicit ReferenceDpm(const std::vector<float>& sigmas) : sigma_(sigmas.begin(), sigmas.end()) {}

  std::vector<double> Step(int i, const std::vector<double>& v, const std::vector<double>& x) {
    const int steps = static_cast<int>(sigma_.size()) - 1;
    const size_t n = x.size();
    std::vector<double> m(n), next(n);
    for (size_t j = 0; j < n; ++j) m[j] = x[j] - sigma_[i] * v[j];
    const double h = ReferenceLambda(sigma_[i + 1]) - ReferenceLambda(sigma_[i]);  // ±∞ allowed
    const double alpha = 1.0 - sigma_[i + 1];
    const double factor = std::exp(-h) - 1.0;
    const bool first_order = i == 0 || i == steps - 1;
    for (size_t j = 0; j < n; ++j) {
      next[j] = sigma_[i + 1] / sigma_[i] * x[j] - alpha * factor * m[j];
      if (!first_order) {
        const double h0 = ReferenceLambda(sigma_[i]) - ReferenceLambda(sigma_[i - 1]);
        const double r0 = h0 / h;
        const double d1 = std::isinf(r0) ? 0.0 : (m[j] - m1_[j]) / r0;
        next[j] -= 0.5 * alpha * factor * d1;
      }
    }
    m1_ = m;
    return next;
  }

 private:
  std::vector<double> sigma_;
  std::vector<double> m1_;
};

// The synthetic field of zoetrope-sampler-trace: v = a ⊙ x + b·(t/1000), guided.
TEST_F(SamplerTest, MatchesScalarTranscriptionOfSpec) {
  const size_t count = 300;
  const std::vector<double> cond_a = RandomNormal(count, 21, 0.5), cond_b = RandomNormal(count, 22);
  const std::vector<double> uncond_a = RandomNormal(count, 23, 0.5), uncond_b = RandomNormal(count, 24);
  const std::vector<double> noise = RandomNormal(count, 25);
  const double guidance = 5.0;
  auto field = [&](const auto& x, int64_t timestep) {
    std::vector<double> v(count);
    for (size_t j = 0; j < count; ++j) {
      const double c = cond_a[j] * x[j] + cond_b[j] * (timestep / 1000.0);
      const double u = uncond_a[j] * x[j] + uncond_b[j] * (timestep / 1000.0);
      v[j] = u + guidance * (c - u);
    }
    return v;
  };

  for (SamplerKind kind : {SamplerKind::kUniPC, SamplerKind::kDpmPlusPlus2M}) {
    for (int steps : {1, 2, 3, 4, 20, 50}) {
      for (double shift : {1.0, 5.0, 8.0}) {
        std::unique_ptr<Sampler> sampler = MustSampler(kind, steps, shift);
        const FlowSchedule& schedule = sampler->schedule();
        ReferenceUniPc unipc(schedule.sigmas);
        ReferenceDpm dpm(schedule.sigmas);
        Tensor sample = FromDoubles(noise);
        std::vector<double> expected = noise;
        for (int i = 0; i < steps; ++i) {
          const int64_t t = schedule.timesteps[i];
          const std::vector<float> current = Read(sample);
          sample = sampler->Step(*backend_, i, FromDoubles(field(current, t)), sample);
          expected = kind == SamplerKind::kUniPC ? unipc.Step(i, field(expected, t), expected)
                                                 : dpm.Step(i, field(expected, t), expected);
          ASSERT_LT(RelativeL2(expected, Read(sample)), 1e-5)
              << SamplerKindName(kind) << " steps " << steps << " shift " << shift << " step " << i;
        }
      }
    }
  }
}

TEST_F(SamplerTest, TwoStepUniPcByHand) {
  // N = 1 and N = 2 exercise the warm-up and lower_order_final paths without any order-2 term:
  // step 0 predictor x1 = (σ1/σ0)·x0 − α1·expm1(−h)·m0.
  std::unique_ptr<Sampler> sampler = MustSampler(SamplerKind::kUniPC, 2, 5.0);
  const std::vector<float>& sigmas = sampler->schedule().sigmas;
  Tensor x = FromDoubles({0.3, -1.2});
  Tensor v = FromDoubles({0.7, 0.1});
  Tensor x1 = sampler->Step(*backend_, 0, v, x);
  const double s0 = sigmas[0], s1 = sigmas[1];
  const double h = ReferenceLambda(s1) - ReferenceLambda(s0);
  const std::vector<double> x_in = {0.3f, -1.2f}, v_in = {0.7f, 0.1f};
  const std::vector<float> result = Read(x1);
  for (size_t j = 0; j < 2; ++j) {
    const double m0 = x_in[j] - s0 * v_in[j];
    EXPECT_NEAR(result[j], s1 / s0 * x_in[j] - (1.0 - s1) * std::expm1(-h) * m0, 1e-6);
  }
}

TEST_F(SamplerTest, OutOfOrderStepIsAProgrammingError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::unique_ptr<Sampler> sampler = MustSampler(SamplerKind::kUniPC, 5, 5.0);
  Tensor x = FromDoubles({1.0, 2.0});
  EXPECT_DEATH(sampler->Step(*backend_, 1, x, x), "out of order");
}

}  // namespace
}  // namespace zoetrope
