// The estimator (server/estimator.h) on synthetic job histories: jobs whose phase times and energies follow
// the analytic model with hidden efficiencies and multiplicative noise. After five jobs of a configuration
// the quote must be within 5 % of the noiseless truth across a sweep of frames, resolutions and steps;
// calibrations of different configurations stay apart; and they survive a reopen of the database.
#include "server/estimator.h"

#include <cmath>
#include <filesystem>
#include <random>

#include "gtest/gtest.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

v1::SubmitJobRequest Request(int width, int height, int frames, int steps, double guidance = 5.0) {
  v1::SubmitJobRequest request;
  request.set_model("wan2.1-t2v-1.3b");
  request.set_width(width);
  request.set_height(height);
  request.set_frames(frames);
  request.set_steps(steps);
  request.set_guidance(guidance);
  request.set_fps(16);
  return request;
}

// A hidden machine: effective throughput per phase (work/s), power per phase (W), fixed overhead.
struct Machine {
  std::array<double, kWorkPhases> rate = {1.5e14, 4.1e14, 1.4e13, 1.8e8};
  std::array<double, kWorkPhases> watts = {300, 690, 420, 150};
  double overhead_seconds = 1.5;
  double overhead_joules = 120;
};

struct Truth {
  double seconds = 0;
  double joules = 0;
};

Truth TrueCost(const Machine& machine, const v1::SubmitJobRequest& request) {
  const JobWork work = AnalyticWork(request, 1.0);
  Truth truth{machine.overhead_seconds, machine.overhead_joules};
  for (int phase = 0; phase < kWorkPhases; ++phase) {
    const double seconds = work.work[phase] / machine.rate[phase];
    truth.seconds += seconds;
    truth.joules += seconds * machine.watts[phase];
  }
  return truth;
}

// One finished job as the worker and scheduler would report it, every figure off by up to `noise`.
v1::Measurements Measure(const Machine& machine, const v1::SubmitJobRequest& request, std::mt19937& random,
                         double noise) {
  std::uniform_real_distribution<double> jitter(1 - noise, 1 + noise);
  const JobWork work = AnalyticWork(request, 1.0);
  std::array<double, kWorkPhases> seconds{}, joules{};
  double phase_seconds = 0, phase_joules = 0;
  for (int phase = 0; phase < kWorkPhases; ++phase) {
    seconds[phase] = work.work[phase] / machine.rate[phase] * jitter(random);
    joules[phase] = seconds[phase] * machine.watts[phase] * jitter(random);
    phase_seconds += seconds[phase];
    phase_joules += joules[phase];
  }
  v1::Measurements measured;
  measured.set_text_seconds(seconds[0]);
  measured.set_denoise_seconds(seconds[1]);
  measured.set_decode_seconds(seconds[2]);
  measured.set_video_encode_seconds(seconds[3]);
  measured.set_text_energy_joules(joules[0]);
  measured.set_denoise_energy_joules(joules[1]);
  measured.set_decode_energy_joules(joules[2]);
  measured.set_video_encode_energy_joules(joules[3]);
  measured.set_run_seconds(phase_seconds + machine.overhead_seconds * jitter(random));
  measured.set_gpu_energy_joules(phase_joules + machine.overhead_joules * jitter(random));
  measured.set_energy_source("nvml_energy_counter");
  measured.set_attention_density(1.0);
  measured.set_gpus(1);
  return measured;
}

EstimateConfiguration H200() {
  EstimateConfiguration configuration;
  configuration.model = "wan2.1-t2v-1.3b";
  configuration.gpu_kind = "NVIDIA H200";
  return configuration;
}

double RelativeError(double estimate, double truth) { return std::abs(estimate - truth) / truth; }

