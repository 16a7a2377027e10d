// worker/energy_meter.cc's NVML loader against the stand-in libnvidia-ml.so.1 of tests/unit/fake_nvml.cc
// (found through LD_LIBRARY_PATH, which ctest sets): symbols resolve, millijoules become joules, milliwatts
// watts, CUDA_VISIBLE_DEVICES renumbers GPUs (by index and by UUID), and a GPU without the energy counter
// sends the meter to power sampling; the group's memory is its smallest GPU's.
#include <cstdlib>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "worker/energy_meter.h"

namespace zoetrope {
namespace {

TEST(NvmlLoader, ReadsCountersAndPowerInSiUnits) {
  unsetenv("CUDA_VISIBLE_DEVICES");
  absl::StatusOr<std::unique_ptr<GpuPowerReader>> reader = OpenNvmlPowerReader({0, 1});
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->gpu_count(), 2);
  EXPECT_TRUE((*reader)->has_energy_counter());
  EXPECT_EQ((*reader)->gpu_kind(), "Fake GPU 0");
  // The group's device memory is its smallest GPU's (80 and 160 GiB): what one rank may use (admission).
  EXPECT_EQ((*reader)->gpu_memory_bytes(), int64_t{80} << 30);
  // The fake advances GPU 1's counter by 2 J per read.
  absl::StatusOr<double> first = (*reader)->EnergyJoules(1);
  absl::StatusOr<double> second = (*reader)->EnergyJoules(1);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_DOUBLE_EQ(*second - *first, 2.0);
  absl::StatusOr<double> watts = (*reader)->PowerWatts(1);
  ASSERT_TRUE(watts.ok());
  EXPECT_DOUBLE_EQ(*watts, 200.0);

  EnergyMeter meter(std::move(*reader));
  EXPECT_EQ(meter.source(), EnergySource::kEnergyCounter);
  meter.Start();
  const EnergySnapshot snapshot = meter.Stop();
  ASSERT_EQ(snapshot.joules_per_gpu.size(), 2u);
  EXPECT_DOUBLE_EQ(snapshot.joules_per_gpu[0], 1.0);  // one read after Start's
  EXPECT_DOUBLE_EQ(snapshot.joules_per_gpu[1], 2.0);
}

TEST(NvmlLoader, CudaVisibleDevicesRenumbersByIndexAndUuid) {
  setenv("CUDA_VISIBLE_DEVICES", "2,GPU-fake-1", 1);
  absl::StatusOr<std::unique_ptr<GpuPowerReader>> reader = OpenNvmlPowerReader({0, 1});
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->gpu_kind(), "Fake GPU 2");  // CUDA ordinal 0 is NVML index 2
  EXPECT_EQ((*reader)->gpu_label(0), "0");
  absl::StatusOr<double> watts0 = (*reader)->PowerWatts(0);
  absl::StatusOr<double> watts1 = (*reader)->PowerWatts(1);
  ASSERT_TRUE(watts0.ok() && watts1.ok());
  EXPECT_DOUBLE_EQ(*watts0, 300.0);
  EXPECT_DOUBLE_EQ(*watts1, 200.0);
  setenv("CUDA_VISIBLE_DEVICES", "GPU-nope", 1);
  absl::StatusOr<std::unique_ptr<GpuPowerReader>> missing = OpenNvmlPowerReader({0});
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(absl::IsNotFound(missing.status())) << missing.status();
  EXPECT_NE(missing.status().message().find("GPU-nope"), std::string::npos) << missing.status();
  unsetenv("CUDA_VISIBLE_DEVICES");
}

TEST(NvmlLoader, AGpuWithoutTheCounterSendsTheGroupToPowerSampling) {
  unsetenv("CUDA_VISIBLE_DEVICES");
  absl::StatusOr<std::unique_ptr<GpuPowerReader>> reader = OpenNvmlPowerReader({2, 3});
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_FALSE((*reader)->has_energy_counter());
  EnergyMeter meter(std::move(*reader), absl::Milliseconds(5));
  EXPECT_EQ(meter.source(), EnergySource::kPowerSamples);
  meter.Start();
  absl::SleepFor(absl::Milliseconds(100));
  const EnergySnapshot snapshot = meter.Stop();
  ASSERT_EQ(snapshot.joules_per_gpu.size(), 2u);
  // Constant 300 W and 400 W: energy / (300 + 400) W is the sampled time, at least the 100 ms slept.
  EXPECT_NEAR(snapshot.joules_per_gpu[1] / snapshot.joules_per_gpu[0], 400.0 / 300.0, 1e-9);
  EXPECT_GE(snapshot.total() / 700.0, 0.1);
  EXPECT_LT(snapshot.total() / 700.0, 1.0);
}

}  // namespace
}  // namespace zoetrope
