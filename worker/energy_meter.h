// GPU energy of a job, per phase and per GPU (design.md "Energy, cost, estimates"; docs/energy.md).
//
// The source of truth is NVML's per-GPU energy counter (nvmlDeviceGetTotalEnergyConsumption, millijoules
// since the driver loaded), read at job start, at every phase boundary and at the end on every GPU of the
// worker's group. Where a GPU does not support the counter, the meter samples power
// (nvmlDeviceGetPowerUsage) on a thread and integrates it (trapezoids), and says so in the reading's
// source. A worker without GPUs (or where NVML cannot be loaded) has no energy: its source is
// kUnavailable and callers report "unavailable" instead of 0 J.
//
// NVML is loaded with dlopen("libnvidia-ml.so.1") so that the worker builds and runs without the NVIDIA
// driver or headers; the few entry points are declared here by hand.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace zoetrope {

enum class EnergySource { kUnavailable, kEnergyCounter, kPowerSamples };
// "unavailable", "nvml_energy_counter", "nvml_power_samples" (Measurements.energy_source).
const char* EnergySourceName(EnergySource source);

// What the meter reads: one implementation over NVML; tests substitute a scripted one.
class GpuPowerReader {
 public:
  virtual ~GpuPowerReader() = default;
  virtual int gpu_count() const = 0;
  // True when EnergyJoules works on every GPU.
  virtual bool has_energy_counter() const = 0;
  // The GPU's monotonic energy counter in joules.
  virtual absl::StatusOr<double> EnergyJoules(int gpu) = 0;
  // The GPU's power draw now, in watts.
  virtual absl::StatusOr<double> PowerWatts(int gpu) = 0;
  // A label for the GPU in metrics ("0", "1", ...: the CUDA ordinal the worker was given).
  virtual std::string gpu_label(int gpu) const = 0;
  // The product name of the first GPU ("NVIDIA H200").
  virtual std::string gpu_kind() const = 0;
  // The smallest total memory of the GPUs in bytes (what one device of the group holds), 0 when unknown.
  // The worker announces it for admission (common/generation_rules.h) when --device_memory_gib is not given.
  virtual int64_t gpu_memory_bytes() const { return 0; }
};

// Opens NVML for the given CUDA ordinals. The NVML index of a CUDA ordinal is found through
// CUDA_VISIBLE_DEVICES when it is set (numbers or GPU-UUIDs), else it is the ordinal itself (NVML and CUDA
// both enumerate in PCI order on a machine of identical GPUs). UNAVAILABLE when NVML cannot be loaded or
// initialised, NOT_FOUND when a GPU is not there.
absl::StatusOr<std::unique_ptr<GpuPowerReader>> OpenNvmlPowerReader(const std::vector<int>& cuda_ordinals);

// Cumulative joules per GPU since EnergyMeter::Start.
struct EnergySnapshot {
  std::vector<double> joules_per_gpu;
  double total() const;
};

class EnergyMeter {
 public:
  // `reader` null: a meter whose source is kUnavailable and whose readings are empty.
  explicit EnergyMeter(std::unique_ptr<GpuPowerReader> reader,
                       absl::Duration sample_interval = absl::Milliseconds(20));
  ~EnergyMeter();
  EnergyMeter(const EnergyMeter&) = delete;
  EnergyMeter& operator=(const EnergyMeter&) = delete;

  EnergySource source() const { return source_; }
  bool available() const { return source_ != EnergySource::kUnavailable; }
  int gpu_count() const { return reader_ == nullptr ? 0 : reader_->gpu_count(); }
  std::string gpu_label(int gpu) const { return reader_ == nullptr ? "" : reader_->gpu_label(gpu); }
  std::string gpu_kind() const { return reader_ == nullptr ? "" : reader_->gpu_kind(); }
  int64_t gpu_memory_bytes() const { return reader_ == nullptr ? 0 : reader_->gpu_memory_bytes(); }

  // Begins a measurement (one job): takes the first reading and, when integrating power, starts sampling.
  void Start();
  // Joules per GPU since Start. With the energy counter this reads the counters now; with power samples it
  // integrates up to a fresh sample taken now.
  EnergySnapshot Read();
  // Ends the measurement (stops the sampler) and returns the final reading.
  EnergySnapshot Stop();

 private:
  void SampleLoop();
  // Power samples: integrates one fresh sample into integrated_ (caller holds mutex_).
  void SampleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  std::unique_ptr<GpuPowerReader> reader_;
  const EnergySource source_;
  const absl::Duration sample_interval_;

  absl::Mutex mutex_;
  std::vector<double> start_joules_ ABSL_GUARDED_BY(mutex_);   // energy counter at Start
  std::vector<double> integrated_ ABSL_GUARDED_BY(mutex_);     // power samples: joules since Start
  std::vector<double> last_watts_ ABSL_GUARDED_BY(mutex_);
  absl::Time last_sample_ ABSL_GUARDED_BY(mutex_);
  bool running_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread sampler_;
};

}  // namespace zoetrope