TEST(AnalyticWork, MatchesTheSpecTable) {
  // spec/wan21.md §7: 1.3B at 480p, 81 frames: 283.0 TFLOP per forward, 566 per CFG step; 50 steps 28.3 PFLOP.
  const JobWork work = AnalyticWork(Request(832, 480, 81, 50), 1.0);
  EXPECT_NEAR(work.work[static_cast<int>(WorkPhase::kDenoise)] / 100, 283.0e12, 283.0e12 * 0.01);
  // 14B at 720p: 6,523.4 TFLOP per forward.
  v1::SubmitJobRequest big = Request(1280, 720, 81, 1, 1.0);
  big.set_model("wan2.1-t2v-14b");
  EXPECT_NEAR(AnalyticWork(big, 1.0).work[static_cast<int>(WorkPhase::kDenoise)], 6523.4e12, 6523.4e12 * 0.01);
  // Quadratic in tokens for attention, linear in steps; guidance 1 halves the DiT work.
  EXPECT_NEAR(AnalyticWork(Request(832, 480, 81, 25), 1.0).work[1] * 2, work.work[1], work.work[1] * 1e-9);
  EXPECT_NEAR(AnalyticWork(Request(832, 480, 81, 50, 1.0), 1.0).work[1] * 2, work.work[1], work.work[1] * 1e-9);
  // A sparse plan computes only `density` of the self-attention products.
  const JobWork sparse = AnalyticWork(Request(832, 480, 81, 50), 0.25);
  EXPECT_NEAR(work.work[1] - sparse.work[1], 0.75 * work.denoise_attention_dense, work.work[1] * 1e-9);
}

TEST(Estimator, PriorsAreInTheRightRangeForAnH100ClassGpu) {
  // Before any job the paper's μ = 0.456 gives the DiT time of 50 CFG steps at 480p: 28.3 PFLOP at
  // 451 TFLOP/s ≈ 63 s (the anchors measure 51 s of denoising on the H200): the prior is a rough quote.
  absl::StatusOr<std::unique_ptr<Estimator>> estimator = Estimator::Create(nullptr);
  ASSERT_TRUE(estimator.ok());
  const Prediction prediction = (*estimator)->Predict(Request(832, 480, 81, 50), H200());
  EXPECT_EQ(prediction.calibration_jobs, 0);
  EXPECT_NEAR(prediction.phase_seconds[1], 28.3e15 / (0.456 * 989e12), 2.0);
  EXPECT_GT(prediction.gpu_energy_joules, 0);
}

TEST(Estimator, ConvergesWithinFivePercentAfterFiveJobsAcrossASweep) {
  const Machine machine;
  std::mt19937 random(7);
  absl::StatusOr<std::unique_ptr<Estimator>> estimator = Estimator::Create(nullptr);
  ASSERT_TRUE(estimator.ok());
  // Five calibration jobs of mixed shapes, ±3 % noise on every figure.
  const v1::SubmitJobRequest calibration[] = {Request(832, 480, 33, 20), Request(832, 480, 81, 50),
                                              Request(1280, 720, 17, 10), Request(832, 480, 49, 30),
                                              Request(1280, 720, 33, 25)};
  // Before calibration the priors are far off this machine (checks that the test can fail).
  const Truth reference = TrueCost(machine, Request(832, 480, 81, 50));
  EXPECT_GT(RelativeError((*estimator)->Predict(Request(832, 480, 81, 50), H200()).run_seconds, reference.seconds),
            0.05);
  for (const v1::SubmitJobRequest& request : calibration) {
    ASSERT_TRUE((*estimator)->Observe(request, H200(), Measure(machine, request, random, 0.03)).ok());
  }
  // The sweep of the issue: frames 17-81, 480p and 720p, 10-50 steps.
  for (int frames : {17, 41, 81}) {
    for (auto [width, height] : {std::pair{832, 480}, std::pair{1280, 720}}) {
      for (int steps : {10, 30, 50}) {
        const v1::SubmitJobRequest request = Request(width, height, frames, steps);
        const Truth truth = TrueCost(machine, request);
        const Prediction prediction = (*estimator)->Predict(request, H200());
        EXPECT_EQ(prediction.calibration_jobs, 5);
        EXPECT_LT(RelativeError(prediction.run_seconds, truth.seconds), 0.05)
            << width << "x" << height << "x" << frames << ", " << steps << " steps";
        EXPECT_LT(RelativeError(prediction.gpu_energy_joules, truth.joules), 0.05)
            << width << "x" << height << "x" << frames << ", " << steps << " steps";
      }
    }
  }
}

