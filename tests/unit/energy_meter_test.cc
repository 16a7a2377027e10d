// The energy meter (worker/energy_meter.h) against scripted GPUs: the energy-counter path is the difference
// of the counters summed over the group; the power-sampling path integrates a known power curve to within
// the sampling error; no GPUs means "unavailable", never 0 J; and NVML's absence is an error, not a crash.
#include "worker/energy_meter.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace zoetrope {
namespace {

// GPUs whose counter or power the test sets.
class ScriptedGpus final : public GpuPowerReader {
 public:
  ScriptedGpus(int gpus, bool counter) : joules_(gpus, 1000.0), watts_(gpus, 0.0), counter_(counter) {}
  int gpu_count() const override { return static_cast<int>(joules_.size()); }
  bool has_energy_counter() const override { return counter_; }
  absl::StatusOr<double> EnergyJoules(int gpu) override {
    absl::MutexLock lock(&mutex_);
    return joules_.at(gpu);
  }
  absl::StatusOr<double> PowerWatts(int gpu) override {
    absl::MutexLock lock(&mutex_);
    return watts_.at(gpu);
  }
  std::string gpu_label(int gpu) const override { return std::to_string(gpu); }
  std::string gpu_kind() const override { return "scripted"; }

  void Add(int gpu, double joules) {
    absl::MutexLock lock(&mutex_);
    joules_.at(gpu) += joules;
  }
  void SetWatts(int gpu, double watts) {
    absl::MutexLock lock(&mutex_);
    watts_.at(gpu) = watts;
  }

 private:
  absl::Mutex mutex_;
  std::vector<double> joules_;
  std::vector<double> watts_;
  bool counter_;
};

TEST(EnergyMeter, CounterDifferencesAreSummedOverTheGroup) {
  auto gpus = std::make_unique<ScriptedGpus>(2, /*counter=*/true);
  ScriptedGpus* script = gpus.get();
  EnergyMeter meter(std::move(gpus));
  EXPECT_EQ(meter.source(), EnergySource::kEnergyCounter);
  EXPECT_STREQ(EnergySourceName(meter.source()), "nvml_energy_counter");
  script->Add(0, 50);  // before the job: not counted
  meter.Start();
  script->Add(0, 120.5);
  script->Add(1, 80.25);
  EnergySnapshot phase = meter.Read();
  ASSERT_EQ(phase.joules_per_gpu.size(), 2u);
  EXPECT_DOUBLE_EQ(phase.joules_per_gpu[0], 120.5);
  EXPECT_DOUBLE_EQ(phase.joules_per_gpu[1], 80.25);
  script->Add(1, 10);
  EXPECT_DOUBLE_EQ(meter.Stop().total(), 210.75);
  // A second job starts from zero again.
  meter.Start();
  script->Add(0, 5);
  EXPECT_DOUBLE_EQ(meter.Stop().total(), 5);
}

TEST(EnergyMeter, PowerSamplesIntegrateAKnownCurve) {
  auto gpus = std::make_unique<ScriptedGpus>(1, /*counter=*/false);
  ScriptedGpus* script = gpus.get();
  script->SetWatts(0, 200);
  EnergyMeter meter(std::move(gpus), absl::Milliseconds(2));
  EXPECT_EQ(meter.source(), EnergySource::kPowerSamples);
  const auto start = std::chrono::steady_clock::now();
  meter.Start();
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  script->SetWatts(0, 400);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  const EnergySnapshot total = meter.Stop();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // 200 W then 400 W for about half the time each: the mean power is about 300 W. A step between samples
  // costs at most one interval at the step's height (2 ms × 200 W), the scheduling of the sleeps a few ms.
  const double mean_watts = total.total() / seconds;
  EXPECT_GT(mean_watts, 260);
  EXPECT_LT(mean_watts, 340);
  EXPECT_GT(total.total(), 0.0);
}

TEST(EnergyMeter, NoGpusMeansUnavailableNotZero) {
  EnergyMeter meter(nullptr);
  EXPECT_FALSE(meter.available());
  EXPECT_STREQ(EnergySourceName(meter.source()), "unavailable");
  meter.Start();
  EXPECT_TRUE(meter.Read().joules_per_gpu.empty());
  EXPECT_TRUE(meter.Stop().joules_per_gpu.empty());
}

TEST(EnergyMeter, MissingNvmlIsAnErrorWithItsCause) {
  // On the CPU CI machine there is no driver: OpenNvmlPowerReader says why. Where a driver is installed the
  // reader opens (or names the GPU it cannot find): both are answers, neither a crash.
  absl::StatusOr<std::unique_ptr<GpuPowerReader>> reader = OpenNvmlPowerReader({0});
  if (!reader.ok()) {
    EXPECT_NE(reader.status().message().find("NVML"), std::string::npos) << reader.status();
  } else {
    EXPECT_EQ((*reader)->gpu_count(), 1);
  }
}

}  // namespace
}  // namespace zoetrope