TEST(Estimator, ConfigurationsCalibrateApartAndFollowADrift) {
  std::mt19937 random(11);
  absl::StatusOr<std::unique_ptr<Estimator>> estimator = Estimator::Create(nullptr);
  ASSERT_TRUE(estimator.ok());
  Machine fast;
  Machine slow = fast;
  for (double& rate : slow.rate) rate /= 3;
  EstimateConfiguration group = H200();
  group.gpus = 4;
  group.sequence_parallel = 4;
  const v1::SubmitJobRequest request = Request(832, 480, 81, 20);
  for (int job = 0; job < 5; ++job) {
    ASSERT_TRUE((*estimator)->Observe(request, group, Measure(fast, request, random, 0.02)).ok());
    ASSERT_TRUE((*estimator)->Observe(request, H200(), Measure(slow, request, random, 0.02)).ok());
  }
  EXPECT_LT(RelativeError((*estimator)->Predict(request, group).run_seconds, TrueCost(fast, request).seconds), 0.05);
  EXPECT_LT(RelativeError((*estimator)->Predict(request, H200()).run_seconds, TrueCost(slow, request).seconds), 0.05);
  // 4 GPUs at 3× one GPU's denoise throughput: 75 % efficiency.
  EXPECT_NEAR((*estimator)->ParallelEfficiency(group), 0.75, 0.03);
  // The machine slows down: decayed sums follow within a few tens of jobs.
  for (int job = 0; job < 30; ++job) {
    ASSERT_TRUE((*estimator)->Observe(request, group, Measure(slow, request, random, 0.02)).ok());
  }
  EXPECT_LT(RelativeError((*estimator)->Predict(request, group).run_seconds, TrueCost(slow, request).seconds), 0.05);
}

TEST(Estimator, UnmeasuredEnergyIsNotLearnedAsZero) {
  std::mt19937 random(3);
  absl::StatusOr<std::unique_ptr<Estimator>> estimator = Estimator::Create(nullptr);
  ASSERT_TRUE(estimator.ok());
  EstimateConfiguration cpu = H200();
  cpu.gpu_kind = "cpu";
  cpu.gpus = 0;
  const v1::SubmitJobRequest request = Request(128, 128, 1, 3);
  v1::Measurements measured = Measure(Machine{}, request, random, 0.0);
  measured.set_energy_source("unavailable");
  measured.set_gpu_energy_joules(0);
  ASSERT_TRUE((*estimator)->Observe(request, cpu, measured).ok());
  EXPECT_EQ((*estimator)->Predict(request, cpu).gpu_energy_joules, 0.0);
  EXPECT_FALSE((*estimator)->calibrations().at(cpu.Key()).energy_measured);
}

TEST(Estimator, CalibrationSurvivesAReopenOfTheDatabase) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("estimator_test_" + std::to_string(::getpid()) + ".db")).string();
  std::filesystem::remove(path);
  std::mt19937 random(5);
  const v1::SubmitJobRequest request = Request(832, 480, 33, 20);
  Prediction before;
  {
    absl::StatusOr<std::unique_ptr<Estimator>> estimator = Estimator::Open(path);
    ASSERT_TRUE(estimator.ok()) << estimator.status();
    for (int job = 0; job < 3; ++job) {
      ASSERT_TRUE((*estimator)->Observe(request, H200(), Measure(Machine{}, request, random, 0.03)).ok());
    }
    before = (*estimator)->Predict(request, H200());
  }
  absl::StatusOr<std::unique_ptr<Estimator>> reopened = Estimator::Open(path);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  const Prediction after = (*reopened)->Predict(request, H200());
  EXPECT_EQ(after.calibration_jobs, 3);
  EXPECT_DOUBLE_EQ(after.run_seconds, before.run_seconds);
  EXPECT_DOUBLE_EQ(after.gpu_energy_joules, before.gpu_energy_joules);
  std::filesystem::remove(path);
  std::filesystem::remove(path + "-journal");
}

TEST(Calibration, BrokenRowsAreErrorsNotZeros) {
  EXPECT_FALSE(Calibration::Parse("v1 1 2").ok());
  EXPECT_FALSE(Calibration::Parse("v2 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1").ok());
  Calibration calibration;
  calibration.jobs = 2;
  calibration.weight = 1.9;
  calibration.work[1] = 1e15;
  calibration.seconds[1] = 2.5;
  absl::StatusOr<Calibration> parsed = Calibration::Parse(calibration.Serialize());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->jobs, 2);
  EXPECT_DOUBLE_EQ(parsed->work[1], 1e15);
}

}  // namespace
}  // namespace zoetrope::server
